"""The overload shedder on a fake clock: strain held, steps in order, calm, relapse back-off."""

from __future__ import annotations

from coordinator.shedding import LADDER, ShedConfig, Shedder

ALL = [True] * len(LADDER)


def feed(sh: Shedder, worker: str, strain: float, t0: float, seconds: float) -> float:
    t = t0
    while t < t0 + seconds:
        t = round(t + 0.1, 6)
        sh.observe(worker, strain, t)
    return t


def test_strain_must_hold_before_a_step_and_again_before_the_next() -> None:
    sh = Shedder(ShedConfig(sustain_s=5.0))
    t = feed(sh, "w1", 1.4, 0.0, 4.9)
    assert not sh.strained("w1", t)
    t = feed(sh, "w1", 1.4, t, 0.2)
    assert sh.strained("w1", t)
    first = sh.escalate("w1", t, ALL)
    assert first == LADDER[0] and first.name == "throttle_noncritical"
    assert not sh.strained("w1", t + 1.0), "the step gets sustain_s to take effect"
    t = feed(sh, "w1", 1.4, t, 5.1)
    assert sh.escalate("w1", t, ALL) == LADDER[1]
    assert sh.steps("w1") == LADDER[:2]


def test_one_good_heartbeat_restarts_the_strain_clock() -> None:
    sh = Shedder(ShedConfig(sustain_s=5.0))
    t = feed(sh, "w1", 1.4, 0.0, 3.0)
    t = feed(sh, "w1", 0.9, t, 0.1)
    t = feed(sh, "w1", 1.4, t, 3.0)
    assert not sh.strained("w1", t)


def test_steps_that_change_nothing_are_passed_over_and_critical_apps_are_never_paused() -> None:
    sh = Shedder(ShedConfig(sustain_s=1.0))
    only_critical = [s.critical for s in LADDER]  # a worker serving critical apps only
    taken = []
    t = 0.0
    while (step := sh.escalate("w1", t, only_critical)) is not None:
        taken.append(step.name)
        t += 2.0
    assert taken == ["downsize_critical", "throttle_critical"]
    assert all(not (s.critical and s.action == "pause") for s in LADDER)


def test_calm_takes_steps_back_newest_first_and_a_relapse_doubles_the_calm() -> None:
    cfg = ShedConfig(sustain_s=1.0, calm=0.6, calm_s=10.0, relapse_s=30.0)
    sh = Shedder(cfg)
    sh.escalate("w1", 0.0, ALL)
    sh.escalate("w1", 2.0, ALL)
    t = feed(sh, "w1", 0.7, 2.0, 20.0)  # under SLO but not calm: keep the steps
    assert not sh.calmed("w1", t)
    t = feed(sh, "w1", 0.3, t, 10.1)
    assert sh.calmed("w1", t)
    assert sh.relax("w1", t) == LADDER[1]
    # Strained again soon after: the step comes back and the next calm must last twice as long.
    t = feed(sh, "w1", 1.5, t, 1.1)
    assert sh.strained("w1", t) and sh.escalate("w1", t, ALL) == LADDER[1]
    t = feed(sh, "w1", 0.3, t, 10.1)
    assert not sh.calmed("w1", t)
    t = feed(sh, "w1", 0.3, t, 10.0)
    assert sh.calmed("w1", t)
    assert sh.relax("w1", t) == LADDER[1]
    assert sh.forget("w1") == (LADDER[0],)
    assert sh.steps("w1") == ()
