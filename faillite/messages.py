"""JSON control messages of the mesh: frozen, slotted dataclasses with one codec.

Every payload carries ``v`` (schema version). Decoders accept the versions they know, ignore
unknown fields (a newer minor writer may add some), and raise :class:`MessageError` with a
clear reason for anything else, so one bad message is counted and logged, never fatal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import orjson
from pydantic import Field, TypeAdapter, ValidationError

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})

# Bounds of every field, so that a crafted message costs little and breaks nothing downstream:
# integers stay exact in every JSON reader (2^53) and a successor's term + 1 cannot overflow;
# names are topic ids or model names; lists and maps are small in a real mesh.
MAX_COUNT = 2**53 - 1
MAX_ITEMS = 1024
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Name = Annotated[str, Field(max_length=128)]
Text = Annotated[str, Field(max_length=1024)]
Names = Annotated[tuple[Name, ...], Field(max_length=MAX_ITEMS)]
Counts = Annotated[dict[Name, Count], Field(max_length=MAX_ITEMS)]
# A term more than this above the newest one a reader knows is forged, not a successor's: real
# terms grow by one per takeover, and one forged near MAX_COUNT would leave no term to succeed.
MAX_TERM_JUMP = 1000
# A frame rate the coordinator caps an app at: positive, finite, and no more than any camera
# sends, so a forged one can neither divide by zero nor turn the cap off by overflowing it.
MAX_FPS = 1000.0
Fps = Annotated[float, Field(gt=0, le=MAX_FPS, allow_inf_nan=False)]
# An Ed25519 signature in base64 (88 characters), when the mesh signs (faillite/signing.py).
Signature = Annotated[str, Field(max_length=128)]


class MessageError(ValueError):
    """A payload that cannot be decoded into the expected message."""

    reason = "invalid"


class MalformedJSONError(MessageError):
    reason = "malformed_json"


class UnknownSchemaVersionError(MessageError):
    reason = "unknown_schema_version"


class InvalidMessageError(MessageError):
    reason = "invalid_fields"


def now() -> float:
    """Wall-clock seconds since the epoch (what goes in ``ts`` fields)."""
    return time.time()


@dataclass(frozen=True, slots=True)
class SensorStatus:
    SCHEMA: ClassVar[str] = "SensorStatus"
    sensor: Name
    state: Literal["online", "offline"]
    incarnation: Name
    ts: float
    source: Text = ""
    fps: float = 0.0
    width: Count = 0
    height: Count = 0
    reason: Text = ""
    # As a worker's (WorkerStatus): a newer birth must reveal the live process's handover key.
    handover_seal: Name = ""
    handover_key: Name = ""
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """Birth (``online``), graceful stop or last-will (``offline``) of one worker incarnation."""

    SCHEMA: ClassVar[str] = "WorkerStatus"
    worker: Name
    incarnation: Name
    state: Literal["online", "offline"]
    ts: float
    reason: Text = ""  # offline: "graceful" or "lost" (the last-will)
    host: Text = ""
    pid: Count = 0
    device_class: Name = "cpu"
    device: Text = ""
    memory_mb: float = 0.0
    compute_budget: float = 1.0
    disk_mb: float = 0.0
    failure_domain: Name = ""
    backends: Names = ()
    models_on_disk: Names = ()
    heartbeat_interval_s: float = 0.1
    gpu: Text = ""  # the GPU's name (NVML), "" without one
    gpu_memory_mb: float = 0.0  # its total memory, MB
    # Birth: the hash of a secret only its offline twin reveals (faillite.presence); offline
    # (last-will, graceful): that secret. A coordinator's obituary has neither: it is signed.
    will_seal: Name = ""
    will_key: Name = ""
    # Birth: the hash of this process's handover key, kept on its own board; a successor's
    # birth (--replace) reveals it: the live process gives way only to one that does.
    handover_seal: Name = ""
    handover_key: Name = ""
    sig: Signature | None = None
    v: int = SCHEMA_VERSION


# A measured cost: positive, finite and below an hour, so a crafted profile cannot turn the
# planner's sums into infinities or make a board look free.
MAX_COST = 3_600_000.0
Cost = Annotated[float, Field(gt=0, le=MAX_COST, allow_inf_nan=False)]
ZeroCost = Annotated[float, Field(ge=0, le=MAX_COST, allow_inf_nan=False)]


@dataclass(frozen=True, slots=True)
class VariantCost:
    """What one variant costs on the board that measured it (``faillite profile``)."""

    variant: Name
    latency_ms: Cost
    memory_mb: Cost
    load_ms: ZeroCost = 0.0
    first_inference_ms: ZeroCost = 0.0


@dataclass(frozen=True, slots=True)
class WorkerProfile:
    """A worker's measured profile of its device class, retained beside its status: the
    coordinators plan with it where they had only an estimate of that class."""

    SCHEMA: ClassVar[str] = "WorkerProfile"
    worker: Name
    device_class: Name
    source: Text  # where and how it was measured
    ts: float
    costs: Annotated[tuple[VariantCost, ...], Field(min_length=1, max_length=MAX_ITEMS)]
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class AppStats:
    received: Count = 0
    processed: Count = 0
    dropped: Count = 0
    latency_ms: float = 0.0  # recent mean of capture -> result
    # Recent mean per-frame service time on the worker (decode + preprocess + its share of the
    # batch's inference), same window as latency_ms: without queue wait and network transit,
    # so slowness of the worker reads apart from overload of it.
    infer_ms: float = 0.0
    shed: Count = 0  # frames skipped for the assignment's max_fps, since start


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Liveness plus progress: a heartbeat with frames waiting and no progress is not health."""

    SCHEMA: ClassVar[str] = "Heartbeat"
    worker: Name
    incarnation: Name
    seq: Count
    ts: float
    frames_received: Count = 0
    frames_processed: Count = 0
    frames_dropped: Count = 0
    results_published: Count = 0
    queue_depth: Count = 0
    busy: bool = False
    last_progress_ts: float | None = None  # the last processed frame's result ts; None: none yet
    rss_mb: float = 0.0
    gpu_used_mb: float = 0.0  # GPU memory this worker process holds (NVML), MB
    loaded: Names = ()
    # Variants an assignment made it load (file and warm-up inference) right now, and how long
    # the oldest of those loads has run: a worker busy loading is not a slow one.
    loading: Names = ()
    loading_s: float = 0.0
    cpu_load: float = 0.0  # the host's 1-minute load average per usable CPU; 0.0: unknown
    generation: Count = 0
    errors: Counts = field(default_factory=dict)
    apps: Annotated[dict[Name, AppStats], Field(max_length=MAX_ITEMS)] = field(default_factory=dict)
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class Serve:
    """One app a worker must serve: frames of ``sensor`` through ``variant``."""

    app: Name
    sensor: Name
    variant: Name
    # At most this many frames per second of the app (overload shedding); the rest are skipped
    # before queueing and counted in AppStats.shed. None: every frame.
    max_fps: Fps | None = None


@dataclass(frozen=True, slots=True)
class Assignment:
    """What a worker serves, keeps warm (loaded) and keeps on disk, under (term, generation)."""

    SCHEMA: ClassVar[str] = "Assignment"
    worker: Name
    term: Count
    generation: Count
    ts: float
    serve: Annotated[tuple[Serve, ...], Field(max_length=MAX_ITEMS)] = ()
    warm: Names = ()
    disk: Names = ()
    # Apps this worker is the warm backup of: it follows their frames (keeping only the
    # latest), so a promotion serves at once instead of subscribing and waiting for a frame.
    standby: Annotated[tuple[Serve, ...], Field(max_length=MAX_ITEMS)] = ()
    # Apps this worker is the hot backup of: it runs every frame of theirs too and holds the
    # results, publishing only once promoted (those the primary did not publish, then live).
    hot: Annotated[tuple[Serve, ...], Field(max_length=MAX_ITEMS)] = ()
    sig: Signature | None = None  # over every other field, the mesh and the topic
    v: int = SCHEMA_VERSION

    def version(self) -> tuple[int, int]:
        return (self.term, self.generation)


@dataclass(frozen=True, slots=True)
class Label:
    index: Count
    label: Text
    score: float


@dataclass(frozen=True, slots=True)
class Latency:
    queue_ms: float
    decode_ms: float
    preprocess_ms: float
    inference_ms: float
    total_ms: float  # capture -> publish, across clocks of sensor and worker hosts


@dataclass(frozen=True, slots=True)
class Result:
    SCHEMA: ClassVar[str] = "Result"
    app: Name
    seq: Count
    sensor: Name
    capture_ts: float
    ts: float
    worker: Name
    incarnation: Name
    variant: Name
    generation: Count
    latency: Latency
    top: Annotated[tuple[Label, ...], Field(max_length=MAX_ITEMS)]
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class Route:
    SCHEMA: ClassVar[str] = "Route"
    app: Name
    worker: Name
    variant: Name
    term: Count
    generation: Count
    since: float
    # shed: paused by the coordinator under overload (nobody serves it, on purpose).
    state: Literal["serving", "degraded", "unserved", "shed"] = "serving"
    sig: Signature | None = None
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class CoordinatorStatus:
    SCHEMA: ClassVar[str] = "CoordinatorStatus"
    coordinator: Name
    incarnation: Name
    state: Literal["leader", "standby", "offline"]
    term: Count
    ts: float
    kind: Text = "static"
    sig: Signature | None = None  # over every other field, the mesh and the topic
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class CoordinatorBeat:
    """The leader's liveness, every ``coordinator.leader_beat_s``: a standby reads a leader
    whose status says online but that stopped beating as gone (its last-will may have died
    with its broker). Not retained: only a live beat says anything."""

    SCHEMA: ClassVar[str] = "CoordinatorBeat"
    coordinator: Name
    incarnation: Name
    term: Count
    seq: Count
    ts: float
    sig: Signature | None = None  # as the status's, where the mesh signs
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class PlacementEntry:
    app: Name
    worker: Name
    variant: Name
    role: Literal["primary", "hot", "warm", "cold"]


@dataclass(frozen=True, slots=True)
class Placement:
    SCHEMA: ClassVar[str] = "Placement"
    term: Count
    generation: Count
    ts: float
    entries: Annotated[tuple[PlacementEntry, ...], Field(max_length=MAX_ITEMS)] = ()
    objective: float | None = None
    lp_bound: float | None = None
    gap: float | None = None
    solver: Text = "static"
    sig: Signature | None = None
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened, with its timestamp: failure, detection, decision, load, serve."""

    SCHEMA: ClassVar[str] = "Event"
    kind: Text
    ts: float
    source: Text
    worker: Name = ""
    app: Name = ""
    detail: Annotated[dict[Name, Any], Field(max_length=MAX_ITEMS)] = field(default_factory=dict)
    v: int = SCHEMA_VERSION


M = TypeVar("M")

MESSAGE_TYPES: dict[str, type[Any]] = {
    cls.SCHEMA: cls
    for cls in (
        SensorStatus,
        WorkerStatus,
        Heartbeat,
        WorkerProfile,
        Assignment,
        Result,
        Route,
        CoordinatorStatus,
        CoordinatorBeat,
        Placement,
        Event,
    )
}


_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def _adapter(cls: type[M]) -> TypeAdapter[M]:
    adapter = _ADAPTERS.get(cls)
    if adapter is None:
        adapter = _ADAPTERS[cls] = TypeAdapter(cls)
    return adapter


def encode(msg: Any) -> bytes:
    """Serialize a message dataclass to compact JSON."""
    return orjson.dumps(msg)


def decode(cls: type[M], payload: bytes | bytearray | memoryview | str) -> M:
    """Parse and validate ``payload`` as ``cls``; raise a :class:`MessageError` subclass if bad."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSONError(f"{cls.__name__}: malformed JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidMessageError(
            f"{cls.__name__}: expected a JSON object, got {type(obj).__name__}"
        )
    version = obj.get("v")
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        raise UnknownSchemaVersionError(
            f"{cls.__name__}: unknown schema version {version!r} "
            f"(this build reads {sorted(SUPPORTED_VERSIONS)})"
        )
    try:
        # Strict, from the JSON itself: a string is no number, a float no integer.
        raw = bytes(payload) if isinstance(payload, memoryview) else payload
        msg: M = _adapter(cls).validate_json(raw, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidMessageError(
            f"{cls.__name__}: {exc.error_count()} invalid field(s), first {where}: {first['msg']}"
        ) from exc
    return msg


def to_dict(msg: Any) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(orjson.dumps(msg))
    return out
