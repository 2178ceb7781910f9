"""Worker throughput, added latency and memory over MQTT, against the same loop in-process.

Measures side by side, in one run:

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

Goals (issue 2): >= 90 % of in-process throughput on Mosquitto, <= 3 ms added p50 latency,
<= 300 MB resident per worker. Run: ``python bench/worker_throughput.py`` (``--help``).
"""

from __future__ import annotations

import argparse
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
from faillite.topics import Role, Topics
from field_kit.brokers import BrokerLauncher
from field_kit.procs import ProcessGroup, faillite_cmd
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
    for p in frames[:10]:  # warm-up
        model.infer(preprocess(envelope.decode_image(envelope.unpack(p, max_bytes=1 << 22)), spec))
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


def over_mqtt(
    kind: str,
    models_dir: Path,
    variant: str,
    jpegs: list[bytes],
    n: int,
    n_latency: int,
    threads: int,
    workdir: Path,
    in_flight: int,
) -> dict[str, Any]:
    mesh = "bench"
    with BrokerLauncher(workdir / kind) as launcher:
        endpoint = launcher.start(kind, mesh=mesh)
        cfg_path = workdir / f"{kind}.yaml"
        cfg_path.write_text(
            yaml.safe_dump(
                {
                    "mesh": mesh,
                    "catalog": str(packaged_config("catalog.yaml")),
                    "models_dir": str(models_dir),
                    "broker": {"host": endpoint.host, "port": endpoint.port},
                    "workers": [
                        {
                            "id": "w1",
                            "queue_size": in_flight,
                            "heartbeat_interval_s": 0.1,
                            "backend": {"type": "onnxruntime", "intra_op_threads": threads},
                        }
                    ],
                }
            )
        )
        cfg = MeshConfig(mesh=mesh, broker=BrokerConfig(host=endpoint.host, port=endpoint.port))
        t = Topics(mesh)
        client = MeshClient(f"bench-{kind}", cfg.broker, role=Role.ADMIN)
        waiter = ResultWaiter(client, t.app_results("a1"))
        births: list[messages.WorkerStatus] = []
        client.subscribe(
            t.worker_status("w1"),
            lambda m: (
                births.append(messages.decode(messages.WorkerStatus, m.payload))
                if m.payload
                else None
            ),
        )
        client.start()
        with ProcessGroup(workdir / f"{kind}-logs") as group:
            worker = group.start(
                "w1", "worker", faillite_cmd("worker", "--id", "w1", "--config", str(cfg_path))
            )
            a = messages.Assignment(
                worker="w1",
                term=1,
                generation=1,
                ts=messages.now(),
                serve=(messages.Serve("a1", "cam1", variant),),
            )
            client.publish(t.worker_assignment("w1"), messages.encode(a), qos=1, retain=True)
            topic = t.sensor_frames("cam1")

            def send(seq: int) -> float:
                payload = envelope.pack(
                    jpegs[seq % len(jpegs)],
                    seq=seq,
                    capture_ns=time.time_ns(),
                    width=640,
                    height=480,
                )
                t0 = time.perf_counter()
                client.publish(topic, payload, qos=0)
                return t0

            # Warm-up until the model is loaded and serving.
            seq = 0
            deadline = time.monotonic() + 120
            while True:
                send(seq)
                try:
                    waiter.wait(seq, 1.0)
                    break
                except TimeoutError as exc:
                    if time.monotonic() > deadline or not worker.alive():
                        raise RuntimeError(
                            f"worker never served on {kind}:\n{worker.tail()}"
                        ) from exc
                seq += 1
            for _ in range(10):
                seq += 1
                send(seq)
                waiter.wait(seq, 10)

            # Added latency: one frame in flight.
            added, rtts = [], []
            for _ in range(n_latency):
                seq += 1
                t0 = send(seq)
                t1, r = waiter.wait(seq, 10)
                rtt = (t1 - t0) * 1000
                own = r.latency.decode_ms + r.latency.preprocess_ms + r.latency.inference_ms
                rtts.append(rtt)
                added.append(rtt - own)

            # Throughput: in_flight frames outstanding.
            first = seq + 1
            t_start = time.perf_counter()
            for k in range(in_flight):
                send(first + k)
            for s in range(first, first + n):
                waiter.wait(s, 10)
                if s + in_flight < first + n:
                    send(s + in_flight)
            elapsed = time.perf_counter() - t_start
            served = [waiter.results[s][1].latency for s in range(first, first + n)]
            breakdown = {
                k: float(np.median([getattr(lat, k) for lat in served]))
                for k in ("queue_ms", "decode_ms", "preprocess_ms", "inference_ms")
            }
            rss_mb = psutil.Process(worker.pid).memory_info().rss / 2**20
            client.publish(t.worker_assignment("w1"), b"", qos=1, retain=True)
        client.stop()
    pa, pr = percentiles(added), percentiles(rtts)
    return {
        "fps": n / elapsed,
        "added_ms_p50": pa.p50,
        "added_ms_p99": pa.p99,
        "rtt_ms_p50": pr.p50,
        "rtt_ms_p99": pr.p99,
        "worker_rss_mb": rss_mb,
        "worker_ms_p50": breakdown,
    }


def _fmt(parts: dict[str, float]) -> str:
    return " ".join(f"{k.removesuffix('_ms')} {v:.2f}" for k, v in parts.items())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="efficientnet_lite0")
    ap.add_argument("--frames", type=int, default=300, help="frames for the throughput runs")
    ap.add_argument("--latency-frames", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--in-flight", type=int, default=4, help="frames outstanding, throughput")
    ap.add_argument("--brokers", default="mosquitto,amqtt")
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
    )
    figures: dict[str, Any] = {"variant": args.variant, "threads": args.threads}
    figures["in_process"] = ip = in_process(
        model_path, args.variant, jpegs, args.frames, args.threads
    )
    print(
        f"in-process        {ip['fps']:7.1f} fps   frame p50 {ip['frame_ms_p50']:.2f} ms "
        f"p99 {ip['frame_ms_p99']:.2f} ms"
    )
    workdir = Path(tempfile.mkdtemp(prefix="faillite-bench-"))
    try:
        for kind in args.brokers.split(","):
            m = over_mqtt(
                kind,
                args.models_dir,
                args.variant,
                jpegs,
                args.frames,
                args.latency_frames,
                args.threads,
                workdir,
                args.in_flight,
            )
            m["throughput_ratio"] = m["fps"] / ip["fps"]
            figures[kind] = m
            print(
                f"{kind:<17} {m['fps']:7.1f} fps ({m['throughput_ratio']:.1%} of in-process)"
                f"   added p50 {m['added_ms_p50']:.2f} ms p99 {m['added_ms_p99']:.2f} ms"
                f"   rtt p50 {m['rtt_ms_p50']:.2f} ms   worker RSS {m['worker_rss_mb']:.0f} MB"
                f"\n{'':<17} worker p50: {_fmt(m['worker_ms_p50'])}"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
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
