"""Backend plug-ins: a registry keyed by the config's ``type``, real ONNX Runtime, clear errors.

The TensorRT engine backend needs an NVIDIA GPU with TensorRT, which this machine does not
have: its test checks only that it reports itself unavailable, with the package to install.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from faillite.compat import python_code
from faillite.config import ConfigError, WorkerConfig, load_mesh_config
from workers.backends import (
    BackendError,
    BackendUnavailableError,
    ModelFileMissingError,
    create_backend,
    registry,
)
from workers.backends.ort import OnnxRuntimeBackend, OnnxRuntimeBackendConfig
from workers.backends.tensorrt import TensorRTBackend, TensorRTBackendConfig


def test_onnxruntime_backend_reports_real_providers(models_dir: Path) -> None:
    backend = create_backend(OnnxRuntimeBackendConfig(intra_op_threads=1))
    assert backend.type == "onnxruntime"
    # The GPU providers are asked for first but this box has none: the session says so.
    assert backend.devices() == ("CPUExecutionProvider",)
    model = backend.load("efficientnet_lite0", models_dir / "efficientnet_lite0.onnx")
    assert model.providers == ("CPUExecutionProvider",)
    out = model.infer(np.zeros(model.input_shape, np.float32))
    assert out.shape == (1, 1000) and np.isfinite(out).all()


def test_missing_and_corrupt_model_files(tmp_path: Path) -> None:
    backend = create_backend(OnnxRuntimeBackendConfig())
    with pytest.raises(ModelFileMissingError, match="not on disk"):
        backend.load("ghost", tmp_path / "ghost.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(BackendError, match="cannot load 'bad'"):
        backend.load("bad", bad)


def test_no_configured_provider_available() -> None:
    with pytest.raises(BackendUnavailableError, match="none of the configured providers"):
        create_backend(OnnxRuntimeBackendConfig(providers=("TensorrtExecutionProvider",)))


def test_tensorrt_backend_unavailable_without_an_nvidia_gpu() -> None:
    with pytest.raises(BackendUnavailableError, match=r"faillite\[jetson\]|no CUDA device"):
        create_backend(TensorRTBackendConfig(type="tensorrt"))


def test_a_jetson_with_a_mismatched_tensorrt_falls_back_and_says_why_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """JetPack's TensorRT and CUDA are stand-ins here (no Jetson): the modules import, but the
    CUDA runtime finds no device, as on a board whose JetPack and driver do not match."""
    cudart = types.SimpleNamespace(cudaGetDeviceCount=lambda: (35, 0))  # insufficient driver
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setitem(sys.modules, "cuda", types.SimpleNamespace(cudart=cudart))
    told: list[tuple[str, str]] = []
    backend = registry.create_backend_or_fallback(
        TensorRTBackendConfig(type="tensorrt"),
        OnnxRuntimeBackendConfig(providers=("CPUExecutionProvider",)),
        lambda kind, why: told.append((kind, why)),
    )
    assert backend.type == "onnxruntime" and backend.devices() == ("CPUExecutionProvider",)
    assert told == [("tensorrt", "the tensorrt backend found no CUDA device")]
    # Without a fallback the worker cannot run, and the error says why.
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        registry.create_backend_or_fallback(
            TensorRTBackendConfig(type="tensorrt"), None, lambda kind, why: None
        )


def test_a_tensorrt_of_another_jetpack_is_no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in for JetPack 6.0's TensorRT 8.6 on a board the kit expects 6.1 (TensorRT 10)
    on: its engines would not deserialize, so the backend is unavailable and says which."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "8.6.2"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    cudart = types.SimpleNamespace(cudaGetDeviceCount=lambda: (0, 1))
    monkeypatch.setitem(sys.modules, "cuda", types.SimpleNamespace(cudart=cudart))
    with pytest.raises(
        BackendUnavailableError, match=r"TensorRT 8\.6\.2 is installed, the kit expects TensorRT 10"
    ):
        create_backend(TensorRTBackendConfig(type="tensorrt", expect_major=10))


def test_registry_maps_each_type_to_its_config_and_backend_class() -> None:
    found = registry.backends()
    assert found["onnxruntime"].config is OnnxRuntimeBackendConfig
    assert found["onnxruntime"].backend is OnnxRuntimeBackend
    assert found["tensorrt"].config is TensorRTBackendConfig
    assert found["tensorrt"].backend is TensorRTBackend
    # A worker section is parsed as its backend's config class.
    w = WorkerConfig.model_validate({"id": "w1", "backend": {"type": "tensorrt"}})
    assert isinstance(w.backend, TensorRTBackendConfig)
    assert isinstance(WorkerConfig(id="w2").backend, OnnxRuntimeBackendConfig)  # the default


@pytest.mark.parametrize(
    ("section", "match"),
    [
        (
            "{type: onnxruntime, intra_op_thread: 2}",
            r"workers\.0\.backend\.intra_op_thread: unknown key",
        ),
        ("{type: tensorrt, engine_dir: /x}", r"workers\.0\.backend\.engine_dir: unknown key"),
        ("{type: tflite}", r"workers\.0\.backend: unknown backend type 'tflite'.*onnxruntime"),
        ("{intra_op_threads: 1}", r"workers\.0\.backend: a backend section needs a 'type'"),
    ],
)
def test_backend_sections_checked_at_load_time(tmp_path: Path, section: str, match: str) -> None:
    p = tmp_path / "mesh.yaml"
    p.write_text(f"workers:\n  - id: w1\n    backend: {section}\n")
    with pytest.raises(ConfigError, match=match):
        load_mesh_config(p)


def test_loading_a_mesh_config_imports_no_runtime() -> None:
    """A broker node loads the same mesh config without numpy, cv2 or onnxruntime installed."""
    code = (
        "import sys; from faillite.config import load_mesh_config, packaged_config; "
        "cfg = load_mesh_config(packaged_config('demo.yaml')); assert cfg.workers; "
        "heavy = ('numpy', 'cv2', 'onnxruntime', 'tensorrt'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run(python_code(code), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
