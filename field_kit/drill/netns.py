"""Network namespaces with a veth link to this one, for partition and lossy-link drills.

Only the drill's own namespaces and a private /30 per link are touched: the namespace holds
one end of a veth pair, the host end stays here. Cutting the link is ``ip link set down`` on
the host end; WiFi-like impairment is ``tc netem`` on both ends when the kernel has it.
Everything here needs root (CAP_NET_ADMIN): :func:`require_root` says so before anything runs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from faillite.compat import python_module
from faillite.log import get_logger

log = get_logger("netns")


class NetnsError(RuntimeError):
    """An ``ip`` / ``tc`` command failed, or this process may not run it."""


def root_problem() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) for network namespaces and veth links: run with sudo"
    if shutil.which("ip") is None:
        return "needs the `ip` command (Debian package iproute2)"
    return _probe_namespaces()


@functools.cache
def _probe_namespaces() -> str | None:
    # Root in a container may still lack CAP_NET_ADMIN or /run/netns: try it once.
    name = f"flprobe{os.getpid()}"
    try:
        _run("ip", "netns", "add", name)
    except NetnsError as exc:
        return f"cannot create network namespaces here: {exc}"
    with contextlib.suppress(NetnsError):
        _run("ip", "netns", "del", name)
    return None


def require_root() -> None:
    problem = root_problem()
    if problem is not None:
        raise NetnsError(problem)


def _run(*argv: str) -> str:
    try:
        out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=10)
    except FileNotFoundError as exc:
        raise NetnsError(f"{argv[0]} not found") from exc
    except subprocess.CalledProcessError as exc:
        raise NetnsError(f"{' '.join(argv)}: {exc.stderr.strip() or exc.returncode}") from exc
    return out.stdout


@dataclass(frozen=True, slots=True)
class Impairment:
    """A WiFi-like link: one-way delay with jitter, and packet loss."""

    delay_ms: float = 20.0
    jitter_ms: float = 15.0
    loss_pct: float = 2.0

    def netem_args(self) -> list[str]:
        args = ["delay", f"{self.delay_ms:g}ms"]
        if self.jitter_ms > 0:
            args += [f"{self.jitter_ms:g}ms", "distribution", "normal"]
        return [*args, "loss", f"{self.loss_pct:g}%"]


def netem_problem() -> str | None:
    """Why ``tc netem`` cannot be used here (no sch_netem in this kernel), or None."""
    problem = root_problem()
    if problem is not None:
        return problem
    if shutil.which("tc") is None:
        return "needs the `tc` command (Debian package iproute2)"
    ns = NetNamespace(f"flprobe{os.getpid() % 100000}", 253)
    try:
        ns.create()
        ns.impair(Impairment(1, 0, 0))
    except NetnsError as exc:
        return f"tc netem unavailable: {exc}"
    finally:
        ns.destroy()
    return None


class NetNamespace:
    """A namespace ``name`` joined to this one by veth ``<name>h`` (here) / ``<name>n`` (there),
    addressed 10.251.<index>.1 (here) and .2 (there)."""

    def __init__(self, name: str, index: int) -> None:
        if not 0 < index < 255:
            raise ValueError(f"namespace index must be 1..254, got {index}")
        self.name = name
        self.host_if = f"{name}h"[:15]
        self.ns_if = f"{name}n"[:15]
        self.host_ip = f"10.251.{index}.1"
        self.ns_ip = f"10.251.{index}.2"
        self.created = False

    def create(self) -> NetNamespace:
        require_root()
        _run("ip", "netns", "add", self.name)
        self.created = True
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _run("ip", "link", "set", self.ns_if, "netns", self.name)
        _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        self.exec_ip("addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        self.exec_ip("link", "set", self.ns_if, "up")
        self.exec_ip("link", "set", "lo", "up")
        log.info("netns_created", netns=self.name, host_ip=self.host_ip, ns_ip=self.ns_ip)
        return self

    def exec_ip(self, *args: str) -> str:
        return _run("ip", "-n", self.name, *args)

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self) -> None:
        _run("ip", "link", "set", self.host_if, "down")
        log.warning("link_cut", netns=self.name)

    def heal(self) -> None:
        _run("ip", "link", "set", self.host_if, "up")
        log.warning("link_healed", netns=self.name)

    def impair(self, imp: Impairment) -> None:
        _run("tc", "qdisc", "replace", "dev", self.host_if, "root", "netem", *imp.netem_args())
        # The namespace end gets the same, so both directions suffer.
        _run(
            "ip", "netns", "exec", self.name,
            "tc", "qdisc", "replace", "dev", self.ns_if, "root", "netem", *imp.netem_args(),
        )  # fmt: skip

    def destroy(self) -> None:
        if not self.created and not Path(f"/run/netns/{self.name}").exists():
            return
        for argv in (("ip", "link", "del", self.host_if), ("ip", "netns", "del", self.name)):
            try:
                _run(*argv)
            except NetnsError as exc:
                log.debug("netns_cleanup", netns=self.name, error=str(exc))
        self.created = False


class Lan:
    """A kit's network on one machine: a bridge in namespace ``{tag}air`` (the air between the
    boards) and one namespace per node, joined to it by a veth whose node end is ``eth0``.

    Each node gets its address (``addresses``, one /24) and no route anywhere else: nothing on
    it can reach this machine's network, let alone the internet. Each link may be made
    WiFi-like and cut on its own (a partitioned board). Only the namespaces made here are
    touched; their names and the links' are ``{tag}``-prefixed."""

    def __init__(self, tag: str, addresses: dict[str, str]) -> None:
        if not addresses or len(addresses) > 250:
            raise ValueError(f"a LAN of 1..250 nodes, got {len(addresses)}")
        if len({a.rpartition(".")[0] for a in addresses.values()}) != 1:
            raise ValueError(f"one /24 for every node, got {sorted(addresses.values())}")
        self.tag = tag
        self.air = f"{tag}air"
        self.nodes = list(addresses)
        self.address = dict(addresses)
        self.created: list[str] = []
        self.links: list[subprocess.Popen[bytes]] = []  # user-space links, where no netem

    def namespace(self, node: str) -> str:
        return f"{self.tag}{self.nodes.index(node) + 1}"

    def _air_if(self, node: str) -> str:
        return f"{self.tag}{self.nodes.index(node) + 1}a"[:15]

    def create(self) -> Lan:
        require_root()
        _run("ip", "netns", "add", self.air)
        self.created.append(self.air)
        _run("ip", "-n", self.air, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.air, "link", "set", "br0", "up")
        for node in self.nodes:
            ns, air_if = self.namespace(node), self._air_if(node)
            tmp = f"{self.tag}{self.nodes.index(node) + 1}n"[:15]
            _run("ip", "netns", "add", ns)
            self.created.append(ns)
            _run("ip", "link", "add", tmp, "type", "veth", "peer", "name", air_if)
            _run("ip", "link", "set", tmp, "netns", ns, "name", "eth0")
            _run("ip", "link", "set", air_if, "netns", self.air)
            _run("ip", "-n", self.air, "link", "set", air_if, "master", "br0", "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.address[node]}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        log.info("lan_created", air=self.air, nodes=self.address)
        return self

    def wrap(self, node: str, argv: list[str]) -> list[str]:
        """``argv`` run on ``node`` (inside its namespace)."""
        return ["ip", "netns", "exec", self.namespace(node), *argv]

    def impair(self, node: str, imp: Impairment) -> None:
        """``node``'s link WiFi-like, both directions."""
        _run("tc", "-n", self.air, "qdisc", "replace", "dev", self._air_if(node), "root",
             "netem", *imp.netem_args())  # fmt: skip
        _run("tc", "-n", self.namespace(node), "qdisc", "replace", "dev", "eth0", "root",
             "netem", *imp.netem_args())  # fmt: skip

    def wifi(self, imp: Impairment, *, broker: str, port: int) -> str:
        """Every link WiFi-like. With ``sch_netem``: netem on each link, both directions
        ("netem"). Without it: a user-space link on ``broker``'s node that every connection
        arriving there for ``port`` passes through (an nftables redirect), held for the delay
        and jitter, a lost segment stalling for a retransmission timeout ("user-space"); all
        of the mesh's traffic goes through the broker, so every node's traffic suffers."""
        if netem_problem() is None:
            for node in self.nodes:
                self.impair(node, imp)
            return "netem"
        ns, addr, relay = self.namespace(broker), self.address[broker], 20000 + port % 40000
        rules = (
            f"add table ip faillite_link; "
            f"add chain ip faillite_link pre {{ type nat hook prerouting priority -100; }}; "
            f'add rule ip faillite_link pre iifname "eth0" tcp dport {port} redirect to :{relay}'
        )
        _run("ip", "netns", "exec", ns, "nft", rules)
        proc = subprocess.Popen(
            self.wrap(
                broker,
                [
                    *python_module("field_kit.drill.linkproxy"),
                    "--listen",
                    f"{addr}:{relay}",
                    "--target",
                    f"{addr}:{port}",
                    "--delay-ms",
                    f"{imp.delay_ms:g}",
                    "--jitter-ms",
                    f"{imp.jitter_ms:g}",
                    "--loss-pct",
                    f"{imp.loss_pct:g}",
                ],
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.links.append(proc)
        return "user-space"

    def cut(self, node: str) -> None:
        _run("ip", "-n", self.air, "link", "set", self._air_if(node), "down")
        log.warning("link_cut", node=node)

    def heal(self, node: str) -> None:
        _run("ip", "-n", self.air, "link", "set", self._air_if(node), "up")
        log.warning("link_healed", node=node)

    def destroy(self) -> None:
        for proc in self.links:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.links.clear()
        # Deleting a namespace deletes its veth ends (and their peers) with it.
        for ns in reversed(self.created):
            try:
                _run("ip", "netns", "del", ns)
            except NetnsError as exc:
                log.debug("netns_cleanup", netns=ns, error=str(exc))
        self.created.clear()
