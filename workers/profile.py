"""``faillite profile``: measure the catalog's variants on this device, for the planner.

Each variant is measured in a fresh process (:mod:`workers.profile_probe`): the runtime is
initialised, then the model is loaded (``load_ms``), run once (``first_inference_ms``), run
``runs`` times at batch 1 (p50 = ``latency_ms``, p99, throughput) and, where its input takes a
batch dimension other than the one it was exported with, at each batch size (best throughput).
``memory_mb`` is the process's RSS increase from before the load to after the runs; GPU
memory is NVML's device memory increase over the same span (``pynvml``; None without it). One
more process, which already serves a model, loads each variant again (``warm_load_ms``: a
worker that takes over a failed one's app).

The result is a :class:`~faillite.catalog.ProfileOverlay`, written as YAML to
``<models_dir>/profiles/<device_class>.yaml``: the catalog merges it (``load_catalog(...,
overlays=models_dir)``), so a device class profiled once can be planned for.

With the ``tensorrt`` backend each variant's engine is first built here, ahead of time, from its
ONNX file (:func:`build_engine`): a Jetson never builds an engine during a failover.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faillite.catalog import Catalog, DeviceProfile, ProfileOverlay
from faillite.compat import python_module

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from workers.backends.base import LoadedModel

PROBE_MODULE = "workers.profile_probe"
PROBE_TIMEOUT_S = 900.0  # one variant's probe: a large model on a slow CPU, many runs
WARMUP_RUNS = 2  # batch-1 runs after the first inference and before the timed ones


class ProfileError(RuntimeError):
    """A variant that could not be measured, or a profile that cannot be made here."""


# -- measuring inside one process (the probe) ---------------------------------------------------


def rss_mb() -> float:
    """This process's resident set size, MiB."""
    try:
        import psutil

        return float(psutil.Process().memory_info().rss) / 2**20
    except ImportError:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def gpu_used_mb() -> float | None:
    """Device memory in use on every NVIDIA GPU together (NVML), MiB; None where unmeasurable."""
    try:
        import pynvml  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            used = 0
            for i in range(pynvml.nvmlDeviceGetCount()):
                used += pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used
            return float(used) / 2**20
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVMLError, no driver, a Jetson (no NVML there)
        return None


def gpu_names() -> list[str] | None:
    """NVIDIA GPUs NVML sees; None without pynvml (not looked for)."""
    try:
        import pynvml  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            names = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
                names.append(name.decode() if isinstance(name, bytes) else str(name))
            return names
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return []


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` percentile (0..100) of ``values``, linear between closest ranks (numpy's)."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def dynamic_batch(model: LoadedModel) -> bool:
    """Whether the model's input takes any batch size (ONNX: a symbolic first dimension).

    A TensorRT engine here is built for one input shape; a fixed ONNX input raises on any
    other batch. Only a symbolic dimension is tried: a native TensorRT model copies the batch
    into a buffer of the engine's size."""
    from workers.backends.ort import OrtModel

    if not isinstance(model, OrtModel):
        return False
    shape = model._session.get_inputs()[0].shape  # the session's own, symbolic dims kept
    return bool(shape) and not isinstance(shape[0], int)


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def measure_model(
    model_load: Callable[[], LoadedModel],
    *,
    runs: int,
    batch_sizes: Sequence[int],
    seed: int = 0,
) -> dict[str, Any]:
    """Load one model with ``model_load`` and measure it in this process (see the module doc)."""
    import numpy as np

    if runs < 1:
        raise ValueError("runs must be at least 1")
    rss0, gpu0 = rss_mb(), gpu_used_mb()
    t0 = time.perf_counter()
    model = model_load()
    load_ms = (time.perf_counter() - t0) * 1000.0
    try:
        rng = np.random.default_rng(seed)
        shape = tuple(int(d) for d in model.input_shape)
        x1: npt.NDArray[np.float32] = rng.standard_normal(shape, dtype=np.float32)
        first_ms = _timed(lambda: model.infer(x1))
        for _ in range(WARMUP_RUNS):
            model.infer(x1)
        lat = [_timed(lambda: model.infer(x1)) for _ in range(runs)]
        rss1, gpu1 = rss_mb(), gpu_used_mb()
        out: dict[str, Any] = {
            "providers": list(model.providers),
            "input_shape": list(shape),
            "load_ms": load_ms,
            "first_inference_ms": first_ms,
            "latency_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
            "throughput_fps": runs * 1000.0 / sum(lat),
        }
        fps = {1: out["throughput_fps"]}
        if dynamic_batch(model):
            for b in sorted({b for b in batch_sizes if b > 1}):
                xb = rng.standard_normal((b, *shape[1:]), dtype=np.float32)
                model.infer(xb)  # warm-up: the runtime plans this shape once
                iters = max(3, runs // b)
                total = 0.0
                for _ in range(iters):
                    t0 = time.perf_counter()
                    model.infer(xb)
                    total += (time.perf_counter() - t0) * 1000.0
                fps[b] = b * iters * 1000.0 / total
            out["batching"] = f"batch sizes {sorted(fps)} run as batches (symbolic batch dim)"
            rss1 = max(rss1, rss_mb())
            g = gpu_used_mb()
            gpu1 = None if gpu1 is None or g is None else max(gpu1, g)
        else:
            out["batching"] = (
                f"input batch fixed at {shape[0]}: larger batches not run, best batch is "
                f"{shape[0]} (batches as consecutive calls would only repeat batch-1 figures)"
            )
        best = max(fps, key=lambda b: fps[b])
        out["best_batch"] = best if len(fps) > 1 else shape[0]
        out["best_batch_fps"] = fps[best]
        out["memory_mb"] = max(rss1 - rss0, 0.0)
        out["gpu_memory_mb"] = None if gpu0 is None or gpu1 is None else max(gpu1 - gpu0, 0.0)
        return out
    finally:
        model.close()


def probe(request: dict[str, Any]) -> dict[str, Any]:
    """What :mod:`workers.profile_probe` does with one request, in its fresh process.

    ``{"mode": "fresh", "backend": {...}, "variant", "path", "runs", "batch_sizes",
    "spawned": wall time}``: :func:`measure_model` plus ``cold_start_ms`` (spawn to loaded,
    interpreter and runtime start included). ``{"mode": "warm", "backend", "primer": [variant,
    path], "items": [[variant, path], ...]}``: ``warm_load_ms`` per variant, loaded while the
    primer is loaded and has run."""
    from workers.backends.registry import create_backend, parse_config

    backend = create_backend(parse_config(request["backend"]))
    info = {"runtime": runtime_versions(request["backend"]["type"]), "devices": backend.devices()}
    if request["mode"] == "fresh":
        variant, path = request["variant"], Path(request["path"])
        loaded_at: list[float] = []

        def load() -> LoadedModel:
            m = backend.load(variant, path)
            loaded_at.append(time.time())
            return m

        out = measure_model(load, runs=int(request["runs"]), batch_sizes=request["batch_sizes"])
        out["cold_start_ms"] = (loaded_at[0] - float(request["spawned"])) * 1000.0
        return {**info, **out}
    if request["mode"] == "warm":
        import numpy as np

        primer = backend.load(request["primer"][0], Path(request["primer"][1]))
        primer.infer(np.zeros(primer.input_shape, dtype=np.float32))
        warm: dict[str, float] = {}
        for variant, path in request["items"]:
            t0 = time.perf_counter()
            model = backend.load(variant, Path(path))
            warm[variant] = (time.perf_counter() - t0) * 1000.0
            model.close()
        primer.close()
        return {**info, "warm_load_ms": warm}
    raise ValueError(f"unknown probe mode {request['mode']!r}")


def run_probe(request: dict[str, Any], *, timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Run :func:`probe` in a fresh interpreter; its answer is the last line of its stdout."""
    request = {**request, "spawned": time.time()}
    try:
        proc = subprocess.run(
            [*python_module(PROBE_MODULE), json.dumps(request)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ProfileError(f"probe did not finish in {timeout_s:.0f} s") from exc
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise ProfileError(err[-1] if err else f"probe exited with {proc.returncode}")
    answer: dict[str, Any] = json.loads(lines[-1])
    return answer


# -- where it was measured ----------------------------------------------------------------------


def runtime_versions(backend_type: str) -> dict[str, str]:
    out: dict[str, str] = {"python": platform.python_version()}
    mods = {"onnxruntime": ("onnxruntime",), "tensorrt": ("tensorrt",)}.get(backend_type, ())
    for name in mods:
        try:
            mod = __import__(name)
            out[name] = str(getattr(mod, "__version__", "?"))
        except ImportError:
            pass
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "gpus": gpu_names(),
    }


def describe_source(
    machine: dict[str, Any],
    backend: dict[str, Any],
    runtime: dict[str, str],
    providers: Sequence[str],
    runs: int,
    date: str,
) -> str:
    """The ``source`` of every profile of one run: what was measured where, and how."""
    gpus = machine.get("gpus")
    gpu = "GPU not looked for (no pynvml)" if gpus is None else ", ".join(gpus) or "no NVIDIA GPU"
    rt = ", ".join(f"{k} {v}" for k, v in runtime.items() if k != "python")
    how = backend["type"]
    if providers:
        how += " " + "/".join(providers)
    if backend.get("intra_op_threads"):
        how += f", {backend['intra_op_threads']} intra-op threads"
    return (
        f"faillite profile {date} on {machine['host']} ({machine['cpu']}, "
        f"{machine['cpu_cores']} cores; {gpu}); {rt}; {how}; batch 1, p50 of {runs} runs"
    )


# -- the whole run --------------------------------------------------------------------------------


@dataclass
class ProfileRun:
    """What to measure: variants (name, model path) of one device class with one backend."""

    device_class: str
    variants: list[tuple[str, Path]]
    backend: dict[str, Any]  # the backend section (``type`` and its options)
    runs: int = 50
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    failures: dict[str, str] = field(default_factory=dict)


class Progress:
    """A rich progress bar on stderr, or one plain line per step without rich."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._enabled = enabled
        self.total = total

    @contextmanager
    def running(self) -> Iterator[Progress]:
        if not self._enabled:
            yield self
            return
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress
        except ImportError:
            yield self
            return
        with RichProgress(
            TextColumn("{task.description:<40}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        ) as bar:
            self._bar = bar
            self._task = bar.add_task("profiling", total=self.total)
            yield self
            bar.update(self._task, description="done")
        self._bar = None

    def step(self, what: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=what)
        elif self._enabled:
            print(f"faillite profile: {what}", file=sys.stderr, flush=True)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)


def profile(
    run: ProfileRun,
    *,
    progress: bool = True,
    probe_fn: Callable[[dict[str, Any]], dict[str, Any]] = run_probe,
    now: dt.datetime | None = None,
) -> ProfileOverlay:
    """Measure every variant of ``run`` (one fresh process each, one warm process for all)."""
    if not run.variants:
        raise ProfileError("no variants to profile")
    date = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    machine = machine_info()
    fresh: dict[str, dict[str, Any]] = {}
    bar = Progress(len(run.variants) + 1, enabled=progress)
    with bar.running():
        for variant, path in run.variants:
            bar.step(f"{variant}: fresh process")
            try:
                fresh[variant] = probe_fn(
                    {
                        "mode": "fresh",
                        "backend": run.backend,
                        "variant": variant,
                        "path": str(path),
                        "runs": run.runs,
                        "batch_sizes": list(run.batch_sizes),
                    }
                )
            except ProfileError as exc:
                run.failures[variant] = str(exc)
            bar.advance()
        warm: dict[str, float] = {}
        measured = [(v, p) for v, p in run.variants if v in fresh]
        if measured:
            bar.step("warm process: loads beside a served model")
            try:
                answer = probe_fn(
                    {
                        "mode": "warm",
                        "backend": run.backend,
                        "primer": [measured[0][0], str(measured[0][1])],
                        "items": [[v, str(p)] for v, p in measured],
                    }
                )
                warm = {k: float(x) for k, x in answer["warm_load_ms"].items()}
            except ProfileError as exc:
                run.failures["(warm loads)"] = str(exc)
        bar.advance()
    if not fresh:
        raise ProfileError(
            "no variant could be measured: "
            + "; ".join(f"{v}: {why}" for v, why in run.failures.items())
        )
    first = next(iter(fresh.values()))
    runtime, providers = first["runtime"], first["providers"]
    source = describe_source(machine, run.backend, runtime, providers, run.runs, date)
    profiles = {v: to_profile(m, warm.get(v), source) for v, m in fresh.items()}
    machine = {
        **machine,
        "date": date,
        "runtime": runtime,
        "backend": run.backend,
        "providers": providers,
    }
    return ProfileOverlay(
        device_class=run.device_class, source=source, machine=machine, profiles=profiles
    )


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(float(x), nd)


def to_profile(m: dict[str, Any], warm_load_ms: float | None, source: str) -> DeviceProfile:
    """A probe's figures as the catalog's profile (rounded; memory at least 0.1 MiB)."""
    return DeviceProfile(
        latency_ms=max(_r(m["latency_ms"], 3) or 0.0, 0.001),
        memory_mb=max(_r(m["memory_mb"], 1) or 0.0, 0.1),
        load_ms=_r(m["load_ms"]) or 0.0,
        first_inference_ms=_r(m["first_inference_ms"]) or 0.0,
        source=source,
        p99_ms=max(_r(m["p99_ms"], 3) or 0.0, 0.001),
        warm_load_ms=_r(warm_load_ms),
        gpu_memory_mb=_r(m.get("gpu_memory_mb"), 1),
        throughput_fps=_r(m["throughput_fps"], 1),
        best_batch=int(m["best_batch"]),
        best_batch_fps=_r(m["best_batch_fps"], 1),
        batching=str(m["batching"]),
    )


def merge_into_existing(old: ProfileOverlay | None, new: ProfileOverlay) -> ProfileOverlay:
    """``new`` plus the profiles of ``old`` (same device class) that it did not re-measure."""
    if old is None or old.device_class != new.device_class:
        return new
    return new.model_copy(update={"profiles": {**old.profiles, **new.profiles}})


def overlay_yaml(overlay: ProfileOverlay) -> str:
    import yaml

    header = (
        f"# Measured profiles of device class {overlay.device_class!r}, written by "
        "`faillite profile`.\n"
        "# The catalog merges this file (models dir, profiles/*.yaml): the planner reads\n"
        "# latency_ms (p50, batch 1), memory_mb (RSS increase), load_ms, first_inference_ms.\n"
    )
    data = overlay.model_dump(mode="json", exclude_none=True)
    return header + yaml.safe_dump(data, sort_keys=False, width=100)


def write_overlay(overlay: ProfileOverlay, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(overlay_yaml(overlay))
    tmp.replace(path)
    return path


def pick_variants(
    catalog: Catalog, models_dir: Path, names: Sequence[str] | None, *, on_disk: bool = False
) -> list[tuple[str, Path]]:
    """(variant, ONNX path) of ``names`` (default: the whole catalog; ``on_disk``: those whose
    file is in ``models_dir``, what a node was staged with); unknown or missing files raise
    :class:`ProfileError` naming them all."""
    known = [v.name for v in catalog.variants()]
    wanted = list(names) if names else known
    if on_disk and not names:
        wanted = [n for n in known if (models_dir / catalog.variant(n).file).is_file()]
        if not wanted:
            raise ProfileError(f"no model file of the catalog in {models_dir}: nothing staged")
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ProfileError(f"not in the catalog: {', '.join(unknown)} (known: {', '.join(known)})")
    out = [(n, models_dir / catalog.variant(n).file) for n in wanted]
    missing = [f"{n} ({p})" for n, p in out if not p.is_file()]
    if missing:
        raise ProfileError(
            f"model files not on disk: {', '.join(missing)}; build them with `faillite models "
            "build`"
        )
    return out


# -- TensorRT engines, built here ahead of time ---------------------------------------------------


def engine_path(onnx_path: Path, engines_dir: Path | None) -> Path:
    """Where the tensorrt backend looks for a model's engine (its ``load`` does the same)."""
    from workers.backends.tensorrt import TensorRTBackend

    suffix = TensorRTBackend.file_suffix
    if engines_dir is not None:
        return engines_dir / (onnx_path.stem + suffix)
    return onnx_path.with_suffix(suffix)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or :class:`ProfileError` in one line saying it is missing."""
    try:
        import tensorrt
    except ImportError as exc:
        raise ProfileError(
            "--backend tensorrt needs the TensorRT Python package on the NVIDIA device it "
            "profiles (pip install 'faillite[jetson]', or JetPack's python3-libnvinfer); "
            f"`import tensorrt` fails here: {exc}"
        ) from None
    return tensorrt


def build_engine(
    onnx_path: Path,
    out: Path,
    *,
    fp16: bool = True,
    workspace_mb: int = 1024,
    trt: Any = None,
) -> Path:
    """Build a TensorRT engine of ``onnx_path`` into ``out`` (batch 1), with the Python API.

    A symbolic input dimension is fixed at 1 by an optimization profile; FP16 is used where the
    GPU has fast FP16 and ``fp16`` is set. The engine is written to a temporary name and
    renamed, so a worker never sees half a file. NOT RUN by the test suite on a machine
    without TensorRT except through a stand-in module."""
    trt = trt if trt is not None else import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    major = str(getattr(trt, "__version__", "10")).split(".")[0]
    if major.isdigit() and int(major) < 10:  # TensorRT 8.x: ask for explicit batch (10: only mode)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ProfileError(f"TensorRT cannot parse {onnx_path}: {errors or 'no reason given'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb * 2**20)
    if fp16 and getattr(builder, "platform_has_fast_fp16", False):
        config.set_flag(trt.BuilderFlag.FP16)
    dynamic = False
    opt = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        shape = tuple(int(d) for d in inp.shape)
        if any(d < 0 for d in shape):
            dynamic = True
            fixed = tuple(1 if d < 0 else d for d in shape)
            opt.set_shape(inp.name, fixed, fixed, fixed)
    if dynamic:
        config.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ProfileError(f"TensorRT could not build an engine of {onnx_path} (see its log)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(out)
    return out


def build_engines(
    variants: Sequence[tuple[str, Path]],
    engines_dir: Path | None,
    *,
    rebuild: bool = False,
    fp16: bool = True,
    progress: bool = True,
    trt: Any = None,
) -> dict[str, Path]:
    """Build the engine of each variant unless one newer than its ONNX file is there."""
    trt = trt if trt is not None else import_tensorrt()
    built: dict[str, Path] = {}
    bar = Progress(len(variants), enabled=progress)
    with bar.running():
        for variant, onnx in variants:
            out = engine_path(onnx, engines_dir)
            fresh = out.is_file() and out.stat().st_mtime >= onnx.stat().st_mtime
            if rebuild or not fresh:
                bar.step(f"{variant}: building TensorRT engine")
                build_engine(onnx, out, fp16=fp16, trt=trt)
            built[variant] = out
            bar.advance()
    return built
