"""Message codec: round trips, and every kind of bad payload gets a clear, typed error."""

from __future__ import annotations

import orjson
import pytest

from faillite import messages as m


def _assignment() -> m.Assignment:
    return m.Assignment(
        worker="w1",
        term=2,
        generation=5,
        ts=1.5,
        serve=(m.Serve("a1", "cam1", "efficientnet_lite0"),),
        warm=("x",),
    )


def test_round_trip_keeps_nested_types() -> None:
    a = _assignment()
    b = m.decode(m.Assignment, m.encode(a))
    assert b == a
    assert isinstance(b.serve[0], m.Serve)
    assert b.version() == (2, 5)


def test_payload_carries_schema_version() -> None:
    assert orjson.loads(m.encode(_assignment()))["v"] == m.SCHEMA_VERSION


def test_messages_are_frozen() -> None:
    a = _assignment()
    with pytest.raises(AttributeError):
        a.term = 9  # type: ignore[misc]


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"{not json", m.MalformedJSONError),
        (b"", m.MalformedJSONError),
        (b"\xff\xfe", m.MalformedJSONError),
        (b"[1, 2]", m.InvalidMessageError),
        (b'{"worker": "w1", "term": 1, "generation": 1, "ts": 0}', m.UnknownSchemaVersionError),
        (
            b'{"v": 99, "worker": "w1", "term": 1, "generation": 1, "ts": 0}',
            m.UnknownSchemaVersionError,
        ),
        (b'{"v": 1, "worker": "w1", "generation": 1, "ts": 0}', m.InvalidMessageError),
        (
            b'{"v": 1, "worker": "w1", "term": "three", "generation": 1, "ts": 0}',
            m.InvalidMessageError,
        ),
        (
            b'{"v": 1, "worker": "w1", "term": 1, "generation": 1, "ts": 0, "serve": [{"app": 1}]}',
            m.InvalidMessageError,
        ),
    ],
)
def test_bad_payloads_raise_typed_errors(payload: bytes, error: type[m.MessageError]) -> None:
    with pytest.raises(error) as info:
        m.decode(m.Assignment, payload)
    assert "Assignment" in str(info.value)
    assert info.value.reason != "invalid"


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    raw = orjson.loads(m.encode(_assignment()))
    raw["added_in_a_later_minor"] = {"x": 1}
    assert m.decode(m.Assignment, orjson.dumps(raw)) == _assignment()


def test_every_message_type_round_trips_with_defaults() -> None:
    samples = [
        m.SensorStatus("s", "online", "i", 1.0),
        m.WorkerStatus("w", "i", "offline", 1.0, reason="lost"),
        m.Heartbeat("w", "i", 3, 1.0, apps={"a": m.AppStats(1, 1, 0, 2.5)}),
        m.WorkerProfile("w", "cpu", "here", 1.0, (m.VariantCost("v", 2.5, 100.0),)),
        _assignment(),
        m.Result(
            "a",
            1,
            "s",
            1.0,
            2.0,
            "w",
            "i",
            "v",
            1,
            m.Latency(1, 2, 3, 4, 5),
            (m.Label(1, "x", 0.5),),
        ),
        m.Route("a", "w", "v", 1, 1, 1.0),
        m.CoordinatorStatus("c", "i", "leader", 1, 1.0),
        m.CoordinatorBeat("c", "i", 1, 7, 1.0),
        m.Placement(1, 1, 1.0, (m.PlacementEntry("a", "w", "v", "primary"),)),
        m.Event("k", 1.0, "src", detail={"n": 1}),
    ]
    assert {type(s).SCHEMA for s in samples} == set(m.MESSAGE_TYPES)
    for s in samples:
        assert m.decode(type(s), m.encode(s)) == s


def _hb(**changes: object) -> bytes:
    body = orjson.loads(m.encode(m.Heartbeat(worker="w1", incarnation="i1", seq=3, ts=1.0)))
    body.update(changes)
    return orjson.dumps(body)


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"v": [1]}, "a list as the schema version"),
        ({"v": {"x": 1}}, "an object as the schema version"),
        ({"seq": "4"}, "a string for an integer"),
        ({"seq": 4.5}, "a fraction for an integer"),
        ({"seq": True}, "a boolean for an integer"),
        ({"seq": -1}, "a negative counter"),
        ({"seq": 2**63 - 1}, "a sequence number that would freeze the detector"),
        ({"generation": 2**62}, "a generation beyond the exact range"),
        ({"worker": "w" * 200}, "an id longer than any topic level"),
        ({"loaded": ["v"] * (m.MAX_ITEMS + 1)}, "a list longer than a mesh has"),
        ({"errors": {f"r{i}": 1 for i in range(m.MAX_ITEMS + 1)}}, "a map longer than a mesh has"),
        ({"apps": {"a1": {"received": "1"}}}, "a wrong type one level down"),
    ],
)
def test_crafted_values_get_the_documented_error(changes: dict[str, object], why: str) -> None:
    with pytest.raises(m.MessageError) as info:
        m.decode(m.Heartbeat, _hb(**changes))
    assert info.value.reason in ("invalid_fields", "unknown_schema_version"), why


def test_a_term_a_successor_cannot_overflow() -> None:
    a = orjson.loads(m.encode(_assignment()))
    a["term"] = m.MAX_COUNT
    assert m.decode(m.Assignment, orjson.dumps(a)).term == m.MAX_COUNT
    a["term"] = m.MAX_COUNT + 1
    with pytest.raises(m.InvalidMessageError):
        m.decode(m.Assignment, orjson.dumps(a))
    a["term"] = 2**64 - 1  # a retained term that crashed every successor on start
    with pytest.raises(m.InvalidMessageError):
        m.decode(m.Assignment, orjson.dumps(a))


@pytest.mark.parametrize(
    "cost",
    [
        {"variant": "v", "latency_ms": 0, "memory_mb": 1},  # free: would attract every app
        {"variant": "v", "latency_ms": -1, "memory_mb": 1},
        {"variant": "v", "latency_ms": 1, "memory_mb": 1e300},
        {"variant": "v", "latency_ms": 1, "memory_mb": 1, "load_ms": -5},
    ],
)
def test_a_crafted_profile_cost_is_refused(cost: dict[str, object]) -> None:
    raw = {"worker": "w", "device_class": "cpu", "source": "x", "ts": 1.0, "costs": [cost], "v": 1}
    with pytest.raises(m.InvalidMessageError):
        m.decode(m.WorkerProfile, orjson.dumps(raw))


def test_a_profile_with_no_costs_is_refused() -> None:
    raw = {"worker": "w", "device_class": "cpu", "source": "x", "ts": 1.0, "costs": [], "v": 1}
    with pytest.raises(m.InvalidMessageError):
        m.decode(m.WorkerProfile, orjson.dumps(raw))
