"""The demo's API and static server (demo/api.py): the SPA at `/`, the demo API under /private."""

from __future__ import annotations

import sys

from .procs import REPO, ProcessGroup, free_port

DEMO_API_SERVER = REPO / "demo" / "api.py"


def start_demo_api(procs: ProcessGroup, port: int | None = None, timeout: float = 15.0) -> int:
    """Start demo/api.py on 127.0.0.1 and return its port once it is listening."""
    port = port or free_port()
    procs.start("demo-api", [sys.executable, DEMO_API_SERVER, "--port", port],
                ready_line_prefix="DEMO API READY", timeout=timeout)
    return port
