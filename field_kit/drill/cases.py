"""The named fault cases, etcd-style: each injects one fault, waits for its effect, recovers,
and adds the checks that are its own (the runner adds the invariants every case keeps)."""

from __future__ import annotations

import abc
import signal
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from coordinator.planner import Problem, plan
from faillite import messages
from faillite.stats import percentiles
from field_kit.drill.analysis import (
    Check,
    Fault,
    Recording,
    failover_metrics,
    false_suspicions,
    service_gaps,
)
from field_kit.drill.hogs import Hogs, usable_cpus
from field_kit.drill.mesh import APPS, WORKERS, DrillMesh, MeshSpec
from field_kit.drill.netns import Impairment, netem_problem, root_problem

# Causes that say "this worker is dead". NO_FAIL_WITH_STRESS and the load cases count every
# cause, these and the others (slo_gray...): on a board with no fault, any verdict is false.
LIVENESS_CAUSES = ("heartbeat_silence", "last_will", "stalled", "graceful")


@dataclass(frozen=True, slots=True)
class DrillOptions:
    broker: str = "amqtt"
    short: bool = True  # CI form: seconds, not minutes
    hold_s: float | None = None  # how long the cases that hold a fault or load hold it
    effect_timeout_s: float = 30.0
    # BOOT_ORDER: the orders to boot in (each a tuple of mesh.ROLES; empty: the case's own
    # choice for the form), and the delay between two roles (None: the form's).
    orders: tuple[tuple[str, ...], ...] = ()
    boot_delay_s: float | None = None

    def hold(self, long_s: float = 600.0, short_s: float = 15.0) -> float:
        if self.hold_s is not None:
            return self.hold_s
        return short_s if self.short else long_s


@dataclass
class DrillContext:
    mesh: DrillMesh
    opts: DrillOptions
    affected: list[str] = field(default_factory=list)  # apps served by a target at injection
    notes: dict[str, Any] = field(default_factory=dict)
    extra_faults: list[Fault] = field(default_factory=list)

    def affected_by(self, targets: set[str]) -> list[str]:
        return [a for a in APPS if self.mesh.serving(a) & targets]

    def wait_recovered(self, targets: set[str], apps: list[str] | None = None) -> None:
        m = self.mesh
        since = time.monotonic()
        for app in apps if apps is not None else self.affected:

            def moved(app: str = app) -> bool:
                rs = m.rec.messages(m.topics.app_results_filter(app), messages.Result, since=since)
                return any(r.worker not in targets for r in rs)

            m.rec.wait_for(moved, self.opts.effect_timeout_s, f"{app} served by a survivor")

    def wait_event(self, kind: str, since_ts: float, timeout: float, **match: Any) -> Any:
        m = self.mesh

        def found() -> messages.Event | None:
            for e in m.rec.messages(m.topics.events, messages.Event):
                if (
                    e.kind == kind
                    and e.ts >= since_ts
                    and all(getattr(e, k, e.detail.get(k)) == v for k, v in match.items())
                ):
                    return e
            return None

        return m.rec.wait_for(found, timeout, f"event {kind} {match}")


class FaultCase(abc.ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    needs_root: ClassVar[bool] = False
    needs_broker: ClassVar[str | None] = None  # a broker kind the case needs (a bridged pair)
    needs_broker_why: ClassVar[str] = ""
    # How long the runner waits for the mesh to be steady again after recover().
    settle_timeout_s: ClassVar[float] = 90.0

    @property
    def label(self) -> str:
        """The case's name, with its parameters when it has some (BOOT_ORDER's order)."""
        return self.name

    def variants(self, opts: DrillOptions) -> list[FaultCase]:
        """The runs ``faillite drill`` makes of this case with ``opts``: itself, or one per
        parameter (BOOT_ORDER: one per boot order)."""
        return [self]

    def start(self, ctx: DrillContext) -> None:
        """Start the mesh and wait until it is steady (apps served and protected): what the
        fault is injected into. The boot cases start the mesh their own way."""
        ctx.mesh.start()
        ctx.mesh.wait_steady(90)

    def why_not(self) -> str | None:
        """Why this case cannot run here (no root, no namespaces), or None."""
        return root_problem() if self.needs_root else None

    def why_not_on(self, opts: DrillOptions) -> str | None:
        """Why this case cannot run here with ``opts`` (the broker asked for), or None."""
        if self.needs_broker is not None and opts.broker != self.needs_broker:
            return f"needs --broker {self.needs_broker}: {self.needs_broker_why}"
        return self.why_not()

    def spec(self, opts: DrillOptions) -> MeshSpec:
        return MeshSpec(broker=opts.broker)

    @abc.abstractmethod
    def inject(self, ctx: DrillContext) -> Fault: ...

    def await_effect(self, ctx: DrillContext, fault: Fault) -> None:
        ctx.wait_recovered(set(fault.targets))

    @abc.abstractmethod
    def recover(self, ctx: DrillContext, fault: Fault) -> Fault: ...

    def recoverable(self, ctx: DrillContext, fault: Fault) -> list[str]:
        return ctx.affected

    def checks(self, ctx: DrillContext, rec: Recording, fault: Fault, end: float) -> list[Check]:
        return []

    def metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        return failover_metrics(rec, fault, ctx.affected, ctx.mesh.catalog)


def _primary(ctx: DrillContext, app: str = "a1") -> str:
    w = ctx.mesh.role_of(app, "primary")
    if w is None:
        raise LookupError(f"{app} has no primary")
    return w


def _signal_primary(ctx: DrillContext, sig: signal.Signals, kind: str) -> Fault:
    """Send ``sig`` to the critical app's primary; the fault, stamped just before."""
    w = _primary(ctx)
    ctx.affected = ctx.affected_by({w})
    t = time.time()
    ctx.mesh.signal(w, sig)
    return Fault(kind, (w,), t)


def _restart(ctx: DrillContext, fault: Fault) -> Fault:
    """Start the killed workers again (new incarnations)."""
    for w in fault.targets:
        ctx.mesh.start_worker(w)
    return replace(fault, t_recover=time.time())


def _no_suspicion(suspected: list[str]) -> Check:
    return Check(
        "no_false_suspicion",
        not suspected,
        "no worker suspected" if not suspected else "suspected: " + "; ".join(suspected),
    )


def _liveness_suspicions(rec: Recording, since: float, harmed: tuple[str, ...]) -> list[str]:
    return [
        s
        for s in false_suspicions(rec, since, harmed)
        if any(f"({c})" in s for c in LIVENESS_CAUSES)
    ]


def wall(ts: float) -> str:
    """A wall-clock time as the processes' logs print it (UTC, ms)."""
    return time.strftime("%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def verdicts(
    rec: Recording, since: float, harmed: dict[str, float] | None = None, until: float = 1e18
) -> list[str]:
    """Every time a worker was judged failed in [since, until], by any cause (liveness,
    ``stalled``, ``slo_gray``, anything the coordinator names): each ``failure_detected``
    event, and each ``failover`` with no such event of its worker within 2 s (a verdict
    however it was reached). ``harmed``: worker -> when the drill harmed it; its verdicts
    from then on are expected, not counted. Each with its time from ``since`` and its wall
    clock."""
    harmed = harmed or {}

    def counted(e: messages.Event) -> bool:
        return e.ts <= until and not (e.worker in harmed and e.ts >= harmed[e.worker])

    detected = [e for e in rec.events_of("failure_detected", since) if counted(e)]
    out = [(e.ts, f"{e.worker} judged failed ({e.detail.get('cause')})") for e in detected]
    for e in rec.events_of("failover", since):
        if counted(e) and not any(
            d.worker == e.worker and abs(d.ts - e.ts) <= 2.0 for d in detected
        ):
            out.append((e.ts, f"{e.worker} failed over ({e.detail.get('cause')})"))
    return [f"{what} at +{ts - since:.2f} s ({wall(ts)})" for ts, what in sorted(out)]


def check_no_verdict(found: list[str], name: str = "no_worker_failed") -> Check:
    return Check(
        name,
        not found,
        "no worker judged failed, by any cause"
        if not found
        else f"{len(found)} verdict(s): " + "; ".join(found),
    )


# -- crash faults ----------------------------------------------------------------------------


class KillPrimary(FaultCase):
    name = "KILL_PRIMARY"
    summary = "SIGKILL the worker serving the critical app: its warm backup takes over"

    def inject(self, ctx: DrillContext) -> Fault:
        return _signal_primary(ctx, signal.SIGKILL, "kill")

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        return _restart(ctx, fault)


class KillPrimaryHot(FaultCase):
    name = "KILL_PRIMARY_HOT"
    summary = (
        "SIGKILL the worker serving the hot app: its hot backup, which ran every frame "
        "unpublished, takes over and publishes only the frames the primary did not"
    )

    def spec(self, opts: DrillOptions) -> MeshSpec:
        return MeshSpec(broker=opts.broker, hot=True)

    def inject(self, ctx: DrillContext) -> Fault:
        backup = ctx.mesh.role_of("a1", "hot")
        ctx.notes["hot_backup"] = backup
        if backup is not None:  # it runs a1's frames but publishes none of them
            ever = ctx.mesh.serving("a1", within_s=1e9)
            ctx.notes["hot_published_before"] = int(backup in ever)
        return _signal_primary(ctx, signal.SIGKILL, "kill")

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        return _restart(ctx, fault)

    def checks(self, ctx: DrillContext, rec: Recording, fault: Fault, end: float) -> list[Check]:
        seqs = Counter(r.seq for r in rec.results.get("a1", []))
        dupes = sorted(s for s, n in seqs.items() if n > 1)
        kinds = [
            e.detail["recoveries"]["a1"].get("kind")
            for e in rec.events
            if e.kind == "failover" and "a1" in e.detail.get("recoveries", {})
        ]
        before = ctx.notes.get("hot_published_before")
        return [
            Check(
                "hot_backup_planned",
                ctx.notes.get("hot_backup") is not None and before == 0,
                f"hot backup {ctx.notes.get('hot_backup')}, published results before the "
                f"kill: {'yes' if before else 'no'}",
            ),
            Check("promoted_hot", kinds[:1] == ["hot"], f"a1 recovered as {kinds or 'nothing'}"),
            Check(
                "no_duplicate_results",
                not dupes,
                f"{seqs.total()} results of a1, each frame once"
                if not dupes
                else f"frames of a1 with two results: {dupes[:10]}",
            ),
        ]


class KillBackup(FaultCase):
    name = "KILL_BACKUP"
    summary = "SIGKILL the critical app's warm backup: the app is protected again elsewhere"

    def inject(self, ctx: DrillContext) -> Fault:
        w = ctx.mesh.role_of("a1", "warm") or ctx.mesh.backup_of("a1")
        if w is None:
            raise LookupError("a1 has no backup")
        ctx.affected = ctx.affected_by({w})
        t = time.time()
        ctx.mesh.signal(w, signal.SIGKILL)
        return Fault("kill", (w,), t)

    def await_effect(self, ctx: DrillContext, fault: Fault) -> None:
        super().await_effect(ctx, fault)
        m = ctx.mesh

        def reprotected() -> messages.Placement | None:
            p = m.placement()
            b = m.backup_of("a1")
            return p if p is not None and b is not None and b not in fault.targets else None

        p = m.rec.wait_for(reprotected, ctx.opts.effect_timeout_s, "a1 protected again")
        assert p is not None
        ctx.notes["reprotect_ms"] = round((p.ts - fault.t_inject) * 1000, 1)
        ctx.notes["new_backup"] = m.backup_of("a1")

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        return _restart(ctx, fault)

    def metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        out = super().metrics(ctx, rec, fault)
        out["reprotect_ms"] = ctx.notes.get("reprotect_ms")
        out["service_gap_ms"] = service_gaps(
            rec, APPS, fault.t_inject, fault.t_recover or fault.t_inject
        )
        return out


class DoubleFailure(FaultCase):
    name = "DOUBLE_FAILURE"
    summary = "SIGKILL two workers at once: the survivor serves every app that fits on it"

    def inject(self, ctx: DrillContext) -> Fault:
        a, b = _primary(ctx, "a1"), _primary(ctx, "a2")
        if a == b:
            b = ctx.mesh.backup_of("a1") or next(w for w in WORKERS if w != a)
        targets = {a, b}
        ctx.affected = ctx.affected_by(targets)
        children = [ctx.mesh.proc(w) for w in sorted(targets)]
        t = time.time()
        for c in children:  # at the same instant, not one after the other
            c.proc.send_signal(signal.SIGKILL)
        for c in children:
            c.proc.wait(10)
            ctx.mesh.killed.add(c.name)
        return Fault("kill", tuple(sorted(targets)), t)

    def recoverable(self, ctx: DrillContext, fault: Fault) -> list[str]:
        """What the planner itself can place on the survivor (an independent answer)."""
        m = ctx.mesh
        assert m.cfg is not None
        survivors = set(WORKERS) - set(fault.targets)
        problem = Problem.from_config(m.cfg, m.catalog, survivors)
        placed = plan(problem, "greedy").primary
        return [a for a in ctx.affected if a in placed]

    def await_effect(self, ctx: DrillContext, fault: Fault) -> None:
        ctx.wait_recovered(set(fault.targets), self.recoverable(ctx, fault))

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        return _restart(ctx, fault)


# -- silent and gray faults ------------------------------------------------------------------


class SigstopWorker(FaultCase):
    name = "SIGSTOP_WORKER"
    summary = "freeze the critical app's worker (socket open, only heartbeats tell), thaw it"

    def inject(self, ctx: DrillContext) -> Fault:
        return _signal_primary(ctx, signal.SIGSTOP, "stop")

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        t = time.time()
        for w in fault.targets:
            ctx.mesh.signal(w, signal.SIGCONT)
        for w in fault.targets:
            ctx.wait_event("worker_recovered", t, 60, worker=w)
        return replace(fault, t_recover=t)


class SlowWorker(FaultCase):
    name = "SLOW_WORKER"
    summary = "make the critical app's worker 0.5 s slower per frame: downsize, then fail over"

    def inject(self, ctx: DrillContext) -> Fault:
        return _signal_primary(ctx, signal.SIGUSR2, "slow")

    def await_effect(self, ctx: DrillContext, fault: Fault) -> None:
        w = fault.targets[0]
        ctx.wait_event("failover", fault.t_inject, 60, worker=w, cause="slo_gray")
        ctx.wait_recovered(set(fault.targets))

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        t = time.time()
        for w in fault.targets:
            ctx.mesh.signal(w, signal.SIGUSR2)  # toggles the delay off
        for w in fault.targets:
            ctx.wait_event("worker_recovered", t - 30, 60, worker=w, cause="probation_over")
        return replace(fault, t_recover=t)

    def checks(self, ctx: DrillContext, rec: Recording, fault: Fault, end: float) -> list[Check]:
        # A worker slow on its own moves its apps (slo_gray); shedding on it first is allowed
        # (it is not judged while it settles after taking apps), and said.
        gray = [
            e
            for e in rec.events_of("failover", fault.t_inject)
            if e.worker in fault.targets and e.detail.get("cause") == "slo_gray"
        ]
        shed = [e for e in rec.events_of("shed", fault.t_inject) if e.worker in fault.targets]
        return [
            Check(
                "judged_slow",
                bool(gray),
                f"gray failover of {', '.join(fault.targets)}"
                + (f", but it shed {len(shed)} step(s) first" if shed else "")
                if gray
                else "no slo_gray failover of the slow worker",
            )
        ]


class FlappingWorker(FaultCase):
    name = "FLAPPING_WORKER"
    summary = "freeze and thaw the critical app's worker again and again around the detector"

    cycles_short, cycles_long = 3, 6
    # Each freeze outlasts the silence floor even stretched the most by a busy host's load
    # (4 intervals x 3 + confirmation: 1.25 s at 100 ms heartbeats), so every cycle is
    # around the detector on any board.
    stop_s, run_s = 1.6, 1.2

    def inject(self, ctx: DrillContext) -> Fault:
        w = _primary(ctx)
        ctx.affected = ctx.affected_by({w})
        t = time.time()
        n = self.cycles_short if ctx.opts.short else self.cycles_long
        for _ in range(n):
            ctx.mesh.signal(w, signal.SIGSTOP)
            time.sleep(self.stop_s)
            ctx.mesh.signal(w, signal.SIGCONT)
            time.sleep(self.run_s)
        ctx.notes["cycles"] = n
        return Fault("flap", (w,), t)

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        t = time.time()
        ctx.mesh.signal(fault.targets[0], signal.SIGCONT)
        ctx.wait_event("worker_recovered", fault.t_inject, 60, worker=fault.targets[0])
        return replace(fault, t_recover=t)

    def checks(self, ctx: DrillContext, rec: Recording, fault: Fault, end: float) -> list[Check]:
        fos = [e for e in rec.events_of("failover", fault.t_inject) if e.worker in fault.targets]
        n = int(ctx.notes.get("cycles", 0))
        return [
            Check(
                "bounded_failovers",
                1 <= len(fos) <= n,
                f"{len(fos)} failover(s) in {n} freeze cycles (a flapping worker stays fenced "
                "until its heartbeats are steady again)",
            )
        ]


# -- network faults (root) -------------------------------------------------------------------


class PartitionWorker(FaultCase):
    name = "PARTITION_WORKER"
    summary = "cut the veth link of the critical app's worker (own network namespace), heal it"
    needs_root = True
    cut_s = 3.0

    def spec(self, opts: DrillOptions) -> MeshSpec:
        return MeshSpec(broker=opts.broker, netns=True)

    def inject(self, ctx: DrillContext) -> Fault:
        w = _primary(ctx)
        ctx.affected = ctx.affected_by({w})
        t = time.time()
        ctx.mesh.namespaces[w].cut()
        return Fault("cut", (w,), t)

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        time.sleep(max(0.0, self.cut_s - (time.time() - fault.t_inject)))
        t = time.time()
        for w in fault.targets:
            ctx.mesh.namespaces[w].heal()
        for w in fault.targets:
            ctx.wait_event("worker_recovered", t, 60, worker=w)
        return replace(fault, t_recover=t)


class WifiLossy(FaultCase):
    name = "WIFI_LOSSY"
    summary = "every worker on a WiFi-like link (delay, jitter, loss): nobody may be suspected"
    needs_root = True
    impairment = Impairment(delay_ms=20.0, jitter_ms=15.0, loss_pct=2.0)

    def __init__(self) -> None:
        self._netem: str | None = None

    def why_not(self) -> str | None:
        problem = root_problem()
        if problem is None:
            self._netem = netem_problem()
        return problem

    def spec(self, opts: DrillOptions) -> MeshSpec:
        # Workers on WiFi beat slower: their detectors scale with their own interval. TCP
        # holds a lost segment for its retransmission timeout (200 ms, then 400, 800 ms...):
        # two losses in a row stall a heartbeat ~0.6 s, past a 0.25 s interval's 0.625 s floor
        # (3 false suspicions in 10 minutes at 2 % loss); 0.5 s beats put the floor at 1.25 s.
        return MeshSpec(
            broker=opts.broker,
            netns=True,
            impairment=self.impairment,
            impair_in_proxy=self._netem is not None,
            heartbeat_s=0.5,
            keepalive_s=5,
        )

    def inject(self, ctx: DrillContext) -> Fault:
        ctx.notes["impairment"] = (
            "tc netem on each worker's veth link"
            if self._netem is None
            else f"user-space link forwarder ({self._netem})"
        )
        t = time.time()
        time.sleep(ctx.opts.hold(600.0, 20.0))
        return Fault("impair", (), t)

    def await_effect(self, ctx: DrillContext, fault: Fault) -> None:
        return None

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        return replace(fault, t_recover=time.time())

    def checks(self, ctx: DrillContext, rec: Recording, fault: Fault, end: float) -> list[Check]:
        sus = false_suspicions(rec, fault.t_inject)
        return [_no_suspicion(sus)]

    def metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        until = fault.t_recover or fault.t_inject
        lat = [
            (r.ts - r.capture_ts) * 1000
            for rs in rec.results.values()
            for r in rs
            if fault.t_inject <= r.ts <= until
        ]
        p = percentiles(lat) if lat else None
        proxies = ctx.mesh.proxies.values()
        return {
            "held_s": round(until - fault.t_inject, 1),
            "impairment": ctx.notes.get("impairment"),
            "link": {
                "delay_ms": self.impairment.delay_ms,
                "jitter_ms": self.impairment.jitter_ms,
                "loss_pct": self.impairment.loss_pct,
            },
            "segments_lost": sum(p.stats.lost for p in proxies),
            "results": len(lat),
            "e2e_latency_ms": {"p50": round(p.p50, 1), "p99": round(p.p99, 1)} if p else None,
            "service_gap_ms": service_gaps(rec, APPS, fault.t_inject, until),
            "false_suspicions": len(false_suspicions(rec, fault.t_inject)),
        }


# -- control-plane and broker faults ---------------------------------------------------------


class KillCoordinator(FaultCase):
    name = "KILL_COORDINATOR"
    summary = "SIGKILL the leader coordinator: the standby takes over, apps never notice"

    def inject(self, ctx: DrillContext) -> Fault:
        t = time.time()
        ctx.mesh.signal("c1", signal.SIGKILL)
        return Fault("kill_coordinator", ("c1",), t)

    def await_effect(self, ctx: DrillContext, fault: Fault) -> None:
        e = ctx.wait_event("coordinator_takeover", fault.t_inject, 30)
        ctx.notes["takeover_ms"] = round((e.ts - fault.t_inject) * 1000, 1)
        ctx.notes["new_term"] = e.detail.get("term")
        # The new leader must do the job: fail the critical app's primary over.
        ctx.mesh.wait_steady(60, settle_s=0.5)
        w = _primary(ctx)
        ctx.affected = ctx.affected_by({w})
        t = time.time()
        ctx.mesh.signal(w, signal.SIGKILL)
        second = Fault("kill", (w,), t)
        ctx.extra_faults.append(second)
        ctx.wait_recovered({w})
        ctx.mesh.start_worker(w)

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        ctx.mesh.start_coordinator("c1", standby=True, rank=2)
        return replace(fault, t_recover=time.time())

    def checks(self, ctx: DrillContext, rec: Recording, fault: Fault, end: float) -> list[Check]:
        until = ctx.extra_faults[0].t_inject if ctx.extra_faults else end
        gaps = service_gaps(rec, APPS, fault.t_inject, until)
        worst = max(gaps.values())
        return [
            Check(
                "served_while_leaderless",
                worst < 1000.0,
                f"longest gap in results while the leader changed: {worst:.0f} ms",
            )
        ]

    def metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        second = ctx.extra_faults[0] if ctx.extra_faults else None
        return {
            "takeover_ms": ctx.notes.get("takeover_ms"),
            "new_term": ctx.notes.get("new_term"),
            "failover_by_new_leader": (
                failover_metrics(rec, second, ctx.affected, ctx.mesh.catalog) if second else None
            ),
        }


class RestartBroker(FaultCase):
    name = "RESTART_BROKER"
    summary = "stop the broker (retained state lost) and start it again on the same port"
    down_s = 2.0

    def inject(self, ctx: DrillContext) -> Fault:
        t = time.time()
        ctx.mesh.restart_broker(self.down_s)
        ctx.notes["broker_back_ts"] = time.time()
        return Fault("broker_restart", ("broker",), t)

    def await_effect(self, ctx: DrillContext, fault: Fault) -> None:
        ctx.mesh.wait_steady(60, settle_s=0.5)

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        return replace(fault, t_recover=float(ctx.notes["broker_back_ts"]))

    def checks(self, ctx: DrillContext, rec: Recording, fault: Fault, end: float) -> list[Check]:
        sus = false_suspicions(rec, fault.t_inject)
        fos = rec.events_of("failover", fault.t_inject)
        return [
            Check(
                "no_false_suspicion",
                not sus and not fos,
                "no worker suspected, no failover"
                if not sus and not fos
                else f"suspected: {'; '.join(sus)}; failovers: {len(fos)}",
            )
        ]

    def metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        back = float(ctx.notes["broker_back_ts"])
        firsts = {}
        for app in APPS:
            r = next((r for r in rec.results.get(app, []) if r.ts >= back), None)
            firsts[app] = round((r.ts - back) * 1000, 1) if r else None
        return {
            "broker_down_ms": round((back - fault.t_inject) * 1000, 1),
            "first_result_after_restart_ms": firsts,
        }


class NoFailWithStress(FaultCase):
    name = "NO_FAIL_WITH_STRESS"
    summary = (
        "no fault, every core busy with other work (a hog per CPU, each in its own session): "
        "no worker may be judged failed, by any cause"
    )

    def inject(self, ctx: DrillContext) -> Fault:
        n = usable_cpus()
        t = time.time()
        ctx.notes["hogs"] = ctx.mesh.hogs(n)
        ctx.notes["stress_processes"] = n
        time.sleep(ctx.opts.hold(600.0, 20.0))
        return Fault("stress", (), t)

    def await_effect(self, ctx: DrillContext, fault: Fault) -> None:
        return None

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        t = time.time()
        hogs = ctx.notes.get("hogs")
        if isinstance(hogs, Hogs):
            hogs.stop()
        return replace(fault, t_recover=t)

    def checks(self, ctx: DrillContext, rec: Recording, fault: Fault, end: float) -> list[Check]:
        return [check_no_verdict(verdicts(rec, fault.t_inject), "no_false_suspicion")]

    def metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        until = fault.t_recover or fault.t_inject
        slo = rec.events_of("slo_violation", fault.t_inject)
        return {
            "held_s": round(until - fault.t_inject, 1),
            "stress_processes": ctx.notes.get("stress_processes"),
            "results": {
                a: sum(1 for r in rs if fault.t_inject <= r.ts <= until)
                for a, rs in rec.results.items()
            },
            "service_gap_ms": service_gaps(rec, APPS, fault.t_inject, until),
            "false_suspicions": len(verdicts(rec, fault.t_inject)),
            "liveness_suspicions": len(_liveness_suspicions(rec, fault.t_inject, ())),
            "slo_actions": [f"{e.app}: {e.detail.get('action')}" for e in slo],
            "gray_failovers": len(
                [
                    e
                    for e in rec.events_of("failure_detected", fault.t_inject)
                    if e.detail.get("cause") == "slo_gray"
                ]
            ),
        }


CASES: dict[str, type[FaultCase]] = {
    c.name: c
    for c in (
        KillPrimary,
        KillPrimaryHot,
        KillBackup,
        SigstopWorker,
        SlowWorker,
        FlappingWorker,
        PartitionWorker,
        WifiLossy,
        KillCoordinator,
        RestartBroker,
        DoubleFailure,
        NoFailWithStress,
    )
}
