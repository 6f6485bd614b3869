"""The token lifecycle in a real Envoy against real IdPs: discovery, signed ID tokens,
refresh without storms, session lifetime, cookie-key rotation and chunked sessions."""

import json
import threading
import time

import pytest
import requests

from harness import SESSION
from harness.envoy import KEY_A, KEY_B, Browser, discovery_only, set_cookies, start_envoy
from harness.forger import MODES, forged_login, start_forger
from harness.idp import BIG_PASSWORD, BIG_USER, start_idp
from harness.procs import free_port
from harness.stack import start_stack
from harness.upstream import start_echo


def start(procs, **kw):
    """An IdP and an Envoy (discovery only) in front of a fresh echo upstream."""
    stack = start_stack(procs, discovery_only, **kw)
    return stack.idp, stack.envoy


def token_upstream(browser) -> str:
    r = browser.get("/private/api/me", navigate=False)
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()["headers"]["authorization"]


# --- discovery and signatures ----------------------------------------------------------------

@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"])
def test_a_login_with_each_signing_algorithm(procs, alg):
    idp, envoy = start(procs, idp_env={"IDP_ID_TOKEN_ALG": alg}, name=f"envoy-{alg}")
    b = Browser(envoy)
    r = b.login("/private/login?return_to=/app")
    assert r.status_code == 302 and r.headers["Location"] == "/app", r.text
    assert token_upstream(b).startswith("Bearer ")
    envoy.assert_vm_healthy()


@pytest.fixture(scope="module")
def forger_envoy(procs):
    forger = start_forger(procs)
    envoy = start_envoy(procs, discovery_only(forger.issuer), start_echo(procs), forger.port,
                        name="envoy-forger")
    return forger, envoy


ACCEPTED = {"good", "good-es256", "no-kid"}


@pytest.mark.parametrize("mode", MODES)
def test_forged_and_broken_id_tokens_are_rejected(forger_envoy, mode):
    forger, envoy = forger_envoy
    b = Browser(envoy)
    r = forged_login(b, forger, mode)
    if mode in ACCEPTED:
        assert r.status_code == 302, (mode, r.status_code, r.text)
        assert SESSION in b.jar
        return
    assert r.status_code == 401, (mode, r.status_code, r.text)
    assert "id_token_invalid" in r.text or "Login rejected" in r.text
    assert SESSION not in b.jar, "no session from a bad ID token"
    assert not [n for n in b.jar if ".tx." in n], "transaction dropped"
    envoy.assert_vm_healthy()


def test_an_unknown_kid_is_not_a_reason_to_hammer_the_jwks(forger_envoy):
    forger, envoy = forger_envoy
    before = forger.counts()["jwks_calls"]
    for _ in range(5):
        assert forged_login(Browser(envoy), forger, "wrong-kid").status_code == 401
    # Keys were read at start-up less than a minute ago: no re-read per forged token.
    assert forger.counts()["jwks_calls"] - before <= 1


def test_rotated_idp_keys_are_fetched_on_an_unknown_kid(procs, tmp_path):
    """The IdP restarts with new signing keys; the next login names a kid the filter has
    not seen, so it reads the JWKS again (allowed once a second here) and the login works."""
    port = free_port()
    idp_port = free_port()
    idp = start_idp(procs, [f"http://127.0.0.1:{port}/private/callback"], port=idp_port,
                    env_overrides={"IDP_KEY_ID_PREFIX": "before-"})
    envoy = start_envoy(procs, discovery_only(idp.issuer, jwks_min_refetch_s=1), start_echo(procs),
                        idp_port, port=port, name="envoy-rotation")
    assert Browser(envoy).login().status_code == 302
    idp.process.stop()
    idp = start_idp(procs, [f"http://127.0.0.1:{port}/private/callback"], port=idp_port,
                    env_overrides={"IDP_KEY_ID_PREFIX": "after-"})
    time.sleep(1.1)
    r = Browser(envoy).login()
    assert r.status_code == 302, r.text
    envoy.assert_vm_healthy()


def test_idp_down_then_up_recovers_without_restarting_envoy(procs):
    port, idp_port = free_port(), free_port()
    envoy = start_envoy(procs, discovery_only(f"http://127.0.0.1:{idp_port}", idp_timeout_ms=1000),
                        start_echo(procs), idp_port, port=port, name="envoy-idp-down")
    r = requests.get(envoy.url("/private/login"), headers={"Sec-Fetch-Mode": "navigate"},
                     allow_redirects=False, timeout=10)
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "5"
    assert "identity provider" in r.text
    api = requests.get(envoy.url("/private/api"), headers={"Accept": "application/json", "X-CSRF": "1"}, timeout=10)
    assert api.status_code == 401, "an API call without a session needs no IdP"
    idp = start_idp(procs, [f"http://127.0.0.1:{port}/private/callback"], port=idp_port)
    deadline = time.monotonic() + 15
    while True:
        r = requests.get(envoy.url("/private/login"), allow_redirects=False, timeout=10,
                         headers={"Sec-Fetch-Mode": "navigate"})
        if r.status_code == 302 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.status_code == 302 and r.headers["Location"].startswith(idp.issuer)
    assert Browser(envoy).login().status_code == 302
    envoy.assert_vm_healthy()


# --- refresh ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def short_tokens(procs):
    """Access tokens live 65 s; with the default 60 s leeway they fall due after 5 s."""
    return start(procs, idp_env={"IDP_ACCESS_TOKEN_TTL": "65"}, name="envoy-short")


def test_refresh_happens_before_expiry_and_the_api_keeps_answering(short_tokens):
    idp, envoy = short_tokens
    b = Browser(envoy)
    b.login()
    first = token_upstream(b)
    assert token_upstream(b) == first, "fresh token: no refresh, no new cookie"
    refreshes = idp.stats()["refresh_requests"]
    time.sleep(5.5)
    r = b.get("/private/api/me", navigate=False)
    assert r.status_code == 200
    second = r.json()["headers"]["authorization"]
    assert second != first
    assert idp.stats()["refresh_requests"] == refreshes + 1
    renewed = set_cookies(r)[SESSION]
    assert renewed["attrs"]["httponly"] is True and renewed["attrs"]["secure"] is True
    # The new cookie carries the new token: no second refresh.
    assert token_upstream(b) == second
    assert idp.stats()["refresh_requests"] == refreshes + 1
    # And the new token works at the IdP.
    me = requests.get(idp.discovery()["userinfo_endpoint"], headers={"Authorization": second}, timeout=10)
    assert me.status_code == 200


def test_twenty_parallel_requests_cause_exactly_one_refresh(short_tokens):
    idp, envoy = short_tokens
    b = Browser(envoy)
    b.login()
    cookie = b.cookie_header()
    time.sleep(5.5)
    before = idp.stats()["refresh_requests"]
    results = []
    barrier = threading.Barrier(20)

    def call():
        barrier.wait()
        r = requests.get(envoy.url("/private/api/items"), timeout=20,
                         headers={"Cookie": cookie, "Accept": "application/json", "X-CSRF": "1"})
        results.append((r.status_code, r.json()["headers"].get("authorization") if r.ok else r.text))

    threads = [threading.Thread(target=call) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [s for s, _ in results] == [200] * 20, results
    assert idp.stats()["refresh_requests"] == before + 1
    assert len({tok for _, tok in results}) == 1, "every request used the one new token"
    envoy.assert_vm_healthy()


def test_invalid_grant_while_the_token_is_good_goes_on_until_it_expires(short_tokens):
    """A refused refresh (invalid_grant) while the access token is still valid is taken for a
    race lost to another replica (issue 18): the request goes on with the current token and
    the cookie is left alone; the session ends when the token has really expired."""
    idp, envoy = short_tokens
    b = Browser(envoy)
    b.login()
    first = token_upstream(b)
    idp.revoke_all()
    time.sleep(5.5)
    r = b.get("/private/api/items", navigate=False)
    assert r.status_code == 200 and r.json()["headers"]["authorization"] == first, r.text
    assert SESSION not in set_cookies(r), "no deletion, no re-seal"
    superseded = {k: v for k, v in envoy.stats().items() if k.endswith(".refreshes_superseded")}
    assert sum(superseded.values()) == 1, superseded


def test_invalid_grant_after_the_token_expired_ends_the_session(procs):
    """Tokens of 3 s, refreshed only once expired (leeway 0): a refused refresh ends the
    session (401, cookie deleted; a page load logs in again)."""
    idp, envoy = start(procs, idp_env={"IDP_ACCESS_TOKEN_TTL": "3"}, name="envoy-expired",
                       session={"refresh_leeway_s": 0})
    b = Browser(envoy)
    b.login()
    old_cookies = b.cookie_header()
    idp.revoke_all()
    time.sleep(3.6)
    r = b.get("/private/api/items", navigate=False)
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
    assert set_cookies(r)[SESSION]["attrs"]["max-age"] == "0", "the dead session is deleted"
    nav = requests.get(envoy.url("/private/page"), allow_redirects=False, timeout=10,
                       headers={"Cookie": old_cookies, "Sec-Fetch-Mode": "navigate"})
    assert nav.status_code == 302 and nav.headers["Location"].startswith(idp.issuer)


def test_a_refresh_whose_request_left_still_renews_the_session(procs):
    """The browser leaves while the IdP answers a refresh, which it has already rotated: the
    answer is taken all the same, so the next request gets the new token at once instead of
    waiting, and no second refresh presents the consumed refresh token (the IdP would answer
    invalid_grant and the session would end)."""
    idp, envoy = start(procs, idp_env={"IDP_ACCESS_TOKEN_TTL": "65", "IDP_REFRESH_DELAY_MS": "1500"},
                       name="envoy-left-refresh")
    b = Browser(envoy)
    b.login()
    first = token_upstream(b)
    time.sleep(5.5)
    before = idp.stats()["refresh_requests"]
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(envoy.url("/private/api/me"), timeout=0.5,
                     headers={"Cookie": b.cookie_header(), "Accept": "application/json", "X-CSRF": "1"})
    time.sleep(2.5)
    assert idp.stats()["refresh_requests"] == before + 1, "the refresh reached the IdP"

    r = b.get("/private/api/me", navigate=False)
    assert r.status_code == 200, r.text
    second = r.json()["headers"]["authorization"]
    assert second != first, "the refreshed token, not the old one"
    assert r.elapsed.total_seconds() < 1, "served from the published outcome, not after a wait"
    assert SESSION in set_cookies(r), "the renewed session is set"
    assert idp.stats()["refresh_requests"] == before + 1, "no second refresh"
    ok = {k: v for k, v in envoy.stats().items() if k.endswith(".refreshes_ok")}
    assert sum(ok.values()) == 1, ok
    assert token_upstream(b) == second
    envoy.assert_vm_healthy()


def test_a_cookie_copied_before_logout_stops_working_on_every_worker(short_tokens):
    """README, Logout: a logout is remembered (the process's deny list, in shared data), so a
    copy of the cookie made before it is refused by every worker from their next tick on,
    though its access token is still fresh."""
    idp, envoy = short_tokens
    b = Browser(envoy)
    b.login()
    copy = b.cookie_header()
    other = Browser(envoy)
    other.login()

    def replay(cookie):
        return requests.get(envoy.url("/private/api/me"), timeout=20,
                            headers={"Cookie": cookie, "Accept": "application/json", "X-CSRF": "1"})

    assert replay(copy).status_code == 200
    revocations = idp.stats()["revocations"]
    assert b.get(b.get("/private/session", navigate=False).json()["logout_url"]).status_code == 302
    assert idp.stats()["revocations"] == revocations + 1
    time.sleep(0.3)  # every worker's tick (100 ms) has read the list
    # New connections each: Envoy spreads them over its two workers.
    for _ in range(10):
        r = replay(copy)
        assert r.status_code == 401 and r.json()["error"] == "unauthenticated", r.text
        assert set_cookies(r)[SESSION]["attrs"]["max-age"] == "0"
    assert replay(other.cookie_header()).status_code == 200, "another session goes on"
    envoy.assert_vm_healthy()


def test_an_unreachable_idp_lets_requests_go_on_with_the_current_token(procs):
    idp, envoy = start(procs, idp_env={"IDP_ACCESS_TOKEN_TTL": "65"}, name="envoy-idp-gone",
                       idp_timeout_ms=1000)
    b = Browser(envoy)
    b.login()
    first = token_upstream(b)
    time.sleep(5.5)
    idp.process.stop()
    r = b.get("/private/api/me", navigate=False)
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["authorization"] == first, "the current token, still valid"
    assert SESSION not in set_cookies(r), "the session is kept as it is"
    envoy.assert_vm_healthy()


# --- lifetime, rotation, size ----------------------------------------------------------------

def test_cookie_key_rotation_keeps_old_sessions_alive(procs):
    port_old, port_new = free_port(), free_port()
    idp = start_idp(procs, [f"http://127.0.0.1:{p}/private/callback" for p in (port_old, port_new)])
    echo = start_echo(procs)
    # The new instance rolls out with a new first key; the old key still opens.
    old = start_envoy(procs, discovery_only(idp.issuer), echo, idp.port, port=port_old,
                      cookie_keys=KEY_A, name="envoy-old-key")
    new = start_envoy(procs, discovery_only(idp.issuer, session={"refresh_leeway_s": 3600}), echo,
                      idp.port, port=port_new, cookie_keys=f"{KEY_B},{KEY_A}", name="envoy-new-key")
    b = Browser(old)
    b.login()
    sealed_old = b.jar[SESSION]
    b.envoy = new
    time.sleep(1.1)  # expiry is counted in whole seconds: now the token is due on `new`
    r = b.get("/private/api/me", navigate=False)
    assert r.status_code == 200, "a session sealed with the old key still works"
    # Written again (here: a refresh), it is sealed with the new key.
    sealed_new = b.jar[SESSION]
    assert sealed_new != sealed_old
    assert sealed_new.split(".")[1] != sealed_old.split(".")[1], "another key id"
    b.envoy = old
    assert b.get("/private/api/me", navigate=False).status_code == 401, "only the new key opens it"


def test_a_big_session_is_chunked_and_stale_chunks_go(procs):
    idp, envoy = start(procs, name="envoy-chunks")
    b = Browser(envoy)
    r = b.login(user=BIG_USER, password=BIG_PASSWORD)
    assert r.status_code == 302, r.text
    chunks = sorted(n for n in b.jar if n.startswith(SESSION))
    assert len(chunks) >= 3, chunks
    assert all(len(c["raw"]) < 4096 for c in set_cookies(r).values())
    seen = b.get("/private/api/me", navigate=False, extra_cookies="theme=dark").json()
    assert seen["headers"]["authorization"].startswith("Bearer ")
    assert seen["headers"]["cookie"] == "theme=dark", "no chunk reaches the upstream"
    # A missing chunk is no session.
    without = {k: v for k, v in b.jar.items() if k != f"{SESSION}.1"}
    r = requests.get(envoy.url("/private/api"), headers={"Accept": "application/json", "X-CSRF": "1", "Cookie": "; ".join(
        f"{k}={v}" for k, v in without.items())}, timeout=10)
    assert r.status_code == 401
    # Logging in as a small user in the same browser deletes the big session's chunks.
    b.idp = requests.Session()
    r = b.login()
    gone = [n for n, c in set_cookies(r).items() if c["attrs"].get("max-age") == "0" and n != SESSION]
    assert f"{SESSION}.1" in gone
    assert sorted(n for n in b.jar if n.startswith(SESSION)) == [SESSION]
    assert token_upstream(b).startswith("Bearer ")


def test_sessions_die_of_inactivity_and_of_their_maximum_lifetime(procs):
    """In Envoy, with the shortest settings (60 s without a request, 100 s in all): an idle
    session ends after its window although a busy one lives on (its cookie slid), and the busy
    one ends at its maximum lifetime however active. A dead session's API call gets 401 and
    its cookie deleted. About 105 s of waiting."""
    idp, envoy = start(procs, name="envoy-session-ends",
                       session={"max_lifetime_s": 100, "inactivity_timeout_s": 60})
    idle, busy = Browser(envoy), Browser(envoy)
    idle.login()
    busy.login()
    t0 = time.monotonic()  # both sessions were created (and last seen) before this

    def at(seconds: float) -> None:
        time.sleep(max(0.0, t0 + seconds - time.monotonic()))

    def call(b: Browser):
        return b.get("/private/api/me", navigate=False)

    at(35)  # past half the window: the busy session's cookie slides
    r = call(busy)
    assert r.status_code == 200 and SESSION in set_cookies(r), r.headers
    at(62)
    r = call(idle)
    assert r.status_code == 401, r.text
    assert set_cookies(r)[SESSION]["attrs"]["max-age"] == "0"
    assert call(busy).status_code == 200, "the slid window ends at ~95 s"
    at(80)
    r = call(busy)
    assert r.status_code == 200 and SESSION in set_cookies(r)
    at(102)  # still within the window slid at 80 s, but past the maximum lifetime
    r = call(busy)
    assert r.status_code == 401, r.text
    assert set_cookies(r)[SESSION]["attrs"]["max-age"] == "0"


def test_an_unchanged_session_is_not_rewritten(procs):
    """Lifetime limits are enforced from inside the sealed session (unit-tested in
    src/session/contents.rs); here: a call that changes nothing sets no cookie."""
    idp, envoy = start(procs, name="envoy-lifetime",
                       session={"max_lifetime_s": 600, "inactivity_timeout_s": 300})
    b = Browser(envoy)
    b.login()
    sealed = b.jar[SESSION]
    assert token_upstream(b)
    # Nothing changed, the window needs no sliding yet: the cookie is not re-written.
    r = b.get("/private/api/me", navigate=False)
    assert SESSION not in set_cookies(r)
    assert b.jar[SESSION] == sealed
