"""The pace judge: a worker slow against its profile and its peers, with hysteresis."""

from __future__ import annotations

from coordinator.pace import PaceConfig, PaceJudge
from faillite import messages
from faillite.catalog import load_catalog
from faillite.config import packaged_config

CATALOG = load_catalog(packaged_config("catalog.yaml"))
LITE0 = "efficientnet_lite0"
PROFILE_MS = CATALOG.variant(LITE0).profiles["cpu"].latency_ms


def beat(worker: str, infer_ms: float, cpu_load: float = 0.0) -> messages.Heartbeat:
    return messages.Heartbeat(
        worker=worker,
        incarnation="i",
        seq=1,
        ts=0.0,
        cpu_load=cpu_load,
        apps={"a": messages.AppStats(received=5, processed=5, infer_ms=infer_ms)},
    )


def run(judge: PaceJudge, ms: dict[str, float], t0: float, seconds: float) -> float:
    t = t0
    while t < t0 + seconds:
        t = round(t + 0.1, 6)
        for w, m in ms.items():
            judge.observe(beat(w, m), {"a": LITE0}, "cpu", t)
    return t


def test_factor_is_measured_over_the_profile() -> None:
    judge = PaceJudge(CATALOG)
    run(judge, {"w1": 3 * PROFILE_MS}, 0.0, 0.2)
    f = judge.factor("w1", 0.2)
    assert f is not None and abs(f - 3.0) < 1e-6
    assert judge.factor("w1", 10.0) is None, "a factor goes stale"


def test_slowness_every_worker_shares_is_busy_never_slow() -> None:
    judge = PaceJudge(CATALOG, PaceConfig(sustain_s=1.0))
    t = run(judge, {"w1": 4 * PROFILE_MS, "w2": 5 * PROFILE_MS}, 0.0, 5.0)
    assert judge.standing("w1", t) == judge.standing("w2", t) == "busy"


def test_an_outlier_is_slow_after_sustain_and_until_it_is_well_back() -> None:
    judge = PaceJudge(CATALOG, PaceConfig(outlier=3.0, release=2.0, sustain_s=1.0))
    t = run(judge, {"w1": 10 * PROFILE_MS, "w2": PROFILE_MS}, 0.0, 0.5)
    assert judge.standing("w1", t) == "busy", "not yet sustained"
    t = run(judge, {"w1": 10 * PROFILE_MS, "w2": PROFILE_MS}, t, 1.0)
    assert judge.standing("w1", t) == "slow"
    t = run(judge, {"w1": 2.5 * PROFILE_MS, "w2": PROFILE_MS}, t, 1.0)
    assert judge.standing("w1", t) == "slow", "hysteresis: 2.5x is under 3x, not under 2x"
    t = run(judge, {"w1": 1.5 * PROFILE_MS, "w2": PROFILE_MS}, t, 0.2)
    assert judge.standing("w1", t) == "ok"


def test_alone_a_worker_is_never_judged_slow() -> None:
    judge = PaceJudge(CATALOG, PaceConfig(sustain_s=0.5))
    t = run(judge, {"w1": 20 * PROFILE_MS}, 0.0, 5.0)
    assert judge.standing("w1", t) == "busy"


def test_prediction_uses_the_destinations_own_pace_or_its_hosts_load() -> None:
    judge = PaceJudge(CATALOG)
    run(judge, {"w2": 2 * PROFILE_MS}, 0.0, 0.2)
    assert abs(judge.predicted_ms("w2", LITE0, "cpu", 0.2) - 2 * PROFILE_MS) < 1e-6
    judge.observe(beat("w3", 0.0, cpu_load=3.0), {}, "cpu", 0.2)  # serves nothing, loaded host
    assert abs(judge.predicted_ms("w3", LITE0, "cpu", 0.2) - 3 * PROFILE_MS) < 1e-6
    assert judge.predicted_ms("w4", LITE0, "cpu", 0.2) == PROFILE_MS
    assert judge.predicted_ms("w4", LITE0, "jetson-unknown", 0.2) == float("inf")
