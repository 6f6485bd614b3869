"""The side-by-side benchmark behind bench/run (see bench/README.md for what each variant is and
how the numbers are computed).

Every Envoy runs with `--concurrency 1` and answers from a `direct_response` route, so nothing
but Envoy and its filters is measured; wrk (1 thread) loads one Envoy at a time. Envoys and wrk
are pinned to different CPUs when the machine has two or more.

    a  Envoy, no auth filter
    b  the floor: a minimal proxy-wasm filter (bench/floor-filter)
    c  Envoy's native OAuth2 filter with a valid session
    d  envoy-bff with a valid session and a fresh token
    e  envoy-bff with a token due for refresh: every request refreshes at the test IdP
    f  envoy-bff's login callback (code exchange + ID token check), by a Python client
    p  (diagnostic) envoy-bff on a path outside its prefix: what it costs before any session work
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
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

from harness.envoy import ENVOY_BIN, KEY_A, WASM, Browser, Envoy, filter_config, wait_ready  # noqa: E402
from harness.idp import DEFAULT_CLIENT_SECRET, login_at_idp, start_idp  # noqa: E402
from harness.procs import Process, ProcessGroup, free_port  # noqa: E402
from harness.upstream import start_echo  # noqa: E402

FLOOR_WASM = BENCH / "floor-filter" / "target" / "wasm32-wasip1" / "release" / "floor_filter.wasm"
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

NAMES = {
    "a": "Envoy, no auth filter",
    "b": "floor: minimal proxy-wasm filter",
    "c": "Envoy OAuth2 filter, valid session",
    "d": "envoy-bff, valid session, fresh token",
    "e": "envoy-bff, token due: refresh at the IdP",
    "p": "envoy-bff, path outside its prefix",
}
# (p) is a diagnostic: the same Envoy as (d), the same request, a path the filter passes through.
PASS_PATH = "/public/bench"


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


# --- Envoy configurations ---------------------------------------------------------------------

def cluster(name: str, port: int) -> dict:
    return {
        "name": name, "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }


def bootstrap(listen_port: int, admin_port: int, http_filters: list, echo_port: int,
              idp_port: int, secrets_: list | None = None) -> dict:
    """The same listener for every variant (the harness's edge settings); only the filters differ."""
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
            "clusters": [cluster("echo", echo_port), cluster("idp", idp_port)],
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


def bff_filter(issuer: str, **overrides) -> dict:
    config = filter_config(issuer, **overrides)
    return wasm_filter("bff", WASM, json.dumps(config), ("BFF_CLIENT_SECRET", "BFF_COOKIE_KEYS"))


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
        {"name": "oauth2-token", "generic_secret": {"secret": {"inline_string": DEFAULT_CLIENT_SECRET}}},
        {"name": "oauth2-hmac", "generic_secret": {"secret": {"inline_string": secrets.token_hex(32)}}},
    ]
    return filt, secrets_


# --- processes ------------------------------------------------------------------------------

@dataclass
class Pinning:
    """Envoy on the last CPU, wrk (and our client) on the others: they never share a core."""
    envoy: list[str] = field(default_factory=list)
    load: list[str] = field(default_factory=list)

    @staticmethod
    def make(enabled: bool) -> "Pinning":
        cpus = sorted(os.sched_getaffinity(0))
        if not enabled or len(cpus) < 2 or shutil.which("taskset") is None:
            return Pinning()
        rest = ",".join(str(c) for c in cpus[:-1])
        return Pinning(envoy=["taskset", "-c", str(cpus[-1])], load=["taskset", "-c", rest])


def start_bench_envoy(procs: ProcessGroup, name: str, listen_port: int, http_filters: list,
                      echo_port: int, idp_port: int, pin: Pinning, secrets_=None) -> Envoy:
    admin_port = free_port()
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"envoy-{name}.json"
    path.write_text(json.dumps(bootstrap(listen_port, admin_port, http_filters, echo_port, idp_port,
                                         secrets_), indent=1))
    env = {"BFF_CLIENT_SECRET": DEFAULT_CLIENT_SECRET, "BFF_COOKIE_KEYS": KEY_A}
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


def stats(envoy: Envoy, contains: str) -> dict[str, int]:
    text = requests.get(f"http://127.0.0.1:{envoy.admin_port}/stats", timeout=10).text
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if contains in name and value.strip().isdigit():
            out[name] = int(value)
    return out


def stat(envoy: Envoy, suffix: str) -> int:
    return sum(v for k, v in stats(envoy, suffix).items() if k.endswith(suffix))


# --- logins ---------------------------------------------------------------------------------

def cookie_header(jar: dict[str, str], names=None) -> str:
    return "; ".join(f"{k}={v}" for k, v in jar.items() if names is None or k in names)


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
    if key in "cde" and not auth.startswith("Bearer "):
        raise RuntimeError(f"variant {key}: no bearer token upstream: {sorted(seen)}")
    if key == "b" and "x-floor" not in seen:
        raise RuntimeError("variant b: the floor filter did not set x-floor")
    if key in "de" and SESSION in seen.get("cookie", ""):
        raise RuntimeError(f"variant {key}: the session cookie went upstream")
    if key == "p" and (auth or SESSION not in seen.get("cookie", "")):
        raise RuntimeError("variant p: the filter touched a request outside its prefix")
    b = requests.get(envoy.url(bench_path), headers=headers, allow_redirects=False, timeout=20)
    if b.status_code != 200 or b.text != "ok\n":
        raise RuntimeError(f"variant {key}: {bench_path} answered {b.status_code} {b.text[:200]!r}")
    renewed = [c for c in r.raw.headers.getlist("Set-Cookie") if c.startswith(SESSION + "=")]
    if key == "e" and not renewed:
        raise RuntimeError("variant e: the request did not refresh (no new session cookie)")
    if key == "d" and renewed:
        raise RuntimeError("variant d: the session was rewritten; the token should be fresh")
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
    ap.add_argument("--skip", default="", help="variants to leave out, e.g. --skip cp")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where latest.json and latest.png go")
    args = ap.parse_args(argv)

    for path, what in ((WASM, "cargo build --target wasm32-wasip1 --release"),
                       (FLOOR_WASM, "cargo build --manifest-path bench/floor-filter/Cargo.toml "
                                    "--target wasm32-wasip1 --release")):
        if not path.exists():
            log(f"{path} is missing: {what} (bench/run does it)")
            return 2
    if shutil.which("wrk") is None:
        log("wrk is not installed (bench/run installs it)")
        return 2

    started = datetime.datetime.now(datetime.timezone.utc)
    # What the Envoys load (read now: the module file can be rebuilt while we run).
    modules = {p.name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
               for p in (WASM, FLOOR_WASM) for data in [p.read_bytes()]}
    info = machine_info()
    pin = Pinning.make(not args.no_pin)
    log(f"{info['nproc']} CPUs ({info['cpu_model']}), Envoy {info['envoy_version']}, "
        f"CPUs {info['cpu_busy_before_start'] * 100:.0f}% busy before we start; "
        + (f"Envoy on CPU {pin.envoy[-1]}, wrk and the clients on CPU {pin.load[-1]}"
           if pin.envoy else "no CPU pinning"))

    skipped: dict[str, str] = {k: "left out with --skip" for k in args.skip if k in NAMES and k != "a"}
    if "d" in skipped:
        skipped.setdefault("p", "needs (d)")
    # Each wrk run of (e), warm-up or measured, gets its own slice of sessions. Every answer
    # brings its session back renewed, so a slice only has to cover the requests in flight.
    slice_size = args.connections + 8
    e_runs = 2 * args.repeats
    n_logins = max(args.logins, e_runs * slice_size + 1) if "e" not in skipped else args.logins

    procs = ProcessGroup(WORK / "logs")
    try:
        ports = {k: free_port() for k in "abcde"}
        idp = start_idp(procs, [f"http://127.0.0.1:{ports['c']}/callback",
                                f"http://127.0.0.1:{ports['d']}/private/callback",
                                f"http://127.0.0.1:{ports['e']}/private/callback"],
                        env_overrides={"IDP_ID_TOKEN_ALG": args.id_token_alg})
        echo_port = start_echo(procs)
        log(f"IdP: tests/idp/server.mjs (oidc-provider on node) at {idp.issuer}, ID tokens "
            f"{args.id_token_alg}; starting the Envoys")

        oauth2, oauth2_secrets = oauth2_filter(idp.issuer)
        filters = {
            "a": ([], None),
            "b": ([wasm_filter("floor", FLOOR_WASM)], None),
            "c": ([oauth2], oauth2_secrets),
            "d": ([bff_filter(idp.issuer)], None),
            "e": ([bff_filter(idp.issuer, session={"refresh_leeway_s": 86400})], None),
        }
        envoys: dict[str, Envoy] = {}
        for k in "abcde":
            if k in skipped:
                continue
            try:
                envoys[k] = start_bench_envoy(procs, k, ports[k], filters[k][0], echo_port,
                                              idp.port, pin, filters[k][1])
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
            cookies["a"] = cookies["b"] = cookies["p"] = cookies["d"]
        if "c" in envoys:
            try:
                cookies["c"] = oauth2_login(envoys["c"])
            except Exception as exc:  # noqa: BLE001
                skipped["c"] = f"login through the OAuth2 filter failed: {exc}"
                log(f"variant c left out: {skipped['c']}")

        # (f), whose logins also make (e)'s sessions.
        f_result = None
        pool: list[str] = []
        if "e" in envoys:
            log(f"variant f: {n_logins} logins through envoy-bff; the callbacks sent by "
                f"{args.login_threads} threads")
            f_result, pool = login_callbacks(envoys["e"], idp.process, envoys["a"], n_logins,
                                             args.login_threads)
            if f_result["failed"]:
                raise RuntimeError(f"{f_result['failed']} of {n_logins} login callbacks failed "
                                   f"(logins prepared in {f_result['prepare_s']}s; codes live 60s)")
            cookies["e"] = pool.pop()
            pool.insert(0, check_variant("e", envoys["e"], cookies["e"]))

        variants = [k for k in NAMES if k not in skipped]
        for k in variants:
            if k != "e":
                check_variant(k, envoys[k], cookies[k])
        log("every variant checked once through the echo upstream: " + ", ".join(variants))

        memory_before = {k: memory(envoys[k]) for k in "abcde" if k in variants}
        refreshes_before = stat(envoys["e"], "refreshes_ok") if "e" in variants else 0
        idp_refreshes_before = idp.stats()["refresh_requests"]

        runs: dict[str, list[dict]] = {k: [] for k in variants}
        warmups: dict[str, list[dict]] = {k: [] for k in variants}
        slices = iter(range(e_runs))
        WORK.mkdir(parents=True, exist_ok=True)

        def run_once(k: str, seconds: int) -> dict:
            envoy = envoys[k]
            pool_file = None
            watch = [envoy.process]
            if k == "e":
                i = next(slices)
                pool_file = WORK / f"sessions-{i}.txt"
                pool_file.write_text("\n".join(pool[i * slice_size:(i + 1) * slice_size]) + "\n")
                watch.append(idp.process)
            res = wrk(pin, envoy, cookies[k], seconds, args.connections, pool_file, watch,
                      PASS_PATH if k == "p" else BENCH_PATH)
            res["envoy_cpu_us_per_req"] = res["cpu_us_per_req"][str(envoy.process.pid)]
            res["envoy_busy"] = res["cpu_busy"][str(envoy.process.pid)]
            if k == "e":
                res["idp_cpu_us_per_req"] = res["cpu_us_per_req"][str(idp.process.pid)]
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
        e_check = None
        if "e" in variants:
            every = runs["e"] + warmups["e"]
            e_check = {
                "requests_completed": sum(x["requests"] for x in every),
                "requests_sent": sum(x["rotation"]["sent"] for x in every),
                "sessions_sent_twice": sum(x["rotation"]["reused"] for x in every),
                "answers_without_new_session": sum(x["rotation"]["unrenewed"] for x in every),
                "filter_refreshes_ok": stat(envoys["e"], "refreshes_ok") - refreshes_before,
                "filter_refreshes_failed": stat(envoys["e"], "refreshes_failed"),
                "idp_refresh_grants": idp.stats()["refresh_requests"] - idp_refreshes_before,
            }
        wasm_stats = {k: stats(envoys[k], "wasm") for k in "bde" if k in variants}
        for k in "bde":
            if k in variants:
                envoys[k].assert_vm_healthy()
    finally:
        procs.stop_all()

    report = build_report(args, info, started, variants, skipped, runs, f_result, e_check,
                          memory_before, memory_after, wasm_stats, slice_size, cookies,
                          modules)
    print_report(report)
    args.out.mkdir(parents=True, exist_ok=True)
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
                 modules) -> dict:
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
        if k == "e":
            row["idp_cpu_us_per_req"] = spread([x["idp_cpu_us_per_req"] for x in rs])
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
        for x, y in (("d", "b"), ("d", "c"), ("c", "b"), ("p", "b"), ("e", "b")):
            ratios[f"{x}/{y} {tag}"] = ratio(x, y, key)
    d_b = ratios.get("d/b cpu")
    return {
        "date": started.isoformat(timespec="seconds"),
        "machine": info,
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup,
                     "connections": args.connections, "wrk_threads": 1, "envoy_concurrency": 1,
                     "rounds": args.repeats, "pinned": not args.no_pin,
                     "id_token_alg": args.id_token_alg, "e_session_slice": slice_size,
                     "upstream": "direct_response (Envoy answers 200 'ok' itself)",
                     "idp": "tests/idp/server.mjs (oidc-provider on node), loopback"},
        "modules_bytes": {name: m["bytes"] for name, m in modules.items()},
        "modules_sha256": {name: m["sha256"] for name, m in modules.items()},
        "variants": out,
        "skipped": skipped,
        "ratios_of_added_cost": ratios,
        "target": {"d/b at most": TARGET_RATIO, "judged_on": "added Envoy CPU us per request",
                   "met_median": None if d_b is None or d_b["of_medians"] is None
                   else d_b["of_medians"] <= TARGET_RATIO,
                   "met_lowest": None if d_b is None or d_b["of_best"] is None
                   else d_b["of_best"] <= TARGET_RATIO,
                   "earlier_measurements": "before envoy-bff existed: native OAuth2 ~2.7x the "
                   "floor; another Rust proxy-wasm OIDC filter ~5x when it only decrypts its cookie"},
        "refresh_check": e_check,
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
    h1 = (f"   {'variant':40} {'req/s':>22} {'p50 us':>8} {'p99 us':>8} {'mean us':>8} "
          f"{'Envoy busy':>10} {'wrk busy':>8} {'errors':>6}")
    print(h1)
    print("-" * len(h1))
    for k, row in v.items():
        lat = row["latency_us"]
        print(f"{k:2} {row['name']:40} {_range(row['rps'], '.0f'):>22} {lat['p50']['median']:8.0f} "
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
    h2 = (f"   {'added per request over (a), us':40} {'Envoy CPU':>9} {'added CPU, median':>22} "
          f"{'':7} {'lowest':>7} {'':7} {'added 1/throughput':>22} {'':7}")
    print(h2)
    print("-" * len(h2))
    for k, row in v.items():
        cpu = row["envoy_cpu_us_per_req"]["median"]
        if "added_us_cpu" not in row:
            print(f"{k:2} {row['name']:40} {cpu:9.1f} {'-':>22}")
            continue
        ac, at = row["added_us_cpu"], row["added_us_throughput"]
        print(f"{k:2} {row['name']:40} {cpu:9.1f} {_range(ac):>22} {times(ac['median'], floors['cpu'])} "
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
    print(f"d/c  envoy-bff over OAuth2:     CPU {fmt('d/c cpu')};  1/throughput {fmt('d/c throughput')}")
    print(f"c/b  OAuth2 over the floor:     CPU {fmt('c/b cpu')};  1/throughput {fmt('c/b throughput')}")
    print(f"p/b  envoy-bff passing through: CPU {fmt('p/b cpu')}")
    best = {key: r.get(f"{key} cpu") for key in ("d/b", "d/c", "c/b", "p/b")}
    print("on the lowest values instead:  CPU " + ", ".join(
        f"{key} {num(x['of_best']) if x else 'n/a'}" for key, x in best.items()))
    if m.get("cpu_busy_before_start", 0) > 0.25:
        print(f"note: other processes kept the CPUs {m['cpu_busy_before_start'] * 100:.0f}% busy just "
              "before the run: expect noise (compare the median and lowest-value ratios)")
    busy = [k for k, row in v.items() if k in "abcdp" and row["envoy_busy"]["median"] < 0.9]
    if busy:
        print(f"note: Envoy was busy < 90% in {', '.join(busy)}: something else took its CPU (or the "
              "client could not keep up); trust the CPU columns over req/s there")
    e = rep.get("refresh_check")
    if e:
        print()
        print(f"(e) {e['requests_completed']} requests completed (warm-ups included), "
              f"{e['filter_refreshes_ok']} refreshes by the filter ({e['filter_refreshes_failed']} "
              f"failed), {e['idp_refresh_grants']} refresh grants at the IdP; sessions sent twice: "
              f"{e['sessions_sent_twice']}, answers without a renewed session: "
              f"{e['answers_without_new_session']}")
        if "e" in v:
            ev = v["e"]
            print(f"    the IdP (oidc-provider) spent {ev['idp_cpu_us_per_req']['median']:.0f} us CPU "
                  f"per refresh, Envoy {ev['envoy_cpu_us_per_req']['median']:.0f} us; Envoy busy "
                  f"{ev['envoy_busy']['median'] * 100:.0f}%: (e)'s req/s is the IdP's pace")
    f = rep.get("login_callback")
    if f:
        print(f"(f) login callback, {f['logins']} logins (taken to the callback in {f['prepare_s']:.0f}s), "
              f"callbacks sent by {f['threads']} threads: "
              f"p50 {f['callback_ms']['p50']:.1f} ms, p99 {f['callback_ms']['p99']:.1f} ms, "
              f"{f['callbacks_per_s']:.0f} callbacks/s")
        print(f"    per callback: Envoy CPU {f['envoy_cpu_ms_per_callback']:.2f} ms, IdP CPU "
              f"{f['idp_cpu_ms_per_callback']:.2f} ms; this Python client alone (same threads, a "
              f"request Envoy answers at once): p50 {f['client_floor_ms']['p50']:.1f} ms")
    mods = rep["modules_bytes"]
    print()
    print(f"modules: envoy_bff.wasm {mods['envoy_bff.wasm']:,} bytes, floor_filter.wasm "
          f"{mods['floor_filter.wasm']:,} bytes")
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


def chart(rep: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    v = rep["variants"]
    keys = [k for k in "bcdpe" if k in v and "added_us_cpu" in v[k]]
    if not keys:
        return
    colors = {"b": "#9e9e9e", "c": "#ef8a17", "d": "#2a7ab0", "p": "#9dc3e6", "e": "#5b8db8"}
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
    ax.text(0.99, 0.97, f"added Envoy CPU, d/b: {ratio_text('d/b cpu')}  (target ≤ {TARGET_RATIO})\n"
            f"d/c: {ratio_text('d/c cpu')};  c/b: {ratio_text('c/b cpu')}",
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
    ax.set_ylim(-0.7, len(keys) - 0.05)
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
