"""Install one node of a FailLite kit from its own bundle, with no network: the bundle's
``install.py``, run by the node's system Python before anything of FailLite is on it::

    sha256sum -c faillite-kit-KIT-NODE.tar.sha256     # against what `kit bundle` printed
    tar xf faillite-kit-KIT-NODE.tar faillite-kit-KIT-NODE/install.py
    sudo python3 faillite-kit-KIT-NODE/install.py --bundle faillite-kit-KIT-NODE.tar \
        --trust sha256:...                              # the kit's release key

Before it touches anything it checks the bundle's signature (Ed25519 over ``SHA256SUMS``, by
the kit's release key: the one ``--trust`` names, or the one a previous install left in
``/etc/faillite/release.pub``) and every file against ``SHA256SUMS``. Then it makes the venv
(``/opt/faillite/venv``; with system site packages on Jetson, for JetPack's TensorRT), installs
from the bundle's wheelhouse only (``pip --no-index``, this machine's pip configuration
ignored), puts the node's files in place, enables its units, and deletes the archive (it holds
the node's secrets; ``--keep-bundle`` keeps it).

The first install runs this file from the archive: trust in it comes from the archive's sha256,
checked by the operator. Later bundles are installed by the code already installed
(``faillite kit install NEW.tar``), which refuses one the installed release key did not sign.
``faillite kit install`` runs the same code. Standard library only (the signature is checked
with the system Python's cryptography if it has it, else with ``openssl``).
"""

from __future__ import annotations

import argparse
import base64
import grp
import hashlib
import importlib.util
import json
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

SUMS: Final = "SHA256SUMS"
SIGNATURE: Final = "SHA256SUMS.sig"  # Ed25519, by the kit's release key, over SHA256SUMS
RELEASE_PUB: Final = "release.pub"  # the release key's public half, in the bundle
INSTALLED_KEY: Final = "etc/faillite/release.pub"  # under the install root, once installed
MANIFEST: Final = "bundle.json"
NODE_TREE: Final = "node"  # the node's file system (etc/, var/) in its bundle
VENV: Final = "opt/faillite/venv"  # under the install root: a link to the current release's
VENVS: Final = "opt/faillite/venvs"  # one venv per release installed (the current, the last)
RECORD: Final = "opt/faillite/release.json"  # what is installed: release, node, units
DEBS: Final = "debs"  # in a bundle: OS packages carried for nodes that lack them
CONFIG: Final = "etc/faillite/mesh.yaml"  # the node's config, as render writes it
# DER of an Ed25519 SubjectPublicKeyInfo before its 32 raw bytes (RFC 8410).
_ED25519_SPKI: Final = bytes.fromhex("302a300506032b6570032100")


class BundleError(RuntimeError):
    """A bundle that cannot be built, verified or installed; the message says which file."""


@dataclass(frozen=True, slots=True)
class NodeInstall:
    node: str
    extras: tuple[str, ...]
    system_site_packages: bool  # Jetson: TensorRT and CUDA ONNX Runtime from JetPack
    units: tuple[str, ...]
    # Service users to make (each with its supplementary groups), and who owns what (a path
    # relative to the root -> owner, mode): field_kit.kit.owners.
    users: dict[str, tuple[str, ...]] = field(default_factory=dict)
    owners: dict[str, tuple[str, int]] = field(default_factory=dict)
    mosquitto: bool = False  # the Mosquitto broker runs here (Debian's own service must not)
    # A worker here measures its device class at install (``faillite profile``), where its
    # profile is missing or an estimate: its worker then tells the coordinators. "": none.
    measure: str = ""
    measure_user: str = ""


def missing_prerequisites(
    spec: NodeInstall, *, systemd: bool, which: Callable[[str], str | None] = shutil.which
) -> list[str]:
    """What the node's OS lacks, as the packages that bring it (Debian / Ubuntu names)."""

    def has(tool: str) -> bool:  # root's tools may be off a service's PATH
        return which(tool) is not None or which(f"/usr/sbin/{tool}") is not None

    out = []
    if importlib.util.find_spec("ensurepip") is None:
        out.append("python3-venv")
    if spec.mosquitto:
        out += [pkg for tool, pkg in (("mosquitto", "mosquitto"), ("nft", "nftables"))
                if not has(tool)]  # fmt: skip
    if systemd and not has("systemctl"):
        out.append("systemd")
    if importlib.util.find_spec("cryptography") is None and not has("openssl"):
        out.append("openssl")
    return out


def make_users(users: dict[str, tuple[str, ...]]) -> None:
    """System users without a login or a home, made once (an upgrade finds them)."""
    groups = {g.gr_name for g in grp.getgrall()}
    for name, extra in sorted(users.items()):
        try:
            pwd.getpwnam(name)
            continue
        except KeyError:
            pass
        want = [g for g in extra if g in groups]  # no video group: no GPU to share
        run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
             "/nonexistent", "--shell", "/usr/sbin/nologin",
             *(["--groups", ",".join(want)] if want else []), name],
            f"making the service user {name}",
        )  # fmt: skip


def apply_owners(
    root: Path,
    owners: dict[str, tuple[str, int]],
    ids: Callable[[str], tuple[int, int]] = lambda user: (
        pwd.getpwnam(user).pw_uid,
        pwd.getpwnam(user).pw_gid,
    ),
) -> None:
    """Each listed path to its owner and mode; a listed folder that is not there is made."""
    for rel, (owner, mode) in sorted(owners.items()):
        path = root / rel
        if not path.exists():
            path.mkdir(parents=True)
        uid, gid = ids(owner)
        os.chown(path, uid, gid)
        path.chmod(mode)


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


def public_key_raw(pem: bytes) -> bytes:
    """The 32 bytes of an Ed25519 public key in PEM (SubjectPublicKeyInfo)."""
    body = [x for x in pem.decode("ascii", "replace").splitlines() if x and not x.startswith("-")]
    try:
        der = base64.b64decode("".join(body), validate=True)
    except ValueError as exc:
        raise BundleError("not a PEM public key") from exc
    if len(der) != len(_ED25519_SPKI) + 32 or not der.startswith(_ED25519_SPKI):
        raise BundleError("not an Ed25519 public key")
    return der[len(_ED25519_SPKI) :]


def fingerprint(pem: bytes) -> str:
    """How an operator names a release key: ``sha256:`` and the hex digest of its raw bytes."""
    return "sha256:" + hashlib.sha256(public_key_raw(pem)).hexdigest()


def check_signature(pub: Path, data: Path, sig: Path, *, openssl: bool | None = None) -> None:
    """``sig`` is ``pub``'s Ed25519 signature of ``data``: with the system Python's
    cryptography where it has it, else OpenSSL's command (3.0+, as on Ubuntu 22.04 / JetPack 6
    and Debian 12). ``openssl``: force one way (tests)."""
    if openssl is None:
        try:
            import cryptography  # noqa: F401
        except ImportError:
            openssl = True
        else:
            openssl = False
    if openssl:
        tool = shutil.which("openssl")
        if tool is None:
            raise BundleError(
                "cannot check the bundle's signature: this node has neither python3-cryptography "
                "nor openssl"
            )
        out = subprocess.run(
            [tool, "pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin",
             "-in", str(data), "-sigfile", str(sig)],
            capture_output=True, text=True,
        )  # fmt: skip
        if out.returncode != 0:
            raise BundleError(f"{data.name}: the signature does not verify; refused")
        return
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = Ed25519PublicKey.from_public_bytes(public_key_raw(pub.read_bytes()))
    try:
        key.verify(sig.read_bytes(), data.read_bytes())
    except InvalidSignature as exc:
        raise BundleError(f"{data.name}: the signature does not verify; refused") from exc


def trust(folder: Path, root: Path, trusted: str | None) -> str:
    """Check that the bundle in ``folder`` is signed by the release key this node trusts: the
    one ``trusted`` names (a fingerprint, on a first install or after the kit was re-keyed), or
    else the one a previous install left under ``root``. Returns the key's fingerprint."""
    pub, sig = folder / RELEASE_PUB, folder / SIGNATURE
    if not pub.is_file() or not sig.is_file() or not (folder / SUMS).is_file():
        raise BundleError(
            f"{folder}: not a signed FailLite bundle (no {RELEASE_PUB} or {SIGNATURE})"
        )
    signer = fingerprint(pub.read_bytes())
    installed = root / INSTALLED_KEY
    if trusted is not None:
        if trusted.strip().lower() != signer:
            raise BundleError(f"signed with {signer}, not with the key given to --trust")
    elif installed.is_file():
        mine = fingerprint(installed.read_bytes())
        if mine != signer:
            raise BundleError(
                f"signed with {signer}, not with this node's release key {mine}: refused (a "
                "kit re-keyed on purpose: --trust with the new key's fingerprint)"
            )
    else:
        raise BundleError(
            "first install on this node: give --trust the kit's release key fingerprint "
            "(faillite kit bundle prints it; compare it with the one your kit's owner gave you)"
        )
    check_signature(pub, folder / SUMS, sig)
    return signer


def verify(folder: Path) -> None:
    """Every file of an unpacked bundle against its ``SHA256SUMS``, and nothing more."""
    sums = folder / SUMS
    if not sums.is_file():
        raise BundleError(f"{folder}: no {SUMS}; not a FailLite bundle")
    listed: dict[str, str] = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    present = files - {SUMS, SIGNATURE}
    if present != set(listed):
        extra = sorted(present - set(listed))[:3]
        missing = sorted(set(listed) - present)[:3]
        raise BundleError(f"bundle contents differ from {SUMS}: extra {extra}, missing {missing}")
    for name, digest in listed.items():
        if sha256(folder / name) != digest:
            raise BundleError(f"{name}: checksum mismatch; the bundle is corrupt or was altered")


def extract_all(tar: tarfile.TarFile, dest: Path, *, only: str | None = None) -> None:
    """Unpack ``tar`` into ``dest``, refusing what could land outside it. The system Python of
    a node may predate tarfile's extraction filters (Debian 12's 3.11.2): then the same rules
    by hand, for a bundle's plain files and folders. ``only``: that member alone."""
    chosen = [tar.getmember(only)] if only is not None else tar.getmembers()
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, members=chosen, filter="data")
        return
    members = []
    for m in chosen:
        parts = Path(m.name).parts
        if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
            raise BundleError(f"bundle member {m.name!r}: not a plain file or folder inside it")
        m.mode &= 0o755 if m.isdir() else 0o644 | (m.mode & 0o111)
        members.append(m)
    tar.extractall(dest, members=members)


def install(
    archive: Path,
    node: str | None = None,
    *,
    root: Path = Path("/"),
    systemd: bool = True,
    trusted: str | None = None,
    keep: bool = True,
    force: bool = False,
    profile: bool = True,
    accounts: bool | None = None,
) -> NodeInstall:
    """Install the node of ``archive`` (its .tar, or the unpacked folder) under ``root``, with
    no network; returns what it did. ``node``: refuse a bundle of another node. ``keep``
    False: the archive (it holds the node's secrets) is deleted once installed."""
    if archive.is_dir():
        return install_folder(
            archive, node, root=root, systemd=systemd, trusted=trusted, force=force,
            profile=profile, accounts=accounts,
        )  # fmt: skip
    side = archive.with_name(archive.name + ".sha256")
    if side.is_file() and side.read_text().split()[0] != sha256(archive):
        raise BundleError(f"{archive}: does not match {side.name}")
    with tempfile.TemporaryDirectory(prefix="faillite-install-") as tmp:
        Path(tmp).chmod(0o700)  # mkdtemp makes it so; the node's secrets unpack here
        with tarfile.open(archive) as tar:
            extract_all(tar, Path(tmp))
        (folder,) = Path(tmp).iterdir()
        spec = install_folder(
            folder, node, root=root, systemd=systemd, trusted=trusted, force=force,
            profile=profile, accounts=accounts,
        )  # fmt: skip
    if not keep:
        archive.unlink()
        side.unlink(missing_ok=True)
    return spec


def install_folder(
    folder: Path,
    node: str | None = None,
    *,
    root: Path = Path("/"),
    systemd: bool = True,
    trusted: str | None = None,
    accounts: bool | None = None,
    force: bool = False,
    profile: bool = True,
) -> NodeInstall:
    """``accounts``: make the service users and give each its files (default: installing
    under ``/``; a rehearsal under another root runs every role as itself). A release older
    than the one installed is refused (``force``: go back to it). The new release gets a venv
    of its own; if anything fails the node is left as it was, on the release it ran."""
    # Nothing is touched before the signature and every file are checked.
    trust(folder, root, trusted)
    verify(folder)
    meta = json.loads((folder / MANIFEST).read_text())
    if node is not None and meta["node"] != node:
        raise BundleError(f"this bundle is node {meta['node']!r}'s, not {node!r}'s")
    spec = NodeInstall(
        meta["node"],
        tuple(meta["extras"]),
        bool(meta["system_site_packages"]),
        tuple(meta["units"]),
        {u: tuple(g) for u, g in meta.get("users", {}).items()},
        {p: (str(o), int(m)) for p, (o, m) in meta.get("owners", {}).items()},
        bool(meta.get("mosquitto", False)),
        str(meta.get("measure", "")),
        str(meta.get("measure_user", "")),
    )
    accounts = root == Path("/") if accounts is None else accounts
    missing = missing_prerequisites(spec, systemd=systemd and root == Path("/"))
    if missing and (folder / DEBS).is_dir() and root == Path("/"):
        install_debs(sorted((folder / DEBS).glob("*.deb")), missing)
        missing = missing_prerequisites(spec, systemd=systemd)
    if missing:
        raise BundleError(
            f"this node lacks: {' '.join(missing)} (apt install {' '.join(missing)}; offline: "
            "kit bundle --debs carries them)"
        )
    release = dict(meta.get("release") or {"version": "0", "built": ""})
    before = installed(root)
    if before is not None and _order(release) < _order(before["release"]) and not force:
        raise BundleError(
            f"release {label(release)} is older than the installed {label(before['release'])}:"
            " refused (--force goes back to it)"
        )
    # A venv per release, made where it stays (a venv cannot move); the link swaps at the end.
    venvs = root / VENVS
    venvs.mkdir(parents=True, exist_ok=True)
    fresh = venvs / label(release).replace(" ", "-")
    current = root / VENV
    if current.exists() and not current.is_symlink():  # an install from before releases
        current.rename(venvs / "unversioned")
        current.symlink_to(Path("venvs") / "unversioned")
    previous = current.resolve() if current.is_symlink() else None
    if fresh == previous:
        fresh = fresh.with_name(fresh.name + "-again")
    shutil.rmtree(fresh, ignore_errors=True)
    cmd = [sys.executable, "-m", "venv", str(fresh)]
    if spec.system_site_packages:
        cmd.append("--system-site-packages")
    run(cmd, "creating the venv")
    wheel = folder / "wheelhouse" / meta["wheel"]
    target = f"{wheel}[{','.join(spec.extras)}]" if spec.extras else str(wheel)
    try:
        run(
            [str(fresh / "bin" / "pip"), "install", "-q", "--no-index", "--find-links",
             str(folder / "wheelhouse"), target],
            "installing from the wheelhouse (no network)",
            # No pip configuration of this machine: the bundle alone must be enough.
            env={**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INPUT": "1"},
        )  # fmt: skip
    except BundleError:
        shutil.rmtree(fresh, ignore_errors=True)  # the installed release runs on, untouched
        raise
    kept = _keep(root)  # the node's files as they were: put back if what follows fails
    try:
        for tree in sorted((folder / NODE_TREE).iterdir()):
            if tree.is_dir():  # etc/, var/: the node's file system; its README stays out
                shutil.copytree(tree, root / tree.name, dirs_exist_ok=True)
        if accounts:
            # One user per role: a camera's process cannot read the signing key.
            make_users(spec.users)
            apply_owners(root, spec.owners)
        _link(current, fresh)
        if profile and spec.measure:
            measure(root, fresh, spec, as_user=accounts)
        if systemd and root == Path("/"):
            if spec.mosquitto:
                # Debian's own mosquitto.service would hold the port: the kit's unit runs it.
                subprocess.run(
                    ["systemctl", "disable", "--now", "mosquitto.service"], capture_output=True
                )
            run(["systemctl", "daemon-reload"], "systemctl daemon-reload")
            # --no-block: a role is ready only once the kit's broker is up, maybe on a node
            # installed later; systemd starts the units and keeps them trying. A unit already
            # running is restarted on the new release.
            run(["systemctl", "enable", "--no-block", *spec.units], "enabling the units")
            run(["systemctl", "restart", "--no-block", *spec.units], "starting the units")
    except (BundleError, OSError):
        _restore(root, kept)
        if previous is not None:
            _link(current, previous)
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(kept, ignore_errors=True)
    for old in venvs.iterdir():  # keep the current release and the one before it
        if old not in (fresh, previous):
            shutil.rmtree(old, ignore_errors=True)
    record = {
        "release": release,
        "node": spec.node,
        "kit": meta.get("kit"),
        "units": spec.units,
        "users": sorted(spec.users),
    }
    (root / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return spec


def install_debs(debs: list[Path], missing: list[str]) -> None:
    """The OS packages the bundle carries, installed with no network: dpkg unpacks them all,
    then configures them, so dependencies among them hold; one missing from the set and from
    the node is named in dpkg's error (apt's --no-download refuses local files)."""
    print(f"install: this node lacks {' '.join(missing)}: installing the packages carried",
          file=sys.stderr)  # fmt: skip
    cmd = ["dpkg", "-i", *(str(d) for d in debs)]
    run(cmd, "installing the OS packages carried (no network)",
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip


MEASURE_TIMEOUT_S: Final = 3600.0  # TensorRT builds its engines first: minutes per variant


def measure(root: Path, venv: Path, spec: NodeInstall, *, as_user: bool) -> None:
    """Measure the node's device class before its worker starts (it would share the board with
    the measuring). A failure leaves the estimate and says so: the node runs all the same."""
    cmd = [
        str(venv / "bin" / "faillite"), "profile", "--config", str(root / CONFIG),
        "--device-class", spec.measure, "--if-estimated", "--on-disk", "--runs", "30",
    ]  # fmt: skip
    if as_user and spec.measure_user and shutil.which("runuser"):
        cmd = ["runuser", "-u", spec.measure_user, "--", *cmd]
    print(f"install: measuring device class {spec.measure} on this board", file=sys.stderr)
    try:
        done = subprocess.run(cmd, timeout=MEASURE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"install: measuring failed ({exc}); the estimate stays", file=sys.stderr)
        return
    if done.returncode != 0:
        print(
            f"install: measuring failed (exit {done.returncode}); the estimate stays: run "
            f"faillite profile --device-class {spec.measure} on this board later",
            file=sys.stderr,
        )


def installed(root: Path) -> dict[str, Any] | None:
    """What the last install under ``root`` left: its release, node and units."""
    path = root / RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def _order(release: dict[str, Any]) -> tuple[tuple[int, ...], str]:
    parts = tuple(int(p) for p in str(release.get("version", "0")).split(".") if p.isdigit())
    return parts, str(release.get("built", ""))


def label(release: dict[str, Any]) -> str:
    return f"{release.get('version', '0')} {release.get('built', '')}".strip()


def _link(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` in one step (a rename over the old link)."""
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(os.path.relpath(target, link.parent)))
    tmp.replace(link)


_KEPT_TREES: Final = ("etc/faillite", "etc/systemd/system")


def _keep(root: Path) -> Path:
    kept = Path(tempfile.mkdtemp(prefix="faillite-kept-"))
    for rel in _KEPT_TREES:
        if (root / rel).is_dir():
            shutil.copytree(root / rel, kept / rel, symlinks=True)
    return kept


def _restore(root: Path, kept: Path) -> None:
    if (kept / "etc/faillite").is_dir():
        shutil.rmtree(root / "etc/faillite", ignore_errors=True)
    for rel in _KEPT_TREES:
        if (kept / rel).is_dir():
            shutil.copytree(kept / rel, root / rel, symlinks=True, dirs_exist_ok=True)


def uninstall(root: Path = Path("/"), *, systemd: bool = True, purge: bool = False) -> list[str]:
    """Stop and remove the node's units, its code and its config (``purge``: its state, the
    models, and its service users too). Returns what was removed."""
    record = installed(root)
    if record is None:
        raise BundleError(f"nothing of FailLite is installed under {root}")
    units = list(record.get("units", []))
    if systemd and root == Path("/") and units:
        subprocess.run(["systemctl", "disable", "--now", *units], capture_output=True)
    gone = []
    for unit in units:
        path = root / "etc/systemd/system" / unit
        if path.exists():
            path.unlink()
            gone.append(str(path))
    if systemd and root == Path("/"):
        subprocess.run(["systemctl", "daemon-reload"], capture_output=True)
    trees = ["opt/faillite", "etc/faillite"] + (["var/lib/faillite"] if purge else [])
    for rel in trees:
        if (root / rel).exists():
            shutil.rmtree(root / rel)
            gone.append(str(root / rel))
    if purge and root == Path("/"):
        for user in record.get("users", []):
            if subprocess.run(["userdel", user], capture_output=True).returncode == 0:
                gone.append(f"user {user}")
    return gone


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--node", help="this node's id (a bundle of another node is refused)")
    p.add_argument(
        "--trust",
        metavar="FINGERPRINT",
        help="the kit's release key (sha256:...): needed on a first install, or after the kit "
        "was re-keyed; later bundles must be signed by the key installed",
    )
    p.add_argument(
        "--force", action="store_true", help="install an older release than the one here"
    )
    p.add_argument(
        "--uninstall",
        action="store_true",
        help="stop and remove this node's units, code and config (its state and models stay)",
    )
    p.add_argument("--purge", action="store_true", help="with --uninstall: state, models, users")
    p.add_argument(
        "--keep-bundle",
        action="store_true",
        help="keep the archive once installed (it holds this node's secrets: deleted by default)",
    )
    p.add_argument(
        "--bundle", help="the bundle, unpacked or its .tar (default: the folder of this script)"
    )
    p.add_argument("--root", default="/", help="install under this root (default /)")
    p.add_argument("--no-systemd", action="store_true", help="do not enable the units")
    p.add_argument(
        "--accounts",
        action="store_true",
        help="under another --root too: make the service users and give each its files "
        "(a rehearsal of the node as it runs in the field)",
    )
    p.add_argument(
        "--no-profile",
        action="store_true",
        help="do not measure this board's device class (its estimate, if any, stays)",
    )
    args = p.parse_args(argv)
    t0 = time.monotonic()
    if args.uninstall:
        try:
            gone = uninstall(Path(args.root), systemd=not args.no_systemd, purge=args.purge)
        except (BundleError, OSError) as exc:
            print(f"install: {exc}", file=sys.stderr)
            return 2
        print(f"uninstalled: {', '.join(gone)}", file=sys.stderr)
        return 0
    where = Path(args.bundle) if args.bundle else Path(__file__).resolve().parent
    try:
        spec = install(
            where,
            args.node,
            root=Path(args.root),
            systemd=not args.no_systemd,
            trusted=args.trust,
            keep=args.keep_bundle or where.is_dir(),
            force=args.force,
            profile=not args.no_profile,
            accounts=True if args.accounts else None,
        )
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
