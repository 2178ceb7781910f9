"""OutcomeWatch: a worker judged by the results that reach the mesh, apart from the core."""

from __future__ import annotations

import itertools

from coordinator.outcomes import OutcomeConfig, OutcomeWatch
from faillite import messages

CFG = OutcomeConfig(window_s=5.0, min_frames=3, probation_s=30.0, max_probation_s=100.0)
_seq = itertools.count(1)


def _hb(
    worker: str,
    apps: dict[str, tuple[int, int]],
    *,
    incarnation: str = "i1",
    generation: int = 1,
    loading: tuple[str, ...] = (),
) -> messages.Heartbeat:
    return messages.Heartbeat(
        worker=worker,
        incarnation=incarnation,
        seq=next(_seq),
        ts=0.0,
        generation=generation,
        loading=loading,
        apps={a: messages.AppStats(received=r, processed=p) for a, (r, p) in apps.items()},
    )


def _watch() -> OutcomeWatch:
    w = OutcomeWatch(CFG)
    w.heartbeat(_hb("w1", {"a1": (10, 10)}), 0.0)
    w.heartbeat(_hb("w2", {"a1": (10, 0)}), 0.0)  # a warm backup: follows a1's frames
    w.route({"a1": "w1"}, 1, 0.0)
    return w


def test_a_worker_that_claims_results_nobody_saw_is_overdue_after_the_window() -> None:
    w = _watch()
    w.heartbeat(_hb("w1", {"a1": (20, 20)}), 0.0)
    assert w.overdue(4.9) == []  # not for long enough
    (o,) = w.overdue(5.0)
    assert (o.worker, o.app) == ("w1", "a1")
    assert "10 frames processed" in o.evidence


def test_results_that_arrive_keep_it_in_good_standing() -> None:
    w = _watch()
    for t in range(1, 20):
        w.heartbeat(_hb("w1", {"a1": (10 + t, 10 + t)}), 0.0)
        w.result("a1", "w1", "i1", float(t))
        assert w.overdue(float(t) + 0.5) == []


def test_a_slow_worker_is_not_overdue_while_it_publishes_some() -> None:
    w = _watch()
    w.heartbeat(_hb("w1", {"a1": (30, 11)}), 0.0)  # far behind: the stall detector's business
    w.result("a1", "w1", "i1", 4.0)
    w.heartbeat(_hb("w1", {"a1": (40, 12)}), 0.0)
    assert w.overdue(8.9) == []


def test_a_worker_whose_camera_sends_nothing_has_nothing_to_answer_for() -> None:
    w = _watch()
    w.heartbeat(_hb("w1", {"a1": (10, 10)}), 0.0)
    w.heartbeat(_hb("w2", {"a1": (10, 0)}), 0.0)
    assert w.overdue(60.0) == []


def test_a_peer_that_receives_the_frames_witnesses_a_worker_that_says_it_gets_none() -> None:
    w = _watch()
    w.heartbeat(_hb("w1", {"a1": (10, 10)}), 0.0)  # beats "fine", counts nothing
    w.heartbeat(_hb("w2", {"a1": (25, 0)}), 0.0)
    (o,) = w.overdue(6.0)
    assert o.worker == "w1" and "w2 received 15" in o.evidence


def test_a_worker_still_loading_or_not_told_yet_is_not_witnessed_against() -> None:
    w = OutcomeWatch(CFG)
    w.heartbeat(_hb("w1", {}, generation=1), 0.0)
    w.heartbeat(_hb("w2", {"a1": (10, 0)}), 0.0)
    w.route({"a1": "w1"}, 2, 0.0)  # a failover to w1 at generation 2
    w.heartbeat(_hb("w2", {"a1": (40, 0)}), 0.0)
    w.heartbeat(_hb("w1", {}, generation=1), 0.0)  # has not applied it
    assert w.overdue(10.0) == []
    w.heartbeat(_hb("w1", {"a1": (0, 0)}, generation=2, loading=("efficientnet_lite2",)), 0.0)
    assert w.overdue(10.0) == []  # loading what it was told
    w.heartbeat(_hb("w1", {"a1": (0, 0)}, generation=2), 0.0)
    w.heartbeat(_hb("w2", {"a1": (50, 0)}), 0.0)
    (o,) = w.overdue(10.0)
    assert o.worker == "w1"


def test_counters_that_predate_the_route_are_not_claims() -> None:
    w = OutcomeWatch(CFG)
    w.heartbeat(_hb("w1", {"a1": (500, 500)}), 0.0)  # served a1 before, long ago
    w.route({"a1": "w1"}, 3, 100.0)
    w.heartbeat(_hb("w1", {"a1": (501, 501)}, generation=3), 0.0)
    assert w.overdue(200.0) == []


def test_a_restart_starts_its_counters_and_its_window_over() -> None:
    w = _watch()
    w.heartbeat(_hb("w1", {"a1": (2, 2)}, incarnation="i2"), 8.0)
    assert w.overdue(12.0) == []
    w.heartbeat(_hb("w1", {"a1": (9, 9)}, incarnation="i2"), 12.0)
    assert w.overdue(12.9) == []  # its window began with its first heartbeat
    (o,) = w.overdue(13.0)
    assert "7 frames processed" in o.evidence
    w.result("a1", "w1", "i1", 13.5)  # the old incarnation's, late: not this one's answer
    assert w.overdue(13.5) != []


def test_after_our_own_link_was_down_every_window_starts_over_past_the_grace() -> None:
    """Workers served their queues while unconnected, their results lost: no claim counts."""
    w = _watch()
    w.heartbeat(_hb("w1", {"a1": (40, 40)}), 0.0)
    w.heartbeat(_hb("w2", {"a1": (40, 0)}), 0.0)
    w.restart(10.0, grace_s=5.0)
    w.heartbeat(_hb("w1", {"a1": (45, 45)}), 12.0)  # its backlog, served while cut off
    assert w.overdue(19.9) == []
    w.heartbeat(_hb("w1", {"a1": (49, 49)}), 20.0)
    (o,) = w.overdue(20.0)
    assert "4 frames processed" in o.evidence


def test_a_moved_route_starts_its_window_over() -> None:
    w = _watch()
    w.heartbeat(_hb("w1", {"a1": (20, 20)}), 0.0)
    w.route({"a1": "w2"}, 2, 4.0)
    assert w.overdue(6.0) == []
    w.route({}, 3, 7.0)  # paused: nobody answers for it
    assert w.overdue(60.0) == []


def test_probation_doubles_per_offence_of_one_incarnation_up_to_the_cap() -> None:
    w = _watch()
    assert w.convict("w1", "i1", 0.0) == 30.0
    assert w.held("w1") and w.released(29.0) == []
    assert w.released(30.0) == ["w1"] and not w.held("w1")
    assert w.convict("w1", "i1", 40.0) == 60.0
    assert w.convict("w1", "i1", 100.0) == 100.0  # capped
    assert w.convict("w1", "i2", 200.0) == 30.0  # a new process starts clean
    assert w.overdue(1000.0) == []  # its route went with the verdict


def test_a_forgotten_peer_witnesses_nothing() -> None:
    w = _watch()
    w.forget("w2")
    w.heartbeat(_hb("w1", {"a1": (10, 10)}), 0.0)
    assert w.overdue(60.0) == []
