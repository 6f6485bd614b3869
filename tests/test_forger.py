"""The forging OpenID Provider (tests/upstream/forging_idp.py) forges exactly what it says. No
Envoy here: the test plays the confidential client with requests and checks every token by hand
(harness.jws, on `cryptography`)."""

import hashlib
import hmac
import importlib.util
import secrets
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from harness import CLIENT_ID, CLIENT_SECRET, jws
from harness.forger import MODES, POLICY_MODES, VALID_MODES, forged_login, start_forger
from harness.idp import basic_auth, pkce_pair
from harness.procs import REPO

# Nothing listens here: the forger only redirects to it, and we never follow.
REDIRECT_URI = "http://127.0.0.1:9/private/callback"


@pytest.fixture(scope="module")
def forger(procs):
    return start_forger(procs)


@pytest.fixture(scope="module")
def jwks(forger):
    return forger.jwks()


class Login:
    """One authorization request as the client makes it, and the callback it got back."""

    def __init__(self, forger, mode=None, redirect_uri=REDIRECT_URI, **overrides):
        self.state = secrets.token_urlsafe(12)
        self.nonce = secrets.token_urlsafe(12)
        self.verifier, challenge = pkce_pair()
        self.redirect_uri = redirect_uri
        params = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": redirect_uri,
                  "scope": "openid", "state": self.state, "nonce": self.nonce,
                  "code_challenge": challenge, "code_challenge_method": "S256"}
        if mode is not None:
            params["forge"] = mode
        params.update(overrides)
        self.response = requests.get(forger.url("/auth") + "?" + urlencode(params),
                                     allow_redirects=False, timeout=10)
        self.location = self.response.headers.get("Location", "")
        self.callback = {k: v[0] for k, v in parse_qs(urlsplit(self.location).query).items()}

    def exchange(self, forger, secret=CLIENT_SECRET, **overrides):
        data = {"grant_type": "authorization_code", "code": self.callback.get("code"),
                "redirect_uri": self.redirect_uri, "code_verifier": self.verifier}
        data.update(overrides)
        return requests.post(forger.url("/token"),
                             data={k: v for k, v in data.items() if v is not None},
                             headers={"Authorization": basic_auth(CLIENT_ID, secret)}, timeout=10)


def id_token_for(forger, mode):
    login = Login(forger, mode)
    assert login.response.status_code == 302, login.response.text
    response = login.exchange(forger)
    assert response.status_code == 200, response.text
    return login, response.json()["id_token"]


def key(jwks_doc, kid):
    return next(k for k in jwks_doc["keys"] if k["kid"] == kid)


# --- shape -------------------------------------------------------------------------------------

def test_discovery_document(forger):
    doc = forger.discovery()
    assert doc["issuer"] == forger.issuer == f"http://127.0.0.1:{forger.port}"
    assert doc["authorization_endpoint"] == forger.issuer + "/auth"
    assert doc["token_endpoint"] == forger.issuer + "/token"
    assert doc["jwks_uri"] == forger.issuer + "/jwks"
    assert doc["response_types_supported"] == ["code"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256", "ES256"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["authorization_response_iss_parameter_supported"] is True


def test_jwks_has_an_rsa_key_without_alg_and_an_es256_key(jwks):
    assert [k["kid"] for k in jwks["keys"]] == ["rsa-1", "ec-1"]
    rsa_key, ec_key = jwks["keys"]
    assert set(rsa_key) == {"kty", "kid", "n", "e"}  # no alg, no use
    assert rsa_key["kty"] == "RSA" and rsa_key["e"] == "AQAB"
    assert len(jws.b64url_decode(rsa_key["n"])) == 256  # 2048 bits
    assert ec_key == {**ec_key, "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig"}
    assert set(ec_key) == {"kty", "kid", "crv", "alg", "use", "x", "y"}
    assert len(jws.b64url_decode(ec_key["x"])) == len(jws.b64url_decode(ec_key["y"])) == 32
    for k in jwks["keys"]:
        jws.public_key(k)  # parses


def test_authorize_sends_the_browser_straight_back(forger):
    login = Login(forger)
    assert login.response.status_code == 302
    assert login.location.startswith(REDIRECT_URI + "?code=")
    assert login.callback["state"] == login.state
    assert login.callback["iss"] == forger.issuer
    # A redirect_uri with a query of its own keeps it.
    other = Login(forger, redirect_uri=REDIRECT_URI + "?tenant=a")
    assert other.location.startswith(REDIRECT_URI + "?tenant=a&code=")


def test_token_response(forger):
    login = Login(forger)
    response = login.exchange(forger)
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    tokens = response.json()
    assert set(tokens) == {"access_token", "token_type", "expires_in", "refresh_token", "id_token"}
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 300
    assert tokens["access_token"] and tokens["refresh_token"]


# --- the modes ---------------------------------------------------------------------------------

def test_the_harness_knows_every_mode_the_forger_knows():
    spec = importlib.util.spec_from_file_location(
        "forging_idp", REPO / "tests" / "upstream" / "forging_idp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert MODES == module.MODES
    assert set(VALID_MODES) | set(POLICY_MODES) <= set(MODES)


def test_unknown_mode_is_refused(forger):
    login = Login(forger, "nonsense")
    assert login.response.status_code == 400
    assert login.response.json()["error"] == "invalid_request"


# What each mode changes in the `good` token: (header, claims) overrides; `DROP` removes one.
DROP = object()
OTHER_NONCE = object()
CHANGES = {
    "good": ({}, {}),
    "good-es256": ({"alg": "ES256", "kid": "ec-1"}, {}),
    "alg-none": ({"alg": "none"}, {}),
    "hs256-public-key": ({"alg": "HS256"}, {}),
    "wrong-kid": ({"kid": "nope"}, {}),
    "no-kid": ({"kid": DROP}, {}),
    "bad-signature": ({}, {}),
    "ec-kid-rs256": ({"kid": "ec-1"}, {}),
    "wrong-iss": ({}, {"iss": "https://evil.example.test"}),
    "wrong-aud": ({}, {"aud": "other-client"}),
    "multi-aud-no-azp": ({}, {"aud": [CLIENT_ID, "other"]}),
    "wrong-azp": ({}, {"azp": "other"}),
    "expired": ({}, {"exp": -600, "iat": -900}),
    "future-iat": ({}, {"iat": 600, "exp": 900}),
    "wrong-nonce": ({}, {"nonce": OTHER_NONCE}),
    "no-nonce": ({}, {"nonce": DROP}),
    "ps256-not-announced": ({"alg": "PS256"}, {}),
}


def test_every_mode_is_described():
    assert set(CHANGES) == set(MODES)


@pytest.mark.parametrize("mode", MODES)
def test_mode_changes_exactly_one_thing(forger, mode):
    before = int(time.time())
    login, token = id_token_for(forger, mode)
    after = int(time.time())
    parts = jws.decode(token)

    header = {"alg": "RS256", "typ": "JWT", "kid": "rsa-1"}
    claims = {"iss": forger.issuer, "sub": "forged-sub-0001", "aud": CLIENT_ID,
              "exp": 300, "iat": 0, "nonce": login.nonce}  # exp/iat: offsets from now
    header_changes, claim_changes = CHANGES[mode]
    for target, changes in ((header, header_changes), (claims, claim_changes)):
        for name, value in changes.items():
            if value is DROP:
                target.pop(name)
            elif value is not OTHER_NONCE:
                target[name] = value
    assert parts.header == header

    for name in ("exp", "iat"):
        assert before + claims[name] <= parts.payload[name] <= after + claims[name], name
    if claim_changes.get("nonce") is OTHER_NONCE:
        assert parts.payload["nonce"] and parts.payload["nonce"] != login.nonce
        claims["nonce"] = parts.payload["nonce"]
    assert {k: v for k, v in parts.payload.items() if k not in ("exp", "iat")} == \
        {k: v for k, v in claims.items() if k not in ("exp", "iat")}


@pytest.mark.parametrize("mode", [m for m in MODES if m not in (
    "good-es256", "alg-none", "hs256-public-key", "bad-signature", "ps256-not-announced")])
def test_rs256_signature_is_valid_under_rsa_1_whatever_the_header_says(forger, jwks, mode):
    _, token = id_token_for(forger, mode)
    assert jws.verify(token, key(jwks, "rsa-1"), "RS256")


def test_good_rs256_verifies_against_the_jwks(forger, jwks):
    _, token = id_token_for(forger, "good")
    assert jws.verify(token, jws.key_for(token, jwks))
    assert not jws.verify(token, key(jwks, "ec-1"), "ES256")


def test_good_es256_verifies_against_the_jwks(forger, jwks):
    _, token = id_token_for(forger, "good-es256")
    assert len(jws.decode(token).signature) == 64  # raw r||s, not DER
    assert jws.verify(token, jws.key_for(token, jwks))
    assert not jws.verify(token, key(jwks, "rsa-1"), "RS256")


def test_alg_none_has_an_empty_signature(forger):
    _, token = id_token_for(forger, "alg-none")
    assert token.endswith(".") and token.count(".") == 2
    assert jws.decode(token).signature == b""


def test_hs256_is_keyed_with_the_rsa_public_key_pem(forger, jwks):
    _, token = id_token_for(forger, "hs256-public-key")
    pem = jws.public_key(key(jwks, "rsa-1")).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----\n") and pem.endswith(b"-----\n")
    parts = jws.decode(token)
    assert parts.signature == hmac.new(pem, parts.signing_input, hashlib.sha256).digest()


def test_bad_signature_is_good_with_one_byte_flipped(forger, jwks):
    _, token = id_token_for(forger, "bad-signature")
    rsa_key = key(jwks, "rsa-1")
    assert not jws.verify(token, rsa_key)
    parts = jws.decode(token)
    fixed = bytearray(parts.signature)
    fixed[len(fixed) // 2] ^= 0x01
    repaired = parts.signing_input.decode() + "." + jws.b64url_encode(bytes(fixed))
    assert jws.verify(repaired, rsa_key)


def test_ec_kid_on_an_rs256_token_names_a_key_that_cannot_verify_it(forger, jwks):
    _, token = id_token_for(forger, "ec-kid-rs256")
    named = jws.key_for(token, jwks)
    assert named["kid"] == "ec-1" and not jws.verify(token, named)


def test_ps256_token_is_valid_but_not_announced(forger, jwks):
    _, token = id_token_for(forger, "ps256-not-announced")
    assert jws.verify(token, key(jwks, "rsa-1"), "PS256")
    assert "PS256" not in forger.discovery()["id_token_signing_alg_values_supported"]


# --- the token endpoint's own checks ------------------------------------------------------------

@pytest.mark.parametrize("verifier", ["wrong-" + "v" * 43, None])
def test_pkce_is_enforced(forger, verifier):
    login = Login(forger)
    response = login.exchange(forger, code_verifier=verifier)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_plain_pkce_is_refused_at_authorize(forger):
    login = Login(forger, code_challenge_method="plain")
    assert login.response.status_code == 400


def test_client_auth_code_reuse_and_redirect_uri(forger):
    login = Login(forger)
    wrong_secret = login.exchange(forger, secret="not-it")
    assert wrong_secret.status_code == 401 and wrong_secret.json()["error"] == "invalid_client"
    assert login.exchange(forger).status_code == 200  # refused auth did not spend the code
    reused = login.exchange(forger)
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"

    other = Login(forger)
    moved = other.exchange(forger, redirect_uri=REDIRECT_URI + "/x")
    assert moved.status_code == 400 and moved.json()["error"] == "invalid_grant"

    refresh = requests.post(forger.url("/token"), data={"grant_type": "refresh_token",
                                                        "refresh_token": "x"},
                            headers={"Authorization": basic_auth(CLIENT_ID, CLIENT_SECRET)},
                            timeout=10)
    assert refresh.status_code == 400 and refresh.json()["error"] == "unsupported_grant_type"


def test_counts_every_token_request(forger):
    before = forger.counts()
    login = Login(forger)
    login.exchange(forger, secret="not-it")
    login.exchange(forger)
    forger.jwks()
    forger.discovery()
    after = forger.counts()
    assert after["token_calls"] == before["token_calls"] + 2
    assert after["jwks_calls"] == before["jwks_calls"] + 1
    assert after["discovery_calls"] == before["discovery_calls"] + 1


def test_sigterm_exits_cleanly(procs):
    other = start_forger(procs)
    assert other.token_calls() == 0
    assert other.process.stop() == 0
    assert "Traceback" not in other.process.output()


class StubBrowser:
    """Stands in for harness.envoy.Browser: the app's login redirect, then the callback."""

    def __init__(self, authorize_url):
        self.authorize_url = authorize_url
        self.requested = []

    def get(self, path, **_kw):
        self.requested.append(path)
        response = requests.Response()
        if path == "/private/login":
            response.status_code = 302
            response.headers["Location"] = self.authorize_url
        else:
            response.status_code = 200
        return response


def test_forged_login_appends_the_mode_and_requests_the_callback(forger):
    login = Login(forger)  # only for its parameters: a valid authorize URL
    url = urlsplit(login.response.request.url)
    browser = StubBrowser(f"{forger.issuer}/auth?{url.query}")
    assert forged_login(browser, forger, "wrong-nonce").status_code == 200
    start, callback = browser.requested
    assert start == "/private/login"
    assert callback.startswith(REDIRECT_URI + "?code=")
    params = parse_qs(urlsplit(callback).query)
    assert params["state"] == [login.state] and params["iss"] == [forger.issuer]
    response = requests.post(forger.url("/token"), data={
        "grant_type": "authorization_code", "code": params["code"][0],
        "redirect_uri": REDIRECT_URI, "code_verifier": login.verifier,
    }, headers={"Authorization": basic_auth(CLIENT_ID, CLIENT_SECRET)}, timeout=10)
    assert jws.decode(response.json()["id_token"]).payload["nonce"] != login.nonce

    elsewhere = StubBrowser("http://127.0.0.1:9/auth?x=1")
    with pytest.raises(AssertionError):
        forged_login(elsewhere, forger, "good")
