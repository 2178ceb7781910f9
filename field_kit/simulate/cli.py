"""``faillite simulate``: the command line of the fleet simulator.

Hook into ``faillite/cli.py`` with one line in ``build_parser``::

    from field_kit.simulate.cli import register; register(sub)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coordinator.planner import Knobs

DESCRIPTION = (
    "Discrete-event simulation of a fleet under server and failure-domain failures: "
    "protection policies (none, full-warm, cold, greedy, lp) compared on recovery rate, MTTR, "
    "accuracy against full replication and memory spent on protection."
)
EPILOG = (
    "examples:\n"
    "  faillite simulate --scenario site27\n"
    "  faillite simulate --scenario fleet1000 --mode sweep --sweep-limit 40\n"
    "  faillite simulate --scenario site27 --trace failures.json --policies lp,greedy\n"
    'trace: a JSON list of {"time_s": 60, "servers": ["a2-3"] or "domain": "rack07", '
    '"repair_s": 900}'
)
EXIT_BAD_INPUT = 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``simulate`` subcommand to the ``faillite`` parser."""
    p = sub.add_parser(
        "simulate",
        help="simulate failures of a fleet and compare protection policies",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=cmd_simulate)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scenario")
    g.add_argument("--scenario", default="site27", help="site27 (default) or fleet1000")
    g.add_argument("--seed", type=int, default=0, help="seed of the scenario and failures")
    g.add_argument(
        "--memory-scale",
        type=float,
        default=1.5,
        help="model memory of the fleet / the primaries' need (default 1.5; full warm "
        "replication needs 2)",
    )
    g.add_argument(
        "--profiles",
        help="profiles CSV (default: the packaged configs/a2_profiles.csv)",
    )
    g.add_argument("--catalog", help="catalog with the accuracies (default: a2_catalog.yaml)")
    g.add_argument(
        "--detection-ms",
        type=float,
        default=Knobs().detection_ms,
        help=f"failure detection time (default {Knobs().detection_ms:g})",
    )
    g.add_argument(
        "--mttr-weight",
        type=float,
        default=Knobs().mttr_weight,
        help="the planner's accuracy points per ms of expected MTTR, the coordinator's "
        f"coordinator.mttr_weight (default {Knobs().mttr_weight:g}; 0: accuracy only)",
    )
    g = p.add_argument_group("policies and failures")
    g.add_argument(
        "--policies",
        default="all",
        help="comma-separated: none, full-warm, cold, greedy, lp (default: all)",
    )
    g.add_argument(
        "--mode",
        help="comma-separated: sweep (each server fails alone), random (Poisson); "
        "default sweep,random, or trace with --trace",
    )
    g.add_argument("--trace", help="JSON file of explicit failures (mode trace)")
    g.add_argument(
        "--sweep-repair-min",
        type=float,
        default=30.0,
        help="sweep: minutes until the failed server is repaired (default 30)",
    )
    g.add_argument("--sweep-limit", type=int, help="sweep: only N servers, spread evenly")
    g.add_argument("--duration-h", type=float, default=720.0, help="random: hours (default 720)")
    g.add_argument("--server-mtbf-h", type=float, default=2000.0, help="random (default 2000)")
    g.add_argument(
        "--domain-mtbf-h",
        type=float,
        default=20000.0,
        help="random: MTBF of whole domains of 2+ servers (default 20000)",
    )
    g.add_argument(
        "--repair-median-min",
        type=float,
        default=30.0,
        help="random: median repair time, lognormal (default 30)",
    )
    g.add_argument("--max-failures", type=int, help="random: keep the first N failures")
    g.add_argument(
        "--replan-delay-s",
        type=float,
        default=0.5,
        help="from the failover decision to the re-planned placement: the coordinator's "
        "replan_delay_s (default 0.5) plus the solve time if it matters",
    )
    g = p.add_argument_group("output")
    g.add_argument("--out", default="simulate-out", help="output folder (default simulate-out)")
    g.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    g.add_argument("--quiet", action="store_true", help="no progress on stderr")


class _BadInput(Exception):
    pass


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        v = getattr(args, name)
        if v is not None and not (math.isfinite(v) and v > 0):
            flag = "--" + name.replace("_", "-")
            raise _BadInput(f"{flag} must be a positive number, got {v}")


class _Progress:
    """Progress on stderr: a rich bar on a terminal, else a line per tenth of the work."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._rich: Any = None
        self._task: Any = None
        self._label = ""
        self._last = -1
        if not quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            self._rich = Progress(console=Console(stderr=True), transient=True)
            self._rich.start()

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if self._rich is not None:
            if what != self._label:
                if self._task is not None:
                    self._rich.remove_task(self._task)
                self._task = self._rich.add_task(what, total=total)
                self._label = what
            self._rich.update(self._task, completed=done)
            return
        tenth = (10 * done) // max(total, 1)
        if what != self._label or tenth != self._last:
            self._label, self._last = what, tenth
            print(f"[simulate] {what}: {done}/{total}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()


def cmd_simulate(args: argparse.Namespace) -> int:
    from field_kit.simulate.errors import SimulationError

    try:
        return _run(args)
    except (SimulationError, _BadInput) as exc:
        print(f"faillite simulate: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"faillite simulate: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    # Imports here: `faillite --help` must not pay for cvxpy and matplotlib.
    from field_kit.simulate.failures import FailureModel, load_trace
    from field_kit.simulate.policies import parse_policies
    from field_kit.simulate.report import ReportWriter
    from field_kit.simulate.scenario import named
    from field_kit.simulate.simulation import MODES, Simulation, SimulationConfig

    _positive(
        args,
        "memory_scale",
        "sweep_repair_min",
        "duration_h",
        "server_mtbf_h",
        "domain_mtbf_h",
        "repair_median_min",
    )
    for name in ("detection_ms", "replan_delay_s", "mttr_weight"):
        v = getattr(args, name)
        if not (math.isfinite(v) and v >= 0):
            raise _BadInput(f"--{name.replace('_', '-')} must be >= 0, got {v}")
    for name in ("sweep_limit", "max_failures"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise _BadInput(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    policies = parse_policies(args.policies)
    if args.mode:
        modes = tuple(dict.fromkeys(m.strip() for m in args.mode.split(",") if m.strip()))
    else:
        modes = ("trace",) if args.trace else ("sweep", "random")
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise _BadInput(
            f"unknown mode {', '.join(bad) or '(none)'} (choose from {', '.join(MODES)})"
        )
    if "trace" in modes and not args.trace:
        raise _BadInput("mode trace needs --trace FILE")
    for name in ("profiles", "catalog"):
        v = getattr(args, name)
        if v is not None and not Path(v).is_file():
            raise _BadInput(f"--{name}: no such file {v}")
    knobs = Knobs(detection_ms=args.detection_ms, mttr_weight=args.mttr_weight)
    scenario = named(
        args.scenario,
        args.seed,
        args.memory_scale,
        profiles=Path(args.profiles) if args.profiles else None,
        catalog=Path(args.catalog) if args.catalog else None,
        knobs=knobs,
    )
    trace = load_trace(args.trace, scenario.problem) if args.trace else ()
    config = SimulationConfig(
        policies=policies,
        modes=modes,
        sweep_repair_ms=args.sweep_repair_min * 60_000.0,
        sweep_limit=args.sweep_limit,
        duration_h=args.duration_h,
        failure_model=FailureModel(
            server_mtbf_h=args.server_mtbf_h,
            domain_mtbf_h=args.domain_mtbf_h,
            repair_median_min=args.repair_median_min,
        ),
        max_failures=args.max_failures,
        replan_delay_ms=args.replan_delay_s * 1000.0,
        trace=trace,
    )
    progress = _Progress(args.quiet)
    t0 = time.perf_counter()
    try:
        result = Simulation(scenario, config, progress, seed=args.seed).run()
    finally:
        progress.close()
    written = ReportWriter(args.out, plots=not args.no_plots).write(result)
    if not args.quiet:
        print(scenario.budget_statement(), file=sys.stderr)
        print(
            f"[simulate] done in {time.perf_counter() - t0:.1f} s: "
            + ", ".join(str(p) for p in written),
            file=sys.stderr,
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m field_kit.simulate``: the subcommand on its own."""
    parser = argparse.ArgumentParser(
        prog="faillite simulate",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    return cmd_simulate(args)
