"""A real worker subprocess on real brokers (amqtt and Mosquitto) with real ONNX sessions."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml
from plugins.mesh import Collector, load, write_config

from faillite import envelope, messages
from faillite.config import packaged_config
from faillite.presence import unseals
from faillite.topics import Topics
from field_kit.procs import ProcessGroup, faillite_cmd, free_port
from field_kit.pump import FramePump

CAT_CLASSES = {281, 282, 283, 284, 285, 287}  # tabby .. lynx: what a cat photo may be called


@pytest.fixture
def mesh(
    request: pytest.FixtureRequest, tmp_path: Path, broker: Any, models_dir: Path
) -> Iterator[dict[str, Any]]:
    """One worker subprocess plus a collecting admin client, on a mesh id of its own."""
    mesh_id = "t" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]
    path = write_config(tmp_path, broker, models_dir, mesh=mesh_id)
    cfg = load(path)
    t = Topics(cfg.mesh)
    col = Collector(cfg).follow(f"faillite/{cfg.mesh}/#", qos=1).start()
    group = ProcessGroup(tmp_path / "logs")
    worker = group.start(
        "worker-w1", "worker", faillite_cmd("worker", "--id", "w1", "--config", str(path))
    )
    try:
        yield {"cfg": cfg, "t": t, "col": col, "group": group, "worker": worker, "path": path}
    finally:
        col.stop()
        group.stop_all()
        # Retained assignments must not leak into the next test on a shared broker.


def _assign(
    col: Collector,
    t: Topics,
    gen: int,
    serve: list[tuple[str, str, str]],
    term: int = 1,
    warm: tuple[str, ...] = (),
) -> None:
    a = messages.Assignment(
        worker="w1",
        term=term,
        generation=gen,
        ts=messages.now(),
        serve=tuple(messages.Serve(*s) for s in serve),
        warm=warm,
    )
    col.publish(t.worker_assignment("w1"), messages.encode(a), qos=1, retain=True)


def _heartbeats(col: Collector, t: Topics) -> list[messages.Heartbeat]:
    return col.messages(t.worker_heartbeat("w1"), messages.Heartbeat)


def _raw_heartbeats(col: Collector, t: Topics) -> list[dict[str, Any]]:
    topic = t.worker_heartbeat("w1")
    return [orjson.loads(p) for _t, tp, p in col.raw() if tp == topic]


def _statuses(col: Collector, t: Topics, **match: Any) -> list[messages.WorkerStatus]:
    return [
        s
        for s in col.messages(t.worker_status("w1"), messages.WorkerStatus)
        if all(getattr(s, k) == v for k, v in match.items())
    ]


def _status_where(
    col: Collector,
    t: Topics,
    match: Callable[[messages.WorkerStatus], bool],
    timeout: float,
    what: str,
) -> messages.WorkerStatus:
    """The latest status of w1 that ``match`` accepts, waiting for it up to ``timeout``."""
    found = col.wait_for(
        lambda: [s for s in col.messages(t.worker_status("w1"), messages.WorkerStatus) if match(s)],
        timeout,
        what,
    )
    return found[-1]


def test_birth_heartbeat_results_and_live_reassignment(mesh: dict[str, Any]) -> None:
    col, t, worker = mesh["col"], mesh["t"], mesh["worker"]
    birth = col.wait_for(
        lambda: [
            s
            for s in col.messages(t.worker_status("w1"), messages.WorkerStatus)
            if s.state == "online"
        ],
        30,
        "worker birth",
    )[-1]
    assert birth.pid == worker.pid
    assert "CPUExecutionProvider" in birth.backends
    assert {"efficientnet_lite0", "efficientnet_lite1"} <= set(birth.models_on_disk)
    assert birth.failure_domain == "w1"
    # An idle worker has made no progress: its heartbeats say so with a null last_progress_ts.
    idle = col.wait_for(lambda: _raw_heartbeats(col, t), 10, "idle heartbeats")
    assert all(h["last_progress_ts"] is None for h in idle), idle[-1]
    assert all(h["frames_processed"] == 0 for h in idle)

    _assign(col, t, 1, [("a1", "cam1", "efficientnet_lite0")])
    with FramePump(col, t.sensor_frames("cam1"), fps=10):
        results = col.wait_for(
            lambda: [
                r
                for r in col.messages(t.app_results_filter("a1"), messages.Result)
                if r.variant == "efficientnet_lite0"
            ][5:],
            60,
            "results from lite0",
        )
        r = results[-1]
        assert r.worker == "w1" and r.incarnation == birth.incarnation and r.generation == 1
        assert r.top[0].index in CAT_CLASSES, r.top
        assert len(r.top) == 5 and r.top[0].score >= r.top[1].score
        lat = r.latency
        assert lat.decode_ms > 0 and lat.preprocess_ms > 0 and lat.inference_ms > 0
        assert lat.total_ms >= lat.inference_ms

        # Heartbeats carry progress.
        hbs = col.wait_for(
            lambda: [h for h in _heartbeats(col, t) if h.frames_processed > 3],
            10,
            "heartbeats with progress",
        )
        assert hbs[-1].incarnation == birth.incarnation
        seqs = [h.seq for h in _heartbeats(col, t)]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert hbs[-1].loaded == ("efficientnet_lite0",)
        assert hbs[-1].apps["a1"].processed > 0
        # last_progress_ts: the time of the last processed frame (its result's ts).
        result_ts = {r.ts for r in col.messages(t.app_results_filter("a1"), messages.Result)}
        assert hbs[-1].last_progress_ts in result_ts
        assert all(h.frames_processed <= h.frames_received for h in _heartbeats(col, t))

        # A newer assignment switches the variant without a restart.
        _assign(col, t, 2, [("a1", "cam1", "efficientnet_lite1")])
        col.wait_for(
            lambda: [
                r
                for r in col.messages(t.app_results_filter("a1"), messages.Result)
                if r.variant == "efficientnet_lite1" and r.generation == 2
            ][3:],
            60,
            "results from lite1",
        )
        assert worker.alive()
        col.wait_for(
            lambda: [h for h in _heartbeats(col, t) if h.loaded == ("efficientnet_lite1",)],
            10,
            "lite0 unloaded",
        )

        # Same model in a newer generation: not loaded again. An older one: ignored.
        _assign(col, t, 3, [("a1", "cam1", "efficientnet_lite1")], warm=("efficientnet_lite0",))
        col.wait_for(lambda: [h for h in _heartbeats(col, t) if h.generation == 3], 10, "gen 3")
        _assign(col, t, 1, [("a1", "cam1", "efficientnet_lite2")])
        loads = [e for e in col.messages(t.events, messages.Event) if e.kind == "model_loaded"]
        col.wait_for(
            lambda: [
                h
                for h in _heartbeats(col, t)
                if set(h.loaded) == {"efficientnet_lite0", "efficientnet_lite1"}
            ],
            20,
            "warm lite0 loaded",
        )
        loads = [e for e in col.messages(t.events, messages.Event) if e.kind == "model_loaded"]
        variants = [e.detail["variant"] for e in loads]
        assert variants.count("efficientnet_lite1") == 1, variants
        assert "efficientnet_lite2" not in variants  # the stale generation 1 was ignored
        assert _heartbeats(col, t)[-1].generation == 3

        # Fencing: an assignment without the app stops its results.
        _assign(col, t, 4, [])
        col.wait_for(
            lambda: [
                e
                for e in col.messages(t.events, messages.Event)
                if e.kind == "serve_stopped" and e.app == "a1"
            ],
            10,
            "fenced",
        )
        col.wait_for(lambda: [h for h in _heartbeats(col, t) if h.generation == 4], 10, "gen 4")

        since = time.monotonic() + 0.5
        time.sleep(1.5)
        assert col.messages(t.app_results_filter("a1"), messages.Result, since=since) == []
    # Clear the retained assignment (a retained message outlives the test on this broker).
    col.publish(t.worker_assignment("w1"), b"", retain=True)


def test_bad_input_is_counted_and_serving_goes_on(
    mesh: dict[str, Any], tmp_path: Path, models_dir: Path
) -> None:
    col, t, worker, cfg = mesh["col"], mesh["t"], mesh["worker"], mesh["cfg"]
    col.wait_for(lambda: col.messages(t.worker_status("w1"), messages.WorkerStatus), 30, "birth")
    _assign(col, t, 1, [("a1", "cam1", "efficientnet_lite0")])
    frames = t.sensor_frames("cam1")
    with FramePump(col, frames, fps=5):
        col.wait_for(
            lambda: col.messages(t.app_results_filter("a1"), messages.Result), 60, "first result"
        )
        # Frame-level garbage.
        good = envelope.pack(b"\xff\xd8garbage", seq=1, capture_ns=0, width=640, height=480)
        col.publish(frames, b"not an envelope at all", qos=0)
        col.publish(frames, good, qos=0)  # valid envelope, corrupt JPEG
        col.publish(frames, b"FLF1" + b"\0" * (cfg.max_frame_bytes + 10), qos=0)
        # Control-level garbage on the assignment topic.
        a_topic = t.worker_assignment("w1")
        col.publish(a_topic, b"{this is not json", qos=1)
        col.publish(a_topic, b'{"v": 42, "worker": "w1", "term": 9, "generation": 9, "ts": 0}')
        col.publish(a_topic, b'{"v": 1, "worker": "w1", "term": "x"}')
        # A variant whose model file is not on disk: counted, and a1 keeps serving.
        missing = messages.Assignment(
            worker="w1",
            term=1,
            generation=2,
            ts=messages.now(),
            serve=(
                messages.Serve("a1", "cam1", "efficientnet_lite0"),
                messages.Serve("a2", "cam1", "resnet_synth_missing"),
            ),
        )
        col.publish(a_topic, messages.encode(missing))

        expected = {
            "malformed_envelope",
            "corrupt_image",
            "oversized_frame",
            "malformed_json",
            "unknown_schema_version",
            "invalid_fields",
            "unknown_variant",
        }
        hb = col.wait_for(
            lambda: [h for h in _heartbeats(col, t) if expected <= set(h.errors)],
            20,
            f"error counters {expected}",
        )[-1]
        assert all(hb.errors[k] >= 1 for k in expected)
        n = len(col.messages(t.app_results_filter("a1"), messages.Result))
        col.wait_for(
            lambda: len(col.messages(t.app_results_filter("a1"), messages.Result)) > n + 3,
            30,
            "results after bad input",
        )
        assert worker.alive()
    col.publish(t.worker_assignment("w1"), b"", retain=True)


def test_image_bombs_are_refused_before_queueing_and_serving_goes_on(
    mesh: dict[str, Any],
) -> None:
    """JPEGs whose SOF declares 32767x32767 (3 GiB to decode), at 4 a second next to good
    frames: refused on the network thread, counted by reason, never received, never decoded."""
    col, t, worker = mesh["col"], mesh["t"], mesh["worker"]
    col.wait_for(lambda: col.messages(t.worker_status("w1"), messages.WorkerStatus), 30, "birth")
    _assign(col, t, 1, [("a1", "cam1", "efficientnet_lite0")])
    frames = t.sensor_frames("cam1")

    def sof_says(width: int, height: int) -> bytes:  # a small JPEG, its SOF0 size patched
        jpeg = bytearray(envelope.encode_jpeg(np.zeros((16, 16, 3), np.uint8)))
        i = jpeg.index(b"\xff\xc0")
        jpeg[i + 5 : i + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
        return bytes(jpeg)

    bombs = {  # reason: (payload, how many sent)
        "image_too_large": (
            envelope.pack(sof_says(32767, 32767), seq=1, capture_ns=0, width=32767, height=32767),
            12,
        ),
        "image_size_mismatch": (
            envelope.pack(sof_says(320, 240), seq=2, capture_ns=0, width=640, height=480),
            3,
        ),
        "empty_image": (envelope.pack(sof_says(0, 0), seq=3, capture_ns=0, width=0, height=0), 3),
    }
    with FramePump(col, frames, fps=5) as pump:
        col.wait_for(
            lambda: col.messages(t.app_results_filter("a1"), messages.Result), 60, "first result"
        )
        start = time.monotonic()
        for i in range(12):  # 3 s at 4 bombs a second
            for payload, n in bombs.values():
                if i < n:
                    col.publish(frames, payload, qos=0)
            time.sleep(0.25)
        during = col.messages(t.app_results_filter("a1"), messages.Result, since=start)
        assert len(during) >= 5, f"{len(during)} results while bombs came, of {pump.sent} sent"

        want = {reason: n for reason, (_p, n) in bombs.items()}
        hb = col.wait_for(
            lambda: [
                h
                for h in _heartbeats(col, t)
                if all(h.errors.get(r, 0) >= n for r, n in want.items())
            ],
            20,
            f"error counters {want}",
        )[-1]
        assert {r: hb.errors[r] for r in want} == want, hb.errors
        assert not {"corrupt_image", "inference_error"} & set(hb.errors), hb.errors
        # Never counted as received: every frame received was a good one, and was processed,
        # dropped, is queued, or is the one in hand (or arrived as the heartbeat was made).
        for h in _heartbeats(col, t)[-10:]:
            in_limbo = h.frames_received - h.frames_processed - h.frames_dropped - h.queue_depth
            assert -2 <= in_limbo <= 2, h
            assert h.apps["a1"].received == h.frames_received <= pump.sent
        n = len(col.messages(t.app_results_filter("a1"), messages.Result))
        col.wait_for(
            lambda: len(col.messages(t.app_results_filter("a1"), messages.Result)) > n + 3,
            30,
            "results after the bombs",
        )
        assert worker.alive()
    col.publish(t.worker_assignment("w1"), b"", retain=True)


def test_missing_model_file_is_reported_not_fatal(
    tmp_path: Path, broker: Any, models_dir: Path
) -> None:
    # A models dir with lite0 only: lite1 is in the catalog but not on this worker's disk.
    local = tmp_path / "models"
    local.mkdir()
    shutil.copy(models_dir / "efficientnet_lite0.onnx", local / "efficientnet_lite0.onnx")
    path = write_config(tmp_path, broker, local, mesh="miss")
    cfg = load(path)
    t = Topics(cfg.mesh)
    col = Collector(cfg).follow(f"faillite/{cfg.mesh}/#").start()
    with ProcessGroup(tmp_path / "logs") as group:
        worker = group.start(
            "w1", "worker", faillite_cmd("worker", "--id", "w1", "--config", str(path))
        )
        birth = col.wait_for(
            lambda: col.messages(t.worker_status("w1"), messages.WorkerStatus), 30, "birth"
        )[-1]
        assert birth.models_on_disk == ("efficientnet_lite0",)
        a = messages.Assignment(
            worker="w1",
            term=1,
            generation=1,
            ts=messages.now(),
            serve=(
                messages.Serve("a1", "cam1", "efficientnet_lite1"),
                messages.Serve("a2", "cam2", "efficientnet_lite0"),
            ),
        )
        col.publish(t.worker_assignment("w1"), messages.encode(a), retain=True)
        with FramePump(col, t.sensor_frames("cam2"), fps=5):
            ev = col.wait_for(
                lambda: [
                    e for e in col.messages(t.events, messages.Event) if e.kind == "missing_model"
                ],
                30,
                "missing_model event",
            )
            assert ev[0].detail["variant"] == "efficientnet_lite1"
            col.wait_for(
                lambda: col.messages(t.app_results_filter("a2"), messages.Result),
                30,
                "a2 still served",
            )
            hb = col.wait_for(
                lambda: [
                    h
                    for h in col.messages(t.worker_heartbeat("w1"), messages.Heartbeat)
                    if h.errors.get("missing_model")
                ],
                10,
                "counter",
            )[-1]
            assert hb.errors["missing_model"] == 1
        assert worker.alive()
        col.publish(t.worker_assignment("w1"), b"", retain=True)
    col.stop()


def test_graceful_stop_publishes_offline_and_crash_fires_last_will(
    tmp_path: Path, broker: Any, models_dir: Path
) -> None:

    path = write_config(tmp_path, broker, models_dir, mesh="life")
    cfg = load(path)
    t = Topics(cfg.mesh)
    col = Collector(cfg).follow(t.filter(__import__("faillite.topics").topics.WORKER_STATUS))
    col.start()
    with ProcessGroup(tmp_path / "logs") as group:
        argv = faillite_cmd("worker", "--id", "w1", "--config", str(path))
        first = group.start("w1-a", "worker", argv)
        b1 = _status_where(col, t, lambda s: s.state == "online", 30, "birth 1")
        group.stop("w1-a", signal.SIGTERM)
        off = _status_where(col, t, lambda s: s.state == "offline", 10, "graceful offline")
        assert (off.reason, off.incarnation) == ("graceful", b1.incarnation)
        assert first.proc.returncode == 0

        group.start("w1-b", "worker", argv)
        b2 = _status_where(
            col, t, lambda s: s.state == "online" and s.incarnation != b1.incarnation, 30, "birth 2"
        )
        group.stop("w1-b", signal.SIGKILL)
        lost = _status_where(col, t, lambda s: s.reason == "lost", 10, "last-will")
        assert lost.incarnation == b2.incarnation and lost.state == "offline"
        # The last-will is the birth's twin: same time (of the birth it ends), same contents.
        assert lost.ts == b2.ts
        assert lost.models_on_disk == b2.models_on_disk and lost.models_on_disk
        # The birth's twin, unsealing it: only this connection's will carries the secret.
        assert replace(lost, state="online", reason="", will_key="", will_seal=b2.will_seal) == b2
        assert b2.will_seal and unseals(b2.will_seal, lost.will_key)
        assert off.will_key and unseals(b1.will_seal, off.will_key)  # the goodbye unseals too
    col.publish(t.worker_status("w1"), b"", retain=True)
    col.stop()


def test_worker_refuses_impossible_config(tmp_path: Path) -> None:
    import subprocess

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "workers": [{"id": "w1", "queue_size": 0}],
                "catalog": str(packaged_config("catalog.yaml")),
            }
        )
    )
    proc = subprocess.run(
        faillite_cmd("worker", "--id", "w1", "--config", str(bad)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "workers.0.queue_size" in proc.stderr


def test_one_process_per_worker_id_and_replace(
    tmp_path: Path, broker: Any, models_dir: Path
) -> None:
    path = write_config(tmp_path, broker, models_dir, mesh="replace")
    cfg = load(path)
    t = Topics(cfg.mesh)
    col = Collector(cfg).follow(f"faillite/{cfg.mesh}/workers/#", qos=1).start()
    argv = faillite_cmd("worker", "--id", "w1", "--config", str(path))
    # Two boards: where each keeps its processes' handover keys.
    board_a = {**os.environ, "FAILLITE_RUNTIME_DIR": str(tmp_path / "board-a")}
    board_b = {**os.environ, "FAILLITE_RUNTIME_DIR": str(tmp_path / "board-b")}
    with ProcessGroup(tmp_path / "logs") as group:
        first = group.start("w1-a", "worker", argv, env=board_a)
        b1 = col.wait_for(lambda: _statuses(col, t, state="online"), 30, "birth")[-1]
        col.wait_for(lambda: _heartbeats(col, t), 10, "heartbeats")
        assert len(b1.handover_seal) == 64

        # The same id while that one is live: refused, saying what runs and how to take over.
        refused = group.start("w1-b", "worker", argv, env=board_a)
        assert refused.proc.wait(60) == 2
        assert "already running" in refused.tail() and "--replace" in refused.tail()
        assert first.alive()

        # A newer birth with the id's secret alone (a thief's): the live one keeps the id
        # and puts its birth back.
        forged = replace(b1, incarnation="thief0", ts=messages.now(), host="elsewhere")
        col.publish(t.worker_status("w1"), messages.encode(forged), retain=True)
        col.wait_for(lambda: "takeover_refused" in first.tail(40), 15, "takeover refused")
        col.wait_for(
            lambda: (
                [s.incarnation for s in _statuses(col, t, state="online")][-2:]
                == ["thief0", b1.incarnation]
            ),
            15,
            "its birth back",
        )
        assert first.alive()

        # --replace from another board: it holds no handover key of the live process.
        elsewhere = group.start("w1-x", "worker", [*argv, "--replace"], env=board_b)
        assert elsewhere.proc.wait(60) == 2
        assert "only on the board it runs on" in elsewhere.tail(), elsewhere.tail()
        assert first.alive()

        # --replace on its board: the live one steps down, exits 0 and publishes nothing
        # about the id.
        second = group.start("w1-c", "worker", [*argv, "--replace"], env=board_a)
        b2 = col.wait_for(
            lambda: [
                s
                for s in _statuses(col, t, state="online")
                if s.incarnation not in (b1.incarnation, forged.incarnation)
            ],
            30,
            "the successor's birth",
        )[-1]
        assert first.proc.wait(15) == 0
        assert "worker_replaced" in first.tail(40)
        assert _statuses(col, t, incarnation=b1.incarnation, state="offline") == []
        # The predecessor has exited; the successor connects once its beats have been quiet
        # for presence.STEP_DOWN_S.
        since = time.monotonic()
        hbs = col.wait_for(
            lambda: col.messages(t.worker_heartbeat("w1"), messages.Heartbeat, since=since),
            15,
            "the successor's heartbeats",
        )
        assert {h.incarnation for h in hbs} == {b2.incarnation}
        fresh = Collector(cfg).follow(t.worker_status("w1")).start()  # what the broker retains
        try:
            st = fresh.wait_for(
                lambda: fresh.messages(t.worker_status("w1"), messages.WorkerStatus),
                10,
                "retained status",
            )[-1]
            assert (st.state, st.incarnation) == ("online", b2.incarnation)
        finally:
            fresh.stop()
        assert second.alive()
    col.publish(t.worker_status("w1"), b"", retain=True)
    col.stop()


def test_worker_without_a_broker_keeps_trying_and_stops_cleanly(
    tmp_path: Path, models_dir: Path
) -> None:
    class Nowhere:
        host, port = "127.0.0.1", free_port("127.0.0.1")

    path = write_config(tmp_path, Nowhere(), models_dir, mesh="nobroker")
    with ProcessGroup(tmp_path / "logs") as group:
        w = group.start("w1", "worker", faillite_cmd("worker", "--id", "w1", "--config", str(path)))
        deadline = time.monotonic() + 60
        while "broker_unreachable" not in w.tail(50) and time.monotonic() < deadline:
            assert w.alive(), w.tail()
            time.sleep(0.2)
        time.sleep(2.0)  # retrying meanwhile: still one line
        assert w.alive()
        assert group.stop("w1", signal.SIGTERM) == 0
    text = (tmp_path / "logs" / "w1.log").read_text()
    assert text.count("broker_unreachable") == 1, text
    assert "Traceback" not in text and "worker_stopped" in text


def test_fault_plugin_hangs_inference_while_heartbeats_flow(
    tmp_path: Path, amqtt_broker: Any, models_dir: Path
) -> None:
    path = write_config(tmp_path, amqtt_broker, models_dir, mesh="faults")
    cfg = load(path)
    t = Topics(cfg.mesh)
    col = Collector(cfg).follow(f"faillite/{cfg.mesh}/#", qos=1).start()
    argv = faillite_cmd(
        "worker", "--id", "w1", "--config", str(path), "--plugin", "field_kit.drill.faults"
    )
    with ProcessGroup(tmp_path / "logs") as group:
        w = group.start("w1", "worker", argv)
        col.wait_for(lambda: _statuses(col, t, state="online"), 30, "birth")
        _assign(col, t, 1, [("a1", "cam1", "efficientnet_lite0")])
        with FramePump(col, t.sensor_frames("cam1"), fps=10):
            col.wait_for(
                lambda: col.messages(t.app_results_filter("a1"), messages.Result), 60, "results"
            )
            w.proc.send_signal(signal.SIGUSR1)  # hang
            time.sleep(0.5)
            since = time.monotonic()
            time.sleep(1.5)
            assert col.messages(t.app_results_filter("a1"), messages.Result, since=since) == []
            hbs = col.messages(t.worker_heartbeat("w1"), messages.Heartbeat, since=since)
            assert len(hbs) > 5  # heartbeats go on: a gray failure
            assert hbs[-1].frames_received > hbs[0].frames_received
            assert hbs[-1].frames_processed == hbs[0].frames_processed
            assert hbs[-1].busy and hbs[-1].queue_depth > 0
            w.proc.send_signal(signal.SIGUSR1)  # thaw
            n = len(col.messages(t.app_results_filter("a1"), messages.Result))
            col.wait_for(
                lambda: len(col.messages(t.app_results_filter("a1"), messages.Result)) > n + 3,
                20,
                "results again",
            )
        assert w.alive()
        assert group.stop("w1") == 0
    col.publish(t.worker_assignment("w1"), b"", retain=True)
    col.stop()


def test_a_jetson_worker_without_a_working_tensorrt_serves_on_its_fallback(
    tmp_path: Path, broker: Any, models_dir: Path
) -> None:
    """A kit's Jetson worker is configured for TensorRT with ONNX Runtime's CPU as fallback.
    This machine has no TensorRT (as a board whose JetPack does not match): the worker says so
    in one log line, never a traceback, and serves on the fallback."""
    path = write_config(
        tmp_path,
        broker,
        models_dir,
        mesh="tjetson",
        workers=[
            {
                "id": "w1",
                "backend": {"type": "tensorrt", "engines_dir": str(tmp_path / "engines")},
                "fallback_backend": {"type": "onnxruntime", "intra_op_threads": 1},
            }
        ],
    )
    cfg = load(path)
    t = Topics(cfg.mesh)
    col = Collector(cfg).follow(f"faillite/{cfg.mesh}/#", qos=1).start()
    group = ProcessGroup(tmp_path / "logs")
    worker = group.start(
        "worker-w1", "worker", faillite_cmd("worker", "--id", "w1", "--config", str(path))
    )
    try:
        birth = col.wait_for(
            lambda: [
                s
                for s in col.messages(t.worker_status("w1"), messages.WorkerStatus)
                if s.state == "online"
            ],
            30,
            "worker birth",
        )[-1]
        assert "CPUExecutionProvider" in birth.backends
        _assign(col, t, 1, [("a1", "cam1", "efficientnet_lite0")])
        with FramePump(col, t.sensor_frames("cam1"), fps=10):
            col.wait_for(
                lambda: col.messages(t.app_results_filter("a1"), messages.Result)[3:],
                60,
                "results on the fallback",
            )
        assert worker.log_path is not None
        log = worker.log_path.read_text()
        lines = [x for x in log.splitlines() if '"backend_unavailable"' in x]
        assert len(lines) == 1, log[-2000:]
        said = json.loads(lines[0])
        assert said["backend"] == "tensorrt" and said["fallback"] == "onnxruntime", said
        assert "Traceback" not in log
    finally:
        col.stop()
        group.stop_all()


def test_a_poison_stream_is_quarantined_and_the_other_cameras_app_is_served_on(
    tmp_path: Path, broker: Any, models_dir: Path
) -> None:
    """A frame that passes the cost check but costs far more than its camera's frames (here a
    32-scan progressive frame on a camera of plain photos, with the bound set low so that one
    counts as poison): that camera is dropped a while, with an event; the honest camera's app
    is served all along, and the poisoned camera's app again once the quarantine ends."""
    import cv2

    mesh_id = "q" + broker.kind[:3]
    path = write_config(
        tmp_path,
        broker,
        models_dir,
        mesh=mesh_id,
        workers=({"id": "w1", "quarantine": {"floor_ms": 3, "factor": 4, "base_s": 3}},),
        sensors=({"id": "cam1"}, {"id": "cam2"}),
        apps=(
            {"id": "a1", "sensor": "cam1", "family": "efficientnet_lite"},
            {"id": "a2", "sensor": "cam2", "family": "efficientnet_lite"},
        ),
    )
    cfg = load(path)
    t = Topics(mesh_id)
    col = Collector(cfg).follow(f"faillite/{mesh_id}/#", qos=1).start()
    noise = np.random.default_rng(3).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    jpeg = buf.tobytes()
    last = jpeg[jpeg.rfind(b"\xff\xda") : -2]
    poison = jpeg[:-2] + last * (envelope.MAX_JPEG_SCANS - 10) + b"\xff\xd9"
    frame = envelope.pack(poison, seq=10**6, capture_ns=time.time_ns(), width=640, height=480)
    envelope.check_image(
        envelope.unpack(frame, max_bytes=cfg.max_frame_bytes), max_pixels=640 * 480
    )
    try:
        with ProcessGroup(tmp_path / "logs") as group:
            worker = group.start(
                "w1", "worker", faillite_cmd("worker", "--id", "w1", "--config", str(path))
            )
            col.wait_for(lambda: _statuses(col, t), 30, "birth")
            a = messages.Assignment(
                worker="w1", term=1, generation=1, ts=messages.now(),
                serve=(messages.Serve("a1", "cam1", "efficientnet_lite0"),
                       messages.Serve("a2", "cam2", "efficientnet_lite0")),
            )  # fmt: skip
            col.publish(t.worker_assignment("w1"), messages.encode(a), qos=1, retain=True)
            with (
                FramePump(col, t.sensor_frames("cam1"), 5),
                FramePump(col, t.sensor_frames("cam2"), 5),
            ):
                for app in ("a1", "a2"):
                    col.wait_for(
                        lambda app=app: col.messages(t.app_results_filter(app), messages.Result)[
                            5:
                        ],
                        60,
                        f"{app} served",
                    )
                col.publish(t.sensor_frames("cam1"), frame, qos=0)
                (ev,) = col.wait_for(
                    lambda: [
                        e
                        for e in col.messages(t.events, messages.Event)
                        if e.kind == "stream_quarantined"
                    ][:1],
                    20,
                    "the quarantine",
                )
                assert ev.worker == "w1" and ev.detail["sensor"] == "cam1"
                assert (
                    ev.detail["for_s"] == 3 and ev.detail["cost_ms"] > 4 * ev.detail["typical_ms"]
                )
                since = time.time()
                col.wait_for(
                    lambda: [h for h in _heartbeats(col, t) if h.errors.get("quarantined", 0) >= 5],
                    20,
                    "cam1's frames dropped unread, counted",
                )
                # cam2's app all along; cam1's back once its quarantine is over.
                col.wait_for(
                    lambda: [
                        r
                        for r in col.messages(t.app_results_filter("a1"), messages.Result)
                        if r.ts > since + 3
                    ],
                    30,
                    "a1 served again after its quarantine",
                )
                a2 = [
                    r
                    for r in col.messages(t.app_results_filter("a2"), messages.Result)
                    if r.ts > since
                ]
                assert len(a2) >= 10, len(a2)
                assert worker.alive()
    finally:
        col.publish(t.worker_assignment("w1"), b"", retain=True)
        col.stop()
