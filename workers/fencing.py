"""Which assignments a worker obeys: those of the leader the coordinator status names.

Pure decision logic, no MQTT and no clock; :mod:`workers.service` feeds it the coordinator
statuses and assignments it reads (on the network thread) and carries out the verdicts.

- The leader's term is the highest term of a ``leader`` status read (retained or live). It
  never goes down: a deposed leader's late status does not bring its term back. An ``offline``
  status names no leader: the last one's assignments stay obeyed through a vacancy.
- An assignment of the leader's term applies if its generation is newer than the one applied
  under that term (or nothing was applied under it yet: a new leader's first assignment
  applies even if a forged one of a higher term was applied before the leader was known).
- An older term is stale (a deposed leader's): ignored, counted.
- A newer term (a successor whose status has not arrived yet: statuses and assignments are
  different topics) is held, only the newest, and applied when that leader's status arrives.
- A term more than :data:`~faillite.messages.MAX_TERM_JUMP` above the known leader's is
  forged (no takeover sequence gets there): refused and counted, and so is such a status.
- Before any leader status was read (no coordinator yet, or its status not arrived yet) the
  ``(term, generation)`` order alone decides, bounded the same way above the term applied.
- With ``coordinators`` configured (``coordinator.ids``) a status of another id is ignored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from faillite import messages

Action = Literal["apply", "hold", "old", "stale", "out_of_range"]
StatusAction = Literal["leader", "same", "old", "offline", "unknown_coordinator", "out_of_range"]


@dataclass(frozen=True, slots=True)
class StatusOutcome:
    action: StatusAction
    release: messages.Assignment | None = None  # held for this leader: apply it now
    dropped: messages.Assignment | None = None  # held, but this leader made it stale or forged


class Fence:
    def __init__(
        self,
        coordinators: frozenset[str] = frozenset(),
        *,
        max_jump: int = messages.MAX_TERM_JUMP,
    ) -> None:
        self.coordinators = coordinators
        self.max_jump = max_jump
        self.leader: int | None = None  # the newest leader's term; None: no leader read yet
        self.approved: tuple[int, int] | None = None  # (term, generation) last let through
        self.held: messages.Assignment | None = None  # of a term above the leader's

    def reference(self) -> int | None:
        """The term a new one is judged against: the leader's, else the one applied."""
        if self.leader is not None:
            return self.leader
        return self.approved[0] if self.approved is not None else None

    def out_of_range(self, term: int) -> bool:
        ref = self.reference()
        return ref is not None and term > ref + self.max_jump

    def assignment(self, a: messages.Assignment) -> Action:
        """The verdict on an assignment; ``apply``: hand it to the serving table now."""
        if self.out_of_range(a.term):
            return "out_of_range"
        leader = self.leader
        if leader is None:
            if self.approved is not None and a.version() <= self.approved:
                return "old"
            return self._approve(a)
        if a.term < leader:
            return "stale"
        if a.term > leader:
            if self.held is not None and a.version() <= self.held.version():
                return "old"
            self.held = a
            return "hold"
        ap = self.approved
        if ap is not None and ap[0] == leader and a.generation <= ap[1]:
            return "old"
        return self._approve(a)

    def _approve(self, a: messages.Assignment) -> Action:
        self.approved = a.version()
        return "apply"

    def status(self, st: messages.CoordinatorStatus) -> StatusOutcome:
        """Read a coordinator status; a newer leader may release the assignment held for it."""
        if self.coordinators and st.coordinator not in self.coordinators:
            return StatusOutcome("unknown_coordinator")
        if st.state != "leader":
            return StatusOutcome("offline")
        if self.out_of_range(st.term):
            return StatusOutcome("out_of_range")
        if self.leader is not None and st.term <= self.leader:
            return StatusOutcome("same" if st.term == self.leader else "old")
        self.leader = st.term
        held, self.held = self.held, None
        if held is None:
            return StatusOutcome("leader")
        if held.term == st.term:
            return StatusOutcome(
                "leader", release=held if self.assignment(held) == "apply" else None
            )
        if held.term > st.term and not self.out_of_range(held.term):
            self.held = held  # a later successor's still
            return StatusOutcome("leader")
        return StatusOutcome("leader", dropped=held)


class LogLimit:
    """At most one log line per key per ``interval_s``: a flood of forged messages must not
    flood the log. ``allow`` returns how many were kept quiet since the last line, or None."""

    def __init__(
        self, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._quiet[key] = self._quiet.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._quiet.pop(key, 0)
