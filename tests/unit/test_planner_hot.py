"""Hot protection in the planner: a backup that runs every frame, its compute priced as such."""

from __future__ import annotations

import pytest

from coordinator.planner import (
    App,
    Assign,
    Backup,
    Placement,
    Problem,
    Server,
    Step,
    Variant,
    VariantCost,
    build_failover_table,
    migration_steps,
    plan,
    plan_backups,
    validate,
)

VARIANTS = (Variant("small", "f", 70.0, 10.0), Variant("big", "f", 80.0, 20.0))
COSTS = {
    ("small", "x"): VariantCost(100, 10, load_ms=200, first_inference_ms=100),
    ("big", "x"): VariantCost(200, 20, load_ms=400, first_inference_ms=200),
}


def two_servers(compute: float = 1.0) -> Problem:
    servers = (
        Server("s1", 400, compute_budget=compute, failure_domain="d1", device_class="x"),
        Server("s2", 400, compute_budget=compute, failure_domain="d2", device_class="x"),
    )
    apps = (App("a", "f", rate_fps=30, slo_ms=100, hot=True),)
    return Problem(servers, apps, VARIANTS, COSTS)


@pytest.mark.parametrize("method", ["lp", "milp", "greedy"])
def test_a_hot_app_gets_a_hot_backup(method: str) -> None:
    p = two_servers()
    pl = plan(p, method)  # type: ignore[arg-type]
    assert validate(p, pl) == []
    (prim,) = pl.primary.values()
    b = pl.backups["a"]
    assert b.kind == "hot" and b.server != prim.server


def test_hot_mttr_is_below_warm_by_a_frame_wait_and_an_inference() -> None:
    p = two_servers()
    warm = p.mttr_ms("small", "s2", "warm", "a")
    hot = p.mttr_ms("small", "s2", "hot", "a")
    # 30 fps: a warm backup waits half a frame interval on average, then runs the frame.
    assert warm - hot == pytest.approx(min(500 / 30 + 10, warm))


def test_the_failover_table_promotes_a_hot_backup_with_its_shorter_mttr() -> None:
    p = two_servers()
    pl = plan(p)
    prim = pl.primary["a"]
    dom = p.server(prim.server).domain
    r = build_failover_table(p, pl)[dom].recoveries["a"]
    b = pl.backups["a"]
    assert r.kind == "hot"
    assert r.steps == (Step("promote", "a", b.server, b.variant, est_ms=p.knobs.reroute_ms),)
    assert r.mttr_ms == p.mttr_ms(b.variant, b.server, "hot", "a")
    assert r.mttr_ms < p.mttr_ms(b.variant, b.server, "warm", "a")


def test_hot_compute_counts_in_normal_operation() -> None:
    """The same backup that validates warm is refused hot when the server's compute, with
    the primary it already runs, cannot take the backup's frames all the time."""
    p = Problem(
        (
            Server("s1", 400, compute_budget=0.3, failure_domain="d1", device_class="x"),
            Server("s2", 400, compute_budget=0.5, failure_domain="d2", device_class="x"),
        ),
        (App("a", "f", rate_fps=30, slo_ms=100, hot=True), App("b", "f", 30, slo_ms=100)),
        VARIANTS,
        COSTS,
    )
    primary = {"a": Assign("s1", "small"), "b": Assign("s2", "small")}  # 0.3 each
    for kind, ok in (("warm", False), ("hot", False)):
        # After d1's failure s2 runs both (0.6 > 0.5): neither kind fits; hot not even before.
        bad = Placement(primary, {"a": Backup("s2", "small", kind)})  # type: ignore[arg-type]
        assert bool(validate(p, bad)) is not ok
    hot = Placement(primary, {"a": Backup("s2", "small", "hot")})
    assert any("compute 0.6000 > budget 0.5000" in e for e in validate(p, hot))
    backups, _ = plan_backups(p, primary)
    assert "a" not in backups or backups["a"].kind != "hot"


def hot_against_headroom(**knobs: float) -> Problem:
    """s2's compute (0.5) holds one failover at a time: a's (from d1) or x's (from d3). Warm,
    they share that headroom (only one domain fails at a time); hot, a's compute is spent
    all the time and x's backup no longer fits beside it."""
    servers = (
        Server("s1", 400, compute_budget=0.3, failure_domain="d1", device_class="x"),
        Server("s2", 400, compute_budget=0.5, failure_domain="d2", device_class="x"),
        Server("s3", 400, compute_budget=0.3, failure_domain="d3", device_class="x"),
    )
    apps = (App("a", "f", rate_fps=30, slo_ms=100, hot=True), App("x", "f", 30, slo_ms=100))
    return Problem(servers, apps, VARIANTS, COSTS).with_knobs(**knobs)


PRIMARY = {"a": Assign("s1", "small"), "x": Assign("s3", "small")}


@pytest.mark.parametrize("method", ["lp", "milp", "greedy"])
def test_hot_costs_another_apps_backup_when_the_operator_asks_for_it(method: str) -> None:
    p = hot_against_headroom()
    backups, _ = plan_backups(p, PRIMARY, method)  # type: ignore[arg-type]
    assert backups["a"].kind == "hot"
    assert "x" not in backups  # the price: x's failover no longer fits beside a's frames
    assert validate(p, Placement(PRIMARY, backups)) == []


@pytest.mark.parametrize("method", ["lp", "milp"])
def test_without_the_hot_bonus_the_planner_weighs_hot_against_its_compute(method: str) -> None:
    p = hot_against_headroom(hot_bonus=0.0)
    backups, _ = plan_backups(p, PRIMARY, method)  # type: ignore[arg-type]
    assert backups["a"].kind == "warm" and "x" in backups
    assert validate(p, Placement(PRIMARY, backups)) == []


def test_a_hot_backup_counts_as_loaded_memory() -> None:
    p = two_servers()
    primary = {"a": Assign("s1", "big")}
    heavy = Problem(
        (p.servers[0], Server("s2", 150, failure_domain="d2", device_class="x")),
        p.apps,
        VARIANTS,
        COSTS,
    )
    assert validate(heavy, Placement(primary, {"a": Backup("s2", "small", "hot")})) == []
    assert validate(heavy, Placement(primary, {"a": Backup("s2", "big", "hot")}))


def test_migration_moves_a_hot_backup_as_a_loaded_one() -> None:
    p = two_servers()
    cur = Placement({"a": Assign("s1", "big")}, {"a": Backup("s2", "small", "hot")})
    new = Placement({"a": Assign("s2", "big")}, {"a": Backup("s1", "small", "hot")})
    moves = migration_steps(p, cur, new)
    roles = {(m.action, m.role) for m in moves}
    assert ("load", "hot") in roles and ("release", "hot") in roles
