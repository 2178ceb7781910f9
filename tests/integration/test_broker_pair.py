"""Two Mosquitto brokers of one mesh, bridged, and every role on an ordered list of them.

Broker B bridges to broker A (every topic of the mesh, both ways, as B's bridge account); each
role's config lists A then B. Checked: a message published on either broker reaches clients
of the other, retained ones included, and nothing comes back twice; then, with a real mesh
(planner coordinator, two workers, a camera) on A, broker A is killed for good (SIGKILL: no
last-wills, no goodbye): every role moves to B by itself, the app is served again from B, the
coordinator keeps its term and fails no worker over for having moved.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from faillite import messages
from faillite.accounts import provision
from faillite.config import (
    BridgeConfig,
    BrokerAddress,
    BrokerConfig,
)
from faillite.identity import Identity
from faillite.mqtt import MeshClient, Raw
from faillite.topics import Role, Topics
from field_kit.brokers import BrokerLauncher, mosquitto_binary
from field_kit.drill.broker_switch import pair_mesh, start_pair_mesh
from field_kit.procs import free_port, wait_until
from field_kit.recorder import Recorder

MESH = "pair"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[dict[str, Any]]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    passwd, secrets = tmp_path / "passwd", tmp_path / "secrets"
    ids = [
        Identity(MESH, Role.WORKER, "w1"), Identity(MESH, Role.WORKER, "w2"),
        Identity(MESH, Role.SENSOR, "cam1"), Identity(MESH, Role.COORDINATOR, "main"),
        Identity(MESH, Role.ADMIN, "recorder"), Identity(MESH, Role.ADMIN, "a"),
        Identity(MESH, Role.ADMIN, "b"), Identity(MESH, Role.BRIDGE, "b"),
    ]  # fmt: skip
    provision(passwd, secrets, ids)
    base = BrokerConfig(password_file=passwd, secrets_dir=secrets, keepalive_s=2)
    port_a, port_b = free_port(), free_port()
    with BrokerLauncher(tmp_path / "brokers") as launcher:
        a = launcher.start("mosquitto", base, mesh=MESH, port=port_a)
        bridge = BridgeConfig(id="b", to=(BrokerAddress(host=a.host, port=a.port),))
        b = launcher.start("mosquitto", base.model_copy(update={"bridge": bridge}), mesh=MESH,
                           port=port_b)  # fmt: skip
        clients = base.model_copy(
            update={"host": a.host, "port": a.port,
                    "fallbacks": (BrokerAddress(host=b.host, port=b.port),)}
        )  # fmt: skip
        yield {"a": a, "b": b, "base": base, "clients": clients, "launcher": launcher}


def _on(cfg: BrokerConfig, name: str) -> tuple[MeshClient, list[Raw]]:
    got: list[Raw] = []
    c = MeshClient(Identity(MESH, Role.ADMIN, name).name, cfg)
    c.subscribe(f"faillite/{MESH}/#", got.append, qos=1)
    c.start(connect_timeout=10)
    return c, got


def test_the_bridge_carries_the_mesh_both_ways_retained_included(pair: dict[str, Any]) -> None:
    at = lambda e: pair["base"].model_copy(update={"host": e.host, "port": e.port})  # noqa: E731
    t = Topics(MESH)
    # Retained before anyone listens on the other side: the bridge stores it there too.
    on_a, _ = _on(at(pair["a"]), "a")
    assert wait_until(lambda: on_a.publish(f"{t.prefix}/events", b"r1", qos=1, retain=True), 5)
    time.sleep(1.0)
    on_b, got_b = _on(at(pair["b"]), "b")
    try:
        assert wait_until(lambda: any(m.payload == b"r1" for m in got_b), 5), got_b
        on_b.publish(f"{t.prefix}/events", b"from-b", qos=1)
        on_a.publish(f"{t.prefix}/events", b"from-a", qos=1)
        assert wait_until(lambda: any(m.payload == b"from-a" for m in got_b), 5)
        time.sleep(1.0)
        # Each once: nothing came back over the bridge the way it went.
        assert [m.payload for m in got_b].count(b"from-a") == 1
        assert [m.payload for m in got_b].count(b"from-b") == 1
    finally:
        on_a.stop()
        on_b.stop()


@pytest.fixture
def mesh(pair: dict[str, Any], tmp_path: Path, models_dir: Path) -> Iterator[dict[str, Any]]:
    """A planner coordinator, two workers and a camera on broker A, every role listing B."""
    clients: BrokerConfig = pair["clients"]
    t = Topics(MESH)
    rec, group = start_pair_mesh(pair_mesh(MESH, clients, models_dir, 5.0), tmp_path, qos=1)
    try:
        assert wait_until(lambda: len(_results(rec, 0)) >= 5, 60), "never served on broker A"
        leader = rec.messages(t.coordinator_status, messages.CoordinatorStatus)[-1]
        assert leader.state == "leader"
        time.sleep(2)
        yield {"rec": rec, "group": group, "t": t, "leader": leader, "logs": tmp_path / "logs"}
    finally:
        group.stop_all()
        rec.stop()


def _results(rec: Recorder, since: float) -> list[messages.Result]:
    return rec.messages(Topics(MESH).app_results_filter("a1"), messages.Result, since)


def test_killing_the_broker_moves_every_role_and_costs_no_failover(
    pair: dict[str, Any], mesh: dict[str, Any]
) -> None:
    rec, t, leader = mesh["rec"], mesh["t"], mesh["leader"]
    kill_at = time.monotonic()
    pair["launcher"].processes[0].proc.send_signal(signal.SIGKILL)  # broker A, for good
    assert wait_until(lambda: len(_results(rec, kill_at)) >= 10, 30), "not served again from B"
    first = min(at for at, topic, _p in rec.raw(kill_at) if "/results/" in topic)
    time.sleep(3)
    assert rec.client.address == (pair["b"].host, pair["b"].port)
    failovers = [e for e in rec.messages(t.events, messages.Event, kill_at) if e.kind == "failover"]
    assert not failovers, failovers  # moving brokers is not failing
    statuses = rec.messages(t.coordinator_status, messages.CoordinatorStatus, kill_at)
    assert all(s.term == leader.term for s in statuses), statuses
    assert all(s.coordinator == leader.coordinator for s in statuses)
    for name in ("coord", "w1", "w2", "cam1"):
        assert '"broker_switched"' in (mesh["logs"] / f"{name}.log").read_text(), name
    assert first - kill_at < 15


def test_the_broker_node_dies_with_a_worker_and_nothing_stale_stays_retained(
    pair: dict[str, Any], mesh: dict[str, Any]
) -> None:
    """KILL_BROKER_NODE's heart: broker A and the worker serving the app share a board that
    dies. The worker's last-will dies with broker A, so its heartbeats' silence is what fails
    it over to the other worker; and its 'online' birth, bridged to B, is replaced by the
    leader's obituary (offline, reason silent) once no last-will can come."""
    rec, t = mesh["rec"], mesh["t"]
    primary = _results(rec, 0)[-1].worker
    other = "w2" if primary == "w1" else "w1"
    kill_at = time.monotonic()
    pair["launcher"].processes[0].proc.send_signal(signal.SIGKILL)
    mesh["group"].stop(primary, signal.SIGKILL)
    assert wait_until(lambda: any(r.worker == other for r in _results(rec, kill_at)), 30)
    failovers = [e for e in rec.messages(t.events, messages.Event, kill_at) if e.kind == "failover"]
    assert [e.worker for e in failovers] == [primary], failovers
    assert failovers[0].detail["cause"] == "heartbeat_silence"

    def retained_status() -> messages.WorkerStatus | None:
        got: list[messages.WorkerStatus] = []
        c = MeshClient(Identity(MESH, Role.ADMIN, "b").name, pair["clients"])
        c.subscribe_json(
            t.worker_status(primary), messages.WorkerStatus, lambda i: got.append(i.message)
        )
        c.start(connect_timeout=10)
        time.sleep(0.5)
        c.stop()
        return got[-1] if got else None

    # 1.5 x keepalive (2 s) + 2 s after the failure: the leader's obituary.
    assert wait_until(lambda: (s := retained_status()) is not None and s.state == "offline", 15)
    st = retained_status()
    assert st is not None and st.reason == "silent", st


def _retained(cfg: BrokerConfig, name: str) -> dict[str, bytes]:
    """Every retained message of the mesh on the broker ``cfg`` names first (and only)."""
    got: dict[str, bytes] = {}
    c = MeshClient(Identity(MESH, Role.ADMIN, name).name, cfg.model_copy(update={"fallbacks": ()}))
    c.subscribe(
        f"faillite/{MESH}/#", lambda r: got.update({r.topic: r.payload}) if r.retain else None
    )
    c.start(connect_timeout=10)
    time.sleep(0.7)
    c.stop()
    return got


def test_a_broker_that_comes_back_with_an_old_store_changes_nothing(
    pair: dict[str, Any], mesh: dict[str, Any]
) -> None:
    """Broker A stops (saving its store: both workers online, the first placement), every role
    moves to B, the app's primary dies there (a failover: a newer placement, its status
    offline), then A comes back with its old store. B's bridge hands A's old retained state to
    B, where it replaces the current one; its owners put theirs back (the leader its state and
    the dead worker's offline status). Both brokers end with the current state, nobody revives,
    nothing fails over again."""
    rec, t, group = mesh["rec"], mesh["t"], mesh["group"]
    launcher, a_ep, b_ep = pair["launcher"], pair["a"], pair["b"]
    primary = _results(rec, 0)[-1].worker
    other = "w2" if primary == "w1" else "w1"
    launcher.process(a_ep).stop()  # SIGTERM: Mosquitto writes its store
    moved_at = time.monotonic()
    assert wait_until(lambda: len(_results(rec, moved_at)) >= 3, 30), "not served from B"
    kill_at = time.monotonic()
    group.stop(primary, signal.SIGKILL)  # on B: its last-will fires there
    assert wait_until(lambda: any(r.worker == other for r in _results(rec, kill_at)), 30)
    time.sleep(2)
    current = rec.messages(t.placement, messages.Placement)[-1]
    back_at = time.monotonic()
    launcher.restart(a_ep)

    def replayed() -> bool:
        return any(
            p.generation < current.generation
            for p in rec.messages(t.placement, messages.Placement, back_at)
        )

    # The bridge retries within 10 s; what it replays is the store of before the failover.
    assert wait_until(replayed, 20), "broker A's old placement never reached B: nothing was tested"

    a_cfg = pair["clients"]
    b_cfg = a_cfg.model_copy(update={"host": b_ep.host, "port": b_ep.port})

    def converged(cfg: BrokerConfig, name: str) -> bool:
        got = _retained(cfg, name)
        placement = got.get(t.placement)
        dead = got.get(t.worker_status(primary))
        if placement is None or dead is None:
            return False
        p = messages.decode(messages.Placement, placement)
        st = messages.decode(messages.WorkerStatus, dead)
        return p.generation >= current.generation and st.state == "offline"

    assert wait_until(lambda: converged(b_cfg, "b"), 20), _retained(b_cfg, "b").keys()
    assert wait_until(lambda: converged(a_cfg, "a"), 20)
    ev = rec.messages(t.events, messages.Event, back_at)
    assert [e for e in ev if e.kind == "failover"] == [], ev
    assert [e for e in ev if e.kind in ("worker_joined", "worker_recovered")] == [], ev
    assert wait_until(lambda: len(_results(rec, time.monotonic() - 1.0)) >= 2, 10)
    assert {r.worker for r in _results(rec, back_at)} == {other}
