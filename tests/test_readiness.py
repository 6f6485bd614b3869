"""The readiness waits (issue 17): the tests' harness and scripts/demo wait for Envoy's admin
/ready. On a busy machine Envoy may accept the connection and answer late; each wait must retry
such a try until its deadline, and then fail naming what did not answer, never with a bare
ReadTimeout. The server here is a stand-in for a stalled admin port (a real Envoy answers at
once): it accepts and stays silent for its first `stall` connections, then answers 200."""

from __future__ import annotations

import socket
import sys
import threading
import time

import pytest

from harness.envoy import Envoy, wait_ready
from harness.procs import REPO, ProcessStartError


class StallingServer:
    def __init__(self, stall: int):
        self.stall = stall
        self.accepted = 0
        self.held: list[socket.socket] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)  # accept() wakes up to see `closed`
        self.port = self.sock.getsockname()[1]
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            self.accepted += 1
            if self.accepted <= self.stall:
                self.held.append(conn)  # read nothing, answer nothing
                continue
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nLIVE\n")
            conn.close()

    def close(self) -> None:
        self.closed.set()
        self.thread.join(timeout=5)
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def stand_in_envoy(procs):
    """A live process for the waits to watch (they stop early if Envoy exits)."""
    proc = procs.start("sleeper", ["sleep", "120"])
    yield proc
    proc.stop()


def demo_wait(monkeypatch, port: int):
    sys.path.insert(0, str(REPO / "demo"))
    import run as demo_run
    monkeypatch.setattr(demo_run, "ADMIN_PORT", port)
    return demo_run.wait_envoy_ready


@pytest.mark.parametrize("which", ["harness", "demo"])
def test_a_stalled_admin_is_retried_until_the_deadline_then_named(which, stand_in_envoy,
                                                                   monkeypatch):
    server = StallingServer(stall=1000)
    try:
        started = time.monotonic()
        if which == "harness":
            with pytest.raises(RuntimeError) as failure:
                wait_ready(Envoy(port=0, admin_port=server.port, process=stand_in_envoy), 3.5)
        else:
            with pytest.raises(ProcessStartError) as failure:
                demo_wait(monkeypatch, server.port)(stand_in_envoy, 3.5)
        elapsed = time.monotonic() - started
    finally:
        server.close()
    message = str(failure.value)
    assert elapsed >= 3.4, f"gave up after {elapsed:.1f}s, before its deadline: {message}"
    assert server.accepted >= 3, f"tried {server.accepted} time(s) in {elapsed:.1f}s"
    assert str(server.port) in message and "/ready" in message, message
    assert "no answer within the per-try timeout" in message, message
    assert "ReadTimeout" not in message and "Traceback" not in message, message


@pytest.mark.parametrize("which", ["harness", "demo"])
def test_a_try_that_stalls_then_an_answer_is_ready(which, stand_in_envoy, monkeypatch):
    server = StallingServer(stall=2)
    try:
        if which == "harness":
            wait_ready(Envoy(port=0, admin_port=server.port, process=stand_in_envoy), 10)
        else:
            demo_wait(monkeypatch, server.port)(stand_in_envoy, 10)
    finally:
        server.close()
    assert server.accepted == 3
