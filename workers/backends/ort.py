"""ONNX Runtime backend: TensorRT, CUDA and CPU execution providers, in the configured order.

Providers: the GPU wheel lists GPU providers even on a machine where none works. Each one is
probed once per process (:mod:`workers.backends._providers`); one that cannot work is dropped
with one ``provider_unavailable`` warning, and ONNX Runtime's own log is routed into ours (or
silenced) so the log stays one JSON event per line. The providers a session really got are
read back with ``session.get_providers()`` after it is made, logged, and reported in the
worker's birth message. A session that fails on a GPU provider is retried on the next one
(``provider_failed``), by us rather than by ONNX Runtime's own fallback, which prints a banner.

CUDA: :meth:`OnnxRuntimeBackend.start` brings CUDA up when the worker starts (a tiny keeper
session, one inference, kept for the life of the process), so a cold backup later loads into an
initialised context. cuDNN's convolution search is ``cudnn_conv_algo_search`` (``HEURISTIC``
by default, or ``EXHAUSTIVE``); ``DEFAULT`` is refused: measured on an H200 it runs the
EfficientNet-Lite depthwise convolutions at 213-345 ms per inference, for ever.

TensorRT: engines are never built while serving (a build takes seconds to minutes, in the
middle of a failover). Each variant has its own engine cache folder,
``trt_cache_dir/<variant>/``; a variant whose folder holds no ``*.engine`` file is loaded on
CUDA (and CPU) instead, with one ``trt_engine_missing`` warning. The engines get there on the
GPU box itself (an engine is specific to the GPU model and the TensorRT version): load each
variant once with ``trt_build_missing: true`` in the backend section, e.g. ``faillite profile
--device-class <class>`` with a config whose worker of that class has ``backend: {type:
onnxruntime, trt_cache_dir: <dir>, trt_build_missing: true}``; ONNX Runtime's TensorRT
provider then writes the engine (``trt_engine_cache_enable``) into the variant's folder, and
the folders are copied with the models. A worker batches frames, so an engine must take every
batch size from 1 to ``max_batch``: the engine is built for that range explicitly (TensorRT
optimisation profile: min 1, opt ``trt_opt_batch``, max ``max_batch``), and the range is
recorded beside it (``profile.json``: input name and shape) so that serving asks for the same
one. Without it ONNX Runtime would build for the first batch size it saw and rebuild, in the
middle of serving, at the first larger batch. (``trt_dump_ep_context_model`` would instead write an
EP-context model that embeds the engine; this backend loads the original ONNX file plus the
cache.) The native ``tensorrt`` backend (:mod:`workers.backends.tensorrt`) is the Jetson path.

Inference uses ONNX Runtime's I/O binding: the input is bound from the numpy batch, the output
to the device the session runs on (CUDA memory on a GPU, copied back once), so ONNX Runtime
does the copies in its own stream. A model whose input has a symbolic batch dimension takes
batches of up to ``max_batch`` images in one run; a fixed batch of 1 runs image by image.
"""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import orjson
from pydantic import Field, field_validator

from faillite.config import BackendSection
from faillite.log import get_logger
from workers.backends import _providers
from workers.backends._providers import CPU, CUDA, GPU_PROVIDERS, TRT
from workers.backends.base import (
    Backend,
    BackendError,
    BackendUnavailableError,
    LoadedModel,
    Staged,
    check_file,
)
from workers.backends.registry import register

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

log = get_logger("backend.onnxruntime")

# The keeper: Conv(3->4, 3x3, pad 1) + Relu on a 1x3x8x8 input, opset 13, IR 8; the serialized
# form of what tests/unit/test_ort_gpu_runtime.py builds with onnx.helper (the onnx package is
# not a worker dependency, so the bytes are carried here).
_KEEPER_ONNX = (
    "CAgSCGZhaWxsaXRlOsAECiIKAXgKAXcSAWMiBENvbnYqEQoEcGFkc0ABQAFAAUABoAEHCgwKAWMSAXkiBFJlbHUS"
    "D2ZhaWxsaXRlX2tlZXBlcirAAwgECAMIAwgDEAFCAXdKsAMK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8Ctcj"
    "PArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK"
    "1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8Ctcj"
    "PArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK"
    "1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8Ctcj"
    "PArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK"
    "1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8CtcjPArXIzwK1yM8Ctcj"
    "PArXIzxaGwoBeBIWChQIARIQCgIIAQoCCAMKAggICgIICGIbCgF5EhYKFAgBEhAKAggBCgIIBAoCCAgKAggIQgQK"
    "ABAN"
)
KEEPER_VARIANT = "_device_keeper"

# Process-wide: the keeper sessions (device id -> model) and variants already warned about.
_keepers: dict[int, OrtModel] = {}
_keeper_lock = threading.Lock()
_trt_warned: set[str] = set()

# Beside a variant's engines: the input shapes they were built for (TrtProfile).
TRT_PROFILE_FILE = "profile.json"


@dataclass(frozen=True, slots=True)
class TrtProfile:
    """The input shapes a variant's TensorRT engine is built for: batches of 1 to
    ``max_batch`` of ``dims`` (the input's shape after its batch dimension), tuned for
    ``opt_batch``."""

    input: str
    dims: tuple[int, ...]
    max_batch: int
    opt_batch: int
    fixed_batch: bool = False  # the model takes exactly max_batch: one shape, no range

    def options(self) -> dict[str, str]:
        """ONNX Runtime's TensorRT provider options for this profile."""
        if self.fixed_batch:
            return {}

        def shape(n: int) -> str:
            return f"{self.input}:{'x'.join(str(d) for d in (n, *self.dims))}"

        return {
            "trt_profile_min_shapes": shape(1),
            "trt_profile_opt_shapes": shape(self.opt_batch),
            "trt_profile_max_shapes": shape(self.max_batch),
        }

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        doc = {"input": self.input, "dims": list(self.dims), "max_batch": self.max_batch}
        doc |= {"opt_batch": self.opt_batch, "fixed_batch": self.fixed_batch}
        (folder / TRT_PROFILE_FILE).write_bytes(orjson.dumps(doc))

    @classmethod
    def load(cls, folder: Path) -> TrtProfile | None:
        """The profile recorded in ``folder``; None if there is none. Raises BackendError for
        one that cannot be read."""
        path = folder / TRT_PROFILE_FILE
        if not path.is_file():
            return None
        try:
            doc = orjson.loads(path.read_bytes())
            profile = cls(
                str(doc["input"]),
                tuple(int(d) for d in doc["dims"]),
                int(doc["max_batch"]),
                int(doc["opt_batch"]),
                bool(doc.get("fixed_batch", False)),
            )
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"unreadable TensorRT profile {path}: {exc}") from exc
        if not 1 <= profile.opt_batch <= profile.max_batch or min(profile.dims, default=0) < 1:
            raise BackendError(f"TensorRT profile {path} has impossible shapes: {profile}")
        return profile


def keeper_model_bytes() -> bytes:
    """The keeper's ONNX model (see :meth:`OnnxRuntimeBackend.start`)."""
    return base64.b64decode(_KEEPER_ONNX)


class OnnxRuntimeBackendConfig(BackendSection):
    """``backend: {type: onnxruntime, ...}``: execution providers in order of preference."""

    type: Literal["onnxruntime"] = "onnxruntime"
    providers: tuple[str, ...] = (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    intra_op_threads: int = Field(default=0, ge=0)
    device_id: int = Field(default=0, ge=0)  # the GPU (CUDA's numbering) of CUDA and TensorRT
    cudnn_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE"] = "HEURISTIC"
    # Per-variant TensorRT engine caches, <trt_cache_dir>/<variant>/ (see the module doc).
    trt_cache_dir: Path | None = None
    # Build a missing engine at load (minutes): for the prebuild on the GPU box, not serving.
    trt_build_missing: bool = False
    # The most images one run of a model with a symbolic batch dimension takes (and the
    # largest batch a TensorRT engine is built for).
    max_batch: int = Field(default=64, ge=1, le=4096)
    # The batch size TensorRT tunes its kernels for (the worker's batching.max_batch).
    trt_opt_batch: int = Field(default=8, ge=1, le=4096)

    @field_validator("cudnn_conv_algo_search", mode="before")
    @classmethod
    def _not_default(cls, v: Any) -> Any:
        if isinstance(v, str) and v.upper() == "DEFAULT":
            raise ValueError(
                "cuDNN's DEFAULT search is refused: it picks pathological algorithms for "
                "depthwise convolutions (213-345 ms per inference, for ever, measured on an "
                "H200); use HEURISTIC (the default) or EXHAUSTIVE"
            )
        return v


class OrtModel(LoadedModel):
    def __init__(
        self, variant: str, session: Any, *, max_batch: int = 64, device_id: int = 0
    ) -> None:
        self.variant = variant
        self._session = session
        self.providers = tuple(session.get_providers())
        inp = session.get_inputs()[0]
        self._input = inp.name
        self._output = session.get_outputs()[0].name
        self.input_shape = tuple(d if isinstance(d, int) else 1 for d in inp.shape)
        first = inp.shape[0] if inp.shape else 1
        # A fixed batch dimension is what the model takes; a symbolic one, up to max_batch.
        self._symbolic_batch = not (isinstance(first, int) and first > 0)
        self.max_batch = max_batch if self._symbolic_batch else int(first)
        # The output stays where the session runs until copied back once.
        self._device = "cuda" if self.providers and self.providers[0] in GPU_PROVIDERS else "cpu"
        self._device_id = device_id if self._device == "cuda" else 0

    def infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        import numpy as np  # here, not at module level: a broker node imports this module

        session = self._session
        if session is None:
            raise BackendError(f"model {self.variant!r} was closed")
        x = np.ascontiguousarray(batch, dtype=np.float32)
        n = x.shape[0] if x.ndim else 1
        # Larger batches than one run takes go in slices: max_batch at a time (a symbolic
        # batch dimension), or image by image (a fixed batch of 1). Other fixed batches are
        # passed as given: ONNX Runtime says what it expected.
        step = self.max_batch
        if n > step and (self._symbolic_batch or step == 1):
            return np.concatenate([self._run(session, x[i : i + step]) for i in range(0, n, step)])
        return self._run(session, x)

    def stage(self, batch: npt.NDArray[np.float32]) -> Staged:
        """On a GPU, copy the batch into device memory now (the batcher's pool, while the
        previous batch infers); the run then binds that copy. A batch that runs in slices, or a
        copy that fails, is left for :meth:`infer` to bind from the host."""
        import numpy as np

        x = np.ascontiguousarray(batch, dtype=np.float32)
        if self._device != "cuda" or self._session is None or x.shape[0] > self.max_batch:
            return Staged(x)
        import onnxruntime

        try:
            value = onnxruntime.OrtValue.ortvalue_from_numpy(x, "cuda", self._device_id)
        except Exception as exc:  # ORT's own errors (device memory): bind from the host
            log.warning("stage_failed", variant=self.variant, error=str(exc))
            return Staged(x)
        return Staged(x, value)

    def infer_staged(self, staged: Staged) -> npt.NDArray[np.float32]:
        session = self._session
        if staged.device is None or session is None:
            return self.infer(staged.host)
        return self._run(session, staged.host, staged.device)

    def _run(
        self, session: Any, x: npt.NDArray[np.float32], on_device: Any = None
    ) -> npt.NDArray[np.float32]:
        import numpy as np

        binding = session.io_binding()
        if on_device is not None:
            binding.bind_ortvalue_input(self._input, on_device)
        else:
            binding.bind_cpu_input(self._input, x)
        binding.bind_output(self._output, self._device, self._device_id)
        try:
            session.run_with_iobinding(binding)
        except Exception as exc:  # ORT raises its own untyped errors (shape, device)
            raise BackendError(
                f"onnxruntime cannot run {self.variant!r} on a batch of shape {x.shape}: {exc}"
            ) from exc
        out = binding.copy_outputs_to_cpu()[0]
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
        self._log_severity = _providers.configure_ort_logging(onnxruntime)
        self._providers = _providers.usable(self.cfg.providers, onnxruntime)
        if not self._providers:
            available = set(onnxruntime.get_available_providers())
            raise BackendUnavailableError(
                f"none of the configured providers {list(self.cfg.providers)} is available; "
                f"onnxruntime offers {sorted(available)}"
            )

    def devices(self) -> tuple[str, ...]:
        return self._providers

    # -- providers -------------------------------------------------------------------------

    def trt_cache(self, variant: str) -> Path | None:
        """The variant's TensorRT engine cache folder, None without ``trt_cache_dir``."""
        return None if self.cfg.trt_cache_dir is None else self.cfg.trt_cache_dir / variant

    def providers_for(self, variant: str) -> tuple[str, ...]:
        """The providers a load of ``variant`` asks for: TensorRT only with its engine."""
        providers = self._providers
        if TRT not in providers or self.cfg.trt_build_missing:
            return providers
        cache = self.trt_cache(variant)
        if cache is not None and any(cache.glob("*.engine")):
            return providers
        rest = tuple(p for p in providers if p != TRT)
        if variant not in _trt_warned:
            _trt_warned.add(variant)
            log.warning(
                "trt_engine_missing",
                variant=variant,
                path=None if cache is None else str(cache),
                using=list(rest),
                why="engines are prebuilt on the GPU box, never while serving",
            )
        if not rest:
            raise BackendError(
                f"no TensorRT engine for {variant!r} in {cache} and no other provider configured"
            )
        return rest

    def provider_options(
        self,
        providers: tuple[str, ...],
        variant: str | None = None,
        profile: TrtProfile | None = None,
    ) -> list[tuple[str, dict[str, Any]]]:
        """``(provider, options)`` pairs as ``InferenceSession(providers=...)`` takes them."""
        out: list[tuple[str, dict[str, Any]]] = []
        dev = str(self.cfg.device_id)
        for p in providers:
            opts: dict[str, Any] = {}
            if p == CUDA:
                opts = {"device_id": dev, "cudnn_conv_algo_search": self.cfg.cudnn_conv_algo_search}
            elif p == TRT:
                opts = {"device_id": dev}
                cache = self.trt_cache(variant) if variant is not None else None
                if cache is not None:
                    # A failover load deserializes the prebuilt engine instead of building it.
                    opts |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}
                if profile is not None:
                    opts |= profile.options()
            out.append((p, opts))
        return out

    def trt_profile(self, variant: str, path: Path) -> TrtProfile | None:
        """The batch range ``variant``'s engine is built for. Serving: the one recorded beside
        its engines. Building (``trt_build_missing``): the model's own input (read by a CPU
        session) with this config's batch range, recorded there for serving; ONNX Runtime
        rebuilds an engine whose range differs."""
        cache = self.trt_cache(variant)
        if not self.cfg.trt_build_missing:
            recorded = TrtProfile.load(cache) if cache is not None else None
            if recorded is None and cache is not None and f"profile:{variant}" not in _trt_warned:
                _trt_warned.add(f"profile:{variant}")
                log.warning(
                    "trt_profile_missing",
                    variant=variant,
                    path=str(cache),
                    why="an engine without its recorded batch range may be rebuilt while "
                    "serving, at the first batch outside the sizes it was built for",
                )
            return recorded
        inp = self._session(str(path), (CPU,), variant).get_inputs()[0]
        batch, *dims = inp.shape
        if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
            raise BackendError(
                f"{variant!r}: TensorRT needs a fixed input shape after the batch dimension, "
                f"{inp.name!r} has {inp.shape}"
            )
        if isinstance(batch, int) and batch > 0:  # one shape, nothing to range over
            profile = TrtProfile(inp.name, tuple(dims), batch, batch, fixed_batch=True)
        else:
            top = self.cfg.max_batch
            profile = TrtProfile(inp.name, tuple(dims), top, min(self.cfg.trt_opt_batch, top))
        if cache is not None:
            profile.save(cache)
        return profile

    def _session(
        self,
        source: str | bytes,
        providers: tuple[str, ...],
        variant: str,
        profile: TrtProfile | None = None,
    ) -> Any:
        so = self._ort.SessionOptions()
        so.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.cfg.intra_op_threads:
            so.intra_op_num_threads = self.cfg.intra_op_threads
        so.log_severity_level = self._log_severity
        try:
            # enable_fallback=0: ORT's own retry prints a banner to stdout; we retry below.
            return self._ort.InferenceSession(
                source,
                sess_options=so,
                providers=self.provider_options(providers, variant, profile),
                enable_fallback=0,
            )
        except Exception as exc:  # ORT raises its own untyped errors for bad files
            if len(providers) > 1 and providers[0] in GPU_PROVIDERS:
                log.warning(
                    "provider_failed", variant=variant, provider=providers[0], error=str(exc)
                )
                return self._session(source, providers[1:], variant, profile)
            raise BackendError(str(exc)) from exc

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Bring CUDA up now and keep it up: a keeper session (one small convolution) on the
        CUDA provider runs one inference and lives as long as the process, so later loads go
        into an initialised context and cuDNN. Nothing to do without a GPU provider."""
        if not any(p in GPU_PROVIDERS for p in self._providers):
            return
        import numpy as np

        dev = self.cfg.device_id
        with _keeper_lock:
            if dev in _keepers:
                return
            t0 = time.perf_counter()
            try:
                # On CUDA even under TensorRT: TensorRT would build an engine for the keeper.
                session = self._session(keeper_model_bytes(), (CUDA, CPU), KEEPER_VARIANT)
                keeper = OrtModel(KEEPER_VARIANT, session, device_id=dev)
                keeper.infer(np.zeros(keeper.input_shape, dtype=np.float32))
            except BackendError as exc:
                log.warning("device_start_failed", device_id=dev, error=str(exc))
                return
            _keepers[dev] = keeper
        log.info(
            "device_ready",
            device_id=dev,
            providers=list(keeper.providers),
            ms=round((time.perf_counter() - t0) * 1000, 1),
        )

    def load(self, variant: str, path: Path) -> OrtModel:
        check_file(variant, path)
        providers = self.providers_for(variant)
        profile = None
        if TRT in providers:
            try:
                profile = self.trt_profile(variant, path)
            except BackendError as exc:  # a bad profile costs TensorRT, never the load
                providers = tuple(p for p in providers if p != TRT)
                if not providers:
                    raise
                log.warning(
                    "trt_profile_unusable", variant=variant, error=str(exc), using=list(providers)
                )
        try:
            session = self._session(str(path), providers, variant, profile)
        except BackendError as exc:
            raise BackendError(f"onnxruntime cannot load {variant!r} from {path}: {exc}") from exc
        model = OrtModel(
            variant, session, max_batch=self.cfg.max_batch, device_id=self.cfg.device_id
        )
        if model.providers[0] != providers[0]:
            log.warning(
                "provider_fallback", variant=variant, wanted=providers[0], got=list(model.providers)
            )
        return model
