"""Every accelerator figure of issue 12 in one run, printed as one table.

1. Load and first inference per variant, in a fresh process (the runtime and its device come up
   with the first session) and in a warm context (this process, after the backend's ``start()``
   brought the device up, as a worker does before its birth): what a cold failover pays.
2. Throughput with N = 1, 4 and 16 cameras at 30 fps: the worker's batched pipeline in-process
   against a real worker on Mosquitto (``bench/worker_throughput.py``; amqtt where this machine
   has no Mosquitto, and the table says so).
3. Failover: warm-crash, cold-crash and hot-crash MTTR (``bench/failover.py``).

``--provider cuda`` (the default where ONNX Runtime offers CUDA) runs every worker on
``CUDAExecutionProvider`` with cuDNN's ``HEURISTIC`` search; ``--provider cpu`` runs the same
script on CPUs. GPU memory (NVML) is reported where there is a GPU.

Runs from any working folder and from wheels carried to an offline GPU machine (docs/gpu.md
lists them): ``PYTHONPATH=/path/to/wheels-target python /path/to/repo/bench/gpu.py``. About
five minutes on one GPU; ``--quick`` about two.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:  # a checkout run from elsewhere: its packages, not an older install
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from faillite import gpu  # noqa: E402
from faillite.catalog import load_catalog  # noqa: E402
from faillite.config import default_models_dir, packaged_config  # noqa: E402
from faillite.log import configure  # noqa: E402

FAMILY = "efficientnet_lite"


def backend_section(provider: str, threads: int) -> dict[str, Any]:
    providers = ["CPUExecutionProvider"]
    if provider == "cuda":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return {
        "type": "onnxruntime",
        "providers": providers,
        "intra_op_threads": threads,
        "cudnn_conv_algo_search": "HEURISTIC",
    }


def default_provider() -> str:
    import onnxruntime

    return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"


# -- 1. load and first inference -------------------------------------------------------------


def _backend(section: dict[str, Any]) -> Any:
    from faillite.config import backend_section as parse
    from workers.backends import create_backend

    return create_backend(parse(section))


def timed_load(backend: Any, variant: str, models_dir: Path) -> dict[str, Any]:
    """Load ``variant`` with ``backend`` and run its first inference: both times, and the
    providers the session got."""
    import numpy as np

    catalog = load_catalog(packaged_config("catalog.yaml"))
    t0 = time.perf_counter()
    model = backend.load(variant, models_dir / catalog.variant(variant).file)
    t1 = time.perf_counter()
    model.infer(np.zeros(model.input_shape, dtype=np.float32))
    t2 = time.perf_counter()
    return {
        "load_ms": (t1 - t0) * 1000,
        "first_ms": (t2 - t1) * 1000,
        "providers": list(model.providers),
    }


def one_load(variant: str, section: dict[str, Any], models_dir: Path) -> dict[str, Any]:
    """Load ``variant`` and run its first inference in this (fresh) process."""
    t0 = time.perf_counter()
    backend = _backend(section)
    runtime_ms = (time.perf_counter() - t0) * 1000
    return {"runtime_ms": runtime_ms, **timed_load(backend, variant, models_dir)}


def load_figures(
    variants: list[str], section: dict[str, Any], models_dir: Path
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for v in variants:
        proc = subprocess.run(
            [sys.executable, __file__, "--one-load", v, "--backend", orjson.dumps(section).decode(),
             "--models-dir", str(models_dir)],
            capture_output=True,
            text=True,
            timeout=300,
            env=_child_env(),
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"fresh load of {v} failed: {proc.stderr[-2000:]}")
        out[v] = {"fresh": orjson.loads(proc.stdout.strip().splitlines()[-1])}
        print(f"  {v}: fresh process {out[v]['fresh']}", flush=True)
    backend = _backend(section)
    t0 = time.perf_counter()
    backend.start()
    up_ms = (time.perf_counter() - t0) * 1000
    for v in variants:
        out[v]["warm"] = timed_load(backend, v, models_dir)
        print(f"  {v}: warm context {out[v]['warm']}", flush=True)
    out["_device"] = {"start_ms": up_ms, "gpu_used_mb": gpu.process_used_mb()}
    return out


def _child_env() -> dict[str, str]:
    """This checkout first on a child's path (what is carried beside it after)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


# -- 2. and 3.: the benches that own those measurements --------------------------------------


def _run_bench(script: str, args: list[str], json_out: Path, timeout_s: float) -> Any:
    env = _child_env()
    cmd = [sys.executable, str(BENCH / script), *args, "--json", str(json_out)]
    print(f"  $ {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, timeout=timeout_s, capture_output=True, text=True)
    tail = "\n".join(ln for ln in proc.stdout.splitlines() if not ln.startswith("{"))[-3000:]
    print(tail, flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    print(f"  ({script}: {time.monotonic() - t0:.0f} s)", flush=True)
    return orjson.loads(json_out.read_bytes())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--provider", choices=["cuda", "cpu"], default=None)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (CPU provider)")
    ap.add_argument("--models-dir", type=Path, default=None)
    ap.add_argument("--reps", type=int, default=8, help="failovers per scenario")
    ap.add_argument("--quick", action="store_true", help="fewer reps and shorter turns")
    ap.add_argument("--skip", default="", help="sections to skip: load,throughput,failover")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--one-load", help=argparse.SUPPRESS)
    ap.add_argument("--backend", type=orjson.loads, help=argparse.SUPPRESS)
    args = ap.parse_args()
    models_dir = (args.models_dir or default_models_dir()).resolve()
    if args.one_load:
        configure(level="error")
        print(orjson.dumps(one_load(args.one_load, args.backend, models_dir)).decode())
        return 0
    configure(level="warning")
    provider = args.provider or default_provider()
    section = backend_section(provider, args.threads)
    catalog = load_catalog(packaged_config("catalog.yaml"))
    variants = [v.name for v in catalog.family(FAMILY).variants]
    missing = [v for v in variants if not (models_dir / catalog.variant(v).file).is_file()]
    if missing:
        from faillite.models.build import build_models  # needs the [models] extra

        build_models(catalog, models_dir, missing, progress=True)
    from field_kit.brokers import mosquitto_binary

    broker = "mosquitto" if mosquitto_binary() else "amqtt"
    info = gpu.probe()
    skip = set(filter(None, args.skip.split(",")))
    t0 = time.monotonic()
    figures: dict[str, Any] = {
        "provider": provider,
        "backend": section,
        "gpu": {"name": info.name, "total_mb": info.total_mb} if info else None,
        "broker": broker,
    }
    print(f"provider {provider}, GPU {figures['gpu']}, broker {broker}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="faillite-gpu-bench-"))
    backend_arg = ["--backend", orjson.dumps(section).decode(), "--models-dir", str(models_dir)]
    if "load" not in skip:
        print("\n[1/3] load and first inference, fresh process and warm context", flush=True)
        figures["load"] = load_figures(variants, section, models_dir)
    if "throughput" not in skip:
        print("\n[2/3] throughput, N = 1, 4, 16 cameras at 30 fps", flush=True)
        turns = ["--seconds", "3", "--rounds", "1"] if args.quick else ["--seconds", "5"]
        figures["throughput"] = _run_bench(
            "worker_throughput.py",
            [*backend_arg, "--brokers", broker, "--threads", str(args.threads), *turns],
            work / "throughput.json",
            timeout_s=360,
        )
    if "failover" not in skip:
        print("\n[3/3] failover: warm, cold and hot crash", flush=True)
        reps = 4 if args.quick else args.reps
        figures["failover"] = _run_bench(
            "failover.py",
            [*backend_arg, "--brokers", broker, "--reps", str(reps),
             "--scenarios", "warm-crash,cold-crash,hot-crash"],
            work / "failover.json",
            timeout_s=420,
        )  # fmt: skip
    figures["wall_s"] = round(time.monotonic() - t0, 1)
    _table(figures)
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    return 0


def _table(f: dict[str, Any]) -> None:
    print(f"\n== {f['provider']} provider, GPU: {f['gpu']}, broker {f['broker']}, {f['wall_s']} s")
    load = f.get("load")
    if load:
        dev = load.get("_device", {})
        print(
            f"device up (keeper session) {dev.get('start_ms', 0):.0f} ms; "
            f"GPU memory used here {dev.get('gpu_used_mb', 0):.0f} MB"
        )
        print(
            f"{'variant':<22}{'fresh: runtime+load':>22}{'first':>10}"
            f"{'warm: load':>14}{'first':>10}"
        )
        for v, r in load.items():
            if v.startswith("_"):
                continue
            fr, wm = r["fresh"], r["warm"]
            print(
                f"{v:<22}{fr['runtime_ms'] + fr['load_ms']:>19.0f} ms{fr['first_ms']:>7.0f} ms"
                f"{wm['load_ms']:>11.0f} ms{wm['first_ms']:>7.0f} ms"
            )
    tp = f.get("throughput")
    if tp:
        print(
            f"{'cameras':<16}{'in-process fps':>16}{'worker fps':>12}{'ratio':>8}{'batch':>8}"
            f"{'RSS MB':>8}{'GPU MB':>8}"
        )
        for row in _throughput_rows(tp):
            print(
                f"{row['n']:<16}{row['inproc']:>16.1f}{row['worker']:>12.1f}"
                f"{row['ratio']:>8.0%}{row['batch']:>8.2f}{row['rss']:>8.0f}{row['gpu']:>8.0f}"
            )
    fo = f.get("failover")
    if fo:
        print(f"{'failover':<28}{'MTTR p50':>10}{'p99':>8}{'detection p50':>15}{'loading p50':>13}")
        for key, r in fo.items():
            s = r["summary"]
            print(
                f"{key:<28}{s['mttr_ms']['p50']:>7.0f} ms{s['mttr_ms']['p99']:>5.0f} ms"
                f"{s['detection_ms']['p50']:>12.0f} ms{s['loading_ms']['p50']:>10.0f} ms"
            )


def _throughput_rows(tp: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of bench/worker_throughput.py's JSON: per N, each broker's worker against the
    in-process pipeline."""
    rows = []
    for n, per in sorted(tp.get("runs", {}).items(), key=lambda kv: int(kv[0])):
        inproc = per["in_process"]
        for kind in tp.get("brokers", []):
            r = per.get(kind)
            if r is None:
                continue
            rows.append(
                {
                    "n": f"{n} ({kind})",
                    "inproc": inproc["fps"],
                    "worker": r["fps"],
                    "ratio": r.get("ratio", 0.0),
                    "batch": r.get("batch_mean", 0.0),
                    "rss": r.get("worker_rss_mb", 0.0),
                    "gpu": r.get("worker_gpu_mb", 0.0),
                }
            )
    return rows


if __name__ == "__main__":
    sys.exit(main())
