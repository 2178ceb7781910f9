"""Coordinator redundancy with real processes on both brokers: a standby ignores a stale
last-will, takes over when the leader dies, and a leader that sees a higher term steps down
without touching the retained status."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from plugins.mesh import Collector, load, write_config

from faillite import messages
from faillite.topics import Role, Topics
from field_kit.procs import ProcessGroup, faillite_cmd


def _leader(col: Collector, t: Topics, cid: str, min_term: int) -> messages.CoordinatorStatus:
    def found() -> messages.CoordinatorStatus | None:
        sts = col.messages(t.coordinator_status, messages.CoordinatorStatus)
        last = sts[-1] if sts else None
        if last and (last.coordinator, last.state) == (cid, "leader") and last.term >= min_term:
            return last
        return None

    st = col.wait_for(found, 30, f"{cid} leading at term >= {min_term}")
    assert st is not None
    return st


def test_standby_takes_over_and_old_leader_steps_down(
    tmp_path: Path, broker: Any, models_dir: Path
) -> None:
    mesh = "standby" + broker.kind[:3]
    path = write_config(
        tmp_path,
        broker,
        models_dir,
        mesh=mesh,
        assignments={"w1": [{"app": "a1", "variant": "efficientnet_lite0"}]},
    )
    cfg = load(path)
    t = Topics(mesh)
    base = faillite_cmd("coordinator", "--config", str(path))
    with ProcessGroup(tmp_path / "logs") as group:
        col = Collector(cfg, "obs").follow(f"faillite/{mesh}/#").start()
        group.start("c1", "coordinator", [*base, "--id", "c1"])
        group.start("c2", "coordinator", [*base, "--id", "c2", "--standby"])
        first = _leader(col, t, "c1", 1)

        # A late last-will of some older leader: not a vacancy; the leader restores its status.
        stale = messages.CoordinatorStatus("old", "deadbeef0000", "offline", 0, time.time())
        col.publish(t.coordinator_status, messages.encode(stale), retain=True)
        _leader(col, t, "c1", first.term)
        time.sleep(1.5)  # three times the takeover delay
        assert "term_acquired" not in (tmp_path / "logs" / "c2.log").read_text()

        # The leader dies: the standby takes the next term and republishes the plan under it.
        group.stop("c1", signal.SIGKILL)
        second = _leader(col, t, "c2", first.term + 1)
        col.wait_for(
            lambda: [
                a
                for a in col.messages(t.worker_assignment("w1"), messages.Assignment)
                if a.term == second.term
            ],
            10,
            "w1's assignment under the new term",
        )

        # Another coordinator takes a higher term: c2 steps down quietly and exits cleanly.
        group.start("c3", "coordinator", [*base, "--id", "c3"])
        third = _leader(col, t, "c3", second.term + 1)
        c2 = next(c for c in group.children if c.name == "c2")
        assert c2.proc.wait(15) == 0
        assert "coordinator_deposed" in (tmp_path / "logs" / "c2.log").read_text()
        # It led and beat to the end: said as an event (a stolen board would look the same).
        (said,) = col.wait_for(
            lambda: [
                e
                for e in col.messages(t.events_of(Role.COORDINATOR, "c2"), messages.Event)
                if e.kind == "deposed_while_leading"
            ],
            5,
            "the deposition reported",
        )
        assert (said.source, said.detail["successor"]) == ("coordinator/c2", "c3")
        time.sleep(0.5)
        last = col.messages(t.coordinator_status, messages.CoordinatorStatus)[-1]
        assert (last.coordinator, last.state, last.term) == ("c3", "leader", third.term)
        col.stop()
