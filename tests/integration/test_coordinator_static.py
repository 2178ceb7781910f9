"""The static coordinator as a subprocess: retained state, terms across restarts, bad input."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from plugins.mesh import Collector, load, write_config

from faillite import messages
from faillite.topics import Topics
from field_kit.procs import ProcessGroup, faillite_cmd


def test_publishes_retained_plan_and_moves_term_on_restart(
    tmp_path: Path, broker: Any, models_dir: Path
) -> None:
    mesh = "coord" + broker.kind[:3]
    path = write_config(
        tmp_path,
        broker,
        models_dir,
        mesh=mesh,
        workers=({"id": "w1"}, {"id": "w2"}),
        sensors=({"id": "cam1"}, {"id": "cam2"}),
        apps=(
            {"id": "a1", "sensor": "cam1", "family": "efficientnet_lite"},
            {"id": "a2", "sensor": "cam2", "family": "efficientnet_lite"},
        ),
        assignments={
            "w1": [{"app": "a1", "variant": "efficientnet_lite0"}],
            "w2": [{"app": "a2", "variant": "efficientnet_lite1"}],
        },
    )
    cfg = load(path)
    t = Topics(mesh)
    argv = faillite_cmd("coordinator", "--config", str(path))
    with ProcessGroup(tmp_path / "logs") as group:
        group.start("c1", "coordinator", argv)
        col = Collector(cfg, "obs1").follow(f"faillite/{mesh}/#").start()
        a1 = col.wait_for(
            lambda: col.messages(t.worker_assignment("w1"), messages.Assignment),
            20,
            "assignment w1",
        )[-1]
        assert a1.serve == (messages.Serve("a1", "cam1", "efficientnet_lite0"),)
        route = col.wait_for(
            lambda: col.messages(t.app_route("a2"), messages.Route), 10, "route a2"
        )[-1]
        assert (route.worker, route.variant) == ("w2", "efficientnet_lite1")
        placement = col.wait_for(
            lambda: col.messages(t.placement, messages.Placement), 10, "placement"
        )[-1]
        assert {(e.app, e.worker, e.role) for e in placement.entries} == {
            ("a1", "w1", "primary"),
            ("a2", "w2", "primary"),
        }
        status = col.messages(t.coordinator_status, messages.CoordinatorStatus)[-1]
        assert status.state == "leader" and status.term == a1.term

        # Garbage on every topic the coordinator reads: counted and logged, never fatal.
        for topic in (t.worker_status("w1"), t.coordinator_status, t.worker_assignment("zz")):
            col.publish(topic, b"{garbage", qos=1)
            col.publish(topic, b'{"v": 7}', qos=1)
        col.stop()
        log_path = tmp_path / "logs" / "c1.log"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "unknown_schema_version" not in log_path.read_text():
            time.sleep(0.1)
        # Crash the coordinator: its last-will replaces the leader status (term 0 there).
        group.stop("c1", signal.SIGKILL)
        group.start("c2", "coordinator", argv)
        col = Collector(cfg, "obs2").follow(f"faillite/{mesh}/#").start()
        newer = col.wait_for(
            lambda: [
                a
                for a in col.messages(t.worker_assignment("w1"), messages.Assignment)
                if a.term > a1.term
            ],
            20,
            "assignment of the next term",
        )[-1]
        assert newer.version() > a1.version()
        col.stop()
        assert group.dead() == [c for c in group.children if c.name == "c1"]
        log_text = (tmp_path / "logs" / "c1.log").read_text()
    assert '"bad_input"' in log_text and "malformed_json" in log_text
    assert "unknown_schema_version" in log_text


def test_retained_state_is_republished_after_a_broker_restart(
    tmp_path: Path, broker_launcher: Any, models_dir: Path
) -> None:
    """amqtt keeps retained messages in memory only: a restart loses them all. Every client
    republishes its retained state after reconnecting."""
    ep = broker_launcher.start("amqtt", mesh="rr")
    path = write_config(
        tmp_path,
        ep,
        models_dir,
        mesh="rr",
        assignments={"w1": [{"app": "a1", "variant": "efficientnet_lite0"}]},
    )
    cfg = load(path)
    t = Topics("rr")
    with ProcessGroup(tmp_path / "logs") as group:
        group.start("c", "coordinator", faillite_cmd("coordinator", "--config", str(path)))
        group.start("w1", "worker", faillite_cmd("worker", "--id", "w1", "--config", str(path)))
        col = Collector(cfg, "before").follow("faillite/rr/#").start()
        col.wait_for(
            lambda: col.messages(t.worker_assignment("w1"), messages.Assignment), 30, "assignment"
        )
        col.wait_for(
            lambda: col.messages(t.worker_status("w1"), messages.WorkerStatus), 30, "birth"
        )
        col.stop()
        broker_launcher.process(ep).stop()
        restarted = broker_launcher.start("amqtt", mesh="rr", port=ep.port)
        assert restarted.port == ep.port
        col = Collector(cfg, "after").follow("faillite/rr/#").start()
        a = col.wait_for(
            lambda: col.messages(t.worker_assignment("w1"), messages.Assignment),
            30,
            "assignment republished",
        )[-1]
        assert a.serve[0].app == "a1"
        col.wait_for(
            lambda: [
                s
                for s in col.messages(t.worker_status("w1"), messages.WorkerStatus)
                if s.state == "online"
            ],
            30,
            "birth republished",
        )
        col.wait_for(lambda: col.messages(t.app_route("a1"), messages.Route), 10, "route")
        col.wait_for(lambda: col.messages(t.placement, messages.Placement), 10, "placement")
        col.wait_for(
            lambda: col.messages(t.coordinator_status, messages.CoordinatorStatus),
            10,
            "coordinator status",
        )
        assert all(c.alive() for c in group.children)
        col.stop()
