"""The broker drills, short form, on a real pair of bridged Mosquitto brokers: the node of the
active broker dies (KILL_BROKER_NODE), the bridge is cut and healed (PARTITION_BROKERS), the
active broker flaps (BROKER_FLAP). Each keeps the invariants every case keeps and its own; each
stops every process it started. With the embedded broker the pair cases refuse, saying why.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from field_kit.brokers import mosquitto_binary
from field_kit.drill.broker_cases import BROKER_CASES
from field_kit.drill.cases import DrillOptions
from field_kit.drill.runner import run_case


def _run(name: str, broker: str, tmp_path: Path, models_dir: Path) -> dict[str, Any]:
    if broker == "mosquitto" and mosquitto_binary() is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    result = run_case(BROKER_CASES[name](), DrillOptions(broker=broker), tmp_path, models_dir)
    failed = [f"{c['name']}: {c['detail']}" for c in result["checks"] if not c["ok"]]
    assert result["status"] == "passed", "\n".join(failed) + "\n" + result.get("error", "")
    # No process of the drill outlives it.
    out = subprocess.run(["pgrep", "-f", result["logs"].rsplit("/", 2)[0]], capture_output=True)
    assert out.stdout == b""
    return result


def _check(result: dict[str, Any], name: str) -> dict[str, Any]:
    check: dict[str, Any] | None = next((c for c in result["checks"] if c["name"] == name), None)
    assert check is not None, f"no check {name}: {result['checks']}"
    assert check["ok"], check["detail"]
    return check


EVERY_CASE = ("converged", "recovered", "single_serving", "no_stale_retained", "no_crash")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kill_broker_node(tmp_path: Path, models_dir: Path) -> None:
    r = _run("KILL_BROKER_NODE", "mosquitto", tmp_path, models_dir)
    for name in (*EVERY_CASE, "results_within_bound", "expected_failovers"):
        _check(r, name)
    _check(r, "no_leader_change")
    _check(r, "survivor_retained_clean")
    m = r["metrics"]
    assert len(m["failovers"]) == 1 and m["leader_changes"] == 0, m
    assert set(m["results_gap_ms"]) == {"a1", "a2"}, m
    assert m["obituary_ms"] is not None, m


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_partition_brokers(tmp_path: Path, models_dir: Path) -> None:
    r = _run("PARTITION_BROKERS", "mosquitto", tmp_path, models_dir)
    for name in (*EVERY_CASE, "one_leader_obeyed", "one_term_after_heal", "expected_failovers"):
        _check(r, name)
    _check(r, "single_serving_after_heal")
    _check(r, "no_status_fight")
    _check(r, "no_leader_change")
    m = r["metrics"]
    assert m["failovers"] == ["w2"] and m["leader_changes"] == 0, m
    assert m["cut_off"] == ["w2"], m
    assert all(m["terms_obeyed"][w] for w in ("w1", "w2", "w3")), m


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_broker_flap(broker: str, tmp_path: Path, models_dir: Path) -> None:
    """On the pair the mesh goes A -> B -> A -> B; the embedded broker flaps on its port."""
    r = _run("BROKER_FLAP", broker, tmp_path, models_dir)
    for name in (*EVERY_CASE, "no_spurious_failover", "no_leader_change"):
        _check(r, name)
    m = r["metrics"]
    flapped = ["a", "b", "a"] if broker == "mosquitto" else ["a", "a", "a"]
    assert [f["broker"] for f in m["flaps"]] == flapped, m
    assert m["failovers"] == [] and m["leader_changes"] == 0, m


def test_pair_cases_refuse_the_embedded_broker_saying_why(tmp_path: Path) -> None:
    for name in ("KILL_BROKER_NODE", "PARTITION_BROKERS"):
        why = BROKER_CASES[name]().why_not_on(DrillOptions(broker="amqtt"))
        assert why is not None and "needs --broker mosquitto" in why and "bridge" in why
        result = run_case(BROKER_CASES[name](), DrillOptions(), tmp_path, tmp_path)
        assert result["status"] == "skipped" and result["reason"] == why
    assert BROKER_CASES["BROKER_FLAP"]().why_not_on(DrillOptions(broker="amqtt")) is None
    out = subprocess.run(
        [sys.executable, "-P", "-m", "faillite", "drill", "--list"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for name in BROKER_CASES:
        assert name in out.stdout
    assert "[mosquitto]" in out.stdout
