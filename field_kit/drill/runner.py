"""Runs drill cases, each on a fresh mesh: steady -> inject -> effect -> recover -> steady ->
check, then writes the report. ``faillite drill`` is :func:`main`."""

from __future__ import annotations

import argparse
import random
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from faillite.catalog import load_catalog
from faillite.config import default_models_dir, packaged_config
from faillite.log import get_logger
from faillite.models.build import build_models
from faillite.stats import percentiles
from field_kit.drill.access_attacks import ACCESS_ATTACKS
from field_kit.drill.analysis import (
    Check,
    Fault,
    Recording,
    check_no_crash,
    check_recovered,
    check_retained,
    check_single_serving,
    retained_snapshot,
)
from field_kit.drill.attacks import ATTACKS
from field_kit.drill.broker_cases import BROKER_CASES
from field_kit.drill.cases import CASES as FAULT_CASES
from field_kit.drill.cases import DrillContext, DrillOptions, FaultCase
from field_kit.drill.chaos import run_chaos
from field_kit.drill.load_cases import LOAD_CASES, parse_order
from field_kit.drill.logged import coordinator_events
from field_kit.drill.mesh import APPS, WORKERS, DrillMesh
from field_kit.drill.own_secret import OUTCOME_ATTACKS
from field_kit.drill.report import write_report

log = get_logger("drill")
# Every case `faillite drill` knows: the fault cases, the load and boot cases (a busy board,
# late boots, slow loads), the broker-pair cases (Mosquitto), then the attack cases (a mesh
# with one account per device, attacked with a stolen credential).
CASES: dict[str, type[FaultCase]] = {
    **FAULT_CASES,
    **LOAD_CASES,
    **BROKER_CASES,
    **ATTACKS,
    **ACCESS_ATTACKS,
    **OUTCOME_ATTACKS,
}


def _say(msg: str) -> None:
    print(msg, flush=True)


def _live_incarnations(mesh: DrillMesh, rec: Recording) -> dict[str, str]:
    out = {}
    for w in WORKERS:
        try:
            mesh.proc(w)
        except LookupError:
            continue
        hbs = rec.heartbeats.get(w, [])
        if hbs:
            out[w] = hbs[-1].incarnation
    return out


def run_case(
    case: FaultCase, opts: DrillOptions, workdir: Path, models_dir: Path
) -> dict[str, Any]:
    """One case on its own mesh; never raises for a failed drill (the result says so)."""
    result: dict[str, Any] = {
        "case": case.name,
        "label": case.label,
        "summary": case.summary,
        "broker": opts.broker,
    }
    why = case.why_not_on(opts)
    if why is not None:
        _say(f"[{case.label}] SKIPPED: {why}")
        return {**result, "status": "skipped", "reason": why, "checks": []}
    mesh_id = f"dr{case.name.lower().replace('_', '')[:10]}{uuid.uuid4().hex[:6]}"
    mesh = DrillMesh(workdir / mesh_id, case.spec(opts), models_dir, mesh_id)
    ctx = DrillContext(mesh, opts)
    checks: list[Check] = []
    fault: Fault | None = None
    end = time.time()
    t_start = time.time()
    try:
        _say(f"[{case.label}] starting a mesh ({opts.broker}) ...")
        case.start(ctx)
        placement = mesh.placement() if mesh.recorder is not None else None
        result["placement_before"] = (
            [f"{e.app}:{e.role}@{e.worker}/{e.variant}" for e in placement.entries]
            if placement
            else []
        )
        _say(
            f"[{case.label}] "
            + (
                f"steady: {', '.join(result['placement_before'])}"
                if result["placement_before"]
                else "no placement yet (the case boots the mesh)"
            )
            + "; injecting"
        )
        fault = case.inject(ctx)
        _say(f"[{case.label}] injected {fault.kind} on {', '.join(fault.targets) or '-'}")
        try:
            case.await_effect(ctx, fault)
            _say(f"[{case.label}] effect observed; recovering")
        except (AssertionError, LookupError) as exc:
            checks.append(Check("effect", False, str(exc)))
        fault = case.recover(ctx, fault)
        try:
            mesh.wait_steady(case.settle_timeout_s)
            checks.append(Check("converged", True, "steady again: served and protected"))
        except AssertionError as exc:
            checks.append(Check("converged", False, str(exc)))
        _say(f"[{case.label}] recovered; checking")
        end = time.time()
        # What the coordinators logged too: a verdict published as the broker went down is
        # missing from the recording, and still a verdict.
        rec = Recording.of(mesh.rec, coordinator_events(mesh.group.logs_dir))
        assert mesh.cfg is not None
        recoverable = case.recoverable(ctx, fault)
        faults = [fault, *ctx.extra_faults]
        for f in faults:
            if f.targets and set(f.targets) <= set(WORKERS):
                checks.append(check_recovered(rec, f, APPS, recoverable, end))
        if not any(c.name == "recovered" for c in checks):
            checks.append(check_recovered(rec, faults[0], APPS, [], end))
        checks.append(check_single_serving(rec, APPS, t_start, mesh.spec.fps))
        checks.append(
            check_retained(
                retained_snapshot(mesh.cfg), mesh.cfg, _live_incarnations(mesh, rec), rec
            )
        )
        checks += case.checks(ctx, rec, fault, end)
        result["metrics"] = case.metrics(ctx, rec, fault)
        lags = [lag * 1000 for ts, lag in rec.heartbeat_lag_s if ts >= t_start]
        if lags:
            p = percentiles(lags)
            result["heartbeat_delivery_ms"] = {
                "p50": round(p.p50, 1),
                "p99": round(p.p99, 1),
                "max": round(max(lags), 1),
            }
        result["timeline"] = _timeline(rec, mesh, faults, t_start, end)
    except Exception as exc:  # a drill that broke is a failed drill, with its reason
        log.exception("drill_error", case=case.name)
        checks.append(Check("ran", False, f"{type(exc).__name__}: {exc}"))
        result["error"] = traceback.format_exc(limit=5)
    finally:
        alive = {c.name: c.alive() for c in mesh.group.children}
        codes = mesh.close()
        tails = {c.name: c.tail(30) for c in mesh.group.children}
        checks.append(check_no_crash(codes, mesh.killed, alive, tails))
    result["fault"] = (
        None
        if fault is None
        else {
            "kind": fault.kind,
            "targets": list(fault.targets),
            "t_inject": fault.t_inject,
            "t_recover": fault.t_recover,
        }
    )
    result["checks"] = [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks]
    result["status"] = "passed" if all(c.ok for c in checks) else "failed"
    result["duration_s"] = round(time.time() - t_start, 1)
    result["logs"] = str(mesh.group.logs_dir)
    for c in checks:
        _say(f"[{case.label}]   {'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}")
    _say(f"[{case.label}] {result['status'].upper()} in {result['duration_s']} s")
    return result


def _timeline(
    rec: Recording, mesh: DrillMesh, faults: list[Fault], t0: float, end: float
) -> dict[str, Any]:
    """What the PNG draws: per app, every result's time, worker, variant and latency."""
    out: dict[str, Any] = {"t0": t0, "end": end, "apps": {}, "events": []}
    for app in APPS:
        out["apps"][app] = [
            [round(r.ts - t0, 3), r.worker, r.variant, round((r.ts - r.capture_ts) * 1000, 1)]
            for r in rec.results.get(app, [])
            if t0 - 5 <= r.ts <= end
        ]
    keep = (
        "failure_detected",
        "failover",
        "upgrade",
        "ladder_done",
        "replan",
        "failback_switch",
        "slo_violation",
        "worker_recovered",
        "worker_joined",
        "coordinator_takeover",
        "shed",
        "unshed",
    )
    out["events"] = [
        [round(e.ts - t0, 3), e.kind, e.worker, e.app]
        for e in rec.events
        if e.kind in keep and t0 - 5 <= e.ts <= end
    ]
    out["faults"] = [
        [
            f.kind,
            list(f.targets),
            round(f.t_inject - t0, 3),
            None if f.t_recover is None else round(f.t_recover - t0, 3),
        ]
        for f in faults
    ]
    return out


def run(
    names: list[str],
    opts: DrillOptions,
    out_dir: Path,
    models_dir: Path,
    repeat: int = 1,
) -> list[dict[str, Any]]:
    """Every case of ``names`` (each parametrized case once per variant, see
    :meth:`FaultCase.variants`), each ``repeat`` times in a row, each run on a fresh mesh."""
    catalog = load_catalog(packaged_config("catalog.yaml"))
    lite = [v.name for v in catalog.family("efficientnet_lite").variants]
    build_models(catalog, models_dir, lite, progress=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [
        (case, i)
        for name in names
        for case in CASES[name]().variants(opts)
        for i in range(1, repeat + 1)
    ]
    results: list[dict[str, Any]] = []
    for n, (case, i) in enumerate(runs, start=1):
        again = f" (run {i}/{repeat})" if repeat > 1 else ""
        _say(f"== case {n}/{len(runs)}: {case.label}{again}")
        result = run_case(case, opts, out_dir / "work", models_dir)
        if repeat > 1:
            result["run"] = i
            _say(run_line(result, i, repeat))
        results.append(result)
        write_report(results, out_dir, opts)
    return results


def _failed_checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in result.get("checks", []) if not c["ok"]]


def run_line(result: dict[str, Any], i: int, repeat: int, width: int = 300) -> str:
    """One run of a repeated case, as progress: its result and, failed, each failed check with
    the start of its detail."""
    label = result.get("label", result["case"])
    head = f"[{label} run {i}/{repeat}] {result['status'].upper()}"
    if result.get("duration_s") is not None:
        head += f" in {result['duration_s']} s"
    if result["status"] == "skipped":
        return f"{head}: {result.get('reason', '')}"
    failed = _failed_checks(result)
    if not failed:
        return head
    parts = []
    for c in failed:
        detail = " ".join(str(c["detail"]).split())
        if len(detail) > width:
            detail = detail[: width - 3] + "..."
        parts.append(f"{c['name']} ({detail})")
    return f"{head}: " + "; ".join(parts)


def repeat_summary(results: list[dict[str, Any]], broker: str) -> list[str]:
    """Per case (label) of ``results``, in first-run order: ``CASE on BROKER: k/n passed``,
    with the failed runs and how often each check failed."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault(r.get("label", r["case"]), []).append(r)
    lines = []
    for label, rs in by.items():
        if all(r["status"] == "skipped" for r in rs):
            lines.append(f"{label} on {broker}: skipped ({rs[0].get('reason', '')})")
            continue
        passed = sum(1 for r in rs if r["status"] == "passed")
        line = f"{label} on {broker}: {passed}/{len(rs)} passed"
        bad = [r for r in rs if r["status"] != "passed"]
        if bad:
            runs = ", ".join(str(r.get("run", j)) for j, r in enumerate(rs, start=1) if r in bad)
            counts: dict[str, int] = {}
            for r in bad:
                for c in _failed_checks(r):
                    counts[c["name"]] = counts.get(c["name"], 0) + 1
            skipped = sum(1 for r in bad if r["status"] == "skipped")
            why = ", ".join(f"{k} x{v}" for k, v in counts.items())
            if skipped:
                why = ", ".join(x for x in (why, f"skipped x{skipped}") if x)
            line += f" (not passed: run {runs}; {why})"
        lines.append(line)
    return lines


def register(sub: Any) -> None:
    p = sub.add_parser(
        "drill",
        help="run named failure drills against a live mesh on this machine",
        description="Each case starts a fresh mesh (broker, leader + standby coordinator, "
        "three workers, two cameras), injects its fault, recovers, and checks: every "
        "recoverable app recovered, never two workers serving one app past fencing, no "
        "process crashed, nothing retained left stale. The attack cases run a mesh with one "
        "account per device and attack it with a stolen credential. Cases: " + ", ".join(CASES),
    )
    p.add_argument("cases", nargs="*", help="case names (default: all); see --list")
    p.add_argument("--case", action="append", help="a case name (repeatable; as positional)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--broker", choices=("amqtt", "mosquitto"), default="amqtt")
    p.add_argument(
        "--long",
        action="store_true",
        help="full form: stress, busy board and lossy links held 10 minutes, workers 60 s "
        "late, six boot orders 20 s apart",
    )
    p.add_argument(
        "--hold",
        type=float,
        help="seconds WIFI_LOSSY / NO_FAIL_WITH_STRESS / BUSY_BOARD hold their fault or load",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run each case N times, each on a fresh mesh; prints each run and a pass count "
        "per case (exit 1 unless every run passed)",
    )
    p.add_argument(
        "--order",
        action="append",
        metavar="ROLES",
        help="BOOT_ORDER: a boot order, e.g. cameras,workers,coordinator,broker (repeatable; "
        "default: the broker last in the short form, six orders in the long one)",
    )
    p.add_argument(
        "--boot-delay",
        type=float,
        metavar="S",
        help="BOOT_ORDER: seconds between two roles (4 short, 20 long); LATE_WORKERS: how long "
        "after the coordinators the workers start (15 short, 60 long)",
    )
    p.add_argument(
        "--chaos",
        action="store_true",
        help="the seeded chaos soak instead of cases: random kills, freezes, slowdowns, CPU "
        "hogs, partitions, broker restarts and leader kills on one mesh, invariants checked "
        "all along (exit 1 on any violation)",
    )
    p.add_argument("--minutes", type=float, default=10.0, help="--chaos: how long (default 10)")
    p.add_argument(
        "--seed", type=int, help="--chaos: the schedule's seed (default: a random one, printed)"
    )
    p.add_argument("--out", default="drill-out", help="report directory (default ./drill-out)")
    p.add_argument("--models-dir", help="where model files live (built if missing)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.list:
        for name, cls in CASES.items():
            tags = [
                *(["root"] if cls.needs_root else []),
                *(["attack"] if name in {**ATTACKS, **ACCESS_ATTACKS, **OUTCOME_ATTACKS} else []),
                *([cls.needs_broker] if cls.needs_broker else []),
            ]
            tag = "".join(f" [{t}]" for t in tags)
            _say(f"{name:<20}{tag:<21}{cls.summary}")
        return 0
    if getattr(args, "chaos", False):
        return _chaos(args)
    names = [n.upper() for n in [*args.cases, *(args.case or [])]] or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        _say(f"unknown case(s): {', '.join(unknown)}; known: {', '.join(CASES)}")
        return 2
    if args.repeat < 1:
        _say("--repeat takes a count of 1 or more")
        return 2
    try:
        orders = tuple(parse_order(o) for o in args.order or ())
    except ValueError as exc:
        _say(str(exc))
        return 2
    opts = DrillOptions(
        broker=args.broker,
        short=not args.long,
        hold_s=args.hold,
        orders=orders,
        boot_delay_s=args.boot_delay,
    )
    models_dir = Path(args.models_dir).resolve() if args.models_dir else default_models_dir()
    out = Path(args.out).resolve()
    results = run(names, opts, out, models_dir, args.repeat)
    failed = [r.get("label", r["case"]) for r in results if r["status"] == "failed"]
    skipped = [r.get("label", r["case"]) for r in results if r["status"] == "skipped"]
    _say(f"report: {out / 'report.md'}")
    if args.repeat > 1:
        for line in repeat_summary(results, opts.broker):
            _say(line)
        # A case this machine cannot run (root, the pair) is skipped, and says why: only a
        # failed run fails the repeat.
        return 1 if failed else 0
    _say(
        f"{len(results) - len(failed) - len(skipped)} passed, {len(failed)} failed, "
        f"{len(skipped)} skipped" + (f" (failed: {', '.join(failed)})" if failed else "")
    )
    return 1 if failed else 0


def _chaos(args: argparse.Namespace) -> int:
    if args.cases or args.case:
        _say("--chaos takes no case names")
        return 2
    if args.minutes <= 0:
        _say("--minutes takes a positive number")
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    models_dir = Path(args.models_dir).resolve() if args.models_dir else default_models_dir()
    return run_chaos(args.minutes, seed, args.broker, Path(args.out).resolve(), models_dir)
