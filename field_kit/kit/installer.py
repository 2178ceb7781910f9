"""Install one node of a FailLite kit from its bundle, with no network: the bundle's own
``install.py``, run by the node's system Python before anything of FailLite is on it::

    sha256sum -c faillite-kit-KIT-ARCH.tar.sha256
    tar xf faillite-kit-KIT-ARCH.tar
    sudo python3 faillite-kit-KIT-ARCH/install.py --node orin3

It verifies every file against ``SHA256SUMS`` before it installs anything, makes the venv
(``/opt/faillite/venv``; with system site packages on Jetson, for JetPack's TensorRT and CUDA
ONNX Runtime), installs from the bundle's wheelhouse only (``pip --no-index``, this machine's
pip configuration ignored), puts the node's files in place and enables its units.
``faillite kit install`` runs the same code. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

SUMS: Final = "SHA256SUMS"
MANIFEST: Final = "bundle.json"
VENV: Final = "opt/faillite/venv"  # under the install root


class BundleError(RuntimeError):
    """A bundle that cannot be built, verified or installed; the message says which file."""


@dataclass(frozen=True, slots=True)
class NodeInstall:
    node: str
    extras: tuple[str, ...]
    system_site_packages: bool  # Jetson: TensorRT and CUDA ONNX Runtime from JetPack
    units: tuple[str, ...]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(cmd: list[str], what: str, *, env: dict[str, str] | None = None) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        tail = "\n".join((out.stderr or out.stdout).strip().splitlines()[-12:])
        raise BundleError(f"{what} failed:\n{tail}")


def verify(folder: Path) -> None:
    """Every file of an unpacked bundle against its ``SHA256SUMS``, and nothing more."""
    sums = folder / SUMS
    if not sums.is_file():
        raise BundleError(f"{folder}: no {SUMS}; not a FailLite bundle")
    listed: dict[str, str] = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {SUMS}
    if present != set(listed):
        extra = sorted(present - set(listed))[:3]
        missing = sorted(set(listed) - present)[:3]
        raise BundleError(f"bundle contents differ from {SUMS}: extra {extra}, missing {missing}")
    for name, digest in listed.items():
        if sha256(folder / name) != digest:
            raise BundleError(f"{name}: checksum mismatch; the bundle is corrupt or was altered")


def install(
    archive: Path, node: str, *, root: Path = Path("/"), systemd: bool = True
) -> NodeInstall:
    """Install ``node`` from ``archive`` (the .tar, or its unpacked folder) under ``root``, with
    no network; returns what it did."""
    if archive.is_dir():
        return install_folder(archive, node, root=root, systemd=systemd)
    side = archive.with_name(archive.name + ".sha256")
    if side.is_file() and side.read_text().split()[0] != sha256(archive):
        raise BundleError(f"{archive}: does not match {side.name}")
    with tempfile.TemporaryDirectory(prefix="faillite-install-") as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        (folder,) = Path(tmp).iterdir()
        return install_folder(folder, node, root=root, systemd=systemd)


def install_folder(
    folder: Path, node: str, *, root: Path = Path("/"), systemd: bool = True
) -> NodeInstall:
    verify(folder)
    meta = json.loads((folder / MANIFEST).read_text())
    by_node = {n["node"]: n for n in meta["nodes"]}
    if node not in by_node:
        raise BundleError(f"node {node!r} is not in this bundle ({', '.join(by_node)})")
    spec = NodeInstall(
        node,
        tuple(by_node[node]["extras"]),
        bool(by_node[node]["system_site_packages"]),
        tuple(by_node[node]["units"]),
    )
    venv = root / VENV
    cmd = [sys.executable, "-m", "venv", str(venv)]
    if spec.system_site_packages:
        cmd.append("--system-site-packages")
    run(cmd, "creating the venv")
    wheel = folder / "wheelhouse" / meta["wheel"]
    target = f"{wheel}[{','.join(spec.extras)}]" if spec.extras else str(wheel)
    run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--find-links",
         str(folder / "wheelhouse"), target],
        "installing from the wheelhouse (no network)",
        # No pip configuration of this machine: the bundle alone must be enough.
        env={**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INPUT": "1"},
    )  # fmt: skip
    for tree in sorted((folder / "nodes" / node).iterdir()):
        if tree.is_dir():  # etc/, var/: the node's file system; its README stays out
            shutil.copytree(tree, root / tree.name, dirs_exist_ok=True)
    if systemd and root == Path("/"):
        run(["systemctl", "daemon-reload"], "systemctl daemon-reload")
        # --no-block: a role is ready only once the kit's broker is up, maybe on a node
        # installed later; systemd starts the units and keeps them trying.
        run(["systemctl", "enable", "--now", "--no-block", *spec.units], "enabling the units")
    return spec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--node", required=True, help="this node's id")
    p.add_argument(
        "--bundle", help="the bundle, unpacked or its .tar (default: the folder of this script)"
    )
    p.add_argument("--root", default="/", help="install under this root (default /)")
    p.add_argument("--no-systemd", action="store_true", help="do not enable the units")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    where = Path(args.bundle) if args.bundle else Path(__file__).resolve().parent
    try:
        spec = install(where, args.node, root=Path(args.root), systemd=not args.no_systemd)
    except (BundleError, OSError) as exc:
        print(f"install: {exc}", file=sys.stderr)
        return 2
    print(
        f"installed node {spec.node} ({', '.join(spec.extras) or 'base'}) in "
        f"{time.monotonic() - t0:.0f} s; units: {', '.join(spec.units)}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
