"""``faillite kit collect``: every node's logs, and the drill reports, in one archive for the
after-action review.

Run on the operator's laptop after an exercise: for each node of the kit, the operator's own
command template fetches its roles' structured logs (default ``ssh {host} sudo journalctl -o cat
-u 'faillite-*' --since -24h``: one JSON event per line, as the roles log), and the drill
reports found under ``--reports`` are added. A node that cannot be reached is noted in the
archive's index and the others are still collected.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from field_kit.kit.model import Kit
from field_kit.kit.remote import format_argv

DEFAULT_FETCH: Final = "ssh {host} sudo journalctl -o cat -u 'faillite-*' --since -24h"
FETCH_TIMEOUT_S: Final = 120.0


@dataclass(frozen=True, slots=True)
class Fetched:
    node: str
    ok: bool
    lines: int
    error: str = ""


def collect(
    kit: Kit,
    archive: Path,
    *,
    fetch: str = DEFAULT_FETCH,
    reports: Path | None = None,
    progress: bool = True,
) -> list[Fetched]:
    """Write ``archive`` (.tar.gz): ``<node>/journal.jsonl`` per node, ``reports/...``, and
    ``index.json`` (what was fetched, what failed). Returns one :class:`Fetched` per node."""
    out: list[Fetched] = []
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for i, node in enumerate(kit.nodes, 1):
            argv = format_argv(fetch, "--fetch", {"node": node.id, "host": node.host})
            if progress:
                print(f"[{i}/{len(kit.nodes)}] {node.id}: {' '.join(argv)}", flush=True)
            try:
                done = subprocess.run(argv, capture_output=True, timeout=FETCH_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as exc:
                out.append(Fetched(node.id, False, 0, str(exc)))
                continue
            if done.returncode != 0:
                tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
                why = f"exited {done.returncode}: {' '.join(tail) or 'no output'}"
                out.append(Fetched(node.id, False, 0, why))
                continue
            _add(tar, f"{node.id}/journal.jsonl", done.stdout)
            out.append(Fetched(node.id, True, done.stdout.count(b"\n")))
        if reports is not None and reports.is_dir():
            for path in sorted(p for p in reports.rglob("*") if p.is_file()):
                tar.add(path, arcname=f"reports/{path.relative_to(reports)}")
        index = {
            "kit": kit.kit,
            "collected": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "fetch": fetch,
            "nodes": [asdict(f) for f in out],
        }
        _add(tar, "index.json", json.dumps(index, indent=2).encode() + b"\n")
    return out


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))
