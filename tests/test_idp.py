"""The OpenID Provider in tests/idp/ does what the filter relies on. No Envoy here: a scripted
user signs in with requests, and the test plays the confidential client itself."""

import base64
import json
import os
import secrets
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from harness import CLIENT_SECRET, jws
from harness.idp import (
    BIG_PASSWORD,
    BIG_USER,
    DEFAULT_PASSWORD,
    DEFAULT_USER,
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
from harness.procs import ProcessStartError

# The client's port: nothing listens there, the IdP only ever redirects to it and we never
# follow. Not a free port picked at random: the IdP started next could get that very port, and
# its redirect would then look like one to itself. Port 9 is below the range the OS hands out.
CLIENT_PORT = 9


@pytest.fixture(scope="module")
def client_port():
    return CLIENT_PORT


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


def sign_in(idp, redirect_uri, http=None, user=DEFAULT_USER, password=DEFAULT_PASSWORD, **extra):
    http = http or requests.Session()
    login = Login(idp, redirect_uri, **extra)
    params = login.callback(login_at_idp(http, login.url, user=user, password=password))
    return login, params


def token_request(idp, data, authorization=None):
    authorization = authorization or basic_auth(idp.client_id, idp.client_secret)
    return requests.post(idp.discovery()["token_endpoint"], data=data,
                         headers={"Authorization": authorization}, timeout=10)


def refresh(idp, refresh_token):
    return token_request(idp, {"grant_type": "refresh_token", "refresh_token": refresh_token})


def tokens_for(idp, redirect_uri, **sign_in_args):
    """A whole login and code exchange; returns (login, token response JSON)."""
    login, params = sign_in(idp, redirect_uri, **sign_in_args)
    response = exchange_code(idp, login, params["code"])
    assert response.status_code == 200, response.text
    return login, response.json()


def assert_signed_by_published_key(idp, id_token, alg):
    keys = idp.jwks()
    header = jws.decode(id_token).header
    assert header["alg"] == alg
    jwk = jws.key_for(id_token, keys)
    assert jwk is not None, f"kid {header.get('kid')!r} is not in the JWKS"
    assert jws.verify(id_token, jwk), "the ID token signature does not verify"


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
    # Exactly the algs the JWKS has keys for: no more (a client would pick one it cannot get).
    algs = doc["id_token_signing_alg_values_supported"]
    assert set(algs) == {"RS256", "PS256", "ES256", "EdDSA"}
    assert set(algs) == {k["alg"] for k in idp.jwks()["keys"]}


def test_jwks_publishes_public_keys_for_each_algorithm(idp):
    keys = requests.get(idp.discovery()["jwks_uri"], timeout=10).json()["keys"]
    assert {k["alg"] for k in keys} >= {"RS256", "PS256", "ES256", "EdDSA"}
    for key in keys:
        assert key["kid"] and key["use"] == "sig"
        assert not {"d", "p", "q", "dp", "dq", "qi"} & key.keys(), "private key material"
        jws.public_key(key)  # parses
    [ed] = [k for k in keys if k["alg"] == "EdDSA"]
    assert ed["kty"] == "OKP" and ed["crv"] == "Ed25519"


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
    assert not {"address", "profile"} & claims.keys()  # alice has neither
    assert_signed_by_published_key(idp, tokens["id_token"], "RS256")

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
    # Each user has their own password.
    for user, password in ((BIG_USER, DEFAULT_PASSWORD), (DEFAULT_USER, BIG_PASSWORD),
                           ("carol", BIG_PASSWORD)):
        page = login_at_idp_expect_error(requests.Session(), Login(idp, redirect_uri).url,
                                         user=user, password=password)
        assert "Invalid credentials" in page, user


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

    # The rotated-out token is spent, and presenting it again revokes the whole grant: the
    # token that replaced it dies too.
    reused = token_request(idp, {"grant_type": "refresh_token",
                                 "refresh_token": first["refresh_token"]})
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    killed = refresh(idp, second["refresh_token"])
    assert killed.status_code == 400 and killed.json()["error"] == "invalid_grant"

    after = idp.stats()
    assert after["refresh_requests"] == before["refresh_requests"] + 3


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


@pytest.mark.parametrize("alg", ["PS256", "ES256", "EdDSA"])
def test_id_token_algorithm_and_lifetimes_come_from_the_environment(procs, alg):
    redirect_uri = f"http://127.0.0.1:{CLIENT_PORT}/cb"
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
        assert_signed_by_published_key(other, tokens["id_token"], alg)
        assert other.discovery()["id_token_signing_alg_values_supported"] == \
            ["RS256", "PS256", "ES256", "EdDSA"]
        # A refresh signs with the same alg and keeps both lifetimes.
        again = refresh(other, tokens["refresh_token"]).json()
        assert_signed_by_published_key(other, again["id_token"], alg)
        assert 25 <= again["expires_in"] <= 30
    finally:
        other.process.stop()


# --- bob: the user whose session does not fit one cookie ---------------------------------------

def test_bob_gets_an_id_token_of_about_8_kb(idp, redirect_uri):
    login, tokens = tokens_for(idp, redirect_uri, user=BIG_USER, password=BIG_PASSWORD)
    parts = jws.decode(tokens["id_token"])
    assert 7500 <= len(parts.payload_bytes) <= 8500, len(parts.payload_bytes)
    assert len(tokens["id_token"]) > 10_000
    claims = parts.payload
    assert claims["sub"] == "bob-sub-0002" and claims["nonce"] == login.nonce
    assert claims["name"] == "Bob the Builder" and claims["preferred_username"] == "bob"
    assert claims["email"] == "bob@example.test" and claims["email_verified"] is True
    assert len(claims["groups"]) == 250
    assert claims["groups"][:2] == ["team-1-readers", "team-2-readers"]
    assert claims["groups"][-1] == "team-250-readers"
    assert claims["profile"].startswith("https://people.example.test/profiles/bob-sub-0002?")
    assert "\n" in claims["address"]["formatted"] and "ß" in claims["address"]["street_address"]
    assert_signed_by_published_key(idp, tokens["id_token"], "RS256")

    # Refreshed ID tokens carry the same claims (and the original nonce: oidc-provider keeps it).
    again = refresh(idp, tokens["refresh_token"])
    assert again.status_code == 200, again.text
    refreshed = jws.decode(again.json()["id_token"]).payload
    assert {k: v for k, v in refreshed.items() if k not in ("exp", "iat")} == \
        {k: v for k, v in claims.items() if k not in ("exp", "iat")}


def test_bob_logs_out_with_his_big_id_token_as_hint(idp, redirect_uri, post_logout_uri):
    http = requests.Session()
    _, tokens = tokens_for(idp, redirect_uri, http=http, user=BIG_USER, password=BIG_PASSWORD)
    end_session = idp.discovery()["end_session_endpoint"] + "?" + urlencode({
        "id_token_hint": tokens["id_token"], "post_logout_redirect_uri": post_logout_uri})
    assert len(end_session) > 10_000
    assert logout_at_idp(http, end_session) == post_logout_uri


# --- revocation and lifetimes ------------------------------------------------------------------

def test_revoke_all_kills_every_refresh_token_but_not_the_login_session(procs):
    redirect_uri = f"http://127.0.0.1:{CLIENT_PORT}/cb"
    other = start_idp(procs, [redirect_uri])
    try:
        http = requests.Session()
        _, alice = tokens_for(other, redirect_uri, http=http)
        _, bob = tokens_for(other, redirect_uri, user=BIG_USER, password=BIG_PASSWORD)
        unused_login, unused = sign_in(other, redirect_uri)  # a code not yet exchanged
        before = other.stats()

        assert other.revoke_all() == 3
        for tokens in (alice, bob):
            refused = refresh(other, tokens["refresh_token"])
            assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
        late = exchange_code(other, unused_login, unused["code"])
        assert late.status_code == 400 and late.json()["error"] == "invalid_grant"
        userinfo = requests.get(other.discovery()["userinfo_endpoint"], timeout=10,
                                headers={"Authorization": f"Bearer {alice['access_token']}"})
        assert userinfo.status_code == 401
        after = other.stats()
        assert after["refresh_requests"] == before["refresh_requests"] + 2
        assert after["token_requests"] == before["token_requests"] + 1

        # The IdP session survives: no login form, a fresh grant that refreshes.
        _, fresh = tokens_for(other, redirect_uri, http=http, password="unused")
        assert refresh(other, fresh["refresh_token"]).status_code == 200
        assert other.revoke_all() == 1  # only what was issued since
        assert other.revoke_all() == 0
    finally:
        other.process.stop()


def test_access_tokens_expire_after_idp_access_token_ttl(procs):
    redirect_uri = f"http://127.0.0.1:{CLIENT_PORT}/cb"
    other = start_idp(procs, [redirect_uri], env_overrides={"IDP_ACCESS_TOKEN_TTL": "2"})
    try:
        _, tokens = tokens_for(other, redirect_uri)
        assert 1 <= tokens["expires_in"] <= 2
        userinfo = other.discovery()["userinfo_endpoint"]

        def me(access_token):
            return requests.get(userinfo, headers={"Authorization": f"Bearer {access_token}"},
                                timeout=10).status_code

        assert me(tokens["access_token"]) == 200
        time.sleep(3.1)
        assert me(tokens["access_token"]) == 401
        # The refresh token outlives it, and the new access token has the same short life.
        again = refresh(other, tokens["refresh_token"]).json()
        assert 1 <= again["expires_in"] <= 2
        assert me(again["access_token"]) == 200
    finally:
        other.process.stop()


# --- signing keys: IDP_KEY_FILE and IDP_KEY_ID_PREFIX ------------------------------------------

def test_key_file_is_written_and_reused_across_a_restart_on_the_same_port(procs, tmp_path):
    key_file = tmp_path / "idp-keys.json"
    redirect_uri = f"http://127.0.0.1:{CLIENT_PORT}/cb"
    env = {"IDP_KEY_FILE": str(key_file)}
    first = start_idp(procs, [redirect_uri], env_overrides=env)
    try:
        _, tokens = tokens_for(first, redirect_uri)
        published = first.jwks()
    finally:
        assert first.process.stop() == 0

    stored = json.loads(key_file.read_text())
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    assert [k["alg"] for k in stored["keys"]] == ["RS256", "PS256", "ES256", "EdDSA"]
    assert all(k["d"] for k in stored["keys"])  # private keys
    assert [k["kid"] for k in stored["keys"]] == [k["kid"] for k in published["keys"]]

    second = start_idp(procs, [redirect_uri], env_overrides=env, port=first.port)
    try:
        assert second.issuer == first.issuer
        assert second.jwks() == published
        assert_signed_by_published_key(second, tokens["id_token"], "RS256")
        # Grants were in the first process's memory only.
        gone = refresh(second, tokens["refresh_token"])
        assert gone.status_code == 400 and gone.json()["error"] == "invalid_grant"
        _, again = tokens_for(second, redirect_uri)
        assert jws.decode(again["id_token"]).header["kid"] == jws.decode(tokens["id_token"]).header["kid"]
    finally:
        second.process.stop()
    assert json.loads(key_file.read_text()) == stored  # read, not rewritten


def test_without_a_key_file_a_restart_brings_new_keys(procs):
    redirect_uri = f"http://127.0.0.1:{CLIENT_PORT}/cb"
    first = start_idp(procs, [redirect_uri])
    kids = {k["kid"] for k in first.jwks()["keys"]}
    first.process.stop()
    second = start_idp(procs, [redirect_uri], port=first.port)
    try:
        assert not kids & {k["kid"] for k in second.jwks()["keys"]}
    finally:
        second.process.stop()


def test_key_id_prefix_names_the_generated_keys(procs):
    redirect_uri = f"http://127.0.0.1:{CLIENT_PORT}/cb"
    other = start_idp(procs, [redirect_uri], env_overrides={"IDP_KEY_ID_PREFIX": "gen2-",
                                                              "IDP_ID_TOKEN_ALG": "ES256"})
    try:
        assert [k["kid"] for k in other.jwks()["keys"]] == \
            ["gen2-rs256", "gen2-ps256", "gen2-es256", "gen2-eddsa"]
        _, tokens = tokens_for(other, redirect_uri)
        assert jws.decode(tokens["id_token"]).header["kid"] == "gen2-es256"
    finally:
        other.process.stop()


def test_key_file_with_two_keys_per_alg_publishes_both_and_signs_with_the_first(procs, tmp_path):
    """Rotation with overlap: the new key first, the old one still published."""
    redirect_uri = f"http://127.0.0.1:{CLIENT_PORT}/cb"
    old_file, new_file = tmp_path / "old.json", tmp_path / "new.json"
    for path, prefix in ((old_file, "old-"), (new_file, "new-")):
        start_idp(procs, [redirect_uri], env_overrides={
            "IDP_KEY_FILE": str(path), "IDP_KEY_ID_PREFIX": prefix}).process.stop()
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"keys": json.loads(new_file.read_text())["keys"]
                                + json.loads(old_file.read_text())["keys"]}))
    other = start_idp(procs, [redirect_uri], env_overrides={"IDP_KEY_FILE": str(both)})
    try:
        kids = [k["kid"] for k in other.jwks()["keys"]]
        assert kids[:4] == ["new-rs256", "new-ps256", "new-es256", "new-eddsa"]
        assert kids[4:] == ["old-rs256", "old-ps256", "old-es256", "old-eddsa"]
        _, tokens = tokens_for(other, redirect_uri)
        assert jws.decode(tokens["id_token"]).header["kid"] == "new-rs256"
        assert_signed_by_published_key(other, tokens["id_token"], "RS256")
    finally:
        other.process.stop()


@pytest.mark.parametrize("content, message", [
    ("not json", "not JSON"),
    ('{"keys": []}', "expected"),
    ('{"keys": [{"kty": "oct", "k": "AAAA", "kid": "x"}]}', "no private key that can sign RS256"),
])
def test_a_bad_key_file_stops_the_start_with_a_clear_message(procs, tmp_path, content, message):
    key_file = tmp_path / "keys.json"
    key_file.write_text(content)
    with pytest.raises(ProcessStartError, match=message):
        start_idp(procs, [f"http://127.0.0.1:{CLIENT_PORT}/cb"],
                  env_overrides={"IDP_KEY_FILE": str(key_file)})
