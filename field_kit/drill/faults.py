"""The drills' faults, as a worker plug-in: ``faillite worker --plugin field_kit.drill.faults``
(``--fault-injection`` is the same). Nothing of it is in the worker's serving path otherwise.

Signals toggle the faults on the worker's inference thread, before each frame is served:

- SIGUSR1: a hung inference thread (it holds its frame and serves nothing) while heartbeats
  keep flowing: a gray failure the progress detector must catch.
- SIGUSR2: 0.5 s more per frame: an SLO violation (the SLOW_WORKER case).

(SIGSTOP_WORKER and FLAPPING_WORKER freeze the whole process with SIGSTOP / SIGCONT; they need
no plug-in, only workers started the same way.)

A second signal of the same kind clears its fault.
"""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Any

from faillite.log import get_logger

if TYPE_CHECKING:
    from workers.frame_queue import QueuedFrame
    from workers.plugins import PluginHost

log = get_logger("fault")
SLOW_S = 0.5
HANG_POLL_S = 0.05


class Faults:
    """The frame interceptor: blocks while hung, waits ``slow_s`` per frame when slow."""

    def __init__(self) -> None:
        self.hang = threading.Event()
        self.slow_s = 0.0

    def __call__(self, frame: QueuedFrame, stopping: threading.Event) -> None:
        while self.hang.is_set() and not stopping.is_set():
            stopping.wait(HANG_POLL_S)
        if self.slow_s:
            stopping.wait(self.slow_s)

    def toggle_hang(self) -> None:
        if self.hang.is_set():
            self.hang.clear()
        else:
            self.hang.set()
        log.warning("fault_injected", fault="hang", active=self.hang.is_set())

    def toggle_slow(self) -> None:
        self.slow_s = 0.0 if self.slow_s else SLOW_S
        log.warning("fault_injected", fault="slow", delay_s=self.slow_s)


def install(worker: PluginHost) -> Faults:
    """Add the faults to ``worker``'s inference path and their signals (main thread only)."""
    faults = Faults()
    worker.interceptors.append(faults)

    def hang(_signum: int, _frame: Any) -> None:
        faults.toggle_hang()

    def slow(_signum: int, _frame: Any) -> None:
        faults.toggle_slow()

    signal.signal(signal.SIGUSR1, hang)
    signal.signal(signal.SIGUSR2, slow)
    return faults
