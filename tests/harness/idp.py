"""The OpenID Provider (tests/idp/server.mjs) and a scripted user who signs in and out there.

The user is a `requests.Session` (its cookie jar holds the IdP's session and interaction
cookies). Every hop is made with allow_redirects=False so nothing outside the IdP is ever
requested by these helpers: the caller decides what to do with the URL the IdP sends back.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import quote_plus, urlencode, urljoin, urlsplit

import requests

from . import CLIENT_ID, CLIENT_SECRET
from .procs import REPO, Process, ProcessGroup, free_port

IDP_SERVER = REPO / "tests" / "idp" / "server.mjs"
DEFAULT_USER = "alice"
DEFAULT_PASSWORD = "wonderland"
# The second user, whose ID token (~8 KB payload: 250 groups, long profile and address) makes
# a session too big for one cookie.
BIG_USER = "bob"
BIG_PASSWORD = "builder"


@dataclass
class Provider:
    """An OpenID Provider the tests started (this IdP, or harness.forger's)."""
    issuer: str
    port: int
    client_secret: str
    process: Process = field(repr=False)

    @staticmethod
    def issuer_of(proc: Process) -> str:
        """The issuer in the ready line, `<NAME> READY <issuer>`."""
        return proc.ready_line.split(" ", 2)[2].strip()

    def url(self, path: str) -> str:
        return urljoin(self.issuer + "/", path.lstrip("/"))

    def discovery(self) -> dict:
        r = requests.get(self.url("/.well-known/openid-configuration"), timeout=10)
        r.raise_for_status()
        return r.json()


@dataclass
class Idp(Provider):
    client_id: str = CLIENT_ID

    def stats(self) -> dict:
        """Counters from the test hook GET /test/stats (token_requests = code exchanges,
        refresh_requests = refresh grants, revocations, token_endpoint_calls = all)."""
        r = requests.get(self.url("/test/stats"), timeout=10)
        r.raise_for_status()
        return r.json()

    def jwks(self) -> dict:
        """The published JWKS (public keys), from the jwks_uri of the discovery document."""
        r = requests.get(self.discovery()["jwks_uri"], timeout=10)
        r.raise_for_status()
        return r.json()

    def hold_token_requests(self, count: int = 1, ms: int = 10_000) -> None:
        """Test hook: the next `count` token-endpoint POSTs wait up to `ms` before the provider
        sees them; one whose client went away meanwhile is dropped unseen
        (stats()["token_requests_dropped"])."""
        r = requests.post(self.url(f"/test/hold-token-requests?count={count}&ms={ms}"), timeout=10)
        r.raise_for_status()

    def revoke_all(self) -> int:
        """Test hook POST /test/revoke-all: every grant so far loses its codes, access and
        refresh tokens (the next refresh is invalid_grant). Returns how many grants."""
        r = requests.post(self.url("/test/revoke-all"), timeout=10)
        r.raise_for_status()
        return r.json()["revoked_grants"]


def start_idp(procs: ProcessGroup, redirect_uris, post_logout_redirect_uris=(),
              client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET,
              env_overrides: dict | None = None, port: int | None = None,
              timeout: float = 30.0) -> Idp:
    """Start the IdP with one client registered for `redirect_uris`; returns once it listens.

    `env_overrides` sets any other IDP_* variable (IDP_ID_TOKEN_ALG, IDP_ACCESS_TOKEN_TTL,
    IDP_KEY_FILE, IDP_KEY_ID_PREFIX, ...). Pass `port` to restart an IdP where it was.
    """
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH; the IdP needs Node.js (run scripts/setup)")
    if not (REPO / "node_modules" / "oidc-provider").is_dir():
        raise RuntimeError("node_modules/oidc-provider is missing; run scripts/setup")
    if isinstance(redirect_uris, str):
        redirect_uris = [redirect_uris]
    if isinstance(post_logout_redirect_uris, str):
        post_logout_redirect_uris = [post_logout_redirect_uris]
    port = port or free_port()
    env = {
        "IDP_PORT": port,
        "IDP_CLIENT_ID": client_id,
        "IDP_CLIENT_SECRET": client_secret,
        "IDP_REDIRECT_URIS": ",".join(redirect_uris),
        "IDP_POST_LOGOUT_REDIRECT_URIS": ",".join(post_logout_redirect_uris),
        "NO_COLOR": "1",
    }
    env.update(env_overrides or {})
    proc = procs.start("idp", [node, IDP_SERVER], env=env, ready_line_prefix="IDP READY",
                       timeout=timeout)
    return Idp(issuer=Idp.issuer_of(proc), port=port, client_id=client_id,
               client_secret=client_secret, process=proc)


# --- the client side of the protocol, for tests that talk to the IdP directly -------------

def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge), RFC 7636 §4.1-4.2."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest())
    return verifier, challenge.rstrip(b"=").decode("ascii")


def basic_auth(client_id: str, client_secret: str) -> str:
    """Authorization header value for client_secret_basic, RFC 6749 §2.3.1: id and secret are
    each application/x-www-form-urlencoded, joined with ':', then standard padded base64."""
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def authorization_url(idp: Idp, redirect_uri: str, *, state: str, nonce: str,
                      code_challenge: str, scope: str = "openid profile email offline_access",
                      **extra) -> str:
    params = {
        "response_type": "code",
        "client_id": idp.client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "nonce": nonce,
        "code_challenge": code_challenge,
        "code_challenge_method": "S256",
        **extra,
    }
    return idp.discovery()["authorization_endpoint"] + "?" + urlencode(params)


def jwt_parts(token: str) -> tuple[dict, dict]:
    """(header, payload) of a compact JWS, NOT verified: for asserting on claims in tests."""
    def part(segment: str) -> dict:
        return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    header, payload, _sig = token.split(".")
    return part(header), part(payload)


# --- the scripted user ---------------------------------------------------------------------

class IdpFlowError(AssertionError):
    """The IdP answered something a user could not continue from."""

    def __init__(self, message: str, response: requests.Response | None = None):
        if response is not None:
            message += f"\n{response.request.method} {response.url} -> {response.status_code}\n"
            message += response.text[:2000]
        super().__init__(message)
        self.response = response


class LoginRejected(IdpFlowError):
    """The IdP showed its login form again with "Invalid credentials"."""

    def __init__(self, response: requests.Response):
        super().__init__("the IdP rejected the credentials", response)
        self.page = response.text


@dataclass
class _Form:
    action: str
    method: str
    fields: dict = field(default_factory=dict)    # hidden/text/password inputs
    buttons: dict = field(default_factory=dict)   # named submit buttons: name -> value


class _FormParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.forms: list[_Form] = []
        self._current: _Form | None = None
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self._current = _Form(action=a.get("action", ""), method=a.get("method", "get").lower())
            self.forms.append(self._current)
        elif tag == "input" and self._current is not None and a.get("name"):
            if a.get("type", "text").lower() not in ("submit", "button", "checkbox", "radio"):
                self._current.fields[a["name"]] = a.get("value", "")
        elif tag == "button" and self._current is not None and a.get("name"):
            self._current.buttons[a["name"]] = a.get("value", "")
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])

    def handle_endtag(self, tag):
        if tag == "form":
            self._current = None


def _parse(html: str) -> _FormParser:
    parser = _FormParser()
    parser.feed(html)
    return parser


def _origin(url: str) -> tuple:
    u = urlsplit(url)
    return (u.scheme, u.hostname, u.port or {"http": 80, "https": 443}.get(u.scheme))


def _follow(http: requests.Session, response: requests.Response, idp_origin: tuple,
            max_hops: int = 20):
    """Follow redirects while they stay at the IdP.

    Returns ("left", url, response) when a Location points outside the IdP (not requested), or
    ("page", response.url, response) when the IdP answers with a page.
    """
    for _ in range(max_hops):
        if response.is_redirect:
            location = urljoin(response.url, response.headers["Location"])
            if _origin(location) != idp_origin:
                return "left", location, response
            response = http.get(location, allow_redirects=False, timeout=10)
            continue
        return "page", response.url, response
    raise IdpFlowError(f"more than {max_hops} redirects at the IdP", response)


def _login_page(http: requests.Session, authorize_url: str):
    idp_origin = _origin(authorize_url)
    first = http.get(authorize_url, allow_redirects=False, timeout=10)
    kind, url, response = _follow(http, first, idp_origin)
    return idp_origin, kind, url, response


def _login_form(response: requests.Response) -> _Form:
    forms = [f for f in _parse(response.text).forms if "password" in f.fields]
    if response.status_code != 200 or not forms:
        raise IdpFlowError("expected the IdP's login form", response)
    return forms[0]


def _submit_login(http, idp_origin, response, user, password):
    form = _login_form(response)
    data = dict(form.fields, login=user, password=password)
    posted = http.post(urljoin(response.url, form.action), data=data, allow_redirects=False,
                       timeout=10)
    if posted.status_code == 200 and "Invalid credentials" in posted.text:
        raise LoginRejected(posted)
    kind, url, final = _follow(http, posted, idp_origin)
    if kind != "left":
        raise IdpFlowError("the IdP did not send the user back to the client", final)
    return url


def login_at_idp(http: requests.Session, authorize_url: str, user: str = DEFAULT_USER,
                 password: str = DEFAULT_PASSWORD) -> str:
    """Walk the authorize URL through the IdP's login page and back.

    Returns the URL the IdP redirects to outside itself (normally the client's redirect_uri
    with code, state and iss), without requesting it. If the IdP already has a session for
    this cookie jar, no form is shown and the redirect comes straight back. Raises
    LoginRejected for wrong credentials, IdpFlowError for anything else unexpected.
    """
    idp_origin, kind, url, response = _login_page(http, authorize_url)
    if kind == "left":
        return url
    return _submit_login(http, idp_origin, response, user, password)


def login_at_idp_expect_error(http: requests.Session, authorize_url: str,
                              user: str = DEFAULT_USER, password: str = "not-the-password") -> str:
    """Submit bad credentials; return the page the IdP shows (must say "Invalid credentials")."""
    try:
        url = login_at_idp(http, authorize_url, user=user, password=password)
    except LoginRejected as rejected:
        return rejected.page
    raise IdpFlowError(f"the IdP accepted {user!r} with a wrong password and sent {url}")


def abort_login_at_idp(http: requests.Session, authorize_url: str) -> str:
    """Press "Cancel" on the login page; returns the redirect back (error=access_denied)."""
    idp_origin, kind, url, response = _login_page(http, authorize_url)
    if kind == "left":
        raise IdpFlowError(f"no login page: the IdP sent the user straight back to {url}")
    abort = [link for link in _parse(response.text).links if link.endswith("/abort")]
    if not abort:
        raise IdpFlowError("no cancel link on the login page", response)
    first = http.get(urljoin(response.url, abort[0]), allow_redirects=False, timeout=10)
    kind, url, final = _follow(http, first, idp_origin)
    if kind != "left":
        raise IdpFlowError("the IdP did not send the user back after cancel", final)
    return url


def logout_at_idp(http: requests.Session, end_session_url: str, confirm: bool = True) -> str:
    """Follow an RP-initiated logout URL and answer the IdP's "Sign out?" form.

    Returns where the IdP finally sends the user: the post_logout_redirect_uri (with state)
    when one was given and accepted, else the URL of the IdP's own "Signed out" page.
    """
    idp_origin = _origin(end_session_url)
    first = http.get(end_session_url, allow_redirects=False, timeout=10)
    kind, url, response = _follow(http, first, idp_origin)
    if kind == "left":
        return url
    forms = [f for f in _parse(response.text).forms if f.method == "post"]
    if response.status_code != 200 or not forms:
        raise IdpFlowError("expected the IdP's sign-out form", response)
    form = forms[0]
    data = dict(form.fields)
    if confirm:
        data.update(form.buttons)  # logout=yes
    posted = http.post(urljoin(response.url, form.action), data=data, allow_redirects=False,
                       timeout=10)
    kind, url, final = _follow(http, posted, idp_origin)
    if kind == "page" and final.status_code != 200:
        raise IdpFlowError("sign-out failed at the IdP", final)
    return url
