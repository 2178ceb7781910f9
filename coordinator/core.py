"""The coordinator's decisions: one pure core, typed events in, typed decisions out.

:meth:`CoordinatorCore.handle` takes one :mod:`~coordinator.events` event (a birth, a
last-will, a heartbeat, a clock tick, a plan that is ready, a leader change...) and returns the
:mod:`~coordinator.decisions` it leads to (publish the retained state of a new generation,
emit an event, ask for a plan). No MQTT, no threads, no clock: time comes in with the events,
and the caller serializes the calls (:mod:`coordinator.service` from one control thread, unit
tests from a fake clock).

What the workers are told is always derived from three pieces of state: ``placement`` (the
planner's primaries and backups), ``overrides`` (apps served elsewhere or by another variant
right now: a failover, a ladder rung, a downsize) and ``extra_warm`` (failback pre-loads).

Phases: ``waiting`` for a term; ``starting``: leading, waiting ``startup_wait_s`` at most for
every worker's birth (what membership sees meanwhile is held, then handled in order once the
first plan is asked for); ``running``; ``stepped_down`` (a successor leads: nothing more). A
leader with no plan yet (no worker was up, or none could serve) plans again whenever a worker
joins: boards boot in any order, at any delay.

Decisions on live workers are never worse than doing nothing (:mod:`coordinator.safety`): a
worker over its apps' SLOs sheds load by priority (:mod:`coordinator.shedding`) unless it alone
is slow (:mod:`coordinator.pace`) and its apps would be served better elsewhere; a stalled
worker whose apps no other worker could take keeps them. One verdict per worker at a time: the
core's own (``slo_gray``) goes through membership like the detectors' verdicts.

A strategy that does not adapt (a static plan) is published once and nobody is judged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from coordinator.decisions import (
    Decision,
    EmitEvent,
    Note,
    PublishObituary,
    PublishState,
    RequestPlan,
    RetainedState,
    RouteState,
    WorkerPlan,
)
from coordinator.detectors import DetectorConfig
from coordinator.events import (
    BrokerHeard,
    Event,
    HeartbeatSeen,
    InheritedPlacement,
    LinkDown,
    LinkUp,
    Observed,
    PlanFailed,
    PlanReady,
    ProfileReported,
    ResultSeen,
    SteppedDown,
    TermAcquired,
    Tick,
    WorkerBirth,
    WorkerOffline,
)
from coordinator.membership import Membership, Transition
from coordinator.outcomes import OutcomeConfig, OutcomeWatch
from coordinator.pace import PaceConfig, PaceJudge
from coordinator.planner import (
    Assign,
    Backup,
    FailoverPlan,
    FailoverTable,
    Placement,
    Problem,
    failback,
    plan_failover,
)
from coordinator.planning import PlanRequest
from coordinator.profiles import ProfileBook
from coordinator.safety import MoveVerdict, judge_move
from coordinator.shedding import LADDER, THROTTLE_SHARE, ShedConfig, Shedder, ShedStep
from coordinator.wills import WillHold, read_offline
from faillite import messages
from faillite.catalog import Catalog
from faillite.config import MeshConfig

Phase = Literal["waiting", "starting", "running", "stepped_down"]
WITHHELD_EVERY_S = 10.0  # a withheld verdict is said again at most this often per worker
# A worker given new apps is not judged slow this soon after (at least 2 x slo_sustain_s): its
# handover queueing and its heartbeat's latency window (25 results) must pass first.
SETTLE_MIN_S = 10.0
# A replayed birth of a dead worker gets its obituary back at most this often: a live worker
# (behind a healed partition) answers each obituary with its birth again.
REPUT_EVERY_S = 1.0


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
    gray: dict[str, float] = field(default_factory=dict)  # slow worker -> when it was failed


class CoordinatorCore:
    """Detection, failover, progressive upgrades, re-plans, failback, SLO and probation."""

    def __init__(self, mesh: MeshConfig, catalog: Catalog, *, adaptive: bool = True) -> None:
        self.mesh = mesh
        self.catalog = catalog
        self.ccfg = mesh.coordinator
        self.adaptive = adaptive
        # Each worker is judged against its own heartbeat interval, with this config's knobs.
        self.membership = Membership(cfg_for=lambda i: DetectorConfig.of(self.ccfg, i))
        self.wills = WillHold()  # live last-wills until the broker is heard from after them
        self.state = ControlState()
        self.pace = PaceJudge(catalog, PaceConfig(sustain_s=self.ccfg.slo_sustain_s / 2))
        # Estimates replaced by what the boards measured, as their reports come.
        self.profiles = ProfileBook(catalog, {w.id: w.device_class for w in mesh.workers})
        self.shedder = Shedder(
            ShedConfig(sustain_s=self.ccfg.slo_sustain_s, calm_s=self.ccfg.shed_calm_s)
        )
        # Liveness from what reaches the mesh: results of routed apps while their frames flow.
        self.outcomes = OutcomeWatch(
            OutcomeConfig(
                window_s=self.ccfg.results_missing_s,
                probation_s=self.ccfg.gray_probation_s,
            )
        )
        self._withheld: dict[str, float] = {}  # worker -> when a verdict on it was withheld
        self._plans_pending = 0  # plans asked for and not answered yet
        self._before_plan: dict[str, tuple[Transition, float]] = {}  # failed with no plan yet
        self._now = 0.0  # the time of the event being handled
        self._serving_apps: dict[str, frozenset[str]] = {}  # worker -> apps it was told to serve
        self._settling: dict[str, float] = {}  # worker -> when it was given new apps
        self._settle_s = max(2 * self.ccfg.slo_sustain_s, SETTLE_MIN_S)
        self.term = 0
        self.generation = 0
        self.phase: Phase = "waiting"
        # The last placement a previous term left retained: a successor keeps apps where they
        # are instead of reshuffling a mesh that is serving fine.
        self.inherited: messages.Placement | None = None
        self._known = {w.id for w in mesh.workers}
        self._startup_deadline = 0.0
        self._held: list[tuple[Transition, float]] = []  # seen while starting, with their ts
        self._incarnations: dict[str, str] = {}  # static: the incarnation last seen per worker
        self._out: list[Decision] = []
        # Workers judged dead by silence, and when their missing last-will is given up on.
        self._obituaries: dict[str, tuple[str, float]] = {}
        self._obituary_after_s = self.ccfg.obituary_after_s or (1.5 * mesh.broker.keepalive_s + 2.0)
        self._reput: dict[str, float] = {}  # worker -> when its obituary last went back

    # -- the one entry point -----------------------------------------------------------------

    def handle(self, event: Event) -> list[Decision]:
        self._out = []
        self._now = event.now
        if self.phase != "stepped_down":
            self._dispatch(event)
            if self.phase == "starting":
                self._maybe_started(event.now)
        out, self._out = self._out, []
        return out

    def _dispatch(self, ev: Event) -> None:
        if isinstance(ev, TermAcquired):
            if self.phase == "waiting":
                self.term = ev.term
                self.phase = "starting"
                self._startup_deadline = ev.now + self.ccfg.startup_wait_s
        elif isinstance(ev, SteppedDown):
            self.phase = "stepped_down"
        elif isinstance(ev, InheritedPlacement):
            self.inherited = ev.placement
        elif isinstance(ev, WorkerBirth | WorkerOffline):
            if self.adaptive:
                self._on_status(ev)
            else:
                self._note_member(ev.status)
        elif isinstance(ev, ProfileReported):
            self._on_profile(ev)
        elif isinstance(ev, HeartbeatSeen):
            if self.adaptive:
                self._judge_wills()
                self._on_heartbeat(ev)
        elif isinstance(ev, ResultSeen):
            if self.adaptive:
                self.outcomes.result(ev.app, ev.worker, ev.incarnation, ev.now)
        elif isinstance(ev, Tick):
            if self.adaptive:
                self._on_tick(ev)
        elif isinstance(ev, BrokerHeard):
            self._judge_wills()
        elif isinstance(ev, LinkDown):
            if self.wills:
                withdrawn = self.wills.withdraw()
                self._note(
                    "last_will_withdrawn",
                    workers=sorted({w.status.worker for w in withdrawn}),
                    reason="our link dropped before the broker was heard from again",
                )
            self.membership.blind()
        elif isinstance(ev, LinkUp):
            self.membership.see(ev.now, self.ccfg.reconnect_grace_s)
            self.outcomes.restart(ev.now, self.ccfg.reconnect_grace_s)
        elif isinstance(ev, PlanReady):
            self._on_plan_ready(ev)
        elif isinstance(ev, PlanFailed):
            # The service logged why; the mesh stays on its current plan.
            self._plans_pending = max(0, self._plans_pending - 1)

    # -- helpers -----------------------------------------------------------------------------

    def _event(
        self, kind: str, worker: str = "", app: str = "", *, timed: bool = False, **detail: Any
    ) -> None:
        self._out.append(EmitEvent(kind, worker, app, detail, timed))

    def _note(self, event: str, **fields: Any) -> None:
        self._out.append(Note(event, fields))

    def _publish(self, reason: str) -> int:
        self.generation += 1
        state = self._retained_state()
        self._out.append(PublishState(state, reason))
        # Who must publish each app's results: the routes just derived, not derived again.
        self.outcomes.route(
            {r.app: r.worker for r in state.routes if r.worker}, self.generation, self._now
        )
        for worker, plan in state.workers:
            apps = frozenset(x.app for x in plan.serve)
            before = self._serving_apps.get(worker)
            if before is not None and apps - before:
                # New apps (a failover, a failback): its queues and its own latency window
                # hold the handover for a while; its pace is not judged until they have passed.
                self._settling[worker] = self._now
                self.pace.forget(worker)
            self._serving_apps[worker] = apps
        return self.generation

    def _settled(self, worker: str, now: float) -> bool:
        since = self._settling.get(worker)
        return since is None or now - since >= self._settle_s

    def _effective(self) -> dict[str, Assign]:
        """Who serves what now: placement primaries under the overrides."""
        s = self.state
        primary = dict(s.placement.primary) if s.placement else {}
        primary.update(s.overrides)
        return {a: p for a, p in primary.items() if p.server not in s.failed}

    def _route_state(
        self, app: str, worker: str, variant: str, throttled: bool = False
    ) -> Literal["serving", "degraded"]:
        """Degraded: served by a backup, a smaller variant than the plan's primary, or at a
        shed frame rate."""
        p = self.state.placement
        planned = p.primary.get(app) if p else None
        if throttled or planned is None or planned != Assign(worker, variant):
            return "degraded"
        return "serving"

    # -- shedding ----------------------------------------------------------------------------

    def _smaller_on_disk(self, worker: str, variant: str) -> str | None:
        """The next smaller variant of ``variant``'s family that ``worker`` has on disk."""
        m = self.membership.get(worker)
        on_disk = set(m.status.models_on_disk) if m is not None else set()
        size = self.catalog.variant(variant).memory_mb
        smaller = [
            v
            for v in self.catalog.family_of(variant).variants
            if v.memory_mb < size and v.name in on_disk
        ]
        return max(smaller, key=lambda v: v.memory_mb).name if smaller else None

    def _shed_view(
        self, steps: dict[str, tuple[ShedStep, ...]] | None = None
    ) -> tuple[dict[str, Assign], dict[str, float], set[str]]:
        """Who serves what once the shed steps in force apply: (serving, frame-rate caps,
        apps paused)."""
        serving = self._effective()
        out = dict(serving)
        caps: dict[str, float] = {}
        paused: set[str] = set()
        for worker, taken in (self.shedder.shedding() if steps is None else steps).items():
            for app, a in serving.items():
                if a.server != worker:
                    continue
                cfg = self.mesh.app(app)
                for step in taken:
                    if step.critical != cfg.critical:
                        continue
                    if step.action == "throttle":
                        caps[app] = round(self.mesh.sensor(cfg.sensor).fps * THROTTLE_SHARE, 3)
                    elif step.action == "downsize":
                        smaller = self._smaller_on_disk(worker, out[app].variant)
                        if smaller is not None:
                            out[app] = Assign(worker, smaller)
                    else:
                        paused.add(app)
        for app in paused:
            out.pop(app, None)
            caps.pop(app, None)
        return out, caps, paused

    def _retained_state(self) -> RetainedState:
        s = self.state
        serving, caps, paused = self._shed_view()
        workers: list[tuple[str, WorkerPlan]] = []
        loads = s.placement.by_server() if s.placement else {}
        for w in self.mesh.workers:
            if w.id in s.failed:
                workers.append((w.id, WorkerPlan()))  # fenced: a falsely suspected worker stops
                continue
            serve = tuple(
                messages.Serve(app, self.mesh.app(app).sensor, a.variant, caps.get(app))
                for app, a in sorted(serving.items())
                if a.server == w.id
            )
            load = loads.get(w.id)
            standby = tuple(
                messages.Serve(app, self.mesh.app(app).sensor, v)
                for app, v in (load.warm if load else ())
                if app in serving and serving[app].server != w.id
            )
            hot = tuple(
                messages.Serve(app, self.mesh.app(app).sensor, v)
                for app, v in (load.hot if load else ())
                if app in serving and serving[app].server != w.id
            )
            warm = {v for _app, v in (*load.hot, *load.warm)} if load else set()
            warm |= s.extra_warm.get(w.id, set())
            warm -= {x.variant for x in serve}
            # A static plan is published as written: what to serve, nothing else.
            disk = set(load.files) if load and self.adaptive else set()
            workers.append(
                (
                    w.id,
                    WorkerPlan(
                        serve=serve,
                        warm=tuple(sorted(warm)),
                        disk=tuple(sorted(disk)),
                        standby=standby,
                        hot=hot,
                    ),
                )
            )
        routes = [
            RouteState(
                x.app,
                worker,
                x.variant,
                self._route_state(x.app, worker, x.variant, x.max_fps is not None),
            )
            for worker, wp in workers
            for x in wp.serve
        ]
        if self.adaptive and s.placement is not None:
            # Apps nobody serves get an explicit route, so consumers see the outage (or that
            # they are paused under overload).
            routes += [
                RouteState(a.id, "", "", "shed" if a.id in paused else "unserved")
                for a in self.mesh.apps
                if a.id not in serving
            ]
        entries: list[messages.PlacementEntry] = [
            messages.PlacementEntry(app, a.server, a.variant, "primary")
            for app, a in sorted(serving.items())
        ]
        if s.placement is not None:
            planned = self._effective()
            entries += [
                messages.PlacementEntry(app, b.server, b.variant, b.kind)
                for app, b in sorted(s.placement.backups.items())
                # A backup that took over (or died) protects nothing until the re-plan.
                if b.server not in s.failed and planned.get(app, b).server != b.server
            ]
        p = s.placement
        return RetainedState(
            term=self.term,
            generation=self.generation,
            workers=tuple(workers),
            routes=tuple(routes),
            entries=tuple(entries),
            solver=p.solver if p else "none",
            objective=p.objective if p and self.adaptive else None,
            lp_bound=p.lp_bound if p else None,
            gap=p.gap if p else None,
        )

    # -- membership --------------------------------------------------------------------------

    def _observe(self, t: Transition | None, ev: Observed) -> None:
        if t is None:
            return
        if self.phase != "running":
            self._held.append((t, ev.ts))
            return
        self._on_transition(t, ev.ts)

    def _on_status(self, ev: WorkerBirth | WorkerOffline) -> None:
        if isinstance(ev, WorkerBirth):
            self._judge_wills()  # the broker lived on after them
        else:
            m = self.membership.get(ev.status.worker)
            alive = m is not None and m.incarnation == ev.status.incarnation and m.state == "alive"
            reading = read_offline(ev, alive)
            if reading == "hold":
                self.wills.hold(ev)
                return
            if reading == "history":
                self._note("retained_will_ignored", worker=ev.status.worker)
                return
        self._observe(self.membership.on_status(ev.status, ev.now), ev)

    def _judge_wills(self) -> None:
        for will in self.wills.confirm():
            self._observe(self.membership.on_status(will.status, will.now), will)

    def _on_heartbeat(self, ev: HeartbeatSeen) -> None:
        hb = ev.heartbeat
        self._observe(self.membership.on_heartbeat(hb, ev.now), ev)
        m = self.membership.get(hb.worker)
        if m is None or m.incarnation != hb.incarnation or m.state != "alive":
            return
        self.outcomes.heartbeat(hb, ev.now)
        serving, _caps, _paused = self._shed_view()
        mine = {app: a.variant for app, a in serving.items() if a.server == hb.worker}
        if self._settled(hb.worker, ev.now):
            self.pace.observe(hb, mine, self._device(hb.worker), ev.now)
        if hb.loading:
            # Told to load: slower meanwhile, by our own doing; neither strained nor calm.
            self.shedder.observe(hb.worker, self.shedder.cfg.calm, ev.now)
            return
        strains = [
            stats.latency_ms / self.mesh.app(app).slo_ms
            for app in mine
            if (stats := hb.apps.get(app)) is not None and stats.processed
        ]
        if strains:
            self.shedder.observe(hb.worker, max(strains), ev.now)
        elif not mine and self.shedder.steps(hb.worker):
            # Every app it had is paused: nothing to measure but the pause; try them back.
            self.shedder.observe(hb.worker, 0.0, ev.now)

    def _on_profile(self, ev: ProfileReported) -> None:
        p = ev.profile
        why = self.profiles.report(p)
        if why:
            self._note("profile_refused", worker=p.worker, device_class=p.device_class, reason=why)
            return
        changed = self.profiles.rebuild()
        if not changed:
            return
        self.catalog = self.pace.catalog = self.profiles.catalog
        self._event(
            "profile_measured",
            p.worker,
            device_classes=changed,
            variants=sorted(c.variant for c in p.costs),
            source=p.source[:200],
        )
        # A plan made from an estimate is made again from the measurement; before the first
        # plan there is nothing to redo (it will use the measurement).
        if self.phase == "running" and self.state.placement is not None:
            self._replan("profile_measured")

    def _device(self, worker: str) -> str:
        return self.mesh.worker(worker).device_class

    def _on_tick(self, ev: Tick) -> None:
        if self.phase == "waiting":
            return  # nobody is judged before we lead
        spare = (lambda w: self._spare_stall(w, ev.now)) if self.phase == "running" else None
        for t in self.membership.tick(ev.now, ev.link_quiet_s, spare or (lambda _w: False)):
            self._observe(t, ev)
        if self.phase != "running":
            return
        self._advance_obituaries(ev.now, ev.ts)
        self._advance_ladders(ev.now)
        self._advance_failback(ev.now)
        self._advance_gray(ev.now, ev.ts)  # probation first: a worker let back counts as a peer
        self._judge_outcomes(ev.now, ev.ts)
        self._judge_load(ev.now, ev.ts)

    def _advance_obituaries(self, now: float, ts: float) -> None:
        for worker, (incarnation, due) in list(self._obituaries.items()):
            if now < due:
                continue
            del self._obituaries[worker]
            m = self.membership.get(worker)
            if m is None or m.incarnation != incarnation or m.state != "failed":
                continue  # replaced, or back
            if m.status.state != "online" and m.status.reason != "silent":
                continue  # its last-will (or a graceful stop) came after all
            if not m.silence.suspected(now):
                self._obituaries[worker] = (incarnation, now + REPUT_EVERY_S)  # heard: look again
                continue
            dead = replace(m.status, state="offline", reason="silent", ts=ts)
            self._out.append(PublishObituary(dead))
            self._event("obituary", worker=worker, incarnation=incarnation)

    def _on_transition(self, t: Transition, ts: float) -> None:
        s = self.state
        if t.kind == "failed":
            # Whatever judged it first (its silence, or a stall just before its link ended
            # without a will): if it is silent by then and no offline came, its obituary goes.
            self._obituaries[t.worker] = (t.incarnation, t.at + self._obituary_after_s)
        if t.kind == "failed":
            self._event(
                "failure_detected",
                worker=t.worker,
                cause=t.cause,
                worker_incarnation=t.incarnation,
                silence_ms=round(t.silence_s * 1000, 1),
            )
            self._on_failure(t, ts)
        elif t.kind in ("joined", "recovered"):
            was_failed = t.worker in s.failed
            s.failed.discard(t.worker)
            self._before_plan.pop(t.worker, None)
            if t.kind == "joined":
                self.pace.forget(t.worker)
                self.shedder.forget(t.worker)
            self._event(
                f"worker_{t.kind}",
                worker=t.worker,
                cause=t.cause,
                worker_incarnation=t.incarnation,
            )
            if s.placement is None:
                # No plan yet (no worker was up when we started, or none could serve): a
                # board that boots late is planned whenever it comes (a plan in flight is
                # asked again for the workers alive when it answers).
                if not self._plans_pending:
                    self._replan(t.kind, sticky=False)
            elif was_failed or t.worker not in {a.server for a in s.placement.primary.values()} | {
                b.server for b in s.placement.backups.values()
            }:
                self._replan(t.kind)
            elif s.placement is not None:
                self._publish(f"{t.kind}:{t.worker}")  # a restart: resend its assignment
        elif t.kind == "replayed":
            # A broker gave back an old birth (a returning broker's store, bridged over): it
            # changes nobody's state, but the retained status it replaced must be put back.
            m = self.membership.get(t.worker)
            self._note("birth_replay_ignored", worker=t.worker, cause=t.cause)
            if m is not None and m.state == "failed":
                last = self._reput.get(t.worker)
                if m.status.state == "offline" and (last is None or t.at - last >= REPUT_EVERY_S):
                    self._reput[t.worker] = t.at
                    self._out.append(PublishObituary(m.status))
                else:
                    # The worker itself put its birth back over our obituary (heard again, or
                    # it answered within a second): putting it back at once would loop.
                    # Heartbeats decide; if it stays silent, a new obituary follows.
                    self._obituaries[t.worker] = (m.incarnation, t.at + REPUT_EVERY_S)
        elif t.kind == "forged" and t.cause == "birth_without_handover":
            self._event("takeover_refused", worker=t.worker, worker_incarnation=t.incarnation)
        elif t.kind == "forged":
            # An offline that does not unseal the birth it ends: written by another account.
            self._event(
                "forged_offline_refused",
                worker=t.worker,
                worker_incarnation=t.incarnation,
                reason=t.cause,
            )
        elif t.kind == "stale":
            self._event(
                "stale_offline_ignored",
                worker=t.worker,
                worker_incarnation=t.incarnation,
                reason=t.cause,
            )

    def _note_member(self, st: messages.WorkerStatus) -> None:
        """A static plan judges nobody: births and last-wills are only logged."""
        cur = self._incarnations.get(st.worker)
        if st.state == "offline" and cur is not None and cur != st.incarnation:
            # A late last-will of an older incarnation must not kill the newer one.
            self._note("stale_offline_ignored", worker=st.worker, stale=st.incarnation, current=cur)
            return
        self._incarnations[st.worker] = st.incarnation
        self._note(
            "member",
            worker=st.worker,
            state=st.state,
            reason=st.reason,
            worker_incarnation=st.incarnation,
            models_on_disk=list(st.models_on_disk),
        )

    # -- planning ----------------------------------------------------------------------------

    def _maybe_started(self, now: float) -> None:
        if (
            self.adaptive
            and now < self._startup_deadline
            and self.membership.alive() != self._known
        ):
            return
        self.phase = "running"
        self._initial_plan()
        held, self._held = self._held, []
        for t, ts in held:
            self._on_transition(t, ts)

    def _initial_plan(self) -> None:
        inh = self.inherited
        if inh is None or not self.adaptive:
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
        """Ask for a plan on the alive workers; its result comes back as :class:`PlanReady`.

        After a failure the re-plan waits ``delay_s``: it must not compete for the CPU with
        the recovery it follows (the backup's first frames are the MTTR)."""
        s = self.state
        alive = frozenset(self.membership.alive() - s.failed)
        disk: dict[str, tuple[str, ...]] = {}
        for w in sorted(alive):
            m = self.membership.get(w)
            if m is not None:
                disk[w] = m.status.models_on_disk
        keep: dict[str, Assign] | None = None
        keep_backups: dict[str, Backup] | None = None
        if inherit is not None:
            keep, keep_backups = inherit
        elif sticky and s.placement is not None:
            keep = {a: p for a, p in self._effective().items() if p.server in alive}
            keep_backups = {
                a: b
                for a, b in s.placement.backups.items()
                if b.server in alive and a not in s.overrides
            }
        request = PlanRequest(reason, alive, disk, keep, keep_backups, self.catalog)
        self._plans_pending += 1
        self._out.append(RequestPlan(request, delay_s))

    def _on_plan_ready(self, ev: PlanReady) -> None:
        s = self.state
        self._plans_pending = max(0, self._plans_pending - 1)
        reason, result = ev.request.reason, ev.result
        if not self.adaptive:
            if result is not None:
                s.placement = result.placement
                self._publish(reason)
            return
        now_alive = self.membership.alive() - s.failed
        if ev.request.alive != now_alive:
            # Membership moved while planning: plan again for the workers alive now.
            self._note(
                "replan_dropped",
                reason=reason,
                planned_for=sorted(ev.request.alive),
                alive=sorted(now_alive),
            )
            self._replan(reason)
            return
        if result is None or result.problem is None:
            return
        new, problem = result.placement, result.problem
        moving = {a for a, p in self._effective().items() if new.primary.get(a) not in (None, p)}
        if reason in ("joined", "recovered") and moving and s.placement is not None:
            self._start_failback(problem, new, result.table, moving, ev.now)
            return
        s.placement, s.problem, s.table, s.table_valid = new, problem, result.table, True
        # Ladders keep their override until they reach the planned variant.
        s.overrides = {a: o for a, o in s.overrides.items() if a in s.ladders}
        gen = self._publish(f"replan:{reason}")
        self._event(
            "replan",
            reason=reason,
            generation=gen,
            solve_ms=round(result.solve_ms, 1),
            objective=round(new.objective, 3),
            lp_bound=None if new.lp_bound is None else round(new.lp_bound, 3),
            gap=None if new.gap is None else round(new.gap, 5),
            unprotected=list(new.unprotected()),
            unplaced=dict(new.unplaced),
        )
        self._report_failed_before_plan(gen)

    def _report_failed_before_plan(self, generation: int) -> None:
        """The failover event of each worker that failed before there was a plan: where the
        apps it served (by the inherited placement) are served now."""
        inherited = self.inherited.entries if self.inherited is not None else ()
        primaries = self.state.placement.primary if self.state.placement else {}
        for worker, (t, ts) in sorted(self._before_plan.items()):
            apps = [e.app for e in inherited if e.role == "primary" and e.worker == worker]
            self._event(
                "failover",
                worker=worker,
                timed=True,
                cause=t.cause,
                generation=generation,
                source="plan",
                detected_ts=ts,
                silence_ms=round(t.silence_s * 1000, 1),
                recoveries={
                    a: {"server": p.server, "kind": "plan", "variant": p.variant}
                    for a in apps
                    if (p := primaries.get(a)) is not None
                },
                unrecoverable={a: "not placed" for a in apps if a not in primaries},
            )
        self._before_plan.clear()

    # -- failover ----------------------------------------------------------------------------

    def _on_failure(self, t: Transition, ts: float) -> None:
        s = self.state
        planned = self._failover_plan(t.worker)  # before it counts as failed: what it serves
        s.failed.add(t.worker)
        s.failback = None
        self.pace.forget(t.worker)
        self.outcomes.forget(t.worker)
        if self.shedder.forget(t.worker):
            self._event("unshed", worker=t.worker, step="all", level=0, reason="worker failed")
        if planned is None:
            # No plan to fail over from yet (a leader that just took over): the first plan,
            # made for the survivors, is the decision; its failover event comes with it.
            self._before_plan[t.worker] = (t, ts)
            self._publish("failure-before-plan")
            return
        fp, source = planned
        self._apply_failover(fp)
        s.table_valid = False
        gen = self._publish(f"failover:{t.worker}")
        self._event(
            "failover",
            worker=t.worker,
            timed=True,
            cause=t.cause,
            generation=gen,
            source=source,
            detected_ts=ts,
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

    # -- failback ----------------------------------------------------------------------------

    def _start_failback(
        self,
        problem: Problem,
        target: Placement,
        table: FailoverTable | None,
        moving: set[str],
        now: float,
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
        s.failback = Failback(target, loads, gen, now)
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

    # -- load, slowness and gray failures -----------------------------------------------------

    def _failover_plan(self, worker: str) -> tuple[FailoverPlan, str] | None:
        """What a failure of ``worker`` would do now: the precomputed table's entry while it is
        valid, else a plan from what runs (a cascade before the re-plan)."""
        s = self.state
        if s.placement is None or s.problem is None:
            return None
        fp = s.table.for_servers({worker}) if (s.table_valid and s.table) else None
        if fp is not None:
            return fp, "table"
        current = Placement(
            primary=self._effective()
            | {a: p for a, p in s.placement.primary.items() if p.server == worker},
            backups={a: b for a, b in s.placement.backups.items() if b.server not in s.failed},
        )
        return plan_failover(s.problem, current, {worker}), "live"

    def _judge_move(self, worker: str, now: float, *, slow: bool) -> MoveVerdict:
        planned = self._failover_plan(worker)
        if planned is None:
            return MoveVerdict(False, "no plan yet")
        m = self.membership.get(worker)
        hb = m.last_heartbeat if m is not None else None
        apps = {
            app: self.pace.measured_ms(hb, app)
            for app, a in self._effective().items()
            if a.server == worker
        }

        def predict(server: str, variant: str) -> float:
            return self.pace.predicted_ms(server, variant, self._device(server), now)

        return judge_move(planned[0], apps, predict if slow else None)

    def _withhold(self, worker: str, cause: str, verdict: MoveVerdict, now: float) -> None:
        last = self._withheld.get(worker)
        if last is None or now - last >= WITHHELD_EVERY_S:
            self._withheld[worker] = now
            self._event("verdict_withheld", worker=worker, cause=cause, reason=verdict.reason)

    def _spare_stall(self, worker: str, now: float) -> bool:
        """A stalled worker keeps its apps when no other worker could take them: stalled
        beats unserved, and a board starved of CPU may come back."""
        verdict = self._judge_move(worker, now, slow=False)
        if not verdict.ok:
            self._withhold(worker, "stalled", verdict, now)
        return not verdict.ok

    def _judge_load(self, now: float, ts: float) -> None:
        """Workers over their apps' SLOs: move away from a worker slow on its own where that
        serves better; otherwise shed a step. Calm workers take a step back."""
        s = self.state
        serving = {a.server for a in self._effective().values()}
        for worker in sorted(self.membership.alive() - s.failed):
            if self.shedder.strained(worker, now):
                if worker in serving and self.pace.standing(worker, now) == "slow":
                    verdict = self._judge_move(worker, now, slow=True)
                    if verdict.ok:
                        self._gray_failure(worker, now, ts, verdict.reason)
                        continue
                    self._withhold(worker, "slo_gray", verdict, now)
                self._shed(worker, now)
            elif self.shedder.calmed(worker, now):
                self._unshed(worker, now)

    def _shed(self, worker: str, now: float) -> None:
        # A step applies where it would change what is served.
        steps = self.shedder.shedding()
        before = self._shed_view(steps)
        applies = [
            self._shed_view({**steps, worker: (*steps.get(worker, ()), step)}) != before
            for step in LADDER
        ]
        factor = self.pace.factor(worker, now)
        peers = self.pace.peers_median(worker, now)
        shared = (
            peers is not None
            and factor is not None
            and factor < self.pace.cfg.outlier * max(peers, 1.0)
        )
        self._shed_step(
            "shed",
            worker,
            self.shedder.escalate(worker, now, applies),
            reason="overload shared by its peers" if shared else "over SLO, nowhere better to go",
            pace_factor=None if factor is None else round(factor, 2),
            peers_factor=None if peers is None else round(peers, 2),
        )

    def _unshed(self, worker: str, now: float) -> None:
        self._shed_step("unshed", worker, self.shedder.relax(worker, now), reason="calm")

    def _shed_step(self, kind: str, worker: str, step: ShedStep | None, **detail: Any) -> None:
        if step is None:
            return
        gen = self._publish(f"{kind}:{worker}")
        level = len(self.shedder.steps(worker))
        self._event(kind, worker=worker, step=step.name, level=level, generation=gen, **detail)

    def _gray_failure(self, worker: str, now: float, ts: float, reason: str) -> None:
        t = self.membership.condemn(worker, "slo_gray", now)
        if t is None:
            return  # one verdict at a time: it failed otherwise already
        self.state.gray[worker] = now
        self._note("gray_failure", worker=worker, reason=reason)
        self._on_transition(t, ts)

    def _advance_gray(self, now: float, ts: float) -> None:
        s = self.state
        for worker, since in list(s.gray.items()):
            if now - since < self.ccfg.gray_probation_s:
                continue
            del s.gray[worker]
            t = self.membership.absolve(worker, "probation_over", now)
            if t is not None:  # else: it failed for real meanwhile; membership brings it back
                self._on_transition(t, ts)

    def _judge_outcomes(self, now: float, ts: float) -> None:
        """Workers whose routed apps get no results while their frames flow (coordinator.outcomes):
        failed over where another worker can take the apps, held out on a doubling probation."""
        for worker in self.outcomes.released(now):
            t = self.membership.absolve(worker, "probation_over", now)
            if t is not None:
                self._on_transition(t, ts)
        if self.ccfg.results_missing_s <= 0:
            return
        overdue: dict[str, list[str]] = {}
        for o in self.outcomes.overdue(now):
            overdue.setdefault(o.worker, []).append(
                f"{o.app}: {o.evidence}, no result for {o.silent_s:.1f} s"
            )
        for worker, why in overdue.items():
            m = self.membership.get(worker)
            if m is None or m.state != "alive" or worker in self.state.failed:
                continue
            verdict = self._judge_move(worker, now, slow=False)
            if not verdict.ok:
                self._withhold(worker, "results_missing", verdict, now)
                continue
            t = self.membership.condemn(worker, "results_missing", now)
            if t is None:
                continue
            hold = self.outcomes.convict(worker, m.incarnation, now)
            self._event("results_missing", worker, evidence=why, probation_s=hold)
            self._on_transition(t, ts)
