"""Native TensorRT engine backend for Jetson boards.

Engines (``<variant>.engine``) are built ahead of time on the target board by the field kit,
never during a failover: a build takes minutes on a Jetson. This backend only deserializes.
It needs the ``tensorrt`` and ``cuda-python`` packages (``pip install 'faillite[jetson]'``);
without them it reports itself unavailable. It cannot run on a machine without an NVIDIA GPU,
so the test suite checks only that it says so clearly.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from faillite.config import BackendSection
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


class TensorRTBackendConfig(BackendSection):
    """``backend: {type: tensorrt, engines_dir: ...}``: prebuilt ``<variant>.engine`` files."""

    type: Literal["tensorrt"] = "tensorrt"
    engines_dir: Path | None = None
    # The TensorRT major version the engines were built for (a kit's JetPack release): another
    # one cannot deserialize them, so the backend reports itself unavailable.
    expect_major: int | None = Field(default=None, ge=1)


def _check(err: Any, what: str) -> None:
    code = err[0] if isinstance(err, tuple) else err
    if int(code) != 0:
        raise BackendError(f"CUDA call {what} failed with error {int(code)}")


class TrtModel(LoadedModel):
    def __init__(self, variant: str, trt: Any, cudart: Any, engine: Any) -> None:
        import numpy as np

        self.variant = variant
        self.providers = ("TensorRT",)
        self._cudart = cudart
        self._engine = engine
        self._ctx = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._in, self._out = inputs[0], outputs[0]
        self.input_shape = tuple(engine.get_tensor_shape(self._in))
        self._out_shape = tuple(engine.get_tensor_shape(self._out))
        err, self._stream = cudart.cudaStreamCreate()
        _check(err, "cudaStreamCreate")
        self._host_out = np.empty(self._out_shape, dtype=np.float32)
        in_bytes = int(np.prod(self.input_shape)) * 4
        err, self._d_in = cudart.cudaMalloc(in_bytes)
        _check(err, "cudaMalloc")
        err, self._d_out = cudart.cudaMalloc(self._host_out.nbytes)
        _check(err, "cudaMalloc")
        self._ctx.set_tensor_address(self._in, int(self._d_in))
        self._ctx.set_tensor_address(self._out, int(self._d_out))

    def infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        import numpy as np

        cu = self._cudart
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        h2d = cu.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cu.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(
            cu.cudaMemcpyAsync(self._d_in, batch.ctypes.data, batch.nbytes, h2d, self._stream),
            "cudaMemcpyAsync",
        )
        if not self._ctx.execute_async_v3(int(self._stream)):
            raise BackendError(f"TensorRT execution of {self.variant!r} failed")
        _check(
            cu.cudaMemcpyAsync(
                self._host_out.ctypes.data, self._d_out, self._host_out.nbytes, d2h, self._stream
            ),
            "cudaMemcpyAsync",
        )
        _check(cu.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        out: np.ndarray[Any, np.dtype[np.float32]] = self._host_out.copy()
        return out

    def close(self) -> None:
        self._cudart.cudaFree(self._d_in)
        self._cudart.cudaFree(self._d_out)
        self._cudart.cudaStreamDestroy(self._stream)


@register(TensorRTBackendConfig)
class TensorRTBackend(Backend):
    type: ClassVar[str] = "tensorrt"
    file_suffix: ClassVar[str] = ".engine"

    def __init__(self, cfg: TensorRTBackendConfig) -> None:
        try:
            import tensorrt
            from cuda import cudart
        except ImportError as exc:
            raise BackendUnavailableError(
                "the tensorrt backend needs the tensorrt and cuda-python packages on an NVIDIA "
                "device (pip install 'faillite[jetson]')"
            ) from exc
        found = str(getattr(tensorrt, "__version__", "0")).split(".")[0]
        if cfg.expect_major is not None and found != str(cfg.expect_major):
            raise BackendUnavailableError(
                f"TensorRT {getattr(tensorrt, '__version__', '?')} is installed, the kit expects "
                f"TensorRT {cfg.expect_major} (its JetPack release)"
            )
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or count == 0:
            raise BackendUnavailableError("the tensorrt backend found no CUDA device")
        self._trt = tensorrt
        self._cudart = cudart
        self.cfg = cfg
        self._logger = tensorrt.Logger(tensorrt.Logger.WARNING)
        self._runtime = tensorrt.Runtime(self._logger)

    def devices(self) -> tuple[str, ...]:
        return ("TensorRT",)

    def load(self, variant: str, path: Path) -> TrtModel:
        if self.cfg.engines_dir is not None:
            path = self.cfg.engines_dir / (path.stem + self.file_suffix)
        else:
            path = path.with_suffix(self.file_suffix)
        check_file(variant, path)
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise BackendError(
                f"TensorRT cannot deserialize {path}: built for another TensorRT version or GPU?"
            )
        return TrtModel(variant, self._trt, self._cudart, engine)
