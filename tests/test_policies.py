"""Mixed traffic behind one gateway (issue 13), in a real Envoy with Envoy's jwt_authn before the
filter and the real IdP: per-prefix policies with and without a session, bearer clients whose
tokens jwt_authn verified (and every way to pass one off that it did not), the filter's own
client-credentials token (one grant per Envoy process, renewed once), and two filter
instances serving two apps on one listener."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from harness import CLIENT_ID, CLIENT_SECRET
from harness.envoy import (ENVOY_BIN, SECRETS, WASM, Browser, discovery_only,
                           jwt_authn_filter, on_loopback, refused, run_envoy, start_envoy)
from harness.idp import basic_auth, jwt_parts, start_idp
from harness.jws import b64url_encode
from harness.procs import REPO, free_port
from harness.upstream import start_echo

RESOURCE = "https://api.example.test/"
MOBILE = {"client_id": "mobile-app", "client_secret": "mobile-secret",
          "grant_types": ["client_credentials"], "redirect_uris": [], "response_types": []}
# Its tokens live one second: an expired one is a second's wait away.
SHORT = dict(MOBILE, client_id="short-lived")
# The filter's own client token lives 4 s here, so it is due (half way) after 2 s.
CLIENT_TOKEN_TTL_S = 4

POLICIES = [
    {"prefix": "/private/public", "policy": "optional"},
    {"prefix": "/private/mobile", "policy": "session", "bearer": True},
    # A bearer prefix that jwt_authn has no rule for: nothing there is ever verified.
    {"prefix": "/private/unchecked", "policy": "session", "bearer": True},
    {"prefix": "/private/service", "policy": "client"},
    {"prefix": "/private/mixed", "policy": "session_or_client"},
    {"prefix": "/private/static", "policy": "none"},
]


def gateway_config(issuer: str, **overrides) -> dict:
    return discovery_only(
        issuer,
        policies=POLICIES,
        claim_headers={"sub": "x-user", "scope": "x-scope"},
        rules=[{"prefix": "/private/mobile/admin", "require": {"scope": {"contains": "api:write"}}}],
        client_credentials={"scopes": ["api:read"], "resources": [RESOURCE]},
        **overrides,
    )


@pytest.fixture(scope="module")
def ports():
    """Envoy's ports, known before the IdP starts (it registers the callbacks on them)."""
    return {"gateway": free_port(), "apps": free_port()}


def second_spa(ports) -> dict:
    """The second app's own client at the IdP."""
    return {"client_id": "second-spa", "client_secret": "second-secret",
            "redirect_uris": [f"http://127.0.0.1:{ports['apps']}/b/callback"],
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic"}


@pytest.fixture(scope="module")
def idp(procs, ports):
    return start_idp(
        procs, [f"http://127.0.0.1:{ports['gateway']}/private/callback",
                f"http://127.0.0.1:{ports['apps']}/a/callback"],
        env_overrides={
            "IDP_RESOURCES": RESOURCE,
            "IDP_EXTRA_CLIENTS": json.dumps([MOBILE, SHORT, second_spa(ports)]),
            "IDP_CLIENT_CREDENTIALS_TTL": json.dumps({CLIENT_ID: CLIENT_TOKEN_TTL_S,
                                                      "short-lived": 1}),
        })


@pytest.fixture(scope="module")
def echo(procs):
    return start_echo(procs)


def gateway(procs, idp, echo, name: str, port: int | None = None):
    """Envoy (two workers) with jwt_authn on the bearer prefix, then the filter."""
    return start_envoy(procs, gateway_config(idp.issuer), echo, idp.port, name=name, port=port,
                       before=[jwt_authn_filter(idp.issuer, [RESOURCE], ["/private/mobile"])])


@pytest.fixture(scope="module")
def envoy(procs, idp, echo, ports):
    return gateway(procs, idp, echo, "envoy-gateway", ports["gateway"])


def app_token(idp, client=MOBILE, resource=RESOURCE) -> str:
    """A bearer token as a mobile app or script gets it: client credentials at the IdP."""
    token_endpoint = idp.discovery()["token_endpoint"]
    r = requests.post(token_endpoint, timeout=10,
                      data={"grant_type": "client_credentials", "scope": "api:read",
                            "resource": resource},
                      headers={"Authorization": basic_auth(client["client_id"],
                                                           client["client_secret"])})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def api(envoy, path: str, token: str | None = None, **headers) -> requests.Response:
    """A request as a non-browser client sends it: no cookie, no CSRF header."""
    h = {"Accept": "application/json", **headers}
    if token:
        h["Authorization"] = f"Bearer {token}"
    return requests.get(envoy.url(path), headers=h, timeout=20)


def echoed(r: requests.Response) -> dict:
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()["headers"]


def signed_in(envoy) -> Browser:
    b = Browser(envoy)
    assert b.login("/private/login?return_to=/app").status_code == 302
    return b


# --- policies ---------------------------------------------------------------------------------

def test_optional_serves_the_signed_in_user_and_the_anonymous_one(envoy):
    anon = echoed(api(envoy, "/private/public/news", **{"X-User": "admin", "X-Scope": "all"}))
    assert "authorization" not in anon and "x-user" not in anon and "x-scope" not in anon
    # A page load is not sent to log in either.
    page = Browser(envoy).get("/private/public/page")
    assert page.status_code == 200 and "authorization" not in page.json()["headers"]

    b = signed_in(envoy)
    user = echoed(b.get("/private/public/news", navigate=False))
    assert user["authorization"].startswith("Bearer ")
    assert user["x-user"] == "alice-sub-0001"
    assert "__Host-bff-session" not in user.get("cookie", "")
    # With the session cookie, the CSRF header is needed as anywhere else.
    r = b.get("/private/public/news", navigate=False, headers={"X-CSRF": ""})
    assert r.status_code == 403 and r.json()["error"] == "csrf"


def test_a_dead_session_cookie_goes_on_anonymously_and_is_deleted(envoy):
    r = requests.get(envoy.url("/private/public/news"), timeout=10,
                     headers={"Cookie": "__Host-bff-session=tampered; theme=dark", "X-CSRF": "1"})
    headers = echoed(r)
    assert "authorization" not in headers
    assert headers["cookie"] == "theme=dark"
    assert "__Host-bff-session=;" in r.headers["Set-Cookie"]


def test_none_passes_through_and_session_still_guards_the_rest(envoy):
    r = api(envoy, "/private/static/app.js")
    assert r.status_code == 200 and "authorization" not in r.json()["headers"]
    r = api(envoy, "/private/orders", **{"X-CSRF": "1"})
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"


def test_a_bearer_token_on_a_session_only_prefix_is_refused(envoy, idp):
    r = api(envoy, "/private/orders", app_token(idp), **{"X-CSRF": "1"})
    assert r.status_code == 401
    assert r.json()["error"] == "bearer_not_accepted"


# --- bearer clients ---------------------------------------------------------------------------

def test_a_valid_bearer_token_goes_through_with_claim_headers(envoy, idp):
    token = app_token(idp)
    before = envoy.counters()["bearer_ok"]
    headers = echoed(api(envoy, "/private/mobile/orders", token, **{"X-User": "forged"}))
    assert headers["authorization"] == f"Bearer {token}", "the token goes upstream unchanged"
    assert headers["x-user"] == "mobile-app"
    assert headers["x-scope"] == "api:read"
    assert envoy.counters()["bearer_ok"] == before + 1
    # The rules apply to its claims.
    r = api(envoy, "/private/mobile/admin/users", token)
    assert r.status_code == 403 and r.json()["error"] == "forbidden"


def foreign_token() -> str:
    """A well-formed RS256 token from an issuer nobody configured."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    header = b64url_encode(json.dumps({"alg": "RS256", "kid": "k", "typ": "at+jwt"}).encode())
    now = int(time.time())
    payload = b64url_encode(json.dumps({"iss": "https://elsewhere.example", "sub": "mobile-app",
                                        "aud": RESOURCE, "iat": now, "exp": now + 300,
                                        "scope": "api:read"}).encode())
    signature = key.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{payload}.{b64url_encode(signature)}"


def with_payload(token: str, **changes) -> str:
    """The token with its payload changed and its signature kept."""
    header, _, signature = token.split(".")
    payload = dict(jwt_parts(token)[1], **changes)
    return f"{header}.{b64url_encode(json.dumps(payload).encode())}.{signature}"


def test_expired_foreign_and_forged_bearer_tokens_are_refused(envoy, idp):
    expired = app_token(idp, SHORT)
    time.sleep(3.2)  # its second of life and jwt_authn's second of clock skew
    good = app_token(idp)
    cases = {
        "expired": expired,
        "foreign issuer": foreign_token(),
        "forged payload": with_payload(good, scope="api:read api:write"),
        "not a JWT": "opaque-token",
    }
    for name, token in cases.items():
        r = api(envoy, "/private/mobile/admin/users", token)
        assert r.status_code == 401, (name, r.status_code, r.text)
        assert "x-user" not in r.text, name


def test_a_forged_payload_header_or_an_unverified_token_never_authenticates(envoy, idp):
    good = app_token(idp)
    payload = base64.urlsafe_b64encode(json.dumps(jwt_parts(good)[1]).encode()).decode()
    # No token, a payload header of the kind jwt_authn can forward: no session, so 401.
    r = api(envoy, "/private/mobile/orders",
            **{"X-Jwt-Payload": payload, "X-User": "mobile-app", "X-CSRF": "1"})
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
    # A real token where jwt_authn checks nothing: the filter has no verified payload for it.
    r = api(envoy, "/private/unchecked/orders", good)
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"
    assert r.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    # A cookie makes it a browser's request: its session decides, the bearer token is not used.
    r = requests.get(envoy.url("/private/mobile/orders"), timeout=10,
                     headers={"Authorization": f"Bearer {good}", "X-CSRF": "1",
                              "Cookie": "__Host-bff-session=made-up"})
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
    envoy.assert_vm_healthy()


# --- the filter's own token -------------------------------------------------------------------

def test_one_client_token_grant_for_twenty_parallel_calls_and_one_renewal(procs, idp, echo):
    envoy = gateway(procs, idp, echo, "envoy-client")
    grants = lambda: idp.stats()["client_credentials_requests"]  # noqa: E731
    start = grants()
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: api(envoy, "/private/service/report"), range(20)))
    tokens = {echoed(r)["authorization"] for r in answers}
    assert grants() - start == 1, "one grant for the whole Envoy (two workers)"
    assert len(tokens) == 1
    (first,) = tokens
    claims = jwt_parts(first.removeprefix("Bearer "))[1]
    assert (claims["sub"], claims["aud"], claims["scope"]) == (CLIENT_ID, RESOURCE, "api:read")
    # The client's own identity headers never pass.
    assert "x-user" not in echoed(api(envoy, "/private/service/report", **{"X-User": "eve"}))

    # Half way through its life the token is due: renewed once, used meanwhile.
    time.sleep(CLIENT_TOKEN_TTL_S / 2 + 0.3)
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: api(envoy, "/private/service/report"), range(10)))
    assert all(r.status_code == 200 for r in answers)
    deadline = time.monotonic() + 5
    while grants() - start < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    assert grants() - start == 2, "renewed once"
    renewed = echoed(api(envoy, "/private/service/report"))["authorization"]
    assert renewed != first
    counters = envoy.counters()
    assert counters["client_tokens_fetched"] == 2
    assert counters["client_token_used"] >= 31
    envoy.assert_vm_healthy()


def test_session_or_client_uses_the_users_token_else_the_filters(envoy):
    anon = echoed(api(envoy, "/private/mixed/feed"))
    assert jwt_parts(anon["authorization"].removeprefix("Bearer "))[1]["sub"] == CLIENT_ID
    assert "x-user" not in anon
    b = signed_in(envoy)
    user = echoed(b.get("/private/mixed/feed", navigate=False))
    assert user["authorization"] != anon["authorization"]
    assert user["x-user"] == "alice-sub-0001"
    # A client prefix uses the filter's token even for a signed-in user, and no identity.
    service = echoed(b.get("/private/service/report", navigate=False))
    assert service["authorization"] == anon["authorization"]
    assert "x-user" not in service and "__Host-bff-session" not in service.get("cookie", "")


# --- configuration ----------------------------------------------------------------------------

def test_a_policy_that_would_take_the_login_away_is_refused_by_name(procs):
    line = refused(procs, discovery_only(
        "http://127.0.0.1:1", policies=[{"prefix": "/private", "policy": "client"},
                                        {"prefix": "/private/x", "policy": "sometimes"}]))
    assert "policies[0]: must not cover login_path (/private/login)" in line
    assert 'policies[1].policy: "sometimes" is not one of' in line


# --- two apps, one listener -----------------------------------------------------------------

def app_config(issuer: str, app: str, **overrides) -> dict:
    return discovery_only(issuer, prefix=f"/{app}", redirect_uri=f"/{app}/callback",
                          cookie={"name": f"__Host-{app}-session"}, metrics_prefix=f"app_{app}",
                          claim_headers={"sub": f"x-{app}-user"}, **overrides)


def test_two_filter_instances_serve_two_apps_without_crossing(procs, idp, echo, ports):
    envoy = start_envoy(
        procs,
        [app_config(idp.issuer, "a"),
         app_config(idp.issuer, "b", client_id="second-spa",
                    client_secret={"env": "BFF_B_CLIENT_SECRET"})],
        echo, idp.port, name="envoy-apps", port=ports["apps"],
        extra_env={"BFF_B_CLIENT_SECRET": "second-secret"})
    b = Browser(envoy)
    assert b.login("/a/login").status_code == 302
    assert set(b.jar) == {"__Host-a-session"}
    # App B ignores A's session: its API wants its own login, and its logins use its client.
    r = b.get("/b/api/orders", navigate=False)
    assert r.status_code == 401 and r.json()["login"] == "/b/login"
    start = requests.get(envoy.url("/b/login"), allow_redirects=False, timeout=10)
    assert "client_id=second-spa" in start.headers["Location"]
    # The user is signed in at the IdP already: straight back.
    assert b.login("/b/login").status_code == 302
    assert set(b.jar) == {"__Host-a-session", "__Host-b-session"}
    a_seen = echoed(b.get("/a/api/orders", navigate=False))
    b_seen = echoed(b.get("/b/api/orders", navigate=False))
    # Each app's API gets its own app's token and identity header, and not its own cookie.
    assert a_seen["authorization"] != b_seen["authorization"]
    assert a_seen["x-a-user"] == b_seen["x-b-user"] == "alice-sub-0001"
    assert "x-b-user" not in a_seen and "x-a-user" not in b_seen
    assert "__Host-a-session" not in a_seen.get("cookie", "")
    assert "__Host-b-session" not in b_seen.get("cookie", "")
    # Logging out of A leaves B signed in.
    assert b.request("POST", "/a/logout", navigate=False).status_code == 200
    assert "__Host-a-session" not in b.jar
    assert b.get("/b/api/orders", navigate=False).status_code == 200
    counters_a, counters_b = envoy.counters("app_a"), envoy.counters("app_b")
    assert counters_a["callbacks_ok"] == 1 and counters_b["callbacks_ok"] == 1
    envoy.assert_vm_healthy()


# --- the shipped example ----------------------------------------------------------------------

MIXED = REPO / "envoy" / "envoy.mixed-traffic.yaml"


def mixed_example() -> tuple[dict, dict, dict]:
    """The shipped file: (bootstrap, jwt_authn's config, the bff filter's config)."""
    bootstrap = yaml.safe_load(MIXED.read_text())
    (listener,) = bootstrap["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    jwt_authn, wasm, _router = hcm["http_filters"]
    config = json.loads(wasm["typed_config"]["config"]["configuration"]["value"])
    return bootstrap, jwt_authn["typed_config"], config


def test_the_mixed_traffic_example_agrees_with_itself():
    bootstrap, jwt_authn, config = mixed_example()
    filters = [f["name"] for f in bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]
               ["filters"][0]["typed_config"]["http_filters"]]
    assert filters == ["envoy.filters.http.jwt_authn", "envoy.filters.http.wasm",
                       "envoy.filters.http.router"], "jwt_authn must run before the bff filter"
    (provider,) = jwt_authn["providers"].values()
    assert provider["issuer"] == config["issuer"]
    assert provider["forward"] is True
    assert provider["payload_in_metadata"] == config["jwt_authn"]["payload_in_metadata"]
    assert provider["audiences"] == config["resources"]
    assert "forward_payload_header" not in provider, "the filter never reads claims from headers"
    bearer_prefixes = sorted(p["prefix"] for p in config["policies"] if p.get("bearer"))
    rules = jwt_authn["rules"]
    assert sorted(r["match"]["prefix"] for r in rules) == bearer_prefixes
    for rule in rules:
        assert rule["requires"]["requires_any"]["requirements"] == [
            {"provider_name": "idp"}, {"allow_missing": {}}]


def test_the_mixed_traffic_example_validates():
    env = {k: v for k, v in os.environ.items() if not k.startswith("BFF_")}
    env.update(SECRETS)
    result = subprocess.run([str(ENVOY_BIN), "--mode", "validate", "-c", str(MIXED)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "configured for issuer https://login.example.com/realms/demo" in result.stderr


def test_the_mixed_traffic_example_serves_its_three_callers(procs, idp, echo):
    """The file as shipped but for names and addresses: its IdP is the test IdP, its clusters
    are on loopback without TLS (nothing leaves the machine)."""
    bootstrap, jwt_authn, config = mixed_example()
    on_loopback(bootstrap, free_port(), free_port(), {"api": echo, "idp": idp.port})
    (listener,) = bootstrap["static_resources"]["listeners"]
    (provider,) = jwt_authn["providers"].values()
    provider.update(issuer=idp.issuer, audiences=[RESOURCE])
    provider["remote_jwks"]["http_uri"]["uri"] = idp.discovery()["jwks_uri"]
    config.update(issuer=idp.issuer, client_id=CLIENT_ID, resources=[RESOURCE],
                  client_credentials={"scopes": ["api:read"]})
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][0]["typed_config"] = jwt_authn
    wasm = hcm["http_filters"][1]["typed_config"]["config"]
    wasm["configuration"]["value"] = json.dumps(config)
    wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
    envoy = run_envoy(procs, bootstrap, "envoy-mixed", env=SECRETS, concurrency=1)

    mobile = echoed(api(envoy, "/api/mobile/orders", app_token(idp)))
    assert mobile["x-user-sub"] == "mobile-app"
    partner = echoed(api(envoy, "/api/partner/prices"))
    assert jwt_parts(partner["authorization"].removeprefix("Bearer "))[1]["sub"] == CLIENT_ID
    assert "authorization" not in echoed(api(envoy, "/api/catalog/items"))
    r = api(envoy, "/api/orders", **{"X-CSRF": "1"})
    assert r.status_code == 401 and r.json()["login"] == "/api/login"
    envoy.assert_vm_healthy()
