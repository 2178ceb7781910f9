"""The Aedes cluster with the mesh's accounts, ACL and TLS (docs/brokers.md, "Security").

A real 3-node Aedes cluster (:mod:`broker.cluster`) given the mesh's password file (accounts
provisioned by :func:`faillite.accounts.provision`) and the ACL of
:func:`faillite.identity.identity_acl`; plain paho clients (MQTT 3.1.1, as the mesh's) on every
node. Checked on each node: a wrong password, an unknown or foreign account and an anonymous
client are refused; a client id other than its username is refused (the probe name is its
own username); a worker cannot publish another worker's heartbeat or status (its connection
is closed, nothing reaches other nodes), nor read what its rules forbid, retained messages
included, nor leave a will on a topic it may not write; what its rules allow works across
nodes. And one cluster with TLS (the mesh's CA and server certificate, faillite pki).
"""

from __future__ import annotations

import itertools
import json
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from plugins.brokers import FLOOD_SOCKETS

from broker._acl import filter_covers
from broker.cluster import AEDES_DIR, Cluster, ClusterError, engine_problem, start_cluster
from faillite.accounts import provision, revoke_account
from faillite.config import BrokerConfig, TlsConfig, TlsServerConfig
from faillite.identity import AclScope, Identity
from faillite.pki import init_ca, issue_server
from faillite.tls import client_context
from faillite.topics import Role, Topics, matches
from field_kit.guessing import Flood, login
from field_kit.procs import wait_until

pytestmark = pytest.mark.slow

MESH = "sec"
T = Topics(MESH)
W1, W2 = Identity(MESH, Role.WORKER, "w1"), Identity(MESH, Role.WORKER, "w2")
COORD = Identity(MESH, Role.COORDINATOR, "main")
ADMIN = Identity(MESH, Role.ADMIN, "a")
IDENTITIES = (W1, W2, COORD, ADMIN)
SCOPE = AclScope.of(["w1", "w2"], ["a1"])


def _accounts(tmp: Path) -> BrokerConfig:
    passwd, secrets = tmp / "passwd", tmp / "secrets"
    provision(passwd, secrets, IDENTITIES)
    return BrokerConfig(password_file=passwd, secrets_dir=secrets, login_delay_s=0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    problem = engine_problem("aedes")
    if problem is not None:
        pytest.skip(f"aedes: {problem}")
    tmp = tmp_path_factory.mktemp("cluster-sec")
    with start_cluster(
        "aedes", tmp / "cluster", 3, security=_accounts(tmp), mesh=MESH, scope=SCOPE
    ) as c:
        yield c


def _secret(cfg: BrokerConfig, identity: Identity) -> str:
    assert cfg.secrets_dir is not None
    return (cfg.secrets_dir / f"{identity.name}.secret").read_text().strip()


class Client:
    """A paho client on one node: its CONNACK, SUBACKs, what it receives, whether dropped."""

    def __init__(
        self,
        cluster: Cluster,
        node: int,
        client_id: str,
        username: str | None,
        password: str | None,
        *,
        will: tuple[str, bytes] | None = None,
        tls: TlsConfig | None = None,
        source: str = "",
    ) -> None:
        self.rc: Any = None
        self.granted: list[int] = []
        self.got: list[tuple[str, bytes, bool]] = []
        self.answered = threading.Event()  # a CONNACK, or the connection closed
        self.dropped = threading.Event()
        self._acked = threading.Event()
        self.c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
            clean_session=True,
            reconnect_on_failure=False,
        )
        if username is not None:
            self.c.username_pw_set(username, password)
        if will is not None:
            self.c.will_set(will[0], will[1], qos=1)
        if tls is not None:
            self.c.tls_set_context(client_context(tls))
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = lambda _c, _u, m: self.got.append(
            (m.topic, bytes(m.payload), bool(m.retain))
        )
        self.c.on_disconnect = self._on_disconnect
        node_ = cluster.nodes[node]
        self.c.connect(node_.host, node_.port, keepalive=5, bind_address=source)
        self.c.loop_start()
        if not self.answered.wait(10) or self.rc is None:
            self.stop()
            raise AssertionError(f"no CONNACK from node {node}")

    def _on_connect(self, _c: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.rc = rc
        self.answered.set()

    def _on_disconnect(self, *_a: Any) -> None:
        self.dropped.set()
        self.answered.set()

    def _on_subscribe(self, _c: paho.Client, _u: Any, _mid: int, rcs: Any, _p: Any) -> None:
        self.granted = [int(r.value) for r in rcs]
        self._acked.set()

    @property
    def admitted(self) -> bool:
        return self.rc is not None and not self.rc.is_failure

    def subscribe(self, topic_filter: str) -> int:
        """The granted QoS (128: refused)."""
        self._acked.clear()
        self.c.subscribe(topic_filter, qos=1)
        assert self._acked.wait(10), f"no SUBACK for {topic_filter}"
        return self.granted[0]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain)

    def vanish(self) -> None:
        """The connection dies without a DISCONNECT (its will fires)."""
        self.c.loop_stop()
        sock = self.c.socket()
        if sock is not None:
            sock.close()

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _as(cluster: Cluster, node: int, identity: Identity, **kw: Any) -> Client:
    assert cluster.security is not None
    c = Client(
        cluster, node, identity.name, identity.name, _secret(cluster.security, identity), **kw
    )
    assert c.admitted, (identity.name, c.rc)
    return c


def _watch(cluster: Cluster, node: int) -> Client:
    """The admin account on ``node``, subscribed to the whole mesh."""
    c = _as(cluster, node, ADMIN)
    assert c.subscribe(f"faillite/{MESH}/#") == 1
    return c


_LOOPBACK_HOSTS = itertools.count(2)


@pytest.fixture
def source() -> str:
    """A loopback address of this test's own: the nodes slow failed logins per source
    address, so refusals from one test do not lengthen the next one's."""
    return f"127.0.0.{next(_LOOPBACK_HOSTS)}"


def _refused(
    cluster: Cluster, node: int, client_id: str, user: str | None, pw: str | None, source: str
) -> Any:
    c = Client(cluster, node, client_id, user, pw, source=source)
    try:
        assert not c.admitted, (client_id, user)
        return c.rc
    finally:
        c.stop()


def test_the_nodes_match_topics_exactly_as_the_python_acl() -> None:
    """The node's ``matches`` and ``filterCovers`` against faillite.topics.matches and
    broker._acl.filter_covers, on every pair of filters of up to 3 levels over a small
    alphabet (wildcards, ``$`` topics and empty levels included)."""
    if engine_problem("aedes") is not None:
        pytest.skip("node not installed")
    levels = ["a", "b", "+", "#", "", "$s"]
    filters = ["/".join(p) for n in (1, 2, 3) for p in itertools.product(levels, repeat=n)]
    pairs = [(f, t) for f in filters for t in filters]
    out = subprocess.run(
        ["node", str(AEDES_DIR / "node.mjs"), "--match-stdin"],
        input=json.dumps(pairs),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    got = json.loads(out.stdout)
    want = [[matches(f, t), filter_covers(f, t)] for f, t in pairs]
    diff = [(p, g, w) for p, g, w in zip(pairs, got, want, strict=True) if g != w]
    assert not diff, diff[:20]


@pytest.mark.parametrize("node", [0, 1, 2])
def test_wrong_password_unknown_foreign_and_anonymous_clients_are_refused(
    cluster: Cluster, node: int, source: str
) -> None:
    assert cluster.security is not None
    secret = _secret(cluster.security, W1)
    rc = _refused(cluster, node, W1.name, W1.name, secret + "x", source)
    assert rc.getName() == "Bad user name or password", rc
    _refused(cluster, node, W1.name, W1.name, None, source)
    _refused(cluster, node, W1.name, None, None, source)  # anonymous
    _refused(cluster, node, "sec.worker.w9", "sec.worker.w9", secret, source)  # no account
    _refused(cluster, node, "other.worker.w1", "other.worker.w1", secret, source)  # another mesh
    # ... and the right secret gets in.
    _as(cluster, node, W1).stop()


@pytest.mark.parametrize("node", [0, 1, 2])
def test_a_client_id_must_be_its_own_username(cluster: Cluster, node: int, source: str) -> None:
    assert cluster.security is not None
    secret = _secret(cluster.security, W1)
    rc = _refused(cluster, node, W2.name, W1.name, secret, source)  # w1 taking w2's session
    assert rc.getName() == "Client identifier not valid", rc
    _refused(cluster, node, "anything", W1.name, secret, source)
    _refused(
        cluster, node, W1.probe_name, W1.name, secret, source
    )  # the probe has its own username
    probe = Client(cluster, node, W1.probe_name, W1.probe_name, secret)
    try:
        assert probe.admitted, probe.rc
    finally:
        probe.stop()


def test_failed_logins_are_slowed_down(cluster: Cluster, source: str) -> None:
    """Each failure from one address doubles the wait before its refusal (login_delay_s)."""
    took = []
    for _ in range(3):
        t = time.monotonic()
        _refused(cluster, 0, W2.name, W2.name, "guess", source)
        took.append(time.monotonic() - t)
    assert took[-1] >= 0.35, took  # 0.1 s, then 0.2 s, then 0.4 s (at least)


@pytest.mark.parametrize("node", [0, 1, 2])
def test_a_worker_cannot_publish_another_workers_heartbeat_or_status(
    cluster: Cluster, node: int
) -> None:
    watch = _watch(cluster, (node + 1) % 3)
    try:
        for topic in (T.worker_heartbeat("w2"), T.worker_status("w2"), T.coordinator_status):
            w1 = _as(cluster, node, W1)
            try:
                w1.publish(topic, b"forged")
                # Refused: Aedes closes the connection of a client whose publish it refuses.
                assert w1.dropped.wait(5), f"publish to {topic} not refused"
            finally:
                w1.stop()
        w1 = _as(cluster, node, W1)
        try:
            mark = uuid.uuid4().hex.encode()
            w1.publish(T.worker_heartbeat("w1"), mark)  # its own: allowed, across nodes
            assert wait_until(lambda: any(p == mark for _t, p, _r in watch.got), 5)
        finally:
            w1.stop()
        assert not [g for g in watch.got if g[1] == b"forged"], watch.got
    finally:
        watch.stop()


@pytest.mark.parametrize("node", [1, 2])
def test_a_worker_reads_only_what_its_rules_allow_retained_included(
    cluster: Cluster, node: int
) -> None:
    coord = _as(cluster, 0, COORD)
    mark = uuid.uuid4().hex.encode()
    try:
        coord.publish(T.worker_assignment("w2"), b"w2-" + mark, retain=True)
        coord.publish(T.worker_assignment("w1"), b"w1-" + mark, retain=True)
        time.sleep(0.5)
        w1 = _as(cluster, node, W1)
        try:
            # Refused (SUBACK 0x80): w2's assignment, and every filter that could match it.
            for flt in (
                T.worker_assignment("w2"),
                f"faillite/{MESH}/workers/+/assignment",
                f"faillite/{MESH}/#",
                "#",
                "$SYS/#",
            ):
                assert w1.subscribe(flt) == 128, flt
            # Its own assignment, retained on another node, is delivered.
            assert w1.subscribe(T.worker_assignment("w1")) == 1
            assert wait_until(lambda: (T.worker_assignment("w1"), b"w1-" + mark, True) in w1.got, 5)
            # Live messages too, across nodes; never w2's.
            coord.publish(T.worker_assignment("w2"), b"live-w2")
            coord.publish(T.worker_assignment("w1"), b"live-w1")
            assert wait_until(lambda: any(p == b"live-w1" for _t, p, _r in w1.got), 5)
            time.sleep(0.3)
            assert all(t == T.worker_assignment("w1") for t, _p, _r in w1.got), w1.got
        finally:
            w1.stop()
    finally:
        for w in ("w1", "w2"):
            coord.publish(T.worker_assignment(w), b"", retain=True)
        time.sleep(0.2)
        coord.stop()


def test_a_will_on_a_topic_the_account_may_not_write_is_dropped(cluster: Cluster) -> None:
    watch = _watch(cluster, 2)
    try:
        forged = _as(cluster, 0, W1, will=(T.worker_status("w2"), b"forged-will"))
        forged.vanish()
        own = _as(cluster, 1, W1, will=(T.worker_status("w1"), b"own-will"))
        own.vanish()
        assert wait_until(lambda: any(p == b"own-will" for _t, p, _r in watch.got), 10)
        time.sleep(0.5)
        assert not [g for g in watch.got if g[1] == b"forged-will"], watch.got
    finally:
        watch.stop()


FLOOD = FLOOD_SOCKETS
UNADMITTED_CAP = 32  # node.mjs MAX_UNADMITTED_PER_SOURCE, as broker/_amqtt_hooks.py's


def _flood_leaves_room(
    cluster: Cluster, flooder: str, device: str, tls: ssl.SSLContext | None = None
) -> None:
    assert cluster.security is not None
    node = cluster.nodes[0]
    with Flood(node.host, node.port, FLOOD, source=flooder) as flood:
        held = flood.settle(UNADMITTED_CAP, within_s=10)
        assert held <= UNADMITTED_CAP, f"{held} of {FLOOD} still open"
        t0 = time.monotonic()
        code = login(
            node.host, node.port, W1.name, _secret(cluster.security, W1), source=device, tls=tls
        )
        assert code == 0, code
        assert time.monotonic() - t0 < 5.0
    # Said once per address (and every 10 s while it lasts), not once per socket.
    lines = [
        line
        for line in node.log_path.read_text(errors="replace").splitlines()
        if "too_many_unadmitted" in line and flooder in line
    ]
    assert 1 <= len(lines) <= 3, len(lines)


def test_a_flood_of_idle_sockets_leaves_room_for_devices(
    cluster: Cluster, source: str, descriptors: None
) -> None:
    """1000 sockets that never send a CONNECT, from one address: a node holds at most 32 of
    them (the rest closed at once); a device on another address logs in meanwhile."""
    _flood_leaves_room(cluster, flooder=source, device="127.0.1.1")


def test_a_revoked_account_loses_its_live_connections_within_seconds(
    cluster: Cluster, source: str
) -> None:
    """faillite accounts revoke: the password file without the account (the nodes re-read it
    when it changes): its live connection on any node is closed, its will fires, its next
    login is refused. (Last in this module: the account is put back after.)"""
    assert cluster.security is not None and cluster.security.password_file is not None
    passwd = cluster.security.password_file
    before = passwd.read_text()
    watch = _watch(cluster, 2)
    w2 = _as(cluster, 1, W2, will=(T.worker_status("w2"), b"w2-gone"))
    try:
        t0 = time.monotonic()
        assert revoke_account(passwd, W2.name)
        assert w2.dropped.wait(5), "the revoked account's connection is still open"
        closed_s = time.monotonic() - t0
        assert closed_s < 3.0, closed_s
        assert wait_until(lambda: any(p == b"w2-gone" for _t, p, _r in watch.got), 5)
        again = _refused(cluster, 0, W2.name, W2.name, _secret(cluster.security, W2), source)
        assert again is not None
    finally:
        passwd.write_text(before)
        w2.stop()
        watch.stop()


def test_rabbitmq_and_client_certificates_are_refused_with_security(tmp_path: Path) -> None:
    """What the launcher cannot secure does not start open instead."""
    sec = _accounts(tmp_path)
    with pytest.raises(ClusterError, match=r"(?i)rabbitmq"):
        start_cluster("rabbitmq", tmp_path / "r", 3, security=sec, mesh=MESH)
    with pytest.raises(ClusterError, match="no accounts"):
        start_cluster("aedes", tmp_path / "o", 3, host="0.0.0.0")


def test_tls_cluster_with_accounts(tmp_path: Path) -> None:
    problem = engine_problem("aedes")
    if problem is not None:
        pytest.skip(f"aedes: {problem}")
    pki = tmp_path / "pki"
    init_ca(pki)
    server = issue_server(pki, "cluster", ["127.0.0.1", "localhost"])
    tls = TlsConfig(
        ca_certs=pki / "ca.crt",
        server=TlsServerConfig(certfile=server.cert, keyfile=server.key),
    )
    sec = _accounts(tmp_path).model_copy(update={"tls": tls})
    with start_cluster("aedes", tmp_path / "cluster", 3, security=sec, mesh=MESH) as c:
        clients = c.broker_config()
        assert clients.tls == TlsConfig(ca_certs=pki / "ca.crt")  # the CA only, for clients
        assert clients.secrets_dir == sec.secrets_dir
        watch = _as(c, 2, ADMIN, tls=clients.tls)
        try:
            assert watch.subscribe(f"faillite/{MESH}/#") == 1
            w1 = _as(c, 0, W1, tls=clients.tls)
            w1.publish(T.worker_heartbeat("w1"), b"over-tls")
            assert wait_until(lambda: any(p == b"over-tls" for _t, p, _r in watch.got), 5)
            w1.stop()
            bad = Client(c, 1, W1.name, W1.name, "wrong", tls=clients.tls)
            bad.stop()
            assert not bad.admitted
            # Handshakes never begun, from one address: capped the same; a device gets in.
            _flood_leaves_room(c, "127.0.2.1", "127.0.2.2", tls=client_context(clients.tls))
        finally:
            watch.stop()
        # Plain MQTT to a TLS node gets no CONNACK.
        with pytest.raises(AssertionError, match="no CONNACK"):
            Client(c, 0, W1.name, W1.name, _secret(sec, W1))
