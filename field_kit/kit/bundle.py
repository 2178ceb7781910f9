"""``faillite kit bundle`` / ``install``: one archive per architecture, installed with no network.

A bundle (built on a machine with network, from a checkout) holds, for every node of one
architecture: a wheelhouse that resolves every Python dependency of that node's roles for that
platform (manylinux, CPython of ``--python``), the node's rendered folder (and its staged models,
if ``faillite kit stage`` ran), ``bundle.json`` (what each node installs) and ``SHA256SUMS``.
``install`` verifies every file against the sums before it installs anything, then makes the
venv (``/opt/faillite/venv``), installs from the wheelhouse only (``pip --no-index``), puts the
node's files in place and enables its units. Before the archive is written, pip's resolver
checks, offline and for the target platform, that each node's requirements resolve from the
wheelhouse alone (``bundle.json`` lists what each node will install).

Jetson: TensorRT and the CUDA build of ONNX Runtime come from JetPack's system packages, not
from PyPI, so an aarch64 node with an accelerator gets a venv with system site packages and no
runtime extra (``bundle.json`` says so). Mosquitto and nftables are system packages too: a
Mosquitto broker node installs them from its OS image.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Final

from field_kit.kit import installer
from field_kit.kit.installer import MANIFEST, SUMS, BundleError, NodeInstall, install, verify
from field_kit.kit.model import Kit, Node
from field_kit.kit.render import units

# pip takes platform tags as given (no expansion to older glibc): every manylinux a node with
# glibc 2.35 (Ubuntu 22.04 / JetPack 6, Debian 12 has 2.36) runs.
GLIBC: Final = ("2_17", "2_24", "2_27", "2_28", "2_31", "2_34", "2_35")


def platforms(arch: str) -> list[str]:
    return [f"manylinux2014_{arch}", *(f"manylinux_{g}_{arch}" for g in GLIBC)]


__all__ = [
    "BundleError", "NodeInstall", "bundle", "install", "node_install", "resolves", "verify"
]  # fmt: skip


def node_install(kit: Kit, node: Node) -> NodeInstall:
    extras: list[str] = []
    if "broker" in node.roles and kit.broker.kind == "amqtt":
        extras.append("broker")
    for role in ("coordinator", "sensor"):
        if role in node.roles:
            extras.append(role)
    jetson = node.arch == "aarch64" and node.accelerator != "none"
    if "worker" in node.roles:
        extras.append("worker")
        if node.accelerator == "none":
            extras.append("cpu")
        elif not jetson:
            extras += ["gpu", "jetson"] if node.accelerator == "tensorrt" else ["gpu"]
    return NodeInstall(node.id, tuple(extras), jetson, tuple(sorted(units(kit, node))))


def resolves(wheels: Path, wheel: str, node: NodeInstall, arch: str, python: str) -> list[str]:
    """The distributions ``node`` installs, resolved from ``wheels`` alone for ``arch``: pip's
    own resolver, offline, for the target platform (a dry run, installs nothing). Raises
    :class:`BundleError` naming what is missing; returns ``name==version`` of each."""
    target = f"{wheels / wheel}[{','.join(node.extras)}]" if node.extras else str(wheels / wheel)
    with tempfile.TemporaryDirectory(prefix="faillite-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        installer.run(
            [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
             "--no-index", "--find-links", str(wheels), "--only-binary=:all:",
             *(a for p in platforms(arch) for a in ("--platform", p)),
             "--python-version", python.replace(".", ""), "--implementation", "cp",
             "--target", str(Path(tmp) / "t"), "--report", str(report), target],
            f"node {node.node}: resolving its requirements for {arch} from the wheelhouse alone",
            env={**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INPUT": "1"},
        )  # fmt: skip
        doc = json.loads(report.read_text())
    return sorted(
        f"{x['metadata']['name']}=={x['metadata']['version']}" for x in doc.get("install", [])
    )


def bundle(
    kit: Kit, rendered: Path, source: Path, out: Path, arch: str, *, python: str = "3.11"
) -> Path:
    """The archive of ``kit``'s ``arch`` nodes, rendered in ``rendered``; returns its path."""
    nodes = [n for n in kit.nodes if n.arch == arch]
    if not nodes:
        raise BundleError(f"the kit has no {arch} node")
    if not (source / "pyproject.toml").is_file():
        raise BundleError(f"{source} is not a FailLite checkout (no pyproject.toml)")
    installs = [node_install(kit, n) for n in nodes]
    with tempfile.TemporaryDirectory(prefix="faillite-bundle-") as tmp:
        root = Path(tmp) / f"faillite-kit-{kit.kit}-{arch}"
        wheels = root / "wheelhouse"
        wheels.mkdir(parents=True)
        installer.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
             str(source)],
            "building the faillite wheel",
        )  # fmt: skip
        (ours,) = wheels.glob("faillite-*.whl")
        extras = sorted({e for i in installs for e in i.extras})
        spec = f"{ours}[{','.join(extras)}]" if extras else str(ours)
        installer.run(
            [sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels),
             "--only-binary=:all:", *(a for p in platforms(arch) for a in ("--platform", p)),
             "--python-version", python.replace(".", ""), "--implementation", "cp", spec],
            f"resolving every dependency for {arch} (pip download)",
        )  # fmt: skip
        # Complete, or no archive: every node's requirements resolve offline for its platform.
        resolved = {i.node: resolves(wheels, ours.name, i, arch, python) for i in installs}
        for n in nodes:
            src = rendered / n.id
            if not src.is_dir():
                raise BundleError(f"{src}: not rendered (faillite kit render first)")
            shutil.copytree(src, root / "nodes" / n.id, symlinks=False)
        (root / MANIFEST).write_text(
            json.dumps(
                {
                    "kit": kit.kit,
                    "arch": arch,
                    "python": python,
                    "wheel": ours.name,
                    "nodes": [{**asdict(i), "resolved": resolved[i.node]} for i in installs],
                },
                indent=2,
            )
            + "\n"
        )
        # The node has no faillite yet: the installer runs on its system Python alone.
        shutil.copyfile(Path(installer.__file__), root / "install.py")
        files = sorted(p for p in root.rglob("*") if p.is_file())
        (root / SUMS).write_text(
            "".join(f"{installer.sha256(p)}  {p.relative_to(root)}\n" for p in files)
        )
        out.mkdir(parents=True, exist_ok=True)
        archive = out / f"{root.name}.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname=root.name)
    (out / f"{archive.name}.sha256").write_text(f"{installer.sha256(archive)}  {archive.name}\n")
    return archive
