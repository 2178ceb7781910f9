"""ONNX Runtime backend: TensorRT, CUDA and CPU execution providers, in the configured order.

The GPU wheel lists GPU providers even on a machine where none works, so the providers a
session really got are read back with ``session.get_providers()`` after it is made, logged,
and reported in the worker's birth message.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from faillite.config import BackendSection
from faillite.log import get_logger
from workers.backends.base import (
    Backend,
    BackendError,
    BackendUnavailableError,
    LoadedModel,
    check_file,
)
from workers.backends.registry import register

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

log = get_logger("backend.onnxruntime")


class OnnxRuntimeBackendConfig(BackendSection):
    """``backend: {type: onnxruntime, ...}``: execution providers in order of preference."""

    type: Literal["onnxruntime"] = "onnxruntime"
    providers: tuple[str, ...] = (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    intra_op_threads: int = Field(default=0, ge=0)
    trt_cache_dir: Path | None = None


class OrtModel(LoadedModel):
    def __init__(self, variant: str, session: Any) -> None:
        self.variant = variant
        self._session = session
        self.providers = tuple(session.get_providers())
        inp = session.get_inputs()[0]
        self._input = inp.name
        self._output = session.get_outputs()[0].name
        self.input_shape = tuple(d if isinstance(d, int) else 1 for d in inp.shape)

    def infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        import numpy as np  # here, not at module level: a broker node imports this module

        out = self._session.run([self._output], {self._input: batch})[0]
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self._session = None


@register(OnnxRuntimeBackendConfig)
class OnnxRuntimeBackend(Backend):
    type: ClassVar[str] = "onnxruntime"

    def __init__(self, cfg: OnnxRuntimeBackendConfig | None = None) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise BackendUnavailableError(
                "onnxruntime is not installed: pip install 'faillite[cpu]' or 'faillite[gpu]'"
            ) from exc
        self._ort = onnxruntime
        self.cfg = cfg or OnnxRuntimeBackendConfig()
        available = set(onnxruntime.get_available_providers())
        self._providers = tuple(p for p in self.cfg.providers if p in available)
        if not self._providers:
            raise BackendUnavailableError(
                f"none of the configured providers {list(self.cfg.providers)} is available; "
                f"onnxruntime offers {sorted(available)}"
            )

    def devices(self) -> tuple[str, ...]:
        return self._providers

    def _provider_options(self) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        for p in self._providers:
            opts: dict[str, Any] = {}
            if p == "TensorrtExecutionProvider" and self.cfg.trt_cache_dir is not None:
                # Engines are built ahead of time by the field kit; the cache makes a failover
                # load deserialize them instead of rebuilding for minutes.
                opts = {
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(self.cfg.trt_cache_dir),
                }
            out.append((p, opts))
        return out

    def load(self, variant: str, path: Path) -> OrtModel:
        check_file(variant, path)
        so = self._ort.SessionOptions()
        so.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.cfg.intra_op_threads:
            so.intra_op_num_threads = self.cfg.intra_op_threads
        so.log_severity_level = 3
        try:
            session = self._ort.InferenceSession(
                str(path), sess_options=so, providers=self._provider_options()
            )
        except Exception as exc:  # ORT raises its own untyped errors for bad files
            raise BackendError(f"onnxruntime cannot load {variant!r} from {path}: {exc}") from exc
        model = OrtModel(variant, session)
        wanted = self._providers[0]
        if model.providers[0] != wanted:
            log.warning(
                "provider_fallback", variant=variant, wanted=wanted, got=list(model.providers)
            )
        return model
