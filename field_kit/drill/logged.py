"""What the coordinators' logs add to a recording: every event a coordinator publishes it
also logs, with the same fields, and the recorder misses what is published (QoS 0) while the
broker is going down; a verdict then is still a verdict."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from faillite import messages
from field_kit.drill.mesh import COORDINATORS

# Verdicts a drill checks, and so reads from the logs too.
VERDICTS = frozenset({"failure_detected", "failover"})

SAME_EVENT_S = 0.5  # a logged event this close to a recorded one of its kind is that one


def merge_events(
    recorded: Sequence[messages.Event], logged: Sequence[messages.Event]
) -> list[messages.Event]:
    """``recorded`` and each of ``logged`` that matches no recorded event (kind, worker, app,
    within :data:`SAME_EVENT_S`), by time."""
    missed = [
        e
        for e in logged
        if not any(
            r.kind == e.kind
            and r.worker == e.worker
            and r.app == e.app
            and abs(r.ts - e.ts) <= SAME_EVENT_S
            for r in recorded
        )
    ]
    return sorted([*recorded, *missed], key=lambda e: e.ts)


LOG_CONTEXT = frozenset(
    {"mesh", "role", "coordinator", "incarnation", "level", "timestamp", "component", "event"}
)


def events_from_logs(
    docs: Iterable[tuple[float, str, dict[str, Any]]], kinds: Iterable[str]
) -> list[messages.Event]:
    """The events of ``kinds`` among log lines (ts, process, decoded line): a coordinator
    logs every event it publishes, with the same fields."""
    wanted = set(kinds)
    out = []
    for ts, proc, doc in docs:
        kind = doc.get("event")
        if kind not in wanted:
            continue
        detail = {k: v for k, v in doc.items() if k not in LOG_CONTEXT | {"worker", "app"}}
        out.append(
            messages.Event(
                str(kind),
                ts,
                f"log:{proc}",
                str(doc.get("worker") or ""),
                str(doc.get("app") or ""),
                detail,
            )
        )
    return out


def log_docs(
    logs_dir: Path | None, procs: Sequence[str] = COORDINATORS
) -> list[tuple[float, str, dict[str, Any]]]:
    """Every JSON line of the logs of ``procs`` (every incarnation: c1-1, c1-2...): (its wall
    time, the process, the line)."""
    if logs_dir is None:
        return []
    out = []
    for path in sorted(p for proc in procs for p in logs_dir.glob(f"{proc}-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                doc = json.loads(line)
                stamp = datetime.fromisoformat(str(doc["timestamp"]).replace("Z", "+00:00"))
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(doc, dict):
                out.append((stamp.timestamp(), path.stem, doc))
    return out


def coordinator_events(
    logs_dir: Path | None, kinds: Iterable[str] = VERDICTS
) -> list[messages.Event]:
    """The events of ``kinds`` the coordinators logged (every incarnation)."""
    return events_from_logs(log_docs(logs_dir), kinds)
