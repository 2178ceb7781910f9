"""The seeded chaos soak (issue 20, item 5): ``faillite drill --chaos --minutes N --seed S``.

One drill mesh (:class:`DrillMesh`, the fault cases' shape) runs for N minutes while a schedule
of faults drawn up front from ``random.Random(seed)`` is played against it: worker kills (and
restarts), SIGSTOP freezes, slowdowns (the faults plug-in's SIGUSR2), CPU hog bursts (each hog in
its own session), partitions of a worker (root and network namespaces only), broker restarts
and kills of the leader coordinator (restarted as a standby). At most two faults overlap, with
quiet gaps between, and never every worker at once. The same seed gives the same schedule.

Invariants, judged at every :data:`SAMPLE_S` of the recording (every :data:`PROGRESS_S` while
it runs, once over the whole soak at the end; the coordinators' logs add the events the
recorder missed while its broker was down), each violation kept with its time and the faults
and mesh events around it:

1. ``unserved``: no app goes without a result longer than :data:`QUIET_GAP_S`, or, after a
   fault that affects it, longer than :data:`UNSERVED_BOUND_S` after that fault (a broker
   restart: after the broker is back); a non-critical app its route says is ``shed`` is
   paused on purpose, not unserved.
2. ``single_serving``: never two workers serving one app longer than a handover
   (:data:`~field_kit.drill.analysis.OVERLAP_GRACE_S`).
3. ``false_verdict``: no worker judged failed (any cause) unless a fault hit it, from its
   injection until :data:`VERDICT_GRACE_S` after its recovery; a killed worker's own
   incarnation may be judged any time after, its restarted one is not excused.
4. ``no_crash``: every process the soak did not kill stays alive and stops cleanly.
5. ``steady_at_end``: after the soak, every app served and protected (:meth:`wait_steady`).

The schedule and the judgement are pure (functions of a seed, or of a list of observations),
tested in ``tests/unit/test_chaos.py``; :class:`Soak` plays a schedule against a live mesh.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import signal
import time
import traceback
import uuid
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from faillite import messages
from faillite.catalog import load_catalog
from faillite.config import packaged_config
from faillite.log import get_logger
from faillite.models.build import build_models
from faillite.reported import refusal
from faillite.topics import parse
from field_kit.drill.analysis import OVERLAP_GRACE_S, check_no_crash, serving_segments
from field_kit.drill.cases import DrillOptions, wall
from field_kit.drill.hogs import Hogs, usable_cpus
from field_kit.drill.load_cases import MAX_GAP_S, unserved_spans
from field_kit.drill.logged import LOG_CONTEXT, events_from_logs, log_docs, merge_events
from field_kit.drill.mesh import APPS, COORDINATORS, WORKERS, DrillMesh, MeshSpec
from field_kit.drill.netns import root_problem
from field_kit.drill.report import write_report
from field_kit.procs import Child

log = get_logger("drill")

# -- the schedule ----------------------------------------------------------------------------

KINDS = ("kill_worker", "freeze", "slow", "hogs", "partition", "broker_restart", "kill_leader")
WEIGHTS = {
    "kill_worker": 3,
    "freeze": 3,
    "slow": 2,
    "hogs": 2,
    "partition": 2,
    "broker_restart": 1,
    "kill_leader": 1,
}
# How long each fault holds before its recovery (restart, SIGCONT, slow off, hogs stopped,
# link healed, broker started, coordinator restarted), seconds.
DURATION_S = {
    "kill_worker": (2.0, 5.0),
    "freeze": (0.5, 3.0),
    "slow": (5.0, 15.0),
    "hogs": (10.0, 30.0),
    "partition": (2.0, 8.0),
    "broker_restart": (1.0, 3.0),
    "kill_leader": (2.0, 5.0),
}
# What the mesh needs after a recovery before the fault's window closes: a restarted worker
# boots, joins and is failed back to; a slow one serves its gray probation (8 s).
SETTLE_S = {
    "kill_worker": 15.0,
    "freeze": 5.0,
    "slow": 10.0,
    "hogs": 5.0,
    "partition": 10.0,
    "broker_restart": 12.0,
    "kill_leader": 10.0,
}
WORKER_KINDS = frozenset({"kill_worker", "freeze", "slow", "partition"})
ALONE = frozenset({"broker_restart"})  # overlaps nothing: it stops results for everyone
SINGLE = frozenset({"hogs", "kill_leader"})  # never two of these kinds at once
QUIET_S = (5.0, 15.0)  # the gap after every window closes, before the next fault
OVERLAP_P = 0.3  # chance that a fault gets a second one inside its hold
WARMUP_S = 10.0  # the steady mesh recorded before the first fault
TAIL_S = 20.0  # every window closed this long before the soak's end
MAX_OVERLAP = 2


@dataclass(frozen=True, slots=True)
class PlannedFault:
    at: float  # seconds from the soak's start
    kind: str
    target: str  # a worker; "leader", "broker" or "hogs" for the others
    duration: float
    hogs: int = 0

    @property
    def end(self) -> float:
        """When its window closes: recovered, and the mesh given time to settle."""
        return self.at + self.duration + SETTLE_S[self.kind]

    def describe(self) -> str:
        what = f"{self.kind} {self.target}"
        if self.kind == "hogs":
            what = f"hogs x{self.hogs}"
        return f"+{self.at:6.1f} s  {what:<22} for {self.duration:4.1f} s"


def _draw(
    rng: random.Random, kinds: Sequence[str], at: float, workers: Sequence[str], cpus: int
) -> PlannedFault:
    kind = rng.choices(list(kinds), weights=[WEIGHTS[k] for k in kinds])[0]
    lo, hi = DURATION_S[kind]
    duration = round(rng.uniform(lo, hi), 2)
    if kind in WORKER_KINDS:
        return PlannedFault(round(at, 2), kind, rng.choice(list(workers)), duration)
    if kind == "hogs":
        n = rng.randint(1, 2 * max(1, cpus))
        return PlannedFault(round(at, 2), kind, "hogs", duration, n)
    target = "broker" if kind == "broker_restart" else "leader"
    return PlannedFault(round(at, 2), kind, target, duration)


def draw_schedule(
    seed: int,
    minutes: float,
    workers: Sequence[str] = WORKERS,
    cpus: int = 2,
    partitions: bool = True,
) -> list[PlannedFault]:
    """The faults of a soak of ``minutes``, all drawn from ``random.Random(seed)``: one fault,
    sometimes a second inside its hold (never a broker restart, never two of a kind in
    :data:`SINGLE`, never the same target), then a quiet gap after both windows close. Every
    window closes :data:`TAIL_S` before the end. ``partitions``: whether the kind exists here."""
    if len(workers) < MAX_OVERLAP + 1:
        raise ValueError("a chaos soak needs more workers than faults that may overlap")
    rng = random.Random(seed)
    horizon = minutes * 60.0 - TAIL_S
    kinds = [k for k in KINDS if partitions or k != "partition"]
    out: list[PlannedFault] = []
    t = WARMUP_S
    while True:
        first = _draw(rng, kinds, t, workers, cpus)
        if first.end > horizon:
            break
        out.append(first)
        if first.kind not in ALONE and rng.random() < OVERLAP_P:
            others = [k for k in kinds if k not in ALONE and not (k in SINGLE and k == first.kind)]
            free = [w for w in workers if w != first.target]
            at = first.at + rng.uniform(0.5, max(1.0, first.duration))
            second = _draw(rng, others, at, free, cpus)
            if second.end <= horizon:
                out.append(second)
        t = max(f.end for f in out) + rng.uniform(*QUIET_S)
    return sorted(out, key=lambda f: f.at)


def max_overlap(schedule: Sequence[PlannedFault]) -> int:
    """The most fault windows open at one instant."""
    edges = sorted([(f.at, 1) for f in schedule] + [(f.end, -1) for f in schedule])
    cur = best = 0
    for _t, d in edges:  # a window closing at t sorts before one opening at t
        cur += d
        best = max(best, cur)
    return best


def workers_harmed_at_once(schedule: Sequence[PlannedFault]) -> set[str]:
    """The largest set of workers that worker faults hit with windows open at one instant."""
    best: set[str] = set()
    for f in schedule:
        hit = {g.target for g in schedule if g.kind in WORKER_KINDS and g.at <= f.at < g.end}
        if len(hit) > len(best):
            best = hit
    return best


# -- what the recording says -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Served:
    ts: float  # the worker's stamp
    worker: str
    variant: str = ""
    latency_ms: float = 0.0


def _ts(s: Served) -> float:
    return s.ts


@dataclass
class Observations:
    """The recording, decoded: results per app, events, routes (arrival wall time, app,
    state, worker), heartbeats' (ts, incarnation) per worker, leader statuses (ts, id)."""

    results: dict[str, list[Served]] = field(default_factory=dict)
    events: list[messages.Event] = field(default_factory=list)
    routes: list[tuple[float, str, str, str]] = field(default_factory=list)
    incarnations: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    leaders: list[tuple[float, int, str]] = field(default_factory=list)  # (ts, term, id)
    seen: int = 0  # raw messages decoded so far
    # Events from the coordinators' logs: the recorder misses what they publish (QoS 0) while
    # its broker is going down, and a verdict then is still a verdict.
    logged: list[messages.Event] = field(default_factory=list)
    sorted_len: dict[str, tuple[int, int]] = field(default_factory=dict)  # by_time's sorts

    def all_events(self) -> list[messages.Event]:
        """The recorded events and the logged ones the recorder missed, by time."""
        return merge_events(self.events, self.logged)

    def add(self, raw: Sequence[tuple[float, str, bytes]], wall_offset: float) -> None:
        """Decode ``raw[self.seen:]`` (the recorder's list only grows); ``wall_offset``: wall
        clock minus the recorder's monotonic clock."""
        for t, topic, payload in raw[self.seen :]:
            self._one(t + wall_offset, topic, payload)
        self.seen = max(self.seen, len(raw))

    def _one(self, arrival: float, topic: str, payload: bytes) -> None:
        parsed = parse(topic)
        if parsed is None or not payload:
            return
        name, ids = parsed[1].spec.name, parsed[1].ids
        try:
            if name == "app_results":
                r = messages.decode(messages.Result, payload)
                if (r.app, r.worker) == (ids.get("app"), ids.get("worker")):
                    s = Served(r.ts, r.worker, r.variant, (r.ts - r.capture_ts) * 1000)
                    self.results.setdefault(r.app, []).append(s)
            elif name == "events":
                ev = messages.decode(messages.Event, payload)
                if refusal(topic, ev) is None:  # only its own topic says who reported it
                    self.events.append(ev)
            elif name == "app_route":
                rt = messages.decode(messages.Route, payload)
                self.routes.append((arrival, ids.get("app", rt.app), rt.state, rt.worker))
            elif name == "worker_heartbeat":
                hb = messages.decode(messages.Heartbeat, payload)
                if hb.worker == ids.get("worker"):
                    incs = self.incarnations.setdefault(hb.worker, [])
                    if not incs or incs[-1][1] != hb.incarnation:
                        incs.append((hb.ts, hb.incarnation))
            elif name == "coordinator_status":
                st = messages.decode(messages.CoordinatorStatus, payload)
                if st.state == "leader":
                    self.leaders.append((st.ts, st.term, st.coordinator))
        except messages.MessageError:
            return

    def by_time(self, app: str) -> list[Served]:
        """``app``'s results by their stamp (sorted in place: arrival order is nearly so)."""
        rs = self.results.setdefault(app, [])
        if self.sorted_len.get(app) != (id(rs), len(rs)):  # the live lists only grow
            rs.sort(key=_ts)
            self.sorted_len[app] = (id(rs), len(rs))
        return rs

    def incarnation(self, worker: str, at: float) -> str:
        """The incarnation of ``worker`` that beat last at or before ``at`` ("": none)."""
        inc = ""
        for ts, i in self.incarnations.get(worker, []):
            if ts <= at:
                inc = i
        return inc

    def leader(self) -> str | None:
        """The coordinator that last said it leads, at the highest term."""
        if not self.leaders:
            return None
        return max(self.leaders, key=lambda x: (x[1], x[0]))[2]


@dataclass
class Injected:
    """A fault as the soak played it (wall clock)."""

    kind: str
    target: str  # worker, coordinator id, "broker" or "hogs"
    t_inject: float
    t_recover: float | None = None
    incarnation: str = ""  # a killed worker's
    hogs: int = 0
    skipped: str = ""  # why it was not injected

    def excuse_end(self, bound_s: float) -> float:
        """Until when an app it affects may go without results: ``bound_s`` after it hit,
        after the broker is back for a broker restart (results stop for everyone)."""
        start = self.t_inject
        if self.kind == "broker_restart" and self.t_recover is not None:
            start = self.t_recover
        return start + bound_s

    def label(self) -> str:
        return f"hogs x{self.hogs}" if self.kind == "hogs" else f"{self.kind} {self.target}"


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: str
    ts: float  # when the invariant broke (wall clock)
    subject: str  # an app, a worker, a process
    detail: str
    until: float | None = None  # when it was over (None: not over, or an instant)

    def key(self) -> tuple[str, str, float]:
        return (self.invariant, self.subject, round(self.ts, 1))


INVARIANTS = ("unserved", "single_serving", "false_verdict", "no_crash", "steady_at_end")
UNSERVED_BOUND_S = 10.0  # after a fault that affects an app
QUIET_GAP_S = MAX_GAP_S  # no fault: the longest an app may go without a result (5 s)
VERDICT_GRACE_S = 5.0  # a verdict this long after a fault's recovery is still its own
SAMPLE_S = 0.5
AFFECT_LOOKBACK_S = 2.0  # a worker serving an app in this long before a fault: affected


def affected_apps(obs: Observations, fault: Injected, apps: Sequence[str]) -> set[str]:
    """The apps a fault may leave without results: every app for a mesh-wide fault (hogs, the
    broker, the leader); for a worker fault, the apps it served just before, and those with
    no result at all then (on their way to it, mid-failover)."""
    if fault.skipped:
        return set()
    if fault.kind not in WORKER_KINDS:
        return set(apps)
    lo, hi = fault.t_inject - AFFECT_LOOKBACK_S, fault.t_inject
    out = set()
    for app in apps:
        rs = obs.by_time(app)
        recent = rs[bisect_left(rs, lo, key=_ts) : bisect_right(rs, hi, key=_ts)]
        if not recent or any(s.worker == fault.target for s in recent):
            out.add(app)
    return out


def unserved(
    obs: Observations,
    faults: Sequence[Injected],
    apps: Sequence[str],
    critical: Iterable[str],
    t0: float,
    t1: float,
    bound_s: float = UNSERVED_BOUND_S,
    quiet_gap_s: float = QUIET_GAP_S,
) -> list[Violation]:
    """Invariant 1 over [t0, t1] (the mesh served at ``t0``): per gap between an app's results
    (a non-critical app's shed spans count as served), the gap may last ``quiet_gap_s``, or
    until ``bound_s`` after a fault that affects the app and hit before the gap was over its
    allowance (faults chain: a second fault inside the first's allowance extends it)."""
    crit = set(critical)
    shed: dict[str, list[tuple[float, float]]] = {}
    for app, spans in unserved_spans(obs.routes, t1).items():
        if app not in crit:
            shed[app] = [(a, b) for a, b, st in spans if st == "shed"]
    excuses = {app: [f for f in faults if app in affected_apps(obs, f, apps)] for app in apps}
    out: list[Violation] = []
    for app in apps:
        cover = [(s.ts, s.ts) for s in obs.results.get(app, []) if t0 < s.ts <= t1]
        cover += [(max(a, t0), min(b, t1)) for a, b in shed.get(app, []) if b > t0 and a < t1]
        cover.sort()
        gaps = []
        cur = t0
        for a, b in cover:
            if a > cur:
                gaps.append((cur, a, False))
            cur = max(cur, b)
        if t1 > cur:
            gaps.append((cur, t1, True))
        for g0, g1, still in gaps:
            allowed = g0 + quiet_gap_s
            if g1 <= allowed:
                continue  # nearly every gap: one frame interval
            why: list[Injected] = []
            grew = True
            while grew:
                grew = False
                for f in excuses[app]:
                    end = f.excuse_end(bound_s)
                    if f.t_inject <= allowed and end > allowed:
                        allowed, grew = end, True
                        why.append(f)
            if g1 <= allowed:
                continue
            excused = (
                f"; excused until {wall(allowed)} by " + ", ".join(f.label() for f in why)
                if why
                else "; no fault to excuse it"
            )
            out.append(
                Violation(
                    "unserved",
                    allowed,
                    app,
                    f"{app}: no result from {wall(g0)} "
                    + (f"to {wall(g1)} ({g1 - g0:.1f} s)" if not still else "on (still none)")
                    + excused,
                    None if still else g1,
                )
            )
    return out


def double_serving(
    obs: Observations,
    apps: Sequence[str],
    t0: float,
    t1: float,
    fps: float,
    grace_s: float = OVERLAP_GRACE_S,
) -> list[Violation]:
    """Invariant 2: every stretch where two workers both served one app (results at most
    ``max(0.6, 3 / fps)`` apart, as :func:`check_single_serving`) longer than ``grace_s``."""
    out = []
    for app in apps:
        rs = sorted((s for s in obs.results.get(app, []) if t0 <= s.ts <= t1), key=lambda s: s.ts)
        segs = serving_segments(rs, max(0.6, 3.0 / fps))
        for w1, w2 in itertools.combinations(sorted(segs), 2):
            for a0, a1 in segs[w1]:
                for b0, b1 in segs[w2]:
                    lo, hi = max(a0, b0), min(a1, b1)
                    if hi - lo > grace_s:
                        out.append(
                            Violation(
                                "single_serving",
                                lo + grace_s,
                                app,
                                f"{app}: {w1} and {w2} both served from {wall(lo)} for "
                                f"{hi - lo:.2f} s (a handover may take {grace_s:g} s)",
                                hi,
                            )
                        )
    return out


def verdicts_of(
    events: Sequence[messages.Event], t0: float, t1: float
) -> list[tuple[float, str, str, str]]:
    """Every verdict in [t0, t1]: (ts, worker, cause, incarnation) of each
    ``failure_detected``, and of each ``failover`` with no such event of its worker within
    2 s (a verdict however it was reached)."""
    detected = [e for e in events if e.kind == "failure_detected" and t0 <= e.ts <= t1]
    out = [
        (e.ts, e.worker, str(e.detail.get("cause")), str(e.detail.get("worker_incarnation", "")))
        for e in detected
    ]
    for e in events:
        if e.kind != "failover" or not t0 <= e.ts <= t1:
            continue
        if not any(d.worker == e.worker and abs(d.ts - e.ts) <= 2.0 for d in detected):
            out.append((e.ts, e.worker, str(e.detail.get("cause")), ""))
    return sorted(out)


def _excuses_verdict(f: Injected, ts: float, incarnation: str, t1: float, grace_s: float) -> bool:
    if f.skipped or f.kind not in WORKER_KINDS or ts < f.t_inject - 0.5:
        return False
    if f.kind == "kill_worker" and f.incarnation and incarnation:
        # A killed incarnation is dead for good; the restarted one had no fault.
        return incarnation == f.incarnation
    until = (f.t_recover if f.t_recover is not None else t1) + grace_s
    return ts <= until


def verdict_table(
    obs: Observations,
    faults: Sequence[Injected],
    t0: float,
    t1: float,
    grace_s: float = VERDICT_GRACE_S,
) -> list[tuple[float, str, str, str, Injected | None]]:
    """Every verdict in [t0, t1] with the fault that excuses it (None: a false verdict)."""
    out = []
    for ts, worker, cause, inc in verdicts_of(obs.all_events(), t0, t1):
        excuse = next(
            (f for f in faults if f.target == worker and _excuses_verdict(f, ts, inc, t1, grace_s)),
            None,
        )
        out.append((ts, worker, cause, inc, excuse))
    return out


def false_verdicts(
    obs: Observations,
    faults: Sequence[Injected],
    t0: float,
    t1: float,
    grace_s: float = VERDICT_GRACE_S,
) -> list[Violation]:
    """Invariant 3: every verdict of a worker no fault hit from the fault's injection until
    ``grace_s`` after its recovery (a killed worker: its own incarnation any time after)."""
    out = []
    for ts, worker, cause, inc, excuse in verdict_table(obs, faults, t0, t1, grace_s):
        if excuse is not None:
            continue
        mine = [f for f in faults if f.target == worker]
        last = max(
            (f for f in mine if f.t_inject <= ts and not f.skipped),
            key=lambda f: f.t_inject,
            default=None,
        )
        since = (
            f"; its last fault: {last.label()} at {wall(last.t_inject)}"
            if last is not None
            else "; no fault was injected on it"
        )
        out.append(
            Violation(
                "false_verdict",
                ts,
                worker,
                f"{worker}{f' ({inc})' if inc else ''} judged failed ({cause}) at {wall(ts)}"
                + since,
            )
        )
    return out


def longest_gaps(obs: Observations, apps: Sequence[str], t0: float, t1: float) -> dict[str, float]:
    """Per app, the longest time without a result in [t0, t1] (s)."""
    out = {}
    for app in apps:
        ts = [t0, *sorted(s.ts for s in obs.results.get(app, []) if t0 <= s.ts <= t1), t1]
        out[app] = round(max(b - a for a, b in itertools.pairwise(ts)), 2)
    return out


def samples(t0: float, t1: float, step: float = SAMPLE_S) -> int:
    return max(0, int((t1 - t0) / step) + 1)


@dataclass
class Judgement:
    checks: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)

    def count(self) -> Counter[str]:
        return Counter(v.invariant for v in self.violations)


def judge(
    obs: Observations,
    faults: Sequence[Injected],
    t0: float,
    t1: float,
    *,
    apps: Sequence[str] = APPS,
    critical: Iterable[str] = ("a1",),
    fps: float = 5.0,
) -> Judgement:
    """Invariants 1 to 3 over [t0, t1], judged at every :data:`SAMPLE_S` (the checks count
    those samples, per app where the invariant is per app); violations sorted by time."""
    n = samples(t0, t1)
    j = Judgement()
    j.checks.update(
        {"unserved": n * len(apps), "single_serving": n * len(apps), "false_verdict": n}
    )
    j.violations = sorted(
        unserved(obs, faults, apps, critical, t0, t1)
        + double_serving(obs, apps, t0, t1, fps)
        + false_verdicts(obs, faults, t0, t1),
        key=lambda v: v.ts,
    )
    return j


TIMELINE_EVENTS = (
    "failure_detected",
    "failover",
    "shed",
    "unshed",
    "verdict_withheld",
    "replan",
    "worker_joined",
    "worker_recovered",
    "coordinator_takeover",
    "failback_switch",
    "obituary",
)
TIMELINE_S = 20.0


def _event_line(e: messages.Event) -> str:
    d = e.detail
    bits = [e.kind, e.worker or e.app]
    if e.app and e.worker:
        bits.append(e.app)
    for k in ("cause", "reason", "step", "term", "generation"):
        if d.get(k) not in (None, ""):
            bits.append(f"{k}={d[k]}")
    if e.kind == "failover":
        recs = d.get("recoveries") or {}
        bits += [f"{a}->{r.get('server')}/{r.get('variant')}" for a, r in recs.items()]
        bits += [f"{a}: {why}" for a, why in (d.get("unrecoverable") or {}).items()]
    if e.source.startswith("log:"):
        bits.append(f"[in {e.source[4:]}'s log only: not recorded]")
    return " ".join(b for b in bits if b)


def timeline_around(
    ts: float,
    faults: Sequence[Injected],
    events: Sequence[messages.Event],
    t0: float,
    window_s: float = TIMELINE_S,
) -> list[str]:
    """The faults (injected, recovered) and mesh events within ``window_s`` of ``ts``, in
    order, each with its time from the soak's start and its wall clock."""
    rows: list[tuple[float, str]] = []
    for f in faults:
        if f.skipped:
            continue
        rows.append((f.t_inject, f"FAULT {f.label()} injected"))
        if f.t_recover is not None:
            rows.append((f.t_recover, f"FAULT {f.label()} recovered"))
    rows += [(e.ts, _event_line(e)) for e in events if e.kind in TIMELINE_EVENTS]
    return [
        f"{t - t0:+8.2f} s {wall(t)}  {what}" for t, what in sorted(rows) if abs(t - ts) <= window_s
    ]


# -- playing it ------------------------------------------------------------------------------

PROGRESS_S = 30.0
SETTLE_TIMEOUT_S = 90.0
BROKER_START_TRIES = 5


def _say(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class _Active:
    planned: PlannedFault
    fault: Injected
    child: Child | None = None  # the process signalled (SIGCONT and slow-off go to it)
    hogs: Hogs | None = None


class Soak:
    """A schedule played against a started, steady mesh; invariants judged as it goes."""

    def __init__(self, mesh: DrillMesh, schedule: Sequence[PlannedFault], minutes: float) -> None:
        self.mesh = mesh
        self.schedule = list(schedule)
        self.minutes = minutes
        self.t0 = time.time()
        self.offset = time.time() - time.monotonic()
        self.obs = Observations()
        self.faults: list[Injected] = []
        self.active: dict[int, _Active] = {}
        self.crashes: list[Violation] = []
        self.crash_polls = 0
        self.printed: set[tuple[str, str, float]] = set()
        self.broker_down = False
        assert mesh.cfg is not None
        self.critical = [a.id for a in mesh.cfg.apps if a.critical]

    def rel(self, t: float | None = None) -> str:
        return f"+{(time.time() if t is None else t) - self.t0:6.1f} s"

    # -- the loop ------------------------------------------------------------------------

    def play(self) -> None:
        horizon = self.minutes * 60.0
        actions = sorted(
            [(p.at, 0, i) for i, p in enumerate(self.schedule)]
            + [(p.at + p.duration, 1, i) for i, p in enumerate(self.schedule)]
        )
        next_progress = PROGRESS_S
        while True:
            now = time.time() - self.t0
            while actions and actions[0][0] <= now:
                _at, phase, i = actions.pop(0)
                if phase == 0:
                    self._inject(i)
                else:
                    self._recover(i)
            self._poll_crashes()
            if now >= next_progress:
                self.progress()
                next_progress += PROGRESS_S
            if now >= horizon and not actions:
                return
            nxt = min([horizon] + [a[0] for a in actions[:1]])
            time.sleep(max(0.01, min(SAMPLE_S, nxt - (time.time() - self.t0))))

    def progress(self) -> None:
        j = self.judge_now(time.time() - 2.0)
        for v in j.violations:
            if v.key() not in self.printed:
                self.printed.add(v.key())
                _say(f"[chaos {self.rel(v.ts)}] VIOLATION {v.invariant}: {v.detail}")
        counts = j.count()
        done = sum(1 for f in self.faults if not f.skipped)
        checks = ", ".join(f"{k} {j.checks[k]}" for k in INVARIANTS[:3])
        _say(
            f"[chaos {self.rel()}] {done}/{len(self.schedule)} faults; checks: {checks}, "
            f"no_crash {self.crash_polls}; violations {sum(counts.values())}"
            + (f" ({', '.join(f'{k} {n}' for k, n in counts.items())})" if counts else "")
        )

    def judge_now(self, t1: float) -> Judgement:
        self.obs.add(self.mesh.rec.raw(), self.offset)
        self.obs.logged = events_from_logs(log_docs(self.mesh.group.logs_dir), TIMELINE_EVENTS)
        j = judge(
            self.obs, self.faults, self.t0, t1, critical=self.critical, fps=self.mesh.spec.fps
        )
        j.violations = sorted(j.violations + self.crashes, key=lambda v: v.ts)
        j.checks["no_crash"] = self.crash_polls
        return j

    def _poll_crashes(self) -> None:
        self.crash_polls += 1
        m = self.mesh
        seen = {v.subject for v in self.crashes}
        for c in m.group.children:
            if c.name in seen or c.name in m.killed or c.alive():
                continue
            v = Violation(
                "no_crash",
                time.time(),
                c.name,
                f"{c.name} exited {c.proc.returncode} (not killed by the soak); its log ends:\n"
                + c.tail(15),
            )
            self.crashes.append(v)
            _say(f"[chaos {self.rel()}] VIOLATION no_crash: {c.name} exited {c.proc.returncode}")
        if not self.broker_down and "broker" not in seen and not self._broker_alive():
            self.crashes.append(Violation("no_crash", time.time(), "broker", "the broker died"))
            _say(f"[chaos {self.rel()}] VIOLATION no_crash: the broker died")

    def _broker_alive(self) -> bool:
        m = self.mesh
        return any(p.endpoint == m.endpoint and p.alive() for p in m.launcher.processes)

    # -- faults --------------------------------------------------------------------------

    def _inject(self, i: int) -> None:
        p = self.schedule[i]
        f = Injected(p.kind, p.target, time.time(), hogs=p.hogs)
        a = _Active(p, f)
        try:
            self._do_inject(a)
        except (LookupError, OSError, RuntimeError) as exc:
            f.skipped = f"{type(exc).__name__}: {exc}"
        self.faults.append(f)
        if f.skipped:
            _say(f"[chaos {self.rel()}] SKIPPED {p.kind} {p.target}: {f.skipped}")
            return
        self.active[i] = a
        _say(
            f"[chaos {self.rel(f.t_inject)}] inject {f.label()}"
            + (f" (incarnation {f.incarnation})" if f.incarnation else "")
            + f", recover in {p.duration:.1f} s"
        )

    def _do_inject(self, a: _Active) -> None:
        m, f = self.mesh, a.fault
        kind, w = f.kind, f.target
        if kind in WORKER_KINDS:
            a.child = m.proc(w)  # LookupError: not running (skipped)
            self.obs.add(m.rec.raw(), self.offset)
            f.incarnation = self.obs.incarnation(w, time.time())
        if kind == "kill_worker":
            f.t_inject = time.time()
            m.signal(w, signal.SIGKILL)
        elif kind == "freeze":
            f.t_inject = time.time()
            m.signal(w, signal.SIGSTOP)
        elif kind == "slow":
            f.t_inject = time.time()
            m.signal(w, signal.SIGUSR2)
        elif kind == "partition":
            ns = m.namespaces.get(w)
            if ns is None:
                raise LookupError(f"{w} has no network namespace")
            f.t_inject = time.time()
            ns.cut()
        elif kind == "hogs":
            f.t_inject = time.time()
            a.hogs = m.hogs(f.hogs)
        elif kind == "broker_restart":
            procs = [p for p in m.launcher.processes if p.endpoint == m.endpoint and p.alive()]
            if not procs:
                raise LookupError("no broker running")
            f.t_inject = time.time()
            self.broker_down = True
            for p in procs:  # SIGTERM, as RESTART_BROKER: retained state lost
                p.stop()
        elif kind == "kill_leader":
            self.obs.add(m.rec.raw(), self.offset)
            leader = self.obs.leader()
            if leader is None:
                raise LookupError("no leader known")
            standbys = [c for c in COORDINATORS if c != leader and self._running(c)]
            if not standbys:
                raise LookupError(f"no standby running besides the leader {leader}")
            f.target = leader
            f.t_inject = time.time()
            m.signal(leader, signal.SIGKILL)
        else:
            raise ValueError(f"unknown fault kind {kind!r}")

    def _running(self, base: str) -> bool:
        try:
            self.mesh.proc(base)
        except LookupError:
            return False
        return True

    def _recover(self, i: int) -> None:
        a = self.active.pop(i, None)
        if a is None:
            return  # skipped
        try:
            self._do_recover(a)
        except (LookupError, OSError, RuntimeError) as exc:
            _say(f"[chaos {self.rel()}] recovery of {a.fault.label()} failed: {exc}")
            log.exception("chaos_recover_failed", fault=a.fault.label())
            return
        _say(f"[chaos {self.rel(a.fault.t_recover)}] recovered {a.fault.label()}")

    def _do_recover(self, a: _Active) -> None:
        m, f = self.mesh, a.fault
        f.t_recover = time.time()
        if f.kind == "kill_worker":
            m.start_worker(f.target)
        elif f.kind == "freeze":
            if a.child is not None:
                a.child.proc.send_signal(signal.SIGCONT)
        elif f.kind == "slow":
            if a.child is not None and a.child.alive():
                a.child.proc.send_signal(signal.SIGUSR2)  # toggles the delay off
        elif f.kind == "partition":
            m.namespaces[f.target].heal()
        elif f.kind == "hogs":
            if a.hogs is not None:
                a.hogs.stop()
        elif f.kind == "broker_restart":
            self._start_broker()
            f.t_recover = time.time()  # accepting connections
            self.broker_down = False
        elif f.kind == "kill_leader":
            m.start_coordinator(f.target, standby=True, rank=2)

    def _start_broker(self) -> None:
        last: Exception | None = None
        for _ in range(BROKER_START_TRIES):
            try:
                self.mesh.start_broker("a")
            except Exception as exc:  # its port still held a moment: try again
                last = exc
                time.sleep(0.5)
            else:
                return
        raise RuntimeError(f"the broker did not start again: {last}")

    def undo(self) -> None:
        """Undo every fault still active, in any state of the soak, starting nothing: a
        frozen worker would not stop, a cut one would not say goodbye, hogs would stay."""
        for a in self.active.values():
            f = a.fault
            with contextlib.suppress(Exception):
                if f.kind == "freeze" and a.child is not None:
                    a.child.proc.send_signal(signal.SIGCONT)
                elif f.kind == "partition":
                    self.mesh.namespaces[f.target].heal()
                elif f.kind == "hogs" and a.hogs is not None:
                    a.hogs.stop()
                f.t_recover = time.time()
        self.active.clear()


# -- reporting -------------------------------------------------------------------------------


def coordinator_lines(
    docs: Sequence[tuple[float, str, dict[str, Any]]],
    ts: float,
    before_s: float = 10.0,
    after_s: float = 5.0,
    limit: int = 40,
) -> list[str]:
    """The coordinators' log lines within [ts - before_s, ts + after_s], shortened."""
    rows = []
    for t, proc, doc in docs:
        if ts - before_s <= t <= ts + after_s:
            rest = " ".join(f"{k}={v}" for k, v in doc.items() if k not in LOG_CONTEXT)
            rows.append((t, f"{wall(t)} {proc} {doc.get('event')} {rest}"))
    return [r for _t, r in sorted(rows)][:limit]


def _timeline_plot(
    obs: Observations, faults: Sequence[Injected], t0: float, end: float
) -> dict[str, Any]:
    """The timeline report.py draws (the shape runner._timeline gives)."""
    return {
        "t0": t0,
        "end": end,
        "apps": {
            app: [
                [round(s.ts - t0, 3), s.worker, s.variant, round(s.latency_ms, 1)]
                for s in obs.results.get(app, [])
                if t0 - 5 <= s.ts <= end
            ]
            for app in APPS
        },
        "events": [
            [round(e.ts - t0, 3), e.kind, e.worker, e.app]
            for e in obs.all_events()
            if e.kind in TIMELINE_EVENTS and t0 - 5 <= e.ts <= end
        ],
        "faults": [
            [
                f.kind,
                [f"x{f.hogs}" if f.kind == "hogs" else f.target],
                round(f.t_inject - t0, 3),
                None if f.t_recover is None else round(f.t_recover - t0, 3),
            ]
            for f in faults
            if not f.skipped
        ],
    }


def run_chaos(minutes: float, seed: int, broker: str, out: Path, models_dir: Path) -> int:
    """The soak; 0 only when no invariant was violated (and it ran to its end)."""
    netns_problem = root_problem()
    cpus = usable_cpus()
    schedule = draw_schedule(seed, minutes, WORKERS, cpus, partitions=netns_problem is None)
    _say(f"chaos soak: seed {seed}, {minutes:g} min, broker {broker}, {cpus} CPUs")
    if netns_problem is not None:
        _say(f"partitions skipped: {netns_problem}")
    _say(f"schedule ({len(schedule)} faults, at most {max_overlap(schedule)} at once):")
    for p in schedule:
        _say(f"  {p.describe()}")
    catalog = load_catalog(packaged_config("catalog.yaml"))
    lite = [v.name for v in catalog.family("efficientnet_lite").variants]
    build_models(catalog, models_dir, lite, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    mesh_id = f"drchaos{uuid.uuid4().hex[:6]}"
    spec = MeshSpec(broker=broker, netns=netns_problem is None)
    mesh = DrillMesh(out / "work" / mesh_id, spec, models_dir, mesh_id)
    soak: Soak | None = None
    violations: list[Violation] = []
    checks: Counter[str] = Counter()
    error = ""
    interrupted = False
    t_end = time.time()
    steady_s: float | None = None
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # the same cleanup as Ctrl-C

    signal.signal(signal.SIGTERM, on_term)
    try:
        where = ", workers in namespaces" if spec.netns else ""
        _say(f"starting the mesh {mesh_id} ({broker}{where}) ...")
        mesh.start()
        mesh.wait_steady(90)
        soak = Soak(mesh, schedule, minutes)
        _say(f"[chaos {soak.rel()}] steady; the soak starts ({wall(soak.t0)})")
        soak.play()
        t_soak = time.time()
        _say(f"[chaos {soak.rel()}] soak over; waiting for a steady mesh ({SETTLE_TIMEOUT_S:g} s)")
        checks["steady_at_end"] += 1
        try:
            mesh.wait_steady(SETTLE_TIMEOUT_S)
            steady_s = time.time() - t_soak
            _say(f"[chaos {soak.rel()}] steady after {steady_s:.1f} s: served and protected")
        except AssertionError as exc:
            violations.append(Violation("steady_at_end", time.time(), "mesh", str(exc)))
            _say(f"[chaos {soak.rel()}] VIOLATION steady_at_end: {exc}")
    except KeyboardInterrupt:
        interrupted = True
        _say("interrupted: stopping every fault and process")
    except Exception as exc:  # a soak that broke is a failed soak, with its reason
        log.exception("chaos_error")
        error = traceback.format_exc(limit=6)
        _say(f"the soak broke: {type(exc).__name__}: {exc}")
    finally:
        try:
            if soak is not None:
                soak.undo()
                t_end = time.time()
                try:  # whatever happens here, the mesh is closed below
                    j = soak.judge_now(t_end)
                    violations += j.violations
                    checks.update(j.checks)
                except Exception:
                    log.exception("chaos_judge_error")
                    error = error or traceback.format_exc(limit=6)
            alive = {c.name: c.alive() for c in mesh.group.children}
            codes = mesh.close()
            tails = {c.name: c.tail(30) for c in mesh.group.children}
            # Crashes while it ran are judged above, with their time; this is the stop.
            seen = {v.subject for v in soak.crashes} if soak is not None else set()
            stop = check_no_crash(
                {n: c for n, c in codes.items() if n not in seen},
                mesh.killed,
                {n: up for n, up in alive.items() if n not in seen},
                tails,
            )
            checks["no_crash"] += 1
            if not stop.ok:
                violations.append(Violation("no_crash", time.time(), "stop", stop.detail))
        finally:
            signal.signal(signal.SIGTERM, previous)
    violations.sort(key=lambda v: v.ts)
    return _finish(
        soak,
        schedule,
        violations,
        checks,
        out,
        mesh,
        seed,
        minutes,
        broker,
        netns_problem,
        error,
        interrupted,
        steady_s,
        t_end,
    )


def _finish(
    soak: Soak | None,
    schedule: Sequence[PlannedFault],
    violations: list[Violation],
    checks: Counter[str],
    out: Path,
    mesh: DrillMesh,
    seed: int,
    minutes: float,
    broker: str,
    netns_problem: str | None,
    error: str,
    interrupted: bool,
    steady_s: float | None,
    t_end: float,
) -> int:
    faults = soak.faults if soak is not None else []
    t0 = soak.t0 if soak is not None else t_end
    obs = soak.obs if soak is not None else Observations()
    logs = mesh.group.logs_dir
    docs = log_docs(logs)
    events = obs.all_events()
    found: list[dict[str, Any]] = [
        {
            "invariant": v.invariant,
            "at_s": round(v.ts - t0, 2),
            "wall": wall(v.ts),
            "subject": v.subject,
            "detail": v.detail,
            "until_s": None if v.until is None else round(v.until - t0, 2),
            "timeline": timeline_around(v.ts, faults, events, t0),
            "coordinator_log": coordinator_lines(docs, v.ts),
        }
        for v in violations
    ]
    table = verdict_table(obs, faults, t0, t_end)
    verdicts = [
        {
            "at_s": round(ts - t0, 2),
            "worker": w,
            "cause": cause,
            "incarnation": inc,
            "excused_by": None if f is None else f"{f.label()} at +{f.t_inject - t0:.2f} s",
        }
        for ts, w, cause, inc, f in table
    ]
    by_kind = Counter(f.kind for f in faults if not f.skipped)
    skipped = [f"{f.kind} {f.target}: {f.skipped}" for f in faults if f.skipped]
    ok = not violations and not error and not interrupted and soak is not None
    report: dict[str, Any] = {
        "seed": seed,
        "minutes": minutes,
        "broker": broker,
        "started": wall(t0),
        "partitions": "on" if netns_problem is None else f"skipped: {netns_problem}",
        "schedule": [asdict(p) for p in schedule],
        "faults": [asdict(f) | {"at_s": round(f.t_inject - t0, 2)} for f in faults],
        "faults_by_kind": dict(by_kind),
        "skipped": skipped,
        "checks": dict(checks),
        "verdicts": verdicts,
        "longest_gap_s": longest_gaps(obs, APPS, t0, t_end),
        "violations_by_invariant": dict(Counter(v.invariant for v in violations)),
        "violations": found,
        "steady_after_soak_s": None if steady_s is None else round(steady_s, 1),
        "error": error,
        "interrupted": interrupted,
        "status": "passed"
        if ok
        else "interrupted"
        if interrupted
        else "error"
        if error or soak is None
        else "failed",
        "logs": str(logs),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "chaos.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    # The drill report too (report.md with the timeline's PNG), one invariant a check.
    per = Counter(v.invariant for v in violations)
    result: dict[str, Any] = {
        "case": "CHAOS",
        "label": f"CHAOS[seed={seed}]",
        "summary": f"seeded chaos soak, {minutes:g} min, {sum(by_kind.values())} faults "
        f"({', '.join(f'{k} x{n}' for k, n in sorted(by_kind.items()))})",
        "broker": broker,
        "status": report["status"],
        "checks": [
            {
                "name": inv,
                "ok": per[inv] == 0,
                "detail": f"{checks.get(inv, 0)} checks, no violation"
                if per[inv] == 0
                else "; ".join(
                    f"+{x['at_s']} s {x['detail']}" for x in found if x["invariant"] == inv
                ),
            }
            for inv in INVARIANTS
        ]
        + ([{"name": "ran", "ok": False, "detail": error}] if error else []),
        "metrics": {"faults_by_kind": dict(by_kind), "seed": seed},
        "duration_s": round(t_end - t0, 1),
        "logs": str(logs),
    }
    if soak is not None:
        result["timeline"] = _timeline_plot(obs, faults, t0, t_end)
    write_report([result], out, DrillOptions(broker=broker))
    _say("")
    _say(f"chaos soak: seed {seed}, {minutes:g} min on {broker}: {report['status'].upper()}")
    _say("faults: " + (", ".join(f"{k} x{n}" for k, n in sorted(by_kind.items())) or "none"))
    for s in skipped:
        _say(f"  skipped {s}")
    if netns_problem is not None:
        _say(f"partitions skipped: {netns_problem}")
    _say("checks: " + ", ".join(f"{k} {checks.get(k, 0)}" for k in INVARIANTS))
    if soak is not None:
        excused = sum(1 for v in verdicts if v["excused_by"] is not None)
        _say(f"verdicts: {len(verdicts)}, {excused} of them on a worker a fault hit")
        gaps = report["longest_gap_s"]
        _say("longest without a result: " + ", ".join(f"{a} {g:.1f} s" for a, g in gaps.items()))
    _say(
        f"violations: {len(violations)}"
        + (" (" + ", ".join(f"{k} {n}" for k, n in per.items()) + ")" if violations else "")
    )
    for x in found:
        _say(f"  +{x['at_s']} s ({x['wall']}) {x['invariant']}: {x['detail']}")
        for line in x["timeline"]:
            _say(f"      {line}")
    if error:
        _say(error)
    _say(f"report: {out / 'chaos.json'} and {out / 'report.md'}; logs: {logs}")
    return 0 if ok else 130 if interrupted else 1
