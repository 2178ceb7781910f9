"""Small latency statistics shared by the sensor, the live view and the benchmarks."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Percentiles:
    n: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    def fmt(self, unit: str = "ms") -> str:
        if self.n == 0:
            return "n=0"
        return (
            f"n={self.n} mean={self.mean:.1f}{unit} p50={self.p50:.1f}{unit} "
            f"p90={self.p90:.1f}{unit} p99={self.p99:.1f}{unit} max={self.max:.1f}{unit}"
        )


def percentiles(values: list[float] | np.ndarray) -> Percentiles:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return Percentiles(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return Percentiles(
        int(arr.size), float(arr.mean()), float(p50), float(p90), float(p99), float(arr.max())
    )


class Window:
    """Thread-safe bounded window of samples (the most recent ``size``)."""

    def __init__(self, size: int = 10_000) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.total = 0

    def add(self, value: float) -> None:
        with self._lock:
            self._values.append(value)
            self.total += 1

    def snapshot(self) -> Percentiles:
        with self._lock:
            values = list(self._values)
        return percentiles(values)

    def values(self) -> list[float]:
        with self._lock:
            return list(self._values)

    def mean(self) -> float:
        with self._lock:
            return float(np.mean(self._values)) if self._values else 0.0


class RateMeter:
    """Events per second over a sliding time window."""

    def __init__(self, window_s: float = 2.0) -> None:
        self._times: deque[float] = deque()
        self._window = window_s
        self._lock = threading.Lock()

    def tick(self, now: float) -> None:
        with self._lock:
            self._times.append(now)
            self._trim(now)

    def rate(self, now: float) -> float:
        with self._lock:
            self._trim(now)
            return len(self._times) / self._window

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self._window:
            self._times.popleft()
