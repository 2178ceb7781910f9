"""Where one broker stops being enough for this mesh, on Mosquitto and on the embedded broker.

For each broker (a real process on a free loopback port, started as the tests start them,
:class:`field_kit.brokers.BrokerLauncher`), the load generator (:mod:`field_kit.loadgen`) runs
ramps that stop by themselves at the first step where the broker is no longer enough:

- frames: cameras doubling (2, 4 ... 64) at 30 fps and at 10 fps, for each frame size
  (20 KB, 100 KB, 500 KB JPEGs in the mesh's envelope), a worker per 4 cameras, each camera's
  frames to its primary and its warm standby, every worker heartbeating at 10 Hz;
- control only: more and more workers heartbeating (16 ... 512), with their statuses and
  assignments, read by one coordinator.

Limits (:class:`field_kit.loadgen.Limits`): frames or heartbeats delivered below 95 % of
offered, frame latency p99 over 200 ms, heartbeat lag p99 over the coordinator's margin
(``LINK_MARGIN`` x 100 ms = 150 ms). The table gives, per broker and load, the last step that was
enough, the limit hit past it and who saturated (broker, generator or the host's shared cores).
A step over a limit is tried once more (``--confirm``) before it counts: on a host shared with
other work, a busy moment is not the broker's limit.

Run: ``python bench/broker_limits.py [--json docs/bench/broker_limits.json]
[--plot docs/bench/broker_limits.png]``; ``--quick`` for a few small steps (the tests).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from coordinator.membership import LINK_MARGIN
from field_kit.brokers import BROKER_KINDS, BrokerLauncher, BrokerUnavailableError
from field_kit.loadgen import (
    HEARTBEAT_INTERVAL_S,
    LATENCY_P99_MS,
    Limits,
    Load,
    LoadGenerator,
    RampResult,
    StepResult,
    Timing,
    camera_steps,
    control_steps,
    ramp,
)

MESH = "loadgen"


def _bytes(text: str) -> int:
    t = text.strip().lower()
    for suffix, mult in (("kb", 1000), ("k", 1000), ("mb", 1_000_000), ("m", 1_000_000)):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(t)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--brokers", default=",".join(BROKER_KINDS), help="amqtt,mosquitto")
    p.add_argument("--sizes", default="20k,100k,500k", help="frame (JPEG) sizes")
    p.add_argument("--fps", default="30,10")
    p.add_argument("--cameras", default="2,4,8,16,32,64", help="camera steps")
    p.add_argument("--workers", default="16,64,128,256,512", help="control-only worker steps")
    p.add_argument("--no-control", action="store_true", help="skip the control-only ramps")
    p.add_argument("--latency-ms", type=float, default=LATENCY_P99_MS, help="frame p99 bound")
    p.add_argument(
        "--heartbeat-lag-ms",
        type=float,
        default=None,
        help="heartbeat lag p99 bound (default: LINK_MARGIN heartbeat intervals)",
    )
    p.add_argument("--procs", type=int, default=2, help="generator processes (+1 coordinator)")
    p.add_argument("--measure-s", type=float, default=1.25)
    p.add_argument("--warmup-s", type=float, default=0.5)
    p.add_argument("--max-wall-s", type=float, default=30.0, help="per ramp")
    p.add_argument(
        "--confirm",
        type=int,
        default=1,
        help="tries again of a step over a limit before it counts (a shared host's busy moments)",
    )
    p.add_argument("--quick", action="store_true", help="a few small steps (tests)")
    p.add_argument("--json", type=Path, help="write every step here")
    p.add_argument("--plot", type=Path, help="a PNG of the limits (matplotlib: extra 'plot')")
    return p


def _plan(args: argparse.Namespace) -> list[tuple[str, list[Load]]]:
    if args.quick:
        return [
            ("frames 20KB@10fps", camera_steps(10, 20_000, cameras=(1, 2))),
            ("control", control_steps((4,))),
        ]
    plans = [
        (f"frames {_bytes(s) // 1000}KB@{fps:g}fps", camera_steps(fps, _bytes(s), cameras=cams))
        for s in args.sizes.split(",")
        for fps in (float(f) for f in args.fps.split(","))
        for cams in [_ints(args.cameras)]
    ]
    if not args.no_control:
        plans.append(("control", control_steps(_ints(args.workers))))
    return plans


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _progress_of(kind: str, line: str) -> None:
    _progress(f"{kind} {line}")


def _fmt_step(s: StepResult | None) -> tuple[str, str, str, str, str]:
    if s is None:
        return "none", "-", "-", "-", "-"
    load = s.load
    if load.cameras:
        what = f"{load.cameras} cam x {load.fps:g} fps"
        rate = f"{load.in_mb_per_s:.1f} / {load.out_mb_per_s:.1f}"
    else:
        what = f"{load.workers} workers"
        rate = "-"
    per_msg = s.broker_cores / load.messages_per_s * 1e6 if load.messages_per_s else math.nan
    return what, rate, f"{load.messages_per_s:.0f}", f"{s.broker_cores:.2f}", f"{per_msg:.0f}"


def table(results: list[tuple[str, RampResult]]) -> str:
    head = (
        "broker",
        "load",
        "last step enough",
        "MB/s in/out",
        "msg/s",
        "broker cpu",
        "us/msg",
        "frame p99",
        "hb p99",
        "stopped by",
        "saturated",
        "cpu there b/g/o",
    )
    rows = [head]
    for kind, r in results:
        ok = r.last_ok
        what, rate, msgs, cpu, per_msg = _fmt_step(ok)
        lim = r.limit_step
        stop = r.stop
        if lim is not None:
            stop = f"{lim.limit} at {lim.load.cameras or lim.load.workers}"
        rows.append(
            (
                kind,
                r.name,
                what,
                rate,
                msgs,
                cpu,
                per_msg,
                f"{ok.frame_latency.p99_ms:.0f} ms" if ok and ok.load.cameras else "-",
                f"{ok.heartbeat_lag.p99_ms:.0f} ms" if ok and ok.heartbeats_sent else "-",
                stop,
                lim.bottleneck if lim is not None else "-",
                (
                    f"{lim.broker_cores:.2f}/{lim.generator_cores:.2f}/{lim.others_cores:.2f}"
                    if lim is not None
                    else "-"
                ),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(results: list[tuple[str, RampResult]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _progress("matplotlib is not installed (pip install 'faillite[plot]'): no plot")
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for kind, marker in (("mosquitto", "o"), ("amqtt", "s")):
        for _, r in ((k, r) for k, r in results if k == kind and r.name != "control"):
            xs = [s.load.in_mb_per_s for s in r.steps if s.frames_sent]
            ys = [s.frame_latency.p99_ms for s in r.steps if s.frames_sent]
            if xs:
                ax1.plot(xs, ys, marker=marker, label=f"{kind} {r.name.removeprefix('frames ')}")
        for _, r in ((k, r) for k, r in results if k == kind and r.name == "control"):
            xs = [s.load.workers for s in r.steps]
            ys = [s.heartbeat_lag.p99_ms for s in r.steps]
            ax2.plot(xs, ys, marker=marker, label=kind)
    ax1.axhline(LATENCY_P99_MS, color="grey", ls="--", lw=1)
    ax1.set(
        xscale="log",
        yscale="log",
        xlabel="frames offered into the broker (MB/s)",
        ylabel="frame latency p99 (ms)",
        title="Frames: latency until the first limit",
    )
    ax1.legend(fontsize=7)
    ax2.axhline(LINK_MARGIN * HEARTBEAT_INTERVAL_S * 1000.0, color="grey", ls="--", lw=1)
    ax2.set(
        xscale="log",
        yscale="log",
        xlabel="workers heartbeating at 10 Hz",
        ylabel="heartbeat lag p99 (ms)",
        title="Control plane only",
    )
    ax2.legend()
    fig.suptitle("One broker's limits (shared 2-core host: indicative)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run(args: argparse.Namespace) -> tuple[list[tuple[str, RampResult]], list[str]]:
    if args.quick:
        timing = Timing(warmup_s=0.3, measure_s=0.7, drain_s=0.3)
    else:
        timing = Timing(warmup_s=args.warmup_s, measure_s=args.measure_s)
    limits = Limits(latency_p99_ms=args.latency_ms, heartbeat_lag_p99_ms=args.heartbeat_lag_ms)
    plans = _plan(args)
    results: list[tuple[str, RampResult]] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="broker-limits-") as tmp:
        for kind in args.brokers.split(","):
            with BrokerLauncher(Path(tmp) / kind) as launcher:
                try:
                    ep = launcher.start(kind, mesh=MESH)
                except BrokerUnavailableError as exc:
                    _progress(f"[{kind}] skipped: {exc}")
                    skipped.append(f"{kind}: {exc}")
                    continue
                for name, loads in plans:
                    proc = launcher.process(ep)
                    if not proc.alive():  # a ramp that killed it: a fresh one for the next
                        ep = launcher.start(kind, mesh=MESH)
                        proc = launcher.process(ep)
                    with LoadGenerator(
                        ep.host,
                        ep.port,
                        broker_pid=proc.proc.pid,
                        mesh=MESH,
                        procs=args.procs,
                        timing=timing,
                    ) as gen:
                        res = ramp(
                            gen,
                            loads,
                            name=name,
                            limits=limits,
                            max_wall_s=args.max_wall_s,
                            confirm=0 if args.quick else args.confirm,
                            progress=functools.partial(_progress_of, kind),
                            alive=proc.alive,
                        )
                    results.append((kind, res))
    return results, skipped


def _summary(r: RampResult) -> dict[str, Any]:
    ok, lim = r.last_ok, r.limit_step
    out: dict[str, Any] = {"stop": r.stop, "last_ok": None, "limit": None}
    if ok is not None:
        load = ok.load
        out["last_ok"] = {
            "cameras": load.cameras,
            "fps": load.fps,
            "frame_bytes": load.frame_bytes,
            "workers": load.workers,
            "in_mb_per_s": load.in_mb_per_s,
            "out_mb_per_s": load.out_mb_per_s,
            "messages_per_s": load.messages_per_s,
            "broker_cores": ok.broker_cores,
            "broker_us_per_message": ok.broker_cores / load.messages_per_s * 1e6,
        }
    if lim is not None:
        out["limit"] = {"reason": lim.limit, "detail": lim.detail, "bottleneck": lim.bottleneck}
    return out


def _terminated(_sig: int, _frame: object) -> None:
    raise SystemExit(143)  # unwinds: every broker and generator process is stopped


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if threading.current_thread() is not threading.main_thread():
        return _main(args)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return _main(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    results, skipped = run(args)
    wall = time.monotonic() - started
    print(table(results))
    print(
        f"\n{os.cpu_count()} cores, shared with the generator (and anything else running): "
        f"indicative figures. {wall:.0f} s. MB/s: frames into / out of the broker; msg/s: "
        "deliveries (frames to each receiving worker, control); us/msg: the broker's CPU time "
        "per delivery at that step; cpu there: the broker, the "
        "generator and the host's other processes, in cores, at the step that hit the limit."
    )
    for kind, r in results:
        lim = r.limit_step
        if lim is not None and lim.bottleneck == "generator":
            print(
                f"{kind} {r.name}: the generator, not the broker, saturated "
                f"({lim.generator_saturated}); the broker's limit is higher."
            )
    if args.json:
        doc = {
            "command": "python bench/broker_limits.py " + " ".join(sys.argv[1:]),
            "host": {"cpus": os.cpu_count(), "note": "loopback, generator on the same host"},
            "wall_s": wall,
            "limits": asdict(Limits(args.latency_ms, heartbeat_lag_p99_ms=args.heartbeat_lag_ms)),
            "skipped": skipped,
            "ramps": [{"broker": kind, **_summary(r), **r.to_dict()} for kind, r in results],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(
            orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        )
    if args.plot:
        plot(results, args.plot)
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
