"""Discrete-event simulation of a fleet under failures (``faillite simulate``).

Builds a scenario from measured device profiles (:mod:`.scenario`), fails servers and failure
domains (:mod:`.failures`), lets each protection policy (:mod:`.policies`: none, full-warm,
cold, and the planner's greedy and lp) react in a heapq event loop (:mod:`.engine`), and reports
recovery rate, MTTR, accuracy against full replication and memory spent on protection
(:mod:`.metrics`, :mod:`.report`). :mod:`.cli` adds the ``simulate`` subcommand.
"""

from field_kit.simulate.engine import Engine, EngineSettings, Episode, RunResult
from field_kit.simulate.errors import (
    PolicyError,
    ScenarioError,
    SimulationError,
    TraceError,
)
from field_kit.simulate.failures import Failure, FailureModel, load_trace, parse_trace
from field_kit.simulate.metrics import PolicyMetrics, Protection
from field_kit.simulate.policies import POLICY_NAMES, Policy, make_policy
from field_kit.simulate.scenario import SCENARIOS, Scenario, SiteSpec, named
from field_kit.simulate.simulation import (
    Simulation,
    SimulationConfig,
    SimulationResult,
)

__all__ = [
    "POLICY_NAMES",
    "SCENARIOS",
    "Engine",
    "EngineSettings",
    "Episode",
    "Failure",
    "FailureModel",
    "Policy",
    "PolicyError",
    "PolicyMetrics",
    "Protection",
    "RunResult",
    "Scenario",
    "ScenarioError",
    "Simulation",
    "SimulationConfig",
    "SimulationError",
    "SimulationResult",
    "SiteSpec",
    "TraceError",
    "load_trace",
    "make_policy",
    "named",
    "parse_trace",
]
