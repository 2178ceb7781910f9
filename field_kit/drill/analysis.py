"""What a drill recording says: failover metrics and the invariants every case must keep.

Times are wall clock (every process runs on this machine): results and events carry the
timestamp their publisher stamped; faults are stamped by the drill when it injects them.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from faillite import messages
from faillite.catalog import Catalog
from faillite.config import MeshConfig
from faillite.identity import Identity
from faillite.mqtt import MeshClient, Raw
from faillite.reported import refusal
from faillite.topics import Role, Topics, parse
from field_kit.drill.logged import merge_events
from field_kit.recorder import Recorder

OVERLAP_GRACE_S = 1.0  # in-flight frames of a handover; longer than this is two servers


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str  # kill, stop, slow, cut, impair, stress, broker_restart, kill_coordinator
    targets: tuple[str, ...]  # worker ids, coordinator ids or "broker"
    t_inject: float
    t_recover: float | None = None


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Recording:
    """The recorder's messages decoded once, by kind."""

    results: dict[str, list[messages.Result]] = field(default_factory=dict)
    events: list[messages.Event] = field(default_factory=list)
    heartbeats: dict[str, list[messages.Heartbeat]] = field(default_factory=dict)
    # Heartbeat stamped by its worker -> arrival here: how far behind the broker runs.
    heartbeat_lag_s: list[tuple[float, float]] = field(default_factory=list)  # (ts, lag)
    # Results and heartbeats whose payload names another worker or app than their topic: the
    # broker lets only a worker's own account write its topics, so the topic says who wrote
    # one; such a message is a forgery (an attack case's) and is believed by nobody.
    wrong_topic: int = 0

    @classmethod
    def of(cls, rec: Recorder, logged: Sequence[messages.Event] = ()) -> Recording:
        """``logged``: events from the coordinators' logs, for those the recorder missed."""
        out = cls()
        wall = time.time() - time.monotonic()
        for t, topic, payload in rec.raw():
            parsed = parse(topic)
            if parsed is None or not payload:
                continue
            name, ids = parsed[1].spec.name, parsed[1].ids
            try:
                if name == "app_results":
                    r = messages.decode(messages.Result, payload)
                    if (r.app, r.worker) != (ids.get("app"), ids.get("worker")):
                        out.wrong_topic += 1
                        continue
                    out.results.setdefault(r.app, []).append(r)
                elif name == "events":
                    ev = messages.decode(messages.Event, payload)
                    if refusal(topic, ev) is not None:
                        out.wrong_topic += 1
                        continue
                    out.events.append(ev)
                elif name == "worker_heartbeat":
                    hb = messages.decode(messages.Heartbeat, payload)
                    if hb.worker != ids.get("worker"):
                        out.wrong_topic += 1
                        continue
                    out.heartbeats.setdefault(hb.worker, []).append(hb)
                    out.heartbeat_lag_s.append((hb.ts, t + wall - hb.ts))
            except messages.MessageError:
                continue
        for rs in out.results.values():
            rs.sort(key=lambda r: r.ts)
        out.events = merge_events(out.events, logged)
        return out

    def events_of(self, kind: str, since: float = 0.0) -> list[messages.Event]:
        return [e for e in self.events if e.kind == kind and e.ts >= since]


def _first(xs: Iterable[Any]) -> Any:
    return next(iter(xs), None)


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


def failover_metrics(
    rec: Recording, fault: Fault, apps: Sequence[str], catalog: Catalog
) -> dict[str, Any]:
    """Detection, decision, loading, reconfiguration, MTTR and accuracy while degraded of
    the failover(s) that followed ``fault``; per app and for the fault as a whole."""
    t0 = fault.t_inject
    targets = set(fault.targets)
    det = _first(e for e in rec.events_of("failure_detected", t0) if e.worker in targets)
    fo = _first(e for e in rec.events_of("failover", t0) if e.worker in targets)
    out: dict[str, Any] = {
        "detection_ms": _ms(det.ts - t0) if det else None,
        "detection_cause": det.detail.get("cause") if det else None,
        "decision_ms": fo.detail.get("decision_ms") if fo else None,
        "failover_source": fo.detail.get("source") if fo else None,
        "apps": {},
    }
    # Each app's last recovery onto a server that survived (a cascade re-recovers).
    recoveries: dict[str, Any] = {}
    for e in rec.events_of("failover", t0):
        if e.worker in targets:
            for app, r in e.detail.get("recoveries", {}).items():
                if r["server"] not in targets:
                    recoveries[app] = {
                        **r,
                        "failover_ts": e.ts,
                        "generation": int(e.detail.get("generation", 0)),
                    }
    end = fault.t_recover or float("inf")
    loading, reconf = [], []
    for server in sorted({r["server"] for r in recoveries.values()}):
        mine = [r for r in recoveries.values() if r["server"] == server]
        fo_ts = min(r["failover_ts"] for r in mine)
        gen = min(r["generation"] for r in mine)
        applied = _first(
            e
            for e in rec.events_of("assignment_applied", fo_ts)
            if e.worker == server and int(e.detail.get("generation", 0)) >= gen and e.ts <= end
        )
        if applied is not None:
            reconf.append(applied.ts - fo_ts)
        firsts = {r["variant"] for r in mine}
        loads = [
            float(e.detail.get("load_ms", 0.0))
            for e in rec.events_of("model_loaded", fo_ts)
            if e.worker == server
            and e.detail.get("variant") in firsts
            and (applied is None or e.ts <= applied.ts + 0.001)
        ]
        loading.append(sum(loads) / 1000)
    out["loading_ms"] = _ms(max(loading)) if loading else None
    out["reconfiguration_ms"] = _ms(max(reconf)) if reconf else None
    mttrs = []
    for app in apps:
        rs = rec.results.get(app, [])
        before = [r for r in rs if r.ts < t0]
        orig = before[-1] if before else None
        after = [r for r in rs if r.ts >= t0 and r.worker not in targets]
        first = after[0] if after else None
        a: dict[str, Any] = {
            "recovered": first is not None,
            "mttr_ms": _ms(first.ts - t0) if first else None,
            "recovered_on": first.worker if first else None,
            "first_variant": first.variant if first else None,
            "accuracy_before": catalog.variant(orig.variant).accuracy if orig else None,
        }
        if first is not None and orig is not None:
            # Degraded: from the fault until the app is back on its own variant and server.
            degraded = []
            for r in after:
                if r.worker == orig.worker and r.variant == orig.variant:
                    break
                degraded.append(r)
            if degraded:
                accs = [catalog.variant(r.variant).accuracy for r in degraded]
                a["accuracy_while_degraded"] = round(sum(accs) / len(accs), 3)
                a["accuracy_loss_points"] = round(
                    a["accuracy_before"] - a["accuracy_while_degraded"], 3
                )
                a["degraded_s"] = round(degraded[-1].ts - t0, 2)
                a["variants_while_degraded"] = sorted({r.variant for r in degraded})
            mttrs.append(first.ts - t0)
        out["apps"][app] = a
    out["mttr_ms"] = _ms(max(mttrs)) if mttrs else None
    return out


def service_gaps(
    rec: Recording, apps: Sequence[str], since: float, until: float
) -> dict[str, float]:
    """Longest time without a result, per app, in [since, until] (ms)."""
    out = {}
    for app in apps:
        ts = [since] + [r.ts for r in rec.results.get(app, []) if since <= r.ts <= until] + [until]
        out[app] = round(max(b - a for a, b in itertools.pairwise(ts)) * 1000, 1)
    return out


def false_suspicions(rec: Recording, since: float, targets: Iterable[str] = ()) -> list[str]:
    """Failures declared against workers nobody harmed."""
    harmed = set(targets)
    return [
        f"{e.worker} ({e.detail.get('cause')}) at +{e.ts - since:.2f}s"
        for e in rec.events_of("failure_detected", since)
        if e.worker not in harmed
    ]


# -- invariants ------------------------------------------------------------------------------


def check_recovered(
    rec: Recording, fault: Fault, apps: Sequence[str], recoverable: Iterable[str], end: float
) -> Check:
    missing = []
    for app in recoverable:
        rs = [r for r in rec.results.get(app, []) if r.ts >= fault.t_inject]
        if not any(r.worker not in fault.targets for r in rs):
            missing.append(app)
    stale = [a for a in apps if not any(r.ts >= end - 2.0 for r in rec.results.get(a, []))]
    ok = not missing and not stale
    detail = "every recoverable app recovered and is served at the end"
    if missing:
        detail = f"not recovered: {', '.join(missing)}"
    if stale:
        detail += f"; no results in the last 2 s: {', '.join(stale)}"
    return Check("recovered", ok, detail)


class ServedResult(Protocol):
    """What serving segments read of a result: who served it, and when."""

    @property
    def worker(self) -> str: ...

    @property
    def ts(self) -> float: ...


def serving_segments(
    results: Sequence[ServedResult], gap_s: float
) -> dict[str, list[tuple[float, float]]]:
    """Per worker, its runs of results with no gap over ``gap_s``."""
    segs: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        cur = segs.setdefault(r.worker, [])
        if cur and r.ts - cur[-1][1] <= gap_s:
            cur[-1] = (cur[-1][0], r.ts)
        else:
            cur.append((r.ts, r.ts))
    return segs


def check_single_serving(rec: Recording, apps: Sequence[str], since: float, fps: float) -> Check:
    """No two workers publish results for one app at once for longer than a handover."""
    worst: tuple[float, str] = (0.0, "")
    for app in apps:
        rs = [r for r in rec.results.get(app, []) if r.ts >= since]
        segs = serving_segments(rs, max(0.6, 3.0 / fps))
        ws = sorted(segs)
        for i, w1 in enumerate(ws):
            for w2 in ws[i + 1 :]:
                for a0, a1 in segs[w1]:
                    for b0, b1 in segs[w2]:
                        ov = min(a1, b1) - max(a0, b0)
                        if ov > worst[0]:
                            worst = (ov, f"{app}: {w1} and {w2} both served for {ov:.2f} s")
    ok = worst[0] <= OVERLAP_GRACE_S
    detail = worst[1] if worst[1] else "never two servers for one app"
    if ok and worst[1]:
        detail = f"longest overlap {worst[0]:.2f} s (a handover, within {OVERLAP_GRACE_S} s)"
    return Check("single_serving", ok, detail)


def check_no_crash(
    codes: dict[str, int | None],
    killed: set[str],
    alive: dict[str, bool],
    tails: dict[str, str] | None = None,
) -> Check:
    """Every process the drill did not kill was alive at the check and stopped cleanly.

    ``tails`` (the last lines of each process's log) are quoted for the ones that crashed.
    """
    bad = [n for n, up in alive.items() if not up and n not in killed]
    bad += [f"{n} exit {c}" for n, c in codes.items() if n not in killed and c not in (0, -15)]
    if not bad:
        return Check("no_crash", True, "every process alive and stopped cleanly")
    crashed = {n.split(" ")[0] for n in bad}
    quoted = "".join(
        f"\n--- last lines of {n}'s log ---\n{t}" for n, t in (tails or {}).items() if n in crashed
    )
    return Check("no_crash", False, "crashed or failed: " + ", ".join(bad) + quoted)


RETAINED_STATE = (
    "workers/+/status",
    "workers/+/assignment",
    "apps/+/route",
    "coordinator/status",
    "placement",
    "sensors/+/status",
)


def retained_snapshot(
    cfg: MeshConfig, wait_s: float = 1.0, filters: Sequence[str] = RETAINED_STATE
) -> dict[str, bytes]:
    """The retained messages of the mesh under ``filters`` (relative to the mesh's prefix; by
    default its retained state), as a fresh subscriber (mosquitto_sub) sees them."""
    topics = Topics(cfg.mesh)
    got: dict[str, bytes] = {}
    lock = threading.Lock()

    def on(msg: Raw) -> None:
        if msg.retain:
            with lock:
                got[msg.topic] = msg.payload

    client = MeshClient(Identity(cfg.mesh, Role.ADMIN, "snapshot").name, cfg.broker)
    for f in filters:
        client.subscribe(f"{topics.prefix}/{f}", on)
    client.start(connect_timeout=15)
    time.sleep(wait_s)
    client.stop()
    return got


def check_retained(
    snapshot: dict[str, bytes],
    cfg: MeshConfig,
    live_incarnations: dict[str, str],
    rec: Recording,
) -> Check:
    """Nothing retained is stale: statuses match the live processes, assignments, routes and
    placement all carry the leader's term and the current generation."""
    t = Topics(cfg.mesh)
    problems: list[str] = []

    def get(topic: str, cls: type[Any]) -> Any:
        raw = snapshot.get(topic)
        if not raw:
            problems.append(f"nothing retained on {topic}")
            return None
        try:
            return messages.decode(cls, raw)
        except messages.MessageError as exc:
            problems.append(f"{topic}: {exc}")
            return None

    leader = get(t.coordinator_status, messages.CoordinatorStatus)
    if leader is not None and leader.state != "leader":
        problems.append(f"coordinator status says {leader.state}")
    placement = get(t.placement, messages.Placement)
    term = leader.term if leader else None
    for w in cfg.workers:
        st = get(t.worker_status(w.id), messages.WorkerStatus)
        inc = live_incarnations.get(w.id)
        if st is not None:
            if inc is None and st.state == "online":
                problems.append(f"{w.id}: retained online, but it is not running")
            if inc is not None and (st.state != "online" or st.incarnation != inc):
                problems.append(
                    f"{w.id}: retained {st.state}/{st.incarnation}, live incarnation {inc}"
                )
        a = get(t.worker_assignment(w.id), messages.Assignment)
        if a is not None and term is not None and a.term != term:
            problems.append(f"{w.id}: assignment of term {a.term}, leader's term {term}")
        if a is not None and placement is not None and a.generation != placement.generation:
            problems.append(
                f"{w.id}: assignment generation {a.generation}, placement {placement.generation}"
            )
    if placement is not None and term is not None and placement.term != term:
        problems.append(f"placement of term {placement.term}, leader's term {term}")
    for app in cfg.apps:
        r = get(t.app_route(app.id), messages.Route)
        if r is None:
            continue
        if term is not None and r.term != term:
            problems.append(f"route of {app.id}: term {r.term}, leader's term {term}")
        last = rec.results.get(app.id, [])
        if r.worker and last and last[-1].worker != r.worker:
            problems.append(
                f"route of {app.id} says {r.worker}, results come from {last[-1].worker}"
            )
    return Check(
        "no_stale_retained",
        not problems,
        "retained state matches the live mesh" if not problems else "; ".join(problems),
    )
