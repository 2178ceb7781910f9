"""An observer of a running mesh: results per app, workers' status and the mesh's events
(failures, failovers, joins), as a live table or a summary.

The summary says what failed over: for every ``failover`` event, when the worker failed and
why, where each of its apps went, and how long each app waited for its first result from its
new worker (MTTR as the user sees it). It also says whether every app was still being served
at the end of the run.

Results are believed only from the worker that the app's retained route names
(:class:`~faillite.routes.RouteFilter`): the observer follows the routes too, and the summary
counts the refused results by reason (``refused_results``) and those accepted before the app
had any route (``unverified_results``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from faillite import messages
from faillite.badinput import BadInput
from faillite.config import ConfigError, MeshConfig
from faillite.identity import Identity
from faillite.mqtt import Inbound, MeshClient
from faillite.reported import refusal
from faillite.routes import RouteFilter, Verdict, app_of
from faillite.signing import SigningError, mesh_verifier
from faillite.stats import RateMeter, Window, percentiles
from faillite.topics import (
    APP_RESULTS,
    APP_ROUTE,
    WORKER_STATUS,
    Role,
    Topics,
    parse,
)

# An app is still served at the end when its last result came at most this long before the end
# (or three frame intervals of its sensor, if longer).
if TYPE_CHECKING:  # rich is the live view's (demo, drill): a node's `kit check` has none
    from rich.table import Table

SERVED_WITHIN_S = 5.0
# A longer gap between two results of an app is an outage: the seconds past it are counted.
UNSERVED_GAP_S = 1.0
# Events the summary lists besides failovers (bounded: a flapping worker must not grow it).
NOTABLE_EVENTS = (
    "failure_detected",
    "worker_joined",
    "worker_recovered",
    "stale_offline_ignored",
    "coordinator_takeover",
    "upgrade",
    "ladder_done",
    "failback_switch",
    "shed",
    "unshed",
    "verdict_withheld",
)
MAX_NOTABLE = 200
MAX_RECENT = 500  # the latest events of every kind, for a live view (faillite watch)


@dataclass
class Segment:
    """A run of consecutive results of one app from one worker under one generation."""

    worker: str
    generation: int
    variant: str
    first_ts: float  # wall clock, arrival here
    last_ts: float
    results: int = 1


@dataclass
class AppView:
    app: str
    results: int = 0
    worker: str = ""
    variant: str = ""
    label: str = ""
    score: float = 0.0
    generation: int = 0  # of the last result from its routed worker
    unverified: int = 0  # results accepted before the app had a route
    rate: RateMeter = field(default_factory=RateMeter)
    e2e: Window = field(default_factory=lambda: Window(100_000))
    inference: Window = field(default_factory=lambda: Window(100_000))
    labels: Counter[str] = field(default_factory=Counter)
    workers: Counter[str] = field(default_factory=Counter)
    first_ts: float = 0.0
    last_ts: float = 0.0
    segments: list[Segment] = field(default_factory=list)
    # Seconds past a gap's first UNSERVED_GAP_S without a result: unserved, or paused on
    # purpose (its route said "shed" during the gap).
    unserved_s: float = 0.0
    paused_s: float = 0.0
    longest_gap_s: float = 0.0
    shed_seen_at: float = 0.0  # wall clock: its route last said "shed"

    def gap(self, until: float, within: float) -> None:
        """No result from ``last_ts`` to ``until``: count what exceeds ``within``."""
        if not self.last_ts or until <= self.last_ts:
            return
        gap = until - self.last_ts
        self.longest_gap_s = max(self.longest_gap_s, gap)
        if gap > within:
            if self.shed_seen_at >= self.last_ts:
                self.paused_s += gap - within
            else:
                self.unserved_s += gap - within


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


class MeshObserver:
    """Subscribes to results, worker status, placement and events of one mesh (read-only)."""

    def __init__(self, cfg: MeshConfig, client_id: str = "observer") -> None:
        self.cfg = cfg
        self.topics = Topics(cfg.mesh)
        self.apps: dict[str, AppView] = {a.id: AppView(a.id) for a in cfg.apps}
        self.workers: dict[str, messages.WorkerStatus] = {}
        self.bad = BadInput()  # what did not decode, counted by the client's subscriptions
        try:
            verifier = mesh_verifier(cfg.coordinator.signing, cfg.mesh)
        except SigningError as exc:
            raise ConfigError(f"coordinator.signing: {exc}") from exc
        # Whose results to believe; refusals counted by reason.
        self.routes = RouteFilter(verifier=verifier)
        self._lock = threading.Lock()
        self.t0 = time.time()  # wall clock of the run's start (see mark_start)
        self.failovers: list[messages.Event] = []
        self.notable: list[messages.Event] = []
        self.event_counts: Counter[str] = Counter()
        self.backups: dict[str, str] = {}
        self.recent: deque[messages.Event] = deque(maxlen=MAX_RECENT)
        self.events_total = 0  # every event seen; the latest MAX_RECENT are in ``recent``
        self.leader: messages.CoordinatorStatus | None = None
        self.identity = Identity(cfg.mesh, Role.OBSERVER, client_id)
        self.client = MeshClient(
            self.identity.name,
            cfg.broker,
            bad=self.bad,
        )
        c, t = self.client, self.topics
        c.subscribe_json(
            t.filter(APP_ROUTE),
            messages.Route,
            self._on_route,
            qos=1,
            on_cleared=self._on_route_cleared,
        )
        c.subscribe_json(t.filter(APP_RESULTS), messages.Result, self._on_result, qos=0)
        c.subscribe_json(t.filter(WORKER_STATUS), messages.WorkerStatus, self._on_status, qos=1)
        c.subscribe_json(t.placement, messages.Placement, self._on_placement, qos=1)
        c.subscribe_json(
            t.coordinator_status, messages.CoordinatorStatus, self._on_coordinator, qos=1
        )
        c.subscribe_json(t.events, messages.Event, self._on_event, qos=0)

    def mark_start(self) -> None:
        """The run starts now: the summary's times are seconds since this."""
        self.t0 = time.time()

    # -- network thread --------------------------------------------------------------------

    def _on_route(self, inb: Inbound[messages.Route]) -> None:
        with self._lock:
            v = self.apps.get(inb.message.app)
            if v is not None and inb.message.state == "shed":
                v.shed_seen_at = time.time()
            for rel in self.routes.on_route(inb.message, topic_app=app_of(inb.topic)):
                self._take(rel.result, rel.received, rel.verdict)

    def _on_route_cleared(self, topic: str) -> None:
        app = app_of(topic)
        if app is not None:
            self.routes.forget(app)

    def _on_result(self, inb: Inbound[messages.Result]) -> None:
        r = inb.message
        now = time.time()
        with self._lock:
            if r.app not in self.apps and self.routes.route(r.app) is None:
                # Neither configured nor routed by the coordinator: made up (bounded memory).
                self.routes.refused.count(
                    "result_unknown_app", f"result of unknown app {r.app!r}", worker=r.worker
                )
                return
            verdict = self.routes.check(r, topic=inb.topic, received=now)
            if verdict.accepted:
                self._take(r, now, verdict)

    def _take(self, r: messages.Result, now: float, verdict: Verdict) -> None:
        """Count an accepted result that arrived at ``now`` (wall clock). Call with the lock held.

        Only results from the routed worker say who serves the app now; a handover result
        (the previous route's worker, within the grace) and an unverified one are counted but
        move nothing that later results are judged by."""
        v = self.apps.get(r.app)
        if v is None:
            v = self.apps[r.app] = AppView(r.app)
        v.results += 1
        if verdict is Verdict.UNVERIFIED:
            v.unverified += 1
        if verdict is not Verdict.HANDOVER:
            v.worker, v.variant = r.worker, r.variant
        if verdict is Verdict.ROUTED:
            v.generation = r.generation
        if r.top:
            v.label, v.score = r.top[0].label, r.top[0].score
            v.labels[r.top[0].label] += 1
        v.workers[r.worker] += 1
        v.rate.tick(time.monotonic())
        v.e2e.add((now - r.capture_ts) * 1000)
        v.inference.add(r.latency.inference_ms)
        v.gap(now, self._gap_within(v.app))
        v.first_ts = min(v.first_ts, now) if v.first_ts else now
        v.last_ts = max(v.last_ts, now)  # a released held result arrived a moment ago
        seg = v.segments[-1] if v.segments else None
        if seg is not None and seg.worker == r.worker and seg.generation == r.generation:
            seg.last_ts = max(seg.last_ts, now)
            seg.results += 1
        else:
            v.segments.append(Segment(r.worker, r.generation, r.variant, now, now))

    def _on_placement(self, inb: Inbound[messages.Placement]) -> None:
        p = inb.message
        backups = {
            e.app: f"{e.worker} {e.role} {e.variant}" for e in p.entries if e.role != "primary"
        }
        with self._lock:
            self.backups = backups

    def _on_status(self, inb: Inbound[messages.WorkerStatus]) -> None:
        parsed = parse(inb.topic)
        if parsed is None:
            return
        st = inb.message
        with self._lock:
            self.workers[parsed[1].ids["worker"]] = st

    def _on_coordinator(self, inb: Inbound[messages.CoordinatorStatus]) -> None:
        with self._lock:
            self.leader = inb.message

    def _on_event(self, inb: Inbound[messages.Event]) -> None:
        ev = inb.message
        why = refusal(inb.topic, ev, retained=inb.retain)
        if why is not None:
            self.bad.count(why, f"{ev.source!r} reported {ev.kind!r}", topic=inb.topic)
            return
        with self._lock:
            self.recent.append(ev)
            self.events_total += 1
            self.event_counts[ev.kind] += 1
            if ev.kind == "failover":
                self.failovers.append(ev)
            elif ev.kind in NOTABLE_EVENTS and len(self.notable) < MAX_NOTABLE:
                self.notable.append(ev)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float | None = 30.0) -> None:
        """Connect; ``timeout`` None: keep trying in the background (see ``client.connected``)."""
        self.client.start(connect_timeout=timeout)

    def stop(self) -> None:
        self.client.stop()

    # -- views -----------------------------------------------------------------------------

    def events_after(self, seen: int) -> tuple[int, list[messages.Event]]:
        """The events after the first ``seen`` (those still kept), and the count seen now."""
        with self._lock:
            total = self.events_total
            new = min(total - seen, len(self.recent))
            return total, list(self.recent)[len(self.recent) - new :] if new > 0 else []

    def latest_events(self, n: int) -> list[messages.Event]:
        with self._lock:
            return list(self.recent)[-n:] if n > 0 else []

    def all_served(self) -> bool:
        with self._lock:
            return all(v.results > 0 for v in self.apps.values())

    def table(self) -> Table:
        from rich.table import Table

        t = Table(title=f"FailLite mesh '{self.cfg.mesh}': results", expand=False)
        for col in (
            "app",
            "worker",
            "variant",
            "top label",
            "score",
            "fps",
            "results",
            "e2e p50 ms",
            "e2e p99 ms",
            "infer p50 ms",
            "backup",
        ):
            t.add_column(
                col,
                justify="right"
                if col[0].isdigit() or "ms" in col or col in ("fps", "results", "score")
                else "left",
            )
        now = time.monotonic()
        with self._lock:
            for v in self.apps.values():
                e2e = v.e2e.snapshot()
                inf = v.inference.snapshot()
                t.add_row(
                    v.app,
                    v.worker or "-",
                    v.variant or "-",
                    v.label or "-",
                    f"{v.score:.2f}",
                    f"{v.rate.rate(now):.1f}",
                    str(v.results),
                    f"{e2e.p50:.1f}",
                    f"{e2e.p99:.1f}",
                    f"{inf.p50:.1f}",
                    self.backups.get(v.app, "none"),
                )
            online = sorted(w for w, s in self.workers.items() if s.state == "online")
            last = self.failovers[-1] if self.failovers else None
            leader = self.leader
        caption = f"workers online: {', '.join(online) or 'none'}"
        if leader is not None and leader.state == "leader":
            caption += f"; leader: {leader.coordinator} (term {leader.term})"
        elif leader is not None:
            caption += f"; no leader ({leader.coordinator} {leader.state})"
        if last is not None:
            moved = ", ".join(
                f"{app}->{r.get('server', '?')}"
                for app, r in last.detail.get("recoveries", {}).items()
            )
            caption += (
                f"; failovers: {len(self.failovers)}, last: {last.worker} "
                f"({last.detail.get('cause', '?')}) at {last.ts - self.t0:.1f}s"
                + (f": {moved}" if moved else "")
            )
        refused = sum(self.routes.refused.snapshot().values())
        if refused:
            caption += f"; refused results (not from the routed worker): {refused}"
        t.caption = caption
        return t

    def line(self) -> str:
        now = time.monotonic()
        with self._lock:
            parts = [
                f"{v.app}: {v.results} results {v.rate.rate(now):.1f}/s via "
                f"{v.worker or '-'}/{v.variant or '-'} top={v.label or '-'}"
                for v in self.apps.values()
            ]
            n = len(self.failovers)
        refused = sum(self.routes.refused.snapshot().values())
        return (
            " | ".join(parts)
            + (f" | failovers: {n}" if n else "")
            + (f" | refused results: {refused}" if refused else "")
        )

    # -- summary ---------------------------------------------------------------------------

    def _gap_within(self, app: str) -> float:
        try:
            fps = self.cfg.sensor(self.cfg.app(app).sensor).fps
        except ConfigError:
            return UNSERVED_GAP_S
        return max(UNSERVED_GAP_S, 3.0 / fps)

    def _served_within(self, app: str) -> float:
        try:
            fps = self.cfg.sensor(self.cfg.app(app).sensor).fps
        except ConfigError:  # an app the config does not name (another mesh's results)
            return SERVED_WITHIN_S
        return max(SERVED_WITHIN_S, 3.0 / fps)

    def _failover_summary(self, ev: messages.Event) -> dict[str, Any]:
        """One failover: when, which worker and why, and per app where it went and how long
        the app waited for its first result from there. Call with the lock held."""
        d = ev.detail
        detected = float(d.get("detected_ts") or ev.ts)
        silence_ms = float(d.get("silence_ms") or 0.0)
        # The failure itself: the last sign of life the coordinator had (a last-will is
        # immediate: no silence; a silent death is detected after its heartbeat silence).
        failed = detected - silence_ms / 1000
        generation = int(d.get("generation") or 0)
        recoveries: dict[str, Any] = {}
        for app, rec in (d.get("recoveries") or {}).items():
            server = str(rec.get("server", ""))
            v = self.apps.get(app)
            segs = v.segments if v is not None else []
            first = next(
                (
                    s
                    for s in segs
                    if s.worker == server and (s.generation >= generation or s.first_ts >= failed)
                ),
                None,
            )
            before = [s.last_ts for s in segs if first is not None and s.last_ts < first.first_ts]
            recoveries[app] = {
                "server": server,
                "kind": rec.get("kind", ""),
                "variant": rec.get("variant", ""),
                "final": rec.get("final", rec.get("variant", "")),
                "first_result_s": _r(first.first_ts - self.t0, 3) if first else None,
                "first_result_variant": first.variant if first else None,
                # failure -> first result from the new worker, as this observer saw it
                "mttr_ms": _r((first.first_ts - failed) * 1000) if first else None,
                # the app's longest wait: its last result before -> first from the new worker
                "gap_ms": _r((first.first_ts - max(before)) * 1000) if first and before else None,
            }
        return {
            "t_s": round(failed - self.t0, 3),
            "detected_s": round(detected - self.t0, 3),
            "failover_s": round(ev.ts - self.t0, 3),
            "worker": ev.worker,
            "cause": d.get("cause", ""),
            "silence_ms": _r(silence_ms),
            "decision_ms": d.get("decision_ms"),
            "source": d.get("source", ""),
            "generation": generation,
            "recoveries": recoveries,
            "unrecoverable": dict(d.get("unrecoverable") or {}),
        }

    def summary(self, duration_s: float, end: float | None = None) -> dict[str, Any]:
        end = time.time() if end is None else end
        self.routes.expire()  # held results whose route never came count as refused now
        with self._lock:
            failovers = [self._failover_summary(ev) for ev in self.failovers]
            apps: dict[str, dict[str, Any]] = {}
            for v in self.apps.values():
                e2e = percentiles(v.e2e.values())
                inf = percentiles(v.inference.values())
                within = self._served_within(v.app)
                # The app's last failover (its worker failed), and whether it was recovered.
                last_fo = next(
                    (
                        f
                        for f in reversed(failovers)
                        if v.app in f["recoveries"] or v.app in f["unrecoverable"]
                    ),
                    None,
                )
                if v.results == 0:
                    served, why = False, "no results"
                elif last_fo is not None and self.t0 + last_fo["t_s"] > v.last_ts:
                    # Nothing since its last failover: still being recovered, or lost.
                    since_fo = end - (self.t0 + last_fo["t_s"])
                    recovered = v.app in last_fo["recoveries"]
                    served = recovered and since_fo <= within
                    why = (
                        f"no result since its failover {since_fo:.1f} s before the end"
                        if recovered
                        else f"unrecoverable after {last_fo['worker']} failed"
                    )
                else:
                    served = end - v.last_ts <= within
                    why = f"last result {end - v.last_ts:.1f} s before the end"
                route = self.routes.route(v.app)
                tail = replace(v)  # the gap up to the end counts, without changing the view
                if route is not None and route.state == "shed":
                    tail.shed_seen_at = end
                tail.gap(end, self._gap_within(v.app))
                # Paused by the coordinator under overload: not served, but on purpose, said
                # and bounded (never a critical app); a run that shed is not a failed run.
                shed = route is not None and route.state == "shed"
                if shed and not served:
                    why = "paused under overload (route state shed)"
                apps[v.app] = {
                    "results": v.results,
                    "fps": round(v.results / duration_s, 2) if duration_s > 0 else 0.0,
                    "workers": dict(v.workers),
                    "worker": v.worker,
                    "variant": v.variant,
                    "top_labels": dict(v.labels.most_common(3)),
                    "e2e_ms": {
                        "p50": round(e2e.p50, 2),
                        "p90": round(e2e.p90, 2),
                        "p99": round(e2e.p99, 2),
                        "max": round(e2e.max, 2),
                    },
                    "inference_ms": {"p50": round(inf.p50, 2), "p99": round(inf.p99, 2)},
                    "first_result_s": _r(v.first_ts - self.t0, 3) if v.results else None,
                    "last_result_age_s": _r(end - v.last_ts, 3) if v.results else None,
                    "served_at_end": served,
                    "shed_at_end": shed,
                    "served_detail": why,
                    "unverified_results": v.unverified,
                    "unserved_s": round(tail.unserved_s, 2),
                    "paused_s": round(tail.paused_s, 2),
                    "longest_gap_s": round(tail.longest_gap_s, 2),
                }
            notable = [
                {
                    "t_s": round(e.ts - self.t0, 3),
                    "kind": e.kind,
                    "worker": e.worker,
                    "app": e.app,
                    **{k: e.detail[k] for k in ("cause", "variant") if k in e.detail},
                }
                for e in self.notable
            ]
            counts = dict(self.event_counts)
        return {
            "mesh": self.cfg.mesh,
            "duration_s": round(duration_s, 2),
            "apps": apps,
            "all_served": all(a["results"] > 0 for a in apps.values()),
            "served_at_end": all(a["served_at_end"] for a in apps.values()),
            # Every app served at the end, or paused on purpose under overload.
            "served_or_shed_at_end": all(
                a["served_at_end"] or a["shed_at_end"] for a in apps.values()
            ),
            # Seconds any app went without results past UNSERVED_GAP_S (3 frames at least),
            # once results had started; paused: while its route said it was shed on purpose.
            "unserved_s": round(sum(a["unserved_s"] for a in apps.values()), 2),
            "paused_s": round(sum(a["paused_s"] for a in apps.values()), 2),
            "failovers": failovers,
            "events": notable,
            "event_counts": counts,
            "bad_messages": self.bad.snapshot(),
            # Results not believed (not from the worker the app's route names...), by reason,
            # and those accepted before their app had a route (no coordinator route yet).
            "refused_results": self.routes.refused.snapshot(),
            "unverified_results": self.routes.unverified_total,
        }
