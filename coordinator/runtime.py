"""The planner-driven coordinator: detection, failover, progressive upgrades, re-plan, failback.

Threads:
- network (paho): decodes births, last-wills and heartbeats into :class:`Membership`; only
  transitions are queued, nothing slow runs there.
- monitor: ticks the detectors every 10 ms (silence, stalls).
- control: the only thread that changes the plan. A failure is handled at once from the
  precomputed failover table (a lookup and a publish); ladders of cold recoveries and failback
  waves advance as workers' heartbeats confirm each step; SLO violations downsize.
- planner: background re-plans (after a failure, after a worker returns); their result comes
  back to the control thread and is dropped if the membership changed meanwhile.

What the workers are told is always derived from three pieces of state: ``placement`` (the
planner's primaries and backups), ``overrides`` (apps served elsewhere or by another variant
right now: a failover, a ladder rung, a downsize) and ``extra_warm`` (failback pre-loads).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as paho

from coordinator.coordinator import Coordinator, Plan, Planner, WorkerPlan
from coordinator.detectors import DetectorConfig, SloDetector
from coordinator.membership import Membership, Transition
from coordinator.planner import (
    Assign,
    Backup,
    FailoverPlan,
    FailoverTable,
    Knobs,
    Placement,
    Problem,
    ProblemError,
    build_failover_table,
    failback,
    plan,
    plan_failover,
)
from faillite import messages
from faillite.catalog import Catalog
from faillite.config import MeshConfig
from faillite.log import get_logger
from faillite.topics import WORKER_HEARTBEAT, parse

log = get_logger("coordinator")


@dataclass
class Ladder:
    """A cold recovery climbing from the variant that restores service fast to the final one."""

    app: str
    server: str
    rungs: list[str]
    index: int = 0
    generation: int = 0  # generation that asked for the current rung
    since: float = 0.0  # monotonic, when the current rung was confirmed serving

    @property
    def current(self) -> str:
        return self.rungs[self.index]

    @property
    def done(self) -> bool:
        return self.index >= len(self.rungs) - 1


@dataclass
class Failback:
    target: Placement
    loads: dict[str, set[str]]  # server -> variants it must load before the switch
    generation: int
    started: float


@dataclass
class ControlState:
    placement: Placement | None = None
    problem: Problem | None = None
    table: FailoverTable | None = None
    table_valid: bool = False
    overrides: dict[str, Assign] = field(default_factory=dict)
    extra_warm: dict[str, set[str]] = field(default_factory=dict)
    ladders: dict[str, Ladder] = field(default_factory=dict)
    failback: Failback | None = None
    failed: set[str] = field(default_factory=set)
    downsized_at: dict[str, float] = field(default_factory=dict)
    downsized_on: dict[str, str] = field(default_factory=dict)  # app -> worker it shrank on
    gray: dict[str, float] = field(default_factory=dict)  # slow worker -> when it was failed


class _NoPlanner(Planner):
    name = "planner"

    def plan(self, alive: set[str]) -> Plan:  # pragma: no cover - never called
        raise NotImplementedError


class MeshCoordinator(Coordinator):
    """Coordinator with the FailLite planner, failure detection and failover."""

    def __init__(self, mesh: MeshConfig, catalog: Catalog, coordinator_id: str = "main") -> None:
        super().__init__(mesh, catalog, _NoPlanner(), coordinator_id)
        c = mesh.coordinator
        self.ccfg = c
        base = min((w.heartbeat_interval_s for w in mesh.workers), default=0.1)
        fastest = self._detector_cfg(base)
        self.knobs = Knobs(
            mttr_weight=c.mttr_weight,
            detection_ms=(fastest.min_silence_s + fastest.confirm_s) * 1000,
        )
        # Each worker is judged against its own heartbeat interval, with this config's knobs.
        self.membership = Membership(cfg_for=self._detector_cfg)
        self.state = ControlState()
        self.slo: dict[str, SloDetector] = {
            a.id: SloDetector(a.slo_ms, c.slo_sustain_s) for a in mesh.apps
        }
        self._control: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._planning = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.client.subscribe(self.topics.filter(WORKER_HEARTBEAT), self._on_heartbeat, qos=0)
        # While our own link is down every worker looks silent: judge nobody until it is back.
        self.client.on_disconnect(self.membership.blind)
        self.client.on_connect(lambda: self.membership.see(time.monotonic(), c.reconnect_grace_s))

    def _detector_cfg(self, interval_s: float) -> DetectorConfig:
        c = self.ccfg
        return DetectorConfig(
            heartbeat_interval_s=interval_s,
            phi_threshold=c.phi_threshold,
            min_silence_s=c.min_silence_intervals * interval_s,
            max_silence_s=c.max_silence_intervals * interval_s,
            confirm_s=c.confirm_intervals * interval_s,
            stall_s=c.stall_s,
            slo_sustain_s=c.slo_sustain_s,
        )

    # -- network thread --------------------------------------------------------------------

    def _on_worker_status(self, msg: paho.MQTTMessage) -> None:
        parsed = parse(msg.topic)
        if not msg.payload or parsed is None:
            return
        st = self.bad.decode(messages.WorkerStatus, msg)
        if st is None:
            return
        if st.worker != parsed[1].ids["worker"] or st.worker not in self._known_workers():
            self.bad.count("unknown_worker", f"status of {st.worker!r}", topic=msg.topic)
            return
        t = self.membership.on_status(st, time.monotonic())
        if t is not None:
            self._control.put(("transition", t))

    def _on_heartbeat(self, msg: paho.MQTTMessage) -> None:
        hb = self.bad.decode(messages.Heartbeat, msg)
        if hb is None:
            return
        now = time.monotonic()
        t = self.membership.on_heartbeat(hb, now)
        if t is not None:
            self._control.put(("transition", t))
        for app, stats in hb.apps.items():
            det = self.slo.get(app)
            if det is not None and stats.processed:
                det.observe(now, stats.latency_ms)

    def _known_workers(self) -> set[str]:
        return {w.id for w in self.mesh.workers}

    # -- helpers ---------------------------------------------------------------------------

    def _event(self, kind: str, worker: str = "", app: str = "", **detail: Any) -> None:
        ev = messages.Event(
            kind=kind,
            ts=messages.now(),
            source=f"coordinator/{self.id}",
            worker=worker,
            app=app,
            detail=detail,
        )
        self.client.publish(self.topics.events, messages.encode(ev), qos=0)
        log.info(kind, worker=worker or None, app=app or None, **detail)

    def _problem(self, alive: set[str]) -> Problem:
        disk = {}
        for w in alive:
            m = self.membership.get(w)
            if m is not None:
                disk[w] = set(m.status.models_on_disk)
        return Problem.from_config(self.mesh, self.catalog, alive, disk, knobs=self.knobs)

    def _effective(self) -> dict[str, Assign]:
        """Who serves what now: placement primaries under the overrides."""
        s = self.state
        primary = dict(s.placement.primary) if s.placement else {}
        primary.update(s.overrides)
        return {a: p for a, p in primary.items() if p.server not in s.failed}

    def _build_plan(self) -> Plan:
        s = self.state
        serving = self._effective()
        workers: dict[str, WorkerPlan] = {}
        loads = s.placement.by_server() if s.placement else {}
        for w in self.mesh.workers:
            if w.id in s.failed:
                workers[w.id] = WorkerPlan()  # fenced: a falsely suspected worker stops
                continue
            serve = tuple(
                messages.Serve(app, self.mesh.app(app).sensor, a.variant)
                for app, a in sorted(serving.items())
                if a.server == w.id
            )
            load = loads.get(w.id)
            standby = tuple(
                messages.Serve(app, self.mesh.app(app).sensor, v)
                for app, v in (load.warm if load else ())
                if app in serving and serving[app].server != w.id
            )
            warm = set(v for _app, v in load.warm) if load else set()
            warm |= s.extra_warm.get(w.id, set())
            warm -= {x.variant for x in serve}
            disk = set(load.files) if load else set()
            workers[w.id] = WorkerPlan(
                serve=serve, warm=tuple(sorted(warm)), disk=tuple(sorted(disk)), standby=standby
            )
        entries: list[messages.PlacementEntry] = [
            messages.PlacementEntry(app, a.server, a.variant, "primary")
            for app, a in sorted(serving.items())
        ]
        if s.placement is not None:
            entries += [
                messages.PlacementEntry(app, b.server, b.variant, b.kind)
                for app, b in sorted(s.placement.backups.items())
                # A backup that took over (or died) protects nothing until the re-plan.
                if b.server not in s.failed and serving.get(app, b).server != b.server
            ]
        p = s.placement
        return Plan(
            workers,
            tuple(entries),
            solver=p.solver if p else "none",
            objective=p.objective if p else None,
            lp_bound=p.lp_bound if p else None,
            gap=p.gap if p else None,
        )

    def _publish(self, reason: str) -> int:
        self.publish_plan(self._build_plan())
        log.info("published", reason=reason, generation=self.generation)
        return self.generation

    def _route_state(self, app: str, worker: str, variant: str) -> Literal["serving", "degraded"]:
        """Degraded: served by a backup or a smaller variant than the plan's primary."""
        p = self.state.placement
        planned = p.primary.get(app) if p else None
        if planned is None or planned != Assign(worker, variant):
            return "degraded"
        return "serving"

    def _publish_current(self) -> None:
        super()._publish_current()
        if self.deposed:
            return
        # Apps nobody serves get an explicit route, so consumers see the outage.
        with self._lock:
            serving = set(self._effective())
            gen, term = self.generation, self.term
        for a in self.mesh.apps:
            if a.id not in serving and self.state.placement is not None:
                r = messages.Route(
                    app=a.id,
                    worker="",
                    variant="",
                    term=term,
                    generation=gen,
                    since=messages.now(),
                    state="unserved",
                )
                self.client.publish(
                    self.topics.app_route(a.id), messages.encode(r), qos=1, retain=True
                )

    # -- planning --------------------------------------------------------------------------

    def _initial_plan(self) -> None:
        deadline = time.monotonic() + self.ccfg.startup_wait_s
        want = self._known_workers()
        while time.monotonic() < deadline and self.membership.alive() != want:
            self._stop.wait(0.05)
        inh = self.inherited
        if inh is None:
            self._replan("startup", sticky=False)
            return
        # A successor (a standby taking over, a restart): keep what serves where it serves.
        alive = self.membership.alive()
        keep = {
            e.app: Assign(e.worker, e.variant)
            for e in inh.entries
            if e.role == "primary" and e.worker in alive
        }
        keep_backups = {
            e.app: Backup(e.worker, e.variant, e.role)
            for e in inh.entries
            if e.role != "primary" and e.worker in alive
        }
        self._event(
            "coordinator_takeover",
            term=self.term,
            inherited_term=inh.term,
            inherited_generation=inh.generation,
            kept=sorted(keep),
        )
        self._replan("takeover", inherit=(keep, keep_backups))

    def _replan(
        self,
        reason: str,
        *,
        sticky: bool = True,
        delay_s: float = 0.0,
        inherit: tuple[dict[str, Assign], dict[str, Backup]] | None = None,
    ) -> None:
        """Plan on the alive workers in the background; the control thread applies it.

        After a failure the re-plan waits ``delay_s``: it must not compete for the CPU with
        the recovery it follows (the backup's first frames are the MTTR)."""
        alive = self.membership.alive() - self.state.failed
        placement = self.state.placement
        effective = self._effective()

        def work() -> None:
            if delay_s and self._stop.wait(delay_s):
                return
            with self._planning:
                try:
                    problem = self._problem(alive)
                    if not problem.servers:
                        self._control.put(("replanned", (None, None, alive, reason)))
                        return
                    kw: dict[str, Any] = {}
                    if inherit is not None:
                        kw["sticky"], kw["sticky_backups"] = inherit
                    elif sticky and placement is not None:
                        kw["sticky"] = {a: p for a, p in effective.items() if p.server in alive}
                        kw["sticky_backups"] = {
                            a: b
                            for a, b in placement.backups.items()
                            if b.server in alive and a not in self.state.overrides
                        }
                    t0 = time.perf_counter()
                    new = plan(problem, self.ccfg.method, **kw)
                    table = build_failover_table(problem, new)
                    ms = (time.perf_counter() - t0) * 1000
                except ProblemError as exc:
                    log.exception("replan_failed", reason=reason, error=str(exc))
                    return
                self._control.put(("replanned", (problem, (new, table, ms), alive, reason)))

        threading.Thread(target=work, name="planner", daemon=True).start()

    def _apply_replan(
        self, problem: Problem | None, result: Any, alive: set[str], reason: str
    ) -> None:
        s = self.state
        now_alive = self.membership.alive() - s.failed
        if alive != now_alive:
            # Membership moved while planning: a newer re-plan is on its way.
            log.info(
                "replan_dropped", reason=reason, planned_for=sorted(alive), alive=sorted(now_alive)
            )
            if not (now_alive - alive) and not (alive - now_alive):
                return
            self._replan(reason)
            return
        if problem is None or result is None:
            return
        new, table, ms = result
        moving = {a for a, p in self._effective().items() if new.primary.get(a) not in (None, p)}
        if reason in ("joined", "recovered") and moving and s.placement is not None:
            self._start_failback(problem, new, table, moving)
            return
        s.placement, s.problem, s.table, s.table_valid = new, problem, table, True
        # Ladders keep their override until they reach the planned variant.
        s.overrides = {a: o for a, o in s.overrides.items() if a in s.ladders}
        gen = self._publish(f"replan:{reason}")
        self._event(
            "replan",
            reason=reason,
            generation=gen,
            solve_ms=round(ms, 1),
            objective=round(new.objective, 3),
            lp_bound=None if new.lp_bound is None else round(new.lp_bound, 3),
            gap=None if new.gap is None else round(new.gap, 5),
            unprotected=list(new.unprotected()),
            unplaced=dict(new.unplaced),
        )

    # -- failover --------------------------------------------------------------------------

    def _on_failure(self, t: Transition) -> None:
        s = self.state
        t0 = time.perf_counter()
        s.failed.add(t.worker)
        s.failback = None
        if s.placement is None or s.problem is None:
            self._publish("failure-before-plan")
            return
        fp = s.table.for_servers({t.worker}) if (s.table_valid and s.table) else None
        source = "table"
        if fp is None:
            # A cascade (a second failure before the re-plan): plan it now from what runs.
            current = Placement(
                primary=self._effective()
                | {a: p for a, p in s.placement.primary.items() if p.server == t.worker},
                backups={a: b for a, b in s.placement.backups.items() if b.server not in s.failed},
            )
            fp = plan_failover(s.problem, current, {t.worker})
            source = "live"
        self._apply_failover(fp)
        s.table_valid = False
        decision_ms = (time.perf_counter() - t0) * 1000  # the lookup and the new state
        gen = self._publish(f"failover:{t.worker}")
        publish_ms = (time.perf_counter() - t0) * 1000 - decision_ms
        self._event(
            "failover",
            worker=t.worker,
            cause=t.cause,
            generation=gen,
            source=source,
            decision_ms=round(decision_ms, 3),
            publish_ms=round(publish_ms, 3),
            detected_ts=t.ts,
            silence_ms=round(t.silence_s * 1000, 1),
            recoveries={
                a: {
                    "server": r.server,
                    "kind": r.kind,
                    "variant": r.first_variant,
                    "final": r.final_variant,
                }
                for a, r in fp.recoveries.items()
            },
            unrecoverable=dict(fp.unrecoverable),
        )
        for ladder in s.ladders.values():
            if ladder.generation == 0:
                ladder.generation = gen
        self._replan("failure", delay_s=self.ccfg.replan_delay_s)

    def _apply_failover(self, fp: FailoverPlan) -> None:
        s = self.state
        for app, r in fp.recoveries.items():
            s.overrides[app] = Assign(r.server, r.first_variant)
            rungs = [r.first_variant] + [st.variant for st in r.steps if st.action == "upgrade"]
            if len(rungs) > 1:
                s.ladders[app] = Ladder(app, r.server, rungs)
            else:
                s.ladders.pop(app, None)
        for app in fp.unrecoverable:
            s.overrides.pop(app, None)
            s.ladders.pop(app, None)
        # Ladders on the failed server are void; their apps were recovered above or lost.
        for app in [a for a, ld in s.ladders.items() if ld.server in fp.failed_servers]:
            s.ladders.pop(app)

    def _advance_ladders(self, now: float) -> None:
        s = self.state
        changed = []
        for app, ld in list(s.ladders.items()):
            m = self.membership.get(ld.server)
            hb = m.last_heartbeat if m else None
            if hb is None or hb.generation < ld.generation or ld.current not in hb.loaded:
                continue
            stats = hb.apps.get(app)
            if stats is None or stats.processed == 0:
                continue
            if ld.since == 0.0:
                ld.since = now
            if now - ld.since < self.ccfg.ladder_settle_s:
                continue
            if ld.done:
                s.ladders.pop(app)
                planned = s.placement.primary.get(app) if s.placement else None
                if planned == Assign(ld.server, ld.current):
                    s.overrides.pop(app, None)
                self._event("ladder_done", app=app, worker=ld.server, variant=ld.current)
                continue
            ld.index += 1
            ld.since = 0.0
            s.overrides[app] = Assign(ld.server, ld.current)
            changed.append((app, ld))
        if changed:
            gen = self._publish("upgrade")
            for app, ld in changed:
                ld.generation = gen
                self._event(
                    "upgrade",
                    app=app,
                    worker=ld.server,
                    variant=ld.current,
                    previous=ld.rungs[ld.index - 1],
                    generation=gen,
                )

    # -- failback --------------------------------------------------------------------------

    def _start_failback(
        self, problem: Problem, target: Placement, table: FailoverTable, moving: set[str]
    ) -> None:
        s = self.state
        mig = failback(problem, s.placement or target, target=target)
        loads: dict[str, set[str]] = {}
        for mv in mig.moves:
            if mv.action == "load" and mv.app in moving:
                loads.setdefault(mv.server, set()).add(mv.variant)
        if not loads:
            for app in moving:
                a = target.primary[app]
                loads.setdefault(a.server, set()).add(a.variant)
        s.extra_warm = loads
        gen = self._publish("failback-load")
        s.failback = Failback(target, loads, gen, time.monotonic())
        s.problem, s.table, s.table_valid = problem, table, False
        self._event(
            "failback_load",
            generation=gen,
            loads={k: sorted(v) for k, v in loads.items()},
            apps=sorted(moving),
        )

    def _advance_failback(self, now: float) -> None:
        s = self.state
        fb = s.failback
        if fb is None:
            return
        ready = True
        for server, variants in fb.loads.items():
            m = self.membership.get(server)
            hb = m.last_heartbeat if m else None
            if hb is None or hb.generation < fb.generation or not variants <= set(hb.loaded):
                ready = False
        timed_out = now - fb.started > self.ccfg.failback_load_timeout_s
        if not ready and not timed_out:
            return
        # Switch: serve from the target placement; the old copies are released with it.
        s.placement, s.extra_warm, s.failback = fb.target, {}, None
        s.overrides = {a: o for a, o in s.overrides.items() if a in s.ladders}
        s.table_valid = s.table is not None
        gen = self._publish("failback-switch")
        self._event(
            "failback_switch",
            generation=gen,
            timed_out=timed_out,
            load_s=round(now - fb.started, 3),
        )

    # -- SLO -------------------------------------------------------------------------------

    def _check_slo(self, now: float) -> None:
        s = self.state
        for app, det in self.slo.items():
            if not det.violated(now):
                continue
            current = self._effective().get(app)
            if current is None:
                continue
            if now - s.downsized_at.get(app, -1e9) < 30.0:
                if s.downsized_on.get(app) == current.server:
                    # Still over SLO on a smaller variant: the worker is slow, not the model.
                    det.reset()
                    self._gray_failure(app, current.server, now)
                continue
            fam = self.catalog.family_of(current.variant)
            smaller = [
                v
                for v in fam.variants
                if v.memory_mb < self.catalog.variant(current.variant).memory_mb
            ]
            s.downsized_at[app] = now
            s.downsized_on[app] = current.server
            det.reset()
            if not smaller:
                self._event(
                    "slo_violation",
                    app=app,
                    worker=current.server,
                    variant=current.variant,
                    action="none: smallest variant",
                )
                continue
            to = max(smaller, key=lambda v: v.accuracy).name
            s.overrides[app] = Assign(current.server, to)
            gen = self._publish("slo-downsize")
            self._event(
                "slo_violation",
                app=app,
                worker=current.server,
                variant=current.variant,
                action="downsize",
                to=to,
                generation=gen,
            )

    def _gray_failure(self, app: str, worker: str, now: float) -> None:
        m = self.membership.get(worker)
        if m is None or worker in self.state.failed:
            return
        self.state.gray[worker] = now
        self._event(
            "failure_detected",
            worker=worker,
            app=app,
            cause="slo_gray",
            worker_incarnation=m.incarnation,
            silence_ms=0.0,
        )
        self._on_failure(Transition("failed", worker, m.incarnation, "slo_gray", now, time.time()))

    def _advance_gray(self, now: float) -> None:
        s = self.state
        for worker, since in list(s.gray.items()):
            if now - since < self.ccfg.gray_probation_s:
                continue
            del s.gray[worker]
            m = self.membership.get(worker)
            if m is None or m.state != "alive" or worker not in s.failed:
                continue  # it failed for real meanwhile; membership brings it back
            s.failed.discard(worker)
            self._event(
                "worker_recovered",
                worker=worker,
                cause="probation_over",
                worker_incarnation=m.incarnation,
            )
            self._replan("recovered")

    # -- threads ---------------------------------------------------------------------------

    def _handle(self, kind: str, payload: Any) -> None:
        s = self.state
        if kind == "transition":
            t: Transition = payload
            if t.kind == "failed":
                self._event(
                    "failure_detected",
                    worker=t.worker,
                    cause=t.cause,
                    worker_incarnation=t.incarnation,
                    silence_ms=round(t.silence_s * 1000, 1),
                )
                self._on_failure(t)
            elif t.kind in ("joined", "recovered"):
                was_failed = t.worker in s.failed
                s.failed.discard(t.worker)
                self._event(
                    f"worker_{t.kind}",
                    worker=t.worker,
                    cause=t.cause,
                    worker_incarnation=t.incarnation,
                )
                if s.placement is not None and (
                    was_failed
                    or t.worker
                    not in {a.server for a in s.placement.primary.values()}
                    | {b.server for b in s.placement.backups.values()}
                ):
                    self._replan(t.kind)
                elif s.placement is not None:
                    self._publish(f"{t.kind}:{t.worker}")  # a restart: resend its assignment
            elif t.kind == "stale":
                self._event(
                    "stale_offline_ignored",
                    worker=t.worker,
                    worker_incarnation=t.incarnation,
                    reason=t.cause,
                )
        elif kind == "replanned":
            problem, result, alive, reason = payload
            self._apply_replan(problem, result, alive, reason)

    def _control_loop(self) -> None:
        while not self._stop.is_set():
            try:
                kind, payload = self._control.get(timeout=0.02)
            except queue.Empty:
                kind, payload = "", None
            try:
                if kind:
                    with self._lock:
                        self._handle(kind, payload)
                now = time.monotonic()
                with self._lock:
                    self._advance_ladders(now)
                    self._advance_failback(now)
                    self._check_slo(now)
                    self._advance_gray(now)
            except Exception:
                log.exception("control_error", kind=kind)

    def _monitor_loop(self) -> None:
        while not self._stop.wait(0.01):
            for t in self.membership.tick(time.monotonic()):
                self._control.put(("transition", t))

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        th = threading.Thread(target=target, name=name, daemon=True)
        th.start()
        self._threads.append(th)

    def start(self) -> None:
        self.client.start()
        self.acquire_term()
        self._spawn("monitor", self._monitor_loop)
        self._initial_plan()
        self._spawn("control", self._control_loop)

    def wait_planned(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state.placement is not None:
                return True
            time.sleep(0.02)
        return False


def coordinator_for(
    mesh: MeshConfig, catalog: Catalog, coordinator_id: str = "main"
) -> Coordinator:
    """The coordinator the config asks for."""
    if mesh.coordinator.type == "planner":
        return MeshCoordinator(mesh, catalog, coordinator_id)
    from coordinator.coordinator import StaticPlanner

    return Coordinator(mesh, catalog, StaticPlanner(mesh, catalog), coordinator_id)
