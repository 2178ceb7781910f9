"""The batched pipeline (workers.batching) with real ONNX Runtime sessions and real cv2: batches
form up to the limit, wait a bounded time, never mix models, survive a corrupt frame, take apps
in turn, and give the results one-by-one inference gives."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from pydantic import ValidationError

from faillite import envelope
from faillite.badinput import BadInput
from faillite.catalog import Catalog
from faillite.config import BatchingConfig, WorkerConfig
from faillite.models.labels import imagenet_labels
from sensors.sources import SceneSource
from workers.backends import LoadedModel, Staged
from workers.backends.ort import OnnxRuntimeBackend, OnnxRuntimeBackendConfig
from workers.batching import Batch, Batcher, model_max_batch
from workers.frame_queue import FrameQueues, QueuedFrame
from workers.inference import FrameRunner
from workers.serving import Serving

L0, L1 = "efficientnet_lite0", "efficientnet_lite1"


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    scene = SceneSource(640, 480, ("chelsea", "coffee"), hold_s=0.05)
    out = []
    for _ in range(6):
        out.append(envelope.encode_jpeg(scene.read()))
        time.sleep(0.02)
    return out


@pytest.fixture(scope="module")
def backend() -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(
        OnnxRuntimeBackendConfig(providers=("CPUExecutionProvider",), intra_op_threads=1)
    )


@pytest.fixture(scope="module")
def models(
    backend: OnnxRuntimeBackend, catalog: Catalog, models_dir: Path
) -> dict[str, LoadedModel]:
    return {v: backend.load(v, models_dir / catalog.variant(v).file) for v in (L0, L1)}


class Rig:
    """Queues, a serving table (app -> Serving) and a runner, as the worker has them."""

    def __init__(self, catalog: Catalog, models: dict[str, LoadedModel], queue_size: int = 4):
        self.catalog, self.models = catalog, models
        self.queues = FrameQueues(queue_size)
        self.table: dict[str, Serving] = {}
        self.bad = BadInput()
        self.runner = FrameRunner(
            "w1", "inc", max_frame_bytes=1 << 22, labels=imagenet_labels(), bad=self.bad
        )
        self.seq = 0
        self.batcher: Batcher | None = None

    def serve(self, app: str, variant: str) -> None:
        v = self.catalog.variant(variant)
        self.table[app] = Serving(
            app, f"cam-{app}", variant, self.models[variant], v.preprocess, True
        )

    def put(self, app: str, jpeg: bytes) -> None:
        self.seq += 1
        payload = envelope.pack(
            jpeg, seq=self.seq, capture_ns=time.time_ns(), width=640, height=480
        )
        self.queues.put(QueuedFrame(app, payload, time.monotonic_ns()))

    def start(self, **cfg: float) -> Batcher:
        self.batcher = Batcher(
            self.queues, self.table.get, self.runner, BatchingConfig.model_validate(cfg)
        )
        self.batcher.start()
        return self.batcher

    def drain(self, timeout: float = 1.0) -> Iterator[Batch]:
        assert self.batcher is not None
        while (b := self.batcher.next(timeout)) is not None:
            yield b

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
        self.queues.close()


@pytest.fixture
def rig(catalog: Catalog, models: dict[str, LoadedModel]) -> Iterator[Rig]:
    r = Rig(catalog, models)
    yield r
    r.stop()


def test_models_take_any_batch_a_fixed_batch_of_one_is_unbatchable(
    backend: OnnxRuntimeBackend, models: dict[str, LoadedModel], models_dir: Path, tmp_path: Path
) -> None:
    assert model_max_batch(models[L0]) >= BatchingConfig().max_batch  # dynamic batch dim
    m = onnx.load(str(models_dir / f"{L0}.onnx"))
    for vi in (m.graph.input[0], m.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = 1  # as built before batching
    onnx.save(m, str(tmp_path / "fixed.onnx"))
    fixed = backend.load(L0, tmp_path / "fixed.onnx")
    assert model_max_batch(fixed) == 1


def test_batches_fill_up_to_max_batch(rig: Rig, jpegs: list[bytes]) -> None:
    for i in range(6):
        rig.serve(f"a{i}", L0)
        rig.put(f"a{i}", jpegs[i])
        rig.put(f"a{i}", jpegs[(i + 1) % 6])
    rig.start(max_batch=4, max_wait_ms=50)
    sizes = [len(b.items) for b in rig.drain(0.5)]
    assert sizes == [4, 4, 4]


def test_a_batch_waits_at_most_max_wait_ms_for_more(rig: Rig, jpegs: list[bytes]) -> None:
    rig.serve("a", L0)
    rig.serve("b", L0)
    batcher = rig.start(max_batch=8, max_wait_ms=150)
    rig.put("a", jpegs[0])
    rig.put("b", jpegs[1])  # both apps have frames flowing now
    assert batcher.next(2.0) is not None
    t0 = time.monotonic()
    rig.put("a", jpegs[0])
    time.sleep(0.03)
    rig.put("b", jpegs[1])  # within the wait: joins the batch
    b = batcher.next(2.0)
    waited = time.monotonic() - t0
    assert b is not None and [f.app for f in b.items] == ["a", "b"]
    assert 0.12 <= waited < 0.6, waited  # not full: it waited for more, and no longer

    t0 = time.monotonic()
    rig.put("a", jpegs[2])
    b = batcher.next(2.0)
    assert b is not None and len(b.items) == 1
    assert 0.12 <= time.monotonic() - t0 < 0.6


def test_an_app_alone_on_its_model_never_waits(rig: Rig, jpegs: list[bytes]) -> None:
    rig.serve("a", L0)
    batcher = rig.start(max_batch=8, max_wait_ms=300)
    t0 = time.monotonic()
    rig.put("a", jpegs[0])
    b = batcher.next(2.0)
    assert b is not None and len(b.items) == 1
    assert time.monotonic() - t0 < 0.15  # no other app could join: no wait


def test_max_wait_zero_takes_what_is_queued(rig: Rig, jpegs: list[bytes]) -> None:
    rig.serve("a", L0)
    batcher = rig.start(max_batch=8, max_wait_ms=0)
    batcher.next(0.2)
    t0 = time.monotonic()
    rig.put("a", jpegs[0])
    b = batcher.next(2.0)
    assert b is not None and len(b.items) == 1
    assert time.monotonic() - t0 < 0.1


def test_apps_on_different_variants_never_share_a_batch(rig: Rig, jpegs: list[bytes]) -> None:
    apps = {"a": L0, "b": L1, "c": L0, "d": L1, "e": L0}
    for app, variant in apps.items():
        rig.serve(app, variant)
        for k in range(3):
            rig.put(app, jpegs[k])
    rig.start(max_batch=8, max_wait_ms=20)
    served: list[str] = []
    for b in rig.drain(0.5):
        assert {rig.table[f.app].variant for f in b.items} == {b.st.variant}
        frames, x = b.ready()
        results = rig.runner.infer(b.st, frames, x, 1)
        assert all(r.variant == b.st.variant for r in results)
        served += [r.app for r in results]
    assert sorted(served) == sorted(a for a in apps for _ in range(3))


def test_a_corrupt_frame_is_counted_and_the_rest_of_its_batch_served(
    rig: Rig, jpegs: list[bytes]
) -> None:
    for app in ("a", "b", "c", "d"):
        rig.serve(app, L0)
    rig.put("a", jpegs[0])
    rig.put("b", jpegs[1][:200] + b"\x00" * 500)  # a JPEG header, then garbage
    rig.put("c", b"not an envelope at all")
    rig.put("d", jpegs[2])
    rig.start(max_batch=8, max_wait_ms=50)
    (b,) = list(rig.drain(0.5))
    assert len(b.items) == 4
    frames, x = b.ready()
    assert [p.item.app for p in frames] == ["a", "d"] and x.shape[0] == 2
    results = rig.runner.infer(b.st, frames, x, 1)
    assert [r.app for r in results] == ["a", "d"]
    assert sum(rig.bad.snapshot().values()) == 2, rig.bad.snapshot()


def test_apps_take_turns_one_fast_camera_cannot_starve_the_others(
    catalog: Catalog, models: dict[str, LoadedModel], jpegs: list[bytes]
) -> None:
    r = Rig(catalog, models, queue_size=8)
    for i in range(12):
        r.serve(f"a{i}", L0)
    for _ in range(8):
        r.put("a0", jpegs[0])  # a fast camera: its queue is full
    for i in range(1, 12):
        r.put(f"a{i}", jpegs[i % 6])

    def group(app: str) -> tuple[object, int] | None:
        st = r.table.get(app)
        return None if st is None else (st.model, 4)

    batches = [[f.app for f in r.queues.take_batch(group, 0.1, 0)] for _ in range(3)]
    assert batches[0].count("a0") == 1
    # The first three batches serve every app once before a0 comes again.
    first_twelve = [a for b in batches for a in b]
    assert sorted(first_twelve) == sorted(f"a{i}" for i in range(12)), batches
    # An app of another model keeps its turn: it comes before a0's next batch.
    r.serve("x", L1)
    r.put("x", jpegs[0])
    r.put("a1", jpegs[0])
    assert [f.app for f in r.queues.take_batch(group, 0.1, 0)] == ["a0", "a1", "a0", "a0"]
    assert [f.app for f in r.queues.take_batch(group, 0.1, 0)] == ["x"]
    r.stop()


def test_results_of_a_batch_equal_results_one_by_one(rig: Rig, jpegs: list[bytes]) -> None:
    for i in range(5):
        rig.serve(f"a{i}", L0)
        rig.put(f"a{i}", jpegs[i])
    items = {}
    rig.start(max_batch=8, max_wait_ms=50)
    (b,) = list(rig.drain(0.5))
    frames, x = b.ready()
    batched = rig.runner.infer(b.st, frames, x, 1)
    assert len(batched) == 5
    for item in b.items:
        items[item.app] = item
    for r in batched:
        one = rig.runner.run(items[r.app], rig.table[r.app], 1)
        assert one is not None
        assert (one.app, one.seq, one.sensor, one.variant) == (r.app, r.seq, r.sensor, r.variant)
        assert [lab.index for lab in one.top] == [lab.index for lab in r.top]
        assert np.allclose([lab.score for lab in one.top], [lab.score for lab in r.top], atol=1e-4)
        lat = r.latency
        assert lat.decode_ms > 0 and lat.preprocess_ms > 0 and lat.inference_ms > 0
        assert lat.queue_ms >= 0 and lat.total_ms >= lat.inference_ms


def test_batching_config_defaults_and_unknown_keys() -> None:
    w = WorkerConfig(id="w1")
    assert (w.batching.max_batch, w.batching.max_wait_ms, w.batching.scaled_decode) == (
        8,
        2.0,
        True,
    )
    w = WorkerConfig.model_validate({"id": "w1", "batching": {"max_batch": 4, "max_wait_ms": 0}})
    assert w.batching.max_batch == 4 and w.batching.max_wait_ms == 0
    with pytest.raises(ValidationError, match="max_batch_size"):
        WorkerConfig.model_validate({"id": "w1", "batching": {"max_batch_size": 4}})
    with pytest.raises(ValidationError, match="max_batch"):
        WorkerConfig.model_validate({"id": "w1", "batching": {"max_batch": 0}})


@pytest.mark.parametrize(("cpus", "threads"), [(1, 2), (2, 2), (6, 3), (16, 8), (64, 8)])
def test_preprocess_pool_defaults_to_half_the_usable_cpus(
    monkeypatch: pytest.MonkeyPatch, cpus: int, threads: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert BatchingConfig().pool_size() == threads
    assert BatchingConfig(preprocess_threads=1).pool_size() == 1  # configured wins


class StagingModel(LoadedModel):
    """A real model whose batches are copied to a device ahead of their run: the device is
    mocked (no GPU here), the inference is real."""

    def __init__(self, inner: LoadedModel) -> None:
        self.inner = inner
        self.variant, self.providers = inner.variant, inner.providers
        self.input_shape, self.max_batch = inner.input_shape, inner.max_batch
        self.staged_on: list[str] = []
        self.ran_staged = 0

    def infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self.inner.infer(batch)

    def stage(self, batch: npt.NDArray[np.float32]) -> Staged:
        self.staged_on.append(threading.current_thread().name)
        return Staged(batch, "device copy")

    def infer_staged(self, staged: Staged) -> npt.NDArray[np.float32]:
        assert staged.device == "device copy"
        self.ran_staged += 1
        return self.inner.infer(staged.host)


def test_a_batch_is_copied_to_the_device_by_the_pool_before_its_turn(
    catalog: Catalog, models: dict[str, LoadedModel], jpegs: list[bytes]
) -> None:
    model = StagingModel(models[L0])
    r = Rig(catalog, {L0: model})
    for i in range(3):
        r.serve(f"a{i}", L0)
        r.put(f"a{i}", jpegs[i])
    r.start(max_batch=8, max_wait_ms=50)
    (b,) = list(r.drain(0.5))
    frames, x = b.ready()
    # Staged on a preprocess thread (beside the previous batch's inference), not at its run.
    assert x.device == "device copy" and x.shape[0] == 3
    assert model.staged_on and all(n.startswith("worker-prep") for n in model.staged_on)
    results = r.runner.infer(b.st, frames, x, 1)
    assert [res.app for res in results] == ["a0", "a1", "a2"] and model.ran_staged == 1
    r.stop()


def test_a_slow_model_gets_batches_that_fit_max_batch_ms(
    catalog: Catalog, models: dict[str, LoadedModel], jpegs: list[bytes]
) -> None:
    """A batch is one stretch without progress for the coordinator's stall detector: once a
    frame is measured to take 100 ms, a 250 ms budget allows two per batch; faster again, the
    batches grow back gradually."""
    r = Rig(catalog, models, queue_size=8)
    for i in range(6):
        r.serve(f"a{i}", L0)
    b = r.start(max_batch=8, max_wait_ms=0, max_batch_ms=250)
    st = r.table["a0"]
    b.stop()  # only its bookkeeping is driven here
    assert b._by_time(st) == 8  # nothing measured yet
    b.observe(st.model, 0.8, 8)  # 100 ms per frame
    assert b._by_time(st) == 2
    b.observe(st.model, 0.08, 8)  # 10 ms per frame: 100 -> 73 ms
    assert b._by_time(st) == 3
    b.observe(st.model, 1.0, 2)  # 500 ms per frame: at once
    assert b._by_time(st) == 1
    for i in range(6):
        r.put(f"a{i}", jpegs[i])

    def group(app: str) -> tuple[object, int] | None:
        return b._group({}, app)

    assert len(r.queues.take_batch(group, 0.1, 0)) == 1
    r.stop()
