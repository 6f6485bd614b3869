#!/usr/bin/env python3
"""Makes the seed corpora (fuzz/corpus/<target>/seed-*) and the targets' fixed documents
(fuzz/fixtures/) from real logins: the test IdP (tests/idp/server.mjs) signing with the
fixture keys (tests/fixtures/keys), and Envoy with the built filter sealing the cookies.

Run by hand, with the wasm module built, when a format the targets read changes (cookie
sealing, session contents, the IdP's documents):

    cargo build --target wasm32-wasip1 --release
    .venv/bin/python fuzz/seeds.py

Fixed, because the targets (fuzz/src/lib.rs) hard-code them: the IdP's port (so its issuer is
http://127.0.0.1:9000), the cookie key (KEY_A of tests/harness/envoy.py), the client, the
nonce of the direct logins, and an ID token lifetime of ~95 years (the id_token target checks
claims at a fixed time in 2096, after any seed's `iat` and before its `exp`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import requests

FUZZ = Path(__file__).resolve().parent
REPO = FUZZ.parent
sys.path.insert(0, str(REPO / "tests"))

from harness.envoy import KEY_A, Browser, filter_config, start_envoy  # noqa: E402
from harness.idp import (  # noqa: E402
    abort_login_at_idp, authorization_url, basic_auth, login_at_idp, pkce_pair, start_idp)
from harness.procs import ProcessGroup  # noqa: E402
from harness.upstream import start_echo  # noqa: E402

IDP_PORT = 9000
CLIENT_ID = "bff"
CLIENT_SECRET = "bff-secret"
DIRECT_REDIRECT = "http://127.0.0.1:8000/private/callback"
# The direct logins' state and nonce; the id_token harness expects NONCE.
STATE = "fuzz-state-Qm9iIGJ1aWxkcyBpdA"
NONCE = "fuzz-nonce-QWxpY2UgaW4gd29uZGVybGFuZA"
ID_TOKEN_TTL = 3_000_000_000
# What the decide harness configures beyond the defaults, so the seeds reach those paths.
FILTER_EXTRAS = {
    "claim_headers": {"sub": "x-user-sub", "groups": "x-user-groups"},
    "rules": [{"prefix": "/private/admin", "require": {"groups": {"contains": "admin"}}}],
    "bypass": ["/private/healthz"],
    "csrf": {"allowed_origins": ["https://front.example.com"]},
}

CORPUS = FUZZ / "corpus"
FIXTURES = FUZZ / "fixtures"


def private_jwks() -> dict:
    """The fixture keys as a private JWKS for IDP_KEY_FILE (node exports PEM to JWK)."""
    script = r"""
const crypto = require('node:crypto'), fs = require('node:fs');
const key = (file, kid, extra) => Object.assign(
  crypto.createPrivateKey(fs.readFileSync('tests/fixtures/keys/' + file)).export({format: 'jwk'}),
  {kid}, extra);
console.log(JSON.stringify({keys: [
  key('rsa-2048.pem', 'fuzz-rsa', {}),
  key('ec-p256.pem', 'fuzz-es256', {alg: 'ES256', use: 'sig'}),
  key('ed25519.pem', 'fuzz-eddsa', {}),
]}));
"""
    out = subprocess.run(["node", "-e", script], cwd=REPO, check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout)


def write(target: str, name: str, data: bytes | str) -> None:
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed-{name}").write_bytes(data.encode() if isinstance(data, str) else data)


def direct_login(idp, alg: str) -> None:
    """Authorization code flow straight against the IdP: the callback query, the token
    responses (code, refresh, a refused code) and the ID token."""
    http = requests.Session()
    verifier, challenge = pkce_pair()
    url = authorization_url(idp, DIRECT_REDIRECT, state=STATE, nonce=NONCE,
                            code_challenge=challenge)
    callback = login_at_idp(http, url)
    query = urlsplit(callback).query
    write("callback_query", f"code-{alg}", query)
    code = dict(p.split("=", 1) for p in query.split("&"))["code"]

    token_endpoint = idp.discovery()["token_endpoint"]
    auth = {"Authorization": basic_auth(CLIENT_ID, CLIENT_SECRET)}
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": DIRECT_REDIRECT,
            "code_verifier": verifier}
    r = requests.post(token_endpoint, data=form, headers=auth, timeout=10)
    r.raise_for_status()
    write("documents", f"token-{alg}", r.content)
    tokens = r.json()
    write("id_token", alg, tokens["id_token"])
    if alg == "RS256":
        refresh = requests.post(token_endpoint, headers=auth, timeout=10, data={
            "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
        refresh.raise_for_status()
        write("documents", "token-refresh", refresh.content)
        (FIXTURES / "token-refresh.json").write_bytes(refresh.content)
        write("id_token", "RS256-refresh", refresh.json()["id_token"])
        # Last: a code used twice also revokes what it gave (RFC 6749 §4.1.2).
        again = requests.post(token_endpoint, data=form, headers=auth, timeout=10)
        write("documents", "token-invalid-grant", again.content)
        cancelled = abort_login_at_idp(requests.Session(), authorization_url(
            idp, DIRECT_REDIRECT, state=STATE, nonce=NONCE, code_challenge=challenge))
        write("callback_query", "access-denied", urlsplit(cancelled).query)


def exchange_for_nonce(idp, nonce: str) -> bytes:
    """A real token response whose ID token carries `nonce`: the decide target finishes the
    code exchange of alice's callback seed with it, which then succeeds."""
    verifier, challenge = pkce_pair()
    url = authorization_url(idp, DIRECT_REDIRECT, state=STATE, nonce=nonce,
                            code_challenge=challenge)
    code = dict(p.split("=", 1) for p in urlsplit(login_at_idp(requests.Session(), url)).query
                .split("&"))["code"]
    r = requests.post(idp.discovery()["token_endpoint"], timeout=10,
                      headers={"Authorization": basic_auth(CLIENT_ID, CLIENT_SECRET)},
                      data={"grant_type": "authorization_code", "code": code,
                            "redirect_uri": DIRECT_REDIRECT, "code_verifier": verifier})
    r.raise_for_status()
    return r.content


def headers(envoy_port: int, method: str, path: str, now: float, navigate: bool,
            cookie: str | None = None, extra: tuple = ()) -> str:
    """The request as the filter sees it, in the decide harness's format: `@now N`, then one
    `name value` line per header (names lowercase, as Envoy gives them)."""
    lines = [f"@now {int(now)}", f":authority 127.0.0.1:{envoy_port}", f":path {path}",
             f":method {method}", ":scheme http", "user-agent python-requests/2.32.3",
             "accept-encoding gzip, deflate"]
    if navigate:
        lines += ["sec-fetch-mode navigate", "accept text/html"]
    else:
        lines += ["sec-fetch-mode cors", "accept application/json", "x-csrf 1"]
    if cookie:
        lines.append(f"cookie {cookie}")
    lines += [f"{n} {v}" for n, v in extra]
    lines += ["x-forwarded-proto http", f"x-request-id {uuid.uuid4()}"]
    return "\n".join(lines) + "\n"


def through_envoy(procs: ProcessGroup, idp, envoy_port: int) -> None:
    """Logins through Envoy: the transaction and session cookies it seals (alice's fits one
    cookie, bob's is chunked), and the requests that carry them."""
    echo = start_echo(procs)
    config = filter_config(idp.issuer, authorization_endpoint=None, token_endpoint=None,
                           **FILTER_EXTRAS)
    envoy = start_envoy(procs, config, echo, idp.port, client_secret=CLIENT_SECRET,
                        cookie_keys=KEY_A, port=envoy_port)
    port = envoy.port
    for user, password in (("alice", "wonderland"), ("bob", "builder")):
        browser = Browser(envoy)
        path = "/private/login?return_to=%2Fprivate%2Fapp%3Fx%3D1"
        write("decide", f"{user}-login", headers(port, "GET", path, time.time(), True))
        start = browser.get(path)
        assert start.status_code == 302, start.text
        params = dict(p.split("=", 1) for p in urlsplit(start.headers["Location"]).query
                      .split("&"))
        state = params["state"]
        if user == "alice":
            (FIXTURES / "token-code.json").write_bytes(exchange_for_nonce(idp, params["nonce"]))
        tx_cookie = browser.cookie_header()
        write("open_cookie", f"{user}-transaction", f"{state}\n{tx_cookie}")
        callback = login_at_idp(browser.idp, start.headers["Location"], user=user,
                                password=password)
        callback_path = callback[len(envoy.base):]
        write("decide", f"{user}-callback",
              headers(port, "GET", callback_path, time.time(), True, tx_cookie))
        done = browser.get(callback)
        assert done.status_code == 302, done.text
        session = browser.cookie_header()
        write("open_cookie", f"{user}-session", f"{state}\n{session}")
        now = time.time() + 5
        both = f"theme=dark; {session}; _ga=GA1.1.123"
        write("decide", f"{user}-api", headers(port, "GET", "/private/api/items?page=2", now,
                                               False, both))
        write("decide", f"{user}-page", headers(port, "GET", "/private/app", now, True, session))
        write("decide", f"{user}-session-endpoint",
              headers(port, "GET", "/private/session", now, False, session))
        write("decide", f"{user}-admin", headers(port, "GET", "/private/admin/users", now,
                                                 False, session))
        # Half an hour later: the inactivity window slides (the cookie is re-written); an
        # hour later the access token is due and there is a refresh token.
        write("decide", f"{user}-rewrite", headers(port, "POST", "/private/api/items",
                                                   now + 1800, False, session,
                                                   (("origin", "https://front.example.com"),
                                                    ("content-type", "application/json"))))
        write("decide", f"{user}-refresh", headers(port, "GET", "/private/api/items",
                                                   now + 3590, False, session))
        write("decide", f"{user}-logout", headers(port, "POST", "/private/logout", now, False,
                                                  session, (("origin", f"http://127.0.0.1:{port}"),)))
    write("decide", "foreign-origin", headers(port, "POST", "/private/api", time.time(), False,
                                              None, (("origin", "https://evil.example"),)))
    write("decide", "public", headers(port, "GET", "/index.html", time.time(), True, None,
                                      (("x-user-sub", "forged"),)))
    write("decide", "bypass", headers(port, "GET", "/private/healthz", time.time(), False))


def host_serialized(value) -> bytes:
    """A JSON value as Envoy hands jwt_authn's payload to wasm (src/bearer.rs): strings as bytes,
    numbers as little-endian f64, booleans as one byte, maps and lists as proxy-wasm pairs."""
    import struct

    def pairs(entries):
        out = struct.pack("<I", len(entries))
        for k, v in entries:
            out += struct.pack("<II", len(k), len(v))
        for k, v in entries:
            out += k + b"\0" + v + b"\0"
        return out

    if isinstance(value, bool):
        return bytes([value])
    if isinstance(value, (int, float)):
        return struct.pack("<d", float(value))
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list):
        return pairs([(host_serialized(v), b"") for v in value])
    return pairs([(k.encode(), host_serialized(v)) for k, v in value.items()])


def bearer_seeds() -> None:
    # The payload of BEARER in fuzz_targets/documents.rs, as jwt_authn would have verified it.
    write("documents", "jwt-payload", host_serialized(
        {"sub": "a", "exp": 2000, "g": ["x", 1, True], "o": {"k": "v"}}))


def main() -> None:
    for target in ("open_cookie", "callback_query", "documents", "id_token", "decide"):
        for old in (CORPUS / target).glob("seed-*"):
            old.unlink()
    FIXTURES.mkdir(exist_ok=True)
    keys = Path(tempfile.mkdtemp(prefix="fuzz-seeds-")) / "jwks.json"
    keys.write_text(json.dumps(private_jwks()))
    env = {"IDP_KEY_FILE": keys, "IDP_ID_TOKEN_TTL": ID_TOKEN_TTL}
    try:
        for alg in ("RS256", "PS256", "ES256", "EdDSA"):
            with ProcessGroup() as procs:
                envoy_port = 8000
                idp = start_idp(procs, [DIRECT_REDIRECT, f"http://127.0.0.1:{envoy_port}/private/callback"],
                                client_id=CLIENT_ID, client_secret=CLIENT_SECRET, port=IDP_PORT,
                                env_overrides=dict(env, IDP_ID_TOKEN_ALG=alg))
                direct_login(idp, alg)
                if alg == "RS256":
                    discovery = requests.get(idp.url("/.well-known/openid-configuration"),
                                             timeout=10).content
                    jwks = requests.get(json.loads(discovery)["jwks_uri"], timeout=10).content
                    (FIXTURES / "discovery.json").write_bytes(discovery)
                    (FIXTURES / "jwks.json").write_bytes(jwks)
                    write("documents", "discovery", discovery)
                    write("documents", "jwks", jwks)
                    write("documents", "config", json.dumps(dict(filter_config(
                        idp.issuer, authorization_endpoint=None, token_endpoint=None,
                        **FILTER_EXTRAS), client_secret={"value": CLIENT_SECRET},
                        cookie_keys={"value": KEY_A})))
                    through_envoy(procs, idp, envoy_port)
    finally:
        shutil.rmtree(keys.parent)
    bearer_seeds()
    for folder in sorted(CORPUS.iterdir()):
        print(f"{folder.name}: {len(list(folder.glob('seed-*')))} seeds")


if __name__ == "__main__":
    main()
