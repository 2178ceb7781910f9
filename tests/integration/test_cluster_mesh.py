"""The mesh on a real 3-node Aedes cluster (the supported clustered engine, docs/brokers.md).

Aedes nodes share one Redis (:mod:`broker.cluster`); the roles are spread over the nodes (the
coordinator and the observer on node 1, worker w1 and the camera on node 2, worker w2 on
node 3), each listing the other nodes as fallbacks. The supported way: every role with its
own account, the nodes enforcing the accounts and the mesh's ACL
(:func:`field_kit.cluster_mesh.start_secure_cluster`). Checked:

- KILL_PRIMARY: the critical app's primary worker is SIGKILLed; its last-will, published by
  its node, reaches the coordinator on another node: exactly one failover, to the warm
  backup, and the app is served again;
- a broker node dies (SIGKILL of the Aedes node holding the leader's connection, or the
  primary worker's): its clients move to the other nodes, the app is served again, and the
  move costs no failover and no leader change, although the survivors publish the moved
  clients' (stale) last-wills a few seconds later.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.cluster import Cluster, engine_problem
from faillite.config import BrokerConfig
from field_kit.cluster_mesh import (
    FIRST_NODE,
    ClusterMesh,
    start_cluster_mesh,
    start_secure_cluster,
)
from field_kit.drill.broker_switch import logged_events

pytestmark = pytest.mark.slow
# ``aedes-raw`` here shows what the launcher's hooks are for (docs/brokers.md).
ENGINE = os.environ.get("FAILLITE_CLUSTER_MESH_ENGINE", "aedes")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    problem = engine_problem(ENGINE)
    if problem is not None:
        pytest.skip(f"{ENGINE}: {problem}")
    with start_secure_cluster(ENGINE, tmp_path, 3) as c:
        assert c.security is not None and c.security.password_file is not None
        yield c


@pytest.fixture
def mesh(cluster: Cluster, tmp_path: Path, models_dir: Path) -> Iterator[ClusterMesh]:
    m = start_cluster_mesh(cluster, tmp_path / "mesh", models_dir, BrokerConfig(keepalive_s=2))
    try:
        m.protected(90)
        assert m.leader().state == "leader"
        yield m
    finally:
        m.stop()


def _wait_results(m: ClusterMesh, since: float, n: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(m.results(since)) >= n:
            return True
        time.sleep(0.05)
    return False


def test_kill_primary_fails_over_once_across_nodes(mesh: ClusterMesh) -> None:
    primary, backup = mesh.protected()
    term = mesh.leader().term
    kill_at, wall = time.monotonic(), time.time()
    mesh.group.stop(primary, signal.SIGKILL)
    assert _wait_results(mesh, kill_at, 1, 15), "the app was not served again"
    served = mesh.rec.wait_for(
        lambda: [r for _at, r in mesh.results(kill_at) if r.worker == backup], 15, "backup"
    )
    assert served
    time.sleep(3)
    failovers = logged_events(mesh.workdir / "logs" / "coord.log", "failover", wall)
    assert [e["worker"] for e in failovers] == [primary], failovers
    assert mesh.leader_terms(kill_at) <= {term}


@pytest.mark.parametrize("whose", ["coord", "primary"])
def test_a_broker_node_dies_and_costs_no_failover(mesh: ClusterMesh, whose: str) -> None:
    primary, _backup = mesh.protected()
    term = mesh.leader().term
    name = primary if whose == "primary" else "coord"
    node = mesh.node_of(name)
    kill_at, wall = time.monotonic(), time.time()
    node.kill()
    # Served again from the surviving nodes (the camera too, if it was on the dead node).
    assert _wait_results(mesh, kill_at + 0.5, 10, 30), "the app was not served again"
    # The dead node's clients' last-wills come from the survivors 3 to 7 s later (heartbeat
    # 1 s): the mesh must take them for stale.
    time.sleep(10)
    assert _wait_results(mesh, time.monotonic() - 1.0, 5, 5), "served, then stopped"
    moved = [n for n, first in FIRST_NODE.items() if first == mesh.cluster.nodes.index(node)]
    for role in moved:
        if role != "recorder":
            assert '"broker_switched"' in (mesh.workdir / "logs" / f"{role}.log").read_text()
    failovers = logged_events(mesh.workdir / "logs" / "coord.log", "failover", wall)
    assert not failovers, failovers
    statuses = mesh.statuses(kill_at)
    assert {s.term for s in statuses if s.state == "leader"} <= {term}, statuses
    assert mesh.leader().state == "leader", statuses
    assert {r.worker for _at, r in mesh.results(time.monotonic() - 1.0)} == {primary}
