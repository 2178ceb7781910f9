"""A kit rehearsed on one machine from its offline bundle, one network namespace per node.

The kit is rendered in place into ``root`` (each node's paths point into ``root/<node>``),
bundled (one signed archive per node), and then each node folder is emptied and installed again
from its own archive, by the archive's own ``install.py`` run inside the node's namespace, where
nothing but the kit's LAN can be reached; the first install trusts the kit's release key by its
fingerprint, as an operator would. Each node's roles are started the way its systemd units say
(``ExecStart``, ``Environment`` and, as in the field, ``User``: the installer made the service
users and gave each its files), inside its namespace, in the units' order: the broker, then
coordinators, workers and cameras. What each took is read from the roles' own structured logs:
install seconds, and seconds from start to ready per unit.

As service users, the node is installed by the machine's own Python (``/usr/bin/python3``, as
an operator's ``sudo python3 install.py``: a venv on an interpreter under ``/root`` could not be
run by them), under a root every user can pass through; the users it made are removed at the
end. Without such a Python the rehearsal runs every role as root, and says so.

Root and ``ip`` are needed (:func:`field_kit.drill.netns.root_problem`).
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from field_kit.drill.netns import Lan
from field_kit.kit.installer import BundleError, extract_all
from field_kit.kit.model import Kit

# The log event that says a role is ready, per unit kind (the unit name's role part).
READY: Final[dict[str, tuple[str, ...]]] = {
    "broker": ("broker_listening",),
    "coordinator": ("term_acquired", "standby"),
    "worker": ("assignment_applied",),
    "sensor": ("connected",),
}
ORDER: Final = ("broker", "coordinator", "worker", "sensor")
OPS: Final = "10.252.0.200"  # the operator's laptop on the kit's WiFi


SYSTEM_PYTHON: Final = Path("/usr/bin/python3")


def system_python(version: str) -> Path | None:
    """The machine's own Python of ``version`` (``3.11``) with venv, or None."""
    if not SYSTEM_PYTHON.is_file():
        return None
    probe = subprocess.run(
        [str(SYSTEM_PYTHON), "-c",
         "import ensurepip, sys, venv; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return SYSTEM_PYTHON if probe.returncode == 0 and probe.stdout.strip() == version else None


@dataclass(frozen=True, slots=True)
class Unit:
    node: str
    name: str  # faillite-worker.service
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    user: str = ""  # User=; "": root (Mosquitto drops to its own user itself)

    @property
    def role(self) -> str:
        return self.name.removeprefix("faillite-").split(".")[0].split("-")[0]


def read_units(folder: Path, node: str) -> list[Unit]:
    """The units of an installed node folder, in start order."""
    out: list[Unit] = []
    for path in sorted((folder / "etc/systemd/system").glob("faillite-*.service")):
        argv: list[str] = []
        env: list[tuple[str, str]] = []
        user = ""
        for line in path.read_text().splitlines():
            if line.startswith("ExecStart="):
                argv = shlex.split(line.removeprefix("ExecStart="))
            elif line.startswith("User="):
                user = line.removeprefix("User=").strip()
            elif line.startswith("Environment="):
                for pair in shlex.split(line.removeprefix("Environment=")):
                    k, _, v = pair.partition("=")
                    env.append((k, v))
        if not argv:
            raise BundleError(f"{path}: no ExecStart")
        out.append(Unit(node, path.name, tuple(argv), tuple(env), user))
    return sorted(out, key=lambda u: (ORDER.index(u.role), u.name))


@dataclass
class NodeTimes:
    install_s: float = 0.0
    started: dict[str, float] = field(default_factory=dict)  # unit -> wall clock at start
    ready_s: dict[str, float | None] = field(default_factory=dict)  # unit -> start to ready


class Rehearsal:
    """``kit`` rendered in place under ``root`` and bundled in ``archives`` (one per node, the
    release key ``release`` signed them), on ``lan``."""

    def __init__(
        self,
        kit: Kit,
        archives: dict[str, Path],
        root: Path,
        lan: Lan,
        logs: Path,
        release: str,
        *,
        python: Path | None = None,
    ) -> None:
        """``python``: the node's Python (:func:`system_python`): the roles then run as their
        service users; None: as root."""
        self.kit, self.root, self.lan, self.logs = kit, root, lan, logs
        self.archives, self.release = archives, release
        self.python = python
        self.as_users = python is not None
        self._users_before = {p.pw_name for p in pwd.getpwall()}
        self.procs: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self.times: dict[str, NodeTimes] = {n.id: NodeTimes() for n in kit.nodes}
        logs.mkdir(parents=True, exist_ok=True)

    def install(self, node: str) -> float:
        """Empty ``node``'s folder, install it from its archive inside its namespace (no network
        but the kit's LAN); returns the seconds it took (verification included)."""
        target = self.root / node
        shutil.rmtree(target, ignore_errors=True)
        archive = self.archives[node]
        where = self.root.parent / f"{self.root.name}-installer-{node}"
        shutil.rmtree(where, ignore_errors=True)
        with tarfile.open(archive) as tar:  # the installer alone, as an operator takes it
            name = f"{archive.name.removesuffix('.tar')}/install.py"
            extract_all(tar, where, only=name)
        t0 = time.monotonic()
        out = subprocess.run(
            self.lan.wrap(node, [str(self.python or sys.executable), str(where / name),
                                 "--node", node, "--bundle", str(archive),
                                 "--trust", self.release, "--keep-bundle",
                                 "--root", str(target), "--no-systemd",
                                 *(["--accounts"] if self.as_users else [])]),
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if out.returncode != 0:
            raise BundleError(f"installing {node}: {out.stderr.strip()[-2000:]}")
        self.times[node].install_s = time.monotonic() - t0
        return self.times[node].install_s

    def units(self, node: str) -> list[Unit]:
        return read_units(self.root / node, node)

    def start(self, unit: Unit) -> subprocess.Popen[bytes]:
        env = {**os.environ, **dict(unit.env)}
        argv = list(unit.argv)
        if self.as_users and unit.user:
            # What systemd does for User=: its ids and groups, its HOME; setpriv execs, so the
            # pid recorded is the role's own.
            pw = pwd.getpwnam(unit.user)
            env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
            argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                    "--init-groups", "--", *argv]  # fmt: skip
        with (self.logs / f"{unit.node}-{unit.name}.log").open("ab") as log:
            proc = subprocess.Popen(
                self.lan.wrap(unit.node, argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.procs[(unit.node, unit.name)] = proc
        self.times[unit.node].started[unit.name] = time.time()
        (self.logs / f"{unit.node}-{unit.name}.pid").write_text(f"{proc.pid}\n")
        return proc

    def ready_at(self, unit: Unit) -> float | None:
        """Wall clock of ``unit``'s first ready event since it was started, from its log."""
        since = self.times[unit.node].started.get(unit.name)
        path = self.logs / f"{unit.node}-{unit.name}.log"
        if since is None or not path.is_file():
            return None
        wanted = READY[unit.role]
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") in wanted and "timestamp" in ev:
                at = datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00")).timestamp()
                if at >= since - 1:
                    return at
        return None

    def wait_ready(self, units: list[Unit], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(units)
        while pending:
            for u in list(pending):
                at = self.ready_at(u)
                if at is not None:
                    self.times[u.node].ready_s[u.name] = at - self.times[u.node].started[u.name]
                    pending.remove(u)
                elif self.procs[(u.node, u.name)].poll() is not None:
                    raise BundleError(f"{u.node}/{u.name} exited; see {self.logs}")
            if pending and time.monotonic() > deadline:
                names = ", ".join(f"{u.node}/{u.name}" for u in pending)
                raise BundleError(f"not ready after {timeout:.0f} s: {names}; see {self.logs}")
            time.sleep(0.2)

    def start_all(self, timeout: float = 120.0) -> None:
        """Every node's units, role by role (the broker first), each role ready before the
        next starts, as systemd's ordering would have it."""
        units = [u for n in self.kit.nodes for u in self.units(n.id)]
        for role in ORDER:
            batch = [u for u in units if u.role == role]
            for u in batch:
                self.start(u)
            self.wait_ready(batch, timeout)

    def boot(self, order: list[str], delay_s: float, timeout: float = 180.0) -> float:
        """Boards powered on in ``order``, ``delay_s`` apart, each starting all its units at
        once (nobody waits for another board, as in the field); returns the seconds from the
        last board on to every unit ready."""
        for i, node in enumerate(order):
            if i:
                time.sleep(delay_s)  # a rehearsal's boot order, not a wait for a condition
            for u in self.units(node):
                self.start(u)
        last = time.monotonic()
        self.wait_ready([u for n in order for u in self.units(n)], timeout)
        return time.monotonic() - last

    def kill(self, node: str, unit: str, sig: int = signal.SIGKILL) -> None:
        self.procs[(node, unit)].send_signal(sig)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for node in self.archives:
            shutil.rmtree(self.root.parent / f"{self.root.name}-installer-{node}", True)
        if self.as_users:  # the service users the installs made here, and their groups
            for name in sorted({p.pw_name for p in pwd.getpwall()} - self._users_before):
                if name.startswith("faillite-"):
                    subprocess.run(["userdel", name], capture_output=True, check=False)

    def table(self) -> list[dict[str, Any]]:
        """Per node: install seconds, and seconds from start to ready per unit."""
        return [
            {
                "node": n.id,
                "roles": list(n.roles),
                "install_s": round(self.times[n.id].install_s, 1),
                "ready_s": {
                    u: None if s is None else round(s, 2)
                    for u, s in self.times[n.id].ready_s.items()
                },
            }
            for n in self.kit.nodes
        ]


def lan_kit(name: str = "lan5", port: int = 8883, fps: float = 2.0) -> Kit:
    """A five-node kit that rehearses on one machine: addresses in 10.252.0.0/24 (the
    operator's laptop is :data:`OPS`), CPU boards, the embedded broker, two cameras from the
    built-in scene, a critical app and another."""

    def node(i: int, domain: str, roles: list[str]) -> dict[str, Any]:
        return {
            "id": f"n{i}", "host": f"10.252.0.{i}", "arch": "x86_64", "device_class": "cpu",
            "memory_mb": 1024, "disk_mb": 1000, "failure_domain": domain, "link": "wifi",
            "roles": roles,
        }  # fmt: skip

    return Kit.model_validate(
        {
            "kit": name,
            "broker": {"node": "n1", "kind": "amqtt", "port": port},
            "nodes": [
                # The cameras' boards: not a worker, so a partitioned worker loses no camera.
                node(1, "a", ["broker", "coordinator", "sensor"]),
                node(2, "a", ["coordinator", "worker"]),
                node(3, "b", ["worker"]),
                node(4, "c", ["worker"]),
                node(5, "d", ["worker"]),
            ],
            "cameras": [
                {"id": "cam1", "node": "n1", "source": "scene:chelsea", "fps": fps},
                {"id": "cam2", "node": "n1", "source": "scene:chelsea", "fps": fps},
            ],
            "apps": [
                {"id": "a1", "camera": "cam1", "family": "efficientnet_lite", "critical": True},
                {"id": "a2", "camera": "cam2", "family": "efficientnet_lite"},
            ],
            "observers": ["ops", "watch"],
        }
    )
