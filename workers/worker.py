"""The worker process: serves the apps its retained assignment names.

Threads, and why each exists:

- network (paho, inside :class:`MeshClient`): only decodes control messages and enqueues
  frames. Inference here would starve keepalive and make the broker fire a false last-will.
- control: applies assignments in (term, generation) order; loads models here, so a slow load
  never stalls serving of the apps already running.
- inference: takes frames round-robin from the drop-oldest queues, decodes, preprocesses,
  runs the model, publishes results.
- heartbeat: liveness plus progress counters every ``heartbeat_interval_s``.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import psutil

from faillite import envelope, messages
from faillite.badinput import BadInput
from faillite.catalog import Catalog, Preprocess
from faillite.config import MeshConfig, WorkerConfig
from faillite.log import bind, get_logger
from faillite.models.labels import imagenet_labels
from faillite.models.preprocess import preprocess, top_k
from faillite.mqtt import MeshClient, Will
from faillite.stats import Window
from faillite.topics import Role, Topics
from workers.backends import Backend, BackendError, LoadedModel, create_backend
from workers.frame_queue import FrameQueues, QueuedFrame

log = get_logger("worker")
HELD_FRAME_MAX_AGE_NS = 500_000_000  # a held frame older than this is not worth serving


@dataclass(frozen=True, slots=True)
class Serving:
    """An app this worker serves now, with the loaded model it uses."""

    app: str
    sensor: str
    variant: str
    model: LoadedModel
    spec: Preprocess
    labels: bool


class Worker:
    def __init__(self, mesh: MeshConfig, cfg: WorkerConfig, catalog: Catalog) -> None:
        self.mesh = mesh
        self.cfg = cfg
        self.catalog = catalog
        self.models_dir = cfg.models_dir or mesh.models_path
        self.topics = Topics(mesh.mesh)
        self.incarnation = uuid.uuid4().hex[:12]
        bind(worker=cfg.id, incarnation=self.incarnation)
        self.backend: Backend = create_backend(cfg.backend)
        self.bad = BadInput()
        self.queues = FrameQueues(cfg.queue_size)
        self.loaded: dict[str, LoadedModel] = {}
        self.load_count = 0
        self._serving: dict[str, Serving] = {}  # replaced whole, never mutated (copy-on-write)
        self._by_sensor: dict[str, tuple[str, ...]] = {}
        # Warm-backup apps: their latest frame is held, so a promotion serves it at once.
        self._standby_by_sensor: dict[str, tuple[str, ...]] = {}
        self._held: dict[str, QueuedFrame] = {}
        self._infer_lock = threading.Lock()
        self._standby: tuple[messages.Serve, ...] = ()
        self._subscribed: set[str] = set()
        self.assignment: messages.Assignment | None = None
        self._pending: queue.Queue[messages.Assignment] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._proc = psutil.Process()
        # Progress counters (single writer each; read by the heartbeat thread).
        self.frames_received = 0
        self.frames_processed = 0
        self.results_published = 0
        self.last_progress_ts = 0.0
        self.busy = False
        self._hb_seq = 0
        # Drill hooks (``faillite worker --fault-injection``): a hung inference thread with
        # heartbeats still flowing (gray failure), and a slow one (SLO violation).
        self.fault_hang = threading.Event()
        self.fault_slow_s = 0.0
        self.app_received: dict[str, int] = {}
        self.app_processed: dict[str, int] = {}
        self.app_latency: dict[str, Window] = {}

        will = Will(
            self.topics.worker_status(cfg.id), messages.encode(self._status("offline", "lost"))
        )
        self.client = MeshClient(
            f"faillite-{mesh.mesh}-worker-{cfg.id}", mesh.broker, role=Role.WORKER, will=will
        )
        self.client.on_connect(self._publish_birth)
        self.client.subscribe(self.topics.worker_assignment(cfg.id), self._on_assignment, qos=1)

    # -- identity --------------------------------------------------------------------------

    def models_on_disk(self) -> tuple[str, ...]:
        suffix = self.backend.file_suffix
        return tuple(
            v.name
            for v in self.catalog.variants()
            if (self.models_dir / Path(v.file).with_suffix(suffix).name).is_file()
            or (self.models_dir / v.file).is_file()
        )

    def _status(self, state: str, reason: str = "") -> messages.WorkerStatus:
        devices = self.backend.devices()
        return messages.WorkerStatus(
            worker=self.cfg.id,
            incarnation=self.incarnation,
            state=state,  # type: ignore[arg-type]
            ts=messages.now(),
            reason=reason,
            host=socket.gethostname(),
            pid=os.getpid(),
            device_class=self.cfg.device_class,
            device=devices[0] if devices else "",
            memory_mb=self.cfg.memory_mb,
            compute_budget=self.cfg.compute_budget,
            disk_mb=self.cfg.disk_mb,
            failure_domain=self.cfg.domain,
            backends=devices,
            models_on_disk=self.models_on_disk() if state == "online" else (),
            heartbeat_interval_s=self.cfg.heartbeat_interval_s,
        )

    def _publish_birth(self) -> None:
        self.client.publish(
            self.topics.worker_status(self.cfg.id),
            messages.encode(self._status("online")),
            qos=1,
            retain=True,
        )

    def _event(self, kind: str, app: str = "", **detail: Any) -> None:
        ev = messages.Event(
            kind=kind,
            ts=messages.now(),
            source=f"worker/{self.cfg.id}",
            worker=self.cfg.id,
            app=app,
            detail=detail,
        )
        self.client.publish(self.topics.events, messages.encode(ev), qos=0)

    # -- network thread --------------------------------------------------------------------

    def _on_assignment(self, msg: paho.MQTTMessage) -> None:
        if not msg.payload:
            return  # a cleared retained assignment
        a = self.bad.decode(messages.Assignment, msg)
        if a is None:
            return
        if a.worker != self.cfg.id:
            self.bad.count("wrong_worker", f"assignment for {a.worker!r}", topic=msg.topic)
            return
        self._pending.put(a)

    def _make_frame_handler(self, sensor: str) -> Any:
        max_bytes = self.mesh.max_frame_bytes

        def on_frame(msg: paho.MQTTMessage) -> None:
            now = time.monotonic_ns()
            payload = msg.payload
            if len(payload) > max_bytes:
                self.bad.count(
                    "oversized_frame", f"{len(payload)} bytes > {max_bytes}", sensor=sensor
                )
                return
            data = bytes(payload)
            for app in self._by_sensor.get(sensor, ()):
                self.frames_received += 1
                self.app_received[app] = self.app_received.get(app, 0) + 1
                self.queues.put(QueuedFrame(app, data, now))
            for app in self._standby_by_sensor.get(sensor, ()):
                self._held[app] = QueuedFrame(app, data, now)

        return on_frame

    # -- control thread --------------------------------------------------------------------

    def _control_loop(self) -> None:
        while not self._stop.is_set():
            try:
                a = self._pending.get(timeout=0.2)
            except queue.Empty:
                continue
            # Only the newest pending assignment matters.
            while True:
                try:
                    nxt = self._pending.get_nowait()
                except queue.Empty:
                    break
                if nxt.version() > a.version():
                    a = nxt
            try:
                self.apply(a)
            except Exception:
                log.exception("assignment_apply_failed", term=a.term, generation=a.generation)

    def _load(self, variant: str) -> LoadedModel | None:
        model = self.loaded.get(variant)
        if model is not None:
            return model
        try:
            v = self.catalog.variant(variant)
        except KeyError:
            self.bad.count("unknown_variant", f"variant {variant!r} not in catalog")
            self._event("model_unknown", variant=variant)
            return None
        path = self.models_dir / v.file
        t0 = time.perf_counter()
        try:
            model = self.backend.load(variant, path)
        except BackendError as exc:
            reason = "missing_model" if not path.exists() else "model_load_failed"
            self.bad.count(reason, str(exc), variant=variant)
            self._event(reason, variant=variant, error=str(exc))
            return None
        load_ms = (time.perf_counter() - t0) * 1000
        # The first run pays for lazy initialization (arenas, kernel choice, TensorRT
        # context): do it now, so a warm backup's first real frame runs at full speed.
        t1 = time.perf_counter()
        try:
            model.infer(np.zeros(model.input_shape, dtype=np.float32))
        except BackendError as exc:
            self.bad.count("model_load_failed", str(exc), variant=variant)
            self._event("model_load_failed", variant=variant, error=str(exc))
            model.close()
            return None
        first_ms = (time.perf_counter() - t1) * 1000
        self.loaded = {**self.loaded, variant: model}  # copy-on-write: heartbeat reads it
        self.load_count += 1
        detail: dict[str, Any] = {
            "variant": variant,
            "load_ms": round(load_ms, 1),
            "first_inference_ms": round(first_ms, 1),
            "providers": list(model.providers),
        }
        log.info("model_loaded", **detail)
        self._event("model_loaded", "", **detail)
        return model

    def apply(self, a: messages.Assignment) -> None:
        """Apply an assignment: fence revoked apps at once, load, switch, then release."""
        cur = self.assignment
        if cur is not None and a.version() <= cur.version():
            log.info(
                "assignment_ignored",
                term=a.term,
                generation=a.generation,
                current=list(cur.version()),
            )
            return
        t0 = time.perf_counter()
        wanted = {s.app: s for s in a.serve}
        # Fencing: an app taken away stops now, before any slow model load.
        keep = {
            app: s
            for app, s in self._serving.items()
            if app in wanted and wanted[app].sensor == s.sensor
        }
        for app in set(self._serving) - set(keep):
            log.info("serve_stopped", app=app, generation=a.generation)
            self._event("serve_stopped", app=app, generation=a.generation)
        # Standby entries of apps about to be promoted stay, so their held frame survives.
        self._set_serving(keep, a.standby + tuple(sb for sb in self._standby if sb.app in wanted))
        # Load what serving needs, switch each app as its model is ready (an upgrade keeps
        # serving the old variant until the new one is loaded), and only then load the warm
        # backups: a warm load never delays serving.
        for variant in dict.fromkeys(s.variant for s in a.serve):
            self._load(variant)
        table: dict[str, Serving] = {}
        for s in a.serve:
            model = self.loaded.get(s.variant)
            if model is None:
                old = self._serving.get(s.app)
                if old is not None:
                    table[s.app] = old  # keep the old variant rather than stop
                log.error("app_unservable", app=s.app, variant=s.variant)
                continue
            v = self.catalog.variant(s.variant)
            table[s.app] = Serving(
                s.app, s.sensor, s.variant, model, v.preprocess, v.labels == "imagenet1k"
            )
        self.assignment = a  # results of the new table carry the new generation
        held = {app: f for app in table if app not in keep and (f := self._held.pop(app, None))}
        self._set_serving(table, a.standby)
        self._serve_held(held)
        ms = (time.perf_counter() - t0) * 1000
        log.info(
            "assignment_applied",
            term=a.term,
            generation=a.generation,
            serving={k: s.variant for k, s in table.items()},
            warm=list(a.warm),
            standby=[s.app for s in a.standby],
            apply_ms=round(ms, 1),
        )
        self._event(
            "assignment_applied",
            term=a.term,
            generation=a.generation,
            serving={k: s.variant for k, s in table.items()},
            apply_ms=round(ms, 1),
        )
        for variant in a.warm:
            self._load(variant)
        needed = {s.variant for s in table.values()} | set(a.warm)
        for variant in [v for v in self.loaded if v not in needed]:
            remaining = dict(self.loaded)
            model = remaining.pop(variant)
            self.loaded = remaining
            with self._infer_lock:  # waits for a frame still running on it, at most one
                model.close()
            log.info("model_unloaded", variant=variant)
            self._event("model_unloaded", variant=variant)

    def _serve_held(self, held: dict[str, QueuedFrame]) -> None:
        """A promoted warm backup serves the latest frame it held, if still fresh."""
        now = time.monotonic_ns()
        for frame in held.values():
            if now - frame.received_ns < HELD_FRAME_MAX_AGE_NS:
                self.queues.put(frame)

    def _set_serving(self, table: dict[str, Serving], standby: tuple[messages.Serve, ...]) -> None:
        by_sensor: dict[str, list[str]] = {}
        for s in table.values():
            by_sensor.setdefault(s.sensor, []).append(s.app)
        standby_by_sensor: dict[str, list[str]] = {}
        for sb in standby:
            if sb.app not in table:
                standby_by_sensor.setdefault(sb.sensor, []).append(sb.app)
        for app in [a for a in self._held if not any(a in v for v in standby_by_sensor.values())]:
            self._held.pop(app, None)
        for app in set(self._serving) - set(table):
            self.queues.discard(app)
        self._serving = table
        self._by_sensor = {k: tuple(v) for k, v in by_sensor.items()}
        self._standby_by_sensor = {k: tuple(v) for k, v in standby_by_sensor.items()}
        self._standby = standby
        sensors = set(by_sensor) | set(standby_by_sensor)
        for sensor in sensors - self._subscribed:
            self.client.subscribe(
                self.topics.sensor_frames(sensor), self._make_frame_handler(sensor), qos=0
            )
        for sensor in self._subscribed - sensors:
            self.client.unsubscribe(self.topics.sensor_frames(sensor))
        self._subscribed = sensors

    # -- inference thread ------------------------------------------------------------------

    def _inference_loop(self) -> None:
        labels = imagenet_labels()
        max_bytes = self.mesh.max_frame_bytes
        while not self._stop.is_set():
            item = self.queues.get(timeout=0.1)
            if item is None:
                continue
            while self.fault_hang.is_set() and not self._stop.is_set():
                self.busy = True
                self._stop.wait(0.05)
            if self.fault_slow_s:
                self._stop.wait(self.fault_slow_s)
            # The serving table is read under the lock that unloading takes, so a model is
            # never closed under a frame that is still using it.
            with self._infer_lock:
                st = self._serving.get(item.app)
                if st is None:
                    continue  # revoked while queued
                self.busy = True
                try:
                    self._serve_one(item, st, labels, max_bytes)
                except BackendError as exc:
                    self.bad.count("inference_failed", str(exc), app=item.app, variant=st.variant)
                except Exception as exc:  # one bad frame must never kill the inference thread
                    log.exception("inference_error", app=item.app, variant=st.variant)
                    self.bad.count("inference_error", repr(exc), app=item.app)
                finally:
                    self.busy = False

    def _serve_one(
        self, item: QueuedFrame, st: Serving, labels: tuple[str, ...], max_bytes: int
    ) -> None:
        t0 = time.monotonic_ns()
        try:
            frame = envelope.unpack(item.payload, max_bytes=max_bytes)
            image = envelope.decode_image(frame)
        except envelope.FrameError as exc:
            self.bad.count(exc.reason, str(exc), app=item.app, sensor=st.sensor)
            return
        t1 = time.monotonic_ns()
        batch = preprocess(image, st.spec)
        t2 = time.monotonic_ns()
        logits = st.model.infer(batch)
        t3 = time.monotonic_ns()
        top = tuple(
            messages.Label(
                int(i), labels[i] if st.labels and i < len(labels) else str(i), round(float(p), 5)
            )
            for i, p in top_k(logits.reshape(-1), 5)
        )
        now = time.time()
        total_ms = (now - frame.capture_ts) * 1000
        result = messages.Result(
            app=st.app,
            seq=frame.seq,
            sensor=st.sensor,
            capture_ts=frame.capture_ts,
            ts=now,
            worker=self.cfg.id,
            incarnation=self.incarnation,
            variant=st.variant,
            generation=self.assignment.generation if self.assignment else 0,
            latency=messages.Latency(
                queue_ms=round((t0 - item.received_ns) / 1e6, 3),
                decode_ms=round((t1 - t0) / 1e6, 3),
                preprocess_ms=round((t2 - t1) / 1e6, 3),
                inference_ms=round((t3 - t2) / 1e6, 3),
                total_ms=round(total_ms, 3),
            ),
            top=top,
        )
        if self.client.publish(self.topics.app_results(st.app), messages.encode(result)):
            self.results_published += 1
        self.frames_processed += 1
        self.app_processed[st.app] = self.app_processed.get(st.app, 0) + 1
        self.app_latency.setdefault(st.app, Window(200)).add(total_ms)
        self.last_progress_ts = now

    # -- heartbeat thread ------------------------------------------------------------------

    def heartbeat(self) -> messages.Heartbeat:
        self._hb_seq += 1
        dropped = self.queues.dropped_snapshot()
        apps = {
            app: messages.AppStats(
                received=self.app_received.get(app, 0),
                processed=self.app_processed.get(app, 0),
                dropped=dropped.get(app, 0),
                latency_ms=round(w.mean(), 2) if (w := self.app_latency.get(app)) else 0.0,
            )
            for app in self._serving
        }
        return messages.Heartbeat(
            worker=self.cfg.id,
            incarnation=self.incarnation,
            seq=self._hb_seq,
            ts=messages.now(),
            frames_received=self.frames_received,
            frames_processed=self.frames_processed,
            frames_dropped=sum(dropped.values()),
            results_published=self.results_published,
            queue_depth=self.queues.depth(),
            busy=self.busy,
            last_progress_ts=self.last_progress_ts,
            rss_mb=round(self._proc.memory_info().rss / 2**20, 1),
            loaded=tuple(self.loaded),
            generation=self.assignment.generation if self.assignment else 0,
            errors=self.bad.snapshot(),
            apps=apps,
        )

    def _heartbeat_loop(self) -> None:
        topic = self.topics.worker_heartbeat(self.cfg.id)
        interval = self.cfg.heartbeat_interval_s
        next_t = time.monotonic()
        while not self._stop.is_set():
            if self.client.connected:
                self.client.publish(topic, messages.encode(self.heartbeat()), qos=0)
            next_t += interval
            delay = next_t - time.monotonic()
            if delay < 0:
                next_t = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, connect_timeout: float = 30.0) -> None:
        log.info(
            "worker_starting",
            device_class=self.cfg.device_class,
            backend=self.backend.describe(),
            models_dir=str(self.models_dir),
            models_on_disk=list(self.models_on_disk()),
        )
        self.client.start(connect_timeout=connect_timeout)
        for name, target in (
            ("control", self._control_loop),
            ("inference", self._inference_loop),
            ("heartbeat", self._heartbeat_loop),
        ):
            t = threading.Thread(target=target, name=f"worker-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Graceful stop: publish offline ourselves, so the coordinator knows at once."""
        self._stop.set()
        self.queues.close()
        for t in self._threads:
            t.join(timeout=5)
        self.client.stop(
            final=lambda: self.client.publish(
                self.topics.worker_status(self.cfg.id),
                messages.encode(self._status("offline", "graceful")),
                qos=1,
                retain=True,
            )
        )
        for m in self.loaded.values():
            m.close()
        log.info("worker_stopped", processed=self.frames_processed, errors=self.bad.snapshot())

    def wait(self) -> None:
        # Wake now and then: a signal the kernel hands to another thread only runs its Python
        # handler once the main thread executes bytecode again.
        while not self._stop.wait(0.25):
            pass

    def request_stop(self) -> None:
        self._stop.set()
