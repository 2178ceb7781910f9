"""The discrete-event loop: failures, detection, failover ladders, re-plans, repairs, failback.

Time is simulated milliseconds; events sit in a heapq ordered by (time, insertion order). What
the controller believes (the placement) changes at decisions; what each app serves changes
only when an event says a load finished, so the accuracy timeline of every app follows the
physical state:

- a failure takes down every app served from a failed server at once;
- ``detection_ms`` later the policy decides (the planner's failover table or plan); each
  recovery serves first after reroute (warm) or after the loads queued on that device (load +
  first inference of each, one after another), then climbs its ladder of upgrades on the same
  device clock (an upgrade that must release first leaves a gap);
- ``replan_delay_ms`` after the decision the survivors are re-planned and the moves to the new
  placement run in waves (loads of one device one after another; an app switches when its load
  finishes; a release-first load is a gap);
- at repair the failure's window closes; with ``failback`` the policy fails back the same way.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from coordinator.planner import FailoverPlan, Move, Placement, Problem, migration_steps
from coordinator.planner.placement import resident_mb
from field_kit.simulate.failures import Failure
from field_kit.simulate.policies import Policy, after_failover
from field_kit.simulate.timeline import AccuracyTimeline


@dataclass(frozen=True, slots=True)
class EngineSettings:
    replan_delay_ms: float = 500.0  # decision -> re-planned placement published
    failback: bool = True  # on repair, fail back (else the run ends its windows there)
    validate: Callable[[Problem, Placement], list[str]] | None = None  # check planned targets


@dataclass(frozen=True, slots=True)
class Episode:
    """One app taken down by one failure, over that failure's window [failure, repair]."""

    failure: int
    app: str
    critical: bool
    failed_server: str
    t_fail_ms: float
    t_end_ms: float
    ref_accuracy: float  # what it served before the failure
    mttr_ms: float | None  # failure -> serving again (None: not before the window ended)
    settled_ms: float | None  # failure -> its last change of variant in the window
    by_failover: bool  # the failover plan recovered it (else, if at all, a later re-plan)
    acc_integral: float  # ∫ accuracy over the window (accuracy-ms)
    ref_integral: float  # full replication: ref_accuracy from detection + reroute on
    first_accuracy: float | None  # the variant it served first again
    failover_accuracy: float | None  # the failover ladder's final variant
    end_accuracy: float  # what it served when the window closed

    @property
    def window_ms(self) -> float:
        return self.t_end_ms - self.t_fail_ms


@dataclass(frozen=True, slots=True)
class FailureRecord:
    index: int
    label: str
    servers: tuple[str, ...]  # newly failed (already-dead ones excluded)
    time_ms: float
    repair_at_ms: float
    affected: int
    recovered_by_failover: int
    replanned: bool
    unprotected_after_replan: int | None
    unplaced_after_replan: int | None
    migration_overflows: int  # loads of the re-plan's moves beyond a server's memory
    invalid_plan: tuple[str, ...]  # what the validator said about the re-planned placement


@dataclass(frozen=True, slots=True)
class RunResult:
    horizon_ms: float
    episodes: tuple[Episode, ...]
    failures: tuple[FailureRecord, ...]
    fleet_integral: float  # Σ over apps of ∫ accuracy over [0, horizon]
    fleet_ref_integral: float  # the same with full replication
    n_apps: int
    app_mean_accuracy: dict[str, float]
    failback_overflows: int
    wall_s: dict[str, float] = field(default_factory=dict)  # planner wall time (not simulated)


@dataclass(slots=True)
class _Log:
    """What happened to one failure, filled in as its events run."""

    servers: tuple[str, ...] = ()
    affected: int = 0
    recovered: int = 0
    replanned: bool = False
    unprotected: int | None = None
    unplaced: int | None = None
    overflows: int = 0
    invalid: tuple[str, ...] = ()


@dataclass(slots=True)
class _OpenEpisode:
    failure: int
    app: str
    failed_server: str
    t_fail: float
    ref_acc: float
    restored: float | None = None
    first_acc: float | None = None
    by_failover: bool = False
    failover_acc: float | None = None


@dataclass(frozen=True, slots=True)
class _Fail:
    k: int


@dataclass(frozen=True, slots=True)
class _Decide:
    k: int
    problem: Problem
    failed: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Replan:
    k: int
    generation: int
    problem: Problem
    failed: frozenset[str]
    before: Placement


@dataclass(frozen=True, slots=True)
class _Repair:
    k: int


@dataclass(frozen=True, slots=True)
class _Serve:
    app: str
    server: str
    variant: str
    epoch: int


@dataclass(frozen=True, slots=True)
class _Down:
    app: str
    server: str
    epoch: int


_Event = _Fail | _Decide | _Replan | _Repair | _Serve | _Down
T = TypeVar("T")


def migration_overflows(problem: Problem, current: Placement, moves: Sequence[Move]) -> int:
    """Loads among ``moves`` that exceed their server's memory, replaying the waves as
    :func:`migration_steps` plans them: releases listed before a wave's first load (backups no
    longer needed) and release-first ones happen at once, the wave's loads run together, and
    the releases of the copies they replace follow the wave."""
    cap = {s.id: s.memory_mb for s in problem.servers}
    used = resident_mb(problem, current)

    def mem(variant: str, server: str) -> float:
        c = problem.cost_on(variant, server) if server in cap else None
        return c.memory_mb if c is not None else 0.0

    over = 0
    for w in sorted({m.wave for m in moves}):
        later: list[Move] = []
        loading = False
        for m in (m for m in moves if m.wave == w and m.server in used):
            if m.action == "release" and (m.release_first or not loading):
                used[m.server] -= mem(m.variant, m.server)
            elif m.action == "release":
                later.append(m)
            elif m.action == "load":
                loading = True
                used[m.server] += mem(m.variant, m.server)
                if used[m.server] > cap[m.server] + 1e-6:
                    over += 1
        for m in later:
            used[m.server] -= mem(m.variant, m.server)
    return over


class Engine:
    """One policy on one problem through a sequence of failures."""

    def __init__(
        self,
        problem: Problem,
        policy: Policy,
        initial: Placement,
        settings: EngineSettings | None = None,
    ) -> None:
        self.base = problem
        self.policy = policy
        self.initial = initial
        self.settings = settings or EngineSettings()
        self._problems: dict[frozenset[str], Problem] = {}

    # -- helpers -----------------------------------------------------------------------------

    def _problem(self, alive: set[str] | frozenset[str]) -> Problem:
        key = frozenset(alive)
        if len(key) == len(self.base.servers):
            return self.base
        p = self._problems.get(key)
        if p is None:
            p = self.base.without({s.id for s in self.base.servers} - key)
            self._problems[key] = p
        return p

    def _push(self, t: float, ev: _Event) -> None:
        heapq.heappush(self._heap, (t, self._seq, ev))
        self._seq += 1

    def _acc(self, variant: str) -> float:
        return self.base.variant(variant).accuracy

    def _set_serving(self, t: float, app: str, where: tuple[str, str] | None) -> None:
        self._serving[app] = where
        self._timeline[app].set(t, 0.0 if where is None else self._acc(where[1]))

    def _bump(self, app: str) -> int:
        self._epoch[app] += 1
        return self._epoch[app]

    def _serve_at(self, t: float, app: str, server: str, variant: str, epoch: int) -> None:
        self._push(t, _Serve(app, server, variant, epoch))
        self._pending_until[app] = max(self._pending_until.get(app, -1.0), t)

    def _timed(self, key: str, fn: Callable[[], T]) -> T:
        t0 = time.perf_counter()
        out = fn()
        self._wall[key] = self._wall.get(key, 0.0) + time.perf_counter() - t0
        return out

    # -- the run -----------------------------------------------------------------------------

    def run(self, failures: Sequence[Failure], horizon_ms: float | None = None) -> RunResult:
        base = self.base
        self._heap: list[tuple[float, int, _Event]] = []
        self._seq = 0
        self._wall: dict[str, float] = {}
        self._failures = list(failures)
        self._alive: set[str] = {s.id for s in base.servers}
        self._down_count: dict[str, int] = dict.fromkeys(self._alive, 0)
        self._generation = 0
        self._placement = self.initial
        self._serving: dict[str, tuple[str, str] | None] = {}
        self._timeline: dict[str, AccuracyTimeline] = {}
        self._epoch: dict[str, int] = {}
        self._pending_until: dict[str, float] = {}
        self._open: dict[int, list[_OpenEpisode]] = {}
        self._by_app: dict[str, list[_OpenEpisode]] = {}
        self._episodes: list[Episode] = []
        self._logs: dict[int, _Log] = {}
        self._failback_over = 0
        self._recovering_until = 0.0
        for a in base.apps:
            p = self.initial.primary.get(a.id)
            self._serving[a.id] = None if p is None else (p.server, p.variant)
            self._timeline[a.id] = AccuracyTimeline(0.0, 0.0 if p is None else self._acc(p.variant))
            self._epoch[a.id] = 0
        acc0 = {a: self._timeline[a].value_at(0.0) for a in self._timeline}
        for k, f in enumerate(self._failures):
            self._push(f.time_ms, _Fail(k))
            self._push(f.repair_at_ms, _Repair(k))
        if horizon_ms is None:
            last = max((f.repair_at_ms for f in self._failures), default=0.0)
            horizon_ms = last + (600_000.0 if self.settings.failback else 0.0)
        while self._heap and self._heap[0][0] <= horizon_ms:
            t, _, ev = heapq.heappop(self._heap)
            match ev:
                case _Fail():
                    self._on_fail(t, ev)
                case _Decide():
                    self._on_decide(t, ev)
                case _Replan():
                    self._on_replan(t, ev)
                case _Repair():
                    self._on_repair(t, ev)
                case _Serve():
                    self._on_serve(t, ev)
                case _Down():
                    self._on_down(t, ev)
        for k in sorted(self._open):
            self._close(k, horizon_ms)
        k_det = base.knobs.detection_ms + base.knobs.reroute_ms
        fleet = sum(tl.integrate(0.0, horizon_ms) for tl in self._timeline.values())
        blips = sum(e.ref_accuracy * min(k_det, e.window_ms) for e in self._episodes)
        ref = sum(acc0.values()) * horizon_ms - blips
        records = tuple(
            FailureRecord(
                index=k,
                label=self._failures[k].label,
                servers=r.servers,
                time_ms=self._failures[k].time_ms,
                repair_at_ms=self._failures[k].repair_at_ms,
                affected=r.affected,
                recovered_by_failover=r.recovered,
                replanned=r.replanned,
                unprotected_after_replan=r.unprotected,
                unplaced_after_replan=r.unplaced,
                migration_overflows=r.overflows,
                invalid_plan=r.invalid,
            )
            for k, r in sorted(self._logs.items())
        )
        return RunResult(
            horizon_ms=horizon_ms,
            episodes=tuple(sorted(self._episodes, key=lambda e: (e.failure, e.app))),
            failures=records,
            fleet_integral=fleet,
            fleet_ref_integral=ref,
            n_apps=len(base.apps),
            app_mean_accuracy={
                a: tl.integrate(0.0, horizon_ms) / horizon_ms if horizon_ms > 0 else 0.0
                for a, tl in sorted(self._timeline.items())
            },
            failback_overflows=self._failback_over,
            wall_s=dict(self._wall),
        )

    # -- events ------------------------------------------------------------------------------

    def _on_fail(self, t: float, ev: _Fail) -> None:
        f = self._failures[ev.k]
        newly = frozenset(s for s in f.servers if self._down_count.get(s, 0) == 0)
        for s in f.servers:
            if s in self._down_count:
                self._down_count[s] += 1
        log = self._logs[ev.k] = _Log(servers=tuple(sorted(newly)))
        if not newly:
            return
        problem_k = self._problem(self._alive)  # still lists the failed servers
        self._alive -= newly
        self._generation += 1
        eps: list[_OpenEpisode] = []
        for app, where in self._serving.items():
            if where is not None and where[0] in newly:
                ep = _OpenEpisode(ev.k, app, where[0], t, self._acc(where[1]))
                eps.append(ep)
                self._by_app.setdefault(app, []).append(ep)
                self._set_serving(t, app, None)
        self._open[ev.k] = eps
        log.affected = len(eps)
        self._push(t + self.base.knobs.detection_ms, _Decide(ev.k, problem_k, newly))

    def _on_decide(self, t: float, ev: _Decide) -> None:
        before = self._placement
        fp = self._timed("failover_s", lambda: self.policy.failover(ev.problem, before, ev.failed))
        self._apply_failover(t, ev.k, fp)
        dead = {s.id for s in self.base.servers} - self._alive
        self._placement = after_failover(before, fp, dead)
        self._push(
            t + self.settings.replan_delay_ms,
            _Replan(ev.k, self._generation, ev.problem, ev.failed, before),
        )

    def _apply_failover(self, t: float, k: int, fp: FailoverPlan) -> None:
        t0 = t + self.base.knobs.reroute_ms
        clock: dict[str, float] = {}
        ladders: list[tuple[str, int, list[tuple[str, str, float, bool]]]] = []
        eps = {e.app: e for e in self._open.get(k, [])}
        recovered = 0
        for app, r in fp.recoveries.items():
            where = self._serving.get(app)
            if (where is not None and where[0] in self._alive) or r.server not in self._alive:
                continue  # still served (a move was under way), or its backup died meanwhile
            ep = eps.get(app)
            if ep is not None:
                ep.by_failover = True
                ep.failover_acc = r.accuracy_final
                recovered += 1
            epoch = self._bump(app)
            first, *rest = r.steps
            at = t0
            if first.action == "load":
                clock[r.server] = clock.get(r.server, 0.0) + first.est_ms
                at = t0 + clock[r.server]
            self._serve_at(at, app, r.server, first.variant, epoch)
            self._recovering_until = max(self._recovering_until, at)
            ups = [(s.server, s.variant, s.est_ms, s.release_first) for s in rest]
            if ups:
                ladders.append((app, epoch, ups))
        # Upgrades after the first loads, on the same device clocks, app by app.
        for app, epoch, ups in ladders:
            for server, variant, est, gap in ups:
                start = clock.get(server, 0.0)
                clock[server] = start + est
                if gap:
                    self._push(t0 + start, _Down(app, server, epoch))
                self._serve_at(t0 + clock[server], app, server, variant, epoch)
        self._logs.setdefault(k, _Log()).recovered = recovered

    def _on_replan(self, t: float, ev: _Replan) -> None:
        log = self._logs.setdefault(ev.k, _Log())
        if ev.generation != self._generation:
            return  # the topology changed since: a newer re-plan or a failback covers it
        if t < self._recovering_until:
            # Moves must not cut in before the failover's first loads have served.
            self._push(self._recovering_until, ev)
            return
        after = self._placement
        target = self._timed(
            "replan_s", lambda: self.policy.replan(ev.problem, ev.failed, ev.before, after)
        )
        survivors = self._problem(self._alive)
        moves = migration_steps(survivors, after, target)
        log.replanned = True
        log.unprotected = len(target.unprotected())
        log.unplaced = len(target.unplaced)
        log.overflows = migration_overflows(survivors, after, moves)
        if self.settings.validate is not None:
            log.invalid = tuple(self.settings.validate(survivors, target))
        self._migrate(t, survivors, target, moves)

    def _on_repair(self, t: float, ev: _Repair) -> None:
        f = self._failures[ev.k]
        repaired = set()
        for s in f.servers:
            if s in self._down_count and self._down_count[s] > 0:
                self._down_count[s] -= 1
                if self._down_count[s] == 0:
                    repaired.add(s)
        if ev.k in self._open:
            self._close(ev.k, t)
        if not repaired or not self.settings.failback:
            return
        self._alive |= repaired
        self._generation += 1
        problem = self._problem(self._alive)
        current = self._placement
        mig = self._timed("failback_s", lambda: self.policy.failback(problem, current))
        self._failback_over += migration_overflows(problem, current, mig.moves)
        self._migrate(t, problem, mig.placement, mig.moves)

    def _on_serve(self, t: float, ev: _Serve) -> None:
        if ev.epoch != self._epoch[ev.app] or ev.server not in self._alive:
            return
        self._set_serving(t, ev.app, (ev.server, ev.variant))
        acc = self._acc(ev.variant)
        for ep in self._by_app.get(ev.app, ()):
            if ep.restored is None:
                ep.restored = t
                ep.first_acc = acc

    def _on_down(self, t: float, ev: _Down) -> None:
        where = self._serving.get(ev.app)
        if ev.epoch == self._epoch[ev.app] and where is not None and where[0] == ev.server:
            self._set_serving(t, ev.app, None)

    # -- moves -------------------------------------------------------------------------------

    def _migrate(
        self, t: float, problem: Problem, target: Placement, moves: Sequence[Move]
    ) -> None:
        """Carry out ``moves`` from ``t`` on; the controller's placement is ``target`` now."""
        self._placement = target
        start = t
        moved: set[str] = set()
        epochs: dict[str, int] = {}
        for w in sorted({m.wave for m in moves}):
            clock: dict[str, float] = {}
            gap_from: dict[str, str] = {}
            for m in (m for m in moves if m.wave == w):
                if m.action == "release" and m.release_first and m.role == "primary":
                    gap_from[m.app] = m.server
                elif m.action == "load":
                    c = problem.cost_on(m.variant, m.server) if m.server in self._alive else None
                    dur = c.restore_ms if c is not None else 0.0
                    s0 = clock.get(m.server, 0.0)
                    clock[m.server] = s0 + dur
                    if m.role != "primary":
                        continue
                    moved.add(m.app)
                    if m.app not in epochs:
                        epochs[m.app] = self._bump(m.app)
                    if m.app in gap_from:
                        self._push(start + s0, _Down(m.app, gap_from.pop(m.app), epochs[m.app]))
                    self._serve_at(start + s0 + dur, m.app, m.server, m.variant, epochs[m.app])
            start += max(clock.values(), default=0.0)
        for app, where in self._serving.items():
            p = target.primary.get(app)
            if p is None and where is not None:
                # The plan has no room for it any more: the controller stops it.
                self._bump(app)
                self._push(t, _Down(app, where[0], self._epoch[app]))
            elif (
                p is not None
                and where is None
                and app not in moved
                and self._pending_until.get(app, -1.0) < t
                and p.server in self._alive
            ):
                # Planned where it runs per the controller, but nothing runs or is loading
                # there (its load was lost to another failure): load it now.
                c = problem.cost_on(p.variant, p.server)
                epoch = self._bump(app)
                self._serve_at(t + (c.restore_ms if c else 0.0), app, p.server, p.variant, epoch)

    def _close(self, k: int, t_end: float) -> None:
        k_det = self.base.knobs.detection_ms + self.base.knobs.reroute_ms
        for ep in self._open.pop(k, []):
            self._by_app[ep.app].remove(ep)
            restored = ep.restored if ep.restored is not None and ep.restored <= t_end else None
            tl = self._timeline[ep.app]
            last = max((t for t, _ in tl.changes() if ep.t_fail <= t <= t_end), default=ep.t_fail)
            start_ref = min(ep.t_fail + k_det, t_end)
            app = self.base.app(ep.app)
            self._episodes.append(
                Episode(
                    failure=k,
                    app=ep.app,
                    critical=app.critical,
                    failed_server=ep.failed_server,
                    t_fail_ms=ep.t_fail,
                    t_end_ms=t_end,
                    ref_accuracy=ep.ref_acc,
                    mttr_ms=None if restored is None else restored - ep.t_fail,
                    settled_ms=None if restored is None else last - ep.t_fail,
                    by_failover=ep.by_failover,
                    acc_integral=tl.integrate(ep.t_fail, t_end),
                    ref_integral=ep.ref_acc * (t_end - start_ref),
                    first_accuracy=ep.first_acc if restored is not None else None,
                    failover_accuracy=ep.failover_acc,
                    end_accuracy=tl.value_at(t_end),
                )
            )
