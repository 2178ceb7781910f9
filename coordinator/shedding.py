"""Overload shedding: when a worker cannot keep its apps within their SLOs and nothing would
serve them better elsewhere, it sheds load in a stated order, one step at a time, and takes the
steps back, newest first, once the load has gone.

The order (:data:`LADDER`): frames of non-critical apps first (half their rate, the rest
skipped and counted by the worker), then smaller variants of non-critical apps, then of critical
ones, then non-critical apps paused, and last half the rate of critical apps. Critical apps are
never paused. A step that would change nothing on the worker (no non-critical app there, no
smaller variant on its disk) is passed over.

A worker is *strained* when the worst of its apps' recent end-to-end latency over its SLO
(``strain``) stays above 1 for ``sustain_s``; it is *calm* when it stays under ``calm`` for
``calm_s``. Each step waits ``sustain_s`` again before the next, so it can take effect. A step
taken back that has to be taken again soon after (the load was still there) doubles the calm
wait for that worker, up to ``max_calm_s``: no ping-pong between shedding and serving.

Pure: fed strains with their times, asked what is due at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

ShedAction = Literal["throttle", "downsize", "pause"]
# A throttled app is served at this share of its frame rate.
THROTTLE_SHARE: Final = 0.5


@dataclass(frozen=True, slots=True)
class ShedStep:
    action: ShedAction
    critical: bool  # which apps it applies to

    @property
    def name(self) -> str:
        return f"{self.action}_{'critical' if self.critical else 'noncritical'}"


LADDER: Final = (
    ShedStep("throttle", critical=False),
    ShedStep("downsize", critical=False),
    ShedStep("downsize", critical=True),
    ShedStep("pause", critical=False),
    ShedStep("throttle", critical=True),
)


@dataclass(frozen=True, slots=True)
class ShedConfig:
    sustain_s: float = 5.0  # strained this long: shed one more step
    calm: float = 0.6  # strain under this is calm ...
    calm_s: float = 10.0  # ... for this long: take one step back
    max_calm_s: float = 120.0
    relapse_s: float = 30.0  # strained again this soon after a step back: calm longer next time


@dataclass
class _Load:
    level: int = 0  # steps of LADDER taken (index of the next)
    taken: tuple[int, ...] = ()  # indexes of LADDER in force, in the order taken
    strained_since: float | None = None
    calm_since: float | None = None
    calm_s: float = 0.0
    relaxed_at: float | None = None


class Shedder:
    def __init__(self, cfg: ShedConfig | None = None) -> None:
        self.cfg = cfg or ShedConfig()
        self._loads: dict[str, _Load] = {}

    def _load(self, worker: str) -> _Load:
        load = self._loads.get(worker)
        if load is None:
            load = self._loads[worker] = _Load(calm_s=self.cfg.calm_s)
        return load

    def observe(self, worker: str, strain: float, now: float) -> None:
        """The worst latency / SLO of the apps ``worker`` serves, from its heartbeat."""
        load = self._load(worker)
        if strain > 1.0:
            load.calm_since = None
            if load.strained_since is None:
                load.strained_since = now
        else:
            load.strained_since = None
            if strain < self.cfg.calm:
                if load.calm_since is None:
                    load.calm_since = now
            else:
                load.calm_since = None

    def strained(self, worker: str, now: float) -> bool:
        """Strained for ``sustain_s``: shed more, or move away."""
        load = self._loads.get(worker)
        return (
            load is not None
            and load.strained_since is not None
            and now - load.strained_since >= self.cfg.sustain_s
        )

    def calmed(self, worker: str, now: float) -> bool:
        load = self._loads.get(worker)
        return (
            load is not None
            and bool(load.taken)
            and load.calm_since is not None
            and now - load.calm_since >= load.calm_s
        )

    def escalate(self, worker: str, now: float, applies: list[bool]) -> ShedStep | None:
        """Take the next step of :data:`LADDER` that ``applies`` (one flag per step) on this
        worker; None when every applicable step is taken. The strain is judged anew after."""
        load = self._load(worker)
        load.strained_since = now
        if load.relaxed_at is not None and now - load.relaxed_at < self.cfg.relapse_s:
            load.calm_s = min(2 * load.calm_s, self.cfg.max_calm_s)
        for i in range(load.level, len(LADDER)):
            if applies[i]:
                load.level = i + 1
                load.taken = (*load.taken, i)
                return LADDER[i]
        load.level = len(LADDER)
        return None

    def relax(self, worker: str, now: float) -> ShedStep | None:
        """Take back the newest step in force."""
        load = self._loads.get(worker)
        if load is None or not load.taken:
            return None
        i = load.taken[-1]
        load.taken = load.taken[:-1]
        load.level = i
        load.calm_since = now
        load.relaxed_at = now
        return LADDER[i]

    def steps(self, worker: str) -> tuple[ShedStep, ...]:
        load = self._loads.get(worker)
        return tuple(LADDER[i] for i in load.taken) if load is not None else ()

    def shedding(self) -> dict[str, tuple[ShedStep, ...]]:
        return {w: self.steps(w) for w, load in self._loads.items() if load.taken}

    def forget(self, worker: str) -> tuple[ShedStep, ...]:
        """The worker failed or restarted: its steps go with it (its apps move or start anew)."""
        load = self._loads.pop(worker, None)
        return tuple(LADDER[i] for i in load.taken) if load is not None else ()
