"""The filter end to end in a real Envoy against a real OpenID Provider: a browser logs in,
calls the API through Envoy, and the token arrives upstream while the browser never sees it."""

import json
import re

import requests

from harness import JWT_SHAPED, SESSION
from harness.envoy import (SECRETS, Browser, envoy_bootstrap, filter_config, query_of, run_envoy,
                           set_cookies, start_envoy)
from harness.idp import jwt_parts, login_at_idp, start_idp
from harness.procs import free_port
from harness.upstream import start_echo


def upstream_view(response) -> dict:
    assert response.status_code == 200, (response.status_code, response.text)
    return response.json()


# --- 2. a navigation without a session starts the authorization-code flow -------------------

def test_navigation_without_session_redirects_to_the_idp_with_pkce(stack):
    b = Browser(stack.envoy)
    r = b.get("/private/reports?year=2026")
    assert r.status_code == 302
    location = r.headers["Location"]
    assert location.startswith(stack.idp.issuer + "/auth?")
    q = query_of(location)
    assert q["response_type"] == "code"
    assert q["client_id"] == "bff"
    assert q["redirect_uri"] == stack.envoy.url("/private/callback")
    assert q["scope"].split()[0] == "openid"
    assert q["code_challenge_method"] == "S256"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", q["code_challenge"])
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", q["state"])
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", q["nonce"])
    assert q["state"] != q["nonce"]

    cookies = set_cookies(r)
    [(name, tx)] = cookies.items()
    assert name == f"{SESSION}.tx.{q['state'][:16]}"
    assert tx["attrs"]["path"] == "/"
    assert tx["attrs"]["httponly"] is True
    assert tx["attrs"]["secure"] is True
    assert tx["attrs"]["samesite"] == "Lax"
    assert tx["attrs"]["max-age"] == "600"
    # Sealed: nothing of the flow is readable in the cookie.
    assert tx["value"].startswith("v1.")
    assert q["state"] not in tx["value"] and q["nonce"] not in tx["value"]


def test_after_login_the_browser_lands_on_the_page_it_asked_for(stack):
    b = Browser(stack.envoy)
    r = b.login("/private/reports?year=2026")
    assert r.status_code == 302
    assert r.headers["Location"] == "/private/reports?year=2026"


def test_two_tabs_can_log_in_at_once(stack):
    b = Browser(stack.envoy)
    first = b.get("/private/login?return_to=/tab-one")
    second = b.get("/private/login?return_to=/tab-two")
    assert len([n for n in b.jar if ".tx." in n]) == 2
    # Finish the second tab first: each callback finds its own transaction.
    cb2 = login_at_idp(b.idp, second.headers["Location"])
    cb1 = login_at_idp(b.idp, first.headers["Location"])
    assert b.get(cb2).headers["Location"] == "/tab-two"
    assert b.get(cb1).headers["Location"] == "/tab-one"
    assert not [n for n in b.jar if ".tx." in n], "both transactions consumed"


# --- 3. the login endpoint and return_to ---------------------------------------------------

def test_login_endpoint_defaults_to_the_post_login_url(stack):
    r = Browser(stack.envoy).login("/private/login")
    assert r.headers["Location"] == "/"


def test_return_to_accepts_only_same_origin_relative_paths(stack):
    b = Browser(stack.envoy)
    for bad in ["//evil.example", "/\\evil.example", "https://evil.example/", "%2F%2Fevil.example",
                "/%5Cevil.example", "/%2F%2Fevil.example", "javascript:alert(1)",
                "/ok%0D%0ALocation:%20https://evil.example", "/%252F%252Fevil.example"]:
        r = requests.get(stack.envoy.url("/private/login?return_to=") + bad.replace("\\", "%5C"),
                         headers={"Sec-Fetch-Mode": "navigate"}, allow_redirects=False, timeout=10)
        assert r.status_code == 400, (bad, r.status_code)
        assert "Location" not in r.headers
        assert not set_cookies(r), "no login starts"
        assert "return_to" in r.text
    assert b.get("/private/login?return_to=/app%3Fview%3Dweek").status_code == 302


# --- 4. API calls get 401, never a redirect --------------------------------------------------

def test_api_call_without_session_gets_401_json(stack):
    b = Browser(stack.envoy)
    for headers in ({"Sec-Fetch-Mode": "cors"}, {"Accept": "application/json"},
                    {"Accept": "text/html", "X-Requested-With": "XMLHttpRequest"}):
        r = requests.get(stack.envoy.url("/private/api/items"), headers={**headers, "X-CSRF": "1"},
                         allow_redirects=False, timeout=10)
        assert r.status_code == 401, headers
        assert "Location" not in r.headers
        assert r.headers["Content-Type"] == "application/json"
        assert r.json() == {"error": "unauthenticated", "message": "Log in first.",
                            "login": "/private/login"}
    assert b.get("/private/api/items", navigate=False).status_code == 401


# --- 5. the callback exchanges the code and seals the session -------------------------------

def test_callback_sets_a_sealed_session_cookie_and_drops_the_transaction(stack):
    b = Browser(stack.envoy)
    start = b.get("/private/login?return_to=/app")
    [tx_name] = [n for n in b.jar if ".tx." in n]
    calls_before = stack.idp.stats()["token_requests"]
    callback = login_at_idp(b.idp, start.headers["Location"])
    assert query_of(callback)["iss"] == stack.idp.issuer  # RFC 9207, checked by the filter
    r = b.get(callback)
    assert r.status_code == 302 and r.headers["Location"] == "/app"
    assert stack.idp.stats()["token_requests"] == calls_before + 1
    cookies = set_cookies(r)
    assert cookies[tx_name]["attrs"]["max-age"] == "0"
    session = cookies[SESSION]
    assert session["value"].startswith("v2.")
    assert session["attrs"]["httponly"] is True
    assert session["attrs"]["secure"] is True
    assert session["attrs"]["samesite"] == "Lax"
    assert session["attrs"]["path"] == "/"
    assert "domain" not in session["attrs"]  # __Host- forbids it
    # No token anywhere the browser can read.
    assert "access_token" not in r.text and not JWT_SHAPED.search(session["value"])
    assert list(b.jar) == [SESSION]


# --- 6. the API call carries the token upstream, and only the token -------------------------

def test_authenticated_call_reaches_upstream_with_a_working_token(stack):
    b = Browser(stack.envoy)
    b.login()
    r = b.get("/private/api/items?page=2", navigate=False,
              headers={"Authorization": "Bearer forged-by-client"},
              extra_cookies="theme=dark; lang=en")
    seen = upstream_view(r)
    assert seen["path"] == "/private/api/items?page=2"
    auth = seen["headers"]["authorization"]
    assert auth.startswith("Bearer ") and auth != "Bearer forged-by-client"
    # The token upstream is the real one: the IdP's userinfo endpoint accepts it.
    me = requests.get(stack.idp.discovery()["userinfo_endpoint"], headers={"Authorization": auth},
                      timeout=10)
    assert me.status_code == 200 and me.json()["sub"] == "alice-sub-0001"
    # The filter's cookies never reach the upstream; the app's own cookies do.
    assert seen["headers"]["cookie"] == "theme=dark; lang=en"
    assert SESSION not in json.dumps(seen)


def test_upstream_response_comes_back_unchanged(stack):
    b = Browser(stack.envoy)
    b.login()
    through = b.get("/private/raw", navigate=False)
    direct = requests.get(f"http://127.0.0.1:{stack.echo_port}/private/raw", timeout=10)
    assert through.status_code == direct.status_code == 200
    assert through.headers["Content-Type"] == direct.headers["Content-Type"]
    assert "set-cookie" not in {k.lower() for k in through.headers}
    assert set(through.json()) == set(direct.json())


def test_requests_outside_the_prefix_pass_untouched(stack):
    b = Browser(stack.envoy)
    b.login()
    seen = upstream_view(b.get("/public/page", extra_cookies="theme=dark"))
    assert "authorization" not in seen["headers"]
    assert SESSION in seen["headers"]["cookie"] and "theme=dark" in seen["headers"]["cookie"]
    # Not fooled by a look-alike prefix.
    seen = upstream_view(requests.get(stack.envoy.url("/privateer"), timeout=10))
    assert "authorization" not in seen["headers"]


def test_a_route_that_rewrites_host_causes_no_login_loop(procs, stack):
    """Envoy's own OAuth2 filter has looped on logins behind a route that rewrites `Host`. This
    filter runs before the router, so it sees the browser's `Host`: one login, then the API gets
    the rewritten `Host` with the token, and the next navigation is served, not sent back to the
    IdP."""
    port = free_port()
    idp = start_idp(procs, [f"http://127.0.0.1:{port}/private/callback"])
    bootstrap = envoy_bootstrap(port, free_port(), stack.echo_port, idp.port,
                                filter_config(idp.issuer))
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    (route,) = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    route["route"]["host_rewrite_literal"] = "api.internal"
    envoy = run_envoy(procs, bootstrap, "envoy-host-rewrite", env=SECRETS)
    b = Browser(envoy)
    r = b.login("/private/reports")
    assert r.status_code == 302 and r.headers["Location"] == "/private/reports"
    page = upstream_view(b.get("/private/reports"))
    assert page["headers"]["host"] == "api.internal"
    assert page["headers"]["authorization"].startswith("Bearer ")
    api = upstream_view(b.get("/private/api/items", navigate=False))
    assert api["headers"]["host"] == "api.internal"
    counters = envoy.counters()
    assert counters["logins_started"] == 1 and counters["callbacks_ok"] == 1, counters


# --- behind a load balancer, with the seed's header format -----------------------------------

LB = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.example.com"}


def test_behind_a_load_balancer_with_the_seeds_header(procs):
    """The seed's deployment: TLS ends at a load balancer, the SPA lives on another origin
    (FRONT_URL), and the API expects the token in `oidc_access_token` (mod_auth_openidc)."""
    idp = start_idp(procs, ["https://app.example.com/private/callback"])
    config = filter_config(idp.issuer, redirect_uri="/private/callback", trust_forwarded_headers=True,
                           post_login_url="https://front.example.com/",
                           upstream_token={"header": "oidc_access_token", "format": "{token}"})
    envoy = start_envoy(procs, config, start_echo(procs), idp.port, name="envoy-lb", edge=False)
    b = Browser(envoy)
    start = b.get("/private/login", headers=LB)
    assert query_of(start.headers["Location"])["redirect_uri"] == "https://app.example.com/private/callback"
    callback = login_at_idp(b.idp, start.headers["Location"])
    assert callback.startswith("https://app.example.com/private/callback?")
    # The load balancer forwards the browser's https request to Envoy.
    r = b.get(callback.replace("https://app.example.com", ""), headers=LB)
    assert r.status_code == 302 and r.headers["Location"] == "https://front.example.com/"
    seen = upstream_view(b.get("/private/data", navigate=False, headers=LB))
    token = seen["headers"]["oidc_access_token"]
    assert token and not token.startswith("Bearer")
    assert "authorization" not in seen["headers"]


def test_forwarded_headers_are_ignored_unless_trusted(stack):
    r = Browser(stack.envoy).get("/private/login", headers=LB)
    assert query_of(r.headers["Location"])["redirect_uri"] == stack.envoy.url("/private/callback")


def test_an_absolute_redirect_uri_is_used_as_configured(procs, stack):
    config = filter_config(stack.idp.issuer, redirect_uri="https://bff.example.com/auth/cb")
    envoy = start_envoy(procs, config, stack.echo_port, stack.idp.port, name="envoy-absolute")
    r = Browser(envoy).get("/private/login", headers=LB)
    assert query_of(r.headers["Location"])["redirect_uri"] == "https://bff.example.com/auth/cb"
    # The callback is the configured path, even outside the prefix: the filter answers it.
    r = Browser(envoy).get("/auth/cb?code=x&state=y", navigate=False)
    assert r.status_code == 400 and r.json()["error"] == "login_expired"
