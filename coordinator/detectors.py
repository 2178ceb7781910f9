"""Failure detectors over heartbeats: silence (phi-accrual with a floor) and stalls.

Each detector is pure: it is fed observations with their arrival times and asked for a verdict
at a time, so tests drive it with synthetic clocks and the coordinator with the monotonic one.

- :class:`SilenceDetector`: phi-accrual (Hayashibara et al.) over heartbeat inter-arrival
  times, with a hard floor (never suspect before ``min_silence_s``) and a ceiling (always
  suspect after ``max_silence_s``), confirmed over ``confirm_s`` so one late heartbeat on a
  jittery WiFi link is not a failure.
- :class:`ProgressDetector`: heartbeats that keep coming while frames wait and nothing is
  processed: a hung GPU or a stuck thread (gray failure).

Latency over SLO is not judged here: :mod:`coordinator.shedding` (overload) and
:mod:`coordinator.pace` (a worker slow on its own) decide what it calls for.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from faillite.config import CoordinatorConfig


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    heartbeat_interval_s: float = 0.1
    phi_threshold: float = 8.0
    min_silence_s: float = 0.4  # floor: below this silence, never suspect
    max_silence_s: float = 1.0  # ceiling: past this, always suspect
    confirm_s: float = 0.05  # a suspicion must hold this long to become a failure
    window: int = 100  # inter-arrival samples kept
    stall_s: float = 1.0  # frames waiting, no progress for this long: stalled
    slo_sustain_s: float = 5.0
    # A worker loading a variant it was told to is not judged stalled for this long.
    load_timeout_s: float = 30.0

    @classmethod
    def for_interval(cls, interval_s: float, **overrides: float) -> DetectorConfig:
        """Defaults scaled to a heartbeat interval (100 ms LAN, 500 ms WiFi kits...)."""
        base = {
            "heartbeat_interval_s": interval_s,
            "min_silence_s": 4.0 * interval_s,
            "max_silence_s": 10.0 * interval_s,
            "confirm_s": 0.5 * interval_s,
            "stall_s": max(1.0, 10.0 * interval_s),
        }
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]

    @classmethod
    def of(cls, c: CoordinatorConfig, interval_s: float) -> DetectorConfig:
        """The knobs of a mesh's coordinator config for a worker beating every ``interval_s``."""
        return cls(
            heartbeat_interval_s=interval_s,
            phi_threshold=c.phi_threshold,
            min_silence_s=c.min_silence_intervals * interval_s,
            max_silence_s=c.max_silence_intervals * interval_s,
            confirm_s=c.confirm_intervals * interval_s,
            stall_s=c.stall_s,
            slo_sustain_s=c.slo_sustain_s,
            load_timeout_s=c.load_timeout_s,
        )


# A worker's host this busy (load average per CPU) gets its silence bounds stretched this much
# at most: a starved heartbeat thread is late, not dead.
MAX_LOAD_STRETCH = 3.0


class SilenceDetector:
    """Phi-accrual suspicion of one worker from heartbeat arrival times.

    The floor and the ceiling stretch with the load the worker's host reports (its heartbeats'
    ``cpu_load``, up to :data:`MAX_LOAD_STRETCH`): on a busy board a heartbeat thread waits
    for the CPU, and that wait is no failure (Lifeguard's local health, from the other side)."""

    def __init__(self, cfg: DetectorConfig) -> None:
        self.cfg = cfg
        self.stretch = 1.0
        self._intervals: deque[float] = deque(maxlen=cfg.window)
        self.last_arrival: float | None = None
        self._suspected_since: float | None = None

    def heartbeat(self, now: float) -> None:
        if self.last_arrival is not None:
            gap = now - self.last_arrival
            if gap > 0:
                self._intervals.append(gap)
        self.last_arrival = now
        self._suspected_since = None

    def restart(self, now: float) -> None:
        """Start the silence over without learning from the gap (our own link was down)."""
        self.last_arrival = now
        self._suspected_since = None

    def phi(self, now: float) -> float:
        """-log10 of the probability that a heartbeat this late is still to come."""
        if self.last_arrival is None:
            return 0.0
        silence = now - self.last_arrival
        n = len(self._intervals)
        interval = self.cfg.heartbeat_interval_s
        mean = sum(self._intervals) / n if n else interval
        var = sum((x - mean) ** 2 for x in self._intervals) / n if n > 1 else 0.0
        # A floor on the deviation: loopback heartbeats are so regular that any scheduling
        # hiccup would otherwise look infinitely unlikely.
        std = max(math.sqrt(var), 0.1 * mean, 0.01)
        y = (silence - mean) / std
        # Logistic approximation of the normal CDF tail (as in Akka's phi-accrual).
        e = math.exp(-y * (1.5976 + 0.070566 * y * y))
        p_later = e / (1.0 + e) if silence > mean else 1.0 - 1.0 / (1.0 + e)
        return -math.log10(max(p_later, 1e-300))

    def silence(self, now: float) -> float:
        return 0.0 if self.last_arrival is None else now - self.last_arrival

    def load(self, cpu_load: float) -> None:
        """The host's load average per CPU, from the worker's latest heartbeat."""
        self.stretch = min(max(1.0, cpu_load), MAX_LOAD_STRETCH)

    def suspected(self, now: float) -> bool:
        s = self.silence(now)
        if self.last_arrival is None or s < self.cfg.min_silence_s * self.stretch:
            return False
        return s >= self.cfg.max_silence_s * self.stretch or self.phi(now) >= self.cfg.phi_threshold

    def failed(self, now: float) -> bool:
        """Suspected continuously for ``confirm_s``."""
        if not self.suspected(now):
            self._suspected_since = None
            return False
        if self._suspected_since is None:
            self._suspected_since = now
        return now - self._suspected_since >= self.cfg.confirm_s


# A stall must last at least this many frames at the worker's own pace (a full batch) ...
STALL_PACE_FRAMES = 8
# ... and is never given more than this many times stall_s.
STALL_MAX_FACTOR = 10.0


class ProgressDetector:
    """No inference progress while frames wait, with heartbeats still arriving.

    A worker loading a variant (it says so in its heartbeats, with how long the load has run)
    does what it was told: its progress clock starts over while the load runs, up to
    ``load_timeout_s`` (a load that never ends is a failure too).

    A worker that is merely slow makes progress batch by batch: a batch of frames at its own
    measured per-frame time (``frame_s``, from its heartbeats) may take longer than ``stall_s``
    without anything being stuck. The bound is therefore at least :data:`STALL_PACE_FRAMES`
    frames at that pace (at most :data:`STALL_MAX_FACTOR` times ``stall_s``); a hung worker's
    pace is the one it had before it hung, so a hang is still caught at ``stall_s``."""

    def __init__(self, cfg: DetectorConfig) -> None:
        self.cfg = cfg
        self._processed = -1
        self._received = -1
        self._since: float | None = None  # when frames started waiting without progress
        self._bound_s = cfg.stall_s

    def heartbeat(
        self,
        now: float,
        received: int,
        processed: int,
        queue_depth: int,
        *,
        loading_s: float = 0.0,
        frame_s: float = 0.0,
    ) -> None:
        self._bound_s = min(
            max(self.cfg.stall_s, STALL_PACE_FRAMES * frame_s),
            STALL_MAX_FACTOR * self.cfg.stall_s,
        )
        progressed = processed != self._processed
        waiting = queue_depth > 0 or received > self._received > -1
        loading = 0.0 < loading_s <= self.cfg.load_timeout_s
        if progressed or not waiting or loading:
            self._since = None
        elif self._since is None:
            self._since = now
        self._processed, self._received = processed, received

    def restart(self) -> None:
        self._processed = self._received = -1
        self._since = None

    def stalled(self, now: float) -> bool:
        return self._since is not None and now - self._since >= self._bound_s
