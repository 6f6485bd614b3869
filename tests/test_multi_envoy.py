"""Several Envoys serving one app: two BFF Envoys (the filter, the same cookie keys) behind a
third, plain Envoy acting as the load balancer (tests/harness/lb.py).

The browser only ever talks to the load balancer. It rewrites Host to an internal name and
passes the browser's host on in X-Forwarded-Host, so the BFFs run with
`trust_forwarded_headers: true` (and without `use_remote_address`, trusting the LB's
X-Forwarded-Proto); the IdP knows only the LB's redirect URI. A header `x-backend: a|b` steers a
request to one BFF (deterministic tests); without it the LB alternates (ROUND_ROBIN).

What holds, shown here: any BFF serves any session, login transaction or logout link, whoever
issued it; a refresh made by one BFF is used by the other through the renewed cookie; a cookie
key rotation rolled out one instance at a time logs nobody out when the new key is added in
second place first (and shows the short re-login window of the faster procedure). Across processes
without a store, refresh is single-flight per process only: requests of one session reaching
several BFFs with the same due token refresh once per BFF; the BFFs that lose the race (the IdP
refuses the rotated refresh token, `invalid_grant`) go on with the current access token and
leave the cookie alone (issue 18), so nobody is logged out by their own SPA's burst; see the
refresh-race tests below.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest
import requests

from harness import SESSION
from harness.envoy import (KEY_A, KEY_B, Envoy, deleted, discovery_only, query_of, renewed_cookie,
                           set_cookies, start_envoy)
from harness.idp import Idp, login_at_idp, start_idp
from harness.lb import INTERNAL_HOST, LoadBalancer, SteeredBrowser, api_call, start_lb, wait_until_due
from harness.procs import ProcessGroup, free_port
from harness.upstream import start_echo

@dataclass
class Deployment:
    """An IdP, an echo upstream, BFF Envoys "a" and "b" and the load balancer in front."""
    procs: ProcessGroup
    idp: Idp
    echo_port: int
    config: dict
    lb: LoadBalancer | None = None
    bffs: dict[str, Envoy] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)

    def start_bff(self, name: str, keys: str, port: int | None = None) -> Envoy:
        envoy = start_envoy(self.procs, self.config, self.echo_port, self.idp.port,
                            cookie_keys=keys, port=port, name=f"envoy-{name}", edge=False)
        self.bffs[name], self.keys[name] = envoy, keys
        return envoy

    def restart(self, name: str, keys: str) -> Envoy:
        """A rolling update of one instance: stop its process (by PID), start a new one with
        `keys` on the same port. The old VM must have stayed healthy until then."""
        old = self.bffs[name]
        old.assert_vm_healthy()
        old.process.stop()
        return self.start_bff(name, keys, port=old.port)

    def assert_healthy(self) -> None:
        for name, envoy in self.bffs.items():
            assert envoy.alive(), f"BFF {name} died:\n{envoy.log()[-3000:]}"
            envoy.assert_vm_healthy()
        assert self.lb.alive(), self.lb.log()[-3000:]


def deploy(procs, access_token_ttl: int, keys_a: str = KEY_A, keys_b: str = KEY_A) -> Deployment:
    lb_port = free_port()
    idp = start_idp(procs, [f"http://127.0.0.1:{lb_port}/private/callback"],
                    post_logout_redirect_uris=[f"http://127.0.0.1:{lb_port}/"],
                    env_overrides={"IDP_ACCESS_TOKEN_TTL": str(access_token_ttl)})
    config = discovery_only(idp.issuer, trust_forwarded_headers=True)
    d = Deployment(procs=procs, idp=idp, echo_port=start_echo(procs), config=config)
    d.start_bff("a", keys_a)
    d.start_bff("b", keys_b)
    d.lb = start_lb(procs, {"a": d.bffs["a"].port, "b": d.bffs["b"].port}, port=lb_port)
    return d


@pytest.fixture(scope="module")
def pair(procs) -> Deployment:
    """Access tokens live 65 s: with the default 60 s leeway a session falls due after 5 s."""
    return deploy(procs, access_token_ttl=65)


# --- helpers ---------------------------------------------------------------------------------

def logged_in(d: Deployment, backend: str | None = "a") -> SteeredBrowser:
    """A browser whose whole login (start and callback) went through `backend`."""
    b = SteeredBrowser(d.lb, backend)
    r = b.login()
    assert r.status_code == 302 and r.headers["Location"] == "/", (r.status_code, r.text)
    assert SESSION in b.jar
    return b


def api(b: SteeredBrowser, backend: str | None, expect: int = 200) -> requests.Response:
    """An API call through the LB, steered to `backend`; checks who answered and the status."""
    r = b.on(backend).get("/private/api/me", navigate=False)
    assert r.status_code == expect, (backend, r.status_code, r.text)
    if backend is not None:
        assert b.lb.served_by(r) == backend, r.headers
    return r


def token(r: requests.Response) -> str:
    auth = r.json()["headers"]["authorization"]
    assert auth.startswith("Bearer "), auth
    return auth


def refreshes(d: Deployment) -> int:
    return d.idp.stats()["refresh_requests"]


def key_id(sealed: str) -> str:
    """`v2.<key id>.<nonce+ciphertext>`: which cookie key sealed this session."""
    version, kid, _ = sealed.split(".", 2)
    assert version == "v2", sealed
    return kid


# --- any Envoy serves any session ------------------------------------------------------------

def test_a_session_started_on_one_envoy_is_served_by_the_other(pair):
    d = pair
    b = SteeredBrowser(d.lb, "a")
    start = b.get("/private/login?return_to=/app")
    assert start.status_code == 302 and d.lb.served_by(start) == "a"
    # Built from X-Forwarded-Proto/-Host: the browser's address, not the internal Host.
    assert query_of(start.headers["Location"])["redirect_uri"] == d.lb.url("/private/callback")
    callback = login_at_idp(b.idp, start.headers["Location"])
    assert callback.startswith(d.lb.url("/private/callback?"))
    done = b.get(callback)
    assert done.status_code == 302 and done.headers["Location"] == "/app", done.text
    assert d.lb.served_by(done) == "a"

    on_a = api(b, "a")
    on_b = api(b, "b")
    assert token(on_b) == token(on_a), "B opens A's cookie and forwards the same token"
    assert on_b.json()["headers"]["host"] == INTERNAL_HOST
    assert SESSION not in set_cookies(on_b), "nothing to rewrite"
    info = b.on("b").get("/private/session", navigate=False)
    assert info.status_code == 200 and info.json()["sub"] == "alice-sub-0001"

    served, current = [], token(on_a)
    for _ in range(8):
        r = api(b, None)
        served.append(d.lb.served_by(r))
        if renewed_cookie(r):  # only on a machine so slow that the token fell due (5 s)
            current = token(r)
        assert token(r) == current
    assert set(served) == {"a", "b"}, served

    # The logout link A's session endpoint gave works on B.
    logout_url = b.on("a").get("/private/session", navigate=False).json()["logout_url"]
    out = b.on("b").get(logout_url)
    assert out.status_code == 302, out.text
    assert out.headers["Location"].startswith(d.idp.discovery()["end_session_endpoint"] + "?")
    assert query_of(out.headers["Location"])["post_logout_redirect_uri"] == d.lb.url("/")
    assert not [n for n in b.jar if n.startswith(SESSION)]
    api(b, "a", expect=401)
    api(b, "b", expect=401)
    d.assert_healthy()


def test_a_login_started_on_one_envoy_finishes_on_the_other(pair):
    d = pair
    for first, second in [("a", "b"), ("b", "a")]:
        b = SteeredBrowser(d.lb, first)
        start = b.get("/private/login")
        assert start.status_code == 302 and d.lb.served_by(start) == first
        callback = login_at_idp(b.idp, start.headers["Location"])
        done = b.on(second).get(callback)
        assert done.status_code == 302, (first, second, done.text)
        assert d.lb.served_by(done) == second
        assert not [n for n in b.jar if ".tx." in n], "the transaction cookie is gone"
        api(b, first)
        api(b, second)
    d.assert_healthy()


# --- refresh across processes ----------------------------------------------------------------

@pytest.mark.parametrize("first", ["a", "b"])
def test_a_refresh_on_one_envoy_is_used_by_the_other(pair, first):
    """Sequential requests alternate between the BFFs: the first one after the token falls
    due refreshes (once), and the other BFF then gets the renewed cookie and uses its token.
    The next refresh, made with the rotated refresh token, happens on the other BFF."""
    d = pair
    other = "b" if first == "a" else "a"
    b = logged_in(d, first)
    before = refreshes(d)
    t0 = token(api(b, first))
    assert token(api(b, other)) == t0
    assert refreshes(d) == before, "a fresh token is not refreshed"

    wait_until_due(b)
    r = api(b, first)
    t1 = token(r)
    assert t1 != t0 and renewed_cookie(r), "refreshed, and the renewed session sent back"
    assert refreshes(d) == before + 1
    for backend in [other, first, other, first]:
        r = api(b, backend)
        assert token(r) == t1, backend
        assert SESSION not in set_cookies(r), "the renewed cookie needs no further rewrite"
    assert refreshes(d) == before + 1, "exactly one refresh for one due session"

    # The renewed session falls due in turn; this time the other BFF refreshes it, with the
    # refresh token the first one received (rotation at the IdP accepts it: it is the newest).
    wait_until_due(b)
    r = api(b, other)
    t2 = token(r)
    assert t2 not in (t0, t1) and renewed_cookie(r)
    assert token(api(b, first)) == t2
    assert refreshes(d) == before + 2
    d.assert_healthy()


def test_concurrent_requests_of_one_session_on_two_envoys_both_refresh(pair):
    """Refresh is single-flight per Envoy process (deploy/istio/README.md): two requests of one
    session reaching two Envoys while its token is due both refresh with the same refresh
    token. The test IdP (oidc-provider) rotates refresh tokens; the second use gets
    invalid_grant (and, oidc-provider's reuse detection, the grant is revoked). The loser's
    access token is still valid, so it goes on with it and leaves the cookie alone (issue 18):
    both answers are 200, none deletes the session."""
    d = pair
    b = logged_in(d, "a")
    cookie = b.cookie_header()
    wait_until_due(b)
    before = refreshes(d)
    barrier = threading.Barrier(2)
    results: dict[str, requests.Response] = {}

    def call(backend):
        barrier.wait()
        results[backend] = api_call(d.lb, cookie, backend)

    threads = [threading.Thread(target=call, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert set(results) == {"a", "b"}
    outcome = {n: (r.status_code, "renewed" if renewed_cookie(r) else "deleted" if deleted(r)
                   else "unchanged") for n, r in results.items()}
    assert refreshes(d) == before + 2, "one refresh per process"
    assert sorted(outcome.values()) == [(200, "renewed"), (200, "unchanged")], outcome
    superseded = sum(e.counters()["refreshes_superseded"] for e in d.bffs.values())
    assert superseded == 1
    # The old cookie goes on (with its token, while it lasts) on both, without a new grant.
    for backend in "ab":
        assert api_call(d.lb, cookie, backend).status_code == 200
    assert refreshes(d) == before + 2
    d.assert_healthy()


def test_an_old_cookie_reaching_the_other_envoy_after_a_refresh_goes_on(pair):
    """Without concurrency: BFF A refreshed the session, but a request still carrying the old
    cookie (in flight, or from a tab that had not seen the new cookie yet) lands on B. A
    answers it from its stored outcome; B knows nothing of it and refreshes with the already
    rotated refresh token: invalid_grant while the old access token is still valid, so B goes
    on with it (issue 18) and remembers that for the rest of the token's life."""
    d = pair
    b = logged_in(d, "a")
    old_cookie = b.cookie_header()
    wait_until_due(b)
    before = refreshes(d)
    renewed = api(b, "a")
    new_token = token(renewed)
    assert renewed_cookie(renewed)
    # Within one process the old cookie is answered from the stored outcome: no refresh.
    again = api_call(d.lb, old_cookie, "a")
    assert again.status_code == 200 and token(again) == new_token
    assert refreshes(d) == before + 1
    # On the other process it is a second use of the rotated refresh token: refused, but the
    # old token is still good, and the cookie is left alone.
    stale = api_call(d.lb, old_cookie, "b")
    assert stale.status_code == 200 and not deleted(stale) and not renewed_cookie(stale)
    assert refreshes(d) == before + 2
    # Remembered: no third grant for the same refresh token.
    assert api_call(d.lb, old_cookie, "b").status_code == 200
    assert refreshes(d) == before + 2
    assert token(api(b, "b")) == new_token
    d.assert_healthy()


def test_a_burst_of_one_due_session_over_three_envoys_logs_nobody_out(procs):
    """Issue 18: three BFFs behind the load balancer, no store, the IdP rotating refresh tokens
    strictly; the SPA fires 20 calls at once with a due token. Every call answers 200, none
    deletes the session cookie, the next call (with whichever cookie the browser kept) works,
    and the IdP saw at most one grant per BFF."""
    lb_port = free_port()
    idp = start_idp(procs, [f"http://127.0.0.1:{lb_port}/private/callback"],
                    env_overrides={"IDP_ACCESS_TOKEN_TTL": "65"})
    config = discovery_only(idp.issuer, trust_forwarded_headers=True)
    d = Deployment(procs=procs, idp=idp, echo_port=start_echo(procs), config=config)
    for name in "abc":
        d.start_bff(name, KEY_A)
    d.lb = start_lb(procs, {name: e.port for name, e in d.bffs.items()}, port=lb_port)
    b = logged_in(d, "a")
    cookie = b.cookie_header()
    wait_until_due(b)
    before = refreshes(d)
    barrier = threading.Barrier(20)
    answers: list[requests.Response] = []
    lock = threading.Lock()

    def call(i):
        barrier.wait()
        r = api_call(d.lb, cookie, "abc"[i % 3])
        with lock:
            answers.append(r)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(answers) == 20
    assert [r.status_code for r in answers] == [200] * 20, [r.text for r in answers if r.status_code != 200]
    assert not any(deleted(r) for r in answers), "no answer deletes the session"
    grants = refreshes(d) - before
    assert 1 <= grants <= 3, f"{grants} grants for 3 BFFs"
    # The browser keeps whichever cookie came last; either works for the next call.
    kept = [renewed_cookie(r) for r in answers if renewed_cookie(r)] or [None]
    for value in {kept[-1], None}:
        jar = f"{SESSION}={value}" if value else cookie
        for backend in "abc":
            assert api_call(d.lb, jar, backend).status_code == 200, (value is None, backend)
    assert refreshes(d) - before == grants, "no grant after the burst"
    d.assert_healthy()


# --- cookie-key rotation, one instance at a time ---------------------------------------------

# Access tokens live 85 s: due 25 s after a login or refresh, time enough to restart an instance
# three times and check the old cookie before anything is re-written, even on a busy machine
# (10 s was not, once, with the CI run sharing two cores with a benchmark).
ROTATION_TTL = 85


def assert_served_everywhere(d: Deployment, b: SteeredBrowser, step: str) -> None:
    for backend in ("a", "b"):
        r = b.on(backend).get("/private/api/me", navigate=False)
        assert r.status_code == 200, (step, backend, d.keys, r.status_code, r.text)
        assert d.lb.served_by(r) == backend


def test_a_key_rotation_new_key_first_has_a_relogin_window(procs):
    """The README's fast procedure: roll out "NEW,OLD" instance by instance. Old sessions keep
    working everywhere, but while the rollout runs, a cookie an updated instance re-sealed with
    NEW reaching a not yet updated instance is no session there: 401, and the cookie deleted
    (the user logs in again). deploy/istio/README.md gives the safer order (next test)."""
    d = deploy(procs, access_token_ttl=ROTATION_TTL, keys_a=KEY_A, keys_b=KEY_A)
    b = logged_in(d, "a")
    other_user = logged_in(d, "b")
    old_sealed = b.jar[SESSION]
    old_kid = key_id(old_sealed)
    before = refreshes(d)
    assert_served_everywhere(d, b, "both on KEY_A")

    d.restart("b", f"{KEY_B},{KEY_A}")
    assert_served_everywhere(d, b, "B on NEW,OLD")
    assert b.jar[SESSION] == old_sealed, "nothing re-written yet"
    assert refreshes(d) == before, "the token was not due yet (the test relies on it)"

    # A refresh on B re-seals the session, with B's first key.
    wait_until_due(b)
    r = api(b, "b")
    new_sealed = renewed_cookie(r)
    assert new_sealed and key_id(new_sealed) != old_kid, "sealed with KEY_B"
    assert refreshes(d) == before + 1

    # The window: A still has only KEY_A and cannot open it.
    probe = api_call(d.lb, b.cookie_header(), "a")
    assert probe.status_code == 401 and probe.json()["error"] == "unauthenticated", probe.text
    assert deleted(probe), "a browser that reached A now has no session: it logs in again"
    assert refreshes(d) == before + 1, "A did not touch the IdP"

    d.restart("a", f"{KEY_B},{KEY_A}")
    assert_served_everywhere(d, b, "both on NEW,OLD (KEY_B-sealed cookie)")
    # A session still sealed with KEY_A opens everywhere too.
    assert key_id(other_user.jar[SESSION]) == old_kid
    assert_served_everywhere(d, other_user, "both on NEW,OLD (KEY_A-sealed cookie)")
    d.assert_healthy()


def test_a_key_rotation_adding_the_key_second_first_logs_nobody_out(procs):
    """The safer rollout (deploy/istio/README.md): first "OLD,NEW" everywhere (every instance
    learns to open NEW, nothing is sealed with it yet), then promote "NEW,OLD" everywhere.
    At every step every instance serves every cookie, whichever key sealed it."""
    d = deploy(procs, access_token_ttl=ROTATION_TTL, keys_a=KEY_A, keys_b=KEY_A)
    b = logged_in(d, "a")
    old_kid = key_id(b.jar[SESSION])
    other_user = logged_in(d, "b")
    before = refreshes(d)

    def everyone(step):
        assert_served_everywhere(d, b, step)
        assert_served_everywhere(d, other_user, step)

    everyone("both on KEY_A")
    for name in ("b", "a"):
        d.restart(name, f"{KEY_A},{KEY_B}")
        everyone(f"{name} on OLD,NEW")
    assert key_id(b.jar[SESSION]) == old_kid, "OLD still seals"

    d.restart("b", f"{KEY_B},{KEY_A}")
    everyone("B promoted to NEW,OLD")
    assert refreshes(d) == before, "nothing re-written so far (the test relies on it)"
    # B re-seals with NEW; A (OLD,NEW) already opens it: the window of the fast procedure
    # does not exist here.
    wait_until_due(b)
    r = api(b, "b")
    assert renewed_cookie(r) and key_id(b.jar[SESSION]) != old_kid
    everyone("B sealed with NEW, A on OLD,NEW")

    d.restart("a", f"{KEY_B},{KEY_A}")
    everyone("both on NEW,OLD")
    assert key_id(b.jar[SESSION]) != old_kid
    d.assert_healthy()
