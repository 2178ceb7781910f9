"""The drop-oldest, round-robin frame queue."""

from __future__ import annotations

import threading

from workers.frame_queue import FrameQueues, QueuedFrame


def _f(app: str, n: int) -> QueuedFrame:
    return QueuedFrame(app, n.to_bytes(4, "big"), n)


def test_drops_oldest_keeps_newest() -> None:
    q = FrameQueues(2)
    dropped = [q.put(_f("a", i)) for i in range(5)]
    assert dropped == [False, False, True, True, True]
    assert q.dropped == {"a": 3}
    got = [q.get(0.1), q.get(0.1)]
    assert [g.received_ns for g in got if g] == [3, 4]
    assert q.get(0.01) is None


def test_round_robin_across_apps() -> None:
    q = FrameQueues(8)
    for i in range(4):
        q.put(_f("busy", i))
    q.put(_f("quiet", 100))
    order = [q.get(0.1).app for _ in range(3)]  # type: ignore[union-attr]
    assert "quiet" in order[:2]


def test_discard_and_close_wake_consumer() -> None:
    q = FrameQueues(2)
    q.put(_f("a", 1))
    assert q.discard("a") == 1
    assert q.depth() == 0
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(q.get(5.0)))
    t.start()
    q.close()
    t.join(2)
    assert not t.is_alive() and result == [None]
