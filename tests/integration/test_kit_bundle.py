"""``faillite kit bundle`` and the bundle's own ``install.py``: one signed archive per node that
installs it with no network at all, and refuses anything its kit's release key did not sign.

Bundles are built from this checkout with pip resolving every dependency of the node's roles
for manylinux (PyPI needed, as for any install of the project). The installs run inside a
network namespace this test creates (loopback only, nothing else): if any wheel were missing pip
would have to fetch it and would fail. Root and ``ip`` are needed for that part.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from faillite.catalog import ESTIMATE, estimated, load_catalog, load_overlay
from faillite.config import packaged_config
from faillite.signing import load_private_key
from field_kit.kit.bundle import (
    BundleError,
    bundle,
    install,
    release_fingerprint,
    repack_installed,
    verify,
)
from field_kit.kit.installer import (
    check_signature,
    install_debs,
    installed,
    sha256,
    uninstall,
)
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
  - {id: n3, host: 10.0.0.3, arch: x86_64, device_class: cpu, memory_mb: 1024, disk_mb: 1000,
     failure_domain: c, roles: [coordinator, worker]}
"""


@pytest.fixture(scope="module")
def kit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("kit")
    (d / "kit.yaml").write_text(KIT)
    render(load_kit(d / "kit.yaml"), d / "build")
    return d


PROBE = "faillite-probe"  # a package made here, standing in for what a node may lack


def probe_deb(into: Path, arch: str = "all") -> Path:
    """A real Debian package of nothing but a marker file (dpkg-deb builds it)."""
    tree = into / f"{PROBE}-{arch}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {PROBE}\nVersion: 1.0\nArchitecture: {arch}\nMaintainer: tests <t@localhost>\n"
        "Description: stands in for an OS package a kit node lacks\n"
    )
    (tree / "usr/share" / PROBE).mkdir(parents=True)
    (tree / "usr/share" / PROBE / "marker").write_text("carried\n")
    deb = into / f"{PROBE}_1.0_{arch}.deb"
    subprocess.run(["dpkg-deb", "--build", str(tree), str(deb)], check=True, capture_output=True)
    return deb


@pytest.fixture(scope="module")
def built(kit_dir: Path) -> tuple[dict[str, Path], str]:
    kit = load_kit(kit_dir / "kit.yaml")
    debs = None
    if shutil.which("dpkg-deb"):
        debs = kit_dir / "debs"
        debs.mkdir()
        probe_deb(debs)
        (debs / "libother_1.0_arm64.deb").write_bytes(b"not for these nodes")
    archives = bundle(kit, kit_dir / "build", REPO, kit_dir / "dist", "x86_64", debs=debs)
    return archives, release_fingerprint(kit_dir / "build")


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


def _names(archive: Path) -> set[str]:
    with tarfile.open(archive) as tar:
        return set(tar.getnames())


def test_each_node_gets_its_own_signed_archive_and_nothing_of_another(
    built: tuple[dict[str, Path], str],
) -> None:
    archives, _ = built
    assert sorted(archives) == ["n1", "n3"]  # n2 is aarch64: its own run
    for node, archive in archives.items():
        assert archive.name == f"faillite-kit-tiny-{node}.tar"
        assert stat.S_IMODE(archive.stat().st_mode) == 0o600  # it holds the node's secrets
        digest = archive.with_name(archive.name + ".sha256").read_text().split()[0]
        assert len(digest) == 64
        root = f"faillite-kit-tiny-{node}"
        names = _names(archive)
        for name in ("SHA256SUMS", "SHA256SUMS.sig", "release.pub", "bundle.json", "install.py"):
            assert f"{root}/{name}" in names, name
        assert f"{root}/node/etc/faillite/mesh.yaml" in names
        other = "n3" if node == "n1" else "n1"
        assert not any(f"/{other}/" in n or f".{other}.secret" in n for n in names), other
    n1 = {Path(n).name for n in _names(archives["n1"]) if n.endswith(".whl")}
    n3 = {Path(n).name for n in _names(archives["n3"]) if n.endswith(".whl")}
    assert any(w.startswith("amqtt-") for w in n1) and any(w.startswith("faillite-") for w in n1)
    assert not any(w.startswith(("onnxruntime", "scipy", "cvxpy")) for w in n1)  # a broker
    assert any(w.startswith("onnxruntime-") for w in n3) and not any(
        w.startswith("amqtt-") for w in n3
    )
    secrets = [n for n in _names(archives["n3"]) if n.endswith(".secret")]
    assert secrets and all(".n3." in n for n in secrets), secrets


def _unpack(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    (folder,) = into.iterdir()
    return folder


def _resign(folder: Path, key: Ed25519PrivateKey) -> None:
    """What someone with another key (not the kit's) can do: sign the bundle as it is."""
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (folder / "release.pub").write_bytes(pem)
    (folder / "SHA256SUMS.sig").write_bytes(key.sign((folder / "SHA256SUMS").read_bytes()))


def test_a_node_installs_offline_from_its_archive_and_refuses_what_the_kit_did_not_sign(
    built: tuple[dict[str, Path], str], offline: str, tmp_path: Path
) -> None:
    archives, fpr = built
    archive = tmp_path / archives["n1"].name
    shutil.copyfile(archives["n1"], archive)
    shutil.copyfile(archives["n1"].with_name(archive.name + ".sha256"), f"{archive}.sha256")
    # The operator takes the installer alone out of the archive, and runs it on the archive.
    with tarfile.open(archive) as tar:
        tar.extract("faillite-kit-tiny-n1/install.py", tmp_path / "x", filter="data")
    installer = tmp_path / "x/faillite-kit-tiny-n1/install.py"
    root = tmp_path / "root"

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", offline, sys.executable, str(installer),
             "--root", str(root), "--no-systemd", *argv],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    first = run("--bundle", str(archive))
    assert first.returncode == 2 and "first install" in first.stderr, first.stderr
    wrong = run("--bundle", str(archive), "--trust", "sha256:" + "0" * 64)
    assert wrong.returncode == 2 and "not with the key given to --trust" in wrong.stderr
    other = run("--bundle", str(archive), "--trust", fpr, "--node", "n3")
    assert other.returncode == 2 and "node 'n1'" in other.stderr
    assert not root.exists()  # nothing touched by any refusal
    out = run("--bundle", str(archive), "--trust", fpr)
    assert out.returncode == 0, out.stderr
    assert not archive.exists()  # its secrets are on the node now, not in a stray archive
    faillite = root / "opt/faillite/venv/bin/faillite"
    usage = subprocess.run([str(faillite), "broker", "--help"], capture_output=True, text=True)
    assert "usage: faillite broker" in usage.stdout
    assert (root / "etc/faillite/mesh.yaml").is_file()
    assert (root / "etc/faillite/release.pub").is_file()
    assert (root / "etc/systemd/system/faillite-broker.service").is_file()
    assert not (root / "README.md").exists()
    # The next bundle is checked against the key the node has now: no --trust needed.
    folder = _unpack(archives["n1"], tmp_path / "again")
    assert install(folder, "n1", root=root, systemd=False).node == "n1"
    # One byte changed: the sums do not match, and sums made again do not match the signature.
    target = folder / "node/etc/faillite/mesh.yaml"
    target.write_text(target.read_text().replace("8883", "8884"))
    with pytest.raises(BundleError, match="checksum mismatch"):
        install(folder, "n1", root=root, systemd=False)
    sums = folder / "SHA256SUMS"
    lines = [
        line if not line.endswith("node/etc/faillite/mesh.yaml") else f"{'0' * 64}  {line[66:]}"
        for line in sums.read_text().splitlines()
    ]
    sums.write_text("\n".join(lines) + "\n")
    with pytest.raises(BundleError, match="signature does not verify"):
        install(folder, "n1", root=root, systemd=False)
    # Signed by someone else's key: refused on this node, unless its owner says to trust it.
    _resign(folder, Ed25519PrivateKey.generate())
    with pytest.raises(BundleError, match="not with this node's release key"):
        install(folder, "n1", root=root, systemd=False)


@pytest.mark.parametrize("openssl", [True, False], ids=["openssl", "cryptography"])
def test_the_signature_is_checked_without_faillite(tmp_path: Path, openssl: bool) -> None:
    """A node's system Python may lack cryptography: OpenSSL's command checks the same."""
    if openssl and shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    key = Ed25519PrivateKey.generate()
    pub = tmp_path / "release.pub"
    pub.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    data, sig = tmp_path / "SHA256SUMS", tmp_path / "SHA256SUMS.sig"
    data.write_bytes(b"abc  file\n")
    sig.write_bytes(key.sign(data.read_bytes()))
    check_signature(pub, data, sig, openssl=openssl)
    data.write_bytes(b"abd  file\n")
    with pytest.raises(BundleError, match="signature does not verify"):
        check_signature(pub, data, sig, openssl=openssl)


def test_the_aarch64_bundles_resolve_every_requirement_for_their_platform(tmp_path: Path) -> None:
    """The example kit (five Jetson Orin NX), one board made a CPU-only aarch64 box and the
    embedded broker chosen, so every extra is in play: built here, they cannot run here, but
    every node's requirements must resolve from its wheelhouse alone for manylinux aarch64
    (the bundle checks that before it writes each archive; here what it found is checked)."""
    doc = yaml.safe_load(EXAMPLE)
    doc["broker"]["kind"] = "amqtt"
    doc["nodes"][4]["accelerator"] = "none"
    doc["nodes"][4].pop("jetpack", None)  # a CPU-only aarch64 box: no JetPack
    kit = Kit.model_validate(doc)
    render(kit, tmp_path / "build")
    archives = bundle(kit, tmp_path / "build", REPO, tmp_path / "dist", "aarch64")
    nodes, resolved, resolved_wheels = {}, {}, {}
    for node, archive in archives.items():
        folder = _unpack(archive, tmp_path / "u" / node)
        verify(folder)
        meta = json.loads((folder / "bundle.json").read_text())
        wheels = [p.name for p in (folder / "wheelhouse").iterdir()]
        assert wheels and not [w for w in wheels if "x86_64" in w], wheels
        assert all(w.endswith(("-any.whl", "aarch64.whl")) for w in wheels), wheels
        nodes[node] = meta
        resolved_wheels[node] = wheels
        resolved[node] = {r.split("==")[0].lower() for r in meta["resolved"]}
    # Jetson boards: JetPack's TensorRT from system site packages, for JetPack 6's Python
    # 3.10; what JetPack lacks is carried: the CUDA bindings, and ONNX Runtime's CPU build,
    # the fallback.
    for jetson in ("orin1", "orin2", "orin3", "orin4"):
        assert nodes[jetson]["system_site_packages"] is True and nodes[jetson]["python"] == "3.10"
        assert {"onnxruntime", "cuda-python", "opencv-python-headless"} <= resolved[jetson]
        assert "tensorrt" not in resolved[jetson]
        wheels = [w for w in resolved_wheels[jetson] if "-cp3" in w]
        assert wheels and all("-cp310-" in w or "-abi3-" in w for w in wheels), wheels
    assert nodes["orin5"]["system_site_packages"] is False and "cpu" in nodes["orin5"]["extras"]
    assert nodes["orin5"]["python"] == "3.11"
    assert {"onnxruntime", "numpy", "opencv-python-headless"} <= resolved["orin5"]
    assert {"amqtt", "cvxpy", "highspy", "scipy"} <= resolved["orin1"]  # broker, coordinator
    assert all("faillite" in r for r in resolved.values())


def _as_release(folder: Path, kit_dir: Path, built: str) -> None:
    """The same bundle as a release built at ``built``, signed with the kit's release key."""
    meta = json.loads((folder / "bundle.json").read_text())
    meta["release"]["built"] = built
    (folder / "bundle.json").write_text(json.dumps(meta))
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.name not in ("SHA256SUMS", "SHA256SUMS.sig")
    )
    sums = "".join(f"{sha256(p)}  {p.relative_to(folder)}\n" for p in files)
    (folder / "SHA256SUMS").write_text(sums)
    key = load_private_key(kit_dir / "build/_provisioning/release/release.key")
    (folder / "SHA256SUMS.sig").write_bytes(key.sign(sums.encode()))


def test_upgrades_go_forward_get_a_venv_each_and_uninstall_leaves_nothing(
    built: tuple[dict[str, Path], str], kit_dir: Path, tmp_path: Path
) -> None:
    archives, fpr = built
    root = tmp_path / "root"
    first = _unpack(archives["n1"], tmp_path / "first")
    install(first, "n1", root=root, systemd=False, trusted=fpr)
    venv = root / "opt/faillite/venv"
    assert venv.is_symlink()
    v1 = venv.resolve()
    assert installed(root)["release"] == json.loads((first / "bundle.json").read_text())["release"]
    newer = _unpack(archives["n1"], tmp_path / "newer")
    _as_release(newer, kit_dir, "29990101T000000Z")
    install(newer, "n1", root=root, systemd=False)  # the installed key signs it: no --trust
    v2 = venv.resolve()
    assert v2 != v1 and (v2 / "bin/faillite").is_file()
    assert installed(root)["release"]["built"] == "29990101T000000Z"
    older = _unpack(archives["n1"], tmp_path / "older")
    _as_release(older, kit_dir, "20000101T000000Z")
    with pytest.raises(BundleError, match="older than the installed"):
        install(older, "n1", root=root, systemd=False)
    assert venv.resolve() == v2  # untouched
    install(older, "n1", root=root, systemd=False, force=True)
    assert venv.resolve() not in (v1, v2) and v2.is_dir()  # the one before is kept
    assert not v1.exists()  # older ones go
    # A newer release that cannot install (a wheel missing, signed all the same): the node
    # stays on the release it runs, its files as they were.
    here = venv.resolve()
    mesh = (root / "etc/faillite/mesh.yaml").read_text()
    broken = _unpack(archives["n1"], tmp_path / "broken")
    for whl in (broken / "wheelhouse").glob("amqtt-*.whl"):
        whl.unlink()
    _as_release(broken, kit_dir, "29990202T000000Z")
    with pytest.raises(BundleError, match="installing from the wheelhouse"):
        install(broken, "n1", root=root, systemd=False)
    assert venv.resolve() == here and (root / "etc/faillite/mesh.yaml").read_text() == mesh
    assert installed(root)["release"]["built"] == "20000101T000000Z"
    gone = uninstall(root, systemd=False)
    assert not (root / "opt/faillite").exists() and not (root / "etc/faillite").exists()
    assert not (root / "etc/systemd/system/faillite-broker.service").exists()
    assert gone


def test_without_a_checkout_the_installed_faillite_is_packed_again(tmp_path: Path) -> None:
    """The operator's laptop has `pip install faillite`, no checkout: the nodes get exactly
    what runs there, packed again into a wheel that pip installs (it checks every hash)."""
    built = tmp_path / "built"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(built), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (original,) = built.glob("faillite-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
         str(original)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (dist,) = [
        d for d in importlib.metadata.distributions(path=[str(site)]) if d.name == "faillite"
    ]
    again = repack_installed(tmp_path / "again", dist)
    assert again.name == original.name
    with zipfile.ZipFile(original) as a, zipfile.ZipFile(again) as b:
        ours = {n for n in a.namelist() if not n.endswith("/RECORD")}
        theirs = {n for n in b.namelist() if not n.endswith("/RECORD")}
        assert ours == theirs
        assert all(a.read(n) == b.read(n) for n in ours)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
         str(tmp_path / "site2"), str(again)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "site2/field_kit/kit/installer.py").is_file()


def test_a_worker_node_measures_its_class_at_install_where_it_had_an_estimate(
    built: tuple[dict[str, Path], str], kit_dir: Path, tmp_path: Path, models_dir: Path
) -> None:
    """What `faillite profile` measures at install replaces the estimate the node was staged
    with; a broker-only node measures nothing."""
    archives, fpr = built
    folder = _unpack(archives["n3"], tmp_path / "n3")
    meta = json.loads((folder / "bundle.json").read_text())
    assert (meta["measure"], meta["measure_user"]) == ("cpu", "faillite-worker")
    assert (
        json.loads((_unpack(archives["n1"], tmp_path / "n1") / "bundle.json").read_text())[
            "measure"
        ]
        == ""
    )
    root = tmp_path / "root"
    # As the rehearsal renders it: the node's paths point under its root.
    cfg = folder / "node/etc/faillite/mesh.yaml"
    doc = yaml.safe_load(cfg.read_text())
    staged = root / "var/lib/faillite/models"
    doc["models_dir"] = str(staged)
    cfg.write_text(yaml.safe_dump(doc))
    models = folder / "node/var/lib/faillite/models"
    (models / "profiles").mkdir(parents=True, exist_ok=True)
    catalog = load_catalog(packaged_config("catalog.yaml"))
    lite0 = catalog.variant("efficientnet_lite0").file
    shutil.copyfile(models_dir / lite0, models / lite0)
    guess = estimated(catalog, "cpu", "cpu", latency_scale=5.0)
    (models / "profiles/cpu.yaml").write_text(
        yaml.safe_dump(guess.model_dump(mode="json", exclude_defaults=True))
    )
    _as_release(folder, kit_dir, meta["release"]["built"])
    install(folder, "n3", root=root, systemd=False, trusted=fpr)
    overlay = load_overlay(staged / "profiles/cpu.yaml")
    assert not overlay.source.startswith(ESTIMATE)
    lite0_now = overlay.profiles["efficientnet_lite0"]
    assert not lite0_now.source.startswith(ESTIMATE) and lite0_now.latency_ms > 0
    # Its file was not staged here: its row stays the estimate it was.
    assert overlay.profiles["efficientnet_lite2"].source.startswith(ESTIMATE)


def test_the_os_packages_carried_are_signed_and_install_offline(
    built: tuple[dict[str, Path], str], tmp_path: Path
) -> None:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("needs dpkg-deb (Debian) to build the package carried")
    archives, _fpr = built
    names = _names(archives["n3"])
    assert f"faillite-kit-tiny-n3/debs/{PROBE}_1.0_all.deb" in names
    assert not any(n.endswith("_arm64.deb") for n in names)  # another architecture's
    folder = _unpack(archives["n3"], tmp_path / "n3")
    assert f"debs/{PROBE}_1.0_all.deb" in (folder / "SHA256SUMS").read_text()  # signed
    if os.geteuid() != 0:
        pytest.skip("installing a package needs root")
    assert subprocess.run(["dpkg", "-s", PROBE], capture_output=True).returncode != 0
    try:
        install_debs(sorted((folder / "debs").glob("*.deb")), ["faillite-probe"])
        assert Path(f"/usr/share/{PROBE}/marker").read_text() == "carried\n"
    finally:
        subprocess.run(["dpkg", "--purge", PROBE], capture_output=True)
    assert not Path(f"/usr/share/{PROBE}").exists()
