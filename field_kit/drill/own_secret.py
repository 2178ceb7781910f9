"""A worker's own secret stolen (issue 22): what a thief can do with only the id's account.

``SILENT_THIEF``: the critical app's worker is frozen (SIGSTOP, as by someone on its board) and
a thief logs in with that worker's own secret and client id, taking its session. It puts the
worker's birth back (same incarnation, a newer ts) and beats as that incarnation, its counters
saying frames are received and served, while it publishes no result. Heartbeats alone say all
is well; the coordinator judges the worker by the results that reach the mesh
(``coordinator.outcomes``): it fails the worker over (``results_missing``) about
``results_missing_s`` after its last result, and neither the thief's beats nor a birth again
bring it back before its probation ends. Where a broker fires the frozen session's last-will on
the takeover, that failover comes first, and the thief's birth (a reconnect, as far as anyone
can tell) is what the outcome verdict then answers.

``FORGED_SUCCESSOR``: with the critical app's worker's own secret, a birth of a new incarnation
of it (newer ts, retained), as a ``--replace`` would publish, but without the live process's
handover key (:mod:`faillite.handover`: only its own board holds it). The live process refuses
to step down and puts its birth back (``takeover_refused``); the leader keeps it too (event
``takeover_refused``): nobody fails over, its apps stay where they are.
"""

from __future__ import annotations

import signal
import time
from dataclasses import replace
from typing import Any, Final

from faillite import messages
from faillite.topics import Role
from field_kit.drill.analysis import Check, Fault, Recording
from field_kit.drill.attacks import (
    FAILOVER_GAP_MS,
    AttackCase,
    Attacker,
    AttackLog,
    _birth,
    _heartbeat,
    _log_events,
    _primary,
    _proc_logs,
    _status_is_birth,
)
from field_kit.drill.cases import DrillContext

RESULTS_MISSING_S: Final = 5.0  # the coordinator's default results_missing_s
# How long the thief beats in the worker's place: past the drill mesh's first probation (8 s),
# so that the worker placed again after it is judged again, held out twice as long.
THIEF_S: Final = 24.0
BEAT_S: Final = 0.1


class SilentThief(AttackCase):
    name = "SILENT_THIEF"
    summary = (
        "the critical app's worker is frozen and a thief with its own secret takes its session, "
        "puts its birth back and beats as its incarnation, counting frames served, publishing "
        "no result"
    )
    # Its apps go without results from the freeze until the outcome verdict: the window, then
    # one failover.
    gap_bound_ms = RESULTS_MISSING_S * 1000 + 2 * FAILOVER_GAP_MS
    victim_fails_over = "only_the_victim_failed_over"

    def attack(self, ctx: DrillContext, log: AttackLog) -> tuple[str, ...]:
        m, t = ctx.mesh, ctx.mesh.topics
        victim = _primary(ctx)
        stolen = m.identity(Role.WORKER, victim)
        birth, hb = _birth(ctx, victim), _heartbeat(ctx, victim)
        m.signal(victim, signal.SIGSTOP)
        t_freeze = time.time()
        ctx.notes.update(victim=victim, incarnation=birth.incarnation, t_freeze=t_freeze)
        seq, counts = hb.seq, dict(hb.apps)
        with Attacker(ctx, stolen, stolen.name, log=log) as a:  # its own id: takes its session
            a.send_message(
                f"birth of {victim} again, its incarnation, a newer ts (retained)",
                t.worker_status(victim),
                replace(birth, ts=messages.now(), host="thief"),
                retain=True,
            )
            end = time.monotonic() + THIEF_S
            while time.monotonic() < end:
                seq += 1
                counts = {
                    app: replace(s, received=s.received + 1, processed=s.processed + 1)
                    for app, s in counts.items()
                }
                a.send_message(
                    f"heartbeats of {victim} as its incarnation, counting frames served",
                    t.worker_heartbeat(victim),
                    replace(
                        hb,
                        seq=seq,
                        ts=messages.now(),
                        frames_received=hb.frames_received + seq - hb.seq,
                        frames_processed=hb.frames_processed + seq - hb.seq,
                        results_published=hb.results_published + seq - hb.seq,
                        apps=counts,
                    ),
                    qos=0,
                )
                time.sleep(BEAT_S)
        ctx.notes["t_thief_gone"] = time.time()
        return (victim,)

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        """The thief is gone; the worker thaws, reconnects and puts its own birth back."""
        m, victim = ctx.mesh, ctx.notes["victim"]
        m.signal(victim, signal.SIGCONT)
        t = time.time()
        topic = m.topics.worker_status(victim)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            births = [
                b
                for b in m.rec.messages(topic, messages.WorkerStatus)
                if b.state == "online" and b.ts > t and b.host != "thief"
            ]
            if births:
                break
            time.sleep(0.2)
        return replace(fault, t_recover=time.time())

    def own_checks(
        self, ctx: DrillContext, rec: Recording, fault: Fault, end: float
    ) -> list[Check]:
        victim, t0 = ctx.notes["victim"], float(ctx.notes["t_freeze"])
        t_thief_gone = float(ctx.notes.get("t_thief_gone", end))
        verdicts = [e for e in rec.events_of("failure_detected", t0) if e.worker == victim]
        outcome = next((e for e in verdicts if e.detail.get("cause") == "results_missing"), None)
        held = [
            (e.ts, e.ts + float(e.detail.get("probation_s", 0.0)))
            for e in rec.events_of("results_missing", t0)
            if e.worker == victim
        ]
        # While the thief held the id, the worker came back only when a probation ended (a
        # small margin for the tick), never on a birth again or on its beats.
        back = [
            e
            for e in rec.events_of("worker_recovered", t0)
            if e.worker == victim
            and outcome is not None
            and outcome.ts <= e.ts < t_thief_gone
            and not (
                e.detail.get("cause") == "probation_over"
                and any(until - 0.5 <= e.ts for _at, until in held)
            )
        ]
        log = self._log(ctx)
        for a in log.attempts.values():
            a.ignored = a.delivered if outcome is not None and not back else 0
            a.how = (
                f"coordinator: {victim} failed over on its missing results "
                f"+{outcome.ts - t0:.2f} s after the freeze, kept out while the thief beat"
                if outcome is not None and not back
                else "coordinator believed them"
            )
        causes = ", ".join(str(e.detail.get("cause")) for e in verdicts) or "none"
        return [
            Check(
                "judged_on_outcomes",
                outcome is not None,
                f"{victim}'s verdicts since the freeze: {causes}"
                + (f"; results_missing +{outcome.ts - t0:.2f} s" if outcome else ""),
            ),
            Check(
                "thief_kept_out",
                outcome is not None and not back,
                f"{victim} held out: "
                + (", ".join(f"+{a - t0:.1f} s for {b - a:.0f} s" for a, b in held) or "never")
                + "; back early while the thief held its id: "
                + (
                    ", ".join(f"+{e.ts - t0:.2f} s ({e.detail.get('cause')})" for e in back)
                    or "never"
                ),
            ),
        ]

    def own_metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        t0 = float(ctx.notes["t_freeze"])
        verdicts = [
            {"cause": e.detail.get("cause"), "after_s": round(e.ts - t0, 2)}
            for e in rec.events_of("failure_detected", t0)
            if e.worker == ctx.notes["victim"]
        ]
        return {"verdicts": verdicts}


class ForgedSuccessor(AttackCase):
    name = "FORGED_SUCCESSOR"
    summary = (
        "with a worker's own secret, births of a new incarnation of it (as --replace publishes, "
        "without its handover key), retained"
    )
    rounds = 3

    def attack(self, ctx: DrillContext, log: AttackLog) -> tuple[str, ...]:
        m, t = ctx.mesh, ctx.mesh.topics
        victim = _primary(ctx)
        stolen = m.identity(Role.WORKER, victim)
        birth = _birth(ctx, victim)
        ctx.notes.update(victim=victim, incarnation=birth.incarnation)
        with Attacker(ctx, stolen, stolen.probe_name, log=log) as a:
            for i in range(self.rounds):
                a.send_message(
                    f"birth of {victim}, a new incarnation without its handover key (retained)",
                    t.worker_status(victim),
                    replace(
                        birth,
                        incarnation=f"thief{i}",
                        ts=messages.now(),
                        host="thief",
                        handover_seal="",
                        handover_key="00" * 16,
                    ),
                    retain=True,
                )
                time.sleep(1.0)
        return (victim,)

    def own_checks(
        self, ctx: DrillContext, rec: Recording, fault: Fault, end: float
    ) -> list[Check]:
        victim, inc = ctx.notes["victim"], ctx.notes["incarnation"]
        refused = [
            e for e in rec.events_of("takeover_refused", fault.t_inject) if e.worker == victim
        ]
        joined = [e for e in rec.events_of("worker_joined", fault.t_inject) if e.worker == victim]
        stepped = [e for p in _proc_logs(ctx, victim) for e in _log_events(p, "worker_replaced")]
        problem = _status_is_birth(ctx.notes["retained"], ctx, victim, inc)
        for a in self._log(ctx).attempts.values():
            a.ignored = a.delivered if not joined and not stepped else 0
            a.how = (
                f"{victim} kept its id and put its birth back; the leader refused "
                f"{len(refused)} (takeover_refused)"
                if not joined and not stepped
                else "believed"
            )
        return [
            Check(
                "successor_refused",
                len(refused) >= self.rounds and not joined and not stepped,
                f"leader: {len(refused)} takeover_refused, {len(joined)} new incarnation(s) "
                f"joined; {victim} stepped down: {'yes' if stepped else 'no'}",
            ),
            Check(
                "victim_birth_retained",
                problem is None,
                f"{victim}'s retained status is its real birth ({inc})"
                if problem is None
                else problem,
            ),
        ]


OUTCOME_ATTACKS: dict[str, type[AttackCase]] = {c.name: c for c in (SilentThief, ForgedSuccessor)}
