"""CPU hogs shaped like a board's other services, for drills and benchmarks.

With the kernel's autogroup scheduling, processes of one session share one CPU slice: eight hogs
started from one shell barely touch a mesh, while four hogs each in its own session (as systemd
services are, each in its own cgroup) take most of a 2-core board. So every hog here is its own
session (``start_new_session``), at normal priority, and dies with its parent.

    with Hogs(count=os.cpu_count() or 1):
        ...  # the board is busy
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from types import TracebackType

from field_kit.procs import _die_with_parent as die_with_parent

# A busy loop in a fresh interpreter: no imports of the project, nothing to clean up.
_SPIN = "while True:\n    pass\n"


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Hogs:
    """``count`` busy-loop processes, each in its own session; stopped by :meth:`stop` or on
    leaving the ``with`` block. ``count`` may change while running (:meth:`resize`)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> Hogs:
        self.resize(self.count)
        return self

    def resize(self, count: int) -> None:
        """Run exactly ``count`` hogs (start more, or stop the newest)."""
        self.count = max(0, count)
        while len(self.procs) < self.count:
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-I", "-c", _SPIN],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,  # its own autogroup, as a service would be
                    preexec_fn=die_with_parent,
                )
            )
        while len(self.procs) > self.count:
            self._kill(self.procs.pop())

    @staticmethod
    def _kill(p: subprocess.Popen[bytes]) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        p.wait()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        self.resize(0)

    def __enter__(self) -> Hogs:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
