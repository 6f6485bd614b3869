"""FAPI 2.0's parts (issue 15) against the bundled IdP:

- `client_auth: "private_key_jwt"` (RFC 7523 §2.2, OIDC Core §9): the IdP knows the client only
  by the JWK Set the filter serves at its `jwks_path` (read through Envoy, as an IdP reads a
  client's `jwks_uri`). Logins, refreshes and revocations work with ES256, PS256 and EdDSA keys;
  a key the IdP does not know gets the documented error and the VM lives on.
- Pushed authorization requests (RFC 9126): an IdP that requires them gets them, the browser
  only `client_id` and `request_uri`; pushing to an IdP without the endpoint is refused.
- DPoP (RFC 9449): the session's tokens are bound to the filter's DPoP key; every upstream
  request carries a fresh proof that a checking API (tests/upstream/dpop_api.py) accepts, and a
  replayed proof is refused; refresh and revocation carry proofs; the IdP's nonce challenge is
  answered; a token the IdP did not bind is refused."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from harness import SESSION
from harness.envoy import Browser, discovery_only, query_of, start_envoy
from harness.idp import start_idp
from harness.procs import free_port
from harness.upstream import start_dpop_api, start_echo

KEYS = Path(__file__).parent / "fixtures" / "keys"


def start_pair(procs, key_file: str, ttl: int = 3600):
    """The IdP with a private_key_jwt client whose jwks_uri is the Envoy's jwks_path, and the
    Envoy signing with `key_file` (taken from its environment, BFF_CLIENT_KEY)."""
    port = free_port()
    idp = start_idp(procs, [f"http://127.0.0.1:{port}/private/callback"],
                    post_logout_redirect_uris=[f"http://127.0.0.1:{port}/"],
                    env_overrides={"IDP_CLIENT_AUTH": "private_key_jwt",
                                   "IDP_CLIENT_JWKS_URI": f"http://127.0.0.1:{port}/private/jwks",
                                   "IDP_ACCESS_TOKEN_TTL": str(ttl)})
    config = discovery_only(idp.issuer, client_auth="private_key_jwt", client_key_id="bff-key")
    envoy = start_envoy(procs, config, start_echo(procs), idp.port, port=port,
                        extra_env={"BFF_CLIENT_KEY": (KEYS / key_file).read_text()})
    return idp, envoy


@pytest.mark.parametrize("key_file,alg", [("ec-p256.pem", "ES256"), ("rsa-2048.pem", "PS256"),
                                          ("ed25519.pem", "EdDSA")])
def test_a_login_a_refresh_and_a_logout_authenticate_with_the_key(procs, key_file, alg):
    idp, envoy = start_pair(procs, key_file, ttl=65)
    jwks = Browser(envoy).get("/private/jwks", navigate=False)
    assert jwks.status_code == 200 and jwks.headers["content-type"] == "application/jwk-set+json"
    (key,) = jwks.json()["keys"]
    assert (key["kid"], key["alg"], key["use"]) == ("bff-key", alg, "sig") and "d" not in key
    b = Browser(envoy)
    r = b.login()
    assert r.status_code == 302 and SESSION in b.jar, (r.status_code, r.text)
    before = idp.stats()
    assert before["token_requests"] == 1
    # Due 5 s after the login (65 s tokens, 60 s leeway): the refresh authenticates too.
    time.sleep(6.2)
    r = b.get("/private/api/me", navigate=False)
    assert r.status_code == 200, r.text
    assert idp.stats()["refresh_requests"] == before["refresh_requests"] + 1
    assert envoy.counters()["refreshes_ok"] == 1
    # The logout revokes the refresh token, authenticated the same way.
    logout_url = b.get("/private/session", navigate=False).json()["logout_url"]
    assert b.get(logout_url).status_code == 302
    assert idp.stats()["revocations"] == before["revocations"] + 1
    envoy.assert_vm_healthy()


def test_a_key_the_idp_does_not_know_gets_the_documented_error(procs):
    """The IdP reads the served JWK Set of another key than the one signing (a key rotated on
    one side only): the token endpoint refuses with invalid_client, the callback answers 502
    token_exchange_failed, and the VM serves on."""
    port = free_port()
    idp = start_idp(procs, [f"http://127.0.0.1:{port}/private/callback"],
                    env_overrides={"IDP_CLIENT_AUTH": "private_key_jwt",
                                   # Where nothing is served: the IdP has no key for the client.
                                   "IDP_CLIENT_JWKS_URI": f"http://127.0.0.1:{port}/private/no-keys"})
    config = discovery_only(idp.issuer, client_auth="private_key_jwt")
    envoy = start_envoy(procs, config, start_echo(procs), idp.port, port=port,
                        extra_env={"BFF_CLIENT_KEY": (KEYS / "ec-p256.pem").read_text()})
    b = Browser(envoy)
    r = b.login()
    assert r.status_code == 502, (r.status_code, r.text)
    assert "token_exchange_failed" in r.text and "invalid_client" in r.text, r.text
    assert "BEGIN" not in envoy.log() and "client_assertion=" not in envoy.log()
    assert b.get("/private/jwks", navigate=False).status_code == 200
    envoy.assert_vm_healthy()


def test_an_idp_requiring_pushed_requests_gets_them_and_the_browser_only_a_request_uri(procs):
    port = free_port()
    idp = start_idp(procs, [f"http://127.0.0.1:{port}/private/callback"],
                    env_overrides={"IDP_PAR": "required", "IDP_CLIENT_AUTH": "private_key_jwt",
                                   "IDP_CLIENT_JWKS_URI": f"http://127.0.0.1:{port}/private/jwks"})
    assert idp.discovery()["require_pushed_authorization_requests"] is True
    config = discovery_only(idp.issuer, client_auth="private_key_jwt")
    envoy = start_envoy(procs, config, start_echo(procs), idp.port, port=port,
                        extra_env={"BFF_CLIENT_KEY": (KEYS / "ed25519.pem").read_text()})
    b = Browser(envoy)
    start = b.get("/private/login?return_to=/app")
    assert start.status_code == 302, start.text
    location = start.headers["location"]
    assert location.startswith(idp.discovery()["authorization_endpoint"] + "?")
    assert sorted(query_of(location)) == ["client_id", "request_uri"], location
    assert query_of(location)["request_uri"].startswith("urn:ietf:params:oauth:request_uri:")
    r = b.login()
    assert r.status_code == 302 and SESSION in b.jar, (r.status_code, r.text)
    assert b.get("/private/api/me", navigate=False).status_code == 200
    envoy.assert_vm_healthy()


def test_pushing_to_an_idp_without_a_par_endpoint_gets_the_documented_error(procs):
    port = free_port()
    idp = start_idp(procs, [f"http://127.0.0.1:{port}/private/callback"],
                    env_overrides={"IDP_PAR": "off"})
    assert "pushed_authorization_request_endpoint" not in idp.discovery()
    config = discovery_only(idp.issuer, pushed_authorization_requests=True)
    envoy = start_envoy(procs, config, start_echo(procs), idp.port, port=port)
    r = Browser(envoy).get("/private/login")
    assert r.status_code == 502 and "pushed_authorization_request_endpoint" in r.text, r.text
    envoy.assert_vm_healthy()


# --- DPoP (RFC 9449) ---------------------------------------------------------------------------

def ec_thumbprint(pem: str) -> str:
    """RFC 7638 thumbprint of an EC P-256 key's public half (what a DPoP-bound token names)."""
    import hashlib
    import json

    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from harness.jws import b64url_encode
    numbers = load_pem_private_key(pem.encode(), None).public_key().public_numbers()
    members = {"crv": "P-256", "kty": "EC", "x": b64url_encode(numbers.x.to_bytes(32, "big")),
               "y": b64url_encode(numbers.y.to_bytes(32, "big"))}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64url_encode(hashlib.sha256(canonical).digest())


def start_dpop(procs, mode: str, ttl: int = 3600):
    """The IdP in DPoP mode `mode` (IDP_DPOP), the DPoP-checking API, and Envoy with `dpop` on
    and the EC key as its DPoP key."""
    port = free_port()
    idp = start_idp(procs, [f"http://127.0.0.1:{port}/private/callback"],
                    post_logout_redirect_uris=[f"http://127.0.0.1:{port}/"],
                    env_overrides={"IDP_DPOP": mode, "IDP_ACCESS_TOKEN_TTL": str(ttl)})
    api = start_dpop_api(procs)
    config = discovery_only(idp.issuer, dpop=True)
    envoy = start_envoy(procs, config, api, idp.port, port=port,
                        extra_env={"BFF_DPOP_KEY": (KEYS / "ec-p256.pem").read_text()})
    return idp, api, envoy


def test_a_dpop_bound_session_sends_a_fresh_proof_with_every_request_and_refreshes_bound(procs):
    idp, api, envoy = start_dpop(procs, "required", ttl=65)
    b = Browser(envoy)
    r = b.login()
    assert r.status_code == 302 and SESSION in b.jar, (r.status_code, r.text)
    jkt = ec_thumbprint((KEYS / "ec-p256.pem").read_text())
    for _ in range(3):
        r = b.get("/private/api/me?x=1", navigate=False)
        assert r.status_code == 200, r.text
        assert r.json()["jkt"] == jkt
    stats = requests.get(f"http://127.0.0.1:{api}/stats", timeout=10).json()
    assert (stats["accepted"], stats["refused"]) == (3, 0)
    # A proof taken off the wire does not work a second time, even with its token.
    last = stats["last"]
    replay = requests.get(f"http://127.0.0.1:{api}{last['path']}", timeout=10, headers={
        "Host": f"127.0.0.1:{envoy.port}", "Authorization": last["authorization"],
        "DPoP": last["dpop"]})
    assert replay.status_code == 401 and "replayed" in replay.json()["why"], replay.text
    # Due 5 s after login: the refresh sends a proof too, and the new token is bound as well.
    before = idp.stats()
    time.sleep(6.2)
    r = b.get("/private/api/me", navigate=False)
    assert r.status_code == 200 and r.json()["jkt"] == jkt, r.text
    assert idp.stats()["refresh_requests"] == before["refresh_requests"] + 1
    logout_url = b.get("/private/session", navigate=False).json()["logout_url"]
    assert b.get(logout_url).status_code == 302
    assert idp.stats()["revocations"] == before["revocations"] + 1
    envoy.assert_vm_healthy()


def test_the_idps_dpop_nonce_challenge_is_answered(procs):
    idp, _, envoy = start_dpop(procs, "nonce")
    b = Browser(envoy)
    r = b.login()
    assert r.status_code == 302 and SESSION in b.jar, (r.status_code, r.text)
    # The first token request met the challenge and was sent once more, with the nonce.
    assert idp.stats()["token_endpoint_calls"] == 2
    assert b.get("/private/api/me", navigate=False).status_code == 200
    envoy.assert_vm_healthy()


def test_a_token_response_without_dpop_binding_gets_the_documented_error(procs):
    _, _, envoy = start_dpop(procs, "off")
    r = Browser(envoy).login()
    assert r.status_code == 502, (r.status_code, r.text)
    assert "token_exchange_failed" in r.text and "did not bind the token" in r.text, r.text
    envoy.assert_vm_healthy()


# --- profile "fapi2": all of it in one switch ---------------------------------------------------

def start_fapi2(procs, par: str):
    port = free_port()
    idp = start_idp(procs, [f"http://127.0.0.1:{port}/private/callback"],
                    env_overrides={"IDP_PAR": par, "IDP_DPOP": "nonce",
                                   "IDP_CLIENT_AUTH": "private_key_jwt",
                                   "IDP_CLIENT_JWKS_URI": f"http://127.0.0.1:{port}/private/jwks"})
    api = start_dpop_api(procs)
    config = discovery_only(idp.issuer, profile="fapi2")
    envoy = start_envoy(procs, config, api, idp.port, port=port,
                        extra_env={"BFF_CLIENT_KEY": (KEYS / "rsa-2048.pem").read_text(),
                                   "BFF_DPOP_KEY": (KEYS / "ec-p256.pem").read_text()})
    return idp, envoy


def test_the_fapi2_profile_logs_in_through_par_with_a_key_and_dpop(procs):
    idp, envoy = start_fapi2(procs, "required")
    b = Browser(envoy)
    start = b.get("/private/login")
    assert start.status_code == 302, start.text
    assert sorted(query_of(start.headers["location"])) == ["client_id", "request_uri"]
    r = b.login()
    assert r.status_code == 302 and SESSION in b.jar, (r.status_code, r.text)
    r = b.get("/private/api/me", navigate=False)
    assert r.status_code == 200 and r.json()["jkt"] == ec_thumbprint((KEYS / "ec-p256.pem").read_text())
    envoy.assert_vm_healthy()


def test_under_fapi2_an_idp_without_par_serves_no_login_and_says_what_it_lacks(procs):
    _, envoy = start_fapi2(procs, "off")
    r = Browser(envoy).get("/private/login")
    assert r.status_code == 502 and "idp_not_fapi2" in r.text, r.text
    assert "pushed_authorization_request_endpoint" in r.text
    deadline = time.monotonic() + 5  # the log reaches us through a pipe
    while "lacks pushed_authorization_request_endpoint" not in envoy.log():
        assert time.monotonic() < deadline, envoy.log()[-2000:]
        time.sleep(0.1)
    envoy.assert_vm_healthy()
