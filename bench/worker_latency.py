"""Worker added latency, closed-loop throughput and memory over MQTT, one camera, plain or TLS.

The one-camera, closed-loop measurements of issue 2 (``bench/worker_throughput.py`` measures N
cameras, open loop, against the batched pipeline in-process; given ``--tls``, ``--frames``,
``--latency-frames`` or ``--in-flight`` it runs this script). Measures side by side, in one run:

- in-process: JPEG decode + preprocess + inference of EfficientNet-Lite0 on 640x480 frames,
  with no MQTT (the ceiling);
- for each broker (Mosquitto and the embedded amqtt): a real worker subprocess served through
  the broker, frames published by this process and results read back:
  * served frames per second with ``--in-flight`` frames outstanding (default 4, worker queue
    of the same length): the worker's queue never runs dry, even when this process is slow to
    answer on a busy 2-core box, and never overflows, so nothing is dropped;
  * added latency per frame with one frame in flight: round trip minus the worker's own
    decode + preprocess + inference time of that frame (transport, queueing, publishing);
  * the worker's resident memory with the model loaded and serving.

``--tls``: each broker also over TLS (the mesh's own CA, made in a temporary folder; every
client verifies the broker), both meshes up together and taking ``--rounds`` turns, then a
table of TLS against plain: throughput ratio, added latency, round trip and queue wait
differences, CPU time per frame of the worker, the broker and this process.

Goals (issue 2): >= 90 % of in-process throughput on Mosquitto, <= 3 ms added p50 latency,
<= 300 MB resident per worker. Run: ``python bench/worker_latency.py`` (``--help``).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
import yaml

from faillite import envelope, messages
from faillite.catalog import load_catalog
from faillite.config import (
    BrokerConfig,
    MeshConfig,
    default_models_dir,
    packaged_config,
)
from faillite.models.build import build_models
from faillite.models.preprocess import preprocess
from faillite.mqtt import MeshClient
from faillite.stats import percentiles
from faillite.topics import Topics
from field_kit import tlsmesh
from field_kit.brokers import BrokerLauncher
from field_kit.procs import ProcessGroup, faillite_cmd
from field_kit.tlsmesh import LoopbackPki
from sensors.sources import SceneSource
from workers.backends.ort import OnnxRuntimeBackend, OnnxRuntimeBackendConfig


def make_frames(n: int) -> list[bytes]:
    scene = SceneSource(640, 480, ("chelsea", "coffee"), hold_s=0.5)
    jpegs = []
    for _ in range(n):
        jpegs.append(envelope.encode_jpeg(scene.read()))
        time.sleep(0.01)
    return jpegs


def in_process(
    model_path: Path, variant: str, jpegs: list[bytes], n: int, threads: int
) -> dict[str, Any]:
    catalog = load_catalog(packaged_config("catalog.yaml"))
    spec = catalog.variant(variant).preprocess
    backend = OnnxRuntimeBackend(OnnxRuntimeBackendConfig(intra_op_threads=threads))
    model = backend.load(variant, model_path)
    frames = [
        envelope.pack(j, seq=i, capture_ns=0, width=640, height=480) for i, j in enumerate(jpegs)
    ]
    for f in frames[:10]:  # warm-up
        model.infer(preprocess(envelope.decode_image(envelope.unpack(f, max_bytes=1 << 22)), spec))
    per_frame, parts = [], []
    t_start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        img = envelope.decode_image(envelope.unpack(frames[i % len(frames)], max_bytes=1 << 22))
        t1 = time.perf_counter()
        batch = preprocess(img, spec)
        t2 = time.perf_counter()
        model.infer(batch)
        t3 = time.perf_counter()
        per_frame.append((t3 - t0) * 1000)
        parts.append(((t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000))
    elapsed = time.perf_counter() - t_start
    p = percentiles(per_frame)
    med = np.median(np.array(parts), axis=0)
    return {
        "fps": n / elapsed,
        "frame_ms_p50": p.p50,
        "frame_ms_p99": p.p99,
        "ms_p50": {"decode_ms": med[0], "preprocess_ms": med[1], "inference_ms": med[2]},
    }


class ResultWaiter:
    def __init__(self, client: MeshClient, topic: str) -> None:
        self._cond = threading.Condition()
        self.results: dict[int, tuple[float, messages.Result]] = {}
        client.subscribe(topic, self._on, qos=0)

    def _on(self, msg: Any) -> None:
        t = time.perf_counter()
        r = messages.decode(messages.Result, msg.payload)
        with self._cond:
            self.results[r.seq] = (t, r)
            self._cond.notify_all()

    def wait(self, seq: int, timeout: float) -> tuple[float, messages.Result]:
        with self._cond:
            if not self._cond.wait_for(lambda: seq in self.results, timeout):
                raise TimeoutError(f"no result for frame {seq} within {timeout}s")
            return self.results[seq]


class MqttRig:
    """One broker (plain or TLS), one worker subprocess serving app a1 from cam1 through it,
    and this process's client publishing frames and reading results back.

    :meth:`measure` may run several times (turns taken with another rig); the figures add up
    over the turns."""

    def __init__(
        self,
        kind: str,
        models_dir: Path,
        variant: str,
        jpegs: list[bytes],
        threads: int,
        workdir: Path,
        in_flight: int,
        tls: LoopbackPki | None = None,
    ) -> None:
        self.kind, self.models_dir, self.variant = kind, models_dir, variant
        self.jpegs, self.threads, self.in_flight, self.tls = jpegs, threads, in_flight, tls
        self.name = f"{kind}-tls" if tls else kind
        self.workdir = workdir
        self.seq = 0
        self.added: list[float] = []
        self.rtts: list[float] = []
        self.served: list[messages.Latency] = []
        self.elapsed = 0.0
        self.cpu_s = {"worker": 0.0, "broker": 0.0, "client": 0.0}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> MqttRig:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        mesh, kind, workdir = "bench", self.kind, self.workdir
        launcher = self._stack.enter_context(BrokerLauncher(workdir / self.name))
        endpoint = launcher.start(kind, tlsmesh.broker_config(self.tls), mesh=mesh)
        self.broker_pid = launcher.process(endpoint).proc.pid
        cfg_path = workdir / f"{self.name}.yaml"
        doc = {
            "mesh": mesh,
            "catalog": str(packaged_config("catalog.yaml")),
            "models_dir": str(self.models_dir),
            "broker": {"host": endpoint.host, "port": endpoint.port},
            "workers": [
                {
                    "id": "w1",
                    "queue_size": self.in_flight,
                    "heartbeat_interval_s": 0.1,
                    "backend": {"type": "onnxruntime", "intra_op_threads": self.threads},
                }
            ],
        }
        cfg_path.write_text(yaml.safe_dump(tlsmesh.mesh_document(self.tls, doc)))
        broker = BrokerConfig(host=endpoint.host, port=endpoint.port)
        cfg = MeshConfig(mesh=mesh, broker=tlsmesh.node_broker(self.tls, broker))
        t = self.topics = Topics(mesh)
        self.client = client = MeshClient(f"bench-{self.name}", cfg.broker)
        self.waiter = ResultWaiter(client, t.app_results("a1", "w1"))
        client.start()
        self._stack.callback(client.stop)
        group = self._stack.enter_context(ProcessGroup(workdir / f"{self.name}-logs"))
        self.worker = worker = group.start(
            "w1", "worker", faillite_cmd("worker", "--id", "w1", "--config", str(cfg_path))
        )
        a = messages.Assignment(
            worker="w1",
            term=1,
            generation=1,
            ts=messages.now(),
            serve=(messages.Serve("a1", "cam1", self.variant),),
        )
        client.publish(t.worker_assignment("w1"), messages.encode(a), qos=1, retain=True)
        self._stack.callback(client.publish, t.worker_assignment("w1"), b"", qos=1, retain=True)
        self.topic = t.sensor_frames("cam1")

        # Warm-up until the model is loaded and serving.
        deadline = time.monotonic() + 120
        while True:
            self.send(self.seq)
            try:
                self.waiter.wait(self.seq, 1.0)
                break
            except TimeoutError as exc:
                if time.monotonic() > deadline or not worker.alive():
                    raise RuntimeError(
                        f"worker never served on {self.name}:\n{worker.tail()}"
                    ) from exc
            self.seq += 1
        self.warm_up(10)

    def send(self, seq: int) -> float:
        payload = envelope.pack(
            self.jpegs[seq % len(self.jpegs)],
            seq=seq,
            capture_ns=time.time_ns(),
            width=640,
            height=480,
        )
        t0 = time.perf_counter()
        self.client.publish(self.topic, payload, qos=0)
        return t0

    def warm_up(self, n: int) -> None:
        """``n`` frames one at a time, not counted."""
        for _ in range(n):
            self.seq += 1
            self.send(self.seq)
            self.waiter.wait(self.seq, 10)

    def _cpu(self) -> dict[str, float]:
        pids = {"worker": self.worker.pid, "broker": self.broker_pid, "client": None}
        out = {}
        for who, pid in pids.items():
            ct = psutil.Process(pid).cpu_times()
            out[who] = ct.user + ct.system
        return out

    def measure(self, n_latency: int, n: int) -> None:
        """Added latency over ``n_latency`` frames (one in flight), then throughput over ``n``
        frames (``in_flight`` outstanding) and the CPU time each process spent on them."""
        waiter, in_flight = self.waiter, self.in_flight
        for _ in range(n_latency):
            self.seq += 1
            t0 = self.send(self.seq)
            t1, r = waiter.wait(self.seq, 10)
            rtt = (t1 - t0) * 1000
            own = r.latency.decode_ms + r.latency.preprocess_ms + r.latency.inference_ms
            self.rtts.append(rtt)
            self.added.append(rtt - own)

        first = self.seq + 1
        cpu0 = self._cpu()
        t_start = time.perf_counter()
        for k in range(in_flight):
            self.send(first + k)
        for s in range(first, first + n):
            waiter.wait(s, 10)
            if s + in_flight < first + n:
                self.send(s + in_flight)
        self.elapsed += time.perf_counter() - t_start
        cpu1 = self._cpu()
        for who in self.cpu_s:
            self.cpu_s[who] += cpu1[who] - cpu0[who]
        self.served += [waiter.results[s][1].latency for s in range(first, first + n)]
        self.seq = first + n - 1

    def figures(self) -> dict[str, Any]:
        breakdown = {
            k: float(np.median([getattr(lat, k) for lat in self.served]))
            for k in ("queue_ms", "decode_ms", "preprocess_ms", "inference_ms")
        }
        pa, pr = percentiles(self.added), percentiles(self.rtts)
        n = len(self.served)
        return {
            "fps": n / self.elapsed,
            "added_ms_p50": pa.p50,
            "added_ms_p99": pa.p99,
            "rtt_ms_p50": pr.p50,
            "rtt_ms_p99": pr.p99,
            "worker_rss_mb": psutil.Process(self.worker.pid).memory_info().rss / 2**20,
            "worker_ms_p50": breakdown,
            "cpu_ms_per_frame": {k: v * 1000 / n for k, v in self.cpu_s.items()},
        }


def _fmt(parts: dict[str, float]) -> str:
    return " ".join(f"{k.removesuffix('_ms')} {v:.2f}" for k, v in parts.items())


def _plain(
    args: argparse.Namespace, kind: str, jpegs: list[bytes], workdir: Path
) -> dict[str, Any]:
    with MqttRig(
        kind, args.models_dir, args.variant, jpegs, args.threads, workdir, args.in_flight
    ) as rig:
        rig.measure(args.latency_frames, args.frames)
        return rig.figures()


def _side_by_side(
    args: argparse.Namespace, kind: str, jpegs: list[bytes], workdir: Path, tls: LoopbackPki
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The plain and the TLS mesh up together, taking turns: ``--rounds`` turns each, in
    alternating order, so a busy moment of this shared machine falls on both."""
    common = (args.models_dir, args.variant, jpegs, args.threads, workdir, args.in_flight)
    rigs = [MqttRig(kind, *common), MqttRig(kind, *common, tls)]
    rounds = max(1, args.rounds)
    n_lat, n = max(1, args.latency_frames // rounds), max(1, args.frames // rounds)
    with rigs[0], rigs[1]:
        for r in range(rounds):
            for rig in rigs if r % 2 == 0 else rigs[::-1]:
                if r:
                    rig.warm_up(3)  # its worker sat idle during the other's turn
                rig.measure(n_lat, n)
        return rigs[0].figures(), rigs[1].figures()


def _compare(plain: dict[str, Any], tls: dict[str, Any]) -> dict[str, Any]:
    """TLS against plain: throughput ratio, latency and queue-wait differences, CPU."""
    q = "queue_ms"
    return {
        "throughput_ratio": tls["fps"] / plain["fps"],
        "added_ms_p50_diff": tls["added_ms_p50"] - plain["added_ms_p50"],
        "added_ms_p99_diff": tls["added_ms_p99"] - plain["added_ms_p99"],
        "rtt_ms_p50_diff": tls["rtt_ms_p50"] - plain["rtt_ms_p50"],
        "queue_ms_p50_diff": tls["worker_ms_p50"][q] - plain["worker_ms_p50"][q],
        "cpu_ms_per_frame_diff": {
            k: v - plain["cpu_ms_per_frame"][k] for k, v in tls["cpu_ms_per_frame"].items()
        },
    }


def _tls_table(figures: dict[str, Any], kinds: list[str]) -> None:
    cols = (
        f"{'':<20}{'fps':>8}{'added p50':>11}{'added p99':>11}{'rtt p50':>9}"
        f"{'queue p50':>11}   CPU ms/frame: worker broker client"
    )
    print(f"\nTLS against plain MQTT, side by side (ms; TLS - plain on the third line)\n{cols}")
    for kind in kinds:
        for label, m in ((kind, figures[kind]), (f"{kind} + TLS", figures["tls"][kind])):
            cpu = m["cpu_ms_per_frame"]
            print(
                f"{label:<20}{m['fps']:8.1f}{m['added_ms_p50']:11.2f}{m['added_ms_p99']:11.2f}"
                f"{m['rtt_ms_p50']:9.2f}{m['worker_ms_p50']['queue_ms']:11.2f}"
                f"{'':>17}{cpu['worker']:6.2f} {cpu['broker']:6.2f} {cpu['client']:6.2f}"
            )
        c = figures["tls"][kind]["vs_plain"]
        cpu = c["cpu_ms_per_frame_diff"]
        print(
            f"{'  TLS/plain, diff':<20}{c['throughput_ratio']:7.1%} "
            f"{c['added_ms_p50_diff']:+11.2f}{c['added_ms_p99_diff']:+11.2f}"
            f"{c['rtt_ms_p50_diff']:+9.2f}{c['queue_ms_p50_diff']:+11.2f}"
            f"{'':>17}{cpu['worker']:+6.2f} {cpu['broker']:+6.2f} {cpu['client']:+6.2f}"
        )


def _print_mqtt(label: str, m: dict[str, Any]) -> None:
    print(
        f"{label:<17} {m['fps']:7.1f} fps ({m['throughput_ratio']:.1%} of in-process)"
        f"   added p50 {m['added_ms_p50']:.2f} ms p99 {m['added_ms_p99']:.2f} ms"
        f"   rtt p50 {m['rtt_ms_p50']:.2f} ms   worker RSS {m['worker_rss_mb']:.0f} MB"
        f"\n{'':<17} worker p50: {_fmt(m['worker_ms_p50'])}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="efficientnet_lite0")
    ap.add_argument("--frames", type=int, default=300, help="frames for the throughput runs")
    ap.add_argument("--latency-frames", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--in-flight", type=int, default=4, help="frames outstanding, throughput")
    ap.add_argument("--brokers", default="mosquitto,amqtt")
    ap.add_argument(
        "--tls",
        action="store_true",
        help="also a TLS mesh per broker (its own CA, made here), measured beside the plain one",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="with --tls: turns the plain and TLS meshes take, the frames split among them",
    )
    ap.add_argument("--models-dir", type=Path, default=default_models_dir())
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    args.models_dir = args.models_dir.resolve()

    catalog = load_catalog(packaged_config("catalog.yaml"))
    build_models(catalog, args.models_dir, [args.variant], progress=True)
    model_path = args.models_dir / catalog.variant(args.variant).file
    jpegs = make_frames(30)
    print(
        f"{args.variant}, 640x480 JPEG frames, {args.threads} intra-op thread(s), "
        f"{args.frames} frames per throughput run ({args.in_flight} in flight), "
        f"{args.latency_frames} for latency (1 in flight)"
        + (f"; plain and TLS take {args.rounds} turns each" if args.tls else "")
    )
    figures: dict[str, Any] = {"variant": args.variant, "threads": args.threads}
    figures["in_process"] = ip = in_process(
        model_path, args.variant, jpegs, args.frames, args.threads
    )
    print(
        f"in-process        {ip['fps']:7.1f} fps   frame p50 {ip['frame_ms_p50']:.2f} ms "
        f"p99 {ip['frame_ms_p99']:.2f} ms"
    )
    kinds = args.brokers.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="faillite-bench-"))
    try:
        tls = LoopbackPki.create(workdir / "pki") if args.tls else None
        if tls:
            figures["tls"] = {}
        for kind in kinds:
            if tls:
                m, mt = _side_by_side(args, kind, jpegs, workdir, tls)
                mt["throughput_ratio"] = mt["fps"] / ip["fps"]
                mt["vs_plain"] = _compare(m, mt)
                figures["tls"][kind] = mt
            else:
                m = _plain(args, kind, jpegs, workdir)
            m["throughput_ratio"] = m["fps"] / ip["fps"]
            figures[kind] = m
            _print_mqtt(kind, m)
            if tls:
                _print_mqtt(f"{kind} + TLS", mt)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.tls:
        _tls_table(figures, kinds)
    if "mosquitto" in figures:
        mq = figures["mosquitto"]
        checks = [
            ("throughput >= 90% of in-process (Mosquitto)", mq["throughput_ratio"] >= 0.9),
            ("added p50 <= 3 ms (Mosquitto)", mq["added_ms_p50"] <= 3.0),
            ("worker RSS <= 300 MB", mq["worker_rss_mb"] <= 300),
        ]
        for name, ok in checks:
            print(f"  [{'ok' if ok else 'MISSED'}] {name}")
    if args.json:
        args.json.write_bytes(
            orjson.dumps(
                figures, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=float
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
