"""The camera publisher: frames from a source, JPEG in an envelope, at a target rate.

With ``--results`` it follows its apps' results for end-to-end latency, believing only those
from the worker that the app's retained route names (:class:`~faillite.routes.RouteFilter`):
it follows the routes too, and counts refused results by reason. A broker whose ACL does not
let sensors read routes leaves every app without a route: its results count as unverified.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from faillite import envelope, messages
from faillite.config import BrokerConfig, SensorConfig
from faillite.identity import Identity
from faillite.log import get_logger
from faillite.mqtt import Inbound, MeshClient
from faillite.presence import Presence
from faillite.routes import RouteFilter, Verdict, app_of
from faillite.sdnotify import Beats
from faillite.signing import Verifier
from faillite.stats import RateMeter, Window
from faillite.topics import APP_RESULTS, APP_ROUTE, Role, Topics
from sensors.sources import FrameSource, SourceError, open_source

log = get_logger("sensor")
# How long the publishing loop may go without progress (on top of one frame period) before the
# sensor counts as hung (systemd's watchdog then restarts it): a camera that stopped answering.
WATCHDOG_STALE_S = 20.0


@dataclass(frozen=True, slots=True)
class SensorReport:
    sent: int
    dropped: int
    not_connected: int
    results: int
    fps: float
    e2e_ms: str
    connected: bool
    broker: str
    refused: int = 0  # results not believed (not from the routed worker...)
    unverified: int = 0  # results counted before their app had a route

    def line(self, sensor: str) -> str:
        link = "connected" if self.connected else f"NOT CONNECTED to {self.broker} (retrying)"
        trust = (f" refused={self.refused}" if self.refused else "") + (
            f" unverified={self.unverified}" if self.unverified else ""
        )
        return (
            f"[{sensor}] {link} sent={self.sent} dropped={self.dropped} "
            f"not_connected={self.not_connected} fps={self.fps:.1f} results={self.results}"
            f"{trust} e2e {self.e2e_ms}"
        )


class SensorPublisher:
    """Publishes one sensor's frames; with ``follow_results`` it measures end-to-end latency.

    Rate control keeps an absolute schedule: a frame whose slot has passed (slow source, slow
    encode, stalled process) is skipped and counted as dropped instead of bursting to catch up.
    """

    def __init__(
        self,
        mesh: str,
        cfg: SensorConfig,
        broker: BrokerConfig,
        *,
        follow_results: bool = False,
        source: FrameSource | None = None,
        apps: tuple[str, ...] | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        """``apps``: the apps of this camera, whose results it follows (``follow_results``);
        None: every app's. The broker lets a camera read only its own apps' where it knows
        them (least privilege: another camera's results are none of its business).
        ``verifier``: where the mesh signs, routes without the coordinators' signature are
        refused."""
        self.cfg = cfg
        self.topics = Topics(mesh)
        self.incarnation = uuid.uuid4().hex[:12]
        self._tag = int(self.incarnation[:8], 16)
        self.source = source or open_source(cfg.source, cfg.width, cfg.height, cfg.loop)
        self.broker = broker
        self.presence = Presence(
            self.topics.sensor_status(cfg.id),
            messages.SensorStatus,
            self._birth,
            on_replaced=lambda _st: self.stop(),
        )
        self.client_id = Identity(mesh, Role.SENSOR, cfg.id).name
        self.client = MeshClient(self.client_id, broker, presence=self.presence)
        self.frames_topic = self.topics.sensor_frames(cfg.id)
        self.sent = 0
        self.dropped = 0
        self.not_connected = 0
        self.results = 0
        self.unverified = 0
        self.routes = RouteFilter(verifier=verifier)  # whose results to believe (--results)
        self.e2e = Window()
        self.rate = RateMeter()
        self._stop = threading.Event()
        self.beats = Beats()
        if follow_results:
            t = self.topics
            routes = [t.filter(APP_ROUTE)] if apps is None else [t.app_route(a) for a in apps]
            results = (
                [t.filter(APP_RESULTS)] if apps is None else [t.app_results_filter(a) for a in apps]
            )
            for route in routes:
                self.client.subscribe_json(
                    route,
                    messages.Route,
                    self._on_route,
                    qos=1,
                    on_cleared=self._on_route_cleared,
                )
            for result in results:
                self.client.subscribe_json(result, messages.Result, self._on_result, qos=0)

    def _birth(self, ts: float) -> messages.SensorStatus:
        return messages.SensorStatus(
            sensor=self.cfg.id,
            state="online",
            incarnation=self.incarnation,
            ts=ts,
            source=self.source.describe(),
            fps=self.cfg.fps,
            width=self.cfg.width,
            height=self.cfg.height,
        )

    # -- network thread (with follow_results) ------------------------------------------------

    def _on_route(self, inbound: Inbound[messages.Route]) -> None:
        for rel in self.routes.on_route(inbound.message, topic_app=app_of(inbound.topic)):
            if rel.result.sensor == self.cfg.id:
                self._count(rel.result, rel.received)

    def _on_route_cleared(self, topic: str) -> None:
        app = app_of(topic)
        if app is not None:
            self.routes.forget(app)

    def _on_result(self, inbound: Inbound[messages.Result]) -> None:
        result = inbound.message
        if result.sensor != self.cfg.id:
            return  # another sensor's app: not ours to judge or count
        now = time.time()
        verdict = self.routes.check(result, topic=inbound.topic, received=now)
        if verdict is Verdict.UNVERIFIED:
            self.unverified += 1
        if verdict.accepted:
            self._count(result, now)

    def _count(self, result: messages.Result, received: float) -> None:
        self.results += 1
        self.e2e.add((received - result.capture_ts) * 1000.0)

    def refused(self) -> dict[str, int]:
        """Results not believed, by reason (see :class:`~faillite.routes.RouteFilter`)."""
        self.routes.expire()
        return self.routes.refused.snapshot()

    def report(self) -> SensorReport:
        return SensorReport(
            self.sent,
            self.dropped,
            self.not_connected,
            self.results,
            self.rate.rate(time.monotonic()),
            self.e2e.snapshot().fmt(),
            self.client.connected,
            f"{self.broker.host}:{self.broker.port}",
            sum(self.refused().values()),
            self.unverified,
        )

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> threading.Event:
        return self._stop

    def claim(self, *, replace: bool = False) -> None:
        """Refuse to start if this sensor id is already live (see :class:`Presence`)."""
        self.presence.claim(
            self.broker,
            self.client_id,
            life_topic=self.frames_topic,
            liveness_s=max(1.0, 3.0 / self.cfg.fps),
            replace=replace,
        )

    def alive(self) -> str | None:
        """Why this sensor looks hung (its publishing loop without progress), or None."""
        if self._stop.is_set():
            return None
        return self.beats.stale(WATCHDOG_STALE_S + 1.0 / self.cfg.fps)

    def run(
        self,
        duration_s: float | None = None,
        max_frames: int | None = None,
        *,
        ready: Callable[[], None] | None = None,
    ) -> None:
        """Publish until stopped, the duration passes, or a finite source ends. A broker that
        is not there yet is retried in the background; frames meanwhile count as not sent.
        ``ready`` is called once the first frame was read and handed to the client."""
        self.client.start(connect_timeout=None)
        period = 1.0 / self.cfg.fps
        start = time.monotonic()
        next_slot = start
        seq = 0
        log.info(
            "sensor_started",
            sensor=self.cfg.id,
            source=self.source.describe(),
            fps=self.cfg.fps,
            incarnation=self.incarnation,
            pid=os.getpid(),
            host=socket.gethostname(),
        )
        try:
            while not self._stop.is_set():
                self.beats.beat("publish")
                now = time.monotonic()
                if duration_s is not None and now - start >= duration_s:
                    break
                if max_frames is not None and seq >= max_frames:
                    break
                if now < next_slot:
                    self._stop.wait(next_slot - now)
                    continue
                missed = int((now - next_slot) / period)
                if missed:
                    self.dropped += missed
                    next_slot += missed * period
                next_slot += period
                try:
                    image = self.source.read()
                except SourceError as exc:
                    log.exception("source_failed", sensor=self.cfg.id, error=str(exc))
                    break
                if image is None:
                    log.info("source_ended", sensor=self.cfg.id)
                    break
                capture_ns = time.time_ns()
                jpeg = envelope.encode_jpeg(image, self.cfg.jpeg_quality)
                payload = envelope.pack(
                    jpeg,
                    seq=seq,
                    capture_ns=capture_ns,
                    width=image.shape[1],
                    height=image.shape[0],
                    tag=self._tag,
                )
                seq += 1
                if self.client.publish(self.frames_topic, payload, qos=0):
                    self.sent += 1
                    self.rate.tick(time.monotonic())
                else:
                    self.not_connected += 1
                if seq == 1 and ready is not None:
                    ready()
        finally:
            self.source.close()
            self.client.stop()
            log.info(
                "sensor_stopped",
                sensor=self.cfg.id,
                sent=self.sent,
                dropped=self.dropped,
                not_connected=self.not_connected,
                results=self.results,
                refused=self.refused(),
                unverified=self.unverified,
                e2e_ms=self.e2e.snapshot().fmt(),
            )
