"""Never worse than doing nothing: a move of a live worker's apps must land each of them."""

from __future__ import annotations

from coordinator.planner import FailoverPlan
from coordinator.planner.failover import Recovery
from coordinator.safety import judge_move


def plan(recovered: dict[str, tuple[str, str]], lost: tuple[str, ...] = ()) -> FailoverPlan:
    return FailoverPlan(
        failed_servers=frozenset({"w1"}),
        domains=("rack-w1",),
        recoveries={
            app: Recovery(app, "w1", server, "warm", variant, variant, 10.0, 75.0, 75.0, ())
            for app, (server, variant) in recovered.items()
        },
        unrecoverable={a: "no memory" for a in lost},
        affected={a: "w1" for a in (*recovered, *lost)},
    )


def test_an_app_with_nowhere_to_go_stays() -> None:
    v = judge_move(plan({"a1": ("w2", "v0")}, lost=("a2",)), {"a1": 50.0, "a2": 50.0})
    assert not v.ok and "a2" in v.reason


def test_a_stall_moves_where_every_app_lands() -> None:
    assert judge_move(plan({"a1": ("w2", "v0")}), {"a1": None}).ok


def test_a_slow_worker_moves_only_where_each_app_runs_at_least_twice_as_fast() -> None:
    fp = plan({"a1": ("w2", "v0"), "a2": ("w3", "v0")})
    fast = {"w2": 10.0, "w3": 20.0}
    assert judge_move(fp, {"a1": 100.0, "a2": 100.0}, lambda s, _v: fast[s]).ok
    v = judge_move(fp, {"a1": 100.0, "a2": 30.0}, lambda s, _v: fast[s])
    assert not v.ok and "a2" in v.reason and "w3" in v.reason
    assert not judge_move(fp, {"a1": None, "a2": 100.0}, lambda s, _v: fast[s]).ok
