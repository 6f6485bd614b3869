"""The echo upstream (tests/upstream/echo.py): answers every request with what it received."""

from __future__ import annotations

import sys

from .procs import REPO, ProcessGroup, free_port

ECHO_SERVER = REPO / "tests" / "upstream" / "echo.py"


def start_echo(procs: ProcessGroup, port: int | None = None, timeout: float = 15.0) -> int:
    """Start the echo upstream on 127.0.0.1 and return its port once it is listening."""
    port = port or free_port()
    procs.start("echo", [sys.executable, ECHO_SERVER, "--port", port],
                ready_line_prefix="ECHO READY", timeout=timeout)
    return port
