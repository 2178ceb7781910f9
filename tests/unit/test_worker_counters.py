"""Progress counters and the heartbeat message: counters mean what their names say."""

from __future__ import annotations

import orjson

from faillite import messages
from workers.counters import Counters


def _heartbeat(c: Counters, apps: tuple[str, ...] = ("a1",), **kw: object) -> messages.Heartbeat:
    args: dict[str, object] = {
        "worker": "w1",
        "incarnation": "inc",
        "seq": 1,
        "apps": apps,
        "dropped": {},
        "queue_depth": 0,
        "rss_mb": 10.0,
        "loaded": ("efficientnet_lite0",),
        "generation": 3,
        "errors": {},
    }
    args.update(kw)
    return c.heartbeat(**args)  # type: ignore[arg-type]


def test_an_idle_worker_has_no_last_progress() -> None:
    c = Counters()
    beat = _heartbeat(c)
    assert (beat.frames_received, beat.frames_processed, beat.results_published) == (0, 0, 0)
    payload = messages.encode(beat)
    assert orjson.loads(payload)["last_progress_ts"] is None  # not a fake 1970 time
    back = messages.decode(messages.Heartbeat, payload)  # still decodes (the coordinator's view)
    assert back.frames_processed == 0 and back.apps["a1"] == messages.AppStats()


def test_progress_is_the_time_of_the_last_processed_frame() -> None:
    c = Counters()
    for _ in range(3):
        c.received("a1")
    c.received("a2")
    c.processed("a1", total_ms=10.0, ts=1000.5, published=True)
    c.processed("a1", total_ms=30.0, ts=1001.25, published=False)  # not connected: not published
    beat = _heartbeat(c, apps=("a1", "a2"), dropped={"a1": 1}, queue_depth=1)
    assert beat.frames_received == 4
    assert beat.frames_processed == 2
    assert beat.results_published == 1
    assert beat.frames_dropped == 1
    assert beat.last_progress_ts == 1001.25
    assert beat.apps["a1"] == messages.AppStats(received=3, processed=2, dropped=1, latency_ms=20.0)
    assert beat.apps["a2"] == messages.AppStats(received=1)
    wire = orjson.loads(messages.encode(beat))
    assert wire["last_progress_ts"] == 1001.25
    assert messages.decode(messages.Heartbeat, messages.encode(beat)) == beat


def test_heartbeat_lists_only_the_apps_served_now() -> None:
    c = Counters()
    c.received("gone")
    beat = _heartbeat(c, apps=("a1",))
    assert set(beat.apps) == {"a1"}
    assert beat.frames_received == 1  # totals are totals since the start
