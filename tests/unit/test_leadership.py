"""Leadership on its own: terms, stepping down, restoring our status, a standby's vacancy."""

from __future__ import annotations

from coordinator.leadership import Leadership, Vacancy
from faillite import messages


def _status(
    who: str, inc: str, state: str, term: int, ts: float = 0.0
) -> messages.CoordinatorStatus:
    return messages.CoordinatorStatus(who, inc, state, term, ts)  # type: ignore[arg-type]


def _assignment(term: int) -> messages.Assignment:
    return messages.Assignment(worker="w1", term=term, generation=9, ts=0.0)


def test_term_is_above_everything_retained_and_the_standbys_floor() -> None:
    ld = Leadership("c1", "me", "planner")
    assert ld.acquire() == 1  # a broker that retains nothing
    ld = Leadership("c1", "me", "planner")
    ld.on_status(_status("c0", "old", "offline", 0))  # a last-will carries term 0
    ld.on_assignment(_assignment(5))  # the assignments still say term 5
    assert ld.acquire() == 6
    ld = Leadership("c2", "me", "planner", term_floor=8)  # a standby saw term 8 lead
    ld.on_assignment(_assignment(5))
    assert ld.acquire() == 9


def test_higher_leader_deposes_us_and_we_never_restore_after() -> None:
    ld = Leadership("c1", "me", "planner")
    ld.acquire()
    assert ld.on_status(_status("c1", "me", "leader", 1)) is None  # our own, echoed
    assert ld.on_status(_status("c2", "other", "leader", 2)) == "step_down"
    assert ld.deposed
    assert ld.on_status(_status("c0", "old", "offline", 0)) is None


def test_late_last_will_of_a_predecessor_is_put_right() -> None:
    ld = Leadership("c1", "me", "planner")
    assert ld.on_status(_status("c0", "old", "offline", 0)) is None  # not leading yet
    ld.acquire()
    assert ld.on_status(_status("c0", "old", "offline", 0)) == "restore"
    assert ld.on_status(_status("c0", "old", "leader", 1)) is None  # an equal term: no
    assert ld.status("leader", 12.5) == messages.CoordinatorStatus(
        "c1", "me", "leader", 1, 12.5, "planner"
    )


def test_placements_of_other_terms_are_inherited() -> None:
    ld = Leadership("c1", "me", "static")
    old = messages.Placement(term=3, generation=4, ts=0.0)
    assert ld.inherits(old)
    ld.seen_term = 3
    ld.acquire()
    assert not ld.inherits(messages.Placement(term=4, generation=1, ts=0.0))  # ours


def test_vacancy_after_a_grace_when_nothing_is_retained() -> None:
    v = Vacancy(delay_s=0.5, grace_s=2.5)
    v.connected(10.0)
    assert v.due(12.9) is None and v.due(13.0) == 0.5


def test_leader_seen_then_gone_then_due_after_the_delay() -> None:
    v = Vacancy(delay_s=0.5, grace_s=2.5)
    v.connected(10.0)
    assert v.on_status(_status("c1", "a", "leader", 3), 10.1) == "leader"
    assert v.due(20.0) is None and v.highest_term == 3
    assert v.on_status(_status("c1", "a", "offline", 0), 20.0) == "gone"  # its last-will
    assert v.due(20.4) is None and v.due(20.5) == 0.5
    assert v.on_status(_status("c1", "a", "offline", 0), 20.2) == "still_gone"
    v.disconnected()  # we cannot tell while we cannot see
    assert v.due(30.0) is None


def test_stale_last_will_and_older_leaders_are_no_vacancy() -> None:
    v = Vacancy(delay_s=0.5, grace_s=2.5)
    v.on_status(_status("c2", "b", "leader", 4), 1.0)
    assert v.on_status(_status("c1", "a", "offline", 3), 2.0) == "stale"
    assert v.on_status(_status("c1", "a", "leader", 3), 2.0) == "older_leader"
    assert v.due(100.0) is None and v.highest_term == 4
    v.cleared(5.0)  # the retained status removed
    assert v.due(5.5) == 0.5
