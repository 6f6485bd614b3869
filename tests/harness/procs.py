"""Child processes for the tests: start, wait until ready, log, and always stop.

Every process is stopped by its own PID (SIGTERM, then SIGKILL after a grace period); the
group never signals anything it did not start. Output goes to tests/artifacts/<name>-<pid>.log.
"""

from __future__ import annotations

import atexit
import collections
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcessStartError(RuntimeError):
    """A child exited or stayed silent before printing its ready line."""


class Process:
    """One started child: its PID, log file, ready line and the tail of its output."""

    def __init__(self, name: str, popen: subprocess.Popen, log_path: Path, ready_line_prefix):
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self.log_path = log_path
        self.ready_line: str | None = None
        self._ready_prefix = ready_line_prefix
        self._ready = threading.Event()
        self._tail = collections.deque(maxlen=500)
        self._lock = threading.Lock()
        self._log = open(log_path, "a", encoding="utf-8", errors="replace")
        self._threads = [
            threading.Thread(target=self._pump, args=(popen.stdout, True), daemon=True,
                             name=f"{name}-stdout"),
            threading.Thread(target=self._pump, args=(popen.stderr, False), daemon=True,
                             name=f"{name}-stderr"),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream, is_stdout: bool) -> None:
        # Tee each line to the log file and the in-memory tail; never block the test thread.
        prefix = "" if is_stdout else "[stderr] "
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            with self._lock:
                self._tail.append(prefix + line)
                self._log.write(prefix + line + "\n")
                self._log.flush()
            if (is_stdout and self.ready_line is None and self._ready_prefix is not None
                    and line.startswith(self._ready_prefix)):
                self.ready_line = line
                self._ready.set()
        stream.close()

    def output(self) -> str:
        """The last lines this process wrote (stdout and stderr, interleaved)."""
        with self._lock:
            return "\n".join(self._tail)

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.popen.poll() is not None:
                self._drain()
                raise ProcessStartError(
                    f"{self.name} (pid {self.pid}) exited with {self.popen.returncode} before "
                    f"printing {self._ready_prefix!r}; log {self.log_path}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise ProcessStartError(
                    f"{self.name} (pid {self.pid}) did not print {self._ready_prefix!r} within "
                    f"{timeout}s; log {self.log_path}:\n{self.output()}")
        return self.ready_line or ""

    def _drain(self) -> None:
        for t in self._threads:
            t.join(timeout=2)

    def kill(self) -> None:
        """SIGKILL this PID and reap it: a crash, not a clean shutdown."""
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(timeout=10)
        self.stop()  # closes the log; the PID is already gone

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM this PID, wait up to `grace` seconds, then SIGKILL. Idempotent."""
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=grace)
        self._drain()
        with self._lock:
            if not self._log.closed:
                self._log.write(f"[harness] {self.name} exited with {self.popen.returncode}\n")
                self._log.close()
        return self.popen.returncode


class ProcessGroup:
    """The processes one test module (or session) starts; `stop_all()` ends every one of them.

    Also usable as a context manager. An atexit hook stops whatever is left if a test run dies
    without reaching its finalizer.
    """

    def __init__(self, artifacts_dir: Path = ARTIFACTS):
        self.artifacts_dir = Path(artifacts_dir)
        self.processes: list[Process] = []
        atexit.register(self.stop_all)

    def start(self, name: str, argv, env: dict | None = None, ready_line_prefix: str | None = None,
              timeout: float = 30.0, cwd: Path | str = REPO) -> Process:
        """Start `argv`; with `ready_line_prefix`, wait until stdout has a line starting with it.

        `env` adds to (and overrides) this process's environment. On failure the child is
        stopped and ProcessStartError carries its captured output.
        """
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        child_env = dict(os.environ)
        child_env.setdefault("PYTHONUNBUFFERED", "1")
        if env:
            child_env.update({k: str(v) for k, v in env.items()})
        popen = subprocess.Popen(
            [str(a) for a in argv],
            cwd=str(cwd),
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Own session: a Ctrl-C aimed at pytest reaches us, and we stop children by PID.
            start_new_session=True,
        )
        log_path = self.artifacts_dir / f"{name}-{popen.pid}.log"
        proc = Process(name, popen, log_path, ready_line_prefix)
        self.processes.append(proc)
        if ready_line_prefix is not None:
            try:
                proc.wait_ready(timeout)
            except ProcessStartError:
                proc.stop()
                raise
        return proc

    def stop_all(self) -> None:
        """Stop every process this group started, newest first. Safe to call more than once."""
        errors = []
        for proc in reversed(self.processes):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{proc.name} (pid {proc.pid}): {exc!r}")
        if errors:
            raise RuntimeError("could not stop: " + "; ".join(errors))

    def __enter__(self) -> "ProcessGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()
