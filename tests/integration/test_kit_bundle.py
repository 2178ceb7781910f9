"""``faillite kit bundle`` and the bundle's own ``install.py``: an archive per architecture
that installs a node with no network at all.

The bundle is built from this checkout with pip resolving every dependency of the node's roles
for manylinux x86_64 (PyPI needed, as for any install of the project). The install runs inside
a network namespace this test creates (loopback only, nothing else): if any wheel were missing
pip would have to fetch it and would fail. Root and ``ip`` are needed for that part.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from field_kit.kit.bundle import BundleError, bundle, install, verify
from field_kit.kit.model import EXAMPLE, Kit, load_kit
from field_kit.kit.render import render

REPO = Path(__file__).resolve().parents[2]
KIT = """\
kit: tiny
broker: {node: n1, kind: amqtt, port: 8883}
nodes:
  - {id: n1, host: 127.0.0.1, arch: x86_64, device_class: cpu, memory_mb: 1024, disk_mb: 1000,
     failure_domain: a, roles: [broker]}
  - {id: n2, host: 10.0.0.2, arch: aarch64, device_class: jetson-orin-nx, accelerator: tensorrt,
     memory_mb: 8192, disk_mb: 1000, failure_domain: b, roles: [coordinator, worker]}
"""


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("kit")
    (d / "kit.yaml").write_text(KIT)
    kit = load_kit(d / "kit.yaml")
    render(kit, d / "build")
    return bundle(kit, d / "build", REPO, d / "build", "x86_64")


@pytest.fixture
def offline() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and ip (a network namespace without network)")
    name = f"floff{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_the_bundle_holds_what_its_nodes_install(archive: Path) -> None:
    assert archive.name == "faillite-kit-tiny-x86_64.tar"
    digest = archive.with_name(archive.name + ".sha256").read_text().split()[0]
    assert len(digest) == 64
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    root = "faillite-kit-tiny-x86_64"
    for name in ("SHA256SUMS", "bundle.json", "install.py", "nodes/n1/etc/faillite/mesh.yaml"):
        assert f"{root}/{name}" in names, name
    assert not any("/nodes/n2/" in n for n in names)  # the aarch64 node has its own bundle
    wheels = {Path(n).name for n in names if n.endswith(".whl")}
    assert any(w.startswith("amqtt-") for w in wheels) and any(
        w.startswith("faillite-") for w in wheels
    )
    assert not any(w.startswith(("onnxruntime", "scipy")) for w in wheels)  # n1 is a broker


def test_a_node_installs_offline_and_a_corrupt_bundle_installs_nothing(
    archive: Path, offline: str, tmp_path: Path
) -> None:
    folder = tmp_path / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    (bundle_dir,) = folder.iterdir()
    verify(bundle_dir)
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    resolved = meta["nodes"][0].pop("resolved")
    assert any(r.startswith("amqtt==") for r in resolved), resolved
    assert not any(r.startswith("onnxruntime==") for r in resolved)
    assert meta["nodes"][0] == {
        "node": "n1",
        "extras": ["broker"],
        "system_site_packages": False,
        "units": ["faillite-broker.service"],
    }
    root = tmp_path / "root"
    out = subprocess.run(
        ["ip", "netns", "exec", offline, sys.executable, str(bundle_dir / "install.py"),
         "--node", "n1", "--root", str(root), "--no-systemd"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    faillite = root / "opt/faillite/venv/bin/faillite"
    assert (
        "usage: faillite broker"
        in subprocess.run(
            [str(faillite), "broker", "--help"], capture_output=True, text=True, timeout=60
        ).stdout
    )
    assert (root / "etc/faillite/mesh.yaml").is_file()
    assert (root / "etc/systemd/system/faillite-broker.service").is_file()
    assert not (root / "README.md").exists()
    # One byte changed anywhere: refused before anything is installed.
    target = bundle_dir / "nodes/n1/etc/faillite/mesh.yaml"
    target.write_text(target.read_text().replace("8883", "8884"))
    with pytest.raises(BundleError, match="checksum mismatch"):
        install(bundle_dir, "n1", root=tmp_path / "other", systemd=False)
    assert not (tmp_path / "other").exists()


def test_the_aarch64_bundle_resolves_every_requirement_for_its_platform(tmp_path: Path) -> None:
    """The example kit (five Jetson Orin NX), one board made a CPU-only aarch64 box and the
    embedded broker chosen, so every extra is in play: built here, it cannot run here, but
    every node's requirements must resolve from its wheelhouse alone for manylinux aarch64
    (the bundle checks that before it writes the archive; here what it found is checked)."""
    doc = yaml.safe_load(EXAMPLE)
    doc["broker"]["kind"] = "amqtt"
    doc["nodes"][4]["accelerator"] = "none"
    kit = Kit.model_validate(doc)
    render(kit, tmp_path / "build")
    archive = bundle(kit, tmp_path / "build", REPO, tmp_path / "dist", "aarch64")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        (manifest,) = [n for n in names if n.endswith("/bundle.json")]
        meta = json.loads(tar.extractfile(manifest).read())  # type: ignore[union-attr]
    wheels = [Path(n).name for n in names if n.endswith(".whl")]
    assert wheels and not [w for w in wheels if "x86_64" in w], wheels
    assert all(w.endswith(("-any.whl", "aarch64.whl")) for w in wheels), wheels
    nodes = {n["node"]: n for n in meta["nodes"]}
    resolved = {k: {r.split("==")[0].lower() for r in v["resolved"]} for k, v in nodes.items()}
    # Jetson boards: JetPack's ONNX Runtime and TensorRT, from system site packages.
    for jetson in ("orin1", "orin2", "orin3", "orin4"):
        assert nodes[jetson]["system_site_packages"] is True
        assert (
            "onnxruntime" not in resolved[jetson] and "opencv-python-headless" in resolved[jetson]
        )
    assert nodes["orin5"]["system_site_packages"] is False and "cpu" in nodes["orin5"]["extras"]
    assert {"onnxruntime", "numpy", "opencv-python-headless"} <= resolved["orin5"]
    assert {"amqtt", "cvxpy", "highspy", "scipy"} <= resolved["orin1"]  # broker, coordinator
    assert all("faillite" in r for r in resolved.values())
