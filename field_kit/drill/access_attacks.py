"""Attacks on access itself (issue 22): a flood of sockets without credentials, and a
captured device revoked while its process runs.

- ``CONNECTION_FLOOD``: 1000 idle TCP sockets from another loopback address (no CONNECT, no
  credentials), held while a device logs in again and again. The embedded broker holds at
  most 32 of them (the rest are closed at once); every login gets in, the mesh is untouched.
  Mosquitto needs its generated nftables rules for the same, which only a namespace of the
  test's own can carry (tests/integration/test_login_firewall.py), so this case runs on the
  embedded broker.
- ``REVOKED_WORKER``: a worker's secret is stolen, then the operator revokes its account as
  ``faillite accounts revoke`` does (the password file, then the broker told through
  ``broker.pid_file``). Its live connection ends within seconds (its last-will fires: one
  failover, of that worker only), the worker's own reconnects and the thief's logins are
  refused, every app stays served.
"""

from __future__ import annotations

import signal
import time
from dataclasses import replace
from typing import Any, Final

from broker._amqtt_hooks import MAX_UNADMITTED_PER_SOURCE as UNADMITTED_CAP
from faillite import messages
from faillite.accounts import revoke_account
from faillite.revocation import apply_revocation
from faillite.topics import Role
from field_kit.brokers import HOST as BROKER_HOST
from field_kit.drill.analysis import Check, Fault, Recording
from field_kit.drill.attacks import (
    CONNACK_ACCEPTED,
    AttackCase,
    AttackLog,
    _broker_log,
    _log_events,
    _primary,
    _proc_logs,
    raw_connect,
)
from field_kit.drill.cases import DrillContext
from field_kit.guessing import Flood, login

FLOOD_SOURCE: Final = "127.0.0.2"  # another loopback address than the mesh's own
THIEF_SOURCE: Final = "127.0.0.3"  # the thief's own address (failed logins slow only it)
REVOKED_WITHIN_S: Final = 5.0  # from the revocation to the device's connection ended


class ConnectionFlood(AttackCase):
    name = "CONNECTION_FLOOD"
    summary = (
        "1000 idle sockets without credentials from another address, held 8 s, while a "
        "device logs in every half second"
    )
    needs_broker = "amqtt"
    needs_broker_why = (
        "Mosquitto caps open sockets per address only with its generated nftables rules, in a "
        "namespace of the test's own (tests/integration/test_login_firewall.py)"
    )
    sockets, hold_s, every_s = 1000, 8.0, 0.5

    def attack(self, ctx: DrillContext, log: AttackLog) -> tuple[str, ...]:
        m = ctx.mesh
        assert m.endpoint is not None
        device = m.identity(Role.OBSERVER, "view")
        secret = m.secret_file(device).read_text().strip()
        logins: list[tuple[int, float]] = []
        what = f"idle socket without a CONNECT from {FLOOD_SOURCE}"
        with Flood(m.endpoint.host, m.endpoint.port, self.sockets, source=FLOOD_SOURCE) as flood:
            for i in range(self.sockets):
                log.add(what, "(tcp)", f"socket {i}".encode())
            held = flood.settle(UNADMITTED_CAP, within_s=5)
            deadline = time.monotonic() + self.hold_s
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                code = login(m.endpoint.host, m.endpoint.port, device.name, secret,
                             source=BROKER_HOST, timeout=5.0)  # fmt: skip
                logins.append((code, (time.monotonic() - t0) * 1000))
                time.sleep(self.every_s)
        ctx.notes.update(held=held, logins=logins, opened=self.sockets - flood.failed)
        return ()

    def own_checks(
        self, ctx: DrillContext, rec: Recording, fault: Fault, end: float
    ) -> list[Check]:
        held, logins = int(ctx.notes["held"]), ctx.notes["logins"]
        a = self._log(ctx).attempt(f"idle socket without a CONNECT from {FLOOD_SOURCE}")
        a.delivered = held  # held open, counted against the address's cap until the timeout
        a.ignored = held
        a.how = (
            "closed at once past the address's cap of sockets before their CONNECT; the rest "
            "held until the CONNECT timeout, costing nothing else"
        )
        refused = _log_events(_broker_log(ctx), "too_many_unadmitted")
        ok_logins = [ms for code, ms in logins if code == CONNACK_ACCEPTED]
        worst = max((ms for _c, ms in logins), default=0.0)
        return [
            Check(
                "flood_capped",
                held <= UNADMITTED_CAP and bool(refused),
                f"{held} of {ctx.notes['opened']} flood sockets held open (cap "
                f"{UNADMITTED_CAP} per address); broker logged {len(refused)} refusal line(s)",
            ),
            Check(
                "device_logs_in_during_flood",
                bool(logins) and len(ok_logins) == len(logins),
                f"{len(ok_logins)} of {len(logins)} logins accepted during the flood, "
                f"slowest {worst:.1f} ms",
            ),
        ]

    def own_metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        logins = ctx.notes.get("logins", [])
        return {
            "flood_held": ctx.notes.get("held"),
            "login_ms": sorted(round(ms, 1) for _c, ms in logins),
        }


class RevokedWorker(AttackCase):
    name = "REVOKED_WORKER"
    summary = (
        "a worker's secret is stolen, then its account revoked while it serves (the broker "
        "told through broker.pid_file); the thief tries to log in with it"
    )
    tries = 5
    # Mosquitto ends a revoked account's connection like a clean disconnect, without its
    # will: the coordinator notices the worker's heartbeats stop (about a second) and its
    # obituary follows; the embedded broker fires the will at once.
    gap_bound_ms = 2000.0
    victim_fails_over = "only_the_revoked_failed_over"

    def attack(self, ctx: DrillContext, log: AttackLog) -> tuple[str, ...]:
        m = ctx.mesh
        assert m.endpoint is not None and m.password_file is not None
        victim = _primary(ctx)
        stolen = m.identity(Role.WORKER, victim)
        secret = m.secret_file(stolen).read_text().strip()  # what the thief copied
        log.thieves[stolen.name] = stolen.name
        m.killed.add(m.proc(victim).name)  # it is meant to lose its connection for good
        t = time.time()
        assert revoke_account(m.password_file, stolen.name)
        running = m.broker_config().model_copy(
            update={"host": m.endpoint.host, "port": m.endpoint.port}
        )
        applied = apply_revocation(running, name=None, ca_dir=None)
        ctx.notes.update(victim=victim, t_revoke=t, pid=applied.pid)
        ctx.wait_event("failover", t, 15)
        what = f"{stolen.name}'s CONNECT with its stolen secret, after the revocation"
        codes = []
        for i in range(self.tries):
            log.add(what, "(connect)", f"try {i}".encode())
            codes.append(
                raw_connect(m.endpoint.host, m.endpoint.port, client_id=stolen.name,
                            username=stolen.name, password=secret, clean=True, will=None,
                            source=THIEF_SOURCE)
            )  # fmt: skip
        ctx.notes["codes"] = codes
        return (victim,)

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        """The revoked worker's process keeps trying to get back in: once its log shows a
        refusal, it is stopped (the device taken off the kit), so that the mesh it left can
        be judged steady."""
        m, victim = ctx.mesh, ctx.notes["victim"]
        logs = _proc_logs(ctx, victim)
        deadline = time.monotonic() + 20
        refused: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            refused = [e for p in logs for e in _log_events(p, "connect_refused")]
            if refused:
                break
            time.sleep(0.2)
        ctx.notes["victim_refused"] = len(refused)
        # Its retained status says offline: its will, or the leader's obituary.
        topic = m.topics.worker_status(victim)
        while time.monotonic() < deadline + 20:
            statuses = m.rec.messages(topic, messages.WorkerStatus)
            if statuses and statuses[-1].state == "offline":
                ctx.notes["offline_reason"] = statuses[-1].reason
                break
            time.sleep(0.2)
        child = m.proc(victim)
        m.group.stop(child.name, signal.SIGTERM, 15)
        return replace(fault, t_recover=time.time())

    def own_checks(
        self, ctx: DrillContext, rec: Recording, fault: Fault, end: float
    ) -> list[Check]:
        victim, t = ctx.notes["victim"], float(ctx.notes["t_revoke"])
        codes: list[int] = ctx.notes["codes"]
        a = self._log(ctx).attempt(
            f"{ctx.mesh.identity(Role.WORKER, victim).name}'s CONNECT with its stolen secret, "
            "after the revocation"
        )
        a.delivered = sum(1 for c in codes if c == CONNACK_ACCEPTED)
        a.ignored = 0
        a.how = "refused by the broker: no such account (CONNACK 5)"
        fo = next((e for e in rec.events_of("failover", t) if e.worker == victim), None)
        out_s = None if fo is None else fo.ts - t
        statuses = ctx.mesh.rec.messages(
            ctx.mesh.topics.worker_status(victim), messages.WorkerStatus
        )
        births = [b for b in statuses if b.ts > t and b.state == "online"]
        return [
            Check(
                "revoked_out_at_once",
                out_s is not None and out_s < REVOKED_WITHIN_S,
                f"{victim} failed over {out_s:.2f} s after its account was revoked "
                f"(cause {fo.detail.get('cause') if fo else '-'}; its retained status: "
                f"offline, {ctx.notes.get('offline_reason', 'never')})"
                if out_s is not None
                else f"{victim} never failed over",
            ),
            Check(
                "revoked_stays_out",
                a.delivered == 0 and not births and ctx.notes["victim_refused"] > 0,
                f"thief's logins: CONNACK {codes}; {victim}'s own reconnects refused: "
                f"{ctx.notes['victim_refused']}, births since: {len(births)}",
            ),
        ]

    def own_metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        return {"signalled_pid": ctx.notes.get("pid"), "connack": ctx.notes.get("codes")}


ACCESS_ATTACKS: dict[str, type[AttackCase]] = {c.name: c for c in (ConnectionFlood, RevokedWorker)}
