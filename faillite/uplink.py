"""``faillite uplink``: a kit reporting to a rear site's broker over a slow, lossy link.

Two connections: to the kit's broker as ``{mesh}.uplink.{id}`` (its ACL reads what may go up
and writes only the ``down`` topics the kit allows), and to the rear broker with the rear's
own address, CA and account (``uplink.upstream``).

Up: every message of the configured kinds (:mod:`faillite.uplink_policy`) goes into a bounded
:class:`~faillite.uplink_policy.RearQueue` (oldest streaming message dropped first and counted,
retained state coalesced per topic), and from there to the rear broker under ``prefix`` with
its retained flag, at most ``max_inflight`` unacknowledged at a time: on a slow link the
backlog stays in our bounded queue, not in the MQTT client's unbounded one.

Down: only the allowed filters are subscribed on the rear broker; each message is checked
again (topic and size) before it is published into the kit; refusals are counted.

Mosquitto's own bridge does the carrying but cannot bound its queue by dropping the oldest
with a count, nor coalesce retained state, which is why this is a role of its own.

The uplink's status (queue, drops, refusals, link) is retained on the rear broker at
``{prefix}/uplink/{id}/status`` (with a last-will), logged, and shown by systemd.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from faillite.config import BrokerConfig, ConfigError, MeshConfig, UplinkConfig, UpstreamConfig
from faillite.identity import Identity
from faillite.log import get_logger
from faillite.mqtt import MeshClient, Raw, Will
from faillite.sdnotify import Beats
from faillite.topics import Role, Topics
from faillite.uplink_policy import (
    OWN_SUBTREE,
    DownGate,
    Outbound,
    RearQueue,
    is_retained,
    kind_of,
    up_filters,
)

log = get_logger("uplink")

DROP_LOG_EVERY_S = 5.0
PUMP_IDLE_S = 0.5


class Delivery(Protocol):
    """What the MQTT client hands back for one publish."""

    @property
    def rc(self) -> int: ...

    def is_published(self) -> bool: ...


class UpstreamBroker(BrokerConfig):
    """The rear broker as a :class:`MeshClient` sees it: the rear's account, not a kit identity."""

    login: str | None = None
    secret: str | None = None

    def credentials(self, client_id: str) -> tuple[str, str | None]:
        return self.login or client_id, self.secret

    @classmethod
    def of(cls, up: UpstreamConfig) -> UpstreamBroker:
        secret = None
        if up.password_file is not None:
            try:
                secret = up.password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"uplink: cannot read the rear account's secret {up.password_file} "
                    f"({exc.strerror})"
                ) from exc
        return cls(
            host=up.host,
            port=up.port,
            fallbacks=up.fallbacks,
            tls=up.tls,
            keepalive_s=up.keepalive_s,
            probe_after_s=up.probe_after_s,
            silent_after_s=up.silent_after_s,
            reconnect_min_s=up.reconnect_min_s,
            reconnect_max_s=up.reconnect_max_s,
            login=up.username,
            secret=secret,
        )


class RearClient(MeshClient):
    """The connection to the rear broker: publishes it can count until acknowledged."""

    def __init__(self, *args: Any, on_ack: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # MeshClient leaves on_publish unset; the uplink's window needs the acknowledgements.
        self._client.on_publish = lambda *_a: on_ack()

    def publish_tracked(self, topic: str, payload: bytes, qos: int, retain: bool) -> Delivery:
        info: Delivery = self._client.publish(topic, payload, qos=qos, retain=retain)
        return info


def _settled(d: Delivery) -> bool:
    try:
        return d.is_published()
    except (RuntimeError, ValueError):
        return True  # refused or queued by the client for the next session: not ours to hold


class Uplink:
    """One kit's uplink to its rear site."""

    def __init__(self, cfg: MeshConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        if cfg.uplink is None:
            raise ConfigError("this mesh config has no uplink section")
        u: UplinkConfig = cfg.uplink
        self.cfg = u
        self.mesh = cfg.mesh
        self.clock = clock
        self.identity = Identity(cfg.mesh, Role.UPLINK, u.id)
        self.topics = Topics(cfg.mesh)
        self.prefix = u.topic_prefix(cfg.mesh)
        self.status_topic = f"{self.prefix}/{OWN_SUBTREE}/{u.id}/status"
        self.incarnation = uuid.uuid4().hex[:12]
        self.queue = RearQueue(u.max_queued_messages, u.max_queued_bytes, clock)
        self.gate = DownGate(cfg.mesh, self.prefix, u.down, u.max_down_bytes)
        self.beats = Beats()
        self._lock = threading.Condition()
        self._window: list[Delivery] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0  # handed to the rear connection
        self.send_failed = 0  # QoS 0 publishes the client refused (link went down meanwhile)
        self.unexpected_up = 0
        self._drops_logged = 0
        self._drop_log_at = 0.0
        self._rear_down_at: float | None = None  # not lost yet: never connected is no outage
        self._draining_since: float | None = None
        self.last_outage_s: float | None = None
        self.last_drain_s: float | None = None

        self.kit = MeshClient(self.identity.name, cfg.broker)
        for f in up_filters(u.up):
            self.kit.subscribe(f"{self.topics.prefix}/{f}", self._from_kit, qos=1)
        offline = orjson.dumps(
            {"uplink": u.id, "mesh": cfg.mesh, "state": "offline", "incarnation": self.incarnation}
        )
        up = UpstreamBroker.of(u.upstream)
        self.rear = RearClient(
            u.upstream.client_id or u.upstream.username or self.identity.name,
            up,
            will=Will(self.status_topic, offline, qos=1, retain=True),
            on_ack=self._wake,
        )
        for f in self.gate.upstream_filters:
            self.rear.subscribe(f, self._from_rear, qos=1)
        self.rear.on_connect(self._rear_connected)
        self.rear.on_disconnect(self._rear_disconnected)

    # -- up ----------------------------------------------------------------------------

    def _from_kit(self, raw: Raw) -> None:
        rel = raw.topic[len(self.topics.prefix) + 1 :]
        kind = kind_of(rel, self.cfg.up)
        if kind is None:
            self.unexpected_up += 1
            return
        msg = Outbound(
            topic=f"{self.prefix}/{rel}",
            payload=raw.payload,
            retain=raw.retain or is_retained(rel),
            kind=kind,
            queued_at=self.clock(),
        )
        with self._lock:
            self.queue.put(msg)
            dropped = self.queue.stats.dropped
            self._lock.notify()
        if dropped > self._drops_logged:
            self._log_drops(dropped)

    def _log_drops(self, dropped: int) -> None:
        now = self.clock()
        if self._drops_logged and now - self._drop_log_at < DROP_LOG_EVERY_S:
            return
        self._drop_log_at = now
        new, self._drops_logged = dropped - self._drops_logged, dropped
        s = self.queue.stats
        log.warning(
            "uplink_queue_full_dropping_oldest",
            dropped_now=new,
            dropped=s.dropped,
            dropped_by_kind=dict(s.dropped_by_kind),
            queued=s.queued,
            queued_bytes=s.queued_bytes,
            rear_connected=self.rear.connected,
        )

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify()

    def _pump(self) -> None:
        """Move messages from the queue to the rear broker, within the in-flight window."""
        next_status = self.clock()
        while not self._stopping.is_set():
            self.beats.beat("pump")
            batch: list[Outbound] = []
            with self._lock:
                self._window = [d for d in self._window if not _settled(d)]
                if self.rear.connected:
                    free = self.cfg.max_inflight - len(self._window)
                    while free > 0:
                        msg = self.queue.pop()
                        if msg is None:
                            break
                        batch.append(msg)
                        free -= 1
                    self._check_drained()
                if not batch:
                    self._lock.wait(PUMP_IDLE_S)
            for msg in batch:
                d = self.rear.publish_tracked(msg.topic, msg.payload, self.cfg.qos, msg.retain)
                self.sent += 1
                if self.cfg.qos == 0 and d.rc != 0:
                    self.send_failed += 1
                with self._lock:
                    self._window.append(d)
            if self.clock() >= next_status:
                next_status = self.clock() + self.cfg.status_interval_s
                self._report()

    def _check_drained(self) -> None:
        if self._draining_since is not None and not len(self.queue) and not self._window:
            self.last_drain_s = self.clock() - self._draining_since
            self._draining_since = None
            log.info("uplink_drained", drain_s=round(self.last_drain_s, 3), sent=self.sent)

    # -- down --------------------------------------------------------------------------

    def _from_rear(self, raw: Raw) -> None:
        kit_topic, reason = self.gate.admit(raw.topic, raw.payload)
        if kit_topic is None:
            log.warning(
                "uplink_down_refused", topic=raw.topic[:200], reason=reason, bytes=len(raw.payload)
            )
            return
        self.kit.publish(kit_topic, raw.payload, qos=1, retain=raw.retain)
        log.info("uplink_down", topic=kit_topic, bytes=len(raw.payload), retain=raw.retain)

    # -- the rear link -----------------------------------------------------------------

    def _rear_connected(self) -> None:
        now = self.clock()
        with self._lock:
            queued = len(self.queue)
            if self._rear_down_at is not None:
                self.last_outage_s = now - self._rear_down_at
            self._rear_down_at = None
            self._draining_since = now if queued or self._window else None
            self._lock.notify()
        log.info(
            "uplink_rear_connected",
            queued=queued,
            outage_s=self.last_outage_s,
            dropped=self.queue.stats.dropped,
        )
        self._publish_status()

    def _rear_disconnected(self) -> None:
        if self._stopping.is_set():
            return
        with self._lock:
            if self._rear_down_at is None and self.rear.connects:
                self._rear_down_at = self.clock()
        log.warning("uplink_rear_lost", queued=len(self.queue))

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            s = self.queue.stats
            return {
                "uplink": self.cfg.id,
                "mesh": self.mesh,
                "incarnation": self.incarnation,
                "state": "online",
                "ts": time.time(),
                "rear_connected": self.rear.connected,
                "kit_connected": self.kit.connected,
                "queued": s.queued,
                "queued_bytes": s.queued_bytes,
                "high_water": s.high_water,
                "oldest_age_s": round(self.queue.oldest_age_s(), 3),
                "accepted": s.accepted,
                "sent": self.sent,
                "inflight": len(self._window),
                "coalesced": s.coalesced,
                "dropped": s.dropped,
                "dropped_by_kind": dict(s.dropped_by_kind),
                "send_failed": self.send_failed,
                "down_passed": self.gate.passed,
                "down_refused": {
                    **self.gate.refused,
                    "unsubscribed": self.rear.unexpected_messages,
                },
                "last_outage_s": self.last_outage_s,
                "last_drain_s": self.last_drain_s,
            }

    def _publish_status(self) -> None:
        if self.rear.connected:
            self.rear.publish(self.status_topic, orjson.dumps(self.status()), qos=1, retain=True)

    def _report(self) -> None:
        st = self.status()
        log.info("uplink_status", **{k: v for k, v in st.items() if k not in ("uplink", "mesh")})
        self._publish_status()

    def status_line(self) -> str:
        s = self.status()
        return (
            f"uplink {s['uplink']}: rear {'up' if s['rear_connected'] else 'DOWN'}, "
            f"queued {s['queued']} ({s['queued_bytes']} B, high {s['high_water']}), "
            f"sent {s['sent']}, dropped {s['dropped']}, down {s['down_passed']} passed / "
            f"{sum(s['down_refused'].values())} refused"
        )

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        up = self.cfg.upstream
        log.info(
            "uplink_starting",
            prefix=self.prefix,
            up=list(self.cfg.up),
            down=list(self.cfg.down),
            rear=f"{up.host}:{up.port}",
        )
        self.kit.start(connect_timeout=None)
        self.rear.start(connect_timeout=None)
        self._thread = threading.Thread(target=self._pump, name="uplink-pump", daemon=True)
        self._thread.start()

    def alive(self) -> str | None:
        return self.beats.stale(max(10.0, 4 * PUMP_IDLE_S))

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        offline = {**self.status(), "state": "offline"}
        self.rear.stop(
            final=lambda: self.rear.publish(
                self.status_topic, orjson.dumps(offline), qos=1, retain=True
            )
        )
        self.kit.stop()
        log.info("uplink_stopped", sent=self.sent, dropped=offline["dropped"])
