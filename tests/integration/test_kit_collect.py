"""``faillite kit collect``: every node's logs and the drill reports in one archive. The
operator's fetch command is a ``cat`` of a file per node here (a field kit's is ``ssh``)."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import yaml

from faillite.compat import python_module
from field_kit.kit.model import EXAMPLE


def test_collect_gathers_every_reachable_node_and_names_the_rest(tmp_path: Path) -> None:
    (tmp_path / "kit.yaml").write_text(EXAMPLE)
    logs = tmp_path / "nodes"
    logs.mkdir()
    nodes = [n["id"] for n in yaml.safe_load(EXAMPLE)["nodes"]]
    for node in nodes:
        if node != "orin4":  # its board is off
            lines = [json.dumps({"event": "assignment_applied", "worker": node})] * 3
            (logs / f"{node}.log").write_text("\n".join(lines) + "\n")
    reports = tmp_path / "drills"
    (reports / "run1").mkdir(parents=True)
    (reports / "run1/report.md").write_text("# KILL_PRIMARY passed\n")
    archive = tmp_path / "aar.tar.gz"
    out = subprocess.run(
        [*python_module("faillite"), "kit", "collect", str(tmp_path / "kit.yaml"),
         "--out", str(archive), "--fetch", f"cat {logs}/{{node}}.log",
         "--reports", str(reports)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr  # one node was not collected
    assert "orin4: NOT COLLECTED: exited 1" in out.stdout and "orin1: 3 lines" in out.stdout
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        first = tar.extractfile("orin1/journal.jsonl").read().decode()  # type: ignore[union-attr]
    assert {f"{n}/journal.jsonl" for n in nodes if n != "orin4"} <= names
    assert "orin4/journal.jsonl" not in names and "reports/run1/report.md" in names
    assert [n["node"] for n in index["nodes"] if not n["ok"]] == ["orin4"]
    assert json.loads(first.splitlines()[0])["worker"] == "orin1"
