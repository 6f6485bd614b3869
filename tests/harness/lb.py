"""A plain Envoy load balancer (no wasm filter) in front of several BFF Envoys, and a browser
that can steer its requests to one of them.

The load balancer is what sits in front of BFF replicas in production: it faces the browser
(`use_remote_address: true`, so it sets X-Forwarded-Proto itself), rewrites the Host header to
an internal name and passes the original one on in X-Forwarded-Host (`append_x_forwarded_host`),
so the BFFs behind it must be configured with `trust_forwarded_headers: true` to build
redirect URIs with the address the browser used.

Routes, first match wins:
  `x-backend: <name>`  -> that backend alone (deterministic tests); the header is not forwarded
  anything else        -> every backend, ROUND_ROBIN
Every answer carries `x-served-by: 127.0.0.1:<port>` (the backend that answered), which
`LoadBalancer.served_by()` turns back into the backend's name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import requests

from .envoy import Browser, Envoy, loopback_bootstrap, run_envoy
from .procs import ProcessGroup, free_port

STEER_HEADER = "x-backend"
SERVED_BY_HEADER = "x-served-by"
# What the backends see as Host; the browser's host only reaches them in X-Forwarded-Host.
INTERNAL_HOST = "bff.internal"


def _static_cluster(name: str, ports: list[int]) -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                             "port_value": port}}}}
                for port in ports]}],
        },
    }


def lb_bootstrap(listen_port: int, admin_port: int, backends: dict[str, int]) -> dict:
    """Envoy bootstrap of the load balancer: `backends` maps a name ("a", "b") to a port."""
    route_action = {
        "timeout": "30s",
        "host_rewrite_literal": INTERNAL_HOST,
        "append_x_forwarded_host": True,
    }
    routes = [
        {"match": {"prefix": "/", "headers": [
            {"name": STEER_HEADER, "string_match": {"exact": name}}]},
         "route": {"cluster": f"bff_{name}", **route_action}}
        for name in backends
    ]
    routes.append({"match": {"prefix": "/"}, "route": {"cluster": "bff", **route_action}})
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "lb",
        "use_remote_address": True,
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
        "route_config": {"virtual_hosts": [{
            "name": "lb",
            "domains": ["*"],
            "request_headers_to_remove": [STEER_HEADER],
            "response_headers_to_add": [{
                "header": {"key": SERVED_BY_HEADER, "value": "%UPSTREAM_REMOTE_ADDRESS%"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }],
            "routes": routes,
        }]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    clusters = [_static_cluster(f"bff_{name}", [port]) for name, port in backends.items()]
    clusters.append(_static_cluster("bff", list(backends.values())))
    return loopback_bootstrap("lb", listen_port, admin_port, hcm, clusters)


@dataclass
class LoadBalancer(Envoy):
    backends: dict[str, int] = field(default_factory=dict)

    def served_by(self, response: requests.Response) -> str | None:
        """The name of the backend that answered (None: the LB answered itself)."""
        address = response.headers.get(SERVED_BY_HEADER, "")
        for name, port in self.backends.items():
            if address == f"127.0.0.1:{port}":
                return name
        return None


def start_lb(procs: ProcessGroup, backends: dict[str, int], port: int | None = None,
             name: str = "lb", timeout: float = 30.0) -> LoadBalancer:
    """Start the load balancer on `port` (or a free one). One worker, so that round robin
    strictly alternates between the backends for sequential requests."""
    envoy = run_envoy(procs, lb_bootstrap(port or free_port(), free_port(), backends), name,
                      concurrency=1, log_args=("--log-level", "warning"), timeout=timeout)
    return LoadBalancer(port=envoy.port, admin_port=envoy.admin_port, process=envoy.process,
                        backends=dict(backends))


class SteeredBrowser(Browser):
    """A Browser talking to the load balancer; `backend` ("a", "b", or None for round robin)
    steers every request it makes, the IdP login's callback included."""

    def __init__(self, lb: LoadBalancer, backend: str | None = None):
        super().__init__(lb)
        self.lb = lb
        self.backend = backend

    def request(self, method: str, path: str, navigate: bool = True, headers: dict | None = None,
                **kw) -> requests.Response:
        h = dict(headers or {})
        if self.backend is not None:
            h.setdefault(STEER_HEADER, self.backend)
        return super().request(method, path, navigate=navigate, headers=h, **kw)

    def on(self, backend: str | None) -> "SteeredBrowser":
        """Steer the next requests to `backend`; returns self, for b.on("a").get(...)."""
        self.backend = backend
        return self


# The filter's default session.refresh_leeway_s: a session falls due that long before expiry.
LEEWAY_S = 60


def api_call(lb: LoadBalancer, cookie: str, backend: str) -> requests.Response:
    """An API call to /private/api/me with exactly this Cookie header (outside any browser's
    jar), steered to `backend`."""
    return requests.get(lb.url("/private/api/me"), timeout=20, headers={
        "Cookie": cookie, "Accept": "application/json", "X-CSRF": "1", "Sec-Fetch-Mode": "cors",
        STEER_HEADER: backend})


def wait_until_due(b: SteeredBrowser) -> None:
    """Sleep until the session's access token is within the leeway of expiry (whole seconds,
    hence the extra second). The session endpoint only reports: it never refreshes."""
    info = b.on("a").get("/private/session", navigate=False)
    assert info.status_code == 200, info.text
    due = info.json()["access_token_expires_at"] - LEEWAY_S
    time.sleep(max(0.0, due - time.time()) + 1.1)
