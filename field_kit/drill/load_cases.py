"""The drill cases of a board as it really lives (issue 20): busy with other work, booting late
or in any order, loading models slowly. Etcd-style, as :mod:`field_kit.drill.cases`: each
injects, awaits its effect, recovers and adds its own checks; the runner adds the invariants
every case keeps.

- ``BUSY_BOARD``: CPU hogs at normal priority, each in its own session (:class:`Hogs`), first as
  many as usable CPUs, then twice as many (half the hold each; short 24 s, long 10 minutes), on
  the demo's shape (:func:`busy_spec`): no worker judged failed by any cause, no app ever
  unserved (its route; a non-critical app ``shed`` is a degradation), no app without results
  for more than 5 s unless shed; degradation (``shed``, ``unshed``, ``slo_violation``) allowed.
- ``KILL_UNDER_LOAD``: a hog per CPU running (5 s before the kill, 20 s after; long: 60 s, then
  ``--hold`` or 120 s), the busiest worker killed: every app served by a survivor at the end of
  the loaded time, no survivor judged failed, recovered as KILL_PRIMARY.
- ``LATE_WORKERS``: broker, coordinators and cameras first, the workers well past the
  coordinator's ``startup_wait_s``: every app served.
- ``BOOT_ORDER``: every role started in a given order, some delay apart (the broker last, in the
  short form): every app served; the time from the last role up to that is the metric.
- ``SLOW_LOAD``: every model load takes seconds (the faults plug-in, SIGRTMIN); a failover makes
  the coordinator order loads: a worker busy loading what it was told to is not judged failed.

Times in checks are seconds from the case's own start of the fault and the wall clock (UTC) as
the processes' logs print it, so a failure can be found in their logs.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from faillite import messages
from faillite.stats import percentiles
from field_kit.drill.analysis import Check, Fault, Recording, service_gaps
from field_kit.drill.cases import (
    DrillContext,
    DrillOptions,
    FaultCase,
    check_no_verdict,
    verdicts,
    wall,
)
from field_kit.drill.faults import SLOW_LOAD_S, SLOW_LOAD_SIGNAL
from field_kit.drill.hogs import Hogs, usable_cpus
from field_kit.drill.mesh import APPS, ROLES, WORKERS, DrillMesh, MeshSpec

# Events of a mesh degrading on purpose, allowed under load (each with its reason).
DEGRADATION_EVENTS = ("shed", "unshed", "slo_violation")
# The longest an app may go without a result while the board is busy: a camera app with
# nothing for this long is unserved, whatever its route says.
MAX_GAP_S = 5.0
# How long the boot cases give the mesh, from its last role up, to serve every app.
SERVED_WITHIN_S = 30.0
# The busy-board cases run the demo's shape (configs/demo.yaml): workers big enough to hold both
# apps, so the plan puts both on one worker (Lite2) and a warm backup of both on another, with
# the demo's SLOs (a1, a2; ms). That is a board doing real work: measured on a 2-core machine,
# the serving worker's heartbeat mean latency is ~75-95 ms idle (p50; bursts to ~330) and
# ~420-620 ms with nproc or 2 x nproc hogs, so the hogs push it well past its SLOs and the
# coordinator's decisions under overload are what is tested. (The drill mesh's own shape, one
# app per 150 MB worker with SLOs of 400 and 600 ms, stays inside them under 2 x nproc hogs:
# nothing to decide, nothing caught.)
BUSY_MEMORY_MB = 1024.0
BUSY_SLO_MS = (250.0, 400.0)


def busy_spec(opts: DrillOptions) -> MeshSpec:
    return MeshSpec(broker=opts.broker, slo_ms=BUSY_SLO_MS, worker_memory_mb=BUSY_MEMORY_MB)


# BOOT_ORDER: the short form's order (every role waits for the broker, which comes last) and the
# long form's orders. Role names: mesh.ROLES ("sensor" are the cameras).
BROKER_LAST = ("sensor", "worker", "coordinator", "broker")
LONG_ORDERS: tuple[tuple[str, ...], ...] = (
    BROKER_LAST,
    ("broker", "sensor", "worker", "coordinator"),  # the coordinator last
    ("broker", "coordinator", "sensor", "worker"),  # the workers last
    ("broker", "coordinator", "worker", "sensor"),  # the cameras last
    ("coordinator", "worker", "sensor", "broker"),
    ("worker", "broker", "sensor", "coordinator"),
)
ROLE_ALIASES = {
    "broker": "broker",
    "brokers": "broker",
    "coordinator": "coordinator",
    "coordinators": "coordinator",
    "leader": "coordinator",
    "worker": "worker",
    "workers": "worker",
    "sensor": "sensor",
    "sensors": "sensor",
    "camera": "sensor",
    "cameras": "sensor",
}


# -- pure helpers ----------------------------------------------------------------------------


def parse_order(text: str) -> tuple[str, ...]:
    """A boot order from ``"cameras,workers,coordinator,broker"`` (``>`` or spaces also
    separate; singular or plural; ``camera`` is ``sensor``): every role of
    :data:`~field_kit.drill.mesh.ROLES` exactly once. ValueError says what is wrong."""
    words = [w for w in text.replace(">", ",").replace(" ", ",").lower().split(",") if w]
    roles = []
    for w in words:
        if w not in ROLE_ALIASES:
            raise ValueError(
                f"unknown role {w!r} in boot order {text!r}; roles: {', '.join(ROLES)}"
            )
        roles.append(ROLE_ALIASES[w])
    dupes = sorted(r for r, n in Counter(roles).items() if n > 1)
    missing = [r for r in ROLES if r not in roles]
    if dupes or missing:
        what = [f"twice: {', '.join(dupes)}"] if dupes else []
        what += [f"missing: {', '.join(missing)}"] if missing else []
        raise ValueError(
            f"boot order {text!r} must name each of {', '.join(ROLES)} once ({'; '.join(what)})"
        )
    return tuple(roles)


def order_label(order: Sequence[str]) -> str:
    return ">".join(order)


def busiest_worker(primaries: Iterable[tuple[str, str]], tie_app: str = "a1") -> str:
    """The worker serving the most apps, from (app, worker) pairs of the primaries; a tie goes
    to the primary of ``tie_app`` if it is among the busiest, else to the first by name."""
    pairs = list(primaries)
    if not pairs:
        raise LookupError("no app has a primary")
    counts = Counter(w for _a, w in pairs)
    top = max(counts.values())
    busiest = sorted(w for w, n in counts.items() if n == top)
    tie = next((w for a, w in pairs if a == tie_app), None)
    return tie if tie in busiest else busiest[0]


def unserved_spans(
    routes: Iterable[tuple[float, str, str, str]], until: float
) -> dict[str, list[tuple[float, float, str]]]:
    """Per app, the spans its route said nobody serves it, each with that state: from each
    (ts, app, state, worker) whose state is ``unserved`` or ``shed`` (paused on purpose under
    overload), or that names no worker (``unserved``), to the app's next route in another
    state, or ``until``. Routes in any order."""
    out: dict[str, list[tuple[float, float, str]]] = {}
    cur: dict[str, tuple[float, str]] = {}
    for ts, app, state, worker in sorted(routes):
        down = state if state in ("unserved", "shed") else "unserved" if not worker else None
        was = cur.get(app)
        if was is not None and down != was[1]:
            out.setdefault(app, []).append((was[0], ts, was[1]))
            del cur[app]
        if down is not None and app not in cur:
            cur[app] = (ts, down)
    for app, (t0, state) in cur.items():
        out.setdefault(app, []).append((t0, max(t0, until), state))
    return out


def seconds_in(
    spans: dict[str, list[tuple[float, float, str]]], state: str, since: float
) -> dict[str, float]:
    """Per app, the seconds of its spans in ``state`` after ``since``."""
    out = {}
    for app, ss in spans.items():
        total = sum(b - max(a, since) for a, b, st in ss if st == state and b >= since)
        if total > 0:
            out[app] = round(total, 1)
    return out


def first_all_served(results: dict[str, list[float]], apps: Sequence[str], since: float) -> float:
    """When every app of ``apps`` had a result at or after ``since`` (the latest of their first
    results); infinity if one has none."""
    firsts = []
    for app in apps:
        t = min((ts for ts in results.get(app, []) if ts >= since), default=None)
        if t is None:
            return float("inf")
        firsts.append(t)
    return max(firsts, default=since)


# -- from the recording ------------------------------------------------------------------------


def _wall_offset() -> float:
    """wall = monotonic + this (the recorder stamps arrivals with the monotonic clock)."""
    return time.time() - time.monotonic()


def _mono(ts: float) -> float:
    return ts - _wall_offset()


def routes_of(mesh: DrillMesh) -> list[tuple[float, str, str, str]]:
    """Every route the recorder saw: (wall arrival, app, state, worker)."""
    off = _wall_offset()
    topics = {mesh.topics.app_route(a): a for a in APPS}
    out: list[tuple[float, str, str, str]] = []
    for t, topic, payload in mesh.rec.raw():
        app = topics.get(topic)
        if app is None or not payload:
            continue
        try:
            r = messages.decode(messages.Route, payload)
        except messages.MessageError:
            continue
        out.append((t + off, app, r.state, r.worker))
    return out


def check_never_unserved(mesh: DrillMesh, since: float, until: float) -> Check:
    """No route said an app is unserved in [since, until] (one already unserved at ``since``
    counts from then), and none said the critical app is shed; a non-critical app shed (paused
    on purpose under overload) is a degradation, allowed."""
    assert mesh.cfg is not None
    critical = {a.id for a in mesh.cfg.apps if a.critical}
    found = []
    for app, ss in sorted(unserved_spans(routes_of(mesh), until).items()):
        for a, b, state in ss:
            if b < since or a > until or (state == "shed" and app not in critical):
                continue
            t0 = max(a, since)
            found.append(
                f"{app}{' (critical)' if app in critical else ''} {state} from "
                f"{t0 - since:+.2f} s ({wall(t0)}) for {b - t0:.1f} s"
            )
    return Check(
        "never_unserved",
        not found,
        "no route said an app is unserved (nor the critical app shed)"
        if not found
        else "; ".join(found),
    )


def check_no_gap(
    rec: Recording,
    since: float,
    until: float,
    shed: dict[str, list[tuple[float, float]]] | None = None,
    max_gap_s: float = MAX_GAP_S,
) -> Check:
    """No app without results for more than ``max_gap_s`` in [since, until], except while its
    route said it is shed (``shed``: app -> spans)."""
    bad = []
    for app in APPS:
        ts = [since] + [r.ts for r in rec.results.get(app, []) if since <= r.ts <= until] + [until]
        for a, b in itertools.pairwise(ts):
            paused = sum(max(0.0, min(b, e) - max(a, s)) for s, e in (shed or {}).get(app, []))
            if b - a - paused > max_gap_s:
                bad.append(
                    f"{app}: no result {a - since:+.2f}..{b - since:+.2f} s "
                    f"(from {wall(a)}, {b - a:.1f} s)"
                )
    return Check(
        "results_flowing",
        not bad,
        f"every app had a result at least every {max_gap_s:g} s (while not shed)"
        if not bad
        else "; ".join(bad),
    )


def degradations(rec: Recording, since: float) -> dict[str, Any]:
    """The degradation events (allowed) since ``since``: count per kind and the first few."""
    evs = [e for e in rec.events if e.kind in DEGRADATION_EVENTS and e.ts >= since]
    return {
        "count": dict(Counter(e.kind for e in evs)),
        "first": [
            f"{e.ts - since:+.1f} s {e.kind} {e.app or e.worker}: "
            f"{e.detail.get('action') or e.detail.get('reason') or ''}".rstrip(": ")
            for e in evs[:8]
        ],
    }


def _latency(rec: Recording, since: float, until: float) -> dict[str, Any] | None:
    lat = [
        (r.ts - r.capture_ts) * 1000
        for rs in rec.results.values()
        for r in rs
        if since <= r.ts <= until
    ]
    if not lat:
        return None
    p = percentiles(lat)
    return {"p50": round(p.p50, 1), "p99": round(p.p99, 1), "n": len(lat)}


def _hogs(ctx: DrillContext) -> Hogs | None:
    h = ctx.notes.get("hogs")
    return h if isinstance(h, Hogs) else None


def _stop_hogs(ctx: DrillContext) -> None:
    h = _hogs(ctx)
    if h is not None:
        h.stop()


def _primaries(mesh: DrillMesh) -> list[tuple[str, str]]:
    p = mesh.placement()
    return [(e.app, e.worker) for e in p.entries if e.role == "primary"] if p else []


def _why_unserved(mesh: DrillMesh, since: float) -> str:
    """What the recording says about apps not served since ``since``: their last route, the
    placement, the coordinator's last re-plan."""
    rec = Recording.of(mesh.rec)
    parts = []
    for app in APPS:
        if any(r.ts >= since for r in rec.results.get(app, [])):
            continue
        routes = [r for r in routes_of(mesh) if r[1] == app]
        last = routes[-1] if routes else None
        parts.append(
            f"{app}: no result; "
            + (
                f"last route {last[2]} {last[3] or '(nobody)'} at {wall(last[0])}"
                if last
                else "no route published"
            )
        )
    p = mesh.placement()
    parts.append(
        "placement: "
        + (
            f"generation {p.generation}: "
            + (", ".join(f"{e.app}:{e.role}@{e.worker}" for e in p.entries) or "empty")
            if p
            else "none published"
        )
    )
    replans = [e for e in rec.events if e.kind == "replan"]
    if replans:
        e = replans[-1]
        parts.append(
            f"last replan {e.detail.get('reason')} at {wall(e.ts)} "
            f"(unplaced {e.detail.get('unplaced')})"
        )
    joined = [e for e in rec.events if e.kind == "worker_joined"]
    parts.append(f"worker_joined events: {len(joined)}")
    return "; ".join(parts)


def wait_all_served(ctx: DrillContext, since: float, timeout: float) -> float:
    """Wait until every app has a result stamped at or after ``since`` (wall); when that was
    (the latest first result). AssertionError with what the recording says if not."""
    m = ctx.mesh
    mono = _mono(since) - 1.0  # arrival after the stamp, minus clock noise

    def served() -> float | None:
        stamps: dict[str, list[float]] = {}
        for app in APPS:
            rs = m.rec.messages(m.topics.app_results_filter(app), messages.Result, since=mono)
            stamps[app] = [r.ts for r in rs]
        t = first_all_served(stamps, APPS, since)
        return t if t != float("inf") else None

    try:
        when = m.rec.wait_for(served, timeout, "every app served")
    except AssertionError as exc:
        raise AssertionError(
            f"not every app served {timeout:.0f} s after {wall(since)}: {_why_unserved(m, since)}"
        ) from exc
    assert when is not None
    return when


# -- the cases -------------------------------------------------------------------------------


class BusyBoard(FaultCase):
    name = "BUSY_BOARD"
    summary = (
        "CPU hogs at normal priority, each in its own session, as many as CPUs then twice as "
        "many, on the demo's shape (both apps on one worker): no worker judged failed (any "
        "cause), no app unserved; degrading (shed, unshed, SLO actions) is allowed"
    )
    # Back to steady after the hogs: every shed step taken back, one per calm period.
    settle_timeout_s = 90.0

    def spec(self, opts: DrillOptions) -> MeshSpec:
        return busy_spec(opts)

    def inject(self, ctx: DrillContext) -> Fault:
        n = usable_cpus()
        hold = ctx.opts.hold(600.0, 24.0)
        t = time.time()
        hogs = ctx.notes["hogs"] = ctx.mesh.hogs(n)
        steps = [(n, t)]
        time.sleep(hold / 2)
        hogs.resize(2 * n)
        steps.append((2 * n, time.time()))
        time.sleep(hold / 2)
        ctx.notes["steps"] = steps
        return Fault("hogs", (), t)

    def await_effect(self, ctx: DrillContext, fault: Fault) -> None:
        return None

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        t = time.time()
        _stop_hogs(ctx)
        return replace(fault, t_recover=t)

    def checks(self, ctx: DrillContext, rec: Recording, fault: Fault, end: float) -> list[Check]:
        until = fault.t_recover or end
        spans = unserved_spans(routes_of(ctx.mesh), end)
        shed = {a: [(s, e) for s, e, st in ss if st == "shed"] for a, ss in spans.items()}
        return [
            check_no_verdict(verdicts(rec, fault.t_inject, until=end)),
            check_never_unserved(ctx.mesh, fault.t_inject, end),
            check_no_gap(rec, fault.t_inject, until, shed),
        ]

    def metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        until = fault.t_recover or fault.t_inject
        steps: list[tuple[int, float]] = ctx.notes.get("steps", [])
        bounds = [t for _n, t in steps] + [until]
        spans = unserved_spans(routes_of(ctx.mesh), until)
        return {
            "held_s": round(until - fault.t_inject, 1),
            "usable_cpus": usable_cpus(),
            "hogs": [
                {
                    "hogs": n,
                    "from_s": round(a - fault.t_inject, 1),
                    "e2e_latency_ms": _latency(rec, a, b),
                    "service_gap_ms": service_gaps(rec, APPS, a, b),
                }
                for (n, _t), a, b in zip(steps, bounds, bounds[1:], strict=False)
            ],
            "false_suspicions": len(verdicts(rec, fault.t_inject)),
            "unserved_s": seconds_in(spans, "unserved", fault.t_inject),
            "shed_s": seconds_in(spans, "shed", fault.t_inject),
            "degradation": degradations(rec, fault.t_inject),
        }


class KillUnderLoad(FaultCase):
    name = "KILL_UNDER_LOAD"
    summary = (
        "a CPU hog per CPU running, on the demo's shape, SIGKILL the busiest worker (both apps): "
        "every app served by a survivor at the end, no survivor judged failed"
    )
    settle_timeout_s = 90.0

    def spec(self, opts: DrillOptions) -> MeshSpec:
        return busy_spec(opts)

    def inject(self, ctx: DrillContext) -> Fault:
        t_hogs = time.time()
        ctx.notes["hogs"] = ctx.mesh.hogs(usable_cpus())
        ctx.notes["hogs_since"] = t_hogs
        time.sleep(5.0 if ctx.opts.short else 60.0)  # the board busy before the kill
        m = ctx.mesh
        w = busiest_worker(_primaries(m))
        ctx.affected = sorted(
            set(ctx.affected_by({w})) | {a for a, p in _primaries(m) if p == w},
            key=APPS.index,
        )
        ctx.notes["apps_of_killed"] = ctx.affected
        t = time.time()
        m.signal(w, signal.SIGKILL)
        return Fault("kill", (w,), t)

    def await_effect(self, ctx: DrillContext, fault: Fault) -> None:
        try:
            ctx.wait_recovered(set(fault.targets))
        finally:  # the survivors stay under load a while: a false verdict shows here
            time.sleep(max(0.0, fault.t_inject + self._after_s(ctx.opts) - time.time()))
            ctx.notes["loaded_until"] = time.time()

    @staticmethod
    def _after_s(opts: DrillOptions) -> float:
        """How long the survivors stay under load after the kill (the long form: --hold)."""
        return 20.0 if opts.short else opts.hold(120.0)

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        _stop_hogs(ctx)
        ctx.notes.setdefault("loaded_until", time.time())
        t = time.time()
        for w in fault.targets:
            ctx.mesh.start_worker(w)
        return replace(fault, t_recover=t)

    def checks(self, ctx: DrillContext, rec: Recording, fault: Fault, end: float) -> list[Check]:
        since = float(ctx.notes.get("hogs_since", fault.t_inject))
        loaded_until = float(ctx.notes.get("loaded_until", end))
        killed = fault.targets[0]
        survivors = [w for w in WORKERS if w != killed]
        found = verdicts(rec, since, harmed={killed: fault.t_inject}, until=loaded_until)
        late = []
        for app in APPS:
            rs = [
                r
                for r in rec.results.get(app, [])
                if loaded_until - 3.0 <= r.ts <= loaded_until and r.worker in survivors
            ]
            if not rs:
                late.append(app)
        return [
            check_no_verdict(found, "no_survivor_failed"),
            Check(
                "served_by_survivors_under_load",
                not late,
                f"every app served by {' or '.join(survivors)} in the last 3 s under load"
                if not late
                else f"no result from a survivor in the 3 s before {wall(loaded_until)} "
                f"(+{loaded_until - fault.t_inject:.1f} s after the kill): {', '.join(late)}",
            ),
        ]

    def metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        out = super().metrics(ctx, rec, fault)
        since = float(ctx.notes.get("hogs_since", fault.t_inject))
        until = float(ctx.notes.get("loaded_until", fault.t_recover or fault.t_inject))
        spans = unserved_spans(routes_of(ctx.mesh), until)
        out["hogs"] = usable_cpus()
        out["false_suspicions"] = len(
            verdicts(rec, since, harmed={fault.targets[0]: fault.t_inject}, until=until)
        )
        out["unserved_s"] = seconds_in(spans, "unserved", fault.t_inject)
        out["shed_s"] = seconds_in(spans, "shed", fault.t_inject)
        out["degradation"] = degradations(rec, since)
        return out


class _BootCase(FaultCase):
    """A case whose fault is the boot itself: no steady mesh before it, nothing to recover."""

    settle_timeout_s: ClassVar[float] = 30.0

    def start(self, ctx: DrillContext) -> None:
        return None

    def await_effect(self, ctx: DrillContext, fault: Fault) -> None:
        last = float(ctx.notes["last_role_up"])
        t = wait_all_served(ctx, last, SERVED_WITHIN_S)
        ctx.notes["all_served_ts"] = t

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        return replace(fault, t_recover=time.time())

    def recoverable(self, ctx: DrillContext, fault: Fault) -> list[str]:
        return []

    def checks(self, ctx: DrillContext, rec: Recording, fault: Fault, end: float) -> list[Check]:
        first = float(ctx.notes.get("first_role_up", fault.t_inject))
        return [check_no_verdict(verdicts(rec, first, until=end))]

    def metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        last = float(ctx.notes.get("last_role_up", fault.t_inject))
        first = float(ctx.notes.get("first_role_up", last))
        served = ctx.notes.get("all_served_ts")
        ups = ctx.mesh.role_up
        firsts: dict[str, float | None] = {}
        for app in APPS:
            r = next((r for r in rec.results.get(app, []) if r.ts >= last), None)
            firsts[app] = round(r.ts - last, 2) if r else None
        return {
            "roles_up_s": {
                role: round(t - first, 1) for role, t in sorted(ups.items(), key=lambda x: x[1])
            },
            "served_after_last_role_s": None if served is None else round(float(served) - last, 2),
            "first_result_after_last_role_s": firsts,
        }


class LateWorkers(_BootCase):
    name = "LATE_WORKERS"
    summary = (
        "broker, coordinators and cameras first, the workers well after the coordinator's "
        "startup wait: every app served"
    )

    @staticmethod
    def late_s(opts: DrillOptions) -> float:
        """How long after the coordinators the workers start: past the mesh's startup_wait_s
        (10 s) by half of it in the short form, tens of seconds in the long one."""
        if opts.boot_delay_s is not None:
            return opts.boot_delay_s
        return 15.0 if opts.short else 60.0

    def start(self, ctx: DrillContext) -> None:
        m = ctx.mesh
        m.start(("broker", "coordinator", "sensor"))
        ctx.notes["first_role_up"] = m.role_up["broker"]

        def leader() -> bool:
            sts = m.rec.messages(m.topics.coordinator_status, messages.CoordinatorStatus)
            return any(s.state == "leader" for s in sts)

        m.rec.wait_for(leader, 30, "a leader coordinator")

    def inject(self, ctx: DrillContext) -> Fault:
        m = ctx.mesh
        delay = self.late_s(ctx.opts)
        time.sleep(max(0.0, m.role_up["coordinator"] + delay - time.time()))
        m.start_role("worker")
        t = m.role_up["worker"]
        ctx.notes["last_role_up"] = t
        ctx.notes["late_s"] = round(t - m.role_up["coordinator"], 1)
        return Fault("late_boot", (), t)

    def metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        return {"workers_late_s": ctx.notes.get("late_s"), **super().metrics(ctx, rec, fault)}


class BootOrder(_BootCase):
    name = "BOOT_ORDER"
    summary = (
        "every role started in a given order, some seconds apart (short form: cameras, "
        "workers, coordinators, the broker last): every app served"
    )

    def __init__(self, order: Sequence[str] = BROKER_LAST) -> None:
        self.order = tuple(order)

    @property
    def label(self) -> str:
        return f"{self.name}[{order_label(self.order)}]"

    def variants(self, opts: DrillOptions) -> list[FaultCase]:
        orders = opts.orders or ((BROKER_LAST,) if opts.short else LONG_ORDERS)
        return [BootOrder(o) for o in orders]

    @staticmethod
    def delay_s(opts: DrillOptions) -> float:
        if opts.boot_delay_s is not None:
            return opts.boot_delay_s
        return 4.0 if opts.short else 20.0

    def inject(self, ctx: DrillContext) -> Fault:
        m = ctx.mesh
        ctx.notes["order"] = order_label(self.order)
        m.start(self.order, self.delay_s(ctx.opts))
        ctx.notes["first_role_up"] = min(m.role_up.values())
        t = ctx.notes["last_role_up"] = max(m.role_up.values())
        return Fault("boot", (), t)

    def metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        return {
            "order": order_label(self.order),
            "delay_s": self.delay_s(ctx.opts),
            **super().metrics(ctx, rec, fault),
        }


class SlowLoad(FaultCase):
    name = "SLOW_LOAD"
    summary = (
        f"every model load takes {SLOW_LOAD_S:g} s more; SIGKILL the critical app's primary, "
        "so the coordinator orders loads on the survivors: none judged failed while it loads"
    )
    settle_timeout_s = 90.0

    def inject(self, ctx: DrillContext) -> Fault:
        m = ctx.mesh
        for x in WORKERS:
            m.signal(x, SLOW_LOAD_SIGNAL)
        time.sleep(0.2)  # handled before the kill
        w = m.role_of("a1", "primary")
        if w is None:
            raise LookupError("a1 has no primary")
        ctx.affected = ctx.affected_by({w})
        ctx.notes["slow"] = [x for x in WORKERS if x != w]
        t = time.time()
        m.signal(w, signal.SIGKILL)
        return Fault("kill", (w,), t)

    def await_effect(self, ctx: DrillContext, fault: Fault) -> None:
        ctx.wait_recovered(set(fault.targets))
        m = ctx.mesh
        survivors = set(ctx.notes["slow"])

        def slow_load() -> messages.Event | None:
            for e in m.rec.messages(m.topics.events, messages.Event):
                if (
                    e.kind == "model_loaded"
                    and e.ts >= fault.t_inject
                    and e.worker in survivors
                    and float(e.detail.get("load_ms", 0.0)) >= 900 * SLOW_LOAD_S
                ):
                    return e
            return None

        m.rec.wait_for(slow_load, 30, "a slow model load ordered on a survivor")
        # Every load the new plan needs, done while loads are still slow.
        m.wait_steady(60, settle_s=0.5)

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        t = time.time()
        for w in ctx.notes.get("slow", []):
            try:
                ctx.mesh.signal(w, SLOW_LOAD_SIGNAL)  # slow loads off
            except LookupError:
                continue
        for w in fault.targets:
            ctx.mesh.start_worker(w)
        return replace(fault, t_recover=t)

    @staticmethod
    def _loads(rec: Recording, fault: Fault, workers: set[str]) -> list[messages.Event]:
        return [
            e
            for e in rec.events_of("model_loaded", fault.t_inject)
            if e.worker in workers and float(e.detail.get("load_ms", 0.0)) >= 900 * SLOW_LOAD_S
        ]

    def checks(self, ctx: DrillContext, rec: Recording, fault: Fault, end: float) -> list[Check]:
        survivors = set(ctx.notes.get("slow", []))
        loads = self._loads(rec, fault, survivors)
        found = verdicts(rec, fault.t_inject, harmed={fault.targets[0]: fault.t_inject}, until=end)
        windows = [
            (e.worker, e.ts - float(e.detail["load_ms"]) / 1000, e.ts, e.detail.get("variant"))
            for e in loads
        ]
        marked = []
        for v in found:
            w = v.split(" ", 1)[0]
            during = [x for x in windows if x[0] == w]
            marked.append(
                v
                + (
                    f" [{w} loaded slowly: {', '.join(str(x[3]) for x in during)}]"
                    if during
                    else ""
                )
            )
        return [
            Check(
                "slow_load_ordered",
                bool(loads),
                ", ".join(
                    f"{e.worker} loaded {e.detail.get('variant')} in "
                    f"{float(e.detail['load_ms']) / 1000:.1f} s at {wall(e.ts)}"
                    for e in loads
                )
                if loads
                else "no slow load on a survivor after the kill (nothing was ordered)",
            ),
            check_no_verdict(marked, "no_failure_while_loading"),
        ]

    def metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        out = super().metrics(ctx, rec, fault)
        loads = self._loads(rec, fault, set(ctx.notes.get("slow", [])))
        out["slow_loads"] = [
            f"{e.worker}:{e.detail.get('variant')} {float(e.detail['load_ms']):.0f} ms"
            for e in loads
        ]
        return out


LOAD_CASES: dict[str, type[FaultCase]] = {
    c.name: c for c in (BusyBoard, KillUnderLoad, LateWorkers, BootOrder, SlowLoad)
}
