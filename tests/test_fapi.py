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
  answered; a token the IdP did not bind is refused.
- Mutual-TLS client authentication (RFC 8705 §2): the IdP cluster's TLS presents the client
  certificate (Envoy's, not the filter's), the filter names the client; through the IdP's
  mtls_endpoint_aliases (§5), and under profile "fapi2" in place of private_key_jwt.
- The shipped envoy/envoy.fapi2.yaml validates, and run on loopback against the bundled IdP in
  its FAPI 2.0 shape it logs in and serves DPoP-checked API calls."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from harness import SESSION
from harness.envoy import (ENVOY_BIN, SECRETS, WASM, Browser, discovery_only, on_loopback,
                           query_of, run_envoy, start_envoy)
from harness.idp import start_idp
from harness.jws import b64url_encode
from harness.procs import REPO, free_port
from harness.tls import Authority, self_signed, tls_cluster
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


def test_an_entra_shaped_assertion_names_the_certificate_and_the_token_endpoint(procs):
    """Microsoft Entra ID's certificate credentials: PS256, `x5t#S256` of the certificate in
    the header, `aud` the token endpoint. The bundled IdP accepts that audience too."""
    port = free_port()
    idp = start_idp(procs, [f"http://127.0.0.1:{port}/private/callback"],
                    env_overrides={"IDP_CLIENT_AUTH": "private_key_jwt",
                                   "IDP_CLIENT_JWKS_URI": f"http://127.0.0.1:{port}/private/jwks"})
    config = discovery_only(idp.issuer, client_auth="private_key_jwt",
                            client_certificate={"env": "BFF_CLIENT_CERT"},
                            client_assertion_audience="token_endpoint")
    envoy = start_envoy(procs, config, start_echo(procs), idp.port, port=port,
                        extra_env={"BFF_CLIENT_KEY": (KEYS / "rsa-2048.pem").read_text(),
                                   "BFF_CLIENT_CERT": (KEYS / "rsa-2048.crt").read_text()})
    (key,) = Browser(envoy).get("/private/jwks", navigate=False).json()["keys"]
    der = base64.b64decode("".join(
        line for line in (KEYS / "rsa-2048.crt").read_text().splitlines() if "-----" not in line))
    assert key["x5t#S256"] == b64url_encode(hashlib.sha256(der).digest())
    b = Browser(envoy)
    r = b.login()
    assert r.status_code == 302 and SESSION in b.jar, (r.status_code, r.text)
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


def logged_in_through_par(envoy) -> Browser:
    """A browser logged in through `envoy`, whose login was pushed: the redirect to the IdP has
    only client_id and request_uri."""
    b = Browser(envoy)
    start = b.get("/private/login")
    assert start.status_code == 302, start.text
    assert sorted(query_of(start.headers["location"])) == ["client_id", "request_uri"]
    r = b.login()
    assert r.status_code == 302 and SESSION in b.jar, (r.status_code, r.text)
    return b


def test_the_fapi2_profile_logs_in_through_par_with_a_key_and_dpop(procs):
    idp, envoy = start_fapi2(procs, "required")
    b = logged_in_through_par(envoy)
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


# --- mutual-TLS client authentication (RFC 8705) -------------------------------------------------

def start_mtls(procs, tmp_path, client_auth: str, present: str, overrides: dict = (),
               config: dict = ()):
    """The IdP with a tls_* client and an https listener asking for certificates; Envoy whose
    `idp_mtls` cluster presents `present` ("ca": issued by the IdP's trusted CA for
    bff.client.test, "self": the self-signed one the IdP registered, "none": no certificate)."""
    ca = Authority(tmp_path)
    server, issued = ca.server(), ca.client("bff.client.test")
    own = self_signed(tmp_path, "self-signed", "bff.client.test")
    port, mtls_port = free_port(), free_port()
    idp = start_idp(procs, [f"http://127.0.0.1:{port}/private/callback"],
                    post_logout_redirect_uris=[f"http://127.0.0.1:{port}/"],
                    env_overrides={"IDP_CLIENT_AUTH": client_auth,
                                   "IDP_MTLS_PORT": str(mtls_port),
                                   "IDP_MTLS_CERT": str(server.cert),
                                   "IDP_MTLS_KEY": str(server.key),
                                   "IDP_MTLS_CA": str(ca.pem.cert),
                                   "IDP_CLIENT_CERT_SAN_DNS": "bff.client.test",
                                   "IDP_CLIENT_CERT": str(own.cert),
                                   **dict(overrides)})
    client = {"ca": issued, "self": own, "none": None}[present]
    cluster = tls_cluster("idp_mtls", mtls_port, ca.pem.cert, client)
    api = start_dpop_api(procs) if dict(config).get("profile") else start_echo(procs)
    envoy = start_envoy(procs, discovery_only(idp.issuer, client_auth=client_auth,
                                              idp_mtls_cluster="idp_mtls", **dict(config)),
                        api, idp.port, port=port, clusters=[cluster],
                        extra_env={"BFF_DPOP_KEY": (KEYS / "ed25519.pem").read_text()})
    return idp, envoy, mtls_port


def test_a_certificate_from_the_clusters_tls_authenticates_through_the_idps_aliases(procs,
                                                                                   tmp_path):
    idp, envoy, mtls_port = start_mtls(procs, tmp_path, "tls_client_auth", "ca",
                                       overrides={"IDP_ACCESS_TOKEN_TTL": "65"})
    aliases = idp.discovery()["mtls_endpoint_aliases"]
    assert aliases["token_endpoint"] == f"https://127.0.0.1:{mtls_port}/token"
    b = Browser(envoy)
    r = b.login()
    assert r.status_code == 302 and SESSION in b.jar, (r.status_code, r.text)
    before = idp.stats()
    assert before["token_requests"] == 1
    time.sleep(6.2)  # due 5 s after the login (65 s tokens, 60 s leeway)
    r = b.get("/private/api/me", navigate=False)
    assert r.status_code == 200, r.text
    assert idp.stats()["refresh_requests"] == before["refresh_requests"] + 1
    logout_url = b.get("/private/session", navigate=False).json()["logout_url"]
    assert b.get(logout_url).status_code == 302
    assert idp.stats()["revocations"] == before["revocations"] + 1
    assert envoy.counters()["refreshes_ok"] == 1
    envoy.assert_vm_healthy()


@pytest.mark.parametrize("client_auth", ["tls_client_auth", "self_signed_tls_client_auth"])
def test_without_the_certificate_the_login_gets_the_documented_error(procs, tmp_path,
                                                                    client_auth):
    _, envoy, _ = start_mtls(procs, tmp_path, client_auth, "none")
    r = Browser(envoy).login()
    assert r.status_code == 502, (r.status_code, r.text)
    assert "token_exchange_failed" in r.text and "invalid_client" in r.text, r.text
    envoy.assert_vm_healthy()


def test_the_fapi2_profile_takes_a_self_signed_certificate_in_place_of_a_key(procs, tmp_path):
    """profile fapi2 with self_signed_tls_client_auth: PAR, DPoP and the certificate; the
    proofs name the aliases' URLs, where the calls go."""
    idp, envoy, _ = start_mtls(procs, tmp_path, "self_signed_tls_client_auth", "self",
                               overrides={"IDP_PAR": "required", "IDP_DPOP": "required"},
                               config={"profile": "fapi2"})
    assert "pushed_authorization_request_endpoint" in idp.discovery()["mtls_endpoint_aliases"]
    b = logged_in_through_par(envoy)
    r = b.get("/private/api/me", navigate=False)
    assert r.status_code == 200 and r.json()["jkt"], r.text
    assert "BEGIN" not in envoy.log()
    envoy.assert_vm_healthy()


# --- the shipped envoy/envoy.fapi2.yaml ---------------------------------------------------------

FAPI2_YAML = REPO / "envoy" / "envoy.fapi2.yaml"
FAPI2_ENV = {"BFF_CLIENT_KEY": (KEYS / "ed25519.pem").read_text(),
             "BFF_DPOP_KEY": (KEYS / "ec-p256.pem").read_text(),
             "BFF_COOKIE_KEYS": SECRETS["BFF_COOKIE_KEYS"]}


def test_the_fapi2_example_validates_with_its_keys_from_the_environment():
    env = {k: v for k, v in os.environ.items() if not k.startswith("BFF_")}

    def run(extra: dict) -> subprocess.CompletedProcess:
        return subprocess.run([str(ENVOY_BIN), "--mode", "validate", "-c", str(FAPI2_YAML)],
                              cwd=REPO, env={**env, **extra}, capture_output=True, text=True,
                              timeout=120)

    result = run(FAPI2_ENV)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "configured for issuer https://login.bank.example.com" in result.stderr
    without_dpop_key = run({k: v for k, v in FAPI2_ENV.items() if k != "BFF_DPOP_KEY"})
    assert without_dpop_key.returncode != 0
    assert "dpop_key: environment variable BFF_DPOP_KEY is not set" in without_dpop_key.stderr
    assert "BEGIN" not in result.stderr + without_dpop_key.stderr


def test_the_fapi2_example_logs_in_on_loopback_against_an_idp_in_fapi2_shape(procs):
    """The file as shipped but for addresses and names: the IdP is the bundled one requiring
    PAR, private_key_jwt (reading the filter's jwks_path) and DPoP with nonces; the API checks
    every proof."""
    bootstrap = yaml.safe_load(FAPI2_YAML.read_text())
    port = free_port()
    idp = start_idp(procs, [f"http://127.0.0.1:{port}/private/callback"],
                    env_overrides={"IDP_PAR": "required", "IDP_DPOP": "nonce",
                                   "IDP_CLIENT_AUTH": "private_key_jwt",
                                   "IDP_CLIENT_JWKS_URI": f"http://127.0.0.1:{port}/private/jwks"},
                    client_id="bank-spa-bff")
    api = start_dpop_api(procs)
    on_loopback(bootstrap, port, free_port(), {"api": api, "idp": idp.port})
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    wasm = hcm["typed_config"]["http_filters"][0]["typed_config"]["config"]
    config = json.loads(wasm["configuration"]["value"])
    config["issuer"] = idp.issuer
    wasm["configuration"]["value"] = json.dumps(config)
    wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
    envoy = run_envoy(procs, bootstrap, "envoy-fapi2", env=FAPI2_ENV, concurrency=1)
    b = logged_in_through_par(envoy)
    (key,) = b.get("/private/jwks", navigate=False).json()["keys"]
    assert key["kid"] == config["client_key_id"]
    r = b.get("/private/api/accounts", navigate=False)
    assert r.status_code == 200 and r.json()["jkt"] == ec_thumbprint(FAPI2_ENV["BFF_DPOP_KEY"])
    envoy.assert_vm_healthy()
