"""The topic scheme: every MQTT topic of the mesh, in one place.

`topics.md` documents the same table; ``tests/test_topics.py`` checks that the two agree.
Ids are lowercase ``[a-z0-9_-]``, no leading slash, one root, one mesh id per kit so several kits
can share a broker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from faillite.compat import StrEnum

ROOT: Final = "faillite"
_ID_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class InvalidIdError(ValueError):
    """An id that cannot be a topic level."""


def check_id(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid topic-level id, else raise :class:`InvalidIdError`."""
    if not _ID_RE.match(value):
        raise InvalidIdError(
            f"{kind} id {value!r} must be 1-64 chars of lowercase letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return value


class Role(StrEnum):
    SENSOR = "sensor"
    WORKER = "worker"
    COORDINATOR = "coordinator"
    OBSERVER = "observer"
    ADMIN = "admin"
    BRIDGE = "bridge"  # one broker's connection to another broker of the mesh
    UPLINK = "uplink"  # the kit's reporting link to a rear site's broker


class Access(StrEnum):
    READ = "read"
    WRITE = "write"
    READWRITE = "readwrite"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One row of the topic table (what topics.md documents)."""

    name: str
    pattern: str  # relative to faillite/{mesh}/, with {sensor} {worker} {app} placeholders
    publisher: Role | None  # None: every role publishes
    retained: bool
    qos: int
    payload: str  # "json" or "binary"
    schema: str | None  # message class name in faillite.messages, None for binary

    def filter(self, mesh: str) -> str:
        """MQTT subscription filter for every instance of this topic in ``mesh``."""
        rel = re.sub(r"\{[a-z]+\}", "+", self.pattern)
        return f"{ROOT}/{mesh}/{rel}"


SENSOR_FRAMES = TopicSpec(
    "sensor_frames", "sensors/{sensor}/frames", Role.SENSOR, False, 0, "binary", None
)
SENSOR_STATUS = TopicSpec(
    "sensor_status", "sensors/{sensor}/status", Role.SENSOR, True, 1, "json", "SensorStatus"
)
WORKER_STATUS = TopicSpec(
    "worker_status", "workers/{worker}/status", Role.WORKER, True, 1, "json", "WorkerStatus"
)
WORKER_HEARTBEAT = TopicSpec(
    "worker_heartbeat", "workers/{worker}/heartbeat", Role.WORKER, False, 0, "json", "Heartbeat"
)
WORKER_PROFILE = TopicSpec(
    "worker_profile", "workers/{worker}/profile", Role.WORKER, True, 1, "json", "WorkerProfile"
)
WORKER_ASSIGNMENT = TopicSpec(
    "worker_assignment",
    "workers/{worker}/assignment",
    Role.COORDINATOR,
    True,
    1,
    "json",
    "Assignment",
)
APP_RESULTS = TopicSpec(
    "app_results", "apps/{app}/results/{worker}", Role.WORKER, False, 0, "json", "Result"
)
APP_ROUTE = TopicSpec("app_route", "apps/{app}/route", Role.COORDINATOR, True, 1, "json", "Route")
COORDINATOR_STATUS = TopicSpec(
    "coordinator_status",
    "coordinator/status",
    Role.COORDINATOR,
    True,
    1,
    "json",
    "CoordinatorStatus",
)
COORDINATOR_BEAT = TopicSpec(
    "coordinator_beat",
    "coordinator/beat",
    Role.COORDINATOR,
    False,
    0,
    "json",
    "CoordinatorBeat",
)
PLACEMENT = TopicSpec("placement", "placement", Role.COORDINATOR, True, 1, "json", "Placement")
# Each source on its own topic, which only it may write: the topic, not the payload, says
# who reported an event.
EVENTS = TopicSpec("events", "events/{role}/{id}", None, False, 0, "json", "Event")

ALL_TOPICS: Final[tuple[TopicSpec, ...]] = (
    SENSOR_FRAMES,
    SENSOR_STATUS,
    WORKER_STATUS,
    WORKER_HEARTBEAT,
    WORKER_PROFILE,
    WORKER_ASSIGNMENT,
    APP_RESULTS,
    APP_ROUTE,
    COORDINATOR_STATUS,
    COORDINATOR_BEAT,
    PLACEMENT,
    EVENTS,
)


class Topics:
    """Topic names of one mesh."""

    __slots__ = ("mesh", "prefix")

    def __init__(self, mesh: str) -> None:
        self.mesh = check_id("mesh", mesh)
        self.prefix = f"{ROOT}/{mesh}"

    def sensor_frames(self, sensor: str) -> str:
        return f"{self.prefix}/sensors/{check_id('sensor', sensor)}/frames"

    def sensor_status(self, sensor: str) -> str:
        return f"{self.prefix}/sensors/{check_id('sensor', sensor)}/status"

    def worker_status(self, worker: str) -> str:
        return f"{self.prefix}/workers/{check_id('worker', worker)}/status"

    def worker_heartbeat(self, worker: str) -> str:
        return f"{self.prefix}/workers/{check_id('worker', worker)}/heartbeat"

    def worker_profile(self, worker: str) -> str:
        return f"{self.prefix}/workers/{check_id('worker', worker)}/profile"

    def worker_assignment(self, worker: str) -> str:
        return f"{self.prefix}/workers/{check_id('worker', worker)}/assignment"

    def app_results(self, app: str, worker: str) -> str:
        """Where ``worker`` publishes ``app``'s results: the worker is a topic level, so the
        broker's per-identity ACL, not the payload, says who published a result."""
        return f"{self.prefix}/apps/{check_id('app', app)}/results/{check_id('worker', worker)}"

    def app_results_filter(self, app: str | None = None) -> str:
        """Every worker's results of ``app`` (of every app: None)."""
        return f"{self.prefix}/apps/{'+' if app is None else check_id('app', app)}/results/+"

    def app_route(self, app: str) -> str:
        return f"{self.prefix}/apps/{check_id('app', app)}/route"

    @property
    def coordinator_status(self) -> str:
        return f"{self.prefix}/coordinator/status"

    @property
    def coordinator_beat(self) -> str:
        return f"{self.prefix}/coordinator/beat"

    @property
    def placement(self) -> str:
        return f"{self.prefix}/placement"

    @property
    def events(self) -> str:
        """Every source's events (a filter: publish on :meth:`events_of`)."""
        return f"{self.prefix}/events/+/+"

    def events_of(self, role: Role, source: str) -> str:
        """Where one process reports its events: only its own identity may write there."""
        return f"{self.prefix}/events/{role.value}/{check_id('id', source)}"

    def filter(self, spec: TopicSpec) -> str:
        return spec.filter(self.mesh)

    @property
    def everything(self) -> str:
        return f"{self.prefix}/#"


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 §4.7 matching of a concrete ``topic`` against ``topic_filter``."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False  # §4.7.2: wildcards at the first level never match $-topics
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels) or (level != "+" and level != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    spec: TopicSpec
    ids: dict[str, str]


def event_source(topic: str) -> str | None:
    """``{role}/{id}`` of the process whose events topic ``topic`` is, or None if none is."""
    parsed = parse(topic)
    if parsed is None or parsed[1].spec is not EVENTS:
        return None
    return f"{parsed[1].ids['role']}/{parsed[1].ids['id']}"


def parse(topic: str) -> tuple[str, ParsedTopic] | None:
    """Split a concrete topic into (mesh, matched spec with its ids), or None if not ours."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != ROOT:
        return None
    mesh, rest = parts[1], parts[2:]
    for spec in ALL_TOPICS:
        pat = spec.pattern.split("/")
        if len(pat) != len(rest):
            continue
        ids: dict[str, str] = {}
        for p, r in zip(pat, rest, strict=True):
            if p.startswith("{"):
                ids[p[1:-1]] = r
            elif p != r:
                break
        else:
            return mesh, ParsedTopic(spec, ids)
    return None
