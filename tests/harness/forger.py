"""The forging OpenID Provider (tests/upstream/forging_idp.py): ID tokens broken in exactly one
way, picked per login. Configure the filter with `filter_config(forger.issuer)` (its endpoints are
/auth and /token, the defaults there) and cluster `idp` on `forger.port`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from urllib.parse import quote

import requests

from . import CLIENT_SECRET
from .idp import Provider
from .procs import REPO, ProcessGroup, free_port

FORGER_SERVER = REPO / "tests" / "upstream" / "forging_idp.py"

# Every mode forging_idp.py knows; its docstring says what each token looks like.
MODES = (
    "good", "good-es256", "alg-none", "hs256-public-key", "wrong-kid", "no-kid",
    "bad-signature", "ec-kid-rs256", "wrong-iss", "wrong-aud", "multi-aud-no-azp", "wrong-azp",
    "expired", "future-iat", "wrong-nonce", "no-nonce", "ps256-not-announced",
)
# The two that a correct filter accepts as they are.
VALID_MODES = ("good", "good-es256")
# Valid signatures whose acceptance is the filter's policy, not a protocol rule: `no-kid`
# (one RSA key would fit) and `ps256-not-announced` (rsa-1 has no "alg", so PS256 is allowed
# by the key, but discovery does not announce it).
POLICY_MODES = ("no-kid", "ps256-not-announced")


@dataclass
class Forger(Provider):
    def jwks(self) -> dict:
        r = requests.get(self.url("/jwks"), timeout=10)
        r.raise_for_status()
        return r.json()

    def counts(self) -> dict:
        """{"token_calls", "jwks_calls", "discovery_calls"} so far (failed requests too)."""
        r = requests.get(self.url("/test/token-calls"), timeout=10)
        r.raise_for_status()
        return r.json()

    def token_calls(self) -> int:
        return self.counts()["token_calls"]


def start_forger(procs: ProcessGroup, port: int | None = None,
                 client_secret: str = CLIENT_SECRET, timeout: float = 15.0) -> Forger:
    """Start the forger on 127.0.0.1 (issuer http://127.0.0.1:<port>); returns once listening.
    `client_secret` is what POST /token expects in client_secret_basic."""
    port = port or free_port()
    proc = procs.start("forger", [sys.executable, FORGER_SERVER, "--port", port,
                                  "--client-secret", client_secret],
                       ready_line_prefix="FORGER READY", timeout=timeout)
    return Forger(issuer=Forger.issuer_of(proc), port=port, client_secret=client_secret,
                  process=proc)


def forged_login(browser, forger: Forger, mode: str,
                 path: str = "/private/login") -> requests.Response:
    """A login through Envoy whose ID token is forged as `mode`: the app's redirect to the
    forger's /auth gets `&forge=<mode>`, the forger sends the browser straight back, and the
    callback is requested. Returns the callback's response (`browser` is harness.envoy.Browser)."""
    start = browser.get(path)
    assert start.status_code == 302, (start.status_code, start.text)
    location = start.headers["Location"]
    assert location.startswith(forger.url("/auth") + "?"), location
    back = requests.get(f"{location}&forge={quote(mode, safe='')}", allow_redirects=False,
                        timeout=10)
    assert back.status_code == 302, (back.status_code, back.text)
    return browser.get(back.headers["Location"])
