"""Poison streams, on a fake clock: a camera whose frame costs far more than its own frames do
is dropped a while, with backoff; other cameras, and the camera's ordinary frames, are not."""

from __future__ import annotations

import pytest

from faillite.config import QuarantineConfig
from workers.quarantine import StreamQuarantine

CFG = QuarantineConfig(floor_ms=250, factor=20, base_s=5, max_s=40, forgive_s=600)


def warmed(typical_ms: float = 10.0, frames: int = 20) -> StreamQuarantine:
    q = StreamQuarantine(CFG)
    for i in range(frames):
        assert q.observe("cam1", typical_ms, float(i)) is None
        assert q.observe("cam2", typical_ms, float(i)) is None
    return q


def test_a_frame_far_over_its_cameras_typical_quarantines_that_camera_only() -> None:
    q = warmed()
    v = q.observe("cam1", 36_000.0, 100.0)
    assert v is not None and (v.sensor, v.for_s, v.offences) == ("cam1", 5.0, 1)
    assert v.typical_ms == pytest.approx(10.0)
    assert not q.admits("cam1", 100.0) and not q.admits("cam1", 104.9)
    assert q.admits("cam2", 100.0)  # the honest camera's apps are served on
    assert q.admits("cam1", 105.0)
    assert q.quarantined(101.0) == {"cam1": pytest.approx(4.0)}


@pytest.mark.parametrize(
    ("cost", "poison"),
    [(240.0, False), (199.0, False), (260.0, True)],  # floor 250; 20 x 10 = 200
)
def test_the_bound_is_the_larger_of_the_floor_and_the_cameras_own_multiple(
    cost: float, poison: bool
) -> None:
    assert (warmed().observe("cam1", cost, 100.0) is not None) is poison


def test_a_heavy_camera_is_judged_against_itself() -> None:
    assert warmed(typical_ms=60.0).observe("cam1", 1000.0, 100.0) is None  # under 20 x 60
    assert warmed(typical_ms=60.0).observe("cam1", 1300.0, 100.0) is not None


def test_offences_back_off_to_the_cap_and_are_forgiven_when_clean() -> None:
    q = warmed()
    spans = []
    now = 100.0
    for _ in range(5):
        v = q.observe("cam1", 5000.0, now)
        assert v is not None
        spans.append(v.for_s)
        now += v.for_s
    assert spans == [5.0, 10.0, 20.0, 40.0, 40.0]
    # The poison never became its typical: an ordinary frame after it is ordinary still.
    assert q.observe("cam1", 12.0, now) is None
    v = q.observe("cam1", 5000.0, now + CFG.forgive_s + 1)
    assert v is not None and v.offences == 1 and v.for_s == 5.0


def test_a_first_frame_is_judged_by_the_floor_alone() -> None:
    q = StreamQuarantine(CFG)
    assert q.observe("cam9", 200.0, 0.0) is None
    q2 = StreamQuarantine(CFG)
    assert q2.observe("cam9", 30_000.0, 0.0) is not None
