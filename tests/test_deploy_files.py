"""The deployment files hang together: docker-compose.yml, envoy/*.yaml, deploy/replicas/ and
deploy/istio/.

- every path they mount or name exists (compose volumes and the paths its commands use, the
  wasm module once built, every `filename` in an envoy yaml);
- every filter configuration in them (each envoy yaml's embedded JSON, the WasmPlugin's
  pluginConfig) passes the filter's own check, `Config::parse`, through
  examples/check_config.rs (built once per session, then its executable run per case: what
  `cargo run --quiet --example check_config` runs, without a rebuild between cases);
- the secrets reach the filter by the names it reads (BFF_CLIENT_SECRET, BFF_COOKIE_KEYS; for
  envoy/envoy.fapi2.yaml BFF_CLIENT_KEY, BFF_DPOP_KEY, BFF_COOKIE_KEYS), and on Istio from the
  Secret;
- envoy/envoy.cors-example.yaml passes `envoy --mode validate`, and on a running Envoy the CORS
  filter answers preflights before the bff filter sees them;
- deploy/replicas/ (three BFF Envoys sharing a three-member etcd, behind an Envoy load
  balancer) agrees with itself: one config and one secrets file for the three replicas, the
  filter's store.cluster a cluster of the three members with a /health check, one static etcd
  cluster; both Envoy configs pass `envoy --mode validate`; and run on loopback (a real
  three-member etcd, the IdP, the files' Envoys with loopback addresses) a logout through one
  replica, or at the IdP (back-channel), ends the cookie's copies on the others within 2 s;
- deploy/istio/store.yaml makes the cluster the WasmPlugin's (commented) store.cluster names,
  with TLS to etcd from the mounted client certificate and outlier detection.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from harness import SESSION
from harness.envoy import ENVOY_BIN, SECRETS, WASM, on_loopback, run_envoy
from harness.etcd import start_etcd
from harness.idp import logout_at_idp, start_idp
from harness.lb import STEER_HEADER, LoadBalancer, SteeredBrowser, api_call
from harness.procs import REPO, free_port
from harness.upstream import start_echo

COMPOSE = REPO / "docker-compose.yml"
ENVOY_YAMLS = sorted((REPO / "envoy").glob("*.yaml"))
CORS_EXAMPLE = REPO / "envoy" / "envoy.cors-example.yaml"
ISTIO_DIR = REPO / "deploy" / "istio"
ISTIO_YAMLS = sorted(ISTIO_DIR.rglob("*.yaml"))
ISTIO_PLUGIN = ISTIO_DIR / "wasmplugin.yaml"
ISTIO_IDP_EGRESS = ISTIO_DIR / "idp-egress.yaml"
ISTIO_STORE = ISTIO_DIR / "store.yaml"
ISTIO_ENV_PATCH = ISTIO_DIR / "patch" / "istio-proxy-env.yaml"
ISTIO_CERT_PATCH = ISTIO_DIR / "patch" / "etcd-client-cert.yaml"
REPLICAS_DIR = REPO / "deploy" / "replicas"
REPLICAS_COMPOSE = REPLICAS_DIR / "docker-compose.yml"
REPLICAS_BFF = REPLICAS_DIR / "envoy-bff.yaml"
REPLICAS_LB = REPLICAS_DIR / "envoy-lb.yaml"
REPLICAS_YAMLS = [REPLICAS_BFF, REPLICAS_LB]
COMPOSES = [COMPOSE, REPLICAS_COMPOSE]

WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
CORS_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"

# The filter's defaults for client_secret and cookie_keys (src/config.rs).
SECRET_ENV = {"BFF_CLIENT_SECRET", "BFF_COOKIE_KEYS"}
# ... and for client_key and dpop_key, with no secret (envoy/envoy.fapi2.yaml).
FAPI2_ENV = {"BFF_CLIENT_KEY", "BFF_DPOP_KEY", "BFF_COOKIE_KEYS"}


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


def istio_object(kind: str, path: Path | None = None) -> dict:
    """The one object of this kind under deploy/istio (in the file `path`, if given)."""
    found = [doc for p, doc in istio_objects()
             if doc["kind"] == kind and (path is None or p == path)]
    where = rel(path) if path else "deploy/istio"
    assert len(found) == 1, f"expected one {kind} in {where}, found {len(found)}"
    return found[0]


def plugin_config() -> dict:
    return istio_object("WasmPlugin")["spec"]["pluginConfig"]


# --- compose volumes: container paths back to the repository -------------------------------

def compose_mounts(service: dict, base: Path = REPO) -> list[tuple[Path, str]]:
    """(host path, container path) of a service's bind mounts; `base` is the compose file's
    directory, which relative host paths start from."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            host, target = volume["source"], volume["target"]
        else:
            host, target = volume.split(":")[:2]
        mounts.append(((base / host).resolve(), target.rstrip("/") or "/"))
    return mounts


def host_path(mounts: list[tuple[Path, str]], container_path: str) -> Path | None:
    """Where a path inside the container comes from, if a bind mount provides it."""
    for host, target in mounts:
        if container_path == target:
            return host
        if container_path.startswith(target + "/"):
            return host / container_path[len(target) + 1:]
    return None


def compose_services(compose: Path = COMPOSE) -> dict:
    return load(compose)["services"]


def mounts_of_envoy_yaml(path: Path) -> list[tuple[Path, str]] | None:
    """The mounts of the compose service that runs this envoy yaml (None: run from the repo)."""
    for compose in COMPOSES:
        for service in compose_services(compose).values():
            mounts = compose_mounts(service, compose.parent)
            if any(host == path.resolve() for host, _ in mounts):
                return mounts
    return None


# --- the files parse ------------------------------------------------------------------------

@pytest.mark.parametrize("path", [*COMPOSES, *ENVOY_YAMLS, *REPLICAS_YAMLS, *ISTIO_YAMLS],
                         ids=rel)
def test_yaml_files_parse(path):
    docs = load_all(path)
    assert docs, f"{rel(path)} is empty"
    assert all(isinstance(doc, dict) for doc in docs)


def test_the_expected_files_are_there():
    assert CORS_EXAMPLE in ENVOY_YAMLS
    kinds = sorted(doc["kind"] for _, doc in istio_objects())
    assert kinds == ["Deployment", "Deployment", "DestinationRule", "DestinationRule", "Secret",
                     "ServiceEntry", "ServiceEntry", "WasmPlugin"]
    assert (ISTIO_DIR / "README.md").exists()
    for path in (REPLICAS_COMPOSE, *REPLICAS_YAMLS, REPLICAS_DIR / "README.md"):
        assert path.exists(), rel(path)


# --- every path exists ----------------------------------------------------------------------

def require_wasm():
    if not WASM.exists():
        pytest.fail(f"{rel(WASM)} is missing: build it with scripts/build-wasm")


def compose_cases():
    """(compose file, service name) for every service of every compose file; the root file's
    ids are the bare service names."""
    return [pytest.param(compose, name,
                         id=name if compose == COMPOSE else f"{rel(compose.parent)}:{name}")
            for compose in COMPOSES for name in sorted(compose_services(compose))]


@pytest.mark.parametrize("compose, name", compose_cases())
def test_compose_mounts_and_the_paths_its_commands_use_exist(compose, name):
    require_wasm()
    service = compose_services(compose)[name]
    mounts = compose_mounts(service, compose.parent)
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
        env_file = rel((compose.parent / service["env_file"]).resolve())
        assert env_file in (REPO / "scripts" / "demo").read_text(), (
            f"{name}: env_file {env_file} is not one scripts/demo writes")


# (The load balancer's envoy-lb.yaml names no file: nothing to check.)
@pytest.mark.parametrize("path", [*ENVOY_YAMLS, REPLICAS_BFF], ids=rel)
def test_every_file_an_envoy_yaml_names_exists(path):
    require_wasm()
    names = [d["filename"] for d in walk(load(path)) if isinstance(d.get("filename"), str)]
    assert names, f"{rel(path)} names no file (not even the module)?"
    mounts = mounts_of_envoy_yaml(path)
    for name in names:
        if mounts is not None:
            # Run by compose: its paths are inside the container, provided by the mounts.
            source = host_path(mounts, name)
            assert source is not None, f"{rel(path)}: {name} is not mounted by its compose file"
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


def commented_store() -> dict:
    """The `store` entry wasmplugin.yaml's pluginConfig carries commented out, uncommented:
    the lines `# store:` and the `#   ...` lines under it, at the pluginConfig's indentation."""
    lines = ISTIO_PLUGIN.read_text().splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.strip() == "# store:"]
    indent = lines[start][:len(lines[start]) - len(lines[start].lstrip())]
    block = ["store:"]
    for line in lines[start + 1:]:
        if not line.startswith(indent + "#   "):
            break
        block.append(line[len(indent) + 2:])
    return yaml.safe_load("\n".join(block))["store"]


def config_cases():
    """(id, filter JSON, env names the deployment provides) for every configuration shipped."""
    cases = []
    for path in [*ENVOY_YAMLS, REPLICAS_BFF]:
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
    # The same with its commented store entry uncommented, as the README says to.
    cases.append(("deploy/istio WasmPlugin pluginConfig with its store",
                  json.dumps({**plugin_config(), "store": commented_store()}), provided))
    return [pytest.param(text, provided, id=case_id) for case_id, text, provided in cases]


@pytest.mark.parametrize("config_json, provided", config_cases())
def test_the_filter_accepts_the_configuration_and_gets_its_secrets(check_config, config_json,
                                                                   provided):
    read = run_check_config(check_config, config_json)
    # The names the filter reads are its defaults, and the deployment provides exactly them.
    assert read in (SECRET_ENV, FAPI2_ENV), f"the configuration makes the filter read {read}"
    assert provided == read, f"the VM gets {provided}, the filter reads {read}"
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
    for patch in (ISTIO_ENV_PATCH, ISTIO_CERT_PATCH):
        assert istio_object("Deployment", patch)["metadata"]["name"] == "spa-bff"


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

    containers = istio_object("Deployment", ISTIO_ENV_PATCH)["spec"]["template"]["spec"][
        "containers"]
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

    entry = istio_object("ServiceEntry", ISTIO_IDP_EGRESS)["spec"]
    assert host in entry["hosts"]
    assert entry["location"] == "MESH_EXTERNAL" and entry["resolution"] == "DNS"
    assert int(port) in [p["number"] for p in entry["ports"]]

    rule = istio_object("DestinationRule", ISTIO_IDP_EGRESS)["spec"]
    assert rule["host"] == host
    tls = [s["tls"] for s in rule["trafficPolicy"]["portLevelSettings"]
           if s["port"]["number"] == int(port)]
    assert len(tls) == 1
    assert tls[0]["mode"] == "SIMPLE" and tls[0]["sni"] == host
    assert host in tls[0]["subjectAltNames"] and tls[0]["caCertificates"]


def test_istio_store_is_commented_out_and_names_the_store_service_entrys_cluster():
    # Commented: a real entry would make every user of the manifest run etcd.
    assert "store" not in plugin_config()
    store = commented_store()
    direction, port, subset, host = store["cluster"].split("|")
    assert (direction, subset) == ("outbound", "")

    entry = istio_object("ServiceEntry", ISTIO_STORE)["spec"]
    assert entry["hosts"] == [host]
    assert entry["location"] == "MESH_EXTERNAL"
    assert entry["resolution"] in ("DNS", "STATIC")
    assert int(port) in [p["number"] for p in entry["ports"]]
    members = [e["address"] for e in entry["endpoints"]]
    assert len(members) == 3 and len(set(members)) == 3, members

    rule = istio_object("DestinationRule", ISTIO_STORE)["spec"]
    assert rule["host"] == host
    policy = rule["trafficPolicy"]
    # No active health check in a DestinationRule: outlier detection takes a failing member
    # out, at its first failed call, and never leaves the cluster without any member.
    outlier = policy["outlierDetection"]
    assert outlier["consecutive5xxErrors"] == 1
    assert outlier["minHealthPercent"] > 0
    (tls,) = [s["tls"] for s in policy["portLevelSettings"] if s["port"]["number"] == int(port)]
    assert tls["mode"] == "MUTUAL"
    assert tls["subjectAltNames"] and tls["sni"] in tls["subjectAltNames"]
    assert set(members) <= set(tls["subjectAltNames"])

    # The certificate files are where the patch mounts the Secret into istio-proxy.
    annotations = istio_object("Deployment", ISTIO_CERT_PATCH)["spec"]["template"]["metadata"][
        "annotations"]
    (volume,) = json.loads(annotations["sidecar.istio.io/userVolume"])
    (mount,) = json.loads(annotations["sidecar.istio.io/userVolumeMount"])
    assert mount["name"] == volume["name"] and mount["readOnly"] is True
    for key in ("clientCertificate", "privateKey", "caCertificates"):
        directory, _, name = tls[key].rpartition("/")
        assert directory == mount["mountPath"], (key, tls[key])
        assert name in ("tls.crt", "tls.key", "ca.crt"), (key, tls[key])
    secret_name = volume["secret"]["secretName"]
    assert f"create secret generic {secret_name}" in ISTIO_CERT_PATCH.read_text()
    # The guide names both files.
    guide = (ISTIO_DIR / "README.md").read_text()
    assert "store.yaml" in guide and "patch/etcd-client-cert.yaml" in guide
    assert "## Several replicas with a store" in guide


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


# --- deploy/replicas: three BFF Envoys, a three-member etcd, a load balancer ------------------

BFF_REPLICAS = ("bff-1", "bff-2", "bff-3")
ETCD_MEMBERS = ("etcd-1", "etcd-2", "etcd-3")


def replicas_services() -> dict:
    return compose_services(REPLICAS_COMPOSE)


def flags(command: list[str]) -> dict[str, str]:
    """`--name=value` arguments of a command, by name."""
    return dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


def clusters_of(bootstrap: dict) -> dict[str, dict]:
    return {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}


def endpoints_of(cluster: dict) -> list[tuple[str, int]]:
    return [(e["endpoint"]["address"]["socket_address"]["address"],
             e["endpoint"]["address"]["socket_address"]["port_value"])
            for group in cluster["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]


def replicas_filter_config() -> dict:
    (wasm,) = wasm_configs(load(REPLICAS_BFF))
    return json.loads(filter_json_of(wasm))


def test_replicas_compose_runs_three_bffs_on_one_config_and_one_secrets_file():
    services = replicas_services()
    assert set(services) == {*BFF_REPLICAS, *ETCD_MEMBERS, "lb", "idp", "api"}
    root = compose_services()
    bffs = [services[name] for name in BFF_REPLICAS]
    for key in ("image", "volumes", "env_file", "command"):
        assert all(bff[key] == bffs[0][key] for bff in bffs), key
    # The same image as the single-Envoy demo, the replicas' config and the module.
    assert bffs[0]["image"] == root["envoy"]["image"]
    mounts = dict((target, host) for host, target in compose_mounts(bffs[0], REPLICAS_DIR))
    assert mounts["/etc/envoy/envoy.yaml"] == REPLICAS_BFF
    assert mounts["/etc/envoy/envoy_bff.wasm"] == WASM
    # One secrets file, the one scripts/demo --prepare writes, and the IdP's too (it takes the
    # client secret from it).
    env_file = (REPLICAS_DIR / bffs[0]["env_file"]).resolve()
    assert env_file == REPO / ".demo" / "secrets.env"
    assert (REPLICAS_DIR / services["idp"]["env_file"]).resolve() == env_file
    # Nothing but the load balancer and the IdP is published, on loopback only.
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert published == {"lb": ["127.0.0.1:8080:8080"], "idp": ["127.0.0.1:9000:9000"]}
    assert [hostname for hostname in (s.get("hostname") for s in bffs)] == list(BFF_REPLICAS)
    # The IdP and the API as at the root, the IdP posting back-channel logouts to the load
    # balancer at the filter's (default) path.
    assert services["lb"]["image"] == root["envoy"]["image"]
    for name in ("idp", "api"):
        assert services[name]["image"] == root[name]["image"]
        assert services[name]["command"] == root[name]["command"]
    idp_env = services["idp"]["environment"]
    for key, value in root["idp"]["environment"].items():
        assert idp_env[key] == value, key
    backchannel = urlsplit(idp_env["IDP_BACKCHANNEL_LOGOUT_URI"])
    assert backchannel.hostname == "lb" and backchannel.port == 8080
    config = replicas_filter_config()
    assert backchannel.path == config.get("backchannel_logout_path",
                                          config.get("prefix", "/private") + "/backchannel-logout")


def test_replicas_compose_etcd_is_one_static_cluster_of_three_official_members():
    services = replicas_services()
    initial = None
    for name in ETCD_MEMBERS:
        service = services[name]
        assert re.fullmatch(r"gcr\.io/etcd-development/etcd:v3\.5\.\d+", service["image"]), (
            service["image"])
        args = flags(service["command"])
        assert args["name"] == name
        assert args["advertise-client-urls"] == f"http://{name}:2379"
        assert args["initial-advertise-peer-urls"] == f"http://{name}:2380"
        assert args["initial-cluster-state"] == "new"
        initial = initial or (args["initial-cluster"], args["initial-cluster-token"])
        assert (args["initial-cluster"], args["initial-cluster-token"]) == initial
        assert "ports" not in service, f"{name}: etcd is for the replicas only"
    assert initial[0] == ",".join(f"{m}=http://{m}:2380" for m in ETCD_MEMBERS)


def test_replicas_store_cluster_lists_the_three_members_with_a_health_check():
    bootstrap = load(REPLICAS_BFF)
    clusters = clusters_of(bootstrap)
    config = replicas_filter_config()
    assert set(clusters) == {"api", config["idp_cluster"], config["store"]["cluster"]}
    etcd = clusters[config["store"]["cluster"]]
    assert endpoints_of(etcd) == [(name, 2379) for name in ETCD_MEMBERS]
    (check,) = etcd["health_checks"]
    assert check["http_health_check"]["path"] == "/health"
    assert check["unhealthy_threshold"] == 1 and check["healthy_threshold"] == 1
    # A dead member leaves the rotation within a second.
    seconds = lambda d: float(d.removesuffix("s"))  # noqa: E731
    assert seconds(check["interval"]) + seconds(check["timeout"]) <= 1.0
    assert seconds(etcd["connect_timeout"]) * 1000 < config["store"].get("timeout_ms", 1500)


def test_replicas_trust_the_load_balancer_and_it_spreads_over_all_three():
    bff_hcm = hcm_of(load(REPLICAS_BFF))
    assert bff_hcm["use_remote_address"] is False and bff_hcm["xff_num_trusted_hops"] == 1
    assert replicas_filter_config()["trust_forwarded_headers"] is True
    lb = load(REPLICAS_LB)
    assert not wasm_configs(lb), "the load balancer is a plain Envoy"
    lb_hcm = hcm_of(lb)
    assert lb_hcm["use_remote_address"] is True
    (vhost,) = lb_hcm["route_config"]["virtual_hosts"]
    assert STEER_HEADER in vhost["request_headers_to_remove"]
    routes = vhost["routes"]
    assert "headers" not in routes[-1]["match"], "the last route takes every request"
    clusters = clusters_of(lb)
    spread = clusters[routes[-1]["route"]["cluster"]]
    assert spread.get("lb_policy", "ROUND_ROBIN") == "ROUND_ROBIN"
    assert endpoints_of(spread) == [(name, 8080) for name in BFF_REPLICAS]
    for route in routes[:-1]:
        (header,) = route["match"]["headers"]
        name = header["string_match"]["exact"]
        assert header["name"] == STEER_HEADER and name in BFF_REPLICAS
        assert endpoints_of(clusters[route["route"]["cluster"]]) == [(name, 8080)]


def validatable(path: Path, tmp_path: Path) -> Path:
    """The file as JSON with the module's path inside the container replaced by the built one."""
    bootstrap = load(path)
    for wasm in wasm_configs(bootstrap):
        wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
    out = tmp_path / f"{path.stem}.json"
    out.write_text(json.dumps(bootstrap))
    return out


@pytest.mark.parametrize("path", REPLICAS_YAMLS, ids=rel)
def test_replicas_envoy_yamls_validate(path, tmp_path):
    require_wasm()
    result = subprocess.run([str(ENVOY_BIN), "--mode", "validate",
                             "-c", str(validatable(path, tmp_path)), "--log-level", "info"],
                            cwd=REPO, env=envoy_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().endswith("OK"), result.stdout
    if path == REPLICAS_BFF:
        assert "bff: configured for issuer http://127.0.0.1:9000" in result.stderr


# --- deploy/replicas on loopback ---------------------------------------------------------------

def on_loopback_with_pools(bootstrap: dict, listen_port: int, admin_port: int,
                           ports: dict[str, int | list[int]]) -> dict:
    """`on_loopback` for a bootstrap whose clusters may have several endpoints: a list of ports
    replaces a cluster's endpoints one for one (its health checks, policies kept)."""
    clusters = bootstrap["static_resources"]["clusters"]
    pools = [c for c in clusters if isinstance(ports[c["name"]], list)]
    bootstrap["static_resources"]["clusters"] = [c for c in clusters if c not in pools]
    on_loopback(bootstrap, listen_port, admin_port,
                {name: port for name, port in ports.items() if not isinstance(port, list)})
    for cluster in pools:
        cluster["type"] = "STATIC"
        cluster.pop("transport_socket", None)
        cluster.pop("dns_lookup_family", None)
        (group,) = cluster["load_assignment"]["endpoints"]
        assert len(group["lb_endpoints"]) == len(ports[cluster["name"]]), cluster["name"]
        group["lb_endpoints"] = [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": port}}}}
            for port in ports[cluster["name"]]]
        bootstrap["static_resources"]["clusters"].append(cluster)
    return bootstrap


@pytest.fixture(scope="module")
def replicas_on_loopback(procs):
    """deploy/replicas as shipped but for addresses: a real three-member etcd, the IdP (the
    load balancer's callback and back-channel logout URI registered), the echo API, three
    Envoys on envoy-bff.yaml and one on envoy-lb.yaml, everything on 127.0.0.1."""
    require_wasm()
    etcd = start_etcd(procs, members=3)
    lb_port = free_port()
    lb_base = f"http://127.0.0.1:{lb_port}"
    config = replicas_filter_config()
    backchannel = config.get("backchannel_logout_path",
                             config.get("prefix", "/private") + "/backchannel-logout")
    idp = start_idp(procs, [f"{lb_base}/private/callback"],
                    post_logout_redirect_uris=[f"{lb_base}/"],
                    env_overrides={"IDP_BACKCHANNEL_LOGOUT_URI": f"{lb_base}{backchannel}"})
    echo = start_echo(procs)
    config.update(issuer=idp.issuer, idp_authority=urlsplit(idp.issuer).netloc)
    bffs = {}
    for name in BFF_REPLICAS:
        bootstrap = on_loopback_with_pools(load(REPLICAS_BFF), free_port(), free_port(), {
            "api": echo, "idp": idp.port, "etcd": [m.client_port for m in etcd.members]})
        (wasm,) = wasm_configs(bootstrap)
        wasm["configuration"]["value"] = json.dumps(config)
        wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
        bffs[name] = run_envoy(procs, bootstrap, f"envoy-{name}", env=SECRETS)
    ports = {name: envoy.port for name, envoy in bffs.items()}
    bootstrap = on_loopback_with_pools(load(REPLICAS_LB), lb_port, free_port(),
                                       {"bff": list(ports.values()), **ports})
    envoy = run_envoy(procs, bootstrap, "envoy-lb", concurrency=1,
                      log_args=("--log-level", "warning"))
    lb = LoadBalancer(port=envoy.port, admin_port=envoy.admin_port, process=envoy.process,
                      backends=ports)
    return etcd, idp, bffs, lb


def signed_in_through(lb: LoadBalancer, replica: str) -> SteeredBrowser:
    b = SteeredBrowser(lb, replica)
    r = b.login()
    assert r.status_code == 302 and SESSION in b.jar, (r.status_code, r.text)
    for name in BFF_REPLICAS:
        assert api_call(lb, b.cookie_header(), name).status_code == 200, name
    return b


def refused_by_every_replica_within(lb: LoadBalancer, cookie: str, seconds: float) -> None:
    """Within `seconds`, one whole pass is refused: each replica steered to, and as many
    round-robin calls (a replica's workers each learn it at their next tick, so one refusal
    from a replica says nothing of its other workers)."""
    started = time.monotonic()
    answers: list[requests.Response] = []
    while time.monotonic() - started < seconds:
        answers = [api_call(lb, cookie, name) for name in BFF_REPLICAS] + [
            requests.get(lb.url("/private/api/me"), timeout=20, headers={
                "Cookie": cookie, "Accept": "application/json", "X-CSRF": "1",
                "Sec-Fetch-Mode": "cors"})
            for _ in BFF_REPLICAS]
        if all(r.status_code == 401 for r in answers):
            break
        time.sleep(0.05)
    for r in answers:
        assert r.status_code == 401 and r.json()["error"] == "unauthenticated", (
            f"a copy of the cookie still works after {seconds} s: {r.text}")


def test_replicas_on_loopback_a_logout_through_one_ends_the_copies_on_the_others(
        replicas_on_loopback):
    etcd, _, bffs, lb = replicas_on_loopback
    b = signed_in_through(lb, "bff-1")
    copy = b.cookie_header()
    r = api_call(lb, copy, "bff-2")
    assert r.headers.get("x-served-by"), "the replicas name themselves"
    info = b.on("bff-1").get("/private/session", navigate=False)
    assert info.status_code == 200, info.text
    logout_url = info.json()["logout_url"]
    assert b.get(logout_url).status_code == 302
    refused_by_every_replica_within(lb, copy, 2.0)
    sid = logout_url.split("sid=", 1)[1]
    prefix = replicas_filter_config()["store"]["prefix"]
    keys = [k for k in etcd.get_prefix(prefix) if "/deny/" in k]
    assert any(k.endswith(f"/deny/s/{sid}") for k in keys), keys
    for envoy in bffs.values():
        envoy.assert_vm_healthy()


def test_replicas_on_loopback_the_idps_back_channel_logout_reaches_every_replica(
        replicas_on_loopback):
    _, idp, bffs, lb = replicas_on_loopback
    b = signed_in_through(lb, "bff-2")
    copy = b.cookie_header()
    posted = idp.stats()["backchannel_ok"]
    # The user signs out at the IdP itself; it posts the logout token to the load balancer.
    logout_at_idp(b.idp, idp.discovery()["end_session_endpoint"])
    assert idp.stats()["backchannel_ok"] == posted + 1
    refused_by_every_replica_within(lb, copy, 2.0)
    assert sum(e.counters()["backchannel_logouts"] for e in bffs.values()) == 1
    for envoy in bffs.values():
        envoy.assert_vm_healthy()
