"""An aarch64 board on an x86 machine, for rehearsing a Jetson's bundle: qemu-user and Debian's
own arm64 Python.

The board's system Python and the libraries its wheels link against come from Debian's arm64
packages (``apt-get download``, unpacked into a root folder, cached); qemu-user runs them, found
by the kernel through binfmt_misc (so a venv's python, pip's subprocesses and the roles all run
emulated), with ``QEMU_LD_PREFIX`` pointing at that root folder. What qemu-user cannot give is
an aarch64 ``/proc/cpuinfo`` (it shows the host's): ONNX Runtime's CPU detection then crashes at
import (seen with 1.32), so each emulated process runs in a mount namespace of its own with a
Cortex-A78AE's (a Jetson Orin's cores) bound over it; a real board has its own.

Root, qemu-user-static, binfmt_misc and Debian's arm64 packages are needed
(:func:`emulation_problem` says which is missing; ``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Final

QEMU: Final = Path("/usr/bin/qemu-aarch64-static")
BINFMT: Final = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF: Final = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")  # from qemu-user-static
# A board's Python 3.11 and what the wheels of a worker link against (glibc, libstdc++, gomp).
PACKAGES: Final = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "python3.11",
    "python3.11-venv", "libc6", "libexpat1", "zlib1g", "libssl3", "libffi8", "libbz2-1.0",
    "liblzma5", "libsqlite3-0", "libncursesw6", "libtinfo6", "libreadline8", "libuuid1",
    "libdb5.3", "libgcc-s1", "libstdc++6", "libgomp1", "libcrypt1", "libnsl2", "libtirpc3",
    "libgssapi-krb5-2", "libkrb5-3", "libk5crypto3", "libkrb5support0", "libcom-err2",
    "libkeyutils1",
)  # fmt: skip
ARCH_INDEPENDENT: Final = ("python3-pip-whl", "python3-setuptools-whl", "media-types")
# Jetson Orin: Cortex-A78AE cores (implementer 0x41, part 0xd42).
CPUINFO: Final = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 "
    "crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm paca "
    "pacg\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: "
    "0xd42\nCPU revision\t: 1\n\n"
    for i in range(2)
)


class EmulationError(RuntimeError):
    pass


def emulation_problem() -> str | None:
    """Why an aarch64 board cannot be emulated here, or None."""
    if os.geteuid() != 0:
        return "needs root (binfmt_misc, mount namespaces)"
    if not QEMU.is_file() or not BINFMT_CONF.is_file():
        return "needs qemu-user-static (apt-get install qemu-user-static)"
    for tool in ("apt-get", "dpkg-deb", "unshare"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    archs = subprocess.run(
        ["dpkg", "--print-foreign-architectures"], capture_output=True, text=True, check=False
    ).stdout.split()
    if "arm64" not in archs:
        return "needs Debian's arm64 packages (dpkg --add-architecture arm64; apt-get update)"
    try:
        enable_binfmt()
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"binfmt_misc cannot run aarch64 binaries here: {exc}"
    return None


def enable_binfmt() -> None:
    """qemu-aarch64 registered with binfmt_misc (mounted first where it is not)."""
    if not (BINFMT / "register").exists():
        subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
            check=True,
            capture_output=True,
        )
    if not (BINFMT / "qemu-aarch64").exists():
        (BINFMT / "register").write_text(BINFMT_CONF.read_text().strip())


class Board:
    """An emulated aarch64 board's root folder, with its Python."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.python = root / "usr/bin/python3.11"
        self.cpuinfo = root / "faillite-cpuinfo"

    @classmethod
    def make(cls, root: Path, cache: Path) -> Board:
        """Debian's arm64 Python and libraries unpacked into ``root`` (downloads kept in
        ``cache``)."""
        board = cls(root)
        if board.python.is_file():
            return board
        cache.mkdir(parents=True, exist_ok=True)
        wanted = [f"{p}:arm64" for p in PACKAGES] + list(ARCH_INDEPENDENT)
        out = subprocess.run(
            ["apt-get", "download", "-q", *wanted],
            cwd=cache, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise EmulationError(f"apt-get download: {out.stderr.strip()[-1000:]}")
        root.mkdir(parents=True, exist_ok=True)
        for deb in sorted(cache.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        board.cpuinfo.write_text(CPUINFO)
        if not board.python.is_file():
            raise EmulationError(f"{board.python}: not in the packages unpacked")
        return board

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        return {**(base if base is not None else os.environ), "QEMU_LD_PREFIX": str(self.root)}

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run as on the board: its own mount namespace, with an aarch64 cpuinfo."""
        script = 'mount --bind "$0" /proc/cpuinfo && exec "$@"'
        return ["unshare", "-m", "sh", "-c", script, str(self.cpuinfo), *argv]
