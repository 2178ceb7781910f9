"""The overload fields of heartbeats, assignments and routes (issue 20): they round trip, old
payloads without them still decode, and a forged ``max_fps`` is refused by the codec."""

from __future__ import annotations

import math

import orjson
import pytest

from faillite import messages as m


def _assignment(max_fps: float | None) -> m.Assignment:
    return m.Assignment(
        worker="w1",
        term=1,
        generation=2,
        ts=1.0,
        serve=(m.Serve("a1", "cam1", "efficientnet_lite0", max_fps=max_fps),),
        hot=(m.Serve("a2", "cam2", "efficientnet_lite0", max_fps=max_fps),),
    )


@pytest.mark.parametrize("max_fps", [None, 0.5, 2.5, 30.0, m.MAX_FPS])
def test_assignment_max_fps_round_trips(max_fps: float | None) -> None:
    a = _assignment(max_fps)
    back = m.decode(m.Assignment, m.encode(a))
    assert back == a
    assert back.serve[0].max_fps == max_fps and back.hot[0].max_fps == max_fps


def test_an_integer_max_fps_is_a_rate_too() -> None:
    body = orjson.loads(m.encode(_assignment(None)))
    body["serve"][0]["max_fps"] = 5
    assert m.decode(m.Assignment, orjson.dumps(body)).serve[0].max_fps == 5.0


def test_an_assignment_without_max_fps_serves_every_frame() -> None:
    old = (
        b'{"v": 1, "worker": "w1", "term": 1, "generation": 1, "ts": 0,'
        b' "serve": [{"app": "a1", "sensor": "cam1", "variant": "x"}]}'
    )
    assert m.decode(m.Assignment, old).serve[0].max_fps is None


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"0", "zero (a division by zero downstream)"),
        (b"-1", "negative"),
        (b"-0.0", "negative zero"),
        (b"1000.001", "above the cap"),
        (b"1e308", "huge"),
        (b"1e400", "infinite"),
        (b"NaN", "not a number"),
        (b"Infinity", "infinite, spelled out"),
        (b'"5"', "a string"),
        (b"true", "a boolean"),
        (b"[5]", "a list"),
    ],
)
def test_a_forged_max_fps_is_refused(raw: bytes, why: str) -> None:
    good = m.encode(_assignment(5.0))
    assert b'"max_fps":5.0' in good
    for field in ("serve", "hot"):
        body = orjson.loads(good)
        body[field][0]["max_fps"] = "@"
        payload = orjson.dumps(body).replace(b'"@"', raw)
        with pytest.raises(m.MessageError) as info:
            m.decode(m.Assignment, payload)
        assert info.value.reason in ("invalid_fields", "malformed_json"), why


def test_a_nan_rate_cannot_be_written_either() -> None:
    # orjson writes a float NaN as null: a coordinator bug sheds nothing, it never breaks a worker.
    body = orjson.loads(m.encode(_assignment(math.nan)))
    assert body["serve"][0]["max_fps"] is None


def test_heartbeat_overload_fields_round_trip() -> None:
    hb = m.Heartbeat(
        "w1",
        "i1",
        3,
        1.0,
        loading=("efficientnet_lite1",),
        loading_s=0.42,
        cpu_load=1.75,
        apps={"a1": m.AppStats(10, 8, 1, latency_ms=40.0, infer_ms=12.5, shed=6)},
    )
    wire = orjson.loads(m.encode(hb))
    assert wire["loading"] == ["efficientnet_lite1"]
    assert (wire["loading_s"], wire["cpu_load"]) == (0.42, 1.75)
    assert (wire["apps"]["a1"]["infer_ms"], wire["apps"]["a1"]["shed"]) == (12.5, 6)
    assert m.decode(m.Heartbeat, m.encode(hb)) == hb


def test_an_old_heartbeat_decodes_with_the_defaults() -> None:
    old = (
        b'{"worker": "w1", "incarnation": "i", "seq": 1, "ts": 1.0, "v": 1,'
        b' "apps": {"a1": {"received": 3, "processed": 3, "dropped": 0, "latency_ms": 9.0}}}'
    )
    hb = m.decode(m.Heartbeat, old)
    assert (hb.loading, hb.loading_s, hb.cpu_load) == ((), 0.0, 0.0)
    assert (hb.apps["a1"].infer_ms, hb.apps["a1"].shed) == (0.0, 0)


@pytest.mark.parametrize(
    "changes",
    [
        {"apps": {"a1": {"shed": -1}}},
        {"apps": {"a1": {"shed": 1.5}}},
        {"apps": {"a1": {"shed": m.MAX_COUNT + 1}}},
        {"apps": {"a1": {"infer_ms": "3"}}},
        {"loading": ["v"] * (m.MAX_ITEMS + 1)},
        {"loading": ["v" * 200]},
        {"loading_s": "1"},
        {"cpu_load": None},
    ],
)
def test_forged_heartbeat_overload_fields_are_refused(changes: dict[str, object]) -> None:
    body = orjson.loads(m.encode(m.Heartbeat("w1", "i1", 3, 1.0)))
    body.update(changes)
    with pytest.raises(m.InvalidMessageError):
        m.decode(m.Heartbeat, orjson.dumps(body))


def test_shed_is_a_route_state() -> None:
    r = m.Route("a1", "", "", 3, 9, 1.0, state="shed")
    assert m.decode(m.Route, m.encode(r)) == r
    body = orjson.loads(m.encode(r))
    body["state"] = "paused"  # still not a state
    with pytest.raises(m.InvalidMessageError):
        m.decode(m.Route, orjson.dumps(body))
