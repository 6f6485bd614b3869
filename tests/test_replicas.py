"""Several Envoy replicas sharing their deny list through a real three-member etcd (issue 14, its
logout part): three BFF Envoys (the filter with `store` configured) behind an Envoy load
balancer, the real IdP, and etcd on loopback (tests/harness/etcd.py). A logout on one replica
ends every copy of the cookie on the others within two seconds; the IdP's back-channel logout
(the user ends their session at the IdP) ends it on all three, and bad logout tokens change
nothing; one etcd member down changes nothing; all of them down, requests go on at the same
speed and the logouts made meanwhile reach the store when it is back; a store that answers
garbage kills no VM."""

from __future__ import annotations

import base64
import json
import statistics
import time
import uuid
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from harness import SESSION
from harness.envoy import Browser, Envoy, discovery_only, start_envoy
from harness.etcd import envoy_cluster, start_etcd
from harness.idp import logout_at_idp, start_idp
from harness.lb import SteeredBrowser, api_call, start_lb
from harness.procs import free_port
from harness.upstream import start_echo

REPLICAS = ("a", "b", "c")
STORE_PREFIX = "bff-test/"


@pytest.fixture(scope="module")
def etcd(procs):
    return start_etcd(procs, members=3)


# Lone Envoys (a store answering garbage; etcd with authentication): the IdP knows their callbacks.
GARBAGE_PORT = free_port()
AUTH_PORT = free_port()


@pytest.fixture(scope="module")
def idp_keys(tmp_path_factory) -> Path:
    """The IdP's private keys (it writes them here), to sign logout tokens it would sign."""
    return tmp_path_factory.mktemp("idp-keys") / "jwks.json"


@pytest.fixture(scope="module")
def replicas(procs, etcd, idp_keys):
    lb_port = free_port()
    idp = start_idp(procs, [f"http://127.0.0.1:{lb_port}/private/callback",
                            f"http://127.0.0.1:{GARBAGE_PORT}/private/callback",
                            f"http://127.0.0.1:{AUTH_PORT}/private/callback"],
                    post_logout_redirect_uris=[f"http://127.0.0.1:{lb_port}/"],
                    env_overrides={
                        "IDP_BACKCHANNEL_LOGOUT_URI":
                            f"http://127.0.0.1:{lb_port}/private/backchannel-logout",
                        "IDP_KEY_FILE": str(idp_keys)})
    echo = start_echo(procs)
    config = discovery_only(idp.issuer, trust_forwarded_headers=True,
                            store={"cluster": "etcd", "prefix": STORE_PREFIX, "timeout_ms": 1000})
    bffs: dict[str, Envoy] = {
        name: start_envoy(procs, config, echo, idp.port, name=f"envoy-{name}", edge=False,
                          clusters=[envoy_cluster(etcd)])
        for name in REPLICAS
    }
    lb = start_lb(procs, {name: e.port for name, e in bffs.items()}, port=lb_port)
    return idp, bffs, lb


def signed_in(lb) -> SteeredBrowser:
    b = SteeredBrowser(lb, "a")
    r = b.login()
    assert r.status_code == 302 and SESSION in b.jar, (r.status_code, r.text)
    return b


def deny_keys(etcd) -> dict[str, str]:
    return {k: v for k, v in etcd.get_prefix(STORE_PREFIX).items() if "/deny/" in k}


def logout(b: SteeredBrowser, backend: str) -> str:
    """Logs out through `backend`; the session's id (its logout link's `sid`)."""
    info = b.on(backend).get("/private/session", navigate=False)
    assert info.status_code == 200, info.text
    logout_url = info.json()["logout_url"]
    assert b.get(logout_url).status_code == 302
    return logout_url.split("sid=", 1)[1]


def test_a_logout_on_one_replica_ends_the_cookies_copies_on_the_others_within_2_s(replicas, etcd):
    idp, bffs, lb = replicas
    b = signed_in(lb)
    copy = b.cookie_header()
    for name in REPLICAS:
        assert api_call(lb, copy, name).status_code == 200, name
    sid = logout(b, "a")
    # Within 2 s a whole pass is refused: each replica twice (its two workers each learn it
    # at their next tick, so one refusal says nothing of the other worker).
    started = time.monotonic()
    answers: list = []
    while time.monotonic() - started < 2.0:
        answers = [(name, api_call(lb, copy, name)) for name in REPLICAS for _ in range(2)]
        if all(r.status_code == 401 for _, r in answers):
            break
        time.sleep(0.05)
    for name, r in answers:
        assert r.status_code == 401 and r.json()["error"] == "unauthenticated", (
            f"{name} still accepts a copy after 2 s: {r.text}")
    keys = deny_keys(etcd)
    assert len(keys) == 1, keys
    ((key, value),) = keys.items()
    assert key.endswith(f"/deny/s/{sid}")
    # `<until> s 0 <session id>`: a time and a random id, no token, key or claim.
    until, kind, before, stored = value.split(" ")
    assert (kind, before, stored) == ("s", "0", sid) and int(until) > time.time(), value
    for envoy in bffs.values():
        envoy.assert_vm_healthy()


def refused_everywhere_within(lb, cookie: str, seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if all(api_call(lb, cookie, name).status_code == 401 for name in REPLICAS):
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"a copy of the cookie still works after {seconds} s")


def test_one_etcd_member_down_changes_nothing(replicas, etcd):
    _, bffs, lb = replicas
    leader = etcd.leader()
    follower = next(i for i in range(3) if i != leader)
    etcd.kill(follower)
    try:
        b = signed_in(lb)
        copy = b.cookie_header()
        logout(b, "b")
        refused_everywhere_within(lb, copy, 2.0)
    finally:
        etcd.restart(follower)
        etcd.wait_healthy()
    # The leader: an election first (its calls time out after store.timeout_ms, 1 s here).
    etcd.kill(etcd.leader())
    try:
        b = signed_in(lb)
        copy = b.cookie_header()
        logout(b, "c")
        refused_everywhere_within(lb, copy, 5.0)
    finally:
        for i, m in enumerate(etcd.members):
            if not m.running():
                etcd.restart(i)
        etcd.wait_healthy()
    for envoy in bffs.values():
        envoy.assert_vm_healthy()


def timed_calls(lb, cookie: str, n: int = 30) -> list[float]:
    out = []
    for i in range(n):
        r = api_call(lb, cookie, REPLICAS[i % 3])
        assert r.status_code == 200, r.text
        out.append(r.elapsed.total_seconds())
    return out


def test_without_etcd_requests_go_on_at_the_same_speed_and_logouts_wait_for_it(replicas, etcd):
    _, bffs, lb = replicas
    b = signed_in(lb)
    other = signed_in(lb)
    before = statistics.median(timed_calls(lb, other.cookie_header()))
    etcd.kill_all()
    try:
        during = statistics.median(timed_calls(lb, other.cookie_header()))
        # The same order of speed (loopback, ~ms): no request waits for the store.
        assert during < max(0.05, 3 * before), (before, during)
        copy = b.cookie_header()
        sid = logout(b, "c")
        # Replica c refuses the copy at once; the others cannot know yet.
        assert api_call(lb, copy, "c").status_code == 401
        failures = sum(e.counters().get("store_failures", 0) for e in bffs.values())
        time.sleep(1.5)
        assert sum(e.counters()["store_failures"] for e in bffs.values()) > failures
    finally:
        etcd.restart_all()
        etcd.wait_healthy()
    # The pending entry is written, and every replica refuses the copy.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
            api_call(lb, copy, name).status_code != 401 for name in REPLICAS):
        time.sleep(0.2)
    for name in REPLICAS:
        assert api_call(lb, copy, name).status_code == 401, name
    assert any(k.endswith(f"/deny/s/{sid}") for k in deny_keys(etcd)), "written after the outage"
    for envoy in bffs.values():
        assert envoy.alive()
        envoy.assert_vm_healthy()


def test_a_store_answering_garbage_kills_no_vm(procs, replicas):
    """The filter's store cluster pointed at the echo upstream: every answer is JSON that is not
    etcd's. Sessions go on; failures are counted."""
    idp, bffs, lb = replicas
    echo = start_echo(procs)
    config = discovery_only(idp.issuer, store={"cluster": "etcd", "prefix": STORE_PREFIX})
    envoy = start_envoy(procs, config, echo, idp.port, name="envoy-garbage-store",
                        port=GARBAGE_PORT,
                        clusters=[{"name": "etcd", "type": "STATIC", "connect_timeout": "1s",
                                   "load_assignment": {"cluster_name": "etcd", "endpoints": [
                                       {"lb_endpoints": [{"endpoint": {"address": {
                                           "socket_address": {"address": "127.0.0.1",
                                                              "port_value": echo}}}}]}]}}])
    b = Browser(envoy)
    b.login()
    time.sleep(2.5)
    assert b.get("/private/api/me", navigate=False).status_code == 200
    assert envoy.counters()["store_failures"] >= 2
    envoy.assert_vm_healthy()


def test_with_etcd_authentication_the_filter_signs_in_and_a_wrong_password_is_named(procs, replicas):
    """etcd with its own authentication on (a user with read-write on the prefix): the filter
    signs in with store.username and the password from BFF_STORE_PASSWORD, and a logout's entry
    is written; with a wrong password the log names the setting (not the password) and sessions
    go on."""
    idp, _, _ = replicas
    store = start_etcd(procs, members=1)
    try:
        store.enable_auth("bff", "bff-store-pw", STORE_PREFIX)
        echo = start_echo(procs)
        config = discovery_only(idp.issuer, store={"cluster": "etcd", "prefix": STORE_PREFIX,
                                                   "username": "bff"})

        def start(password: str) -> Envoy:
            return start_envoy(procs, config, echo, idp.port, name="envoy-etcd-auth",
                               port=AUTH_PORT, clusters=[envoy_cluster(store)],
                               extra_env={"BFF_STORE_PASSWORD": password})

        envoy = start("bff-store-pw")
        b = Browser(envoy)
        assert b.login().status_code == 302
        logout_url = b.get("/private/session", navigate=False).json()["logout_url"]
        assert b.get(logout_url).status_code == 302
        sid = logout_url.split("sid=", 1)[1]
        deadline = time.monotonic() + 3
        while not any(k.endswith(f"/deny/s/{sid}") for k in store.get_prefix(STORE_PREFIX)):
            assert time.monotonic() < deadline, "the logout's entry never reached etcd"
            time.sleep(0.1)
        assert envoy.counters().get("store_failures", 0) == 0
        envoy.assert_vm_healthy()
        envoy.process.stop()

        envoy = start("not-the-password-42")
        b = Browser(envoy)
        assert b.login().status_code == 302
        assert b.get("/private/api/me", navigate=False).status_code == 200
        deadline = time.monotonic() + 5
        while "wrong store.username or password" not in envoy.log():
            assert time.monotonic() < deadline, envoy.log()[-2000:]
            time.sleep(0.1)
        assert "not-the-password-42" not in envoy.log()
        assert envoy.counters()["store_failures"] >= 1
        envoy.assert_vm_healthy()
    finally:
        store.stop()


# --- back-channel logout -----------------------------------------------------------------------

def test_ending_the_idp_session_ends_the_session_on_every_replica(replicas):
    idp, bffs, lb = replicas
    b = signed_in(lb)
    copy = b.cookie_header()
    for name in REPLICAS:
        assert api_call(lb, copy, name).status_code == 200
    posted = idp.stats()["backchannel_ok"]
    # The user signs out at the IdP itself (another app's logout, say): not through the BFF.
    logout_at_idp(b.idp, idp.discovery()["end_session_endpoint"])
    assert idp.stats()["backchannel_ok"] == posted + 1, "the BFF answered the logout token 200"
    # Recorded in the store before the 200: every replica refuses it from its next round.
    refused_everywhere_within(lb, copy, 2.0)
    other = signed_in(lb)
    assert api_call(lb, other.cookie_header(), "b").status_code == 200, "a new login is fine"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_as_idp(idp_keys: Path, claims: dict, alg: str = "RS256") -> str:
    """A token signed with the IdP's own RSA key (from IDP_KEY_FILE), as it signs logout tokens."""
    jwk = next(k for k in json.loads(idp_keys.read_text())["keys"]
               if k["kty"] == "RSA" and k.get("alg", "RS256") == "RS256")
    n = lambda f: int.from_bytes(base64.urlsafe_b64decode(jwk[f] + "=="), "big")  # noqa: E731
    key = rsa.RSAPrivateNumbers(n("p"), n("q"), n("d"), n("dp"), n("dq"), n("qi"),
                                rsa.RSAPublicNumbers(n("e"), n("n"))).private_key()
    header = b64url(json.dumps({"alg": alg, "kid": jwk["kid"], "typ": "logout+jwt"}).encode())
    payload = b64url(json.dumps(claims).encode())
    if alg == "none":
        return f"{header}.{payload}."
    signature = key.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{payload}.{b64url(signature)}"


def post_logout_token(lb, token: str, backend: str = "a") -> requests.Response:
    return requests.post(lb.url("/private/backchannel-logout"), data={"logout_token": token},
                         headers={"x-backend": backend}, timeout=20)


def test_bad_logout_tokens_get_400_and_change_nothing(replicas, idp_keys):
    idp, bffs, lb = replicas
    b = signed_in(lb)
    info = b.on("a").get("/private/session", navigate=False).json()
    sub = info["sub"]
    now = int(time.time())
    good = {"iss": idp.issuer, "aud": "bff", "iat": now, "exp": now + 120,
            "jti": str(uuid.uuid4()), "sub": sub,
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}
    cases = {
        "unsigned": sign_as_idp(idp_keys, good, alg="none"),
        "wrong audience": sign_as_idp(idp_keys, dict(good, aud="someone-else",
                                                     jti=str(uuid.uuid4()))),
        "carries a nonce": sign_as_idp(idp_keys, dict(good, nonce="n", jti=str(uuid.uuid4()))),
        "no event": sign_as_idp(idp_keys, {k: v for k, v in good.items() if k != "events"}
                                | {"jti": str(uuid.uuid4())}),
    }
    for name, token in cases.items():
        r = post_logout_token(lb, token, "b")
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert r.json()["error"] == "invalid_request", name
    # A valid one, once: 200; again (on another replica): a replay, 400.
    token = sign_as_idp(idp_keys, dict(good, sub="nobody-we-know"))
    assert post_logout_token(lb, token, "a").status_code == 200
    replay = post_logout_token(lb, token, "c")
    assert replay.status_code == 400 and "already received" in replay.text, replay.text
    time.sleep(1.5)
    for name in REPLICAS:
        assert api_call(lb, b.cookie_header(), name).status_code == 200, name
    refused = sum(e.counters()["backchannel_refused"] for e in bffs.values())
    assert refused == len(cases) + 1
    assert requests.get(lb.url("/private/backchannel-logout"), timeout=10).status_code == 405
