"""The IdP's and the API's language (issue 12), in a real Envoy against the real IdP: parameters
on the authorization request (configured, and forwarded from the SPA's login link), RFC 8707
resource indicators, so the API receives an access token issued for it (its `aud`), also after
a refresh, and step-up: a rule that wants a stronger (`acr`) or fresher (`auth_time`) login
sends the user through one and back."""

from __future__ import annotations

import base64
import json
import time

import pytest

from harness.envoy import Browser, discovery_only, query_of, refused
from harness.idp import login_at_idp
from harness.stack import start_stack

RESOURCE = "https://api.example.test/orders"
MFA = "urn:example:mfa"  # the test IdP's stronger acr


@pytest.fixture(scope="module")
def api(procs):
    stack = start_stack(
        procs, discovery_only, name="envoy-params",
        idp_env={"IDP_RESOURCES": RESOURCE},
        scopes=["openid", "profile", "email", "offline_access", "api:read"],
        auth_params={"ui_locales": "en", "prompt": "login"},
        resources=[RESOURCE],
        rules=[{"prefix": "/private/refund", "acr": [MFA]},
               {"prefix": "/private/fresh", "max_auth_age_s": 2}],
        upstream_step_up=True,
        # Every API call finds the token due: the first one after login refreshes it.
        session={"refresh_leeway_s": 3600},
    )
    return stack


def claims_of(jwt: str) -> dict:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def upstream_token(b: Browser) -> str:
    r = b.get("/private/orders", navigate=False)
    assert r.status_code == 200, (r.status_code, r.text)
    scheme, token = r.json()["headers"]["authorization"].split(" ", 1)
    assert scheme == "Bearer"
    return token


def test_configured_and_forwarded_parameters_reach_the_idp_once_each(api):
    b = Browser(api.envoy)
    start = b.get("/private/login?return_to=%2Fapp&prompt=consent&login_hint=alice"
                  "&state=forged&scope=admin&resource=https%3A%2F%2Fevil&domain_hint=x")
    assert start.status_code == 302, start.text
    location = start.headers["Location"]
    query = location.split("?", 1)[1]
    names = [pair.split("=", 1)[0] for pair in query.split("&")]
    for name in ("prompt", "login_hint", "ui_locales", "resource", "state", "scope", "nonce"):
        assert names.count(name) == 1, (name, location)
    params = query_of(location)
    assert params["prompt"] == "consent", "the SPA's value replaces the configured one"
    assert params["login_hint"] == "alice"
    assert params["ui_locales"] == "en"
    assert params["resource"] == RESOURCE
    assert params["state"] != "forged" and "admin" not in params["scope"]
    assert "domain_hint" not in names, "not on the allow list"
    # The IdP takes the request as it is: the login completes.
    callback = login_at_idp(b.idp, location)
    done = b.get(callback)
    assert done.status_code == 302 and done.headers["Location"] == "/app", done.text


@pytest.mark.parametrize("query", [
    "login_hint=a%0Ab", "prompt=login&prompt=none", "max_age=soon", "ui_locales=" + "x" * 600,
])
def test_malformed_forwarded_parameters_are_refused(api, query):
    r = Browser(api.envoy).get(f"/private/login?{query}", navigate=False)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_login_parameter"
    assert "xxxx" not in r.text


def test_the_api_receives_a_token_for_its_audience_also_after_a_refresh(api):
    b = Browser(api.envoy)
    assert b.login().status_code == 302
    refreshes = api.idp.stats()["refresh_requests"]
    # Requests are decided by the clock of the VM's last tick (up to 100 ms old) in whole
    # seconds: a token is due with certainty only a second after it was issued.
    time.sleep(1.1)
    first = upstream_token(b)
    assert api.idp.stats()["refresh_requests"] == refreshes + 1, "the first call refreshed"
    claims = claims_of(first)
    assert claims["aud"] == RESOURCE, claims
    assert claims["scope"] == "api:read"
    time.sleep(1.1)
    second = upstream_token(b)
    assert api.idp.stats()["refresh_requests"] == refreshes + 2
    assert second != first
    assert claims_of(second)["aud"] == RESOURCE


@pytest.mark.parametrize("field,config", [
    ("auth_params.state", {"auth_params": {"state": "x"}}),
    ("auth_params.redirect_uri", {"auth_params": {"redirect_uri": "https://evil/"}}),
    ("login_params", {"login_params": ["nonce"]}),
    ("resources", {"resources": ["https://api.example/#frag"]}),
])
def test_parameters_the_filter_owns_fail_start_up_by_name(procs, field, config):
    line = refused(procs, discovery_only("http://127.0.0.1:1", **config))
    assert f"{field}:" in line, line


def test_a_silent_login_without_an_idp_session_comes_back_to_the_spa_with_its_error(api):
    b = Browser(api.envoy)
    start = b.get("/private/login?return_to=%2Fapp&prompt=none")
    assert start.status_code == 302, start.text
    # No session at the IdP: it answers at once, to the callback, with login_required.
    at_idp = b.idp.get(start.headers["Location"], allow_redirects=False, timeout=10)
    assert at_idp.status_code in (302, 303), at_idp.text
    callback = at_idp.headers["Location"]
    assert query_of(callback).get("error") == "login_required", callback
    back = b.get(callback)
    assert back.status_code == 302, back.text
    assert back.headers["Location"] == "/app?login_error=login_required"
    assert not any(".tx." in name for name in b.jar), "the transaction is gone"
    assert not b.session_cookies()


def follow_step_up(b: Browser, path: str, headers: dict | None = None) -> str:
    """A page load that is sent through a step-up: returns where the login ends."""
    page = b.get(path, headers=headers)
    assert page.status_code == 302, (page.status_code, page.text)
    login = page.headers["Location"]
    assert login.startswith("/private/login?"), login
    start = b.get(login)
    assert start.status_code == 302, start.text
    # The IdP shows its login form again (a stronger or fresher login), then comes back.
    done = b.get(login_at_idp(b.idp, start.headers["Location"]))
    assert done.status_code == 302, (done.status_code, done.text)
    return done.headers["Location"]


def test_a_rule_wanting_a_stronger_login_steps_up_and_comes_back(api):
    b = Browser(api.envoy)
    assert b.login().status_code == 302
    # A login that asked for no acr_values: this IdP names no acr then (oidc-provider's
    # claims follow the request), and the session endpoint says so.
    assert b.get("/private/session", navigate=False).json()["acr"] is None
    # An API call is told where to log in; the SPA follows that link as a page load.
    r = b.get("/private/refund/7", navigate=False)
    assert r.status_code == 401, r.text
    body = r.json()
    assert body["error"] == "step_up_required"
    assert body["login"] == f"/private/login?return_to=%2Fprivate%2Frefund%2F7&acr_values={MFA.replace(':', '%3A')}"
    assert follow_step_up(b, "/private/refund/7") == "/private/refund/7"
    info = b.get("/private/session", navigate=False).json()
    assert info["acr"] == MFA and info["sub"] == "alice-sub-0001"
    assert b.get("/private/refund/7", navigate=False).status_code == 200
    assert b.get("/private/orders", navigate=False).status_code == 200


def test_a_rule_wanting_a_recent_login_steps_up_with_max_age(api):
    b = Browser(api.envoy)
    assert b.login().status_code == 302
    first = b.get("/private/session", navigate=False).json()["auth_time"]
    assert b.get("/private/fresh", navigate=False).status_code == 200
    time.sleep(3.1)
    r = b.get("/private/fresh", navigate=False)
    assert r.status_code == 401 and "max_age=2" in r.json()["login"], r.text
    assert follow_step_up(b, "/private/fresh") == "/private/fresh"
    assert b.get("/private/session", navigate=False).json()["auth_time"] > first
    assert b.get("/private/fresh", navigate=False).status_code == 200


CHALLENGE = f'Bearer error="insufficient_user_authentication", acr_values="{MFA}"'


def test_the_apis_step_up_challenge_becomes_a_step_up(api):
    b = Browser(api.envoy)
    assert b.login().status_code == 302
    challenged = {"X-Echo-Challenge": CHALLENGE}
    r = b.get("/private/orders?page=2", navigate=False, headers=challenged)
    assert r.status_code == 401, r.text
    assert r.json() == {
        "error": "step_up_required",
        "message": r.json()["message"],
        "login": "/private/login?return_to=%2Fprivate%2Forders%3Fpage%3D2&acr_values=urn%3Aexample%3Amfa",
    }
    page = b.get("/private/orders", headers=challenged)
    assert page.status_code == 302
    assert page.headers["Location"].startswith("/private/login?return_to=%2Fprivate%2Forders&acr_values=")
    # Any other 401 from the API reaches the client as the API sent it.
    other = b.get("/private/orders", navigate=False,
                  headers={"X-Echo-Challenge": 'Bearer error="invalid_token"'})
    assert other.status_code == 401
    assert other.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert other.json()["path"] == "/private/orders", "the API's own body"
    # After the step-up the API is satisfied.
    assert follow_step_up(b, "/private/orders?step=1", challenged) == "/private/orders?step=1"
    assert b.get("/private/session", navigate=False).json()["acr"] == MFA


def test_without_the_switch_the_apis_challenge_passes_through(stack):
    b = Browser(stack.envoy)
    assert b.login().status_code == 302
    r = b.get("/private/orders", navigate=False, headers={"X-Echo-Challenge": CHALLENGE})
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == CHALLENGE
    assert r.json()["path"] == "/private/orders"
