"""Profiles measured on the boards themselves, in place of the estimates a kit was staged with.

A kit is often planned before its boards exist, from a declared estimate of each device class
(catalog figures scaled). Once a board is installed it measures its class (``faillite profile``)
and its worker publishes the figures (``WorkerProfile``, retained). This book decides what the
coordinator plans with: the catalog it was given, where a class was measured in its own files;
otherwise the measured reports of that class's workers, the highest cost of each variant (a
class is planned for its slowest board). A report is refused, with its reason, when it speaks
for a class that is not its worker's or names a variant the catalog lacks.
"""

from __future__ import annotations

from collections.abc import Mapping

from faillite import messages
from faillite.catalog import Catalog, DeviceProfile


class ProfileBook:
    """Measured reports by worker, and the catalog they make."""

    def __init__(self, base: Catalog, classes: Mapping[str, str]) -> None:
        self.base = base
        self.catalog = base
        self._classes = dict(classes)  # worker -> its device class (the config's)
        self._variants = {v.name for v in base.variants()}
        self._reports: dict[str, messages.WorkerProfile] = {}
        # Classes measured in the coordinator's own files: what the operator gave is kept.
        self.given = {
            cls for v in base.variants() for cls, p in v.profiles.items() if not p.estimate
        }

    def report(self, profile: messages.WorkerProfile) -> str:
        """Take ``profile``; returns ``""`` when taken, else why it was not."""
        mine = self._classes.get(profile.worker)
        if mine is None:
            return f"worker {profile.worker!r} is not in the mesh config"
        if profile.device_class != mine:
            return f"device class {profile.device_class!r} is not the worker's ({mine!r})"
        unknown = sorted({c.variant for c in profile.costs} - self._variants)
        if unknown:
            return f"variants not in the catalog: {', '.join(unknown[:5])}"
        if mine in self.given:
            return f"device class {mine!r} was measured in this coordinator's files: kept"
        self._reports[profile.worker] = profile
        return ""

    def rebuild(self) -> list[str]:
        """The catalog from the reports taken; returns the device classes whose profiles
        changed (none: the catalog is the same)."""
        by_class: dict[str, dict[str, DeviceProfile]] = {}
        sources: dict[str, list[str]] = {}
        for worker in sorted(self._reports):
            p = self._reports[worker]
            costs = by_class.setdefault(p.device_class, {})
            sources.setdefault(p.device_class, []).append(f"{worker}: {p.source}"[:200])
            for c in p.costs:
                had = costs.get(c.variant)
                costs[c.variant] = DeviceProfile(
                    latency_ms=max(c.latency_ms, had.latency_ms if had else 0.0),
                    memory_mb=max(c.memory_mb, had.memory_mb if had else 0.0),
                    load_ms=max(c.load_ms, had.load_ms if had else 0.0),
                    first_inference_ms=max(
                        c.first_inference_ms, had.first_inference_ms if had else 0.0
                    ),
                )
        catalog = self.base
        for cls, costs in sorted(by_class.items()):
            source = "measured on the board by " + "; ".join(sources[cls])
            catalog = catalog.with_profiles(
                cls, {v: p.model_copy(update={"source": source}) for v, p in costs.items()}
            )
        changed = sorted(
            cls
            for cls in by_class
            if any(
                _costs(v.profile(cls)) != _costs(self.catalog.variant(v.name).profile(cls))
                for v in catalog.variants()
            )
        )
        self.catalog = catalog
        return changed


def _costs(p: DeviceProfile | None) -> tuple[float, ...] | None:
    if p is None:
        return None
    return (p.latency_ms, p.memory_mb, p.load_ms, p.first_inference_ms)
