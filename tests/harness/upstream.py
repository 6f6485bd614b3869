"""The test servers in tests/upstream/: the echo upstream (echo.py) answers every request with
what it received; the faulty IdP (faulty_idp.py) fails discovery or the token endpoint on
request; the DPoP API (dpop_api.py) checks every request's DPoP proof."""

from __future__ import annotations

import sys

from .procs import REPO, ProcessGroup, free_port

ECHO_SERVER = REPO / "tests" / "upstream" / "echo.py"
FAULTY_IDP_SERVER = REPO / "tests" / "upstream" / "faulty_idp.py"
DPOP_API_SERVER = REPO / "tests" / "upstream" / "dpop_api.py"


def start_echo(procs: ProcessGroup, port: int | None = None, timeout: float = 15.0) -> int:
    """Start the echo upstream on 127.0.0.1 and return its port once it is listening."""
    port = port or free_port()
    procs.start("echo", [sys.executable, ECHO_SERVER, "--port", port],
                ready_line_prefix="ECHO READY", timeout=timeout)
    return port


def start_dpop_api(procs: ProcessGroup, port: int | None = None, timeout: float = 15.0) -> int:
    """Start the DPoP-checking API on 127.0.0.1 and return its port once it is listening."""
    port = port or free_port()
    procs.start("dpop-api", [sys.executable, DPOP_API_SERVER, "--port", port],
                ready_line_prefix="DPOP API READY", timeout=timeout)
    return port


def start_faulty_idp(procs: ProcessGroup, port: int | None = None, name: str = "faulty-idp",
                     timeout: float = 15.0) -> int:
    """Start the faulty IdP on 127.0.0.1 (issuer http://127.0.0.1:<port>) and return its port
    once it is listening; POST /mode or /discovery-mode picks its fault."""
    port = port or free_port()
    procs.start(name, [sys.executable, FAULTY_IDP_SERVER, "--port", port],
                ready_line_prefix="FAULTY READY", timeout=timeout)
    return port
