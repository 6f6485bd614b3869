"""One refresh per session across replicas, through a real three-member etcd (issue 14, its
refresh part): three BFF Envoys (the filter with `store` configured) behind an Envoy load
balancer, the real IdP rotating refresh tokens (access tokens live 65 s: with the default 60 s
leeway a session falls due 5 s after its login or refresh).

20 parallel calls of one due session spread over the three Envoys cause exactly one grant at
the IdP and all succeed; the Envoy that won the claim is killed while its grant is held at the
IdP (and dropped there, unseen, when its client goes away), and the session still refreshes
exactly once, by another Envoy after the claim's lease ran out; with every etcd member down a
due session still refreshes (each process's claim alone)."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from harness import SESSION
from harness.envoy import Envoy, deleted, discovery_only, renewed_cookie, start_envoy
from harness.etcd import envoy_cluster, start_etcd
from harness.idp import start_idp
from harness.lb import SteeredBrowser, api_call, start_lb, wait_until_due
from harness.procs import free_port
from harness.upstream import start_echo

REPLICAS = ("a", "b", "c")
# A claim's lease is idp_timeout + 2 x store timeout + 1 s: 6 s here.
IDP_TIMEOUT_MS = 4000
STORE_TIMEOUT_MS = 500


@pytest.fixture(scope="module")
def etcd(procs):
    return start_etcd(procs, members=3)


@pytest.fixture(scope="module")
def deployment(procs, etcd):
    lb_port = free_port()
    idp = start_idp(procs, [f"http://127.0.0.1:{lb_port}/private/callback"],
                    env_overrides={"IDP_ACCESS_TOKEN_TTL": "65"})
    echo = start_echo(procs)
    config = discovery_only(idp.issuer, trust_forwarded_headers=True,
                            idp_timeout_ms=IDP_TIMEOUT_MS,
                            store={"cluster": "etcd", "prefix": "bff-refresh/",
                                   "timeout_ms": STORE_TIMEOUT_MS})

    def start(name: str, port: int | None = None) -> Envoy:
        return start_envoy(procs, config, echo, idp.port, name=f"envoy-{name}", edge=False,
                           clusters=[envoy_cluster(etcd)], port=port)

    bffs = {name: start(name) for name in REPLICAS}
    lb = start_lb(procs, {name: e.port for name, e in bffs.items()}, port=lb_port)
    return idp, bffs, lb, start


def due_session(lb) -> str:
    """A fresh login's Cookie header, once its access token is due."""
    b = SteeredBrowser(lb, "a")
    r = b.login()
    assert r.status_code == 302 and SESSION in b.jar, (r.status_code, r.text)
    wait_until_due(b)
    return b.cookie_header()


def burst(lb, cookie: str, backends: list[str]) -> list[requests.Response | Exception]:
    """One call per entry of `backends`, all released at once; answers in that order."""
    barrier = threading.Barrier(len(backends))
    answers: list = [None] * len(backends)

    def call(i: int) -> None:
        barrier.wait()
        try:
            answers[i] = api_call(lb, cookie, backends[i])
        except requests.RequestException as e:
            answers[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(backends))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    return answers


def refreshes(idp) -> int:
    return idp.stats()["refresh_requests"]


def assert_all_healthy(bffs: dict[str, Envoy]) -> None:
    for name, envoy in bffs.items():
        assert envoy.alive(), f"{name} died:\n{envoy.log()[-3000:]}"
        envoy.assert_vm_healthy()


def test_twenty_parallel_calls_of_a_due_session_over_three_replicas_cause_one_refresh(deployment):
    idp, bffs, lb, _ = deployment
    cookie = due_session(lb)
    before = refreshes(idp)
    answers = burst(lb, cookie, [REPLICAS[i % 3] for i in range(20)])
    assert [getattr(r, "status_code", r) for r in answers] == [200] * 20
    assert refreshes(idp) - before == 1, "exactly one grant for three replicas"
    assert not any(deleted(r) for r in answers)
    tokens = {r.json()["headers"]["authorization"] for r in answers}
    assert len(tokens) == 1, "every call went on with the one renewed token"
    renewed = {renewed_cookie(r) for r in answers} - {None}
    assert renewed, "the renewed session reaches the browser"
    for value in renewed:
        for name in REPLICAS:
            r = api_call(lb, f"{SESSION}={value}", name)
            assert r.status_code == 200 and r.json()["headers"]["authorization"] in tokens
    ok = sum(e.counters().get("refreshes_ok", 0) for e in bffs.values())
    assert ok == 1, ok
    assert refreshes(idp) - before == 1, "no grant after the burst"
    assert_all_healthy(bffs)


def in_flight_to_idp(envoy: Envoy) -> int:
    return envoy.stats("cluster.idp.upstream_rq_active").get("cluster.idp.upstream_rq_active", 0)


def test_the_replica_that_won_the_claim_dies_mid_refresh_and_another_refreshes_once(deployment):
    idp, bffs, lb, start = deployment
    cookie = due_session(lb)
    before = refreshes(idp)
    dropped = idp.stats()["token_requests_dropped"]
    idp.hold_token_requests(count=1, ms=30_000)
    backends = [REPLICAS[i % 3] for i in range(6)]
    answers: list = []
    caller = threading.Thread(target=lambda: answers.extend(burst(lb, cookie, backends)))
    caller.start()
    # The winner's grant is held at the IdP: find it by its call in flight, and kill it.
    winner = None
    deadline = time.monotonic() + IDP_TIMEOUT_MS / 1000 - 1
    while winner is None and time.monotonic() < deadline:
        winner = next((n for n, e in bffs.items() if in_flight_to_idp(e)), None)
        time.sleep(0.05)
    assert winner is not None, "no replica sent the grant"
    bffs[winner].process.kill()
    caller.join(60)
    assert not caller.is_alive()
    survivors = [n for n in REPLICAS if n != winner]
    for backend, r in zip(backends, answers):
        if backend in survivors:
            assert getattr(r, "status_code", r) == 200, (backend, getattr(r, "text", r))
            assert not deleted(r)
    stats = idp.stats()
    assert stats["token_requests_dropped"] - dropped == 1, "the dead replica's grant never ran"
    assert stats["refresh_requests"] - before == 1, "refreshed once, by a survivor"
    renewed = {renewed_cookie(r) for b, r in zip(backends, answers) if b in survivors} - {None}
    assert renewed, "the survivors' answers carry the renewed session"
    for value in renewed:
        for name in survivors:
            assert api_call(lb, f"{SESSION}={value}", name).status_code == 200
    assert refreshes(idp) - before == 1
    # The dead replica comes back where it was, for the next test.
    bffs[winner] = start(winner, port=bffs[winner].port)
    assert_all_healthy(bffs)


def test_with_every_store_member_down_a_due_session_still_refreshes(deployment, etcd):
    idp, bffs, lb, _ = deployment
    cookie = due_session(lb)
    failures = bffs["b"].counters().get("store_failures", 0)
    before = refreshes(idp)
    etcd.kill_all()
    try:
        r = api_call(lb, cookie, "b")
        assert r.status_code == 200, r.text
        assert renewed_cookie(r), "refreshed by the process's claim alone"
        assert refreshes(idp) - before == 1
        assert bffs["b"].counters().get("store_failures", 0) > failures
    finally:
        etcd.restart_all()
    assert_all_healthy(bffs)
