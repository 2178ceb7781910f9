"""What the coordinator's core decides: typed instructions the service carries out in order.

- :class:`PublishState`: the retained state of a new generation (every worker's assignment,
  every app's route, the placement). The service stamps the time and publishes it after the
  leader's status, and publishes it again after every reconnect.
- :class:`EmitEvent`: one event on ``faillite/{mesh}/events/coordinator/{id}`` (and a log line).
- :class:`RequestPlan`: run the planner strategy, after ``delay_s``, and report back.
- :class:`Note`: a log line only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from coordinator.planning import PlanRequest
from faillite import messages


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """One worker's assignment, without its term, generation and time."""

    serve: tuple[messages.Serve, ...] = ()
    warm: tuple[str, ...] = ()
    disk: tuple[str, ...] = ()
    standby: tuple[messages.Serve, ...] = ()
    hot: tuple[messages.Serve, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteState:
    app: str
    worker: str  # "" when unserved or shed
    variant: str
    state: Literal["serving", "degraded", "unserved", "shed"]


@dataclass(frozen=True, slots=True)
class RetainedState:
    """Everything retained of one generation under one term."""

    term: int
    generation: int
    workers: tuple[tuple[str, WorkerPlan], ...]  # every worker of the mesh, in config order
    routes: tuple[RouteState, ...]  # served apps, then apps nobody serves
    entries: tuple[messages.PlacementEntry, ...]
    solver: str = "static"
    objective: float | None = None
    lp_bound: float | None = None
    gap: float | None = None

    def worker(self, worker_id: str) -> WorkerPlan:
        return dict(self.workers)[worker_id]

    def route(self, app: str) -> RouteState | None:
        return next((r for r in self.routes if r.app == app), None)


@dataclass(frozen=True, slots=True)
class PublishState:
    state: RetainedState
    reason: str


@dataclass(frozen=True, slots=True)
class EmitEvent:
    kind: str
    worker: str = ""
    app: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)
    # The service adds decision_ms (its time in the core for this input) and publish_ms (the
    # publish of the state decided with it): the core reads no clock.
    timed: bool = False


@dataclass(frozen=True, slots=True)
class RequestPlan:
    request: PlanRequest
    delay_s: float = 0.0  # after a failover: do not compete with the recovery for the CPU


@dataclass(frozen=True, slots=True)
class PublishObituary:
    """The retained offline status of a worker judged dead whose last-will never came (the
    broker that held its connection died with it): nothing stale stays retained."""

    status: messages.WorkerStatus


@dataclass(frozen=True, slots=True)
class Note:
    event: str
    fields: Mapping[str, Any] = field(default_factory=dict)


Decision = PublishState | EmitEvent | RequestPlan | PublishObituary | Note
