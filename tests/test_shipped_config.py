"""What the project ships works as shipped: envoy/envoy.yaml and envoy/envoy.compose.yaml pass
`envoy --mode validate` (which loads the module and runs its configuration check), the compose
file agrees with them, and `scripts/demo --check` logs in through the demo end to end."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest
import yaml

from harness.envoy import ENVOY_BIN, SECRETS, WASM
from harness.procs import REPO

ENVOY_YAML = REPO / "envoy" / "envoy.yaml"
COMPOSE_ENVOY_YAML = REPO / "envoy" / "envoy.compose.yaml"
COMPOSE = REPO / "docker-compose.yml"
DEMO_PORTS = (8080, 8081, 9000, 9901)


@pytest.fixture(scope="module", autouse=True)
def built_module():
    if not WASM.exists():
        pytest.fail(f"{WASM} is missing: build it with scripts/build-wasm")


def validate(config_path, env_extra=None, drop_secrets=False):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BFF_")}
    if not drop_secrets:
        env.update(SECRETS)
    env.update(env_extra or {})
    # From the repository root, like the demo: the wasm path in envoy.yaml is relative to it.
    return subprocess.run([str(ENVOY_BIN), "--mode", "validate", "-c", str(config_path),
                           "--log-level", "info"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def wasm_filter(bootstrap: dict) -> dict:
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = hcm["typed_config"]["http_filters"]
    assert [f["name"] for f in filters] == ["envoy.filters.http.wasm",
                                            "envoy.filters.http.router"]
    return filters[0]["typed_config"]["config"]


def filter_json(bootstrap: dict) -> dict:
    return json.loads(wasm_filter(bootstrap)["configuration"]["value"])


def load(path) -> dict:
    return yaml.safe_load(path.read_text())


# --- envoy/envoy.yaml ---------------------------------------------------------------------

def test_envoy_yaml_validates_and_the_filter_accepts_its_config():
    result = validate(ENVOY_YAML)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("OK"), result.stdout
    # Validate mode loads the module and runs on_configure: the filter's own log line.
    assert "bff: configured for issuer http://127.0.0.1:9000" in result.stderr, result.stderr


def test_envoy_yaml_holds_no_secret_and_validation_needs_them_from_the_environment():
    config = wasm_filter(load(ENVOY_YAML))
    assert set(config["vm_config"]["environment_variables"]["host_env_keys"]) == {
        "BFF_CLIENT_SECRET", "BFF_COOKIE_KEYS"}
    assert "client_secret" not in filter_json(load(ENVOY_YAML))
    assert "cookie_keys" not in filter_json(load(ENVOY_YAML))

    result = validate(ENVOY_YAML, drop_secrets=True)
    assert result.returncode != 0
    assert "environment variable BFF_CLIENT_SECRET is not set" in result.stderr, result.stderr
    assert "environment variable BFF_COOKIE_KEYS is not set" in result.stderr
    assert SECRETS["BFF_COOKIE_KEYS"] not in result.stderr


def test_envoy_yaml_normalises_paths_before_the_filter_sees_them():
    hcm = load(ENVOY_YAML)["static_resources"]["listeners"][0]["filter_chains"][0][
        "filters"][0]["typed_config"]
    assert hcm["normalize_path"] is True
    assert hcm["merge_slashes"] is True
    assert hcm["path_with_escaped_slashes_action"] == "UNESCAPE_AND_REDIRECT"


# --- docker compose -----------------------------------------------------------------------

def test_compose_envoy_yaml_validates(tmp_path):
    bootstrap = load(COMPOSE_ENVOY_YAML)
    code = wasm_filter(bootstrap)["vm_config"]["code"]["local"]
    assert code["filename"] == "/etc/envoy/envoy_bff.wasm"
    code["filename"] = str(WASM)  # where compose mounts it from
    local_copy = tmp_path / "envoy.compose.json"
    local_copy.write_text(json.dumps(bootstrap))
    result = validate(local_copy)
    assert result.returncode == 0, result.stderr
    assert "bff: configured for issuer http://127.0.0.1:9000" in result.stderr, result.stderr


def test_compose_envoy_yaml_is_the_demo_config_with_service_names():
    local, compose = load(ENVOY_YAML), load(COMPOSE_ENVOY_YAML)
    # Same filter configuration; only the token requests' Host is pinned to the issuer's,
    # since the cluster now points at the service name.
    expected = dict(filter_json(local), idp_authority="127.0.0.1:9000")
    assert filter_json(compose) == expected
    clusters = {c["name"]: c for c in compose["static_resources"]["clusters"]}
    assert set(clusters) == {"api", "idp"}

    def address(cluster):
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        socket_address = endpoint["address"]["socket_address"]
        return socket_address["address"], socket_address["port_value"]

    assert address(clusters["api"]) == ("api", 8081)
    assert address(clusters["idp"]) == ("idp", 9000)


def test_docker_compose_file_agrees_with_the_envoy_config():
    compose = load(COMPOSE)
    services = compose["services"]
    assert set(services) == {"idp", "api", "envoy"}
    envoy, idp, api = services["envoy"], services["idp"], services["api"]

    assert envoy["image"].startswith("envoyproxy/envoy:v1.40")
    mounts = dict(v.removesuffix(":ro").split(":", 1) for v in envoy["volumes"])
    assert mounts["./envoy/envoy.compose.yaml"] == "/etc/envoy/envoy.yaml"
    assert mounts["./target/wasm32-wasip1/release/envoy_bff.wasm"] == "/etc/envoy/envoy_bff.wasm"
    assert envoy["env_file"] == ".demo/secrets.env" and idp["env_file"] == ".demo/secrets.env"
    assert "127.0.0.1:8080:8080" in envoy["ports"]
    assert "127.0.0.1:9000:9000" in idp["ports"]
    assert "ports" not in api, "the API must be reachable only through Envoy"
    assert "0.0.0.0" in api["command"]

    # The browser, the IdP and the filter must agree on the issuer and the callback.
    config = filter_json(load(COMPOSE_ENVOY_YAML))
    env = idp["environment"]
    assert env["IDP_ISSUER"] == config["issuer"]
    assert env["IDP_HOST"] == "0.0.0.0"
    assert env["IDP_CLIENT_ID"] == config["client_id"]
    # Endpoints come from discovery at {issuer}/.well-known/openid-configuration.
    assert "authorization_endpoint" not in config and "token_endpoint" not in config
    redirect_uris = env["IDP_REDIRECT_URIS"].split(",")
    assert redirect_uris == [f"http://{host}:8080{config['redirect_uri']}"
                             for host in ("localhost", "127.0.0.1")]
    # The IdP's client secret is Envoy's, from the same env_file ($$ escapes compose).
    assert 'IDP_CLIENT_SECRET="$$BFF_CLIENT_SECRET"' in " ".join(idp["command"])


# --- scripts/demo --check -------------------------------------------------------------------

def busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_logs_in_end_to_end_and_stops_everything(procs):
    taken = [p for p in DEMO_PORTS if busy(p)]
    if taken:
        pytest.skip(f"the demo needs fixed ports {DEMO_PORTS}; in use: {taken} "
                    "(a demo already running?)")
    started = time.monotonic()
    demo = procs.start("demo", [REPO / "scripts" / "demo", "--check"])
    try:
        demo.popen.wait(timeout=300)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the runner stop its children by PID before it exits.
        demo.stop(grace=60)
        pytest.fail(f"scripts/demo --check did not finish in 300s:\n{demo.output()}")
    demo.stop()  # already exited: collects its output
    output = demo.output()
    elapsed = time.monotonic() - started

    children = {int(pid): name for name, pid in
                re.findall(r"^\[demo\] (\w+) started \(pid (\d+)\)", output, re.M)}
    leaked = [pid for pid in children if alive(pid)]
    for pid in leaked:  # last resort, still by PID, so the next test run finds ports free
        os.kill(pid, signal.SIGKILL)

    assert demo.popen.returncode == 0, output
    assert "OK" in output.splitlines(), output
    assert set(children.values()) == {"IdP", "API", "Envoy"}, output
    assert not leaked, f"left running: {[children[p] for p in leaked]}\n{output}"
    assert not [p for p in DEMO_PORTS if busy(p)], "a demo port is still in use"
    print(f"scripts/demo --check took {elapsed:.1f}s")


def test_the_demo_config_for_a_real_idp_validates(tmp_path, monkeypatch):
    """DEMO_ISSUER points the demo at a real IdP: a rendered copy of envoy.yaml with a TLS
    cluster to the issuer's host, which Envoy (and the filter in it) accepts."""
    import sys
    sys.path.insert(0, str(REPO / "demo"))
    import run as demo_run

    monkeypatch.setattr(demo_run, "DEMO_DIR", tmp_path)
    monkeypatch.setenv("DEMO_ISSUER", "https://login.example.com/realms/demo")
    monkeypatch.setenv("DEMO_CLIENT_ID", "spa-bff")
    monkeypatch.setenv("DEMO_END_SESSION_ENDPOINT", "https://login.example.com/logout?logout_uri=x")
    rendered = demo_run.envoy_yaml_for(demo_run.real_idp())
    text = rendered.read_text()
    assert "login.example.com" in text and "UpstreamTlsContext" in text
    env = {**os.environ, **SECRETS}
    r = subprocess.run([str(ENVOY_BIN), "--mode", "validate", "-c", str(rendered)], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "configured for issuer https://login.example.com/realms/demo" in r.stdout + r.stderr


def readme_blocks(section: str, lang: str) -> list[str]:
    """The fenced `lang` blocks of the README's `## section`."""
    text = (REPO / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", body, re.S)


def readme_bootstrap(filters: list, clusters: list, runtime: dict | None = None,
                     **hcm) -> dict:
    """A bootstrap for `envoy --mode validate` around the README's filter entries and clusters
    (and its runtime layer); `hcm`: more of the connection manager's fields (e.g.
    `access_log`)."""
    bootstrap = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                 "http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "normalize_path": True,
                        "merge_slashes": True,
                        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
                        "route_config": {"virtual_hosts": [{
                            "name": "app", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"},
                                        "direct_response": {"status": 200}}]}]},
                        "http_filters": filters,
                        **hcm,
                    }}]}],
            }],
            "clusters": clusters,
        },
    }
    if runtime:
        bootstrap["layered_runtime"] = runtime
    return bootstrap


@pytest.mark.parametrize("configuration", ["minimal", "nested"])
def test_the_readmes_minimal_envoy_yaml_validates(tmp_path, configuration):
    """README, Minimal envoy.yaml: its filter entry and its `idp` cluster, put in a listener,
    pass `envoy --mode validate` (the filter's configuration check included); so does the
    Configuration section's example of nested settings in that filter entry."""
    filters_yaml, clusters_yaml, runtime_yaml = readme_blocks("Minimal envoy.yaml", "yaml")
    filters = yaml.safe_load(filters_yaml)["http_filters"]
    clusters = yaml.safe_load(clusters_yaml)["clusters"]
    assert [c["name"] for c in clusters] == ["idp"]
    runtime = yaml.safe_load(runtime_yaml)["layered_runtime"]
    shipped = yaml.safe_load((REPO / "envoy" / "envoy.yaml").read_text())["layered_runtime"]
    assert runtime == shipped
    if configuration == "nested":
        (example,) = readme_blocks("Configuration", "json")
        filters[0]["typed_config"]["config"]["configuration"]["value"] = example
    bootstrap = readme_bootstrap(filters, clusters, runtime)
    path = tmp_path / "readme-envoy.yaml"
    path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
    r = validate(path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "configured for issuer https://idp.example.com" in out, out


def test_the_readmes_access_log_validates(tmp_path):
    """README, Access logs: its access log on the minimal envoy.yaml, with the filter's
    `access_log` on, passes `envoy --mode validate`, and prints the filter's key."""
    (access_log_yaml,) = readme_blocks("Access logs", "yaml")
    access_log = yaml.safe_load(access_log_yaml)["access_log"]
    line = access_log[0]["typed_config"]["log_format"]["text_format_source"]["inline_string"]
    assert "%FILTER_STATE(wasm.bff:PLAIN)%" in line
    filters_yaml, clusters_yaml, _runtime = readme_blocks("Minimal envoy.yaml", "yaml")
    filters = yaml.safe_load(filters_yaml)["http_filters"]
    settings = filters[0]["typed_config"]["config"]["configuration"]
    settings["value"] = json.dumps({**json.loads(settings["value"]), "access_log": True})
    bootstrap = readme_bootstrap(filters, yaml.safe_load(clusters_yaml)["clusters"],
                                 access_log=access_log)
    path = tmp_path / "readme-access-log.yaml"
    path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
    r = validate(path)
    assert r.returncode == 0, r.stdout + r.stderr


# The filter reads 256 KiB of an IdP answer (src/filter/host.rs, MAX_IDP_BODY); Envoy should stop
# buffering one there too (README, Minimal envoy.yaml).
FILTER_ANSWER_LIMIT = 256 * 1024
SHIPPED_BFF_YAMLS = sorted({*REPO.glob("envoy/*.yaml"), REPO / "deploy" / "replicas" / "envoy-bff.yaml"})


@pytest.mark.parametrize("path", SHIPPED_BFF_YAMLS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_envoy_caps_async_answers_at_the_filters_limit(path):
    text = path.read_text()
    assert "envoy.filters.http.wasm" in text  # each of them runs the bff filter
    layers = yaml.safe_load(text)["layered_runtime"]["layers"]
    values = {k: v for layer in layers for k, v in layer.get("static_layer", {}).items()}
    assert values.get("http.async_response_buffer_limit") == FILTER_ANSWER_LIMIT
    source = (REPO / "src" / "filter" / "host.rs").read_text()
    assert "const MAX_IDP_BODY: usize = 256 * 1024;" in source
