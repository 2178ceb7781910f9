"""Structured logging: one JSON event per line on stderr, with the process's ids bound.

Every role calls :func:`configure` once at start with its ids (mesh, role, worker, incarnation);
modules get loggers with :func:`get_logger` and add app / sensor ids per event.
"""

from __future__ import annotations

import logging
import os
import sys
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
    numeric = logging.getLevelNamesMapping().get(level, logging.INFO)
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
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    _ids.clear()
    _ids.update({k: v for k, v in ids.items() if v is not None})
    # Libraries that use stdlib logging (amqtt, paho) go through the same level.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=stream, force=True)
    _configured = True


def bind(**ids: Any) -> None:
    """Add ids (e.g. an incarnation learnt after start) to every later event of this process."""
    _ids.update({k: v for k, v in ids.items() if v is not None})


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    if not _configured:
        configure()
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(component=name)
    return logger
