"""Leadership: terms, stepping down, and a standby's judgement of when to take over.

Pure decision logic, fed the coordinator statuses, assignments and placements a coordinator
reads (and, for a standby, the times it reads them); :mod:`coordinator.service` does the MQTT.

:class:`Leadership`, of a coordinator that leads (or is about to):
- its term is the next one after everything retained (statuses and assignments carry terms;
  the leader's own status may have been replaced by its last-will) and after a standby's
  ``term_floor`` (the newest leader it saw, whatever the broker still retains);
- terms are bounded (``MAX_COUNT``, 2^53 - 1, what decoders accept): a coordinator that would
  need a term above the bound refuses to lead (:class:`TermExhaustedError`) instead;
- a term more than ``MAX_TERM_JUMP`` above the newest one known from live coordinators (ours
  while we lead, the leader a standby watched, a leader status that arrived live) is forged:
  it is not adopted, deposes nobody, and a leader puts its own status or state back;
- with ``coordinators`` configured (``coordinator.ids``), a status of another id is foreign:
  not adopted, deposes nobody (the broker's ACL already lets only coordinator accounts write
  the status; this holds even for a coordinator account that claims to be someone else);
- a leader status of a higher term from another configured coordinator: a successor took over
  (we were frozen or cut off): step down quietly, workers already fence our assignments by
  term;
- a non-leader status of our term or older from another incarnation (a predecessor's late
  last-will) replaced our retained status: put ours back;
- a retained placement of another term is what a predecessor left: inherit it.

:class:`Vacancy`, of a standby: the leader's status is retained with a last-will, so a crashed
leader reads ``offline`` at once and a frozen one once the broker's keepalive expires. A
standby of rank ``r`` takes over once the leadership has been vacant ``r * takeover_delay_s``
(ranks keep two standbys from racing). A late last-will of an older leader (lower term than the
newest leader seen) is not a vacancy. After any (re)connect, vacant or not is judged afresh
after a grace: a leader starting beside us must claim its term, and after a broker restart the
leader must reconnect (its last-will may have fired as the broker went down).

A leader's last-will dies with its broker: when the node that ran broker A and the leader dies,
or the bridge to the standby's broker is cut, the standby's broker keeps the leader's ``leader``
status retained for good. So the leader beats (``coordinator/beat``) and a standby that heard a
beat of the newest leader (same id, incarnation and term) reads it as gone once no beat came
for ``silence_s`` while its own link was heard from: the seconds its own link was quiet do not
count (they are its own trouble, not the leader's death), and after a (re)connect silence
counts only from the connect and judges nothing before the grace is over. A leader it never
heard beat (an older version; a status written by hand) is judged by its status alone. Behind
a cut bridge the far side thus elects its own leader; after the heal the higher term wins: the
older leader steps down on seeing it, and a leader that sees an older leader's status over its
own puts its own back.
"""

from __future__ import annotations

from typing import Literal

from faillite import messages
from faillite.messages import MAX_COUNT, MAX_TERM_JUMP

STARTUP_GRACE_S = 2.0  # a leader's term acquisition waits up to 1.2 s for retained state

# step_down: a successor leads; restore: put our status back; forged: a term too far above
# the newest live one; foreign: a status of an id that is no coordinator of the mesh.
Verdict = Literal["step_down", "restore", "forged", "foreign"]
Reading = Literal["leader", "gone", "still_gone", "stale", "older_leader", "forged", "foreign"]
# beat: of the newest leader; back: it beats again after its silence made a vacancy; other: of
# no leader we know (an older one, or one whose status has not arrived): proves nothing.
BeatReading = Literal["beat", "back", "other", "foreign"]


class TermExhaustedError(RuntimeError):
    """No term is left above the highest one seen: the coordinator must not lead."""

    def __init__(self, highest: int) -> None:
        super().__init__(
            f"the highest term seen is {highest}; the next would pass the bound {MAX_COUNT}. "
            "A forged or corrupt term is retained on the broker: clear the retained "
            "coordinator status and assignments (an empty retained message), then start again"
        )
        self.highest = highest


class Leadership:
    def __init__(
        self,
        coordinator_id: str,
        incarnation: str,
        kind: str,
        *,
        term_floor: int = 0,
        coordinators: frozenset[str] = frozenset(),
        max_jump: int = MAX_TERM_JUMP,
    ) -> None:
        self.id = coordinator_id
        self.incarnation = incarnation
        self.kind = kind  # what our status says we run: "planner", "static"
        self.term = 0  # 0: not leading (yet)
        self.term_floor = term_floor
        self.coordinators = coordinators  # empty: any id
        self.max_jump = max_jump
        self.seen_term = 0  # the highest term read on the broker (not forged)
        self.live_term = 0  # the highest leader term that arrived live (not retained)
        self.deposed = False

    def status(self, state: Literal["leader", "offline"], ts: float) -> messages.CoordinatorStatus:
        return messages.CoordinatorStatus(
            coordinator=self.id,
            incarnation=self.incarnation,
            state=state,
            term=self.term,
            ts=ts,
            kind=self.kind,
        )

    @property
    def reference(self) -> int:
        """The newest term known from live coordinators (0: none): ours while we lead, the
        leader a standby watched (``term_floor``), a leader status that arrived live."""
        return max(self.term, self.term_floor, self.live_term)

    def forged(self, term: int) -> bool:
        """A term no successor of a live coordinator could have taken yet."""
        ref = self.reference
        return ref > 0 and term > ref + self.max_jump

    def acquire(self) -> int:
        """Take the next term after the highest one seen (a restart moves it on); raise
        :class:`TermExhaustedError` rather than take one beyond the bound."""
        highest = max(self.seen_term, self.term_floor)
        if highest >= MAX_COUNT:
            raise TermExhaustedError(highest)
        self.term = highest + 1
        return self.term

    def on_status(self, st: messages.CoordinatorStatus, *, live: bool = False) -> Verdict | None:
        """``live``: the status arrived as it was written, not replayed from the retained
        store."""
        if st.incarnation == self.incarnation:
            if self.term and not self.deposed and st.state != "leader":
                # Our own last-will, of a connection to a broker we have left (a broker that
                # stored it and comes back, or a cluster node's survivors publishing it late).
                return "restore"
            return None
        if self.coordinators and st.coordinator not in self.coordinators:
            return "foreign"
        if self.forged(st.term):
            return "forged"
        self.seen_term = max(self.seen_term, st.term)
        if live and st.state == "leader":
            self.live_term = max(self.live_term, st.term)
        if self.term and st.state == "leader" and st.term > self.term:
            self.deposed = True
            return "step_down"
        if self.term and not self.deposed and st.state != "leader" and st.term <= self.term:
            return "restore"
        if self.term and not self.deposed and st.state == "leader" and st.term < self.term:
            # An older leader's status over ours (a healed bridge replays what the other side
            # retained): ours goes back, and the older leader steps down on reading it.
            return "restore"
        return None

    def on_assignment(self, a: messages.Assignment) -> Verdict | None:
        """A retained or live assignment: its term is taken into account, unless forged."""
        if self.forged(a.term):
            return "forged"
        self.seen_term = max(self.seen_term, a.term)
        return None

    def inherits(self, p: messages.Placement) -> bool:
        """Whether a retained placement is another term's (ours come back to us too)."""
        return p.term != self.term


class Vacancy:
    """A standby's view of the leadership: since when it is vacant, and the newest leader."""

    def __init__(
        self,
        delay_s: float,
        grace_s: float,
        *,
        coordinators: frozenset[str] = frozenset(),
        max_jump: int = MAX_TERM_JUMP,
        silence_s: float | None = None,
    ) -> None:
        self.delay_s = delay_s
        self.grace_s = grace_s
        self.coordinators = coordinators  # empty: any id
        self.max_jump = max_jump
        self.silence_s = silence_s  # None: beats are not judged
        self.leader: messages.CoordinatorStatus | None = None  # newest leader seen
        self.vacant_since: float | None = None  # None: led, or we cannot tell
        self.beat_at: float | None = None  # the newest leader's last beat; None: never heard
        self.silenced = False  # the vacancy is the newest leader's silence (a beat ends it)
        self.connected_at = 0.0  # silence counts from our last connect at the earliest
        self.judge_from: float | None = None  # None: not connected, silence is not judged

    @property
    def highest_term(self) -> int:
        """The newest leader's term we saw: a successor must take a higher one, whatever the
        broker still retains."""
        return self.leader.term if self.leader is not None else 0

    def connected(self, now: float) -> None:
        # Nothing retained then (no leader ever, or a broker that lost it) reads as vacant.
        self.vacant_since = now + self.grace_s
        self.silenced = False
        # The leader may be moving brokers too: its silence counts from now, judged after the
        # grace (its reconnect backoff).
        self.connected_at = now
        self.judge_from = now + self.grace_s

    def disconnected(self) -> None:
        self.vacant_since = None  # we cannot tell while we cannot see
        self.silenced = False
        self.judge_from = None

    def cleared(self, now: float) -> None:
        """The retained status was removed."""
        self.vacant_since = self.vacant_since or now

    def on_status(self, st: messages.CoordinatorStatus, now: float) -> Reading:
        newest = self.leader
        if self.coordinators and st.coordinator not in self.coordinators:
            return "foreign"  # neither a leader nor a vacancy
        if newest is not None and st.term > newest.term + self.max_jump:
            return "forged"  # no successor of the leader we watched could be that far above
        if st.state == "leader":
            if newest is None or st.term >= newest.term:
                if newest is None or _key(st) != _key(newest):
                    self.beat_at = None  # a new leader: judged by its beats once it beats
                self.leader = st
                # A retained copy proves no life: a silent leader's vacancy comes back at its
                # next judge_silence, dated as before.
                self.vacant_since = None
                self.silenced = False
                return "leader"
            return "older_leader"
        if newest is None or st.incarnation == newest.incarnation or st.term > newest.term:
            # The newest leader (or one we never saw lead) is gone.
            if self.silenced:  # its silence said so already: the vacancy keeps its start
                self.silenced = False
                return "still_gone"
            first = self.vacant_since is None
            self.vacant_since = max(self.vacant_since or now, now)
            return "gone" if first else "still_gone"
        return "stale"

    def on_beat(self, beat: messages.CoordinatorBeat, now: float) -> BeatReading:
        if self.coordinators and beat.coordinator not in self.coordinators:
            return "foreign"
        leader = self.leader
        if leader is None or _key(beat) != _key(leader):
            return "other"
        self.beat_at = now
        if self.silenced:  # it was only late: led again
            self.vacant_since, self.silenced = None, False
            return "back"
        return "beat"

    def judge_silence(self, now: float, link_quiet_s: float = 0.0) -> float | None:
        """Once the newest leader, which we heard beat, has been silent ``silence_s`` while our
        own link was heard from (``link_quiet_s``: how long it has been quiet now), the
        leadership is vacant from when the silence passed the bound (not before the grace of
        our last connect). Returns that silence, the first time; None otherwise."""
        if (
            self.silence_s is None
            or self.leader is None
            or self.beat_at is None
            or self.vacant_since is not None
            or self.judge_from is None
            or now < self.judge_from
        ):
            return None
        silent = now - max(self.beat_at, self.connected_at) - max(0.0, link_quiet_s)
        if silent < self.silence_s:
            return None
        self.vacant_since = max(now - (silent - self.silence_s), self.judge_from)
        self.silenced = True
        return silent

    def due(self, now: float) -> float | None:
        """Seconds since the vacancy began, once it has lasted ``delay_s``; else None."""
        since = self.vacant_since
        if since is not None and now - since >= self.delay_s:
            return now - since
        return None


def _key(m: messages.CoordinatorStatus | messages.CoordinatorBeat) -> tuple[str, str, int]:
    return (m.coordinator, m.incarnation, m.term)
