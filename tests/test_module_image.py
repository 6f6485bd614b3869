"""The module as platforms load it (issue 17): the OCI image Istio and Envoy Gateway pull, and
Envoy's own remote loading by sha256.

- scripts/oci-image builds the same digest from the same module (no time stamps or owners in
  it) and another from a module one byte apart;
- the image goes through a real registry on loopback (Debian's docker-registry) with a real
  client (skopeo): pushed by the script, pulled back by its digest, the manifest's bytes hash
  to that digest, its media types are those Istio's and Envoy Gateway's image fetchers read
  (OCI manifest, one application/vnd.oci.image.layer.v1.tar+gzip layer holding plugin.wasm,
  the layer they take), and plugin.wasm is the module byte for byte;
- a real Envoy loads the module from an HTTP server (the README's `vm_config.code.remote`, with
  `sha256`) and a login works through it; with a wrong sha256 the module is fetched but refused at start,
  and Envoy fails closed: the guarded path answers 5xx, never the upstream.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from harness.envoy import (SECRETS, WASM, Browser, Envoy, envoy_bootstrap, filter_config,
                           run_envoy, static_cluster)
from harness.idp import start_idp
from harness.procs import REPO, free_port
from harness.registry import skopeo, start_registry
from harness.upstream import start_echo

OCI_IMAGE = REPO / "scripts" / "oci-image"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


def oci_image(*args) -> list[str]:
    done = subprocess.run([sys.executable, OCI_IMAGE, *map(str, args)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def plugin_wasm_of(layer: bytes) -> bytes:
    """What the loaders take from the layer: the file named plugin.wasm in the gzipped tar."""
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        names = tar.getnames()
        assert names == ["plugin.wasm"], names
        member = tar.extractfile("plugin.wasm")
        assert member is not None
        return member.read()


@pytest.fixture(scope="module")
def module() -> bytes:
    if not WASM.exists():
        pytest.fail(f"{WASM} is missing: build it with scripts/build-wasm")
    return WASM.read_bytes()


def test_the_image_digest_is_the_modules_alone(tmp_path, module):
    (first,) = oci_image("build", "--out", tmp_path / "a")
    time.sleep(1.1)  # a clock in the image (tar or gzip time) would now differ
    (again,) = oci_image("build", "--out", tmp_path / "b")
    assert first == again
    assert first.startswith("sha256:") and len(first) == 71
    # The digest names the manifest's bytes, as the registry will.
    manifest = (tmp_path / "a" / "blobs" / "sha256" / first.removeprefix("sha256:")).read_bytes()
    assert "sha256:" + hashlib.sha256(manifest).hexdigest() == first

    other = tmp_path / "other.wasm"
    other.write_bytes(module[:-1] + bytes([module[-1] ^ 1]))
    (changed,) = oci_image("build", "--module", other, "--out", tmp_path / "c")
    assert changed != first


def test_a_file_that_is_no_wasm_module_is_refused(tmp_path):
    text = tmp_path / "not.wasm"
    text.write_text("hello")
    done = subprocess.run([sys.executable, OCI_IMAGE, "build", "--module", text, "--out",
                           tmp_path / "x"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "not WebAssembly" in done.stderr


def test_the_image_goes_through_a_real_registry_and_comes_back_by_digest(procs, tmp_path,
                                                                        module):
    registry = start_registry(procs)
    digest, pinned = oci_image("push", f"{registry}/envoy-bff:0.1.0-test", "--plain-http",
                               "--out", tmp_path / "layout")
    assert pinned == f"{registry}/envoy-bff@{digest}"
    (built,) = oci_image("build", "--out", tmp_path / "again")
    assert digest == built  # the push kept the manifest's bytes (--preserve-digests)

    # The registry serves the same manifest by digest and by tag.
    raw = skopeo("inspect", "--raw", f"docker://{pinned}").encode()
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest
    by_tag = json.loads(skopeo("inspect", f"docker://{registry}/envoy-bff:0.1.0-test"))
    assert by_tag["Digest"] == digest

    manifest = json.loads(raw)
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == MANIFEST_TYPE
    assert manifest["config"]["mediaType"] == CONFIG_TYPE
    assert [layer["mediaType"] for layer in manifest["layers"]] == [LAYER_TYPE]

    # Pulled back by digest into a fresh layout: the loaders' file is the module.
    pulled = tmp_path / "pulled"
    skopeo("copy", "--quiet", f"docker://{pinned}", f"oci:{pulled}:pulled")
    blobs = pulled / "blobs" / "sha256"
    layer_digest = manifest["layers"][-1]["digest"].removeprefix("sha256:")
    layer = (blobs / layer_digest).read_bytes()
    assert hashlib.sha256(layer).hexdigest() == layer_digest
    assert plugin_wasm_of(layer) == module
    config = json.loads((blobs / manifest["config"]["digest"].removeprefix("sha256:")).read_bytes())
    assert config["rootfs"]["diff_ids"] == [
        "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()]


# --- Envoy's remote loading ----------------------------------------------------------------

@pytest.fixture(scope="module")
def module_server(procs, tmp_path_factory, module):
    """A plain HTTP server with the module at /envoy_bff.wasm; its output logs every GET."""
    root = tmp_path_factory.mktemp("module-server")
    (root / "envoy_bff.wasm").write_bytes(module)
    port = free_port()
    proc = procs.start("module-server", [sys.executable, "-u", "-m", "http.server", "--bind",
                                         "127.0.0.1", port, "--directory", root],
                       ready_line_prefix="Serving HTTP")
    return port, proc


def readme_vm_config() -> dict:
    """README, Deploying / Plain Envoy: the vm_config that loads the module from a server."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n### Plain Envoy\n", 1)[1].split("\n### ", 1)[0]
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", section, re.S) if "remote:" in b]
    return yaml.safe_load(block)["vm_config"]


def start_remote_envoy(procs, module_port: int, sha256: str, idp_port: int, issuer: str,
                       echo_port: int, port: int) -> Envoy:
    """Envoy with the README's remote vm_config, pointed at the loopback module server."""
    bootstrap = envoy_bootstrap(port, free_port(), echo_port, idp_port, filter_config(issuer))
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    vm = hcm["typed_config"]["http_filters"][0]["typed_config"]["config"]["vm_config"]
    readme = readme_vm_config()
    remote = readme["code"]["remote"]
    remote["http_uri"].update(uri=f"http://127.0.0.1:{module_port}/envoy_bff.wasm",
                              cluster="module_server")
    remote["sha256"] = sha256
    vm.update(runtime=readme["runtime"], code=readme["code"])
    bootstrap["static_resources"]["clusters"].append(static_cluster("module_server", module_port))
    return run_envoy(procs, bootstrap, "envoy-remote", env=SECRETS)


@pytest.fixture(scope="module")
def idp_and_echo(procs):
    port = free_port()
    echo = start_echo(procs)
    idp = start_idp(procs, [f"http://127.0.0.1:{port}/private/callback"],
                    post_logout_redirect_uris=[f"http://127.0.0.1:{port}/"])
    return idp, echo, port


def test_envoy_loads_the_module_from_http_by_its_sha256(procs, module_server, idp_and_echo,
                                                         module):
    module_port, _ = module_server
    idp, echo, port = idp_and_echo
    envoy = start_remote_envoy(procs, module_port, hashlib.sha256(module).hexdigest(),
                               idp.port, idp.issuer, echo, port)
    browser = Browser(envoy)
    browser.login()
    r = browser.get("/private/data", navigate=False, headers={"x-requested-with": "fetch"})
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["authorization"].startswith("Bearer ")
    envoy.assert_vm_healthy()
    envoy.process.stop()


def test_envoy_refuses_a_module_whose_sha256_differs(procs, module_server, idp_and_echo, module):
    module_port, server = module_server
    idp, echo, port = idp_and_echo
    served_before = server.output().count("GET /envoy_bff.wasm HTTP/1.1\" 200")
    wrong = hashlib.sha256(module + b"\0").hexdigest()
    envoy = start_remote_envoy(procs, module_port, wrong, idp.port, idp.issuer, echo, port)
    # The bytes were fetched (the refusal is the digest's, not a failed download) ...
    deadline = time.monotonic() + 10
    while (server.output().count("GET /envoy_bff.wasm HTTP/1.1\" 200") == served_before
           and time.monotonic() < deadline):
        time.sleep(0.1)
    assert server.output().count("GET /envoy_bff.wasm HTTP/1.1\" 200") > served_before
    # ... and refused: the filter never starts, and Envoy fails closed.
    while "failed to load" not in envoy.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "Plugin bff failed to load" in envoy.log()
    for path in ("/private/data", "/"):
        r = requests.get(envoy.url(path), timeout=5, allow_redirects=False)
        assert r.status_code >= 500, (path, r.status_code, r.text)
        assert "authorization" not in r.text  # the echo upstream never answered
    assert envoy.alive()
    envoy.process.stop()
