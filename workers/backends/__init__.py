"""Inference backends, chosen by the ``type`` key of a worker's ``backend`` config.

:mod:`workers.backends.registry` maps each type to its config class and backend class; each
backend module (``ort``: ONNX Runtime, ``tensorrt``: native engines) registers itself.
"""

from __future__ import annotations

from workers.backends.base import (
    Backend,
    BackendError,
    BackendUnavailableError,
    LoadedModel,
    ModelFileMissingError,
    Staged,
)
from workers.backends.registry import create_backend, create_backend_or_fallback

__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailableError",
    "LoadedModel",
    "ModelFileMissingError",
    "Staged",
    "create_backend",
    "create_backend_or_fallback",
]
