"""The ONNX Runtime backend's GPU runtime (issue 12, parts 2 and 3): providers probed once and
said once, ONNX Runtime's log kept one JSON event per line, cuDNN's search mode from config,
CUDA brought up at start and kept warm, per-variant TensorRT engine caches, I/O binding and
batches.

This machine has no GPU, no CUDA and no TensorRT, and the CPU build of ONNX Runtime. Sessions
and inferences here are real ONNX Runtime CPU ones. What only a GPU box has is mocked, and
each test says what: the provider list ONNX Runtime offers (a stand-in ``onnxruntime`` module
that wraps the real one), a probe answer ("CUDA works"), and the provider list a load asks for.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as real_ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from structlog.testing import capture_logs

from faillite.config import ConfigError, load_mesh_config
from workers.backends import BackendError, _providers
from workers.backends import ort as ort_backend
from workers.backends.ort import OnnxRuntimeBackend, OnnxRuntimeBackendConfig

TRT, CUDA, CPU = _providers.TRT, _providers.CUDA, _providers.CPU


def conv_model(path: Path, batch: int | str, *, weight_input: bool = False) -> Path:
    """A small real model: Conv(3->4, 3x3) + Relu + mean over H, W -> (batch, 4)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("ReduceMean", ["r"], ["y"], axes=[2, 3], keepdims=0),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])]
    if weight_input:  # an initializer listed as an input too: ORT warns about it
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3]))
    graph = helper.make_graph(
        nodes,
        "conv",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class FakeOrt(types.ModuleType):
    """Mocked (no GPU here): the real onnxruntime, but offering ``offered`` providers, and
    recording each session's requested providers; sessions are made on the CPU only."""

    def __init__(self, offered: tuple[str, ...]) -> None:
        super().__init__("onnxruntime")
        self.offered = offered
        self.sessions: list[list[tuple[str, dict[str, Any]]]] = []
        fake = self

        class InferenceSession(real_ort.InferenceSession):  # type: ignore[misc]
            def __init__(self, source: Any, sess_options: Any = None, **kw: Any) -> None:
                fake.sessions.append(list(kw.pop("providers")))
                super().__init__(source, sess_options, providers=[CPU], **kw)

        self.InferenceSession = InferenceSession

    def __getattr__(self, name: str) -> Any:
        return getattr(real_ort, name)

    def get_available_providers(self) -> list[str]:
        return list(self.offered)


@pytest.fixture(autouse=True)
def fresh_probes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Each test is a fresh process as far as the once-per-process state goes.
    _providers.reset()
    monkeypatch.setattr(ort_backend, "_keepers", {})
    monkeypatch.setattr(ort_backend, "_trt_warned", set())
    yield
    _providers.reset()


def fake_ort(monkeypatch: pytest.MonkeyPatch, *offered: str) -> FakeOrt:
    fake = FakeOrt(offered)
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    return fake


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


# -- providers said once ---------------------------------------------------------------------


def test_tensorrt_without_libnvinfer_is_dropped_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Mocked: onnxruntime offers TensorrtExecutionProvider (as the GPU wheel does everywhere);
    libnvinfer is really absent here. Three backends, six loads: one warning, CPU sessions."""
    fake_ort(monkeypatch, TRT, CPU)
    path = conv_model(tmp_path / "m.onnx", "N")
    with capture_logs() as logs:
        for _ in range(3):
            backend = OnnxRuntimeBackend(OnnxRuntimeBackendConfig(intra_op_threads=1))
            assert backend.devices() == (CPU,)
            for variant in ("a", "b"):
                model = backend.load(variant, path)
                assert model.providers == (CPU,)
                assert model.infer(np.ones((1, 3, 8, 8), np.float32)).shape == (1, 4)
    dropped = events(logs, "provider_unavailable")
    assert len(dropped) == 1, dropped
    assert dropped[0]["provider"] == TRT and dropped[0]["log_level"] == "warning"
    assert "libnvinfer" in dropped[0]["reason"]
    assert not events(logs, "provider_fallback")


def test_cuda_offered_without_its_libraries_is_dropped_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mocked: onnxruntime offers CUDAExecutionProvider; this CPU build has no CUDA provider
    library, so the probe drops it."""
    fake_ort(monkeypatch, CUDA, CPU)
    with capture_logs() as logs:
        for _ in range(2):
            assert OnnxRuntimeBackend().devices() == (CPU,)
    (dropped,) = events(logs, "provider_unavailable")
    assert dropped["provider"] == CUDA and "CUDA provider library" in dropped["reason"]


def test_onnxruntime_messages_stay_one_json_event_per_line(tmp_path: Path) -> None:
    """Real ONNX Runtime (CPU) in a fresh process: a model ORT warns about (an initializer that
    is also a graph input) is loaded and run; every stderr line is a JSON event, and ORT's
    warning is one of them."""
    path = conv_model(tmp_path / "w.onnx", 1, weight_input=True)
    code = (
        "import numpy as np, sys; from faillite import log; log.configure(fmt='json'); "
        "from workers.backends.ort import OnnxRuntimeBackend; "
        f"m = OnnxRuntimeBackend().load('w', __import__('pathlib').Path({str(path)!r})); "
        "m.infer(np.ones((1, 3, 8, 8), np.float32)); print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "ok"
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # raises on any non-JSON line
    if hasattr(real_ort, "set_default_logger_callback"):
        ort_lines = [e for e in parsed if e["event"] == "onnxruntime_log"]
        assert any("Initializer w" in e["message"] for e in ort_lines), parsed
    else:  # older ONNX Runtime: silenced
        assert not any("Initializer" in line for line in lines)


# -- cuDNN search mode -----------------------------------------------------------------------


def test_cuda_provider_options_carry_the_cudnn_search_mode() -> None:
    """No GPU needed: the options a CUDA session would be given are built from the config."""
    backend = OnnxRuntimeBackend(OnnxRuntimeBackendConfig(device_id=1))
    opts = dict(backend.provider_options((CUDA, CPU), "v"))
    assert opts[CUDA] == {"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC"}
    assert opts[CPU] == {}
    exhaustive = OnnxRuntimeBackend(OnnxRuntimeBackendConfig(cudnn_conv_algo_search="EXHAUSTIVE"))
    assert dict(exhaustive.provider_options((CUDA,)))[CUDA]["cudnn_conv_algo_search"] == (
        "EXHAUSTIVE"
    )


def test_cudnn_default_search_is_refused_at_config_load(tmp_path: Path) -> None:
    p = tmp_path / "mesh.yaml"
    p.write_text(
        "workers:\n  - id: w1\n    backend: {type: onnxruntime, cudnn_conv_algo_search: DEFAULT}\n"
    )
    with pytest.raises(ConfigError, match=r"cudnn_conv_algo_search.*DEFAULT.*depthwise"):
        load_mesh_config(p)


# -- CUDA up at start ------------------------------------------------------------------------


def test_keeper_model_is_a_conv_relu_graph() -> None:
    """The keeper bytes carried in the module are the graph onnx.helper builds."""
    w = numpy_helper.from_array(np.full((4, 3, 3, 3), 0.01, np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "faillite_keeper",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [w],
    )
    carried = onnx.load_from_string(ort_backend.keeper_model_bytes())
    onnx.checker.check_model(carried)
    assert carried.graph == graph


def test_start_brings_cuda_up_once_and_keeps_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mocked: onnxruntime offers CUDA and the probe says it works; the keeper session is then
    really made (on the CPU) and really runs. Two backends, two starts: one keeper."""
    fake = fake_ort(monkeypatch, CUDA, CPU)
    _providers._probed[CUDA] = None  # mocked: "CUDA works here"
    cfg = OnnxRuntimeBackendConfig(cudnn_conv_algo_search="EXHAUSTIVE")
    with capture_logs() as logs:
        backend = OnnxRuntimeBackend(cfg)
        assert backend.devices() == (CUDA, CPU)
        backend.start()
        backend.start()
        OnnxRuntimeBackend(cfg).start()
    assert fake.sessions == [
        [(CUDA, {"device_id": "0", "cudnn_conv_algo_search": "EXHAUSTIVE"}), (CPU, {})]
    ]
    (ready,) = events(logs, "device_ready")
    assert ready["ms"] >= 0 and ready["device_id"] == 0
    keeper = ort_backend._keepers[0]
    assert keeper.variant == ort_backend.KEEPER_VARIANT and keeper._session is not None


def test_start_under_tensorrt_keeps_the_keeper_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mocked as above, with TensorRT offered and said to work too: the keeper asks for CUDA
    only (TensorRT would build an engine for it)."""
    fake = fake_ort(monkeypatch, TRT, CUDA, CPU)
    _providers._probed.update({TRT: None, CUDA: None})
    OnnxRuntimeBackend().start()
    assert [[p for p, _ in s] for s in fake.sessions] == [[CUDA, CPU]]


def test_start_does_nothing_on_a_cpu_only_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_ort(monkeypatch, CPU)
    with capture_logs() as logs:
        OnnxRuntimeBackend().start()
    assert fake.sessions == [] and ort_backend._keepers == {}
    assert not events(logs, "device_ready")


# -- TensorRT engine cache per variant -------------------------------------------------------


def test_variant_without_a_trt_engine_loads_on_cuda_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Mocked: the backend's provider list says TensorRT and CUDA work (no GPU here); the
    sessions are made on the CPU. Variant ``a`` has an engine in its cache folder, ``b`` none."""
    fake = fake_ort(monkeypatch, TRT, CUDA, CPU)
    _providers._probed.update({TRT: None, CUDA: None})
    cache = tmp_path / "trt"
    (cache / "a").mkdir(parents=True)
    (cache / "a" / "TensorrtExecutionProvider_TRTKernel_graph_0_sm90.engine").write_bytes(b"x")
    backend = OnnxRuntimeBackend(OnnxRuntimeBackendConfig(trt_cache_dir=cache))
    path = conv_model(tmp_path / "m.onnx", "N")
    with capture_logs() as logs:
        assert backend.providers_for("a") == (TRT, CUDA, CPU)
        for _ in range(2):
            backend.load("b", path)
        backend.load("a", path)
    asked = [dict(s) for s in fake.sessions]
    assert [list(a) for a in asked] == [[CUDA, CPU], [CUDA, CPU], [TRT, CUDA, CPU]]
    assert asked[2][TRT] == {
        "device_id": "0",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache / "a"),
    }
    (missing,) = events(logs, "trt_engine_missing")
    assert missing["variant"] == "b" and missing["path"] == str(cache / "b")
    assert missing["log_level"] == "warning" and missing["using"] == [CUDA, CPU]


def test_trt_build_missing_keeps_tensorrt_and_no_cache_dir_falls_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Mocked provider lists as above: the prebuild setting keeps TensorRT for a variant with
    no engine yet; without any cache folder every variant loads on CUDA."""
    fake_ort(monkeypatch, TRT, CUDA, CPU)
    _providers._probed.update({TRT: None, CUDA: None})
    build = OnnxRuntimeBackend(
        OnnxRuntimeBackendConfig(trt_cache_dir=tmp_path, trt_build_missing=True)
    )
    assert build.providers_for("new") == (TRT, CUDA, CPU)
    assert OnnxRuntimeBackend().providers_for("v") == (CUDA, CPU)
    only = OnnxRuntimeBackend(OnnxRuntimeBackendConfig(providers=(TRT,)))
    with pytest.raises(BackendError, match="no TensorRT engine"):
        only.providers_for("v")


# -- I/O binding and batches -----------------------------------------------------------------


def test_a_batch_gives_the_per_image_outputs(tmp_path: Path) -> None:
    """Real CPU sessions: a model with a symbolic batch dimension runs a batch in one I/O-bound
    run (in slices of max_batch beyond it); a fixed batch-1 model runs it image by image."""
    backend = OnnxRuntimeBackend(OnnxRuntimeBackendConfig(intra_op_threads=1, max_batch=3))
    dyn = backend.load("dyn", conv_model(tmp_path / "dyn.onnx", "N"))
    fixed = backend.load("fixed", conv_model(tmp_path / "fixed.onnx", 1))
    assert (dyn.max_batch, fixed.max_batch) == (3, 1)
    assert dyn.input_shape == fixed.input_shape == (1, 3, 8, 8)
    x = np.random.default_rng(1).standard_normal((7, 3, 8, 8)).astype(np.float32)
    each = np.concatenate([dyn.infer(x[i : i + 1]) for i in range(7)])
    runs: list[int] = []
    session = dyn._session
    real_run = session.run_with_iobinding
    monkey = types.SimpleNamespace(
        io_binding=session.io_binding,
        get_inputs=session.get_inputs,
        run_with_iobinding=lambda b, *a: runs.append(1) or real_run(b, *a),
    )
    dyn._session = monkey
    three = dyn.infer(x[:3])
    assert runs == [1]  # one run for three images
    seven = dyn.infer(x)
    assert len(runs) == 1 + 3  # 3 + 3 + 1
    for out in (three, seven, fixed.infer(x)):
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, each[: len(out)], rtol=1e-5, atol=1e-6)
    dyn.close()
    with pytest.raises(BackendError, match="closed"):
        dyn.infer(x[:1])


def test_a_batch_staged_on_the_device_is_bound_from_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host-to-device copy happens at ``stage`` (the batcher's pool), the run binds that
    copy. No GPU here: the model is told it runs on CUDA while it stages, and ONNX Runtime's
    ``OrtValue`` factory is wrapped to make the copy in CPU memory; the binding of the staged
    value in the run is real."""
    backend = OnnxRuntimeBackend(OnnxRuntimeBackendConfig(intra_op_threads=1, max_batch=4))
    dyn = backend.load("dyn", conv_model(tmp_path / "dyn.onnx", "N"))
    x = np.random.default_rng(2).standard_normal((3, 3, 8, 8)).astype(np.float32)
    assert dyn.stage(x).device is None  # on CPUs: nothing to copy ahead
    copies: list[tuple[str, int]] = []
    real = real_ort.OrtValue.ortvalue_from_numpy

    def to_device(a: Any, device: str = "cpu", device_id: int = 0) -> Any:
        copies.append((device, device_id))
        return real(a)

    monkeypatch.setattr(real_ort.OrtValue, "ortvalue_from_numpy", to_device)
    monkeypatch.setattr(dyn, "_device", "cuda")
    staged = dyn.stage(x)
    too_big = dyn.stage(np.concatenate([x, x]))  # runs in slices: bound from the host
    monkeypatch.setattr(dyn, "_device", "cpu")  # the run's output stays on this CPU
    assert copies == [("cuda", 0)] and staged.device is not None and too_big.device is None
    np.testing.assert_allclose(dyn.infer_staged(staged), dyn.infer(x), rtol=1e-5, atol=1e-6)
    assert staged.shape == (3, 3, 8, 8)


def test_cuda_probe_paths(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Mocked (no CUDA here): ORT's CUDA provider library exists, then it does not load (cuDNN
    missing) even after ``preload_dlls`` (whose prints are kept off stdout), then it loads but
    the driver finds no device, then everything works."""
    fake = fake_ort(monkeypatch, CUDA, CPU)
    preloads: list[int] = []

    def preload_dlls() -> None:
        preloads.append(1)
        print("WARNING: nvidia packages not found")

    fake.preload_dlls = preload_dlls  # type: ignore[attr-defined]
    monkeypatch.setattr(_providers, "_capi_lib", lambda ort, name: Path(f"/x/lib{name}.so"))
    opened: list[str] = []

    def no_cudnn(name: str, mode: int = 0) -> str | None:
        opened.append(name)
        return "libcudnn.so.9: cannot open shared object file" if "cuda" in name else None

    monkeypatch.setattr(_providers, "_dlopen", no_cudnn)
    reason = _providers.probe(CUDA, fake)
    assert reason is not None and "libcudnn.so.9" in reason
    assert preloads == [1] and "nvidia" not in capsys.readouterr().out
    assert opened[0] == "/x/libshared.so"  # ORT's provider bridge first, as ORT loads it

    monkeypatch.setattr(_providers, "_dlopen", lambda name, mode=0: None)
    monkeypatch.setattr(_providers, "_cuda_device", lambda: "no CUDA device (0 devices)")
    assert _providers.probe(CUDA, fake) == "no CUDA device (0 devices)"
    monkeypatch.setattr(_providers, "_cuda_device", lambda: None)
    assert _providers.probe(CUDA, fake) is None
    assert _providers.probe(TRT, fake) is None  # libnvinfer loads, then CUDA's probe
    # An unresolved symbol is not a missing library: left to ORT's own load.
    monkeypatch.setattr(
        _providers,
        "_dlopen",
        lambda name, mode=0: None if "nvinfer" in name else "undefined symbol: Provider_GetHost",
    )
    assert _providers.probe(CUDA, fake) is None


def _pip_tensorrt(root: Path, *libs: str) -> Path:
    """A ``tensorrt_libs`` package as NVIDIA's TensorRT wheels install it (the library files
    are empty: the loader is mocked)."""
    pkg = root / _providers.TRT_PIP_PACKAGE
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for lib in libs:
        (pkg / lib).write_bytes(b"")
    return pkg


def test_tensorrt_from_nvidias_pip_wheels_is_found_without_the_library_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Mocked (no TensorRT here): the loader (``_dlopen``) finds libnvinfer.so.10 and
    libnvonnxparser.so.10 only once they were loaded by path from the pip wheel's folder, as
    glibc resolves a needed library already loaded by its name. The messages are glibc's (as
    the real onnxruntime-gpu wheel gave them on this machine)."""
    fake = fake_ort(monkeypatch, TRT, CUDA, CPU)
    pkg = _pip_tensorrt(tmp_path, "libnvinfer.so.10", "libnvonnxparser.so.10")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_providers, "_capi_lib", lambda ort, name: Path(f"/ort/lib{name}.so"))
    monkeypatch.setattr(_providers, "_cuda_device", lambda: None)
    loaded: list[tuple[str, int]] = []

    def loader(name: str, mode: int = 0) -> str | None:
        have = {Path(n).name for n, _ in loaded}
        if name == "/ort/libtensorrt.so":
            for needed in ("libnvinfer.so.10", "libnvonnxparser.so.10"):
                if needed not in have:
                    return f"{needed}: cannot open shared object file: No such file or directory"
        loaded.append((name, mode))
        return None

    monkeypatch.setattr(_providers, "_dlopen", loader)
    assert _providers.probe(TRT, fake) is None
    from_pip = [(n, m) for n, m in loaded if n.startswith(str(pkg))]
    assert from_pip == [
        (str(pkg / "libnvinfer.so.10"), _providers.ctypes.RTLD_GLOBAL),
        (str(pkg / "libnvonnxparser.so.10"), _providers.ctypes.RTLD_GLOBAL),
    ]
    assert loaded[-1][0] == "/ort/libtensorrt.so"


def test_tensorrt_of_another_major_version_is_named_in_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Mocked (no TensorRT here): ``pip install tensorrt`` brought TensorRT 11; this
    onnxruntime's provider needs libnvinfer.so.10. Dropped once, the reason names both."""
    fake_ort(monkeypatch, TRT, CUDA, CPU)
    pkg = _pip_tensorrt(tmp_path, "libnvinfer.so.11")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_providers, "_capi_lib", lambda ort, name: Path(f"/ort/lib{name}.so"))
    monkeypatch.setattr(_providers, "_cuda_device", lambda: None)

    def loader(name: str, mode: int = 0) -> str | None:
        if name == "/ort/libtensorrt.so":
            return "libnvinfer.so.10: cannot open shared object file: No such file or directory"
        return None

    monkeypatch.setattr(_providers, "_dlopen", loader)
    with capture_logs() as logs:
        backend = OnnxRuntimeBackend()
        OnnxRuntimeBackend()
    assert backend.devices() == (CUDA, CPU)
    (dropped,) = events(logs, "provider_unavailable")
    assert dropped["provider"] == TRT
    assert "libnvinfer.so.10" in dropped["reason"]
    assert str(pkg / "libnvinfer.so.11") in dropped["reason"]


def test_tensorrt_without_cuda_says_why() -> None:
    """Real (this machine): the CPU build of ONNX Runtime has neither provider library, so
    TensorRT is dropped for its own library first, never for CUDA's."""
    reason = _providers.probe(TRT, real_ort)
    assert reason is not None and "libnvinfer" in reason


def _trt_options(fake: FakeOrt) -> list[dict[str, Any]]:
    return [dict(s)[TRT] for s in fake.sessions if TRT in dict(s)]


def test_an_engine_is_built_for_every_batch_size_and_served_with_the_same_range(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Mocked (no TensorRT here): the provider list says TensorRT works and sessions are made
    on the CPU, recording the options they were asked for. The prebuild (trt_build_missing)
    reads the model's input from a CPU session, asks TensorRT for batches 1 to max_batch and
    records that range beside the engines; a serving load then asks for the same range."""
    fake = fake_ort(monkeypatch, TRT, CUDA, CPU)
    _providers._probed.update({TRT: None, CUDA: None})
    cache = tmp_path / "trt"
    path = conv_model(tmp_path / "m.onnx", "N")
    build = OnnxRuntimeBackend(
        OnnxRuntimeBackendConfig(trt_cache_dir=cache, trt_build_missing=True, max_batch=16)
    )
    build.load("lite", path)
    want = {
        "trt_profile_min_shapes": "x:1x3x8x8",
        "trt_profile_opt_shapes": "x:8x3x8x8",
        "trt_profile_max_shapes": "x:16x3x8x8",
    }
    (built,) = _trt_options(fake)
    assert {k: built[k] for k in want} == want
    assert built["trt_engine_cache_path"] == str(cache / "lite")
    assert ort_backend.TrtProfile.load(cache / "lite") == ort_backend.TrtProfile(
        "x", (3, 8, 8), 16, 8
    )
    # What ORT's TensorRT provider would have written there (no TensorRT here).
    (cache / "lite" / "TensorrtExecutionProvider_TRTKernel_graph_0_sm90.engine").write_bytes(b"x")
    serve = OnnxRuntimeBackend(OnnxRuntimeBackendConfig(trt_cache_dir=cache, max_batch=64))
    with capture_logs() as logs:
        serve.load("lite", path)
    assert {k: _trt_options(fake)[-1][k] for k in want} == want  # the recorded range, not 64
    assert not events(logs, "trt_profile_missing")


def test_an_engine_without_its_recorded_range_is_used_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Mocked as above: an engine folder with no profile.json (built by something else)."""
    fake = fake_ort(monkeypatch, TRT, CUDA, CPU)
    _providers._probed.update({TRT: None, CUDA: None})
    cache = tmp_path / "trt"
    (cache / "v").mkdir(parents=True)
    (cache / "v" / "TensorrtExecutionProvider_TRTKernel_graph_0_sm90.engine").write_bytes(b"x")
    path = conv_model(tmp_path / "m.onnx", "N")
    backend = OnnxRuntimeBackend(OnnxRuntimeBackendConfig(trt_cache_dir=cache))
    with capture_logs() as logs:
        backend.load("v", path)
        backend.load("v", path)
    assert all("trt_profile_min_shapes" not in o for o in _trt_options(fake))
    (warned,) = events(logs, "trt_profile_missing")
    assert warned["variant"] == "v" and warned["log_level"] == "warning"
    # A profile that cannot be read costs TensorRT, not the load.
    (cache / "v" / ort_backend.TRT_PROFILE_FILE).write_text('{"input": "x", "dims": [3]}')
    with capture_logs() as logs:
        model = backend.load("v", path)
    assert model.infer(np.ones((2, 3, 8, 8), np.float32)).shape == (2, 4)
    assert list(dict(fake.sessions[-1])) == [CUDA, CPU]
    (bad,) = events(logs, "trt_profile_unusable")
    assert "unreadable TensorRT profile" in bad["error"] and bad["using"] == [CUDA, CPU]


def test_a_fixed_batch_model_gets_no_range(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Mocked as above: a model that takes a batch of exactly 1 has one shape: no range asked
    for when building or serving, and no warning about a missing one."""
    fake = fake_ort(monkeypatch, TRT, CUDA, CPU)
    _providers._probed.update({TRT: None, CUDA: None})
    path = conv_model(tmp_path / "m.onnx", 1)
    OnnxRuntimeBackend(
        OnnxRuntimeBackendConfig(trt_cache_dir=tmp_path, trt_build_missing=True)
    ).load("one", path)
    (tmp_path / "one" / "TensorrtExecutionProvider_TRTKernel_graph_0_sm90.engine").write_bytes(b"x")
    with capture_logs() as logs:
        OnnxRuntimeBackend(OnnxRuntimeBackendConfig(trt_cache_dir=tmp_path)).load("one", path)
    assert [o.get("trt_profile_min_shapes") for o in _trt_options(fake)] == [None, None]
    assert ort_backend.TrtProfile.load(tmp_path / "one") == ort_backend.TrtProfile(
        "x", (3, 8, 8), 1, 1, fixed_batch=True
    )
    assert not events(logs, "trt_profile_missing")


def test_a_prebuild_with_another_range_records_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Mocked as above: building again with another max_batch records (and asks ONNX Runtime,
    which then rebuilds the engine, for) the new range."""
    fake = fake_ort(monkeypatch, TRT, CUDA, CPU)
    _providers._probed.update({TRT: None, CUDA: None})
    path = conv_model(tmp_path / "m.onnx", "N")
    for top in (16, 4):
        cfg = OnnxRuntimeBackendConfig(
            trt_cache_dir=tmp_path, trt_build_missing=True, max_batch=top
        )
        OnnxRuntimeBackend(cfg).load("v", path)
    assert [o["trt_profile_max_shapes"] for o in _trt_options(fake)] == ["x:16x3x8x8", "x:4x3x8x8"]
    assert _trt_options(fake)[-1]["trt_profile_opt_shapes"] == "x:4x3x8x8"  # opt <= max
    assert ort_backend.TrtProfile.load(tmp_path / "v") == ort_backend.TrtProfile(
        "x", (3, 8, 8), 4, 4
    )
