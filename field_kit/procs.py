"""Child processes of a local mesh: start with logs, watch, stop in order, never leak.

Children get their own session (a terminal Ctrl-C reaches only the parent, which then stops
them in order: sensors, workers, coordinator, broker) and, on Linux, a parent-death signal so a
``kill -9`` of the parent does not leave orphans holding ports.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

from faillite.compat import python_module
from faillite.log import get_logger

T = TypeVar("T")

log = get_logger("procs")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _stacks(pid: int) -> str:
    """Every thread's stack of a process that would not stop (py-spy, where installed)."""
    spy = shutil.which("py-spy")
    if spy is None:
        return "py-spy not installed"
    try:
        out = subprocess.run(
            [spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"py-spy failed: {exc}"
    return out.stdout or out.stderr


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], T], timeout: float, step: float = 0.05) -> T | None:
    """Poll ``cond`` until it returns something true (returned) or ``timeout`` passes (its
    last value, false, or None if it never ran)."""
    deadline = time.monotonic() + timeout
    value: T | None = None
    while True:
        value = cond()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def wait_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def faillite_cmd(*args: str) -> list[str]:
    """The ``faillite`` command in a child process, with the installed packages only.

    ``-P``: the working folder is not put on ``sys.path``, so a child started from a checkout's
    root runs what is installed, never the checkout's folders of the same names."""
    return [*python_module("faillite"), *args]


@dataclass
class Child:
    name: str
    role: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    log_path: Path | None
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


class ProcessGroup:
    """The processes of one local mesh, stopped in reverse role order."""

    STOP_ORDER = ("sensor", "worker", "coordinator", "broker")

    def __init__(self, logs_dir: Path | None, env: dict[str, str] | None = None) -> None:
        self.logs_dir = logs_dir
        if logs_dir is not None:
            logs_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **(env or {})}
        self.children: list[Child] = []

    def start(
        self, name: str, role: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> Child:
        """``env``: this child's environment (default: the group's)."""
        log_path = self.logs_dir / f"{name}.log" if self.logs_dir is not None else None
        out: IO[bytes] | int = log_path.open("wb") if log_path else subprocess.DEVNULL
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        child = Child(
            name, role, list(argv), proc, log_path, out if not isinstance(out, int) else None
        )
        self.children.append(child)
        log.debug("process_started", name=name, pid=proc.pid)
        return child

    def dead(self) -> list[Child]:
        return [c for c in self.children if not c.alive()]

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        for c in self.children:
            if c.name == name:
                return self._stop_one(c, sig, timeout)
        raise KeyError(name)

    def _stop_one(self, c: Child, sig: int, timeout: float, *, send: bool = True) -> int | None:
        if c.alive():
            if send:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(c.pid, sig)
            try:
                c.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("process_kill", name=c.name, pid=c.pid, stacks=_stacks(c.pid))
                c.proc.kill()
                c.proc.wait(5)
        if c._log_file is not None:
            c._log_file.close()
            c._log_file = None
        return c.proc.returncode

    def stop_all(self, timeout: float = 10.0) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for role in self.STOP_ORDER:
            group = [c for c in self.children if c.role == role]
            for c in group:
                if c.alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(c.pid, signal.SIGTERM)
            for c in group:  # signalled above: a second SIGTERM could hit its shutdown
                codes[c.name] = self._stop_one(c, signal.SIGTERM, timeout, send=False)
        for c in self.children:
            if c.name not in codes:
                codes[c.name] = self._stop_one(c, signal.SIGTERM, timeout)
        return codes

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop_all()
