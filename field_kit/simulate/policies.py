"""Protection policies behind one interface: initial plan, failover, re-plan, failback.

``lp`` and ``greedy`` are the planner itself (``plan``, the failover table / ``plan_failover``,
``replan_after``, ``failback``) with method "lp" (LP relaxation + rounding) or "greedy"
(FailLite-style heterogeneous greedy). The three baselines share the planner's stage-1
primaries (``plan_primaries``, method "lp") and differ in their backups:

- ``none``: no backups; a failed app is down until its server is repaired.
- ``full-warm``: homogeneous warm replication, a loaded replica of the *same* variant in another
  failure domain, placed greedily (critical apps first) while memory and the failover compute
  last; apps whose replica does not fit stay unprotected.
- ``cold``: homogeneous cold, the same variant's file pre-positioned on another domain's server
  (the one with the most memory expected free); loaded on failure if the memory is free then.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from coordinator.planner import (
    Assign,
    Backup,
    FailoverPlan,
    FailoverTable,
    Method,
    Migration,
    Options,
    Placement,
    Problem,
    Recovery,
    Step,
    build_failover_table,
    failback,
    migration_steps,
    plan,
    plan_failover,
    plan_primaries,
    replan_after,
)
from field_kit.simulate.errors import PolicyError

POLICY_NAMES = ("none", "full-warm", "cold", "greedy", "lp")


def after_failover(placement: Placement, fp: FailoverPlan, dead: Iterable[str] = ()) -> Placement:
    """The placement once ``fp`` is carried out: recovered apps at their final variant on the
    backup server, unrecoverable ones unplaced, backups on dead servers or used up dropped."""
    gone = set(dead) | set(fp.failed_servers)
    primary = {a: p for a, p in placement.primary.items() if p.server not in gone}
    primary.update({a: Assign(r.server, r.final_variant) for a, r in fp.recoveries.items()})
    backups = {
        a: b
        for a, b in placement.backups.items()
        if a in primary and b.server not in gone and a not in fp.recoveries
    }
    unplaced = dict(placement.unplaced)
    unplaced.update({a: why for a, why in fp.unrecoverable.items() if a not in primary})
    return Placement(primary=primary, backups=backups, unplaced=unplaced, solver="after-failover")


def _priority(problem: Problem, app: str) -> tuple[bool, float, str]:
    a = problem.app(app)
    return (not a.critical, -a.weight, app)


class Policy(ABC):
    """How one protection strategy plans, fails over, re-plans and fails back."""

    name: str = ""

    @abstractmethod
    def initial(self, problem: Problem) -> Placement:
        """Primaries and backups before any failure."""

    @abstractmethod
    def failover(
        self, problem: Problem, placement: Placement, failed: frozenset[str]
    ) -> FailoverPlan:
        """What to do when ``failed`` fail (``problem`` still lists them)."""

    @abstractmethod
    def replan(
        self,
        problem: Problem,
        failed: frozenset[str],
        before: Placement,
        after: Placement,
    ) -> Placement:
        """The placement on the survivors once the failover is done. ``problem`` lists the
        failed servers, ``before`` is the placement at failure time, ``after`` the one the
        failover left (see :func:`after_failover`)."""

    @abstractmethod
    def failback(self, problem: Problem, current: Placement) -> Migration:
        """Servers are back (``problem`` lists them): the target and the moves to it."""


class PlannerPolicy(Policy):
    """The planner, method "lp" or "greedy": every decision is the planner's own code."""

    def __init__(self, method: Method, options: Options | None = None) -> None:
        self.name = method
        self.method: Method = method
        self.options = options
        self._tables: dict[int, tuple[Problem, Placement, FailoverTable]] = {}

    def initial(self, problem: Problem) -> Placement:
        pl = plan(problem, self.method, options=self.options)
        # The decision at failure time is a table lookup, as in the coordinator.
        self._tables[id(pl)] = (problem, pl, build_failover_table(problem, pl))
        return pl

    def failover(
        self, problem: Problem, placement: Placement, failed: frozenset[str]
    ) -> FailoverPlan:
        cached = self._tables.get(id(placement))
        if cached is not None and cached[1] is placement and cached[0] == problem:
            fp = cached[2].for_servers(failed)
            if fp is not None:
                return fp
        return plan_failover(problem, placement, failed)

    def replan(
        self,
        problem: Problem,
        failed: frozenset[str],
        before: Placement,
        after: Placement,
    ) -> Placement:
        # replan_after takes failure domains. A failure of some servers of a domain: give
        # those servers a domain of their own (the survivors' problem is the same).
        doms = problem.domains()
        failed_doms = {problem.server(s).domain for s in failed}
        if all(set(doms[d]) <= failed for d in failed_doms):
            return replan_after(problem, sorted(failed_doms), before, self.method, self.options)
        taken = set(doms)
        renamed: dict[str, str] = {}
        for s in sorted(failed):
            name = f"{s}~failed"
            while name in taken:
                name += "~"
            taken.add(name)
            renamed[s] = name
        servers = [
            replace(s, failure_domain=renamed[s.id]) if s.id in renamed else s
            for s in problem.servers
        ]
        return replan_after(
            problem.with_servers(servers),
            sorted(renamed.values()),
            before,
            self.method,
            self.options,
        )

    def failback(self, problem: Problem, current: Placement) -> Migration:
        return failback(problem, current, method=self.method, options=self.options)


@dataclass(frozen=True, slots=True)
class _Usage:
    mem: dict[str, float]
    comp: dict[str, float]
    fcomp: dict[tuple[str, str], float]  # (failure domain, server) -> backup compute on failure
    cold: dict[tuple[str, str], float]  # (failure domain, server) -> cold memory on failure


class HomogeneousPolicy(Policy):
    """Primaries from the planner's stage 1; backups of the same variant, warm, cold or none."""

    def __init__(self, kind: Literal["none", "warm", "cold"], options: Options | None = None):
        self.kind = kind
        self.name = {"none": "none", "warm": "full-warm", "cold": "cold"}[kind]
        self.options = options
        self._initial: Placement | None = None

    # -- placement ---------------------------------------------------------------------------

    def initial(self, problem: Problem) -> Placement:
        primary, unplaced, _ = plan_primaries(problem, "lp", options=self.options)
        backups = self._protect(problem, primary, {})
        self._initial = Placement(
            primary=primary, backups=backups, unplaced=unplaced, solver=f"{self.name}:lp"
        )
        return self._initial

    def _usage(self, problem: Problem, primary: Mapping[str, Assign]) -> _Usage:
        mem = {s.id: 0.0 for s in problem.servers}
        comp = dict.fromkeys(mem, 0.0)
        for app, p in primary.items():
            c = problem.cost_on(p.variant, p.server) if p.server in mem else None
            if c is not None:
                mem[p.server] += c.memory_mb
                comp[p.server] += problem.app(app).rate_fps * c.latency_ms / 1000.0
        return _Usage(mem, comp, {}, {})

    def _protect(
        self,
        problem: Problem,
        primary: Mapping[str, Assign],
        keep: Mapping[str, Backup],
    ) -> dict[str, Backup]:
        """Backups of the same variant for apps in ``primary``, keeping the valid ones of
        ``keep``, adding the rest greedily (critical, then heavy apps first)."""
        if self.kind == "none":
            return {}
        u = self._usage(problem, primary)
        out: dict[str, Backup] = {}
        order = sorted(primary, key=lambda a: _priority(problem, a))
        for app in [a for a in order if a in keep] + [a for a in order if a not in keep]:
            p = primary[app]
            dom = problem.server(p.server).domain
            ap = problem.app(app)
            kept = keep.get(app)
            if kept is not None and kept.variant == p.variant and problem.has_server(kept.server):
                cands = [problem.server(kept.server)]  # stays where it is if it still fits
                cands += [s for s in problem.servers if s.id != kept.server]
            else:
                cands = list(problem.servers)
            best: tuple[float, int, str] | None = None
            for i, s in enumerate(cands):
                if s.domain == dom:
                    continue
                c = problem.cost_on(p.variant, s.id)
                if c is None or c.latency_ms > ap.slo_ms:
                    continue
                load = ap.rate_fps * c.latency_ms / 1000.0
                key = (dom, s.id)
                if self.kind == "warm":
                    if u.mem[s.id] + c.memory_mb > s.memory_mb + 1e-6:
                        continue
                    if u.comp[s.id] + u.fcomp.get(key, 0.0) + load > s.compute_budget + 1e-9:
                        continue
                    free = s.memory_mb - u.mem[s.id]
                else:  # cold: disk only; prefer where the memory is most likely free then
                    free = s.memory_mb - u.mem[s.id] - u.cold.get(key, 0.0) - c.memory_mb
                if i == 0 and kept is not None and s.id == kept.server:
                    best = (free, -i, s.id)
                    break
                if best is None or (free, -i) > (best[0], best[1]):
                    best = (free, -i, s.id)
            if best is None:
                continue
            sid = best[2]
            c = problem.cost_on(p.variant, sid)
            assert c is not None
            key = (dom, sid)
            load = ap.rate_fps * c.latency_ms / 1000.0
            if self.kind == "warm":
                u.mem[sid] += c.memory_mb
                u.fcomp[key] = u.fcomp.get(key, 0.0) + load
            else:
                u.cold[key] = u.cold.get(key, 0.0) + c.memory_mb
            out[app] = Backup(sid, p.variant, "warm" if self.kind == "warm" else "cold")
        return out

    # -- failure -----------------------------------------------------------------------------

    def failover(
        self, problem: Problem, placement: Placement, failed: frozenset[str]
    ) -> FailoverPlan:
        k = problem.knobs
        alive = {s.id: s for s in problem.servers if s.id not in failed}
        u = self._usage(problem, {a: p for a, p in placement.primary.items() if p.server in alive})
        for wb in placement.backups.values():
            if wb.loaded and wb.server in alive:
                c = problem.cost_on(wb.variant, wb.server)
                u.mem[wb.server] += c.memory_mb if c is not None else 0.0
        affected = {a: p.server for a, p in placement.primary.items() if p.server in failed}
        lost = tuple(
            sorted(
                a
                for a, b in placement.backups.items()
                if b.server in failed and a not in affected and a in placement.primary
            )
        )
        recoveries: dict[str, Recovery] = {}
        unrecoverable: dict[str, str] = {}
        clock: dict[str, float] = {}
        detect = k.detection_ms + k.reroute_ms
        for app in sorted(affected, key=lambda a: _priority(problem, a)):
            b = placement.backups.get(app)
            if b is None:
                unrecoverable[app] = "no backup"
                continue
            if b.server not in alive:
                unrecoverable[app] = f"its {b.kind} backup on {b.server} failed too"
                continue
            s = alive[b.server]
            c = problem.cost_on(b.variant, b.server)
            assert c is not None
            load = problem.app(app).rate_fps * c.latency_ms / 1000.0
            if u.comp[s.id] + load > s.compute_budget + 1e-9:
                unrecoverable[app] = f"no compute left on {s.id}"
                continue
            if b.kind == "warm":
                step = Step("promote", app, s.id, b.variant, est_ms=k.reroute_ms)
                mttr = detect
            else:
                if u.mem[s.id] + c.memory_mb > s.memory_mb + 1e-6:
                    unrecoverable[app] = f"no memory free on {s.id} to load its cold backup"
                    continue
                u.mem[s.id] += c.memory_mb
                clock[s.id] = clock.get(s.id, 0.0) + c.restore_ms
                step = Step("load", app, s.id, b.variant, est_ms=c.restore_ms)
                mttr = detect + clock[s.id]
            u.comp[s.id] += load
            acc = problem.variant(b.variant).accuracy
            recoveries[app] = Recovery(
                app=app,
                failed_server=affected[app],
                server=s.id,
                kind=b.kind,
                first_variant=b.variant,
                final_variant=b.variant,
                mttr_ms=mttr,
                accuracy_first=acc,
                accuracy_final=acc,
                steps=(step,),
            )
        doms = sorted({problem.server(s).domain for s in failed if problem.has_server(s)})
        return FailoverPlan(
            failed_servers=failed,
            domains=tuple(doms),
            recoveries=recoveries,
            unrecoverable=unrecoverable,
            affected=affected,
            lost_backups=lost,
        )

    def replan(
        self,
        problem: Problem,
        failed: frozenset[str],
        before: Placement,
        after: Placement,
    ) -> Placement:
        """Keep every app where the failover put it; protect the unprotected again."""
        survivors = problem.without(failed)
        backups = self._protect(survivors, after.primary, after.backups)
        return replace(after, backups=backups, solver=f"{self.name}:reprotect")

    def failback(self, problem: Problem, current: Placement) -> Migration:
        """Back to the initial primaries where their servers are alive, then re-protect."""
        init = self._initial
        if init is None:
            raise RuntimeError("failback before the initial placement")
        primary = dict(current.primary)
        for app, p in init.primary.items():
            if problem.has_server(p.server):
                primary[app] = p
        unplaced = {a: w for a, w in init.unplaced.items() if a not in primary}
        unplaced.update({a: w for a, w in current.unplaced.items() if a not in primary})
        keep = {a: b for a, b in init.backups.items() if a in primary}
        keep.update({a: b for a, b in current.backups.items() if a not in keep})
        backups = self._protect(problem, primary, keep)
        target = Placement(
            primary=primary, backups=backups, unplaced=unplaced, solver=f"{self.name}:failback"
        )
        return Migration(target, migration_steps(problem, current, target))


def make_policy(name: str, options: Options | None = None) -> Policy:
    if name in ("lp", "greedy"):
        method: Method = "lp" if name == "lp" else "greedy"
        return PlannerPolicy(method, options)
    if name == "none":
        return HomogeneousPolicy("none", options)
    if name == "full-warm":
        return HomogeneousPolicy("warm", options)
    if name == "cold":
        return HomogeneousPolicy("cold", options)
    raise PolicyError(f"unknown policy {name!r} (choose from {', '.join(POLICY_NAMES)})")


def parse_policies(text: str) -> tuple[str, ...]:
    """A comma-separated list of policy names ("all": every one), checked, in given order."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise PolicyError("no policy given")
    if names == ["all"]:
        return POLICY_NAMES
    bad = [n for n in names if n not in POLICY_NAMES]
    if bad:
        raise PolicyError(
            f"unknown policy {', '.join(map(repr, bad))} (choose from {', '.join(POLICY_NAMES)})"
        )
    return tuple(dict.fromkeys(names))
