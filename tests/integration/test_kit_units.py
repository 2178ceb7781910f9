"""The kit's systemd units, judged by systemd itself and by the kernel.

- ``systemd-analyze security --offline=true`` rates every unit a kit renders (both brokers, GPU
  and CPU workers, network and local cameras) "OK": exposure 3.0 or less.
- ``MemoryDenyWriteExecute=yes`` is given to every role but a GPU worker: the whole mesh
  (embedded broker, coordinator, CPU workers with ONNX Runtime, cameras with OpenCV) runs under
  the kernel's own equivalent, ``PR_SET_MDWE``, which its children inherit (Linux 6.3+).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from faillite.compat import python_code
from field_kit.kit.hardening import exposure
from field_kit.kit.model import EXAMPLE, Kit
from field_kit.kit.render import render

MAX_EXPOSURE = 3.0


def _kits() -> dict[str, Kit]:
    base = yaml.safe_load(EXAMPLE)
    variant = yaml.safe_load(EXAMPLE)
    variant["broker"] = {"node": "orin1", "kind": "amqtt"}
    variant["cameras"][0]["source"] = "/dev/video0"
    for n in variant["nodes"]:
        n["accelerator"] = "none"
        n.pop("jetpack", None)  # a CPU-only box: no JetPack
    return {"example": Kit.model_validate(base), "variant": Kit.model_validate(variant)}


def _exposure(unit: Path) -> float:
    score = exposure(unit)
    assert score is not None, f"{unit.name}: systemd-analyze gave no exposure"
    return score


def test_every_unit_a_kit_renders_is_rated_ok(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (Debian: systemd)")
    probe = subprocess.run(
        ["systemd-analyze", "security", "--help"], capture_output=True, text=True, check=False
    )
    if "--offline" not in probe.stdout:
        pytest.skip("this systemd-analyze has no --offline (systemd 250+)")
    scores: dict[str, float] = {}
    for name, kit in _kits().items():
        render(kit, tmp_path / name)
        for unit in sorted((tmp_path / name).glob("*/etc/systemd/system/*.service")):
            scores[f"{name}/{unit.parent.parent.parent.parent.name}/{unit.name}"] = _exposure(unit)
    assert len(scores) >= 16, scores
    worst = {k: v for k, v in scores.items() if v > MAX_EXPOSURE}
    assert not worst, f"exposure above {MAX_EXPOSURE}: {worst}"


_MDWE = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "if libc.prctl(65, 1, 0, 0, 0) != 0:\n"  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    "    sys.exit(77)\n"
)


def test_the_mesh_runs_where_memory_may_not_be_written_and_executed(tmp_path: Path) -> None:
    up = [
        sys.executable, "-m", "faillite", "up", "--duration", "20", "--no-view", "--port", "0",
    ]  # fmt: skip
    code = _MDWE + f"os.chdir({str(tmp_path)!r})\nos.execv(sys.executable, {up!r})\n"
    out = subprocess.run(python_code(code), capture_output=True, text=True, timeout=240)
    if out.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    tail = "\n".join(out.stdout.splitlines()[-12:])
    assert out.returncode == 0, f"{tail}\n{out.stderr[-2000:]}"
    assert "every app got results" in out.stdout, tail
