"""The load and boot drill cases' pure parts (no process started): boot orders, the busiest
worker, route spans, verdicts of every cause, result gaps, the slow-load plug-in hook, and the
lines ``faillite drill --repeat`` prints."""

from __future__ import annotations

import argparse
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from faillite import messages
from field_kit.drill import faults
from field_kit.drill.analysis import Recording
from field_kit.drill.cases import DrillOptions, verdicts
from field_kit.drill.load_cases import (
    BROKER_LAST,
    LOAD_CASES,
    LONG_ORDERS,
    BootOrder,
    busiest_worker,
    check_no_gap,
    first_all_served,
    order_label,
    parse_order,
    seconds_in,
    unserved_spans,
)
from field_kit.drill.mesh import ROLES, DrillMesh, MeshSpec, boot_port
from field_kit.drill.runner import CASES, register, repeat_summary, run_line

# -- boot orders -----------------------------------------------------------------------------


def test_parse_order_takes_aliases_and_separators() -> None:
    assert parse_order("cameras,workers,coordinator,broker") == BROKER_LAST
    assert parse_order("sensor > worker > leader > broker") == BROKER_LAST
    assert parse_order("Broker Coordinators Camera Worker") == (
        "broker",
        "coordinator",
        "sensor",
        "worker",
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("cameras,workers,coordinator", "missing: broker"),
        ("cameras,workers,coordinator,broker,worker", "twice: worker"),
        ("cameras,workers,coordinator,toaster", "unknown role 'toaster'"),
        ("", "missing: broker, coordinator, worker, sensor"),
    ],
)
def test_parse_order_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_order(text)


def test_boot_order_variants_per_form() -> None:
    case = BootOrder()
    assert case.order == BROKER_LAST
    assert case.label == "BOOT_ORDER[sensor>worker>coordinator>broker]"
    assert [c.label for c in case.variants(DrillOptions(short=True))] == [case.label]
    long = case.variants(DrillOptions(short=False))
    assert [c.order for c in long if isinstance(c, BootOrder)] == list(LONG_ORDERS)
    # Every long order is a permutation of the roles, and they differ.
    assert all(sorted(o) == sorted(ROLES) for o in LONG_ORDERS)
    assert len(set(LONG_ORDERS)) == len(LONG_ORDERS)
    mine = (("worker", "sensor", "broker", "coordinator"),)
    only = case.variants(DrillOptions(orders=mine))
    assert [c.label for c in only] == ["BOOT_ORDER[worker>sensor>broker>coordinator]"]
    assert order_label(("a", "b")) == "a>b"


def test_mesh_refuses_a_bad_boot_order(tmp_path: Path) -> None:
    mesh = DrillMesh(tmp_path, MeshSpec(), tmp_path, "t")
    with pytest.raises(ValueError, match="at most once"):
        mesh.start(("broker", "broker"))
    with pytest.raises(ValueError, match="at most once"):
        mesh.start(("broker", "toaster"))
    pair = DrillMesh(tmp_path / "p", MeshSpec(broker="mosquitto", pair=True), tmp_path, "p")
    with pytest.raises(ValueError, match="broker started first"):
        pair.start(BROKER_LAST)
    assert mesh.group.children == [] and mesh.launcher.processes == []


def test_boot_port_is_free_and_outside_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    port = boot_port()
    assert 1024 <= port < low
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # still free


def test_load_cases_are_in_the_runners_registry() -> None:
    assert set(LOAD_CASES) == {
        "BUSY_BOARD",
        "KILL_UNDER_LOAD",
        "LATE_WORKERS",
        "BOOT_ORDER",
        "SLOW_LOAD",
    }
    assert all(CASES[n] is c for n, c in LOAD_CASES.items())


# -- the busiest worker ----------------------------------------------------------------------


def test_busiest_worker_serves_the_most_apps_ties_go_to_a1s_primary() -> None:
    assert busiest_worker([("a1", "w2"), ("a2", "w1"), ("a3", "w1")]) == "w1"
    assert busiest_worker([("a1", "w2"), ("a2", "w1")]) == "w2"
    assert busiest_worker([("a2", "w3"), ("a3", "w1")]) == "w1"  # no a1: first by name
    assert busiest_worker([("a1", "w3"), ("a2", "w1"), ("a3", "w1")]) == "w1"
    with pytest.raises(LookupError):
        busiest_worker([])


# -- routes and results ----------------------------------------------------------------------


def test_unserved_spans_from_routes() -> None:
    routes = [
        (10.0, "a1", "serving", "w1"),
        (12.0, "a1", "unserved", ""),
        (12.5, "a2", "shed", ""),
        (13.0, "a1", "unserved", ""),  # still unserved: one span
        (14.0, "a1", "degraded", "w3"),
        (15.0, "a2", "serving", "w2"),
        (16.0, "a2", "serving", ""),  # names nobody: unserved, whatever it says
    ]
    spans = unserved_spans(reversed(routes), until=20.0)  # any order
    assert spans == {
        "a1": [(12.0, 14.0, "unserved")],
        "a2": [(12.5, 15.0, "shed"), (16.0, 20.0, "unserved")],
    }
    assert seconds_in(spans, "unserved", 13.0) == {"a1": 1.0, "a2": 4.0}
    assert seconds_in(spans, "shed", 0.0) == {"a2": 2.5}
    # A state change with no serving route between: unserved, then shed.
    assert unserved_spans([(1.0, "a1", "unserved", ""), (2.0, "a1", "shed", "")], 3.0) == {
        "a1": [(1.0, 2.0, "unserved"), (2.0, 3.0, "shed")]
    }


def test_first_all_served() -> None:
    stamps = {"a1": [1.0, 5.0, 6.0], "a2": [2.0, 7.5]}
    assert first_all_served(stamps, ["a1", "a2"], 4.0) == 7.5
    assert first_all_served(stamps, ["a1", "a2"], 8.0) == float("inf")
    assert first_all_served({}, ["a1"], 0.0) == float("inf")


def _result(app: str, ts: float, worker: str = "w1") -> messages.Result:
    return messages.Result(
        app=app,
        seq=0,
        sensor="cam1",
        capture_ts=ts - 0.05,
        ts=ts,
        worker=worker,
        incarnation="i",
        variant="v",
        generation=1,
        latency=messages.Latency(0.0, 0.0, 0.0, 0.0, 0.0),
        top=(),
    )


def test_check_no_gap_allows_shed_spans() -> None:
    rec = Recording()
    rec.results["a1"] = [_result("a1", 100.0 + 0.2 * i) for i in range(101)]  # 100..120
    rec.results["a2"] = [_result("a2", 100.0 + 0.2 * i) for i in range(26)]  # 100..105
    rec.results["a2"] += [_result("a2", 115.0 + 0.2 * i) for i in range(26)]  # 115..120
    bad = check_no_gap(rec, 100.0, 120.0)
    assert not bad.ok and "a2: no result +5.00..+15.00 s" in bad.detail
    assert "a1" not in bad.detail
    assert check_no_gap(rec, 100.0, 120.0, {"a2": [(104.0, 113.0)]}).ok  # shed, on purpose
    assert not check_no_gap(rec, 100.0, 120.0, {"a2": [(110.0, 112.0)]}).ok


# -- verdicts of every cause -----------------------------------------------------------------


def _event(kind: str, ts: float, worker: str, **detail: Any) -> messages.Event:
    return messages.Event(kind=kind, ts=ts, source="coordinator/c1", worker=worker, detail=detail)


def test_verdicts_count_every_cause_and_lone_failovers() -> None:
    rec = Recording()
    rec.events = [
        _event("failure_detected", 101.0, "w1", cause="slo_gray"),
        _event("failover", 101.01, "w1", cause="slo_gray"),  # the same verdict
        _event("failure_detected", 103.0, "w2", cause="stalled"),
        _event("failover", 103.01, "w2", cause="stalled"),
        _event("failover", 105.0, "w3", cause="something_new"),  # no failure_detected
        _event("failure_detected", 107.0, "w2", cause="heartbeat_silence"),
        _event("slo_violation", 108.0, "w1", action="downsize"),  # degradation: no verdict
    ]
    found = verdicts(rec, 100.0)
    assert [v.split(" at ")[0] for v in found] == [
        "w1 judged failed (slo_gray)",
        "w2 judged failed (stalled)",
        "w3 failed over (something_new)",
        "w2 judged failed (heartbeat_silence)",
    ]
    assert found[0].startswith("w1 judged failed (slo_gray) at +1.00 s (")
    # The harmed worker's verdicts from its harm on are expected; before it, not.
    assert len(verdicts(rec, 100.0, harmed={"w2": 104.0})) == 3
    assert len(verdicts(rec, 100.0, until=104.0)) == 2
    assert verdicts(rec, 110.0) == []


# -- slow loads (the faults plug-in) ---------------------------------------------------------


class _Backend:
    def __init__(self) -> None:
        self.loads: list[str] = []

    def load(self, variant: str, path: Path) -> str:
        self.loads.append(variant)
        return f"model {variant}"


class _Models:
    def __init__(self) -> None:
        self.backend = _Backend()


class _Host:
    def __init__(self) -> None:
        self.interceptors: list[Any] = []
        self.models = _Models()


@pytest.mark.parametrize("mode", ["sleep", "cpu"])
def test_slow_loads_wrap_the_backend_and_toggle(mode: str) -> None:
    host = _Host()
    f = faults.Faults(slow_load_s=0.2, slow_load_mode=mode)
    assert faults.wrap_loads(host, f)
    t0 = time.monotonic()
    assert host.models.backend.load("lite0", Path("x")) == "model lite0"
    assert time.monotonic() - t0 < 0.1  # off by default
    f.toggle_slow_load()
    t0 = time.monotonic()
    assert host.models.backend.load("lite1", Path("x")) == "model lite1"
    assert time.monotonic() - t0 >= 0.2
    f.toggle_slow_load()
    assert f.load_delay_s == 0.0
    assert host.models.backend.loads == ["lite0", "lite1"]


def test_slow_loads_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    monkeypatch.setenv(faults.SLOW_LOAD_ENV, "0.25")
    monkeypatch.setenv(faults.SLOW_LOAD_MODE_ENV, "sleep")
    saved = {
        s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2, faults.SLOW_LOAD_SIGNAL)
    }
    try:
        host = _Host()
        f = faults.install(host)
        assert (f.load_delay_s, f.slow_load_s, f.slow_load_mode) == (0.25, 0.25, "sleep")
        signal.raise_signal(faults.SLOW_LOAD_SIGNAL)  # toggles: off
        assert f.load_delay_s == 0.0
        # A host without models: slow loads unavailable, the signal does nothing.
        bare = faults.install(type("Bare", (), {"interceptors": []})())
        signal.raise_signal(faults.SLOW_LOAD_SIGNAL)
        assert (bare.slow_load_s, bare.load_delay_s) == (0.25, 0.0)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def test_slow_loads_without_a_backend_say_so() -> None:
    assert not faults.wrap_loads(object(), faults.Faults())


# -- faillite drill --repeat -----------------------------------------------------------------


def _run(status: str, *failed: tuple[str, str], label: str = "BUSY_BOARD") -> dict[str, Any]:
    checks = [{"name": "no_crash", "ok": True, "detail": "fine"}]
    checks += [{"name": n, "ok": False, "detail": d} for n, d in failed]
    return {"case": label, "label": label, "status": status, "duration_s": 40.0, "checks": checks}


def test_run_line_names_the_failed_checks() -> None:
    assert run_line(_run("passed"), 1, 20) == "[BUSY_BOARD run 1/20] PASSED in 40.0 s"
    line = run_line(
        _run("failed", ("no_worker_failed", "w1 judged failed\n(slo_gray)"), ("x", "y" * 500)),
        3,
        20,
    )
    assert line.startswith("[BUSY_BOARD run 3/20] FAILED in 40.0 s: no_worker_failed (w1 ")
    assert "(slo_gray)" in line and "\n" not in line
    assert line.endswith("...)") and len(line) < 400
    skipped = {"case": "P", "status": "skipped", "reason": "needs root", "checks": []}
    assert run_line(skipped, 1, 2) == "[P run 1/2] SKIPPED: needs root"


def test_repeat_summary_counts_passes_per_case() -> None:
    results = [
        _run("passed"),
        _run("failed", ("no_worker_failed", "w1")),
        _run("passed"),
        _run("failed", ("no_worker_failed", "w2"), ("never_unserved", "a2")),
        _run("passed", label="BOOT_ORDER[a>b]"),
    ]
    for i, r in enumerate(results[:4], start=1):
        r["run"] = i
    results[4]["run"] = 1
    assert repeat_summary(results, "amqtt") == [
        "BUSY_BOARD on amqtt: 2/4 passed (not passed: run 2, 4; no_worker_failed x2, "
        "never_unserved x1)",
        "BOOT_ORDER[a>b] on amqtt: 1/1 passed",
    ]
    skipped = [{"case": "P", "status": "skipped", "reason": "needs root", "checks": []}] * 2
    assert repeat_summary(skipped, "amqtt") == ["P on amqtt: skipped (needs root)"]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["drill", *argv])


def test_drill_cli_refuses_bad_repeat_and_order(capsys: pytest.CaptureFixture[str]) -> None:
    args = _args("BOOT_ORDER", "--order", "workers,broker", "--out", "/nonexistent")
    assert args.func(args) == 2
    assert "missing: coordinator, sensor" in capsys.readouterr().out
    args = _args("BUSY_BOARD", "--repeat", "0")
    assert args.func(args) == 2
    assert "--repeat" in capsys.readouterr().out
    args = _args("BOOT_ORDER", "--order", "cameras,workers,coordinator,broker", "--repeat", "3")
    assert args.repeat == 3 and args.boot_delay is None
    assert [parse_order(o) for o in args.order] == [BROKER_LAST]
