"""Placement planner figures: re-plan time, LP bound, rounded objective and gap per size; peak
memory of the largest size; LP rounding against the exact MILP; decision time at failure.

Run: ``python bench/planner.py [--reps N] [--seeds N]``. Sizes are apps x servers x variants
of :func:`random_problem`. Wall times are p50/p99 over the repetitions (CPU time beside them:
on a shared machine wall time also counts other processes).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Mapping
from pathlib import Path

from coordinator.planner import (
    Assign,
    Backup,
    Options,
    Placement,
    Problem,
    build_failover_table,
    plan,
    plan_backups,
    plan_primaries,
    random_problem,
    replan_after,
    validate,
)
from coordinator.planner.placement import backup_value, primary_value

SIZES = [(20, 5, 3), (100, 20, 3), (1000, 100, 4)]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def _hwm_kb() -> int:
    """Peak resident set of this process (VmHWM; ru_maxrss would include the parent's peak,
    which Linux carries across fork and exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def child_peak(n_apps: int, n_servers: int, n_variants: int) -> None:
    """In a fresh process: peak RSS before and after one full plan (printed as JSON)."""
    plan(random_problem(5, 2, 2, seed=0))  # import and warm up everything first
    p = random_problem(n_apps, n_servers, n_variants, seed=1)
    base = _hwm_kb()
    pl = plan(p)
    peak = _hwm_kb()
    print(json.dumps({"base_kb": base, "peak_kb": peak, "valid": not validate(p, pl)}))


def bench_size(size: tuple[int, int, int], reps: int, tightness: float = 1.0) -> None:
    p = random_problem(*size, seed=1, tightness=tightness)
    plan(p)  # warm-up (imports, cvxpy caches)
    walls, cpus = [], []
    pl: Placement | None = None
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        pl = plan(p)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    assert pl is not None
    g = plan(p, "greedy")
    s1, s2 = pl.stages
    a, s, v = size
    label = f"{a:>5}x{s:<3}x{v}" + ("" if tightness == 1.0 else f" tight {tightness:g}")
    print(
        f"{label}  wall p50 {pct(walls, 0.5) * 1000:7.1f} ms  p99 "
        f"{pct(walls, 0.99) * 1000:7.1f} ms  cpu p50 {pct(cpus, 0.5) * 1000:7.1f} ms  "
        f"bound {pl.lp_bound:10.1f}  rounded {pl.objective:10.1f}  gap {pl.gap * 100:5.2f} %  "
        f"greedy {g.objective:10.1f}  valid {not validate(p, pl)}"
    )
    for r in (s1, s2):
        print(
            f"      {r.stage:<9} build {r.build_s * 1000:6.1f} ms  solve {r.solve_s * 1000:6.1f}"
            f" ms  round {r.round_s * 1000:6.1f} ms  candidates {r.candidates:>7}  columns "
            f"{r.columns:>6}  rows {r.rows:>5}  pricing {r.pricing_rounds}  gap "
            f"{(r.gap or 0) * 100:5.2f} % (score {(r.score_gap or 0) * 100:5.2f} %)  "
            f"picked {r.picked}"
        )


def score(
    p: Problem, primary: Mapping[str, Assign], backups: Mapping[str, Backup]
) -> tuple[float, float]:
    """What each stage maximizes: the objective plus the preference bonuses."""
    k = p.knobs
    s1 = sum(
        primary_value(p, a, x) + k.placement_bonus * p.app(a).weight for a, x in primary.items()
    )
    s2 = sum(
        backup_value(p, a, b)
        + (k.critical_bonus * p.app(a).weight if b.kind == "warm" and p.app(a).critical else 0)
        for a, b in backups.items()
    )
    return s1, s2


def bench_milp(size: tuple[int, int, int], seeds: int) -> None:
    gaps1, gaps2, t_lp, t_milp = [], [], [], []
    for seed in range(seeds):
        p = random_problem(*size, seed=seed)
        t0 = time.perf_counter()
        prim, _, _ = plan_primaries(p)
        lp_b, _ = plan_backups(p, prim)
        t1 = time.perf_counter()
        mprim, _, m1 = plan_primaries(p, "milp")
        milp_b, m2 = plan_backups(p, prim, "milp")  # same primaries: the same stage-2 problem
        t2 = time.perf_counter()
        t_lp.append(t1 - t0)
        t_milp.append(t2 - t1)
        lp1, lp2 = score(p, prim, lp_b)
        ex1, _ = score(p, mprim, {})
        _, ex2 = score(p, prim, milp_b)
        gaps1.append((ex1 - lp1) / max(abs(m1.objective), 1.0))
        gaps2.append((ex2 - lp2) / max(abs(m2.objective), 1.0))
    a, s, v = size
    print(
        f"{a:>5}x{s:<3}x{v}  {seeds} seeds  LP+rounding {statistics.median(t_lp) * 1000:6.1f} ms"
        f"  MILP {statistics.median(t_milp) * 1000:7.1f} ms (p50)  loss vs MILP: primaries "
        f"mean {statistics.mean(gaps1) * 100:5.2f} % max {max(gaps1) * 100:5.2f} %, backups "
        f"mean {statistics.mean(gaps2) * 100:5.2f} % max {max(gaps2) * 100:5.2f} %"
    )


def bench_decision(size: tuple[int, int, int]) -> None:
    p = random_problem(*size, seed=1)
    pl = plan(p)
    t0 = time.perf_counter()
    table = build_failover_table(p, pl)
    build_ms = (time.perf_counter() - t0) * 1000
    dom = next(iter(table))
    server = p.domains()[dom][0]
    n = 100_000
    lookup_us = timeit.timeit(lambda: table[dom], number=n) / n * 1e6
    n = 2000
    filtered_us = timeit.timeit(lambda: table.for_servers({server}), number=n) / n * 1e6
    fp = table[dom]
    t0 = time.perf_counter()
    re = replan_after(p, [dom], pl)
    replan_ms = (time.perf_counter() - t0) * 1000
    rates = [table[d].recovery_rate() for d in table]
    mttr = [r.mttr_ms for d in table for r in table[d].recoveries.values()]
    a, s, v = size
    print(
        f"{a:>5}x{s:<3}x{v}  table of {len(table)} domains built in {build_ms:6.1f} ms; "
        f"decision table[domain] {lookup_us:5.2f} us, one server of a domain (filtered) "
        f"{filtered_us:7.1f} us; {len(fp.affected)} apps affected by {dom}, recovery rate "
        f"{min(rates) * 100:5.1f}-{max(rates) * 100:5.1f} %, planned MTTR p50 "
        f"{pct(mttr, 0.5):6.0f} ms p99 {pct(mttr, 0.99):6.0f} ms; re-plan on survivors "
        f"{replan_ms:6.1f} ms (valid {not validate(p.without(p.domains()[dom]), re)})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=0, help="repetitions (default: by size)")
    ap.add_argument("--seeds", type=int, default=10, help="instances for the MILP comparison")
    ap.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_peak(*args.child)
        return
    print("== re-plan (both stages), LP + rounding, defaults:", Options())
    for size in SIZES:
        reps = args.reps or {20: 30, 100: 20}.get(size[0], 7)
        bench_size(size, reps)
    print("== memory 1.5x scarcer (more cold backups; the LP's integrality gap grows)")
    for size in SIZES[1:]:
        bench_size(size, args.reps or 5, tightness=1.5)
    print("== peak memory of one plan at the largest size (fresh process, VmHWM)")
    out = subprocess.run(
        [sys.executable, __file__, "--child", *map(str, SIZES[-1])],
        check=True,
        capture_output=True,
        text=True,
    )
    peak = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"     peak RSS {peak['peak_kb'] / 1024:7.1f} MiB (process after imports and warm-up "
        f"{peak['base_kb'] / 1024:6.1f} MiB: the plan adds "
        f"{(peak['peak_kb'] - peak['base_kb']) / 1024:6.1f} MiB); valid {peak['valid']}"
    )
    print("== LP + rounding against the exact MILP (score incl. preference bonuses, / objective)")
    for size in [(12, 4, 3), (20, 5, 3), (40, 8, 3)]:
        bench_milp(size, args.seeds if size[0] <= 20 else max(2, args.seeds // 3))
    print("== decision at failure time: failover table lookup")
    for size in SIZES[1:]:
        bench_decision(size)


if __name__ == "__main__":
    main()
