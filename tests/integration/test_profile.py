"""``faillite profile`` on this machine's CPU: the real command, real models, few runs.

It profiles the EfficientNet-Lite family for a device class the catalog does not know
(``test-cpu``), checks the overlay's figures are plausible, and that a mesh of ``test-cpu``
workers, which could not be planned before, plans with the catalog merged from the models dir.
The TensorRT path is not run here (no GPU, no TensorRT): see tests/unit/test_profiler.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from coordinator.planner.problem import Problem, ProblemError
from faillite.catalog import (
    ESTIMATE,
    Catalog,
    estimated,
    load_catalog,
    load_overlay,
    load_profile_overlays,
)
from faillite.compat import python_module
from faillite.config import load_mesh_config, packaged_config

LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def test_cpu_kit_class_profiled_once_is_plannable(
    models_dir: Path, catalog: Catalog, tmp_path: Path
) -> None:
    # A models dir of our own (links to the cached files): the profile lands beside them.
    mine = tmp_path / "models"
    mine.mkdir()
    for v in LITE:
        f = catalog.variant(v).file
        (mine / f).symlink_to(models_dir / f)
    demo = yaml.safe_load(packaged_config("demo.yaml").read_text())
    demo["catalog"] = str(packaged_config("catalog.yaml"))
    demo["models_dir"] = str(mine)
    for w in demo["workers"]:
        w["device_class"] = "test-cpu"
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump(demo))
    mesh = load_mesh_config(tmp_path / "mesh.yaml")
    with pytest.raises(ProblemError, match=r"no profile for device class 'test-cpu'"):
        Problem.from_config(mesh, load_catalog(mesh.catalog, overlays=mesh.models_path))

    out = subprocess.run(
        [*python_module("faillite"), "profile", "-c", str(tmp_path / "mesh.yaml"),
         "--device-class", "test-cpu", "--variants", ",".join(LITE), "--runs", "8",
         "--threads", "1", "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    path = mine / "profiles" / "test-cpu.yaml"
    assert f"wrote {path}" in out.stdout
    overlay = load_overlay(path)
    assert overlay.device_class == "test-cpu" and set(overlay.profiles) == set(LITE)
    assert overlay.machine["providers"] == ["CPUExecutionProvider"]
    for v, p in overlay.profiles.items():
        assert 0 < p.latency_ms < 2000, (v, p)
        assert p.p99_ms is not None and p.p99_ms >= p.latency_ms, (v, p)
        assert p.memory_mb > 1 and p.load_ms > 0 and p.first_inference_ms > 0, (v, p)
        assert p.warm_load_ms is not None and p.warm_load_ms > 0, (v, p)
        assert p.throughput_fps is not None and p.throughput_fps > 0, (v, p)
        # Built models take any batch size (a worker batches frames of several apps).
        assert p.best_batch is not None and p.best_batch >= 1, (v, p)
        assert p.batching and "symbolic batch dim" in p.batching, (v, p)
        assert p.gpu_memory_mb is None or p.gpu_memory_mb >= 0
        assert "p50 of 8 runs" in p.source and "onnxruntime" in p.source
    # A bigger variant costs more: a sanity check the figures belong to their models.
    assert (
        overlay.profiles["efficientnet_lite2"].latency_ms
        > overlay.profiles["efficientnet_lite0"].latency_ms
    )

    merged = load_catalog(mesh.catalog, overlays=mesh.models_path)
    assert merged == load_profile_overlays(catalog, mine)
    problem = Problem.from_config(mesh, merged)
    cost = problem.cost("efficientnet_lite0", "test-cpu")
    assert cost is not None
    assert cost.latency_ms == overlay.profiles["efficientnet_lite0"].latency_ms

    # Re-profiling one variant keeps the others in the file.
    shutil.copy(path, tmp_path / "before.yaml")
    again = subprocess.run(
        [*python_module("faillite"), "profile", "-c", str(tmp_path / "mesh.yaml"),
         "--device-class", "test-cpu", "--variants", "efficientnet_lite0", "--runs", "3",
         "--threads", "1", "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    after = load_overlay(path)
    before = load_overlay(tmp_path / "before.yaml")
    assert set(after.profiles) == set(LITE)
    assert after.profiles["efficientnet_lite2"] == before.profiles["efficientnet_lite2"]

    # What an install runs: a measured file is kept, not measured again...
    kept = subprocess.run(
        [*python_module("faillite"), "profile", "-c", str(tmp_path / "mesh.yaml"),
         "--device-class", "test-cpu", "--if-estimated", "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert kept.returncode == 0 and "measured already" in kept.stdout, kept.stderr
    assert load_overlay(path) == after
    # ...an estimate is measured over (what was not measured keeps its estimate row).
    path.write_text(
        yaml.safe_dump(
            estimated(catalog, "test-cpu", "cpu", latency_scale=9.0).model_dump(mode="json")
        )
    )
    measured = subprocess.run(
        [*python_module("faillite"), "profile", "-c", str(tmp_path / "mesh.yaml"),
         "--device-class", "test-cpu", "--if-estimated", "--variants", "efficientnet_lite0",
         "--runs", "3", "--threads", "1", "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert measured.returncode == 0, measured.stderr
    now = load_overlay(path)
    assert not now.source.startswith(ESTIMATE)
    assert not now.profiles["efficientnet_lite0"].source.startswith(ESTIMATE)
    assert now.profiles["efficientnet_lite2"].source.startswith(ESTIMATE)
