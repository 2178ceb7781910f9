"""Failure detectors on synthetic clocks: silence, stalls, SLO violations."""

from __future__ import annotations

import random

from coordinator.detectors import (
    DetectorConfig,
    ProgressDetector,
    SilenceDetector,
)

CFG = DetectorConfig.for_interval(0.1)


def _feed(
    det: SilenceDetector, n: int, interval: float, jitter: float = 0.0, seed: int = 0
) -> float:
    rng = random.Random(seed)
    t = 0.0
    for _ in range(n):
        t += interval + rng.uniform(-jitter, jitter)
        det.heartbeat(t)
    return t


def test_silence_detected_within_half_a_second_at_100ms_heartbeats() -> None:
    det = SilenceDetector(CFG)
    last = _feed(det, 50, 0.1, jitter=0.005)
    # Walk the clock forward in 5 ms steps from the last heartbeat until failure.
    t = last
    while not det.failed(t):
        t += 0.005
        assert t - last < 2.0
    detection = t - last
    assert CFG.min_silence_s <= detection <= 0.5, detection


def test_no_false_suspicion_under_jitter_and_one_late_heartbeat() -> None:
    det = SilenceDetector(CFG)
    t = _feed(det, 200, 0.1, jitter=0.03, seed=3)
    # One heartbeat 200 ms late (a WiFi hiccup) must not be a failure.
    for step in range(40):
        now = t + step * 0.005
        assert not det.failed(now), f"false failure at silence {now - t:.3f}s"
    det.heartbeat(t + 0.2)
    assert not det.suspected(t + 0.21)


def test_ceiling_always_suspects_even_with_irregular_history() -> None:
    det = SilenceDetector(CFG)
    _feed(det, 30, 0.1, jitter=0.09, seed=1)
    last = det.last_arrival
    assert last is not None
    assert det.suspected(last + CFG.max_silence_s)


def test_confirmation_window_and_recovery() -> None:
    det = SilenceDetector(CFG)
    last = _feed(det, 50, 0.1)
    t = last + CFG.max_silence_s
    assert det.suspected(t) and not det.failed(t)  # suspicion starts the window
    assert not det.failed(t + CFG.confirm_s / 2)
    assert det.failed(t + CFG.confirm_s + 1e-6)
    det.heartbeat(t + CFG.confirm_s + 0.01)
    assert not det.suspected(t + CFG.confirm_s + 0.02)


def test_phi_grows_with_silence() -> None:
    det = SilenceDetector(CFG)
    last = _feed(det, 50, 0.1, jitter=0.01)
    phis = [det.phi(last + s) for s in (0.05, 0.1, 0.15, 0.2, 0.3)]
    assert phis == sorted(phis) and phis[-1] > CFG.phi_threshold


def test_no_verdict_before_first_heartbeat() -> None:
    det = SilenceDetector(CFG)
    assert not det.suspected(100.0) and not det.failed(100.0)


def test_stall_needs_waiting_frames_and_no_progress() -> None:
    det = ProgressDetector(CFG)
    det.heartbeat(0.0, received=10, processed=10, queue_depth=0)
    # Idle: nothing waiting, no progress: healthy.
    for i in range(1, 30):
        det.heartbeat(i * 0.1, received=10, processed=10, queue_depth=0)
    assert not det.stalled(3.0)
    # Frames arrive and wait, processed stuck: stalled after stall_s.
    t = 3.0
    for i in range(1, 30):
        t = 3.0 + i * 0.1
        det.heartbeat(t, received=10 + i, processed=10, queue_depth=2)
    assert det.stalled(t)
    det.heartbeat(t + 0.1, received=40, processed=11, queue_depth=2)
    assert not det.stalled(t + 0.1)


def test_a_load_it_was_told_to_make_is_not_a_stall_but_a_load_that_never_ends_is() -> None:
    cfg = DetectorConfig.for_interval(0.1, stall_s=1.0, load_timeout_s=5.0)
    det = ProgressDetector(cfg)
    t, received = 0.0, 0
    for _ in range(40):  # 4 s of frames waiting while a variant loads
        t += 0.1
        received += 1
        det.heartbeat(t, received, 0, 3, loading_s=t)
    assert not det.stalled(t)
    for _ in range(25):  # the load runs past its bound: judged as any worker
        t += 0.1
        received += 1
        det.heartbeat(t, received, 0, 3, loading_s=t)
    assert det.stalled(t)


def test_a_slow_batch_at_the_workers_own_pace_is_not_a_stall_but_a_hang_is() -> None:
    cfg = DetectorConfig.for_interval(0.1, stall_s=1.0)
    slow, hung = ProgressDetector(cfg), ProgressDetector(cfg)
    t, received = 0.0, 0
    for _ in range(25):  # 2.5 s in one batch: 0.5 s per frame (slow), or 30 ms before a hang
        t += 0.1
        received += 1
        slow.heartbeat(t, received, 0, 3, frame_s=0.5)
        hung.heartbeat(t, received, 0, 3, frame_s=0.03)
    assert not slow.stalled(t) and hung.stalled(t)
    for _ in range(20):  # 8 frames at its pace passed: stalled after all
        t += 0.1
        received += 1
        slow.heartbeat(t, received, 0, 3, frame_s=0.5)
    assert slow.stalled(t)


def test_a_busy_hosts_late_heartbeat_is_no_failure_but_a_long_silence_still_is() -> None:
    idle, busy = SilenceDetector(CFG), SilenceDetector(CFG)
    last = _feed(idle, 50, 0.1, jitter=0.005)
    _feed(busy, 50, 0.1, jitter=0.005)
    busy.load(2.0)  # load average twice the CPUs: the silence bounds stretch twice
    assert idle.suspected(last + 0.6) and not busy.suspected(last + 0.6)
    assert busy.suspected(last + 2.1), "the ceiling stretches too, but holds"
    busy.load(50.0)
    assert busy.suspected(last + 3.0 + 0.01), "stretched at most MAX_LOAD_STRETCH times"
