"""Fleet simulator (faillite simulate): a tiny scenario worked out by hand, determinism, the
baselines' extremes, lp at a budget where full replication does not fit, and the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from coordinator.planner import App, Placement, Problem, Server, Variant, VariantCost
from field_kit.simulate import (
    Engine,
    EngineSettings,
    Failure,
    FailureModel,
    PolicyMetrics,
    Protection,
    Simulation,
    SimulationConfig,
    SiteSpec,
    TraceError,
    make_policy,
    named,
    parse_trace,
)
from field_kit.simulate.cli import register
from field_kit.simulate.scenario import generate, load_catalogued
from field_kit.simulate.timeline import AccuracyTimeline

# -- the tiny scenario, by hand -----------------------------------------------------------------
#
# One family "f" with two variants on device class "gpu":
#   small: 70 % top-1, 100 MB, 10 ms, load 200 ms + first inference 100 ms (restore 300 ms)
#   big:   80 % top-1, 200 MB, 10 ms, load 400 ms + first inference 200 ms (restore 600 ms)
# Three servers of 200 MB, each its own failure domain; apps a (critical) and b, 10 fps each
# (compute 0.1 each: never binding). Knobs: detection 300 ms, reroute 3 ms. Re-plan 2 s after
# the decision.
#
# Stage 1 (every policy but greedy uses the lp planner's): a and b run "big" on two of the
# servers (160 points, the only optimum); the third server S3 is empty. The trace fails a's
# server at t = 10 s and repairs it at t = 70 s: a window of W = 60 000 ms. Full replication
# (the reference) brings a back with "big" after 303 ms: ∫ref = 80 x (60 000 - 303) = 4 775 760.
#
# none: no backup; a is down the whole window. Recovery 0/1; reduction 4 775 760 / 60 000
#   = 79.596 points, 100 %. Protection 0 MB.
# full-warm: a's replica (big, 200 MB) fits on S3; b's does not fit anywhere (both other
#   servers full): unprotected 1. MTTR 303 ms (detection + reroute) with the primary's own
#   variant: reduction 0. Protection 200 MB resident = 200 / 600 = 33.3 % of memory.
# cold: both files (big) on S3, 20 MB of disk (one file), cold reserve 200 MB (one domain's
#   load at a time). On failure S3 has 200 MB free: load big. MTTR = 300 + 3 + 400 + 200
#   = 903 ms; reduction 80 x (903 - 303) / 60 000 = 0.8 points = 48 000 / 4 775 760 = 1.00508 %.
# lp: stage 2 gives both a and b a warm "small" on S3 (100 + 100 MB; a's is the critical warm
#   backup, b's warm small (69.394) beats cold small (68.794) and cold big cannot fit beside
#   a's warm). MTTR 303 ms, serving small (70). Right after failover: 10 points, 12.5 %.
#   The re-plan (at 300 + 2000 = 2 300 ms) upgrades a to big on S3 and drops b's backup (no
#   room left); big cannot load beside small (100 + 200 > 200 MB), so migration_steps releases
#   small first: a is down from 2 300 to 2 900 ms (load + first inference of big), then 80.
#   ∫lp = 70 x (2 300 - 303) + 80 x (60 000 - 2 900) = 139 790 + 4 568 000 = 4 707 790;
#   loss 67 970: 67 970 / 60 000 = 1.132833 points, 67 970 / 4 775 760 = 1.423229 %.
#   Protection: 200 MB resident (two warm smalls), 33.3 %; nothing unprotected.

WINDOW_MS = 60_000.0
REF_INTEGRAL = 80.0 * (WINDOW_MS - 303.0)


def tiny_problem() -> Problem:
    variants = (Variant("small", "f", 70.0, 10.0), Variant("big", "f", 80.0, 20.0))
    costs = {
        ("small", "gpu"): VariantCost(100, 10, load_ms=200, first_inference_ms=100),
        ("big", "gpu"): VariantCost(200, 10, load_ms=400, first_inference_ms=200),
    }
    servers = tuple(Server(f"s{i}", 200, device_class="gpu") for i in (1, 2, 3))
    apps = (App("a", "f", 10.0, critical=True), App("b", "f", 10.0))
    return Problem(servers, apps, variants, costs)


def run_tiny(name: str) -> tuple[Placement, str, PolicyMetrics, Protection]:
    p = tiny_problem()
    policy = make_policy(name)
    init = policy.initial(p)
    a_server = init.primary["a"].server
    assert {init.primary["a"].variant, init.primary["b"].variant} == {"big"}
    assert a_server != init.primary["b"].server
    (spare,) = {"s1", "s2", "s3"} - {a_server, init.primary["b"].server}
    eng = Engine(p, policy, init, EngineSettings(replan_delay_ms=2000.0, failback=False))
    run = eng.run([Failure(10_000.0, (a_server,), WINDOW_MS)], horizon_ms=70_000.0)
    assert [e.app for e in run.episodes] == ["a"]
    return init, spare, PolicyMetrics.of([run]), Protection.of(p, init)


def test_tiny_none_by_hand() -> None:
    init, _, m, prot = run_tiny("none")
    assert init.backups == {}
    assert m.recovered == 0 and m.recovery_rate == 0.0 and m.mttr_ms == ()
    assert m.window.points == pytest.approx(REF_INTEGRAL / WINDOW_MS)  # 79.596
    assert m.window.pct == pytest.approx(100.0)
    assert (prot.warm_mb, prot.cold_disk_mb, prot.unprotected) == (0.0, 0.0, 2)


def test_tiny_full_warm_by_hand() -> None:
    init, spare, m, prot = run_tiny("full-warm")
    assert set(init.backups) == {"a"}
    assert (init.backups["a"].server, init.backups["a"].variant) == (spare, "big")
    assert m.recovery_rate == 1.0
    assert m.mttr_ms == (303.0,)  # detection + reroute
    assert m.window.points == pytest.approx(0.0) and m.window.pct == pytest.approx(0.0)
    assert prot.warm_mb == 200.0 and prot.warm_share == pytest.approx(1 / 3)
    assert prot.unprotected == 1


def test_tiny_cold_by_hand() -> None:
    init, spare, m, prot = run_tiny("cold")
    assert {a: (b.server, b.variant, b.kind) for a, b in init.backups.items()} == {
        "a": (spare, "big", "cold"),
        "b": (spare, "big", "cold"),
    }
    assert m.recovery_rate == 1.0
    assert m.mttr_ms == (903.0,)  # detection + reroute + load + first inference
    assert m.window.points == pytest.approx(0.8)
    assert m.window.pct == pytest.approx(48_000 / REF_INTEGRAL * 100)  # 1.00508 %
    assert (prot.warm_mb, prot.cold_reserve_mb, prot.cold_disk_mb) == (0.0, 200.0, 20.0)
    assert prot.unprotected == 0


def test_tiny_lp_by_hand() -> None:
    init, spare, m, prot = run_tiny("lp")
    assert {a: (b.server, b.variant, b.kind) for a, b in init.backups.items()} == {
        "a": (spare, "small", "warm"),
        "b": (spare, "small", "warm"),
    }
    assert m.recovery_rate == 1.0 and m.recovered_by_failover == 1
    assert m.mttr_ms == (303.0,)
    assert m.after_failover.points == pytest.approx(10.0)
    assert m.after_failover.pct == pytest.approx(12.5)
    assert m.window.points == pytest.approx(67_970 / WINDOW_MS)  # 1.132833
    assert m.window.pct == pytest.approx(67_970 / REF_INTEGRAL * 100)  # 1.423229 %
    assert m.end_of_window.points == pytest.approx(0.0)
    assert prot.warm_mb == 200.0 and prot.unprotected == 0


# -- generated scenarios ------------------------------------------------------------------------

SMALL = SiteSpec(10, 4, 1, description="test site")


def test_same_seed_gives_identical_results() -> None:
    sc = generate(SMALL, load_catalogued(), 3, 1.5, name="small")
    cfg = SimulationConfig(
        policies=("none", "full-warm", "cold", "greedy", "lp"),
        modes=("sweep", "random"),
        duration_h=24 * 60,
        failure_model=FailureModel(server_mtbf_h=400.0),
        max_failures=4,
    )
    a = json.dumps(Simulation(sc, cfg, seed=3).run().to_json())
    sc2 = generate(SMALL, load_catalogued(), 3, 1.5, name="small")
    b = json.dumps(Simulation(sc2, cfg, seed=3).run().to_json())
    assert a == b
    assert '"random_failures"' in a


def test_none_recovers_nothing_and_full_warm_everything_with_ample_memory() -> None:
    sc = generate(SMALL, load_catalogued(), 0, 4.0, name="small")
    assert sc.full_replication_fits()
    res = Simulation(sc, SimulationConfig(policies=("none", "full-warm"))).run()
    none = res.policies["none"].metrics["sweep"]
    warm = res.policies["full-warm"].metrics["sweep"]
    assert none.failed_apps == warm.failed_apps == len(sc.problem.apps)
    assert none.recovered == 0 and none.recovery_rate == 0.0
    assert warm.recovery_rate == 1.0 and warm.recovered_by_failover == warm.failed_apps
    assert warm.mttr.max == pytest.approx(303.0)
    assert warm.after_failover.points == pytest.approx(0.0)
    assert res.policies["full-warm"].protection.unprotected == 0


def test_lp_recovers_every_app_of_each_single_failure_where_full_replication_does_not_fit() -> None:
    sc = named("site27", seed=0)  # memory scale 1.5: full warm replication needs 2
    assert not sc.full_replication_fits()
    assert sc.total_memory_mb < sc.full_replication_mb
    res = Simulation(sc, SimulationConfig(policies=("full-warm", "lp"))).run()
    lp = res.policies["lp"]
    cases = lp.runs["sweep"]
    assert len(cases) == len(sc.problem.servers)
    for run in cases:
        assert run.episodes, "every A2 hosts some app"
        assert all(e.mttr_ms is not None and e.by_failover for e in run.episodes)
    assert lp.metrics["sweep"].recovery_rate == 1.0
    assert lp.protection.unprotected == 0
    assert res.policies["full-warm"].metrics["sweep"].recovery_rate < 1.0


# -- pieces -------------------------------------------------------------------------------------


def test_timeline_integrates_piecewise_constant_accuracy() -> None:
    tl = AccuracyTimeline(0.0, 80.0)
    tl.set(10.0, 0.0)
    tl.set(12.0, 70.0)
    tl.set(20.0, 80.0)
    assert tl.integrate(0.0, 30.0) == pytest.approx(80 * 10 + 70 * 8 + 80 * 10)
    assert tl.integrate(11.0, 13.0) == pytest.approx(70.0)
    assert tl.value_at(12.0) == 70.0


def test_trace_expands_domains_and_rejects_unknown_servers() -> None:
    sc = named("fleet1000", seed=0)
    fs = parse_trace(
        [
            {"time_s": 50, "domain": "rack03", "repair_s": 10},
            {"time_s": 5, "servers": ["a2-07"], "repair_s": 60},
        ],
        sc.problem,
    )
    assert [f.time_ms for f in fs] == [5000.0, 50000.0]
    assert fs[1].servers == tuple(f"a2-{i:02d}" for i in range(15, 20))
    with pytest.raises(TraceError, match="unknown server"):
        parse_trace([{"time_s": 1, "servers": ["nope"], "repair_s": 1}], sc.problem)
    with pytest.raises(TraceError, match="repair_s"):
        parse_trace([{"time_s": 1, "servers": ["a2-07"]}], sc.problem)


# -- CLI ----------------------------------------------------------------------------------------


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faillite")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["simulate", *argv])
    rc: int = args.func(args)
    return rc


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--profiles", "/nonexistent/profiles.csv"], "no such file"),
        (["--scenario", "atlantis"], "unknown scenario 'atlantis'"),
        (["--policies", "lp,magic"], "unknown policy 'magic'"),
        (["--memory-scale", "-1"], "--memory-scale must be a positive number"),
        (["--mode", "sweep,later"], "unknown mode later"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not JSON"),
        ('[{"time_s": 1, "servers": ["a2-9"], "repair_s": 5}]', "unknown server(s) a2-9"),
        ('[{"time_s": 1, "domain": "rack1", "repair_s": 5}]', "unknown domain 'rack1'"),
        ("[]", "non-empty JSON list"),
    ],
)
def test_cli_bad_trace_exits_2(
    content: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "trace.json"
    trace.write_text(content)
    rc = cli(["--trace", str(trace), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err and err.count("\n") == 1


def test_cli_trace_run_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps([{"time_s": 60, "servers": ["a2-3"], "repair_s": 600}]))
    out = tmp_path / "out"
    argv = ["--trace", str(trace), "--policies", "none,lp", "--out", str(out), "--quiet"]
    assert cli(argv) == 0
    names = {p.name for p in out.iterdir()}
    assert {"results.json", "timings.json", "report.md", "mttr_cdf.png"} <= names
    assert {"recovery_accuracy.png", "protection_memory.png"} <= names
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["modes"] == ["trace"]
    assert res["policies"]["lp"]["trace"]["recovery_rate"] == 1.0
    assert res["policies"]["none"]["trace"]["recovery_rate"] == 0.0
    assert "does not fit" in (out / "report.md").read_text()
