"""The coordinator's core on a fake clock: every failure path the drills exercise, as decisions.

The mesh is the drills' (three workers in their own failure domains, a critical app ``a1`` and
a non-critical ``a2``, the packaged catalog), with 200 MB workers so that one plan holds a warm
backup and a cold one with a ladder. :class:`Sim` plays the rest of the mesh: workers that obey
the newest retained state at once and beat every 100 ms (or stop, stall, run slow), a planner
that answers when its delay is up, and a clock that moves in 10 ms ticks.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from coordinator.core import CoordinatorCore
from coordinator.decisions import (
    Decision,
    EmitEvent,
    Note,
    PublishObituary,
    PublishState,
    RequestPlan,
    RetainedState,
    RouteState,
)
from coordinator.events import (
    BrokerHeard,
    Event,
    HeartbeatSeen,
    InheritedPlacement,
    LinkDown,
    LinkUp,
    PlanReady,
    ResultSeen,
    SteppedDown,
    TermAcquired,
    Tick,
    WorkerBirth,
    WorkerOffline,
)
from coordinator.membership import RECOVERY_HEARTBEATS
from coordinator.planning import Planner, PlanRequest, SolverPlanner, StaticPlanner
from faillite import messages
from faillite.catalog import load_catalog
from faillite.config import MeshConfig, packaged_config

CATALOG = load_catalog(packaged_config("catalog.yaml"))
WORKERS = ("w1", "w2", "w3")
EPOCH = 1_795_459_200.0  # wall clock = EPOCH + monotonic
LITE0, LITE1, LITE2 = (f"efficientnet_lite{i}" for i in range(3))


def mesh_config(
    memory_mb: tuple[float, ...] = (200, 200, 200),
    coordinator: dict[str, Any] | None = None,
    hot: bool = False,
    **knobs: Any,
) -> MeshConfig:
    """The drills' mesh; ``knobs`` change the planner coordinator's settings, ``coordinator``
    replaces them."""
    return MeshConfig.model_validate(
        {
            "mesh": "core",
            "sensors": [{"id": "cam1", "fps": 5}, {"id": "cam2", "fps": 5}],
            "apps": [
                {
                    "id": "a1",
                    "sensor": "cam1",
                    "family": "efficientnet_lite",
                    "critical": True,
                    "hot": hot,
                    "slo_ms": 400,
                },
                {"id": "a2", "sensor": "cam2", "family": "efficientnet_lite", "slo_ms": 600},
            ],
            "workers": [
                {
                    "id": w,
                    "memory_mb": m,
                    "failure_domain": f"rack-{w}",
                    "heartbeat_interval_s": 0.1,
                }
                for w, m in zip(WORKERS, memory_mb, strict=True)
            ],
            "coordinator": coordinator
            or {
                "type": "planner",
                "method": "greedy",
                "startup_wait_s": 10,
                "slo_sustain_s": 2.0,
                "gray_probation_s": 8.0,
                "reconnect_grace_s": 5.0,
                **knobs,
            },
        }
    )


@dataclass
class FakeWorker:
    """Obeys the newest assignment at once; ``beating``: its heartbeats reach us."""

    id: str
    incarnation: str
    beating: bool = True
    stalled: bool = False  # frames arrive, inference is stuck
    latency_ms: float = 50.0  # capture -> result
    infer_ms: float = 10.0  # its own time per frame
    loading_s: float = 0.0  # > 0: loading a variant for this long
    publishing: bool = True  # its results reach the mesh (False: they vanish, or never leave)
    seq: int = 0
    received: dict[str, int] = field(default_factory=dict)
    processed: dict[str, int] = field(default_factory=dict)

    def heartbeat(self, state: RetainedState | None, ts: float) -> messages.Heartbeat:
        self.seq += 1
        plan = state.worker(self.id) if state is not None else None
        serve = plan.serve if plan is not None else ()
        apps = {}
        for s in serve:
            self.received[s.app] = self.received.get(s.app, 0) + 1
            if not self.stalled:
                self.processed[s.app] = self.processed.get(s.app, 0) + 1
            apps[s.app] = messages.AppStats(
                received=self.received[s.app],
                processed=self.processed.get(s.app, 0),
                latency_ms=self.latency_ms,
                infer_ms=self.infer_ms,
            )
        loaded = {s.variant for s in serve} | set(plan.warm if plan else ())
        return messages.Heartbeat(
            worker=self.id,
            incarnation=self.incarnation,
            seq=self.seq,
            ts=ts,
            frames_received=sum(self.received.values()),
            frames_processed=sum(self.processed.values()),
            queue_depth=2 if self.stalled and serve else 0,
            loaded=tuple(sorted(loaded)),
            loading=(LITE0,) if self.loading_s else (),
            loading_s=self.loading_s,
            generation=state.generation if state is not None else 0,
            apps=apps,
        )


class Sim:
    """The core, a fake clock, fake workers and a planner answering in line."""

    def __init__(self, cfg: MeshConfig | None = None, planner: Planner | None = None) -> None:
        self.cfg = cfg or mesh_config()
        self.planner = planner or SolverPlanner(self.cfg, CATALOG, self.cfg.coordinator.method)
        self.core = CoordinatorCore(self.cfg, CATALOG, adaptive=self.planner.adaptive)
        self.now = 1000.0
        self.workers = {w.id: FakeWorker(w.id, f"{w.id}-1") for w in self.cfg.workers}
        self.born: set[str] = set()
        self.next_beat = {w: self.now for w in self.workers}
        self.pending: list[tuple[float, PlanRequest]] = []
        self.log: list[tuple[float, Decision]] = []
        self.broker_silent_since: float | None = None  # the broker sends us nothing since

    @property
    def ts(self) -> float:
        return EPOCH + self.now

    # -- driving -----------------------------------------------------------------------------

    def feed(self, event: Event) -> list[Decision]:
        out = self.core.handle(event)
        for d in out:
            self.log.append((self.now, d))
            if isinstance(d, RequestPlan):
                self.pending.append((self.now + d.delay_s, d.request))
        return out

    def status(self, worker: str, state: str = "online", reason: str = "") -> list[Decision]:
        fw = self.workers[worker]
        st = messages.WorkerStatus(
            worker=worker,
            incarnation=fw.incarnation,
            state=state,  # type: ignore[arg-type]
            ts=self.ts,
            reason=reason,
            models_on_disk=(LITE0, LITE1, LITE2),
            heartbeat_interval_s=0.1,
        )
        if state == "online":
            self.born.add(worker)
            self.next_beat[worker] = self.now + 0.1
            return self.feed(WorkerBirth(self.now, self.ts, st))
        return self.feed(WorkerOffline(self.now, self.ts, st))

    def restart(self, worker: str, incarnation: str) -> list[Decision]:
        fw = self.workers[worker]
        self.workers[worker] = FakeWorker(worker, incarnation, latency_ms=fw.latency_ms)
        return self.status(worker)

    def kill(self, *workers: str, answered: bool = True) -> list[Decision]:
        """``kill -9``: the broker publishes each last-will at once, then answers the ping
        their arrival sent (``answered``)."""
        out = []
        for w in workers:
            self.workers[w].beating = False
            self.born.discard(w)
            out += self.status(w, "offline", "lost")
        if answered:
            out += self.feed(BrokerHeard(self.now, self.ts))
        return out

    def run(self, seconds: float, step: float = 0.01) -> list[Decision]:
        out: list[Decision] = []
        end = self.now + seconds - 1e-9
        while self.now < end:
            self.now = round(self.now + step, 6)
            for due, req in sorted(self.pending, key=lambda p: p[0]):
                if due <= self.now:
                    self.pending.remove((due, req))
                    out += self.feed(PlanReady(self.now, self.ts, req, self.planner.plan(req)))
            for w, fw in self.workers.items():
                if w in self.born and fw.beating and self.now >= self.next_beat[w] - 1e-9:
                    self.next_beat[w] = self.now + 0.1
                    hb = fw.heartbeat(self.latest_or_none, self.ts)
                    out += self.feed(HeartbeatSeen(self.now, self.ts, hb))
                    if fw.publishing and not fw.stalled:
                        for app in hb.apps:
                            out += self.feed(ResultSeen(self.now, self.ts, app, w, hb.incarnation))
            quiet = 0.0 if self.broker_silent_since is None else self.now - self.broker_silent_since
            out += self.feed(Tick(self.now, self.ts, quiet))
        return out

    def run_until(self, found: Any, timeout: float, what: str) -> list[Decision]:
        out: list[Decision] = []
        deadline = self.now + timeout
        while self.now < deadline:
            out += self.run(0.01)
            if found(out):
                return out
        raise AssertionError(f"no {what} within {timeout} s")

    def start(self, term: int = 1) -> list[Decision]:
        for w in self.workers:
            self.status(w)
        out = self.feed(TermAcquired(self.now, self.ts, term))
        return out + self.run_until(published, 1.0, "first plan")

    # -- reading -----------------------------------------------------------------------------

    @property
    def latest_or_none(self) -> RetainedState | None:
        states = [d.state for _t, d in self.log if isinstance(d, PublishState)]
        return states[-1] if states else None

    @property
    def latest(self) -> RetainedState:
        st = self.latest_or_none
        assert st is not None
        return st

    def route(self, app: str) -> RouteState:
        r = self.latest.route(app)
        assert r is not None
        return r

    def role(self, app: str, role: str) -> messages.PlacementEntry:
        return next(e for e in self.latest.entries if e.app == app and e.role == role)

    def events(self, kind: str | None = None) -> list[EmitEvent]:
        return events(self.log_decisions(), kind)

    def log_decisions(self) -> list[Decision]:
        return [d for _t, d in self.log]

    def when(self, decision: Decision) -> float:
        return next(t for t, d in self.log if d is decision)


def events(out: Iterable[Decision], kind: str | None = None) -> list[EmitEvent]:
    return [d for d in out if isinstance(d, EmitEvent) and (kind is None or d.kind == kind)]


def published(out: Iterable[Decision]) -> list[RetainedState]:
    return [d.state for d in out if isinstance(d, PublishState)]


def plans(out: Iterable[Decision]) -> list[RequestPlan]:
    return [d for d in out if isinstance(d, RequestPlan)]


def serves(state: RetainedState, worker: str) -> set[tuple[str, str]]:
    return {(s.app, s.variant) for s in state.worker(worker).serve}


@pytest.fixture
def sim() -> Sim:
    s = Sim()
    s.start()
    return s


# -- startup -----------------------------------------------------------------------------------


def test_first_plan_places_primaries_and_backups_and_protects_them(sim: Sim) -> None:
    st = sim.latest
    assert (st.term, st.generation) == (1, 1)
    a1, a2 = sim.route("a1"), sim.route("a2")
    assert a1.state == a2.state == "serving" and a1.worker != a2.worker
    warm = sim.role("a1", "warm")  # the critical app: a loaded backup beside another primary
    assert warm.worker != a1.worker
    assert ("a1", warm.variant) in {(s.app, s.variant) for s in st.worker(warm.worker).standby}
    assert warm.variant in st.worker(warm.worker).warm
    cold = sim.role("a2", "cold")  # the other: the file on disk, no memory held
    assert cold.worker != a2.worker and cold.variant in st.worker(cold.worker).disk
    assert [e.detail["reason"] for e in sim.events("replan")] == ["startup"]


def test_startup_waits_for_births_then_plans_and_replays_what_it_saw() -> None:
    s = Sim()
    s.status("w1")
    s.status("w2")
    out = s.feed(TermAcquired(s.now, s.ts, 1))
    assert out == []
    out = s.run(9.5)
    assert plans(out) == [] and events(out) == []  # joins are held until the first plan
    out = s.run(0.6)
    req = plans(out)[0].request
    assert (req.reason, req.alive) == ("startup", frozenset({"w1", "w2"}))
    assert [(e.kind, e.worker) for e in events(out)][:2] == [
        ("worker_joined", "w1"),
        ("worker_joined", "w2"),
    ]
    assert published(out) and set(published(out)[-1].worker("w3").serve) == set()


def test_all_births_in_plan_at_once() -> None:
    s = Sim()
    for w in WORKERS:
        s.status(w)
    out = s.feed(TermAcquired(s.now, s.ts, 7))
    assert isinstance(out[0], RequestPlan)
    assert plans(out)[0].request.alive == frozenset(WORKERS)
    assert published(s.run(0.02))[0].term == 7


# -- crash: last-will --------------------------------------------------------------------------


def test_crash_fails_over_to_the_warm_backup_from_the_table_then_replans() -> None:
    s = Sim(mesh_config(method="lp"))
    s.start()
    primary, warm = s.route("a1"), s.role("a1", "warm")
    s.run(0.5)
    out = s.kill(primary.worker)
    assert [type(d) for d in out] == [EmitEvent, PublishState, EmitEvent, RequestPlan]
    detected, failover = events(out)
    assert (detected.kind, detected.worker, detected.detail["cause"]) == (
        "failure_detected",
        primary.worker,
        "last_will",
    )
    st = published(out)[0]
    assert st.generation == 2 and st.worker(primary.worker).serve == ()  # fenced
    assert ("a1", warm.variant) in serves(st, warm.worker)
    assert st.route("a1") == RouteState("a1", warm.worker, warm.variant, "degraded")
    assert failover.timed and failover.detail["source"] == "table"
    assert failover.detail["recoveries"]["a1"] == {
        "server": warm.worker,
        "kind": "warm",
        "variant": warm.variant,
        "final": warm.variant,
    }
    assert failover.detail["detected_ts"] == s.ts and failover.detail["generation"] == 2
    # The re-plan: half a second later, on the survivors, keeping a1 where it now runs.
    req = plans(out)[0]
    assert req.delay_s == 0.5 and req.request.reason == "failure"
    assert req.request.alive == frozenset(WORKERS) - {primary.worker}
    assert req.request.sticky is not None
    assert req.request.sticky["a1"] == (warm.worker, warm.variant)
    assert published(s.run(0.49)) == []
    replan = s.run(0.02)
    assert [e.detail["reason"] for e in events(replan, "replan")] == ["failure"]
    assert s.route("a1") == RouteState("a1", warm.worker, warm.variant, "serving")
    assert s.latest.generation == 3


@pytest.mark.parametrize("method", ["lp", "greedy"])
def test_a_hot_app_runs_on_its_hot_backup_too_which_a_crash_promotes(method: str) -> None:
    s = Sim(mesh_config(hot=True, method=method))
    s.start()
    primary, hot = s.route("a1"), s.role("a1", "hot")
    st = s.latest
    assert hot.worker != primary.worker
    backup = st.worker(hot.worker)
    assert ("a1", hot.variant) in {(x.app, x.variant) for x in backup.hot}
    assert "a1" not in {x.app for x in backup.standby} and hot.variant in backup.warm
    assert all(x.app != "a1" for w, wp in st.workers if w != hot.worker for x in wp.hot)
    s.run(0.5)
    out = s.kill(primary.worker)
    after = published(out)[0]
    assert ("a1", hot.variant) in serves(after, hot.worker)
    assert after.worker(hot.worker).hot == ()  # promoted: served, no longer hot
    (failover,) = events(out, "failover")
    assert failover.detail["recoveries"]["a1"]["kind"] == "hot"


def test_graceful_stop_is_a_failure_too(sim: Sim) -> None:
    w = sim.route("a2").worker
    sim.workers[w].beating = False
    out = sim.status(w, "offline", "graceful")
    assert events(out, "failure_detected")[0].detail["cause"] == "graceful"
    assert sim.route("a2").worker != w


# -- silence and stalls ------------------------------------------------------------------------


def test_silence_is_detected_by_heartbeats_within_half_a_second(sim: Sim) -> None:
    w = sim.route("a1").worker
    sim.run(1.0)
    sim.workers[w].beating = False  # SIGSTOP: the socket stays open, no last-will
    last = sim.next_beat[w] - 0.1
    out = sim.run_until(lambda o: events(o, "failover"), 2.0, "failover")
    det = events(out, "failure_detected")[0]
    assert det.worker == w and det.detail["cause"] == "heartbeat_silence"
    assert 0.4 <= sim.when(det) - last <= 0.5
    assert 400 <= det.detail["silence_ms"] <= 500
    assert sim.route("a1").worker != w and sim.latest.worker(w).serve == ()


def test_stalled_inference_with_heartbeats_is_a_failure(sim: Sim) -> None:
    w = sim.route("a1").worker
    sim.run(1.0)
    sim.workers[w].stalled = True  # hung GPU: heartbeats go on, frames pile up
    t0 = sim.now
    out = sim.run_until(lambda o: events(o, "failover"), 3.0, "failover")
    det = events(out, "failure_detected")[0]
    assert det.detail["cause"] == "stalled" and 1.0 <= sim.when(det) - t0 <= 1.3
    assert sim.route("a1").worker != w


# -- gray failure: SLO, downsize, failover, probation ------------------------------------------


def test_a_worker_slow_on_its_own_is_failed_over_then_let_back_after_probation(
    sim: Sim,
) -> None:
    w = sim.route("a1").worker
    sim.run(10.0)  # past the settle time of the first plan
    # Thermal throttling of this board alone: 20 times its profile, its peers at theirs.
    sim.workers[w].latency_ms, sim.workers[w].infer_ms = 900.0, 200.0
    t0 = sim.now
    out = sim.run_until(lambda o: events(o, "failover"), 4.0, "gray failover")
    det, fo = events(out, "failure_detected")[0], events(out, "failover")[0]
    assert (det.worker, det.detail["cause"]) == (w, "slo_gray")
    assert 2.0 <= sim.when(fo) - t0 <= 2.3  # slo_sustain_s: judged after it held
    assert fo.detail["cause"] == "slo_gray" and sim.route("a1").worker != w
    assert not events(out, "shed"), "a worker slow on its own moves its apps, sheds nothing"
    failed_at = sim.when(fo)
    # On probation: heartbeats are fine, yet it serves nothing for gray_probation_s, and no
    # other detector judges it again meanwhile (one verdict at a time).
    sim.workers[w].latency_ms, sim.workers[w].infer_ms = 50.0, 10.0
    sim.workers[w].stalled = True
    out = sim.run_until(lambda o: events(o, "worker_recovered"), 9.0, "probation over")
    assert [e.worker for e in events(out, "failure_detected")] == []
    sim.workers[w].stalled = False
    rec = events(out, "worker_recovered")[0]
    assert rec.detail["cause"] == "probation_over" and 8.0 <= sim.when(rec) - failed_at <= 8.1
    assert [p.request.reason for p in plans(out)][-1] == "recovered"
    assert all(st.worker(w).serve == () for st in published(out))
    sim.run(1.0)  # the re-plan of its return places it again
    assert w in {e.worker for e in sim.latest.entries}


def test_slowness_every_worker_shares_is_overload_shed_by_priority_then_undone(
    sim: Sim,
) -> None:
    """A CPU hog on a shared board: every worker 3 times its profile and over SLO. Nobody is
    failed; the mesh sheds in the stated order, critical apps last, then takes it all back."""
    for fw in sim.workers.values():
        fw.latency_ms, fw.infer_ms = 700.0, 30.0
    out = sim.run(40.0)
    assert not events(out, "failure_detected") and not events(out, "failover")
    sheds = events(out, "shed")
    assert sheds, "overload is shed"
    ladder = [
        "throttle_noncritical",
        "downsize_noncritical",
        "downsize_critical",
        "pause_noncritical",
        "throttle_critical",
    ]
    for worker in {e.worker for e in sheds}:
        # A step taken back while the load lasted is taken again (later, after a longer calm).
        mine = list(dict.fromkeys(e.detail["step"] for e in sheds if e.worker == worker))
        assert mine == [x for x in ladder if x in mine], f"{worker} shed out of order: {mine}"
    in_force = sum(len(steps) for steps in sim.core.shedder.shedding().values())
    assert in_force
    # Critical a1 is never paused, and never unserved.
    for st in published(out):
        for r in st.routes:
            assert r.state != "unserved", r
            assert not (r.app == "a1" and r.state == "shed"), r
    a2 = sim.route("a2")
    assert a2.state in ("degraded", "shed")
    # The load goes away: every step is taken back, newest first, and service is whole again.
    for fw in sim.workers.values():
        fw.latency_ms, fw.infer_ms = 50.0, 10.0
    out = sim.run(120.0)
    assert len(events(out, "unshed")) == in_force
    assert not events(out, "shed")
    assert sim.route("a1").state == sim.route("a2").state == "serving"
    assert all(s.max_fps is None for _w, wp in sim.latest.workers for s in wp.serve)


def test_throttled_app_is_served_at_half_its_rate() -> None:
    sim = Sim()
    sim.start()
    w2 = sim.route("a2").worker
    sim.workers[w2].latency_ms, sim.workers[w2].infer_ms = 900.0, 12.0
    for w, fw in sim.workers.items():
        if w != w2:
            fw.infer_ms = 12.0
    out = sim.run_until(lambda o: events(o, "shed"), 6.0, "shed")
    ev = events(out, "shed")[0]
    assert (ev.worker, ev.detail["step"]) == (w2, "throttle_noncritical")
    serve = {s.app: s for s in sim.latest.worker(w2).serve}
    assert serve["a2"].max_fps == 2.5  # cam2 sends 5 fps
    assert sim.route("a2").state == "degraded"


def test_the_last_worker_able_to_serve_keeps_its_apps_degraded_rather_than_none() -> None:
    sim = Sim()
    sim.start()
    survivor = sim.route("a1").worker
    others = [w for w in WORKERS if w != survivor]
    sim.kill(*others)
    sim.run_until(lambda o: sim.route("a2").worker == survivor, 5.0, "a2 on the survivor")
    # The survivor is now starved of CPU: far over SLO, slow, then stalled for a while.
    fw = sim.workers[survivor]
    fw.latency_ms, fw.infer_ms = 2000.0, 400.0
    out = sim.run(10.0)
    fw.stalled = True
    out += sim.run(5.0)
    assert not events(out, "failure_detected"), "nobody else could serve: no verdict"
    withheld = events(out, "verdict_withheld")
    assert withheld and all(e.worker == survivor for e in withheld)
    assert "no other worker" in withheld[-1].detail["reason"]
    for st in published(out):
        assert all(r.state != "unserved" for r in st.routes if r.app == "a1")
    fw.stalled = False
    assert sim.route("a1").worker == survivor


def test_a_worker_that_beats_fine_while_its_results_vanish_is_failed_over(sim: Sim) -> None:
    """Its heartbeats say it serves (a thief beating with its secret, a broken publish path);
    no result of its routed app reaches the mesh: failed over on the outcome, then held out on
    a probation that doubles while the same incarnation does it again."""
    w = sim.route("a1").worker
    sim.run(2.0)
    sim.workers[w].publishing = False
    t0 = sim.now
    out = sim.run_until(lambda o: events(o, "failover"), 8.0, "failover on missing results")
    det, fo = events(out, "failure_detected")[0], events(out, "failover")[0]
    assert (det.worker, det.detail["cause"]) == (w, "results_missing")
    # results_missing_s after its last result (one heartbeat before t0), then the table's failover
    assert 4.9 <= sim.when(fo) - t0 <= 5.2
    assert sim.route("a1").worker != w
    (why,) = events(out, "results_missing")
    assert why.detail["probation_s"] == 8.0 and "frames processed" in why.detail["evidence"][0]
    # Heartbeats alone never bring it back: the probation does.
    out = sim.run_until(lambda o: events(o, "worker_recovered"), 9.0, "probation over")
    rec = events(out, "worker_recovered")[0]
    assert rec.detail["cause"] == "probation_over" and 8.0 <= sim.when(rec) - sim.when(fo) <= 8.1
    # The re-plan of its return places it again; the same incarnation does it again.
    out = sim.run_until(lambda o: events(o, "results_missing"), 15.0, "a second offence")
    assert [e.detail["probation_s"] for e in events(out, "results_missing")] == [16.0]


def test_the_last_worker_is_not_failed_for_missing_results(sim: Sim) -> None:
    survivor = sim.route("a1").worker
    sim.kill(*(w for w in WORKERS if w != survivor))
    sim.run_until(lambda o: sim.route("a2").worker == survivor, 5.0, "a2 on the survivor")
    sim.workers[survivor].publishing = False
    out = sim.run(12.0)
    assert not events(out, "failure_detected"), "nobody else could serve: no verdict"
    withheld = events(out, "verdict_withheld")
    assert withheld and withheld[0].detail["cause"] == "results_missing"


def test_an_honest_mesh_is_never_judged_on_its_outcomes(sim: Sim) -> None:
    out = sim.run(60.0)
    assert not events(out, "results_missing") and not events(out, "failure_detected")


def test_a_worker_that_just_took_apps_over_is_not_judged_on_the_handover() -> None:
    """Chaos seed 2 saw it: the slow worker failed over, then the worker that took its app
    was judged slow on the handover's queueing, then the first one again on its stale
    latency window after probation. A worker given new apps settles before it is judged."""
    sim = Sim()
    sim.start()
    w = sim.route("a1").worker
    sim.run(10.0)
    sim.workers[w].latency_ms, sim.workers[w].infer_ms = 900.0, 200.0
    out = sim.run_until(lambda o: events(o, "failover"), 4.0, "gray failover")
    taker = sim.route("a1").worker
    sim.workers[w].latency_ms, sim.workers[w].infer_ms = 50.0, 10.0
    # The taker's first seconds: a queue of handed-over frames, slow against its peers.
    sim.workers[taker].latency_ms, sim.workers[taker].infer_ms = 900.0, 200.0
    out = sim.run(5.0)
    assert not events(out, "failure_detected"), "judged on its handover"
    sim.workers[taker].latency_ms, sim.workers[taker].infer_ms = 50.0, 10.0
    out = sim.run(20.0)
    assert [e.worker for e in events(out, "failure_detected")] == []


def test_a_stall_while_loading_what_it_was_told_is_not_a_failure_unless_it_never_ends() -> None:
    sim = Sim(mesh_config(load_timeout_s=4.0))
    sim.start()
    w = sim.route("a1").worker
    sim.run(1.0)
    fw = sim.workers[w]
    fw.stalled, fw.loading_s = True, 0.1  # a downsize it was told to make blocks it
    for _ in range(30):
        out = sim.run(0.1)
        fw.loading_s += 0.1
        assert not events(out, "failure_detected")
    # Past load_timeout_s the load is a failure like any stall.
    fw.loading_s = 4.5
    out = sim.run_until(lambda o: events(o, "failure_detected"), 3.0, "stall verdict")
    assert events(out, "failure_detected")[0].detail["cause"] == "stalled"


def test_no_move_to_a_worker_no_faster_than_the_slow_one() -> None:
    sim = Sim()
    sim.start()
    w = sim.route("a1").worker
    sim.run(10.0)  # past the settle time of the first plan
    # Slow on its own against its peers' measured pace ...
    sim.workers[w].latency_ms, sim.workers[w].infer_ms = 900.0, 100.0
    # ... but the peers' hosts are loaded: what they would take on costs as much there.
    for other, fw in sim.workers.items():
        if other != w:
            fw.infer_ms = 9.0
            fw.latency_ms = 50.0
    sim.run(0.5)
    sim.core.pace.predicted_ms = lambda *_a: 80.0  # type: ignore[method-assign]
    out = sim.run(6.0)
    assert not events(out, "failover")
    withheld = events(out, "verdict_withheld")
    assert withheld and "would not be served better" in withheld[0].detail["reason"]
    assert events(out, "shed"), "not moved: shed instead"


def test_workers_that_boot_long_after_the_leader_are_planned() -> None:
    sim = Sim()
    sim.feed(TermAcquired(sim.now, sim.ts, 1))
    out = sim.run(15.0)  # startup_wait_s (10 s) passes with no worker up
    assert not published(out)
    sim.status("w2")
    out = sim.run_until(published, 2.0, "a plan once a worker can serve")
    assert {r.state for r in published(out)[-1].routes} <= {"serving", "degraded"}
    sim.run(20.0)
    sim.status("w1")
    sim.status("w3")
    sim.run(3.0)
    st = sim.latest
    assert {e.worker for e in st.entries} >= {"w1", "w3"}, "later boards are planned too"
    assert all(r.state in ("serving", "degraded") for r in st.routes)


# -- flapping ----------------------------------------------------------------------------------


def test_flapping_worker_stays_fenced_until_its_heartbeats_are_steady(sim: Sim) -> None:
    w = sim.route("a1").worker
    sim.run(0.5)
    for _cycle in range(3):  # the drill's FLAPPING_WORKER: 0.8 s frozen, 1.2 s running
        sim.workers[w].beating = False
        sim.run(0.8)
        sim.workers[w].beating = True
        sim.run(1.2)
    fos = [e for e in sim.events("failover") if e.worker == w]
    recs = [e for e in sim.events("worker_recovered") if e.worker == w]
    # Cycle 1 fails it. The 12 heartbeats of its thaw are not steady enough to let it back,
    # so cycle 2's freeze is no new failover; RECOVERY_HEARTBEATS into cycle 2's thaw it is
    # back (and gets a1 back). By then its detector has learned 0.8 s gaps: cycle 3's freeze
    # stays under suspicion. One failover for three freezes.
    assert len(fos) == 1 and len(recs) == 1
    assert recs[0].detail["cause"] == "heartbeats_resumed"
    # 12 heartbeats in cycle 1's thaw, 8 more after cycle 2's freeze: 20.
    assert RECOVERY_HEARTBEATS == 20
    assert 2.7 <= sim.when(recs[0]) - sim.when(fos[0]) <= 3.5
    assert "a1" in sim.events("failback_load")[0].detail["apps"]


# -- double failure ----------------------------------------------------------------------------


def test_double_failure_survivor_serves_what_fits() -> None:
    s = Sim()
    s.start()
    a1, a2 = s.route("a1").worker, s.route("a2").worker
    survivor = next(w for w in WORKERS if w not in (a1, a2))
    assert s.role("a1", "warm").worker == survivor and s.role("a2", "cold").worker == a1
    out = s.kill(a1, a2)  # both at once: a1's primary and the host of a2's cold backup
    first, second = events(out, "failover")
    assert (first.worker, first.detail["source"]) == (a1, "table")
    assert first.detail["recoveries"]["a1"]["server"] == survivor
    # The cascade is planned live; a2's only backup died with the first.
    assert (second.worker, second.detail["source"]) == (a2, "live")
    assert second.detail["unrecoverable"] == {"a2": "no backup"}
    st = published(out)[-1]
    assert st.worker(a1).serve == st.worker(a2).serve == ()
    assert st.route("a2") == RouteState("a2", "", "", "unserved")
    # The re-plan puts what fits on the survivor: here both apps.
    s.run(0.6)
    assert {app for app, _v in serves(s.latest, survivor)} == {"a1", "a2"}
    assert all(r.state == "serving" for r in s.latest.routes)


def test_second_failure_before_the_replan_drops_the_stale_plan(sim: Sim) -> None:
    first = sim.route("a1").worker
    sim.kill(first)
    sim.run(0.2)
    second = sim.route("a2").worker
    sim.kill(second)
    out = sim.run(1.0)
    dropped = [d for d in out if isinstance(d, Note) and d.event == "replan_dropped"]
    assert dropped and dropped[0].fields["planned_for"] == sorted(set(WORKERS) - {first})
    survivor = (set(WORKERS) - {first, second}).pop()
    assert all(r.worker == survivor for r in sim.latest.routes)


# -- ladder climb ------------------------------------------------------------------------------


def test_cold_backup_serves_the_small_variant_then_climbs_without_a_gap(sim: Sim) -> None:
    a2, cold = sim.route("a2"), sim.role("a2", "cold")
    sim.run(0.3)
    out = sim.kill(a2.worker)
    rec = events(out, "failover")[0].detail["recoveries"]["a2"]
    assert (rec["server"], rec["kind"], rec["variant"], rec["final"]) == (
        cold.worker,
        "cold",
        LITE0,
        cold.variant,
    )
    assert sim.route("a2") == RouteState("a2", cold.worker, LITE0, "degraded")
    out = sim.run_until(lambda o: events(o, "ladder_done"), 2.0, "ladder done")
    ups = events(out, "upgrade")
    assert [(u.detail["previous"], u.detail["variant"]) for u in ups] == [(LITE0, cold.variant)]
    # Each rung waits for the backup's heartbeat to confirm the previous one serves.
    assert sim.when(ups[0]) > sim.when(events(sim.log_decisions(), "failover")[0])
    assert [r.variant for r in (st.route("a2") for st in published(out)) if r] == [cold.variant]
    assert sim.route("a2").worker == cold.worker


# -- failback ----------------------------------------------------------------------------------


def test_returning_worker_gets_its_app_back_load_then_switch() -> None:
    # A small spare: the critical app's warm backup is a degraded (smaller) variant there.
    s = Sim(mesh_config((100, 100, 70), method="lp"))
    s.start()
    primary, warm = s.route("a1"), s.role("a1", "warm")
    assert warm.variant != primary.variant
    s.kill(primary.worker)
    s.run(1.0)  # failover, then the re-plan keeps a1 on its backup
    assert (s.route("a1").worker, s.route("a1").variant) == (warm.worker, warm.variant)
    out = s.restart(primary.worker, f"{primary.worker}-2")
    assert [e.detail["cause"] for e in events(out, "worker_joined")] == ["restart"]
    assert plans(out)[0].request.reason == "joined"
    out = s.run_until(lambda o: events(o, "failback_switch"), 3.0, "failback switch")
    load, switch = events(out, "failback_load")[0], events(out, "failback_switch")[0]
    assert load.detail["apps"] == ["a1"] and primary.variant in load.detail["loads"][primary.worker]
    # Load first: the returning worker holds the model while the backup still serves.
    loading = published(out)[0]
    assert primary.variant in loading.worker(primary.worker).warm
    assert loading.route("a1") == RouteState("a1", warm.worker, warm.variant, "serving")
    assert not switch.detail["timed_out"] and s.when(switch) > s.when(load)
    assert s.route("a1") == RouteState("a1", primary.worker, primary.variant, "serving")
    assert primary.variant not in s.latest.worker(primary.worker).warm


# -- our own link ------------------------------------------------------------------------------


def test_no_failover_while_our_link_is_down_and_a_grace_after(sim: Sim) -> None:
    sim.run(0.5)
    assert sim.feed(LinkDown(sim.now, sim.ts)) == []
    for fw in sim.workers.values():
        fw.beating = False  # nothing reaches us
    out = sim.run(3.0)
    assert events(out, "failure_detected") == []
    back = sim.now
    sim.feed(LinkUp(sim.now, sim.ts))
    for w in ("w1", "w2"):
        sim.workers[w].beating = True
    out = sim.run_until(lambda o: events(o, "failure_detected"), 7.0, "the silent one judged")
    det = events(out, "failure_detected")
    assert [d.worker for d in det] == ["w3"] and sim.when(det[0]) - back >= 5.0


def test_results_lost_while_our_link_was_down_are_held_against_nobody(sim: Sim) -> None:
    """A broker restart: workers serve their queues unconnected, their results lost; their
    first heartbeats after count frames processed that no result of reached us."""
    sim.run(2.0)
    sim.feed(LinkDown(sim.now, sim.ts))
    for fw in sim.workers.values():
        fw.beating = False
        for _ in range(40):  # served while cut off
            fw.heartbeat(sim.latest_or_none, sim.ts)
    sim.run(6.0)
    sim.feed(LinkUp(sim.now, sim.ts))
    for fw in sim.workers.values():
        fw.beating, fw.publishing = True, False  # the cameras are not back yet either
    out = sim.run(1.0)
    for fw in sim.workers.values():
        fw.publishing = True
    out += sim.run(12.0)
    assert not events(out, "results_missing") and not events(out, "failure_detected")


def test_a_silent_broker_is_not_a_silent_mesh(sim: Sim) -> None:
    """The broker's board dies silently: no heartbeat arrives, and nothing else either. The
    workers are not judged while the broker is silent too; our client then drops the link
    (LinkDown), lands on the next broker (LinkUp), and so do the workers: no failover."""
    sim.run(0.5)
    sim.broker_silent_since = sim.now
    for fw in sim.workers.values():
        fw.beating = False
    out = sim.run(1.5)  # the client's ping goes unanswered meanwhile
    assert events(out, "failure_detected") == []
    sim.feed(LinkDown(sim.now, sim.ts))
    sim.broker_silent_since = None
    sim.run(0.2)
    sim.feed(LinkUp(sim.now, sim.ts))
    for fw in sim.workers.values():
        fw.beating = True
    out = sim.run(6.0)
    assert events(out, "failure_detected") == [] and events(out, "failover") == []


def test_every_worker_dying_at_once_is_judged_while_the_broker_answers(sim: Sim) -> None:
    """All workers silent but the broker answers our pings (link_quiet stays low): they are
    judged as quickly as one worker alone would be."""
    sim.run(0.5)
    died = sim.now
    for fw in sim.workers.values():
        fw.beating = False
    out = sim.run_until(lambda o: len(events(o, "failure_detected")) == 3, 2.0, "all three judged")
    assert max(sim.when(e) for e in events(out, "failure_detected")) - died < 1.0


def _notes(out: Iterable[Decision], event: str) -> list[Note]:
    return [d for d in out if isinstance(d, Note) and d.event == event]


def test_a_last_will_is_judged_once_the_broker_is_heard_from_after_it(sim: Sim) -> None:
    primary = sim.route("a1").worker
    others = [w for w in sim.workers if w != primary]
    sim.run(0.5)
    out = sim.kill(primary, answered=False)
    assert out == []  # held: it may be a stopping broker's last words
    # Another last-will is no sign of a live broker (a stopping one sends them all).
    assert sim.kill(others[0], answered=False) == []
    sim.workers[others[0]].beating = True
    sim.born.add(others[0])
    out = sim.run_until(lambda o: events(o, "failover"), 0.2, "the will judged")
    assert [e.worker for e in events(out, "failure_detected")] == [primary, others[0]]
    assert [e.detail["cause"] for e in events(out, "failure_detected")] == ["last_will"] * 2


def test_a_stopping_brokers_last_wills_are_withdrawn_when_our_link_drops(sim: Sim) -> None:
    """SIGTERM to the broker: it publishes every client's last-will, then drops us. Nobody is
    failed over; the workers reconnect and say so, and keep their apps."""
    before = {app: sim.route(app).worker for app in ("a1", "a2")}
    sim.run(0.5)
    for w in sim.workers:
        sim.status(w, "offline", "lost")  # the workers are fine: their broker is stopping
    out = sim.feed(LinkDown(sim.now, sim.ts))
    assert [n.fields["workers"] for n in _notes(out, "last_will_withdrawn")] == [sorted(WORKERS)]
    for fw in sim.workers.values():
        fw.beating = False
    sim.run(2.0)  # the broker restarts
    sim.feed(LinkUp(sim.now, sim.ts))
    for w, fw in sim.workers.items():
        fw.beating = True
        sim.status(w)  # a new connection's birth
    out = sim.run(6.0)
    assert events(out, "failure_detected") == [] and events(out, "failover") == []
    assert {app: sim.route(app).worker for app in ("a1", "a2")} == before


def test_a_retained_last_will_of_a_worker_we_believe_alive_is_history(sim: Sim) -> None:
    """After our reconnect a broker that kept its stored state hands us a worker's last-will
    from its own stop: the worker's heartbeats (or their silence, after the grace) decide."""
    w = sim.route("a1").worker
    sim.run(0.5)
    sim.feed(LinkDown(sim.now, sim.ts))
    sim.run(1.0)
    sim.feed(LinkUp(sim.now, sim.ts))
    fw = sim.workers[w]
    will = messages.WorkerStatus(
        worker=w, incarnation=fw.incarnation, state="offline", reason="lost", ts=sim.ts
    )
    out = sim.feed(WorkerOffline(sim.now, sim.ts, will, retained=True))
    assert [n.fields["worker"] for n in _notes(out, "retained_will_ignored")] == [w]
    assert events(sim.run(6.0), "failure_detected") == []
    # Dead after all: its silence judges it.
    fw.beating = False
    out = sim.run_until(lambda o: events(o, "failure_detected"), 2.0, "its silence judged")
    assert events(out, "failure_detected")[0].detail["cause"] == "heartbeat_silence"


def _obituaries(out: Iterable[Decision]) -> list[PublishObituary]:
    return [d for d in out if isinstance(d, PublishObituary)]


def test_a_worker_whose_last_will_died_with_its_broker_gets_an_obituary(sim: Sim) -> None:
    """Judged dead by silence and no last-will after the broker's 1.5 x keepalive (+2 s): the
    leader publishes its offline status, so no stale 'online' stays retained."""
    w = sim.route("a1").worker
    incarnation = sim.workers[w].incarnation
    sim.workers[w].beating = False  # silent death: its broker died with it, no last-will
    out = sim.run_until(lambda o: events(o, "failure_detected"), 2.0, "the silence judged")
    failed_at = sim.when(events(out, "failure_detected")[0])
    after = sim.core._obituary_after_s
    assert after == 1.5 * sim.core.mesh.broker.keepalive_s + 2.0
    out = sim.run_until(_obituaries, after + 1.0, "the obituary")
    (obit,) = _obituaries(out)
    assert sim.when(obit) - failed_at == pytest.approx(after, abs=0.05)
    st = obit.status
    assert (st.worker, st.incarnation, st.state, st.reason) == (w, incarnation, "offline", "silent")
    assert [e.worker for e in events(out, "obituary")] == [w]
    assert _obituaries(sim.run(after + 1.0)) == []  # once


def test_a_worker_judged_stalled_then_silent_gets_its_obituary(sim: Sim) -> None:
    """Its results stop first (judged stalled), then its link ends without a will (Mosquitto
    ending a revoked account's connection): no 'online' may stay retained for it."""
    w = sim.route("a1").worker
    sim.workers[w].stalled = True
    out = sim.run_until(lambda o: events(o, "failure_detected"), 2.0, "the stall judged")
    assert events(out, "failure_detected")[0].detail["cause"] == "stalled"
    sim.workers[w].beating = False
    out = sim.run_until(_obituaries, sim.core._obituary_after_s + 1.0, "the obituary")
    assert [(d.status.worker, d.status.reason) for d in _obituaries(out)] == [(w, "silent")]


def test_a_stalled_worker_that_still_beats_gets_no_obituary(sim: Sim) -> None:
    w = sim.route("a1").worker
    sim.workers[w].stalled = True
    sim.run_until(lambda o: events(o, "failure_detected"), 2.0, "the stall judged")
    assert _obituaries(sim.run(sim.core._obituary_after_s + 3.0)) == []


def test_no_obituary_when_the_last_will_came_or_the_worker_came_back(sim: Sim) -> None:
    w1 = sim.route("a1").worker
    w2 = next(w for w in sim.workers if w != w1)
    sim.workers[w1].beating = False
    sim.workers[w2].beating = False
    sim.run_until(lambda o: len(events(o, "failure_detected")) == 2, 2.0, "both judged")
    sim.status(w1, "offline", "lost")  # w1's last-will arrives late: the broker was alive
    sim.workers[w2].beating = True
    sim.status(w2)  # w2 reconnects (to the other broker) and says so
    out = sim.run(sim.core._obituary_after_s + 1.0)
    assert _obituaries(out) == []


def test_a_returning_brokers_old_birth_of_a_dead_worker_is_put_right(sim: Sim) -> None:
    """A broker comes back with what it stored, and its bridge replays the dead worker's old
    'online' birth over the obituary: nobody revives it, and its offline status goes back."""
    w = sim.route("a1").worker
    birth_ts = sim.core.membership.get(w).birth_ts  # type: ignore[union-attr]
    incarnation = sim.workers[w].incarnation
    sim.workers[w].beating = False
    out = sim.run_until(_obituaries, sim.core._obituary_after_s + 3.0, "the obituary")
    (obit,) = _obituaries(out)
    sim.feed(WorkerOffline(sim.now, sim.ts, obit.status))  # our own publish comes back
    old = messages.WorkerStatus(worker=w, incarnation=incarnation, state="online", ts=birth_ts)
    out = sim.feed(WorkerBirth(sim.now, sim.ts, old))
    assert [d.status for d in _obituaries(out)] == [obit.status]
    assert events(out, "worker_recovered") == [] and events(out, "worker_joined") == []
    assert events(sim.run(1.0), "failure_detected") == []
    assert sim.route("a1").worker != w


# -- restarts and late last-wills --------------------------------------------------------------


def test_late_last_will_of_a_replaced_incarnation_is_ignored(sim: Sim) -> None:
    w = sim.route("a1").worker
    out = sim.restart(w, f"{w}-2")
    joined = events(out, "worker_joined")
    assert [(e.worker, e.detail["cause"]) for e in joined] == [(w, "restart")]
    assert published(out) and serves(published(out)[0], w)  # its assignment is sent again
    late = messages.WorkerStatus(worker=w, incarnation=f"{w}-1", state="offline", ts=sim.ts)
    out = sim.feed(WorkerOffline(sim.now, sim.ts, late))
    assert [(e.kind, e.detail["worker_incarnation"]) for e in events(out)] == [
        ("stale_offline_ignored", f"{w}-1")
    ]
    assert events(sim.run(1.0), "failure_detected") == []
    assert sim.route("a1").worker == w


# -- leadership --------------------------------------------------------------------------------


def test_takeover_keeps_apps_where_they_are() -> None:
    s = Sim(mesh_config(method="lp"))
    kept = (
        messages.PlacementEntry("a1", "w1", LITE2, "primary"),
        messages.PlacementEntry("a2", "w3", LITE2, "primary"),
        messages.PlacementEntry("a1", "w2", LITE2, "warm"),
    )
    old = messages.Placement(term=3, generation=41, ts=s.ts, entries=kept, solver="lp")
    s.feed(InheritedPlacement(s.now, s.ts, old))
    out = s.start(term=4)
    take = events(out, "coordinator_takeover")[0]
    assert take.detail == {
        "term": 4,
        "inherited_term": 3,
        "inherited_generation": 41,
        "kept": ["a1", "a2"],
    }
    req = plans(out)[0].request
    assert req.reason == "takeover" and req.sticky == {"a1": ("w1", LITE2), "a2": ("w3", LITE2)}
    st = s.latest
    assert (st.term, st.generation) == (4, 1)
    assert {(r.app, r.worker, r.variant) for r in st.routes} == {
        ("a1", "w1", LITE2),
        ("a2", "w3", LITE2),
    }


def test_a_worker_that_dies_before_a_new_leaders_first_plan_gets_its_failover_event() -> None:
    s = Sim(mesh_config(method="lp"))
    kept = (
        messages.PlacementEntry("a1", "w1", LITE2, "primary"),
        messages.PlacementEntry("a2", "w3", LITE2, "primary"),
    )
    old = messages.Placement(term=3, generation=41, ts=s.ts, entries=kept, solver="lp")
    s.feed(InheritedPlacement(s.now, s.ts, old))
    for w in s.workers:
        s.status(w)
    s.feed(TermAcquired(s.now, s.ts, 4))  # the takeover plan is asked for ...
    s.kill("w1")  # ... and a1's primary dies before it comes
    out = s.run_until(lambda o: events(o, "failover"), 2.0, "failover event")
    fo = events(out, "failover")[0]
    assert (fo.worker, fo.detail["source"], fo.detail["cause"]) == ("w1", "plan", "last_will")
    assert fo.detail["recoveries"]["a1"]["server"] != "w1"
    assert s.route("a1").worker != "w1" and s.route("a2").worker == "w3"


def test_a_core_that_stepped_down_decides_nothing(sim: Sim) -> None:
    assert sim.feed(SteppedDown(sim.now, sim.ts, "c2", 2)) == []
    assert sim.kill(sim.route("a1").worker) == []
    assert sim.run(1.0) == []


def test_what_membership_saw_while_starting_is_handled_after_the_first_plan_is_asked() -> None:
    s = Sim()
    for w in WORKERS:
        s.status(w)
    s.kill("w3")  # dies before we lead: not every worker is alive, so we wait for it
    s.feed(TermAcquired(s.now, s.ts, 1))
    assert plans(s.run(9.9)) == []
    out = s.run(0.2)
    assert [type(d).__name__ for d in out][:1] == ["RequestPlan"]
    assert plans(out)[0].request.alive == frozenset({"w1", "w2"})
    assert [(e.kind, e.worker) for e in events(out)][:5] == [
        ("worker_joined", "w1"),
        ("worker_joined", "w2"),
        ("worker_joined", "w3"),
        ("failure_detected", "w3"),
        ("replan", ""),
    ]
    # A failure before any plan fences the worker: everyone's (empty) assignment goes out.
    before, first = published(out)[:2]
    assert before.generation == 1 and all(wp.serve == () for _w, wp in before.workers)
    assert first.generation == 2 and first.worker("w3").serve == ()
    assert {r.worker for r in first.routes} <= {"w1", "w2"}


# -- a static plan -----------------------------------------------------------------------------


def test_static_plan_is_published_as_written_and_judges_nobody() -> None:
    cfg = mesh_config(
        coordinator={
            "type": "static",
            "assignments": {
                "w1": [{"app": "a1", "variant": LITE0}],
                "w2": [{"app": "a2", "variant": LITE1}],
            },
        }
    )
    s = Sim(cfg, StaticPlanner(cfg, CATALOG))
    out = s.feed(TermAcquired(s.now, s.ts, 2))  # no wait for births
    assert [d.request.reason for d in plans(out)] == ["startup"]
    s.run(0.02)
    st = s.latest
    assert (st.term, st.generation, st.solver, st.objective) == (2, 1, "static", None)
    assert st.worker("w1").serve == (messages.Serve("a1", "cam1", LITE0),)
    assert st.worker("w1").disk == st.worker("w1").warm == () and st.worker("w3").serve == ()
    assert {(r.app, r.worker, r.state) for r in st.routes} == {
        ("a1", "w1", "serving"),
        ("a2", "w2", "serving"),
    }
    assert {(e.app, e.worker, e.role) for e in st.entries} == {
        ("a1", "w1", "primary"),
        ("a2", "w2", "primary"),
    }
    out = s.status("w1") + s.kill("w1") + s.run(2.0)
    assert events(out) == [] and published(out) == []
    assert [d.event for d in out if isinstance(d, Note)] == ["member", "member"]


def test_static_plan_refuses_a_variant_of_another_family() -> None:
    cfg = mesh_config(
        coordinator={
            "type": "static",
            "assignments": {"w1": [{"app": "a1", "variant": "resnet_synth18"}]},
        }
    )
    with pytest.raises(ValueError, match="family"):
        StaticPlanner(cfg, CATALOG)


def test_generations_only_grow(sim: Sim) -> None:
    sim.kill(sim.route("a2").worker)
    sim.run(2.0)
    gens = [st.generation for st in published(sim.log_decisions())]
    assert gens == sorted(gens) and len(set(gens)) == len(gens)
    assert list(itertools.accumulate(gens, max)) == gens
