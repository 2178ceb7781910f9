"""Membership: which worker incarnations are alive, from births, last-wills and heartbeats.

Pure state machine inside the coordinator's core: fed births, last-wills and heartbeats with
their arrival times and ticked with the time; it returns transitions and never publishes
anything itself. It holds no lock and reads no clock: its caller serializes the calls.

Rules:
- A birth with a new incarnation replaces the old one (a restart); the old incarnation's
  late last-will is then stale and ignored.
- An ``offline`` of the current incarnation is a failure at once: ``graceful`` (it said so) or
  ``last_will`` (the broker saw its connection die).
- Heartbeat silence (phi-accrual, confirmed) and stalled progress are failures found by
  :meth:`Membership.tick`.
- A failed incarnation whose heartbeats come back steadily (a false suspicion: a long GC
  pause, a SIGSTOP, a partition that healed) is ``recovered``; it was fenced meanwhile.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from coordinator.detectors import DetectorConfig, ProgressDetector, SilenceDetector
from faillite import messages
from faillite.presence import hands_over, unseals

TransitionKind = Literal["joined", "failed", "recovered", "stale", "replayed", "forged"]
State = Literal["alive", "failed"]
# Heartbeats a worker can send while we do not hear it (a day at 10 Hz): a larger jump of its
# sequence number is not its own.
SEQ_WINDOW = 1_000_000
REPLACED_KEPT = 8  # replaced incarnations remembered per worker
RECOVERY_HEARTBEATS = 20  # steady heartbeats before a failed incarnation counts as back
# A worker that stalled is held down longer: it may stall again as soon as it gets work.
STALL_RECOVERY_HEARTBEATS = 300
# Verdicts the core passes (a gray failure, results missing) are lifted by the core (probation),
# not by heartbeats: a slow worker beats fine, and so does one whose results never arrive.
CORE_VERDICTS: Final = frozenset({"slo_gray", "results_missing"})

# A worker's silence is judged only if the broker has been heard from this many of its
# heartbeat intervals after its last heartbeat (heartbeats of workers interleave).
LINK_MARGIN: Final = 1.5


@dataclass(frozen=True, slots=True)
class Transition:
    kind: TransitionKind
    worker: str
    incarnation: str
    cause: str
    at: float  # monotonic, when observed
    silence_s: float = 0.0  # heartbeat silence at detection, for silence and stall causes


@dataclass
class Member:
    worker: str
    incarnation: str
    status: messages.WorkerStatus
    silence: SilenceDetector
    progress: ProgressDetector
    state: State = "alive"
    cause: str = ""
    failed_at: float | None = None
    last_heartbeat: messages.Heartbeat | None = None
    steady: int = 0  # heartbeats since a failure, for recovery
    seq_jumps_ignored: int = 0  # heartbeats whose seq jumped past SEQ_WINDOW
    history: list[str] = field(default_factory=list)
    # The newest birth of this incarnation (its clock): one a connection makes is newer; the
    # same birth again is a copy a broker kept (a bridge replaying a returning broker's store).
    birth_ts: float = 0.0
    revived: bool = False  # came back after a failure (an obituary of it may still arrive)
    seal: str = ""  # its current connection's will seal: its offline must unseal it


class Membership:
    """``cfg``: one detector config for every worker; or ``cfg_for``: a config per worker from
    its own heartbeat interval (workers on WiFi beat slower than those on a LAN)."""

    def __init__(
        self,
        cfg: DetectorConfig | None = None,
        cfg_for: Callable[[float], DetectorConfig] = DetectorConfig.for_interval,
    ) -> None:
        self.default_cfg = cfg
        self.cfg_for = cfg_for
        self.members: dict[str, Member] = {}
        self._blind_until: float | None = None  # None: we see the mesh
        # Incarnations replaced by a newer one, per worker (the last few): their births, if a
        # broker replays them, are history, never a worker coming back.
        self._replaced: dict[str, deque[str]] = {}

    def blind(self) -> None:
        """Our own link to the broker is down: every silence is ours, judge nobody."""
        self._blind_until = float("inf")

    def see(self, now: float, grace_s: float = 0.0) -> None:
        """The link is back: silences start over, the gap is not held against anyone, and
        workers get ``grace_s`` to reconnect too (after a broker restart they all do)."""
        # The first connection has nobody to wait for.
        self._blind_until = now + grace_s if self.members else None
        for m in self.members.values():
            m.silence.restart(now)
            m.progress.restart()

    def _cfg_for(self, st: messages.WorkerStatus) -> DetectorConfig:
        if self.default_cfg is not None:
            return self.default_cfg
        return self.cfg_for(st.heartbeat_interval_s or 0.1)

    def _transition(
        self, kind: TransitionKind, m: Member, cause: str, now: float, silence_s: float = 0.0
    ) -> Transition:
        m.history.append(f"{kind}:{cause}")
        return Transition(kind, m.worker, m.incarnation, cause, now, silence_s)

    def on_status(self, st: messages.WorkerStatus, now: float) -> Transition | None:
        cur = self.members.get(st.worker)
        if st.state == "online":
            if cur is not None and cur.incarnation == st.incarnation:
                if st.ts <= cur.birth_ts:
                    # A birth we had already: a broker's copy, not a new connection. Alive or
                    # dead, heartbeats decide; a dead one's offline status must go back over it.
                    if cur.state == "failed" and cur.steady:
                        # Heard since it failed: the worker itself put its birth back over an
                        # obituary (a healed partition), and that is what is retained now.
                        cur.status = st
                    return self._transition("replayed", cur, "birth_replayed", now)
                cur.birth_ts = st.ts
                cur.status = st
                cur.seal = st.will_seal
                if cur.state == "failed" and cur.cause not in ("graceful", *CORE_VERDICTS):
                    # Same process, new connection: its last-will was premature. (A core
                    # verdict is not about its connection: a birth again does not lift it.)
                    cur.silence.heartbeat(now)
                    return self._recover(cur, "reconnected", now)
                return None
            if cur is not None and st.incarnation in self._replaced.get(st.worker, ()):
                return self._transition("replayed", cur, "replaced_incarnation_replayed", now)
            if (
                cur is not None
                and cur.state == "alive"
                and not cur.silence.suspected(now)
                and not hands_over(cur.status.handover_seal, st.handover_key)
            ):
                # A new process of a worker we hear, that does not reveal the live one's
                # handover key: not a --replace on its board (a stolen secret). The live one
                # puts its birth back; we keep it.
                return self._transition("forged", cur, "birth_without_handover", now)
            cfg = self._cfg_for(st)
            m = Member(st.worker, st.incarnation, st, SilenceDetector(cfg), ProgressDetector(cfg))
            m.birth_ts = st.ts
            m.seal = st.will_seal
            m.silence.heartbeat(now)  # the birth counts as a sign of life
            if cur is not None:
                self._replaced.setdefault(st.worker, deque(maxlen=REPLACED_KEPT)).append(
                    cur.incarnation
                )
            self.members[st.worker] = m
            return self._transition("joined", m, "restart" if cur else "birth", now)
        # The last-will of an incarnation that is already replaced, or of an earlier connection
        # of this one (a will carries its connection's birth ts; a broker that stored it can
        # hand it over long after the worker reconnected elsewhere): never fatal.
        earlier = (
            cur is not None
            and cur.incarnation == st.incarnation
            and st.reason == "lost"
            and st.ts < cur.birth_ts
        )
        if cur is None or cur.incarnation != st.incarnation or earlier:
            stale = Member(
                st.worker,
                st.incarnation,
                st,
                SilenceDetector(self._cfg_for(st)),
                ProgressDetector(self._cfg_for(st)),
            )
            return self._transition("stale", stale, st.reason or "offline", now)
        if st.reason != "silent" and cur.seal and not unseals(cur.seal, st.will_key):
            # Not its connection's last-will nor its own goodbye: someone else who may write
            # its status (the worker puts its birth back over it).
            return self._transition("forged", cur, st.reason or "offline", now)
        heard = cur.last_heartbeat is not None and not cur.silence.suspected(now)
        if st.reason == "silent" and cur.state != "failed" and (cur.revived or heard):
            # A late copy of the obituary of a failure it came back from (bridged back after
            # a partition healed), or another leader's of a worker we hear (the far side of a
            # healed cut judged it): no new evidence; the worker puts its birth back over it.
            return self._transition("stale", cur, "silent", now)
        cur.status = st  # what is retained of it now: offline
        if cur.state == "failed":
            if st.reason == "graceful":
                cur.cause = "graceful"
            return None
        return self._fail(cur, "graceful" if st.reason == "graceful" else "last_will", now)

    def on_heartbeat(self, hb: messages.Heartbeat, now: float) -> Transition | None:
        m = self.members.get(hb.worker)
        if m is None or m.incarnation != hb.incarnation:
            return None
        if m.last_heartbeat is not None:
            last = m.last_heartbeat.seq
            if hb.seq <= last:
                return None  # duplicate or reordered (amqtt may redeliver)
            if hb.seq > last + SEQ_WINDOW:
                # Not one process counting: a forged seq far ahead would make every real
                # heartbeat after it look old. Ignore it; the real ones keep the worker alive.
                m.seq_jumps_ignored += 1
                return None
        m.last_heartbeat = hb
        m.silence.heartbeat(now)
        m.silence.load(hb.cpu_load)
        m.progress.heartbeat(
            now,
            hb.frames_received,
            hb.frames_processed,
            hb.queue_depth,
            loading_s=hb.loading_s,
            frame_s=max((a.infer_ms for a in hb.apps.values()), default=0.0) / 1000,
        )
        if m.state == "failed" and m.cause != "graceful" and m.cause not in CORE_VERDICTS:
            m.steady += 1
            needed = STALL_RECOVERY_HEARTBEATS if m.cause == "stalled" else RECOVERY_HEARTBEATS
            if m.steady >= needed and not m.progress.stalled(now):
                return self._recover(m, "heartbeats_resumed", now)
        return None

    def _recover(self, m: Member, cause: str, now: float) -> Transition:
        m.state, m.cause, m.failed_at, m.steady, m.revived = "alive", "", None, 0, True
        # Progress is judged from its next heartbeats: a stall clock from before the failure
        # (frames queued behind a partition) would condemn it again at once.
        m.progress.restart()
        return self._transition("recovered", m, cause, now)

    def _fail(self, m: Member, cause: str, now: float, silence_s: float = 0.0) -> Transition:
        m.state, m.cause, m.failed_at, m.steady = "failed", cause, now, 0
        return self._transition("failed", m, cause, now, silence_s)

    def condemn(self, worker: str, cause: str, now: float) -> Transition | None:
        """The core's own verdict on a live worker (``cause`` in :data:`CORE_VERDICTS`): one
        verdict at a time, so a worker already failed is not failed again."""
        m = self.members.get(worker)
        if m is None or m.state != "alive":
            return None
        return self._fail(m, cause, now)

    def absolve(self, worker: str, cause: str, now: float) -> Transition | None:
        """Lift the core's verdict (probation over); None if it failed otherwise since."""
        m = self.members.get(worker)
        if m is None or m.state != "failed" or m.cause not in CORE_VERDICTS:
            return None
        if m.silence.suspected(now) or m.progress.stalled(now):
            # Not well now either: from here its heartbeats decide, as for a detector's verdict.
            m.cause = "stalled" if m.progress.stalled(now) else "heartbeat_silence"
            m.steady = 0
            return None
        return self._recover(m, cause, now)

    def tick(
        self,
        now: float,
        link_quiet_s: float = 0.0,
        spare: Callable[[str], bool] = lambda _w: False,
    ) -> list[Transition]:
        """Silence and stall verdicts. ``spare(worker)``: a stall verdict the caller withholds
        (nothing else could serve the worker's apps: stalled beats unserved); asked only of a
        worker that stalled."""
        out: list[Transition] = []
        if self._blind_until is not None:
            if now < self._blind_until:
                return out
            self._blind_until = None
        for m in self.members.values():
            if m.state != "alive":
                continue
            margin = LINK_MARGIN * m.silence.cfg.heartbeat_interval_s
            # Judged only if the broker has been heard from since well after the worker's
            # last heartbeat; otherwise the silence may be the broker's. Our client pings a
            # quiet broker: its answer (judged then) or our link dropping (blind) settles it.
            heard_since = m.silence.silence(now) - link_quiet_s >= margin
            if heard_since and m.silence.failed(now):
                out.append(self._fail(m, "heartbeat_silence", now, m.silence.silence(now)))
            elif link_quiet_s < margin and m.progress.stalled(now) and not spare(m.worker):
                out.append(self._fail(m, "stalled", now, m.silence.silence(now)))
        return out

    def alive(self) -> set[str]:
        return {w for w, m in self.members.items() if m.state == "alive"}

    def get(self, worker: str) -> Member | None:
        return self.members.get(worker)
