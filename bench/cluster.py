"""The failover benchmark on a clustered engine: a 3-node Aedes cluster (docs/brokers.md).

The mesh of :mod:`field_kit.cluster_mesh` (planner coordinator, two CPU workers with 100 ms
heartbeats, a camera at ``--fps`` (30, as bench/failover.py), one critical app with a warm
backup), its roles spread over the three nodes, in an open mesh on loopback. Two cases,
``--reps`` repetitions each:

- ``kill_primary``: the app's primary worker is SIGKILLed; its node publishes its last-will
  to the coordinator on another node. MTTR = first result from the backup, as the observer
  receives it, - the kill. The killed worker is started again and the mesh re-protects the
  app before the next repetition.
- ``node_kill``: the Aedes node holding the primary worker's connection is SIGKILLed (the
  camera's too, where the primary is w1): its clients move to the other nodes. Gap = the
  last result before the kill to the first one after, as the observer (on the leader's
  node, which stays up) receives them; plus the failovers (coordinator's log) and leader
  changes it caused (goal: none of either). Each repetition runs on a fresh cluster and
  mesh: clients that moved stay where they landed (nothing rebalances them), so a second
  kill on the same cluster would not be the same case.

Run: ``python bench/cluster.py [--reps 5] [--fps 30] [--json docs/bench/cluster.json]``; needs
``redis-server``, Node.js and ``npm ci --prefix broker/cluster/aedes``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from broker.cluster import engine_problem, engine_version
from faillite.catalog import load_catalog
from faillite.config import BrokerConfig, packaged_config
from faillite.models.build import build_models
from field_kit.cluster_mesh import ClusterMesh, start_cluster_mesh, start_secure_cluster
from field_kit.drill.broker_switch import logged_events

REPO = Path(__file__).resolve().parents[1]


def _pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, round(q * (len(v) - 1)))] if v else float("nan")


def kill_primary(m: ClusterMesh) -> dict[str, Any]:
    primary, backup = m.protected()
    time.sleep(1.0)
    term = m.leader().term
    kill_at, wall = time.monotonic(), time.time()
    m.child(primary).proc.send_signal(signal.SIGKILL)
    got = m.rec.wait_for(
        lambda: [at for at, r in m.results(kill_at) if r.worker == backup], 30, "the backup"
    )
    mttr_ms = (got[0] - kill_at) * 1000
    time.sleep(2)
    m.child(primary).proc.wait(10)
    failovers = logged_events(m.workdir / "logs" / "coord.log", "failover", wall)
    row = {
        "case": "kill_primary", "killed": primary, "mttr_ms": round(mttr_ms, 1),
        "failovers": len(failovers), "leader_changes": len(m.leader_terms(kill_at) - {term}),
    }  # fmt: skip
    m.start_role(primary)
    return row


def node_kill(m: ClusterMesh) -> dict[str, Any]:
    primary, _backup = m.protected()
    time.sleep(1.0)
    term = m.leader().term
    node = m.node_of(primary)
    if node == m.node_of("recorder"):
        raise RuntimeError(f"the observer is on {node.name}, with the primary {primary}")
    on_it = [r for r in ("coord", "w1", "w2", "cam1") if m.node_of(r) == node]
    kill_at, wall = time.monotonic(), time.time()
    node.kill()
    m.rec.wait_for(lambda: len(m.results(kill_at)) >= 5, 30, "results after the node kill")
    time.sleep(8)  # the dead node's clients' (stale) wills would come 3-7 s after the kill
    before = [at for at, _r in m.results(kill_at - 5) if at < kill_at]
    first_after = min(at for at, _r in m.results(kill_at))
    gap_s = first_after - (max(before) if before else kill_at)
    failovers = logged_events(m.workdir / "logs" / "coord.log", "failover", wall)
    return {
        "case": "node_kill", "killed": node.name, "roles_on_it": on_it,
        "gap_ms": round(gap_s * 1000, 1), "results_lost": max(0, round(gap_s * m.fps) - 1),
        "failovers": len(failovers), "leader_changes": len(m.leader_terms(kill_at) - {term}),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--fps", type=float, default=30.0, help="the camera's (bench/failover.py: 30)")
    p.add_argument("--json", type=Path, help="write the rows and the summary here")
    p.add_argument("--models-dir", type=Path, default=Path(os.environ.get(
        "FAILLITE_TEST_MODELS_DIR", str(REPO / ".cache/test-models"))))  # fmt: skip
    p.add_argument("--workdir", type=Path, help="configs and logs here (default: a temp folder)")
    args = p.parse_args(argv)
    problem = engine_problem("aedes")
    if problem is not None:
        print(f"cluster bench: {problem}", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="faillite-cluster-"))
    build_models(load_catalog(packaged_config("catalog.yaml")), args.models_dir, progress=False)
    rows: list[dict[str, Any]] = []

    def run(where: Path, case: Any, reps: range) -> None:
        # The supported form: accounts and the mesh's ACL on every node.
        with start_secure_cluster("aedes", where, 3) as cluster:
            m = start_cluster_mesh(
                cluster, where / "mesh", args.models_dir, BrokerConfig(keepalive_s=2), fps=args.fps
            )
            try:
                m.protected(90)
                for rep in reps:
                    row = {"rep": rep, **case(m)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                m.stop()

    run(work / "kill_primary", kill_primary, range(args.reps))
    for rep in range(args.reps):
        run(work / f"node_kill{rep}", node_kill, range(rep, rep + 1))
    summary: dict[str, Any] = {
        "engine": engine_version("aedes"), "reps": args.reps, "fps": args.fps,
        "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 1),
    }  # fmt: skip
    print(f"\n{summary['engine']}, 3 nodes on one machine ({summary['cpus']} CPUs, load "
          f"{summary['load_avg_1m']}), {args.fps:g} fps, {args.reps} reps per case")  # fmt: skip
    print(f"{'case':<14}{'metric':<10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
          f"{'failovers':>11}{'leader chg':>12}")  # fmt: skip
    for case, metric in (("kill_primary", "mttr_ms"), ("node_kill", "gap_ms")):
        mine = [r for r in rows if r["case"] == case]
        vals = [float(r[metric]) for r in mine]
        summary[case] = {
            f"{metric[:-3]}_p50_ms": _pct(vals, 0.5), f"{metric[:-3]}_p99_ms": _pct(vals, 0.99),
            "max_ms": max(vals, default=float("nan")),
            "failovers": sum(r["failovers"] for r in mine),
            "leader_changes": sum(r["leader_changes"] for r in mine),
        }  # fmt: skip
        s = summary[case]
        print(f"{case:<14}{metric[:-3]:<10}{_pct(vals, 0.5):>9.0f}{_pct(vals, 0.99):>9.0f}"
              f"{s['max_ms']:>9.0f}{s['failovers']:>11}{s['leader_changes']:>12}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")
    print(f"logs: {work}/*/mesh/logs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
