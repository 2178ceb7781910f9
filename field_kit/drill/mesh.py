"""The mesh a drill runs against: a real broker, leader and standby coordinators, three
workers, two cameras, all as processes of this machine, and a recorder watching everything.

Two apps: ``a1`` is critical (warm backup), ``a2`` is not (cold backup, progressive ladder).
Three workers of 150 MB in their own failure domains: a primary (EfficientNet-Lite2) and a
backup of the other app, smaller, fit beside each other; any one worker holds both apps at
Lite0, so every single and double worker failure is recoverable. Workers can run in their own
network namespaces, reaching the broker through a forwarder on their veth link
(:mod:`linkproxy`).

With ``accounts`` the mesh runs as a mesh on a network does: one account per device
(:mod:`faillite.accounts`), each process reading only its own secret from the mesh config's
``broker.secrets_dir``, the broker only the password file and the per-identity ACL. The drill's
own clients (the recorder, the retained-state snapshot, the attack cases' watcher) are admin
accounts. The attack cases (:mod:`field_kit.drill.attacks`) steal secrets from that folder.

With ``pair`` the mesh has two Mosquitto brokers, A and B, as a kit on two boards: B bridges
to A through a forwarder the drill can cut (:meth:`DrillMesh.cut_bridge`), and every role
takes the list [A, B]; the roles named in ``b_side`` start on B with the list [B, A]. A second
recorder watches B (the broker cases, :mod:`field_kit.drill.broker_cases`).
"""

from __future__ import annotations

import random
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from faillite import messages
from faillite.accounts import provision, secret_path
from faillite.catalog import Catalog, load_catalog
from faillite.config import (
    BridgeConfig,
    BrokerAddress,
    BrokerConfig,
    MeshConfig,
    load_mesh_config,
    packaged_config,
)
from faillite.identity import AclScope, Identity
from faillite.log import get_logger
from faillite.mqtt import MeshClient
from faillite.topics import Role, Topics
from field_kit.brokers import HOST as BROKER_HOST
from field_kit.brokers import BrokerEndpoint, BrokerLauncher
from field_kit.drill.hogs import Hogs
from field_kit.drill.linkproxy import LinkProxy
from field_kit.drill.netns import Impairment, NetNamespace
from field_kit.procs import Child, ProcessGroup, faillite_cmd, free_port
from field_kit.recorder import Recorder

log = get_logger("drill")

APPS = ("a1", "a2")
WORKERS = ("w1", "w2", "w3")
SCOPE = AclScope.of(WORKERS, APPS)  # what the broker's ACL names, as a kit's would
SENSORS = ("cam1", "cam2")
COORDINATORS = ("c1", "c2")
# The drill's own clients: the recorder, the retained-state snapshot (analysis.py) and the
# attack cases' watcher, each an admin account of its own (one client id each).
ADMINS = ("drill", "snapshot", "watch")
# Read-only views of the mesh as an operator's `faillite watch` sees it (the attack cases').
OBSERVERS = ("view", "late-view")
# Failed logins from one address (all of the drill is 127.0.0.1) wait this long, doubling: the
# attack cases' wrong passwords must not hold up the mesh's own reconnects for seconds.
LOGIN_DELAY_S = 0.05
# The roles a drill mesh boots (each: every process of it): the broker (with the drill's
# recorders), the coordinators (leader, then standby), the workers, the cameras.
ROLES = ("broker", "coordinator", "worker", "sensor")
# The order DrillMesh.start uses unless told otherwise (the broker first: nothing waits).
BOOT_ORDER = ("broker", "worker", "coordinator", "sensor")
# What the recorder keeps: everything but frames (heavy, and results say what was served).
FOLLOW = (
    "apps/+/results/+",
    "apps/+/route",
    "events/+/+",
    "workers/+/status",
    "workers/+/heartbeat",
    "workers/+/assignment",
    "coordinator/status",
    "placement",
)
# A worker's heartbeats are current when one arrived within this many of its intervals (and
# at least HEARTBEAT_FRESH_MIN_S: amqtt and a busy machine delay QoS 0 a little).
HEARTBEAT_FRESH_INTERVALS = 5
HEARTBEAT_FRESH_MIN_S = 0.5


def boot_port(host: str = BROKER_HOST, attempts: int = 50) -> int:
    """A free port for a broker that starts later than its clients, below the kernel's
    ephemeral range: a port from that range could meanwhile become some connection's local
    port, and a client retrying a connect to a port nobody listens on can even get that very
    port as its own (TCP connects to itself). Falls back to any free port."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(attempts):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    return free_port(host)


@dataclass(frozen=True, slots=True)
class MeshSpec:
    broker: str = "amqtt"
    fps: float = 5.0
    heartbeat_s: float = 0.1
    worker_memory_mb: float = 150.0  # a primary and a smaller backup: heterogeneous
    netns: bool = False  # every worker in its own namespace
    impairment: Impairment | None = None
    impair_in_proxy: bool = False  # no sch_netem: the forwarder impairs instead
    standby: bool = True
    coordinator: dict[str, Any] = field(default_factory=dict)
    keepalive_s: int = 2
    accounts: bool = False  # one account per device, per-identity ACL (the attack cases)
    pair: bool = False  # a second broker B, bridged to A (Mosquitto only)
    b_side: tuple[str, ...] = ()  # with pair: roles (worker, coordinator, sensor ids) on B
    hot: bool = False  # a1 is hot: its backup runs every frame, publishing once promoted
    # The apps' SLOs (a1, a2), ms. The default leaves an idle or busy 2-core machine far
    # inside them; the load cases take the demo's (configs/demo.yaml), which a busy board
    # misses: what its SLO decisions must then get right.
    slo_ms: tuple[float, float] = (400.0, 600.0)


class DrillMesh:
    def __init__(self, workdir: Path, spec: MeshSpec, models_dir: Path, mesh_id: str) -> None:
        self.workdir = workdir
        self.spec = spec
        self.models_dir = models_dir
        self.mesh_id = mesh_id
        self.launcher = BrokerLauncher(workdir / "brokers")
        self.group = ProcessGroup(workdir / "logs")
        self.namespaces: dict[str, NetNamespace] = {}
        self.proxies: dict[str, LinkProxy] = {}
        self.endpoint: BrokerEndpoint | None = None
        self.cfg: MeshConfig | None = None
        self.path = workdir / f"{mesh_id}.yaml"
        self.recorder: Recorder | None = None
        self.catalog: Catalog = load_catalog(packaged_config("catalog.yaml"))
        self.t0 = time.monotonic()
        self._n: dict[str, int] = {}
        self.killed: set[str] = set()  # process names a case killed on purpose
        self.started: dict[str, float] = {}  # process name -> monotonic start
        # When the recorder last (re)connected: on every (re)subscribe the broker replays what
        # it retains, so a status recorded since then is what the broker holds now (a broker
        # restart loses retained state; what the recorder saw before it proves nothing).
        self.recorder_connected_at = 0.0
        self.unsteady = "not checked yet"  # why steady() last said no
        accounts = (workdir / "accounts").resolve()
        self.password_file: Path | None = accounts / "passwd" if spec.accounts else None
        self.secrets_dir: Path | None = accounts / "secrets" if spec.accounts else None
        self.clients: list[MeshClient] = []  # the cases' own clients, stopped by close()
        # With a pair: broker B, its config (bridge included), the forwarder its bridge goes
        # through, the B-first mesh config and the recorder on B.
        self.endpoint_b: BrokerEndpoint | None = None
        self.bridge_link: LinkProxy | None = None
        self.path_b = workdir / f"{mesh_id}-b.yaml"
        self.recorder_b: Recorder | None = None
        self.role_up: dict[str, float] = {}  # role -> wall time it was started (start_role)
        self._hogs: list[Hogs] = []

    # -- accounts --------------------------------------------------------------------------

    def identities(self) -> list[Identity]:
        """Every account of the mesh: devices, coordinators and the drill's own clients."""
        groups = (
            (Role.WORKER, WORKERS),
            (Role.SENSOR, SENSORS),
            (Role.COORDINATOR, COORDINATORS),
            (Role.ADMIN, ADMINS),
            (Role.OBSERVER, OBSERVERS),
        )
        return [Identity(self.mesh_id, role, i) for role, ids in groups for i in ids]

    def identity(self, role: Role, ident: str) -> Identity:
        return Identity(self.mesh_id, role, ident)

    def secret_file(self, identity: Identity) -> Path:
        """Where the node of ``identity`` keeps its secret (what an attacker would steal)."""
        if self.secrets_dir is None:
            raise LookupError("this drill mesh has no accounts")
        return secret_path(self.secrets_dir, identity)

    def broker_config(self) -> BrokerConfig:
        """The broker's own config: with accounts, the password file (hashes only)."""
        if self.password_file is None:
            return BrokerConfig(keepalive_s=self.spec.keepalive_s)
        return BrokerConfig(
            keepalive_s=self.spec.keepalive_s,
            password_file=self.password_file,
            login_delay_s=LOGIN_DELAY_S,
            # Where the revocation tooling finds the broker (broker A; B writes none).
            pid_file=self.password_file.with_name("broker.pid"),
        )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, order: Sequence[str] = BOOT_ORDER, delay_s: float = 0.0) -> DrillMesh:
        """Start the roles named in ``order`` (:data:`ROLES`), in that order, ``delay_s`` apart
        (the rest later, with :meth:`start_role`). The broker's port is chosen first, so every
        role's config names it, and the broker comes up on it whenever its turn is: the roles
        before it retry connecting in the background, as on a kit whose broker boots last."""
        order = tuple(order)
        unknown = [r for r in order if r not in ROLES]
        if unknown or len(set(order)) != len(order):
            raise ValueError(f"a boot order names each of {ROLES} at most once, not {order}")
        spec = self.spec
        broker_first = not order or order[0] == "broker"
        if not broker_first and (spec.pair or spec.netns):
            raise ValueError("a broker pair or namespaced workers need the broker started first")
        if self.password_file is not None and self.secrets_dir is not None:
            provision(self.password_file, self.secrets_dir, self.identities())
        if broker_first:
            self._start_broker_a()
        else:  # reserved now, started in its turn: the config names the port it will have
            self.endpoint = BrokerEndpoint(spec.broker, BROKER_HOST, boot_port())
        if spec.pair:
            self._start_b()
        self._write_config()
        self.cfg = load_mesh_config(self.path)
        for i, role in enumerate(order):
            if i and delay_s > 0:
                time.sleep(delay_s)
            self.start_role(role)
        return self

    def start_role(self, role: str) -> None:
        """Start every process of ``role`` (the broker: then the drill's recorders); when is
        kept in :attr:`role_up` (wall clock; the broker's once it accepts connections)."""
        spec = self.spec
        if role == "broker":
            if not self._broker_a_alive():
                self._start_broker_a()
            self.role_up[role] = time.time()  # accepting connections
            if self.recorder is None:
                self._start_recorders()
            return
        if role == "worker":
            if spec.netns and not self.namespaces:
                for i, w in enumerate(WORKERS, start=1):
                    self._link(w, i)
            for w in WORKERS:
                self.start_worker(w)
        elif role == "coordinator":
            self.start_coordinator("c1")
            if spec.standby:
                self.start_coordinator("c2", standby=True)
        elif role == "sensor":
            for cam in SENSORS:
                self.group.start(
                    cam,
                    "sensor",
                    faillite_cmd("sensor", "--id", cam, "--config", str(self.config_of(cam))),
                )
        else:
            raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        self.role_up[role] = time.time()

    def _broker_a_alive(self) -> bool:
        assert self.endpoint is not None
        try:
            return self.launcher.process(self.endpoint).alive()
        except KeyError:
            return False

    def _start_broker_a(self) -> None:
        port = self.endpoint.port if self.endpoint is not None else None
        self.endpoint = self.launcher.start(
            self.spec.broker, self.broker_config(), mesh=self.mesh_id, port=port, scope=SCOPE
        )

    def _start_recorders(self) -> None:
        assert self.cfg is not None
        self.recorder = self._recorder(self.cfg, "drill")
        self.recorder.client.on_connect(self._recorder_connected)
        self.recorder.start()
        if self.spec.pair:
            self.recorder_b = self._recorder(load_mesh_config(self.path_b), "watch").start()

    def hogs(self, count: int) -> Hogs:
        """``count`` CPU hogs (:class:`Hogs`, each in its own session), started now and
        stopped by :meth:`close` at the latest, whatever happened to the case."""
        h = Hogs(count).start()
        self._hogs.append(h)
        log.warning("drill_hogs", count=count, pids=h.pids)
        return h

    def _recorder(self, cfg: MeshConfig, name: str) -> Recorder:
        rec = Recorder(cfg, name)
        for f in FOLLOW:
            rec.follow(f"{Topics(cfg.mesh).prefix}/{f}", qos=0 if "heartbeat" in f else 1)
        return rec

    # -- a pair of brokers -----------------------------------------------------------------

    def _start_b(self) -> None:
        assert self.endpoint is not None
        if self.spec.broker != "mosquitto":
            raise ValueError("a broker pair needs Mosquitto (the embedded broker has no bridge)")
        a = self.endpoint
        self.bridge_link = LinkProxy(a.host, free_port(a.host), a.host, a.port).start()
        self.endpoint_b = self._launch_b()

    def _bridge_cfg(self) -> BrokerConfig:
        assert self.bridge_link is not None
        host, port = self.bridge_link.listen
        to = (BrokerAddress(host=host, port=port),)
        return self.broker_config().model_copy(
            update={"bridge": BridgeConfig(id="b", to=to), "pid_file": None}
        )

    def _launch_b(self, port: int | None = None) -> BrokerEndpoint:
        cfg = self._bridge_cfg()
        return self.launcher.start("mosquitto", cfg, mesh=self.mesh_id, port=port, scope=SCOPE)

    def broker_endpoint(self, name: str) -> BrokerEndpoint:
        ep = self.endpoint if name == "a" else self.endpoint_b
        if ep is None:
            raise LookupError(f"no broker {name!r} in this mesh")
        return ep

    def kill_broker(self, name: str) -> float:
        """SIGKILL broker ``name`` ("a" or "b"): no last-wills, no goodbye. Its wall time."""
        proc = self.launcher.process(self.broker_endpoint(name))
        t = time.time()
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait(10)
        log.warning("drill_broker_killed", broker=name, pid=proc.proc.pid)
        return t

    def start_broker(self, name: str) -> None:
        """Start broker ``name`` again on its port (a fresh process, nothing retained)."""
        ep = self.broker_endpoint(name)
        for dead in [p for p in self.launcher.processes if p.endpoint == ep and not p.alive()]:
            dead.stop()  # closes its log
            self.launcher.processes.remove(dead)  # process(ep) must find the new one
        if name == "a":
            self.endpoint = self.launcher.start(
                ep.kind, self.broker_config(), mesh=self.mesh_id, port=ep.port, scope=SCOPE
            )
        else:
            self.endpoint_b = self._launch_b(ep.port)

    def cut_bridge(self) -> None:
        """Cut the link between B's bridge and A: both connections close, new ones are
        refused, until :meth:`heal_bridge`."""
        assert self.bridge_link is not None
        self.bridge_link.stop()
        log.warning("drill_bridge_cut", link=self.bridge_link.listen)

    def heal_bridge(self) -> None:
        assert self.bridge_link is not None and self.endpoint is not None
        host, port = self.bridge_link.listen
        self.bridge_link = LinkProxy(host, port, self.endpoint.host, self.endpoint.port).start()
        log.warning("drill_bridge_healed", link=self.bridge_link.listen)

    def broker_at(self, name: str) -> MeshConfig:
        """The mesh config with broker ``name`` only (no fallbacks): what that broker holds."""
        assert self.cfg is not None
        ep = self.broker_endpoint(name)
        broker = self.cfg.broker.model_copy(
            update={"host": ep.host, "port": ep.port, "fallbacks": ()}
        )
        return self.cfg.model_copy(update={"broker": broker})

    def config_of(self, role: str) -> Path:
        """The mesh config a role starts with: B first for the roles on B's side."""
        return self.path_b if role in self.spec.b_side else self.path

    def _recorder_connected(self) -> None:
        # On the recorder's network thread, after its subscriptions went out and before any
        # message of the new session is handled.
        self.recorder_connected_at = time.monotonic()

    def _link(self, worker: str, index: int) -> None:
        assert self.endpoint is not None
        ns = NetNamespace(f"fl{self.mesh_id[-6:]}{worker}", index + 10 * (hash(self.mesh_id) % 20))
        self.namespaces[worker] = ns
        ns.create()
        port = free_port(ns.host_ip)
        imp = self.spec.impairment if self.spec.impair_in_proxy else None
        self.proxies[worker] = LinkProxy(
            ns.host_ip, port, self.endpoint.host, self.endpoint.port, imp, seed=index
        ).start()
        if self.spec.impairment is not None and not self.spec.impair_in_proxy:
            ns.impair(self.spec.impairment)

    def _write_config(self) -> None:
        assert self.endpoint is not None
        doc = self._config_doc(self.endpoint, self.endpoint_b)
        self.path.write_text(yaml.safe_dump(doc, sort_keys=False))
        if self.endpoint_b is not None:
            doc = self._config_doc(self.endpoint_b, self.endpoint)
            self.path_b.write_text(yaml.safe_dump(doc, sort_keys=False))

    def _config_doc(self, first: BrokerEndpoint, then: BrokerEndpoint | None) -> dict[str, Any]:
        """The mesh config, every role on ``first``, then ``then`` when it is gone."""
        spec = self.spec
        coordinator = {
            "type": "planner",
            "startup_wait_s": 10,
            "takeover_delay_s": 0.5,
            "slo_sustain_s": 2.0,
            "gray_probation_s": 8.0,
            "reconnect_grace_s": 5.0,
            **spec.coordinator,
        }
        return {
            "mesh": self.mesh_id,
            "catalog": str(packaged_config("catalog.yaml")),
            "models_dir": str(self.models_dir),
            "broker": {
                "host": first.host,
                "port": first.port,
                **({"fallbacks": [{"host": then.host, "port": then.port}]} if then else {}),
                "keepalive_s": spec.keepalive_s,
                # Each node reads its own secret here (nothing where the mesh has no accounts).
                **({"secrets_dir": str(self.secrets_dir)} if self.secrets_dir else {}),
            },
            "sensors": [
                {"id": "cam1", "source": "scene:chelsea", "fps": spec.fps},
                {"id": "cam2", "source": "scene:coffee", "fps": spec.fps},
            ],
            "apps": [
                {
                    "id": "a1",
                    "sensor": "cam1",
                    "family": "efficientnet_lite",
                    "critical": True,
                    "hot": spec.hot,
                    "slo_ms": spec.slo_ms[0],
                },
                {
                    "id": "a2",
                    "sensor": "cam2",
                    "family": "efficientnet_lite",
                    "slo_ms": spec.slo_ms[1],
                },
            ],
            "workers": [
                {
                    "id": w,
                    "memory_mb": spec.worker_memory_mb,
                    "failure_domain": f"rack-{w}",
                    "heartbeat_interval_s": spec.heartbeat_s,
                    "queue_size": 2,
                    "backend": {"type": "onnxruntime", "intra_op_threads": 1},
                }
                for w in WORKERS
            ],
            "coordinator": coordinator,
        }

    def close(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for h in self._hogs:  # first: the rest stops faster on an idle machine
            h.stop()
        try:
            for client in self.clients:
                client.stop()
            codes = self.group.stop_all()
        finally:
            for rec in (self.recorder, self.recorder_b):
                if rec is not None:
                    rec.stop()
            for p in [*self.proxies.values(), *([self.bridge_link] if self.bridge_link else [])]:
                p.stop()
            for ns in self.namespaces.values():
                ns.destroy()
            self.launcher.stop_all()
        return codes

    # -- processes -------------------------------------------------------------------------

    def _name(self, base: str) -> str:
        self._n[base] = self._n.get(base, 0) + 1
        return f"{base}-{self._n[base]}"

    def start_worker(self, worker: str) -> Child:
        # The drills' faults (SIGUSR1: hung inference, SIGUSR2: slow frames), as a plug-in.
        plugin = ("--plugin", "field_kit.drill.faults")
        path = self.config_of(worker)
        argv = faillite_cmd("worker", "--id", worker, "--config", str(path), *plugin)
        ns = self.namespaces.get(worker)
        if ns is not None:
            argv += ["--broker", f"{ns.host_ip}:{self.proxies[worker].listen[1]}"]
            argv = ns.wrap(argv)
        name = self._name(worker)
        self.started[name] = time.monotonic()
        return self.group.start(name, "worker", argv)

    def start_coordinator(self, cid: str, *, standby: bool = False, rank: int = 1) -> Child:
        argv = faillite_cmd("coordinator", "--config", str(self.config_of(cid)), "--id", cid)
        if standby:
            argv += ["--standby", "--rank", str(rank)]
        return self.group.start(self._name(cid), "coordinator", argv)

    def proc(self, base: str) -> Child:
        live = [c for c in self.group.children if c.name.startswith(f"{base}-") and c.alive()]
        if not live:
            raise LookupError(f"no live process for {base}")
        return live[-1]

    def signal(self, base: str, sig: signal.Signals) -> Child:
        child = self.proc(base)
        child.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.killed.add(child.name)
            child.proc.wait(10)
        log.warning("drill_signal", target=child.name, signal=sig.name, pid=child.pid)
        return child

    def restart_broker(self, down_s: float) -> None:
        assert self.endpoint is not None
        self.launcher.process(self.endpoint).stop()
        time.sleep(down_s)
        self.endpoint = self.launcher.start(
            self.spec.broker,
            self.broker_config(),
            mesh=self.mesh_id,
            port=self.endpoint.port,
            scope=SCOPE,
        )

    # -- state from the recording ----------------------------------------------------------

    @property
    def rec(self) -> Recorder:
        assert self.recorder is not None
        return self.recorder

    @property
    def topics(self) -> Topics:
        return self.rec.topics

    def placement(self) -> messages.Placement | None:
        ps = self.rec.messages(self.topics.placement, messages.Placement)
        return ps[-1] if ps else None

    def role_of(self, app: str, role: str) -> str | None:
        p = self.placement()
        if p is None:
            return None
        for e in p.entries:
            if e.app == app and e.role == role:
                return e.worker
        return None

    def backup_of(self, app: str) -> str | None:
        return self.role_of(app, "hot") or self.role_of(app, "warm") or self.role_of(app, "cold")

    def serving(self, app: str, within_s: float = 1.0) -> set[str]:
        """Workers whose results for ``app`` arrived in the last ``within_s`` (on their own
        results topic: a payload naming another worker than its topic is nobody's result)."""
        since = time.monotonic() - within_s
        prefix = f"{self.topics.prefix}/apps/{app}/results/"
        out = set()
        for _t, topic, payload in self.rec.raw(since):
            if not topic.startswith(prefix) or not payload:
                continue
            try:
                r = messages.decode(messages.Result, payload)
            except messages.MessageError:
                continue
            if r.worker == topic[len(prefix) :] and r.app == app:
                out.add(r.worker)
        return out

    def _latest(self, topics: set[str], since: float) -> dict[str, tuple[float, bytes]]:
        """The last message recorded since ``since`` on each of ``topics`` that has one
        (empty payloads included: an empty retained message clears its topic)."""
        return self.rec.last_on(topics, since)

    def _worker_topics(self, workers: tuple[str, ...] = WORKERS) -> set[str]:
        return {self.topics.worker_heartbeat(w) for w in workers} | {
            self.topics.worker_status(w) for w in workers
        }

    def worker_problem(
        self, worker: str, latest: dict[str, tuple[float, bytes]] | None = None
    ) -> str | None:
        """Why ``worker`` is not live and announced, or None: its process runs, a heartbeat
        arrived within a few heartbeat intervals, and the broker retains its status as
        ``online`` with the incarnation of that heartbeat (a status recorded since the
        recorder's last connect: the broker replays its retained state on every subscribe)."""
        try:
            child = self.proc(worker)
        except LookupError:
            return f"{worker}: not running"
        assert self.cfg is not None
        if latest is None:
            latest = self._latest(self._worker_topics((worker,)), self.recorder_connected_at)
        interval = self.cfg.worker(worker).heartbeat_interval_s
        fresh_s = max(HEARTBEAT_FRESH_INTERVALS * interval, HEARTBEAT_FRESH_MIN_S)
        since = max(self.started.get(child.name, 0.0), time.monotonic() - fresh_s)
        hb_raw = latest.get(self.topics.worker_heartbeat(worker))
        if hb_raw is None or hb_raw[0] < since:
            return f"{worker}: no heartbeat in the last {fresh_s:.1f} s"
        st_raw = latest.get(self.topics.worker_status(worker))
        if st_raw is None or not st_raw[1]:
            return f"{worker}: no status retained since the recorder's last connect"
        try:
            hb = messages.decode(messages.Heartbeat, hb_raw[1])
            st = messages.decode(messages.WorkerStatus, st_raw[1])
        except messages.MessageError as exc:
            return f"{worker}: {exc}"
        if st.state != "online" or st.incarnation != hb.incarnation:
            return (
                f"{worker}: retained status {st.state}/{st.incarnation}, "
                f"heartbeats of {hb.incarnation}"
            )
        return None

    def steady(self, quiet_s: float = 1.5) -> bool:
        """Every running worker live and announced (:meth:`worker_problem`), the plan unchanged
        for ``quiet_s``, every app served by its planned primary and protected by a backup
        (warm or cold) that runs and is live and announced too, a warm one with its variant
        loaded. Why not, when not: :attr:`unsteady`."""
        why = self._unsteady(quiet_s)
        self.unsteady = why or ""
        return why is None

    def _unsteady(self, quiet_s: float) -> str | None:
        p = self.placement()
        if p is None:
            return "no placement"
        placements = [t for t, _p in self.rec.on_topic(self.topics.placement)]
        if not placements or time.monotonic() - placements[-1] < quiet_s:
            return f"placement changed in the last {quiet_s} s"
        if placements[-1] < self.recorder_connected_at:
            return "no placement retained since the recorder's last connect"
        latest = self._latest(self._worker_topics(), self.recorder_connected_at)
        for w in WORKERS:
            try:
                self.proc(w)
            except LookupError:
                continue  # killed by the case: the apps below say whether that matters
            problem = self.worker_problem(w, latest)
            if problem is not None:
                return problem
        for app in APPS:
            prim = self.role_of(app, "primary")
            back = self.backup_of(app)
            if prim is None or back is None:
                return f"{app}: primary {prim}, backup {back}"
            serving = self.serving(app)
            if serving != {prim}:
                return f"{app}: served by {sorted(serving)}, planned primary {prim}"
            for w in (prim, back):
                problem = self.worker_problem(w, latest)
                if problem is not None:
                    return f"{app}: {problem}"
            warm = next(
                (e.variant for e in p.entries if e.app == app and e.role in ("hot", "warm")),
                None,
            )
            if warm is not None and back in (self.role_of(app, "hot"), self.role_of(app, "warm")):
                hb = messages.decode(
                    messages.Heartbeat, latest[self.topics.worker_heartbeat(back)][1]
                )
                if warm not in hb.loaded:
                    return f"{app}: warm backup {back} has not loaded {warm} yet"
        return None

    def wait_steady(self, timeout: float, settle_s: float = 1.0) -> None:
        what = "a steady mesh (apps served and protected)"
        try:
            self.rec.wait_for(self.steady, timeout, what)
            time.sleep(settle_s)
            self.rec.wait_for(self.steady, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last: {self.unsteady}") from exc
