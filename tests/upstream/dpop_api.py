#!/usr/bin/env python3
"""A resource server that checks DPoP proofs (RFC 9449 §4.3 and §7.1), for the DPoP tests.

    python3 tests/upstream/dpop_api.py --port N

Every request but GET /stats must carry `Authorization: DPoP <token>` and exactly one `DPoP`
header with a proof whose
  - header has typ "dpop+jwt", an asymmetric alg (ES256, PS256, EdDSA) and a public `jwk`
    (no private part), and whose signature that jwk verifies;
  - claims have htm = the request's method, htu = http://<Host><path without query>, an iat
    within 60 s of now, a jti this server has not seen before, and ath = base64url(SHA-256 of
    the token).
A good request gets 200 {"ok": true, "jkt": <RFC 7638 thumbprint of the proof's key>,
"htu": ...}; a bad one 401 with `WWW-Authenticate: DPoP error="invalid_dpop_proof"` and
{"error": "invalid_dpop_proof", "why": ...}. GET /stats answers {"accepted": N, "refused": M,
"last": {"authorization": ..., "dpop": ..., "path": ...}} (the last accepted request's
headers, for a test that replays them). Prints `DPOP API READY <port>`; exits on SIGTERM.
"""

import argparse
import hashlib
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness.jws import b64url_encode, decode, verify  # noqa: E402

ALGS = ("ES256", "PS256", "EdDSA")
MAX_AGE_S = 60
LOCK = threading.Lock()
SEEN_JTIS: set[str] = set()
STATS = {"accepted": 0, "refused": 0, "last": None}


def thumbprint(jwk: dict) -> str:
    required = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}
    members = {k: jwk[k] for k in required[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64url_encode(hashlib.sha256(canonical).digest())


def check(method: str, host: str, path: str, authorization: str | None, proofs: list[str]) -> dict:
    """The proof's key thumbprint, or raises ValueError with why."""
    if not authorization or not authorization.startswith("DPoP "):
        raise ValueError("no Authorization: DPoP")
    token = authorization[len("DPoP "):]
    if len(proofs) != 1:
        raise ValueError(f"{len(proofs)} DPoP headers")
    proof = proofs[0]
    jws = decode(proof)
    h, c = jws.header, jws.payload
    if h.get("typ") != "dpop+jwt":
        raise ValueError(f"typ {h.get('typ')!r}")
    if h.get("alg") not in ALGS:
        raise ValueError(f"alg {h.get('alg')!r}")
    jwk = h.get("jwk")
    if not isinstance(jwk, dict) or "d" in jwk or "p" in jwk:
        raise ValueError("no public jwk")
    if not verify(proof, jwk, h["alg"]):
        raise ValueError("bad signature")
    if c.get("htm") != method:
        raise ValueError(f"htm {c.get('htm')!r} for {method}")
    htu = f"http://{host}{path.split('?', 1)[0]}"
    if c.get("htu") != htu:
        raise ValueError(f"htu {c.get('htu')!r}, expected {htu!r}")
    iat = c.get("iat")
    if not isinstance(iat, int) or abs(time.time() - iat) > MAX_AGE_S:
        raise ValueError(f"iat {iat!r}")
    ath = b64url_encode(hashlib.sha256(token.encode("ascii")).digest())
    if c.get("ath") != ath:
        raise ValueError("ath does not match the token")
    jti = c.get("jti")
    if not isinstance(jti, str) or len(jti) < 16:
        raise ValueError("no jti")
    with LOCK:
        if jti in SEEN_JTIS:
            raise ValueError("replayed proof (jti seen before)")
        SEEN_JTIS.add(jti)
    return {"ok": True, "jkt": thumbprint(jwk), "htu": htu}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dpop-api"
    sys_version = ""

    def _answer(self, status: int, body: dict, extra: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        if self.command == "GET" and self.path == "/stats":
            with LOCK:
                self._answer(200, STATS)
            return
        authorization = self.headers.get("authorization")
        proofs = self.headers.get_all("dpop") or []
        try:
            result = check(self.command, self.headers.get("host", ""), self.path, authorization,
                           proofs)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
            with LOCK:
                STATS["refused"] += 1
            self._answer(401, {"error": "invalid_dpop_proof", "why": str(e)},
                         {"www-authenticate": 'DPoP error="invalid_dpop_proof"'})
            return
        with LOCK:
            STATS["accepted"] += 1
            STATS["last"] = {"authorization": authorization, "dpop": proofs[0], "path": self.path}
        self._answer(200, result)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    def log_message(self, *args) -> None:
        pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"DPOP API READY {args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
