"""The broker cases: a kit with two brokers loses one of them, or the bridge between them.

Each runs on a pair of Mosquitto brokers (``MeshSpec(pair=True)``: B bridged to A through a
forwarder the drill can cut, every role on the list [A, B]); the embedded broker has no
bridge, so with ``--broker amqtt`` KILL_BROKER_NODE and PARTITION_BROKERS are skipped with
that reason, and BROKER_FLAP flaps the one broker there is (on its port).

- KILL_BROKER_NODE: broker A and the critical app's primary worker (same board) die for
  good, together (SIGKILL). Every role moves to B; the worker's last-will died with A, so its
  heartbeats' silence fails it over and the leader's obituary marks it offline on B.
- KILL_BROKER_LEADER_NODE: the same board runs the leader too (the example kit's first node).
  B keeps the dead leader's ``leader`` status; the standby reads the silence of its beats,
  takes over, and fails the dead worker over.
- PARTITION_BROKERS: the bridge is cut while both sides keep clients (leader, w1, w3 and the
  cameras on A; the standby and w2 on B), then healed. B's standby no longer hears the
  leader's beats and takes over there; after the heal the higher term wins.
- BROKER_FLAP: the broker the mesh is on is killed and started again three times, a second
  and a half apart (on a pair the mesh goes A -> B -> A -> B).
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import time
from dataclasses import replace
from datetime import datetime
from typing import Any, ClassVar

from faillite import messages
from field_kit.drill.analysis import (
    Check,
    Fault,
    Recording,
    check_retained,
    check_single_serving,
    failover_metrics,
    retained_snapshot,
    service_gaps,
)
from field_kit.drill.broker_switch import logged_events
from field_kit.drill.cases import DrillContext, DrillOptions, FaultCase, _primary
from field_kit.drill.mesh import APPS, WORKERS, MeshSpec
from field_kit.recorder import Recorder

NO_BRIDGE = "the embedded broker (amqtt) has no bridge; this case runs on a Mosquitto pair"
# Two workers obeying different leaders' terms for longer than this is a split brain (a
# takeover's new assignments reach the workers within a few hundred ms).
TERM_HANDOVER_S = 1.0
# A healed worker's births over the leader's obituary: one a second until it is heard again.
MAX_REASSERTS = 5


def _leaders(recs: list[Recorder], since: float = 0.0) -> set[tuple[str, int]]:
    """(coordinator, term) of every leader status the recorders saw since ``since``."""
    out = set()
    for rec in recs:
        for st in rec.messages(rec.topics.coordinator_status, messages.CoordinatorStatus, since):
            if st.state == "leader":
                out.add((st.coordinator, st.term))
    return out


def _recs(ctx: DrillContext) -> list[Recorder]:
    m = ctx.mesh
    return [r for r in (m.recorder, m.recorder_b) if r is not None]


def _events(ctx: DrillContext, kind: str, since: float) -> list[messages.Event]:
    """``kind`` events both recorders saw (each once), by time."""
    seen: dict[tuple[str, float, str], messages.Event] = {}
    for rec in _recs(ctx):
        for e in rec.messages(rec.topics.events, messages.Event):
            if e.kind == kind and e.ts >= since:
                seen[(e.source, e.ts, e.worker)] = e
    return sorted(seen.values(), key=lambda e: e.ts)


def _logged(ctx: DrillContext, base: str, event: str, since: float) -> list[dict[str, Any]]:
    """``event`` lines of every process of ``base`` (its own log: nothing lost with a broker)."""
    out = []
    for c in ctx.mesh.group.children:
        if c.name.startswith(f"{base}-") and c.log_path is not None and c.log_path.exists():
            out += logged_events(c.log_path, event, since)
    return out


def _failovers(ctx: DrillContext, since: float) -> list[str]:
    """Workers the leader failed over since ``since``, from the coordinators' own logs (an
    event published to a dying broker is lost; the log is not)."""
    evs = [*_logged(ctx, "c1", "failover", since), *_logged(ctx, "c2", "failover", since)]
    return [str(e.get("worker")) for e in sorted(evs, key=lambda e: e["timestamp"])]


def _wait_logged(
    ctx: DrillContext, base: str, event: str, since: float, timeout: float
) -> dict[str, Any]:
    """The first ``event`` line of ``base``'s log since ``since`` (waits up to ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        found = _logged(ctx, base, event, since)
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {base}'s {event}")
        time.sleep(0.1)


def _at(line: dict[str, Any]) -> float:
    """A log line's time, epoch seconds."""
    return datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()


def _leader_check(ctx: DrillContext, before: set[tuple[str, int]], since: float) -> Check:
    new = _leaders(_recs(ctx), since) - before
    return Check(
        "no_leader_change",
        not new,
        f"leader kept: {sorted(before)}"
        if not new
        else f"new leader(s) {sorted(new)} after {sorted(before)}",
    )


def _switches(ctx: DrillContext, since: float) -> dict[str, int]:
    """How often each process moved to another broker since ``since`` (its own log)."""
    out = {}
    for c in ctx.mesh.group.children:
        if c.log_path is not None and c.log_path.exists():
            n = len(logged_events(c.log_path, "broker_switched", since))
            if n:
                out[c.name] = n
    return out


class _BrokerCase(FaultCase):
    """A case on a broker pair: the mesh's leader before the fault is recorded at injection."""

    needs_broker: ClassVar[str | None] = "mosquitto"
    needs_broker_why: ClassVar[str] = NO_BRIDGE

    def spec(self, opts: DrillOptions) -> MeshSpec:
        return MeshSpec(broker=opts.broker, pair=True)

    def _before(self, ctx: DrillContext) -> None:
        ctx.notes["leaders_before"] = _leaders(_recs(ctx))
        ctx.notes["mono_inject"] = time.monotonic()

    def _common_metrics(
        self, ctx: DrillContext, rec: Recording, fault: Fault, end: float
    ) -> dict[str, Any]:
        new = _leaders(_recs(ctx), float(ctx.notes["mono_inject"])) - ctx.notes["leaders_before"]
        return {
            "results_gap_ms": service_gaps(rec, APPS, fault.t_inject, end),
            "failovers": _failovers(ctx, fault.t_inject),
            "leader_changes": len(new),
            "terms_seen": sorted({t for _c, t in _leaders(_recs(ctx))}),
            "broker_switches": _switches(ctx, fault.t_inject),
        }


# -- KILL_BROKER_NODE ------------------------------------------------------------------------


class KillBrokerNode(_BrokerCase):
    name = "KILL_BROKER_NODE"
    summary = "broker A's board dies for good with the critical app's primary on it: all on B"
    # Heartbeat detection once the leader is on B (its reconnect grace, 5 s, lets workers
    # move first), a warm promotion, then results: well within this.
    bound_s = 10.0

    def inject(self, ctx: DrillContext) -> Fault:
        m = ctx.mesh
        w = _primary(ctx)
        ctx.affected = ctx.affected_by({w})
        self._before(ctx)
        child = m.proc(w)
        broker = m.launcher.process(m.broker_endpoint("a"))
        t = time.time()
        for p in (broker.proc, child.proc):  # one board: both at the same instant
            p.send_signal(signal.SIGKILL)
        broker.proc.wait(10)
        child.proc.wait(10)
        m.killed.add(child.name)
        ctx.notes["node"] = ["broker a", w]
        return Fault("kill_broker_node", (w,), t)

    def await_effect(self, ctx: DrillContext, fault: Fault) -> None:
        ctx.wait_recovered(set(fault.targets))
        w = fault.targets[0]
        # No last-will can come (it died with A): the leader's obituary marks it offline.
        e = ctx.wait_event("obituary", fault.t_inject, 30, worker=w)
        ctx.notes["obituary_ms"] = round((e.ts - fault.t_inject) * 1000, 1)

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        return replace(fault, t_recover=time.time())  # the node stays dead

    def checks(self, ctx: DrillContext, rec: Recording, fault: Fault, end: float) -> list[Check]:
        m = ctx.mesh
        w = fault.targets[0]
        gaps = service_gaps(rec, APPS, fault.t_inject, end)
        ctx.notes["gaps"] = gaps
        worst = max(gaps.values())
        out = [
            Check(
                "results_within_bound",
                worst <= self.bound_s * 1000,
                f"every app served again within {self.bound_s:.0f} s of the node's death; "
                "longest gap per app: " + ", ".join(f"{a} {g:.0f} ms" for a, g in gaps.items()),
            )
        ]
        fos = _failovers(ctx, fault.t_inject)
        out.append(
            Check(
                "expected_failovers",
                fos == [w],
                f"failovers: {fos or 'none'} (expected exactly one, of {w}; moving brokers "
                "is no failure)",
            )
        )
        out.append(_leader_check(ctx, ctx.notes["leaders_before"], ctx.notes["mono_inject"]))
        # What B, the survivor, retains about the dead worker and its apps.
        snap = retained_snapshot(m.broker_at("b"))
        t = m.topics
        problems = []
        raw = snap.get(t.worker_status(w))
        st = messages.decode(messages.WorkerStatus, raw) if raw else None
        if st is None or (st.state, st.reason) != ("offline", "silent"):
            problems.append(
                f"{w}'s status: {'nothing' if st is None else f'{st.state}/{st.reason}'}, "
                "expected offline/silent (the obituary)"
            )
        for app in APPS:
            raw = snap.get(t.app_route(app))
            r = messages.decode(messages.Route, raw) if raw else None
            if r is not None and r.worker == w:
                problems.append(f"route of {app} still names {w}")
        raw = snap.get(t.worker_assignment(w))
        a = messages.decode(messages.Assignment, raw) if raw else None
        if a is not None and a.serve:
            problems.append(f"{w}'s retained assignment still serves {[s.app for s in a.serve]}")
        out.append(
            Check(
                "survivor_retained_clean",
                not problems,
                f"broker B retains {w} offline/silent, no route or assignment serving on it"
                if not problems
                else "; ".join(problems),
            )
        )
        return out

    def metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        end = float(fault.t_recover or fault.t_inject)
        out = self._common_metrics(ctx, rec, fault, end)
        out["results_gap_ms"] = ctx.notes.get("gaps", out["results_gap_ms"])
        out["node"] = ctx.notes.get("node")
        out["obituary_ms"] = ctx.notes.get("obituary_ms")
        # The failover's figures at the top, where the report's table reads them.
        return {**failover_metrics(rec, fault, ctx.affected, ctx.mesh.catalog), **out}


class KillBrokerLeaderNode(KillBrokerNode):
    """The example kit's first node: broker A, the leader coordinator and the critical app's
    primary die together. The leader's last-will dies with A, and B keeps its ``leader``
    status (bridged) for good: the standby reads the leader's missing beats instead."""

    name = "KILL_BROKER_LEADER_NODE"
    summary = "broker A's board dies for good with the leader and the critical app's primary"
    # The leader's silence (2.5 s) plus its reconnect backoff once (about 1.5 s), the standby's
    # takeover delay, the term, the new leader's wait for births, then heartbeat detection of
    # the dead worker and a promotion.
    takeover_bound_s = 10.0
    bound_s = 20.0

    def inject(self, ctx: DrillContext) -> Fault:
        m = ctx.mesh
        w = _primary(ctx)
        ctx.affected = ctx.affected_by({w})
        self._before(ctx)
        leader = m.proc("c1")
        child = m.proc(w)
        broker = m.launcher.process(m.broker_endpoint("a"))
        t = time.time()
        for p in (broker.proc, leader.proc, child.proc):  # one board: all at the same instant
            p.send_signal(signal.SIGKILL)
        for p in (broker.proc, leader.proc, child.proc):
            p.wait(10)
        m.killed.update({leader.name, child.name})
        ctx.notes["node"] = ["broker a", "c1", w]
        return Fault("kill_broker_leader_node", (w,), t)

    def await_effect(self, ctx: DrillContext, fault: Fault) -> None:
        e = ctx.wait_event("coordinator_takeover", fault.t_inject, 30)
        ctx.notes["takeover_ms"] = round((e.ts - fault.t_inject) * 1000, 1)
        ctx.notes["new_term"] = e.detail.get("term")
        silent = _logged(ctx, "c2", "leader_silent", fault.t_inject)
        if silent:
            ctx.notes["leader_silent_ms"] = round((_at(silent[0]) - fault.t_inject) * 1000, 1)
        super().await_effect(ctx, fault)

    def checks(self, ctx: DrillContext, rec: Recording, fault: Fault, end: float) -> list[Check]:
        out = [c for c in super().checks(ctx, rec, fault, end) if c.name != "no_leader_change"]
        new = sorted(
            _leaders(_recs(ctx), float(ctx.notes["mono_inject"])) - ctx.notes["leaders_before"]
        )
        before = sorted(ctx.notes["leaders_before"])
        took = ctx.notes.get("takeover_ms")
        ok = (
            len(new) == 1
            and new[0][0] == "c2"
            and took is not None
            and took <= self.takeover_bound_s * 1000
        )
        out.append(
            Check(
                "one_leader_change",
                ok,
                f"the standby took over once: {before} -> {new} in {took} ms (bound "
                f"{self.takeover_bound_s:.0f} s; it read the silence of the leader's beats)"
                if ok
                else f"new leader(s) {new} after {before}, takeover {took} ms",
            )
        )
        # B must retain the new leader's status, not the dead leader's 'leader'.
        snap = retained_snapshot(ctx.mesh.broker_at("b"))
        raw = snap.get(ctx.mesh.topics.coordinator_status)
        st = messages.decode(messages.CoordinatorStatus, raw) if raw else None
        held = (st.coordinator, st.state, st.term) if st else None
        ok = st is not None and len(new) == 1 and (st.coordinator, st.term) == new[0]
        ok = ok and st is not None and st.state == "leader"
        out.append(
            Check(
                "survivor_retains_new_leader",
                ok,
                f"broker B retains {held}, the new leader's status"
                if ok
                else f"broker B retains {held}, expected the new leader {new}",
            )
        )
        return out

    def metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        out = super().metrics(ctx, rec, fault)
        out["takeover_ms"] = ctx.notes.get("takeover_ms")
        out["leader_silent_ms"] = ctx.notes.get("leader_silent_ms")
        out["new_term"] = ctx.notes.get("new_term")
        return out


# -- PARTITION_BROKERS -----------------------------------------------------------------------


def _obeyed(ctx: DrillContext) -> dict[str, list[tuple[float, int]]]:
    """Per worker, (ts, term) of every assignment it applied: its ``assignment_applied``
    events, as the recorders on A and on B saw them (each side's own during the cut)."""
    out: dict[str, set[tuple[float, int]]] = {w: set() for w in WORKERS}
    for e in _events(ctx, "assignment_applied", 0.0):
        w = e.source.removeprefix("worker/")
        if w in out:
            out[w].add((round(e.ts, 3), int(e.detail.get("term", 0))))
    return {w: sorted(v) for w, v in out.items()}


def _split_brain(obeyed: dict[str, list[tuple[float, int]]], until: float) -> tuple[float, str]:
    """The longest time two workers obeyed different terms at once: (seconds, what)."""
    cuts = sorted({ts for tl in obeyed.values() for ts, _t in tl} | {until})
    worst: tuple[float, str] = (0.0, "")
    since: float | None = None
    what = ""
    for ts in cuts:
        now = {w: next((t for at, t in reversed(tl) if at <= ts), None) for w, tl in obeyed.items()}
        terms = {t for t in now.values() if t is not None}
        if len(terms) > 1:
            if since is None:
                since, what = ts, ", ".join(f"{w}: term {t}" for w, t in sorted(now.items()))
        elif since is not None:
            if ts - since > worst[0]:
                worst = (ts - since, what)
            since = None
    if since is not None and until - since > worst[0]:
        worst = (until - since, what)
    return worst


class PartitionBrokers(_BrokerCase):
    """Each side keeps its clients; the standby on B no longer hears the leader's beats while
    B answers its pings, so B elects its own leader (a higher term). After the heal the higher
    term wins: the old leader reads it and steps down, every worker obeys it."""

    name = "PARTITION_BROKERS"
    summary = "cut the bridge between the two brokers (clients on both sides), then heal it"
    b_side = ("c2", "w2")  # the standby coordinator and a worker stay with broker B
    # Long past detection (~1 s), the standby's takeover (beats silent 2.5 s, then its delay)
    # and the far side's failovers.
    cut_s = 8.0

    def spec(self, opts: DrillOptions) -> MeshSpec:
        return MeshSpec(broker=opts.broker, pair=True, b_side=self.b_side)

    def _cut_off(self) -> set[str]:
        return {r for r in self.b_side if r in WORKERS}

    def inject(self, ctx: DrillContext) -> Fault:
        cut_off = self._cut_off()
        ctx.affected = ctx.affected_by(cut_off)
        self._before(ctx)
        ctx.notes["old_leader"] = ctx.mesh.proc("c1")
        t = time.time()
        ctx.mesh.cut_bridge()
        return Fault("partition_brokers", tuple(sorted(cut_off)), t)

    def await_effect(self, ctx: DrillContext, fault: Fault) -> None:
        # The leader (side A) no longer hears B's worker: it fails it over to side A.
        for w in fault.targets:
            ctx.wait_event("failover", fault.t_inject, 30, worker=w)
        ctx.wait_recovered(set(fault.targets))
        # The standby (side B) no longer hears the leader beat: it takes over there.
        e = _wait_logged(ctx, "c2", "coordinator_takeover", fault.t_inject, 30)
        ctx.notes["takeover_ms"] = round((_at(e) - fault.t_inject) * 1000, 1)
        ctx.notes["b_term"] = e.get("term")

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        m = ctx.mesh
        time.sleep(max(0.0, self.cut_s - (time.time() - fault.t_inject)))
        t = time.time()
        ctx.notes["mono_heal"] = time.monotonic()
        m.heal_bridge()
        # The higher term wins: the old leader reads the new one's status and steps down.
        old = ctx.notes["old_leader"]
        try:
            e = _wait_logged(ctx, "c1", "coordinator_deposed", t, 30)
            ctx.notes["stepped_down_ms"] = round((_at(e) - t) * 1000, 1)
            ctx.notes["old_leader_exit"] = old.proc.wait(15)
        except (AssertionError, subprocess.TimeoutExpired) as exc:
            ctx.notes["old_leader_exit"] = f"still leading: {exc}"
        else:
            m.killed.add(old.name)  # its end is the check's (old_leader_stepped_down)
            m.start_coordinator("c1", standby=True, rank=2)  # the kit has a standby again
        # The workers the winner (B's leader) failed over come back to it.
        for w in self._far_side(ctx, fault):
            e = ctx.wait_event("worker_recovered", t, 60, worker=w)
            ctx.notes.setdefault("rejoined_ms", {})[w] = round((e.ts - t) * 1000, 1)
        return replace(fault, t_recover=t)

    def _far_side(self, ctx: DrillContext, fault: Fault) -> list[str]:
        """The workers B's leader could not hear during the cut (side A's)."""
        return sorted(set(WORKERS) - set(fault.targets))

    def checks(self, ctx: DrillContext, rec: Recording, fault: Fault, end: float) -> list[Check]:
        m = ctx.mesh
        assert m.cfg is not None
        heal = float(fault.t_recover or end)
        # Mosquitto's bridge reconnects with a backoff (3 to 6 s seen after an 8 s cut): the
        # two sides hear each other once the old leader reads the new term, not at the heal.
        back = heal + float(ctx.notes.get("stepped_down_ms") or 0.0) / 1000
        obeyed = _obeyed(ctx)
        ctx.notes["terms_obeyed"] = {w: sorted({t for _ts, t in tl}) for w, tl in obeyed.items()}
        backwards = [
            f"{w}: term {a} after {b}"
            for w, tl in obeyed.items()
            for (_x, b), (_y, a) in itertools.pairwise(tl)
            if a < b
        ]
        # During the cut each side obeys its own leader; after the heal, one term.
        healed = {w: [(max(ts, back), t) for ts, t in tl] for w, tl in obeyed.items()}
        split, what = _split_brain(healed, end)
        ok = not backwards and split <= TERM_HANDOVER_S
        out = [
            Check(
                "one_leader_obeyed",
                ok,
                "every worker obeyed one leader's term at a time, never an older one after a "
                f"newer, and all one term within {TERM_HANDOVER_S} s of the bridge's return "
                f"(terms obeyed: {ctx.notes['terms_obeyed']})"
                if ok
                else "; ".join([*backwards, *([f"{split:.1f} s of {what}"] if what else [])]),
            )
        ]
        # After the heal: one term on both brokers, and every app served exactly once.
        live = {
            w: hbs[-1].incarnation
            for w, hbs in rec.heartbeats.items()
            if hbs and any(c.name.startswith(f"{w}-") and c.alive() for c in m.group.children)
        }
        sides = {}
        problems = []
        for b in ("a", "b"):
            snap = retained_snapshot(m.broker_at(b))
            c = check_retained(snap, m.cfg, live, rec)
            if not c.ok:
                problems.append(f"broker {b.upper()}: {c.detail}")
            raw = snap.get(m.topics.coordinator_status)
            st = messages.decode(messages.CoordinatorStatus, raw) if raw else None
            sides[b] = (st.coordinator, st.state, st.term) if st else None
        new = sorted(
            _leaders(_recs(ctx), float(ctx.notes["mono_inject"])) - ctx.notes["leaders_before"]
        )
        if sides["a"] != sides["b"]:
            problems.append(f"leaders retained differ: A {sides['a']}, B {sides['b']}")
        elif len(new) != 1 or sides["a"] != (new[0][0], "leader", new[0][1]):
            problems.append(f"retained {sides['a']}, expected B's new leader {new}")
        out.append(
            Check(
                "one_term_after_heal",
                not problems,
                f"both brokers retain leader {sides['a']} and state of its term"
                if not problems
                else "; ".join(problems),
            )
        )
        before = sorted(ctx.notes["leaders_before"])
        ok = len(new) == 1 and new[0][0] == "c2"
        out.append(
            Check(
                "one_leader_change",
                ok,
                f"B's standby took over once during the cut: {before} -> {new} in "
                f"{ctx.notes.get('takeover_ms')} ms"
                if ok
                else f"new leader(s) {new} after {before}",
            )
        )
        code = ctx.notes.get("old_leader_exit")
        out.append(
            Check(
                "old_leader_stepped_down",
                code == 0,
                f"the old leader read the higher term and stepped down "
                f"{ctx.notes.get('stepped_down_ms')} ms after the heal, as the bridge came back "
                "(exit 0)"
                if code == 0
                else f"old leader: {code}",
            )
        )
        logged = {c: _logged(ctx, c, "failover", fault.t_inject) for c in ("c1", "c2")}
        cut = {c: [str(e.get("worker")) for e in ls if _at(e) < heal] for c, ls in logged.items()}
        after = [
            f"{c}: {e.get('worker')}" for c, ls in logged.items() for e in ls if _at(e) >= heal
        ]
        ctx.notes["failovers_by"] = cut
        far = self._far_side(ctx, fault)
        ok = sorted(cut["c1"]) == sorted(fault.targets) and sorted(cut["c2"]) == far and not after
        out.append(
            Check(
                "expected_failovers",
                ok,
                f"each leader failed over the workers it could not hear, once: {cut}; none "
                "after the heal"
                if ok
                else f"during the cut {cut} (expected c1: {list(fault.targets)}, c2: {far}); "
                f"after the heal: {after or 'none'}",
            )
        )
        # A worker puts its birth back over an obituary once the bridge is back; a leader
        # that put the obituary back each time made them answer each other endlessly.
        fights = {w: len(_logged(ctx, w, "birth_republished", heal)) for w in WORKERS}
        ctx.notes["births_reasserted"] = fights
        out.append(
            Check(
                "no_status_fight",
                all(n <= MAX_REASSERTS for n in fights.values()),
                f"births put back over the obituary after the heal: {fights} (at most "
                f"{MAX_REASSERTS}: until the leader hears the worker again)",
            )
        )
        single = check_single_serving(rec, APPS, back, m.spec.fps)
        out.append(replace(single, name="single_serving_after_heal"))
        return out

    def metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        end = float(fault.t_recover or fault.t_inject)
        out = self._common_metrics(ctx, rec, fault, end)
        out["cut_s"] = round(end - fault.t_inject, 1)
        out["cut_off"] = list(fault.targets)
        out["takeover_ms"] = ctx.notes.get("takeover_ms")
        out["failovers_by"] = ctx.notes.get("failovers_by")
        out["stepped_down_after_heal_ms"] = ctx.notes.get("stepped_down_ms")
        out["terms_obeyed"] = ctx.notes.get("terms_obeyed")
        out["rejoined_after_heal_ms"] = ctx.notes.get("rejoined_ms")
        out["births_reasserted"] = ctx.notes.get("births_reasserted")
        return {**failover_metrics(rec, fault, ctx.affected, ctx.mesh.catalog), **out}


# -- BROKER_FLAP -----------------------------------------------------------------------------


class BrokerFlap(_BrokerCase):
    name = "BROKER_FLAP"
    summary = "kill the broker the mesh is on and start it again, three times in a row"
    needs_broker = None  # on the embedded broker: the one broker flaps on its port
    flaps_short, flaps_long = 3, 6
    down_s, up_s = 1.0, 1.5

    def spec(self, opts: DrillOptions) -> MeshSpec:
        return MeshSpec(broker=opts.broker, pair=opts.broker == "mosquitto")

    def inject(self, ctx: DrillContext) -> Fault:
        m = ctx.mesh
        self._before(ctx)
        n = self.flaps_short if ctx.opts.short else self.flaps_long
        flaps = []
        t = time.time()
        on = "a"
        for i in range(n):
            if i:
                time.sleep(self.up_s)
            t0 = time.time()
            # SIGKILL: no goodbye (amqtt stopped gently publishes its clients' last-wills).
            m.kill_broker(on)  # on a pair every role moves to the other broker
            time.sleep(self.down_s)
            m.start_broker(on)
            flaps.append({"broker": on, "down_ms": round((time.time() - t0) * 1000, 1)})
            if m.endpoint_b is not None:
                on = "b" if on == "a" else "a"
        ctx.notes["flaps"] = flaps
        ctx.notes["back_ts"] = time.time()
        return Fault("broker_flap", ("broker",), t)

    def await_effect(self, ctx: DrillContext, fault: Fault) -> None:
        ctx.mesh.wait_steady(60, settle_s=0.5)

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        return replace(fault, t_recover=float(ctx.notes["back_ts"]))

    def checks(self, ctx: DrillContext, rec: Recording, fault: Fault, end: float) -> list[Check]:
        fos = _failovers(ctx, fault.t_inject)
        sus = [
            *_logged(ctx, "c1", "failure_detected", fault.t_inject),
            *_logged(ctx, "c2", "failure_detected", fault.t_inject),
        ]
        ctx.notes["gaps"] = service_gaps(rec, APPS, fault.t_inject, end)
        return [
            Check(
                "no_spurious_failover",
                not fos and not sus,
                f"no worker suspected or failed over in {len(ctx.notes['flaps'])} flaps"
                if not fos and not sus
                else f"suspected: {[s.get('worker') for s in sus]}; failovers: {fos}",
            ),
            _leader_check(ctx, ctx.notes["leaders_before"], ctx.notes["mono_inject"]),
        ]

    def metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        end = float(fault.t_recover or fault.t_inject)
        out = self._common_metrics(ctx, rec, fault, end)
        out["results_gap_ms"] = ctx.notes.get("gaps", out["results_gap_ms"])
        out["flaps"] = ctx.notes.get("flaps")
        firsts = {}
        for app in APPS:
            r = next((r for r in rec.results.get(app, []) if r.ts >= end), None)
            firsts[app] = round((r.ts - end) * 1000, 1) if r else None
        out["first_result_after_last_flap_ms"] = firsts
        return out


BROKER_CASES: dict[str, type[FaultCase]] = {
    c.name: c for c in (KillBrokerNode, KillBrokerLeaderNode, PartitionBrokers, BrokerFlap)
}
