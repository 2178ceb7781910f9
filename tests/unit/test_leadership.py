"""Leadership on its own: terms, stepping down, restoring our status, a standby's vacancy."""

from __future__ import annotations

import pytest

from coordinator.leadership import Leadership, TermExhaustedError, Vacancy
from faillite import messages
from faillite.messages import MAX_COUNT, MAX_TERM_JUMP


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


def test_our_own_late_last_will_is_put_right_while_we_lead() -> None:
    # The will of a connection to a broker we left, handed over late (a broker that stored it
    # came back; a cluster's survivors publishing a dead node's wills): our status goes back.
    ld = Leadership("c1", "me", "planner")
    assert ld.on_status(_status("c1", "me", "offline", 0)) is None  # not leading yet
    ld.acquire()
    assert ld.on_status(_status("c1", "me", "offline", 1)) == "restore"
    assert ld.on_status(_status("c1", "me", "leader", 1)) is None
    ld.on_status(_status("c2", "other", "leader", 2))  # deposed: the topic is c2's now
    assert ld.on_status(_status("c1", "me", "offline", 1)) is None


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


def test_a_retained_term_at_the_bound_is_refused_not_overflowed() -> None:
    ld = Leadership("c1", "me", "planner")
    ld.on_status(_status("c0", "old", "leader", MAX_COUNT))  # a forged or corrupt retained term
    with pytest.raises(TermExhaustedError, match="clear the retained") as info:
        ld.acquire()
    assert info.value.highest == MAX_COUNT and ld.term == 0  # never leads
    ld = Leadership("c1", "me", "planner")
    ld.on_assignment(_assignment(MAX_COUNT - 1))
    assert ld.acquire() == MAX_COUNT  # the last term there is, and no further
    ld = Leadership("c2", "me", "planner", term_floor=MAX_COUNT)
    with pytest.raises(TermExhaustedError):
        ld.acquire()


def test_a_term_far_above_the_live_leader_a_standby_saw_is_forged() -> None:
    ld = Leadership("c2", "me", "planner", term_floor=8)  # the live leader was at 8
    assert ld.on_status(_status("c0", "x", "leader", MAX_COUNT)) == "forged"
    assert ld.on_assignment(_assignment(8 + MAX_TERM_JUMP + 1)) == "forged"
    assert ld.on_assignment(_assignment(8 + MAX_TERM_JUMP)) is None  # within the bound
    assert ld.acquire() == 8 + MAX_TERM_JUMP + 1  # forged terms were not adopted


def test_a_live_leader_status_is_a_reference_too() -> None:
    ld = Leadership("c1", "me", "planner")
    assert ld.on_status(_status("c0", "a", "leader", 2**40)) is None  # retained: no reference
    ld = Leadership("c1", "me", "planner")
    assert ld.on_status(_status("c0", "a", "leader", 5), live=True) is None
    assert ld.on_status(_status("c0", "b", "leader", 2**40)) == "forged"
    assert ld.acquire() == 6


def test_a_forged_status_one_term_or_far_up_deposes_nobody() -> None:
    ld = Leadership("c1", "me", "planner", coordinators=frozenset({"c1", "c2"}))
    ld.acquire()
    # Far above our term: forged, whoever it claims to be.
    assert ld.on_status(_status("c2", "x", "leader", 1 + MAX_TERM_JUMP + 1)) == "forged"
    # One term up from an id that is no coordinator of the mesh: foreign.
    assert ld.on_status(_status("mallory", "x", "leader", 2)) == "foreign"
    assert ld.on_status(_status("mallory", "x", "offline", 0)) == "foreign"
    assert not ld.deposed and ld.seen_term == 0
    # A configured coordinator one term up is a successor: step down.
    assert ld.on_status(_status("c2", "y", "leader", 2)) == "step_down"


def test_any_id_may_succeed_when_none_are_configured() -> None:
    ld = Leadership("c1", "me", "planner")
    ld.acquire()
    assert ld.on_status(_status("whoever", "y", "leader", 1 + MAX_TERM_JUMP)) == "step_down"


def test_standby_ignores_forged_and_foreign_statuses() -> None:
    v = Vacancy(delay_s=0.5, grace_s=2.5, coordinators=frozenset({"c1", "c2"}))
    v.on_status(_status("c1", "a", "leader", 4), 1.0)
    assert v.on_status(_status("c1", "z", "leader", 4 + MAX_TERM_JUMP + 1), 2.0) == "forged"
    assert v.on_status(_status("c1", "z", "offline", 4 + MAX_TERM_JUMP + 1), 2.0) == "forged"
    assert v.on_status(_status("eve", "e", "offline", 5), 2.0) == "foreign"
    assert v.highest_term == 4 and v.due(100.0) is None  # still led by c1 at 4
    assert v.on_status(_status("c2", "b", "leader", 5), 3.0) == "leader"
