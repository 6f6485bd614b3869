"""Encrypted ID tokens (issue 19, OIDC Core §10.2): the real IdP (oidc-provider, its `encryption`
feature) encrypts every ID token to the key the filter publishes at its jwks_path, which it reads
as the client's jwks_uri.

- logins work with RSA-OAEP-256 + A256GCM and with ECDH-ES + A128GCM, and so does the refresh
  (the refreshed ID token is encrypted too, and a bad one would end the session);
- an ID token encrypted to another key, one whose tag was changed on the way (a proxy does it:
  a real IdP never would), one encrypted with `alg: dir` (the IdP's key from the client secret),
  and one not encrypted at all are refused with `id_token_invalid`; no session, and the VM
  lives on.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from harness import SESSION
from harness.envoy import Browser, filter_config, start_envoy
from harness.idp import start_idp
from harness.procs import REPO, free_port
from harness.upstream import start_echo

KEYS = Path(__file__).parent / "fixtures" / "keys"
TAMPERING_PROXY = REPO / "tests" / "upstream" / "tampering_proxy.py"
KID = "enc-1"


def start_pair(procs, alg: str, enc: str, key_file: str, idp_env: dict | None = None,
               jwks_uri: str | None = None, tamper: bool = False):
    """The IdP encrypting ID tokens with (alg, enc) to the keys at `jwks_uri` (default: the
    Envoy's own jwks_path), and the Envoy decrypting with `key_file`, published as enc-1.
    `tamper`: the Envoy reaches the IdP through the tampering proxy."""
    port = free_port()
    app = f"http://127.0.0.1:{port}"
    env = {"IDP_ID_TOKEN_ENCRYPTION": f"{alg},{enc}",
           "IDP_CLIENT_JWKS_URI": jwks_uri or f"{app}/private/jwks",
           "IDP_ACCESS_TOKEN_TTL": "65"}
    env.update(idp_env or {})
    env = {k: v for k, v in env.items() if v is not None}
    idp = start_idp(procs, [f"{app}/private/callback"], post_logout_redirect_uris=[f"{app}/"],
                    env_overrides=env)
    idp_port = idp.port
    if tamper:
        idp_port = free_port()
        procs.start("tampering-proxy", [sys.executable, TAMPERING_PROXY, "--port", idp_port,
                                        "--upstream", idp.port], ready_line_prefix="TAMPER READY")
    config = filter_config(idp.issuer, id_token_encryption={
        "alg": "RSA-OAEP-256" if alg == "dir" else alg, "enc": enc,
        "keys": [{"env": "BFF_ID_TOKEN_KEY", "kid": KID}]})
    envoy = start_envoy(procs, config, start_echo(procs), idp_port, port=port,
                        name=f"envoy-jwe-{alg.lower()}",
                        extra_env={"BFF_ID_TOKEN_KEY": (KEYS / key_file).read_text()})
    return idp, envoy


@pytest.mark.parametrize("alg, enc, key_file", [
    ("RSA-OAEP-256", "A256GCM", "rsa-2048.pem"),
    ("ECDH-ES", "A128GCM", "ec-p256.pem"),
])
def test_logins_and_refreshes_work_with_encrypted_id_tokens(procs, alg, enc, key_file):
    idp, envoy = start_pair(procs, alg, enc, key_file)
    served = requests.get(envoy.url("/private/jwks"), timeout=10).json()
    (key,) = served["keys"]
    assert (key["kid"], key["use"], key["alg"]) == (KID, "enc", alg)
    assert "d" not in key
    b = Browser(envoy)
    r = b.login()
    assert r.status_code == 302, r.text
    info = b.get("/private/session", navigate=False).json()
    assert info["claims"]["sub"] and info["claims"]["name"] == "Alice Liddell"
    # The access token falls due after 5 s (65 s, less the 60 s leeway): a refresh, whose ID
    # token is encrypted as well; a refreshed ID token the filter refuses ends the session.
    refreshes = idp.stats()["refresh_requests"]
    time.sleep(5.5)
    r = b.get("/private/api/me", navigate=False)
    assert r.status_code == 200, r.text
    assert idp.stats()["refresh_requests"] == refreshes + 1
    assert b.get("/private/session", navigate=False).status_code == 200
    envoy.assert_vm_healthy()


def other_key_jwks(tmp_path: Path) -> Path:
    """A JWK Set with a fresh RSA key under the filter's kid: the IdP encrypts to a stranger."""
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()\
        .public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big"))\
            .rstrip(b"=").decode()

    jwks = {"keys": [{"kty": "RSA", "n": b64(numbers.n), "e": b64(numbers.e), "kid": KID,
                      "use": "enc", "alg": "RSA-OAEP-256"}]}
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    return tmp_path


@pytest.mark.parametrize("case", ["other-key", "tampered-tag", "alg-dir", "unencrypted"])
def test_a_bad_or_missing_encryption_is_refused_as_id_token_invalid(procs, tmp_path, case):
    jwks_uri, idp_env, tamper, alg = None, {}, False, "RSA-OAEP-256"
    if case == "other-key":
        port = free_port()
        procs.start("jwks-server", [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                                    port, "--directory", other_key_jwks(tmp_path)],
                    ready_line_prefix="Serving HTTP")
        jwks_uri = f"http://127.0.0.1:{port}/jwks.json"
    elif case == "tampered-tag":
        tamper = True
    elif case == "alg-dir":
        alg = "dir"
    else:
        idp_env = {"IDP_ID_TOKEN_ENCRYPTION": None, "IDP_CLIENT_JWKS_URI": None}
    enc = "A128CBC-HS256" if alg == "dir" else "A256GCM"
    idp, envoy = start_pair(procs, alg, enc, "rsa-2048.pem", idp_env=idp_env,
                            jwks_uri=jwks_uri, tamper=tamper)
    b = Browser(envoy)
    callback = b.sign_in_at_idp()
    r = b.get(callback, navigate=False)
    assert r.status_code == 401, r.text
    body = r.json()
    assert body["error"] == "id_token_invalid", body
    why = {"other-key": "does not decrypt", "tampered-tag": "does not decrypt",
           "alg-dir": "key management dir is not configured",
           "unencrypted": "is not encrypted"}[case]
    assert why in body["message"], body
    assert SESSION not in b.jar
    if tamper:
        tampered = requests.get(f"http://127.0.0.1:{envoy_idp_port(envoy)}/test/tampered",
                                timeout=5).json()
        assert tampered["count"] == 1
    # The VM lives on: the next login attempt is served.
    assert Browser(envoy).get("/private/login").status_code == 302
    envoy.assert_vm_healthy()


def envoy_idp_port(envoy) -> int:
    """The port of the Envoy's `idp` cluster (here the tampering proxy), from its config dump."""
    dump = requests.get(f"http://127.0.0.1:{envoy.admin_port}/config_dump", timeout=10).json()
    for config in dump["configs"]:
        for cluster in config.get("static_clusters", []):
            c = cluster["cluster"]
            if c["name"] == "idp":
                endpoint = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                return endpoint["address"]["socket_address"]["port_value"]
    raise AssertionError("no idp cluster")
