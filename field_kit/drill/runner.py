"""Runs drill cases, each on a fresh mesh: steady -> inject -> effect -> recover -> steady ->
check, then writes the report. ``faillite drill`` is :func:`main`."""

from __future__ import annotations

import argparse
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
from field_kit.drill.mesh import APPS, WORKERS, DrillMesh
from field_kit.drill.report import write_report

log = get_logger("drill")
# Every case `faillite drill` knows: the fault cases, the broker-pair cases (Mosquitto), then
# the attack cases (a mesh with one account per device, attacked with a stolen credential).
CASES: dict[str, type[FaultCase]] = {**FAULT_CASES, **BROKER_CASES, **ATTACKS}


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
    result: dict[str, Any] = {"case": case.name, "summary": case.summary, "broker": opts.broker}
    why = case.why_not_on(opts)
    if why is not None:
        _say(f"[{case.name}] SKIPPED: {why}")
        return {**result, "status": "skipped", "reason": why, "checks": []}
    mesh_id = f"dr{case.name.lower().replace('_', '')[:10]}{uuid.uuid4().hex[:6]}"
    mesh = DrillMesh(workdir / mesh_id, case.spec(opts), models_dir, mesh_id)
    ctx = DrillContext(mesh, opts)
    checks: list[Check] = []
    fault: Fault | None = None
    end = time.time()
    t_start = time.time()
    try:
        _say(f"[{case.name}] starting a mesh ({opts.broker}) ...")
        mesh.start()
        mesh.wait_steady(90)
        placement = mesh.placement()
        result["placement_before"] = (
            [f"{e.app}:{e.role}@{e.worker}/{e.variant}" for e in placement.entries]
            if placement
            else []
        )
        _say(f"[{case.name}] steady: {', '.join(result['placement_before'])}; injecting")
        fault = case.inject(ctx)
        _say(f"[{case.name}] injected {fault.kind} on {', '.join(fault.targets) or '-'}")
        try:
            case.await_effect(ctx, fault)
            _say(f"[{case.name}] effect observed; recovering")
        except (AssertionError, LookupError) as exc:
            checks.append(Check("effect", False, str(exc)))
        fault = case.recover(ctx, fault)
        try:
            mesh.wait_steady(90)
            checks.append(Check("converged", True, "steady again: served and protected"))
        except AssertionError as exc:
            checks.append(Check("converged", False, str(exc)))
        _say(f"[{case.name}] recovered; checking")
        end = time.time()
        rec = Recording.of(mesh.rec)
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
        _say(f"[{case.name}]   {'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}")
    _say(f"[{case.name}] {result['status'].upper()} in {result['duration_s']} s")
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
    names: list[str], opts: DrillOptions, out_dir: Path, models_dir: Path
) -> list[dict[str, Any]]:
    catalog = load_catalog(packaged_config("catalog.yaml"))
    lite = [v.name for v in catalog.family("efficientnet_lite").variants]
    build_models(catalog, models_dir, lite, progress=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for i, name in enumerate(names, start=1):
        _say(f"== case {i}/{len(names)}: {name}")
        results.append(run_case(CASES[name](), opts, out_dir / "work", models_dir))
        write_report(results, out_dir, opts)
    return results


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
        "--long", action="store_true", help="full form: stress and lossy links held 10 minutes"
    )
    p.add_argument("--hold", type=float, help="seconds WIFI_LOSSY / NO_FAIL_WITH_STRESS hold")
    p.add_argument("--out", default="drill-out", help="report directory (default ./drill-out)")
    p.add_argument("--models-dir", help="where model files live (built if missing)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.list:
        for name, cls in CASES.items():
            tag = " [root]" if cls.needs_root else " [attack]" if name in ATTACKS else ""
            tag = f" [{cls.needs_broker}]" if cls.needs_broker else tag
            _say(f"{name:<20}{tag:<13}{cls.summary}")
        return 0
    names = [n.upper() for n in [*args.cases, *(args.case or [])]] or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        _say(f"unknown case(s): {', '.join(unknown)}; known: {', '.join(CASES)}")
        return 2
    opts = DrillOptions(broker=args.broker, short=not args.long, hold_s=args.hold)
    models_dir = Path(args.models_dir).resolve() if args.models_dir else default_models_dir()
    out = Path(args.out).resolve()
    results = run(names, opts, out, models_dir)
    failed = [r["case"] for r in results if r["status"] == "failed"]
    skipped = [r["case"] for r in results if r["status"] == "skipped"]
    _say(f"report: {out / 'report.md'}")
    _say(
        f"{len(results) - len(failed) - len(skipped)} passed, {len(failed)} failed, "
        f"{len(skipped)} skipped" + (f" (failed: {', '.join(failed)})" if failed else "")
    )
    return 1 if failed else 0
