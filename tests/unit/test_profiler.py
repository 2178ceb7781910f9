"""``faillite profile``'s pieces that run without a model zoo or a GPU.

The TensorRT path (building engines, profiling with them) needs an NVIDIA GPU and the
``tensorrt`` package: it is NOT run here. What is tested of it: the one-line refusal where
``tensorrt`` does not import, where engines go, and :func:`build_engine`'s calls against a
stand-in module (no engine is really built).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from faillite.catalog import Catalog, DeviceProfile, ProfileOverlay, load_catalog
from faillite.config import packaged_config
from workers import profile as prof
from workers.profile_cli import backend_section, register


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(packaged_config("catalog.yaml"))


def test_percentile_is_numpys_linear() -> None:
    np = pytest.importorskip("numpy")
    xs = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0]
    for q in (0, 50, 90, 99, 100):
        assert prof.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def tiny_onnx(path: Path, batch: int | str) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 3])
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["out"], axes=[2, 3], keepdims=0)],
        "tiny",
        [x],
        [y],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("batch", ["N", 1])
def test_measure_model_batches_only_a_symbolic_batch(tmp_path: Path, batch: int | str) -> None:
    pytest.importorskip("onnxruntime")
    from workers.backends.ort import OnnxRuntimeBackend, OnnxRuntimeBackendConfig

    path = tiny_onnx(tmp_path / "tiny.onnx", batch)
    backend = OnnxRuntimeBackend(
        OnnxRuntimeBackendConfig(providers=("CPUExecutionProvider",), intra_op_threads=1)
    )
    m = prof.measure_model(lambda: backend.load("tiny", path), runs=8, batch_sizes=(1, 2, 4))
    assert m["latency_ms"] > 0 and m["p99_ms"] >= m["latency_ms"]
    assert m["throughput_fps"] > 0 and m["load_ms"] > 0 and m["memory_mb"] >= 0
    assert m["providers"] == ["CPUExecutionProvider"] and m["input_shape"] == [1, 3, 8, 8]
    if batch == "N":
        assert m["best_batch"] in (1, 2, 4) and "run as batches" in m["batching"]
    else:
        assert m["best_batch"] == 1 and "fixed at 1" in m["batching"]
        assert m["best_batch_fps"] == m["throughput_fps"]


def fake_probe(answers: dict[str, Any]) -> Any:
    def probe(req: dict[str, Any]) -> dict[str, Any]:
        if req["mode"] == "warm":
            return {"warm_load_ms": {v: 5.0 for v, _ in req["items"]}}
        if req["variant"] == "broken":
            raise prof.ProfileError("RuntimeError: bad file")
        return {
            "runtime": {"python": "3", "onnxruntime": "9.9"},
            "providers": ["CPUExecutionProvider"],
            "latency_ms": 2.0,
            "p99_ms": 3.0,
            "first_inference_ms": 4.0,
            "load_ms": 6.0,
            "memory_mb": 20.0,
            "gpu_memory_mb": None,
            "throughput_fps": 500.0,
            "best_batch": 1,
            "best_batch_fps": 500.0,
            "batching": "input batch fixed at 1",
            **answers,
        }

    return probe


def test_profile_makes_an_overlay_and_names_failures(tmp_path: Path) -> None:
    job = prof.ProfileRun(
        "test-cpu",
        [("a", tmp_path / "a.onnx"), ("broken", tmp_path / "b.onnx")],
        {"type": "onnxruntime", "intra_op_threads": 1},
        runs=7,
    )
    ov = prof.profile(job, progress=False, probe_fn=fake_probe({}))
    assert set(ov.profiles) == {"a"} and set(job.failures) == {"broken"}
    p = ov.profiles["a"]
    assert (p.latency_ms, p.p99_ms, p.load_ms, p.warm_load_ms) == (2.0, 3.0, 6.0, 5.0)
    assert "onnxruntime 9.9" in p.source and "p50 of 7 runs" in p.source
    assert "CPUExecutionProvider" in p.source and ov.machine["host"] in p.source
    text = prof.overlay_yaml(ov)
    assert "gpu_memory_mb" not in text  # None is left out
    path = prof.write_overlay(ov, tmp_path / "profiles" / "test-cpu.yaml")
    from faillite.catalog import load_overlay

    assert load_overlay(path) == ov


def test_a_partial_rerun_keeps_the_other_variants() -> None:
    old = ProfileOverlay(
        device_class="x",
        profiles={
            "a": DeviceProfile(latency_ms=1, memory_mb=1),
            "b": DeviceProfile(latency_ms=2, memory_mb=2),
        },
    )
    new = ProfileOverlay(device_class="x", profiles={"b": DeviceProfile(latency_ms=3, memory_mb=3)})
    merged = prof.merge_into_existing(old, new)
    assert merged.profiles["a"].latency_ms == 1 and merged.profiles["b"].latency_ms == 3
    other = old.model_copy(update={"device_class": "y"})
    assert prof.merge_into_existing(other, new) == new


def test_pick_variants_names_unknown_and_missing(catalog: Catalog, tmp_path: Path) -> None:
    with pytest.raises(prof.ProfileError, match=r"not in the catalog: nope"):
        prof.pick_variants(catalog, tmp_path, ["efficientnet_lite0", "nope"])
    with pytest.raises(prof.ProfileError, match=r"not on disk: efficientnet_lite0"):
        prof.pick_variants(catalog, tmp_path, ["efficientnet_lite0"])


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["profile", *argv])


def test_backend_section_follows_the_device_classes_workers() -> None:
    from faillite.config import load_mesh_config

    cfg = load_mesh_config(packaged_config("demo.yaml"))
    sec = backend_section(cfg, parse("--device-class", "cpu"))
    assert sec["type"] == "onnxruntime" and sec["intra_op_threads"] == 1
    sec = backend_section(
        cfg, parse("--device-class", "new", "--providers", "A,B", "--threads", "2")
    )
    assert sec == {"type": "onnxruntime", "providers": ["A", "B"], "intra_op_threads": 2}
    sec = backend_section(cfg, parse("--device-class", "j", "--backend", "tensorrt"))
    assert sec == {"type": "tensorrt"}


# -- TensorRT: not run on a GPU here ------------------------------------------------------------


def test_tensorrt_refuses_in_one_line_without_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    with pytest.raises(prof.ProfileError, match=r"needs the TensorRT Python package"):
        prof.import_tensorrt()
    from faillite.cli import main

    models = tmp_path / "models"
    models.mkdir()
    for v in ("efficientnet_lite0",):
        (models / f"{v}.onnx").write_bytes(b"x")
    rc = main(
        ["profile", "--device-class", "jetson", "--backend", "tensorrt", "--variants",
         "efficientnet_lite0", "--models-dir", str(models), "--no-progress"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("faillite profile: --backend tensorrt needs the TensorRT")
    assert not (models / "profiles").exists()


def test_engine_path_matches_the_backend(tmp_path: Path) -> None:
    onnx = tmp_path / "m" / "resnet_synth18.onnx"
    assert prof.engine_path(onnx, None) == tmp_path / "m" / "resnet_synth18.engine"
    assert prof.engine_path(onnx, tmp_path / "e") == tmp_path / "e" / "resnet_synth18.engine"


class FakeTrt:
    """Just enough of the tensorrt module's API for :func:`build_engine` (no GPU)."""

    __version__ = "10.3.0"

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    MemoryPoolType = SimpleNamespace(WORKSPACE="ws")
    BuilderFlag = SimpleNamespace(FP16="fp16")
    NetworkDefinitionCreationFlag = SimpleNamespace(EXPLICIT_BATCH=0)

    def __init__(self, parse_ok: bool = True, shape: tuple[int, ...] = (-1, 3, 8, 8)) -> None:
        self.calls: list[tuple[Any, ...]] = []
        fake = self
        net = SimpleNamespace(
            num_inputs=1, get_input=lambda i: SimpleNamespace(name="input", shape=shape)
        )

        class Config:
            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                fake.calls.append(("pool", pool, size))

            def set_flag(self, flag: str) -> None:
                fake.calls.append(("flag", flag))

            def add_optimization_profile(self, p: Any) -> None:
                fake.calls.append(("profile", p.shapes))

        class Opt:
            def __init__(self) -> None:
                self.shapes: dict[str, Any] = {}

            def set_shape(self, name: str, *s: Any) -> None:
                self.shapes[name] = s

        class Builder:
            platform_has_fast_fp16 = True

            def __init__(self, logger: Any) -> None:
                pass

            def create_network(self, flags: int) -> Any:
                fake.calls.append(("network", flags))
                return net

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Opt:
                return Opt()

            def build_serialized_network(self, network: Any, config: Any) -> bytes:
                return b"ENGINE"

        class OnnxParser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network: Any, logger: Any) -> None:
                pass

            def parse(self, data: bytes) -> bool:
                return parse_ok

            def get_error(self, i: int) -> str:
                return "unsupported op Foo"

        self.Builder = Builder
        self.OnnxParser = OnnxParser


def test_build_engine_with_a_stand_in_tensorrt(tmp_path: Path) -> None:
    onnx = tmp_path / "v.onnx"
    onnx.write_bytes(b"onnx")
    trt = FakeTrt()
    out = prof.build_engine(onnx, tmp_path / "e" / "v.engine", trt=trt)
    assert out.read_bytes() == b"ENGINE" and not (tmp_path / "e" / "v.engine.tmp").exists()
    assert ("network", 0) in trt.calls and ("flag", "fp16") in trt.calls
    assert ("profile", {"input": ((1, 3, 8, 8),) * 3}) in trt.calls
    built = prof.build_engines([("v", onnx)], tmp_path / "e", progress=False, trt=FakeTrt())
    assert built == {"v": out}
    with pytest.raises(prof.ProfileError, match=r"cannot parse .*unsupported op Foo"):
        prof.build_engine(onnx, tmp_path / "w.engine", trt=FakeTrt(parse_ok=False))
