"""Structured logging: one JSON event per line on stderr, with the process's ids bound.

Every role calls :func:`configure` once at start with its ids (mesh, role, worker, incarnation);
modules get loggers with :func:`get_logger` and add app / sensor ids per event.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import logging
import os
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog

_configured = False
# Process-wide ids. Not contextvars: threads (network, inference) start with an empty context.
_ids: dict[str, Any] = {}


def _add_ids(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in _ids.items():
        event.setdefault(key, value)
    return event


class _LineWriter:
    """Writes one event per line, and nothing once the interpreter is shutting down.

    A daemon thread (network, planner) that writes to stderr while the interpreter finalizes can
    hold the stream's buffer lock; Python then aborts the process ("could not acquire lock ...
    at interpreter shutdown", SIGABRT). At exit this takes the write lock for good instead.
    """

    lock = threading.Lock()
    closed = False

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        with _LineWriter.lock:
            if _LineWriter.closed:
                return
            self._stream.write(message + "\n")
            self._stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg

    @staticmethod
    def close() -> None:
        _LineWriter.lock.acquire()  # never released: later writers (daemon threads) wait
        _LineWriter.closed = True
        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                s.flush()


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


def configure(
    *,
    level: str | None = None,
    fmt: str | None = None,
    stream: TextIO | None = None,
    **ids: Any,
) -> None:
    """Set up structlog for this process and bind ``ids`` to every event.

    ``fmt`` is ``json`` (default; one object per line) or ``console`` (coloured, for people).
    Env vars ``FAILLITE_LOG_LEVEL`` and ``FAILLITE_LOG_FORMAT`` set the defaults.
    """
    global _configured
    level = (level or os.environ.get("FAILLITE_LOG_LEVEL", "info")).upper()
    fmt = fmt or os.environ.get("FAILLITE_LOG_FORMAT", "json")
    stream = stream or sys.stderr
    # A known level's name maps to its number (Python 3.10 has no getLevelNamesMapping).
    named = logging.getLevelName(level)
    numeric = named if isinstance(named, int) else logging.INFO
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_ids,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_args: _LineWriter(stream),
        cache_logger_on_first_use=False,
    )
    _ids.clear()
    _ids.update({k: v for k, v in ids.items() if v is not None})
    # Libraries that use stdlib logging (amqtt, paho, asyncio) go through the same level and
    # come out as the same JSON lines, with this process's ids and the library's name.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                _add_ids,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), handlers=[handler], force=True)
    if not _configured:
        atexit.register(_LineWriter.close)
        # A native abort or segfault (solver, ONNX Runtime) prints every thread's stack.
        if not faulthandler.is_enabled():
            faulthandler.enable(all_threads=True)
    _configured = True


def bind(**ids: Any) -> None:
    """Add ids (e.g. an incarnation learnt after start) to every later event of this process."""
    _ids.update({k: v for k, v in ids.items() if v is not None})


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    if not _configured:
        configure()
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(component=name)
    return logger
