"""``faillite kit bundle`` / ``install``: one signed archive per node, installed with no network.

A node's bundle (built on a machine with network, from a checkout or an installed FailLite)
holds: a wheelhouse with exactly what that node's roles install, resolved for its platform
(manylinux, CPython of ``--python``); the node's own rendered folder (its staged models too, if
``faillite kit stage`` ran) and nothing of any other node; ``bundle.json`` (what it installs);
``install.py``; ``SHA256SUMS``, and ``SHA256SUMS.sig``, the kit's release key's Ed25519
signature of it, with the key's public half (``release.pub``). The archive is 0600: it holds
the node's secrets. Before an archive is written, pip's resolver checks, offline and for the
target platform, that the node's requirements resolve from its wheelhouse alone.

Jetson: TensorRT comes from JetPack's system packages (no PyPI wheel runs on Tegra), so an
aarch64 node with an accelerator gets a venv with system site packages, and the bundle carries
what JetPack lacks: the CUDA bindings (``tegra``) and ONNX Runtime's CPU build, which the
worker falls back to (and says so) when JetPack's TensorRT does not run. Mosquitto and
nftables are system packages too: a Mosquitto broker node installs them from its OS image
(``install.py`` names what is missing).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlparse

from faillite.signing import load_private_key
from field_kit.kit import installer
from field_kit.kit.installer import (
    MANIFEST,
    NODE_TREE,
    RELEASE_PUB,
    SIGNATURE,
    SUMS,
    BundleError,
    NodeInstall,
    fingerprint,
    install,
    verify,
)
from field_kit.kit.model import Kit, Node
from field_kit.kit.owners import ROLE_USERS, ownership, users
from field_kit.kit.render import RELEASE_KEY, Provisioning, identities, units

# pip takes platform tags as given (no expansion to older glibc): every manylinux a node with
# glibc 2.35 (Ubuntu 22.04 / JetPack 6, Debian 12 has 2.36) runs.
GLIBC: Final = ("2_17", "2_24", "2_27", "2_28", "2_31", "2_34", "2_35")


def platforms(arch: str) -> list[str]:
    return [f"manylinux2014_{arch}", *(f"manylinux_{g}_{arch}" for g in GLIBC)]


__all__ = [
    "BundleError", "NodeInstall", "bundle", "install", "node_install", "resolves", "verify"
]  # fmt: skip
ARCHIVE_MODE: Final = 0o600


def node_install(kit: Kit, node: Node) -> NodeInstall:
    extras: list[str] = []
    if "broker" in node.roles and kit.broker.kind == "amqtt":
        extras.append("broker")
    for role in ("coordinator", "sensor"):
        if role in node.roles:
            extras.append(role)
    jetson = node.jetson
    if "worker" in node.roles:
        extras.append("worker")
        if node.accelerator == "none":
            extras.append("cpu")
        elif jetson:
            extras += ["cpu", "tegra"]  # JetPack's TensorRT; ONNX Runtime's CPU as fallback
        else:
            extras += ["gpu", "jetson"] if node.accelerator == "tensorrt" else ["gpu"]
    return NodeInstall(
        node.id,
        tuple(extras),
        jetson,
        tuple(sorted(units(kit, node))),
        users(kit, node),
        ownership(kit, node, identities(kit, node)),
        "broker" in node.roles and kit.broker.kind == "mosquitto",
        node.device_class if "worker" in node.roles else "",
        ROLE_USERS["worker"] if "worker" in node.roles else "",
    )


def resolves(
    wheels: Path, wheel: str, node: NodeInstall, arch: str, python: str
) -> dict[str, Path]:
    """The distributions ``node`` installs, resolved from ``wheels`` alone for ``arch``: pip's
    own resolver, offline, for the target platform (a dry run, installs nothing). Raises
    :class:`BundleError` naming what is missing; returns ``name==version`` -> its wheel."""
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
    out = {}
    for x in doc.get("install", []):
        url = str(x["download_info"]["url"])
        out[f"{x['metadata']['name']}=={x['metadata']['version']}"] = Path(
            unquote(urlparse(url).path)
        )
    return dict(sorted(out.items()))


def faillite_wheel(source: Path | None, dest: Path) -> Path:
    """The faillite wheel the nodes install, in ``dest``: built from ``source`` (a checkout),
    or from the checkout this FailLite runs from, or else (``pip install faillite`` on the
    laptop, no checkout) packed again from the installed files, exactly what runs here."""
    dest.mkdir(parents=True, exist_ok=True)
    if source is None:
        here = Path(__file__).resolve().parents[2]
        if (here / "pyproject.toml").is_file() and (here / "field_kit").is_dir():
            source = here
    if source is None:
        return repack_installed(dest)
    if not (source / "pyproject.toml").is_file():
        raise BundleError(f"{source} is not a FailLite checkout (no pyproject.toml)")
    # With a new enough setuptools here, build with it: no index needed to fetch one.
    local = ["--no-build-isolation"] if _setuptools_at_least(77) else []
    installer.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *local, "-w", str(dest),
         str(source)],
        "building the faillite wheel",
    )  # fmt: skip
    (wheel,) = dest.glob("faillite-*.whl")
    return wheel


def _setuptools_at_least(major: int) -> bool:
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    head = version.split(".")[0]
    return head.isdigit() and int(head) >= major


OFFLINE_HINTS: Final = (
    "No matching distribution",
    "Could not find a version",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
)


def _online_hint(exc: BundleError) -> BundleError:
    if any(h in str(exc) for h in OFFLINE_HINTS):
        return BundleError(
            f"{exc}\n(bundling downloads every node's wheels: it needs PyPI, or a mirror in "
            "PIP_INDEX_URL; is this machine online?)"
        )
    return exc


_NOT_PACKED: Final = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})


def repack_installed(dest: Path, dist: importlib.metadata.Distribution | None = None) -> Path:
    """The installed faillite distribution (``dist``: another one) as a wheel again: its files
    as installed (not the console scripts pip wrote outside it, nor bytecode), a RECORD of
    their hashes."""
    dist = dist or importlib.metadata.distribution("faillite")
    files = [
        f
        for f in dist.files or ()
        if not str(f).startswith("..")
        and "__pycache__" not in f.parts
        and f.name not in _NOT_PACKED
    ]
    info = next((f.parts[0] for f in files if f.name == "METADATA"), None)
    wheel_meta = dist.read_text("WHEEL")
    if info is None or not info.endswith(".dist-info") or wheel_meta is None:
        raise BundleError(
            "this FailLite is neither a checkout nor installed from a wheel: give --source"
        )
    tag = next(
        (x.split(":", 1)[1].strip() for x in wheel_meta.splitlines() if x.startswith("Tag:")),
        "py3-none-any",
    )
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"faillite-{dist.version}-{tag}.whl"
    record = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(files, key=str):
            data = Path(str(dist.locate_file(f))).read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            zf.writestr(str(f), data)
            record.append(f"{f},sha256={digest.decode()},{len(data)}")
        record.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return out


def bundle(
    kit: Kit,
    rendered: Path,
    source: Path | None,
    out: Path,
    arch: str,
    *,
    python: str | None = None,
    debs: Path | None = None,
    progress: Callable[[str], None] = lambda _line: None,
) -> dict[str, Path]:
    """The archives of ``kit``'s ``arch`` nodes, node -> its archive, rendered in ``rendered``
    (whose ``_provisioning`` holds the release key that signs them). Each node's wheels are
    for its own Python (``kit.yaml``'s ``python``, JetPack's 3.10 on a Jetson; ``python``
    overrides it for every node). ``debs``: a folder of the OS packages the nodes may lack
    (``apt-get download`` on the target's distribution): each archive carries those of its
    architecture, and ``install.py`` installs them, offline, where the node lacks them."""
    nodes = [n for n in kit.nodes if n.arch == arch]
    carried = debs_for(debs, arch) if debs is not None else []
    if not nodes:
        raise BundleError(f"the kit has no {arch} node")
    for n in nodes:
        if not (rendered / n.id).is_dir():
            raise BundleError(f"{rendered / n.id}: not rendered (faillite kit render first)")
    release = Provisioning(rendered / "_provisioning").release
    if not (release / f"{RELEASE_KEY}.key").is_file():
        raise BundleError(f"{release}: no release key (faillite kit render makes it)")
    key = load_private_key(release / f"{RELEASE_KEY}.key")
    installs = [node_install(kit, n) for n in nodes]
    archives: dict[str, Path] = {}
    pythons = {n.id: python or n.target_python for n in nodes}
    with tempfile.TemporaryDirectory(prefix="faillite-bundle-") as tmp:
        built = Path(tmp) / "built"
        progress(f"{arch}: the faillite wheel")
        ours = faillite_wheel(source, built)
        # What a node compares to what it runs: the version, then when it was built.
        release_of = {
            "version": ours.name.split("-")[1],
            "built": dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
        }
        # Every node's wheels of one architecture and Python, downloaded once.
        wheelhouses: dict[str, Path] = {}
        for py in sorted(set(pythons.values())):
            wheels = wheelhouses[py] = Path(tmp) / f"wheels-{py}"
            wheels.mkdir()
            shutil.copyfile(ours, wheels / ours.name)
            group = [i for n, i in zip(nodes, installs, strict=True) if pythons[n.id] == py]
            extras = sorted({e for i in group for e in i.extras})
            spec = f"{ours}[{','.join(extras)}]" if extras else str(ours)
            progress(f"{arch}, Python {py}: downloading every dependency (pip download)")
            try:
                installer.run(
                    [sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels),
                     "--only-binary=:all:",
                     *(a for p in platforms(arch) for a in ("--platform", p)),
                     "--python-version", py.replace(".", ""), "--implementation", "cp", spec],
                    f"resolving every dependency for {arch}, Python {py} (pip download)",
                )  # fmt: skip
            except BundleError as exc:
                raise _online_hint(exc) from exc
        out.mkdir(parents=True, exist_ok=True)
        for n, inst in zip(nodes, installs, strict=True):
            progress(f"{n.id}: resolving offline, packing, signing")
            # Complete, or no archive: the node's requirements resolve offline for its platform.
            py = pythons[n.id]
            resolved = resolves(wheelhouses[py], ours.name, inst, arch, py)
            root = Path(tmp) / f"faillite-kit-{kit.kit}-{n.id}"
            (root / "wheelhouse").mkdir(parents=True)
            for whl in {*resolved.values(), wheelhouses[py] / ours.name}:
                shutil.copyfile(whl, root / "wheelhouse" / whl.name)
            shutil.copytree(rendered / n.id, root / NODE_TREE, symlinks=False)
            if carried:
                (root / installer.DEBS).mkdir()
                for deb in carried:
                    shutil.copyfile(deb, root / installer.DEBS / deb.name)
            (root / NODE_TREE / "README.md").unlink(missing_ok=True)
            (root / MANIFEST).write_text(
                json.dumps(
                    {
                        "kit": kit.kit,
                        "arch": arch,
                        "python": py,
                        "wheel": ours.name,
                        "release": release_of,
                        **asdict(inst),
                        "resolved": list(resolved),
                    },
                    indent=2,
                )
                + "\n"
            )
            # The node has no faillite yet: the installer runs on its system Python alone.
            shutil.copyfile(Path(installer.__file__), root / "install.py")
            shutil.copyfile(release / f"{RELEASE_KEY}.pub", root / RELEASE_PUB)
            files = sorted(p for p in root.rglob("*") if p.is_file())
            sums = "".join(f"{installer.sha256(p)}  {p.relative_to(root)}\n" for p in files)
            (root / SUMS).write_text(sums)
            (root / SIGNATURE).write_bytes(key.sign(sums.encode()))
            archive = out / f"{root.name}.tar"
            archive.unlink(missing_ok=True)
            fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, ARCHIVE_MODE)
            with os.fdopen(fd, "wb") as fh, tarfile.open(fileobj=fh, mode="w") as tar:
                tar.add(root, arcname=root.name)
            (out / f"{archive.name}.sha256").write_text(
                f"{installer.sha256(archive)}  {archive.name}\n"
            )
            archives[n.id] = archive
    return archives


DEB_ARCH: Final = {"x86_64": "amd64", "aarch64": "arm64"}


def debs_for(folder: Path, arch: str) -> list[Path]:
    """The ``.deb`` files of ``folder`` a node of ``arch`` can install (``name_version_arch.deb``,
    as ``apt-get download`` names them; ``all``: any architecture)."""
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such folder of .deb files")
    found = sorted(folder.glob("*.deb"))
    if not found:
        raise BundleError(f"{folder}: no .deb file ({DEB_HINT})")
    mine = [d for d in found if d.stem.rsplit("_", 1)[-1] in (DEB_ARCH[arch], "all")]
    if not mine:
        raise BundleError(f"{folder}: no .deb for {DEB_ARCH[arch]} ({DEB_HINT})")
    return mine


DEB_HINT: Final = (
    "on a machine of the nodes' distribution and architecture: apt-get download python3-venv "
    "mosquitto nftables and the libraries they need (apt-cache depends --recurse)"
)


def release_fingerprint(rendered: Path) -> str:
    """The fingerprint a node's first install is told to trust (``install.py --trust``)."""
    pub = Provisioning(rendered / "_provisioning").release / f"{RELEASE_KEY}.pub"
    return fingerprint(pub.read_bytes())
