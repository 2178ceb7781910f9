"""One simulation: every chosen policy through the chosen failure modes of one scenario.

Modes: ``sweep`` fails each server alone once from the initial plan (the headline analysis;
windows end at repair, no failback), ``random`` draws seeded Poisson failures of servers and
domains over a duration (with failback), ``trace`` replays explicit failures (with failback).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from coordinator.planner import Options, Placement, Problem, validate
from field_kit.simulate.engine import Engine, EngineSettings, RunResult
from field_kit.simulate.failures import Failure, FailureModel, sweep_cases
from field_kit.simulate.metrics import PolicyMetrics, Protection
from field_kit.simulate.policies import PlannerPolicy, Policy, make_policy
from field_kit.simulate.scenario import Scenario

MODES = ("sweep", "random", "trace")
# Progress: (what, done, total); called before the first and after each unit of work.
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    policies: tuple[str, ...]
    modes: tuple[str, ...] = ("sweep",)
    sweep_repair_ms: float = 30 * 60_000.0
    sweep_limit: int | None = None
    duration_h: float = 24.0 * 30
    failure_model: FailureModel = field(default_factory=FailureModel)
    max_failures: int | None = None
    replan_delay_ms: float = 500.0  # the coordinator's default replan_delay_s
    trace: tuple[Failure, ...] = ()
    options: Options | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "policies": list(self.policies),
            "modes": list(self.modes),
            "replan_delay_s": self.replan_delay_ms / 1000.0,
        }
        if "sweep" in self.modes:
            out["sweep"] = {
                "repair_s": self.sweep_repair_ms / 1000.0,
                "limit": self.sweep_limit,
            }
        if "random" in self.modes:
            out["random"] = {
                "duration_h": self.duration_h,
                "max_failures": self.max_failures,
                **self.failure_model.to_json(),
            }
        if "trace" in self.modes:
            out["trace"] = [f.to_json() for f in self.trace]
        return out


def _round(x: Any) -> Any:
    """Floats to 6 decimals (and tuples to lists) so that the JSON is stable and short."""
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_round(v) for v in x]
    return x


@dataclass(frozen=True, slots=True)
class PolicyResult:
    name: str
    protection: Protection
    initial_solver: str
    runs: Mapping[str, Sequence[RunResult]]  # mode -> runs (sweep: one per server)
    metrics: Mapping[str, PolicyMetrics]
    wall_s: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        prot = asdict(self.protection)
        prot["warm_share"] = self.protection.warm_share
        prot["reserve_share"] = self.protection.reserve_share
        out: dict[str, Any] = {"initial": {"solver": self.initial_solver, **prot}}
        for mode, m in self.metrics.items():
            block: dict[str, Any] = asdict(m)
            runs = self.runs[mode]
            if mode == "sweep":
                block["cases"] = [_case_json(r) for r in runs]
            else:
                block["failures_log"] = [_failure_json(f) for r in runs for f in r.failures]
                block["app_mean_accuracy"] = runs[0].app_mean_accuracy if runs else {}
            out[mode] = block
        return _round(out)  # type: ignore[no-any-return]


def _case_json(r: RunResult) -> dict[str, Any]:
    f = r.failures[0] if r.failures else None
    eps = r.episodes
    lost = sum(e.ref_integral - e.acc_integral for e in eps)
    ref = sum(e.ref_integral for e in eps)
    return {
        "failed": list(f.servers) if f else [],
        "affected": len(eps),
        "recovered": sum(e.mttr_ms is not None for e in eps),
        "recovered_by_failover": sum(e.by_failover for e in eps),
        "mttr_max_ms": max((e.mttr_ms for e in eps if e.mttr_ms is not None), default=None),
        "window_reduction_pct": 100.0 * lost / ref if ref else None,
        "unprotected_after_replan": f.unprotected_after_replan if f else None,
        "unplaced_after_replan": f.unplaced_after_replan if f else None,
        "migration_overflows": f.migration_overflows if f else 0,
        "invalid_plan": list(f.invalid_plan) if f else [],
    }


def _failure_json(f: Any) -> dict[str, Any]:
    return {
        "label": f.label,
        "servers": list(f.servers),
        "time_s": f.time_ms / 1000.0,
        "repair_at_s": f.repair_at_ms / 1000.0,
        "affected": f.affected,
        "recovered_by_failover": f.recovered_by_failover,
        "replanned": f.replanned,
        "unprotected_after_replan": f.unprotected_after_replan,
        "migration_overflows": f.migration_overflows,
        "invalid_plan": list(f.invalid_plan),
    }


@dataclass(frozen=True, slots=True)
class SimulationResult:
    scenario: Scenario
    config: SimulationConfig
    policies: Mapping[str, PolicyResult]
    random_failures: tuple[Failure, ...] = ()

    def goal(self) -> dict[str, Any]:
        """The project's bar: at a budget where full replication does not fit, lp recovers
        every app of each single-server failure with at most 0.6 % accuracy reduction, and
        beats greedy."""
        lp = self.policies.get("lp")
        gr = self.policies.get("greedy")
        if lp is None or "sweep" not in lp.metrics:
            return {"evaluated": False, "why": "needs the lp policy and the sweep mode"}
        m = lp.metrics["sweep"]
        out: dict[str, Any] = {
            "evaluated": True,
            "full_replication_fits": self.scenario.full_replication_fits(),
            "lp_recovers_all": m.recovery_rate == 1.0,
            "lp_recovery_rate": m.recovery_rate,
            "lp_window_reduction_pct": m.window.pct,
            "lp_after_failover_reduction_pct": m.after_failover.pct,
            "lp_end_of_window_reduction_pct": m.end_of_window.pct,
            "within_0_6_pct_window": m.window.pct is not None and m.window.pct <= 0.6,
            "within_0_6_pct_after_failover": (
                m.after_failover.pct is not None and m.after_failover.pct <= 0.6
            ),
        }
        if gr is not None and "sweep" in gr.metrics:
            g = gr.metrics["sweep"]
            out["greedy_recovery_rate"] = g.recovery_rate
            out["greedy_window_reduction_pct"] = g.window.pct
            out["greedy_after_failover_reduction_pct"] = g.after_failover.pct
            out["lp_mttr_p50_ms"] = m.mttr.p50
            out["greedy_mttr_p50_ms"] = g.mttr.p50
            out["lp_mttr_max_ms"] = m.mttr.max
            out["greedy_mttr_max_ms"] = g.mttr.max
            # What the fleet delivers, time-averaged over every app (a policy with better
            # primaries has more to lose, so its reduction against its own plan can be larger
            # while it still serves more accuracy).
            out["lp_fleet_accuracy"] = m.fleet_accuracy
            out["greedy_fleet_accuracy"] = g.fleet_accuracy
            out["best_fleet_reference"] = max(m.fleet_reference, g.fleet_reference)
            out["lp_serves_more_accuracy"] = m.fleet_accuracy > g.fleet_accuracy
            out["beats_greedy"] = (m.recovery_rate or 0.0, -(m.window.pct or 0.0)) > (
                g.recovery_rate or 0.0,
                -(g.window.pct or 0.0),
            )
        out["met"] = bool(
            out["lp_recovers_all"]
            and out["within_0_6_pct_window"]
            and out.get("beats_greedy", False)
            and not out["full_replication_fits"]
        )
        return _round(out)  # type: ignore[no-any-return]

    def to_json(self) -> dict[str, Any]:
        """Everything simulated, deterministic for a seed (no wall-clock times)."""
        out: dict[str, Any] = {
            "scenario": self.scenario.params(),
            "budget": self.scenario.budget_statement(),
            "config": self.config.to_json(),
            "goal": self.goal(),
            "policies": {n: p.to_json() for n, p in self.policies.items()},
        }
        if self.random_failures:
            out["random_failures"] = [f.to_json() for f in self.random_failures]
        return _round(out)  # type: ignore[no-any-return]

    def timings(self) -> dict[str, Any]:
        return {n: dict(p.wall_s) for n, p in self.policies.items()}


def _validator(policy: Policy) -> Callable[[Problem, Placement], list[str]] | None:
    return validate if isinstance(policy, PlannerPolicy) else None


class Simulation:
    def __init__(
        self,
        scenario: Scenario,
        config: SimulationConfig,
        progress: ProgressFn | None = None,
        *,
        seed: int = 0,
    ) -> None:
        self.scenario = scenario
        self.config = config
        self.progress = progress or (lambda what, done, total: None)
        self.seed = seed

    def run(self) -> SimulationResult:
        cfg = self.config
        problem = self.scenario.problem
        randoms: tuple[Failure, ...] = ()
        if "random" in cfg.modes:
            randoms = cfg.failure_model.draw(problem, cfg.duration_h, self.seed, cfg.max_failures)
        cases = (
            sweep_cases(problem, cfg.sweep_repair_ms, cfg.sweep_limit)
            if "sweep" in cfg.modes
            else ()
        )
        results: dict[str, PolicyResult] = {}
        for name in cfg.policies:
            results[name] = self._policy(name, problem, cases, randoms)
        return SimulationResult(self.scenario, cfg, results, randoms)

    def _policy(
        self,
        name: str,
        problem: Problem,
        cases: Sequence[Failure],
        randoms: Sequence[Failure],
    ) -> PolicyResult:
        cfg = self.config
        policy = make_policy(name, cfg.options)
        wall: dict[str, float] = {}
        t0 = time.perf_counter()
        initial = policy.initial(problem)
        wall["initial_s"] = time.perf_counter() - t0
        runs: dict[str, list[RunResult]] = {}
        val = _validator(policy)
        if "sweep" in cfg.modes:
            settings = EngineSettings(cfg.replan_delay_ms, failback=False, validate=val)
            out: list[RunResult] = []
            label = f"{name}: single-failure sweep"
            self.progress(label, 0, len(cases))
            for i, case in enumerate(cases):
                eng = Engine(problem, policy, initial, settings)
                out.append(eng.run([case], horizon_ms=case.repair_at_ms))
                self.progress(label, i + 1, len(cases))
            runs["sweep"] = out
        for mode, failures in (("random", randoms), ("trace", cfg.trace)):
            if mode not in cfg.modes:
                continue
            label = f"{name}: {mode} ({len(failures)} failures)"
            self.progress(label, 0, 1)
            settings = EngineSettings(cfg.replan_delay_ms, failback=True, validate=val)
            eng = Engine(problem, policy, initial, settings)
            horizon = cfg.duration_h * 3600_000.0 if mode == "random" else None
            runs[mode] = [eng.run(failures, horizon_ms=horizon)]
            self.progress(label, 1, 1)
        for rs in runs.values():
            for r in rs:
                for k, v in r.wall_s.items():
                    wall[k] = wall.get(k, 0.0) + v
        wall["total_s"] = time.perf_counter() - t0
        return PolicyResult(
            name=name,
            protection=Protection.of(problem, initial),
            initial_solver=initial.solver,
            runs=runs,
            metrics={mode: PolicyMetrics.of(rs) for mode, rs in runs.items()},
            wall_s=wall,
        )
