"""A real etcd cluster on loopback (Debian's etcd-server, 3.4.x; scripts/setup installs it), for
the filter's state shared across Envoy replicas, and a client for etcd's v3 JSON gateway.

`start_etcd(procs, members=3)` starts N members on 127.0.0.1 (client and peer ports free ones,
nothing on any other address), each with its own data dir under one temp dir, short raft timers
(heartbeat 50 ms, election 500 ms) and a cluster token unique to this start; it returns once
every member answers GET /health with {"health":"true"} (a quorum read went through).

The members can fail the way a test wants them to: `kill(i)` SIGKILLs member i by its PID (no
clean shutdown), `restart(i)` starts it again on the same data dir and ports (it rejoins as the
member it was), `kill_all()` / `restart_all()` do it to every member. `stop()` stops them and
removes the data dirs; the ProcessGroup also stops them, and the temp dir goes at exit.

The client speaks exactly what the filter will: HTTP/1.1 POST of JSON to /v3/<service>/<method>
on a member's client URL (`client_urls[i]`), keys and values base64, int64s (lease IDs,
revisions, counts, TTLs) as JSON strings in answers. `put`, `get`, `get_prefix`, `delete`,
`grant`, `txn` and the raw `post` go to the first running member unless told which; a follower
forwards writes and linearizable reads to the leader itself. Without a quorum etcd answers a
write only after its request timeout (5 s + 2 x election timeout, here 6 s), with an error.
"""

from __future__ import annotations

import atexit
import base64
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .procs import Process, ProcessGroup, free_port

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"
HEARTBEAT_MS = 50
ELECTION_MS = 500


class EtcdError(RuntimeError):
    """The gateway answered with a non-2xx status (its JSON body has "error", "code", "message")."""

    def __init__(self, status: int, body: str):
        super().__init__(f"etcd answered {status}: {body}")
        self.status = status
        self.body = body


def b64(data: str | bytes) -> str:
    """A key or value as the gateway wants it: standard base64 of its bytes (UTF-8 for str)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data).decode("ascii")


def unb64(text: str | None) -> str:
    """The gateway's base64 back to text (an absent field is empty: proto3 omits defaults)."""
    return base64.b64decode(text or "").decode("utf-8")


def prefix_end(prefix: str | bytes) -> bytes:
    """The range_end that makes a range cover every key starting with `prefix`: the prefix with
    its last byte that is not 0xff incremented (and what follows it dropped)."""
    data = bytearray(prefix.encode("utf-8") if isinstance(prefix, str) else prefix)
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return bytes(data)
        data.pop()
    return b"\0"  # every key


@dataclass
class EtcdMember:
    """One member: its name (etcd-<i>), ports on 127.0.0.1, data dir and current process."""
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    process: Process | None = field(default=None, repr=False)

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def running(self) -> bool:
        return self.process is not None and self.process.running()

    def log(self) -> str:
        return self.process.output() if self.process else ""


class EtcdCluster:
    """The members `start_etcd` started and a JSON-gateway client to them."""

    def __init__(self, procs: ProcessGroup, members: list[EtcdMember], root: Path, token: str,
                 remove_root: bool):
        self.procs = procs
        self.members = members
        self.root = root
        self.token = token
        self._remove_root = remove_root
        self._http = requests.Session()
        atexit.register(self.stop)

    # --- membership ---------------------------------------------------------------------

    @property
    def client_urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    def _argv(self, m: EtcdMember) -> list:
        initial = ",".join(f"{o.name}={o.peer_url}" for o in self.members)
        return [
            ETCD_BIN,
            "--name", m.name,
            "--data-dir", m.data_dir,
            "--listen-client-urls", m.client_url,
            "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", initial,
            # Only read on a member's first start; a restart finds its data dir and rejoins.
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.token,
            "--heartbeat-interval", HEARTBEAT_MS,
            "--election-timeout", ELECTION_MS,
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]

    def _spawn(self, i: int) -> None:
        m = self.members[i]
        if m.running():
            raise RuntimeError(f"{m.name} is already running (pid {m.process.pid})")
        m.data_dir.mkdir(parents=True, exist_ok=True)
        # etcd prints no ready line of its own: readiness is GET /health (wait_healthy).
        m.process = self.procs.start(m.name, self._argv(m), ready_line_prefix=None)

    def kill(self, i: int) -> None:
        """SIGKILL member i by its PID and reap it: a crash, not a clean shutdown."""
        m = self.members[i]
        if m.process is not None:
            m.process.kill()

    def restart(self, i: int, wait: bool = True, timeout: float = 30.0) -> None:
        """Start member i again (killed first if running) on its data dir and ports; with
        `wait`, return once it answers /health."""
        self.kill(i)
        self._spawn(i)
        if wait:
            self.wait_healthy([i], timeout)

    def kill_all(self) -> None:
        for i in range(len(self.members)):
            self.kill(i)

    def restart_all(self, wait: bool = True, timeout: float = 30.0) -> None:
        self.kill_all()
        for i in range(len(self.members)):
            self._spawn(i)
        if wait:
            self.wait_healthy(timeout=timeout)

    def stop(self) -> None:
        """Stop every member (SIGTERM by PID, then SIGKILL) and remove the data dirs if this
        module made them. Idempotent; also runs at exit."""
        for m in self.members:
            if m.process is not None:
                m.process.stop()
        if self._remove_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def health(self, i: int) -> bool:
        """Whether member i answers GET /health with {"health":"true"} (it has a leader and a
        quorum read through it succeeded)."""
        try:
            r = self._http.get(f"{self.members[i].client_url}/health", timeout=2)
            return r.status_code == 200 and r.json().get("health") == "true"
        except (requests.ConnectionError, requests.Timeout, ValueError):
            return False

    def wait_healthy(self, which: list[int] | None = None, timeout: float = 30.0) -> None:
        """Wait until every member in `which` (default: all) is healthy."""
        which = list(range(len(self.members))) if which is None else which
        deadline = time.monotonic() + timeout
        pending = set(which)
        while pending:
            for i in sorted(pending):
                m = self.members[i]
                if not m.running():
                    raise RuntimeError(f"{m.name} exited:\n{m.log()}")
                if self.health(i):
                    pending.discard(i)
            if not pending:
                return
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {self.members[i].name}:\n{self.members[i].log()[-4000:]}"
                                 for i in sorted(pending))
                raise RuntimeError(f"etcd members {sorted(pending)} not healthy within "
                                   f"{timeout}s:\n{logs}")
            time.sleep(0.1)

    def leader(self) -> int | None:
        """The index of the member that is leader now (by each member's /v3/maintenance/status),
        or None if no running member knows one."""
        for i, m in enumerate(self.members):
            if not m.running():
                continue
            try:
                status = self.post("/v3/maintenance/status", {}, member=i, timeout=2)
            except (EtcdError, requests.RequestException):
                continue
            leader_id = status.get("leader")
            if leader_id and leader_id == status["header"].get("member_id"):
                return i
        return None

    # --- the JSON gateway -----------------------------------------------------------------

    def post(self, path: str, body: dict, member: int | None = None, timeout: float = 15.0) -> dict:
        """POST `body` as JSON to `path` (e.g. "/v3/kv/put") on member `member`, or on the first
        running member that accepts the connection; the parsed JSON answer, EtcdError if not 2xx."""
        order = [member] if member is not None else [
            i for i, m in enumerate(self.members) if m.running()]
        if not order:
            raise RuntimeError("no etcd member is running")
        last: Exception | None = None
        for i in order:
            try:
                r = self._http.post(f"{self.members[i].client_url}{path}", json=body,
                                    timeout=timeout)
            except requests.ConnectionError as exc:  # died in between: try the next one
                last = exc
                continue
            if r.status_code // 100 != 2:
                raise EtcdError(r.status_code, r.text)
            return r.json()
        raise last  # type: ignore[misc]

    def enable_auth(self, user: str, password: str, prefix: str, root_password: str = "root-pw") -> None:
        """Turn etcd's authentication on: `user` may read and write keys under `prefix` (and
        grant leases); this client signs in as root for what the tests read afterwards."""
        self.post("/v3/auth/user/add", {"name": "root", "password": root_password})
        self.post("/v3/auth/role/add", {"name": "root"})
        self.post("/v3/auth/user/grant", {"user": "root", "role": "root"})
        self.post("/v3/auth/role/add", {"name": user})
        self.post("/v3/auth/role/grant", {"name": user, "perm": {
            "permType": "READWRITE", "key": b64(prefix), "range_end": b64(prefix_end(prefix))}})
        self.post("/v3/auth/user/add", {"name": user, "password": password})
        self.post("/v3/auth/user/grant", {"user": user, "role": user})
        self.post("/v3/auth/enable", {})
        token = self.post("/v3/auth/authenticate", {"name": "root", "password": root_password})["token"]
        self._http.headers["Authorization"] = token

    def grant(self, ttl: int, member: int | None = None) -> int:
        """A new lease of `ttl` seconds; its ID."""
        return int(self.post("/v3/lease/grant", {"TTL": ttl}, member)["ID"])

    def put(self, key: str, value: str | bytes, lease: int | None = None,
            member: int | None = None) -> dict:
        body = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return self.post("/v3/kv/put", body, member)

    def get(self, key: str, member: int | None = None) -> str | None:
        """The value of `key` (a linearizable read), or None if it does not exist."""
        kvs = self.post("/v3/kv/range", {"key": b64(key)}, member).get("kvs", [])
        return unb64(kvs[0].get("value")) if kvs else None

    def get_prefix(self, prefix: str, member: int | None = None) -> dict[str, str]:
        """Every key starting with `prefix` and its value, in key order."""
        body = {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
        kvs = self.post("/v3/kv/range", body, member).get("kvs", [])
        return {unb64(kv["key"]): unb64(kv.get("value")) for kv in kvs}

    def delete(self, key: str, member: int | None = None) -> int:
        """Delete `key`; how many keys went (0 or 1)."""
        return int(self.post("/v3/kv/deleterange", {"key": b64(key)}, member).get("deleted", "0"))

    def txn(self, body: dict, member: int | None = None) -> dict:
        """A raw /v3/kv/txn ({"compare": [...], "success": [...], "failure": [...]})."""
        return self.post("/v3/kv/txn", body, member)


def start_etcd(procs: ProcessGroup, members: int = 3, root: Path | None = None,
               timeout: float = 30.0) -> EtcdCluster:
    """Start an etcd cluster of `members` on 127.0.0.1 (data under `root`, default a fresh temp
    dir removed at stop) and return it once every member is healthy."""
    if not Path(ETCD_BIN).exists():
        raise RuntimeError("etcd is not installed: run scripts/setup")
    ports: list[int] = []
    while len(ports) < 2 * members:  # distinct: free_port() may hand out a port twice
        port = free_port()
        if port not in ports:
            ports.append(port)
    remove_root = root is None
    root = Path(tempfile.mkdtemp(prefix="etcd-")) if root is None else Path(root)
    cluster = EtcdCluster(
        procs,
        [EtcdMember(name=f"etcd-{i}", client_port=ports[2 * i], peer_port=ports[2 * i + 1],
                    data_dir=root / f"etcd-{i}") for i in range(members)],
        root=root,
        token=f"bff-test-{uuid.uuid4().hex}",
        remove_root=remove_root,
    )
    try:
        for i in range(members):
            cluster._spawn(i)
        cluster.wait_healthy(timeout=timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def envoy_cluster(cluster: EtcdCluster, name: str = "etcd") -> dict:
    """The Envoy cluster of the members, as the README's store section sets it: every member an
    endpoint, an HTTP health check on /health so a dead or cut-off member leaves the rotation
    within a second or two, and the filter's calls spread over the rest."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": m.client_port}}}}
                for m in cluster.members]}],
        },
        "health_checks": [{
            "timeout": "0.5s",
            "interval": "0.5s",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "http_health_check": {"path": "/health"},
        }],
    }
