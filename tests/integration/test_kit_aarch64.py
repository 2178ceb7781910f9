"""An aarch64 board rehearsed on this x86 machine: a Jetson-class node's own bundle installed by
its own (Debian arm64) Python under qemu-user, its worker serving the kit's camera, the rest
of the kit (broker, coordinator, camera) running natively beside it on loopback.

It proves what only an aarch64 machine can: the aarch64 wheelhouse installs offline, and the
worker's runtime (NumPy, OpenCV, ONNX Runtime's aarch64 build) loads, plans and serves. The
board is CPU-only (``accelerator: none``): JetPack's TensorRT cannot run here (its stand-in is
in tests/integration/test_worker.py). Emulated, it is ~50x slower than the catalog's x86
profile, so the kit declares that as its estimate; ``--no-profile`` skips measuring it at
install (minutes under emulation). Needs root, qemu-user-static, binfmt_misc and Debian's arm64
packages (``.ci/run`` installs them), and the package index for the bundle.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from faillite.catalog import Catalog
from faillite.compat import python_module
from field_kit.kit.bundle import bundle, release_fingerprint
from field_kit.kit.emulate import Board, emulation_problem
from field_kit.kit.installer import extract_all
from field_kit.kit.model import Kit
from field_kit.kit.rehearse import read_units
from field_kit.kit.render import render
from field_kit.kit.stage import stage
from field_kit.procs import ProcessGroup, free_port

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "faillite/arm64-debs"


def _kit(port: int) -> Kit:
    node = {"host": "127.0.0.1", "memory_mb": 2048, "disk_mb": 1000}
    return Kit.model_validate(
        {
            "kit": "emu",
            "broker": {"node": "n1", "kind": "amqtt", "port": port},
            "nodes": [
                {
                    **node,
                    "id": "n1",
                    "arch": "x86_64",
                    "device_class": "cpu",
                    "failure_domain": "a",
                    "roles": ["broker", "coordinator", "sensor"],
                },
                {
                    **node,
                    "id": "orin1",
                    "arch": "aarch64",
                    "device_class": "orin-emulated",
                    "accelerator": "none",
                    "failure_domain": "b",
                    "roles": ["worker"],
                },
            ],
            "cameras": [{"id": "cam1", "node": "n1", "source": "scene:chelsea", "fps": 0.5}],
            "apps": [
                {
                    "id": "gate",
                    "camera": "cam1",
                    "family": "efficientnet_lite",
                    "critical": True,
                    "slo_ms": 20000,
                },
            ],
            "observers": ["ops"],
            "estimates": {"orin-emulated": {"base": "cpu", "latency_scale": 50.0}},
        }
    )


@pytest.fixture
def board() -> Iterator[Board]:
    problem = emulation_problem()
    if problem is not None:
        pytest.skip(f"no aarch64 emulation: {problem}")
    with tempfile.TemporaryDirectory(prefix="faillite-arm64-") as tmp:
        yield Board.make(Path(tmp) / "rootfs", CACHE)


@pytest.mark.timeout(1500)
def test_an_aarch64_board_installs_its_bundle_and_serves_under_emulation(
    board: Board, catalog: Catalog, models_dir: Path, tmp_path: Path
) -> None:
    arch = subprocess.run(
        board.wrap([str(board.python), "-c", "import platform; print(platform.machine())"]),
        env=board.env(), capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert arch.stdout.strip() == "aarch64"
    kit = _kit(free_port())
    root = tmp_path / "kit"
    render(kit, root, in_place=True)
    staged = stage(kit, catalog, models_dir, root)
    assert "orin-emulated" in staged.estimated
    archives = bundle(kit, root, REPO, tmp_path / "dist", "aarch64")
    assert set(archives) == {"orin1"}
    archive = archives["orin1"]
    with tarfile.open(archive) as tar:
        name = f"{archive.name.removesuffix('.tar')}/install.py"
        extract_all(tar, tmp_path / "installer", only=name)
    node = root / "orin1"
    install = subprocess.run(
        board.wrap([str(board.python), str(tmp_path / "installer" / name),
                    "--node", "orin1", "--bundle", str(archive), "--keep-bundle",
                    "--trust", release_fingerprint(root), "--root", str(node),
                    "--no-systemd", "--no-profile"]),
        env=board.env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    assert "installed node orin1 (worker, cpu)" in install.stderr
    site = next((node / "opt/faillite/venv/lib").glob("python3.11/site-packages"))
    assert any(site.glob("onnxruntime/capi/onnxruntime_pybind11_state*aarch64*.so"))

    with ProcessGroup(tmp_path / "logs") as group:
        for u in read_units(root / "n1", "n1"):  # the x86 node, natively, from this checkout
            env = {**os.environ, **dict(u.env)}
            group.start(f"n1-{u.name}", u.role, [*python_module("faillite"), *u.argv[1:]], env=env)
        (unit,) = read_units(node, "orin1")
        group.start(
            "orin1-worker", "worker", board.wrap(list(unit.argv)), env=board.env(dict(unit.env))
        )
        secret = (root / "_provisioning/accounts/secrets/emu.observer.ops.secret").read_text()
        check = subprocess.run(
            [*python_module("faillite"), "kit", "check", "-c", str(root / "_operator/mesh.yaml"),
             "--as", "ops", "--wait", "5", "--results-within", "600", "--clock-tolerance", "5"],
            capture_output=True, text=True, timeout=700,
            env={**os.environ, "FAILLITE_MQTT_PASSWORD": secret.strip()},
        )  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
        assert "PASS roles: worker orin1 up" in check.stdout
        assert "PASS apps: gate served by orin1" in check.stdout, check.stdout
    assert sys.platform == "linux"
