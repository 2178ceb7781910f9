"""The last-will hold: judged once the broker lived on, withdrawn when it did not."""

from __future__ import annotations

from coordinator.events import WorkerOffline
from coordinator.wills import WillHold, read_offline
from faillite import messages


def offline(
    worker: str, reason: str = "lost", at: float = 1.0, retained: bool = False
) -> WorkerOffline:
    st = messages.WorkerStatus(
        worker=worker, incarnation=f"{worker}-1", state="offline", reason=reason, ts=at
    )
    return WorkerOffline(at, 1e9 + at, st, retained=retained)


def test_a_live_last_will_of_a_live_worker_is_held() -> None:
    assert read_offline(offline("w1"), alive=True) == "hold"


def test_a_goodbye_is_a_verdict_at_once() -> None:
    assert read_offline(offline("w1", reason="graceful"), alive=True) == "verdict"


def test_a_last_will_of_a_worker_already_failed_or_unknown_is_judged_by_membership() -> None:
    assert read_offline(offline("w1"), alive=False) == "verdict"
    assert read_offline(offline("w1", retained=True), alive=False) == "verdict"


def test_a_retained_last_will_of_a_live_worker_is_history() -> None:
    assert read_offline(offline("w1", retained=True), alive=True) == "history"


def test_confirmed_in_arrival_order_and_only_once() -> None:
    hold = WillHold()
    assert not hold
    a, b = offline("w2", at=1.0), offline("w1", at=1.001)
    hold.hold(a)
    hold.hold(b)
    assert hold
    assert hold.confirm() == [a, b]
    assert hold.confirm() == [] and not hold


def test_withdrawn_wills_are_not_judged_later() -> None:
    hold = WillHold()
    hold.hold(offline("w1"))
    assert [w.status.worker for w in hold.withdraw()] == ["w1"]
    assert hold.confirm() == []
