"""Piecewise-constant accuracy of one app over simulated time (0 while it is down)."""

from __future__ import annotations

import bisect


class AccuracyTimeline:
    """Change points (time, accuracy); :meth:`integrate` gives accuracy-milliseconds."""

    __slots__ = ("_t", "_v")

    def __init__(self, t0: float, value: float) -> None:
        self._t: list[float] = [t0]
        self._v: list[float] = [value]

    def set(self, t: float, value: float) -> None:
        """From ``t`` on the app serves at ``value`` (times never go back)."""
        if t < self._t[-1]:
            raise ValueError(f"timeline goes back: {t} < {self._t[-1]}")
        if t == self._t[-1]:
            self._v[-1] = value
            if len(self._v) > 1 and self._v[-2] == value:
                self._t.pop()
                self._v.pop()
        elif value != self._v[-1]:
            self._t.append(t)
            self._v.append(value)

    def value_at(self, t: float) -> float:
        i = bisect.bisect_right(self._t, t) - 1
        return self._v[max(i, 0)]

    def integrate(self, t0: float, t1: float) -> float:
        """∫ accuracy dt over [t0, t1] (before the first point: its value)."""
        if t1 <= t0:
            return 0.0
        total = 0.0
        i = max(bisect.bisect_right(self._t, t0) - 1, 0)
        t = t0
        while t < t1:
            end = self._t[i + 1] if i + 1 < len(self._t) else t1
            end = min(end, t1)
            if end > t:
                total += self._v[i] * (end - t)
                t = end
            i += 1
            if i >= len(self._t):
                break
        if t < t1:
            total += self._v[-1] * (t1 - t)
        return total

    def changes(self) -> list[tuple[float, float]]:
        return list(zip(self._t, self._v, strict=True))
