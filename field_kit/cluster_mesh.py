"""A FailLite mesh spread over the nodes of a cluster: the glue of the cluster's tests and of
``bench/cluster.py``.

The mesh is the one of :func:`field_kit.drill.broker_switch.pair_mesh` (planner coordinator,
two CPU workers with 200 ms heartbeats, one camera, one critical app ``a1``). Each role gets
its own copy of the mesh config whose broker section names a different first node, the
others following as fallbacks (:meth:`broker.cluster.Cluster.broker_config`), so the roles
talk to each other across nodes and a node's death moves only its own clients.

:func:`start_secure_cluster` starts the cluster the supported way: every device of this mesh
with its own account (:func:`faillite.accounts.provision`), the nodes enforcing the accounts and
the mesh's ACL (:data:`IDENTITIES`, :data:`SCOPE`); the roles then get the secrets folder
through :meth:`~broker.cluster.Cluster.broker_config`.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import yaml

from broker.cluster import Cluster, ClusterNode, start_cluster
from faillite.config import BrokerConfig
from faillite.identity import AclScope, Identity
from faillite.topics import Role

if TYPE_CHECKING:
    from faillite import messages
    from field_kit.procs import Child, ProcessGroup
    from field_kit.recorder import Recorder

MESH: Final = "clu"
APP: Final = "a1"
# Each role's first node (an index into the cluster's nodes). The recorder observes, beside
# the coordinator: the nodes of the workers can die without cutting the observer off.
FIRST_NODE: Final = {"coord": 0, "w1": 1, "w2": 2, "cam1": 1, "recorder": 0}
ROLES: Final = {"coord": "coordinator", "w1": "worker", "w2": "worker", "cam1": "sensor"}
# Every account the mesh uses: its devices, the coordinator (``main``) and the recorder (an
# admin, as on the bridged pair); the ACL names its workers and its app.
IDENTITIES: Final = (
    Identity(MESH, Role.COORDINATOR, "main"),
    Identity(MESH, Role.WORKER, "w1"),
    Identity(MESH, Role.WORKER, "w2"),
    Identity(MESH, Role.SENSOR, "cam1"),
    Identity(MESH, Role.ADMIN, "recorder"),
)
SCOPE: Final = AclScope.of(("w1", "w2"), (APP,))


def start_secure_cluster(
    engine: str, workdir: Path, nodes: int = 3, security: BrokerConfig | None = None
) -> Cluster:
    """A cluster of ``engine`` in ``workdir / "cluster"`` with this mesh's accounts and ACL:
    one account per :data:`IDENTITIES` (password file and secrets under
    ``workdir / "accounts"``), with ``security``'s other settings (TLS, login delays)."""
    from faillite.accounts import provision

    accounts = workdir / "accounts"
    passwd, secrets = accounts / "passwd", accounts / "secrets"
    provision(passwd, secrets, IDENTITIES)
    sec = (security or BrokerConfig()).model_copy(
        update={"password_file": passwd, "secrets_dir": secrets}
    )
    return start_cluster(engine, workdir / "cluster", nodes, security=sec, mesh=MESH, scope=SCOPE)


@dataclass
class ClusterMesh:
    """The running mesh: its recorder, its processes, a config per role."""

    cluster: Cluster
    workdir: Path
    rec: Recorder
    group: ProcessGroup
    configs: dict[str, Path] = field(default_factory=dict)
    fps: float = 10.0  # the camera's

    @property
    def topics(self) -> Any:
        from faillite.topics import Topics

        return Topics(MESH)

    def start_role(self, name: str) -> Child:
        from field_kit.procs import faillite_cmd

        path = str(self.configs[name])
        argv = (
            faillite_cmd("coordinator", "--config", path)
            if name == "coord"
            else faillite_cmd(ROLES[name], "--id", name, "--config", path)
        )
        return self.group.start(name, ROLES[name], argv)

    def child(self, name: str) -> Child:
        """The latest process started as ``name``."""
        return [c for c in self.group.children if c.name == name][-1]

    def node_of(self, name: str) -> ClusterNode:
        """The node ``name`` is connected to now (its log's last ``connected``); the
        recorder's from its client."""
        if name == "recorder":
            return self.cluster.node_at(*self.rec.client.address)
        at = None
        for line in (
            (self.workdir / "logs" / f"{name}.log").read_text(errors="replace").splitlines()
        ):
            if line.startswith("{") and '"event":"connected"' in line:
                ev = json.loads(line)
                at = (ev["host"], ev["port"])
        if at is None:
            return self.cluster.nodes[FIRST_NODE[name]]
        return self.cluster.node_at(*at)

    def results(self, since: float = 0) -> list[tuple[float, messages.Result]]:
        """``a1``'s results received since ``since`` (monotonic), with their arrival time."""
        from faillite import messages

        return [
            (at, messages.decode(messages.Result, payload))
            for at, topic, payload in self.rec.raw(since)
            if "/results/" in topic
        ]

    def events(self, kind: str, since: float) -> list[messages.Event]:
        from faillite import messages

        evs = self.rec.messages(self.topics.events, messages.Event, since)
        return [e for e in evs if e.kind == kind]

    def leader(self) -> messages.CoordinatorStatus:
        from faillite import messages

        return self.rec.messages(self.topics.coordinator_status, messages.CoordinatorStatus)[-1]

    def statuses(self, since: float = 0) -> list[messages.CoordinatorStatus]:
        """The coordinator statuses seen since ``since`` (monotonic)."""
        from faillite import messages

        return self.rec.messages(self.topics.coordinator_status, messages.CoordinatorStatus, since)

    def leader_terms(self, since: float = 0) -> set[int]:
        """The terms of the leader statuses seen since ``since``: one, if no leader changed."""
        return {s.term for s in self.statuses(since) if s.state == "leader"}

    def protected(self, timeout: float = 90) -> tuple[str, str]:
        """Wait until ``a1`` is served by its primary with a warm backup loaded: the two
        workers' ids."""
        from faillite import messages

        t = self.topics

        def ready() -> tuple[str, str] | None:
            ps = self.rec.messages(t.placement, messages.Placement)
            if not ps:
                return None
            entries = [e for e in ps[-1].entries if e.app == APP]
            prim = [e for e in entries if e.role == "primary"]
            back = [e for e in entries if e.role == "warm"]
            if not prim or not back:
                return None
            # The backup's current incarnation (a restarted one's predecessor beat too) has
            # the variant loaded.
            born = self.rec.messages(t.worker_status(back[0].worker), messages.WorkerStatus)
            hbs = self.rec.messages(t.worker_heartbeat(back[0].worker), messages.Heartbeat)
            if not (born and born[-1].state == "online" and hbs):
                return None
            if hbs[-1].incarnation != born[-1].incarnation or back[0].variant not in hbs[-1].loaded:
                return None
            recent = [r for _at, r in self.results(time.monotonic() - 0.5)]
            if not any(r.worker == prim[0].worker for r in recent):
                return None
            return prim[0].worker, back[0].worker

        got = self.rec.wait_for(ready, timeout, f"{APP} served, warm backup")
        assert got is not None
        return got

    def stop(self) -> None:
        try:
            self.group.stop_all()
        finally:
            self.rec.stop()


HEARTBEAT_INTERVAL_S = 0.2


def start_cluster_mesh(
    cluster: Cluster, workdir: Path, models_dir: Path, base: BrokerConfig, *, fps: float = 10.0
) -> ClusterMesh:
    """The mesh on ``cluster``, each role on its own first node (:data:`FIRST_NODE`), with
    ``base``'s client settings (keepalive), and the cluster's accounts and TLS where ``base``
    has none; files and logs under ``workdir``."""
    from faillite.config import load_mesh_config
    from field_kit.drill.broker_switch import pair_mesh
    from field_kit.procs import ProcessGroup
    from field_kit.recorder import Recorder

    workdir.mkdir(parents=True, exist_ok=True)
    doc = pair_mesh(MESH, cluster.broker_config(base), models_dir, fps)
    # A node's death is, to the leader on another node, its workers' silence while they move
    # (150-300 ms): heartbeats every 0.2 s put the shortest silence judged (2.5 intervals)
    # past that. Crashed workers are still found at once, by the will the cluster publishes.
    for w in doc["workers"]:
        w["heartbeat_interval_s"] = HEARTBEAT_INTERVAL_S
    configs: dict[str, Path] = {}
    for name, first in FIRST_NODE.items():
        mine = copy.deepcopy(doc)
        mine["broker"] = json.loads(cluster.broker_config(base, first).model_dump_json())
        configs[name] = workdir / f"mesh-{name}.yaml"
        configs[name].write_text(yaml.safe_dump(mine))
    rec = Recorder(load_mesh_config(configs["recorder"]))
    rec.follow(f"faillite/{MESH}/#", qos=1).start()
    mesh = ClusterMesh(cluster, workdir, rec, ProcessGroup(workdir / "logs"), configs, fps)
    try:
        for name in ROLES:
            mesh.start_role(name)
    except BaseException:
        mesh.stop()
        raise
    return mesh
