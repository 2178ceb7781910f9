"""A kit's uplink to its rear site over a WiFi-like link: what arrives, how late, and what an
outage costs. Two Mosquitto brokers in network namespaces and ``faillite uplink`` as a real
process (:mod:`field_kit.uplink_rig`; root and Mosquitto needed).

1. Steady: results at ``--rate`` for ``--steady-s``: delivered and dropped, latency up (feeder
   publish to rear-broker delivery, one clock) p50 / p99.
2. Outage: the link is cut for ``--cut-s`` while results keep coming at the same rate, then
   healed: the queue's high-water mark, what was dropped (oldest first) and delivered, and the
   time to drain: from the heal to the last queued result's arrival upstream, and the uplink's
   own measure (from its reconnection to an empty queue).

Run: ``python bench/uplink.py [--rate 20] [--steady-s 10] [--cut-s 8] [--bound 100] [--json]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from field_kit.brokers import mosquitto_binary
from field_kit.drill.netns import Impairment, root_problem
from field_kit.procs import wait_until
from field_kit.uplink_rig import MESH, RearRig, RigSettings, read_records

PREFIX = f"rear/{MESH}"
STATUS = f"{PREFIX}/uplink/rear/status"
RESULTS = f"{PREFIX}/apps/a1/results/w1"


def _results(rear: Path, tag: str) -> dict[int, float]:
    """seq -> latency (s) of each result of ``tag`` that arrived upstream (first arrival)."""
    out: dict[int, float] = {}
    for r in read_records(rear):
        if r["topic"] != RESULTS:
            continue
        p = orjson.loads(r["payload"])
        if p["tag"] == tag and p["seq"] not in out:
            out[p["seq"]] = r["t"] - p["ts"]
    return out


def _arrivals(rear: Path, tag: str) -> list[float]:
    times = []
    for r in read_records(rear):
        if r["topic"] == RESULTS and orjson.loads(r["payload"])["tag"] == tag:
            times.append(r["t"])
    return times


def _status(rear: Path) -> dict[str, Any] | None:
    mine = [orjson.loads(r["payload"]) for r in read_records(rear) if r["topic"] == STATUS]
    online = [s for s in mine if s["state"] == "online"]
    return online[-1] if online else None


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run(args: argparse.Namespace) -> dict[str, Any]:
    imp = Impairment(delay_ms=args.delay_ms, jitter_ms=args.jitter_ms, loss_pct=args.loss_pct)
    settings = RigSettings(
        impairment=imp, max_queued_messages=args.bound, max_inflight=args.inflight
    )
    with (
        tempfile.TemporaryDirectory(prefix="bench-uplink-") as tmp,
        RearRig(Path(tmp), settings) as rig,
    ):
        rear = rig.record("rear", "ops", f"{PREFIX}/#")
        if wait_until(lambda: _status(rear), 20) is None:
            raise RuntimeError("the uplink never reported to the rear broker")
        n_steady = round(args.rate * args.steady_s)
        rig.feed("--results", str(n_steady), "--rate", f"{args.rate:g}", "--tag", "steady",
                 "--pad", str(args.pad))  # fmt: skip
        wait_until(lambda: len(_results(rear, "steady")) >= n_steady, 30)
        steady = _results(rear, "steady")
        lat_ms = sorted(v * 1000 for v in steady.values())

        n_cut = round(args.rate * args.cut_s)
        rig.cut()
        rig.feed("--results", str(n_cut), "--rate", f"{args.rate:g}", "--tag", "cut",
                 "--pad", str(args.pad))  # fmt: skip
        rig.heal()
        healed = time.time()

        def drained() -> dict[str, Any] | None:
            st = _status(rear)
            if st is None or not st["rear_connected"] or st["queued"] or st["inflight"]:
                return None
            return st if st["last_drain_s"] is not None else None

        status: dict[str, Any] | None = wait_until(drained, 120)
        if status is None:
            raise RuntimeError("the uplink did not drain within 120 s of the heal")
        time.sleep(1.0)
        cut = _results(rear, "cut")
        arrivals = _arrivals(rear, "cut")
        return {
            "link": rig.link_mode,
            "impairment": {
                "delay_ms": imp.delay_ms,
                "jitter_ms": imp.jitter_ms,
                "loss_pct": imp.loss_pct,
            },
            "rate_per_s": args.rate,
            "payload_bytes": args.pad + 60,
            "queue_bound": args.bound,
            "max_inflight": args.inflight,
            "steady": {
                "sent": n_steady,
                "delivered": len(steady),
                "lost": n_steady - len(steady),
                "latency_ms_p50": round(_pct(lat_ms, 50), 1),
                "latency_ms_p99": round(_pct(lat_ms, 99), 1),
                "latency_ms_max": round(max(lat_ms), 1) if lat_ms else None,
            },
            "outage": {
                "cut_s": args.cut_s,
                "sent": n_cut,
                "delivered": len(cut),
                "dropped": status["dropped_by_kind"].get("results", 0),
                "unaccounted": n_cut - len(cut) - status["dropped_by_kind"].get("results", 0),
                "newest_delivered": max(cut) == n_cut - 1 if cut else False,
                "queue_high_water": status["high_water"],
                "outage_seen_by_uplink_s": status["last_outage_s"],
                "drain_after_heal_s": round(max(arrivals) - healed, 2) if arrivals else None,
                "drain_after_reconnect_s": round(status["last_drain_s"], 2),
            },
        }


def _text(r: dict[str, Any]) -> str:
    s, o, imp = r["steady"], r["outage"], r["impairment"]
    return "\n".join(
        [
            f"uplink over a WiFi-like link ({r['link']}: {imp['delay_ms']:g} ms ± "
            f"{imp['jitter_ms']:g} ms, {imp['loss_pct']:g} % loss), {r['rate_per_s']:g} "
            f"results/s of {r['payload_bytes']} B, queue bound {r['queue_bound']}, "
            f"in flight {r['max_inflight']}",
            f"steady: delivered {s['delivered']}/{s['sent']}, lost {s['lost']}, latency up "
            f"p50 {s['latency_ms_p50']} ms, p99 {s['latency_ms_p99']} ms "
            f"(max {s['latency_ms_max']} ms)",
            f"outage {o['cut_s']:g} s: sent {o['sent']}, delivered {o['delivered']}, dropped "
            f"{o['dropped']} (oldest first; unaccounted {o['unaccounted']}), newest delivered: "
            f"{o['newest_delivered']}, queue high-water {o['queue_high_water']}",
            f"drain: {o['drain_after_heal_s']} s from the heal to the last result upstream, "
            f"{o['drain_after_reconnect_s']} s from the uplink's reconnection to an empty queue "
            f"(outage as the uplink saw it: {o['outage_seen_by_uplink_s']:.1f} s)",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=20.0, help="results per second")
    p.add_argument("--steady-s", type=float, default=10.0)
    p.add_argument("--cut-s", type=float, default=8.0)
    p.add_argument("--bound", type=int, default=100, help="uplink.max_queued_messages")
    p.add_argument("--inflight", type=int, default=16, help="uplink.max_inflight")
    p.add_argument("--pad", type=int, default=200, help="padding bytes per result")
    p.add_argument("--delay-ms", type=float, default=20.0)
    p.add_argument("--jitter-ms", type=float, default=15.0)
    p.add_argument("--loss-pct", type=float, default=2.0)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    problem = root_problem() or (None if mosquitto_binary() else "mosquitto is not installed")
    if problem is not None:
        print(f"bench/uplink.py: {problem}", file=sys.stderr)
        return 2
    result = run(args)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() if args.json else _text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
