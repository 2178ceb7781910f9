"""systemd's notify protocol (faillite.sdnotify) against real AF_UNIX datagram sockets."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from faillite import sdnotify
from faillite.sdnotify import Beats, Watchdog, notify, watchdog_period

SUN_PATH_MAX = 107  # sockaddr_un.sun_path, less its terminating NUL


def _receive(sock: socket.socket, timeout: float) -> list[str]:
    """Every datagram that arrives within ``timeout``."""
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return out


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound in tmp_path (a shorter temporary folder where tmp_path is too
    long for an AF_UNIX address), named by $NOTIFY_SOCKET, no watchdog variables set."""
    with tempfile.TemporaryDirectory(prefix="sd") as short:
        path = tmp_path / "notify"
        if len(str(path)) > SUN_PATH_MAX:
            path = Path(short) / "notify"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        try:
            yield sock
        finally:
            sock.close()


def test_notify_sends_one_datagram(notify_socket: socket.socket) -> None:
    assert notify("READY=1", "STATUS=serving")
    assert _receive(notify_socket, 0.5) == ["READY=1\nSTATUS=serving"]


def test_notify_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"faillite-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("STOPPING=1")
        assert _receive(sock, 0.5) == ["STOPPING=1"]


def test_notify_without_socket_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_notify_failure_is_logged_once_never_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    monkeypatch.setattr(sdnotify, "_warned", threading.Lock())
    with capture_logs() as logs:
        assert notify("READY=1") is False
        assert notify("WATCHDOG=1") is False
    failed = [e for e in logs if e["event"] == "sd_notify_failed"]
    assert len(failed) == 1 and failed[0]["log_level"] == "warning", logs
    assert failed[0]["states"] == ["READY=1"]


def test_watchdog_period(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_period() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_period() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_period() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # inherited from a parent
    assert watchdog_period() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("", "0", "-5", "soon"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert watchdog_period() is None, bad


def test_watchdog_pings_while_alive_and_stops_when_not(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    reason: list[str] = []
    dog = Watchdog(lambda: reason[0] if reason else None, name="test")
    with capture_logs() as logs:
        assert dog.start()
        try:
            pings = _receive(notify_socket, 0.6)
            assert len(pings) >= 4 and set(pings) == {"WATCHDOG=1"}, pings
            reason.append("inference loop silent for 31.0 s (limit 20 s)")
            # Pings already on their way, then the status saying why, then nothing more.
            withheld = "STATUS=watchdog withheld: inference loop silent for 31.0 s (limit 20 s)"
            after = _receive(notify_socket, 0.3)
            assert withheld in after, after
            assert after[after.index(withheld) + 1 :] == []
            assert _receive(notify_socket, 0.5) == []
        finally:
            dog.stop()
    events = [e for e in logs if e["event"] == "watchdog_withheld"]
    assert len(events) == 1, logs
    assert events[0]["watchdog"] == "test" and "inference loop" in events[0]["reason"]


def test_watchdog_broken_check_counts_as_hung(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")

    def alive() -> str | None:
        raise RuntimeError("boom")

    dog = Watchdog(alive, name="test")
    assert dog.start()
    try:
        got = _receive(notify_socket, 0.4)
    finally:
        dog.stop()
    assert got == ["STATUS=watchdog withheld: alive() raised RuntimeError('boom')"]


def test_watchdog_does_nothing_without_watchdog_usec(notify_socket: socket.socket) -> None:
    dog = Watchdog(lambda: None, name="test")
    assert dog.start() is False
    assert _receive(notify_socket, 0.3) == []
    dog.stop()


def test_watchdog_respects_watchdog_pid(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # the watchdog is another's
    other = Watchdog(lambda: None, name="test")
    assert other.start() is False
    assert _receive(notify_socket, 0.3) == []
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    mine = Watchdog(lambda: None, name="test")
    assert mine.start()
    try:
        assert _receive(notify_socket, 0.3).count("WATCHDOG=1") >= 2
    finally:
        mine.stop()
    assert _receive(notify_socket, 0.3) == []  # stopped: no more pings


def test_beats_name_the_stale_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(sdnotify, "time", SimpleNamespace(monotonic=lambda: now[0]))
    beats = Beats()
    assert beats.stale(20.0) is None  # no loop has started yet
    beats.beat("control")
    beats.beat("inference")
    now[0] += 15.0
    beats.beat("inference")
    assert beats.stale(20.0) is None
    now[0] += 10.0
    assert beats.stale(20.0) == "control loop silent for 25.0 s (limit 20 s)"
    beats.beat("control", allow_s=300.0)  # about to load models
    now[0] += 10.0
    assert beats.stale(20.0) is None
    now[0] += 20.0
    assert beats.stale(20.0) == "inference loop silent for 40.0 s (limit 20 s)"
    beats.beat("inference")
    assert beats.stale(20.0) is None
    now[0] += 300.0
    assert beats.stale(20.0) == "control loop silent for 330.0 s (limit 300 s)"
