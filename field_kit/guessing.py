"""Password guessing against a broker, from one source address: what a brute force gets.

``guess(...)`` runs ``threads`` guessers on ``source`` sending CONNECTs with wrong passwords for
``seconds``, each as soon as the last was answered (a CONNACK, a closed connection, or a
connect that timed out). ``python -m field_kit.guessing`` does the same and prints the result
as JSON, so it can run inside a network namespace (``ip netns exec``) next to the broker whose
firewall is under test: :func:`firewalled_mosquitto` does that, with the nftables rules that
``broker.mosquitto`` writes beside a Mosquitto config (root, ``ip``, ``nft``).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from broker.mosquitto import write_mosquitto_config
from faillite.compat import python_code, python_module
from faillite.config import BrokerConfig
from field_kit.brokers import mosquitto_binary
from field_kit.mqttwire import connect_packet, read_connack


@dataclass(frozen=True, slots=True)
class Guesses:
    seconds: float
    answered: int  # CONNACKs received
    accepted: int  # of those, CONNACK 0 (a guess that got in)
    unanswered: int  # connects that failed or timed out

    @property
    def per_s(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0


def login(
    host: str,
    port: int,
    username: str,
    password: str,
    *,
    source: str,
    timeout: float = 10.0,
    tls: ssl.SSLContext | None = None,
) -> int:
    """One CONNECT from ``source`` with client id ``username`` (over TLS with ``tls``); the
    CONNACK code, -1 if none. A plain socket, not paho: a flood's thousand descriptors in the
    same process would put paho's beyond what its select() takes."""
    with socket.create_connection((host, port), timeout=timeout, source_address=(source, 0)) as raw:
        try:
            sock = raw if tls is None else tls.wrap_socket(raw, server_hostname=host)
        except OSError:
            return -1
        sock.sendall(connect_packet(username, 10, username=username, password=password))
        return read_connack(sock)


class Flood:
    """``n`` TCP connections from ``source`` that never send a CONNECT: a flood without
    credentials, held open until :meth:`close` (a ``with`` block). Sockets the broker refused
    or closed are counted by :meth:`open_count`."""

    def __init__(self, host: str, port: int, n: int, *, source: str) -> None:
        self.socks: list[socket.socket] = []
        self.failed = 0
        for _ in range(n):
            try:
                s = socket.create_connection((host, port), timeout=2.0, source_address=(source, 0))
            except OSError:
                self.failed += 1  # refused, reset or no descriptor left
                continue
            s.setblocking(False)
            self.socks.append(s)

    def open_count(self) -> int:
        """Sockets the broker has not closed: a read would block (EOF or a reset: closed)."""
        n = 0
        for s in self.socks:
            try:
                if s.recv(1, socket.MSG_PEEK):
                    n += 1  # it sent something: still open
            except BlockingIOError:
                n += 1
            except OSError:
                pass
        return n

    def settle(self, cap: int, within_s: float) -> int:
        """Wait (at most ``within_s``) until the broker has closed all but ``cap`` of the
        sockets; how many are still open then."""
        deadline = time.monotonic() + within_s
        while (held := self.open_count()) > cap and time.monotonic() < deadline:
            time.sleep(0.1)
        return held

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks.clear()

    def __enter__(self) -> Flood:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def guess(
    host: str,
    port: int,
    username: str,
    *,
    source: str,
    seconds: float,
    threads: int = 8,
    timeout: float = 3.0,
) -> Guesses:
    stop = threading.Event()
    answered = [0] * threads
    accepted = [0] * threads
    failed = [0] * threads

    def run(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                rc = login(host, port, username, f"guess-{i}-{n}", source=source, timeout=timeout)
            except OSError:
                failed[i] += 1
                continue
            if rc < 0:
                failed[i] += 1
                continue
            answered[i] += 1
            accepted[i] += rc == 0

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    start = time.monotonic()
    for w in workers:
        w.start()
    stop.wait(seconds)
    stop.set()
    elapsed = time.monotonic() - start
    for w in workers:
        w.join(5)
    return Guesses(round(elapsed, 3), sum(answered), sum(accepted), sum(failed))


def firewall_problem() -> str | None:
    """Why :func:`firewalled_mosquitto` cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (a network namespace and its firewall)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install iproute2 nftables)"
    if mosquitto_binary() is None:
        return "needs mosquitto"
    return None


@dataclass(frozen=True, slots=True)
class FirewallRun:
    without: dict[str, Any]  # guesses before the rules were loaded
    with_rules: dict[str, Any]  # and after
    device_rc: int  # a device's own login from another address, meanwhile
    device_s: float


@contextlib.contextmanager
def _namespaced_mosquitto(
    cfg: BrokerConfig, mesh: str, workdir: Path
) -> Iterator[tuple[Callable[..., str], Path]]:
    """Mosquitto with ``cfg`` on 127.0.0.1:1883 in a network namespace made for it; yields a
    runner of commands inside it and the generated nftables rules (not loaded)."""
    binary = mosquitto_binary()
    assert binary is not None, firewall_problem()
    ns = f"flfw{uuid.uuid4().hex[:8]}"
    cfg = cfg.model_copy(update={"host": "127.0.0.1", "port": 1883})
    run_as = getpass.getuser() if os.geteuid() == 0 else None
    conf = write_mosquitto_config(cfg, mesh, workdir / "mosquitto", run_as=run_as)

    def inside(*cmd: str) -> str:
        out = subprocess.run(
            ["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=120
        )
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
        return out.stdout

    subprocess.run(["ip", "netns", "add", ns], check=True)
    broker: subprocess.Popen[bytes] | None = None
    try:
        inside("ip", "link", "set", "lo", "up")
        with (workdir / "mosquitto.log").open("wb") as log:
            broker = subprocess.Popen(
                ["ip", "netns", "exec", ns, binary, "-c", str(conf)], stdout=log, stderr=log
            )
        time.sleep(1.0)
        if broker.poll() is not None:
            raise RuntimeError((workdir / "mosquitto.log").read_text())
        yield inside, conf.parent / "nftables.conf"
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(10)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _login_cmd(device: tuple[str, str]) -> list[str]:
    """A process in which ``device`` (username, secret) logs in from 127.0.0.2 and prints its
    CONNACK code and the seconds it took."""
    user, secret = device
    return python_code(
        "import time; from field_kit.guessing import login; t = time.monotonic(); "
        f"rc = login('127.0.0.1', 1883, {user!r}, {secret!r}, source='127.0.0.2'); "
        "print(rc, time.monotonic() - t)"
    )


def _device_login(inside: Callable[..., str], device: tuple[str, str]) -> tuple[int, float]:
    rc, took = inside(*_login_cmd(device)).split()
    return int(rc), float(took)


def firewalled_mosquitto(
    cfg: BrokerConfig,
    mesh: str,
    workdir: Path,
    *,
    victim: str,
    device: tuple[str, str],
    seconds: tuple[float, float] = (2.0, 4.0),
) -> FirewallRun:
    """Mosquitto with ``cfg`` (accounts) in a network namespace made for it: guesses at
    ``victim`` from 127.0.0.1 for ``seconds[0]`` without the generated nftables rules, then
    for ``seconds[1]`` with them; then ``device`` (username, secret) logs in from 127.0.0.2."""
    with _namespaced_mosquitto(cfg, mesh, workdir) as (inside, rules):

        def guesses(s: float) -> dict[str, Any]:
            cmd = [*python_module("field_kit.guessing"), "--port", "1883"]
            out = inside(*cmd, "--username", victim, "--seconds", str(s))
            result: dict[str, Any] = json.loads(out)
            return result

        without = guesses(seconds[0])
        inside("nft", "-f", str(rules))
        time.sleep(1.5)  # let the bucket refill from the guesses before the rules
        with_rules = guesses(seconds[1])
        rc, took = _device_login(inside, device)
        return FirewallRun(without, with_rules, rc, took)


def flooded_mosquitto(
    cfg: BrokerConfig,
    mesh: str,
    workdir: Path,
    *,
    device: tuple[str, str],
    sockets: int,
    firewall: bool = True,
) -> dict[str, Any]:
    """Mosquitto with ``cfg`` and its generated firewall in a namespace made for it: ``sockets``
    idle connections from 127.0.0.1 (none sends a CONNECT), held while ``device`` logs in from
    127.0.0.2. Returns how many the flood got open, and the device's CONNACK and seconds.
    ``firewall`` False: the rules are not loaded (what a host without them gets)."""
    with _namespaced_mosquitto(cfg, mesh, workdir) as (inside, rules):
        if firewall:
            inside("nft", "-f", str(rules))
        script = (
            "import json, resource, subprocess, sys, time\n"
            "from field_kit.guessing import Flood\n"
            "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
            f"resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, {4 * sockets + 256}), hard))\n"
            f"with Flood('127.0.0.1', 1883, {sockets}, source='127.0.0.1') as f:\n"
            "    time.sleep(0.5)\n"
            "    held = f.open_count()\n"
            "    d = subprocess.run(sys.argv[1:], capture_output=True, text=True).stdout.split()\n"
            "    print(json.dumps({'held': held, 'failed': f.failed,\n"
            "                      'device_rc': int(d[0]), 'device_s': float(d[1])}))\n"
        )
        result: dict[str, Any] = json.loads(inside(*python_code(script), *_login_cmd(device)))
        return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m field_kit.guessing", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--username", required=True)
    p.add_argument("--source", default="127.0.0.1")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=8)
    args = p.parse_args(argv)
    g = guess(
        args.host,
        args.port,
        args.username,
        source=args.source,
        seconds=args.seconds,
        threads=args.threads,
    )
    print(json.dumps({**asdict(g), "per_s": round(g.per_s, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
