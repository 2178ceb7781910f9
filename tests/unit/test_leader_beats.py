"""A standby's judgement of a leader by its beats (coordinator/beat), and the leader's answer
to an older leader's status after a healed partition: pure models, no broker."""

from __future__ import annotations

import pytest

from coordinator.leadership import Leadership, Vacancy
from faillite import messages
from faillite.config import CoordinatorConfig

SILENCE = 2.5
DELAY = 0.5
BEAT = 0.5
BACKOFF = 1.0  # the leader's reconnect backoff
SETTLE = 0.5  # what the broker retains arrives within this of our connect


def _status(who: str, inc: str, state: str, term: int) -> messages.CoordinatorStatus:
    return messages.CoordinatorStatus(who, inc, state, term, 0.0)  # type: ignore[arg-type]


def _beat(
    who: str = "c1", inc: str = "i1", term: int = 3, seq: int = 1
) -> messages.CoordinatorBeat:
    return messages.CoordinatorBeat(who, inc, term, seq, 0.0)


def _led(now: float = 0.0) -> Vacancy:
    """A standby connected at ``now`` that reads c1 (incarnation i1) leading term 3."""
    v = Vacancy(
        DELAY,
        startup_s=3.0,
        settle_s=SETTLE,
        backoff_s=BACKOFF,
        beat_s=BEAT,
        coordinators=frozenset({"c1", "c2"}),
        silence_s=SILENCE,
    )
    v.connected(now)
    assert v.on_status(_status("c1", "i1", "leader", 3), now) == "leader"
    return v


def test_a_leader_that_stops_beating_is_gone_after_the_silence() -> None:
    v = _led()
    for t in (6.0, 6.5, 7.0):
        assert v.on_beat(_beat(), t) == "beat"
        assert v.judge_silence(t) is None
    assert v.judge_silence(9.4) is None  # 2.4 s of silence: a few beats lost, no more
    assert v.judge_silence(9.6) == pytest.approx(2.6)
    assert v.vacant_since == pytest.approx(9.5)  # when the silence passed the bound
    assert v.judge_silence(9.7) is None  # reported once
    assert v.due(9.9) is None and v.due(10.0) == pytest.approx(0.5)
    assert v.highest_term == 3  # a successor takes a term above it


def test_silence_of_our_own_link_is_not_the_leaders() -> None:
    v = _led()
    v.on_beat(_beat(), 6.0)
    # Nothing came for 3 s, but our own link was quiet for 2 of them: 1 s of the leader's.
    assert v.judge_silence(9.0, link_quiet_s=2.0) is None
    assert v.judge_silence(12.0, link_quiet_s=5.0) is None
    # Our link was heard again (a ping answered) and still no beat: the leader's silence.
    assert v.judge_silence(12.0, link_quiet_s=0.1) is not None


def test_a_leader_never_heard_beating_is_judged_by_its_status_alone() -> None:
    v = _led()  # an older leader, or a status written by hand
    assert v.judge_silence(100.0) is None and v.due(100.0) is None
    assert v.on_status(_status("c1", "i1", "offline", 3), 101.0) == "gone"
    assert v.due(101.5) == pytest.approx(0.5)


def test_beats_of_another_leader_prove_nothing() -> None:
    v = _led()
    assert v.on_beat(_beat(inc="old", term=2), 6.0) == "other"  # a predecessor's
    assert v.on_beat(_beat(term=4), 6.0) == "other"  # a status we have not read yet
    assert v.on_beat(_beat(who="intruder"), 6.0) == "foreign"
    assert v.judge_silence(100.0) is None  # still never heard c1/i1/3 beat


def test_a_new_leader_is_judged_by_its_own_beats() -> None:
    v = _led()
    v.on_beat(_beat(), 6.0)
    assert v.on_status(_status("c2", "i2", "leader", 4), 7.0) == "leader"
    assert v.judge_silence(50.0) is None  # c2 has not beaten yet
    v.on_beat(_beat("c2", "i2", 4), 51.0)
    assert v.judge_silence(53.4) is None and v.judge_silence(53.6) is not None


def test_a_late_beat_ends_the_silence_vacancy() -> None:
    v = _led()
    v.on_beat(_beat(), 6.0)
    assert v.judge_silence(8.6) is not None
    assert v.on_beat(_beat(seq=2), 8.7) == "back"
    assert v.vacant_since is None and v.due(20.0) is None
    assert v.judge_silence(11.1) is None and v.judge_silence(11.3) is not None


def test_after_our_reconnect_silence_gets_the_leaders_backoff_once() -> None:
    v = _led()
    v.on_beat(_beat(), 6.0)
    v.judge_silence(6.1)  # the standby judges all along while connected
    v.disconnected(6.1)  # our broker died (with the leader, as it turns out)
    assert v.judge_silence(20.0) is None  # we cannot tell while we cannot see
    v.connected(20.0)  # on the other broker; the leader may be moving too
    # The other broker retains the leader's status: the same leader, still known to beat.
    assert v.on_status(_status("c1", "i1", "leader", 3), 20.01) == "leader"
    # Silence counts from our connect plus its backoff: 0.1 s heard before, 2.4 s after.
    assert v.judge_silence(23.35) is None
    assert v.judge_silence(23.45) == pytest.approx(2.55)
    assert v.vacant_since == pytest.approx(23.4)  # not 20 + 5.5: no fixed grace
    assert v.due(23.85) is None and v.due(23.9) is not None
    # A leader that beats within its backoff is led.
    w = _led()
    w.on_beat(_beat(), 6.0)
    w.disconnected(6.1)
    w.connected(20.0)
    w.on_status(_status("c1", "i1", "leader", 3), 20.01)
    w.on_beat(_beat(seq=9), 20.9)
    w.on_beat(_beat(seq=17), 22.9)
    assert w.judge_silence(25.3) is None and w.judge_silence(25.5) is not None


def test_a_reconnect_does_not_push_a_running_silence_out() -> None:
    v = _led()
    v.on_beat(_beat(), 6.0)
    assert v.judge_silence(7.5) is None  # 1.5 s of silence while our link was fine
    v.disconnected(7.5)
    v.connected(7.6)
    v.on_status(_status("c1", "i1", "leader", 3), 7.61)
    # 1.5 s heard; the backoff (to 8.6); then the 1.0 s left: vacant at 9.6.
    assert v.judge_silence(9.55) is None and v.judge_silence(9.65) is not None
    assert v.vacant_since == pytest.approx(9.6)
    # A second reconnect in the same silence: what was heard counts, no second allowance.
    w = _led()
    w.on_beat(_beat(), 6.0)
    w.judge_silence(6.1)
    w.disconnected(6.1)
    w.connected(7.0)  # silence counts from 8.0 (its backoff)
    w.on_status(_status("c1", "i1", "leader", 3), 7.01)  # this broker's retained copy
    w.judge_silence(9.0)  # 0.1 + 1.0 s
    w.disconnected(9.0)  # e.g. the broker switch went on to a third broker
    w.connected(9.2)  # no second allowance; the first beat is due by 9.7
    w.on_status(_status("c1", "i1", "leader", 3), 9.21)
    assert w.judge_silence(11.05) is None  # 0.1 + 1.0 + 1.35
    assert w.judge_silence(11.15) is not None
    assert w.vacant_since == pytest.approx(11.1)  # with the old grace: 9.2 + 5.5 at least


def test_a_link_that_flaps_faster_than_the_beats_proves_no_silence() -> None:
    v = _led()
    v.on_beat(_beat(), 6.0)
    t = 6.0
    for _ in range(100):  # 40 s of 0.4 s connections: no beat was due on any of them
        v.disconnected(t)
        t += 0.01
        v.connected(t)
        v.on_status(_status("c1", "i1", "leader", 3), t)
        t += 0.4
        assert v.judge_silence(t) is None
    assert v.due(t) is None


def test_a_vacancy_seen_by_silence_stays_after_our_reconnect() -> None:
    v = _led()
    v.on_beat(_beat(), 6.0)
    assert v.judge_silence(8.6) is not None  # vacant since 8.5
    v.disconnected(8.7)
    v.connected(9.0)  # no allowance: the leader was gone before our link went
    v.on_status(_status("c1", "i1", "leader", 3), 9.01)  # the other broker's copy
    assert v.judge_silence(9.4) is None  # reading what the broker retains
    assert v.judge_silence(9.5) is not None and v.vacant_since == pytest.approx(9.5)
    assert v.due(10.0) is not None
    # A beat on the other broker: it only moved (slower than we did), led again.
    w = _led()
    w.on_beat(_beat(), 6.0)
    w.judge_silence(8.6)
    w.disconnected(8.7)
    w.connected(9.0)
    assert w.on_beat(_beat(seq=7), 9.2) == "back"
    assert w.due(20.0) is None


def test_a_retained_copy_of_a_silent_leader_keeps_the_vacancys_start() -> None:
    v = _led()
    v.on_beat(_beat(), 6.0)
    assert v.judge_silence(9.0) is not None  # vacant since 8.5
    v.on_status(_status("c1", "i1", "leader", 3), 9.1)  # a bridge replays what it retained
    assert v.due(9.1) is None
    assert v.judge_silence(9.2) is not None
    assert v.vacant_since == pytest.approx(8.5)
    assert v.due(9.2) == pytest.approx(0.7)


def test_its_offline_after_its_silence_keeps_the_vacancys_start() -> None:
    v = _led()
    v.on_beat(_beat(), 6.0)
    v.judge_silence(9.0)
    assert v.on_status(_status("c1", "i1", "offline", 3), 9.3) == "still_gone"
    assert v.vacant_since == pytest.approx(8.5)
    assert v.on_beat(_beat(seq=3), 9.4) == "beat"  # a straggler after its goodbye: still gone
    assert v.due(9.4) is not None


def test_without_a_silence_setting_beats_are_not_judged() -> None:
    v = Vacancy(DELAY)
    v.connected(0.0)
    v.on_status(_status("c1", "i1", "leader", 3), 0.0)
    v.on_beat(_beat(), 6.0)
    assert v.judge_silence(100.0) is None


def test_a_leader_puts_its_status_back_over_an_older_leaders() -> None:
    """After a healed cut, the bridge replays the other side's older leader over ours."""
    ld = Leadership("c2", "i2", "planner", term_floor=3, coordinators=frozenset({"c1", "c2"}))
    assert ld.acquire() == 4
    assert ld.on_status(_status("c1", "i1", "leader", 3)) == "restore"
    assert ld.on_status(_status("c2", "i2", "leader", 4)) is None  # our own echo
    # The older leader, reading ours, steps down.
    old = Leadership("c1", "i1", "planner", coordinators=frozenset({"c1", "c2"}))
    old.seen_term = 2
    assert old.acquire() == 3
    assert old.on_status(_status("c2", "i2", "leader", 4)) == "step_down"
    assert old.on_status(_status("c1", "x", "leader", 2)) is None  # deposed: puts nothing back


def test_silence_must_span_several_beats() -> None:
    CoordinatorConfig(leader_beat_s=0.5, leader_silence_s=1.5)
    with pytest.raises(ValueError, match="3 x leader_beat_s"):
        CoordinatorConfig(leader_beat_s=1.0, leader_silence_s=2.0)


def test_a_beat_is_signed_for_its_topic() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from faillite.signing import Signer
    from faillite.topics import Topics

    t = Topics("demo")
    signer = Signer(Ed25519PrivateKey.generate(), "demo")
    beat = signer.sign(t.coordinator_beat, _beat())
    assert signer.verifier.valid(t.coordinator_beat, beat)
    assert not signer.verifier.valid(t.coordinator_beat, _beat())  # unsigned
    assert not signer.verifier.valid(t.coordinator_status, beat)  # another topic's
    forged = Signer(Ed25519PrivateKey.generate(), "demo").sign(t.coordinator_beat, _beat())
    assert not signer.verifier.valid(t.coordinator_beat, forged)  # no coordinator's key
