"""Real role processes under a stand-in for systemd: each gets a $NOTIFY_SOCKET of its own and
a watchdog ($WATCHDOG_USEC), as a Type=notify unit with WatchdogSec would give it, and must say
READY=1, ping WATCHDOG=1 over and over, and say STOPPING=1 on SIGTERM, all from its main
process (the units say NotifyAccess=main)."""

from __future__ import annotations

import signal
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from plugins.mesh import write_config

from field_kit.procs import Child, ProcessGroup, faillite_cmd, free_port

WATCHDOG_USEC = 2_000_000  # a ping a second
START_S = 60.0  # the machine may be busy: imports of onnxruntime, cvxpy, opencv
_CREDS = struct.Struct("iII")  # struct ucred: pid, uid, gid


@dataclass(frozen=True, slots=True)
class Note:
    at: float  # monotonic
    pid: int  # the sender, as the kernel vouches for it (SCM_CREDENTIALS)
    states: tuple[str, ...]


class NotifySocket:
    """What systemd listens on for one unit: a datagram socket, read by a thread, that records
    each notification with its sender's pid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.1)
        self.notes: list[Note] = []
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(_CREDS.size))
            except TimeoutError:
                continue
            except OSError:
                return
            pid = -1
            for level, kind, payload in anc:
                if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                    pid = _CREDS.unpack(payload[: _CREDS.size])[0]
            with self._cond:
                note = Note(time.monotonic(), pid, tuple(data.decode().split("\n")))
                self.notes.append(note)
                self._cond.notify_all()

    def wait_for(self, state: str, *, count: int = 1, since: float = 0.0) -> list[Note]:
        """The first ``count`` notifications carrying ``state`` after ``since``."""

        def found() -> list[Note]:
            return [n for n in self.notes if state in n.states and n.at >= since]

        with self._cond:
            ok = self._cond.wait_for(lambda: len(found()) >= count, START_S)
            got = found()
        assert ok, f"{self.path.name}: {count} x {state} expected, got {self.notes}"
        return got[:count]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self.sock.close()


@dataclass
class Role:
    child: Child
    notify: NotifySocket


StartRole = Callable[..., Role]


@pytest.fixture
def start_role(tmp_path: Path) -> Iterator[StartRole]:
    """Starts a role as systemd would run its unit; stops (SIGTERM, then SIGKILL) and closes
    everything at the end of the test."""
    started: list[tuple[ProcessGroup, NotifySocket]] = []
    # AF_UNIX addresses are short (108 bytes): the sockets live in a short folder of their own.
    sockets = Path(tempfile.mkdtemp(prefix="sd"))

    def start(name: str, role: str, *args: str) -> Role:
        notify = NotifySocket(sockets / name)
        env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        group = ProcessGroup(tmp_path / "logs", env=env)
        started.append((group, notify))
        return Role(group.start(name, role, faillite_cmd(*args)), notify)

    try:
        yield start
    finally:
        for group, notify in reversed(started):
            try:
                group.stop_all()
            finally:
                notify.close()
        for path in sockets.iterdir():
            path.unlink()
        sockets.rmdir()


def _ready_and_pinging(role: Role, pings: int = 3) -> None:
    """READY=1 with a status line, then ``pings`` watchdog pings after it."""
    (ready,) = role.notify.wait_for("READY=1")
    assert any(s.startswith("STATUS=") for s in ready.states), ready
    role.notify.wait_for("WATCHDOG=1", count=pings, since=ready.at)


def test_roles_notify_systemd(tmp_path: Path, start_role: StartRole) -> None:
    endpoint = SimpleNamespace(host="127.0.0.1", port=free_port())
    (tmp_path / "models").mkdir()
    cfg = str(write_config(tmp_path, endpoint, tmp_path / "models", mesh="sdnotify"))

    broker = start_role("broker", "broker", "broker", "--config", cfg)
    (ready,) = broker.notify.wait_for("READY=1")
    assert f"STATUS=listening on 127.0.0.1:{endpoint.port}" in ready.states

    worker = start_role("worker", "worker", "worker", "--config", cfg, "--id", "w1")
    leader = start_role("leader", "coordinator", "coordinator", "--config", cfg, "--id", "c1")
    sensor = start_role("sensor", "sensor", "sensor", "--config", cfg, "--id", "cam1")
    # The standby once a leader holds a term (else it would find the leadership vacant).
    (led,) = leader.notify.wait_for("READY=1")
    assert any(s.startswith("STATUS=leader c1, term ") for s in led.states), led
    standby = start_role(
        "standby", "coordinator", "coordinator", "--config", cfg, "--id", "c2", "--standby"
    )
    roles = {"broker": broker, "worker": worker, "leader": leader, "sensor": sensor}
    roles["standby"] = standby
    for role in roles.values():
        _ready_and_pinging(role)

    # A clean stop says so; the broker last, as systemd's ordering (After=) would stop it.
    for name, role in roles.items():
        if name != "broker":
            role.child.proc.send_signal(signal.SIGTERM)
    for name, role in roles.items():
        if name != "broker":
            assert role.child.proc.wait(30) == 0, role.child.tail()
            role.notify.wait_for("STOPPING=1")
    broker.child.proc.send_signal(signal.SIGTERM)
    assert broker.child.proc.wait(30) == 0, broker.child.tail()
    broker.notify.wait_for("STOPPING=1")

    for name, role in roles.items():
        notes = role.notify.notes
        # Everything from the main process (NotifyAccess=main would drop anything else).
        assert {n.pid for n in notes} == {role.child.pid}, (name, notes)
        assert sum(n.states.count("READY=1") for n in notes) == 1, (name, notes)
        log = (tmp_path / "logs" / f"{name}.log").read_text()
        assert "watchdog_withheld" not in log and "sd_notify_failed" not in log, log
