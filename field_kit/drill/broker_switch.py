"""How long a mesh goes without results when its broker dies, and what else that costs.

Run as root (network namespaces; Debian's ``mosquitto``), from ``bench/broker_switch.py`` or
a test (:func:`measure`)::

    python bench/broker_switch.py [--reps 6] [--json docs/bench/broker_switch.json]

Two Mosquitto brokers, each in its own network namespace (two boards), B bridged to A; the
mesh (planner coordinator, two CPU workers, a 10 fps camera) in a third namespace, every role
with the list [A, B]. Each repetition kills the broker the mesh is on, then brings it back
for the next one, so the mesh goes A -> B -> A ...:

- ``crash``: the broker process is SIGKILLed (its node's kernel still answers: connections
  are reset at once);
- ``silent``: the broker's board drops every packet, in and out (nftables), as a board whose
  power was cut: clients only learn it from their keepalive.

Per repetition: the results gap (last result before the kill to the first one after, as an
observer on the mesh's namespace sees them), results lost (frames the camera sent in the gap
that got no result), failovers and leader changes the switch caused (goal: none).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
MESH = "bsw"
ADDR = {"a": "10.253.0.1", "b": "10.253.0.2", "m": "10.253.0.3"}
PORT = 1883
FPS = 10.0
BLACKHOLE = (
    "add table inet blackhole; "
    "add chain inet blackhole in { type filter hook input priority -300; policy drop; }; "
    "add chain inet blackhole out { type filter hook output priority -300; policy drop; }"
)


def outer(args: argparse.Namespace) -> int:
    from field_kit.drill.netns import Lan, root_problem

    problem = root_problem()
    if problem is not None:
        print(f"broker_switch: {problem}", file=sys.stderr)
        return 2
    lan = Lan(f"fls{uuid.uuid4().hex[:4]}", ADDR)
    try:
        lan.create()
        argv = [sys.executable, "-m", "field_kit.drill.broker_switch", "--inside", lan.tag,
                *args.argv]  # fmt: skip
        return subprocess.run(lan.wrap("m", argv), check=False).returncode
    finally:
        lan.destroy()


def pair_mesh(mesh: str, clients: Any, models_dir: Path, fps: float) -> dict[str, Any]:
    """The mesh config document both the measurement and its tests run: a planner
    coordinator, two 100 MB CPU workers in their own domains, one camera, one critical app;
    ``clients``: the roles' BrokerConfig (with its fallbacks)."""
    from faillite.config import packaged_config

    return {
        "mesh": mesh,
        "catalog": str(packaged_config("catalog.yaml")),
        "models_dir": str(models_dir),
        "broker": json.loads(clients.model_dump_json()),
        "sensors": [{"id": "cam1", "source": "scene:chelsea", "fps": fps}],
        "apps": [{"id": "a1", "sensor": "cam1", "family": "efficientnet_lite", "critical": True}],
        "workers": [
            {"id": w, "heartbeat_interval_s": 0.1, "memory_mb": 100, "failure_domain": f"r-{w}",
             "backend": {"type": "onnxruntime", "intra_op_threads": 1}}
            for w in ("w1", "w2")
        ],
        "coordinator": {"type": "planner", "startup_wait_s": 5},
    }  # fmt: skip


def start_pair_mesh(doc: dict[str, Any], workdir: Path, *, qos: int) -> tuple[Any, Any]:
    """``doc`` (:func:`pair_mesh`) written to ``workdir/mesh.yaml``, a recorder following the
    whole mesh at ``qos``, and its roles started (logs in ``workdir/logs``): the recorder and
    the process group, which the caller stops."""
    from faillite.config import load_mesh_config
    from faillite.topics import Topics
    from field_kit.procs import ProcessGroup, faillite_cmd
    from field_kit.recorder import Recorder

    path = workdir / "mesh.yaml"
    path.write_text(yaml.safe_dump(doc))
    rec = Recorder(load_mesh_config(path)).follow(f"{Topics(doc['mesh']).prefix}/#", qos=qos)
    rec.start()
    group = ProcessGroup(workdir / "logs")
    try:
        group.start("coord", "coordinator", faillite_cmd("coordinator", "--config", str(path)))
        for w in ("w1", "w2"):
            group.start(w, "worker", faillite_cmd("worker", "--id", w, "--config", str(path)))
        group.start("cam1", "sensor", faillite_cmd("sensor", "--id", "cam1", "--config", str(path)))
    except BaseException:
        group.stop_all()
        rec.stop()
        raise
    return rec, group


class Broker:
    def __init__(self, name: str, ns: str, conf: Path, log: Path) -> None:
        self.name, self.ns, self.conf, self.log = name, ns, conf, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from field_kit.brokers import mosquitto_binary

        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, str(mosquitto_binary()), "-c", str(self.conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            try:
                socket.create_connection((ADDR[self.name], PORT), timeout=0.5).close()
            except OSError:
                time.sleep(0.05)
                continue
            return
        raise RuntimeError(f"broker {self.name} did not come up; see {self.log}")

    def crash(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def go_silent(self) -> None:
        subprocess.run(["ip", "netns", "exec", self.ns, "nft", BLACKHOLE], check=True)

    def restore(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        subprocess.run(
            ["ip", "netns", "exec", self.ns, "nft", "delete table inet blackhole"],
            check=False,
            capture_output=True,
        )
        self.start()


def logged_events(log: Path, event: str, since: float) -> list[dict[str, Any]]:
    """``event`` lines of a role's JSON log stamped at or after ``since`` (epoch seconds)."""
    from datetime import datetime

    out = []
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{") or f'"event":"{event}"' not in line:
            continue
        ev = json.loads(line)
        at = datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00")).timestamp()
        if at >= since:
            out.append(ev)
    return out


def inner(args: argparse.Namespace) -> int:
    from broker.mosquitto import write_mosquitto_config
    from faillite import messages
    from faillite.accounts import provision
    from faillite.catalog import load_catalog
    from faillite.config import (
        BridgeConfig,
        BrokerAddress,
        BrokerConfig,
        packaged_config,
    )
    from faillite.identity import Identity
    from faillite.models.build import build_models
    from faillite.topics import Role, Topics

    tag = args.inside
    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="faillite-bsw-"))
    tmp.mkdir(parents=True, exist_ok=True)
    models = Path(args.models_dir)
    build_models(load_catalog(packaged_config("catalog.yaml")), models, progress=False)
    passwd, secrets = tmp / "passwd", tmp / "secrets"
    ids = [
        Identity(MESH, Role.WORKER, "w1"), Identity(MESH, Role.WORKER, "w2"),
        Identity(MESH, Role.SENSOR, "cam1"), Identity(MESH, Role.COORDINATOR, "main"),
        Identity(MESH, Role.ADMIN, "recorder"), Identity(MESH, Role.BRIDGE, "b"),
    ]  # fmt: skip
    provision(passwd, secrets, ids)
    base = BrokerConfig(password_file=passwd, secrets_dir=secrets, keepalive_s=args.keepalive)
    brokers: dict[str, Broker] = {}
    for name in ("a", "b"):
        bcfg = base.model_copy(update={"host": ADDR[name], "port": PORT})
        if name == "b":
            to = (BrokerAddress(host=ADDR["a"], port=PORT),)
            bcfg = bcfg.model_copy(update={"bridge": BridgeConfig(id="b", to=to)})
        # As root, Mosquitto would switch to the 'mosquitto' user, which cannot read our files.
        conf = write_mosquitto_config(bcfg, MESH, tmp / f"broker-{name}", run_as="root")
        brokers[name] = Broker(
            name, f"{tag}{list(ADDR).index(name) + 1}", conf, tmp / f"{name}.log"
        )
        brokers[name].start()
    clients = base.model_copy(
        update={"host": ADDR["a"], "port": PORT,
                "fallbacks": (BrokerAddress(host=ADDR["b"], port=PORT),)}
    )  # fmt: skip
    t = Topics(MESH)
    rec, group = start_pair_mesh(pair_mesh(MESH, clients, models, FPS), tmp, qos=0)
    rows: list[dict[str, Any]] = []
    try:

        def results(since: float) -> list[tuple[float, messages.Result]]:
            out = []
            for at, topic, payload in rec.raw(since):
                if "/results/" in topic:
                    out.append((at, messages.decode(messages.Result, payload)))
            return out

        deadline = time.monotonic() + 90
        while len(results(0)) < 20:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the mesh never served; logs in {tmp / 'logs'}")
            time.sleep(0.2)
        on = "a"
        for rep in range(args.reps):
            mode = ("crash", "silent")[rep % 2] if args.mode == "both" else args.mode
            time.sleep(3)
            terms = {s.term for s in rec.messages(t.coordinator_status, messages.CoordinatorStatus)}
            t_kill, wall_kill = time.monotonic(), time.time()
            (brokers[on].crash if mode == "crash" else brokers[on].go_silent)()
            while True:
                after = results(t_kill)
                if len(after) >= 5 or time.monotonic() - t_kill > 60:
                    break
                time.sleep(0.05)
            time.sleep(2)
            before = results(t_kill - 5)
            last_before = max((at for at, _r in before if at < t_kill), default=t_kill)
            first_after = min((at for at, _r in results(t_kill)), default=float("nan"))
            gap_s = first_after - last_before
            # From the coordinator's own log: an event published to a dead broker is lost.
            failovers = logged_events(tmp / "logs" / "coord.log", "failover", wall_kill)
            new_terms = {
                s.term for s in rec.messages(t.coordinator_status, messages.CoordinatorStatus)
            } - terms
            row = {
                "rep": rep, "mode": mode, "from": on, "gap_ms": round(gap_s * 1000, 1),
                "results_lost": max(0, round(gap_s * FPS) - 1),
                "failovers": len(failovers), "leader_changes": len(new_terms),
            }  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
            brokers[on].restore()
            on = "b" if on == "a" else "a"
    finally:
        group.stop_all()
        rec.stop()
        for b in brokers.values():
            if b.proc is not None and b.proc.poll() is None:
                b.proc.terminate()
                b.proc.wait(10)
    for mode in sorted({r["mode"] for r in rows}):
        gaps = sorted(r["gap_ms"] for r in rows if r["mode"] == mode)
        p99 = gaps[min(len(gaps) - 1, round(0.99 * (len(gaps) - 1)))]
        print(
            f"{mode:<7} n={len(gaps)} gap p50 {statistics.median(gaps):.0f} ms, p99 {p99:.0f} ms; "
            f"results lost {sum(r['results_lost'] for r in rows if r['mode'] == mode)}, "
            f"failovers {sum(r['failovers'] for r in rows if r['mode'] == mode)}, "
            f"leader changes {sum(r['leader_changes'] for r in rows if r['mode'] == mode)}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"keepalive_s": args.keepalive, "rows": rows}, indent=2) + "\n"
        )
    print(f"logs: {tmp / 'logs'}", file=sys.stderr)
    return 0


def measure(
    reps: int, json_path: Path, models_dir: Path, workdir: Path, *, mode: str = "both"
) -> int:
    """Run the measurement (as root), its files under ``workdir``, its rows written to
    ``json_path``; the exit status."""
    return main(["--reps", str(reps), "--mode", mode, "--json", str(json_path),
                 "--models-dir", str(models_dir), "--workdir", str(workdir)])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--mode", choices=("both", "crash", "silent"), default="both")
    p.add_argument("--keepalive", type=int, default=2, help="clients' MQTT keepalive (s)")
    p.add_argument("--models-dir", default=os.environ.get(
        "FAILLITE_TEST_MODELS_DIR", str(REPO / ".cache/test-models")))  # fmt: skip
    p.add_argument("--json")
    p.add_argument("--workdir", help="keys, configs and logs here (default: a new temp folder)")
    p.add_argument("--inside", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for name in ("json", "workdir", "models_dir"):
        if getattr(args, name):
            setattr(args, name, str(Path(getattr(args, name)).resolve()))
    return inner(args) if args.inside else outer(args)


if __name__ == "__main__":
    sys.exit(main())
