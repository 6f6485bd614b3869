"""The IdP's and the API's language (issue 12), in a real Envoy against the real IdP: parameters
on the authorization request (configured, and forwarded from the SPA's login link), and RFC 8707
resource indicators, so the API receives an access token issued for it (its `aud`), also after
a refresh."""

import base64
import json

import pytest

from harness.envoy import Browser, discovery_only, query_of
from harness.idp import login_at_idp
from harness.stack import start_stack
from test_config import refused

RESOURCE = "https://api.example.test/orders"


@pytest.fixture(scope="module")
def api(procs):
    stack = start_stack(
        procs, discovery_only, name="envoy-params",
        idp_env={"IDP_RESOURCES": RESOURCE},
        scopes=["openid", "profile", "email", "offline_access", "api:read"],
        auth_params={"ui_locales": "en", "prompt": "login"},
        resources=[RESOURCE],
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
    first = upstream_token(b)
    assert api.idp.stats()["refresh_requests"] == refreshes + 1, "the first call refreshed"
    claims = claims_of(first)
    assert claims["aud"] == RESOURCE, claims
    assert claims["scope"] == "api:read"
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
