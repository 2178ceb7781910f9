"""Worker throughput with N cameras, through MQTT, against the same batched pipeline in-process.

For N = 1, 4 and 16 cameras at 30 fps each (one app per camera, every app on the same variant,
so their frames batch), side by side in one run:

- in-process: the worker's own batched pipeline (:mod:`workers.batching`: drop-oldest queues,
  the batcher thread, the preprocess pool, one batched inference call at a time) fed the same
  frames at the same rate in this process, with no MQTT: the ceiling;
- through the worker: a real worker subprocess with the same model, intra-op threads, queue
  size and batching limits, on each broker asked for (Mosquitto; ``--brokers
  mosquitto,amqtt`` adds the embedded amqtt broker), frames published by this process.

Both are open loop: cameras publish at their rate whatever happens downstream, and the drop-
oldest queues shed what cannot be served. Where N cameras offer more than the CPU can infer
(16 x 30 fps on a 2-core box; 4 x 30 too for the larger models), both are measured at
saturation, so the ratio compares saturated throughputs. The two take ``--rounds`` turns each,
alternating, so a busy moment of a shared machine falls on both.

``--pace`` serves a stand-in model that costs microseconds instead (global average pool and
one matrix product): inference then costs what it costs on a GPU, next to nothing, and the
figures are those of the mesh and of decoding at a GPU's pace, on any machine.
``--frame-size 1920x1080`` sends 1080p camera frames (default 640x480); ``--no-scaled-decode``
decodes them whole in both paths.

Printed per N: served fps, the ratio worker / in-process, the queue wait p50 (a result's
``queue_ms``: time waiting, not worked on), the mean batch size (results of one batch share
their ``ts``) and the worker's resident memory. Goal (issue 12): ratio >= 90 % at every N.
Run: ``python bench/worker_throughput.py`` (``--help``; ``--json F``, ``--png F``). The one-camera
added-latency and TLS figures: ``bench/worker_latency.py`` (run too when this script is given
``--tls``, ``--frames``, ``--latency-frames`` or ``--in-flight``).
"""

from __future__ import annotations

import argparse
import contextlib
import runpy
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson
import psutil
import yaml

from faillite import envelope, messages
from faillite.badinput import BadInput
from faillite.catalog import load_catalog
from faillite.config import (
    BatchingConfig,
    BrokerConfig,
    MeshConfig,
    default_models_dir,
    packaged_config,
)
from faillite.log import configure
from faillite.models.build import build_models
from faillite.models.labels import imagenet_labels
from faillite.mqtt import MeshClient
from faillite.stats import percentiles
from faillite.topics import Topics
from field_kit.brokers import BrokerLauncher
from field_kit.procs import ProcessGroup, faillite_cmd
from sensors.sources import SceneSource
from workers.backends import LoadedModel
from workers.backends.ort import OnnxRuntimeBackend, OnnxRuntimeBackendConfig
from workers.batching import Batcher
from workers.frame_queue import FrameQueues, QueuedFrame
from workers.inference import FrameRunner
from workers.serving import Serving

CAM_FPS = 30.0
MESH = "bench"
WORKER = "w1"
Stamped = tuple[float, messages.Result]  # (monotonic arrival, result)


class Footage(NamedTuple):
    """The JPEG frames the cameras cycle through, all of one size."""

    jpegs: list[bytes]
    width: int
    height: int


def make_frames(n: int, width: int = 640, height: int = 480) -> Footage:
    scene = SceneSource(width, height, ("chelsea", "coffee"), hold_s=0.5)
    jpegs = []
    for _ in range(n):
        jpegs.append(envelope.encode_jpeg(scene.read()))
        time.sleep(0.01)
    return Footage(jpegs, width, height)


class Cameras:
    """``n`` cameras at ``fps`` each, from a thread: every tick one frame of each camera goes
    to ``emit(camera index, envelope)``. Ticks keep an absolute schedule; a late tick is sent
    at once, never skipped, so every run offers the same frames."""

    def __init__(
        self, n: int, footage: Footage, emit: Callable[[int, bytes], None], fps: float = CAM_FPS
    ) -> None:
        self.n, self.footage, self.emit, self.period = n, footage, emit, 1.0 / fps
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cameras", daemon=True)

    def _run(self) -> None:
        tick, next_t = 0, time.monotonic()
        while not self._stop.is_set():
            for i in range(self.n):
                f = self.footage
                payload = envelope.pack(
                    f.jpegs[(tick + 7 * i) % len(f.jpegs)],
                    seq=tick,
                    capture_ns=time.time_ns(),
                    width=f.width,
                    height=f.height,
                )
                self.emit(i, payload)
                self.sent += 1
            tick += 1
            next_t += self.period
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def __enter__(self) -> Cameras:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Window:
    """Results collected from several turns; each turn counts what arrived in its window."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stamped: list[Stamped] = []
        self.counted: list[messages.Result] = []
        self.elapsed = 0.0

    def add(self, r: messages.Result) -> None:
        with self.lock:
            self.stamped.append((time.monotonic(), r))

    def turn(self, settle_s: float, measure_s: float) -> None:
        """Let the load settle (not counted), then count ``measure_s`` of results."""
        time.sleep(settle_s)
        t0 = time.monotonic()
        time.sleep(measure_s)
        t1 = time.monotonic()
        with self.lock:
            self.counted += [r for at, r in self.stamped if t0 <= at < t1]
            self.stamped.clear()
        self.elapsed += t1 - t0

    def figures(self) -> dict[str, Any]:
        rs = self.counted
        batches: dict[tuple[str, float], int] = {}
        for r in rs:  # one batch's results share their ts (workers.inference)
            batches[(r.incarnation, r.ts)] = batches.get((r.incarnation, r.ts), 0) + 1
        q = percentiles([r.latency.queue_ms for r in rs]) if rs else None
        return {
            "fps": len(rs) / self.elapsed if self.elapsed else 0.0,
            "results": len(rs),
            "queue_ms_p50": q.p50 if q else float("nan"),
            "queue_ms_p99": q.p99 if q else float("nan"),
            "inference_ms_p50": float(np.median([r.latency.inference_ms for r in rs]))
            if rs
            else float("nan"),
            "batch_mean": len(rs) / len(batches) if batches else float("nan"),
            "apps_served": len({r.app for r in rs}),
        }


PACE_VARIANT = "pace"


def write_pace_model(workdir: Path) -> tuple[Path, Path]:
    """A stand-in for a model on an accelerator: global average pool and one 3 x 1000 matrix
    product (microseconds a frame), so decoding, preprocessing and the mesh are all that is
    measured, as on a GPU whose inference is ~1 ms a batch. Returns (catalog, models dir): the
    packaged catalog plus this variant, and the folder holding its file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "pace",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
        [numpy_helper.from_array(w, "w")],
    )
    models = workdir / "pace-models"
    models.mkdir(parents=True, exist_ok=True)
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), models / "pace.onnx"
    )
    doc = yaml.safe_load(packaged_config("catalog.yaml").read_text())
    doc["families"].append(
        {
            "name": PACE_VARIANT,
            "variants": [
                {
                    "name": PACE_VARIANT,
                    "file": "pace.onnx",
                    "accuracy": 0.1,
                    "memory_mb": 1,
                    "file_size_mb": 0.1,
                    "preprocess": {"size": [224, 224]},
                }
            ],
        }
    )
    catalog = workdir / "pace-catalog.yaml"
    catalog.write_text(yaml.safe_dump(doc))
    return catalog, models


def _apps(n: int) -> list[tuple[str, str]]:
    return [(f"a{i + 1}", f"cam{i + 1}") for i in range(n)]


class InProcess:
    """The worker's batched pipeline in this process, no MQTT: queues, batcher, preprocess
    pool and one inference thread running :meth:`FrameRunner.infer` per batch."""

    def __init__(
        self, model: LoadedModel, variant: str, args: argparse.Namespace, n: int, win: Window
    ) -> None:
        spec = load_catalog(args.catalog).variant(variant).preprocess
        self.queues = FrameQueues(args.queue_size)
        self.table = {app: Serving(app, cam, variant, model, spec, True) for app, cam in _apps(n)}
        self.apps = list(self.table)
        self.runner = FrameRunner(
            WORKER,
            "in-process",
            max_frame_bytes=1 << 22,
            labels=imagenet_labels(),
            bad=BadInput(),
            scaled_decode=args.batching.scaled_decode,
        )
        self.stop = threading.Event()
        self.batcher = Batcher(
            self.queues, self.table.get, self.runner, args.batching, stopping=self.stop
        )
        self.win = win
        self.thread = threading.Thread(target=self._infer, name="inference", daemon=True)

    def emit(self, cam: int, payload: bytes) -> None:
        self.queues.put(QueuedFrame(self.apps[cam], payload, time.monotonic_ns()))

    def _infer(self) -> None:
        while not self.stop.is_set():
            b = self.batcher.next(0.1)
            if b is None:
                continue
            frames, x = b.ready()
            for r in self.runner.infer(b.st, frames, x, 1):
                self.win.add(r)

    def __enter__(self) -> InProcess:
        self.batcher.start()
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.queues.close()
        self.thread.join(timeout=5)
        self.batcher.stop()


class WorkerRig:
    """One broker, one worker subprocess, this process's client publishing the cameras' frames
    and reading every app's results."""

    def __init__(self, kind: str, args: argparse.Namespace, workdir: Path) -> None:
        self.kind, self.args, self.workdir = kind, args, workdir
        self.win = Window()
        self.generation = 0
        self.apps: list[tuple[str, str]] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> WorkerRig:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        args, workdir = self.args, self.workdir
        launcher = self._stack.enter_context(BrokerLauncher(workdir / self.kind))
        endpoint = launcher.start(self.kind, mesh=MESH)
        cfg_path = workdir / f"{self.kind}.yaml"
        doc = {
            "mesh": MESH,
            "catalog": str(args.catalog),
            "models_dir": str(args.models_dir),
            "broker": {"host": endpoint.host, "port": endpoint.port},
            "workers": [
                {
                    "id": WORKER,
                    "queue_size": args.queue_size,
                    "heartbeat_interval_s": 0.1,
                    "backend": args.backend_section,
                    "batching": args.batching.model_dump(),
                }
            ],
        }
        cfg_path.write_text(yaml.safe_dump(doc))
        cfg = MeshConfig(mesh=MESH, broker=BrokerConfig(host=endpoint.host, port=endpoint.port))
        t = self.topics = Topics(MESH)
        self.client = client = MeshClient(f"bench-{self.kind}", cfg.broker)
        client.subscribe(t.app_results_filter(), self._on_result, qos=0)
        self.gpu_used_mb = 0.0  # the worker's own figure (NVML), from its heartbeats
        client.subscribe(t.worker_heartbeat(WORKER), self._on_heartbeat, qos=0)
        client.start()
        self._stack.callback(client.stop)
        group = self._stack.enter_context(ProcessGroup(workdir / f"{self.kind}-logs"))
        self.worker = group.start(
            WORKER, "worker", faillite_cmd("worker", "--id", WORKER, "--config", str(cfg_path))
        )
        self._stack.callback(client.publish, t.worker_assignment(WORKER), b"", qos=1, retain=True)

    def _on_heartbeat(self, msg: Any) -> None:
        hb = messages.decode(messages.Heartbeat, msg.payload)
        self.gpu_used_mb = max(self.gpu_used_mb, hb.gpu_used_mb)

    def _on_result(self, msg: Any) -> None:
        self.win.add(messages.decode(messages.Result, msg.payload))

    def emit(self, cam: int, payload: bytes) -> None:
        self.client.publish(self.topics.sensor_frames(self.apps[cam][1]), payload, qos=0)

    def serve(self, n: int, footage: Footage) -> None:
        """Assign ``n`` apps and wait until every one of them is served."""
        self.apps = _apps(n)
        self.generation += 1
        a = messages.Assignment(
            worker=WORKER,
            term=1,
            generation=self.generation,
            ts=messages.now(),
            serve=tuple(messages.Serve(app, cam, self.args.variant) for app, cam in self.apps),
        )
        t = self.topics
        self.client.publish(t.worker_assignment(WORKER), messages.encode(a), qos=1, retain=True)
        deadline = time.monotonic() + 120
        with Cameras(n, footage, self.emit):
            while True:
                time.sleep(0.2)
                with self.win.lock:
                    seen = {r.app for _at, r in self.win.stamped if r.generation == self.generation}
                if len(seen) == n:
                    break
                if time.monotonic() > deadline or not self.worker.alive():
                    raise RuntimeError(f"worker never served {n} apps:\n{self.worker.tail()}")
        self.win = Window()

    def rss_mb(self) -> float:
        return float(psutil.Process(self.worker.pid).memory_info().rss / 2**20)


@contextlib.contextmanager
def _progress(label: str) -> Iterator[None]:
    t0 = time.monotonic()
    print(f"  {label} ...", end="", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        print(f" {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)


def run_n(
    n: int,
    model: LoadedModel,
    rigs: list[WorkerRig],
    footage: Footage,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """In-process and each worker, ``--rounds`` turns each, alternating."""
    ip_win = Window()
    out: dict[str, Any] = {}
    for rig in rigs:
        with _progress(f"N={n}: {rig.kind}: assign {n} app(s), wait until all are served"):
            rig.serve(n, footage)
    per_turn = args.seconds / args.rounds
    with InProcess(model, args.variant, args, n, ip_win) as ip:
        for r in range(args.rounds):
            order: list[Any] = ["in-process", *rigs]
            for who in order if r % 2 == 0 else order[::-1]:
                name = who if isinstance(who, str) else who.kind
                emit = ip.emit if isinstance(who, str) else who.emit
                win = ip_win if isinstance(who, str) else who.win
                with (
                    _progress(f"N={n}: {name}: turn {r + 1}/{args.rounds}"),
                    Cameras(n, footage, emit),
                ):
                    win.turn(args.settle, per_turn)
    out["in_process"] = ip_win.figures()
    for rig in rigs:
        m = rig.win.figures()
        m["worker_rss_mb"] = rig.rss_mb()
        m["worker_gpu_mb"] = rig.gpu_used_mb
        m["ratio"] = m["fps"] / out["in_process"]["fps"] if out["in_process"]["fps"] else 0.0
        out[rig.kind] = m
    return out


def _table(figures: dict[str, Any], kinds: list[str]) -> None:
    print(
        f"\n{'N cams':>6}  {'offered':>8}  {'path':<11}{'fps':>8}{'ratio':>8}"
        f"{'queue p50':>11}{'batch':>7}{'infer p50':>11}{'RSS MB':>8}{'GPU MB':>8}"
    )
    for n, per in figures["runs"].items():
        offered = int(n) * CAM_FPS
        for path in ("in_process", *kinds):
            m = per[path]
            ratio = f"{m['ratio']:7.1%}" if "ratio" in m else f"{'':>7}"
            rss = f"{m['worker_rss_mb']:8.0f}" if "worker_rss_mb" in m else f"{'-':>8}"
            rss += f"{m['worker_gpu_mb']:8.0f}" if "worker_gpu_mb" in m else f"{'-':>8}"
            label = "in-process" if path == "in_process" else path
            print(
                f"{n:>6}  {offered:>8.0f}  {label:<11}{m['fps']:8.1f} {ratio}"
                f"{m['queue_ms_p50']:11.2f}{m['batch_mean']:7.2f}{m['inference_ms_p50']:11.2f}{rss}"
            )


def _plot(figures: dict[str, Any], kinds: list[str], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [int(n) for n in figures["runs"]]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for path in ("in_process", *kinds):
        ys = [figures["runs"][str(n)][path]["fps"] for n in ns]
        ax.plot(ns, ys, marker="o", label=path.replace("_", "-"))
    ax.plot(ns, [n * CAM_FPS for n in ns], ls=":", color="grey", label="offered")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("cameras (30 fps each, one app each, one variant)")
    ax.set_ylabel("served frames per second")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(
        f"Batched worker throughput: {figures['variant']}"
        f"{' (stand-in model: a GPU pace)' if figures['variant'] == PACE_VARIANT else ''}, "
        f"{figures.get('frame_size', '640x480')} frames, max_batch {figures['max_batch']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def measure(
    args: argparse.Namespace, workdir: Path, ns: list[int], kinds: list[str]
) -> dict[str, Any]:
    """Every N on every broker, against the in-process pipeline; scratch files in ``workdir``."""
    args.catalog = packaged_config("catalog.yaml")
    if args.pace:
        args.variant = PACE_VARIANT
        args.catalog, args.models_dir = write_pace_model(workdir)
    catalog = load_catalog(args.catalog)
    if not args.pace:
        build_models(catalog, args.models_dir, [args.variant], progress=True)
    model_path = args.models_dir / catalog.variant(args.variant).file
    args.backend_section = args.backend or {"type": "onnxruntime", "intra_op_threads": args.threads}
    backend = OnnxRuntimeBackend(OnnxRuntimeBackendConfig.model_validate(args.backend_section))
    backend.start()  # as the worker does before its birth: the device is up
    model = backend.load(args.variant, model_path)
    width, height = (int(x) for x in args.frame_size.split("x"))
    footage = make_frames(30, width, height)
    print(
        f"{args.variant}, {args.frame_size} JPEG frames, cameras at {CAM_FPS:g} fps, "
        f"{args.threads} intra-op thread(s), queue {args.queue_size}, "
        f"batching {args.batching.model_dump()}; "
        f"{args.seconds:g} s measured per N and path in {args.rounds} alternating turns",
        flush=True,
    )
    figures: dict[str, Any] = {
        "variant": args.variant,
        "frame_size": args.frame_size,
        "threads": args.threads,
        "queue_size": args.queue_size,
        "max_batch": args.batching.max_batch,
        "batching": args.batching.model_dump(),
        "brokers": kinds,
        "runs": {},
    }
    with contextlib.ExitStack() as stack:
        rigs = []
        for kind in kinds:
            with _progress(f"start {kind} and a worker"):
                rigs.append(stack.enter_context(WorkerRig(kind, args, workdir)))
        for n in ns:
            figures["runs"][str(n)] = run_n(n, model, rigs, footage, args)
    return figures


# Options of the one-camera, closed-loop bench this script was before (docs/bench/tls.md):
# given any, that bench runs (bench/worker_latency.py).
_LATENCY_OPTIONS = ("--tls", "--frames", "--latency-frames", "--in-flight")


def main() -> int:
    if any(a.split("=")[0] in _LATENCY_OPTIONS for a in sys.argv[1:]):
        runpy.run_path(str(Path(__file__).with_name("worker_latency.py")), run_name="__main__")
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="efficientnet_lite0")
    ap.add_argument("--cameras", default="1,4,16", help="camera counts N, comma-separated")
    ap.add_argument("--seconds", type=float, default=6.0, help="measured per N and path")
    ap.add_argument("--settle", type=float, default=1.0, help="unmeasured lead-in per turn")
    ap.add_argument("--rounds", type=int, default=2, help="turns per N and path, alternating")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--queue-size", type=int, default=2, help="per-app drop-oldest queue")
    ap.add_argument("--max-batch", type=int, default=BatchingConfig().max_batch)
    ap.add_argument("--max-wait-ms", type=float, default=BatchingConfig().max_wait_ms)
    ap.add_argument("--preprocess-threads", type=int, default=BatchingConfig().preprocess_threads)
    ap.add_argument("--brokers", default="mosquitto", help="mosquitto and/or amqtt")
    ap.add_argument("--models-dir", type=Path, default=default_models_dir())
    ap.add_argument(
        "--backend",
        type=orjson.loads,
        default=None,
        help="the backend section (JSON) of both paths; default: onnxruntime on --threads",
    )
    ap.add_argument("--frame-size", default="640x480", help="camera frames, WxH")
    ap.add_argument(
        "--scaled-decode",
        action=argparse.BooleanOptionalAction,
        default=BatchingConfig().scaled_decode,
        help="batching.scaled_decode of both paths",
    )
    ap.add_argument(
        "--pace",
        action="store_true",
        help="serve a stand-in model that costs microseconds (a GPU's pace: the mesh and "
        "preprocessing are all that is measured) instead of --variant",
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--png", type=Path, help="also plot served fps against N here")
    args = ap.parse_args()
    configure(level="warning")  # the in-process pipeline's info lines would break the table
    args.models_dir = args.models_dir.resolve()
    args.rounds = max(1, args.rounds)
    args.batching = BatchingConfig(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        preprocess_threads=args.preprocess_threads,
        scaled_decode=args.scaled_decode,
    )
    ns = [int(x) for x in args.cameras.split(",")]
    kinds = args.brokers.split(",")

    workdir = Path(tempfile.mkdtemp(prefix="faillite-bench-"))
    try:
        figures = measure(args, workdir, ns, kinds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _table(figures, kinds)
    if "mosquitto" in kinds:
        for n, per in figures["runs"].items():
            ok = per["mosquitto"]["ratio"] >= 0.9
            print(f"  [{'ok' if ok else 'MISSED'}] N={n}: worker >= 90% of in-process (Mosquitto)")
    if args.json:
        args.json.write_bytes(
            orjson.dumps(
                figures, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=float
            )
        )
    if args.png:
        _plot(figures, kinds, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
