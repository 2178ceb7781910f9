"""Fencing nobody can forge, with a real static coordinator and a real worker on both brokers:
forged terms are refused and the worker keeps serving its leader's assignment; where the mesh
signs, an unsigned or misdirected assignment is refused although its topic is right."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from plugins.mesh import Collector, load, signed_mesh, write_config

from faillite import messages
from faillite.config import MeshConfig
from faillite.messages import MAX_COUNT
from faillite.topics import Topics
from field_kit.drill.analysis import retained_snapshot
from field_kit.procs import ProcessGroup, faillite_cmd
from field_kit.pump import FramePump

SERVE = {"w1": [{"app": "a1", "variant": "efficientnet_lite0"}]}
ZERO = messages.AppStats()


def _start(group: ProcessGroup, path: Path) -> None:
    group.start("c1", "coordinator", faillite_cmd("coordinator", "--config", str(path)))
    group.start("w1", "worker", faillite_cmd("worker", "--id", "w1", "--config", str(path)))


def _leading(col: Collector, t: Topics) -> tuple[messages.CoordinatorStatus, messages.Assignment]:
    st = col.wait_for(
        lambda: [
            s
            for s in col.messages(t.coordinator_status, messages.CoordinatorStatus)
            if s.state == "leader"
        ],
        30,
        "leader status",
    )[-1]
    a = col.wait_for(
        lambda: [
            a
            for a in col.messages(t.worker_assignment("w1"), messages.Assignment)
            if a.term == st.term
        ],
        20,
        "the leader's assignment of w1",
    )[-1]
    return st, a


def _heartbeats(col: Collector, t: Topics) -> list[messages.Heartbeat]:
    hbs: list[messages.Heartbeat] = col.messages(t.worker_heartbeat("w1"), messages.Heartbeat)
    return hbs


def _serving(col: Collector, t: Topics, generation: int) -> None:
    """a1 served under ``generation``: frames processed for it go on (from the heartbeats; the
    results topic is not this test's business)."""

    def processed() -> int:
        hbs = _heartbeats(col, t)
        return hbs[-1].apps["a1"].processed if hbs and "a1" in hbs[-1].apps else 0

    before = processed()
    col.wait_for(
        lambda: [
            h
            for h in _heartbeats(col, t)[-1:]
            if h.generation == generation and h.apps.get("a1", ZERO).processed >= before + 3
        ],
        60,
        f"a1 served under generation {generation}",
    )


def _errors(col: Collector, t: Topics, want: dict[str, int]) -> messages.Heartbeat:
    hb: messages.Heartbeat = col.wait_for(
        lambda: [
            h for h in _heartbeats(col, t) if all(h.errors.get(k, 0) >= n for k, n in want.items())
        ],
        20,
        f"worker errors {want}",
    )[-1]
    return hb


def _assignment(term: int, generation: int) -> messages.Assignment:
    # A forger's: it takes every app away.
    return messages.Assignment(
        worker="w1", term=term, generation=generation, ts=messages.now(), serve=()
    )


def _clear(cfg: MeshConfig, t: Topics) -> None:
    """Retained state must not outlive the test on a shared broker."""
    col = Collector(cfg, "cleanup").start()
    for topic in (t.worker_assignment("w1"), t.coordinator_status):
        col.publish(topic, b"", retain=True)
    col.stop()


def _still_serving(col: Collector, t: Topics, real: messages.Assignment) -> None:
    _serving(col, t, real.generation)
    stopped = [e for e in col.messages(t.events, messages.Event) if e.kind == "serve_stopped"]
    assert stopped == [], stopped
    assert _heartbeats(col, t)[-1].loaded == ("efficientnet_lite0",)


def test_forged_terms_are_refused_and_the_worker_keeps_serving_its_leader(
    tmp_path: Path, broker: Any, models_dir: Path
) -> None:
    mesh = "fence" + broker.kind[:3]
    path = write_config(tmp_path, broker, models_dir, mesh=mesh, assignments=SERVE)
    cfg, t = load(path), Topics(mesh)
    with ProcessGroup(tmp_path / "logs") as group:
        col = Collector(cfg, "obs").follow(f"faillite/{mesh}/#").start()
        _start(group, path)
        leader, real = _leading(col, t)
        a_topic = t.worker_assignment("w1")
        with FramePump(col, t.sensor_frames("cam1"), fps=10):
            _serving(col, t, real.generation)
            # Term 2^62: past what any decoder accepts (2^53 - 1).
            col.publish(
                a_topic,
                b'{"v": 1, "worker": "w1", "term": 4611686018427387904, "generation": 1,'
                b' "ts": 0.0, "serve": []}',
                retain=True,
            )
            # Decodable, but far above the leader's term: refused by the fence.
            forged_at = time.monotonic()
            col.publish(a_topic, messages.encode(_assignment(2**50, 1)), retain=True)
            # A forged leader status as far up: neither the worker nor the leader believes it.
            forged = messages.CoordinatorStatus(
                "main", "f0f0f0f0f0f0", "leader", 2**50, messages.now()
            )
            col.publish(t.coordinator_status, messages.encode(forged), retain=True)
            # One term up, within the bound: held for a leader that never shows its status.
            col.publish(a_topic, messages.encode(_assignment(leader.term + 1, 1)), retain=True)

            hb = _errors(col, t, {"invalid_fields": 1, "term_out_of_range": 2})
            assert "stale_term" not in hb.errors, hb.errors
            _still_serving(col, t, real)

            # The leader logged the forgery and put its own status and assignment back.
            col.wait_for(
                lambda: [
                    s
                    for s in col.messages(t.coordinator_status, messages.CoordinatorStatus)
                    if (s.coordinator, s.state, s.term) == ("main", "leader", leader.term)
                    and s.ts > forged.ts
                ],
                10,
                "the leader's status restored",
            )
            col.wait_for(
                lambda: [
                    a
                    for a in col.messages(a_topic, messages.Assignment, since=forged_at)
                    if a.version() == real.version()
                ],
                10,
                "the leader's assignment restored",
            )
            assert "forged_term" in (tmp_path / "logs" / "c1.log").read_text()
            assert "coordinator_deposed" not in (tmp_path / "logs" / "c1.log").read_text()
            assert group.children[0].alive()
        col.stop()
    _clear(cfg, t)


def test_with_signing_an_unsigned_or_misdirected_assignment_is_refused(
    tmp_path: Path, broker: Any, models_dir: Path
) -> None:
    sm = signed_mesh(
        tmp_path, broker, models_dir, mesh="signed" + broker.kind[:3], assignments=SERVE
    )
    path, cfg, t, signer, mesh = sm.path, sm.cfg, sm.topics, sm.signer, sm.cfg.mesh
    with ProcessGroup(tmp_path / "logs") as group:
        col = Collector(cfg, "obs").follow(f"faillite/{mesh}/#").start()
        _start(group, path)
        leader, real = _leading(col, t)
        assert leader.sig and real.sig  # the leader signs what it writes
        signer.verifier.verify(t.worker_assignment("w1"), real)
        a_topic = t.worker_assignment("w1")
        with FramePump(col, t.sensor_frames("cam1"), fps=10):
            _serving(col, t, real.generation)
            newer = _assignment(leader.term, real.generation + 1)
            # Unsigned, on the right topic, of the leader's term, newer: refused all the same.
            col.publish(a_topic, messages.encode(newer), qos=1)
            # Signed with the mesh's key, but for another worker's topic: refused.
            col.publish(a_topic, messages.encode(signer.sign(t.worker_assignment("w2"), newer)))
            # An unsigned leader status one term up: no worker follows it, nobody is deposed.
            up = messages.CoordinatorStatus("main", "f0f0f0f0f0f0", "leader", leader.term + 1, 1.0)
            col.publish(t.coordinator_status, messages.encode(up), qos=1)

            _errors(col, t, {"bad_signature": 3})
            _still_serving(col, t, real)
            log = (tmp_path / "logs" / "c1.log").read_text()
            assert "bad_signature" in log and "coordinator_deposed" not in log

            # A correctly signed newer assignment is obeyed (the leader's key).
            col.publish(a_topic, messages.encode(signer.sign(a_topic, newer)))
            col.wait_for(
                lambda: [
                    e
                    for e in col.messages(t.events, messages.Event)
                    if e.kind == "serve_stopped" and e.app == "a1"
                ],
                10,
                "the signed assignment obeyed",
            )
        col.stop()
    _clear(cfg, t)


def test_a_retained_term_at_the_bound_makes_a_coordinator_refuse_not_crash(
    tmp_path: Path, broker: Any, models_dir: Path
) -> None:
    mesh = "bound" + broker.kind[:3]
    path = write_config(tmp_path, broker, models_dir, mesh=mesh, assignments=SERVE)
    cfg, t = load(path), Topics(mesh)
    col = Collector(cfg, "obs").follow(t.coordinator_status).start()
    top = messages.CoordinatorStatus("old", "0123456789ab", "leader", MAX_COUNT, messages.now())
    col.publish(t.coordinator_status, messages.encode(top), retain=True)
    with ProcessGroup(tmp_path / "logs") as group:
        c1 = group.start("c1", "coordinator", faillite_cmd("coordinator", "--config", str(path)))
        assert c1.proc.wait(30) == 2
    log = (tmp_path / "logs" / "c1.log").read_text()
    assert "term_exhausted" in log and "Traceback" not in log
    # It never led: nothing of it on the status topic (no status, no offline).
    assert {
        s.coordinator for s in col.messages(t.coordinator_status, messages.CoordinatorStatus)
    } == {"old"}
    col.stop()
    _clear(cfg, t)


def test_with_signing_routes_and_placement_are_signed_and_put_back_over_forgeries(
    tmp_path: Path, broker: Any, models_dir: Path
) -> None:
    """A coordinator account without the signing key may write routes and the placement (the
    ACL cannot tell): readers refuse them, and the leader puts its own signed state back."""
    sm = signed_mesh(
        tmp_path, broker, models_dir, mesh="sroute" + broker.kind[:3], assignments=SERVE
    )
    path, cfg, t, verifier, mesh = sm.path, sm.cfg, sm.topics, sm.signer.verifier, sm.cfg.mesh
    r_topic = t.app_route("a1")
    with ProcessGroup(tmp_path / "logs") as group:
        col = Collector(cfg, "obs").follow(f"faillite/{mesh}/#").start()
        _start(group, path)
        _leading(col, t)
        real = col.wait_for(lambda: col.messages(r_topic, messages.Route), 20, "a1's route")[-1]
        placement = col.wait_for(
            lambda: col.messages(t.placement, messages.Placement), 20, "the placement"
        )[-1]
        verifier.verify(r_topic, real)
        verifier.verify(t.placement, placement)
        assert real.worker == "w1"
        forged_route = replace(real, worker="w9", state="unserved", sig=None)
        forged_placement = replace(placement, entries=(), sig=None)
        col.publish(r_topic, messages.encode(forged_route), qos=1, retain=True)
        col.publish(t.placement, messages.encode(forged_placement), qos=1, retain=True)

        def put_back() -> list[messages.Route]:
            routes = col.messages(r_topic, messages.Route)
            at = max((i for i, r in enumerate(routes) if r.worker == "w9"), default=len(routes))
            return [r for r in routes[at + 1 :] if r.sig and r.worker == "w1"]

        back = col.wait_for(put_back, 20, "the leader's signed route put back")[-1]
        verifier.verify(r_topic, back)
        col.wait_for(
            lambda: [p for p in col.messages(t.placement, messages.Placement)[-1:] if p.sig],
            20,
            "the leader's signed placement put back",
        )
        retained = retained_snapshot(cfg, filters=("apps/a1/route", "placement"))
        now_route = messages.decode(messages.Route, retained[r_topic])
        verifier.verify(r_topic, now_route)
        assert (now_route.worker, now_route.state) == ("w1", "serving")
        verifier.verify(t.placement, messages.decode(messages.Placement, retained[t.placement]))
        assert "bad_signature" in (tmp_path / "logs" / "c1.log").read_text()
        col.stop()
    _clear(cfg, t)
