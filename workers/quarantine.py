"""Poison streams: a camera whose frames stall the worker is the camera's fault, not the worker's.

The frame-cost check (:func:`faillite.envelope.check_image`) refuses what is known to be
expensive before it is decoded. What still costs far more than its camera's frames usually do
(a decoder path nobody foresaw) is judged here, after the fact, per camera: a frame that took
more than ``factor`` times its camera's typical decode, and more than ``floor_ms``, puts the
camera in quarantine: its frames are dropped unread (counted ``quarantined``) for ``base_s``,
twice as long at each new offence up to ``max_s``, forgiven after ``forgive_s`` clean. The
worker keeps serving every other camera's apps, so nothing fails it over for this camera, and
it never spends a second poison frame's time while the quarantine lasts.

Thread-safe: the inference side reports decodes, the network thread asks before queueing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from faillite.config import QuarantineConfig


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A camera put in quarantine now, and why."""

    sensor: str
    cost_ms: float
    typical_ms: float
    for_s: float
    offences: int


@dataclass(slots=True)
class _Stream:
    typical_ms: float | None = None
    until: float = 0.0
    offences: int = 0
    last_offence: float = field(default=-1e18)


class StreamQuarantine:
    def __init__(self, cfg: QuarantineConfig | None = None) -> None:
        self.cfg = cfg or QuarantineConfig()
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()

    def admits(self, sensor: str, now: float) -> bool:
        """Whether a frame of ``sensor`` may be queued at ``now`` (monotonic seconds)."""
        with self._lock:
            s = self._streams.get(sensor)
            return s is None or now >= s.until

    def observe(self, sensor: str, cost_ms: float, now: float) -> Quarantined | None:
        """A frame of ``sensor`` took ``cost_ms`` to decode; returns the quarantine it earned,
        if it did."""
        cfg = self.cfg
        with self._lock:
            s = self._streams.setdefault(sensor, _Stream())
            typical = s.typical_ms
            limit = cfg.floor_ms if typical is None else max(cfg.floor_ms, cfg.factor * typical)
            if cost_ms > limit:
                if now - s.last_offence > cfg.forgive_s:
                    s.offences = 0
                s.offences += 1
                s.last_offence = now
                for_s = min(cfg.max_s, cfg.base_s * 2 ** (s.offences - 1))
                s.until = now + for_s
                return Quarantined(sensor, cost_ms, typical or 0.0, for_s, s.offences)
            # Only frames that passed feed what is typical: a poison stream cannot raise it.
            s.typical_ms = (
                cost_ms if typical is None else (1 - cfg.alpha) * typical + cfg.alpha * cost_ms
            )
            return None

    def quarantined(self, now: float) -> dict[str, float]:
        """Cameras in quarantine at ``now``, and the seconds each has left."""
        with self._lock:
            return {k: s.until - now for k, s in self._streams.items() if now < s.until}
