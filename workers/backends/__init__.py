"""Inference backends, chosen by the ``type`` key of a worker's ``backend`` config."""

from __future__ import annotations

from faillite.config import OnnxRuntimeBackendConfig, TensorRTBackendConfig
from workers.backends.base import (
    Backend,
    BackendError,
    BackendUnavailableError,
    LoadedModel,
    ModelFileMissingError,
)

__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailableError",
    "LoadedModel",
    "ModelFileMissingError",
    "create_backend",
]


def create_backend(cfg: OnnxRuntimeBackendConfig | TensorRTBackendConfig) -> Backend:
    """Instantiate the backend that ``cfg.type`` names (imported lazily: optional runtimes)."""
    if isinstance(cfg, OnnxRuntimeBackendConfig):
        from workers.backends.ort import OnnxRuntimeBackend

        return OnnxRuntimeBackend(cfg)
    from workers.backends.tensorrt import TensorRTBackend

    return TensorRTBackend(cfg)
