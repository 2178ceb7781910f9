"""The planner coordinator against real workers on both brokers: failover, fencing, ladders.

Three CPU workers of 100 MB each (one EfficientNet-Lite fits): two carry the primaries, the
third is the spare that the planner fills with backups. A critical app gets a warm backup; a
non-critical one a cold backup that loads a small variant first and then upgrades.
"""

from __future__ import annotations

import hashlib
import itertools
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from plugins.mesh import Collector, load, write_config

from faillite import messages
from faillite.topics import Topics
from field_kit.procs import ProcessGroup, faillite_cmd
from field_kit.pump import FramePump

WORKERS = tuple(
    {"id": w, "memory_mb": 100, "failure_domain": f"rack-{w}"} for w in ("w1", "w2", "w3")
)


def _mesh(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    broker: Any,
    models_dir: Path,
    critical: bool,
    workers: tuple[dict[str, Any], ...],
    hot: bool = False,
) -> dict[str, Any]:
    mesh_id = "f" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]
    path = write_config(
        tmp_path,
        broker,
        models_dir,
        mesh=mesh_id,
        workers=workers,
        sensors=({"id": "cam1", "fps": 5}, {"id": "cam2", "fps": 5}),
        apps=(
            {
                "id": "a1",
                "sensor": "cam1",
                "family": "efficientnet_lite",
                "critical": critical,
                "hot": hot,
            },
            {"id": "a2", "sensor": "cam2", "family": "efficientnet_lite"},
        ),
        extra={"coordinator": {"type": "planner", "startup_wait_s": 10}},
    )
    return {"path": path, "cfg": load(path), "t": Topics(mesh_id)}


@pytest.fixture
def running(
    request: pytest.FixtureRequest, tmp_path: Path, broker: Any, models_dir: Path
) -> Iterator[dict[str, Any]]:
    params = {"critical": True, "workers": WORKERS, "hot": False, **getattr(request, "param", {})}
    m = _mesh(
        request,
        tmp_path,
        broker,
        models_dir,
        params["critical"],
        params["workers"],
        params["hot"],
    )
    col = Collector(m["cfg"]).follow(f"faillite/{m['cfg'].mesh}/#", qos=1).start()
    group = ProcessGroup(tmp_path / "logs")
    for w in params["workers"]:
        group.start(
            w["id"],
            "worker",
            faillite_cmd(
                "worker", "--id", w["id"], "--config", str(m["path"]), "--fault-injection"
            ),
        )
    group.start("coord", "coordinator", faillite_cmd("coordinator", "--config", str(m["path"])))
    t = m["t"]
    pumps = [FramePump(col, t.sensor_frames("cam1"), 5), FramePump(col, t.sensor_frames("cam2"), 5)]
    for p in pumps:
        p.__enter__()
    try:
        yield {**m, "col": col, "group": group}
    finally:
        for p in pumps:
            p.__exit__()
        col.stop()
        group.stop_all()


def _placement(col: Collector, t: Topics) -> messages.Placement:
    return col.wait_for(
        lambda: [
            p
            for p in col.messages(t.placement, messages.Placement)
            if {e.app for e in p.entries if e.role == "primary"} == {"a1", "a2"}
            and any(e.app == "a1" and e.role != "primary" for e in p.entries)
        ],
        60,
        "a placement with both primaries and a backup for a1",
    )[-1]


def _role(p: messages.Placement, app: str, role: str) -> messages.PlacementEntry:
    return next(e for e in p.entries if e.app == app and e.role == role)


def _serving(
    running: dict[str, Any], backup_role: str
) -> tuple[Collector, Topics, ProcessGroup, messages.PlacementEntry, messages.PlacementEntry]:
    """Wait until a1 is placed with a backup of ``backup_role`` and served by its primary."""
    col, t, group = running["col"], running["t"], running["group"]
    p = _placement(col, t)
    primary, backup = _role(p, "a1", "primary"), _role(p, "a1", backup_role)
    col.wait_for(
        lambda: [r for r in _results(col, t, "a1") if r.worker == primary.worker],
        60,
        "a1 served by its primary",
    )
    return col, t, group, primary, backup


def _results(col: Collector, t: Topics, app: str, since: float = 0.0) -> list[messages.Result]:
    return col.messages(t.app_results_filter(app), messages.Result, since=since)


def _events(col: Collector, t: Topics, kind: str) -> list[messages.Event]:
    return [e for e in col.messages(t.events, messages.Event) if e.kind == kind]


def test_kill_primary_warm_backup_takes_over(running: dict[str, Any]) -> None:
    col, t, group = running["col"], running["t"], running["group"]
    p = _placement(col, t)
    primary, backup = _role(p, "a1", "primary"), _role(p, "a1", "warm")
    assert backup.worker != primary.worker
    col.wait_for(
        lambda: [r for r in _results(col, t, "a1") if r.worker == primary.worker],
        60,
        "a1 served by its primary",
    )
    col.wait_for(
        lambda: [
            h
            for h in col.messages(t.worker_heartbeat(backup.worker), messages.Heartbeat)
            if backup.variant in h.loaded
        ],
        30,
        "warm backup loaded",
    )
    killed = time.monotonic()
    group.stop(primary.worker, signal.SIGKILL)
    after = col.wait_for(
        lambda: [r for r in _results(col, t, "a1", since=killed) if r.worker == backup.worker],
        30,
        "a1 served by its warm backup",
    )
    mttr = after[0].ts - (time.time() - (time.monotonic() - killed))
    ev = col.wait_for(lambda: _events(col, t, "failover"), 10, "failover event")[-1]
    assert ev.worker == primary.worker and ev.detail["cause"] == "last_will"
    assert ev.detail["recoveries"]["a1"]["kind"] == "warm"
    assert ev.detail["decision_ms"] < 1000
    assert after[0].variant == backup.variant
    assert mttr < 10, mttr
    route = col.wait_for(
        lambda: [
            r for r in col.messages(t.app_route("a1"), messages.Route) if r.worker == backup.worker
        ],
        10,
        "route moved",
    )[-1]
    assert route.generation >= ev.detail["generation"]
    moved = [
        r for r in col.messages(t.app_route("a1"), messages.Route) if r.worker == backup.worker
    ]
    assert moved[0].state == "degraded"  # on its backup until the re-plan makes it the primary
    col.wait_for(
        lambda: [
            r
            for r in col.messages(t.app_route("a1"), messages.Route)
            if r.worker == backup.worker and r.state == "serving"
        ],
        10,
        "re-plan adopts the backup as primary",
    )


@pytest.mark.parametrize("running", [{"hot": True}], indirect=True, ids=["hot"])
def test_kill_primary_hot_backup_publishes_only_what_the_primary_did_not(
    running: dict[str, Any],
) -> None:
    col, t, group, primary, backup = _serving(running, "hot")
    assert backup.worker != primary.worker

    def beats() -> list[messages.Heartbeat]:
        return col.messages(t.worker_heartbeat(backup.worker), messages.Heartbeat)

    # The hot backup runs a1's frames (its counters move) and publishes none of them.
    first = col.wait_for(lambda: [h for h in beats() if h.frames_processed >= 1], 30, "hot runs")
    col.wait_for(
        lambda: [h for h in beats() if h.frames_processed >= first[0].frames_processed + 3],
        30,
        "the hot backup keeps running a1's frames",
    )
    assert [r for r in _results(col, t, "a1") if r.worker == backup.worker] == []
    assert "a1" not in beats()[-1].apps  # not reported as served
    killed = time.monotonic()
    group.stop(primary.worker, signal.SIGKILL)
    col.wait_for(
        lambda: [r for r in _results(col, t, "a1", since=killed) if r.worker == backup.worker],
        30,
        "a1 served by its hot backup",
    )
    ev = col.wait_for(lambda: _events(col, t, "failover"), 10, "failover event")[-1]
    assert ev.detail["recoveries"]["a1"]["kind"] == "hot"
    promoted = col.wait_for(lambda: _events(col, t, "hot_promoted"), 10, "promotion event")
    assert promoted[0].worker == backup.worker and promoted[0].app == "a1"
    time.sleep(1.0)  # live results for a while after the promotion
    # Consumers never see two results of one frame: the backup published, of what it held,
    # only the frames the primary did not.
    seqs = [r.seq for r in _results(col, t, "a1")]
    assert len(seqs) == len(set(seqs)), sorted(seqs)
    by_backup = [r for r in _results(col, t, "a1") if r.worker == backup.worker]
    assert by_backup and min(r.generation for r in by_backup) >= ev.detail["generation"]


@pytest.mark.parametrize("running", [{"critical": False}], indirect=True, ids=["noncritical"])
def test_cold_backup_serves_small_variant_then_upgrades(running: dict[str, Any]) -> None:
    col, t, group, primary, backup = _serving(running, "cold")
    killed = time.monotonic()
    group.stop(primary.worker, signal.SIGKILL)
    ev = col.wait_for(lambda: _events(col, t, "failover"), 30, "failover event")[-1]
    rec = ev.detail["recoveries"]["a1"]
    assert rec["kind"] == "cold" and rec["server"] == backup.worker
    assert rec["variant"] != rec["final"], "a ladder: small variant first"
    first = col.wait_for(
        lambda: [r for r in _results(col, t, "a1", since=killed) if r.worker == backup.worker],
        60,
        "a1 served by the cold backup",
    )[0]
    assert first.variant == rec["variant"]
    col.wait_for(
        lambda: [
            r
            for r in _results(col, t, "a1", since=killed)
            if r.variant == rec["final"] and r.worker == backup.worker
        ][3:],
        60,
        "a1 upgraded to the final variant",
    )
    assert _events(col, t, "upgrade")
    # No gap: between the first result of the small variant and the upgrade, results go on.
    served = [r for r in _results(col, t, "a1", since=killed) if r.worker == backup.worker]
    gaps = [b.ts - a.ts for a, b in itertools.pairwise(served)]
    assert max(gaps) < 2.0, max(gaps)


def test_sigstop_detected_by_heartbeats_and_fenced_worker_stops(running: dict[str, Any]) -> None:
    col, t, group, primary, backup = _serving(running, "warm")
    proc = next(c for c in group.children if c.name == primary.worker).proc
    stopped = time.monotonic()
    proc.send_signal(signal.SIGSTOP)
    try:
        det = col.wait_for(
            lambda: [e for e in _events(col, t, "failure_detected") if e.worker == primary.worker],
            10,
            "detection",
        )[0]
        assert det.detail["cause"] in ("heartbeat_silence", "last_will")
        if det.detail["cause"] == "heartbeat_silence":
            assert det.detail["silence_ms"] < 1000
        col.wait_for(
            lambda: [r for r in _results(col, t, "a1", since=stopped) if r.worker == backup.worker],
            30,
            "backup serving",
        )
    finally:
        proc.send_signal(signal.SIGCONT)
    # The falsely suspected worker wakes up, gets its revoked assignment and stops serving a1.
    resumed = time.monotonic()
    col.wait_for(
        lambda: [
            h
            for h in col.messages(t.worker_heartbeat(primary.worker), messages.Heartbeat)
            if "a1" not in h.apps and h.generation > 1
        ],
        20,
        "fenced",
    )
    time.sleep(1.0)
    fenced_at = time.monotonic()
    time.sleep(1.5)
    late = [r for r in _results(col, t, "a1", since=fenced_at) if r.worker == primary.worker]
    assert late == [], "a revoked worker kept serving"
    assert [r for r in _results(col, t, "a1", since=resumed) if r.worker == backup.worker]


def test_restarted_worker_not_taken_down_by_old_last_will(running: dict[str, Any]) -> None:
    col, t, group = running["col"], running["t"], running["group"]
    p = _placement(col, t)
    primary = _role(p, "a1", "primary")
    old = col.wait_for(
        lambda: [
            s
            for s in col.messages(t.worker_status(primary.worker), messages.WorkerStatus)
            if s.state == "online"
        ],
        30,
        "birth",
    )[-1]
    group.stop(primary.worker, signal.SIGKILL)
    col.wait_for(
        lambda: [e for e in _events(col, t, "failover") if e.worker == primary.worker],
        30,
        "failover",
    )
    group.start(
        f"{primary.worker}-2",
        "worker",
        faillite_cmd("worker", "--id", primary.worker, "--config", str(running["path"])),
    )
    new = col.wait_for(
        lambda: [
            s
            for s in col.messages(t.worker_status(primary.worker), messages.WorkerStatus)
            if s.state == "online" and s.incarnation != old.incarnation
        ],
        30,
        "new incarnation",
    )[-1]
    col.wait_for(
        lambda: [e for e in _events(col, t, "worker_joined") if e.worker == primary.worker],
        10,
        "joined",
    )
    # A late last-will of the old incarnation arrives (e.g. a slow broker): ignored.
    late = messages.WorkerStatus(
        worker=primary.worker,
        incarnation=old.incarnation,
        state="offline",
        ts=messages.now(),
        reason="lost",
    )
    col.publish(t.worker_status(primary.worker), messages.encode(late), retain=False)
    col.wait_for(
        lambda: [e for e in _events(col, t, "stale_offline_ignored") if e.worker == primary.worker],
        10,
        "stale will ignored",
    )
    time.sleep(1.0)
    fails = [
        e
        for e in _events(col, t, "failure_detected")
        if e.worker == primary.worker and e.detail.get("worker_incarnation") == new.incarnation
    ]
    assert fails == []
    hbs = col.messages(t.worker_heartbeat(primary.worker), messages.Heartbeat)
    assert hbs and hbs[-1].incarnation == new.incarnation


def test_stalled_inference_with_live_heartbeats_is_a_failure(running: dict[str, Any]) -> None:
    """Gray failure: the inference thread hangs, heartbeats go on, frames pile up."""
    col, t, group, primary, backup = _serving(running, "warm")
    proc = next(c for c in group.children if c.name == primary.worker).proc
    hung = time.monotonic()
    proc.send_signal(signal.SIGUSR1)
    det = col.wait_for(
        lambda: [e for e in _events(col, t, "failure_detected") if e.worker == primary.worker],
        15,
        "stall detected",
    )[0]
    assert det.detail["cause"] == "stalled"
    hbs = col.messages(t.worker_heartbeat(primary.worker), messages.Heartbeat, since=hung)
    assert hbs, "heartbeats kept coming while inference hung"
    col.wait_for(
        lambda: [r for r in _results(col, t, "a1", since=hung) if r.worker == backup.worker],
        30,
        "backup serving",
    )


SLOW = tuple({**w, "memory_mb": 300} for w in WORKERS)


@pytest.mark.parametrize("running", [{"workers": SLOW}], indirect=True, ids=["roomy"])
def test_a_worker_slow_on_its_own_fails_over_to_a_faster_one(running: dict[str, Any]) -> None:
    """0.5 s more per frame on the primary alone: its per-frame time (infer_ms) stands out
    from its peers', its backup is predicted faster, so a1 moves (slo_gray) instead of being
    shed where it is."""
    col, t, group, primary, _backup = _serving(running, "warm")
    proc = next(c for c in group.children if c.name == primary.worker).proc
    proc.send_signal(signal.SIGUSR2)
    try:
        fo = col.wait_for(
            lambda: [e for e in _events(col, t, "failover") if e.worker == primary.worker],
            60,
            "gray failover of the slow primary",
        )[0]
        assert fo.detail["cause"] == "slo_gray"
        assert fo.detail["recoveries"]["a1"]["server"] != primary.worker
        assert not [e for e in _events(col, t, "shed") if e.worker == primary.worker]
        moved = time.monotonic()
        col.wait_for(
            lambda: [r for r in _results(col, t, "a1", since=moved) if r.worker != primary.worker],
            30,
            "a1 served elsewhere",
        )
    finally:
        proc.send_signal(signal.SIGUSR2)


DEGRADED = (*WORKERS[:2], {"id": "w3", "memory_mb": 70, "failure_domain": "rack-w3"})


@pytest.mark.parametrize("running", [{"workers": DEGRADED}], indirect=True, ids=["small-spare"])
def test_failback_loads_then_switches_without_a_gap(running: dict[str, Any]) -> None:
    col, t, group = running["col"], running["t"], running["group"]
    p = _placement(col, t)
    primary, backup = _role(p, "a1", "primary"), _role(p, "a1", "warm")
    assert backup.worker == "w3" and backup.variant != primary.variant  # degraded backup
    col.wait_for(
        lambda: [r for r in _results(col, t, "a1") if r.worker == primary.worker],
        60,
        "a1 served by its primary",
    )
    group.stop(primary.worker, signal.SIGKILL)
    col.wait_for(
        lambda: [r for r in _results(col, t, "a1") if r.worker == "w3"], 30, "a1 on the spare"
    )
    back = time.monotonic()
    group.start(
        f"{primary.worker}-back",
        "worker",
        faillite_cmd("worker", "--id", primary.worker, "--config", str(running["path"])),
    )
    load = col.wait_for(lambda: _events(col, t, "failback_load"), 60, "failback load")[0]
    assert "a1" in load.detail["apps"]
    switch = col.wait_for(lambda: _events(col, t, "failback_switch"), 60, "failback switch")[0]
    assert not switch.detail["timed_out"]
    col.wait_for(
        lambda: [
            r
            for r in _results(col, t, "a1", since=back)
            if r.worker == primary.worker and r.variant == primary.variant
        ][2:],
        30,
        "a1 back on its primary with the big variant",
    )
    served = sorted(_results(col, t, "a1", since=back), key=lambda r: r.ts)
    gaps = [b.ts - a.ts for a, b in itertools.pairwise(served)]
    assert max(gaps) < 2.0, max(gaps)


FOUR = (*WORKERS, {"id": "w4", "memory_mb": 100, "failure_domain": "rack-w4"})


@pytest.mark.parametrize("running", [{"workers": FOUR}], indirect=True, ids=["four"])
def test_second_failure_during_recovery(running: dict[str, Any]) -> None:
    col, t, group, primary, backup = _serving(running, "warm")
    group.stop(primary.worker, signal.SIGKILL)
    col.wait_for(
        lambda: [e for e in _events(col, t, "failover") if e.worker == primary.worker],
        30,
        "first failover",
    )
    second = time.monotonic()
    group.stop(backup.worker, signal.SIGKILL)  # the backup dies while taking over
    col.wait_for(
        lambda: [e for e in _events(col, t, "failover") if e.worker == backup.worker],
        30,
        "second failover",
    )
    survivors = {"w1", "w2", "w3", "w4"} - {primary.worker, backup.worker}
    col.wait_for(
        lambda: [r for r in _results(col, t, "a1", since=second) if r.worker in survivors],
        60,
        "a1 served by a survivor",
    )
    col.wait_for(
        lambda: [r for r in _results(col, t, "a2", since=second) if r.worker in survivors],
        60,
        "a2 still served",
    )
    assert all(c.alive() for c in group.children if c.name == "coord")
