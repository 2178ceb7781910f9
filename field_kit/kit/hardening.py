"""The sandbox of a kit's systemd units: what each role may touch, and how often it restarts.

A role reads its config and secrets, talks MQTT over IP, writes only its state folder, and never
needs a capability, a new privilege, the kernel's knobs or another user's files. What differs:

- a worker with an accelerator keeps the GPU's device nodes (and the ``video`` group that
  JetPack gives them to), and may map memory writable and executable (CUDA and TensorRT JIT
  their kernels);
- a camera read from a local device (``/dev/video0``) keeps the video4linux devices;
- Mosquitto starts as root to load the login firewall (``+``: that one command outside the
  sandbox) and drops to its own user itself, so it keeps the two capabilities that takes.

Start limits: ``Restart=always`` every 2 s, at most 30 starts in 5 minutes; a role that cannot
start (a missing file) then stays failed and says why, instead of spinning forever. systemd's
default (5 in 10 s) would give up on a node whose broker is still booting.

``systemd-analyze security --offline=true UNIT`` rates every unit rendered here "OK" (<= 3.0)
(``tests/integration/test_kit_units.py``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal

Sandbox = Literal["role", "gpu_worker", "camera_device", "mosquitto"]

START_LIMITS: Final = ("StartLimitIntervalSec=300", "StartLimitBurst=30")
RESTART: Final = ("Restart=always", "RestartSec=2")

# Every unit: no new privileges, a read-only system, no home folders, its own /tmp, no kernel
# knobs, modules, logs or clock, only IP and local sockets, the system-service system calls.
_COMMON: Final = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "RemoveIPC=yes",
    "KeyringMode=private",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged @resources @obsolete",
    # A filtered call fails (EPERM) instead of killing the role: a library probing for a
    # call it can do without (thread affinity) carries on.
    "SystemCallErrorNumber=EPERM",
    "UMask=0077",
)
_NO_CAPABILITIES: Final = ("CapabilityBoundingSet=", "AmbientCapabilities=")


def directives(sandbox: Sandbox, writable: Sequence[str]) -> list[str]:
    """The [Service] sandbox of a unit that writes only ``writable`` (folders)."""
    out = list(_COMMON)
    if writable:
        out.append(f"ReadWritePaths={' '.join(writable)}")
    if sandbox == "mosquitto":
        # It drops from root to its own user (mosquitto.conf: user mosquitto) itself.
        out += ["CapabilityBoundingSet=CAP_SETUID CAP_SETGID", "AmbientCapabilities="]
        out += ["PrivateDevices=yes", "MemoryDenyWriteExecute=yes"]
        return out
    out += _NO_CAPABILITIES
    if sandbox == "gpu_worker":
        out += ["SupplementaryGroups=video"]  # the GPU's device nodes (JetPack: group video)
    elif sandbox == "camera_device":
        out += [
            "DevicePolicy=closed",
            "DeviceAllow=char-video4linux rw",
            "SupplementaryGroups=video",
            "MemoryDenyWriteExecute=yes",
        ]
    else:
        out += ["PrivateDevices=yes", "MemoryDenyWriteExecute=yes", "PrivateUsers=yes"]
    return out


def is_local_device(source: str) -> bool:
    """A camera the sensor opens as a device (``/dev/video0``, or OpenCV's index ``0``)."""
    return source.startswith("/dev/") or source.isdigit()


_SCORE: Final = re.compile(r"Overall exposure level for \S+: (\d+\.\d+)")


def exposure(unit: Path) -> float | None:
    """``systemd-analyze security --offline=true``'s exposure of ``unit`` (0 best, 10 worst);
    None where this systemd cannot rate a unit file offline (before systemd 250)."""
    if shutil.which("systemd-analyze") is None:
        return None
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    m = _SCORE.search(out.stdout + out.stderr)
    return float(m.group(1)) if m else None
