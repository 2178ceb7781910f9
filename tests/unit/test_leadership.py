"""Leadership on its own: terms, stepping down, restoring our status, a standby's vacancy."""

from __future__ import annotations

from typing import Any

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


def _vacancy(**kw: Any) -> Vacancy:
    """A rank-1 standby's view with the default holds: the leader starting beside us 3 s, what
    the broker retains within 0.5 s of a connect, the leader's reconnect backoff 1 s."""
    return Vacancy(0.5, startup_s=3.0, settle_s=0.5, backoff_s=1.0, **kw)


def test_vacancy_after_the_startup_hold_when_nothing_is_retained() -> None:
    v = _vacancy()
    assert v.connected(10.0) == 13.0  # a leader starting beside us claims its term first
    assert v.due(13.4) is None and v.due(13.5) == 0.5


def test_nothing_retained_after_a_reconnect_is_vacant_after_the_short_margin() -> None:
    v = _vacancy()
    v.connected(0.0)
    assert v.on_status(_status("c1", "a", "leader", 3), 0.1) == "leader"
    v.disconnected(20.0)
    # The broker restarted and lost what it retained: nothing comes. The leader gets its
    # reconnect backoff once to put its status back, on top of the margin for the copy.
    assert v.connected(21.0) == pytest.approx(22.5)
    assert v.due(22.9) is None and v.due(23.0) == pytest.approx(0.5)
    assert v.on_status(_status("c1", "a", "leader", 3), 22.9) == "leader"  # it put it back
    assert v.due(30.0) is None
    # A later reconnect in the same silence gets the margin alone: the allowance was given.
    v.disconnected(40.0)
    assert v.connected(40.2) == pytest.approx(40.7)
    assert v.due(41.1) is None and v.due(41.2) == pytest.approx(0.5)


def test_reconnecting_twice_does_not_push_the_vacancy_out() -> None:
    v = _vacancy()
    v.connected(0.0)
    v.on_status(_status("c1", "a", "leader", 3), 0.1)
    v.disconnected(10.0)
    assert v.connected(10.1) == pytest.approx(11.6)  # settle + the leader's backoff, once
    v.disconnected(10.5)  # the link flaps: on again at once
    assert v.connected(10.6) == pytest.approx(11.6)  # not 12.1: the allowance is not renewed
    v.disconnected(11.0)
    assert v.connected(11.5) == pytest.approx(12.0)  # only what this broker retains
    assert v.due(12.4) is None and v.due(12.5) == pytest.approx(0.5)

    # A vacancy we saw before our link went: its start stands after the reconnect.
    w = _vacancy()
    w.connected(0.0)
    w.on_status(_status("c1", "a", "leader", 3), 0.1)
    assert w.on_status(_status("c1", "a", "offline", 3), 5.0) == "gone"
    w.disconnected(5.2)
    assert w.due(9.0) is None  # we cannot tell while we cannot see
    assert w.connected(9.0) == pytest.approx(9.5)  # no allowance: it is gone already
    assert w.on_status(_status("c1", "a", "offline", 3), 9.01) == "still_gone"  # retained
    assert w.vacant_since == 5.0
    # Due once we read the broker, then the delay (that keeps ranks apart) and no more.
    assert w.due(9.99) is None and w.due(10.0) == pytest.approx(0.5)
    w.disconnected(9.6)
    assert w.connected(9.7) == pytest.approx(10.2) and w.due(10.7) == pytest.approx(0.5)
    # What this broker retains says otherwise: a leader of a newer term.
    w.disconnected(10.3)
    w.connected(10.4)
    assert w.on_status(_status("c2", "b", "leader", 4), 10.41) == "leader"
    assert w.due(20.0) is None


def test_leader_seen_then_gone_then_due_after_the_delay() -> None:
    v = _vacancy()
    v.connected(10.0)
    assert v.on_status(_status("c1", "a", "leader", 3), 10.1) == "leader"
    assert v.due(20.0) is None and v.highest_term == 3
    assert v.on_status(_status("c1", "a", "offline", 0), 20.0) == "gone"  # its last-will
    assert v.due(20.4) is None and v.due(20.5) == 0.5
    assert v.on_status(_status("c1", "a", "offline", 0), 20.2) == "still_gone"
    assert v.vacant_since == 20.0  # a second copy does not push it out
    v.disconnected(20.3)
    assert v.due(30.0) is None  # we cannot tell while we cannot see


def test_an_offline_right_after_our_reconnect_waits_for_the_leaders_backoff() -> None:
    """A broker back from a restart may retain the leader's last-will (fired as it went down)
    while the leader is still reconnecting: it gets its backoff to put its status back."""
    v = _vacancy()
    v.connected(0.0)
    v.on_status(_status("c1", "a", "leader", 3), 0.1)
    v.disconnected(10.0)
    v.connected(12.0)
    assert v.on_status(_status("c1", "a", "offline", 3), 12.01) == "gone"
    assert v.due(13.9) is None  # 12 + 0.5 + 1.0, then the delay
    assert v.on_status(_status("c1", "a", "leader", 3), 12.8) == "leader"  # it is back
    assert v.due(20.0) is None


def test_a_will_the_broker_fired_as_it_went_down_is_no_vacancy() -> None:
    """A stopping broker publishes every client's last-will, then drops us too: the leader
    did not die, the broker went away. Our link dropping before the broker was heard from
    again withdraws the vacancy; the leader gets its reconnect allowance when both return
    (CI saw a standby take term 2 from a leader that reconnected 0.3 s after it)."""
    v = _vacancy()
    v.connected(0.0)
    v.on_status(_status("c1", "a", "leader", 3), 0.1)
    assert v.on_status(_status("c1", "a", "offline", 3), 10.0) == "gone"  # its will, live
    v.hold(10.0)
    assert v.due(10.6) is None  # not before the broker answers
    v.disconnected(10.5)  # it did not: it was going down
    assert v.vacant_since is None
    v.connected(23.0)  # back from its restart, its retained state lost
    assert v.due(24.4) is None  # 23 + 0.5 settle + 1.0 allowance, then the delay
    assert v.on_status(_status("c1", "a", "leader", 3), 23.3) == "leader"  # it is back
    assert v.due(30.0) is None


def test_a_will_the_broker_outlives_is_a_vacancy() -> None:
    v = _vacancy()
    v.connected(0.0)
    v.on_status(_status("c1", "a", "leader", 3), 0.1)
    assert v.on_status(_status("c1", "a", "offline", 3), 10.0) == "gone"
    v.hold(10.0)
    assert v.due(10.6) is None
    v.confirm()  # the broker answered our ping: the leader is gone
    assert v.due(10.6) == pytest.approx(0.6)
    # An answer that never comes, on a link that never drops, holds it only so long.
    w = _vacancy()
    w.connected(0.0)
    w.on_status(_status("c1", "a", "leader", 3), 0.1)
    w.on_status(_status("c1", "a", "offline", 3), 10.0)
    w.hold(10.0)
    assert w.due(12.9) is None and w.due(13.0) == pytest.approx(3.0)


def test_stale_last_will_and_older_leaders_are_no_vacancy() -> None:
    v = _vacancy()
    v.connected(0.0)
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
    v = _vacancy(coordinators=frozenset({"c1", "c2"}))
    v.connected(0.0)
    v.on_status(_status("c1", "a", "leader", 4), 1.0)
    assert v.on_status(_status("c1", "z", "leader", 4 + MAX_TERM_JUMP + 1), 2.0) == "forged"
    assert v.on_status(_status("c1", "z", "offline", 4 + MAX_TERM_JUMP + 1), 2.0) == "forged"
    assert v.on_status(_status("eve", "e", "offline", 5), 2.0) == "foreign"
    assert v.highest_term == 4 and v.due(100.0) is None  # still led by c1 at 4
    assert v.on_status(_status("c2", "b", "leader", 5), 3.0) == "leader"
