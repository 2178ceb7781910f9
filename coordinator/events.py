"""What the coordinator's core is told: typed observations, each with its time.

``now`` is the monotonic clock when it was observed (detectors, timers, ladders and failback
measure with it); ``ts`` the wall clock of the same instant (what published events report).
The service stamps both as a message arrives or a timer fires; tests stamp them with a fake
clock. Nothing in the core reads a clock of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.planning import PlanRequest, PlanResult
from faillite import messages


@dataclass(frozen=True, slots=True)
class Observed:
    now: float  # monotonic seconds
    ts: float  # seconds since the Unix epoch


# -- leadership ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TermAcquired(Observed):
    """We lead under ``term`` (its status is out): plan, or keep what a predecessor left."""

    term: int


@dataclass(frozen=True, slots=True)
class SteppedDown(Observed):
    """A successor leads under a higher term: decide nothing more."""

    successor: str
    term: int


@dataclass(frozen=True, slots=True)
class InheritedPlacement(Observed):
    """The retained placement of another term: a successor keeps apps where they are."""

    placement: messages.Placement


# -- workers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerBirth(Observed):
    status: messages.WorkerStatus  # state online


@dataclass(frozen=True, slots=True)
class WorkerOffline(Observed):
    """A graceful stop, or a last-will (of this incarnation or a replaced one)."""

    status: messages.WorkerStatus  # state offline
    retained: bool = False  # delivered on subscribe: what the broker kept, not news


@dataclass(frozen=True, slots=True)
class ProfileReported(Observed):
    """A worker's measured profile of its device class (retained: it may come before its
    birth, or from an incarnation long gone: the figures are the board's, not the process's)."""

    profile: messages.WorkerProfile


@dataclass(frozen=True, slots=True)
class HeartbeatSeen(Observed):
    """Liveness, progress counters and per-app latency samples of one worker."""

    heartbeat: messages.Heartbeat


@dataclass(frozen=True, slots=True)
class ResultSeen(Observed):
    """A result of ``app`` reached us on the topic only ``worker`` may write: an outcome, the
    evidence of liveness a worker cannot give by beating alone."""

    app: str
    worker: str
    incarnation: str


@dataclass(frozen=True, slots=True)
class Tick(Observed):
    """Time passes: silence and stall verdicts, startup, ladders, failback, SLO, probation."""

    # How long the broker has sent us nothing at all (our client pings a quiet one): while
    # it is silent too, every worker's silence may be the broker's, not the worker's.
    link_quiet_s: float = 0.0


@dataclass(frozen=True, slots=True)
class BrokerHeard(Observed):
    """The broker answered the ping a last-will's arrival sent: it lived on after the will."""


@dataclass(frozen=True, slots=True)
class LinkDown(Observed):
    """Our own broker connection dropped: every silence is ours, judge nobody."""


@dataclass(frozen=True, slots=True)
class LinkUp(Observed):
    """Connected again: silences start over, workers get the reconnect grace."""


# -- planning --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanReady(Observed):
    request: PlanRequest
    result: PlanResult | None  # None: no worker to plan on


@dataclass(frozen=True, slots=True)
class PlanFailed(Observed):
    request: PlanRequest
    error: str


Event = (
    TermAcquired
    | SteppedDown
    | InheritedPlacement
    | WorkerBirth
    | WorkerOffline
    | ProfileReported
    | HeartbeatSeen
    | ResultSeen
    | Tick
    | BrokerHeard
    | LinkDown
    | LinkUp
    | PlanReady
    | PlanFailed
)
