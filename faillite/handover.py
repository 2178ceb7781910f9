"""Handover keys: a live process of an id gives way only to a successor on its own board.

The id's secret (its broker account) is all a thief who copied it has; a newer birth on the
id's status used to be enough to make the live process step down. Now each process draws a
handover key, puts its hash in its births (``handover_seal``, like a will seal) and keeps the
key in a private file on its own board. ``--replace`` reads that file and reveals the key in
the successor's birth (``handover_key``); the live process steps down, and whoever tracks
incarnations believes the new one, while the old one is heard, only for a birth that unseals it.

The file is kept in the first of ``$FAILLITE_RUNTIME_DIR`` (a kit's systemd unit sets its own
runtime folder, ``/run/faillite-<role>``), ``/run/faillite``,
``$XDG_RUNTIME_DIR/faillite`` and ``/tmp/faillite-<uid>`` it can write, a folder of mode 0700;
a successor looks in all of them and in ``/run/faillite-*`` and ``/tmp/faillite-*``, whatever
the user or environment it runs as (a service, an operator's shell, root). A key file is
trusted only if owned by the reader or by root (root trusts any).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from faillite.log import get_logger

log = get_logger("handover")


def _name(topic: str) -> str:
    return topic.replace("/", ".") + ".handover"


def folders() -> list[Path]:
    """Where key files are kept, in the order they are tried."""
    out: list[Path] = []
    if env := os.environ.get("FAILLITE_RUNTIME_DIR"):
        out.append(Path(env))
    out.append(Path("/run/faillite"))
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        out.append(Path(xdg) / "faillite")
    out.append(Path(tempfile.gettempdir()) / f"faillite-{os.getuid()}")
    return list(dict.fromkeys(out))


def _all_folders() -> list[Path]:
    """What a reader looks in: ours, a role's systemd runtime folder (``/run/faillite-*``,
    made for the role's unit: ``RuntimeDirectory=``), and every user's temp folder."""
    found = folders() + sorted(Path("/run").glob("faillite-*"))
    found += sorted(Path(tempfile.gettempdir()).glob("faillite-[0-9]*"))
    return list(dict.fromkeys(found))


def keep(topic: str, incarnation: str, key: str) -> Path | None:
    """Write the key of the process live on ``topic`` where a successor will look; None if no
    folder can be written (then ``--replace`` cannot take over from it: say so once)."""
    for folder in folders():
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if folder.stat().st_uid != os.getuid():
                continue  # another user's: not ours to write in
            path = folder / _name(topic)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"incarnation": incarnation, "key": key}, f)
            tmp.replace(path)
        except OSError:
            continue
        return path
    log.warning(
        "handover_key_not_kept",
        topic=topic,
        looked_in=[str(f) for f in folders()],
        note="a --replace on this board cannot take over from this process",
    )
    return None


def find(topic: str, incarnation: str) -> tuple[str | None, list[Path]]:
    """The handover key of ``incarnation`` on ``topic`` if it was kept on this board, and
    where it was looked for."""
    looked = _all_folders()
    me = os.getuid()
    for folder in looked:
        path = folder / _name(topic)
        try:
            if path.stat().st_uid not in (me, 0) and me != 0:
                continue
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("incarnation") == incarnation:
            key = doc.get("key")
            if isinstance(key, str):
                return key, looked
    return None, looked


def drop(path: Path | None, incarnation: str) -> None:
    """Remove our key file, unless a successor's has replaced it already."""
    if path is None:
        return
    try:
        if json.loads(path.read_text()).get("incarnation") == incarnation:
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass
