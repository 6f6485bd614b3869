"""Identity in Envoy's access log (issue 17): with `access_log` on, the filter leaves the
decision, the session's `sub` and its `sid` in the request's filter state, and a real Envoy's
file access log prints them with `%FILTER_STATE(wasm.bff:PLAIN)%`; never a token or a cookie
value."""

import re
import time

import pytest
import requests

from harness import JWT_SHAPED, SESSION
from harness.envoy import Browser, file_access_log, query_of
from harness.idp import login_at_idp
from harness.stack import start_stack

# Each request names its step in a header, so the test finds its line.
LINE = "step=%REQ(X-STEP)% status=%RESPONSE_CODE% bff=%FILTER_STATE(wasm.bff:PLAIN)%\n"
# The filter's value is `<decision> <sub> <sid>`; Envoy prints `-` where there is none.
LINE_RE = re.compile(r"step=(\S+) status=(\d+) bff=(?:(\S+) (\S+) (\S+)|-)")
# Every decision the README names that a request here can end with.
DECISIONS = {"authenticated", "refreshed", "login_started", "callback_ok", "session", "logout",
             "unauthenticated", "csrf"}


@pytest.fixture(scope="module")
def logged(procs, tmp_path_factory):
    """The stack with a file access log; access tokens live 65 s, so with the default 60 s
    leeway a session's token is due after 5 s (one refresh to see)."""
    path = tmp_path_factory.mktemp("access-log") / "access.log"
    stack = start_stack(procs, idp_env={"IDP_ACCESS_TOKEN_TTL": "65"}, name="envoy-logged",
                        access_log=True, access_logs=[file_access_log(str(path), LINE)])
    return stack, path


def log_lines(path, steps: set[str], timeout: float = 10.0) -> dict[str, dict]:
    """The access log's lines by step, once every one of `steps` is there (Envoy flushes its
    file logs about once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        lines = {}
        for line in text.splitlines():
            m = LINE_RE.fullmatch(line)
            assert m, f"a line not in the configured format: {line!r}"
            step, status, decision, sub, sid = m.groups(default="-")
            lines[step] = {"status": int(status), "decision": decision, "sub": sub, "sid": sid}
        if steps <= lines.keys() or time.monotonic() > deadline:
            assert steps <= lines.keys(), (steps - lines.keys(), text)
            return lines
        time.sleep(0.2)


def test_the_access_log_shows_who_did_what_and_never_a_token(logged):
    stack, path = logged
    b = Browser(stack.envoy)
    step = lambda name: {"X-Step": name}  # noqa: E731

    # Logging in: the start (nobody yet), then the callback names the new session.
    start = b.get("/private/login?return_to=/app", headers=step("login"))
    assert start.status_code == 302
    [tx_cookie] = [v for n, v in b.jar.items() if ".tx." in n]
    callback = login_at_idp(b.idp, start.headers["Location"])
    code = query_of(callback)["code"]
    assert b.get(callback, headers=step("callback")).headers["Location"] == "/app"
    first_cookie = b.jar[SESSION]

    # Who the filter says this is: the session endpoint's sub, and the sid of its logout link.
    me = b.get("/private/session", navigate=False, headers=step("session")).json()
    sub, sid = me["sub"], query_of(me["logout_url"])["sid"]
    assert sub and sid

    api = b.get("/private/api/me", navigate=False, headers=step("api"))
    assert api.status_code == 200
    first_token = api.json()["headers"]["authorization"].split(" ", 1)[1]

    # Not logged in, or not from the app: refused, and logged with nobody.
    anonymous = requests.get(stack.envoy.url("/private/api/me"), timeout=10,
                             headers={"Accept": "application/json", "X-CSRF": "1",
                                      "X-Step": "no-session"})
    assert anonymous.status_code == 401
    forged = requests.get(stack.envoy.url("/private/api/me"), timeout=10,
                          headers={"Accept": "application/json", "X-Step": "no-csrf",
                                   "Cookie": b.cookie_header()})
    assert forged.status_code == 403
    # Outside the filter's prefix: the filter leaves the request, and the log, alone.
    assert requests.get(stack.envoy.url("/public/app.js"), headers=step("public"),
                        timeout=10).status_code == 200

    # The token falls due: the request that pauses for the refresh says so.
    time.sleep(5.5)
    refreshed = b.get("/private/api/me", navigate=False, headers=step("refresh"))
    assert refreshed.status_code == 200
    second_token = refreshed.json()["headers"]["authorization"].split(" ", 1)[1]
    assert second_token != first_token
    assert b.get("/private/api/me", navigate=False, headers=step("after-refresh")).status_code \
        == 200
    second_cookie = b.jar[SESSION]
    assert second_cookie != first_cookie

    assert b.get(me["logout_url"], headers=step("logout")).status_code == 302

    lines = log_lines(path, {"login", "callback", "session", "api", "no-session", "no-csrf",
                             "public", "refresh", "after-refresh", "logout"})
    who = {"sub": sub, "sid": sid}
    nobody = {"sub": "-", "sid": "-"}
    expected = {
        "login": (302, "login_started", nobody),
        "callback": (302, "callback_ok", who),
        "session": (200, "session", who),
        "api": (200, "authenticated", who),
        "no-session": (401, "unauthenticated", nobody),
        "no-csrf": (403, "csrf", nobody),
        "public": (200, "-", nobody),
        "refresh": (200, "refreshed", who),
        "after-refresh": (200, "authenticated", who),
        "logout": (302, "logout", who),
    }
    for name, (status, decision, person) in expected.items():
        assert lines[name] == {"status": status, "decision": decision, **person}, name

    # Nothing but those words and that user's sub and sid: so no token, code or cookie of any
    # kind. And the values the test saw, by name.
    text = path.read_text()
    for line in lines.values():
        assert line["decision"] in DECISIONS | {"-"}
        assert line["sub"] in (sub, "-") and line["sid"] in (sid, "-")
    for secret in (first_token, second_token, first_cookie, second_cookie, tx_cookie, code):
        assert secret not in text
    assert not JWT_SHAPED.search(text), "no JWT (ID token, JWT access token)"
    stack.envoy.assert_vm_healthy()


def test_without_the_setting_the_filter_writes_nothing(procs, tmp_path):
    """`access_log` is off by default: a host call on every request, the authenticated
    path's included (README, "Access logs")."""
    path = tmp_path / "access.log"
    stack = start_stack(procs, name="envoy-unlogged",
                        access_logs=[file_access_log(str(path), LINE)])
    b = Browser(stack.envoy)
    b.login()
    assert b.get("/private/api/me", navigate=False, headers={"X-Step": "api"}).status_code == 200
    assert requests.get(stack.envoy.url("/private/api/me"), timeout=10,
                        headers={"Accept": "application/json", "X-CSRF": "1",
                                 "X-Step": "no-session"}).status_code == 401
    lines = log_lines(path, {"api", "no-session"})
    assert {lines[s]["decision"] for s in ("api", "no-session")} == {"-"}
