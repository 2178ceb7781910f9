"""Backend plugins: chosen by the config's ``type``, real ONNX Runtime, clear errors.

The TensorRT engine backend needs an NVIDIA GPU with TensorRT, which this machine does not
have: its test checks only that it reports itself unavailable, with the package to install.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faillite.config import OnnxRuntimeBackendConfig, TensorRTBackendConfig
from workers.backends import (
    BackendError,
    BackendUnavailableError,
    ModelFileMissingError,
    create_backend,
)


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
