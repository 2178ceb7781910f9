"""A process that exits while a plan is being solved on a daemon thread (a coordinator stopped
mid-replan) exits cleanly: HiGHS's worker threads are stopped first, not destroyed running
(std::terminate, SIGABRT)."""

from __future__ import annotations

import subprocess
import sys

SOLVE_AND_EXIT = """
import sys, threading, time
from coordinator.planner import plan, random_problem
p = random_problem(40, 8, 3, seed=1)
plan(p, "lp")  # HiGHS's threads are up
def again():
    for _ in range(200):
        plan(p, "lp")
threading.Thread(target=again, daemon=True).start()
time.sleep(float(sys.argv[1]))
"""


def test_exit_during_a_solve_on_a_daemon_thread_is_clean() -> None:
    # Without the exit hook about half of these runs aborted (exit -6).
    for delay in ("0.05", "0.2", "0.35", "0.5", "0.8"):
        out = subprocess.run(
            [sys.executable, "-c", SOLVE_AND_EXIT, delay],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-1500:]
