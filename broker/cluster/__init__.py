"""Clustered MQTT engines: start and stop an N-node cluster of a real engine on this machine.

No clustering of our own: this writes each engine's configuration and starts its processes.

- ``aedes`` (supported): Aedes 1.2 nodes (Node.js, ``broker/cluster/aedes/node.mjs``) sharing
  one Redis for persistence (retained messages, wills, sessions, QoS 1 queues) and as their
  message bus (mqemitter-redis). Aedes itself closes a client id's session on another node
  when it connects again (takeover), and publishes the wills of the clients of a node that
  stopped beating (its ``$SYS`` heartbeat). Install: Node.js >= 20 with npm, ``apt-get
  install redis-server`` and ``npm ci --prefix broker/cluster/aedes`` (or point
  ``FAILLITE_AEDES_MODULES`` at a folder whose ``node_modules`` holds the same packages).
  Aedes 1.2 as released has two defects in a cluster, which the launcher's two hooks work
  around (docs/brokers.md): cross-node packets dropped as duplicates when overtaken on the
  bus, and late wills of clients that moved to another node. ``aedes-raw``: the same nodes
  without the hooks, for the conformance record only.
- ``rabbitmq`` (measured, not supported: see docs/brokers.md): RabbitMQ 3.10 nodes with the
  MQTT plugin, joined into one Erlang cluster (``apt-get install rabbitmq-server``).

Security (``aedes`` only): :func:`start_cluster` takes the mesh's broker settings
(``security``, a :class:`~faillite.config.BrokerConfig`) and gives every node the same
defences as the mesh's other brokers, from the same sources of truth: the accounts of
``password_file`` (``faillite accounts``: Mosquitto ``$7$`` hashes, verified by each node; a
client id must be its username; no anonymous client), the per-identity rules of
:func:`faillite.identity.identity_acl` (written to ``acl.json`` by :func:`render_acl_json`,
enforced on every publish, subscribe and delivery as :mod:`broker._acl` does), failed logins
slowed down per source address (``login_delay_s``), and TLS with the mesh's server
certificate (``tls.server``; client certificates are not supported on the cluster). The
cluster's Redis always requires a random password (``requirepass``, in a 0600 file; the nodes
get it through their environment) and listens on loopback only.

Each cluster runs in its own work folder (configs, data, logs), on loopback ports of its
own, and its processes in their own session, so :meth:`Cluster.stop` leaves nothing behind
(RabbitMQ's ``epmd`` included: each cluster starts its own on a port of its own). Clients
reach the cluster through :meth:`Cluster.broker_config`: one node first, the others as
fallbacks, which is how the mesh's roles spread over the nodes.

Operators::

    python -m broker.cluster --engine aedes --nodes 3 --workdir /var/lib/faillite/cluster \
        --config mesh.yaml     # the mesh's accounts, ACL and TLS (broker section)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from faillite.accounts import AccountsError, list_accounts, mesh_identities
from faillite.config import BrokerAddress, BrokerConfig, TlsConfig, is_loopback
from faillite.identity import AclScope, Identity, acl_scope, identity_acl
from faillite.topics import Access, check_id

ENGINES: Final = ("aedes", "aedes-raw", "rabbitmq")
HOST: Final = "127.0.0.1"
START_TIMEOUT_S: Final = 90.0
STOP_TIMEOUT_S: Final = 10.0
START_ATTEMPTS: Final = 3
AEDES_DIR: Final = Path(__file__).resolve().parent / "aedes"
RABBITMQ_BIN: Final = Path("/usr/lib/rabbitmq/bin")
# An Aedes node's $SYS heartbeat period: a node silent for 3 periods is dead to the others,
# which then publish its clients' wills (they look every 4 periods).
AEDES_HEARTBEAT_MS: Final = 1000


class ClusterError(RuntimeError):
    """A cluster did not come up (the message carries the failing node's output)."""


_READS: Final = (Access.READ, Access.READWRITE)
_WRITES: Final = (Access.WRITE, Access.READWRITE)


def render_acl_json(
    mesh: str, identities: Iterable[Identity], scope: AclScope | None, *, acl: bool = True
) -> str:
    """The Aedes nodes' ACL file: every username of ``identities`` (its name and its probe
    name, as :func:`broker.mosquitto.render_acl`) with its read and write filters from
    :func:`faillite.identity.identity_acl`. A username not in it is no identity of the mesh and
    is refused, as are other meshes' identities (left out); ``acl`` False: its identities get
    in unrestricted (``BrokerConfig.acl``)."""
    check_id("mesh", mesh)
    users: dict[str, dict[str, list[str]]] = {}
    for identity in sorted(set(identities), key=lambda i: i.name):
        if identity.mesh != mesh:
            continue  # refused, as the embedded broker refuses another mesh's account
        rules = identity_acl(identity, scope)
        entry = {
            "read": [f for a, f in rules if a in _READS],
            "write": [f for a, f in rules if a in _WRITES],
        }
        for user in identity.usernames:
            users[user] = entry
    return json.dumps({"mesh": mesh, "acl": acl, "users": users}, indent=1, sort_keys=True) + "\n"


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held open while they are picked)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _accepts(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((_reach(host), port), timeout=0.3):
            return True
    except OSError:
        return False


def _reach(host: str) -> str:
    """The address to reach a listener bound to ``host`` from this machine."""
    return HOST if host in ("", "0.0.0.0", "::") else host


def aedes_modules() -> Path:
    """The folder whose ``node_modules`` the Aedes nodes load their packages from."""
    return Path(os.environ.get("FAILLITE_AEDES_MODULES", str(AEDES_DIR)))


def engine_problem(engine: str) -> str | None:
    """Why ``engine`` cannot run here (with the install line), or None when it can."""
    if engine in ("aedes", "aedes-raw"):
        missing = [b for b in ("node", "redis-server") if shutil.which(b) is None]
        if missing:
            return f"{', '.join(missing)} missing (Node.js >= 20; apt-get install redis-server)"
        out = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
        major = out.stdout.strip().lstrip("v").split(".")[0]
        if not major.isdigit() or int(major) < 20:
            return f"Node.js {out.stdout.strip() or '?'} is too old: Aedes 1.2 needs >= 20"
        if not (aedes_modules() / "node_modules" / "aedes").is_dir():
            return "Aedes not installed (npm ci --prefix broker/cluster/aedes)"
        return None
    if engine == "rabbitmq":
        if not (RABBITMQ_BIN / "rabbitmq-server").exists() or shutil.which("epmd") is None:
            return "RabbitMQ not installed (apt-get install rabbitmq-server)"
        return None
    raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")


def engine_version(engine: str) -> str:
    """The engine's version as installed here, e.g. ``aedes 1.2.0 + redis 7.0.15``."""
    if engine in ("aedes", "aedes-raw"):
        import json

        mods = aedes_modules() / "node_modules"
        v = {
            p: json.loads((mods / p / "package.json").read_text())["version"]
            for p in ("aedes", "aedes-persistence-redis", "mqemitter-redis")
        }
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
        redis = next((w[2:] for w in out.stdout.split() if w.startswith("v=")), "?")
        return (
            f"aedes {v['aedes']} (aedes-persistence-redis {v['aedes-persistence-redis']}, "
            f"mqemitter-redis {v['mqemitter-redis']}) + redis {redis}"
        )
    libs = sorted(RABBITMQ_BIN.parent.glob("lib/rabbitmq_server-*"))
    return f"rabbitmq {libs[-1].name.split('-', 1)[1] if libs else '?'} (rabbitmq_mqtt)"


@dataclass
class ClusterNode:
    """One broker node: its MQTT port and process (the engine's own process, to SIGKILL)."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    pid_file: Path | None = None  # RabbitMQ: the beam's pid (the start script forks it)
    host: str = HOST
    killed: bool = False
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress(host=self.host, port=self.port)

    def pid(self) -> int:
        if self.pid_file is not None and self.pid_file.exists():
            return int(self.pid_file.read_text().strip())
        return self.proc.pid

    def alive(self) -> bool:
        return not self.killed and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the node (its board dies): no goodbye to its clients or its peers."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid(), signal.SIGKILL)
        self.killed = True
        if self.pid_file is None:
            self.proc.wait(STOP_TIMEOUT_S)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no output)"


@dataclass
class Cluster:
    """A running cluster of ``engine``: its nodes and its helpers (Redis, epmd)."""

    engine: str
    workdir: Path
    nodes: list[ClusterNode] = field(default_factory=list)
    helpers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)
    _env: dict[str, str] = field(default_factory=dict)
    # The nodes' accounts, ACL and TLS (None: an open mesh on loopback).
    security: BrokerConfig | None = None

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def broker_config(self, base: BrokerConfig | None = None, first: int = 0) -> BrokerConfig:
        """``base`` (default: the cluster's own settings) pointed at node ``first``, the other
        nodes as its fallbacks in order. Where the cluster has accounts or TLS, what ``base``
        leaves unset comes from the cluster's settings: the secrets folder, and the mesh CA to
        verify the nodes with (never the nodes' own certificate and key)."""
        order = self.nodes[first:] + self.nodes[:first]
        base = base if base is not None else BrokerConfig()
        update: dict[str, object] = {
            "host": _reach(order[0].host),
            "port": order[0].port,
            "fallbacks": tuple(BrokerAddress(host=_reach(n.host), port=n.port) for n in order[1:]),
        }
        sec = self.security
        if sec is not None:
            if base.password_file is None and sec.password_file is not None:
                update["password_file"] = sec.password_file
            if base.secrets_dir is None and sec.secrets_dir is not None:
                update["secrets_dir"] = sec.secrets_dir
            if base.tls is None and sec.tls is not None:
                update["tls"] = TlsConfig(ca_certs=sec.tls.ca_certs)
        return base.model_copy(update=update)

    def restart(self, node: ClusterNode) -> None:
        """Start a killed node again: same id, port and data (it rejoins the cluster)."""
        if node.alive():
            raise ClusterError(f"{node.name} is running")
        if node.pid_file is not None:
            node.pid_file.unlink(missing_ok=True)
        node.proc = self._spawn(node.argv, node.log_path, node.env)
        node.killed = False
        self._await(
            node.port, node.proc, f"{self.engine} node {node.name}", node.log_path, node.host
        )

    def node_at(self, host: str, port: int) -> ClusterNode:
        return next(n for n in self.nodes if (n.host, n.port) == (host, port))

    def stop(self) -> None:
        """Every node and helper stopped (SIGTERM, then SIGKILL of its whole session)."""
        for p in [n.proc for n in self.nodes] + self.helpers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for p in [n.proc for n in self.nodes] + self.helpers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, deadline - time.monotonic()))
            # The session too: RabbitMQ's beam and its helpers outlive their start script.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(STOP_TIMEOUT_S)
        for n in self.nodes:
            if n.pid_file is not None and n.pid_file.exists():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(n.pid(), signal.SIGKILL)
        for log in self._logs:
            log.close()
        self.nodes.clear()
        self.helpers.clear()
        self._logs.clear()

    def _spawn(
        self, cmd: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        out = log.open("ab")
        self._logs.append(out)
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            cwd=self.workdir,
        )

    def _await(
        self, port: int, proc: subprocess.Popen[bytes], what: str, log: Path, host: str = HOST
    ) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if _accepts(port, host):
                return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise ClusterError(f"{what} did not come up on port {port}:\n{tail}")


def _security_problem(
    engine: str, security: BrokerConfig | None, mesh: str | None, host: str
) -> str | None:
    """Why the cluster cannot run with these settings, or None."""
    if (security is None or not security.accounts) and not is_loopback(host):
        return (
            f"refusing to listen on {host}: the cluster has no accounts, so anyone who can "
            "reach that address could use it; give it the mesh's password_file, or 127.0.0.1"
        )
    if security is None or not (security.accounts or security.tls is not None):
        return None
    if engine not in ("aedes", "aedes-raw"):
        return f"{engine}: the launcher gives it no accounts, ACL or TLS (aedes does)"
    if security.client_certificates:
        return (
            "client certificates (tls.server.require_client_certificate) are not supported on "
            "the Aedes cluster: use accounts (password_file), with TLS"
        )
    if security.tls is not None and security.tls.server is None:
        return (
            "broker.tls is set but broker.tls.server is not: the nodes need the server's "
            "certificate and key (faillite pki server)"
        )
    if security.password_file is not None and mesh is None:
        return "accounts need the mesh id (mesh=...): the ACL names the mesh's identities"
    return None


def start_cluster(
    engine: str,
    workdir: Path,
    nodes: int = 3,
    *,
    security: BrokerConfig | None = None,
    mesh: str | None = None,
    scope: AclScope | None = None,
    identities: Iterable[Identity] | None = None,
    host: str = HOST,
) -> Cluster:
    """Start an ``nodes``-node cluster of ``engine`` in ``workdir`` (created), ready to use;
    on failure, whatever was started is stopped.

    ``security``: the mesh's broker settings (``password_file``, ``acl``, ``login_delay_s``,
    ``login_delay_max_s``, ``tls``), enforced by every node. The ACL covers ``identities``
    of ``mesh`` (default: the accounts of ``password_file``), with ``scope``'s workers and
    apps (:func:`faillite.identity.acl_scope`). ``host``: the nodes' listening address
    (anything but loopback only with accounts)."""
    problem = engine_problem(engine) or _security_problem(engine, security, mesh, host)
    if problem is not None:
        raise ClusterError(problem)
    acl_json: str | None = None
    if security is not None and security.password_file is not None and mesh is not None:
        try:
            ids = (
                list(identities)
                if identities is not None
                else list_accounts(security.password_file)
            )
        except AccountsError as exc:
            raise ClusterError(str(exc)) from exc
        acl_json = render_acl_json(mesh, ids, scope, acl=security.acl)
    for attempt in range(START_ATTEMPTS):
        # Ports are picked free, then taken by the engine: another process may take one in
        # between (a node then fails with eaddrinuse); the next attempt picks others.
        where = workdir.resolve() / f"try{attempt}" if attempt else workdir.resolve()
        where.mkdir(parents=True, exist_ok=True)
        cluster = Cluster(engine, where, security=security)
        try:
            if engine == "rabbitmq":
                _start_rabbitmq(cluster, nodes)
            else:
                _start_aedes(cluster, nodes, raw=engine == "aedes-raw", acl_json=acl_json,
                             host=host)  # fmt: skip
        except ClusterError:
            cluster.stop()
            if attempt + 1 == START_ATTEMPTS:
                raise
            continue
        except BaseException:
            cluster.stop()
            raise
        return cluster
    raise AssertionError("unreachable")


def _write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


def _security_args(c: Cluster, acl_json: str | None) -> list[str]:
    """The nodes' flags for the cluster's accounts, ACL and TLS (none for an open mesh)."""
    sec = c.security
    if sec is None:
        return []
    args: list[str] = []
    if sec.password_file is not None and acl_json is not None:
        acl = _write_private(c.workdir / "acl.json", acl_json)
        args += ["--password-file", str(sec.password_file.absolute()), "--acl-file", str(acl),
                 "--login-delay-ms", str(round(sec.login_delay_s * 1000)),
                 "--login-delay-max-ms", str(round(sec.login_delay_max_s * 1000))]  # fmt: skip
    if sec.tls is not None and sec.tls.server is not None:
        args += ["--cert", str(sec.tls.server.certfile.absolute()),
                 "--key", str(sec.tls.server.keyfile.absolute()),
                 "--ca", str(sec.tls.ca_certs.absolute())]  # fmt: skip
    return args


def _start_aedes(
    c: Cluster, n: int, *, raw: bool, acl_json: str | None = None, host: str = HOST
) -> None:
    redis_port, *ports = _free_ports(n + 1)
    (c.workdir / "redis").mkdir(exist_ok=True)
    # Redis carries every node's messages and sessions: loopback only, and a password (in a
    # 0600 file, not on a command line other users can read).
    password = secrets.token_urlsafe(32)
    conf = _write_private(c.workdir / "redis.conf", f"requirepass {password}\n")
    log = c.workdir / "redis.log"
    redis = c._spawn(
        ["redis-server", str(conf), "--bind", HOST, "--port", str(redis_port), "--save", "",
         "--appendonly", "no", "--dir", str(c.workdir / "redis"), "--protected-mode", "yes"],
        log,
    )  # fmt: skip
    c.helpers.append(redis)
    c._await(redis_port, redis, "redis-server", log)
    script = AEDES_DIR / "node.mjs"
    peers = ",".join(f"aedes{i}" for i in range(1, n + 1))
    env = {"FAILLITE_REDIS_PASSWORD": password}
    security = _security_args(c, acl_json)
    for i in range(1, n + 1):
        port, log = ports[i - 1], c.workdir / f"aedes{i}.log"
        argv = ["node", str(script), "--id", f"aedes{i}", "--host", host, "--port", str(port),
                "--redis-port", str(redis_port), "--heartbeat-ms", str(AEDES_HEARTBEAT_MS),
                "--peers", peers, "--modules", str(aedes_modules()), *security,
                *(["--raw"] if raw else [])]  # fmt: skip
        proc = c._spawn(argv, log, env)
        c.nodes.append(ClusterNode(f"aedes{i}", port, proc, log, host=host, argv=argv, env=env))
    for node in c.nodes:
        c._await(node.port, node.proc, f"aedes node {node.name}", node.log_path, node.host)


def _rabbitmq_env(c: Cluster, name: str, amqp: int, dist: int) -> dict[str, str]:
    d = c.workdir / name
    return {
        **c._env,
        "RABBITMQ_NODENAME": f"{name}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": HOST,
        "RABBITMQ_NODE_PORT": str(amqp),
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
        "RABBITMQ_LOG_BASE": str(d / "log"),
        "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(c.workdir / "enabled_plugins"),
        "RABBITMQ_PLUGINS_EXPAND_DIR": str(d / "plugins"),
        "RABBITMQ_PID_FILE": str(d / "pid"),
    }


def _start_rabbitmq(c: Cluster, n: int) -> None:
    # Every node and CLI call of this cluster: its own HOME (the shared Erlang cookie) and its
    # own epmd, started here and stopped with the cluster.
    epmd_port, *ports = _free_ports(1 + 3 * n)
    c._env = {"HOME": str(c.workdir), "ERL_EPMD_PORT": str(epmd_port)}
    cookie = c.workdir / ".erlang.cookie"
    cookie.write_text(os.urandom(16).hex().upper())
    cookie.chmod(0o400)
    # Enabled ahead of boot (offline), the same for every node.
    (c.workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
    log = c.workdir / "epmd.log"
    epmd = c._spawn(["epmd", "-port", str(epmd_port)], log, c._env)
    c.helpers.append(epmd)
    c._await(epmd_port, epmd, "epmd", log)
    for i in range(1, n + 1):
        name, (port, amqp, dist) = f"rabbit{i}", ports[3 * (i - 1) : 3 * i]
        d = c.workdir / name
        d.mkdir()
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {HOST}:{amqp}\n"
            f"mqtt.listeners.tcp.default = {HOST}:{port}\n"
            "mqtt.allow_anonymous = true\n"
            "mqtt.vhost = /\n"
            "mqtt.exchange = amq.topic\n"
            "loopback_users = none\n"
        )
        (d / "advanced.config").write_text("[].\n")
        env = _rabbitmq_env(c, name, amqp, dist)
        argv = [str(RABBITMQ_BIN / "rabbitmq-server")]
        proc = c._spawn(argv, d / "out.log", env)
        c.nodes.append(
            ClusterNode(name, port, proc, d / "out.log", pid_file=d / "pid", argv=argv, env=env)
        )
    for node in c.nodes:
        c._await(node.port, node.proc, f"rabbitmq node {node.name}", node.log_path)
    first = f"{c.nodes[0].name}@localhost"
    for node in c.nodes[1:]:
        for args in (["stop_app"], ["join_cluster", first], ["start_app"]):
            _rabbitmqctl(c, node.name, *args)
    for node in c.nodes:
        c._await(node.port, node.proc, f"rabbitmq node {node.name}", node.log_path)


def _rabbitmqctl(c: Cluster, node: str, *args: str) -> str:
    out = subprocess.run(
        [str(RABBITMQ_BIN / "rabbitmqctl"), "-q", "-n", f"{node}@localhost", *args],
        env={**os.environ, **c._env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if out.returncode != 0:
        raise ClusterError(f"rabbitmqctl {' '.join(args)} on {node}: {out.stdout}{out.stderr}")
    return out.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--engine", choices=ENGINES, default="aedes")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument(
        "--config",
        "-c",
        help="mesh config: its broker section's accounts, ACL and TLS are enforced by the nodes",
    )
    p.add_argument("--host", default=HOST, help="the nodes' address (not loopback: accounts)")
    args = p.parse_args(argv)
    cfg = None
    if args.config:
        from faillite.config import load_mesh_config

        cfg = load_mesh_config(args.config)
    pw = cfg.broker.password_file if cfg is not None else None
    stop_on = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_on)  # taken by sigwait below, not raised
    cluster = start_cluster(
        args.engine,
        args.workdir,
        args.nodes,
        host=args.host,
        security=cfg.broker if cfg is not None else None,
        mesh=cfg.mesh if cfg is not None else None,
        scope=acl_scope(cfg) if cfg is not None else None,
        identities=mesh_identities(cfg) if cfg is not None and not (pw and pw.exists()) else None,
    )
    try:
        print(engine_version(args.engine))
        for node in cluster.nodes:
            print(f"{node.name} mqtt://{node.host}:{node.port} (log {node.log_path})")
        print("broker.host/port and fallbacks for the mesh config:")
        print(cluster.broker_config(BrokerConfig()).model_dump_json(include={"host", "port",
              "fallbacks", "tls"}))  # fmt: skip
        signal.sigwait(stop_on)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
