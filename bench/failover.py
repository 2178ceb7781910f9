"""Failover figures on a real mesh: detection, decision, loading, reconfiguration, MTTR.

For each broker (Mosquitto, the embedded amqtt) and each scenario, a mesh of three CPU workers
(100 MB each: one EfficientNet-Lite fits) and the planner coordinator serves one app from a
30 fps camera. Each repetition fails the app's current primary, measures, restarts the failed
worker and waits until the app is protected again:

- ``warm-crash``: critical app (warm backup), primary killed with SIGKILL (the broker sees the
  socket close and publishes the last-will);
- ``warm-silent``: critical app, primary frozen with SIGSTOP (socket open: only heartbeats
  tell), then killed;
- ``cold-crash``: non-critical app (cold backup, loads a small variant first), SIGKILL;
- ``hot-crash``: hot app (a hot backup runs every frame too, holding its results), SIGKILL: on
  promotion it publishes the held results the primary did not, then serves live.

Definitions (wall clock of this machine, all processes on it):
detection = coordinator's failure_detected - failure injection; decision = the coordinator's
own lookup-and-publish time; loading = the backup's model load (0 for warm);
reconfiguration = backup's assignment applied - failover decided; MTTR = first result of the
app from the backup, received here - failure injection.

Run: ``python bench/failover.py [--reps 20] [--brokers mosquitto,amqtt] [--json F] [--png F]``;
``--hogs 0,2`` runs each case once per hog count (CPU hogs each in its own session, as a busy
board's services are: issue 20's "warm crash MTTR under load");
``--tls`` runs each case a second time right after, on the same mesh over TLS (the mesh's own
CA, made in a temporary folder; every node verifies the broker), and prints MTTR and detection
of the two side by side.
Goals (issue 3): warm crash MTTR p50 <= 100 ms and p99 <= 250 ms; silent failure detected
within 500 ms with 100 ms heartbeats; decision <= 5 ms. Issue 12: hot crash MTTR p50 <= 40 ms
and p99 <= 80 ms.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from faillite import messages
from faillite.catalog import load_catalog
from faillite.config import MeshConfig, default_models_dir, load_mesh_config, packaged_config
from faillite.models.build import build_models
from faillite.stats import percentiles
from faillite.topics import Topics
from field_kit import tlsmesh
from field_kit.brokers import BrokerLauncher
from field_kit.drill.hogs import Hogs
from field_kit.procs import ProcessGroup, faillite_cmd
from field_kit.pump import FramePump
from field_kit.recorder import Recorder as Collector
from field_kit.tlsmesh import LoopbackPki

SCENARIOS = ("warm-crash", "warm-silent", "cold-crash", "hot-crash")
DEFAULT_BACKEND: dict[str, Any] = {"type": "onnxruntime", "intra_op_threads": 1}
METRICS = ("detection_ms", "decision_ms", "loading_ms", "reconfiguration_ms", "mttr_ms")


def _config(
    path: Path,
    endpoint: Any,
    models_dir: Path,
    critical: bool,
    mesh: str,
    tls: LoopbackPki | None = None,
    hot: bool = False,
    backend: dict[str, Any] | None = None,
) -> Path:
    path.write_text(
        yaml.safe_dump(
            tlsmesh.mesh_document(
                tls,
                {
                    "mesh": mesh,
                    "catalog": str(packaged_config("catalog.yaml")),
                    "models_dir": str(models_dir),
                    "broker": {"host": endpoint.host, "port": endpoint.port, "keepalive_s": 2},
                    # a2 (no frames sent) shares the spare with a1, so a non-critical a1 gets a cold
                    # backup there: one spare cannot hold two warm models.
                    "sensors": [{"id": "cam1", "fps": 30}, {"id": "cam2", "fps": 5}],
                    "apps": [
                        {
                            "id": "a1",
                            "sensor": "cam1",
                            "family": "efficientnet_lite",
                            "critical": critical,
                            "hot": hot,
                            "slo_ms": 500,
                        },
                        {"id": "a2", "sensor": "cam2", "family": "efficientnet_lite"},
                    ],
                    "workers": [
                        {
                            "id": w,
                            "memory_mb": 100,
                            "failure_domain": f"rack-{w}",
                            "heartbeat_interval_s": 0.1,
                            "queue_size": 1,
                            "backend": backend or DEFAULT_BACKEND,
                        }
                        for w in ("w1", "w2", "w3")
                    ],
                    "coordinator": {"type": "planner", "startup_wait_s": 10},
                },
            )
        )
    )
    return path


class Mesh:
    def __init__(self, cfg: MeshConfig, path: Path, logs: Path) -> None:
        self.cfg, self.path = cfg, path
        self.topics = Topics(cfg.mesh)
        self.col = Collector(cfg, "bench").follow(f"faillite/{cfg.mesh}/#", qos=1).start()
        self.group = ProcessGroup(logs)
        self.n = 0
        for w in ("w1", "w2", "w3"):
            self.start_worker(w)
        self.group.start("coord", "coordinator", faillite_cmd("coordinator", "--config", str(path)))
        self.pump = FramePump(self.col, self.topics.sensor_frames("cam1"), fps=30)
        self.pump.__enter__()

    def start_worker(self, w: str) -> str:
        self.n += 1
        name = f"{w}-{self.n}"
        self.group.start(
            name, "worker", faillite_cmd("worker", "--id", w, "--config", str(self.path))
        )
        return name

    def proc_of(self, w: str) -> Any:
        live = [c for c in self.group.children if c.name.startswith(f"{w}-") and c.alive()]
        return live[-1]

    def close(self) -> None:
        self.pump.__exit__()
        self.col.stop()
        self.group.stop_all()

    def events(self, kind: str, since: float) -> list[messages.Event]:
        return [
            e
            for e in self.col.messages(self.topics.events, messages.Event, since=since)
            if e.kind == kind
        ]

    def protected(self, kind: str) -> tuple[messages.PlacementEntry, messages.PlacementEntry]:
        col, t = self.col, self.topics

        def ready() -> tuple[messages.PlacementEntry, messages.PlacementEntry] | None:
            ps = col.messages(t.placement, messages.Placement)
            if not ps:
                return None
            p = ps[-1]
            prim = [e for e in p.entries if e.app == "a1" and e.role == "primary"]
            back = [e for e in p.entries if e.app == "a1" and e.role == kind]
            if not prim or not back:
                return None
            hbs = col.messages(t.worker_heartbeat(back[0].worker), messages.Heartbeat)
            if kind != "cold" and not (hbs and back[0].variant in hbs[-1].loaded):
                return None
            recent = col.messages(
                t.app_results("a1", prim[0].worker), messages.Result, since=time.monotonic() - 0.5
            )
            if not recent:
                return None
            return prim[0], back[0]

        return col.wait_for(ready, 90, f"a1 served with a {kind} backup")


def run_rep(mesh: Mesh, scenario: str) -> dict[str, float]:
    kind = scenario.split("-")[0]
    primary, backup = mesh.protected(kind)
    time.sleep(0.5)
    child = mesh.proc_of(primary.worker)
    since = time.monotonic()
    t_fail = time.time()
    child.proc.send_signal(signal.SIGSTOP if scenario.endswith("silent") else signal.SIGKILL)
    col, t = mesh.col, mesh.topics

    results = t.app_results("a1", backup.worker)

    def first_from_backup() -> list[tuple[float, messages.Result]]:
        raw = [(ts, p) for ts, tp, p in col.raw(since) if tp == results]
        return [(ts, messages.decode(messages.Result, p)) for ts, p in raw]

    got = col.wait_for(first_from_backup, 30, "first result from the backup")
    recv_mono = got[0][0]
    mttr_ms = (recv_mono - since) * 1000
    det = col.wait_for(
        lambda: [e for e in mesh.events("failure_detected", since) if e.worker == primary.worker],
        10,
        "detection event",
    )[0]
    fo = col.wait_for(
        lambda: [e for e in mesh.events("failover", since) if e.worker == primary.worker],
        10,
        "failover event",
    )[0]
    gen = fo.detail["generation"]
    applied = col.wait_for(
        lambda: [
            e
            for e in mesh.events("assignment_applied", since)
            if e.worker == backup.worker and e.detail["generation"] >= gen
        ],
        10,
        "applied",
    )[0]
    loads = [e for e in mesh.events("model_loaded", since) if e.worker == backup.worker]
    first_variant = fo.detail["recoveries"]["a1"]["variant"]
    load_ms = sum(
        e.detail["load_ms"]
        for e in loads
        if e.detail["variant"] == first_variant and e.ts <= applied.ts + 0.001
    )
    out = {
        "detection_ms": (det.ts - t_fail) * 1000,
        "decision_ms": float(fo.detail["decision_ms"]),
        "loading_ms": float(load_ms),
        "reconfiguration_ms": (applied.ts - fo.ts) * 1000,
        "mttr_ms": mttr_ms,
        "cause": det.detail["cause"],  # type: ignore[dict-item]
        # Where the time went after the backup applied its assignment.
        "result_after_apply_ms": (got[0][1].ts - applied.ts) * 1000,
        "first_result_ms": {
            k: getattr(got[0][1].latency, k)
            for k in ("queue_ms", "decode_ms", "preprocess_ms", "inference_ms")
        },
        "failover_after_detection_ms": (fo.ts - det.ts) * 1000,
    }
    # Put the failed worker back (a fresh incarnation) and let the mesh re-protect a1.
    if scenario.endswith("silent"):
        child.proc.send_signal(signal.SIGKILL)
        child.proc.send_signal(signal.SIGCONT)
    child.proc.wait(10)
    mesh.start_worker(primary.worker)
    return out


def run_case(
    work: Path,
    models_dir: Path,
    kind: str,
    scenario: str,
    reps: int,
    tls: LoopbackPki | None = None,
    backend: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``reps`` failovers of ``scenario`` on a fresh mesh over a ``kind`` broker (TLS with
    ``tls``): the summary (p50, p99, mean of each metric) and every repetition."""
    key = f"{kind}{'+tls' if tls else ''}/{scenario}"
    with BrokerLauncher(work / key.replace("/", "-")) as launcher:
        endpoint = launcher.start(kind, tlsmesh.broker_config(tls), mesh="bench")
        mesh_id = f"fo{kind[:3]}{'tls' if tls else ''}{scenario.replace('-', '')}"[:32]
        path = _config(
            work / f"{mesh_id}.yaml",
            endpoint,
            models_dir,
            critical=not scenario.startswith("cold"),
            mesh=mesh_id,
            tls=tls,
            hot=scenario.startswith("hot"),
            backend=backend,
        )
        mesh = Mesh(load_mesh_config(path), path, work / f"{mesh_id}-logs")
        out: list[dict[str, float]] = []
        try:
            for i in range(reps):
                out.append(run_rep(mesh, scenario))
                r = out[-1]
                print(
                    f"  {key} rep {i + 1}/{reps}: detection "
                    f"{r['detection_ms']:.0f} ms, MTTR {r['mttr_ms']:.0f} ms "
                    f"({r['cause']})",
                    flush=True,
                )
        finally:
            mesh.close()
    summary = {}
    for m in METRICS:
        p = percentiles([r[m] for r in out])
        summary[m] = {
            "p50": round(p.p50, 2),
            "p99": round(p.p99, 2),
            "mean": round(p.mean, 2),
        }
    return {"summary": summary, "reps": out}


def _pair(summary: dict[str, dict[str, float]], metric: str) -> str:
    return f"{summary[metric]['p50']:9.1f} / {summary[metric]['p99']:<6.1f}"


def _tls_table(results: dict[str, dict[str, Any]], kinds: list[str], scenarios: list[str]) -> None:
    print(
        "\nTLS against plain MQTT, side by side (each case: the plain mesh, then the TLS mesh)"
        f"\n{'broker/scenario':<24}{'MTTR plain':>18}{'MTTR TLS':>18}{'TLS - plain':>18}"
        f"{'detection plain':>18}{'detection TLS':>18}"
        f"\n{'':<24}" + f"{'p50 / p99 ms':>18}" * 5
    )
    for kind in kinds:
        for scenario in scenarios:
            plain = results[f"{kind}/{scenario}"]["summary"]
            tls = results[f"{kind}+tls/{scenario}"]["summary"]
            d = {q: tls["mttr_ms"][q] - plain["mttr_ms"][q] for q in ("p50", "p99")}
            print(
                f"{kind + '/' + scenario:<24}{_pair(plain, 'mttr_ms')}{_pair(tls, 'mttr_ms')}"
                f"{d['p50']:+9.1f} / {d['p99']:<+6.1f}"
                f"{_pair(plain, 'detection_ms')}{_pair(tls, 'detection_ms')}"
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--brokers", default="mosquitto,amqtt")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument(
        "--tls",
        action="store_true",
        help="each case also on a TLS mesh (its own CA, made here), right after the plain one",
    )
    ap.add_argument("--models-dir", type=Path, default=default_models_dir())
    ap.add_argument(
        "--backend",
        type=orjson.loads,
        default=DEFAULT_BACKEND,
        help="the workers' backend section as JSON (bench/gpu.py: CUDA providers)",
    )
    ap.add_argument("--hogs", default="0", help="CPU hog counts, comma-separated (busy board)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--png", type=Path)
    args = ap.parse_args()
    models_dir = args.models_dir.resolve()
    catalog = load_catalog(packaged_config("catalog.yaml"))
    lite = [v.name for v in catalog.family("efficientnet_lite").variants]
    build_models(catalog, models_dir, lite, progress=True)
    work = Path(tempfile.mkdtemp(prefix="faillite-failover-"))
    tls = LoopbackPki.create(work / "pki") if args.tls else None
    kinds, scenarios = args.brokers.split(","), args.scenarios.split(",")
    results: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        for scenario in scenarios:
            for n in (int(x) for x in args.hogs.split(",")):
                with Hogs(n):
                    result = run_case(
                        work / f"hogs{n}",
                        models_dir,
                        kind,
                        scenario,
                        args.reps,
                        backend=args.backend,
                    )
                results[f"{kind}/{scenario}" + (f"+{n}hogs" if n else "")] = result
            if tls:
                results[f"{kind}+tls/{scenario}"] = run_case(
                    work, models_dir, kind, scenario, args.reps, tls, backend=args.backend
                )
    print(f"\n{'broker/scenario':<24}" + "".join(f"{m[:-3]:>22}" for m in METRICS))
    print(" " * 24 + "".join(f"{'p50 / p99 ms':>22}" for _ in METRICS))
    for key, r in results.items():
        print(
            f"{key:<24}"
            + "".join(
                f"{r['summary'][m]['p50']:>12.1f} / {r['summary'][m]['p99']:<7.1f}" for m in METRICS
            )
        )
    if tls:
        _tls_table(results, kinds, scenarios)
    checks = []
    for key, r in results.items():
        s = r["summary"]
        if key.endswith("warm-crash") or "warm-crash+" in key:
            checks.append((f"{key}: MTTR p50 <= 100 ms", s["mttr_ms"]["p50"] <= 100))
            checks.append((f"{key}: MTTR p99 <= 250 ms", s["mttr_ms"]["p99"] <= 250))
        if key.endswith("hot-crash"):
            checks.append((f"{key}: MTTR p50 <= 40 ms", s["mttr_ms"]["p50"] <= 40))
            checks.append((f"{key}: MTTR p99 <= 80 ms", s["mttr_ms"]["p99"] <= 80))
        if key.endswith("silent"):
            checks.append((f"{key}: detection p99 <= 500 ms", s["detection_ms"]["p99"] <= 500))
        checks.append((f"{key}: decision p99 <= 5 ms", s["decision_ms"]["p99"] <= 5))
    for name, ok in checks:
        print(f"  [{'ok' if ok else 'MISSED'}] {name}")
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    if args.png:
        _plot(results, args.png)
    return 0


def _plot(results: dict[str, dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for key, r in results.items():
        xs = sorted(x["mttr_ms"] for x in r["reps"])
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=key)
    ax.set_xlabel("MTTR (ms): failure injected to first result from the backup")
    ax.set_ylabel("share of failovers")
    ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("FailLite Mesh failover MTTR on loopback (3 CPU workers, 30 fps camera)")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
