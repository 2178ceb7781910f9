"""Where plans come from: the strategies the coordinator is given, not subclasses of it.

The core asks for a plan with a :class:`~coordinator.decisions.RequestPlan` holding a
:class:`PlanRequest` (the workers to plan on, what is on their disks, where apps run now);
the service runs the strategy on a thread of its own and hands the :class:`PlanResult` back as
a :class:`~coordinator.events.PlanReady`. Tests run the strategy in line.

- :class:`SolverPlanner`: the placement planner (``coordinator.planner``) with ``lp``, ``milp``
  or ``greedy``, plus the failover table of its plan. It adapts: the core watches the workers,
  fails over, re-plans and fails back (``coordinator.type: planner``).
- :class:`StaticPlanner`: what ``coordinator.assignments`` says, whoever is alive. It does not
  adapt: the core publishes it once and judges nobody (``coordinator.type: static``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from coordinator.detectors import DetectorConfig
from coordinator.planner import (
    Assign,
    Backup,
    FailoverTable,
    Knobs,
    Method,
    Placement,
    Problem,
    build_failover_table,
    plan,
    warm_up,
)
from faillite.catalog import Catalog
from faillite.config import MeshConfig


@dataclass(frozen=True, slots=True)
class PlanRequest:
    """What a plan is asked for, fixed when the core asks (the answer is dropped if the
    workers alive changed meanwhile)."""

    reason: str  # startup, takeover, failure, joined, recovered...
    alive: frozenset[str]
    models_on_disk: Mapping[str, tuple[str, ...]]  # alive worker -> variants on its disk
    # Where apps run now: a re-plan keeps them there unless moving gains enough.
    sticky: Mapping[str, Assign] | None = None
    sticky_backups: Mapping[str, Backup] | None = None
    # The catalog to plan with (measured profiles replace estimates as boards report them);
    # None: the planner's own.
    catalog: Catalog | None = None


@dataclass(frozen=True, slots=True)
class PlanResult:
    placement: Placement
    problem: Problem | None = None  # the problem it solves (failover and failback need it)
    table: FailoverTable | None = None  # per failure domain, what to do when it fails
    solve_ms: float = 0.0


class Planner(Protocol):
    """A source of plans. ``kind`` is what the coordinator's status says it runs;
    ``adaptive``: whether the coordinator watches workers and moves apps on failures."""

    @property
    def kind(self) -> str: ...

    @property
    def adaptive(self) -> bool: ...

    def plan(self, request: PlanRequest) -> PlanResult | None:
        """The plan for ``request``; None: no worker to plan on. May raise
        :class:`~coordinator.planner.ProblemError`."""

    def warm_up(self) -> None:
        """Load what planning needs (a solver takes a second to import), off the critical
        path: a standby does it while it waits, so its first plan after a takeover is fast."""


def knobs_for(mesh: MeshConfig) -> Knobs:
    """The planner's knobs of a mesh: expected detection from its fastest heartbeats."""
    base = min((w.heartbeat_interval_s for w in mesh.workers), default=0.1)
    fastest = DetectorConfig.of(mesh.coordinator, base)
    return Knobs(
        mttr_weight=mesh.coordinator.mttr_weight,
        detection_ms=(fastest.min_silence_s + fastest.confirm_s) * 1000,
    )


class SolverPlanner:
    """Primaries and backups from the placement planner, with their failover table."""

    kind = "planner"
    adaptive = True

    def __init__(
        self, mesh: MeshConfig, catalog: Catalog, method: Method, knobs: Knobs | None = None
    ) -> None:
        self.mesh = mesh
        self.catalog = catalog
        self.method: Method = method
        self.knobs = knobs if knobs is not None else knobs_for(mesh)

    def warm_up(self) -> None:
        warm_up(self.method)

    def plan(self, request: PlanRequest) -> PlanResult | None:
        disk = {w: set(vs) for w, vs in request.models_on_disk.items()}
        catalog = request.catalog if request.catalog is not None else self.catalog
        problem = Problem.from_config(
            self.mesh, catalog, set(request.alive), disk, knobs=self.knobs
        )
        if not problem.servers:
            return None
        kw: dict[str, Any] = {}
        if request.sticky is not None:
            kw["sticky"] = request.sticky
        if request.sticky_backups is not None:
            kw["sticky_backups"] = request.sticky_backups
        t0 = time.perf_counter()
        placement = plan(problem, self.method, **kw)
        table = build_failover_table(problem, placement)
        ms = (time.perf_counter() - t0) * 1000
        return PlanResult(placement, problem, table, ms)


class StaticPlanner:
    """The plan written in the config's ``coordinator.assignments``."""

    kind = "static"
    adaptive = False

    def __init__(self, mesh: MeshConfig, catalog: Catalog) -> None:
        self.mesh = mesh
        for worker, serves in mesh.coordinator.assignments.items():
            for s in serves:
                app = mesh.app(s.app)
                fam = catalog.family_of(s.variant)
                if fam.name != app.family:
                    raise ValueError(
                        f"static assignment {worker}/{s.app}: variant {s.variant!r} is of family "
                        f"{fam.name!r}, app {s.app!r} wants {app.family!r}"
                    )

    def warm_up(self) -> None:
        pass  # nothing to load

    def plan(self, request: PlanRequest) -> PlanResult:
        primary = {
            s.app: Assign(w.id, s.variant)
            for w in self.mesh.workers
            for s in self.mesh.coordinator.assignments.get(w.id, ())
        }
        return PlanResult(Placement(primary=primary, backups={}, solver="static"))


def planner_for(mesh: MeshConfig, catalog: Catalog) -> Planner:
    """The strategy the config asks for (``coordinator.type`` and ``method``)."""
    if mesh.coordinator.type == "planner":
        return SolverPlanner(mesh, catalog, mesh.coordinator.method)
    return StaticPlanner(mesh, catalog)
