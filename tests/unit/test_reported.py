"""Which events to believe: the topic says who reported one, and its role what it may report."""

from __future__ import annotations

import pytest

from faillite import messages
from faillite.reported import KINDS, refusal
from faillite.topics import Role, Topics

T = Topics("demo")


def _ev(kind: str, source: str, worker: str = "") -> messages.Event:
    return messages.Event(kind, 1795459200.0, source, worker)


@pytest.mark.parametrize(
    ("topic", "event", "retained", "why"),
    [
        (T.events_of(Role.COORDINATOR, "c1"), _ev("failover", "coordinator/c1", "w1"), False, None),
        (T.events_of(Role.WORKER, "w1"), _ev("model_loaded", "worker/w1", "w1"), False, None),
        (T.events_of(Role.WORKER, "w1"), _ev("model_loaded", "worker/w1"), False, None),
        # Retained for later readers: never news.
        (
            T.events_of(Role.COORDINATOR, "c1"),
            _ev("failover", "coordinator/c1"),
            True,
            "event_retained",
        ),
        # In another's name, on its own topic.
        (
            T.events_of(Role.WORKER, "w3"),
            _ev("failover", "coordinator/c1", "w1"),
            False,
            "event_wrong_source",
        ),
        (
            T.events_of(Role.WORKER, "w3"),
            _ev("model_loaded", "worker/w1", "w1"),
            False,
            "event_wrong_source",
        ),
        # Under its own name, about another worker, or what only a coordinator reports.
        (
            T.events_of(Role.WORKER, "w3"),
            _ev("serve_stopped", "worker/w3", "w1"),
            False,
            "event_about_another",
        ),
        (
            T.events_of(Role.WORKER, "w3"),
            _ev("failover", "worker/w3", "w3"),
            False,
            "event_kind_not_its_role",
        ),
        (
            T.events_of(Role.SENSOR, "cam1"),
            _ev("model_loaded", "sensor/cam1"),
            False,
            "event_kind_not_its_role",
        ),
        # Not an events topic at all.
        (T.coordinator_status, _ev("failover", "coordinator/c1"), False, "event_wrong_source"),
    ],
)
def test_refusal(topic: str, event: messages.Event, retained: bool, why: str | None) -> None:
    assert refusal(topic, event, retained=retained) == why


def test_every_kind_a_worker_emits_is_one_it_may_report() -> None:
    """The workers' event kinds, read from their code: a new kind must be added to KINDS."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "workers"
    emitted: set[str] = set()
    for path in root.glob("*.py"):
        text = path.read_text()
        emitted |= set(re.findall(r"(?:_emit|_event)\(\s*\"([a-z_]+)\"", text))
        emitted |= set(re.findall(r"\"(missing_model)\"", text))
    assert emitted and emitted <= KINDS[Role.WORKER.value], emitted - KINDS[Role.WORKER.value]
