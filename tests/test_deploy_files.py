"""The deployment files hang together: docker-compose.yml, envoy/*.yaml and deploy/istio/.

- every path they mount or name exists (compose volumes and the paths its commands use, the
  wasm module once built, every `filename` in an envoy yaml);
- every filter configuration in them (each envoy yaml's embedded JSON, the WasmPlugin's
  pluginConfig) passes the filter's own check, `Config::parse`, through
  examples/check_config.rs (built once per session, then its executable run per case: what
  `cargo run --quiet --example check_config` runs, without a rebuild between cases);
- the secrets reach the filter by the names it reads (BFF_CLIENT_SECRET, BFF_COOKIE_KEYS), and
  on Istio from the Secret;
- envoy/envoy.cors-example.yaml passes `envoy --mode validate`, and on a running Envoy the CORS
  filter answers preflights before the bff filter sees them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from harness.envoy import ENVOY_BIN, SECRETS, WASM, on_loopback, run_envoy
from harness.procs import REPO, free_port

COMPOSE = REPO / "docker-compose.yml"
ENVOY_YAMLS = sorted((REPO / "envoy").glob("*.yaml"))
CORS_EXAMPLE = REPO / "envoy" / "envoy.cors-example.yaml"
ISTIO_DIR = REPO / "deploy" / "istio"
ISTIO_YAMLS = sorted(ISTIO_DIR.rglob("*.yaml"))

WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
CORS_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"

# The filter's defaults for client_secret and cookie_keys (src/config.rs).
SECRET_ENV = {"BFF_CLIENT_SECRET", "BFF_COOKIE_KEYS"}


# --- reading the files ---------------------------------------------------------------------

def load_all(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load(path: Path) -> dict:
    docs = load_all(path)
    assert len(docs) == 1, f"{path}: expected one YAML document, found {len(docs)}"
    return docs[0]


def walk(node):
    """Every dict in a parsed YAML/JSON tree."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def wasm_configs(bootstrap: dict) -> list[dict]:
    """The `config` of every wasm HTTP filter in an Envoy bootstrap."""
    return [d["config"] for d in walk(bootstrap) if d.get("@type") == WASM_TYPE]


def filter_json_of(wasm_config: dict) -> str:
    return wasm_config["configuration"]["value"]


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def istio_objects() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in ISTIO_YAMLS for doc in load_all(path)]


def istio_object(kind: str) -> dict:
    found = [doc for _, doc in istio_objects() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} under deploy/istio, found {len(found)}"
    return found[0]


def plugin_config() -> dict:
    return istio_object("WasmPlugin")["spec"]["pluginConfig"]


# --- compose volumes: container paths back to the repository -------------------------------

def compose_mounts(service: dict) -> list[tuple[Path, str]]:
    """(host path, container path) of a service's bind mounts."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            host, target = volume["source"], volume["target"]
        else:
            host, target = volume.split(":")[:2]
        mounts.append(((REPO / host).resolve(), target.rstrip("/") or "/"))
    return mounts


def host_path(mounts: list[tuple[Path, str]], container_path: str) -> Path | None:
    """Where a path inside the container comes from, if a bind mount provides it."""
    for host, target in mounts:
        if container_path == target:
            return host
        if container_path.startswith(target + "/"):
            return host / container_path[len(target) + 1:]
    return None


def compose_services() -> dict:
    return load(COMPOSE)["services"]


def mounts_of_envoy_yaml(path: Path) -> list[tuple[Path, str]] | None:
    """The mounts of the compose service that runs this envoy yaml (None: run from the repo)."""
    for service in compose_services().values():
        mounts = compose_mounts(service)
        if any(host == path.resolve() for host, _ in mounts):
            return mounts
    return None


# --- the files parse ------------------------------------------------------------------------

@pytest.mark.parametrize("path", [COMPOSE, *ENVOY_YAMLS, *ISTIO_YAMLS], ids=rel)
def test_yaml_files_parse(path):
    docs = load_all(path)
    assert docs, f"{rel(path)} is empty"
    assert all(isinstance(doc, dict) for doc in docs)


def test_the_expected_files_are_there():
    assert CORS_EXAMPLE in ENVOY_YAMLS
    kinds = sorted(doc["kind"] for _, doc in istio_objects())
    assert kinds == ["Deployment", "DestinationRule", "Secret", "ServiceEntry", "WasmPlugin"]
    assert (ISTIO_DIR / "README.md").exists()


# --- every path exists ----------------------------------------------------------------------

def require_wasm():
    if not WASM.exists():
        pytest.fail(f"{rel(WASM)} is missing: build it with scripts/build-wasm")


@pytest.mark.parametrize("name", sorted(compose_services()))
def test_compose_mounts_and_the_paths_its_commands_use_exist(name):
    require_wasm()
    service = compose_services()[name]
    mounts = compose_mounts(service)
    for host, target in mounts:
        assert host.exists(), f"{name}: mounts {host} (at {target}), which does not exist"
    # Paths inside the container that a bind mount provides: the command's, the healthcheck's.
    words = []
    for key in ("command", "entrypoint"):
        value = service.get(key, [])
        words += (value if isinstance(value, list) else [value])
    tokens = re.findall(r"(?<![\w.:])/[\w./-]+", " ".join(str(w) for w in words))
    checked = 0
    for token in tokens:
        source = host_path(mounts, token.rstrip("/"))
        if source is not None:
            assert source.exists(), f"{name}: its command uses {token}, i.e. {source}, missing"
            checked += 1
    if mounts and words:
        assert checked, f"{name}: no command path maps to a mount; has the layout changed?"
    # The env_file is written by `scripts/demo --prepare` (gitignored: it holds secrets).
    if "env_file" in service:
        env_file = service["env_file"]
        assert env_file in (REPO / "scripts" / "demo").read_text(), (
            f"{name}: env_file {env_file} is not one scripts/demo writes")


@pytest.mark.parametrize("path", ENVOY_YAMLS, ids=rel)
def test_every_file_an_envoy_yaml_names_exists(path):
    require_wasm()
    names = [d["filename"] for d in walk(load(path)) if isinstance(d.get("filename"), str)]
    assert names, f"{rel(path)} names no file (not even the module)?"
    mounts = mounts_of_envoy_yaml(path)
    for name in names:
        if mounts is not None:
            # Run by compose: its paths are inside the container, provided by the mounts.
            source = host_path(mounts, name)
            assert source is not None, f"{rel(path)}: {name} is not mounted by docker-compose.yml"
            assert source.exists(), f"{rel(path)}: {name} comes from {source}, which is missing"
        elif name.startswith("/"):
            # A system file such as the CA bundle: there on this machine (and in Envoy's image).
            assert Path(name).exists(), f"{rel(path)}: {name} does not exist on this machine"
        else:
            # Relative to the repository root, where Envoy is started.
            assert (REPO / name).exists(), f"{rel(path)}: {name} does not exist in the repo"


# --- the filter accepts every configuration -------------------------------------------------

@pytest.fixture(scope="session")
def check_config() -> str:
    """Builds examples/check_config.rs once; the path of the executable."""
    result = subprocess.run(
        ["cargo", "build", "--quiet", "--example", "check_config", "--message-format=json"],
        cwd=REPO, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        pytest.fail(f"cargo build --example check_config failed:\n{result.stderr[-4000:]}")
    for line in result.stdout.splitlines():
        message = json.loads(line) if line.startswith("{") else {}
        if (message.get("reason") == "compiler-artifact"
                and message.get("target", {}).get("name") == "check_config"
                and message.get("executable")):
            return message["executable"]
    pytest.fail("cargo built no check_config executable")


def run_check_config(exe: str, config_json: str) -> set[str]:
    """Runs the filter's configuration check; the environment variable names it read."""
    result = subprocess.run([exe], input=config_json, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", (
        f"the filter refuses this configuration:\n{result.stdout}{result.stderr}")
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("environment:"):
            names |= set(line.removeprefix("environment:").split())
    return names


def config_cases():
    """(id, filter JSON, env names the deployment provides) for every configuration shipped."""
    cases = []
    for path in ENVOY_YAMLS:
        for i, wasm in enumerate(wasm_configs(load(path))):
            text = filter_json_of(wasm)
            provided = set(wasm["vm_config"].get("environment_variables", {})
                           .get("host_env_keys", []))
            cases.append((f"{rel(path)}#{i}", text, provided))
    plugin = istio_object("WasmPlugin")
    provided = {e["name"] for e in plugin["spec"].get("vmConfig", {}).get("env", [])
                if e.get("valueFrom") == "HOST"}
    # Istio passes pluginConfig (a protobuf Struct) to the module as JSON.
    cases.append(("deploy/istio WasmPlugin pluginConfig", json.dumps(plugin_config()), provided))
    return [pytest.param(text, provided, id=case_id) for case_id, text, provided in cases]


@pytest.mark.parametrize("config_json, provided", config_cases())
def test_the_filter_accepts_the_configuration_and_gets_its_secrets(check_config, config_json,
                                                                   provided):
    read = run_check_config(check_config, config_json)
    # The names the filter reads are its defaults, and the deployment provides exactly them.
    assert read == SECRET_ENV, f"the configuration makes the filter read {read}"
    assert provided == SECRET_ENV, f"the VM gets {provided}, the filter reads {read}"
    config = json.loads(config_json)
    assert "client_secret" not in config and "cookie_keys" not in config, (
        "secrets belong in the environment, not in a shipped configuration")


def test_check_config_names_every_problem(check_config):
    result = subprocess.run([check_config], input='{"issuer": "not a url", "isuer": 1}',
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "unknown field `isuer`" in result.stdout
    result = subprocess.run([check_config], input='{"issuer": "not a url"}',
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    fields = {line.split(":")[0] for line in result.stdout.splitlines()}
    assert {"issuer", "idp_cluster", "client_id"} <= fields, result.stdout


# --- Istio: the secrets' path and the IdP's cluster ------------------------------------------

def test_istio_objects_share_a_namespace_and_select_the_workload():
    namespaces = {doc["metadata"].get("namespace") for _, doc in istio_objects()}
    assert len(namespaces) == 1 and None not in namespaces, namespaces
    plugin = istio_object("WasmPlugin")
    assert plugin["apiVersion"] == "extensions.istio.io/v1alpha1"
    spec = plugin["spec"]
    assert spec["selector"]["matchLabels"] == {"app": "spa-bff"}
    assert spec["phase"] == "AUTHN"
    assert spec["url"].startswith("oci://")
    assert spec["imagePullPolicy"] in ("IfNotPresent", "Always")
    assert spec.get("failStrategy", "FAIL_CLOSE") == "FAIL_CLOSE"
    assert spec["pluginName"] == "bff"
    assert istio_object("Deployment")["metadata"]["name"] == "spa-bff"


def test_istio_secrets_come_from_the_secret_through_the_proxy_environment():
    env = istio_object("WasmPlugin")["spec"]["vmConfig"]["env"]
    assert {e["name"] for e in env} == SECRET_ENV
    for entry in env:
        assert entry["valueFrom"] == "HOST" and "value" not in entry, entry

    secret = istio_object("Secret")
    values = {**secret.get("stringData", {}),
              **{k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}}
    assert set(values) == SECRET_ENV
    # The placeholder must not be a usable key: a forgotten placeholder makes Envoy fail
    # closed instead of sealing every session with a key published in this repository.
    try:
        usable = len(base64.b64decode(values["BFF_COOKIE_KEYS"], validate=True)) == 32
    except (binascii.Error, ValueError):
        usable = False
    assert not usable, "the Secret's BFF_COOKIE_KEYS placeholder is a valid key"

    containers = istio_object("Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["istio-proxy"]
    proxy = containers[0]
    assert proxy["image"] == "auto", "let the injector pick the proxy image"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in proxy["env"]}
    assert set(refs) == SECRET_ENV
    for name, ref in refs.items():
        assert ref["name"] == secret["metadata"]["name"], (name, ref)
        assert ref["key"] in values, (name, ref)


def test_istio_idp_cluster_is_the_service_entrys_and_originates_tls():
    config = plugin_config()
    host = urlsplit(config["issuer"]).hostname
    direction, port, subset, cluster_host = config["idp_cluster"].split("|")
    assert (direction, subset, cluster_host) == ("outbound", "", host)

    entry = istio_object("ServiceEntry")["spec"]
    assert host in entry["hosts"]
    assert entry["location"] == "MESH_EXTERNAL" and entry["resolution"] == "DNS"
    assert int(port) in [p["number"] for p in entry["ports"]]

    rule = istio_object("DestinationRule")["spec"]
    assert rule["host"] == host
    tls = [s["tls"] for s in rule["trafficPolicy"]["portLevelSettings"]
           if s["port"]["number"] == int(port)]
    assert len(tls) == 1
    assert tls[0]["mode"] == "SIMPLE" and tls[0]["sni"] == host
    assert host in tls[0]["subjectAltNames"] and tls[0]["caCertificates"]


# --- envoy/envoy.cors-example.yaml ------------------------------------------------------------

def cors_example() -> tuple[dict, dict]:
    bootstrap = load(CORS_EXAMPLE)
    (wasm,) = wasm_configs(bootstrap)
    return bootstrap, json.loads(filter_json_of(wasm))


def hcm_of(bootstrap: dict) -> dict:
    (hcm,) = [d["typed_config"] for d in walk(bootstrap)
              if d.get("name") == "envoy.filters.network.http_connection_manager"]
    return hcm


def site(url: str) -> tuple[str, str]:
    """Scheme and registrable domain (the last two labels: enough for example.com names)."""
    parts = urlsplit(url)
    return parts.scheme, ".".join(parts.hostname.split(".")[-2:])


def test_cors_example_puts_cors_before_the_filter_and_agrees_with_it():
    bootstrap, config = cors_example()
    hcm = hcm_of(bootstrap)
    filters = [f["name"] for f in hcm["http_filters"]]
    assert filters == ["envoy.filters.http.cors", "envoy.filters.http.wasm",
                       "envoy.filters.http.router"]
    assert hcm["http_filters"][0]["typed_config"]["@type"] == CORS_TYPE
    assert hcm["normalize_path"] and hcm["merge_slashes"]

    policies = [d for d in walk(hcm["route_config"]) if d.get("@type") == CORS_POLICY_TYPE]
    assert policies, "no per-route CorsPolicy"
    app_origin = "https://app.example.com"
    for policy in policies:
        assert policy["allow_origin_string_match"] == [{"exact": app_origin}]
        assert policy["allow_credentials"] is True
        headers = {h.strip() for h in policy["allow_headers"].split(",")}
        assert {"x-csrf", "content-type"} <= headers
        methods = {m.strip() for m in policy["allow_methods"].split(",")}
        assert {"GET", "POST", "OPTIONS"} <= methods

    # The filter's side of the same layout.
    assert config["csrf"]["allowed_origins"] == [app_origin]
    assert config["csrf"]["header"] in headers
    assert config["post_login_url"].startswith(app_origin + "/")
    redirect = urlsplit(config["redirect_uri"])
    assert (redirect.scheme, redirect.hostname) == ("https", "bff.example.com")
    assert redirect.path.startswith(config.get("prefix", "/private") + "/")
    # SameSite=Lax is enough only because the SPA and the BFF are one site.
    assert config["cookie"]["same_site"] == "Lax"
    assert site(app_origin) == site(config["redirect_uri"])


def test_cors_example_reaches_the_idp_and_the_api_over_tls():
    bootstrap, config = cors_example()
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    assert set(clusters) == {"api", config["idp_cluster"]}
    idp_host = urlsplit(config["issuer"]).hostname
    for name, cluster in clusters.items():
        address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
            "address"]["socket_address"]
        tls = cluster["transport_socket"]["typed_config"]
        assert tls["@type"] == TLS_TYPE
        assert address["port_value"] == 443
        assert tls["sni"] == address["address"]
        sans = tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
        assert {"san_type": "DNS", "matcher": {"exact": tls["sni"]}} in sans
        if name == config["idp_cluster"]:
            assert address["address"] == idp_host


def envoy_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BFF_")}
    env.update(SECRETS)
    return env


def test_cors_example_validates():
    require_wasm()
    # From the repository root: the module's path in the file is relative to it.
    result = subprocess.run([str(ENVOY_BIN), "--mode", "validate", "-c", str(CORS_EXAMPLE),
                             "--log-level", "info"],
                            cwd=REPO, env=envoy_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().endswith("OK"), result.stdout
    assert "bff: configured for issuer https://login.example.com/realms/demo" in result.stderr


def runnable_cors_example(listen_port: int, admin_port: int, dead_port: int) -> dict:
    """The example on loopback: same filters and routes; the API and the IdP point at a port
    where nothing listens (no DNS, no TLS, nothing leaves the machine)."""
    bootstrap, _ = cors_example()
    names = [c["name"] for c in bootstrap["static_resources"]["clusters"]]
    on_loopback(bootstrap, listen_port, admin_port, {name: dead_port for name in names})
    for wasm in wasm_configs(bootstrap):
        wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
    return bootstrap


def test_cors_example_answers_preflights_before_the_filter(procs):
    require_wasm()
    # Port 9: below the range the OS hands out, so it cannot become Envoy's own port.
    listen_port, admin_port, dead_port = free_port(), free_port(), 9
    run_envoy(procs, runnable_cors_example(listen_port, admin_port, dead_port), "envoy-cors",
              env=SECRETS, concurrency=1, log_args=("--log-level", "warn"))

    base = f"http://127.0.0.1:{listen_port}"
    app = "https://app.example.com"
    host = {"Host": "bff.example.com"}

    def preflight(origin: str) -> requests.Response:
        return requests.options(f"{base}/private/api/items", timeout=10, headers={
            **host, "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-csrf"})

    # The SPA's preflight is answered by the cors filter: 200, not the bff filter's 401.
    r = preflight(app)
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.headers["access-control-allow-origin"] == app
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "x-csrf" in r.headers["access-control-allow-headers"]
    assert "set-cookie" not in r.headers
    # Another origin's preflight is answered too, without the grant: the browser refuses.
    r = preflight("https://evil.example.net")
    assert "access-control-allow-origin" not in r.headers
    assert r.status_code != 401
    # The filter's own 401 gets the CORS headers on its way out, so the SPA can read it.
    r = requests.get(f"{base}/private/api/items", timeout=10, headers={
        **host, "Origin": app, "Sec-Fetch-Mode": "cors", "Accept": "application/json",
        "x-csrf": "1"})
    assert r.status_code == 401, (r.status_code, r.text)
    assert r.json()["error"] == "unauthenticated"
    assert r.headers["access-control-allow-origin"] == app
    assert r.headers["access-control-allow-credentials"] == "true"
    # Nothing outside /private is served from the BFF's origin.
    assert requests.get(f"{base}/index.html", headers=host, timeout=10).status_code == 404
