"""The OpenID Provider in tests/idp/ does what the filter relies on. No Envoy here: a scripted
user signs in with requests, and the test plays the confidential client itself."""

import base64
import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from harness.idp import (
    abort_login_at_idp,
    authorization_url,
    basic_auth,
    jwt_parts,
    login_at_idp,
    login_at_idp_expect_error,
    logout_at_idp,
    pkce_pair,
    start_idp,
)
from harness.procs import ProcessGroup, free_port

# A secret with the characters RFC 6749 §2.3.1 form-encoding changes (':' '/' '%' '+' and a
# space, which becomes '+'), and whose encoded "bff:<secret>" needs base64 padding ("==").
CLIENT_SECRET = "s3cr:t/with %chars+"


@pytest.fixture(scope="module")
def procs(request):
    group = ProcessGroup()
    request.addfinalizer(group.stop_all)
    return group


@pytest.fixture(scope="module")
def client_port():
    # Nothing listens here: the IdP only ever redirects to it, and we never follow.
    return free_port()


@pytest.fixture(scope="module")
def redirect_uri(client_port):
    return f"http://127.0.0.1:{client_port}/auth/callback"


@pytest.fixture(scope="module")
def post_logout_uri(client_port):
    return f"http://127.0.0.1:{client_port}/"


@pytest.fixture(scope="module")
def idp(procs, redirect_uri, post_logout_uri):
    return start_idp(procs, [redirect_uri], [post_logout_uri], client_secret=CLIENT_SECRET)


class Login:
    """One authorization request from the client's side: what it sent and what came back."""

    def __init__(self, idp, redirect_uri, **extra):
        self.state = secrets.token_urlsafe(16)
        self.nonce = secrets.token_urlsafe(16)
        self.verifier, challenge = pkce_pair()
        self.redirect_uri = redirect_uri
        self.url = authorization_url(idp, redirect_uri, state=self.state, nonce=self.nonce,
                                     code_challenge=challenge, **extra)

    def callback(self, back_url):
        assert back_url.startswith(self.redirect_uri + "?"), back_url
        return {k: v[0] for k, v in parse_qs(urlsplit(back_url).query).items()}


def sign_in(idp, redirect_uri, http=None, **extra):
    http = http or requests.Session()
    login = Login(idp, redirect_uri, **extra)
    params = login.callback(login_at_idp(http, login.url))
    return login, params


def token_request(idp, data, authorization=None):
    authorization = authorization or basic_auth(idp.client_id, idp.client_secret)
    return requests.post(idp.discovery()["token_endpoint"], data=data,
                         headers={"Authorization": authorization}, timeout=10)


def exchange_code(idp, login, code, **overrides):
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": login.redirect_uri,
        "code_verifier": login.verifier,
    }
    data.update(overrides)
    return token_request(idp, {k: v for k, v in data.items() if v is not None})


def test_discovery_announces_what_the_filter_uses(idp):
    doc = idp.discovery()
    assert doc["issuer"] == idp.issuer
    for endpoint in ("authorization_endpoint", "token_endpoint", "jwks_uri",
                     "end_session_endpoint", "revocation_endpoint"):
        assert doc[endpoint].startswith(idp.issuer + "/"), endpoint
    assert "S256" in doc["code_challenge_methods_supported"]
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert "client_secret_basic" in doc["token_endpoint_auth_methods_supported"]
    assert {"openid", "profile", "email", "offline_access"} <= set(doc["scopes_supported"])
    assert {"RS256", "PS256", "ES256"} <= set(doc["id_token_signing_alg_values_supported"])


def test_jwks_publishes_public_keys_for_each_algorithm(idp):
    keys = requests.get(idp.discovery()["jwks_uri"], timeout=10).json()["keys"]
    assert {k["alg"] for k in keys} >= {"RS256", "PS256", "ES256"}
    for key in keys:
        assert key["kid"] and key["use"] == "sig"
        assert not {"d", "p", "q", "dp", "dq", "qi"} & key.keys(), "private key material"


def test_code_flow_with_pkce_and_form_encoded_basic_auth(idp, redirect_uri):
    before = idp.stats()
    login, params = sign_in(idp, redirect_uri)
    assert params["state"] == login.state
    assert params["iss"] == idp.issuer  # RFC 9207
    assert params["code"]

    response = exchange_code(idp, login, params["code"])
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    tokens = response.json()
    assert tokens["token_type"] == "Bearer"
    assert tokens["access_token"] and tokens["refresh_token"]
    assert 3590 <= tokens["expires_in"] <= 3600
    assert "offline_access" in tokens["scope"].split()

    header, claims = jwt_parts(tokens["id_token"])
    keys = requests.get(idp.discovery()["jwks_uri"], timeout=10).json()["keys"]
    assert header["alg"] == "RS256" and header["kid"] in {k["kid"] for k in keys}
    assert claims["iss"] == idp.issuer
    assert claims["aud"] == idp.client_id
    assert claims["nonce"] == login.nonce
    assert claims["sub"] == "alice-sub-0001"
    assert claims["email"] == "alice@example.test" and claims["email_verified"] is True
    assert claims["name"] and claims["groups"] == ["staff", "beta"]
    assert claims["exp"] - claims["iat"] == 3600

    after = idp.stats()
    assert after["token_requests"] == before["token_requests"] + 1


def test_code_without_pkce_verifier_is_refused(idp, redirect_uri):
    login, params = sign_in(idp, redirect_uri)
    response = exchange_code(idp, login, params["code"], code_verifier=None)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_authorize_without_pkce_is_refused(idp, redirect_uri):
    http = requests.Session()
    login = Login(idp, redirect_uri)
    url = login.url.replace("code_challenge_method=S256", "code_challenge_method=plain")
    response = http.get(url, allow_redirects=False, timeout=10)
    # The redirect_uri is valid, so the error goes back to the client (RFC 6749 §4.1.2.1).
    assert response.is_redirect
    params = parse_qs(urlsplit(response.headers["Location"]).query)
    assert params["error"] == ["invalid_request"]


def test_secret_must_be_form_encoded_and_base64_padded(idp, redirect_uri):
    login, params = sign_in(idp, redirect_uri)
    data = {"grant_type": "authorization_code", "code": params["code"],
            "redirect_uri": redirect_uri, "code_verifier": login.verifier}
    raw = f"{idp.client_id}:{idp.client_secret}".encode()
    not_encoded = "Basic " + base64.b64encode(raw).decode()
    response = token_request(idp, data, authorization=not_encoded)
    assert response.status_code in (400, 401), response.text

    padded = basic_auth(idp.client_id, idp.client_secret)
    assert padded.endswith("="), "this secret's encoding needs padding, or the check is moot"
    response = token_request(idp, data, authorization=padded.rstrip("="))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"

    # The code is still good: none of the refusals above consumed it.
    assert token_request(idp, data).status_code == 200


def test_wrong_password_shows_invalid_credentials(idp, redirect_uri):
    login = Login(idp, redirect_uri)
    page = login_at_idp_expect_error(requests.Session(), login.url, password="queen-of-hearts")
    assert "Invalid credentials" in page
    assert 'name="password"' in page and 'id="submit"' in page


def test_stats_count_failed_token_requests_too(idp):
    before = idp.stats()
    response = token_request(idp, {"grant_type": "authorization_code", "code": "nope",
                                   "redirect_uri": "http://127.0.0.1:1/x",
                                   "code_verifier": "v" * 43})
    assert response.status_code == 400
    response = token_request(idp, {"grant_type": "refresh_token", "refresh_token": "nope"})
    assert response.status_code == 400
    after = idp.stats()
    assert after["token_requests"] == before["token_requests"] + 1
    assert after["refresh_requests"] == before["refresh_requests"] + 1
    assert after["token_endpoint_calls"] == before["token_endpoint_calls"] + 2


def test_refresh_grant_rotates_the_refresh_token(idp, redirect_uri):
    login, params = sign_in(idp, redirect_uri)
    first = exchange_code(idp, login, params["code"]).json()
    before = idp.stats()

    response = token_request(idp, {"grant_type": "refresh_token",
                                   "refresh_token": first["refresh_token"]})
    assert response.status_code == 200, response.text
    second = response.json()
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert second["expires_in"] > 0
    _, claims = jwt_parts(second["id_token"])
    assert claims["sub"] == "alice-sub-0001" and claims["aud"] == idp.client_id

    # The rotated-out token is spent (and presenting it again revokes the whole grant).
    reused = token_request(idp, {"grant_type": "refresh_token",
                                 "refresh_token": first["refresh_token"]})
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"

    after = idp.stats()
    assert after["refresh_requests"] == before["refresh_requests"] + 2


def test_revoked_refresh_token_no_longer_works(idp, redirect_uri):
    login, params = sign_in(idp, redirect_uri)
    tokens = exchange_code(idp, login, params["code"]).json()
    before = idp.stats()
    response = requests.post(idp.discovery()["revocation_endpoint"],
                             data={"token": tokens["refresh_token"],
                                   "token_type_hint": "refresh_token"},
                             headers={"Authorization": basic_auth(idp.client_id,
                                                                  idp.client_secret)},
                             timeout=10)
    assert response.status_code == 200, response.text
    assert idp.stats()["revocations"] == before["revocations"] + 1
    refused = token_request(idp, {"grant_type": "refresh_token",
                                  "refresh_token": tokens["refresh_token"]})
    assert refused.json()["error"] == "invalid_grant"


def test_cancel_returns_access_denied(idp, redirect_uri):
    login = Login(idp, redirect_uri)
    params = login.callback(abort_login_at_idp(requests.Session(), login.url))
    assert params["error"] == "access_denied"
    assert params["state"] == login.state
    assert params["iss"] == idp.issuer


def test_existing_session_skips_the_login_form(idp, redirect_uri):
    http = requests.Session()
    sign_in(idp, redirect_uri, http=http)
    # login_at_idp with a bad password would raise if the form were shown again.
    login = Login(idp, redirect_uri)
    params = login.callback(login_at_idp(http, login.url, password="unused"))
    assert params["code"] and params["state"] == login.state


def test_rp_initiated_logout_ends_the_idp_session(idp, redirect_uri, post_logout_uri):
    http = requests.Session()
    login, params = sign_in(idp, redirect_uri, http=http)
    tokens = exchange_code(idp, login, params["code"]).json()

    state = secrets.token_urlsafe(8)
    end_session = idp.discovery()["end_session_endpoint"] + "?" + urlencode({
        "id_token_hint": tokens["id_token"],
        "post_logout_redirect_uri": post_logout_uri,
        "state": state,
    })
    back = logout_at_idp(http, end_session)
    assert back == f"{post_logout_uri}?state={state}"

    # The IdP session is gone: the login form is shown again.
    page = login_at_idp_expect_error(http, Login(idp, redirect_uri).url)
    assert "Invalid credentials" in page
    # An offline_access grant outlives the IdP session (oidc-provider marks it persistsLogout):
    # a client that wants its refresh token dead at logout must revoke it itself.
    still = token_request(idp, {"grant_type": "refresh_token",
                                "refresh_token": tokens["refresh_token"]})
    assert still.status_code == 200, still.text


@pytest.mark.parametrize("alg", ["PS256", "ES256"])
def test_id_token_algorithm_and_lifetimes_come_from_the_environment(procs, alg):
    redirect_uri = f"http://127.0.0.1:{free_port()}/cb"
    other = start_idp(procs, [redirect_uri], env_overrides={
        "IDP_ID_TOKEN_ALG": alg,
        "IDP_ACCESS_TOKEN_TTL": "30",
        "IDP_ID_TOKEN_TTL": "45",
    })
    try:
        login, params = sign_in(other, redirect_uri)
        tokens = exchange_code(other, login, params["code"]).json()
        header, claims = jwt_parts(tokens["id_token"])
        assert header["alg"] == alg
        assert 25 <= tokens["expires_in"] <= 30
        assert claims["exp"] - claims["iat"] == 45
    finally:
        other.process.stop()
