"""The embedded broker's sessions and caps (broker/_amqtt_session.py), with real paho and raw
socket clients on a real broker process: nothing of a live client changes before a newcomer
with its id is authenticated; a takeover closes the old connection without its will and only
for the same account; clean_session 0 is refused; connections and retained messages are capped;
a will reaches each subscriber at no more than its subscription's QoS.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from faillite.accounts import add_account
from faillite.config import BrokerConfig
from faillite.identity import Identity
from faillite.topics import Role, Topics
from field_kit.brokers import BrokerEndpoint, BrokerLauncher
from field_kit.mqttwire import connect_packet, read_connack

MESH = "sess"
ACCEPTED, IDENTIFIER_REJECTED, SERVER_UNAVAILABLE, NOT_AUTHORIZED = 0, 2, 3, 5


def uid() -> str:
    return uuid.uuid4().hex[:8]


# -- the broker config: the one place that knows how accounts are configured ------------------


@dataclass(frozen=True, slots=True)
class Mesh:
    """A broker config and the credentials of its accounts (client id -> (username, password))."""

    cfg: BrokerConfig
    logins: dict[str, tuple[str, str]]

    def login(self, name: str) -> dict[str, Any]:
        username, password = self.logins[name]
        return {"client_id": name, "username": username, "password": password}


def broker_config(tmp_path: Path, devices: tuple[str, ...] = (), **settings: Any) -> Mesh:
    """A broker config with an account per device (worker ids; none: an open mesh), the ACL
    off so that only sessions and caps are under test, no login throttle, and ``settings``."""
    logins: dict[str, tuple[str, str]] = {}
    if devices:
        password_file, secrets = tmp_path / "passwd", tmp_path / "secrets"
        for device in devices:
            identity = Identity(MESH, Role.WORKER, device)
            secret = add_account(password_file, secrets, identity).read_text().strip()
            for username in identity.usernames:  # the device's name and its probe name
                logins[username] = (username, secret)
        settings = {"password_file": password_file, **settings}
    cfg = BrokerConfig(acl=False, login_delay_s=0, login_delay_max_s=0, **settings)
    return Mesh(cfg, logins)


def device(name: str) -> str:
    """A device's client id (its account's username)."""
    return Identity(MESH, Role.WORKER, name).name


def start(launcher: BrokerLauncher, mesh: Mesh) -> BrokerEndpoint:
    return launcher.start("amqtt", mesh.cfg, mesh=MESH)


def events(launcher: BrokerLauncher, ep: BrokerEndpoint, event: str) -> list[dict[str, Any]]:
    """The broker's log lines of ``event`` (polled for a moment: the log is another process's)."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 3
    while not found and time.monotonic() < deadline:
        lines = launcher.process(ep).log_path.read_text(errors="replace").splitlines()
        found = [e for e in map(_json, lines) if e.get("event") == event]
        if not found:
            time.sleep(0.05)
    return found


def _json(line: str) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        obj = json.loads(line)
        if isinstance(obj, dict):
            return obj
    return {}


# -- clients ------------------------------------------------------------------------------------


class RawClient:
    """A client on a bare socket: CONNECT, read the CONNACK, then silence (keepalive 60 s). It
    never reconnects, so a broker closing it stays closed."""

    def __init__(
        self,
        ep: BrokerEndpoint,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        clean: bool = True,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.sock = socket.create_connection((ep.host, ep.port), timeout=5)
        self.sock.sendall(
            connect_packet(
                client_id, 60, clean=clean, will=will, username=username, password=password
            )
        )
        self.code = read_connack(self.sock)

    def closed_by_broker(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(4096):
                pass
        except TimeoutError:
            return False
        except OSError:
            return True
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def connack(ep: BrokerEndpoint, client_id: str, **kw: Any) -> int:
    raw = RawClient(ep, client_id, **kw)
    raw.close()
    return raw.code


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Client:
    """A paho client (network thread running) that records what it receives."""

    def __init__(
        self,
        ep: BrokerEndpoint,
        client_id: str | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._connack: int | None = None
        self._subacks: list[list[int]] = []
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"c-{uid()}",
            clean_session=True,
            protocol=paho.MQTTv311,
        )
        if username is not None:
            c.username_pw_set(username, password)
        if will is not None:
            c.will_set(will[0], will[1], qos=1)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self.client = c
        c.connect(ep.host, ep.port, keepalive=30)
        c.loop_start()
        with self._cond:
            assert self._cond.wait_for(lambda: self._connack is not None, timeout=10), "no CONNACK"
        assert self._connack == 0, f"refused: {self._connack}"

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        with self._cond:
            self._connack = int(rc.value)
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(
                Received(msg.topic, bytes(msg.payload), int(msg.qos), bool(msg.retain))
            )
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, codes: list[Any], _p: Any) -> None:
        with self._cond:
            self._subacks.append([int(rc.value) for rc in codes])
            self._cond.notify_all()

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        with self._cond:
            before = len(self._subacks)
            self.client.subscribe(topic_filter, qos=qos)
            assert self._cond.wait_for(lambda: len(self._subacks) > before, timeout=10)
            assert self._subacks[before] == [qos], f"SUBACK {self._subacks[before]}"

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def wait_for(self, pred: Callable[[Received], bool], timeout: float = 5) -> Received | None:
        with self._cond:
            self._cond.wait_for(lambda: any(pred(m) for m in self.messages), timeout=timeout)
            return next((m for m in self.messages if pred(m)), None)

    def on(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    @property
    def connected(self) -> bool:
        return bool(self.client.is_connected())

    def drop(self) -> None:
        """End the connection without DISCONNECT, as a crashed device does (its will fires)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def client(ep: BrokerEndpoint, *filters: str, **kw: Any) -> Iterator[Client]:
    c = Client(ep, **kw)
    try:
        for f in filters:
            c.subscribe(f)
        yield c
    finally:
        c.close()


def retained(ep: BrokerEndpoint, topic_filter: str, **login: Any) -> dict[str, bytes]:
    """The retained messages a new subscriber to ``topic_filter`` gets."""
    with client(ep, topic_filter, **login) as c:
        time.sleep(0.5)
        return {m.topic: m.payload for m in c.messages if m.retain}


# -- authentication comes first -----------------------------------------------------------------


@pytest.mark.parametrize("clean", [True, False], ids=["clean", "persistent"])
def test_a_wrong_password_with_a_live_clients_id_changes_nothing(
    clean: bool, broker_launcher: BrokerLauncher, tmp_path: Path
) -> None:
    """amqtt alone deletes the live client's subscriptions (clean) or puts the intruder's will
    on its session (persistent) before it checks the intruder's password."""
    mesh = broker_config(tmp_path, ("w1", "obs"))
    ep = start(broker_launcher, mesh)
    w1 = device("w1")
    topic, will_topic = f"t/{uid()}", f"t/{uid()}/status"
    with client(ep, will_topic, **mesh.login(device("obs"))) as watcher:
        live = Client(ep, will=(will_topic, b"w1-lost"), **mesh.login(w1))
        live.subscribe(topic)
        intruder = connack(
            ep, w1, username=w1, password="wrong", clean=clean, will=(will_topic, b"intruder")
        )
        assert intruder == NOT_AUTHORIZED
        watcher.publish(topic, b"still yours")
        assert live.wait_for(lambda m: m.payload == b"still yours"), "subscription lost"
        assert live.connected
        live.drop()
        will = watcher.wait_for(lambda m: m.topic == will_topic)
        assert will is not None and will.payload == b"w1-lost"
        time.sleep(0.3)
        assert [m.payload for m in watcher.on(will_topic)] == [b"w1-lost"]


# -- takeover -----------------------------------------------------------------------------------


def test_a_takeover_by_the_same_account_closes_the_old_connection_without_its_will(
    broker_launcher: BrokerLauncher, tmp_path: Path
) -> None:
    mesh = broker_config(tmp_path, ("w1", "obs"))
    ep = start(broker_launcher, mesh)
    w1 = mesh.login(device("w1"))
    topic, will_topic = f"t/{uid()}", f"t/{uid()}/status"
    with client(ep, will_topic, **mesh.login(device("obs"))) as watcher:
        old = RawClient(
            ep, w1["client_id"], username=w1["username"], password=w1["password"],
            will=(will_topic, b"old-lost"),
        )  # fmt: skip
        try:
            assert old.code == ACCEPTED
            with client(ep, topic, **w1) as new:
                assert old.closed_by_broker(3), "the old connection was left open"
                watcher.publish(topic, b"to the new one")
                assert new.wait_for(lambda m: m.payload == b"to the new one")
                time.sleep(0.5)
                assert watcher.on(will_topic) == [], "the old connection's will fired"
        finally:
            old.close()
    (takeover,) = events(broker_launcher, ep, "session_takeover")
    assert takeover["client_id"] == w1["client_id"]


def test_a_takeover_by_another_account_is_refused(
    broker_launcher: BrokerLauncher, tmp_path: Path
) -> None:
    """In an open mesh anyone may name any username; in a mesh with accounts the client id is
    the account's name anyway. Either way only its own account may take a client id over."""
    ep = start(broker_launcher, broker_config(tmp_path))
    client_id, topic, will_topic = f"dev-{uid()}", f"t/{uid()}", f"t/{uid()}/status"
    with client(ep, will_topic) as watcher:
        live = Client(ep, client_id, username="alice", password="x", will=(will_topic, b"a"))
        live.subscribe(topic)
        for username in ("mallory", None):
            code = connack(ep, client_id, username=username, will=(will_topic, b"m"))
            assert code == IDENTIFIER_REJECTED
        watcher.publish(topic, b"still alice's")
        assert live.wait_for(lambda m: m.payload == b"still alice's")
        assert live.connected
        live.drop()
        will = watcher.wait_for(lambda m: m.topic == will_topic)
        assert will is not None and will.payload == b"a"
    refused = events(broker_launcher, ep, "session_takeover_refused")
    assert refused[0]["client_id"] == client_id and refused[0]["holder"] == "alice"


def test_persistent_sessions_are_refused(broker_launcher: BrokerLauncher, tmp_path: Path) -> None:
    ep = start(broker_launcher, broker_config(tmp_path))
    client_id = f"persist-{uid()}"
    assert connack(ep, client_id, clean=False) == IDENTIFIER_REJECTED
    assert connack(ep, client_id, clean=True) == ACCEPTED
    (event,) = events(broker_launcher, ep, "persistent_session_refused")
    assert event["client_id"] == client_id


# -- caps ---------------------------------------------------------------------------------------


def _connected_within(ep: BrokerEndpoint, client_id: str, timeout: float, **kw: Any) -> RawClient:
    """Connect, retrying while the broker still counts a connection that was just closed."""
    deadline = time.monotonic() + timeout
    while True:
        raw = RawClient(ep, client_id, **kw)
        if raw.code == ACCEPTED or time.monotonic() > deadline:
            return raw
        raw.close()
        time.sleep(0.1)


def test_connection_caps_per_account_and_in_total(
    broker_launcher: BrokerLauncher, tmp_path: Path
) -> None:
    mesh = broker_config(tmp_path, max_connections=3, max_connections_per_account=2)
    ep = start(broker_launcher, mesh)
    held: list[RawClient] = []
    try:
        for name in ("a1", "a2"):
            held.append(RawClient(ep, name, username="alice"))
            assert held[-1].code == ACCEPTED
        assert connack(ep, "a3", username="alice") == SERVER_UNAVAILABLE  # per account
        # A takeover at the cap replaces a connection: not refused.
        held.append(RawClient(ep, "a2", username="alice"))
        assert held[-1].code == ACCEPTED
        held.append(RawClient(ep, "b1", username="bob"))
        assert held[-1].code == ACCEPTED
        assert connack(ep, "b2", username="bob") == SERVER_UNAVAILABLE  # in total
        assert connack(ep, "anon") == SERVER_UNAVAILABLE  # in total, anonymous too
        held.pop(0).close()  # a1 leaves: a slot is free again
        held.append(_connected_within(ep, "b2", 3, username="bob"))
        assert held[-1].code == ACCEPTED
    finally:
        for raw in held:
            raw.close()
    caps = {e["cap"] for e in events(broker_launcher, ep, "connection_cap")}
    assert caps == {"max_connections_per_account", "max_connections"}


def test_a_device_and_its_probe_are_one_account(
    broker_launcher: BrokerLauncher, tmp_path: Path
) -> None:
    mesh = broker_config(tmp_path, ("w1", "w2"), max_connections_per_account=1)
    ep = start(broker_launcher, mesh)
    w1, w1_probe = mesh.login(device("w1")), mesh.login(device("w1") + ".probe")
    live = RawClient(ep, w1.pop("client_id"), **w1)
    try:
        assert live.code == ACCEPTED
        assert connack(ep, w1_probe.pop("client_id"), **w1_probe) == SERVER_UNAVAILABLE
        w2 = mesh.login(device("w2"))
        assert connack(ep, w2.pop("client_id"), **w2) == ACCEPTED
    finally:
        live.close()


def test_retained_caps_per_account(broker_launcher: BrokerLauncher, tmp_path: Path) -> None:
    mesh = broker_config(
        tmp_path, ("w1", "obs"), max_retained_per_account=2, max_retained_bytes_per_account=1000
    )
    ep = start(broker_launcher, mesh)
    obs = mesh.login(device("obs"))
    base = f"r/{uid()}"
    with client(ep, f"{base}/#", **obs) as live, client(ep, **mesh.login(device("w1"))) as w1:
        w1.publish(f"{base}/1", b"one", retain=True)
        w1.publish(f"{base}/2", b"two", retain=True)
        w1.publish(f"{base}/3", b"three", retain=True)  # a third: over the count
        # Delivered live all the same, retained only within the cap.
        assert live.wait_for(lambda m: m.payload == b"three")
        assert retained(ep, f"{base}/#", **obs) == {f"{base}/1": b"one", f"{base}/2": b"two"}
        w1.publish(f"{base}/1", b"one again", retain=True)  # its own topic: no second count
        w1.publish(f"{base}/2", b"", retain=True)  # clearing frees a place...
        w1.publish(f"{base}/3", b"three", retain=True)  # ...for another topic
        assert retained(ep, f"{base}/#", **obs) == {
            f"{base}/1": b"one again",
            f"{base}/3": b"three",
        }
        # Bytes: 1000 per account, payloads and topics.
        w1.publish(f"{base}/3", b"", retain=True)
        w1.publish(f"{base}/1", b"x" * 600, retain=True)  # replaces its 'one again'
        w1.publish(f"{base}/2", b"y" * 600, retain=True)  # 1200 in all: not retained
        assert retained(ep, f"{base}/#", **obs) == {f"{base}/1": b"x" * 600}
        # Over the cap on its own: not retained, and the message it replaces is dropped (a
        # late subscriber gets nothing rather than a state its publisher has replaced).
        w1.publish(f"{base}/1", b"z" * 1200, retain=True)
        assert retained(ep, f"{base}/#", **obs) == {}
        w1.publish(f"{base}/2", b"y" * 600, retain=True)  # the quota is free again
        assert retained(ep, f"{base}/#", **obs) == {f"{base}/2": b"y" * 600}
    caps = {e["cap"] for e in events(broker_launcher, ep, "retained_cap")}
    assert caps == {"max_retained_per_account", "max_retained_bytes_per_account"}


def test_retained_caps_in_total(broker_launcher: BrokerLauncher, tmp_path: Path) -> None:
    mesh = broker_config(
        tmp_path, ("w1", "w2", "obs"), max_retained_messages=3, max_retained_bytes=2000
    )
    ep = start(broker_launcher, mesh)
    obs = mesh.login(device("obs"))
    base = f"r/{uid()}"
    with client(ep, **mesh.login(device("w1"))) as w1, client(ep, **mesh.login(device("w2"))) as w2:
        w1.publish(f"{base}/a", b"a", retain=True)
        w1.publish(f"{base}/b", b"b", retain=True)
        w2.publish(f"{base}/c", b"c", retain=True)
        w2.publish(f"{base}/d", b"d", retain=True)  # a fourth in all
        assert set(retained(ep, f"{base}/#", **obs)) == {f"{base}/a", f"{base}/b", f"{base}/c"}
        # Another account overwriting a topic takes it over: the count stays at 3.
        w2.publish(f"{base}/a", b"a by w2", retain=True)
        w1.publish(f"{base}/b", b"", retain=True)  # w1 clears its own: a place is free
        w2.publish(f"{base}/d", b"d", retain=True)
        assert retained(ep, f"{base}/#", **obs) == {
            f"{base}/a": b"a by w2",
            f"{base}/c": b"c",
            f"{base}/d": b"d",
        }
        for t in ("a", "c", "d"):
            w2.publish(f"{base}/{t}", b"", retain=True)
        # Bytes: 2000 in all, whoever holds them.
        w1.publish(f"{base}/big1", b"1" * 1500, retain=True)
        w2.publish(f"{base}/big2", b"2" * 600, retain=True)
        assert set(retained(ep, f"{base}/#", **obs)) == {f"{base}/big1"}
        w1.publish(f"{base}/big1", b"", retain=True)
        w2.publish(f"{base}/big2", b"2" * 600, retain=True)
        assert set(retained(ep, f"{base}/#", **obs)) == {f"{base}/big2"}
    caps = {e["cap"] for e in events(broker_launcher, ep, "retained_cap")}
    assert caps == {"max_retained_messages", "max_retained_bytes"}


# -- wills --------------------------------------------------------------------------------------


def test_a_stopping_broker_fires_no_will(broker_launcher: BrokerLauncher, tmp_path: Path) -> None:
    """amqtt alone publishes the will of every client still connected while it stops (7 of 8
    reached a watcher that connected after them): each one a live client reported dead, a
    live leader's term given away (RESTART_BROKER under load)."""
    ep = start(broker_launcher, broker_config(tmp_path))
    will_topic = f"t/{uid()}"
    # amqtt ends sessions in the order they began: the watcher's last.
    dying: list[Client] = []
    try:
        dying.extend(Client(ep, will=(f"{will_topic}/{i}", b"lost")) for i in range(8))
        with client(ep, f"{will_topic}/#") as watcher:
            broker_launcher.process(ep).stop()
            deadline = time.monotonic() + 10
            while watcher.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not watcher.connected, "the broker did not stop"
            assert [m.topic for m in watcher.messages] == []
    finally:
        for c in dying:
            c.drop()


def test_a_qos1_will_reaches_a_qos0_subscriber_at_qos0(
    broker_launcher: BrokerLauncher, tmp_path: Path
) -> None:
    """§3.3.5: delivered at no more than the subscription's QoS (amqtt alone sends the will's)."""
    ep = start(broker_launcher, broker_config(tmp_path))
    will_topic = f"t/{uid()}/status"
    with client(ep) as qos0, client(ep) as qos1:
        qos0.subscribe(will_topic, qos=0)
        qos1.subscribe(will_topic, qos=1)
        dying = Client(ep, will=(will_topic, b"lost"))  # will QoS 1
        dying.drop()
        got0 = qos0.wait_for(lambda m: m.topic == will_topic)
        got1 = qos1.wait_for(lambda m: m.topic == will_topic)
        assert got0 is not None and (got0.payload, got0.qos) == (b"lost", 0)
        assert got1 is not None and (got1.payload, got1.qos) == (b"lost", 1)


def test_nothing_is_retained_outside_the_retained_topics(
    broker_launcher: BrokerLauncher, tmp_path: Path
) -> None:
    """A retained heartbeat, result, frame or event would be replayed to every late subscriber
    as if current: delivered live, never kept. Statuses are retained as usual."""
    mesh = broker_config(tmp_path, ("w1", "obs"))
    ep = start(broker_launcher, mesh)
    obs = mesh.login(device("obs"))
    t = Topics(MESH)
    transient = (
        t.worker_heartbeat("w1"),
        t.app_results("a1", "w1"),
        t.sensor_frames("cam1"),
        t.events_of(Role.WORKER, "w1"),
    )
    with client(ep, t.everything, **obs) as live, client(ep, **mesh.login(device("w1"))) as w1:
        for topic in transient:
            w1.publish(topic, b"retain-me", retain=True)
        w1.publish(t.worker_status("w1"), b"birth", retain=True)
        assert live.wait_for(lambda m: m.topic == t.worker_status("w1"))
        assert {m.topic for m in live.messages} >= set(transient)  # delivered live
        assert retained(ep, t.everything, **obs) == {t.worker_status("w1"): b"birth"}
        w1.publish(t.worker_status("w1"), b"", retain=True)
    refused = [e for e in events(broker_launcher, ep, "retained_cap")]
    assert {e["cap"] for e in refused} == {"not_retained_topic"}
    # The log lines are rate-limited; the count at stop is not.
    broker_launcher.process(ep).stop()
    (stopped,) = events(broker_launcher, ep, "broker_stopped")
    assert stopped["refused"]["not_retained_topic"] == len(transient)
