"""GPU memory through NVML (the ``nvidia-ml-py`` package, import name ``pynvml``).

A worker reports its GPU in its birth (:func:`probe`: name and total memory, once per process)
and the GPU memory its own process holds in every heartbeat (:func:`used_mb`, sampled at most
once a second: heartbeats may come ten times a second). Where there is no ``pynvml``, no NVIDIA
driver or no GPU (a CPU box, a Jetson: Tegra has no NVML), :func:`probe` returns None and says
so in one info line, and :func:`used_mb` returns 0.0.

The GPU is the one CUDA sees first: ``CUDA_VISIBLE_DEVICES``'s first entry (an index or a
``GPU-`` UUID) where it is set, else NVML's device 0. Memory "used by this process" is NVML's
per-process figure (``nvmlDeviceGetComputeRunningProcesses``) on every GPU; inside a container
without the host's PID namespace NVML lists host PIDs, so the figure is 0 there.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from faillite.log import get_logger

log = get_logger("gpu")

MB = 2**20
SAMPLE_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class GpuInfo:
    name: str  # e.g. "NVIDIA H200"
    total_mb: float
    index: int  # NVML's index of the device


_lock = threading.Lock()
_probed = False
_info: GpuInfo | None = None
_nvml: Any = None  # the pynvml module once nvmlInit succeeded (never shut down: it is cheap)
_sample: tuple[float, float] = (-1e18, 0.0)  # (monotonic time, MB) of the last used_mb sample


def _init() -> Any:
    """pynvml after nvmlInit, or None (with the reason logged once, at info)."""
    try:
        import pynvml
    except ImportError:
        log.info("gpu_none", reason="pynvml not installed (pip install nvidia-ml-py)")
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError subclasses: no library, no driver, no permission
        log.info("gpu_none", reason=f"NVML does not initialise: {exc}")
        return None
    return pynvml


def _handle(nvml: Any) -> tuple[Any, int]:
    """The device CUDA sees first, and its NVML index."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if first.startswith(("GPU-", "MIG-")):
        h = nvml.nvmlDeviceGetHandleByUUID(first)
        return h, int(nvml.nvmlDeviceGetIndex(h))
    index = int(first) if first.isdigit() else 0
    return nvml.nvmlDeviceGetHandleByIndex(index), index


def probe() -> GpuInfo | None:
    """This process's GPU (name, total memory), or None where there is none; NVML is asked
    once per process, later calls return the same answer."""
    global _probed, _info, _nvml
    with _lock:
        if _probed:
            return _info
        _probed = True
        nvml = _init()
        if nvml is None:
            return None
        try:
            if int(nvml.nvmlDeviceGetCount()) < 1:
                log.info("gpu_none", reason="NVML sees no device")
                return None
            h, index = _handle(nvml)
            name = nvml.nvmlDeviceGetName(h)
            if isinstance(name, bytes):  # older pynvml
                name = name.decode(errors="replace")
            total = float(nvml.nvmlDeviceGetMemoryInfo(h).total) / MB
        except Exception as exc:  # NVMLError, or a CUDA_VISIBLE_DEVICES NVML does not know
            log.info("gpu_none", reason=f"NVML cannot describe the device: {exc}")
            return None
        _nvml = nvml
        _info = GpuInfo(name=str(name), total_mb=round(total, 1), index=index)
    log.info("gpu_found", name=_info.name, total_mb=_info.total_mb, index=index)
    return _info


def process_used_mb(pid: int | None = None) -> float:
    """GPU memory held by process ``pid`` (default: this one) on every GPU, in MB, asked now;
    0.0 where there is no NVML or the process holds none."""
    if probe() is None:
        return 0.0
    nvml = _nvml
    pid = os.getpid() if pid is None else pid
    used = 0
    try:
        for i in range(int(nvml.nvmlDeviceGetCount())):
            for p in nvml.nvmlDeviceGetComputeRunningProcesses(nvml.nvmlDeviceGetHandleByIndex(i)):
                # usedGpuMemory is None where the driver cannot say (e.g. Windows WDDM)
                if int(p.pid) == pid and p.usedGpuMemory is not None:
                    used += int(p.usedGpuMemory)
    except Exception:  # a GPU fallen off the bus: the heartbeat carries on with 0
        return 0.0
    return round(used / MB, 1)


def used_mb(max_age_s: float = SAMPLE_INTERVAL_S) -> float:
    """:func:`process_used_mb` of this process, sampled at most once per ``max_age_s``."""
    global _sample
    now = time.monotonic()
    at, value = _sample
    if now - at < max_age_s:
        return value
    value = process_used_mb()
    _sample = (now, value)
    return value


def reset() -> None:
    """Forget the probe and the last sample (tests only: a process probes once)."""
    global _probed, _info, _nvml, _sample
    with _lock:
        _probed, _info, _nvml, _sample = False, None, None, (-1e18, 0.0)
