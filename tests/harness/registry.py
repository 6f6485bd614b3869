"""A real container registry on loopback (Debian's docker-registry, the CNCF Distribution
registry 2.8; scripts/setup installs it and skopeo), for the module's OCI image.

`start_registry(procs)` writes a configuration into a temp dir (storage there, HTTP without
TLS on 127.0.0.1 and a free port, no auth) and returns the registry's address, host:port, once
GET /v2/ answers 200. The ProcessGroup stops it by its PID; the temp dir goes at exit.
`skopeo(...)` runs skopeo against it (plain HTTP) and returns its standard output.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from pathlib import Path

from .envoy import wait_answering
from .procs import ProcessGroup, free_port

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
SKOPEO_BIN = shutil.which("skopeo") or "/usr/bin/skopeo"


def start_registry(procs: ProcessGroup, timeout: float = 30.0) -> str:
    root = Path(tempfile.mkdtemp(prefix="bff-registry-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: info}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}\n"
        # One registry, so any fixed secret does; it only signs upload state.
        f"http: {{addr: '127.0.0.1:{port}', secret: test-only-upload-secret}}\n")
    proc = procs.start("registry", [REGISTRY_BIN, "serve", config])
    address = f"127.0.0.1:{port}"
    wait_answering(f"http://{address}/v2/", timeout, "the registry", proc.running, proc.output)
    return address


def skopeo(*args: str) -> str:
    """skopeo with these arguments; TLS off for the loopback registry (--tls-verify=false goes
    after the verb, as skopeo wants it)."""
    verb, *rest = args
    flags = {"copy": ["--src-tls-verify=false", "--dest-tls-verify=false"],
             "inspect": ["--tls-verify=false"]}[verb]
    done = subprocess.run([SKOPEO_BIN, verb, *flags, *rest], capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"skopeo {verb} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout
