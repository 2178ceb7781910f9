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
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
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
    host: str, port: int, username: str, password: str, *, source: str, timeout: float = 10.0
) -> int:
    """One CONNECT from ``source`` with client id ``username``; the CONNACK code, -1 if none."""
    with socket.create_connection(
        (host, port), timeout=timeout, source_address=(source, 0)
    ) as sock:
        sock.sendall(connect_packet(username, 10, username=username, password=password))
        return read_connack(sock)


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
    binary = mosquitto_binary()
    assert binary is not None, firewall_problem()
    ns = f"flfw{uuid.uuid4().hex[:8]}"
    cfg = cfg.model_copy(update={"host": "127.0.0.1", "port": 1883})
    run_as = getpass.getuser() if os.geteuid() == 0 else None
    conf = write_mosquitto_config(cfg, mesh, workdir / "mosquitto", run_as=run_as)
    rules = conf.parent / "nftables.conf"

    def inside(*cmd: str) -> str:
        out = subprocess.run(
            ["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=120
        )
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
        return out.stdout

    def guesses(s: float) -> dict[str, Any]:
        cmd = [*python_module("field_kit.guessing"), "--port", "1883"]
        result: dict[str, Any] = json.loads(inside(*cmd, "--username", victim, "--seconds", str(s)))
        return result

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
        without = guesses(seconds[0])
        inside("nft", "-f", str(rules))
        time.sleep(1.5)  # let the bucket refill from the guesses before the rules
        with_rules = guesses(seconds[1])
        user, secret = device
        rc, took = inside(
            *python_code(
                "import time; from field_kit.guessing import login; t = time.monotonic(); "
                f"rc = login('127.0.0.1', 1883, {user!r}, {secret!r}, source='127.0.0.2'); "
                "print(rc, time.monotonic() - t)"
            )
        ).split()
        return FirewallRun(without, with_rules, int(rc), float(took))
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(10)
        subprocess.run(["ip", "netns", "del", ns], check=False)


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
