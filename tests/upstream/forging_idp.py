#!/usr/bin/env python3
"""An OpenID Provider that forges: ID tokens that are wrong in exactly one way, on demand. A real
IdP never produces these, so the filter's ID token checks are tested against this one.

    python3 tests/upstream/forging_idp.py --port N [--client-secret S]

Prints `FORGER READY <issuer>` (issuer `http://127.0.0.1:N`) once listening; exits 0 on SIGTERM.

Routes
  GET  /.well-known/openid-configuration   announces RS256 and ES256 only (never PS256)
  GET  /jwks        kid rsa-1: RSA-2048, no "alg", no "use";
                    kid ec-1: EC P-256, "alg": "ES256", "use": "sig". Fresh at every start.
  GET  /auth?...    no login page: remembers client_id, redirect_uri, state, nonce,
                    code_challenge (S256 only) and `forge` (the mode, default `good`) under a
                    fresh code, and 302s to redirect_uri?code=..&state=..&iss=<issuer>.
  POST /token       client_secret_basic (RFC 6749 §2.3.1 form-encoded id and secret; the client
                    id must be the one the code was issued to, the secret --client-secret),
                    grant_type=authorization_code, the code once, the same redirect_uri, and
                    a code_verifier whose S256 is the stored challenge (else 400 invalid_grant).
                    Answers {"access_token", "token_type": "Bearer", "expires_in": 300,
                    "refresh_token", "id_token": <forged per mode>}. No other grant type.
  GET  /test/token-calls  {"token_calls": N, "jwks_calls": J, "discovery_calls": D}: every
                    POST /token (failed ones too), GET /jwks, GET of the discovery document.

Modes (`forge=<mode>` in the authorize request). Unless a mode says otherwise the token is
{"alg": "RS256", "typ": "JWT", "kid": "rsa-1"} . {iss, sub, aud: client_id, exp: now+300,
iat: now, nonce} signed with rsa-1:
  good                 exactly that, valid
  good-es256           valid, ES256, kid ec-1
  alg-none             header alg "none" (kid rsa-1 kept), empty signature: "<h>.<p>."
  hs256-public-key     HS256, kid rsa-1, HMAC key = rsa-1's public key as SPKI PEM (bytes of the
                       PEM text, trailing newline included): the RS/HS confusion attack
  wrong-kid            valid RS256 signature by rsa-1, but kid "nope" (no such key)
  no-kid               valid RS256 signature by rsa-1, no kid in the header
  bad-signature        `good` with one signature byte flipped (the middle one, xor 0x01)
  ec-kid-rs256         signed by rsa-1 with RS256, but kid ec-1 (an ES256-only EC key)
  wrong-iss            iss "https://evil.example.test"
  wrong-aud            aud "other-client"
  multi-aud-no-azp     aud [client_id, "other"], no azp
  wrong-azp            aud client_id, azp "other"
  expired              exp now-600, iat now-900
  future-iat           iat now+600 (exp now+900)
  wrong-nonce          a nonce that is not the one sent
  no-nonce             no nonce claim
  ps256-not-announced  PS256 (a valid signature by rsa-1, kid rsa-1), an alg discovery omits
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import secrets
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

SUB = "forged-sub-0001"
TOKEN_TTL = 300
MODES = (
    "good", "good-es256", "alg-none", "hs256-public-key", "wrong-kid", "no-kid",
    "bad-signature", "ec-kid-rs256", "wrong-iss", "wrong-aud", "multi-aud-no-azp", "wrong-azp",
    "expired", "future-iat", "wrong-nonce", "no-nonce", "ps256-not-announced",
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(value) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def b64url_uint(n: int, length: int | None = None) -> str:
    length = length or (n.bit_length() + 7) // 8
    return b64url(n.to_bytes(length, "big"))


class Keys:
    def __init__(self):
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.rsa_public_pem = self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        rsa_numbers = self.rsa.public_key().public_numbers()
        ec_numbers = self.ec.public_key().public_numbers()
        self.jwks = {"keys": [
            {"kty": "RSA", "kid": "rsa-1", "n": b64url_uint(rsa_numbers.n),
             "e": b64url_uint(rsa_numbers.e)},
            {"kty": "EC", "kid": "ec-1", "crv": "P-256", "alg": "ES256", "use": "sig",
             "x": b64url_uint(ec_numbers.x, 32), "y": b64url_uint(ec_numbers.y, 32)},
        ]}

    def sign(self, alg: str, signing_input: bytes) -> bytes:
        if alg == "RS256":
            return self.rsa.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        if alg == "PS256":
            return self.rsa.sign(signing_input,
                                 padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                             salt_length=padding.PSS.DIGEST_LENGTH),
                                 hashes.SHA256())
        if alg == "ES256":
            r, s = decode_dss_signature(self.ec.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        if alg == "HS256":  # the confusion attack: the RSA public key PEM as the HMAC secret
            return hmac.new(self.rsa_public_pem, signing_input, hashlib.sha256).digest()
        if alg == "none":
            return b""
        raise ValueError(alg)


def forge(keys: Keys, mode: str, issuer: str, client_id: str, nonce: str | None) -> str:
    """The ID token for `mode`: the `good` token with exactly one thing changed."""
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "kid": "rsa-1"}
    claims = {"iss": issuer, "sub": SUB, "aud": client_id, "exp": now + TOKEN_TTL, "iat": now}
    if nonce is not None:
        claims["nonce"] = nonce

    if mode == "good":
        pass
    elif mode == "good-es256":
        header.update(alg="ES256", kid="ec-1")
    elif mode == "alg-none":
        header["alg"] = "none"
    elif mode == "hs256-public-key":
        header["alg"] = "HS256"
    elif mode == "wrong-kid":
        header["kid"] = "nope"
    elif mode == "no-kid":
        del header["kid"]
    elif mode == "bad-signature":
        pass  # flipped below
    elif mode == "ec-kid-rs256":
        header["kid"] = "ec-1"
    elif mode == "wrong-iss":
        claims["iss"] = "https://evil.example.test"
    elif mode == "wrong-aud":
        claims["aud"] = "other-client"
    elif mode == "multi-aud-no-azp":
        claims["aud"] = [client_id, "other"]
    elif mode == "wrong-azp":
        claims["azp"] = "other"
    elif mode == "expired":
        claims.update(exp=now - 600, iat=now - 900)
    elif mode == "future-iat":
        claims.update(iat=now + 600, exp=now + 900)
    elif mode == "wrong-nonce":
        claims["nonce"] = "not-" + secrets.token_urlsafe(16)
    elif mode == "no-nonce":
        claims.pop("nonce", None)
    elif mode == "ps256-not-announced":
        header["alg"] = "PS256"
    else:
        raise ValueError(mode)

    signing_input = f"{b64url_json(header)}.{b64url_json(claims)}".encode("ascii")
    signature = keys.sign(header["alg"], signing_input)
    if mode == "bad-signature":
        flipped = bytearray(signature)
        flipped[len(flipped) // 2] ^= 0x01
        signature = bytes(flipped)
    return signing_input.decode("ascii") + "." + b64url(signature)


class Forger:
    def __init__(self, issuer: str, client_secret: str):
        self.issuer = issuer
        self.client_secret = client_secret
        self.keys = Keys()
        self.codes: dict[str, dict] = {}
        self.counts = {"token_calls": 0, "jwks_calls": 0, "discovery_calls": 0}
        self.lock = threading.Lock()

    def discovery(self) -> dict:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/auth",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "grant_types_supported": ["authorization_code"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True,
        }


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(client_id, client_secret) from `Authorization: Basic`, each form-decoded (§2.3.1)."""
    if not header or not header[:6].lower() == "basic ":
        return None
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    client_id, sep, secret = raw.partition(":")
    if not sep:
        return None
    return unquote_plus(client_id), unquote_plus(secret)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "forging-idp"
    sys_version = ""
    forger: Forger  # set in main()

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json",
              headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value, headers: dict | None = None):
        self._send(status, json.dumps(value).encode("utf-8"), headers=headers)

    def _error(self, status: int, error: str, description: str, headers: dict | None = None):
        self._json(status, {"error": error, "error_description": description}, headers)

    def do_GET(self):
        f = self.forger
        url = urlsplit(self.path)
        if url.path == "/.well-known/openid-configuration":
            with f.lock:
                f.counts["discovery_calls"] += 1
            return self._json(200, f.discovery())
        if url.path == "/jwks":
            with f.lock:
                f.counts["jwks_calls"] += 1
            return self._json(200, f.keys.jwks)
        if url.path == "/auth":
            return self._authorize({k: v[0] for k, v in parse_qs(url.query).items()})
        if url.path == "/test/token-calls":
            with f.lock:
                return self._json(200, dict(f.counts))
        self._error(404, "not_found", url.path)

    def _authorize(self, q: dict):
        f = self.forger
        mode = q.get("forge", "good")
        for name in ("client_id", "redirect_uri", "code_challenge"):
            if not q.get(name):
                return self._error(400, "invalid_request", f"{name} is required")
        if q.get("response_type") != "code":
            return self._error(400, "unsupported_response_type", "only code")
        if q.get("code_challenge_method") != "S256":
            return self._error(400, "invalid_request", "code_challenge_method must be S256")
        if mode not in MODES:
            return self._error(400, "invalid_request", f"unknown forge mode {mode!r}")
        code = secrets.token_urlsafe(24)
        with f.lock:
            f.codes[code] = {k: q.get(k) for k in ("client_id", "redirect_uri", "state", "nonce",
                                                   "code_challenge")} | {"mode": mode}
        params = {"code": code}
        if "state" in q:
            params["state"] = q["state"]
        params["iss"] = f.issuer
        redirect = q["redirect_uri"]
        location = redirect + ("&" if "?" in redirect else "?") + urlencode(params)
        self._send(302, headers={"Location": location})

    def do_POST(self):
        f = self.forger
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        if urlsplit(self.path).path != "/token":
            return self._error(404, "not_found", self.path)
        with f.lock:
            f.counts["token_calls"] += 1
        form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        creds = basic_credentials(self.headers.get("Authorization"))
        if creds is None or not hmac.compare_digest(creds[1].encode(), f.client_secret.encode()):
            return self._error(401, "invalid_client", "client_secret_basic authentication failed",
                               {"WWW-Authenticate": 'Basic realm="forger"'})
        if form.get("grant_type") != "authorization_code":
            return self._error(400, "unsupported_grant_type", "only authorization_code")
        with f.lock:
            stored = f.codes.pop(form.get("code", ""), None)  # single use, even when refused
        if stored is None:
            return self._error(400, "invalid_grant", "unknown or used code")
        if creds[0] != stored["client_id"]:
            return self._error(400, "invalid_grant", "code was issued to another client")
        if form.get("redirect_uri") != stored["redirect_uri"]:
            return self._error(400, "invalid_grant", "redirect_uri mismatch")
        verifier = form.get("code_verifier", "")
        challenge = b64url(hashlib.sha256(verifier.encode("ascii", "replace")).digest())
        if not verifier or not hmac.compare_digest(challenge, stored["code_challenge"]):
            return self._error(400, "invalid_grant", "PKCE verification failed")
        id_token = forge(f.keys, stored["mode"], f.issuer, stored["client_id"], stored["nonce"])
        self._json(200, {
            "access_token": secrets.token_urlsafe(32),
            "token_type": "Bearer",
            "expires_in": TOKEN_TTL,
            "refresh_token": secrets.token_urlsafe(32),
            "id_token": id_token,
        })


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-secret", default="bff-secret")
    args = parser.parse_args()
    issuer = f"http://127.0.0.1:{args.port}"
    Handler.forger = Forger(issuer, args.client_secret)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    signal.signal(signal.SIGINT, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"FORGER READY {issuer}", flush=True)
    server.serve_forever()
    server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
