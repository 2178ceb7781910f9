"""Placement planner: valid plans on random instances, LP rounding against the exact MILP and the
greedy baseline, hand-checked tiny instances, failover tables, re-plans, failback, profiles."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.planner import (
    App,
    Assign,
    Backup,
    InfeasibleError,
    Knobs,
    Options,
    Placement,
    Problem,
    ProblemError,
    Server,
    Step,
    Variant,
    VariantCost,
    build_failover_table,
    failback,
    load_profiles_csv,
    plan,
    plan_backups,
    plan_failover,
    plan_primaries,
    random_problem,
    replan_after,
    validate,
)
from coordinator.planner.placement import backup_value, primary_value
from faillite.catalog import load_catalog
from faillite.config import MeshConfig, packaged_config

# The shared original beside the repository where there is one, else the packaged copy.
_SHARED_CSV = Path(__file__).resolve().parents[3] / "shared/data/a2_profiles.csv"
A2_CSV = _SHARED_CSV if _SHARED_CSV.exists() else packaged_config("a2_profiles.csv")

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def small_problems(draw: st.DrawFn, max_apps: int = 12, max_servers: int = 4) -> Problem:
    return random_problem(
        draw(st.integers(1, max_apps)),
        draw(st.integers(1, max_servers)),
        draw(st.integers(1, 3)),
        seed=draw(st.integers(0, 10**6)),
        critical_share=draw(st.sampled_from([0.0, 0.3, 1.0])),
        hot_share=draw(st.sampled_from([0.0, 0.0, 0.3])),
        tightness=draw(st.floats(0.8, 2.0)),
    )


def score_primaries(p: Problem, primary: dict[str, Assign]) -> float:
    """What stage 1 maximizes: weighted accuracy plus the bonus of placing each app."""
    return sum(
        primary_value(p, a, x) + p.knobs.placement_bonus * p.app(a).weight
        for a, x in primary.items()
    )


def score_backups(p: Problem, backups: dict[str, Backup]) -> float:
    """What stage 2 maximizes: value of each backup plus the bonus of a critical app loaded
    (hot or warm) and of a hot app hot."""
    k = p.knobs
    return sum(
        backup_value(p, a, b)
        + (k.critical_bonus * p.app(a).weight if b.loaded and p.app(a).protected_warm else 0)
        + (k.hot_bonus * p.app(a).weight if b.kind == "hot" else 0)
        for a, b in backups.items()
    )


# -- properties on random instances ----------------------------------------------------------


@FAST
@given(small_problems(), st.sampled_from(["lp", "greedy"]))
def test_plans_are_valid(p: Problem, method: str) -> None:
    pl = plan(p, method)  # type: ignore[arg-type]
    assert validate(p, pl) == []
    for app, b in pl.backups.items():
        assert p.server(b.server).domain != p.server(pl.primary[app].server).domain
    assert set(pl.primary) | set(pl.unplaced) == {a.id for a in p.apps}


@settings(max_examples=4, deadline=None)
@given(st.integers(0, 10**6))
def test_plans_are_valid_on_the_restricted_lp_path(seed: int) -> None:
    # Big enough that the LP starts from top-k columns and grows by pricing.
    p = random_problem(80, 12, 3, seed=seed)
    pl = plan(p, options=Options(full_lp_max_columns=500))
    assert validate(p, pl) == []
    assert pl.stages[0].columns < pl.stages[0].candidates
    assert pl.gap is not None and pl.gap < 0.05


@FAST
@given(small_problems())
def test_critical_apps_are_warm_when_a_warm_backup_fits(p: Problem) -> None:
    # Disk unbounded: validate counts shared files once where the planner counts each
    # placement, so only memory and compute decide here.
    p = p.with_servers(dataclasses.replace(s, disk_mb=math.inf) for s in p.servers)
    pl = plan(p)
    for a in p.apps:
        if not a.protected_warm or a.id not in pl.primary:
            continue
        b = pl.backups.get(a.id)
        if b is not None and b.loaded:
            continue
        for s in p.servers:
            for v in p.family(a.family):
                trial = dict(pl.backups)
                trial[a.id] = Backup(s.id, v.name, "warm")
                alt = dataclasses.replace(pl, backups=trial)
                assert validate(p, alt), f"{a.id} could be warm with {v.name} on {s.id}"


# Derandomized: rounding plus local search is a heuristic. Over 2000 random instances of this
# shape about one in a thousand misses the MILP by more than 2 % (a knapsack where one app's
# backup must give way to two smaller ones); a fixed set of examples keeps CI deterministic.
@settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(small_problems())
def test_lp_rounding_within_2pct_of_the_milp(p: Problem) -> None:
    prim, _, _ = plan_primaries(p, "lp")
    mprim, _, m1 = plan_primaries(p, "milp")
    scale = max(abs(m1.objective), 1.0)
    assert score_primaries(p, mprim) - score_primaries(p, prim) <= 0.02 * scale + 1e-6
    # Stage 2 on the same primaries, so that both methods solve the same problem.
    lp, _ = plan_backups(p, prim, "lp")
    milp, m2 = plan_backups(p, prim, "milp")
    scale = max(abs(m2.objective), 1.0)
    assert score_backups(p, milp) - score_backups(p, lp) <= 0.02 * scale + 1e-6


@FAST
@given(small_problems(max_apps=20, max_servers=6))
def test_lp_never_worse_than_greedy(p: Problem) -> None:
    prim, _, _ = plan_primaries(p, "lp")
    gprim, _, _ = plan_primaries(p, "greedy")
    assert score_primaries(p, prim) >= score_primaries(p, gprim) - 1e-6
    lp, _ = plan_backups(p, prim, "lp")
    greedy, _ = plan_backups(p, prim, "greedy")
    assert score_backups(p, lp) >= score_backups(p, greedy) - 1e-6


@FAST
@given(small_problems(max_apps=10, max_servers=4))
def test_bound_of_a_restricted_lp_covers_the_exact_optimum(p: Problem) -> None:
    # One server per app and no pricing: the Lagrangian bound must still hold for every
    # candidate. Reports subtract the rounded plan's bonuses; add them back to compare scores.
    narrow = Options(full_lp_max_columns=0, top_k=1, pricing_rounds=0, incumbent=False)
    prim, _, r1 = plan_primaries(p, options=narrow)
    mprim, _, _ = plan_primaries(p, "milp")
    assert r1.lp_bound is not None
    bound1 = r1.lp_bound + score_primaries(p, prim) - r1.objective
    assert score_primaries(p, mprim) <= bound1 + 1e-6 * max(1.0, abs(bound1))
    lp, r2 = plan_backups(p, prim, options=narrow)
    milp, _ = plan_backups(p, prim, "milp")
    assert r2.lp_bound is not None
    bound2 = r2.lp_bound + score_backups(p, lp) - r2.objective
    assert score_backups(p, milp) <= bound2 + 1e-6 * max(1.0, abs(bound2))


# -- hand-checked tiny instances --------------------------------------------------------------


def tiny() -> Problem:
    """Two servers in two domains, two apps of one family.

    ``a`` (critical, SLO 20 ms) can run ``big`` only on the fast server s1; ``b`` takes ``big``
    on s2. Backups: ``a`` warm ``small`` on s2 (the only variant meeting its SLO there), ``b``
    warm ``small`` on s1 (100 MB left there: exactly ``small``; warm beats cold on MTTR).
    """
    variants = (Variant("small", "f", 70.0, 10.0), Variant("big", "f", 80.0, 20.0))
    costs = {
        ("small", "fast"): VariantCost(100, 1, load_ms=100, first_inference_ms=100),
        ("big", "fast"): VariantCost(200, 2, load_ms=300, first_inference_ms=200),
        ("small", "slow"): VariantCost(100, 10, load_ms=150, first_inference_ms=150),
        ("big", "slow"): VariantCost(200, 50, load_ms=400, first_inference_ms=300),
    }
    servers = (
        Server("s1", 300, failure_domain="d1", device_class="fast"),
        Server("s2", 400, failure_domain="d2", device_class="slow"),
    )
    apps = (
        App("a", "f", rate_fps=10, slo_ms=20, weight=2, critical=True),
        App("b", "f", rate_fps=10, slo_ms=200, weight=1),
    )
    return Problem(servers, apps, variants, costs)


@pytest.mark.parametrize("method", ["lp", "milp"])
def test_tiny_instance_exact_placement(method: str) -> None:
    p = tiny()
    pl = plan(p, method)  # type: ignore[arg-type]
    assert validate(p, pl) == []
    assert pl.primary == {"a": Assign("s1", "big"), "b": Assign("s2", "big")}
    assert pl.backups == {
        "a": Backup("s2", "small", "warm"),
        "b": Backup("s1", "small", "warm"),
    }
    k = p.knobs
    warm = k.mttr_weight * (k.detection_ms + k.reroute_ms)
    assert pl.objective == pytest.approx(2 * 80 + 80 + 2 * (70 - warm) + (70 - warm))
    assert pl.gap is not None and abs(pl.gap) < 1e-6


def test_tiny_instance_greedy_gives_non_critical_apps_cold_backups() -> None:
    p = tiny()
    pl = plan(p, "greedy")
    assert pl.backups == {
        "a": Backup("s2", "small", "warm"),
        "b": Backup("s1", "small", "cold"),
    }
    assert pl.lp_bound is None


def test_tiny_instance_failover_table() -> None:
    p = tiny()
    pl = plan(p)
    table = build_failover_table(p, pl)
    assert set(table) == {"d1", "d2"}
    d1 = table["d1"]
    assert d1.failed_servers == {"s1"}
    assert d1.affected == {"a": "s1"}
    assert d1.unrecoverable == {}
    assert d1.lost_backups == ("b",)  # b's backup lived on s1
    r = d1.recoveries["a"]
    assert (r.server, r.kind, r.first_variant, r.final_variant) == ("s2", "warm", "small", "small")
    assert r.steps == (Step("promote", "a", "s2", "small", est_ms=p.knobs.reroute_ms),)
    assert r.mttr_ms == p.knobs.detection_ms + p.knobs.reroute_ms
    d2 = table["d2"]
    assert set(d2.recoveries) == {"b"} and d2.recoveries["b"].server == "s1"
    # Failure of one server of a domain: the same lookup, filtered.
    assert table.for_servers({"s1"}) == d1
    assert table.for_servers({"s1", "s2"}) is None  # a cascade: not precomputed


def test_cold_ladder_loads_the_fastest_variant_first_then_upgrades() -> None:
    variants = (
        Variant("g0", "g", 60.0, 10.0),
        Variant("g1", "g", 70.0, 20.0),
        Variant("g2", "g", 75.0, 30.0),
    )
    costs = {
        ("g0", "x"): VariantCost(50, 1, load_ms=100, first_inference_ms=50),
        ("g1", "x"): VariantCost(100, 2, load_ms=400, first_inference_ms=400),
        ("g2", "x"): VariantCost(150, 3, load_ms=600, first_inference_ms=600),
    }
    servers = (
        Server("s1", 1000, failure_domain="d1", device_class="x"),
        Server("s2", 1000, failure_domain="d2", device_class="x", models_on_disk=frozenset({"g2"})),
    )
    p = Problem(servers, (App("x", "g", 5.0),), variants, costs)
    pl = Placement(
        primary={"x": Assign("s1", "g2")},
        backups={"x": Backup("s2", "g1", "cold", first="g0")},
    )
    assert validate(p, pl) == []
    fp = plan_failover(p, pl, {"s1"})
    r = fp.recoveries["x"]
    assert [(s.action, s.variant, s.replaces) for s in r.steps] == [
        ("load", "g0", None),
        ("upgrade", "g1", "g0"),  # the planned variant
        ("upgrade", "g2", "g1"),  # beyond the plan: on disk and memory allows
    ]
    assert r.mttr_ms == pytest.approx(p.knobs.detection_ms + p.knobs.reroute_ms + 150)
    assert (r.accuracy_first, r.accuracy_final) == (60.0, 75.0)


def test_cold_backups_share_memory_across_domains_and_prestage_their_ladder() -> None:
    # s3 has 250 MB: two warm "big" backups (400 MB) never fit, but cold ones of apps in
    # different domains do, since one domain fails at a time; cold "big" beats warm "small".
    p = tiny()
    servers = (
        Server("s1", 300, failure_domain="d1", device_class="fast"),
        Server("s2", 300, failure_domain="d2", device_class="fast"),
        Server("s3", 250, failure_domain="d3", device_class="fast"),
    )
    apps = (App("b", "f", 10, 200), App("c", "f", 10, 200))
    p = dataclasses.replace(p, servers=servers, apps=apps)
    prim = {"b": Assign("s1", "big"), "c": Assign("s2", "big")}
    for method in ("lp", "milp"):
        backups, _ = plan_backups(p, prim, method)  # type: ignore[arg-type]
        assert backups == {
            "b": Backup("s3", "big", "cold", first="small"),
            "c": Backup("s3", "big", "cold", first="small"),
        }
    pl = Placement(primary=prim, backups=backups)
    assert validate(p, pl) == []
    assert pl.by_server()["s3"].files == {"small", "big"}
    r = plan_failover(p, pl, {"s1"}).recoveries["b"]
    # Load small (fast), then big: 100 + 200 MB do not fit in 250 side by side.
    assert [(s.action, s.variant, s.release_first) for s in r.steps] == [
        ("load", "small", False),
        ("upgrade", "big", True),
    ]


def test_unrecoverable_apps_are_listed() -> None:
    p = tiny()
    pl = Placement(primary={"a": Assign("s1", "big"), "b": Assign("s2", "big")}, backups={})
    fp = plan_failover(p, pl, {"s1"})
    assert fp.recoveries == {} and fp.unrecoverable == {"a": "no backup"}
    assert fp.recovery_rate() == 0.0


def test_replan_after_failure_and_failback() -> None:
    p = random_problem(30, 8, 3, seed=7)
    pl = plan(p)
    dom = sorted(p.domains())[0]
    gone = set(p.domains()[dom])
    fp = build_failover_table(p, pl)[dom]
    re = replan_after(p, [dom], pl)
    survivors = p.without(gone)
    assert validate(survivors, re) == []
    assert not any(x.server in gone for x in re.primary.values())
    # Sticky: recovered apps mostly stay where the failover put them.
    stayed = sum(re.primary[a].server == r.server for a, r in fp.recoveries.items())
    assert stayed >= 0.8 * len(fp.recoveries)
    # The domain returns: fail back progressively.
    mig = failback(p, re)
    assert validate(p, mig.placement) == []
    moved = {a for a, x in mig.placement.primary.items() if re.primary.get(a) != x}
    for app in moved:
        moves = [m for m in mig.moves if m.app == app and m.role == "primary"]
        acts = [m.action for m in moves]
        assert acts.index("load") < acts.index("switch")  # load, then switch
        if "release" in acts and not any(m.release_first for m in moves):
            assert acts.index("switch") < acts.index("release")  # then release


def test_validate_names_violations() -> None:
    p = tiny()
    bad = Placement(
        primary={"a": Assign("s1", "big"), "b": Assign("s1", "big")},
        backups={"a": Backup("s1", "small", "warm")},
    )
    errors = validate(p, bad)
    assert any("shares failure domain d1" in e for e in errors)
    assert any("memory" in e and "s1" in e for e in errors)
    assert not any("SLO" in e for e in errors)
    slow = Placement(primary={"a": Assign("s2", "big")}, backups={}, unplaced={"b": "test"})
    assert any("SLO 20.00 ms" in e for e in validate(p, slow))


def test_infeasible_app_is_named() -> None:
    p = tiny()
    p = dataclasses.replace(p, apps=(*p.apps, App("c", "f", rate_fps=10, slo_ms=0.5)))
    pl = plan(p)
    assert "0.5 ms SLO" in pl.unplaced["c"] and "small" in pl.unplaced["c"]
    with pytest.raises(InfeasibleError, match=r"app c: no variant of family f meets"):
        plan(p, allow_unplaced=False)


def test_knobs_are_checked() -> None:
    with pytest.raises(ProblemError, match="primary_share"):
        Knobs(primary_share=0)


# -- config and profiles ---------------------------------------------------------------------


def test_from_config_uses_profiles_and_names_missing_ones() -> None:
    catalog = load_catalog(packaged_config("catalog.yaml"))
    mesh = MeshConfig.model_validate(
        {
            "sensors": [{"id": "cam", "fps": 12}],
            "apps": [{"id": "det", "sensor": "cam", "family": "efficientnet_lite"}],
            "workers": [
                {"id": "w1", "device_class": "cpu", "failure_domain": "r1"},
                {"id": "w2", "device_class": "cpu", "failure_domain": "r2"},
            ],
        }
    )
    p = Problem.from_config(mesh, catalog, alive={"w1", "w2"}, models_on_disk={"w1": {"x"}})
    assert p.app("det").rate_fps == 12
    assert p.server("w1").models_on_disk == {"x"} and p.server("w1").domain == "r1"
    lite0 = catalog.variant("efficientnet_lite0").profiles["cpu"]
    assert p.cost("efficientnet_lite0", "cpu") == VariantCost(
        lite0.memory_mb, lite0.latency_ms, lite0.load_ms, lite0.first_inference_ms
    )
    assert validate(p, plan(p)) == []
    g = mesh.workers[0].model_copy(update={"id": "g", "device_class": "a2"})
    gpu = mesh.model_copy(update={"workers": (*mesh.workers, g)})
    with pytest.raises(ProblemError, match=r"efficientnet_lite0.*device class 'a2'.*workers g"):
        Problem.from_config(gpu, catalog)
    p2 = Problem.from_config(gpu, catalog, default_latency_ms=5.0)
    assert p2.cost("efficientnet_lite0", "a2") == VariantCost(
        catalog.variant("efficientnet_lite0").memory_mb, 5.0
    )


def _need_csv() -> None:
    if not A2_CSV.exists():
        pytest.skip(f"{A2_CSV} not found (shared/ sits beside the repository in dev and CI)")


def test_csv_importer_reads_the_a2_profiles() -> None:
    _need_csv()
    prof = load_profiles_csv(A2_CSV)
    assert len(prof) == 52
    r50 = prof["resnet50"]
    assert r50.family == "resnet" and r50.input_size == (224, 224) and r50.device == "NVIDIA A2"
    assert r50.cost.memory_mb == pytest.approx(207.125)
    assert r50.cost.latency_ms == pytest.approx(5.7, abs=0.01)
    assert r50.cost.load_ms == pytest.approx(427.0, abs=1)
    assert r50.cost.first_inference_ms == pytest.approx(434.0, abs=1)
    assert r50.file_size_mb == pytest.approx(97.41, abs=0.01)
    assert prof["efficientnet_b7"].input_size == (600, 600)
    assert r50.device_class == "a2"


def test_csv_importer_names_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "p.csv"
    bad.write_text("model_variant,device\nx,y\n")
    with pytest.raises(ProblemError, match="missing column"):
        load_profiles_csv(bad)
    with pytest.raises(ProblemError, match="cannot read"):
        load_profiles_csv(tmp_path / "none.csv")


def test_a2_catalog_matches_the_csv_and_plans() -> None:
    catalog = load_catalog(packaged_config("a2_catalog.yaml"))
    assert len(catalog.variants()) == 52
    for v in catalog.variants():
        assert 55 < v.accuracy < 90 and v.accuracy_source.startswith("torchvision")
        assert v.builder == "external" and v.file == f"{v.name}.onnx" and "a2" in v.profiles
    assert catalog.variant("resnet50").accuracy == 76.130
    if A2_CSV.exists():
        prof = load_profiles_csv(A2_CSV)
        for v in catalog.variants():
            c, a2 = prof[v.name].cost, v.profiles["a2"]
            assert a2.memory_mb == pytest.approx(c.memory_mb, abs=1e-3)
            assert a2.latency_ms == pytest.approx(c.latency_ms, abs=1e-3)
            assert a2.load_ms == pytest.approx(c.load_ms, abs=0.1)
            assert a2.first_inference_ms == pytest.approx(c.first_inference_ms, abs=0.1)
            assert catalog.family_of(v.name).name == prof[v.name].family
    mesh = MeshConfig.model_validate(
        {
            "sensors": [{"id": f"c{i}", "fps": 15} for i in range(6)],
            "apps": [
                {"id": f"a{i}", "sensor": f"c{i}", "family": fam, "critical": i == 0}
                for i, fam in enumerate(["resnet", "efficientnet", "mobilenet"] * 2)
            ],
            "workers": [
                {
                    "id": f"w{i}",
                    "device_class": "a2",
                    "memory_mb": 1500,
                    "failure_domain": f"r{i % 2}",
                }
                for i in range(4)
            ],
        }
    )
    p = Problem.from_config(mesh, catalog)
    pl = plan(p)
    assert validate(p, pl) == [] and not pl.unplaced and len(pl.backups) == 6
    assert pl.backups["a0"].kind == "warm"


def test_migration_never_loads_past_a_servers_memory() -> None:
    """Two full servers swap their apps: no load fits beside what runs, so one app must go down
    first; the moves release on the server being loaded, never overcommit it."""
    from coordinator.planner import migration_steps

    p = Problem(
        servers=(Server("s1", 100.0), Server("s2", 100.0)),
        apps=(App("a", "f", 1.0), App("b", "f", 1.0)),
        variants=(Variant("v", "f", 70.0, 10.0),),
        costs={("v", "cpu"): VariantCost(100.0, 5.0)},
    )
    current = Placement({"a": Assign("s1", "v"), "b": Assign("s2", "v")}, {})
    target = Placement({"a": Assign("s2", "v"), "b": Assign("s1", "v")}, {})
    used = {"s1": 100.0, "s2": 100.0}
    for m in migration_steps(p, current, target):
        if m.action == "load":
            used[m.server] += 100.0
        elif m.action == "release":
            used[m.server] -= 100.0
        assert all(u <= 100.0 for u in used.values()), f"{m} overcommits: {used}"
    assert used == {"s1": 100.0, "s2": 100.0}
