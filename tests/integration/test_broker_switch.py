"""The broker's board dies under a running mesh: a bridged Mosquitto pair, each broker in its
own network namespace, the mesh (planner coordinator, two workers, a camera) in a third, every
role listing both brokers (:mod:`field_kit.drill.broker_switch`). Once the broker process is
SIGKILLed (connections reset at once), once its board goes silent (every packet dropped, as a
power cut: only what it stops sending tells). Each time the app must be served again from the
other broker within a bound, with no failover and no new term: moving brokers is not failing.
Root, ``ip``, ``nft`` and Mosquitto are needed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from field_kit.brokers import mosquitto_binary
from field_kit.drill.broker_switch import measure
from field_kit.drill.netns import root_problem


def test_a_dead_broker_costs_a_gap_and_no_failover(models_dir: Path, tmp_path: Path) -> None:
    problem = root_problem()
    if problem is not None:
        pytest.skip(problem)
    if mosquitto_binary() is None or shutil.which("nft") is None:
        pytest.skip("needs mosquitto and nft (apt-get install mosquitto nftables)")
    out = tmp_path / "switch.json"
    assert measure(2, out, models_dir, tmp_path / "work") == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["crash", "silent"], rows
    for r in rows:
        assert r["failovers"] == 0 and r["leader_changes"] == 0, r
    crash, silent = rows
    assert crash["gap_ms"] < 2000, crash
    # probe_after_s + silent_after_s (2 s) + reconnecting and the next frame
    assert silent["gap_ms"] < 6000, silent
