"""A real worker subprocess on Mosquitto serving four cameras' apps of one variant in batches."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import orjson
from plugins.mesh import Collector, load, write_config

from faillite import messages
from faillite.topics import Topics
from field_kit.procs import ProcessGroup, faillite_cmd
from field_kit.pump import FramePump

CAT_CLASSES = {281, 282, 283, 284, 285, 287}
APPS = {f"a{i}": f"cam{i}" for i in range(1, 5)}


def _batching_lines(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"batching"' in line:
            doc = orjson.loads(line)
            if doc.get("event") == "batching":
                out.append(doc)
    return out


def test_four_cameras_of_one_variant_are_served_in_batches(
    tmp_path: Path, mosquitto_broker: Any, models_dir: Path
) -> None:
    worker = {"id": "w1", "queue_size": 4, "batching": {"max_batch": 4, "max_wait_ms": 30}}
    path = write_config(tmp_path, mosquitto_broker, models_dir, mesh="batch", workers=(worker,))
    cfg = load(path)
    t = Topics(cfg.mesh)
    col = Collector(cfg).follow(f"faillite/{cfg.mesh}/#", qos=1).start()
    try:
        with ProcessGroup(tmp_path / "logs") as group:
            w = group.start(
                "w1", "worker", faillite_cmd("worker", "--id", "w1", "--config", str(path))
            )
            col.wait_for(
                lambda: [
                    s
                    for s in col.messages(t.worker_status("w1"), messages.WorkerStatus)
                    if s.state == "online"
                ],
                30,
                "birth",
            )
            a = messages.Assignment(
                worker="w1",
                term=1,
                generation=1,
                ts=messages.now(),
                serve=tuple(
                    messages.Serve(app, cam, "efficientnet_lite0") for app, cam in APPS.items()
                ),
            )
            col.publish(t.worker_assignment("w1"), messages.encode(a), qos=1, retain=True)
            log = w.log_path
            assert log is not None

            def results() -> dict[str, list[messages.Result]] | None:
                got = {
                    app: col.messages(t.app_results_filter(app), messages.Result) for app in APPS
                }
                return got if all(len(rs) >= 10 for rs in got.values()) else None

            with contextlib.ExitStack() as pumps:
                for cam in APPS.values():
                    pumps.enter_context(FramePump(col, t.sensor_frames(cam), fps=15))
                by_app = col.wait_for(results, 60, "10 results of every app")
                stats = col.wait_for(
                    lambda: [s for s in _batching_lines(log) if s["largest"] > 1],
                    30,
                    "a batching log line with batches of more than one frame",
                )
            assert stats[-1]["max_batch"] == 4 and 1 < stats[-1]["largest"] <= 4
            for app, rs in by_app.items():
                r = rs[-1]
                assert r.app == app and r.sensor == APPS[app] and r.generation == 1
                assert r.top[0].index in CAT_CLASSES, r.top
                lat = r.latency
                assert lat.decode_ms > 0 and lat.preprocess_ms > 0 and lat.inference_ms > 0
            # Frames of one batch share their inference call, so its time too.
            everything = [r for app_rs in by_app.values() for r in app_rs]
            shared = {r.latency.inference_ms for r in everything}
            assert len(shared) < len(everything)
            assert w.alive()
            assert group.stop("w1") == 0
    finally:
        col.publish(t.worker_assignment("w1"), b"", retain=True)
        col.stop()
