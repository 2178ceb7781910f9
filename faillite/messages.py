"""JSON control messages of the mesh: frozen, slotted dataclasses with one codec.

Every payload carries ``v`` (schema version). Decoders accept the versions they know, ignore
unknown fields (a newer minor writer may add some), and raise :class:`MessageError` with a
clear reason for anything else, so one bad message is counted and logged, never fatal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import orjson
from pydantic import TypeAdapter, ValidationError

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})


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
    sensor: str
    state: Literal["online", "offline"]
    incarnation: str
    ts: float
    source: str = ""
    fps: float = 0.0
    width: int = 0
    height: int = 0
    reason: str = ""
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """Birth (``online``), graceful stop or last-will (``offline``) of one worker incarnation."""

    SCHEMA: ClassVar[str] = "WorkerStatus"
    worker: str
    incarnation: str
    state: Literal["online", "offline"]
    ts: float
    reason: str = ""  # offline: "graceful" or "lost" (the last-will)
    host: str = ""
    pid: int = 0
    device_class: str = "cpu"
    device: str = ""
    memory_mb: float = 0.0
    compute_budget: float = 1.0
    disk_mb: float = 0.0
    failure_domain: str = ""
    backends: tuple[str, ...] = ()
    models_on_disk: tuple[str, ...] = ()
    heartbeat_interval_s: float = 0.1
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class AppStats:
    received: int = 0
    processed: int = 0
    dropped: int = 0
    latency_ms: float = 0.0  # recent mean of capture -> result


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Liveness plus progress: a heartbeat with frames waiting and no progress is not health."""

    SCHEMA: ClassVar[str] = "Heartbeat"
    worker: str
    incarnation: str
    seq: int
    ts: float
    frames_received: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    results_published: int = 0
    queue_depth: int = 0
    busy: bool = False
    last_progress_ts: float | None = None  # the last processed frame's result ts; None: none yet
    rss_mb: float = 0.0
    loaded: tuple[str, ...] = ()
    generation: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    apps: dict[str, AppStats] = field(default_factory=dict)
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class Serve:
    """One app a worker must serve: frames of ``sensor`` through ``variant``."""

    app: str
    sensor: str
    variant: str


@dataclass(frozen=True, slots=True)
class Assignment:
    """What a worker serves, keeps warm (loaded) and keeps on disk, under (term, generation)."""

    SCHEMA: ClassVar[str] = "Assignment"
    worker: str
    term: int
    generation: int
    ts: float
    serve: tuple[Serve, ...] = ()
    warm: tuple[str, ...] = ()
    disk: tuple[str, ...] = ()
    # Apps this worker is the warm backup of: it follows their frames (keeping only the
    # latest), so a promotion serves at once instead of subscribing and waiting for a frame.
    standby: tuple[Serve, ...] = ()
    v: int = SCHEMA_VERSION

    def version(self) -> tuple[int, int]:
        return (self.term, self.generation)


@dataclass(frozen=True, slots=True)
class Label:
    index: int
    label: str
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
    app: str
    seq: int
    sensor: str
    capture_ts: float
    ts: float
    worker: str
    incarnation: str
    variant: str
    generation: int
    latency: Latency
    top: tuple[Label, ...]
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class Route:
    SCHEMA: ClassVar[str] = "Route"
    app: str
    worker: str
    variant: str
    term: int
    generation: int
    since: float
    state: Literal["serving", "degraded", "unserved"] = "serving"
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class CoordinatorStatus:
    SCHEMA: ClassVar[str] = "CoordinatorStatus"
    coordinator: str
    incarnation: str
    state: Literal["leader", "standby", "offline"]
    term: int
    ts: float
    kind: str = "static"
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class PlacementEntry:
    app: str
    worker: str
    variant: str
    role: Literal["primary", "warm", "cold"]


@dataclass(frozen=True, slots=True)
class Placement:
    SCHEMA: ClassVar[str] = "Placement"
    term: int
    generation: int
    ts: float
    entries: tuple[PlacementEntry, ...] = ()
    objective: float | None = None
    lp_bound: float | None = None
    gap: float | None = None
    solver: str = "static"
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened, with its timestamp: failure, detection, decision, load, serve."""

    SCHEMA: ClassVar[str] = "Event"
    kind: str
    ts: float
    source: str
    worker: str = ""
    app: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    v: int = SCHEMA_VERSION


M = TypeVar("M")

MESSAGE_TYPES: dict[str, type[Any]] = {
    cls.SCHEMA: cls
    for cls in (
        SensorStatus,
        WorkerStatus,
        Heartbeat,
        Assignment,
        Result,
        Route,
        CoordinatorStatus,
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
        msg: M = _adapter(cls).validate_python(obj)
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
