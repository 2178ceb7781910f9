"""Which events to believe: an event is what its source says happened, nothing more.

Each process reports on ``events/{role}/{id}``, which the broker lets only that identity write
(:data:`faillite.topics.EVENTS`). A reader believes an event only when (the reason counted
otherwise):

- it is live: an event is news, and one retained for later readers is refused
  (``event_retained``);
- its ``source`` is its topic's (``event_wrong_source``): a worker cannot report in a
  coordinator's name;
- a device reports only about itself (``event_about_another``) and only what its role does
  (``event_kind_not_its_role``): a worker loads, serves and quarantines; failovers, failures
  and plans are a coordinator's to report.
"""

from __future__ import annotations

from typing import Final

from faillite import messages
from faillite.topics import Role, event_source

# What each device role reports; a coordinator reports any kind.
KINDS: Final[dict[str, frozenset[str]]] = {
    Role.WORKER.value: frozenset(
        {
            "model_loaded",
            "model_unloaded",
            "model_unknown",
            "missing_model",
            "model_load_failed",
            "assignment_applied",
            "serve_stopped",
            "hot_promoted",
            "stream_quarantined",
        }
    ),
    Role.SENSOR.value: frozenset(),
}


def refusal(topic: str, ev: messages.Event, *, retained: bool = False) -> str | None:
    """Why the event on ``topic`` is not to be believed, or None."""
    if retained:
        return "event_retained"
    source = event_source(topic)
    if source is None or ev.source != source:
        return "event_wrong_source"
    role, ident = source.split("/", 1)
    kinds = KINDS.get(role)
    if kinds is None:
        return None
    if ev.worker not in ("", ident):
        return "event_about_another"
    if ev.kind not in kinds:
        return "event_kind_not_its_role"
    return None
