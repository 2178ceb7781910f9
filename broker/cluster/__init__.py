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

Each cluster runs in its own work folder (configs, data, logs), on loopback ports of its
own, and its processes in their own session, so :meth:`Cluster.stop` leaves nothing behind
(RabbitMQ's ``epmd`` included: each cluster starts its own on a port of its own). Clients
reach the cluster through :meth:`Cluster.broker_config`: one node first, the others as
fallbacks, which is how the mesh's roles spread over the nodes.

Operators::

    python -m broker.cluster --engine aedes --nodes 3 --workdir /var/lib/faillite/cluster
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from faillite.config import BrokerAddress, BrokerConfig

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


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.3):
            return True
    except OSError:
        return False


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

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def broker_config(self, base: BrokerConfig, first: int = 0) -> BrokerConfig:
        """``base`` pointed at node ``first``, the other nodes as its fallbacks in order."""
        order = self.nodes[first:] + self.nodes[:first]
        return base.model_copy(
            update={
                "host": order[0].host,
                "port": order[0].port,
                "fallbacks": tuple(n.address for n in order[1:]),
            }
        )

    def restart(self, node: ClusterNode) -> None:
        """Start a killed node again: same id, port and data (it rejoins the cluster)."""
        if node.alive():
            raise ClusterError(f"{node.name} is running")
        if node.pid_file is not None:
            node.pid_file.unlink(missing_ok=True)
        node.proc = self._spawn(node.argv, node.log_path, node.env)
        node.killed = False
        self._await(node.port, node.proc, f"{self.engine} node {node.name}", node.log_path)

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

    def _await(self, port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if _accepts(port):
                return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise ClusterError(f"{what} did not come up on port {port}:\n{tail}")


def start_cluster(engine: str, workdir: Path, nodes: int = 3) -> Cluster:
    """Start an ``nodes``-node cluster of ``engine`` in ``workdir`` (created), ready to use;
    on failure, whatever was started is stopped."""
    problem = engine_problem(engine)
    if problem is not None:
        raise ClusterError(problem)
    for attempt in range(START_ATTEMPTS):
        # Ports are picked free, then taken by the engine: another process may take one in
        # between (a node then fails with eaddrinuse); the next attempt picks others.
        where = workdir.resolve() / f"try{attempt}" if attempt else workdir.resolve()
        where.mkdir(parents=True, exist_ok=True)
        cluster = Cluster(engine, where)
        try:
            if engine == "rabbitmq":
                _start_rabbitmq(cluster, nodes)
            else:
                _start_aedes(cluster, nodes, raw=engine == "aedes-raw")
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


def _start_aedes(c: Cluster, n: int, *, raw: bool) -> None:
    redis_port, *ports = _free_ports(n + 1)
    (c.workdir / "redis").mkdir(exist_ok=True)
    log = c.workdir / "redis.log"
    redis = c._spawn(
        ["redis-server", "--bind", HOST, "--port", str(redis_port), "--save", "",
         "--appendonly", "no", "--dir", str(c.workdir / "redis"), "--protected-mode", "no"],
        log,
    )  # fmt: skip
    c.helpers.append(redis)
    c._await(redis_port, redis, "redis-server", log)
    script = AEDES_DIR / "node.mjs"
    peers = ",".join(f"aedes{i}" for i in range(1, n + 1))
    for i in range(1, n + 1):
        port, log = ports[i - 1], c.workdir / f"aedes{i}.log"
        argv = ["node", str(script), "--id", f"aedes{i}", "--host", HOST, "--port", str(port),
                "--redis-port", str(redis_port), "--heartbeat-ms", str(AEDES_HEARTBEAT_MS),
                "--peers", peers, "--modules", str(aedes_modules()),
                *(["--raw"] if raw else [])]  # fmt: skip
        proc = c._spawn(argv, log)
        c.nodes.append(ClusterNode(f"aedes{i}", port, proc, log, argv=argv))
    for node in c.nodes:
        c._await(node.port, node.proc, f"aedes node {node.name}", node.log_path)


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
    args = p.parse_args(argv)
    stop_on = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_on)  # taken by sigwait below, not raised
    cluster = start_cluster(args.engine, args.workdir, args.nodes)
    try:
        print(engine_version(args.engine))
        for node in cluster.nodes:
            print(f"{node.name} mqtt://{node.host}:{node.port} (log {node.log_path})")
        print("broker.host/port and fallbacks for the mesh config:")
        print(cluster.broker_config(BrokerConfig()).model_dump_json(include={"host", "port",
              "fallbacks"}))  # fmt: skip
        signal.sigwait(stop_on)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
