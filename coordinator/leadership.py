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
newest leader seen) is not a vacancy.

After a (re)connect, nothing counts as vacant before ``judge_from``: the standby must first read
what this broker retains. The transport does not tell when the broker acknowledged the
subscription, so this is measured from the connect (the subscription goes out with it): the
retained copy arrives within ``settle_s`` of the connect, or nothing is retained. Then:

- on the first connect, ``startup_s``: a leader starting beside us must claim its term (its
  acquisition waits up to 1.2 s for retained state, after its own connect);
- on the first reconnect since the leader's last sign of life, ``settle_s + backoff_s``: the
  leader may be moving brokers too (or this broker lost its retained state and the leader must
  publish its status again), which takes it its reconnect backoff; that allowance is given once;
- on a later reconnect (a flapping link, a second broker switch), ``settle_s`` only, and never
  later than the allowance already given ended: a reconnect does not push a vacancy further out.

A vacancy we saw (an ``offline``, a silence) is kept across our own disconnect: it is due once
we are connected again and past ``judge_from``, unless what the broker retains says otherwise
(a leader of a newer term, or the leader's status again, whose silence is then judged anew).

A leader's last-will dies with its broker: when the node that ran broker A and the leader dies,
or the bridge to the standby's broker is cut, the standby's broker keeps the leader's ``leader``
status retained for good. So the leader beats (``coordinator/beat``) and a standby that heard a
beat of the newest leader (same id, incarnation and term) reads it as gone once no beat came
for ``silence_s`` while its own link was heard from: the seconds its own link was quiet or down
do not count (they are its own trouble, not the leader's death). The silence runs across our
reconnects: what was heard of it on earlier connections counts, less one beat interval
(``beat_s``) for each connection made after its last beat (a beat was not due yet), so that a
link that flaps faster than the leader beats proves no silence. After the first reconnect since
its last beat, silence counts only from ``backoff_s`` after the connect (the allowance above). A
leader it never heard beat (an older version; a status written by hand) is judged by its status
alone. Behind a cut bridge the far side thus elects its own leader; after the heal the higher
term wins: the older leader steps down on seeing it, and a leader that sees an older leader's
status over its own puts its own back.
"""

from __future__ import annotations

from typing import Final, Literal

from faillite import messages
from faillite.messages import MAX_COUNT, MAX_TERM_JUMP

STARTUP_GRACE_S = 2.0  # a leader's term acquisition waits up to 1.2 s for retained state
# After a connect, what the broker retains arrives within this (the subscription goes out with
# the connect; SUBACK and the retained copy follow in one round trip, milliseconds on a LAN).
RETAINED_SETTLE_S = 0.5

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


# How long a leader's live offline waits for the broker to be heard from after it, at most.
UNCONFIRMED_MAX_S: Final = 3.0


class Vacancy:
    """A standby's view of the leadership: since when it is vacant, and the newest leader.

    Times are the caller's monotonic clock. ``startup_s``, ``settle_s`` and ``backoff_s``: the
    holds after a connect (module docstring); ``beat_s``: the leader's beat interval."""

    def __init__(
        self,
        delay_s: float,
        *,
        startup_s: float = STARTUP_GRACE_S,
        settle_s: float = RETAINED_SETTLE_S,
        backoff_s: float = 0.0,
        beat_s: float = 0.0,
        coordinators: frozenset[str] = frozenset(),
        max_jump: int = MAX_TERM_JUMP,
        silence_s: float | None = None,
    ) -> None:
        self.delay_s = delay_s
        self.startup_s = startup_s
        self.settle_s = settle_s
        self.backoff_s = backoff_s
        self.beat_s = beat_s
        self.coordinators = coordinators  # empty: any id
        self.max_jump = max_jump
        self.silence_s = silence_s  # None: beats are not judged
        self.leader: messages.CoordinatorStatus | None = None  # newest leader seen
        self.vacant_since: float | None = None  # None: led, or nothing known to be vacant
        self.presumed = False  # vacant_since only because nothing retained came (yet)
        self.beat_at: float | None = None  # the newest leader's last beat; None: never heard
        self.silenced = False  # the vacancy is the newest leader's silence (a beat ends it)
        self.connects = 0
        self.connected_at = 0.0  # our last connect
        self.judge_from: float | None = None  # None: not connected, nothing is judged
        self.allowed = False  # the leader's reconnect allowance was given since its last beat
        self.allow_until = 0.0  # its end: silence after our reconnect counts from then
        self.silent_before = 0.0  # the leader's silence heard on our earlier connections
        self.silent_now = 0.0  # and on this one, as last judged
        # When the vacancy was read from the leader's offline, while the broker has not been
        # heard from since (None: it has): a broker going down fires every client's will first.
        self.unconfirmed_at: float | None = None

    @property
    def highest_term(self) -> int:
        """The newest leader's term we saw: a successor must take a higher one, whatever the
        broker still retains."""
        return self.leader.term if self.leader is not None else 0

    def connected(self, now: float) -> float:
        """Our (re)connect at ``now``; returns ``judge_from``, before which nothing is vacant."""
        first = self.connects == 0
        self.connects += 1
        self.connected_at = now
        self.silent_now = 0.0
        if first:  # a leader starting beside us claims its term
            hold = max(self.startup_s, self.settle_s)
        elif not self.allowed and self.vacant_since is None:
            # Once per silence: the leader may be moving brokers too.
            self.allowed = True
            self.allow_until = now + self.backoff_s
            hold = self.settle_s + self.backoff_s
        else:  # a vacancy we saw, or the allowance already given: only read the broker
            hold = self.settle_s
        self.judge_from = max(now + hold, self.allow_until + self.settle_s)
        if self.vacant_since is None:
            # Nothing retained (no leader ever, or a broker that lost it) reads as vacant.
            self.vacant_since, self.presumed = self.judge_from, True
        return self.judge_from

    def disconnected(self, now: float) -> None:
        """Our link went down at ``now``: nothing is judged until we are back. A vacancy we
        saw stays (due once we are back); one only presumed and not reached yet goes, and so
        does one the broker did not confirm (its going down fired the leader's will: the
        leader gets its reconnect allowance instead)."""
        if self.presumed and self.vacant_since is not None and self.vacant_since > now:
            self.vacant_since, self.presumed = None, False
        if self.unconfirmed_at is not None:
            self.vacant_since, self.unconfirmed_at = None, None
        self.silent_before += self.silent_now  # as last judged, our link's quiet left out
        self.silent_now = 0.0
        self.judge_from = None

    def hold(self, now: float) -> None:
        """The vacancy just read from a live offline counts once the broker is heard from
        after it (:meth:`confirm`), or, if our link neither drops nor hears an answer, after
        :data:`UNCONFIRMED_MAX_S` (a ping lost is no reason to lead nobody)."""
        if self.vacant_since is not None and not self.presumed:
            self.unconfirmed_at = now

    def confirm(self) -> None:
        """The broker was heard from: the offline before it was not its own going down."""
        self.unconfirmed_at = None

    def cleared(self, now: float) -> None:
        """The retained status was removed."""
        if self.vacant_since is None or self.presumed:
            self.vacant_since, self.presumed = now, False

    def on_status(self, st: messages.CoordinatorStatus, now: float) -> Reading:
        newest = self.leader
        if self.coordinators and st.coordinator not in self.coordinators:
            return "foreign"  # neither a leader nor a vacancy
        if newest is not None and st.term > newest.term + self.max_jump:
            return "forged"  # no successor of the leader we watched could be that far above
        if st.state == "leader":
            if newest is None or st.term >= newest.term:
                if newest is None or _key(st) != _key(newest):
                    # A new leader: judged by its own beats once it beats.
                    self.beat_at = None
                    self._alive()
                self.leader = st
                # A retained copy proves no life: a silent leader's vacancy comes back at its
                # next judge_silence, dated as before.
                self.vacant_since, self.presumed, self.silenced = None, False, False
                return "leader"
            return "older_leader"
        if newest is None or st.incarnation == newest.incarnation or st.term > newest.term:
            # The newest leader (or one we never saw lead) is gone.
            if self.silenced:  # its silence said so already: the vacancy keeps its start
                self.silenced = False
                return "still_gone"
            if self.vacant_since is None or self.presumed:
                self.vacant_since, self.presumed = now, False
                return "gone"
            return "still_gone"  # a vacancy we saw keeps its start
        return "stale"

    def on_beat(self, beat: messages.CoordinatorBeat, now: float) -> BeatReading:
        if self.coordinators and beat.coordinator not in self.coordinators:
            return "foreign"
        leader = self.leader
        if leader is None or _key(beat) != _key(leader):
            return "other"
        self.beat_at = now
        self._alive()
        if self.silenced:  # it was only late: led again
            self.vacant_since, self.silenced = None, False
            return "back"
        return "beat"

    def _alive(self) -> None:
        """A sign of life of the newest leader: its silence starts anew, and so its allowance."""
        self.silent_before = self.silent_now = 0.0
        self.allowed = False

    def judge_silence(self, now: float, link_quiet_s: float = 0.0) -> float | None:
        """Once the newest leader, which we heard beat, has been silent ``silence_s`` while our
        own link was heard from (``link_quiet_s``: how long it has been quiet now; on earlier
        connections too), the leadership is vacant from when the silence passed the bound (not
        before ``judge_from``). Returns that silence, the first time; None otherwise."""
        if (
            self.silence_s is None
            or self.leader is None
            or self.beat_at is None
            or self.judge_from is None
        ):
            return None
        # Silence counts from its last beat, our connect (a beat is due a beat interval after
        # a connect made since its last beat, not at once) and its reconnect allowance.
        blind = self.beat_s if self.connected_at > self.beat_at else 0.0
        since = max(self.beat_at, self.connected_at + blind, self.allow_until)
        self.silent_now = max(0.0, now - since - max(0.0, link_quiet_s))
        silent = self.silent_before + self.silent_now
        if self.vacant_since is not None or now < self.judge_from or silent < self.silence_s:
            return None
        self.vacant_since = max(now - (silent - self.silence_s), self.judge_from)
        self.presumed, self.silenced = False, True
        return silent

    def due(self, now: float) -> float | None:
        """Seconds since the vacancy counts (its start, not before ``judge_from``), once it
        has lasted ``delay_s`` while we are connected; else None."""
        since, start = self.vacant_since, self.judge_from
        if since is None or start is None:
            return None
        if self.unconfirmed_at is not None and now - self.unconfirmed_at < UNCONFIRMED_MAX_S:
            return None
        since = max(since, start)
        if now - since >= self.delay_s:
            return now - since
        return None


def _key(m: messages.CoordinatorStatus | messages.CoordinatorBeat) -> tuple[str, str, int]:
    return (m.coordinator, m.incarnation, m.term)
