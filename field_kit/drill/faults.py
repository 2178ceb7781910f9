"""The drills' faults, as a worker plug-in: ``faillite worker --plugin field_kit.drill.faults``
(``--fault-injection`` is the same). Nothing of it is in the worker's serving path otherwise.

Signals toggle the faults (the first two act on the inference thread, before each frame):

- SIGUSR1: a hung inference thread (it holds its frame and serves nothing) while heartbeats
  keep flowing: a gray failure the progress detector must catch.
- SIGUSR2: 0.5 s more per frame: an SLO violation (the SLOW_WORKER case).
- SIGRTMIN: slow model loads: every load the worker makes takes ``FAILLITE_DRILL_SLOW_LOAD_S``
  (default 3 s) longer (the SLOW_LOAD case), spent working the CPU off the GIL, as a runtime
  optimizing a graph or building an engine does (``FAILLITE_DRILL_SLOW_LOAD_MODE=sleep``: idle
  instead, as reading a slow SD card). With ``FAILLITE_DRILL_SLOW_LOAD_S`` set in its
  environment, a worker loads slowly from its first load on (the signal still toggles).

Slow loads have no hook in the plug-in host (:class:`workers.plugins.PluginHost` offers frame
interceptors only): this plug-in reaches ``worker.models.backend`` (the real
:class:`workers.service.Worker` is what ``install`` gets) and wraps that backend's ``load``.
The delay runs on the control thread, which loads: it holds no lock of the worker and not the
GIL, as ONNX Runtime's own session creation does not (measured: another thread of the process
keeps running through it; a load that blocked the whole process would be a freeze, which
SIGSTOP_WORKER drills). If a worker has no ``models.backend`` to wrap, the
plug-in logs ``slow_load_unavailable`` and the signal does nothing.

(SIGSTOP_WORKER and FLAPPING_WORKER freeze the whole process with SIGSTOP / SIGCONT; they need
no plug-in, only workers started the same way.)

A second signal of the same kind clears its fault.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faillite.log import get_logger

if TYPE_CHECKING:
    from workers.frame_queue import QueuedFrame
    from workers.plugins import PluginHost

log = get_logger("fault")
SLOW_S = 0.5
HANG_POLL_S = 0.05
SLOW_LOAD_S = 3.0  # what a slow load adds, unless the environment says otherwise
SLOW_LOAD_ENV = "FAILLITE_DRILL_SLOW_LOAD_S"
SLOW_LOAD_MODE_ENV = "FAILLITE_DRILL_SLOW_LOAD_MODE"  # cpu (default) or sleep
SLOW_LOAD_SIGNAL = signal.SIGRTMIN


class Faults:
    """The frame interceptor: blocks while hung, waits ``slow_s`` per frame when slow."""

    def __init__(self, slow_load_s: float = SLOW_LOAD_S, slow_load_mode: str = "cpu") -> None:
        self.hang = threading.Event()
        self.slow_s = 0.0
        self.slow_load_s = slow_load_s  # what a slow load adds
        self.load_delay_s = 0.0  # what each load adds now (0: slow loads off)
        self.slow_load_mode = slow_load_mode  # "cpu": busy off the GIL; "sleep": idle

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

    def toggle_slow_load(self) -> None:
        self.load_delay_s = 0.0 if self.load_delay_s else self.slow_load_s
        log.warning("fault_injected", fault="slow_load", delay_s=self.load_delay_s)

    def delay_load(self, variant: str) -> None:
        """On the control thread, before a model load, while slow loads are on: work the CPU
        for ``load_delay_s`` (or sleep, :attr:`slow_load_mode`)."""
        d = self.load_delay_s
        if d <= 0:
            return
        log.warning("fault_slow_load", variant=variant, delay_s=d, mode=self.slow_load_mode)
        if self.slow_load_mode == "sleep":
            time.sleep(d)
            return
        # CPU work with the GIL released (hashlib lets go of it for large buffers), as a
        # runtime's own graph optimization or engine build is: the inference thread keeps
        # running, on whatever CPU the board leaves this process.
        buf = bytes(1 << 20)
        deadline = time.monotonic() + d
        while time.monotonic() < deadline:
            hashlib.sha256(buf).digest()


def _slow_load_env() -> float | None:
    raw = os.environ.get(SLOW_LOAD_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        log.warning("slow_load_env_ignored", value=raw)
        return None
    return value if value > 0 else None


def wrap_loads(worker: object, faults: Faults) -> bool:
    """Make every model load of ``worker`` (its ``models.backend.load``) wait
    :meth:`Faults.delay_load` first; False (logged) if it has no such backend."""
    backend = getattr(getattr(worker, "models", None), "backend", None)
    real = getattr(backend, "load", None)
    if backend is None or not callable(real):
        log.warning("slow_load_unavailable", reason="the worker has no models.backend.load")
        return False

    def load(variant: str, path: Path) -> Any:
        faults.delay_load(variant)
        return real(variant, path)

    setattr(backend, "load", load)  # noqa: B010 - an instance attribute over the method
    return True


def install(worker: PluginHost) -> Faults:
    """Add the faults to ``worker``'s inference path and their signals (main thread only)."""
    env_s = _slow_load_env()
    mode = "sleep" if os.environ.get(SLOW_LOAD_MODE_ENV, "").strip() == "sleep" else "cpu"
    faults = Faults(env_s if env_s is not None else SLOW_LOAD_S, mode)
    worker.interceptors.append(faults)
    can_slow_load = wrap_loads(worker, faults)
    if can_slow_load and env_s is not None:
        faults.load_delay_s = env_s

    def hang(_signum: int, _frame: Any) -> None:
        faults.toggle_hang()

    def slow(_signum: int, _frame: Any) -> None:
        faults.toggle_slow()

    def slow_load(_signum: int, _frame: Any) -> None:
        if can_slow_load:
            faults.toggle_slow_load()

    signal.signal(signal.SIGUSR1, hang)
    signal.signal(signal.SIGUSR2, slow)
    signal.signal(SLOW_LOAD_SIGNAL, slow_load)
    return faults
