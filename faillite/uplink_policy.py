"""What a kit's uplink to a rear site carries, and how it queues: pure logic, no MQTT.

- **Kinds** (:data:`KIND_FILTERS`): the mesh topics that may go up, by kind; frames never do (a
  rear link is far too slow for them).
- **Up** (:class:`RearQueue`): while the rear link is down or slow, messages wait in a bounded
  queue (messages and bytes). Past either bound the oldest streaming message (a result, an
  event) is dropped and counted per kind. Retained state (statuses, routes, the placement) is
  coalesced, the latest value per topic wins, since the rear site wants the current state, not
  its history; only when retained state alone overflows the bound is its oldest dropped.
- **Down** (:class:`DownGate`): nothing comes down unless the kit's config lists its filter;
  what comes down is size-limited, and everything refused is counted by reason.

Filters in the config are relative to the mesh (``apps/+/results/+``); up, a kit topic
``faillite/{mesh}/X`` becomes ``{prefix}/X`` on the rear broker, and down the reverse.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from faillite.topics import ALL_TOPICS, ROOT, matches

Kind = Literal["results", "statuses", "placement", "events", "heartbeats", "assignments"]
KINDS: Final[tuple[Kind, ...]] = (
    "results",
    "statuses",
    "placement",
    "events",
    "heartbeats",
    "assignments",
)
DEFAULT_KINDS: Final[tuple[Kind, ...]] = ("results", "statuses", "placement", "events")
# Relative to faillite/{mesh}/.
KIND_FILTERS: Final[dict[Kind, tuple[str, ...]]] = {
    "results": ("apps/+/results/+",),
    "statuses": ("sensors/+/status", "workers/+/status", "coordinator/status"),
    "placement": ("placement", "apps/+/route"),
    "events": ("events/+/+",),
    "heartbeats": ("workers/+/heartbeat",),
    "assignments": ("workers/+/assignment",),
}
# Retained in the topic scheme (topics.md): what the uplink coalesces. A subscriber cannot tell
# a live retained publish from a plain one in MQTT 3.1.1, so the scheme decides.
RETAINED_FILTERS: Final[tuple[str, ...]] = (
    "sensors/+/status",
    "workers/+/status",
    "workers/+/assignment",
    "coordinator/status",
    "placement",
    "apps/+/route",
)
# The uplink's own topics on the rear broker, under the prefix: never uploads, never down.
OWN_SUBTREE: Final = "uplink"
MAX_FILTER_CHARS: Final = 512


class FilterError(ValueError):
    """A topic filter or prefix that the uplink cannot use."""


def check_filter(f: str) -> str:
    """``f`` if it is a valid relative MQTT filter (no leading ``/``, no empty level, ``#`` last
    and alone, ``+`` alone in its level, not ``$``-prefixed)."""
    if not f or len(f) > MAX_FILTER_CHARS or "\0" in f:
        raise FilterError(f"filter {f!r} must be 1-{MAX_FILTER_CHARS} characters")
    if f.startswith(("$", "/")) or f.endswith("/"):
        raise FilterError(f"filter {f!r} must be relative to the mesh (no leading '/' or '$')")
    levels = f.split("/")
    for i, level in enumerate(levels):
        if not level:
            raise FilterError(f"filter {f!r} has an empty level")
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or (
            "+" in level and level != "+"
        ):
            raise FilterError(f"filter {f!r}: '#' only as the last level, '+' only alone")
    return f


def check_prefix(p: str) -> str:
    """``p`` if it can prefix topics on the rear broker: no wildcards, no empty level."""
    check_filter(p)
    if "+" in p or "#" in p:
        raise FilterError(f"prefix {p!r} must not contain wildcards")
    return p


def filters_overlap(a: str, b: str) -> bool:
    """True if some topic matches both filters."""
    la, lb = a.split("/"), b.split("/")
    for i in range(max(len(la), len(lb))):
        x = la[i] if i < len(la) else None
        y = lb[i] if i < len(lb) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x != "+" and y != "+" and x != y:
            return False
    return True


def up_filters(kinds: tuple[Kind, ...]) -> tuple[str, ...]:
    return tuple(f for k in kinds for f in KIND_FILTERS[k])


def down_problem(down: tuple[str, ...], kinds: tuple[Kind, ...]) -> str | None:
    """Why an allow-list cannot be used with these up kinds, or None. A filter that overlaps
    what goes up would loop (down to the kit, back up, down again: MQTT 3.1.1 has no
    no-local); one over the uplink's own subtree would feed its status into the kit."""
    for f in down:
        try:
            check_filter(f)
        except FilterError as exc:
            return str(exc)
        for u in (*up_filters(kinds), f"{OWN_SUBTREE}/#"):
            if filters_overlap(f, u):
                return f"down filter {f!r} overlaps {u!r}: it would loop back"
        # What the mesh acts on (frames, statuses, assignments, routes, the leader's state,
        # events) is written only inside the kit: a rear site must not steer it.
        for spec in ALL_TOPICS:
            own = re.sub(r"\{[a-z]+\}", "+", spec.pattern)
            if filters_overlap(f, own):
                return (
                    f"down filter {f!r} overlaps the mesh's own {own!r}: a rear site must not "
                    "write what the kit acts on (use a topic of its own, e.g. apps/+/tasking)"
                )
    return None


def kind_of(rel: str, kinds: tuple[Kind, ...]) -> Kind | None:
    for k in kinds:
        if any(matches(f, rel) for f in KIND_FILTERS[k]):
            return k
    return None


def is_retained(rel: str) -> bool:
    return any(matches(f, rel) for f in RETAINED_FILTERS)


@dataclass(slots=True)
class Outbound:
    """One message waiting to go up: ``topic`` is its rear-broker topic."""

    topic: str
    payload: bytes
    retain: bool
    kind: str
    queued_at: float
    seq: int = 0

    @property
    def size(self) -> int:
        return len(self.topic) + len(self.payload)


@dataclass(slots=True)
class QueueStats:
    queued: int = 0
    queued_bytes: int = 0
    high_water: int = 0  # most messages queued at once
    accepted: int = 0
    coalesced: int = 0  # retained values replaced by a newer one before they went up
    dropped: int = 0  # every message lost to the bound (or too large to ever fit)
    dropped_by_kind: dict[str, int] = field(default_factory=dict)


class RearQueue:
    """The bounded queue of one uplink: streaming messages FIFO, retained ones one per topic,
    sent oldest first across both; past ``max_messages`` or ``max_bytes`` the oldest streaming
    message goes first, retained state only when nothing else is left to drop."""

    def __init__(
        self, max_messages: int, max_bytes: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("a queue of at least one message and one byte")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.clock = clock
        self._stream: deque[Outbound] = deque()
        self._state: OrderedDict[str, Outbound] = OrderedDict()  # topic -> latest, by seq
        self._bytes = 0
        self._seq = 0
        self.stats = QueueStats()

    def __len__(self) -> int:
        return len(self._stream) + len(self._state)

    @property
    def bytes(self) -> int:
        return self._bytes

    def put(self, msg: Outbound) -> None:
        self._seq += 1
        msg.seq = self._seq
        self.stats.accepted += 1
        if msg.size > self.max_bytes:
            self._drop(msg)
            return
        if msg.retain:
            old = self._state.pop(msg.topic, None)
            if old is not None:
                self._bytes -= old.size
                self.stats.coalesced += 1
            self._state[msg.topic] = msg  # at the end: the newest
        else:
            self._stream.append(msg)
        self._bytes += msg.size
        while len(self) > self.max_messages or self._bytes > self.max_bytes:
            victim = self._stream.popleft() if self._stream else self._state.popitem(False)[1]
            self._bytes -= victim.size
            self._drop(victim)
        self._update()

    def pop(self) -> Outbound | None:
        """The oldest message waiting, removed; None when empty."""
        s = self._stream[0] if self._stream else None
        r = next(iter(self._state.values())) if self._state else None
        if s is None and r is None:
            return None
        if r is None or (s is not None and s.seq < r.seq):
            msg = self._stream.popleft()
        else:
            msg = self._state.popitem(last=False)[1]
        self._bytes -= msg.size
        self._update()
        return msg

    def oldest_age_s(self) -> float:
        """How long the oldest waiting message has waited (0 when empty)."""
        ages = [self._stream[0].queued_at] if self._stream else []
        if self._state:
            ages.append(next(iter(self._state.values())).queued_at)
        return max(0.0, self.clock() - min(ages)) if ages else 0.0

    def _drop(self, msg: Outbound) -> None:
        self.stats.dropped += 1
        by_kind = self.stats.dropped_by_kind
        by_kind[msg.kind] = by_kind.get(msg.kind, 0) + 1

    def _update(self) -> None:
        n = len(self)
        self.stats.queued = n
        self.stats.queued_bytes = self._bytes
        self.stats.high_water = max(self.stats.high_water, n)


DownRefusal = Literal["not_allowed", "too_large"]


class DownGate:
    """What may come down from the rear broker into the kit: only topics under ``prefix``
    matching an allowed filter, each at most ``max_bytes``; everything else refused, counted."""

    def __init__(self, mesh: str, prefix: str, allowed: tuple[str, ...], max_bytes: int) -> None:
        self.prefix = prefix
        self.mesh_prefix = f"{ROOT}/{mesh}"
        self.allowed = allowed
        self.max_bytes = max_bytes
        self.passed = 0
        self.refused: dict[str, int] = {}

    @property
    def upstream_filters(self) -> tuple[str, ...]:
        """What the uplink subscribes to on the rear broker: nothing else ever arrives."""
        return tuple(f"{self.prefix}/{f}" for f in self.allowed)

    def admit(self, topic: str, payload: bytes) -> tuple[str | None, DownRefusal | None]:
        """(the kit topic a message from the rear broker goes to, None) or (None, why not)."""
        head = self.prefix + "/"
        rel = topic[len(head) :] if topic.startswith(head) else ""
        reason: DownRefusal | None = None
        if not rel or not any(matches(f, rel) for f in self.allowed):
            reason = "not_allowed"
        elif len(payload) > self.max_bytes:
            reason = "too_large"
        if reason is not None:
            self.refused[reason] = self.refused.get(reason, 0) + 1
            return None, reason
        self.passed += 1
        return f"{self.mesh_prefix}/{rel}", None


def up_topic(mesh: str, prefix: str, topic: str) -> str | None:
    """The rear-broker topic of kit topic ``topic`` (None: not of this mesh)."""
    mine = f"{ROOT}/{mesh}/"
    return f"{prefix}/{topic[len(mine) :]}" if topic.startswith(mine) else None
