"""The demo mesh on a busy board: ``faillite up`` with CPU hogs, each in its own session (as a
board's other services are), optionally with a worker killed mid-run. Prints the failovers with
no injected fault (and per hour), what was shed, the seconds apps went without results
(unserved; paused on purpose while shed), and whether every app was served at the end.

    python bench/busy_board.py --hogs 0,2,4 --duration 60
    python bench/busy_board.py --hogs 2 --kill w2 --kill-after 25
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from faillite.compat import python_module
from field_kit.drill.hogs import Hogs


def run(hogs: int, duration: float, kill: str | None, kill_after: float) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="busy-")) / "summary.json"
    cmd = [*python_module("faillite"), "up", "--duration", str(duration)]
    cmd += ["--no-view", "--port", "0", "--summary-json", str(out)]
    with Hogs(hogs):
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if kill:
            time.sleep(kill_after)  # a bench, not a test: the fault comes at a set time
            me = subprocess.run(
                ["pgrep", "-f", f"faillite worker --id {kill} "], capture_output=True, text=True
            )
            for pid in me.stdout.split():
                if _child_of(int(pid), p.pid):
                    os.kill(int(pid), signal.SIGKILL)
        p.communicate()
    s = json.loads(out.read_text())
    injected = {kill} if kill else set()
    false = [f for f in s["failovers"] if f["worker"] not in injected]
    counts = s["event_counts"]
    return {
        "hogs": hogs,
        "rc": p.returncode,
        "failovers_no_fault": len(false),
        "failovers_per_hour": round(len(false) * 3600 / s["duration_s"], 1),
        "failover_causes": [f"{f['worker']}:{f['cause']}" for f in s["failovers"]],
        "shed": counts.get("shed", 0),
        "unshed": counts.get("unshed", 0),
        "withheld": counts.get("verdict_withheld", 0),
        "served_at_end": s["served_at_end"],
        # Seconds apps went without results past 1 s (3 frames), and paused on purpose (shed).
        "unserved_s": s["unserved_s"],
        "paused_s": s["paused_s"],
        "apps": {a: (v["results"], v["e2e_ms"]["p50"]) for a, v in s["apps"].items()},
    }


def _child_of(pid: int, parent: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().split()
    except OSError:
        return False
    return int(stat[3]) == parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hogs", default="0,2,4", help="hog counts to run with, comma-separated")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--kill", default=None, help="worker id to kill -9 mid-run")
    ap.add_argument("--kill-after", type=float, default=25.0)
    args = ap.parse_args()
    for n in (int(x) for x in args.hogs.split(",")):
        print(f"-- {n} hog(s), {args.duration:.0f} s ...", flush=True)
        print(json.dumps(run(n, args.duration, args.kill, args.kill_after)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
