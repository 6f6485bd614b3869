"""What an SPA team relies on, in a real Envoy against the real IdP: the session endpoint,
logout that cannot be triggered cross-site, CSRF defence, claim rules, identity headers the
client cannot forge, and the counters in Envoy's stats."""

import pytest
import requests

from harness import JWT_SHAPED, SESSION
from harness.envoy import Browser, discovery_only, query_of, set_cookies
from harness.stack import start_stack


@pytest.fixture(scope="module")
def spa(procs):
    stack = start_stack(
        procs, discovery_only, name="envoy-spa",
        claim_headers={"sub": "x-user-sub", "email": "x-user-email"},
        rules=[{"prefix": "/private/admin", "require": {"groups": {"contains": "admin"}}},
               {"prefix": "/private/beta", "require": {"groups": {"contains": "beta"},
                                                       "email_verified": {"equals": True}}}],
        csrf={"allowed_origins": ["https://front.example.com"]},
        bypass=["/private/healthz"],
        metrics_prefix="bfftest",
    )
    return stack.idp, stack.envoy


def logged_in(spa) -> Browser:
    b = Browser(spa[1])
    assert b.login().status_code == 302
    return b


# --- the session endpoint ---------------------------------------------------------------------

def test_the_session_endpoint_tells_who_is_logged_in_and_never_a_token(spa):
    idp, envoy = spa
    anonymous = Browser(envoy).get("/private/session", navigate=False)
    assert anonymous.status_code == 401
    assert anonymous.json()["login"] == "/private/login"
    b = logged_in(spa)
    r = b.get("/private/session", navigate=False)
    assert r.status_code == 200
    info = r.json()
    assert info["sub"] == "alice-sub-0001"
    assert info["claims"]["email"] == "alice@example.test"
    assert info["claims"]["groups"] == ["staff", "beta"]
    assert "nonce" not in info["claims"] and "aud" not in info["claims"]
    assert info["access_token_expires_at"] > 0 and info["session_expires_at"] > 0
    assert info["logout_url"].startswith("/private/logout?sid=")
    token = b.get("/private/x", navigate=False).json()["headers"]["authorization"].split()[1]
    assert token not in r.text and not JWT_SHAPED.search(r.text) and "refresh" not in r.text


# --- logout -----------------------------------------------------------------------------------

def test_logout_clears_revokes_and_goes_to_the_idp(spa):
    idp, envoy = spa
    b = logged_in(spa)
    logout_url = b.get("/private/session", navigate=False).json()["logout_url"]
    revocations = idp.stats()["revocations"]
    r = b.get(logout_url)
    assert r.status_code == 302
    location = r.headers["Location"]
    end_session = idp.discovery()["end_session_endpoint"]
    assert location.startswith(end_session + "?")
    q = query_of(location)
    assert q["post_logout_redirect_uri"] == envoy.url("/")
    assert q["client_id"] == "bff"
    assert q["id_token_hint"].count(".") == 2
    assert idp.stats()["revocations"] == revocations + 1
    cleared = set_cookies(r)
    assert cleared[SESSION]["attrs"]["max-age"] == "0"
    assert not [n for n in b.jar if n.startswith(SESSION)]
    assert b.get("/private/api", navigate=False).status_code == 401
    # The IdP accepts the hint and sends the browser back where we asked.
    from harness.idp import logout_at_idp
    assert logout_at_idp(b.idp, location) == envoy.url("/")


def test_logout_cannot_be_triggered_cross_site(spa):
    idp, envoy = spa
    victim = logged_in(spa)
    attacker = logged_in(spa)
    attackers_link = attacker.get("/private/session", navigate=False).json()["logout_url"]
    for link in ["/private/logout", "/private/logout?sid=guess", attackers_link]:
        r = victim.get(link)  # e.g. an <img src> or a link on another site
        assert r.status_code == 403, link
        assert SESSION in victim.jar, "still logged in"
    assert victim.get("/private/api", navigate=False).status_code == 200
    # A cross-site POST carries no CSRF header: refused as well.
    r = victim.request("POST", "/private/logout", headers={"Sec-Fetch-Mode": "navigate", "X-CSRF": ""})
    assert r.status_code == 403
    # The app's own script may log out by POST and gets the IdP's URL as JSON.
    r = victim.request("POST", "/private/logout", navigate=False)
    assert r.status_code == 200 and r.json()["redirect"].startswith(idp.issuer)
    assert not [n for n in victim.jar if n.startswith(SESSION)]


# --- CSRF ------------------------------------------------------------------------------------

def test_api_calls_need_the_csrf_header_and_an_allowed_origin(spa):
    idp, envoy = spa
    b = logged_in(spa)
    no_header = b.get("/private/api", navigate=False, headers={"X-CSRF": ""})
    assert no_header.status_code == 403 and no_header.json()["error"] == "csrf"
    assert b.get("/private/api", navigate=False).status_code == 200
    foreign = b.get("/private/api", navigate=False, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    own = b.get("/private/api", navigate=False, headers={"Origin": envoy.base})
    assert own.status_code == 200
    allowed = b.get("/private/api", navigate=False, headers={"Origin": "https://front.example.com"})
    assert allowed.status_code == 200
    # A page load needs no header.
    assert b.get("/private/page").status_code == 200


# --- authorization and identity headers ------------------------------------------------------

def test_claim_rules_allow_and_deny(spa):
    b = logged_in(spa)  # alice: groups staff, beta; email verified
    denied = b.get("/private/admin/users", navigate=False)
    assert denied.status_code == 403 and denied.json()["error"] == "forbidden"
    page = b.get("/private/admin")
    assert page.status_code == 403 and "not allowed" in page.text
    assert b.get("/private/beta/feature", navigate=False).status_code == 200
    assert b.get("/private/other", navigate=False).status_code == 200


def test_forged_identity_headers_never_reach_upstream(spa):
    idp, envoy = spa
    b = logged_in(spa)
    forged = {"X-User-Sub": "admin-sub", "X-User-Email": "root@example.test"}
    seen = b.get("/private/api", navigate=False, headers=forged).json()["headers"]
    assert seen["x-user-sub"] == "alice-sub-0001"
    assert seen["x-user-email"] == "alice@example.test"
    for path in ["/public/page", "/private/healthz"]:
        seen = requests.get(envoy.url(path), headers=forged, timeout=10).json()["headers"]
        assert "x-user-sub" not in seen and "x-user-email" not in seen, path
        assert "authorization" not in seen
    anonymous = requests.get(envoy.url("/private/api"), timeout=10,
                             headers={**forged, "X-CSRF": "1", "Accept": "application/json"})
    assert anonymous.status_code == 401


# --- metrics ---------------------------------------------------------------------------------

def test_the_counters_move_in_envoys_stats(spa):
    idp, envoy = spa

    def counters():
        stats = envoy.stats()
        return {k.rsplit(".", 1)[-1]: v for k, v in stats.items() if "bfftest." in k}

    before = counters()
    assert set(before) >= {"logins_started", "callbacks_ok", "callbacks_failed", "refreshes_ok",
                           "refreshes_failed", "unauthenticated", "csrf_rejected", "forbidden",
                           "logouts"}, before
    b = logged_in(spa)
    b.get("/private/api", navigate=False, headers={"X-CSRF": ""})
    b.get("/private/admin", navigate=False)
    Browser(envoy).get("/private/api", navigate=False)
    Browser(envoy).get("/private/callback?code=x&state=y")
    b.get(b.get("/private/session", navigate=False).json()["logout_url"])
    after = counters()
    for name in ["logins_started", "callbacks_ok", "csrf_rejected", "forbidden", "unauthenticated",
                 "callbacks_failed", "logouts"]:
        assert after[name] >= before[name] + 1, (name, before, after)
