"""Pace: how fast each worker serves now, against its profile, its own history and its peers.

A worker's *factor* is its measured per-frame service time (``AppStats.infer_ms``: the time its
inference thread spends on a frame, queueing and transit left out) over what the catalog's
profile says that variant costs on its device class; without a profile, over the best the
worker itself has shown for that variant. A factor of 3 means "serving three times slower than
this board can": a CPU hog, thermal throttling, a hung accelerator.

Slowness is only a gray failure when it is the worker's own: its factor must stand out from
its peers' (``outlier`` times their median, and at least ``slow_min``) for ``sustain_s``, and
it stays slow until it falls back under ``release`` times the peers (hysteresis). A slowness
every worker shares is overload (see :mod:`coordinator.shedding`), whatever its size; so is the
slowness of a worker with no peer to compare with.

Pure: fed heartbeats with their times, asked for verdicts at a time.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Final, Literal

from faillite import messages
from faillite.catalog import Catalog

Standing = Literal["ok", "busy", "slow"]
# A worker's factor is current for this long after its heartbeat said so.
FRESH_S: Final = 3.0


@dataclass(frozen=True, slots=True)
class PaceConfig:
    outlier: float = 3.0  # slow: this many times the peers' median factor ...
    slow_min: float = 2.0  # ... and at least this many times its own profile
    release: float = 2.0  # slow until under this many times the peers' median
    sustain_s: float = 2.0  # an outlier this long is slow


@dataclass
class _Pace:
    factor: float | None = None
    cpu_load: float = 0.0
    at: float = 0.0
    outlier_since: float | None = None
    slow: bool = False
    best_ms: dict[str, float] = field(default_factory=dict)  # variant -> own best infer_ms


class PaceJudge:
    def __init__(self, catalog: Catalog, cfg: PaceConfig | None = None) -> None:
        self.catalog = catalog
        self.cfg = cfg or PaceConfig()
        self._paces: dict[str, _Pace] = {}

    def expected_ms(self, variant: str, device_class: str) -> float | None:
        try:
            p = self.catalog.variant(variant).profile(device_class)
        except KeyError:
            return None
        return p.latency_ms if p is not None else None

    def observe(
        self,
        hb: messages.Heartbeat,
        variants: dict[str, str],
        device_class: str,
        now: float,
    ) -> None:
        """One heartbeat of a worker serving ``variants`` (app -> variant)."""
        pace = self._paces.setdefault(hb.worker, _Pace())
        pace.cpu_load = hb.cpu_load
        ratios = []
        for app, variant in variants.items():
            stats = hb.apps.get(app)
            if stats is None or stats.processed == 0 or stats.infer_ms <= 0:
                continue
            best = pace.best_ms.get(variant)
            if best is None or stats.infer_ms < best:
                pace.best_ms[variant] = stats.infer_ms
            ref = self.expected_ms(variant, device_class) or pace.best_ms[variant]
            ratios.append(stats.infer_ms / ref)
        if ratios:
            pace.factor = max(ratios)
            pace.at = now
        self._judge(hb.worker, now)

    def forget(self, worker: str) -> None:
        """A worker failed or restarted: what it showed says nothing of what comes next."""
        self._paces.pop(worker, None)

    def factor(self, worker: str, now: float) -> float | None:
        pace = self._paces.get(worker)
        if pace is None or pace.factor is None or now - pace.at > FRESH_S:
            return None
        return pace.factor

    def peers_median(self, worker: str, now: float) -> float | None:
        factors = [f for w in self._paces if w != worker and (f := self.factor(w, now)) is not None]
        return statistics.median(factors) if factors else None

    def _judge(self, worker: str, now: float) -> None:
        pace = self._paces[worker]
        f = self.factor(worker, now)
        ref = self.peers_median(worker, now)
        if f is None or ref is None:
            pace.outlier_since, pace.slow = None, False
            return
        base = max(ref, 1.0)
        if pace.slow:
            if f < self.cfg.release * base:
                pace.slow, pace.outlier_since = False, None
            return
        if f >= self.cfg.slow_min and f >= self.cfg.outlier * base:
            if pace.outlier_since is None:
                pace.outlier_since = now
            pace.slow = now - pace.outlier_since >= self.cfg.sustain_s
        else:
            pace.outlier_since = None

    def standing(self, worker: str, now: float) -> Standing:
        """``slow``: its own gray failure; ``busy``: slower than its profile, as its peers are
        (or with nobody to compare with); ``ok``."""
        pace = self._paces.get(worker)
        f = self.factor(worker, now)
        if pace is None or f is None:
            return "ok"
        if pace.slow:
            return "slow"
        return "busy" if f >= self.cfg.slow_min else "ok"

    def predicted_ms(self, worker: str, variant: str, device_class: str, now: float) -> float:
        """What ``variant`` would cost per frame on ``worker`` now: its profile (or its own best)
        times the worker's factor, or its host's load where it serves nothing to measure."""
        pace = self._paces.get(worker)
        expected = self.expected_ms(variant, device_class)
        if expected is None:
            expected = pace.best_ms.get(variant) if pace is not None else None
        if expected is None:
            return float("inf")  # never measured anywhere we know: no promise to make
        f = self.factor(worker, now)
        if f is None:
            f = max(1.0, pace.cpu_load) if pace is not None else 1.0
        return expected * max(1.0, f)

    def measured_ms(self, hb: messages.Heartbeat | None, app: str) -> float | None:
        stats = hb.apps.get(app) if hb is not None else None
        if stats is None or stats.processed == 0 or stats.infer_ms <= 0:
            return None
        return stats.infer_ms
