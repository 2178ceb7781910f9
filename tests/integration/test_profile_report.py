"""A board's measured profile reaches the coordinators: real worker and coordinator processes,
a real broker. The coordinator was staged with an estimate of the workers' device class (its
own models folder); the worker's folder holds what ``faillite profile`` measured there. The
worker publishes it retained, the leader plans with it and says so (``profile_measured``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from plugins.mesh import Collector, load, write_config

from faillite import messages
from faillite.catalog import Catalog, DeviceProfile, ProfileOverlay, estimated
from faillite.topics import Topics
from field_kit.procs import ProcessGroup, faillite_cmd

LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def _folder(root: Path, models_dir: Path, catalog: Catalog, overlay: ProfileOverlay) -> Path:
    root.mkdir()
    for v in LITE:
        f = catalog.variant(v).file
        (root / f).symlink_to(models_dir / f)
    (root / "profiles").mkdir()
    doc = overlay.model_dump(mode="json", exclude_defaults=True)
    (root / "profiles" / f"{overlay.device_class}.yaml").write_text(yaml.safe_dump(doc))
    return root


def test_a_measured_profile_replaces_the_coordinators_estimate(
    tmp_path: Path, broker: Any, models_dir: Path, catalog: Catalog
) -> None:
    guess = estimated(catalog, "field-box", "cpu", latency_scale=4.0)
    coord_models = _folder(tmp_path / "coord-models", models_dir, catalog, guess)
    measured = ProfileOverlay(
        device_class="field-box",
        source="w1 on this test machine",
        profiles={
            v: DeviceProfile(latency_ms=3.0 + i, memory_mb=90.0, source="p50 of 30 runs")
            for i, v in enumerate(LITE)
        },
    )
    worker_models = _folder(tmp_path / "worker-models", models_dir, catalog, measured)
    mesh = "prof" + broker.kind[:3]
    path = write_config(
        tmp_path,
        broker,
        coord_models,
        mesh=mesh,
        workers=({"id": "w1", "device_class": "field-box", "models_dir": str(worker_models)},),
        sensors=({"id": "cam1", "fps": 5},),
        extra={"coordinator": {"type": "planner", "method": "greedy", "startup_wait_s": 1}},
    )
    t = Topics(mesh)
    col = Collector(load(path)).follow(f"faillite/{mesh}/#").start()
    try:
        with ProcessGroup(tmp_path / "logs") as group:
            group.start("c1", "coordinator", faillite_cmd("coordinator", "--config", str(path)))
            group.start("w1", "worker", faillite_cmd("worker", "--id", "w1", "--config", str(path)))
            (told,) = col.wait_for(
                lambda: col.messages(t.worker_profile("w1"), messages.WorkerProfile)[:1],
                60,
                "the worker's profile",
            )
            assert told.device_class == "field-box" and told.source == "w1 on this test machine"
            assert {(c.variant, c.latency_ms) for c in told.costs} == {
                (v, 3.0 + i) for i, v in enumerate(LITE)
            }
            taken = col.wait_for(
                lambda: [
                    e
                    for e in col.messages(t.events, messages.Event)
                    if e.kind == "profile_measured"
                ],
                30,
                "the leader taking the measured profile",
            )
            assert taken[0].worker == "w1"
            assert taken[0].detail["device_classes"] == ["field-box"]
            # The app is served on the plan made with it (or re-made with it).
            col.wait_for(
                lambda: [
                    r
                    for r in col.messages(t.app_route("a1"), messages.Route)
                    if r.worker == "w1" and r.state == "serving"
                ],
                60,
                "a1 served by w1",
            )
    finally:
        col.stop()
