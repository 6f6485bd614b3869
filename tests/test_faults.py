"""Faults get short, clear answers and Envoy keeps serving: bad cookies count as no session,
forged or broken callbacks are refused, and a token endpoint that fails in any way gives an
error page or JSON, never a session, never a dead VM."""

import base64
import hashlib
import http.client
import time

import pytest
import requests
import yaml

from harness import CLIENT_SECRET, SESSION
from harness.envoy import (IDP_IDLE_TIMEOUT_S, KEY_B, Browser, filter_config, query_of, set_cookies,
                           start_envoy)
from harness.idp import start_idp
from harness.procs import REPO, free_port
from harness.stack import Stack
from harness.upstream import start_echo, start_faulty_idp


@pytest.fixture(scope="module")
def two_envoys(procs):
    """Two Envoys on one IdP, each with its own cookie key: B's cookies are foreign to A."""
    echo = start_echo(procs)
    port_a, port_b = free_port(), free_port()
    idp = start_idp(procs, [f"http://127.0.0.1:{p}/private/callback" for p in (port_a, port_b)])
    config = filter_config(idp.issuer)
    a = start_envoy(procs, config, echo, idp.port, port=port_a, name="envoy-a")
    b = start_envoy(procs, config, echo, idp.port, port=port_b, cookie_keys=KEY_B, name="envoy-b")
    return Stack(idp, a, echo), b


@pytest.fixture(scope="module")
def faulty(procs):
    """An Envoy whose token endpoint is the fault server."""
    port = start_faulty_idp(procs)
    issuer = f"http://127.0.0.1:{port}"
    config = filter_config(issuer, idp_timeout_ms=1000, discovery=False, jwks_uri=f"{issuer}/jwks")
    envoy = start_envoy(procs, config, start_echo(procs), port, name="envoy-faulty")
    return envoy, issuer


def assert_still_serving(stack_or_envoy, browser=None):
    envoy = getattr(stack_or_envoy, "envoy", stack_or_envoy)
    assert envoy.alive()
    r = requests.get(envoy.url("/private/ping"), headers={"Accept": "application/json", "X-CSRF": "1"}, timeout=10)
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
    if browser is not None:
        r = browser.get("/private/ping", navigate=False)
        assert r.status_code == 200 and r.json()["headers"]["authorization"].startswith("Bearer ")
    envoy.assert_vm_healthy()


# --- cookies ----------------------------------------------------------------------------------

def bad_session_values(good: str, foreign: str) -> dict[str, str]:
    middle = len(good) // 2
    flipped = good[:middle] + ("A" if good[middle] != "A" else "B") + good[middle + 1:]
    return {
        "tampered": flipped,
        "truncated": good[: len(good) - 10],
        "cut in half": good[:middle],
        "foreign key": foreign,
        "garbage": "hello-world",
        "empty": "",
        "only prefix": "v1.",
        "wrong version": "v9" + good[2:],
        "oversized": "v1." + "A" * 7000,
        "base64 junk": "v1.AAAAAAAA.////",
    }


def test_bad_session_cookies_count_as_no_session(two_envoys):
    stack, other = two_envoys
    mine, theirs = Browser(stack.envoy), Browser(other)
    mine.login()
    theirs.login()
    good, foreign = mine.jar[SESSION], theirs.jar[SESSION]
    for label, value in bad_session_values(good, foreign).items():
        cookie = f"{SESSION}={value}"
        api = requests.get(stack.envoy.url("/private/api"), timeout=10,
                           headers={"Cookie": cookie, "Accept": "application/json", "X-CSRF": "1"})
        assert api.status_code == 401, label
        nav = requests.get(stack.envoy.url("/private/page"), timeout=10, allow_redirects=False,
                           headers={"Cookie": cookie, "Sec-Fetch-Mode": "navigate"})
        assert nav.status_code == 302 and nav.headers["Location"].startswith(stack.idp.issuer), label
    # A transaction cookie's value moved into the session cookie is bound to another name.
    start = Browser(stack.envoy).get("/private/login")
    [tx] = [c["value"] for n, c in set_cookies(start).items() if ".tx." in n]
    r = requests.get(stack.envoy.url("/private/api"), timeout=10,
                     headers={"Cookie": f"{SESSION}={tx}", "X-CSRF": "1"})
    assert r.status_code == 401
    assert_still_serving(stack, mine)


def test_header_values_that_are_not_utf8_do_not_kill_the_vm(two_envoys):
    stack, _ = two_envoys
    b = Browser(stack.envoy)
    b.login()
    conn = http.client.HTTPConnection("127.0.0.1", stack.envoy.port, timeout=10)
    conn.putrequest("GET", "/private/api")
    conn.putheader("Accept", "application/json")
    conn.putheader("X-CSRF", "1")
    conn.putheader("X-Odd", b"caf\xe9 \xff")
    conn.putheader("Cookie", f"{SESSION}=".encode() + b"\xff\xfe")
    conn.endheaders()
    assert conn.getresponse().status == 401
    conn.close()
    assert_still_serving(stack, b)


# --- callbacks --------------------------------------------------------------------------------

def test_forged_missing_and_foreign_state_is_refused(two_envoys):
    stack, _ = two_envoys
    b = Browser(stack.envoy)
    q = query_of(b.sign_in_at_idp())
    base = stack.envoy.url("/private/callback")
    cases = {
        "forged state": f"{base}?code={q['code']}&state=forged-{q['state']}",
        "same flow id, other state": f"{base}?code={q['code']}&state={q['state']}x",
        "missing state": f"{base}?code={q['code']}",
        "missing code": f"{base}?state={q['state']}",
        "repeated state": f"{base}?code={q['code']}&state={q['state']}&state={q['state']}",
        "mix-up (iss)": f"{base}?code={q['code']}&state={q['state']}&iss=http%3A%2F%2Fevil.example",
        # The IdP announces authorization_response_iss_parameter_supported (RFC 9207).
        "iss missing": f"{base}?code={q['code']}&state={q['state']}",
    }
    for label, url in cases.items():
        r = b.get(url)
        assert r.status_code == 400, (label, r.status_code, r.text)
        assert SESSION not in set_cookies(r), label
        assert "text/html" in r.headers["Content-Type"]
        b = Browser(stack.envoy)
        q = query_of(b.sign_in_at_idp())  # a fresh transaction for the next case

    # Another browser's transaction: the callback without its cookie.
    stranger = Browser(stack.envoy)
    r = stranger.get(f"{base}?code={q['code']}&state={q['state']}", navigate=False)
    assert r.status_code == 400 and r.json()["error"] == "login_expired"
    assert_still_serving(stack)


def test_a_callback_works_once(two_envoys):
    stack, _ = two_envoys
    b = Browser(stack.envoy)
    callback = b.sign_in_at_idp()
    tx_cookie = {n: v for n, v in b.jar.items() if ".tx." in n}
    assert b.get(callback).status_code == 302
    # Replaying the callback with the old transaction cookie: the code is spent at the IdP.
    r = Browser(stack.envoy).get(callback, extra_cookies="; ".join(f"{n}={v}" for n, v in tx_cookie.items()))
    assert r.status_code == 502
    assert "refused" in r.text and "invalid_grant" in r.text
    # Replaying it in the same browser: the transaction is gone.
    assert b.get(callback).status_code == 400
    assert_still_serving(stack)


def test_the_idp_refusing_the_login_gives_an_error_page(two_envoys):
    stack, _ = two_envoys
    b = Browser(stack.envoy)
    callback = b.sign_in_at_idp(abort=True)
    assert query_of(callback)["error"] == "access_denied"
    r = b.get(callback)
    assert r.status_code == 401
    assert "access_denied" in r.text
    assert not [n for n in b.jar if n.startswith(SESSION)], "transaction dropped, no session"
    assert_still_serving(stack)


# --- the token endpoint -----------------------------------------------------------------------

@pytest.mark.parametrize("mode, status, words", [
    ("500", 502, "failed with status 500"),
    ("garbage", 502, "unusable"),
    ("huge", 502, "unusable"),
    ("redirect", 502, "status 302"),
    ("ok-no-id-token", 502, "no ID token"),
    ("invalid-grant", 502, "invalid_grant"),
    ("slow", 504, "did not answer in time"),
])
def test_token_endpoint_faults(faulty, mode, status, words):
    envoy, issuer = faulty
    requests.post(f"{issuer}/mode", data=mode, timeout=5)
    for navigate in (True, False):
        b = Browser(envoy)
        state = query_of(b.get("/private/login").headers["Location"])["state"]
        r = b.get(f"/private/callback?code=some-code&state={state}", navigate=navigate)
        assert r.status_code == status, (mode, r.status_code, r.text)
        text = r.text if navigate else r.json()["message"]
        assert words in text, (mode, text)
        assert len(r.content) < 2000
        assert SESSION not in b.jar, "no session from a failed exchange"
        assert not [n for n in b.jar if ".tx." in n], "transaction dropped"
    assert_still_serving(envoy)


# envoy/envoy.yaml's runtime layer: Envoy resets an async call whose answer passes 256 KiB.
SHIPPED_RUNTIME = yaml.safe_load((REPO / "envoy" / "envoy.yaml").read_text())[
    "layered_runtime"]["layers"][0]["static_layer"]


@pytest.mark.parametrize("runtime", [None, SHIPPED_RUNTIME], ids=["envoy-default", "shipped"])
def test_envoy_stops_reading_a_flooding_token_endpoint_early(procs, runtime):
    """A 16 MiB token response: with Envoy's default the whole answer is read and held before
    the filter refuses it; with the shipped runtime value Envoy resets the call past 256 KiB,
    and the login still fails cleanly."""
    port = start_faulty_idp(procs, name="faulty-flood")
    issuer = f"http://127.0.0.1:{port}"
    config = filter_config(issuer, discovery=False, jwks_uri=f"{issuer}/jwks")
    envoy = start_envoy(procs, config, start_echo(procs), port, name="envoy-flood",
                        runtime=runtime)
    requests.post(f"{issuer}/mode", data="flood", timeout=5)
    b = Browser(envoy)
    state = query_of(b.get("/private/login").headers["Location"])["state"]
    r = b.get(f"/private/callback?code=some-code&state={state}", navigate=False)
    assert r.status_code == 502, r.text
    assert len(r.content) < 2000 and SESSION not in b.jar
    deadline = time.monotonic() + 10
    while (flood := requests.get(f"{issuer}/calls", timeout=5).json()["flood"]) is None:
        assert time.monotonic() < deadline, "the fault server never finished its answer"
        time.sleep(0.1)
    exceeded = "buffer size limit for async client response body has been exceeded"
    if runtime is None:
        assert flood["whole"], flood  # Envoy read all 16 MiB
        assert exceeded not in envoy.log()
        assert "unusable" in r.json()["message"]  # the filter's own 256 KiB cut
    else:
        assert not flood["whole"] and flood["sent"] < 12 * 1024 * 1024, flood
        assert exceeded in envoy.log()
        assert "answer broke off" in r.json()["message"]
    assert_still_serving(envoy)
    envoy.process.stop()


def test_the_code_exchange_request_is_well_formed(faulty):
    envoy, issuer = faulty
    b = Browser(envoy)
    location = b.get("/private/login").headers["Location"]
    q = query_of(location)
    b.get(f"/private/callback?code=c%2Bd&state={q['state']}")
    last = requests.get(f"{issuer}/calls", timeout=5).json()["last"]
    assert last["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert last["headers"]["authorization"] == "Basic YmZmOnMzY3IlM0F0JTJGd2l0aCslMjVjaGFycyUyQg=="
    form = query_of("?" + last["body"])
    assert form["grant_type"] == "authorization_code"
    assert form["code"] == "c+d"
    assert form["redirect_uri"] == q["redirect_uri"]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(form["code_verifier"].encode()).digest()).rstrip(b"=")
    assert challenge.decode() == q["code_challenge"]


def test_no_secret_or_token_in_envoy_logs(two_envoys):
    stack, _ = two_envoys
    b = Browser(stack.envoy)
    b.login()
    token = b.get("/private/x", navigate=False).json()["headers"]["authorization"].split(" ", 1)[1]
    log = stack.envoy.log()
    assert "configured for issuer" in log  # the log is really captured
    for secret in (token, CLIENT_SECRET, b.jar[SESSION]):
        assert secret not in log


def test_an_idp_cluster_envoy_does_not_know_gives_503(procs):
    envoy = start_envoy(procs, filter_config("http://127.0.0.1:1", idp_cluster="no-such-cluster"),
                        upstream_port=1, idp_port=1, name="envoy-nocluster")
    r = Browser(envoy).get("/private/login", navigate=False)
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "5"
    assert r.json()["error"] == "idp_unavailable"
    assert_still_serving(envoy)


# --- the connection to the IdP ------------------------------------------------------------------

def test_envoy_closes_idle_idp_connections_before_the_idp_does(two_envoys):
    """Node closes a keep-alive connection after 5 s; a token request sent on it at that moment
    fails. Envoy's idle timeout for the idp cluster (4 s, as envoy/envoy.yaml sets it) closes
    the connection first, so the next token request opens a fresh one."""
    stack, _ = two_envoys
    envoy = stack.envoy
    before = envoy.stats("cluster.idp.")
    b = Browser(envoy)
    assert b.login().status_code == 302
    time.sleep(IDP_IDLE_TIMEOUT_S + 2)
    after = envoy.stats("cluster.idp.")
    assert after["cluster.idp.upstream_rq_total"] > before.get("cluster.idp.upstream_rq_total", 0)
    assert after["cluster.idp.upstream_cx_active"] == 0, "an idle connection was left open"
    assert after["cluster.idp.upstream_cx_idle_timeout"] > before.get("cluster.idp.upstream_cx_idle_timeout", 0)
    assert after.get("cluster.idp.upstream_cx_destroy_remote", 0) == before.get(
        "cluster.idp.upstream_cx_destroy_remote", 0), "the IdP closed a connection first"
    # The session works, and the next token request (a second login) goes out fine.
    r = b.get("/private/ping", navigate=False)
    assert r.status_code == 200
    assert Browser(envoy).login().status_code == 302
