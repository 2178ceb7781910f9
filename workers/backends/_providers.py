"""Which ONNX Runtime execution providers can really work here, probed once per process, and
ONNX Runtime's own log routed into the project's log.

The GPU wheel of ONNX Runtime lists ``TensorrtExecutionProvider`` and ``CUDAExecutionProvider``
wherever it is installed, whether or not TensorRT, CUDA, cuDNN or a GPU are there. A session
asked for a provider that cannot load prints a multi-line banner (not JSON) and retries
without it, paying the failed load again at every session. So each GPU provider is probed
once per process (:func:`unusable_reason`, cached), by loading with :mod:`ctypes` what the
provider loads:

- CUDA: ONNX Runtime's ``libonnxruntime_providers_cuda.so`` (which pulls in the CUDA runtime,
  cuBLAS and cuDNN it was built against), then the driver (``libcuda.so.1``: ``cuInit`` and at
  least one device). Where the CUDA libraries come from NVIDIA's pip packages rather than the
  library path, ``onnxruntime.preload_dlls()`` is tried once (its prints captured).
- TensorRT: ONNX Runtime's ``libonnxruntime_providers_tensorrt.so`` (which pulls in the
  TensorRT major version it was built against: ``libnvinfer.so.10`` and
  ``libnvonnxparser.so.10`` for onnxruntime-gpu 1.31), or ``libnvinfer`` alone where the build
  has no such library; then CUDA's probe, which TensorRT runs on. A library the loader cannot
  find is looked for in NVIDIA's pip wheels (``tensorrt_libs``, found without importing it)
  and loaded from there; a different major version found instead is named in the reason
  (``pip install tensorrt`` brings TensorRT 11, which onnxruntime-gpu 1.31 cannot use).

A provider that cannot work is dropped with one ``provider_unavailable`` warning per process
(provider, reason), never one per session.

ONNX Runtime's own messages (its C++ logger): where the installed version has
``onnxruntime.set_default_logger_callback`` (1.32 and later), they are captured and re-emitted
as structured ``onnxruntime_log`` events (severity warning and above; ORT's severity, category
and code location as fields). ORT sends messages of its internal worker threads to its platform
sink (stderr) even then, so the threshold stays at warning, which those threads do not reach
in practice. Without the callback (older versions), ORT's default logger and every session's
are set to FATAL, i.e. silenced: errors still reach us as Python exceptions, which the backend
logs itself. Either way the log stays one JSON event per line. See :func:`configure_ort_logging`
and :data:`SESSION_LOG_SEVERITY`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.util
import io
import re
import sys
import threading
from pathlib import Path
from typing import Any

from faillite.log import get_logger

log = get_logger("backend.onnxruntime")

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_PROVIDERS = frozenset({TRT, CUDA})

# TensorRT's core library, newest first (ONNX Runtime 1.20+ builds against TensorRT 10).
NVINFER_LIBS = ("libnvinfer.so.10", "libnvinfer.so.8")
# The package NVIDIA's TensorRT wheels (tensorrt-cu12-libs, tensorrt-cu13-libs) install their
# shared libraries in, off the loader's path.
TRT_PIP_PACKAGE = "tensorrt_libs"
# How glibc's loader says a library (the one asked for, or one it needs) is not found.
_NOT_FOUND = re.compile(r"^(?P<soname>[^\s:/]+\.so(?:\.\d+)*): cannot open shared object file")

# ORT severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal.
_CALLBACK_SEVERITY = 2
_SILENT_SEVERITY = 4
# What sessions are given as ``log_severity_level`` (set by configure_ort_logging).
SESSION_LOG_SEVERITY = _SILENT_SEVERITY

_lock = threading.Lock()
_probed: dict[str, str | None] = {}  # provider -> None (usable) or why not
_logging_configured = False
_preloaded = False


def _dlopen(name: str, mode: int = ctypes.DEFAULT_MODE) -> str | None:
    """None if the library loads, else the loader's reason."""
    try:
        ctypes.CDLL(name, mode=mode)
    except OSError as exc:
        return str(exc)
    return None


def _missing(reason: str | None) -> bool:
    """Whether a load failed for a library not found (a missing CUDA, cuDNN or TensorRT), the
    one failure a probe can be sure of. Anything else (an unresolved symbol, say) is left to
    ONNX Runtime's own load, which the backend retries without the provider if it fails."""
    if reason is None:
        return False
    if "cannot open shared object" in reason or "No such file" in reason:
        return True
    log.debug("provider_probe_inconclusive", error=reason)
    return False


def _provider_lib(ort: Any, name: str, dirs: list[Path] | None = None) -> str | None:
    """Load ONNX Runtime's provider library ``name`` as ORT does (its provider bridge first,
    global), finding what the loader cannot in ``dirs``; None if it loads or cannot be
    judged, else why it cannot load."""
    lib = _capi_lib(ort, name)
    bridge = _capi_lib(ort, "shared")
    if lib is None:
        return f"this onnxruntime build has no {name} provider library"
    if bridge is not None:
        _dlopen(str(bridge), ctypes.RTLD_GLOBAL)
    reason = _load_resolving(str(lib), dirs or [])
    return reason if _missing(reason) else None


def _capi_lib(ort: Any, name: str) -> Path | None:
    """ONNX Runtime's own provider library ``name`` in its capi folder, if the wheel has it."""
    file = getattr(ort, "__file__", None)
    if not file:
        return None
    lib = Path(file).parent / "capi" / f"libonnxruntime_providers_{name}.so"
    return lib if lib.is_file() else None


def _preload(ort: Any) -> None:
    """Once: let ORT load CUDA and cuDNN from NVIDIA's pip packages (it prints; captured)."""
    global _preloaded
    preload = getattr(ort, "preload_dlls", None)
    if _preloaded or preload is None:
        return
    _preloaded = True
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            preload()
    except Exception as exc:  # a missing folder or package: the probe reports what matters
        log.debug("onnxruntime_preload_failed", error=str(exc))
    if out.getvalue().strip():
        log.debug("onnxruntime_preload", output=out.getvalue().strip())


def _cuda_device() -> str | None:
    """None if the CUDA driver initialises and sees a device, else why not."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        return f"no NVIDIA driver: {exc}"
    err = cuda.cuInit(0)
    if err != 0:
        return f"the CUDA driver does not initialise (cuInit error {err})"
    count = ctypes.c_int(0)
    err = cuda.cuDeviceGetCount(ctypes.byref(count))
    if err != 0 or count.value < 1:
        return f"no CUDA device (cuDeviceGetCount error {err}, {count.value} devices)"
    return None


def _probe_cuda(ort: Any) -> str | None:
    if _capi_lib(ort, "cuda") is None:
        return "this onnxruntime build has no CUDA provider library"
    reason = _provider_lib(ort, "cuda")
    if reason is not None:
        _preload(ort)
        reason = _provider_lib(ort, "cuda")
    if reason is not None:
        return f"CUDA provider library does not load: {reason}"
    return _cuda_device()


def _pip_lib_dirs() -> list[Path]:
    """The folders of NVIDIA's TensorRT pip wheels, found without importing them."""
    try:
        spec = importlib.util.find_spec(TRT_PIP_PACKAGE)
    except (ImportError, ValueError):
        return []
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []


def _load_resolving(name: str, dirs: list[Path], mode: int = ctypes.DEFAULT_MODE) -> str | None:
    """Load ``name`` as :func:`_dlopen` does; where the loader cannot find a library (``name``
    or one it needs) that one of ``dirs`` holds, load that one from there (global, so the
    retry resolves it by name) and try again."""
    tried: set[str] = set()
    while True:
        reason = _dlopen(name, mode)
        found = _NOT_FOUND.match(reason or "")
        if found is None or found["soname"] in tried:
            return reason
        soname = found["soname"]
        tried.add(soname)
        path = next((d / soname for d in dirs if (d / soname).is_file()), None)
        if path is None or _load_resolving(str(path), dirs, ctypes.RTLD_GLOBAL) is not None:
            return reason


def _other_version(reason: str, dirs: list[Path]) -> str:
    """For a library not found: where another major version of it is, as a hint, or ''."""
    found = _NOT_FOUND.match(reason)
    if found is None:
        return ""
    stem = found["soname"].split(".so")[0]
    others = [p for d in dirs for p in sorted(d.glob(f"{stem}.so.*")) if p.name != found["soname"]]
    path = str(others[0]) if others else None
    if path is None:
        name = ctypes.util.find_library(stem.removeprefix("lib"))  # the loader's cache
        path = name if name and name != found["soname"] else None
    if path is None:
        return ""
    return (
        f"; found {path} instead, another version: this onnxruntime needs {found['soname']}, "
        "the major version it was built against"
    )


def _probe_trt(ort: Any) -> str | None:
    dirs = _pip_lib_dirs()
    cuda = _probe_cuda(ort)  # first: it preloads the CUDA libraries the TensorRT provider needs
    if _capi_lib(ort, "tensorrt") is None:  # no provider library: TensorRT's core one is it
        reasons = [r for r in (_load_resolving(n, dirs) for n in NVINFER_LIBS) if r is not None]
        if len(reasons) == len(NVINFER_LIBS):
            return f"TensorRT does not load: {reasons[0]}{_other_version(reasons[0], dirs)}"
    elif (reason := _provider_lib(ort, "tensorrt", dirs)) is not None:
        return f"TensorRT provider library does not load: {reason}{_other_version(reason, dirs)}"
    # The TensorRT provider runs on CUDA's context and libraries.
    return None if cuda is None else f"TensorRT runs on CUDA, which cannot work here: {cuda}"


def probe(provider: str, ort: Any) -> str | None:
    """Why ``provider`` cannot work here, or None; uncached (see :func:`unusable_reason`)."""
    if provider not in GPU_PROVIDERS or not sys.platform.startswith("linux"):
        return None  # CPU always works; elsewhere ORT's own check is all there is
    return _probe_trt(ort) if provider == TRT else _probe_cuda(ort)


def unusable_reason(provider: str, ort: Any) -> str | None:
    """Why ``provider`` cannot work here, or None. Probed once per process; the first answer
    that drops a provider is logged once (``provider_unavailable``)."""
    with _lock:
        if provider in _probed:
            return _probed[provider]
        reason = probe(provider, ort)
        _probed[provider] = reason
    if reason is not None:
        log.warning("provider_unavailable", provider=provider, reason=reason)
    return reason


def usable(wanted: tuple[str, ...], ort: Any) -> tuple[str, ...]:
    """The providers of ``wanted`` (in its order) that ORT offers and that can work here."""
    offered = set(ort.get_available_providers())
    return tuple(p for p in wanted if p in offered and unusable_reason(p, ort) is None)


def reset() -> None:
    """Forget every probe (tests only: a process probes once)."""
    global _preloaded
    with _lock:
        _probed.clear()
        _preloaded = False


def _on_ort_log(severity: int, category: str, logid: str, location: str, message: str) -> None:
    level = "error" if severity >= 3 else "warning" if severity == 2 else "info"
    getattr(log, level)(
        "onnxruntime_log",
        severity=severity,
        category=category,
        logid=logid,
        location=location,
        message=message,
    )


def configure_ort_logging(ort: Any) -> int:
    """Route (or silence) ONNX Runtime's own log, once per process (see the module doc).
    Returns the severity level sessions should be given."""
    global _logging_configured, SESSION_LOG_SEVERITY
    with _lock:
        if _logging_configured:
            return SESSION_LOG_SEVERITY
        _logging_configured = True
        callback = getattr(ort, "set_default_logger_callback", None)
        if callback is not None:
            try:
                callback(_on_ort_log, _CALLBACK_SEVERITY)
            except Exception as exc:  # no environment yet, or an older signature: silence
                log.debug("onnxruntime_log_callback_failed", error=str(exc))
            else:
                SESSION_LOG_SEVERITY = _CALLBACK_SEVERITY
                return SESSION_LOG_SEVERITY
        ort.set_default_logger_severity(_SILENT_SEVERITY)
        SESSION_LOG_SEVERITY = _SILENT_SEVERITY
        return SESSION_LOG_SEVERITY
