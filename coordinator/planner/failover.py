"""Failover tables, background re-plans and failback, as pure functions over the dataclasses.

For every failure domain the table holds what to do when it fails: promote each hot or warm
backup (a hot one has run every frame already: it publishes at once),
load each cold backup progressively (first the variant that restores service soonest, then
upgrades one swap at a time up to the planned variant, then beyond it while the memory left
after the failure allows), and which apps cannot be recovered. At failure time the decision is
``table[domain]``: a dict lookup.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from coordinator.planner.placement import Assign, Backup, Kind, Placement, resident_mb
from coordinator.planner.problem import Problem
from coordinator.planner.solve import Method, Options, plan


@dataclass(frozen=True, slots=True)
class Step:
    """One action on one server. An upgrade loads ``variant`` beside ``replaces``, switches
    the app over, then releases ``replaces`` (``release_first``: no room for both, so release,
    then load: a short gap in service)."""

    action: Literal["promote", "load", "upgrade"]
    app: str
    server: str
    variant: str
    replaces: str | None = None
    release_first: bool = False
    est_ms: float = 0.0  # duration of this step: reroute, or load + first inference


@dataclass(frozen=True, slots=True)
class Recovery:
    app: str
    failed_server: str  # where its primary ran
    server: str  # where it is recovered
    kind: Kind
    first_variant: str  # serving from this one first
    final_variant: str  # after the upgrades
    mttr_ms: float  # estimate: detection + reroute (+ loads queued before it on that server)
    accuracy_first: float
    accuracy_final: float
    steps: tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class FailoverPlan:
    failed_servers: frozenset[str]
    domains: tuple[str, ...]
    recoveries: Mapping[str, Recovery]
    unrecoverable: Mapping[str, str]  # app -> why
    affected: Mapping[str, str]  # every app whose primary failed -> its primary server
    lost_backups: tuple[str, ...] = ()  # apps still served whose backup was on a failed server

    def steps(self) -> tuple[Step, ...]:
        """All steps in execution order: promotions, first loads, then upgrades."""
        steps = [s for r in self.recoveries.values() for s in r.steps]
        rank = {"promote": 0, "load": 1, "upgrade": 2}
        return tuple(sorted(steps, key=lambda s: rank[s.action]))

    def recovery_rate(self) -> float:
        return len(self.recoveries) / len(self.affected) if self.affected else 1.0

    def only(self, failed_servers: Iterable[str]) -> FailoverPlan:
        """The part of this plan for a failure of some of its servers only. The resources the
        plan reserved for the whole domain cover a subset, so the actions stay valid."""
        failed = frozenset(failed_servers)
        keep = {a for a, s in self.affected.items() if s in failed}
        return replace(
            self,
            failed_servers=failed,
            recoveries={a: r for a, r in self.recoveries.items() if a in keep},
            unrecoverable={a: w for a, w in self.unrecoverable.items() if a in keep},
            affected={a: s for a, s in self.affected.items() if a in keep},
        )


@dataclass(frozen=True)
class FailoverTable(Mapping[str, FailoverPlan]):
    """Failure domain -> precomputed plan; ``table[domain]`` is the decision."""

    plans: Mapping[str, FailoverPlan]
    domain_of: Mapping[str, str] = field(default_factory=dict)  # server -> failure domain

    def __getitem__(self, domain: str) -> FailoverPlan:
        return self.plans[domain]

    def __iter__(self) -> Iterator[str]:
        return iter(self.plans)

    def __len__(self) -> int:
        return len(self.plans)

    def for_servers(self, failed_servers: Iterable[str]) -> FailoverPlan | None:
        """The precomputed plan for these failed servers if they lie in one failure domain
        (None: several domains, a cascade the table does not cover; call plan_failover)."""
        failed = frozenset(failed_servers)
        doms = {self.domain_of.get(s) for s in failed}
        if len(doms) != 1:
            return None
        (dom,) = doms
        if dom is None or dom not in self.plans:
            return None
        p = self.plans[dom]
        return p if failed >= p.failed_servers else p.only(failed)


# -- building plans --------------------------------------------------------------------------


def _priority(problem: Problem, app: str) -> tuple[bool, float, str]:
    a = problem.app(app)
    return (not a.critical, -a.weight, app)


def plan_failover(
    problem: Problem, placement: Placement, failed_servers: Iterable[str]
) -> FailoverPlan:
    """What to do when ``failed_servers`` fail, given ``placement`` on ``problem`` (which still
    lists the failed servers). Works for any set; the table precomputes one per domain."""
    failed = frozenset(failed_servers)
    k = problem.knobs
    alive = [s for s in problem.servers if s.id not in failed]
    cap_mem = {s.id: s.memory_mb for s in alive}
    cap_comp = {s.id: s.compute_budget for s in alive}
    mem = dict.fromkeys(cap_mem, 0.0)
    comp = dict.fromkeys(cap_mem, 0.0)
    files = {s.id: set(s.models_on_disk) for s in alive}
    for s, load in placement.by_server().items():
        if s in files:
            files[s] |= load.files

    def cost(variant: str, server: str) -> tuple[float, float, float]:
        c = problem.cost_on(variant, server)
        if c is None:
            return math.inf, math.inf, math.inf
        return c.memory_mb, c.latency_ms, c.restore_ms

    def rate(app: str) -> float:
        return problem.app(app).rate_fps / 1000.0

    affected: dict[str, str] = {}
    for app, p in placement.primary.items():
        if p.server in failed:
            affected[app] = p.server
        elif p.server in mem:
            m, lat, _ = cost(p.variant, p.server)
            mem[p.server] += m
            comp[p.server] += rate(app) * lat
    for app, bk in placement.backups.items():
        if bk.loaded and bk.server in mem:
            mem[bk.server] += cost(bk.variant, bk.server)[0]
        if bk.kind == "hot" and bk.server in comp:
            comp[bk.server] += rate(app) * cost(bk.variant, bk.server)[1]  # runs already
    lost = tuple(
        sorted(
            a
            for a, b in placement.backups.items()
            if b.server in failed and a not in affected and a in placement.primary
        )
    )
    unrecoverable: dict[str, str] = {}
    current: dict[str, str] = {}  # app -> variant it serves now on its backup server
    steps: dict[str, list[Step]] = {}
    mttr: dict[str, float] = {}
    first: dict[str, str] = {}
    cold_queue: dict[str, list[str]] = {}
    detect = k.detection_ms + k.reroute_ms
    order = sorted(affected, key=lambda a: _priority(problem, a))
    for app in order:
        b = placement.backups.get(app)
        if b is None:
            unrecoverable[app] = "no backup"
        elif b.server not in mem:
            unrecoverable[app] = f"its {b.kind} backup on {b.server} failed too"
        elif b.loaded:
            if b.kind == "warm":
                comp[b.server] += rate(app) * cost(b.variant, b.server)[1]
            current[app] = first[app] = b.variant
            mttr[app] = problem.mttr_ms(b.variant, b.server, b.kind, app)
            steps[app] = [Step("promote", app, b.server, b.variant, est_ms=k.reroute_ms)]
        else:
            cold_queue.setdefault(b.server, []).append(app)

    def usable(app: str, server: str) -> list[str]:
        """Variants of the app's family on this server's disk that meet its SLO."""
        slo = problem.app(app).slo_ms
        return [
            v.name
            for v in problem.family(problem.app(app).family)
            if v.name in files[server] and cost(v.name, server)[1] <= slo
        ]

    for server, apps in cold_queue.items():
        clock = 0.0  # loads on one device run one after another
        for app in apps:
            b = placement.backups[app]
            options = usable(app, server)
            prefs = [v for v in (b.first, b.variant) if v is not None and v in options]
            rest = [v for v in options if v not in prefs]
            prefs += sorted(rest, key=lambda v: cost(v, server)[2])
            pick = None
            for v in prefs:
                m, lat, _ = cost(v, server)
                if (
                    mem[server] + m <= cap_mem[server] + 1e-6
                    and comp[server] + rate(app) * lat <= cap_comp[server] + 1e-9
                ):
                    pick = v
                    break
            if pick is None:
                unrecoverable[app] = f"no memory or compute left on {server} for its backup"
                continue
            m, lat, restore = cost(pick, server)
            mem[server] += m
            comp[server] += rate(app) * lat
            clock += restore
            current[app] = first[app] = pick
            mttr[app] = detect + clock
            steps[app] = [Step("load", app, server, pick, est_ms=restore)]

    def upgrade(app: str, server: str, target: str, *, allow_gap: bool) -> bool:
        cur = current[app]
        m_new, lat_new, restore = cost(target, server)
        m_cur, lat_cur, _ = cost(cur, server)
        new_comp = comp[server] - rate(app) * lat_cur + rate(app) * lat_new
        if new_comp > cap_comp[server] + 1e-9:
            return False
        if mem[server] + m_new <= cap_mem[server] + 1e-6:
            gap = False
        elif allow_gap and mem[server] - m_cur + m_new <= cap_mem[server] + 1e-6:
            gap = True
        else:
            return False
        mem[server] += m_new - m_cur
        comp[server] = new_comp
        steps[app].append(Step("upgrade", app, server, target, cur, gap, restore))
        current[app] = target
        return True

    recovered = [a for a in order if a in current]
    # Round 1: cold backups climb to the planned variant, one swap per on-disk step.
    for app in recovered:
        b = placement.backups[app]
        if current[app] == b.variant:
            continue
        acc_now = problem.variant(current[app]).accuracy
        acc_goal = problem.variant(b.variant).accuracy
        for v in usable(app, b.server):
            acc = problem.variant(v).accuracy
            if acc_now < acc < acc_goal:
                upgrade(app, b.server, v, allow_gap=False)
        upgrade(app, b.server, b.variant, allow_gap=True)
    # Round 2: beyond the plan, the best variant on disk that the memory left allows.
    for app in recovered:
        server = placement.backups[app].server
        acc_now = problem.variant(current[app]).accuracy
        better = [v for v in usable(app, server) if problem.variant(v).accuracy > acc_now]
        for v in sorted(better, key=lambda v: -problem.variant(v).accuracy):
            if upgrade(app, server, v, allow_gap=False):
                break

    recoveries = {
        app: Recovery(
            app=app,
            failed_server=affected[app],
            server=placement.backups[app].server,
            kind=placement.backups[app].kind,
            first_variant=first[app],
            final_variant=current[app],
            mttr_ms=mttr[app],
            accuracy_first=problem.variant(first[app]).accuracy,
            accuracy_final=problem.variant(current[app]).accuracy,
            steps=tuple(steps[app]),
        )
        for app in recovered
    }
    doms = sorted({problem.server(s).domain for s in failed if problem.has_server(s)})
    return FailoverPlan(
        failed_servers=failed,
        domains=tuple(doms),
        recoveries=recoveries,
        unrecoverable=unrecoverable,
        affected=affected,
        lost_backups=lost,
    )


def build_failover_table(problem: Problem, placement: Placement) -> FailoverTable:
    """One plan per failure domain: the decision at failure time is ``table[domain]``."""
    doms = problem.domains()
    return FailoverTable(
        plans={d: plan_failover(problem, placement, servers) for d, servers in doms.items()},
        domain_of={s.id: s.domain for s in problem.servers},
    )


# -- after the failure -----------------------------------------------------------------------


def replan_after(
    problem: Problem,
    failed_domains: Iterable[str],
    current: Placement | None = None,
    method: Method = "lp",
    options: Options | None = None,
) -> Placement:
    """The background re-plan on the survivors. With ``current``, apps stay where the failover
    put them (and backups where they are) unless moving gains more than the stickiness."""
    doms = problem.domains()
    failed = {s for d in failed_domains for s in doms.get(d, ())}
    survivors = problem.without(failed)
    sticky: dict[str, Assign] = {}
    sticky_b: dict[str, Backup] = {}
    if current is not None:
        fp = plan_failover(problem, current, failed)
        for app, p in current.primary.items():
            if p.server not in failed:
                sticky[app] = p
        for app, r in fp.recoveries.items():
            sticky[app] = Assign(r.server, r.final_variant)
        for app, b in current.backups.items():
            if b.server not in failed and app not in fp.recoveries:
                sticky_b[app] = b
    return plan(
        survivors,
        method,
        sticky=sticky,
        sticky_backups=sticky_b,
        allow_unplaced=True,
        options=options,
    )


@dataclass(frozen=True, slots=True)
class Move:
    """One failback step. Per app: load (or prestage a cold file), switch, then release."""

    action: Literal["prestage", "load", "switch", "release"]
    app: str
    server: str
    variant: str
    role: Literal["primary", "hot", "warm", "cold"]
    wave: int  # moves of one wave run together; waves one after another
    release_first: bool = False  # no room to load beside the old copy: a short gap


@dataclass(frozen=True, slots=True)
class Migration:
    placement: Placement
    moves: tuple[Move, ...]


def migration_steps(problem: Problem, current: Placement, target: Placement) -> tuple[Move, ...]:
    """Moves from ``current`` to ``target`` in waves: each wave loads what fits beside what is
    loaded now, switches, then releases the old copies, freeing memory for the next wave."""
    cap = {s.id: s.memory_mb for s in problem.servers}
    used = resident_mb(problem, current)

    def mem(variant: str, server: str) -> float:
        c = problem.cost_on(variant, server) if problem.has_server(server) else None
        return c.memory_mb if c is not None else 0.0

    # (app, role, new server, new variant, old server or None, old variant, old holds memory)
    todo: list[tuple[str, Literal["primary", "hot", "warm"], str, str, str | None, str, bool]] = []
    moves: list[Move] = []
    for app, new in target.primary.items():
        old = current.primary.get(app)
        if old != new:
            todo.append(
                (app, "primary", new.server, new.variant,
                 old.server if old else None, old.variant if old else "", old is not None)
            )  # fmt: skip
    for app, nb in target.backups.items():
        ob = current.backups.get(app)
        if ob == nb:
            continue
        old_warm = ob is not None and ob.loaded
        if nb.kind == "hot" or nb.kind == "warm":
            todo.append(
                (app, nb.kind, nb.server, nb.variant,
                 ob.server if ob else None, ob.variant if ob else "", old_warm)
            )  # fmt: skip
        else:
            for v in (nb.first, nb.variant):
                if v is not None:
                    moves.append(Move("prestage", app, nb.server, v, "cold", 0))
            if ob is not None and old_warm:
                moves.append(Move("release", app, ob.server, ob.variant, ob.kind, 0))
                if ob.server in used:
                    used[ob.server] -= mem(ob.variant, ob.server)
    for app, ob in current.backups.items():
        if app not in target.backups and ob.loaded:
            moves.append(Move("release", app, ob.server, ob.variant, ob.kind, 0))
            if ob.server in used:
                used[ob.server] -= mem(ob.variant, ob.server)

    wave = 0
    while todo:
        loaded, rest = [], []
        staged = dict(used)
        for item in todo:
            app, role, srv, var, osrv, ovar, holds = item
            need = mem(var, srv)
            if srv in staged and staged[srv] + need <= cap[srv] + 1e-6:
                staged[srv] += need
                loaded.append(item)
            else:
                rest.append(item)
        gap = False
        if not loaded:
            # Every load waits on memory: free the first load's server by releasing old copies
            # held there by moves still to come (those apps are down until their own load).
            srv0 = todo[0][2]
            need0 = mem(todo[0][3], srv0)
            for j, (app, role, srv, var, osrv, ovar, holds) in enumerate(todo):
                if srv0 in staged and staged[srv0] + need0 <= cap[srv0] + 1e-6:
                    break
                if holds and osrv == srv0:
                    moves.append(Move("release", app, osrv, ovar, role, wave, True))
                    used[osrv] -= mem(ovar, osrv)
                    staged[osrv] -= mem(ovar, osrv)
                    todo[j] = (app, role, srv, var, osrv, ovar, False)
            loaded, rest, gap = [todo[0]], todo[1:], True
        for app, role, srv, var, osrv, ovar, holds in loaded:
            if gap and holds and osrv == srv:
                moves.append(Move("release", app, osrv, ovar, role, wave, True))
                if osrv in used:
                    used[osrv] -= mem(ovar, osrv)
                holds = False
            moves.append(Move("load", app, srv, var, role, wave, gap))
            if srv in used:
                used[srv] += mem(var, srv)
            if role == "primary":
                moves.append(Move("switch", app, srv, var, role, wave))
            if holds and osrv is not None:
                moves.append(Move("release", app, osrv, ovar, role, wave))
                if osrv in used:
                    used[osrv] -= mem(ovar, osrv)
        todo = rest
        wave += 1
    return tuple(moves)


def failback(
    problem: Problem,
    current: Placement,
    *,
    target: Placement | None = None,
    method: Method = "lp",
    options: Options | None = None,
) -> Migration:
    """When servers come back (``problem`` lists them again): the new placement (``target``, or
    a re-plan that keeps apps where they are unless moving gains more than the stickiness)
    and the moves to get there progressively."""
    if target is None:
        target = plan(
            problem,
            method,
            sticky=current.primary,
            sticky_backups=current.backups,
            allow_unplaced=True,
            options=options,
        )
    return Migration(target, migration_steps(problem, current, target))
