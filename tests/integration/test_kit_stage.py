"""``faillite kit stage``: the planner decides each node's model files under its disk budget;
they are copied and verified, and what does not fit is reported with the apps it costs. Real
planner (CVXPY + HiGHS), real model files; a CPU kit, since the catalog profiles CPUs here."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from faillite.catalog import Catalog, load_profile_overlays
from faillite.compat import python_module
from field_kit.kit.model import EXAMPLE, Kit
from field_kit.kit.render import render
from field_kit.kit.stage import StageError, plan_stage, report, stage


def cpu_kit(disk_mb: dict[str, float], *, workers: int = 5, memory_mb: float = 1024) -> Kit:
    data = yaml.safe_load(EXAMPLE)
    for n in data["nodes"][workers:]:
        n["roles"] = [r for r in n["roles"] if r != "worker"] or ["sensor"]
    for n in data["nodes"]:
        n.update(arch="x86_64", device_class="cpu", accelerator="none", disk_mb=disk_mb[n["id"]])
        n["gpu_memory_mb"] = 0
        n.pop("jetpack", None)  # x86: no JetPack
        n["memory_mb"] = memory_mb
    return Kit.model_validate(data)


ROOMY = {f"orin{i}": 10_000.0 for i in range(1, 6)}


def test_every_node_holds_what_its_plan_and_failover_table_call_on(
    catalog: Catalog, models_dir: Path, tmp_path: Path
) -> None:
    kit = cpu_kit(ROOMY)
    kit_stage = stage(kit, catalog, models_dir, tmp_path)
    stages = kit_stage.nodes
    assert not kit_stage.apps_losing_protection
    whys = {f.why for st in stages for f in st.files}
    assert "primary" in whys and whys & {"warm", "cold"}
    assert all(not st.left_out for st in stages)
    apps = {a.id for a in kit.apps}
    primaries = {a for st in stages for f in st.files if f.why == "primary" for a in f.apps}
    assert primaries == apps
    for st in stages:
        folder = tmp_path / st.node / "var/lib/faillite/models"
        manifest = json.loads((folder / "stage.json").read_text())
        assert manifest["node"] == st.node and manifest["unprotected_apps"] == []
        for f in manifest["files"]:
            data = (folder / f["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == f["sha256"]
            assert data == (models_dir / f["file"]).read_bytes()
        assert sum(1 for p in folder.iterdir() if p.suffix == ".onnx") == len(st.files)
    # Rendering the kit again (new keys, a changed link) keeps what was staged.
    render(kit, tmp_path)
    for st in stages:
        folder = tmp_path / st.node / "var/lib/faillite/models"
        assert sum(1 for p in folder.iterdir() if p.suffix == ".onnx") == len(st.files)


def test_what_does_not_fit_is_left_out_with_the_apps_it_costs(catalog: Catalog) -> None:
    # Two small workers: a primary and a smaller backup each (heterogeneous), and ladders.
    roomy = plan_stage(cpu_kit(ROOMY, workers=2, memory_mb=150), catalog).nodes
    busy = max(roomy, key=lambda st: len(st.files))
    assert len(busy.files) >= 2, roomy
    # Room for its most needed file and not the next: the rest is left out, with its apps.
    tight = {**ROOMY, busy.node: busy.files[0].size_mb + 1.0}
    tight_stage = plan_stage(cpu_kit(tight, workers=2, memory_mb=150), catalog)
    for st in tight_stage.nodes:
        assert st.used_mb <= tight[st.node], st
    # The planner moves what it can elsewhere; what is lost anyway is named.
    lost = tight_stage.apps_losing_protection
    assert lost and set(lost) <= {a.id for a in cpu_kit(ROOMY).apps}, tight_stage


def test_a_device_class_without_profiles_is_a_clear_error(catalog: Catalog) -> None:
    doc = yaml.safe_load(EXAMPLE)
    doc.pop("estimates")
    with pytest.raises(StageError, match=r"jetson-orin-nx.*faillite profile"):
        plan_stage(Kit.model_validate(doc), catalog)


def test_boards_not_measured_yet_stage_from_the_declared_estimate_and_say_so(
    catalog: Catalog, models_dir: Path, tmp_path: Path
) -> None:
    """The README's sequence with its example kit (five Jetsons nobody profiled yet): staged
    from the estimate, which the report names, and shipped to every node, so the coordinators
    on the boards plan with the same profiles."""
    kit = Kit.model_validate(yaml.safe_load(EXAMPLE))
    staged = stage(kit, catalog, models_dir, tmp_path)
    assert staged.estimated == ["jetson-orin-nx"]
    assert not staged.apps_unserved
    assert "jetson-orin-nx: planned from an ESTIMATE" in report(staged)
    for node in kit.nodes:
        folder = tmp_path / node.id / "var/lib/faillite/models"
        on_board = load_profile_overlays(catalog, folder)
        lite0 = on_board.variant("efficientnet_lite0").profiles["jetson-orin-nx"]
        cpu = catalog.variant("efficientnet_lite0").profiles["cpu"]
        assert lite0.latency_ms == pytest.approx(cpu.latency_ms * 0.3)
        assert lite0.source.startswith("estimate: cpu")


def test_kit_stage_cli(models_dir: Path, tmp_path: Path) -> None:
    kit = tmp_path / "kit.yaml"
    kit.write_text(yaml.safe_dump(cpu_kit(ROOMY).model_dump(mode="json")))
    out = subprocess.run(
        [*python_module("faillite"), "kit", "stage", str(kit),
         "--out", str(tmp_path / "build"), "--models-dir", str(models_dir)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "orin1" in out.stdout and "every file fits" in out.stderr
    # The plan kit check holds the kit to: each app's primary is a worker holding its file.
    plan = json.loads((tmp_path / "build/_operator/plan.json").read_text())
    assert set(plan["apps"]) == {a.id for a in cpu_kit(ROOMY).apps}
    for app, p in plan["apps"].items():
        staged = json.loads(
            (tmp_path / "build" / p["worker"] / "var/lib/faillite/models/stage.json").read_text()
        )
        assert any(
            f["variant"] == p["variant"] and f["why"] == "primary" and app in f["apps"]
            for f in staged["files"]
        ), (app, staged)


def test_a_kit_whose_apps_fit_nowhere_is_refused(models_dir: Path, tmp_path: Path) -> None:
    tiny = {f"orin{i}": 1.0 for i in range(1, 6)}  # no model file is this small
    kit = tmp_path / "kit.yaml"
    kit.write_text(yaml.safe_dump(cpu_kit(tiny).model_dump(mode="json")))
    out = subprocess.run(
        [*python_module("faillite"), "kit", "stage", str(kit),
         "--out", str(tmp_path / "build"), "--models-dir", str(models_dir)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "no node can serve" in out.stderr and "north-watch" in out.stderr, out.stderr
