"""The attack suite: what an attacker or a broken IdP can throw at the filter, each answered
with the right 4xx/401/503 or a login, never a token and never a dead VM (the next request is
served and Envoy logs no wasm failure). Many cases live beside the feature they attack
(test_faults.py: cookies, callbacks, the token endpoint; test_lifecycle.py: forged ID tokens;
test_flow.py: return_to; test_spa.py: CSRF, logout, forged identity headers); these are the rest."""

import time

import pytest
import requests

from harness import SESSION
from harness.envoy import Browser, discovery_only, query_of, start_envoy
from harness.idp import BIG_PASSWORD, BIG_USER
from harness.stack import start_stack
from harness.upstream import start_echo, start_faulty_idp

API = {"Accept": "application/json", "X-CSRF": "1", "Sec-Fetch-Mode": "cors"}


@pytest.fixture(scope="module")
def stack(procs):
    stack = start_stack(procs, discovery_only, name="envoy-attacks")
    return stack.idp, stack.envoy


def still_serving(envoy, browser=None):
    r = requests.get(envoy.url("/private/ping"), headers=API, timeout=10)
    assert r.status_code == 401
    if browser is not None:
        assert browser.get("/private/ping", navigate=False).status_code == 200
    envoy.assert_vm_healthy()


def test_chunks_swapped_between_two_sessions_are_no_session(stack):
    idp, envoy = stack
    one, two = Browser(envoy), Browser(envoy)
    one.login(user=BIG_USER, password=BIG_PASSWORD)
    two.login(user=BIG_USER, password=BIG_PASSWORD)
    assert f"{SESSION}.1" in one.jar and f"{SESSION}.1" in two.jar
    mixed = dict(one.jar)
    mixed[f"{SESSION}.1"] = two.jar[f"{SESSION}.1"]
    header = "; ".join(f"{k}={v}" for k, v in mixed.items())
    r = requests.get(envoy.url("/private/api"), headers={**API, "Cookie": header}, timeout=10)
    assert r.status_code == 401
    # Chunks in the wrong order, and one chunk twice.
    names = sorted(n for n in one.jar if n.startswith(SESSION))
    reordered = dict(one.jar)
    reordered[names[1]], reordered[names[2]] = one.jar[names[2]], one.jar[names[1]]
    header = "; ".join(f"{k}={v}" for k, v in reordered.items())
    assert requests.get(envoy.url("/private/api"), headers={**API, "Cookie": header},
                        timeout=10).status_code == 401
    still_serving(envoy, one)


def test_an_oversized_cookie_header_is_refused_cleanly(stack):
    idp, envoy = stack
    b = Browser(envoy)
    b.login()
    for size in (16_000, 50_000, 200_000):
        junk = "; ".join(f"junk{i}={'x' * 900}" for i in range(size // 910))
        try:
            r = requests.get(envoy.url("/private/api"), timeout=10,
                             headers={**API, "Cookie": f"{b.cookie_header()}; {junk}"})
            # Envoy's header limit (60 KiB by default) answers 431 before the filter runs;
            # below it the filter serves the request and strips the junk from nothing it owns.
            assert r.status_code in (200, 431), (size, r.status_code)
        except requests.ConnectionError:
            pass  # Envoy may also reset a connection whose headers are far too large
    still_serving(envoy, b)


def test_a_huge_or_broken_callback_query_is_refused(stack):
    idp, envoy = stack
    b = Browser(envoy)
    state = query_of(b.get("/private/login").headers["Location"])["state"]
    for query in [f"code={'A' * 20000}&state={state}", f"code=%0d%0aSet-Cookie:%20x=y&state={state}",
                  "code=a&state=" + "%ff" * 100, "&&&=&=="]:
        r = b.get(f"/private/callback?{query}")
        assert r.status_code in (400, 401, 414, 431, 502), (query[:40], r.status_code)
        assert "set-cookie: x=y" not in {k.lower() + ": " + v for k, v in r.headers.items()}
    still_serving(envoy)


def test_logout_never_redirects_where_the_request_asks(stack):
    idp, envoy = stack
    b = Browser(envoy)
    b.login()
    link = b.get("/private/session", navigate=False).json()["logout_url"]
    r = b.get(link + "&post_logout_redirect_uri=https%3A%2F%2Fevil.example%2F")
    assert r.status_code == 302
    assert query_of(r.headers["Location"])["post_logout_redirect_uri"] == envoy.url("/")
    assert "evil.example" not in r.headers["Location"]


# --- an IdP whose discovery misbehaves ---------------------------------------------------------

@pytest.fixture(scope="module")
def bad_discovery(procs):
    port = start_faulty_idp(procs, name="faulty-discovery")
    issuer = f"http://127.0.0.1:{port}"
    envoy = start_envoy(procs, discovery_only(issuer, idp_timeout_ms=1000), start_echo(procs), port,
                        name="envoy-bad-discovery")
    return envoy, issuer


@pytest.mark.parametrize("mode", ["500", "garbage", "huge", "redirect", "wrong-issuer", "slow"])
def test_broken_discovery_gives_503_and_the_vm_survives(bad_discovery, mode):
    envoy, issuer = bad_discovery
    requests.post(f"{issuer}/discovery-mode", data=mode, timeout=5)
    time.sleep(2.1)  # let the previous mode's retry pause pass
    t0 = time.monotonic()
    r = requests.get(envoy.url("/private/login"), headers={"Sec-Fetch-Mode": "navigate"},
                     allow_redirects=False, timeout=20)
    assert r.status_code == 503, (mode, r.status_code, r.text)
    assert r.headers["Retry-After"] == "5"
    assert time.monotonic() - t0 < 8, "bounded wait"
    still_serving(envoy)


def test_discovery_that_comes_back_is_used(bad_discovery):
    envoy, issuer = bad_discovery
    requests.post(f"{issuer}/discovery-mode", data="ok", timeout=5)
    deadline = time.monotonic() + 10
    while True:
        r = requests.get(envoy.url("/private/login"), headers={"Sec-Fetch-Mode": "navigate"},
                         allow_redirects=False, timeout=20)
        if r.status_code == 302 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.status_code == 302 and r.headers["Location"].startswith(issuer + "/auth?")
    still_serving(envoy)
