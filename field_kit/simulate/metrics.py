"""Metrics of one policy: recovery, MTTR, accuracy against full replication, protection memory.

Accuracy reduction is measured against *full replication*: the reference in which every failed
app comes back with the variant it served before the failure, after detection + reroute (a
warm replica of itself). Three views of the failed apps:

- over the degraded window (failure to repair), time-averaged, down time counting 0: the
  reduction in accuracy points (Σ(ref - policy) / Σ window) and in % of the reference;
- right after the failover's ladder (its final variant, before any re-plan), over the apps the
  failover recovered: comparable to FailLite's figure;
- at the end of the window (after re-plans and their migrations).

Fleet-wide: the time-averaged accuracy of every app over the whole run (down = 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.planner import Placement, Problem
from field_kit.simulate.engine import RunResult


def percentile(sorted_xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending sequence."""
    n = len(sorted_xs)
    return sorted_xs[min(n - 1, max(0, math.ceil(q / 100.0 * n) - 1))]


@dataclass(frozen=True, slots=True)
class Distribution:
    n: int
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None

    @classmethod
    def of(cls, xs: Sequence[float]) -> Distribution:
        s = sorted(xs)
        if not s:
            return cls(0, None, None, None, None, None)
        return cls(
            len(s),
            sum(s) / len(s),
            percentile(s, 50),
            percentile(s, 90),
            percentile(s, 99),
            s[-1],
        )


@dataclass(frozen=True, slots=True)
class Protection:
    """Memory and disk a placement spends on backups, before any failure."""

    warm_backups: int
    cold_backups: int
    warm_mb: float  # resident memory of warm backups
    cold_reserve_mb: float  # Σ over servers of the largest cold load one failure would bring
    cold_disk_mb: float  # files staged for cold backups (and their ladder's first step)
    total_memory_mb: float
    primaries_mb: float
    unprotected: int  # placed apps without a backup
    unplaced: int  # apps without a primary
    primary_accuracy: float  # mean over all apps (unplaced: 0)

    @property
    def warm_share(self) -> float:
        return self.warm_mb / self.total_memory_mb if self.total_memory_mb else 0.0

    @property
    def reserve_share(self) -> float:
        return self.cold_reserve_mb / self.total_memory_mb if self.total_memory_mb else 0.0

    @classmethod
    def of(cls, problem: Problem, placement: Placement) -> Protection:
        def mem(variant: str, server: str) -> float:
            c = problem.cost_on(variant, server)
            return c.memory_mb if c is not None else 0.0

        warm = sum(mem(b.variant, b.server) for b in placement.backups.values() if b.loaded)
        cold_by: dict[tuple[str, str], float] = {}
        for app, b in placement.backups.items():
            if b.kind == "cold" and app in placement.primary:
                dom = problem.server(placement.primary[app].server).domain
                key = (dom, b.server)
                cold_by[key] = cold_by.get(key, 0.0) + mem(b.variant, b.server)
        reserve: dict[str, float] = {}
        for (_, server), m in cold_by.items():
            reserve[server] = max(reserve.get(server, 0.0), m)
        disk = 0.0
        for server, load in placement.by_server().items():
            if not problem.has_server(server):
                continue
            needed = {v for _, v in load.serve} | {v for _, v in load.warm}
            cold_files: set[str] = set()
            for b in placement.backups.values():
                if b.server == server and b.kind == "cold":
                    cold_files.add(b.variant)
                    if b.first is not None:
                        cold_files.add(b.first)
            on_disk = problem.server(server).models_on_disk
            disk += sum(
                problem.variant(v).file_size_mb for v in cold_files - needed if v not in on_disk
            )
        prim_mb = sum(mem(p.variant, p.server) for p in placement.primary.values())
        acc = sum(problem.variant(p.variant).accuracy for p in placement.primary.values())
        return cls(
            warm_backups=sum(b.kind == "warm" for b in placement.backups.values()),
            cold_backups=sum(b.kind == "cold" for b in placement.backups.values()),
            warm_mb=warm,
            cold_reserve_mb=sum(reserve.values()),
            cold_disk_mb=disk,
            total_memory_mb=sum(s.memory_mb for s in problem.servers),
            primaries_mb=prim_mb,
            unprotected=len(placement.unprotected()),
            unplaced=len(placement.unplaced),
            primary_accuracy=acc / len(problem.apps) if problem.apps else 0.0,
        )


@dataclass(frozen=True, slots=True)
class Reduction:
    points: float | None  # accuracy points lost against the reference
    pct: float | None  # the same in % of the reference accuracy


@dataclass(frozen=True, slots=True)
class PolicyMetrics:
    failures: int  # failures that took down at least one app
    failed_apps: int  # (failure, app) pairs
    recovered: int  # served again before repair (failover or a later re-plan)
    recovered_by_failover: int
    failures_fully_recovered: int  # failures whose every app was served again before repair
    recovery_rate: float | None
    mttr: Distribution
    mttr_ms: tuple[float, ...]  # ascending, for the CDF
    settled: Distribution  # failure -> last change of variant in the window (recovered apps)
    window: Reduction  # over the degraded window, down time counting 0
    after_failover: Reduction  # the failover ladder's final variant, recovered apps
    first_served: Reduction  # the first variant served again, recovered apps
    end_of_window: Reduction  # what ran when the window closed, all failed apps
    fleet_accuracy: float  # time-averaged over every app and the whole run
    fleet_reference: float
    unprotected_after_replan: Distribution  # apps left without a backup by each re-plan
    migration_overflows: int  # loads of planned moves beyond a server's memory
    invalid_plans: int  # re-planned placements the planner's validate() rejects

    @classmethod
    def of(cls, runs: Sequence[RunResult]) -> PolicyMetrics:
        eps = [e for r in runs for e in r.episodes]
        recovered = [e for e in eps if e.mttr_ms is not None]
        by_fo = [e for e in eps if e.by_failover]
        fails: dict[tuple[int, int], list[bool]] = {}
        for i, r in enumerate(runs):
            for e in r.episodes:
                fails.setdefault((i, e.failure), []).append(e.mttr_ms is not None)
        win = sum(e.window_ms for e in eps)
        ref = sum(e.ref_integral for e in eps)
        lost = sum(e.ref_integral - e.acc_integral for e in eps)

        def step(pairs: list[tuple[float, float]]) -> Reduction:
            if not pairs:
                return Reduction(None, None)
            d = sum(r - a for r, a in pairs)
            tot = sum(r for r, _ in pairs)
            return Reduction(d / len(pairs), 100.0 * d / tot if tot else None)

        fleet_t = sum(r.n_apps * r.horizon_ms for r in runs)
        return cls(
            failures=len(fails),
            failed_apps=len(eps),
            recovered=len(recovered),
            recovered_by_failover=len(by_fo),
            failures_fully_recovered=sum(all(v) for v in fails.values()),
            recovery_rate=len(recovered) / len(eps) if eps else None,
            mttr=Distribution.of([e.mttr_ms for e in recovered if e.mttr_ms is not None]),
            mttr_ms=tuple(sorted(e.mttr_ms for e in recovered if e.mttr_ms is not None)),
            settled=Distribution.of([e.settled_ms for e in recovered if e.settled_ms is not None]),
            window=Reduction(lost / win if win else None, 100.0 * lost / ref if ref else None),
            after_failover=step([(e.ref_accuracy, e.failover_accuracy or 0.0) for e in by_fo]),
            first_served=step([(e.ref_accuracy, e.first_accuracy or 0.0) for e in recovered]),
            end_of_window=step([(e.ref_accuracy, e.end_accuracy) for e in eps]),
            fleet_accuracy=sum(r.fleet_integral for r in runs) / fleet_t if fleet_t else 0.0,
            fleet_reference=sum(r.fleet_ref_integral for r in runs) / fleet_t if fleet_t else 0.0,
            unprotected_after_replan=Distribution.of(
                [
                    float(f.unprotected_after_replan)
                    for r in runs
                    for f in r.failures
                    if f.unprotected_after_replan is not None
                ]
            ),
            migration_overflows=sum(f.migration_overflows for r in runs for f in r.failures)
            + sum(r.failback_overflows for r in runs),
            invalid_plans=sum(bool(f.invalid_plan) for r in runs for f in r.failures),
        )
