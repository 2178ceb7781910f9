"""The models a worker holds: load with a warm-up inference, unload, and what is on disk.

``loaded`` and ``loading`` (the loads in progress, for the heartbeat: a worker busy loading
what it was asked to is not a slow one) are replaced whole on every change, never mutated
(copy-on-write): the heartbeat thread reads them without a lock. Loads and unloads run on the
control thread. :attr:`in_use` is held by the inference thread while a frame runs, and taken to
close a model, so a model is never closed under a frame still using it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from faillite.badinput import BadInput
from faillite.catalog import Catalog
from faillite.log import get_logger
from workers.backends import Backend, BackendError, LoadedModel
from workers.events import EventSink

log = get_logger("worker")


class ModelCache:
    def __init__(
        self,
        backend: Backend,
        catalog: Catalog,
        models_dir: Path,
        *,
        bad: BadInput,
        emit: EventSink,
    ) -> None:
        self.backend = backend
        self.catalog = catalog
        self.models_dir = models_dir
        self.bad = bad
        self._emit = emit
        self.loaded: dict[str, LoadedModel] = {}
        self.loading: dict[str, float] = {}  # variant -> time.monotonic() its load began
        self.load_count = 0
        self.in_use = threading.Lock()

    def on_disk(self) -> tuple[str, ...]:
        """Catalog variants whose file (or this backend's form of it) is in the models dir."""
        suffix = self.backend.file_suffix
        return tuple(
            v.name
            for v in self.catalog.variants()
            if (self.models_dir / Path(v.file).with_suffix(suffix).name).is_file()
            or (self.models_dir / v.file).is_file()
        )

    def loading_state(self, now: float | None = None) -> tuple[tuple[str, ...], float]:
        """The variants loading now and how long (s) the oldest of those loads has run."""
        loading = self.loading  # one snapshot: the control thread replaces it whole
        if not loading:
            return (), 0.0
        t = time.monotonic() if now is None else now
        return tuple(loading), round(max(0.0, t - min(loading.values())), 3)

    def get(self, variant: str) -> LoadedModel | None:
        return self.loaded.get(variant)

    def load(self, variant: str) -> LoadedModel | None:
        """The loaded model of ``variant``, loading it first if needed; None if it cannot be
        (counted in ``bad`` and reported as an event)."""
        model = self.loaded.get(variant)
        if model is not None:
            return model
        try:
            v = self.catalog.variant(variant)
        except KeyError:
            self.bad.count("unknown_variant", f"variant {variant!r} not in catalog")
            self._emit("model_unknown", variant=variant)
            return None
        path = self.models_dir / v.file
        self.loading = {**self.loading, variant: time.monotonic()}
        try:
            loaded = self._load(variant, path)
            if loaded is None:
                return None
            model, load_ms, first_ms = loaded
            # Loaded before it stops loading: a heartbeat between sees it in both, never in
            # neither.
            self.loaded = {**self.loaded, variant: model}
        finally:
            self.loading = {k: t for k, t in self.loading.items() if k != variant}
        self.load_count += 1
        detail: dict[str, Any] = {
            "variant": variant,
            "load_ms": round(load_ms, 1),
            "first_inference_ms": round(first_ms, 1),
            "providers": list(model.providers),
        }
        log.info("model_loaded", **detail)
        self._emit("model_loaded", "", **detail)
        return model

    def _load(self, variant: str, path: Path) -> tuple[LoadedModel, float, float] | None:
        """``variant``'s model loaded and warmed up, with both times (ms); None if it could
        not be (counted, reported)."""
        t0 = time.perf_counter()
        try:
            model = self.backend.load(variant, path)
        except BackendError as exc:
            reason = "missing_model" if not path.exists() else "model_load_failed"
            self.bad.count(reason, str(exc), variant=variant)
            self._emit(reason, variant=variant, error=str(exc))
            return None
        load_ms = (time.perf_counter() - t0) * 1000
        # The first run pays for lazy initialization (arenas, kernel choice, TensorRT
        # context): do it now, so a warm backup's first real frame runs at full speed.
        t1 = time.perf_counter()
        try:
            model.infer(np.zeros(model.input_shape, dtype=np.float32))
        except BackendError as exc:
            self.bad.count("model_load_failed", str(exc), variant=variant)
            self._emit("model_load_failed", variant=variant, error=str(exc))
            model.close()
            return None
        return model, load_ms, (time.perf_counter() - t1) * 1000

    def keep_only(self, needed: set[str]) -> None:
        """Unload every model not in ``needed``."""
        for variant in [v for v in self.loaded if v not in needed]:
            remaining = dict(self.loaded)
            model = remaining.pop(variant)
            self.loaded = remaining
            with self.in_use:  # waits for a frame still running on it, at most one
                model.close()
            log.info("model_unloaded", variant=variant)
            self._emit("model_unloaded", variant=variant)

    def close_all(self) -> None:
        models, self.loaded = self.loaded, {}
        for m in models.values():
            m.close()
