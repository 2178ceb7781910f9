"""The chaos soak's pure parts (no process started): the seeded schedule and its spacing, the
invariants judged over synthetic recordings, the decoding of raw messages, the timeline of a
violation, and the ``faillite drill --chaos`` options."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from faillite import messages
from faillite.topics import Role, Topics
from field_kit.drill import runner
from field_kit.drill.chaos import (
    ALONE,
    DURATION_S,
    QUIET_S,
    TAIL_S,
    TIMELINE_EVENTS,
    WARMUP_S,
    WORKER_KINDS,
    Injected,
    Observations,
    PlannedFault,
    Served,
    draw_schedule,
    judge,
    longest_gaps,
    max_overlap,
    timeline_around,
    verdict_table,
    workers_harmed_at_once,
)
from field_kit.drill.logged import events_from_logs, log_docs, merge_events
from field_kit.drill.mesh import WORKERS

T0 = 1_000_000.0  # the soak's start (wall clock)

# -- the schedule ----------------------------------------------------------------------------


def test_same_seed_same_schedule() -> None:
    assert draw_schedule(7, 10) == draw_schedule(7, 10)
    assert draw_schedule(7, 10) != draw_schedule(8, 10)


def test_schedule_covers_every_kind_over_long_soaks() -> None:
    kinds = {f.kind for seed in range(5) for f in draw_schedule(seed, 30)}
    assert kinds == set(DURATION_S)


def _groups(schedule: list[PlannedFault]) -> list[list[PlannedFault]]:
    """Faults whose windows chain into each other."""
    out: list[list[PlannedFault]] = []
    for f in schedule:
        if out and f.at < max(g.end for g in out[-1]):
            out[-1].append(f)
        else:
            out.append([f])
    return out


@pytest.mark.parametrize("seed", range(40))
def test_schedule_respects_spacing(seed: int) -> None:
    minutes = 3 + seed % 10
    s = draw_schedule(seed, minutes, cpus=2)
    assert s, "a soak of minutes has faults"
    assert s[0].at >= WARMUP_S
    assert all(f.end <= minutes * 60 - TAIL_S for f in s)
    assert max_overlap(s) <= 2
    for g in _groups(s):
        assert len(g) <= 2
        if len(g) == 2:
            a, b = g
            assert a.kind not in ALONE and b.kind not in ALONE
            assert a.target != b.target
    for prev, nxt in zip(_groups(s), _groups(s)[1:], strict=False):
        assert nxt[0].at - max(f.end for f in prev) >= QUIET_S[0]  # a quiet gap between
    for f in s:
        lo, hi = DURATION_S[f.kind]
        assert lo <= f.duration <= hi
        if f.kind == "hogs":
            assert 1 <= f.hogs <= 4
        if f.kind in WORKER_KINDS:
            assert f.target in WORKERS


@pytest.mark.parametrize("seed", range(40))
def test_schedule_never_harms_every_worker(seed: int) -> None:
    s = draw_schedule(seed, 20)
    assert len(workers_harmed_at_once(s)) < len(WORKERS)
    kills = [f for f in s if f.kind == "kill_worker"]
    for f in kills:
        at_once = {g.target for g in kills if g.at <= f.at < g.at + g.duration}
        assert len(at_once) < len(WORKERS)


def test_schedule_without_partitions_has_none() -> None:
    assert not [
        f
        for s in range(20)
        for f in draw_schedule(s, 20, partitions=False)
        if f.kind == "partition"
    ]


def test_max_overlap_and_workers_harmed() -> None:
    a = PlannedFault(10, "kill_worker", "w1", 3)  # window to 28
    b = PlannedFault(12, "freeze", "w2", 1)  # to 18
    c = PlannedFault(40, "slow", "w3", 5)
    assert max_overlap([a, b, c]) == 2
    assert workers_harmed_at_once([a, b, c]) == {"w1", "w2"}
    assert max_overlap([a, c]) == 1


# -- synthetic recordings ---------------------------------------------------------------------


def _served(worker: str, start: float, end: float, step: float = 0.2) -> list[Served]:
    n = round((end - start) / step)
    return [Served(T0 + start + i * step, worker) for i in range(n + 1)]


def _ev(kind: str, at: float, worker: str = "", **detail: Any) -> messages.Event:
    return messages.Event(kind, T0 + at, "coordinator/main", worker, "", detail)


def _clean() -> Observations:
    """a1 on w1, killed at +20 s, on w3 from +20.6 s; a2 on w2 throughout; 60 s."""
    obs = Observations()
    obs.results["a1"] = _served("w1", 0, 20) + _served("w3", 20.6, 60)
    obs.results["a2"] = _served("w2", 0, 60)
    obs.events = [
        _ev("failure_detected", 20.3, "w1", cause="last_will", worker_incarnation="old1"),
        _ev("failover", 20.35, "w1", cause="last_will", recoveries={"a1": {"server": "w3"}}),
        _ev("worker_joined", 26.0, "w1", cause="birth", worker_incarnation="new1"),
    ]
    return obs


def _kill_w1() -> Injected:
    return Injected("kill_worker", "w1", T0 + 20.0, T0 + 23.0, incarnation="old1")


def _judge(obs: Observations, faults: Iterable[Injected], until: float = 60.0) -> list[Any]:
    return judge(obs, list(faults), T0, T0 + until).violations


def test_a_clean_soak_has_no_violation() -> None:
    j = judge(_clean(), [_kill_w1()], T0, T0 + 60)
    assert j.violations == []
    assert j.checks["unserved"] == 121 * 2 and j.checks["false_verdict"] == 121


def test_a_verdict_with_no_fault_is_false_at_its_time() -> None:
    obs = _clean()
    obs.events.append(_ev("failure_detected", 40.0, "w2", cause="slo_gray"))
    [v] = _judge(obs, [_kill_w1()])
    assert (v.invariant, v.subject, v.ts) == ("false_verdict", "w2", T0 + 40.0)
    assert "slo_gray" in v.detail and "no fault was injected on it" in v.detail


def test_a_failover_without_detection_is_a_verdict_too() -> None:
    obs = _clean()
    obs.events.append(_ev("failover", 44.0, "w3", cause="stalled"))
    [v] = _judge(obs, [_kill_w1()])
    assert (v.invariant, v.subject, v.ts) == ("false_verdict", "w3", T0 + 44.0)


def test_verdicts_of_a_faulted_worker_are_excused_until_the_grace_ends() -> None:
    obs = _clean()
    freeze = Injected("freeze", "w2", T0 + 30.0, T0 + 32.0)
    obs.events.append(_ev("failure_detected", 31.0, "w2", cause="heartbeat_silence"))
    assert _judge(obs, [_kill_w1(), freeze]) == []
    obs.events.append(_ev("failure_detected", 37.5, "w2", cause="stalled"))  # 5.5 s after thaw
    [v] = _judge(obs, [_kill_w1(), freeze])
    assert v.ts == T0 + 37.5 and "its last fault: freeze w2" in v.detail


def test_the_restarted_incarnation_of_a_killed_worker_is_not_excused() -> None:
    obs = _clean()
    obs.events.append(
        _ev("failure_detected", 24.0, "w1", cause="stalled", worker_incarnation="new1")
    )
    [v] = _judge(obs, [_kill_w1()])
    assert (v.invariant, v.subject, v.ts) == ("false_verdict", "w1", T0 + 24.0)
    # Its killed incarnation may be judged any time after the kill.
    obs.events[-1] = _ev("failure_detected", 50.0, "w1", cause="obit", worker_incarnation="old1")
    assert _judge(obs, [_kill_w1()]) == []


def test_an_unserved_gap_with_no_fault_is_reported_when_it_passes_the_quiet_gap() -> None:
    obs = _clean()
    obs.results["a2"] = _served("w2", 0, 30) + _served("w2", 45, 60)
    [v] = _judge(obs, [_kill_w1()])
    assert (v.invariant, v.subject) == ("unserved", "a2")
    assert v.ts == pytest.approx(T0 + 35.0) and v.until == pytest.approx(T0 + 45.0)
    assert "no fault to excuse it" in v.detail


def test_a_gap_after_a_fault_is_excused_up_to_the_bound() -> None:
    obs = _clean()
    obs.results["a1"] = _served("w1", 0, 20) + _served("w3", 28, 60)
    assert _judge(obs, [_kill_w1()]) == []  # 8 s, within 10 s of the kill
    obs.results["a1"] = _served("w1", 0, 20) + _served("w3", 33, 60)
    [v] = _judge(obs, [_kill_w1()])
    assert (v.invariant, v.subject) == ("unserved", "a1")
    assert v.ts == pytest.approx(T0 + 30.0) and "kill_worker w1" in v.detail


def test_a_fault_on_another_worker_excuses_nothing() -> None:
    obs = _clean()
    obs.results["a2"] = _served("w2", 0, 20) + _served("w2", 28, 60)
    [v] = _judge(obs, [_kill_w1()])  # w1 never served a2
    assert (v.subject, v.ts) == ("a2", pytest.approx(T0 + 25.0))


def test_a_gap_still_open_at_the_end_is_reported() -> None:
    obs = _clean()
    obs.results["a2"] = _served("w2", 0, 50)
    [v] = _judge(obs, [_kill_w1()])
    assert v.subject == "a2" and v.ts == pytest.approx(T0 + 55.0) and v.until is None


def test_a_broker_restart_excuses_everyone_until_bound_after_it_is_back() -> None:
    obs = _clean()
    restart = Injected("broker_restart", "broker", T0 + 40.0, T0 + 42.0)
    obs.results["a2"] = _served("w2", 0, 40) + _served("w2", 51.5, 60)
    obs.results["a1"] = [s for s in obs.results["a1"] if not 40 < s.ts - T0 < 51]
    assert _judge(obs, [_kill_w1(), restart]) == []
    obs.results["a2"] = _served("w2", 0, 40) + _served("w2", 53, 60)
    [v] = _judge(obs, [_kill_w1(), restart])
    assert (v.subject, v.ts) == ("a2", pytest.approx(T0 + 52.0))


def test_a_non_critical_app_shed_on_purpose_is_not_unserved() -> None:
    obs = _clean()
    obs.results["a2"] = _served("w2", 0, 30) + _served("w2", 45, 60)
    obs.routes = [(T0 + 30.1, "a2", "shed", ""), (T0 + 44.9, "a2", "serving", "w2")]
    assert _judge(obs, [_kill_w1()]) == []
    # The critical app shed is unserved all the same.
    obs.results["a1"] = _served("w1", 0, 20) + _served("w3", 20.6, 30) + _served("w3", 45, 60)
    obs.routes += [(T0 + 30.1, "a1", "shed", ""), (T0 + 44.9, "a1", "serving", "w3")]
    [v] = _judge(obs, [_kill_w1()])
    assert (v.subject, v.ts) == ("a1", pytest.approx(T0 + 35.0))


def test_double_serving_past_the_handover_grace_is_reported_at_its_time() -> None:
    obs = _clean()
    obs.results["a2"] = sorted(_served("w2", 0, 60) + _served("w1", 40, 43), key=lambda s: s.ts)
    [v] = _judge(obs, [_kill_w1()])
    assert (v.invariant, v.subject) == ("single_serving", "a2")
    assert v.ts == pytest.approx(T0 + 41.0) and v.until == pytest.approx(T0 + 43.0)
    assert "w1 and w2" in v.detail


def test_a_short_handover_is_not_double_serving() -> None:
    obs = _clean()
    obs.results["a1"] = sorted(_served("w1", 0, 20.4) + _served("w3", 20, 60), key=lambda s: s.ts)
    assert _judge(obs, [_kill_w1()]) == []


def test_skipped_faults_excuse_nothing() -> None:
    obs = _clean()
    obs.results["a2"] = _served("w2", 0, 30) + _served("w2", 38, 60)
    obs.events.append(_ev("failure_detected", 31.0, "w2", cause="stalled"))
    skipped = Injected("freeze", "w2", T0 + 30.0, None, skipped="LookupError: not running")
    assert {v.invariant for v in _judge(obs, [_kill_w1(), skipped])} == {
        "unserved",
        "false_verdict",
    }


def test_the_verdict_table_names_the_fault_that_excuses_each() -> None:
    obs = _clean()
    obs.events.append(_ev("failure_detected", 40.0, "w2", cause="slo_gray"))
    rows = verdict_table(obs, [_kill_w1()], T0, T0 + 60)
    assert [(round(ts - T0, 1), w, f is not None) for ts, w, _c, _i, f in rows] == [
        (20.3, "w1", True),
        (40.0, "w2", False),
    ]
    assert longest_gaps(obs, ("a1", "a2"), T0, T0 + 60) == {"a1": 0.6, "a2": 0.2}


def test_the_timeline_holds_faults_and_events_around_a_violation() -> None:
    obs = _clean()
    obs.events.append(_ev("heartbeat", 21.0, "w2"))  # not a timeline event
    lines = timeline_around(T0 + 30.0, [_kill_w1()], obs.events, T0)
    assert len(lines) == 5
    assert "FAULT kill_worker w1 injected" in lines[0] and lines[0].lstrip().startswith("+20.00")
    assert "failure_detected w1 cause=last_will" in lines[1]
    assert "a1->w3" in lines[2]
    assert "FAULT kill_worker w1 recovered" in lines[3]
    assert "worker_joined w1" in lines[4]
    assert timeline_around(T0 + 60.0, [_kill_w1()], obs.events, T0) == []


def test_a_verdict_only_the_coordinators_log_saw_is_judged(tmp_path: Path) -> None:
    """A broker going down takes the leader's QoS 0 events with it: the recorder never saw
    the verdict of w2 its last-will caused; the coordinator's log did."""
    obs = _clean()
    restart = Injected("broker_restart", "broker", T0 + 40.0, T0 + 42.0)
    stamp = datetime.fromtimestamp(T0 + 40.05, tz=timezone.utc).isoformat().replace("+00:00", "Z")
    logged = {
        "component": "coordinator",
        "worker": "w2",
        "app": None,
        "cause": "last_will",
        "worker_incarnation": "i2",
        "event": "failure_detected",
        "mesh": "m",
        "coordinator": "c1",
        "level": "info",
        "timestamp": stamp,
    }
    again = {**logged, "worker": "w1", "worker_incarnation": "old1"}
    again["timestamp"] = (
        datetime.fromtimestamp(T0 + 20.4, tz=timezone.utc).isoformat().replace("+00:00", "Z")
    )
    (tmp_path / "c1-1.log").write_text(
        "not json\n" + json.dumps(logged) + "\n" + json.dumps(again) + "\n"
    )
    for other in ("w1-1", "cam1"):  # not a coordinator's
        (tmp_path / f"{other}.log").write_text(json.dumps({**logged, "worker": "w3"}) + "\n")
    obs.logged = events_from_logs(log_docs(tmp_path), TIMELINE_EVENTS)
    assert [(e.worker, e.source) for e in obs.logged] == [("w2", "log:c1-1"), ("w1", "log:c1-1")]
    assert obs.logged[0].detail == {"cause": "last_will", "worker_incarnation": "i2"}
    # w1's verdict was recorded too (0.1 s apart): once.
    assert len(obs.all_events()) == len(obs.events) + 1
    [v] = _judge(obs, [_kill_w1(), restart])
    assert (v.invariant, v.subject) == ("false_verdict", "w2")
    assert v.ts == pytest.approx(T0 + 40.05, abs=1e-3)
    lines = timeline_around(v.ts, [restart], obs.all_events(), T0, window_s=1.0)
    assert "FAULT broker_restart broker injected" in lines[0]
    assert "failure_detected w2 cause=last_will [in c1-1's log only: not recorded]" in lines[1]


def test_merge_events_keeps_distinct_events() -> None:
    a = _ev("failover", 10.0, "w1")
    b = _ev("failover", 10.3, "w1")
    c = _ev("failover", 10.3, "w2")
    d = _ev("failure_detected", 10.3, "w1")
    assert merge_events([a], [b, c, d]) == [a, c, d]


# -- decoding ---------------------------------------------------------------------------------


def test_observations_decode_raw_messages_once() -> None:
    t = Topics("m1")
    res = messages.Result(
        app="a1",
        seq=1,
        sensor="cam1",
        capture_ts=T0 + 0.9,
        ts=T0 + 1.0,
        worker="w1",
        incarnation="i1",
        variant="efficientnet_lite2",
        generation=1,
        latency=messages.Latency(0.1, 1.0, 1.0, 20.0, 100.0),
        top=(),
    )
    hb = messages.Heartbeat(worker="w1", incarnation="i1", seq=1, ts=T0 + 0.5)
    st = messages.CoordinatorStatus("c2", "x", "leader", 3, T0 + 2.0)
    route = messages.Route("a2", "", "", 3, 4, T0, "shed")
    raw = [
        (1.0, t.app_results("a1", "w1"), messages.encode(res)),
        (1.1, t.app_results("a1", "w2"), messages.encode(res)),  # another worker's topic
        (1.2, t.worker_heartbeat("w1"), messages.encode(hb)),
        (1.3, t.coordinator_status, messages.encode(st)),
        (1.4, t.app_route("a2"), messages.encode(route)),
        (1.5, t.events_of(Role.COORDINATOR, "main"), messages.encode(_ev("failover", 1.0, "w1"))),
        (1.6, t.events_of(Role.COORDINATOR, "main"), b""),
        # Another source's topic: not who the payload says reported it.
        (1.7, t.events_of(Role.WORKER, "w1"), messages.encode(_ev("failover", 1.1, "w2"))),
    ]
    obs = Observations()
    obs.add(raw, 100.0)
    obs.add(raw, 100.0)  # nothing twice
    [(app, [s])] = obs.results.items()
    assert (app, s.ts, s.worker, s.variant) == ("a1", T0 + 1.0, "w1", "efficientnet_lite2")
    assert s.latency_ms == pytest.approx(100.0)
    assert obs.incarnation("w1", T0 + 1.0) == "i1" and obs.incarnation("w1", T0) == ""
    assert obs.leader() == "c2"
    assert obs.routes == [(101.4, "a2", "shed", "")]
    assert [e.kind for e in obs.events] == ["failover"]


# -- the command ------------------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    runner.register(parser.add_subparsers())
    return parser.parse_args(["drill", *argv])


def test_drill_chaos_options_reach_the_soak(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    got: list[tuple[Any, ...]] = []

    def fake(minutes: float, seed: int, broker: str, out: Path, models: Path) -> int:
        got.append((minutes, seed, broker, out))
        return 0

    monkeypatch.setattr(runner, "run_chaos", fake)
    args = _args(
        "--chaos", "--minutes", "3", "--seed", "1", "--broker", "mosquitto", "--out", "/tmp/x"
    )
    assert args.func(args) == 0
    assert got == [(3.0, 1, "mosquitto", Path("/tmp/x"))]
    args = _args("--chaos")
    assert args.func(args) == 0
    assert got[-1][0] == 10.0 and isinstance(got[-1][1], int)
    args = _args("--chaos", "KILL_PRIMARY")
    assert args.func(args) == 2
    assert "no case names" in capsys.readouterr().out
    args = _args("--chaos", "--minutes", "0")
    assert args.func(args) == 2
