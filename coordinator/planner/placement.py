"""A placement (the planner's answer), its value, and :func:`validate`, the independent checker.

``validate`` recomputes every constraint from the plan itself, not from solver arrays, so tests
and the coordinator can trust a plan whatever method produced it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from coordinator.planner.problem import Problem

Kind = Literal["hot", "warm", "cold"]


class Assign(NamedTuple):
    """Where an app's primary runs: a (server, variant) pair."""

    server: str
    variant: str


@dataclass(frozen=True, slots=True)
class Backup:
    server: str
    variant: str
    kind: Kind
    # Cold only: a smaller variant also kept on disk there, loaded first on failover because it
    # restores service sooner; the ladder then upgrades to ``variant``. None: load ``variant``.
    first: str | None = None

    @property
    def loaded(self) -> bool:
        """Held in memory (hot or warm): promoted at once on failover."""
        return self.kind != "cold"


@dataclass(frozen=True, slots=True)
class StageReport:
    """How one stage was solved. Objective and bound exclude the preference bonuses."""

    stage: Literal["primaries", "backups"]
    method: str
    objective: float
    lp_bound: float | None  # valid upper bound on the objective (see solve.py), None: none known
    gap: float | None
    picked: str  # "lp-rounded", "greedy-incumbent", "restart", "milp", "greedy", "empty"
    build_s: float = 0.0
    solve_s: float = 0.0
    round_s: float = 0.0
    total_s: float = 0.0
    candidates: int = 0  # (app, variant, server[, kind]) options after pruning
    columns: int = 0  # LP columns actually built (after top-k and pricing)
    rows: int = 0
    lp_value: float | None = None  # the (restricted) LP's optimum, in score units
    # The same in the units the solver maximizes (objective + preference bonuses). Where the
    # LP spreads bonuses over fractions no integer plan can collect (scarce memory), the
    # objective bound above is loose and this gap tells how far the rounding is from the LP.
    score: float | None = None
    score_bound: float | None = None
    score_gap: float | None = None
    pricing_rounds: int = 0
    status: str = ""


@dataclass(frozen=True, slots=True)
class ServerLoad:
    serve: tuple[tuple[str, str], ...] = ()  # (app, variant) primaries
    warm: tuple[tuple[str, str], ...] = ()  # (app, variant) loaded backups
    cold: tuple[tuple[str, str], ...] = ()  # (app, variant) backups on disk only
    files: frozenset[str] = frozenset()  # variants whose files must be on disk
    hot: tuple[tuple[str, str], ...] = ()  # (app, variant) loaded backups running every frame


@dataclass(frozen=True, slots=True)
class Placement:
    primary: Mapping[str, Assign]
    backups: Mapping[str, Backup]
    unplaced: Mapping[str, str] = field(default_factory=dict)  # app -> why it has no primary
    objective: float = 0.0  # Σ w·acc(primary) + Σ w·(acc(backup) - λ·MTTR(backup))
    lp_bound: float | None = None
    gap: float | None = None
    solver: str = ""
    timings: Mapping[str, float] = field(default_factory=dict)
    stages: tuple[StageReport, ...] = ()

    def unprotected(self) -> tuple[str, ...]:
        """Apps with a primary and no backup."""
        return tuple(a for a in self.primary if a not in self.backups)

    def by_server(self) -> dict[str, ServerLoad]:
        serve: dict[str, list[tuple[str, str]]] = {}
        warm: dict[str, list[tuple[str, str]]] = {}
        cold: dict[str, list[tuple[str, str]]] = {}
        hot: dict[str, list[tuple[str, str]]] = {}
        files: dict[str, set[str]] = {}
        for app, p in self.primary.items():
            serve.setdefault(p.server, []).append((app, p.variant))
            files.setdefault(p.server, set()).add(p.variant)
        for app, b in self.backups.items():
            by_kind = {"hot": hot, "warm": warm, "cold": cold}[b.kind]
            by_kind.setdefault(b.server, []).append((app, b.variant))
            f = files.setdefault(b.server, set())
            f.add(b.variant)
            if b.first is not None:
                f.add(b.first)
        servers = set(serve) | set(warm) | set(cold) | set(hot)
        return {
            s: ServerLoad(
                tuple(serve.get(s, ())),
                tuple(warm.get(s, ())),
                tuple(cold.get(s, ())),
                frozenset(files.get(s, ())),
                tuple(hot.get(s, ())),
            )
            for s in sorted(servers)
        }


def resident_mb(problem: Problem, placement: Placement) -> dict[str, float]:
    """Memory each server of ``problem`` holds for a placement: primaries, hot and warm
    backups."""
    used = {s.id: 0.0 for s in problem.servers}

    def add(variant: str, server: str) -> None:
        c = problem.cost_on(variant, server) if server in used else None
        if c is not None:
            used[server] += c.memory_mb

    for p in placement.primary.values():
        add(p.variant, p.server)
    for b in placement.backups.values():
        if b.loaded:
            add(b.variant, b.server)
    return used


# -- value -----------------------------------------------------------------------------------


def primary_value(problem: Problem, app: str, a: Assign) -> float:
    ap = problem.app(app)
    return ap.weight * problem.variant(a.variant).accuracy


def backup_value(problem: Problem, app: str, b: Backup) -> float:
    """Weighted accuracy under failure minus the MTTR penalty (λ · weight · MTTR)."""
    ap = problem.app(app)
    # A cold ladder restores service with its first rung, then climbs to ``variant``.
    mttr = problem.mttr_ms(b.first or b.variant, b.server, b.kind, app)
    return ap.weight * (problem.variant(b.variant).accuracy - problem.knobs.mttr_weight * mttr)


def objective(
    problem: Problem, primary: Mapping[str, Assign], backups: Mapping[str, Backup]
) -> float:
    return sum(primary_value(problem, a, p) for a, p in primary.items()) + sum(
        backup_value(problem, a, b) for a, b in backups.items()
    )


# -- validation ------------------------------------------------------------------------------

_REL_TOL = 1e-6


def _over(used: float, cap: float) -> bool:
    return used > cap * (1 + _REL_TOL) + 1e-6


def validate(problem: Problem, placement: Placement) -> list[str]:
    """Every violated constraint of ``placement`` on ``problem``, as sentences (empty: valid).

    Physical limits only: memory, compute and disk at full capacity (``primary_share`` is a
    planning preference), normal operation and after the failure of each failure domain.
    """
    errors: list[str] = []
    apps = {a.id: a for a in problem.apps}
    for a in problem.apps:
        if a.id not in placement.primary and a.id not in placement.unplaced:
            errors.append(f"app {a.id}: no primary and not listed as unplaced")
    mem: dict[str, float] = {s.id: 0.0 for s in problem.servers}
    comp = dict.fromkeys(mem, 0.0)
    files: dict[str, set[str]] = {s: set() for s in mem}
    # Per (failure domain, server): memory of cold backups and compute of the backups that the
    # domain's failure would activate there (hot ones compute all the time: in ``comp``).
    fmem: dict[tuple[str, str], float] = {}
    fcomp: dict[tuple[str, str], float] = {}

    def check_variant(what: str, app: str, variant: str, server: str) -> float | None:
        """The variant's memory on ``server`` if usable by ``app`` there, else None."""
        if not problem.has_server(server):
            errors.append(f"{what} of app {app}: unknown or dead server {server}")
            return None
        try:
            v = problem.variant(variant)
        except KeyError:
            errors.append(f"{what} of app {app}: unknown variant {variant}")
            return None
        if v.family != apps[app].family:
            errors.append(f"{what} of app {app}: {variant} is not of family {apps[app].family}")
        c = problem.cost_on(variant, server)
        if c is None:
            errors.append(f"{what} of app {app}: no cost of {variant} on server {server}")
            return None
        if _over(c.latency_ms, apps[app].slo_ms):
            errors.append(
                f"{what} of app {app}: {variant} on {server} takes {c.latency_ms:.2f} ms > "
                f"SLO {apps[app].slo_ms:.2f} ms"
            )
        return c.latency_ms * apps[app].rate_fps / 1000.0

    for app, p in placement.primary.items():
        if app not in apps:
            errors.append(f"primary of unknown app {app}")
            continue
        load = check_variant("primary", app, p.variant, p.server)
        if load is None:
            continue
        c = problem.cost_on(p.variant, p.server)
        assert c is not None
        mem[p.server] += c.memory_mb
        comp[p.server] += load
        files[p.server].add(p.variant)
    warm_mem = dict.fromkeys(mem, 0.0)
    for app, b in placement.backups.items():
        if app not in apps:
            errors.append(f"backup of unknown app {app}")
            continue
        prim = placement.primary.get(app)
        if prim is None:
            errors.append(f"app {app}: backup without a primary")
            continue
        if b.kind not in ("hot", "warm", "cold"):
            errors.append(f"backup of app {app}: unknown kind {b.kind!r}")
            continue
        load = check_variant(f"{b.kind} backup", app, b.variant, b.server)
        if load is None or not problem.has_server(prim.server):
            continue
        dom = problem.server(prim.server).domain
        if problem.server(b.server).domain == dom:
            errors.append(
                f"backup of app {app} on {b.server} shares failure domain {dom} with its "
                f"primary on {prim.server}"
            )
        c = problem.cost_on(b.variant, b.server)
        assert c is not None
        if b.loaded:
            warm_mem[b.server] += c.memory_mb
        else:
            fmem[(dom, b.server)] = fmem.get((dom, b.server), 0.0) + c.memory_mb
        if b.kind == "hot":
            comp[b.server] += load
        else:
            fcomp[(dom, b.server)] = fcomp.get((dom, b.server), 0.0) + load
        files[b.server].add(b.variant)
        if b.first is not None:
            if b.kind != "cold":
                errors.append(f"{b.kind} backup of app {app} names a first variant")
            elif check_variant("first step of cold backup", app, b.first, b.server) is not None:
                files[b.server].add(b.first)

    for s in problem.servers:
        base = mem[s.id] + warm_mem[s.id]
        if _over(base, s.memory_mb):
            errors.append(
                f"server {s.id}: memory {base:.1f} MB (primaries + loaded backups) > "
                f"{s.memory_mb:.1f} MB"
            )
        if _over(comp[s.id], s.compute_budget):
            errors.append(
                f"server {s.id}: compute {comp[s.id]:.4f} > budget {s.compute_budget:.4f}"
            )
        disk = sum(
            problem.variant(v).file_size_mb for v in files[s.id] if v not in s.models_on_disk
        )
        if _over(disk, s.disk_mb):
            errors.append(f"server {s.id}: disk {disk:.1f} MB > {s.disk_mb:.1f} MB")
    for (dom, sid), m in fmem.items():
        s = problem.server(sid)
        used = mem[sid] + warm_mem[sid] + m
        if _over(used, s.memory_mb):
            errors.append(
                f"server {sid}: memory after failure of domain {dom} {used:.1f} MB > "
                f"{s.memory_mb:.1f} MB"
            )
    for (dom, sid), load in fcomp.items():
        s = problem.server(sid)
        used = comp[sid] + load
        if _over(used, s.compute_budget):
            errors.append(
                f"server {sid}: compute after failure of domain {dom} {used:.4f} > "
                f"budget {s.compute_budget:.4f}"
            )
    for app, why in placement.unplaced.items():
        if app in placement.primary:
            errors.append(f"app {app} is both placed and unplaced ({why})")
    if not math.isfinite(placement.objective):
        errors.append(f"objective is not finite: {placement.objective}")
    return errors
