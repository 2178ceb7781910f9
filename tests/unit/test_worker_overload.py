"""What a worker tells the coordinator about load (issue 20), without a broker or a process:
its own service time per frame (``infer_ms``), frames shed for ``max_fps``, loads in progress
and the host's CPU load."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from faillite import log as flog
from faillite import messages
from faillite.badinput import BadInput
from faillite.catalog import Catalog
from faillite.config import MeshConfig
from workers import counters as counters_mod
from workers.backends import Backend, BackendError, LoadedModel
from workers.counters import Counters, cpu_load, service_ms
from workers.frame_queue import FrameQueues
from workers.model_cache import ModelCache
from workers.serving import RateGate, Serving, ServingTable

L0, L1 = "efficientnet_lite0", "efficientnet_lite1"
MS = 1_000_000  # ns
T0 = 10**15  # a monotonic clock far from 0


class FakeModel(LoadedModel):
    def __init__(self, variant: str, *, warmup_fails: bool = False) -> None:
        self.variant = variant
        self.providers = ("Fake",)
        self.input_shape = (1, 3, 8, 8)
        self.warmup_fails = warmup_fails
        self.closed = False

    def infer(self, batch: Any) -> Any:
        if self.warmup_fails:
            raise BackendError("warm-up failed")
        return np.zeros((batch.shape[0], 1000), np.float32)

    def close(self) -> None:
        self.closed = True


class BlockingBackend(Backend):
    """A backend whose loads wait for :attr:`release`, after saying they started."""

    type = "fake"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail: Exception | None = None
        self.warmup_fails = False
        self.models: list[FakeModel] = []

    def devices(self) -> tuple[str, ...]:
        return ("Fake",)

    def load(self, variant: str, path: Path) -> LoadedModel:
        self.started.set()
        assert self.release.wait(10), "the test never released the load"
        if self.fail is not None:
            raise self.fail
        model = FakeModel(variant, warmup_fails=self.warmup_fails)
        self.models.append(model)
        return model


def _cache(catalog: Catalog, backend: Backend) -> ModelCache:
    return ModelCache(
        backend, catalog, Path("/nonexistent"), bad=BadInput(), emit=lambda *a, **k: None
    )


def _heartbeat(c: Counters, apps: tuple[str, ...], **kw: Any) -> messages.Heartbeat:
    beat = c.heartbeat(
        worker="w1",
        incarnation="i",
        seq=1,
        apps=apps,
        dropped={},
        queue_depth=0,
        rss_mb=0.0,
        loaded=(),
        generation=1,
        errors={},
        **kw,
    )
    return messages.decode(messages.Heartbeat, messages.encode(beat))  # what the coordinator reads


# -- counters ----------------------------------------------------------------------------------


def test_infer_ms_is_the_mean_service_time_over_the_latency_window() -> None:
    c = Counters()
    c.processed("a1", total_ms=100.0, ts=1.0, published=True, infer_ms=10.0)
    c.processed("a1", total_ms=300.0, ts=2.0, published=True, infer_ms=30.0)
    c.processed("a2", total_ms=50.0, ts=3.0, published=True, infer_ms=5.0)
    hb = _heartbeat(c, ("a1", "a2", "a3"))
    assert (hb.apps["a1"].latency_ms, hb.apps["a1"].infer_ms) == (200.0, 20.0)
    assert (hb.apps["a2"].latency_ms, hb.apps["a2"].infer_ms) == (50.0, 5.0)
    assert hb.apps["a3"].infer_ms == 0.0  # nothing served yet
    # Same window as latency_ms: the oldest results leave both means together.
    for _ in range(counters_mod.LATENCY_WINDOW):
        c.processed("a1", total_ms=80.0, ts=4.0, published=True, infer_ms=8.0)
    hb = _heartbeat(c, ("a1",))
    assert (hb.apps["a1"].latency_ms, hb.apps["a1"].infer_ms) == (80.0, 8.0)


def test_shed_frames_are_counted_per_app_and_never_as_received() -> None:
    c = Counters()
    c.received("a1")
    for _ in range(3):
        c.shed("a1")
    c.shed("a2")
    hb = _heartbeat(c, ("a1", "a2"))
    assert hb.frames_received == 1
    assert (hb.apps["a1"].received, hb.apps["a1"].shed) == (1, 3)
    assert (hb.apps["a2"].received, hb.apps["a2"].shed) == (0, 1)


def test_heartbeat_carries_loading_and_cpu_load() -> None:
    hb = _heartbeat(Counters(), (), loading=(L1,), loading_s=1.25, cpu_load=0.5)
    assert (hb.loading, hb.loading_s, hb.cpu_load) == ((L1,), 1.25, 0.5)
    idle = _heartbeat(Counters(), ())
    assert (idle.loading, idle.loading_s, idle.cpu_load) == ((), 0.0, 0.0)


def test_service_time_shares_a_batch_inference_between_its_frames() -> None:
    lat = messages.Latency(
        queue_ms=500.0, decode_ms=2.0, preprocess_ms=1.0, inference_ms=40.0, total_ms=900.0
    )
    assert service_ms(lat, 1) == 43.0  # queue wait and transit are left out
    assert service_ms(lat, 4) == 13.0  # one frame's share of a batch of four
    assert service_ms(lat, 4, held_ms=500.0) == 513.0  # a drill's slow fault is service time
    assert service_ms(lat, 0) == 43.0


def test_cpu_load_is_the_load_average_per_usable_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 9.0, 9.0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert cpu_load() == 0.75
    monkeypatch.setattr(os, "getloadavg", lambda: (2.0 / 3.0, 0.0, 0.0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert cpu_load() == 0.67  # rounded to 2 decimals

    def unavailable() -> tuple[float, float, float]:
        raise OSError("no load average here")

    monkeypatch.setattr(os, "getloadavg", unavailable)
    assert cpu_load() == 0.0


# -- model cache: loads in progress --------------------------------------------------------------


def _load_in_thread(cache: ModelCache, variant: str) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(cache.load(variant))
        except Exception as exc:
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_a_load_in_progress_is_visible_and_cleared_once_loaded(catalog: Catalog) -> None:
    backend = BlockingBackend()
    cache = _cache(catalog, backend)
    assert cache.loading_state() == ((), 0.0)
    t, out = _load_in_thread(cache, L1)
    assert backend.started.wait(10)
    began = cache.loading[L1]
    assert cache.loading_state(now=began + 2.5) == ((L1,), 2.5)
    assert L1 not in cache.loaded
    backend.release.set()
    t.join(10)
    assert out == [cache.loaded[L1]]
    assert cache.loading == {} and cache.loading_state() == ((), 0.0)


@pytest.mark.parametrize("how", ["load", "warm-up", "crash"])
def test_a_failed_load_is_cleared_too(catalog: Catalog, how: str) -> None:
    backend = BlockingBackend()
    if how == "load":
        backend.fail = BackendError("corrupt file")
    elif how == "warm-up":
        backend.warmup_fails = True
    else:
        backend.fail = RuntimeError("a bug in a backend")
    cache = _cache(catalog, backend)
    t, out = _load_in_thread(cache, L0)
    assert backend.started.wait(10)
    assert cache.loading_state()[0] == (L0,)
    backend.release.set()
    t.join(10)
    assert cache.loading == {} and L0 not in cache.loaded
    if how == "crash":
        assert isinstance(out[0], RuntimeError)  # not swallowed, but not left loading either
    else:
        assert out == [None]
        reason = "missing_model" if how == "load" else "model_load_failed"  # no file here
        assert cache.bad.snapshot() == {reason: 1}
    if how == "warm-up":
        assert backend.models[0].closed


def test_the_oldest_load_gives_loading_s(catalog: Catalog) -> None:
    cache = _cache(catalog, BlockingBackend())
    cache.loading = {L0: 100.0, L1: 103.0}  # as two control-thread loads would leave it
    assert cache.loading_state(now=104.0) == ((L0, L1), 4.0)


# -- max_fps: the rate gate on the network thread -----------------------------------------------


def test_rate_gate_keeps_the_long_run_rate_and_tolerates_jitter() -> None:
    gate = RateGate(5.0)  # a frame every 200 ms
    admitted = [t for t in range(0, 10_000 * MS, 33 * MS) if gate.admit(T0 + t)]  # 30 fps, 10 s
    assert 50 <= len(admitted) <= 51  # 5 fps, and at most one early frame at the start
    gaps = np.diff(admitted)
    assert gaps.min() >= 100 * MS  # never two frames closer than half an interval
    # A camera at exactly the rate, with +-40 ms of jitter: nothing shed.
    gate = RateGate(5.0)
    jitter = [40, -40, 0, 25, -25]
    assert all(gate.admit(T0 + i * 200 * MS + jitter[i % 5] * MS) for i in range(100))
    # A tiny rate (the codec allows any above 0) still gives a finite, bounded interval.
    gate = RateGate(1e-300)
    assert gate.admit(T0) and not gate.admit(T0 + 10**12)


def _serve(app: str, sensor: str, variant: str, max_fps: float | None = None) -> messages.Serve:
    return messages.Serve(app, sensor, variant, max_fps=max_fps)


class Rig:
    def __init__(self, catalog: Catalog) -> None:
        backend = BlockingBackend()
        backend.release.set()
        self.backend = backend
        self.models = _cache(catalog, backend)
        self.queues = FrameQueues(1000)
        self.counters = Counters()
        self.table = ServingTable(
            self.models,
            catalog,
            self.queues,
            self.counters,
            follow=lambda s: None,
            emit=lambda *a, **k: None,
        )
        self.generation = 0

    def apply(self, serve: Sequence[messages.Serve], hot: Sequence[messages.Serve] = ()) -> None:
        self.generation += 1
        a = messages.Assignment(
            worker="w1",
            term=1,
            generation=self.generation,
            ts=1.0,
            serve=tuple(serve),
            hot=tuple(hot),
        )
        assert self.table.apply(a)

    def feed(self, sensor: str, start_ms: int, fps: float, n: int) -> None:
        for i in range(n):
            self.table.route(sensor, b"frame", T0 + int((start_ms + i * 1000 / fps) * MS))

    def stats(self) -> dict[str, messages.AppStats]:
        return self.counters.app_stats(self.table.apps, {})


def test_frames_above_max_fps_are_shed_before_queueing(catalog: Catalog) -> None:
    rig = Rig(catalog)
    rig.apply([_serve("a1", "cam1", L0, max_fps=5.0), _serve("a2", "cam1", L0)])
    rig.feed("cam1", 0, fps=20.0, n=40)  # 2 s of a 20 fps camera
    st = rig.stats()
    # a1: 5 fps over 2 s, plus the one early frame the jitter tolerance allows at the start.
    assert (st["a1"].received, st["a1"].shed) == (11, 29)
    assert (st["a2"].received, st["a2"].shed) == (40, 0)  # no cap: every frame
    assert rig.counters.frames_received == 51
    assert rig.queues.depth() == 51  # shed frames never waited in a queue


def test_a_hot_backup_is_gated_by_its_own_max_fps(catalog: Catalog) -> None:
    rig = Rig(catalog)
    rig.apply([], hot=[_serve("h1", "cam1", L0, max_fps=1.0)])
    assert rig.table.hot_apps == ("h1",)
    rig.feed("cam1", 0, fps=10.0, n=20)
    assert rig.counters.frames_received == 3  # 1 fps over 2 s, plus one early frame


def test_a_new_max_fps_holds_from_its_apply(catalog: Catalog) -> None:
    rig = Rig(catalog)
    rig.apply([_serve("a1", "cam1", L0)])
    rig.feed("cam1", 0, fps=10.0, n=10)
    assert rig.stats()["a1"].shed == 0
    rig.apply([_serve("a1", "cam1", L0, max_fps=2.0)])  # overload: shed down to 2 fps
    rig.feed("cam1", 1000, fps=10.0, n=10)
    assert (rig.stats()["a1"].received, rig.stats()["a1"].shed) == (10 + 3, 7)
    # The same cap again keeps its schedule: a frame right after the last one admitted is shed.
    rig.apply([_serve("a1", "cam1", L0, max_fps=2.0)])
    rig.table.route("cam1", b"f", T0 + 1950 * MS)
    assert rig.stats()["a1"].shed == 8
    rig.apply([_serve("a1", "cam1", L0)])  # lifted: every frame again
    rig.feed("cam1", 2000, fps=10.0, n=10)
    assert (rig.stats()["a1"].received, rig.stats()["a1"].shed) == (23, 8)


def test_the_cap_applies_before_a_slow_load(catalog: Catalog) -> None:
    """The coordinator sheds now: while the new assignment's model still loads, its app's
    frames are already capped."""
    rig = Rig(catalog)
    rig.apply([_serve("a1", "cam1", L0)])
    rig.backend.release.clear()
    rig.backend.started.clear()
    done = threading.Event()

    def apply() -> None:
        rig.apply([_serve("a1", "cam1", L1, max_fps=1.0)])
        done.set()

    t = threading.Thread(target=apply, daemon=True)
    t.start()
    assert rig.backend.started.wait(10)
    assert rig.models.loading_state()[0] == (L1,)
    rig.feed("cam1", 0, fps=10.0, n=10)  # a1 still served with L0 meanwhile
    assert (rig.stats()["a1"].received, rig.stats()["a1"].shed) == (2, 8)
    rig.backend.release.set()
    assert done.wait(10)
    t.join(10)
    assert rig.table.get("a1").variant == L1  # type: ignore[union-attr]


# -- the worker: infer_ms from each result, loads in its heartbeat ------------------------------


def test_worker_reports_its_own_time_per_frame_and_its_loads(
    monkeypatch: pytest.MonkeyPatch, catalog: Catalog
) -> None:
    """A real worker object (real CPU backend, no broker: nothing is started)."""
    from workers.service import Worker

    monkeypatch.setattr(flog, "_ids", dict(flog._ids))  # the worker binds its ids
    mesh = MeshConfig.model_validate({"workers": [{"id": "w1"}]})
    w = Worker(mesh, mesh.workers[0], catalog)
    monkeypatch.setattr(w, "_send", lambda result: True)
    v = catalog.variant(L0)
    st = Serving("a1", "cam1", L0, FakeModel(L0), v.preprocess, True)
    now = messages.now()

    def result(seq: int) -> messages.Result:
        lat = messages.Latency(
            queue_ms=300.0, decode_ms=3.0, preprocess_ms=1.0, inference_ms=24.0, total_ms=400.0
        )
        return messages.Result("a1", seq, "cam1", now, now, "w1", "i", L0, 1, lat, ())

    w._infer([st, st, st], lambda: [result(1), result(2), result(3)])  # one call, 3 frames
    w._infer([st], lambda: [result(4)], 10.0)  # alone, held 10 ms by an interceptor
    stats = w.counters.app_stats(["a1"], {})["a1"]
    assert stats.processed == 4
    assert stats.latency_ms == 400.0
    assert stats.infer_ms == round((3 * (3 + 1 + 8) + (10 + 3 + 1 + 24)) / 4, 2)

    w.models.loading = {L1: 50.0}
    monkeypatch.setattr("workers.model_cache.time.monotonic", lambda: 53.5)
    monkeypatch.setattr("workers.service.cpu_load", lambda: 0.42)
    hb = messages.decode(messages.Heartbeat, messages.encode(w.heartbeat()))
    assert (hb.loading, hb.loading_s, hb.cpu_load) == ((L1,), 3.5, 0.42)
