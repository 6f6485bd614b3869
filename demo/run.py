"""Runs the demo: the OpenID Provider, the API and Envoy with the BFF filter, on fixed ports.

Started by scripts/demo (which installs, builds the module and writes .demo/secrets.env first):

    scripts/demo            start everything, print what to try, wait; Ctrl-C stops it all
    scripts/demo --check    start everything, walk one login (and logout) through Envoy as
                            the demo SPA would, print OK, stop

The app is the Data Fetcher SPA in demo/app/, served with the demo API by demo/api.py behind
Envoy: open http://localhost:8080/ and sign in as alice / wonderland.

Every process is started and stopped by the test harness's ProcessGroup (by PID, whatever
happens); their logs go to .demo/logs/.

A real IdP instead of the bundled one (register http://localhost:8080/private/callback and
http://localhost:8080/ there):

    DEMO_ISSUER=https://login.example.com/realms/demo  the IdP's issuer (https)
    DEMO_CLIENT_ID=spa-bff                             the confidential client's id
    BFF_CLIENT_SECRET=...                              its secret (else .demo/secrets.env's)
    DEMO_SCOPES="openid profile email"                 optional (default: with offline_access)
    DEMO_END_SESSION_ENDPOINT, DEMO_REVOCATION_ENDPOINT  optional, for IdPs whose discovery
                                                       lacks them (Cognito, see README)

The Envoy config is then a copy of envoy/envoy.yaml in .demo/envoy.yaml whose `idp` cluster
reaches the issuer's host on 443 with TLS.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import requests  # noqa: E402  (after the path set-up, like the harness it comes with)

from harness.idp import DEFAULT_PASSWORD, DEFAULT_USER, login_at_idp, logout_at_idp  # noqa: E402
from harness.procs import ProcessGroup, ProcessStartError  # noqa: E402

DEMO_DIR = REPO / ".demo"
SECRETS = DEMO_DIR / "secrets.env"
LOGS = DEMO_DIR / "logs"
ENVOY_BIN = REPO / ".venv" / "bin" / "envoy"
ENVOY_YAML = REPO / "envoy" / "envoy.yaml"
WASM = REPO / "target" / "wasm32-wasip1" / "release" / "envoy_bff.wasm"
API = REPO / "demo" / "api.py"
IDP = REPO / "tests" / "idp" / "server.mjs"

# Fixed, as in envoy/envoy.yaml.
APP_PORT = 8080
API_PORT = 8081
IDP_PORT = 9000
ADMIN_PORT = 9901
PORTS = {"app (Envoy)": APP_PORT, "API": API_PORT, "IdP": IDP_PORT, "Envoy admin": ADMIN_PORT}

APP = f"http://localhost:{APP_PORT}"
# The browser may use either name for the app; the IdP must know both callbacks.
APP_ORIGINS = [f"http://localhost:{APP_PORT}", f"http://127.0.0.1:{APP_PORT}"]


class DemoError(Exception):
    """Something the person running the demo needs to fix or know."""


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def read_secrets(path: Path = SECRETS) -> dict[str, str]:
    """KEY=VALUE lines (the env_file format docker compose reads too); # starts a comment."""
    if not path.exists():
        raise DemoError(f"{path} is missing: run scripts/demo (it generates it)")
    secrets = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            secrets[key.strip()] = value.strip()
    for key in ("BFF_CLIENT_SECRET", "BFF_COOKIE_KEYS"):
        if not secrets.get(key):
            raise DemoError(f"{path} has no {key}; delete the file and run scripts/demo again")
    return secrets


def port_busy(port: int) -> bool:
    """True if something listens on 127.0.0.1:port (SO_REUSEADDR: TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def check_prerequisites() -> None:
    busy = [f"{port} ({name})" for name, port in PORTS.items() if port_busy(port)]
    if busy:
        raise DemoError("port(s) already in use: " + ", ".join(busy)
                        + " (is the demo already running?)")
    for path, fix in ((ENVOY_BIN, "run scripts/setup"),
                      (WASM, "run scripts/build-wasm"),
                      (REPO / "node_modules" / "oidc-provider", "run scripts/setup")):
        if not path.exists():
            raise DemoError(f"{path.relative_to(REPO)} is missing: {fix}")
    if shutil.which("node") is None:
        raise DemoError("node is not on PATH (the IdP needs Node.js)")


def wait_envoy_ready(envoy, timeout: float = 30.0) -> None:
    """Envoy prints no ready line; its admin /ready answers 200 once listeners are up. Any
    failed try (refused, or no answer within the one-second per-try timeout, as on a busy
    machine) is retried up to the deadline."""
    deadline = time.monotonic() + timeout
    last = "no try made"
    while time.monotonic() < deadline:
        if not envoy.running():
            raise ProcessStartError(f"envoy exited with {envoy.popen.poll()} during start-up; "
                                    f"log {envoy.log_path}:\n{envoy.output()}")
        try:
            r = requests.get(f"http://127.0.0.1:{ADMIN_PORT}/ready", timeout=1)
            if r.status_code == 200:
                return
            last = f"answered {r.status_code}"
        except requests.Timeout:
            last = "no answer within the per-try timeout"
        except requests.RequestException:
            last = "connection refused or reset"
        time.sleep(0.1)
    raise ProcessStartError(f"envoy not ready within {timeout}s (admin /ready on port {ADMIN_PORT} "
                            f"did not answer 200; last try: {last}); log {envoy.log_path}:\n"
                            f"{envoy.output()}")


def real_idp() -> dict | None:
    """The DEMO_* settings for a real IdP, or None for the bundled one."""
    issuer = os.environ.get("DEMO_ISSUER")
    if not issuer:
        return None
    url = urlsplit(issuer)
    if url.scheme != "https" or not url.hostname:
        raise DemoError(f"DEMO_ISSUER must be an https URL, got {issuer!r}")
    client_id = os.environ.get("DEMO_CLIENT_ID")
    if not client_id:
        raise DemoError("DEMO_CLIENT_ID is required with DEMO_ISSUER")
    return {
        "issuer": issuer,
        "host": url.hostname,
        "port": url.port or 443,
        "client_id": client_id,
        "scopes": os.environ.get("DEMO_SCOPES", "openid profile email offline_access").split(),
        "end_session_endpoint": os.environ.get("DEMO_END_SESSION_ENDPOINT"),
        "revocation_endpoint": os.environ.get("DEMO_REVOCATION_ENDPOINT"),
    }


def envoy_yaml_for(idp: dict) -> Path:
    """envoy/envoy.yaml, pointed at a real IdP: the filter JSON's issuer and client, and an
    `idp` cluster with TLS to the issuer's host."""
    import yaml

    doc = yaml.safe_load(ENVOY_YAML.read_text())
    listener = doc["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm")
    plugin = wasm["typed_config"]["config"]
    config = json.loads(plugin["configuration"]["value"])
    config.update(issuer=idp["issuer"], client_id=idp["client_id"], scopes=idp["scopes"])
    config.pop("idp_authority", None)
    for field in ("end_session_endpoint", "revocation_endpoint"):
        if idp[field]:
            config[field] = idp[field]
    plugin["configuration"]["value"] = json.dumps(config, indent=2)
    plugin["vm_config"]["code"]["local"]["filename"] = str(WASM)
    clusters = doc["static_resources"]["clusters"]
    shipped_idp = next((c for c in clusters if c["name"] == "idp"), {})
    clusters[:] = [c for c in clusters if c["name"] != "idp"] + [{
        "name": "idp",
        # envoy.yaml's: Envoy closes idle connections to the IdP before the IdP does.
        "typed_extension_protocol_options": shipped_idp.get("typed_extension_protocol_options", {}),
        "type": "LOGICAL_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "5s",
        "load_assignment": {"cluster_name": "idp", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": idp["host"], "port_value": idp["port"]}}}}]}]},
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": idp["host"],
                "common_tls_context": {"validation_context": {
                    "trusted_ca": {"filename": "/etc/ssl/certs/ca-certificates.crt"},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": idp["host"]}}],
                }},
            },
        },
    }]
    out = DEMO_DIR / "envoy.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def start_all(procs: ProcessGroup, secrets: dict[str, str]) -> list:
    """The IdP, the API, then Envoy; each one ready before the next starts."""
    started = []
    real = real_idp()
    envoy_yaml = ENVOY_YAML
    if real:
        envoy_yaml = envoy_yaml_for(real)
        say(f"using the IdP at {real['issuer']} (client {real['client_id']}); config {envoy_yaml}")
    else:
        started.append(start_bundled_idp(procs, secrets))

    # The API behind the BFF; it also serves the SPA (demo/app/) outside /private.
    api = procs.start("api", [sys.executable, API, "--port", API_PORT],
                      ready_line_prefix="DEMO API READY")
    say(f"API started (pid {api.pid}): http://127.0.0.1:{API_PORT} (only Envoy calls it)")
    started.append(api)

    envoy = procs.start("envoy", [
        ENVOY_BIN, "-c", envoy_yaml, "--concurrency", "2", "--log-level", "warn",
        # The filter's own lines (configured, login failures) are worth seeing in the log.
        "--component-log-level", "wasm:info",
        # No shared-memory hot-restart region: another Envoy on this machine cannot clash.
        "--disable-hot-restart",
    ], env={
        "BFF_CLIENT_SECRET": os.environ.get("BFF_CLIENT_SECRET") or secrets["BFF_CLIENT_SECRET"],
        "BFF_COOKIE_KEYS": secrets["BFF_COOKIE_KEYS"],
    })
    wait_envoy_ready(envoy)
    say(f"Envoy started (pid {envoy.pid}): {APP}")
    started.append(envoy)
    return started


def start_bundled_idp(procs: ProcessGroup, secrets: dict[str, str]):
    idp = procs.start("idp", ["node", IDP], ready_line_prefix="IDP READY", env={
        "IDP_PORT": IDP_PORT,
        "IDP_CLIENT_ID": "bff",
        "IDP_CLIENT_SECRET": secrets["BFF_CLIENT_SECRET"],
        "IDP_REDIRECT_URIS": ",".join(f"{o}/private/callback" for o in APP_ORIGINS),
        "IDP_POST_LOGOUT_REDIRECT_URIS": ",".join(f"{o}/" for o in APP_ORIGINS),
        "NO_COLOR": "1",
    })
    say(f"IdP started (pid {idp.pid}): {idp.ready_line.split(' ', 2)[2]}")
    return idp


# --- the smoke check: what the SPA does, as a browser on localhost does it ------------------

# A fetch() from the SPA: not a navigation, and with the header the filter's CSRF check wants.
API_CALL = {"Sec-Fetch-Mode": "cors", "Accept": "application/json", "X-CSRF": "1"}
# What a token in a body looks like: a token response's keys, or a JWS (header.payload.).
TOKEN_KEY = re.compile(r'"(access_token|refresh_token|id_token)"\s*:')
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.")


def set_cookies(response: requests.Response) -> dict[str, str]:
    """name -> value of every Set-Cookie (requests' jar would drop Secure cookies over http,
    which browsers accept on localhost); a Max-Age=0 cookie maps to None (deleted)."""
    out = {}
    for header in response.raw.headers.getlist("Set-Cookie"):
        first, *attrs = [p.strip() for p in header.split(";")]
        name, _, value = first.partition("=")
        deleted = any(a.lower() == "max-age=0" for a in attrs)
        out[name] = None if deleted else value
    return out


class Browser:
    """Carries the app's cookies by hand; the IdP's live in their own requests.Session."""

    NAVIGATE = {"Sec-Fetch-Mode": "navigate", "Accept": "text/html"}

    def __init__(self):
        self.cookies: dict[str, str] = {}
        self.idp = requests.Session()

    def get(self, url: str, headers: dict | None = None) -> requests.Response:
        h = dict(headers or self.NAVIGATE)
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        r = requests.get(url, headers=h, allow_redirects=False, timeout=20)
        for name, value in set_cookies(r).items():
            if value is None:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return r


def expect(condition: bool, message: str, response: requests.Response | None = None) -> None:
    if not condition:
        if response is not None:
            message += (f"\n  {response.request.method} {response.url} -> "
                        f"{response.status_code}\n  {response.text[:1000]}")
        raise DemoError(message)


def json_of(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        body = None
    expect(isinstance(body, dict), "expected a JSON object", response)
    return body


def smoke_check() -> None:
    """The SPA's walk without a browser: the page, Get Data signed out, Login, who am I,
    Get Data (the access token arrives at the API), and Logout (the filter ends the session)."""
    browser = Browser()

    r = browser.get(f"{APP}/")
    expect(r.status_code == 200 and "<title>Data Fetcher</title>" in r.text,
           "the SPA is not served at /", r)
    say("the Data Fetcher SPA is served at /")

    r = browser.get(f"{APP}/private/api/items", headers=API_CALL)
    expect(r.status_code == 401, "Get Data without a session should get 401", r)
    expect(json_of(r).get("error") == "unauthenticated", "the 401 should say unauthenticated", r)
    say("Get Data without a session: 401 unauthenticated")

    r = browser.get(f"{APP}/private/login?return_to=/")
    expect(r.status_code == 302, "GET /private/login should redirect to the IdP", r)
    authorize = r.headers["Location"]
    expect(authorize.startswith(f"http://127.0.0.1:{IDP_PORT}/auth?"),
           f"unexpected authorize URL {authorize}")
    say("Login: redirected to the IdP")

    callback = login_at_idp(browser.idp, authorize, DEFAULT_USER, DEFAULT_PASSWORD)
    expect(callback.startswith(f"{APP}/private/callback?"),
           f"the IdP sent the browser to {callback}, not to the callback")
    say(f"signed in at the IdP as {DEFAULT_USER}")

    r = browser.get(callback)
    expect(r.status_code == 302, "the callback should redirect after the code exchange", r)
    expect("__Host-bff-session" in browser.cookies,
           f"no session cookie after the callback (cookies: {sorted(browser.cookies)})", r)
    expect(not any(".tx." in name for name in browser.cookies),
           "the login transaction cookie should be gone after the callback")
    say(f"callback done: session cookie set, redirected to {r.headers['Location']}")

    r = browser.get(f"{APP}/private/api/items", headers=API_CALL)
    expect(r.status_code == 200, "Get Data with a session should reach the API", r)
    data = json_of(r)
    seen = data.get("seen") or {}
    expect(len(data.get("items") or []) == 3, "the API should answer 3 items", r)
    expect(seen.get("authorization") is True, "the API did not receive Authorization: Bearer", r)
    # envoy/envoy.yaml's claim_headers: the user's sub and email from the session.
    expect(seen.get("sub") == "alice-sub-0001" and seen.get("email") == "alice@example.test",
           "the API did not receive x-user-sub / x-user-email (claim_headers)", r)
    say(f"Get Data: the API received a Bearer token and the user's claims: {seen}")

    r = browser.get(f"{APP}/private/session", headers=API_CALL)
    if r.status_code == 404 and r.headers.get("Content-Type") == "application/json" \
            and r.json().get("error") == "not_found":
        # The request fell through to the API: this filter has no session endpoint yet (and so
        # no logout or CSRF check either).
        say("note: GET /private/session reached the API (404): the filter is older than the "
            "session endpoint; skipping the session, CSRF and logout checks")
        return
    expect(r.status_code == 200, "GET /private/session with a session should answer 200", r)
    session = json_of(r)
    expect(not TOKEN_KEY.search(r.text) and not JWT.search(r.text),
           "the session endpoint's answer holds something token-shaped")
    expect(session.get("sub") == "alice-sub-0001", "the session should name alice's sub", r)
    logout_url = session.get("logout_url") or ""
    expect(logout_url.startswith("/private/logout?sid="), "the session should have a logout_url", r)
    say(f"the session endpoint: {session['sub']} ({(session.get('claims') or {}).get('name')}), "
        "no token in it")

    r = browser.get(f"{APP}/private/api/items",
                    headers={k: v for k, v in API_CALL.items() if k != "X-CSRF"})
    expect(r.status_code == 403, "an API call without X-CSRF should get 403", r)
    expect(json_of(r).get("error") == "csrf", "the 403 should say csrf", r)
    say("an API call without X-CSRF: 403 csrf")

    r = browser.get(f"{APP}{logout_url}")
    expect(r.status_code == 302, "Logout should redirect to the IdP", r)
    end_session = r.headers["Location"]
    expect(end_session.startswith(f"http://127.0.0.1:{IDP_PORT}/"),
           f"Logout should go to the IdP's end_session_endpoint, not {end_session}")
    expect("__Host-bff-session" not in browser.cookies, "Logout should delete the session cookie", r)
    back = logout_at_idp(browser.idp, end_session)
    expect(back.startswith(f"{APP}/"), f"after signing out the IdP sent the browser to {back}")
    r = browser.get(f"{APP}/private/api/items", headers=API_CALL)
    expect(r.status_code == 401, "Get Data after Logout should get 401", r)
    say(f"Logout: session cookie deleted, signed out at the IdP, back at {back}; Get Data: 401")


# --- main ---------------------------------------------------------------------------------

def print_welcome() -> None:
    print(f"""
  The demo is running.

    Open        {APP}/
    Sign in as  {f"a user of {real_idp()['issuer']}" if real_idp() else f"{DEFAULT_USER} / {DEFAULT_PASSWORD}"}

  The Data Fetcher app: Get Data (an error while signed out), Login (at the IdP), Get Data
  again (the API's answer, which received the access token), Logout. Then try:
    {APP}/private/api/whoami   what the API received from Envoy: an
        "authorization: Bearer [redacted]" header the browser never saw, x-user-sub and
        x-user-email from the session, and no session cookie
    Your browser's cookies for localhost: only __Host-bff-session (sealed, HttpOnly)

  Logs: {LOGS.relative_to(REPO)}/   Envoy admin: http://127.0.0.1:{ADMIN_PORT}/
  Press Ctrl-C to stop.
""", flush=True)


def _stop_on_signal(signum, _frame):
    # Ctrl-C, SIGTERM and SIGHUP all end the demo through main's finally.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="log in once through Envoy, print OK and stop")
    args = parser.parse_args(argv)
    # Set explicitly: a shell that starts us in the background ignores SIGINT otherwise.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop_on_signal)

    procs = ProcessGroup(artifacts_dir=LOGS)
    status = 0
    try:
        check_prerequisites()
        for old in LOGS.glob("*.log"):  # the previous run's; nothing else can be running now
            old.unlink()
        if args.check and real_idp():
            raise DemoError("--check signs in as the bundled IdP's test user: unset DEMO_ISSUER")
        started = start_all(procs, read_secrets())
        if args.check:
            t0 = time.monotonic()
            smoke_check()
            say(f"smoke check passed in {time.monotonic() - t0:.1f}s")
            print("OK", flush=True)
            return 0
        print_welcome()
        while True:
            for proc in started:
                if not proc.running():
                    raise DemoError(f"{proc.name} (pid {proc.pid}) exited with "
                                    f"{proc.popen.returncode}; log {proc.log_path}:\n"
                                    f"{proc.output()}")
            time.sleep(0.5)
    except KeyboardInterrupt:
        print(flush=True)
        status = 130 if args.check else 0
    except (DemoError, ProcessStartError) as e:
        print(f"[demo] FAILED: {e}", file=sys.stderr, flush=True)
        status = 1
    except Exception as e:  # noqa: BLE001 - report, then still stop everything below
        print(f"[demo] FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        status = 1
    finally:
        # Ignore further Ctrl-C while stopping, so nothing is left half-stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in reversed(procs.processes):
            say(f"stopping {proc.name} (pid {proc.pid})")
        procs.stop_all()
    return status


if __name__ == "__main__":
    sys.exit(main())
