"""A load generator for one broker: where does one broker stop being enough for this mesh?

It stands in for a mesh's clients, with the mesh's own client (:class:`~faillite.mqtt.MeshClient`),
topics (:class:`~faillite.topics.Topics`), identities, frame envelope and control messages:

- **cameras** publish frames (:func:`faillite.envelope.pack` around a real JPEG padded to the
  frame size asked for) at ``fps`` on their ``sensors/{id}/frames`` topic, QoS 0, on an absolute
  schedule like :class:`~sensors.publisher.SensorPublisher` (a slot that has passed is skipped
  and counted, never burst);
- **workers** subscribe to the frames of their cameras (each camera: a primary and, with
  ``fanout`` 2, a warm standby that follows its frames too), publish a
  :class:`~faillite.messages.Heartbeat` every ``heartbeat_interval_s`` and a retained
  :class:`~faillite.messages.WorkerStatus` at ``status_hz``, and read their retained
  :class:`~faillite.messages.Assignment`;
- one **coordinator** reads every heartbeat and status (decoded and validated, as the real one
  does) and publishes each worker's assignment (retained, QoS 1) at ``assignment_hz``.

These clients run in several child processes (``procs`` of cameras and workers, the coordinator
alone in one more), so the generator is not one Python interpreter's GIL. Each step measures,
over a window after a warm-up, what was offered against what was delivered (by the capture
timestamp each message carries: the frame envelope's, the heartbeat's ``ts``; one host, one
clock), the latency of frames and of control messages (p50 / p99), the heartbeats' largest
silence per worker, the broker process's CPU (``/proc/<pid>/stat``), the generator's own CPU per
process, and the host's.

:func:`ramp` runs steps of growing load and stops by itself at the first step where the broker is
no longer enough (:class:`Limits`: delivered below 95 % of offered, frame latency p99 above a
bound, heartbeat lag p99 above the coordinator's detection margin, ``LINK_MARGIN`` heartbeat
intervals, or clients that cannot connect), or at its last step, or at its wall-time budget.
Heartbeats are the real limit for this mesh: late heartbeats become false failovers.

A step over a limit can be tried again before it counts (``confirm``): a host shared with other
work has busy moments that are not the broker's limit. Every step over a limit says who
saturated: the broker (its one thread near a full core), the generator (one of its processes
near a full core, or it could not keep its own schedule), the host (every core busy: on a small
box the broker, the generator and everything else share them), or "unclear". A limit hit while
the generator saturated is the generator's limit, not the broker's. A generator that breaks (a
child process gone or hung) ends the ramp with ``generator_failed``.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import math
import multiprocessing as mp
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any, Final

import numpy as np

from coordinator.membership import LINK_MARGIN
from faillite import envelope, messages
from faillite.config import BrokerConfig
from faillite.identity import Identity
from faillite.log import configure, get_logger
from faillite.mqtt import Inbound, MeshClient, Raw
from faillite.topics import WORKER_HEARTBEAT, WORKER_STATUS, Role, Topics

log = get_logger("loadgen")

DELIVERED_MIN: Final = 0.95
LATENCY_P99_MS: Final = 200.0
HEARTBEAT_INTERVAL_S: Final = 0.1  # the workers' default (WorkerConfig.heartbeat_interval_s)
# A process of the generator (one interpreter) this busy is saturated: its own GIL, not the
# broker, decides what it sends and reads.
PROC_SATURATED_CORES: Final = 0.9
# The broker (Mosquitto and amqtt each run one thread for the traffic) this busy is saturated.
BROKER_SATURATED_CORES: Final = 0.85
HOST_SATURATED: Final = 0.9  # share of every core busy
GENERATOR_SKIPPED_MAX: Final = 0.05  # share of the generator's own slots it could not keep
READY_TIMEOUT_S: Final = 30.0
CONNECT_BATCH: Final = 32  # clients of one generator process connecting at once
REPORT_TIMEOUT_S: Final = 30.0
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
_PAGE: Final = os.sysconf("SC_PAGE_SIZE")
_MAX_FRAME_BYTES: Final = 1 << 30


# -- the load of one step ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Load:
    """What one step offers the broker."""

    cameras: int
    fps: float
    frame_bytes: int  # the JPEG's size; the envelope adds its 32-byte header
    workers: int
    fanout: int = 2  # workers that receive each camera's frames (primary + warm standby)
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    status_hz: float = 0.2  # retained worker status, per worker
    assignment_hz: float = 0.5  # retained assignment from the coordinator, per worker

    @property
    def receivers(self) -> int:
        """Workers that receive each camera's frames."""
        return min(self.fanout, self.workers) if self.cameras else 0

    @property
    def frames_per_s(self) -> float:
        return self.cameras * self.fps

    @property
    def payload_bytes(self) -> int:
        return self.frame_bytes + envelope.HEADER_SIZE

    @property
    def in_mb_per_s(self) -> float:
        """Frame bytes into the broker per second (MB: 10^6 bytes)."""
        return self.frames_per_s * self.payload_bytes / 1e6

    @property
    def out_mb_per_s(self) -> float:
        return self.in_mb_per_s * self.receivers

    @property
    def control_per_s(self) -> float:
        """Control messages into the broker per second: heartbeats, statuses, assignments."""
        return self.workers * (
            1.0 / self.heartbeat_interval_s + self.status_hz + self.assignment_hz
        )

    @property
    def messages_per_s(self) -> float:
        """Messages the broker delivers per second (frames to every receiver, control)."""
        return self.frames_per_s * self.receivers + self.control_per_s

    def describe(self) -> str:
        if not self.cameras:
            return f"{self.workers} workers x {1 / self.heartbeat_interval_s:g} Hz heartbeats"
        return (
            f"{self.cameras} cam x {self.fps:g} fps x {_size(self.frame_bytes)}"
            f" -> {self.workers} workers"
        )


def _size(n: int) -> str:
    return f"{n / 1e6:g} MB" if n >= 1_000_000 else f"{n / 1e3:g} KB"


@dataclass(frozen=True, slots=True)
class Limits:
    """When one broker is no longer enough."""

    delivered_min: float = DELIVERED_MIN  # delivered / offered, frames and heartbeats each
    latency_p99_ms: float = LATENCY_P99_MS  # frames, publish to delivery
    # Heartbeat lag, publish to delivery at the coordinator: None is the coordinator's margin,
    # LINK_MARGIN heartbeat intervals (coordinator.membership): later than that, a worker's
    # silence starts to count against it.
    heartbeat_lag_p99_ms: float | None = None

    def heartbeat_bound_ms(self, load: Load) -> float:
        if self.heartbeat_lag_p99_ms is not None:
            return self.heartbeat_lag_p99_ms
        return LINK_MARGIN * load.heartbeat_interval_s * 1000.0


@dataclass(frozen=True, slots=True)
class Timing:
    warmup_s: float = 0.5  # connected and publishing, not counted
    measure_s: float = 2.0
    drain_s: float = 0.5  # after the window: late deliveries still count, later ones are lost


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Latency:
    n: int = 0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan

    @classmethod
    def of(cls, samples: Sequence[float]) -> Latency:
        if not samples:
            return cls()
        arr = np.asarray(samples, dtype=np.float64)
        p50, p99 = np.percentile(arr, [50, 99])
        return cls(len(samples), float(p50), float(p99), float(arr.max()))

    def fmt(self) -> str:
        if not self.n:
            return "-"
        return f"{self.p50_ms:.1f}/{self.p99_ms:.1f}"


@dataclass(frozen=True, slots=True)
class StepResult:
    load: Load
    window_s: float
    # Frames: what the cameras' schedule called for, what they published in the window, what
    # their workers received of those (each frame counts once per receiving worker).
    frames_target: int
    frames_sent: int
    frames_skipped: int  # slots the generator itself could not keep
    frames_offered: int  # frames_sent x receivers
    frames_delivered: int
    frame_latency: Latency
    heartbeats_sent: int
    heartbeats_delivered: int
    heartbeat_lag: Latency
    heartbeat_gap_max_ms: float  # the longest silence of one worker seen by the coordinator
    control_sent: int  # statuses and assignments
    control_delivered: int
    control_lag: Latency
    broker_cores: float  # the broker process's CPU, in cores, over the window
    broker_rss_mb: float
    generator_cores: float  # every process of the generator together
    generator_busiest_cores: float  # its busiest process
    coordinator_cores: float  # the process of its coordinator (decodes every heartbeat)
    host_cores: float  # every process of the host
    host_ncpu: int
    limit: str | None = None  # the limit hit at this step, None: the broker was enough
    detail: str = ""
    bottleneck: str = ""  # "broker", "generator", "host" or "unclear" where a limit was hit
    error: str = ""
    tries: int = 1  # with ramp(confirm=...): the tries this step took (see ramp)

    @property
    def delivered_ratio(self) -> float:
        return self.frames_delivered / self.frames_offered if self.frames_offered else 1.0

    @property
    def heartbeat_ratio(self) -> float:
        return self.heartbeats_delivered / self.heartbeats_sent if self.heartbeats_sent else 1.0

    @property
    def others_cores(self) -> float:
        """CPU of the host's other processes (neither the broker nor the generator)."""
        broker = self.broker_cores if math.isfinite(self.broker_cores) else 0.0
        return max(0.0, self.host_cores - broker - self.generator_cores)

    @property
    def generator_saturated(self) -> str:
        """Why the generator, not the broker, may be what saturated ("" if it was not)."""
        why = []
        if self.frames_target and self.frames_skipped > GENERATOR_SKIPPED_MAX * self.frames_target:
            why.append(f"skipped {self.frames_skipped}/{self.frames_target} of its own slots")
        if self.generator_busiest_cores >= PROC_SATURATED_CORES:
            why.append(f"a process at {self.generator_busiest_cores:.2f} cores")
        return ", ".join(why)

    def line(self) -> str:
        lim = f" LIMIT {self.limit}: {self.detail}" if self.limit else " ok"
        who = f" [{self.bottleneck} saturated]" if self.limit and self.bottleneck else ""
        frames = (
            f"frames {self.frames_delivered}/{self.frames_offered} "
            f"({100 * self.delivered_ratio:.1f} %) p50/p99 {self.frame_latency.fmt()} ms, "
            if self.load.cameras
            else ""
        )
        return (
            f"{self.load.describe()}: {frames}"
            f"heartbeats {self.heartbeats_delivered}/{self.heartbeats_sent} "
            f"lag p50/p99 {self.heartbeat_lag.fmt()} ms gap max {self.heartbeat_gap_max_ms:.0f} "
            f"ms; cpu broker {self.broker_cores:.2f} generator {self.generator_cores:.2f} "
            f"(max {self.generator_busiest_cores:.2f}) others {self.others_cores:.2f}, host "
            f"{self.host_cores:.2f}/{self.host_ncpu}{lim}{who}"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        load = self.load
        d["load"].update(
            in_mb_per_s=load.in_mb_per_s,
            out_mb_per_s=load.out_mb_per_s,
            messages_per_s=load.messages_per_s,
            control_per_s=load.control_per_s,
            receivers=load.receivers,
        )
        d["delivered_ratio"] = self.delivered_ratio
        d["heartbeat_ratio"] = self.heartbeat_ratio
        d["generator_saturated"] = self.generator_saturated
        d["others_cores"] = self.others_cores
        out: dict[str, Any] = _finite(d)
        return out


def _finite(obj: Any) -> Any:
    """NaN (no sample) as None, so the JSON stays standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


@dataclass
class RampResult:
    name: str
    steps: list[StepResult] = field(default_factory=list)
    stop: str = ""  # why the ramp ended: a limit, "max_step" or "max_wall"

    @property
    def last_ok(self) -> StepResult | None:
        ok = [s for s in self.steps if s.limit is None]
        return ok[-1] if ok else None

    @property
    def limit_step(self) -> StepResult | None:
        return self.steps[-1] if self.steps and self.steps[-1].limit else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stop": self.stop,
            "steps": [s.to_dict() for s in self.steps],
        }


# -- machine readings ------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) of process ``pid`` (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as f:  # noqa: PTH123 (a /proc read, bytes)
        raw = f.read()
    fields = raw[raw.rindex(b")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime: fields 14 and 15


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm", "rb") as f:  # noqa: PTH123
        return int(f.read().split()[1]) * _PAGE / 1e6


def host_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole host since boot (/proc/stat)."""
    with open("/proc/stat", "rb") as f:  # noqa: PTH123
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)  # idle, iowait
    total = sum(parts[:8])  # guest time is counted in user already
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


# -- frames --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def make_jpeg(size: int, seed: int = 0) -> tuple[bytes, int, int]:
    """A real JPEG (noise over a gradient, :func:`faillite.envelope.encode_jpeg`) of exactly
    ``size`` bytes: encoded just under it, then padded with COM segments after the SOI, which
    every decoder (and :func:`faillite.envelope.check_image`) skips. Returns (jpeg, w, h)."""
    rng = np.random.default_rng(seed)
    dims = [(320, 240), (640, 480), (1280, 720), (1920, 1080), (3840, 2160)]
    best: tuple[bytes, int, int] | None = None
    for w, h in dims:
        grad = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
        noise = rng.normal(0, 40, (h, w, 3)).astype(np.float32)
        image = np.clip(grad + noise, 0, 255).astype(np.uint8)
        lo, hi = 5, 95
        fit: bytes | None = None
        while lo <= hi:  # the best quality that stays within size
            q = (lo + hi) // 2
            jpeg = envelope.encode_jpeg(image, q)
            if len(jpeg) <= size:
                fit, lo = jpeg, q + 1
            else:
                hi = q - 1
        if fit is None:
            break  # even the lowest quality is too big: the smaller size was the best
        best = (fit, w, h)
        if len(fit) >= 0.8 * size:
            break  # close enough to pad: a larger image would not fit either
    if best is None:
        raise ValueError(f"no JPEG fits in {size} bytes")
    jpeg, w, h = best
    return _pad(jpeg, size), w, h


def _pad(jpeg: bytes, size: int) -> bytes:
    """``jpeg`` grown to ``size`` bytes: COM segments after the SOI (at most 65533 bytes of
    comment each), and the last 1 to 3 bytes, too few for a segment, after the EOI (which
    decoders ignore)."""
    missing = size - len(jpeg)
    segments: list[bytes] = []
    while missing >= 4:
        body = min(missing - 4, 65533)
        segments.append(b"\xff\xfe" + (body + 2).to_bytes(2, "big") + b"\0" * body)
        missing -= body + 4
    return jpeg[:2] + b"".join(segments) + jpeg[2:] + b"\0" * missing


# -- one child process of the generator --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _WorkerSpec:
    id: str
    cameras: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Job:
    load: Load
    cameras: tuple[str, ...]
    workers: tuple[_WorkerSpec, ...]
    coordinator: tuple[str, ...]  # the workers whose assignments it publishes ((): none)
    run: str  # a step's run id: incarnations and client ids of this step


@dataclass(frozen=True, slots=True)
class _Go:
    start: float  # wall clock: publishing starts
    m0: float  # the window: messages stamped within it count
    m1: float
    end: float  # publishing stopped at m1; deliveries until this count


class _Meter:
    """What one child receives, counted from the network threads of its clients."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.m0 = self.m1 = math.inf
        self.frames = 0
        self.frame_lat: list[float] = []
        self.heartbeats = 0
        self.hb_lag: list[float] = []
        self.hb_last: dict[str, float] = {}
        self.hb_gap_max = 0.0
        self.control = 0
        self.control_lag: list[float] = []
        self.bad = 0

    def within(self, ts: float) -> bool:
        return self.m0 <= ts < self.m1

    def frame(self, raw: Raw) -> None:
        now_ns = time.time_ns()
        try:
            fr = envelope.unpack(raw.payload, max_bytes=_MAX_FRAME_BYTES)
        except envelope.FrameError:
            self.bad += 1
            return
        if self.within(fr.capture_ns / 1e9):
            with self.lock:
                self.frames += 1
                self.frame_lat.append((now_ns - fr.capture_ns) / 1e6)

    def heartbeat(self, inbound: Inbound[messages.Heartbeat]) -> None:
        now = time.time()
        hb = inbound.message
        with self.lock:
            last = self.hb_last.get(hb.worker)
            self.hb_last[hb.worker] = now
            if not self.within(hb.ts):
                return
            self.heartbeats += 1
            self.hb_lag.append((now - hb.ts) * 1000.0)
            if last is not None:
                self.hb_gap_max = max(self.hb_gap_max, (now - last) * 1000.0)

    def status(self, inbound: Inbound[messages.WorkerStatus]) -> None:
        self._control(inbound.message.ts, inbound.retain)

    def assignment(self, inbound: Inbound[messages.Assignment]) -> None:
        self._control(inbound.message.ts, inbound.retain)

    def _control(self, ts: float, retained: bool) -> None:
        now = time.time()
        if retained or not self.within(ts):
            return  # a retained copy from before (a subscription's replay): not this window
        with self.lock:
            self.control += 1
            self.control_lag.append((now - ts) * 1000.0)


class _Child:
    """The clients of one child process for one step."""

    def __init__(self, mesh: str, broker: BrokerConfig, job: _Job) -> None:
        self.job = job
        self.load = job.load
        self.topics = Topics(mesh)
        self.mesh = mesh
        self.meter = _Meter()
        self.cameras: list[tuple[str, MeshClient, str]] = []
        self.workers: list[tuple[_WorkerSpec, MeshClient]] = []
        self.coordinator: MeshClient | None = None
        # Short keepalive probes and long silences: a loaded broker is slow, not gone.
        bcfg = broker.model_copy(update={"probe_after_s": 5.0, "silent_after_s": 30.0})
        for cam in job.cameras:
            client = MeshClient(self._cid(Role.SENSOR, cam), bcfg, quiet=True)
            self.cameras.append((cam, client, self.topics.sensor_frames(cam)))
        for spec in job.workers:
            client = MeshClient(self._cid(Role.WORKER, spec.id), bcfg, quiet=True)
            for cam in spec.cameras:
                client.subscribe(self.topics.sensor_frames(cam), self.meter.frame, qos=0)
            client.subscribe_json(
                self.topics.worker_assignment(spec.id),
                messages.Assignment,
                self.meter.assignment,
                qos=1,
            )
            self.workers.append((spec, client))
        if job.coordinator:
            client = MeshClient(self._cid(Role.COORDINATOR, "c0"), bcfg, quiet=True)
            client.subscribe_json(
                self.topics.filter(WORKER_HEARTBEAT), messages.Heartbeat, self.meter.heartbeat, 0
            )
            client.subscribe_json(
                self.topics.filter(WORKER_STATUS), messages.WorkerStatus, self.meter.status, 1
            )
            self.coordinator = client
        self.incarnation = job.run[:12]
        # Made before the start: a 500 KB JPEG takes a few encodes to fit (cached per size).
        self.frame = make_jpeg(job.load.frame_bytes) if self.cameras else (b"", 0, 0)

    def _cid(self, role: Role, ident: str) -> str:
        return Identity(self.mesh, role, ident).name

    @property
    def clients(self) -> list[MeshClient]:
        out = [c for _, c, _ in self.cameras] + [c for _, c in self.workers]
        return [*out, self.coordinator] if self.coordinator is not None else out

    def connect(self, timeout: float) -> int:
        """Start every client, :data:`CONNECT_BATCH` at a time (a few hundred connecting in
        the same instant overflow a broker's listen backlog, and a client whose handshake was
        dropped waits out its keepalive); the number connected within ``timeout``."""
        deadline = time.monotonic() + timeout
        clients = self.clients
        for i in range(0, len(clients), CONNECT_BATCH):
            batch = clients[i : i + CONNECT_BATCH]
            for c in batch:
                c.start(connect_timeout=None)
            for c in batch:
                c.wait_connected(max(0.0, deadline - time.monotonic()))
        return sum(c.connected for c in clients)

    def run(self, go: _Go) -> dict[str, Any]:
        load, meter = self.load, self.meter
        meter.m0, meter.m1 = go.m0, go.m1
        jpeg, w, h = self.frame
        tag = int(self.incarnation[:8], 16)
        period = 1.0 / load.fps if load.fps > 0 else math.inf
        # (due, kind, index, seq): every publication of this child on one schedule.
        events: list[tuple[float, int, int, int]] = []
        n = max(1, len(self.cameras))
        for i in range(len(self.cameras)):
            events.append((go.start + period * i / n, 0, i, 0))
        nw = max(1, len(self.workers))
        for i in range(len(self.workers)):
            events.append((go.start + load.heartbeat_interval_s * i / nw, 1, i, 0))
            if load.status_hz > 0:
                events.append((go.start + i / nw / load.status_hz, 2, i, 0))
        targets = self.job.coordinator
        if targets and load.assignment_hz > 0:
            nt = len(targets)
            for i in range(nt):
                events.append((go.start + i / nt / load.assignment_hz, 3, i, 0))
        heapq.heapify(events)
        sent = [0, 0, 0, 0]  # frames, heartbeats, statuses, assignments (within the window)
        target = skipped = 0
        stop = threading.Event()
        while events:
            due, kind, i, seq = events[0]
            now = time.time()
            if now >= go.m1:
                break
            if now < due:
                stop.wait(min(due - now, go.m1 - now, 0.05))
                continue
            heapq.heappop(events)
            interval = self._interval(kind)
            if kind == 0 and now - due > period:  # a camera slot that passed: skip, like sensors
                missed = int((now - due) / period)
                for k in range(missed):
                    if go.m0 <= due + k * period < go.m1:
                        skipped += 1
                        target += 1
                heapq.heappush(events, (due + missed * period, kind, i, seq))
                continue
            ts = time.time()
            if self._publish(kind, i, seq, ts, jpeg, w, h, tag) and go.m0 <= ts < go.m1:
                sent[kind] += 1
            if kind == 0 and go.m0 <= due < go.m1:
                target += 1
            heapq.heappush(events, (due + interval, kind, i, seq + 1))
        # The drain: the window's last messages may still be on their way.
        while time.time() < go.end:
            stop.wait(min(0.05, max(0.0, go.end - time.time())))
        with meter.lock:
            return {
                "frames_target": target,
                "frames_sent": sent[0],
                "frames_skipped": skipped,
                "heartbeats_sent": sent[1],
                "control_sent": sent[2] + sent[3],
                "frames": meter.frames,
                "frame_lat": list(meter.frame_lat),
                "heartbeats": meter.heartbeats,
                "hb_lag": list(meter.hb_lag),
                "hb_gap_max": meter.hb_gap_max,
                "control": meter.control,
                "control_lag": list(meter.control_lag),
                "bad": meter.bad,
                "connected": sum(c.connected for c in self.clients),
            }

    def _interval(self, kind: int) -> float:
        load = self.load
        if kind == 0:
            return 1.0 / load.fps
        if kind == 1:
            return load.heartbeat_interval_s
        if kind == 2:
            return 1.0 / load.status_hz
        return 1.0 / load.assignment_hz

    def _publish(
        self, kind: int, i: int, seq: int, ts: float, jpeg: bytes, w: int, h: int, tag: int
    ) -> bool:
        if kind == 0:
            _cam, client, topic = self.cameras[i]
            payload = envelope.pack(
                jpeg, seq=seq, capture_ns=int(ts * 1e9), width=w, height=h, tag=tag
            )
            return client.publish(topic, payload, qos=0)
        if kind in (1, 2):
            spec, client = self.workers[i]
            if kind == 1:
                hb = messages.Heartbeat(
                    worker=spec.id,
                    incarnation=self.incarnation,
                    seq=seq,
                    ts=ts,
                    frames_received=seq * len(spec.cameras),
                    frames_processed=seq * len(spec.cameras),
                    rss_mb=812.5,
                    loaded=("resnet18", "resnet50"),
                    generation=1,
                    apps={c: messages.AppStats(seq, seq, 0, 12.5) for c in spec.cameras},
                )
                topic = self.topics.worker_heartbeat(spec.id)
                return client.publish(topic, messages.encode(hb), qos=0)
            st = messages.WorkerStatus(
                worker=spec.id,
                incarnation=self.incarnation,
                state="online",
                ts=ts,
                host="loadgen",
                pid=os.getpid(),
                backends=("onnxruntime",),
                models_on_disk=("resnet18", "resnet50"),
                heartbeat_interval_s=self.load.heartbeat_interval_s,
            )
            topic = self.topics.worker_status(spec.id)
            return client.publish(topic, messages.encode(st), qos=1, retain=True)
        assert self.coordinator is not None
        worker = self.job.coordinator[i]
        asg = messages.Assignment(
            worker=worker,
            term=1,
            generation=seq + 1,
            ts=ts,
            serve=(messages.Serve(f"app-{worker}", f"cam-{worker}", "resnet50"),),
            warm=("resnet18",),
            disk=("resnet18", "resnet50"),
        )
        topic = self.topics.worker_assignment(worker)
        return self.coordinator.publish(topic, messages.encode(asg), qos=1, retain=True)

    def close(self) -> None:
        clients = self.clients
        if not clients:
            return
        with ThreadPoolExecutor(max_workers=min(32, len(clients))) as pool:
            list(pool.map(lambda c: c.stop(), clients))


def _child_main(conn: Connection, mesh: str, host: str, port: int) -> None:
    """A child process of the generator: one job per step, until told to stop (None)."""
    configure(level="warning", role="loadgen")
    broker = BrokerConfig(host=host, port=port)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        child: _Child | None = None
        try:
            child = _Child(mesh, broker, job)
            n = len(child.clients)
            connected = child.connect(READY_TIMEOUT_S)
            conn.send(("ready", connected, n))
            go = conn.recv()
            if not isinstance(go, _Go):
                continue  # the step was called off (another process could not connect)
            conn.send(("report", child.run(go)))
        except Exception:
            conn.send(("error", traceback.format_exc()))
        finally:
            if child is not None:
                child.close()


# -- the generator -----------------------------------------------------------------------------


class StepError(RuntimeError):
    """The generator itself broke (a child process gone or hung): close it."""


class _ChildFailedError(RuntimeError):
    """A child process failed one step and waits for the next."""


class LoadGenerator:
    """Child processes that play a mesh's cameras, workers and coordinator against one broker.

    ``procs``: processes for the cameras and workers (the coordinator gets one more of its own).
    ``broker_pid``: the broker process whose CPU is read (None: not read). Use as a context
    manager: :meth:`close` stops every child (asked, then terminated, then killed).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        broker_pid: int | None = None,
        mesh: str = "loadgen",
        procs: int = 2,
        timing: Timing | None = None,
    ) -> None:
        self.host, self.port, self.mesh = host, port, mesh
        self.broker_pid = broker_pid
        self.timing = timing or Timing()
        self._ctx = mp.get_context("spawn")
        self._children: list[tuple[Any, Connection]] = []
        try:
            for _ in range(max(1, procs) + 1):
                parent, child = self._ctx.Pipe()
                p = self._ctx.Process(
                    target=_child_main, args=(child, mesh, host, port), daemon=True
                )
                p.start()
                child.close()
                self._children.append((p, parent))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self._children]

    def close(self) -> None:
        for _, conn in self._children:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(None)
        for p, conn in self._children:
            p.join(5.0)
            if p.is_alive():
                p.terminate()
                p.join(3.0)
            if p.is_alive():
                p.kill()
                p.join(3.0)
            conn.close()
        self._children.clear()

    def _jobs(self, load: Load) -> list[_Job]:
        run = uuid.uuid4().hex
        cams = [f"cam{i:04d}" for i in range(load.cameras)]
        workers = [f"w{i:04d}" for i in range(load.workers)]
        subs: list[list[str]] = [[] for _ in workers]
        for j, cam in enumerate(cams):
            for k in range(load.receivers):
                subs[(j + k) % len(workers)].append(cam)
        specs = [_WorkerSpec(w, tuple(s)) for w, s in zip(workers, subs, strict=True)]
        frames_children = len(self._children) - 1
        jobs = [
            _Job(
                load,
                tuple(cams[i::frames_children]),
                tuple(specs[i::frames_children]),
                (),
                run,
            )
            for i in range(frames_children)
        ]
        jobs.append(_Job(load, (), (), tuple(workers), run))
        return jobs

    def _recv(self, conn: Connection, timeout: float, what: str) -> tuple[Any, ...]:
        """A child's answer; :class:`StepError` if it has none (the generator is broken: close
        it), :class:`_ChildFailedError` if it failed this step (it waits for the next one)."""
        try:
            ready = conn.poll(timeout)
            msg: tuple[Any, ...] = conn.recv() if ready else ()
        except (EOFError, OSError) as exc:
            raise StepError(f"a generator process is gone ({what}): {exc!r}") from exc
        if not msg:
            raise StepError(f"a generator process did not answer ({what}) within {timeout:.0f} s")
        if msg[0] == "error":
            raise _ChildFailedError(f"a generator process failed ({what}):\n{msg[1]}")
        return msg

    def step(self, load: Load, limits: Limits | None = None) -> StepResult:
        """Offer ``load`` for one window; the measurement and the limit it hit, if any."""
        limits = limits or Limits()
        t = self.timing
        jobs = self._jobs(load)
        before = self._readings()
        for (_, conn), job in zip(self._children, jobs, strict=True):
            conn.send(job)
        replies: list[tuple[Any, ...] | None] = []
        failures: list[str] = []
        for _, conn in self._children:
            try:
                replies.append(self._recv(conn, READY_TIMEOUT_S + 10.0, "connecting"))
            except _ChildFailedError as exc:  # it is back waiting for a job
                replies.append(None)
                failures.append(str(exc))
        connected = sum(r[1] for r in replies if r is not None)
        total = sum(r[2] for r in replies if r is not None)
        if failures or connected < total:
            usage = _Usage.between(before, self._readings())
            for (_, conn), reply in zip(self._children, replies, strict=True):
                if reply is not None:  # waiting for its start: called off
                    conn.send("abort")
            why = failures[0] if failures else f"{connected}/{total} clients connected"
            return _failed(load, "connect", why, usage)
        start = time.time() + 0.1
        m0 = start + t.warmup_s
        m1 = m0 + t.measure_s
        go = _Go(start, m0, m1, m1 + t.drain_s)
        for _, conn in self._children:
            conn.send(go)
        usage = _Usage.between(self._readings(at=go.m0), self._readings(at=go.m1))
        reports: list[dict[str, Any]] = []
        failures = []
        for _, conn in self._children:
            try:
                reports.append(self._recv(conn, t.drain_s + REPORT_TIMEOUT_S, "reporting")[1])
            except _ChildFailedError as exc:
                failures.append(str(exc))
        if failures:
            return _failed(load, "generator_failed", failures[0], usage)
        return judge(self._result(load, reports, usage), limits)

    def _readings(self, at: float | None = None) -> _Readings:
        """CPU readings (at wall-clock time ``at``: sleeps until then)."""
        if at is not None and (delay := at - time.time()) > 0:
            time.sleep(delay)
        busy, total = host_cpu()
        broker = rss = math.nan
        if self.broker_pid is not None:
            with contextlib.suppress(OSError, ValueError):
                broker, rss = proc_cpu_s(self.broker_pid), proc_rss_mb(self.broker_pid)
        children = []
        for pid in self.pids:
            try:
                children.append(proc_cpu_s(pid))
            except (OSError, ValueError):
                children.append(math.nan)
        return _Readings(time.monotonic(), busy, total, broker, rss, tuple(children))

    def _result(self, load: Load, reports: list[dict[str, Any]], usage: _Usage) -> StepResult:
        def total(key: str) -> int:
            return int(sum(r[key] for r in reports))

        def samples(key: str) -> list[float]:
            return [x for r in reports for x in r[key]]

        frames_sent = total("frames_sent")
        return StepResult(
            load=load,
            window_s=self.timing.measure_s,
            frames_target=total("frames_target"),
            frames_sent=frames_sent,
            frames_skipped=total("frames_skipped"),
            frames_offered=frames_sent * load.receivers,
            frames_delivered=total("frames"),
            frame_latency=Latency.of(samples("frame_lat")),
            heartbeats_sent=total("heartbeats_sent"),
            heartbeats_delivered=total("heartbeats"),
            heartbeat_lag=Latency.of(samples("hb_lag")),
            heartbeat_gap_max_ms=max((r["hb_gap_max"] for r in reports), default=0.0),
            control_sent=total("control_sent"),
            control_delivered=total("control"),
            control_lag=Latency.of(samples("control_lag")),
            **usage.fields(),
        )


@dataclass(frozen=True, slots=True)
class _Readings:
    t: float  # monotonic
    host_busy: float
    host_total: float
    broker: float  # CPU seconds
    broker_rss_mb: float
    children: tuple[float, ...]  # CPU seconds of each generator process


@dataclass(frozen=True, slots=True)
class _Usage:
    """CPU between two readings, in cores."""

    broker_cores: float
    broker_rss_mb: float
    generator_cores: float
    generator_busiest_cores: float
    coordinator_cores: float
    host_cores: float
    host_ncpu: int

    @classmethod
    def between(cls, r0: _Readings, r1: _Readings) -> _Usage:
        wall = max(r1.t - r0.t, 1e-6)
        ncpu = os.cpu_count() or 1
        total = r1.host_total - r0.host_total
        host = (r1.host_busy - r0.host_busy) / total * ncpu if total > 0 else 0.0
        cores = [(b - a) / wall for a, b in zip(r0.children, r1.children, strict=True)]
        coordinator = cores[-1] if cores else math.nan  # its process is the last one
        per = [x for x in cores if math.isfinite(x)]
        return cls(
            (r1.broker - r0.broker) / wall,
            r1.broker_rss_mb,
            sum(per),
            max(per, default=0.0),
            coordinator,
            host,
            ncpu,
        )

    def fields(self) -> dict[str, Any]:
        return {
            "broker_cores": self.broker_cores,
            "broker_rss_mb": self.broker_rss_mb,
            "generator_cores": self.generator_cores,
            "generator_busiest_cores": self.generator_busiest_cores,
            "coordinator_cores": self.coordinator_cores,
            "host_cores": self.host_cores,
            "host_ncpu": self.host_ncpu,
        }


def _failed(load: Load, limit: str, detail: str, usage: _Usage) -> StepResult:
    nan = Latency()
    res = StepResult(
        load, 0.0, 0, 0, 0, 0, 0, nan, 0, 0, nan, 0.0, 0, 0, nan, **usage.fields(),
        limit=limit, detail=detail[-2000:], error=detail[-2000:],
    )  # fmt: skip
    return replace(res, bottleneck=bottleneck(res))


def judge(res: StepResult, limits: Limits) -> StepResult:
    """``res`` with the first limit it hit (None: the broker was enough) and who saturated."""
    load = res.load
    hb_bound = limits.heartbeat_bound_ms(load)
    limit, detail = None, ""
    if load.cameras and res.delivered_ratio < limits.delivered_min:
        limit = "delivery"
        detail = (
            f"frames delivered {100 * res.delivered_ratio:.1f} % < "
            f"{100 * limits.delivered_min:g} % of offered"
        )
    elif load.cameras and not res.frame_latency.p99_ms <= limits.latency_p99_ms:
        limit = "latency"
        detail = f"frame p99 {res.frame_latency.p99_ms:.1f} ms > {limits.latency_p99_ms:g} ms"
    elif res.heartbeat_ratio < limits.delivered_min:
        limit = "heartbeat_loss"
        detail = (
            f"heartbeats delivered {100 * res.heartbeat_ratio:.1f} % < "
            f"{100 * limits.delivered_min:g} %"
        )
    elif res.heartbeats_sent and not res.heartbeat_lag.p99_ms <= hb_bound:
        limit = "heartbeat_lag"
        detail = f"heartbeat lag p99 {res.heartbeat_lag.p99_ms:.1f} ms > {hb_bound:g} ms"
    elif res.frames_target and res.frames_skipped > GENERATOR_SKIPPED_MAX * res.frames_target:
        limit = "generator_saturated"
        detail = f"the generator could not offer the load: {res.generator_saturated}"
    if limit is None:
        return res
    return replace(res, limit=limit, detail=detail, bottleneck=bottleneck(res))


def bottleneck(res: StepResult) -> str:
    """Who saturated at a step that hit a limit: "broker" (its thread near a full core),
    "generator" (a process of it near a full core, or it could not keep its schedule), "host"
    (every core busy: broker, generator and whatever else runs share them) or "unclear"."""
    if res.broker_cores >= BROKER_SATURATED_CORES:
        return "broker"
    if res.generator_busiest_cores >= PROC_SATURATED_CORES:
        return "generator"
    if res.host_cores >= HOST_SATURATED * res.host_ncpu:
        return "host"
    if res.generator_saturated:
        return "generator"
    return "unclear"


# -- the ramp ------------------------------------------------------------------------------------


def camera_steps(
    fps: float,
    frame_bytes: int,
    *,
    cameras: Iterable[int] = (1, 2, 4, 8, 16, 32, 64),
    cameras_per_worker: int = 4,
    **load: Any,
) -> list[Load]:
    """Cameras doubling at ``fps`` and ``frame_bytes``; a worker per ``cameras_per_worker``
    cameras (at least 2, so every camera has a warm standby following its frames)."""
    return [
        Load(n, fps, frame_bytes, max(2, math.ceil(n / cameras_per_worker)), **load)
        for n in cameras
    ]


def control_steps(workers: Iterable[int] = (16, 64, 128, 256), **load: Any) -> list[Load]:
    """No frames: more and more workers heartbeating, with their statuses and assignments."""
    return [Load(0, 0.0, 0, n, **load) for n in workers]


# Limits not worth a second try: clients that could not connect (a try costs the whole connect
# timeout), a generator or a broker that broke.
_FINAL: Final = ("connect", "generator_failed", "broker_died")  # never tried again


def ramp(
    gen: LoadGenerator,
    loads: Sequence[Load],
    *,
    name: str = "",
    limits: Limits | None = None,
    max_wall_s: float | None = None,
    confirm: int = 0,
    progress: Callable[[str], None] | None = None,
    alive: Callable[[], bool] | None = None,
) -> RampResult:
    """Offer each load in turn; stop at the first step that hits a limit (the broker is not
    enough), after the last step ("max_step"), or once ``max_wall_s`` has passed before a step
    ("max_wall"). ``confirm``: a step over a measured limit is tried again up to this many
    times, and counts as over only if every try is (a host shared with other work has busy
    moments that are not the broker's limit); its result says how many tries it took.
    ``alive``: whether the broker still runs (a dead broker ends the ramp at once)."""
    out = RampResult(name)
    started = time.monotonic()
    for i, load in enumerate(loads):
        if max_wall_s is not None and time.monotonic() - started >= max_wall_s:
            out.stop = "max_wall"
            break
        for attempt in range(1, confirm + 2):
            try:
                res = replace(gen.step(load, limits), tries=attempt)
            except StepError as exc:  # the generator broke: the ramp ends here, said so
                nan = math.nan
                usage = _Usage(nan, nan, nan, nan, nan, nan, os.cpu_count() or 1)
                res = replace(_failed(load, "generator_failed", str(exc), usage), tries=attempt)
                break
            if alive is not None and not alive():
                res = replace(res, limit="broker_died", detail="the broker process exited")
                break
            if progress is not None:
                again = f" (try {attempt})" if attempt > 1 else ""
                progress(f"[{name} {i + 1}/{len(loads)}]{again} {res.line()}")
            if res.limit in (None, *_FINAL):
                break
        out.steps.append(res)
        if res.limit is not None:
            out.stop = res.limit
            if res.bottleneck == "generator" and progress is not None:
                progress(
                    f"[{name}] the generator, not the broker, saturated at this step "
                    f"({res.generator_saturated or 'its own schedule'}): the broker's limit is "
                    "above the last step that was enough"
                )
            break
    else:
        out.stop = "max_step"
    log.debug("ramp_done", name=name, stop=out.stop, steps=len(out.steps))
    return out
