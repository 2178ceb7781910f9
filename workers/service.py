"""The worker process: its threads and its MQTT side. Serves the apps its assignment names.

Threads, and why each exists:

- network (inside :class:`MeshClient`): only decodes control messages and enqueues frames.
  Inference here would starve keepalive and make the broker fire a false last-will. It reads
  each frame's envelope header and JPEG header (never the image) and refuses there, counted in
  ``errors``, a frame that is malformed or declares an image other than its sensor's
  (:func:`faillite.envelope.check_image`): an image bomb is never queued, never counted as
  received, never decoded, so it can neither stall serving nor look like a stall.
- control: applies the assignments the fence let through (:mod:`workers.fencing`: only the
  term of the leader the coordinator status names, in (term, generation) order, signed where
  the mesh signs) in :mod:`workers.serving`; loads models here, so a slow load never stalls
  serving of the apps already running.
- inference: takes frames round-robin from the drop-oldest queues, runs the plug-ins' frame
  interceptors (none in production), then the model (:mod:`workers.inference`), publishes.
- heartbeat: liveness plus progress counters (:mod:`workers.counters`) every
  ``heartbeat_interval_s``.

Each of these three loops marks its progress (:attr:`Worker.beats`); :meth:`Worker.alive` says
which one hung, for systemd's watchdog (:mod:`faillite.sdnotify`, wired in ``workers/cli.py``).

Presence (:class:`faillite.presence.Presence`): the birth is made before every connect and its
twin is that connection's last-will; a clean stop publishes ``offline``. One process per worker
id: :meth:`Worker.claim` refuses to start while the id is live elsewhere (its heartbeats flow),
or with ``replace`` makes the live one step down: a replaced worker stops serving and exits
without publishing anything about the id.
"""

from __future__ import annotations

import os
import sys

# OpenCV's own pixel limit, the second line of defence behind envelope.check_image on the
# network thread: with it, cv2.imdecode raises (before allocating) for a JPEG that declares more
# pixels. OpenCV reads OPENCV_IO_MAX_IMAGE_PIXELS once, when its library loads (a static
# initialiser of imgcodecs; default 2**30 pixels), not at each decode: set after ``import cv2``
# it does nothing. So it is set here, before the imports below load cv2 (workers.inference ->
# faillite.models.preprocess); the worker process (workers/cli.py) imports this module before
# anything that loads cv2. If cv2 was loaded already, it is too late: Worker.start logs it.
if "cv2" in sys.modules:
    _OPENCV_LIMIT_SET = False
else:
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(7680 * 4320)  # MAX_SENSOR_PIXELS
    _OPENCV_LIMIT_SET = True

import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from faillite import envelope, gpu, messages
from faillite.badinput import BadInput
from faillite.catalog import Catalog
from faillite.config import ConfigError, MeshConfig, WorkerConfig
from faillite.identity import Identity
from faillite.log import bind, get_logger
from faillite.models.labels import imagenet_labels
from faillite.mqtt import Inbound, MeshClient, Raw
from faillite.presence import Presence
from faillite.sdnotify import Beats
from faillite.signing import SignatureError, SigningError, Verifier, load_verifier
from faillite.topics import Role, Topics
from workers.backends import BackendError, Staged, create_backend_or_fallback
from workers.batching import Batch, Batcher
from workers.counters import Counters, cpu_load, service_ms
from workers.fencing import Fence, LogLimit
from workers.frame_queue import FrameQueues, QueuedFrame
from workers.inference import FrameRunner, Prepared
from workers.measured import measured_profile
from workers.model_cache import ModelCache
from workers.plugins import FrameInterceptor
from workers.quarantine import StreamQuarantine
from workers.serving import Serving, ServingTable

log = get_logger("worker")

# The most pixels any sensor can be configured for: SensorConfig allows at most 7680x4320 (8K
# UHD), 33.2 Mpixels, about 100 MB as BGR. OpenCV's limit above is the same;
# tests/unit/test_image_bomb.py pins both to the config's bounds.
MAX_SENSOR_PIXELS = 7680 * 4320
# How long a loop may go without progress before the worker counts as hung (systemd's watchdog
# then restarts it). Generous: one inference on a slow device can take seconds.
WATCHDOG_STALE_S = 20.0
# Loading an assignment's models (TensorRT engines from an SD card, several variants) can take
# minutes: the control loop gets this long while it applies one.
APPLY_STALE_S = 300.0


def sensor_max_pixels(mesh: MeshConfig, sensor: str) -> int:
    """The most pixels a frame of ``sensor`` may declare: its configured width x height. A
    sensor the mesh config does not know (an assignment may name one) gets
    :data:`MAX_SENSOR_PIXELS`, the largest any sensor can be configured for."""
    try:
        s = mesh.sensor(sensor)
    except ConfigError:
        return MAX_SENSOR_PIXELS
    return s.width * s.height


class Worker:
    def __init__(self, mesh: MeshConfig, cfg: WorkerConfig, catalog: Catalog) -> None:
        self.mesh = mesh
        self.cfg = cfg
        self.catalog = catalog
        self.topics = Topics(mesh.mesh)
        self.incarnation = uuid.uuid4().hex[:12]
        bind(worker=cfg.id, incarnation=self.incarnation)
        self.bad = BadInput()
        fallback = cfg.fallback_backend
        self.backend = create_backend_or_fallback(
            cfg.backend,
            fallback,
            lambda kind, why: log.warning(
                "backend_unavailable",
                backend=kind,
                reason=why,
                fallback=fallback.type if fallback is not None else None,
            ),
        )
        self.models = ModelCache(
            self.backend,
            catalog,
            cfg.models_dir or mesh.models_path,
            bad=self.bad,
            emit=self._event,
        )
        # What this board measured of its class, told to the coordinators on every connect.
        self.profile, why = measured_profile(
            Path(cfg.models_dir or mesh.models_path), cfg.device_class, cfg.id, messages.now()
        )
        if self.profile is None:
            log.info("profile_not_published", reason=why)
        self.queues = FrameQueues(cfg.queue_size)
        # Cameras whose frames cost far more than theirs usually do: dropped unread a while.
        self.quarantine = StreamQuarantine(cfg.quarantine)
        self.counters = Counters()
        self.table = ServingTable(
            self.models,
            catalog,
            self.queues,
            self.counters,
            follow=self._follow,
            emit=self._event,
            watch=self._watch_results,
            publish_held=self._publish_held,
        )
        self._watched: frozenset[str] = frozenset()
        # Plug-ins' hooks on the inference path (workers.plugins); empty in production.
        self.interceptors: list[FrameInterceptor] = []
        self._subscribed: frozenset[str] = frozenset()
        self._pending: queue.Queue[messages.Assignment] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.beats = Beats()
        # The batched inference pipeline (workers.batching): its batcher thread and preprocess
        # pool feed the inference thread.
        self.runner = FrameRunner(
            cfg.id,
            self.incarnation,
            max_frame_bytes=mesh.max_frame_bytes,
            labels=imagenet_labels(),
            bad=self.bad,
            scaled_decode=cfg.batching.scaled_decode,
            on_decoded=self._decoded,
        )
        self.batcher = Batcher(
            self.queues,
            self.table.get,
            self.runner,
            cfg.batching,
            beat=lambda: self.beats.beat("batching"),
            stopping=self._stop,
        )
        self._proc = psutil.Process()
        self._hb_seq = 0
        self._step_down: threading.Thread | None = None
        self.presence = Presence(
            self.topics.worker_status(cfg.id),
            messages.WorkerStatus,
            self._birth,
            on_replaced=self._replaced,
        )
        self.client_id = Identity(mesh.mesh, Role.WORKER, cfg.id).name
        self.client = MeshClient(self.client_id, mesh.broker, presence=self.presence, bad=self.bad)
        # Fencing: assignments are obeyed under the term of the leader the coordinator status
        # names (and, where the mesh signs, only signed ones). Decided on the network thread.
        self.fence = Fence(frozenset(mesh.coordinator.ids))
        self.verifier: Verifier | None = None
        if mesh.coordinator.signing is not None:
            try:
                self.verifier = load_verifier(mesh.coordinator.signing, mesh.mesh)
            except SigningError as exc:
                raise ConfigError(f"coordinator.signing: {exc}") from exc
        self._quiet = LogLimit()
        self.client.on_connect(self._publish_profile)
        # The assignment first: its retained term is then known when a retained status comes,
        # so a forged status far above it is refused even by a worker that just started.
        self.client.subscribe_json(
            self.topics.worker_assignment(cfg.id), messages.Assignment, self._on_assignment, qos=1
        )
        self.client.subscribe_json(
            self.topics.coordinator_status,
            messages.CoordinatorStatus,
            self._on_coordinator_status,
            qos=1,
        )

    # -- identity --------------------------------------------------------------------------

    def _birth(self, ts: float) -> messages.WorkerStatus:
        devices = self.backend.devices()
        return messages.WorkerStatus(
            worker=self.cfg.id,
            incarnation=self.incarnation,
            state="online",
            ts=ts,
            host=socket.gethostname(),
            pid=os.getpid(),
            device_class=self.cfg.device_class,
            device=devices[0] if devices else "",
            memory_mb=self.cfg.memory_mb,
            compute_budget=self.cfg.compute_budget,
            disk_mb=self.cfg.disk_mb,
            failure_domain=self.cfg.domain,
            backends=devices,
            models_on_disk=self.models.on_disk(),
            heartbeat_interval_s=self.cfg.heartbeat_interval_s,
            gpu=card.name if (card := gpu.probe()) is not None else "",
            gpu_memory_mb=card.total_mb if card is not None else 0.0,
        )

    def _publish_profile(self) -> None:
        if self.profile is not None:
            topic = self.topics.worker_profile(self.cfg.id)
            self.client.publish(topic, messages.encode(self.profile), qos=1, retain=True)

    def claim(self, *, replace: bool = False) -> None:
        """Before :meth:`start`: refuse (:class:`~faillite.presence.IdentityInUseError`) if this
        worker id is live elsewhere, i.e. heartbeats of it flow; with ``replace`` that one steps
        down instead, and this one connects once it has gone quiet. A broker that cannot be
        reached is not a refusal."""
        self.presence.claim(
            self.mesh.broker,
            self.client_id,
            life_topic=self.topics.worker_heartbeat(self.cfg.id),
            liveness_s=max(1.0, 3.0 * self.cfg.heartbeat_interval_s),
            replace=replace,
        )

    def _replaced(self, successor: messages.WorkerStatus) -> None:
        # Network thread. The newer process serves from now on: stop at once (the inference
        # loop serves no frame after this) and leave the broker at once, cleanly (no
        # last-will, no reconnect), publishing nothing about the id.
        log.warning("worker_replaced", successor=successor.incarnation, pid=successor.pid)
        self._stop.set()
        self._step_down = threading.Thread(
            target=self.client.stop, name="worker-step-down", daemon=True
        )
        self._step_down.start()

    @property
    def replaced(self) -> bool:
        return self.presence.replaced is not None

    def _decoded(self, sensor: str, cpu_ms: float) -> None:
        verdict = self.quarantine.observe(sensor, cpu_ms, time.monotonic())
        if verdict is None:
            return
        detail: dict[str, Any] = {
            "sensor": sensor,
            "cost_ms": round(verdict.cost_ms, 1),
            "typical_ms": round(verdict.typical_ms, 2),
            "for_s": verdict.for_s,
            "offences": verdict.offences,
        }
        log.warning("stream_quarantined", **detail)
        self.bad.count("stream_quarantined", f"camera {sensor}: a frame cost {cpu_ms:.0f} ms")
        self._event("stream_quarantined", **detail)

    def _event(self, kind: str, app: str = "", **detail: Any) -> None:
        ev = messages.Event(
            kind=kind,
            ts=messages.now(),
            source=f"worker/{self.cfg.id}",
            worker=self.cfg.id,
            app=app,
            detail=detail,
        )
        self.client.publish(
            self.topics.events_of(Role.WORKER, self.cfg.id), messages.encode(ev), qos=0
        )

    # -- network thread --------------------------------------------------------------------

    def _signed(self, topic: str, msg: messages.Assignment | messages.CoordinatorStatus) -> bool:
        if self.verifier is None:
            return True
        try:
            self.verifier.verify(topic, msg)
        except SignatureError as exc:
            self.bad.count(exc.reason, str(exc), topic=topic, term=msg.term)
            return False
        return True

    def _on_assignment(self, inbound: Inbound[messages.Assignment]) -> None:
        a = inbound.message
        if a.worker != self.cfg.id:
            self.bad.count("wrong_worker", f"assignment for {a.worker!r}", topic=inbound.topic)
            return
        if not self._signed(self.topics.worker_assignment(self.cfg.id), a):
            return
        verdict = self.fence.assignment(a)
        fields = {"term": a.term, "generation": a.generation, "leader_term": self.fence.leader}
        if verdict == "apply":
            self._pending.put(a)
        elif verdict == "out_of_range":
            self.bad.count(
                "term_out_of_range",
                f"assignment term {a.term} is more than {self.fence.max_jump} above "
                f"{self.fence.reference()}",
                **fields,
            )
        elif verdict == "stale":
            self.bad.count(
                "stale_term", f"assignment of term {a.term}, older than the leader's", **fields
            )
        elif (quiet := self._quiet.allow(verdict)) is not None:
            # held (a successor's, its status not read yet) or old (a repeat): normal, quieter
            event = "assignment_held" if verdict == "hold" else "assignment_ignored"
            log.info(event, applied=self.fence.approved, quiet_since_last=quiet, **fields)

    def _on_coordinator_status(self, inbound: Inbound[messages.CoordinatorStatus]) -> None:
        st = inbound.message
        if not self._signed(self.topics.coordinator_status, st):
            return
        out = self.fence.status(st)
        fields = {"coordinator": st.coordinator, "term": st.term, "state": st.state}
        if out.action == "leader":
            log.info("leader_seen", **fields)
            if out.release is not None:
                log.info(
                    "held_assignment_released",
                    term=out.release.term,
                    generation=out.release.generation,
                )
                self._pending.put(out.release)
            if out.dropped is not None:
                log.info(
                    "held_assignment_dropped",
                    term=out.dropped.term,
                    generation=out.dropped.generation,
                    leader_term=st.term,
                )
        elif out.action == "out_of_range":
            self.bad.count(
                "term_out_of_range",
                f"leader status term {st.term} is more than {self.fence.max_jump} above "
                f"{self.fence.reference()}",
                **fields,
            )
        elif out.action == "unknown_coordinator":
            self.bad.count(
                "unknown_coordinator",
                f"status of {st.coordinator!r}, not in coordinator.ids",
                **fields,
            )

    def _frame_handler(self, sensor: str) -> Callable[[Raw], None]:
        max_bytes = self.mesh.max_frame_bytes
        max_pixels = sensor_max_pixels(self.mesh, sensor)

        def on_frame(raw: Raw) -> None:
            # Refused here, before queueing: counted under errors only, never as received, and
            # never decoded. Headers only (envelope, then JPEG markers up to SOF): microseconds.
            now = time.monotonic_ns()
            if not self.quarantine.admits(sensor, now / 1e9):
                self.bad.count("quarantined", f"camera {sensor} in quarantine", sensor=sensor)
                return
            try:
                frame = envelope.unpack(raw.payload, max_bytes=max_bytes)
                envelope.check_image(frame, max_pixels=max_pixels)
            except envelope.FrameError as exc:
                self.bad.count(exc.reason, str(exc), sensor=sensor)
                return
            self.table.route(sensor, raw.payload, now)

        return on_frame

    def _watch_results(self, apps: frozenset[str]) -> None:
        """Follow the other workers' results of the apps this worker is the hot backup of
        (control thread): a promotion then publishes only what the primary did not."""
        for app in apps - self._watched:
            self.client.subscribe(self.topics.app_results_filter(app), self._on_result, qos=0)
        for app in self._watched - apps:
            self.client.unsubscribe(self.topics.app_results_filter(app))
        self._watched = apps

    def _on_result(self, raw: Raw) -> None:
        # Network thread: only the sequence number of another worker's result matters.
        # The topic, not the payload, says who published it (the broker's ACL checks it).
        if raw.topic.rpartition("/")[2] == self.cfg.id:
            return
        try:
            result = messages.decode(messages.Result, raw.payload)
        except messages.MessageError as exc:
            self.bad.count("bad_result", str(exc), topic=raw.topic)
            return
        try:
            ours = raw.topic.startswith(self.topics.app_results_filter(result.app)[:-1])
        except ValueError as exc:  # an app id no topic can have
            self.bad.count("bad_result", str(exc), topic=raw.topic)
            return
        if ours:
            self.table.hot.seen(result.app, result.seq)

    def _follow(self, sensors: frozenset[str]) -> None:
        """The serving table needs these sensors' frames now (control thread)."""
        for sensor in sensors - self._subscribed:
            self.client.subscribe(
                self.topics.sensor_frames(sensor), self._frame_handler(sensor), qos=0
            )
        for sensor in self._subscribed - sensors:
            self.client.unsubscribe(self.topics.sensor_frames(sensor))
        self._subscribed = sensors

    # -- control thread --------------------------------------------------------------------

    def _control_loop(self) -> None:
        while not self._stop.is_set():
            self.beats.beat("control")
            try:
                a = self._pending.get(timeout=0.2)
            except queue.Empty:
                continue
            # Only the newest pending assignment matters: the fence let them through in order,
            # so the last one (it may be a new leader's, of a lower version than a forged one
            # applied before that leader was known).
            while True:
                try:
                    a = self._pending.get_nowait()
                except queue.Empty:
                    break
            if self._stop.is_set():
                break
            self.beats.beat("control", allow_s=APPLY_STALE_S)
            try:
                self.table.apply(a, force=True)
            except Exception:
                log.exception("assignment_apply_failed", term=a.term, generation=a.generation)

    # -- inference thread ------------------------------------------------------------------

    def _inference_loop(self) -> None:
        while not self._stop.is_set():
            self.beats.beat("inference")
            batch = self.batcher.next(timeout=0.1)
            if batch is None:
                continue
            try:
                self._handle(batch)
            finally:
                self.counters.busy = False

    def _handle(self, batch: Batch) -> None:
        t0 = time.monotonic()
        try:
            self._serve_batch(batch)
        finally:
            self.batcher.observe(batch.st.model, time.monotonic() - t0, len(batch.items))

    def _serve_batch(self, batch: Batch) -> None:
        held_ms = 0.0  # per frame: what interceptors held this batch counts as service time
        if self.interceptors:
            self.counters.busy = True
            t0 = time.monotonic()
            for item in batch.items:
                for intercept in self.interceptors:
                    intercept(item, self._stop)
            held_ms = (time.monotonic() - t0) * 1000 / len(batch.items)
        if self._stop.is_set():
            return  # stopping, or replaced: serve nothing more
        try:
            frames, staged = batch.ready()  # decoded (and copied) while the last one inferred
        except Exception as exc:  # cancelled at stop; never kill the inference thread
            log.exception("batch_lost", variant=batch.st.variant)
            for item in batch.items:
                self.bad.count("inference_error", repr(exc), app=item.app)
            return
        # The serving table is read under the lock that unloading takes, so a model is never
        # closed under a frame that is still using it.
        with self.models.in_use:
            self.counters.busy = True
            generation = self.table.generation
            rows: list[int] = []
            live: list[Prepared] = []
            for i, p in enumerate(frames):
                st = self.table.get(p.item.app)
                if st is None:
                    continue  # revoked while queued
                if st.model is batch.st.model:
                    rows.append(i)
                    live.append(replace(p, st=st))
                else:  # switched to another model since it was queued: served alone by it
                    self._infer([st], partial(self._run_one, p.item, st, generation), held_ms)
            if live:
                x = staged if len(rows) == len(frames) else Staged(staged.host[rows].copy())
                run = partial(self.runner.infer, batch.st, live, x, generation)
                self._infer([p.st for p in live], run, held_ms)

    def _run_one(self, item: QueuedFrame, st: Serving, generation: int) -> list[messages.Result]:
        r = self.runner.run(item, st, generation)
        return [] if r is None else [r]

    def _infer(
        self,
        served: list[Serving],
        run: Callable[[], list[messages.Result]],
        held_ms: float = 0.0,
    ) -> None:
        """Run one model call for the frames of ``served``, then deliver each result. Errors
        are counted once per frame; one bad call never stops the inference thread.
        ``held_ms``: what interceptors held each frame before."""
        try:
            results = run()
        except BackendError as exc:
            for st in served:
                self.bad.count("inference_failed", str(exc), app=st.app, variant=st.variant)
            return
        except Exception as exc:
            log.exception("inference_error", apps=[st.app for st in served])
            for st in served:
                self.bad.count("inference_error", repr(exc), app=st.app)
            return
        for st, result in zip(served, results, strict=False):
            try:
                self._deliver(st, result, service_ms(result.latency, len(results), held_ms))
            except Exception as exc:
                log.exception("inference_error", app=st.app, variant=st.variant)
                self.bad.count("inference_error", repr(exc), app=st.app)

    def _deliver(self, st: Serving, result: messages.Result, infer_ms: float = 0.0) -> None:
        """Hand one result to its consumers: publish it on the app's results topic and count
        it (``infer_ms``: the worker's own time on its frame). Every result goes through here.
        A hot backup's result is held instead (:mod:`workers.hot`), unless the app was
        promoted while the frame ran."""
        if not st.hot:
            self._publish_result(result, infer_ms)
            return
        hot = self.table.hot
        with hot.lock:  # the promotion switches the table and flushes under this lock
            now = self.table.get(st.app)
            if now is not None and now.hot:
                hot.hold(result)
                self.counters.processed(
                    st.app,
                    total_ms=result.latency.total_ms,
                    ts=result.ts,
                    published=False,
                    infer_ms=infer_ms,
                )
            elif now is not None and not hot.already_published(st.app, result.seq):
                self._publish_result(replace(result, generation=self.table.generation), infer_ms)

    def _send(self, result: messages.Result) -> bool:
        """Publish ``result`` on its app's results topic; whether a connected transport took it."""
        return self.client.publish(
            self.topics.app_results(result.app, self.cfg.id), messages.encode(result)
        )

    def _publish_result(self, result: messages.Result, infer_ms: float = 0.0) -> None:
        published = self._send(result)
        self.counters.processed(
            result.app,
            total_ms=result.latency.total_ms,
            ts=result.ts,
            published=published,
            infer_ms=infer_ms,
        )

    def _publish_held(self, result: messages.Result) -> None:
        """A result a promoted hot backup held: published now; counted as processed already."""
        if self._send(result):
            self.counters.published()

    # -- heartbeat thread ------------------------------------------------------------------

    def heartbeat(self) -> messages.Heartbeat:
        self._hb_seq += 1
        loading, loading_s = self.models.loading_state()
        return self.counters.heartbeat(
            worker=self.cfg.id,
            incarnation=self.incarnation,
            seq=self._hb_seq,
            apps=self.table.apps,
            dropped=self.queues.dropped_snapshot(),
            queue_depth=self.queues.depth(),
            rss_mb=round(self._proc.memory_info().rss / 2**20, 1),
            loaded=tuple(self.models.loaded),
            loading=loading,
            loading_s=loading_s,
            cpu_load=cpu_load(),
            generation=self.table.generation,
            errors=self.bad.snapshot(),
            # NVML is sampled at most once a second (faillite.gpu), heartbeats come faster.
            gpu_used_mb=gpu.used_mb() if gpu.probe() is not None else 0.0,
        )

    def _heartbeat_loop(self) -> None:
        topic = self.topics.worker_heartbeat(self.cfg.id)
        interval = self.cfg.heartbeat_interval_s
        next_t = time.monotonic()
        while not self._stop.is_set():
            self.beats.beat("heartbeat")
            if self.client.connected:
                self.client.publish(topic, messages.encode(self.heartbeat()), qos=0)
            next_t += interval
            delay = next_t - time.monotonic()
            if delay < 0:
                next_t = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the threads; connecting goes on in the background (a broker that is not
        there yet is retried, with one line saying so), nothing here waits for it."""
        log.info(
            "worker_starting",
            device_class=self.cfg.device_class,
            backend=self.backend.describe(),
            models_dir=str(self.models.models_dir),
            models_on_disk=list(self.models.on_disk()),
            interceptors=len(self.interceptors),
            preprocess_threads=self.cfg.batching.pool_size(),
            scaled_decode=self.cfg.batching.scaled_decode,
            opencv_max_pixels=os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS"),
        )
        if not _OPENCV_LIMIT_SET:
            log.warning(
                "opencv_pixel_limit_not_set",
                why="cv2 was loaded before workers.service could set OPENCV_IO_MAX_IMAGE_PIXELS",
            )
        # The device before the birth: the worker says it is online once CUDA is up, so a cold
        # backup later loads into a warm context; NVML is asked here, not on the network
        # thread when the birth is made.
        self.backend.start()
        gpu.probe()
        self.client.start(connect_timeout=None)
        for name, target in (
            ("control", self._control_loop),
            ("inference", self._inference_loop),
            ("heartbeat", self._heartbeat_loop),
        ):
            t = threading.Thread(target=target, name=f"worker-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self.batcher.start()
        self._threads.append(self.batcher.thread)  # alive() sees it die

    def alive(self) -> str | None:
        """Why this worker looks hung (a loop without progress, a thread that died), or None:
        what systemd's watchdog asks (:class:`faillite.sdnotify.Watchdog`)."""
        if self._stop.is_set():
            return None  # stopping: the loops end; systemd's stop timeout covers a hung stop
        for t in self._threads:
            if not t.is_alive():
                return f"{t.name} thread died"
        # The heartbeat loop sleeps an interval between beats (at most 60 s).
        return self.beats.stale(WATCHDOG_STALE_S + self.cfg.heartbeat_interval_s)

    def stop(self) -> None:
        """Graceful stop: publish offline ourselves (the presence does), so the coordinator
        knows at once; a replaced worker publishes nothing."""
        self._stop.set()
        self.queues.close()
        for t in self._threads:
            t.join(timeout=5)
        self.batcher.stop()
        if self._step_down is not None:
            self._step_down.join(timeout=5)  # replaced: the client is stopped already
        else:
            self.client.stop()
        self.models.close_all()
        log.info(
            "worker_stopped",
            processed=self.counters.frames_processed,
            errors=self.bad.snapshot(),
            replaced=self.replaced,
        )

    def wait(self) -> None:
        # Wake now and then: a signal the kernel hands to another thread only runs its Python
        # handler once the main thread executes bytecode again.
        while not self._stop.wait(0.25):
            pass

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()
