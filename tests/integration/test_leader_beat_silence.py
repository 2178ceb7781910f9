"""A leader whose status stays ``leader`` after it died (its last-will lost with its broker, a
bridge replaying what it retained) is read as gone by the silence of its beats; the beats are
signed where the mesh signs, and unsigned ones keep nobody alive."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from plugins.mesh import Collector, signed_mesh

from faillite import messages
from field_kit.procs import ProcessGroup, faillite_cmd


def test_a_dead_leader_still_retained_online_is_read_by_its_silence(
    tmp_path: Path, broker: Any, models_dir: Path
) -> None:
    sm = signed_mesh(
        tmp_path,
        broker,
        models_dir,
        mesh="beats" + broker.kind[:3],
        assignments={"w1": [{"app": "a1", "variant": "efficientnet_lite0"}]},
        ids=["c1", "c2"],
    )
    path, cfg, t, verifier, mesh = sm.path, sm.cfg, sm.topics, sm.signer.verifier, sm.cfg.mesh
    base = faillite_cmd("coordinator", "--config", str(path))
    with ProcessGroup(tmp_path / "logs") as group:
        col = Collector(cfg, "obs").follow(f"faillite/{mesh}/#").start()
        group.start("c1", "coordinator", [*base, "--id", "c1"])
        group.start("c2", "coordinator", [*base, "--id", "c2", "--standby"])

        # The leader beats, signed for the beat's topic.
        beats = col.wait_for(
            lambda: [
                b
                for b in col.messages(t.coordinator_beat, messages.CoordinatorBeat)
                if b.coordinator == "c1" and b.term > 0
            ][3:],
            30,
            "c1's beats",
        )
        assert all(verifier.valid(t.coordinator_beat, b) for b in beats)
        assert [b.seq for b in beats] == sorted({b.seq for b in beats})
        # Its signed 'leader' status, as the other broker of a pair would keep it.
        online = next(
            raw
            for _at, topic, raw in reversed(col.raw())
            if topic == t.coordinator_status
            and messages.decode(messages.CoordinatorStatus, raw).state == "leader"
        )
        time.sleep(3.5)  # longer than the silence: beating, it is led
        assert "term_acquired" not in (tmp_path / "logs" / "c2.log").read_text()

        group.stop("c1", signal.SIGKILL)
        killed = time.time()
        col.wait_for(
            lambda: [
                s
                for s in col.messages(t.coordinator_status, messages.CoordinatorStatus)
                if s.state == "offline"
            ],
            10,
            "c1's last-will",
        )
        # The last-will is replaced by the dead leader's retained 'leader' status, and
        # unsigned beats in its name try to keep it alive: neither does.
        col.publish(t.coordinator_status, online, retain=True)
        dead = beats[-1]
        taken = None
        for i in range(80):
            forged = messages.CoordinatorBeat(
                dead.coordinator, dead.incarnation, dead.term, dead.seq + 100 + i, time.time()
            )
            col.publish(t.coordinator_beat, messages.encode(forged), qos=0)
            sts = col.messages(t.coordinator_status, messages.CoordinatorStatus)
            if sts and (sts[-1].coordinator, sts[-1].state) == ("c2", "leader"):
                taken = sts[-1]
                break
            time.sleep(0.1)
        assert taken is not None and taken.term == dead.term + 1, "c2 never took over"
        assert time.time() - killed < 8.0
        log = (tmp_path / "logs" / "c2.log").read_text()
        assert '"event":"leader_silent"' in log and "bad_signature" in log
        col.stop()
