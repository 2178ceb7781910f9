"""The broker drills, short form, on a real pair of bridged Mosquitto brokers: the node of the
active broker dies (KILL_BROKER_NODE; with the leader on it too: KILL_BROKER_LEADER_NODE), the
bridge is cut and healed (PARTITION_BROKERS), the active broker flaps (BROKER_FLAP). Each keeps
the invariants every case keeps and its own; each stops every process it started. With the
embedded broker the pair cases refuse, saying why.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from faillite.compat import python_module
from field_kit.brokers import mosquitto_binary
from field_kit.drill.broker_cases import BROKER_CASES
from field_kit.drill.cases import CASES, DrillOptions
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
def test_kill_broker_leader_node(tmp_path: Path, models_dir: Path) -> None:
    """Broker A, the leader and the critical app's primary die together: B keeps the dead
    leader's status, so only its missing beats tell the standby to take over."""
    r = _run("KILL_BROKER_LEADER_NODE", "mosquitto", tmp_path, models_dir)
    for name in (*EVERY_CASE, "results_within_bound", "expected_failovers"):
        _check(r, name)
    _check(r, "one_leader_change")
    _check(r, "survivor_retains_new_leader")
    _check(r, "survivor_retained_clean")
    m = r["metrics"]
    assert len(m["failovers"]) == 1 and m["leader_changes"] == 1, m
    assert m["takeover_ms"] is not None and m["leader_silent_ms"] is not None, m
    assert m["node"][:2] == ["broker a", "c1"], m


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_partition_brokers(tmp_path: Path, models_dir: Path) -> None:
    """B's standby takes over during the cut; after the heal the higher term wins."""
    r = _run("PARTITION_BROKERS", "mosquitto", tmp_path, models_dir)
    for name in (*EVERY_CASE, "one_leader_obeyed", "one_term_after_heal", "expected_failovers"):
        _check(r, name)
    for name in (
        "single_serving_after_heal",
        "no_status_fight",
        "one_leader_change",
        "old_leader_stepped_down",
    ):
        _check(r, name)
    m = r["metrics"]
    assert m["leader_changes"] == 1 and m["takeover_ms"] is not None, m
    fos = m["failovers_by"]
    assert fos["c1"] == ["w2"] and sorted(fos["c2"]) == ["w1", "w3"], m
    assert m["cut_off"] == ["w2"], m
    # Every worker obeyed B's higher term in the end.
    b_term = max(m["terms_seen"])
    assert all(m["terms_obeyed"][w][-1] == b_term for w in ("w1", "w2", "w3")), m


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
    for name in ("KILL_BROKER_NODE", "KILL_BROKER_LEADER_NODE", "PARTITION_BROKERS"):
        why = BROKER_CASES[name]().why_not_on(DrillOptions(broker="amqtt"))
        assert why is not None and "needs --broker mosquitto" in why and "bridge" in why
        result = run_case(BROKER_CASES[name](), DrillOptions(), tmp_path, tmp_path)
        assert result["status"] == "skipped" and result["reason"] == why
    assert BROKER_CASES["BROKER_FLAP"]().why_not_on(DrillOptions(broker="amqtt")) is None
    out = subprocess.run(
        [*python_module("faillite"), "drill", "--list"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for name in BROKER_CASES:
        assert name in out.stdout
    assert "[mosquitto]" in out.stdout


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_broker_stopped_and_started_again_fails_nobody_over(
    tmp_path: Path, models_dir: Path
) -> None:
    """Mosquitto, stopped with SIGTERM, publishes every client's last-will before it drops the
    leader: those are withdrawn. The check reads the coordinators' logs as well as the
    recording (a verdict published as the broker goes down never reaches the recorder)."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    result = run_case(
        CASES["RESTART_BROKER"](), DrillOptions(broker="mosquitto"), tmp_path, models_dir
    )
    failed = [f"{c['name']}: {c['detail']}" for c in result["checks"] if not c["ok"]]
    assert result["status"] == "passed", "\n".join(failed) + "\n" + result.get("error", "")
    for name in (*EVERY_CASE, "no_false_suspicion"):
        _check(result, name)
