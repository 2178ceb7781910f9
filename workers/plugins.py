"""The worker's plug-in point: modules loaded by name (``faillite worker --plugin MODULE``)
that hook into the inference path. None is loaded unless asked for; production runs none.

A plug-in module has ``install(worker)``; it may append frame interceptors to
``worker.interceptors``. An interceptor is called on the inference thread with each frame
taken from the queues, before the frame is served, and may block (the worker counts as busy
meanwhile): the drills' faults (``field_kit.drill.faults``) hang or slow inference this way. It
must return promptly once ``stopping`` is set.
"""

from __future__ import annotations

import importlib
import threading
from typing import Protocol

from workers.frame_queue import QueuedFrame


class FrameInterceptor(Protocol):
    def __call__(self, frame: QueuedFrame, stopping: threading.Event) -> None: ...


class PluginHost(Protocol):
    """What a plug-in's ``install`` gets: the worker, as far as plug-ins may touch it."""

    @property
    def interceptors(self) -> list[FrameInterceptor]: ...


class PluginError(RuntimeError):
    """A plug-in that cannot be loaded."""


def load_plugin(module: str, host: PluginHost) -> None:
    """Import ``module`` and call its ``install(host)``; must run on the main thread (a
    plug-in may install signal handlers)."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise PluginError(f"plug-in {module!r} cannot be imported: {exc}") from exc
    install = getattr(mod, "install", None)
    if not callable(install):
        raise PluginError(f"plug-in {module!r} has no install(worker) function")
    install(host)
