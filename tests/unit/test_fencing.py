"""The worker's fence on its own: which assignments it obeys, under which leader's term."""

from __future__ import annotations

from faillite import messages
from faillite.messages import MAX_COUNT, MAX_TERM_JUMP
from workers.fencing import Fence, LogLimit


def _a(term: int, gen: int) -> messages.Assignment:
    return messages.Assignment(worker="w1", term=term, generation=gen, ts=0.0)


def _leader(term: int, who: str = "main", state: str = "leader") -> messages.CoordinatorStatus:
    return messages.CoordinatorStatus(who, f"inc-{who}-{term}", state, term, 0.0)  # type: ignore[arg-type]


def test_only_the_leaders_term_applies_in_generation_order() -> None:
    f = Fence()
    assert f.status(_leader(3)).action == "leader"
    assert f.assignment(_a(3, 1)) == "apply"
    assert f.assignment(_a(3, 1)) == "old"  # the retained one again (a reconnect)
    assert f.assignment(_a(3, 0)) == "old"
    assert f.assignment(_a(3, 2)) == "apply"
    assert f.assignment(_a(2, 99)) == "stale"  # a deposed leader's, whatever its generation
    assert f.approved == (3, 2)


def test_forged_term_far_above_the_leader_is_refused_and_the_real_leader_still_obeyed() -> None:
    f = Fence()
    f.status(_leader(3))
    assert f.assignment(_a(3, 1)) == "apply"
    assert f.assignment(_a(2**50, 0)) == "out_of_range"  # the empty assignment of a forger
    assert f.assignment(_a(MAX_COUNT, 0)) == "out_of_range"
    assert f.assignment(_a(3 + MAX_TERM_JUMP + 1, 0)) == "out_of_range"
    assert f.held is None
    assert f.assignment(_a(3, 2)) == "apply"  # the real leader is obeyed as before
    # A forged leader status as far up is refused too: the leader stays the real one.
    assert f.status(_leader(2**52, "main")).action == "out_of_range"
    assert f.leader == 3 and f.assignment(_a(3, 3)) == "apply"


def test_a_successors_assignment_waits_for_its_status_newest_only() -> None:
    f = Fence()
    f.status(_leader(3))
    f.assignment(_a(3, 5))
    assert f.assignment(_a(4, 1)) == "hold"  # its status has not arrived yet
    assert f.assignment(_a(4, 2)) == "hold"  # only the newest is kept
    assert f.assignment(_a(4, 1)) == "old"
    assert f.held == _a(4, 2)
    assert f.approved == (3, 5)  # still serving the old leader's meanwhile
    out = f.status(_leader(4))
    assert out.action == "leader" and out.release == _a(4, 2)
    assert f.approved == (4, 2) and f.held is None
    assert f.assignment(_a(4, 2)) == "old"


def test_held_assignment_of_a_term_that_never_leads_is_dropped() -> None:
    f = Fence()
    f.status(_leader(3))
    assert f.assignment(_a(4, 1)) == "hold"
    out = f.status(_leader(5))  # term 4 never showed its status; 5 did
    assert out.release is None and out.dropped == _a(4, 1)
    assert f.assignment(_a(6, 1)) == "hold"
    assert f.status(_leader(5)).action == "same"
    assert f.held == _a(6, 1)  # a later successor's stays held


def test_leader_term_never_goes_down_and_offline_names_no_leader() -> None:
    f = Fence()
    f.status(_leader(4))
    assert f.status(_leader(3)).action == "old"  # a deposed leader's late republish
    assert f.status(_leader(4, state="offline")).action == "offline"  # its last-will
    assert f.leader == 4
    assert f.assignment(_a(4, 1)) == "apply"  # obeyed through the vacancy


def test_a_new_leader_replaces_a_forged_assignment_applied_before_any_status() -> None:
    # A worker that has read no leader yet (no coordinator, or its status still on the way)
    # follows (term, generation) order alone; the leader's status, once read, decides.
    f = Fence()
    assert f.assignment(_a(1, 1)) == "apply"
    assert f.assignment(_a(1, 2)) == "apply"
    assert f.assignment(_a(1, 1)) == "old"
    assert f.assignment(_a(1 + MAX_TERM_JUMP + 1, 1)) == "out_of_range"  # above what applied
    assert f.assignment(_a(900, 1)) == "apply"  # a forger within the bound, before the status
    assert f.status(_leader(2)).action == "leader"
    assert f.assignment(_a(2, 1)) == "apply"  # lower than (900, 1), but the leader's term


def test_first_assignment_bounds_a_status_read_after_it() -> None:
    f = Fence()
    assert f.assignment(_a(7, 1)) == "apply"  # the retained assignment, read first
    assert f.status(_leader(7 + MAX_TERM_JUMP + 1)).action == "out_of_range"
    assert f.status(_leader(7)).action == "leader"


def test_statuses_of_unconfigured_coordinators_name_no_leader() -> None:
    f = Fence(frozenset({"main", "backup"}))
    assert f.status(_leader(5, "mallory")).action == "unknown_coordinator"
    assert f.leader is None
    assert f.status(_leader(5, "backup")).action == "leader"


def test_log_limit_keeps_a_flood_quiet_and_says_how_much() -> None:
    now = [0.0]
    lim = LogLimit(1.0, clock=lambda: now[0])
    assert lim.allow("hold") == 0
    assert lim.allow("hold") is None and lim.allow("hold") is None
    assert lim.allow("old") == 0  # per key
    now[0] = 1.0
    assert lim.allow("hold") == 2
