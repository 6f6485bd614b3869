"""Compact JWS by hand, for tests that check what an IdP signed (no JOSE library needed): split
and decode a token, turn a public JWK into a `cryptography` key, verify a signature.

Only what the IdPs in these tests use: RS256, PS256, ES256 and EdDSA (Ed25519).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(segment: str) -> int:
    return int.from_bytes(b64url_decode(segment), "big")


@dataclass
class Jws:
    header: dict
    payload: dict
    signature: bytes
    signing_input: bytes  # b"<header>.<payload>", what the signature covers
    payload_bytes: bytes


def decode(token: str) -> Jws:
    """Split a compact JWS and decode its parts. Does NOT verify anything."""
    head, body, sig = token.split(".")
    payload_bytes = b64url_decode(body)
    return Jws(header=json.loads(b64url_decode(head)), payload=json.loads(payload_bytes),
               signature=b64url_decode(sig), signing_input=f"{head}.{body}".encode("ascii"),
               payload_bytes=payload_bytes)


def public_key(jwk: dict):
    """A `cryptography` public key from a public (or private: only public parts are read) JWK."""
    kty = jwk["kty"]
    if kty == "RSA":
        return rsa.RSAPublicNumbers(_uint(jwk["e"]), _uint(jwk["n"])).public_key()
    if kty == "EC":
        if jwk["crv"] != "P-256":
            raise ValueError(f"unsupported curve {jwk['crv']}")
        return ec.EllipticCurvePublicNumbers(_uint(jwk["x"]), _uint(jwk["y"]),
                                             ec.SECP256R1()).public_key()
    if kty == "OKP":
        if jwk["crv"] != "Ed25519":
            raise ValueError(f"unsupported curve {jwk['crv']}")
        return ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    raise ValueError(f"unsupported kty {kty}")


def verify(token: str, jwk: dict, alg: str | None = None) -> bool:
    """Whether `token`'s signature is valid under `jwk` with `alg` (default: the header's)."""
    jws = decode(token)
    alg = alg or jws.header.get("alg")
    key = public_key(jwk)
    try:
        if alg == "RS256":
            key.verify(jws.signature, jws.signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "PS256":
            key.verify(jws.signature, jws.signing_input,
                       padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                   salt_length=padding.PSS.DIGEST_LENGTH),
                       hashes.SHA256())
        elif alg == "ES256":
            if len(jws.signature) != 64:  # JWS uses raw r||s, not DER
                return False
            r = int.from_bytes(jws.signature[:32], "big")
            s = int.from_bytes(jws.signature[32:], "big")
            key.verify(encode_dss_signature(r, s), jws.signing_input, ec.ECDSA(hashes.SHA256()))
        elif alg in ("EdDSA", "Ed25519"):
            key.verify(jws.signature, jws.signing_input)
        else:
            raise ValueError(f"unsupported alg {alg}")
    except (InvalidSignature, TypeError, AttributeError):
        # TypeError/AttributeError: the key type does not fit the alg (e.g. an EC key for RS256).
        return False
    return True


def key_for(token: str, jwks: dict) -> dict | None:
    """The JWK in `jwks` whose kid is the token header's kid, if any."""
    kid = decode(token).header.get("kid")
    return next((k for k in jwks["keys"] if k.get("kid") == kid), None)
