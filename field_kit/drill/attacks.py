"""Attack cases: a mesh with one account per device, attacked with a stolen credential.

Each case runs like a fault case (steady -> inject -> effect -> recover -> steady -> check) on
a drill mesh with accounts (:class:`~field_kit.drill.mesh.MeshSpec` ``accounts``): the attacker
is a client of the drill process that read one device's secret from the mesh's secrets folder
(the device is named in the case) and uses it where that device is not connected (its
identity's probe name, or a standby coordinator's main name), so the real device runs on. A
watcher (an admin account following everything of the mesh) tells which forged messages the
broker delivered: a forged message it never delivered was refused by the broker; one it
delivered must be ignored by the mesh, which each case checks.

Every case keeps the fault cases' invariants (recovered, single serving, no crash, nothing
retained stale) and these: every app keeps getting results with no gap longer than one
failover, nobody is suspected or failed over, nothing the attacker wrote is left in the
retained state (statuses, assignments, routes, placement, the leader's status). The report
lists per case what was attempted, refused by the broker, delivered and ignored by the mesh.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import hashlib
import json
import shutil
import signal
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Final

import numpy as np

from faillite import envelope, messages
from faillite.identity import Identity, acl_scope, identity_acl
from faillite.mqtt import MeshClient, Raw
from faillite.routes import RouteFilter, Verdict
from faillite.topics import Access, Role, matches, parse
from field_kit.drill.analysis import (
    RETAINED_STATE,
    Check,
    Fault,
    Recording,
    false_suspicions,
    retained_snapshot,
    service_gaps,
)
from field_kit.drill.cases import DrillContext, DrillOptions, FaultCase
from field_kit.drill.mesh import APPS, WORKERS, DrillMesh, MeshSpec
from field_kit.mqttwire import connect_packet, read_connack
from field_kit.observe import MeshObserver

MAX_COUNT: Final = messages.MAX_COUNT  # 2^53 - 1, the largest integer of the schema
HUGE: Final = 2**52  # a term or generation that no real sequence reaches
# No app may go longer than one failover without a result (the bound KILL_COORDINATOR keeps
# while the leader changes): a failover detects in ~0.3 s and serves the next frame (5 fps).
FAILOVER_GAP_MS: Final = 1000.0
# ImageNet's cats (tabby 281 ... Egyptian cat 285, cougar 286, lynx 287): what a classifier
# sees in the chelsea photo (sensors/scene), whatever the variant.
CAT_FAMILY: Final = frozenset(range(281, 288))
FORGED_SEQ: Final = 10**12  # frame seq of forged frames: far above any real camera's
FORGED_TAG: Final = 0xA77AC4ED  # envelope incarnation tag of forged frames
SETTLE_S: Final = 1.5  # after the last forged message, for the mesh to act on what it got
CONNACK_ACCEPTED: Final = 0


def _digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=16).digest()


# -- what was attempted and what the broker delivered ----------------------------------------


@dataclass
class Attempt:
    """One kind of forged traffic: how many were sent, delivered, and ignored by the mesh."""

    what: str
    keys: list[tuple[str, bytes]] = field(default_factory=list)  # (topic, payload digest)
    delivered: int = 0
    ignored: int | None = None  # of the delivered ones, how many the mesh ignored (counted)
    how: str = ""  # who refused or ignored it, and how that was told

    @property
    def attempted(self) -> int:
        return len(self.keys)

    @property
    def refused(self) -> int:
        return self.attempted - self.delivered

    def as_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "attempted": self.attempted,
            "refused": self.refused,
            "delivered": self.delivered,
            "ignored": self.ignored if self.delivered else None,  # nothing to ignore
            "how": self.how,
        }


class AttackLog:
    """Every forged message by kind, and which of them the watcher saw delivered."""

    def __init__(self) -> None:
        self.attempts: dict[str, Attempt] = {}
        self.thieves: dict[str, str] = {}  # stolen identity -> the client id it connected as

    def add(self, what: str, topic: str, payload: bytes) -> None:
        self.attempts.setdefault(what, Attempt(what)).keys.append((topic, _digest(payload)))

    def attempt(self, what: str) -> Attempt:
        return self.attempts.setdefault(what, Attempt(what))

    def digests(self) -> set[bytes]:
        return {d for a in self.attempts.values() for _t, d in a.keys}

    def count_delivered(self, watch: Watch) -> int:
        total = 0
        for a in self.attempts.values():
            a.delivered = sum(1 for k in set(a.keys) if k in watch.seen)
            total += a.delivered
        return total

    def settle(self, watch: Watch, quiet_s: float = SETTLE_S, timeout: float = 15.0) -> None:
        """Wait until the watcher has seen no more forged messages for ``quiet_s``."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            n = self.count_delivered(watch)
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return
            time.sleep(0.1)

    def totals(self) -> dict[str, int]:
        attempted = sum(a.attempted for a in self.attempts.values())
        refused = sum(a.refused for a in self.attempts.values())
        ignored = sum(a.ignored or 0 for a in self.attempts.values() if a.delivered)
        return {"attempted": attempted, "refused": refused, "ignored": ignored}

    def as_dict(self) -> dict[str, Any]:
        return {
            "thieves": dict(self.thieves),
            "attempts": [a.as_dict() for a in self.attempts.values()],
            **self.totals(),
        }


class Watch:
    """An admin client on everything of the mesh: what the broker delivered, as digests."""

    def __init__(self, mesh: DrillMesh) -> None:
        assert mesh.cfg is not None
        self.seen: set[tuple[str, bytes]] = set()
        self.frames: Counter[str] = Counter()
        self._lock = threading.Lock()
        name = mesh.identity(Role.ADMIN, "watch").name
        self.client = MeshClient(name, mesh.cfg.broker)
        self.client.subscribe(mesh.topics.everything, self._on, qos=1)
        mesh.clients.append(self.client)

    def _on(self, msg: Raw) -> None:
        key = (msg.topic, _digest(msg.payload))
        with self._lock:
            self.seen.add(key)

    def start(self) -> Watch:
        self.client.start(connect_timeout=15)
        time.sleep(0.3)  # the retained state replayed on subscribe
        return self

    def stop(self) -> None:
        self.client.stop()


class Attacker:
    """A client of the drill process with a stolen device secret (copied out of the secrets
    folder, as a thief would), connected as ``client_id`` (a name of the stolen identity that
    its device does not use now)."""

    def __init__(
        self, ctx: DrillContext, stolen: Identity, client_id: str, *, log: AttackLog
    ) -> None:
        m = ctx.mesh
        assert m.cfg is not None
        loot = m.workdir / "loot" / client_id
        loot.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(m.secret_file(stolen), loot / m.secret_file(stolen).name)
        broker = m.cfg.broker.model_copy(update={"secrets_dir": loot})
        self.client = MeshClient(client_id, broker)
        self.log = log
        self.stolen = stolen
        log.thieves[stolen.name] = client_id
        m.clients.append(self.client)

    def __enter__(self) -> Attacker:
        self.client.start(connect_timeout=15)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.client.stop()

    def send(
        self, what: str, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        self.log.add(what, topic, payload)
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def send_message(
        self, what: str, topic: str, msg: Any, *, qos: int = 1, retain: bool = False
    ) -> None:
        self.send(what, topic, messages.encode(msg), qos=qos, retain=retain)


# -- a bare MQTT CONNECT (client id, clean session and will of our choosing) -----------------


def raw_connect(
    host: str,
    port: int,
    *,
    client_id: str,
    username: str,
    password: str,
    clean: bool,
    will: tuple[str, bytes] | None,
    hold_s: float = 0.3,
    source: str = "",
) -> int:
    """One CONNECT on a bare socket; the CONNACK's return code (-1: closed without one). An
    admitted connection is held ``hold_s`` and then dropped without DISCONNECT (a reset), so
    that the broker fires its will if it kept one."""
    packet = connect_packet(
        client_id, 60, clean=clean, will=will, will_retain=True, username=username,
        password=password,
    )  # fmt: skip
    with socket.create_connection((host, port), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(packet)
        code = read_connack(sock)
        if code == CONNACK_ACCEPTED:
            time.sleep(hold_s)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return code


# -- frames ------------------------------------------------------------------------------------


def image_bomb(width: int = 32767, height: int = 32767) -> bytes:
    """A small JPEG whose SOF declares ``width`` x ``height`` (tests/unit/test_image_bomb.py)."""
    jpeg = bytearray(envelope.encode_jpeg(np.zeros((16, 16, 3), np.uint8), 90))
    at = min(i for i in (jpeg.find(b"\xff\xc0"), jpeg.find(b"\xff\xc2")) if i > 0)
    jpeg[at + 5 : at + 7] = height.to_bytes(2, "big")
    jpeg[at + 7 : at + 9] = width.to_bytes(2, "big")
    return bytes(jpeg)


def scan_bomb(width: int = 640, height: int = 480, max_bytes: int = 2 * 2**20) -> bytes:
    """A progressive JPEG that honestly declares ``width`` x ``height`` but repeats its last,
    12-byte scan until it fills ``max_bytes``: libjpeg only warns about the bogus progression
    and decodes every scan, each a pass over the whole image (about 170,000 of them in 2 MiB:
    tens of seconds of CPU for one frame)."""
    flat = np.full((height, width, 3), 128, np.uint8)  # its scans are tiny: more of them fit
    import cv2

    ok, buf = cv2.imencode(
        ".jpg", flat, [cv2.IMWRITE_JPEG_QUALITY, 85, cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    )
    assert ok
    jpeg = buf.tobytes()
    last = jpeg[jpeg.rfind(b"\xff\xda") : -2]  # the last scan, up to EOI
    repeats = max(1, (max_bytes - len(jpeg) - 64) // len(last))
    return jpeg[:-2] + last * repeats + b"\xff\xd9"


def forged_photo(width: int = 640, height: int = 480) -> bytes:
    """Another photo than the victim camera's: the scene's espresso (ImageNet 967)."""
    from sensors.sources import fit, scene_photo

    return envelope.encode_jpeg(fit(scene_photo("coffee"), width, height))


def _frame(jpeg: bytes, seq: int, width: int, height: int) -> bytes:
    return envelope.pack(
        jpeg, seq=seq, capture_ns=time.time_ns(), width=width, height=height, tag=FORGED_TAG
    )


# -- the mesh's state, as the recording says -------------------------------------------------


def _primary(ctx: DrillContext, app: str = "a1") -> str:
    w = ctx.mesh.role_of(app, "primary")
    if w is None:
        raise LookupError(f"{app} has no primary")
    return w


def _other_worker(ctx: DrillContext, victim: str) -> str:
    """A worker other than ``victim``: the accomplice whose secret is stolen."""
    return next(w for w in reversed(WORKERS) if w != victim)


def _last(ctx: DrillContext, topic: str, cls: type[Any]) -> Any:
    msgs = ctx.mesh.rec.messages(topic, cls)
    if not msgs:
        raise LookupError(f"nothing recorded on {topic}")
    return msgs[-1]


def _birth(ctx: DrillContext, worker: str) -> messages.WorkerStatus:
    st: messages.WorkerStatus = _last(
        ctx, ctx.mesh.topics.worker_status(worker), messages.WorkerStatus
    )
    return st


def _heartbeat(ctx: DrillContext, worker: str) -> messages.Heartbeat:
    hb: messages.Heartbeat = _last(
        ctx, ctx.mesh.topics.worker_heartbeat(worker), messages.Heartbeat
    )
    return hb


def _leader(ctx: DrillContext) -> messages.CoordinatorStatus:
    st: messages.CoordinatorStatus = _last(
        ctx, ctx.mesh.topics.coordinator_status, messages.CoordinatorStatus
    )
    return st


def _errors(rec: Recording, worker: str, reason: str) -> int:
    """``reason``'s count in the worker's last recorded heartbeat."""
    hbs = rec.heartbeats.get(worker, [])
    return int(hbs[-1].errors.get(reason, 0)) if hbs else 0


def _log_events(path: Path | None, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``event`` in a process's log."""
    if path is None or not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict) and obj.get("event") == event:
                out.append(obj)
    return out


def _broker_log(ctx: DrillContext) -> Path | None:
    m = ctx.mesh
    if m.endpoint is None:
        return None
    try:
        return m.launcher.process(m.endpoint).log_path
    except KeyError:
        return None


def _proc_logs(ctx: DrillContext, base: str) -> list[Path]:
    return [
        c.log_path
        for c in ctx.mesh.group.children
        if c.name.startswith(f"{base}-") and c.log_path is not None
    ]


def _served_by(rec: Recording, app: str, since: float, until: float) -> Counter[str]:
    return Counter(r.worker for r in rec.results.get(app, []) if since <= r.ts <= until)


def _stop_gracefully(ctx: DrillContext, base: str) -> None:
    """SIGTERM one of the mesh's processes and wait for it (a planned stop, not a crash)."""
    child = ctx.mesh.proc(base)
    ctx.mesh.group.stop(child.name, signal.SIGTERM, 15)
    ctx.mesh.killed.add(child.name)


def _restart_leader(ctx: DrillContext, since_ts: float) -> messages.Event:
    """Stop the leader c1 cleanly; the standby c2 takes over; c1 comes back as a standby. The
    takeover event (its term, how soon) is what a coordinator restarted after the attack did."""
    _stop_gracefully(ctx, "c1")
    e: messages.Event = ctx.wait_event("coordinator_takeover", since_ts, 30)
    ctx.mesh.start_coordinator("c1", standby=True, rank=2)
    return e


# -- the cases -----------------------------------------------------------------------------


class AttackCase(FaultCase):
    """An attack with a stolen credential; the checks every attack case keeps."""

    # The longest gap in any app's results the attack may cause: one failover at most.
    gap_bound_ms: ClassVar[float] = FAILOVER_GAP_MS
    # A case whose victim (ctx.notes["victim"]) is meant to fail over names the check that
    # says it alone did, in place of "no_failover".
    victim_fails_over: ClassVar[str] = ""

    def spec(self, opts: DrillOptions) -> MeshSpec:
        return MeshSpec(broker=opts.broker, accounts=True)

    # inject() records the attack in ctx.notes["log"] (an AttackLog) with a Watch running
    # in ctx.notes["watch"]; attack() is each case's own part.

    def inject(self, ctx: DrillContext) -> Fault:
        log, watch = AttackLog(), Watch(ctx.mesh).start()
        ctx.notes.update(log=log, watch=watch)
        ctx.affected = []  # nothing is to be recovered: every app must go on being served
        t = time.time()
        ctx.notes["t_mono"] = time.monotonic()
        targets = self.attack(ctx, log)
        log.settle(watch)
        return Fault("attack", targets, t)

    @abc.abstractmethod
    def attack(self, ctx: DrillContext, log: AttackLog) -> tuple[str, ...]:
        """Carry the attack out (logging every forged message in ``log``); its victims."""

    def await_effect(self, ctx: DrillContext, fault: Fault) -> None:
        return None

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        return replace(fault, t_recover=time.time())

    def _log(self, ctx: DrillContext) -> AttackLog:
        log: AttackLog = ctx.notes["log"]
        return log

    def checks(self, ctx: DrillContext, rec: Recording, fault: Fault, end: float) -> list[Check]:
        watch: Watch = ctx.notes["watch"]
        log = self._log(ctx)
        ctx.notes["end"] = end
        log.count_delivered(watch)
        watch.stop()
        assert ctx.mesh.cfg is not None
        retained = retained_snapshot(ctx.mesh.cfg, filters=("#",))
        ctx.notes["retained"] = retained
        out = [
            self._service(rec, fault, end, self.gap_bound_ms),
            self._only_victim_failed_over(rec, fault, ctx.notes["victim"], self.victim_fails_over)
            if self.victim_fails_over
            else self._no_failover(rec, fault),
            self._nothing_forged_retained(ctx, retained, log),
        ]
        out += self.own_checks(ctx, rec, fault, end)
        return out

    def own_checks(
        self, ctx: DrillContext, rec: Recording, fault: Fault, end: float
    ) -> list[Check]:
        return []

    @staticmethod
    def _service(rec: Recording, fault: Fault, end: float, bound_ms: float) -> Check:
        gaps = service_gaps(rec, APPS, fault.t_inject, end)
        worst = max(gaps.values())
        return Check(
            "served_throughout",
            worst < bound_ms,
            f"longest gap in results from the attack to the end: {worst:.0f} ms "
            f"(bound: one failover, {bound_ms:.0f} ms); "
            + ", ".join(f"{a} {g:.0f} ms" for a, g in gaps.items()),
        )

    @staticmethod
    def _no_failover(rec: Recording, fault: Fault) -> Check:
        sus = false_suspicions(rec, fault.t_inject)
        fos = [
            f"{e.worker} ({e.detail.get('cause')})"
            for e in rec.events_of("failover", fault.t_inject)
        ]
        ok = not sus and not fos
        return Check(
            "no_failover",
            ok,
            "nobody suspected, no failover"
            if ok
            else f"suspected: {'; '.join(sus) or '-'}; failovers: {', '.join(fos) or '-'}",
        )

    @staticmethod
    def _only_victim_failed_over(rec: Recording, fault: Fault, victim: str, name: str) -> Check:
        fos = [(e.worker, e.detail.get("cause")) for e in rec.events_of("failover", fault.t_inject)]
        others = [f"{w} ({cause})" for w, cause in fos if w != victim]
        sus = [s for s in false_suspicions(rec, fault.t_inject) if victim not in s]
        return Check(
            name,
            bool(fos) and not others and not sus,
            f"failovers: {', '.join(f'{w} ({cause})' for w, cause in fos) or '-'}; "
            f"anyone else suspected: {'; '.join(sus) or '-'}",
        )

    @staticmethod
    def _nothing_forged_retained(
        ctx: DrillContext, retained: dict[str, bytes], log: AttackLog
    ) -> Check:
        """No forged payload in the retained state; forged payloads kept elsewhere (topics the
        stolen account may write, retained by a broker without caps) are reported, not failed."""
        forged = log.digests()
        prefix = ctx.mesh.topics.prefix
        state = [f"{prefix}/{f}" for f in RETAINED_STATE]
        bad = sorted(
            t
            for t, p in retained.items()
            if _digest(p) in forged and any(matches(f, t) for f in state)
        )
        kept = sorted(t for t, p in retained.items() if _digest(p) in forged and t not in bad)
        ctx.notes["forged_retained_elsewhere"] = kept
        detail = (
            "nothing forged in the retained statuses, assignments, routes, placement"
            if not bad
            else "forged and retained: " + ", ".join(bad)
        )
        if kept:
            detail += (
                f"; {len(kept)} forged message(s) retained on topics the stolen account may "
                f"write (e.g. {kept[0]})"
            )
        return Check("retained_state_intact", not bad, detail)

    def metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        until = fault.t_recover or fault.t_inject
        return {
            "attack": self._log(ctx).as_dict(),
            "victims": list(fault.targets),
            "service_gap_ms": service_gaps(
                rec, APPS, fault.t_inject, float(ctx.notes.get("end", until))
            ),
            "attack_s": round(until - fault.t_inject, 1),
            "forged_retained_elsewhere": len(ctx.notes.get("forged_retained_elsewhere", [])),
            **self.own_metrics(ctx, rec, fault),
        }

    def own_metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        return {}


def _only_from(rec: Recording, app: str, worker: str, since: float, until: float) -> Check:
    served = _served_by(rec, app, since, until)
    ok = set(served) == {worker}
    detail = ", ".join(f"{w}: {n}" for w, n in sorted(served.items())) or "no results"
    return Check(
        "served_by_its_worker",
        ok,
        f"{app}'s results from the attack to the end: {detail} (its worker: {worker})",
    )


def _status_is_birth(
    retained: dict[str, bytes], ctx: DrillContext, worker: str, incarnation: str
) -> str | None:
    """Why the retained status of ``worker`` is not its real birth, or None."""
    raw = retained.get(ctx.mesh.topics.worker_status(worker))
    if not raw:
        return f"{worker}: nothing retained"
    try:
        st = messages.decode(messages.WorkerStatus, raw)
    except messages.MessageError as exc:
        return f"{worker}: {exc}"
    if st.state != "online" or st.incarnation != incarnation:
        return f"{worker}: retained {st.state}/{st.incarnation}, its birth is {incarnation}"
    return None


def _live_incarnation(rec: Recording, worker: str) -> str | None:
    hbs = rec.heartbeats.get(worker, [])
    return hbs[-1].incarnation if hbs else None


class ClientIdHijack(AttackCase):
    name = "CLIENT_ID_HIJACK"
    summary = (
        "connect under the critical app's worker's client id: with a wrong password, then "
        "with a stolen camera's account; clean and persistent sessions, a forged will each"
    )

    def attack(self, ctx: DrillContext, log: AttackLog) -> tuple[str, ...]:
        m = ctx.mesh
        assert m.endpoint is not None
        victim = _primary(ctx)
        vid = m.identity(Role.WORKER, victim)
        cam = m.identity(Role.SENSOR, "cam2")
        secret = m.secret_file(cam).read_text().strip()  # stolen
        # The camera's probe name: its sensor runs under its main name, and with Mosquitto
        # (use_username_as_clientid) the connection takes its username's id whatever it asks.
        log.thieves[cam.name] = cam.probe_name
        birth = _birth(ctx, victim)
        topic = m.topics.worker_status(victim)
        ctx.notes.update(victim=victim, incarnation=birth.incarnation)
        connects: list[dict[str, Any]] = []
        n = 0
        # Failed logins from one address wait, doubling (the embedded broker): four here.
        for who, username, password in (
            ("its own name and a wrong password", vid.name, "wrong-" + secret[::-1]),
            (f"cam2's account ({cam.probe_name}, stolen secret)", cam.probe_name, secret),
        ):
            for clean in (True, False):
                n += 1
                # The victim's own last-will, forged: offline/lost of its live incarnation.
                will = replace(birth, state="offline", reason="lost", ts=birth.ts + n * 1e-6)
                payload = messages.encode(will)
                what = (
                    f"CONNECT as client id {vid.name} with {who}, clean session "
                    f"{int(clean)}, a will on {victim}'s status"
                )
                log.add(what, topic, payload)
                code = raw_connect(
                    m.endpoint.host,
                    m.endpoint.port,
                    client_id=vid.name,
                    username=username,
                    password=password,
                    clean=clean,
                    will=(topic, payload),
                )
                connects.append({"what": what, "connack": code})
        ctx.notes["connects"] = connects
        return (victim,)

    def own_checks(
        self, ctx: DrillContext, rec: Recording, fault: Fault, end: float
    ) -> list[Check]:
        m, log = ctx.mesh, self._log(ctx)
        victim, inc = ctx.notes["victim"], ctx.notes["incarnation"]
        codes: dict[str, list[int]] = {}
        for c in ctx.notes["connects"]:
            codes.setdefault(c["what"], []).append(c["connack"])
        # The victim's status topic since the attack: a birth again (it was disconnected and
        # came back) or a will would say that a CONNECT took its session.
        since = float(ctx.notes["t_mono"])
        after = [p for _t, tp, p in m.rec.raw(since) if tp == m.topics.worker_status(victim)]
        for what, cs in codes.items():
            a = log.attempt(what)
            admitted = sum(1 for c in cs if c == CONNACK_ACCEPTED)
            a.ignored = a.delivered if not after else 0
            a.how = f"CONNACK {', '.join(map(str, cs))}" + (
                f"; {admitted} admitted under the account's own client id (the victim kept "
                "its session)"
                if admitted
                else "; refused at CONNECT"
            )
        retained = ctx.notes["retained"]
        problem = _status_is_birth(retained, ctx, victim, inc)
        delivered = sum(a.delivered for a in log.attempts.values())
        return [
            Check(
                "session_kept",
                not after,
                f"{victim} kept its connection: nothing on its status topic since the attack"
                if not after
                else f"{len(after)} message(s) on {victim}'s status since the attack "
                "(a reconnect or a will)",
            ),
            Check(
                "no_forged_will",
                delivered == 0 and problem is None,
                f"no forged will delivered; {victim}'s retained status is its birth"
                if delivered == 0 and problem is None
                else f"forged wills delivered: {delivered}; {problem or 'birth retained'}",
            ),
            _only_from(rec, "a1", victim, fault.t_inject, end),
        ]

    def own_metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        return {"connects": ctx.notes.get("connects", [])}


class ImpersonatedWorker(AttackCase):
    name = "IMPERSONATED_WORKER"
    summary = (
        "a stolen worker secret speaks for the critical app's worker: its birth, an empty "
        "status, heartbeats (seq 2^53-1, and just ahead of its own), results of generation 2^52"
    )
    rounds = 10

    def attack(self, ctx: DrillContext, log: AttackLog) -> tuple[str, ...]:
        m, t = ctx.mesh, ctx.mesh.topics
        victim = _primary(ctx)
        thief = _other_worker(ctx, victim)
        birth = _birth(ctx, victim)
        route = _last(ctx, t.app_route("a1"), messages.Route)
        ctx.notes.update(
            victim=victim, thief=thief, incarnation=birth.incarnation, routed=route.worker
        )
        stolen = m.identity(Role.WORKER, thief)
        forged_inc = "forged" + birth.incarnation[:6]
        with Attacker(ctx, stolen, stolen.probe_name, log=log) as a:
            a.send_message(
                f"birth of {victim}, a new incarnation (retained)",
                t.worker_status(victim),
                replace(birth, incarnation=forged_inc, ts=messages.now(), host="attacker"),
                retain=True,
            )
            a.send(
                f"empty retained status of {victim} (would clear its birth)",
                t.worker_status(victim),
                b"",
                retain=True,
            )
            for i in range(self.rounds):
                hb = _heartbeat(ctx, victim)
                a.send_message(
                    f"heartbeats of {victim} on its topic, seq 2^53-1",
                    t.worker_heartbeat(victim),
                    replace(hb, seq=MAX_COUNT - i, ts=messages.now()),
                    qos=0,
                )
                a.send_message(
                    f"heartbeats of {victim} on {thief}'s own topic, seq 2^53-1",
                    t.worker_heartbeat(thief),
                    replace(hb, seq=MAX_COUNT - 100 - i, ts=messages.now()),
                    qos=0,
                )
                res = messages.Result(
                    app="a1",
                    seq=FORGED_SEQ + i,
                    sensor="cam1",
                    capture_ts=messages.now(),
                    ts=messages.now(),
                    worker=victim,
                    incarnation=birth.incarnation,
                    variant=route.variant or "efficientnet_lite0",
                    generation=HUGE,
                    latency=messages.Latency(0.0, 0.0, 0.0, 0.0, 1.0),
                    top=(messages.Label(967, "espresso", 0.99),),
                )
                a.send_message(
                    f"results of a1 on {victim}'s topic, generation 2^52",
                    t.app_results("a1", victim),
                    res,
                    qos=0,
                )
                a.send_message(
                    f"results of a1 on {thief}'s own topic claiming {victim}, generation 2^52",
                    t.app_results("a1", thief),
                    replace(res, seq=FORGED_SEQ + 1000 + i),
                    qos=0,
                )
                time.sleep(0.2)
            # Then, apart (so that what the coordinator does is told from the above): seq
            # numbers inside any window of the victim's own, so believed, its next real
            # heartbeats would look old.
            time.sleep(SETTLE_S)
            ctx.notes["t_ahead"] = time.time()
            for _i in range(self.rounds // 2):
                hb = _heartbeat(ctx, victim)
                a.send_message(
                    f"heartbeats of {victim} on {thief}'s own topic, its seq + 100",
                    t.worker_heartbeat(thief),
                    replace(hb, seq=hb.seq + 100, ts=messages.now()),
                    qos=0,
                )
                time.sleep(0.2)
        return (victim,)

    def _route_filter(self, ctx: DrillContext) -> tuple[Counter[str], Counter[str]]:
        """The recording's routes and results, in arrival order, through a RouteFilter: the
        verdicts on the forged results and on the real ones."""
        m, log = ctx.mesh, self._log(ctx)
        forged = log.digests()
        now = [0.0]
        rf = RouteFilter(clock=lambda: now[0])
        on_forged: Counter[str] = Counter()
        on_real: Counter[str] = Counter()
        held: dict[int, bool] = {}  # id(result) -> forged

        def judged(r: messages.Result, verdict: Verdict, is_forged: bool) -> None:
            if verdict is Verdict.HELD:
                held[id(r)] = is_forged
                return
            (on_forged if is_forged else on_real)[verdict.value] += 1

        for t, topic, payload in m.rec.raw():
            parsed = parse(topic)
            if parsed is None or not payload:
                continue
            now[0] = t
            name = parsed[1].spec.name
            try:
                if name == "app_route":
                    route = messages.decode(messages.Route, payload)
                    for rel in rf.on_route(route, topic_app=parsed[1].ids.get("app")):
                        judged(rel.result, rel.verdict, held.pop(id(rel.result), False))
                elif name == "app_results":
                    r = messages.decode(messages.Result, payload)
                    judged(r, rf.check(r, topic=topic), _digest(payload) in forged)
            except messages.MessageError:
                continue
        now[0] += 60.0
        rf.expire()
        for is_forged in held.values():
            (on_forged if is_forged else on_real)[Verdict.GENERATION_AHEAD.value] += 1
        return on_forged, on_real

    def own_checks(
        self, ctx: DrillContext, rec: Recording, fault: Fault, end: float
    ) -> list[Check]:
        log = self._log(ctx)
        victim, thief, inc = ctx.notes["victim"], ctx.notes["thief"], ctx.notes["incarnation"]
        on_forged, on_real = self._route_filter(ctx)
        ctx.notes["route_filter"] = {"forged": dict(on_forged), "real": dict(on_real)}
        accepted = sum(n for v, n in on_forged.items() if Verdict(v).accepted)
        refused = sum(on_forged.values()) - accepted
        # Heartbeats: the seq 2^53-1 ones went first, those just ahead of the victim's own
        # 1.5 s after; a failure of the victim is laid at the door of the ones sent before it.
        ahead = float(ctx.notes["t_ahead"])
        failed = [e.ts for e in rec.events_of("failure_detected", fault.t_inject)]
        for a in log.attempts.values():
            if not a.delivered:
                a.how = "refused by the broker (ACL)"
            elif "results" in a.what:
                a.ignored = refused
                a.how = "RouteFilter: " + ", ".join(f"{v} {n}" for v, n in on_forged.items())
            else:
                window = (ahead, end) if "+ 100" in a.what else (fault.t_inject, ahead)
                acted = [ts for ts in failed if window[0] <= ts < window[1]]
                a.ignored = 0 if acted else a.delivered
                a.how = (
                    f"coordinator believed them: {victim} failed over "
                    f"+{acted[0] - window[0]:.2f} s after the first"
                    if acted
                    else "coordinator: no suspicion, no failover"
                )
        problem = _status_is_birth(ctx.notes["retained"], ctx, victim, inc)
        return [
            _only_from(rec, "a1", ctx.notes["routed"], fault.t_inject, end),
            Check(
                "victim_birth_retained",
                problem is None,
                f"{victim}'s retained status is its real birth ({inc})"
                if problem is None
                else problem,
            ),
            Check(
                "route_filter_refuses_forgeries",
                accepted == 0,
                f"forged results refused: {refused} "
                f"({', '.join(f'{v} {n}' for v, n in on_forged.items()) or 'none delivered'}); "
                f"accepted: {accepted}; real results accepted: "
                f"{sum(n for v, n in on_real.items() if Verdict(v).accepted)} of "
                f"{sum(on_real.values())} ({thief} wrote {rec.wrong_topic} result(s) or "
                "heartbeat(s) whose payload names another worker than its topic)",
            ),
        ]

    def own_metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        return {"route_filter": ctx.notes.get("route_filter")}


class ImpersonatedCamera(AttackCase):
    name = "IMPERSONATED_CAMERA"
    summary = "a stolen camera secret sends another photo on the critical app's camera's topic"
    frames, fps = 24, 8.0

    def attack(self, ctx: DrillContext, log: AttackLog) -> tuple[str, ...]:
        m = ctx.mesh
        stolen = m.identity(Role.SENSOR, "cam2")
        jpeg = forged_photo()
        with Attacker(ctx, stolen, stolen.probe_name, log=log) as a:
            for i in range(self.frames):
                a.send(
                    "frames of another photo (espresso) on cam1's topic",
                    m.topics.sensor_frames("cam1"),
                    _frame(jpeg, FORGED_SEQ + i, 640, 480),
                    qos=0,
                )
                time.sleep(1.0 / self.fps)
        return ("cam1",)

    def own_checks(
        self, ctx: DrillContext, rec: Recording, fault: Fault, end: float
    ) -> list[Check]:
        rs = [r for r in rec.results.get("a1", []) if fault.t_inject <= r.ts <= end]
        forged = [r for r in rs if r.seq >= FORGED_SEQ]
        other = Counter(
            f"{r.top[0].index} {r.top[0].label}" for r in rs if r.top[0].index not in CAT_FAMILY
        )
        classes = Counter(f"{r.top[0].index} {r.top[0].label}" for r in rs if r.top)
        ctx.notes["classes"] = dict(classes)
        for a in self._log(ctx).attempts.values():
            a.ignored = a.delivered - len(forged)
            a.how = "refused by the broker (ACL)" if not a.delivered else "served: see checks"
        ok = bool(rs) and not forged and not other
        return [
            Check(
                "results_keep_their_class",
                ok,
                f"a1: {len(rs)} results since the attack, top-1 "
                + ", ".join(f"{c} ×{n}" for c, n in classes.most_common())
                + f"; from forged frames: {len(forged)}",
            )
        ]

    def own_metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        return {"a1_top1": ctx.notes.get("classes")}


class ImageBomb(AttackCase):
    name = "IMAGE_BOMB"
    summary = (
        "a stolen camera sends 4 image bombs a second (a JPEG declaring 32767x32767) on its "
        "own topic: workers refuse them unread"
    )
    bombs, rate = 12, 4.0
    rss_growth_max_mb = 100.0
    reason = "image_too_large"  # what the workers count them as

    def bomb(self, i: int) -> tuple[bytes, int, int, str]:
        """The ``i``-th bomb: its JPEG, the envelope's width and height, what it is."""
        jpeg = image_bomb()
        # The envelope says 32767x32767 too, or claims a normal 640x480.
        w, h = (32767, 32767) if i % 2 == 0 else (640, 480)
        return jpeg, w, h, f"image bombs on cam1's topic (a {len(jpeg)}-byte JPEG, SOF 32767x32767)"

    def attack(self, ctx: DrillContext, log: AttackLog) -> tuple[str, ...]:
        m = ctx.mesh
        subscribers = [w for w in (m.role_of("a1", "primary"), m.role_of("a1", "warm")) if w]
        ctx.notes["subscribers"] = subscribers
        ctx.notes["before"] = {
            w: int(_heartbeat(ctx, w).errors.get(self.reason, 0)) for w in subscribers
        }
        ctx.notes["rss_before"] = {w: _heartbeat(ctx, w).rss_mb for w in WORKERS}
        stolen = m.identity(Role.SENSOR, "cam1")
        with Attacker(ctx, stolen, stolen.probe_name, log=log) as a:
            for i in range(self.bombs):
                jpeg, w, h, what = self.bomb(i)
                a.send(
                    what, m.topics.sensor_frames("cam1"), _frame(jpeg, FORGED_SEQ + i, w, h), qos=0
                )
                time.sleep(1.0 / self.rate)
        return tuple(subscribers)

    def own_checks(
        self, ctx: DrillContext, rec: Recording, fault: Fault, end: float
    ) -> list[Check]:
        log = self._log(ctx)
        delivered = sum(a.delivered for a in log.attempts.values())
        before: dict[str, int] = ctx.notes["before"]
        refused = {w: _errors(rec, w, self.reason) - n for w, n in before.items()}
        ctx.notes["refused_by_worker"] = refused
        ctx.notes["rss_after"] = {
            w: hbs[-1].rss_mb for w in WORKERS if (hbs := rec.heartbeats.get(w))
        }
        primary = ctx.notes["subscribers"][0]
        for a in log.attempts.values():
            a.ignored = refused[primary]
            a.how = f"workers' heartbeats, errors {self.reason}: " + ", ".join(
                f"{w} +{n}" for w, n in refused.items()
            )
        grew = {
            w: round(ctx.notes["rss_after"].get(w, 0.0) - rss, 1)
            for w, rss in ctx.notes["rss_before"].items()
        }
        ctx.notes["rss_growth_mb"] = grew
        # Decoded, one bomb would allocate 3 GiB; refused unread, nothing grows.
        ok = (
            delivered > 0
            and all(n >= delivered for n in refused.values())
            and max(grew.values()) < self.rss_growth_max_mb
        )
        return [
            Check(
                "bombs_refused_unread",
                ok,
                f"bombs delivered: {delivered}; counted {self.reason} by "
                + ", ".join(f"{w} +{n}" for w, n in refused.items())
                + f"; RSS growth (MB): {grew}",
            )
        ]

    def own_metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        return {
            "refused_by_worker": ctx.notes.get("refused_by_worker"),
            "rss_growth_mb": ctx.notes.get("rss_growth_mb"),
        }


class ScanBomb(ImageBomb):
    name = "SCAN_BOMB"
    summary = (
        "a stolen camera sends a progressive JPEG a second that honestly says 640x480 but holds "
        "~170,000 scans in 2 MiB (tens of seconds of libjpeg each): refused before decoding, "
        "and the honest camera's app keeps its results"
    )
    bombs, rate = 8, 1.0
    reason = "costly_image"

    def bomb(self, i: int) -> tuple[bytes, int, int, str]:
        jpeg = self._jpeg()
        scans = jpeg.count(b"\xff\xda")
        return jpeg, 640, 480, f"scan bombs on cam1's topic ({len(jpeg)} bytes, {scans} scans)"

    @staticmethod
    @functools.cache
    def _jpeg() -> bytes:
        return scan_bomb(640, 480, 2 * 2**20 - 1024)  # under the mesh's 2 MiB frame limit


class ForgedTerm(AttackCase):
    name = "FORGED_TERM"
    summary = (
        "a stolen worker and a stolen coordinator secret write an empty assignment of term "
        "2^52 and a leader status of term 2^53-1; then the leader is restarted"
    )

    def attack(self, ctx: DrillContext, log: AttackLog) -> tuple[str, ...]:
        m, t = ctx.mesh, ctx.mesh.topics
        victim = _primary(ctx)
        thief = _other_worker(ctx, victim)
        leader = _leader(ctx)
        ctx.notes.update(victim=victim, leader=leader)
        ctx.notes["before"] = int(_heartbeat(ctx, victim).errors.get("term_out_of_range", 0))
        empty = messages.Assignment(worker=victim, term=HUGE, generation=1, ts=messages.now())
        status = messages.CoordinatorStatus(
            coordinator="c1",
            incarnation="forged0" + leader.incarnation[:5],
            state="leader",
            term=MAX_COUNT,
            ts=messages.now(),
            kind=leader.kind,
        )
        w = m.identity(Role.WORKER, thief)
        with Attacker(ctx, w, w.probe_name, log=log) as a:
            a.send_message(
                f"leader status of term 2^53-1 with {thief}'s secret (retained)",
                t.coordinator_status,
                status,
                retain=True,
            )
            a.send_message(
                f"empty assignment of {victim}, term 2^52, with {thief}'s secret (retained)",
                t.worker_assignment(victim),
                empty,
                retain=True,
            )
            time.sleep(0.5)
        c2 = m.identity(Role.COORDINATOR, "c2")
        # The standby c2 watches under its probe name: the thief takes the main one.
        with Attacker(ctx, c2, c2.name, log=log) as a:
            a.send_message(
                f"empty assignment of {victim}, term 2^52, with c2's secret (retained)",
                t.worker_assignment(victim),
                replace(empty, ts=messages.now()),
                retain=True,
            )
            time.sleep(1.0)
            a.send_message(
                "leader status of term 2^53-1 with c2's secret (retained)",
                t.coordinator_status,
                replace(status, coordinator="c2", ts=messages.now()),
                retain=True,
            )
            time.sleep(0.5)
        return (victim,)

    def await_effect(self, ctx: DrillContext, fault: Fault) -> None:
        assert ctx.mesh.cfg is not None
        ctx.notes["retained_before_restart"] = retained_snapshot(ctx.mesh.cfg)
        ctx.notes["leader_events"] = [
            e.kind
            for e in Recording.of(ctx.mesh.rec).events
            if e.kind in ("coordinator_takeover", "coordinator_deposed") and e.ts >= fault.t_inject
        ]

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        t = time.time()
        ctx.notes["takeover"] = _restart_leader(ctx, t)
        return replace(fault, t_recover=t)

    def own_checks(
        self, ctx: DrillContext, rec: Recording, fault: Fault, end: float
    ) -> list[Check]:
        log, t = self._log(ctx), ctx.mesh.topics
        victim: str = ctx.notes["victim"]
        leader: messages.CoordinatorStatus = ctx.notes["leader"]
        refused = _errors(rec, victim, "term_out_of_range") - int(ctx.notes["before"])
        forged_logged = sum(len(_log_events(p, "forged_term")) for p in _proc_logs(ctx, "c1"))
        for a in log.attempts.values():
            if not a.delivered:
                a.how = "refused by the broker (ACL)"
            elif "assignment" in a.what:
                a.ignored = min(a.delivered, refused)
                a.how = (
                    f"{victim} refused it (term_out_of_range; +{refused} with the status); the "
                    "leader put its own assignment back"
                )
            else:
                a.ignored = a.delivered if ctx.notes["leader_events"] == [] else 0
                a.how = (
                    f"{victim} refused it (term_out_of_range); the leader c1 kept leading and "
                    f"put its status back (forged_term logged ×{forged_logged})"
                )
        snap = ctx.notes["retained_before_restart"]
        st: messages.CoordinatorStatus | None = None
        with contextlib.suppress(messages.MessageError, KeyError):
            st = messages.decode(messages.CoordinatorStatus, snap[t.coordinator_status])
        kept = (
            st is not None
            and st.coordinator == leader.coordinator
            and st.term == leader.term
            and st.incarnation == leader.incarnation
            and st.state == "leader"
            and not ctx.notes["leader_events"]
        )
        e: messages.Event = ctx.notes["takeover"]
        new_term = int(e.detail.get("term", 0))
        joined = {
            x.worker for x in rec.events_of("worker_joined", e.ts - 1.0) if x.source == e.source
        }
        restart_ok = (
            new_term == leader.term + 1 and e.source == "coordinator/c2" and joined >= set(WORKERS)
        )
        return [
            _only_from(rec, "a1", victim, fault.t_inject, end),
            Check(
                "forged_term_refused",
                refused >= 1,
                f"{victim} refused term_out_of_range {refused} time(s)",
            ),
            Check(
                "leader_kept",
                kept,
                "retained leader after the attack: "
                + (f"{st.coordinator} term {st.term} {st.state}" if st else "none")
                + f" (the leader: {leader.coordinator} term {leader.term}); leadership events "
                f"meanwhile: {ctx.notes['leader_events'] or 'none'}; c1 logged forged_term "
                f"{forged_logged} time(s)",
            ),
            Check(
                "restarted_coordinator_leads",
                restart_ok,
                f"leader c1 stopped after the attack: {e.source} took over with term {new_term} "
                f"(before: {leader.term}) and saw workers {sorted(joined)}",
            ),
        ]

    def own_metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        e = ctx.notes.get("takeover")
        return {
            "takeover_ms": round((e.ts - fault.t_recover) * 1000, 1)
            if e is not None and fault.t_recover
            else None,
            "new_term": e.detail.get("term") if e is not None else None,
        }


class ForgedOffline(AttackCase):
    name = "FORGED_OFFLINE"
    summary = (
        "a stolen coordinator secret (no signing key) writes every worker's offline status, "
        "retained, as its last-will, its goodbye and a coordinator's obituary, three times"
    )
    rounds = 3

    def attack(self, ctx: DrillContext, log: AttackLog) -> tuple[str, ...]:
        m, t = ctx.mesh, ctx.mesh.topics
        c2 = m.identity(Role.COORDINATOR, "c2")
        # The standby c2 watches under its probe name: the thief takes the main one.
        with Attacker(ctx, c2, c2.name, log=log) as a:
            for n in range(self.rounds):
                for w in WORKERS:
                    birth = _birth(ctx, w)
                    now = messages.now()
                    for reason, ts in (("lost", birth.ts), ("graceful", now), ("silent", now)):
                        forged = replace(
                            birth,
                            state="offline",
                            reason=reason,
                            ts=ts,
                            will_seal="",
                            will_key="5a" * 16 if reason == "lost" else "",
                        )
                        a.send_message(
                            f"{reason} offline of {w} with c2's secret (retained, round {n + 1})",
                            t.worker_status(w),
                            forged,
                            retain=True,
                        )
                time.sleep(1.0)
        return tuple(WORKERS)

    def own_checks(
        self, ctx: DrillContext, rec: Recording, fault: Fault, end: float
    ) -> list[Check]:
        log = self._log(ctx)
        refused = rec.events_of("forged_offline_refused", fault.t_inject)
        by_worker = {w: sum(1 for e in refused if e.worker == w) for w in WORKERS}
        stale = rec.events_of("stale_offline_ignored", fault.t_inject)
        for a in log.attempts.values():
            if not a.delivered:
                a.how = "refused by the broker (ACL)"
            elif "silent" in a.what:
                a.ignored = a.delivered
                a.how = "an obituary of a worker the leader hears: ignored (unsigned: refused)"
            else:
                a.ignored = a.delivered
                a.how = (
                    "does not unseal the birth it claims to end: refused by the leader "
                    "(forged_offline_refused); the worker put its birth back"
                )
        sealed = self.rounds * 2  # lost and graceful, per round and worker
        return [
            Check(
                "forged_offline_refused",
                all(n >= sealed for n in by_worker.values()),
                f"refused per worker: {by_worker} (sent {sealed} each); "
                f"obituaries of heard workers ignored: {len(stale)}",
            )
        ]


class ForgedEvents(AttackCase):
    name = "FORGED_EVENTS"
    summary = (
        "a stolen worker secret reports failovers in the leader's name: on the leader's events "
        "topic, on its own, and retained there for watchers that come later"
    )
    count = 5

    def attack(self, ctx: DrillContext, log: AttackLog) -> tuple[str, ...]:
        m, t = ctx.mesh, ctx.mesh.topics
        assert m.cfg is not None
        thief, leader = "w3", _leader(ctx).coordinator
        view = MeshObserver(m.cfg, client_id="view")  # an operator's `faillite watch`
        m.clients.append(view.client)
        view.start(15)
        ctx.notes["view"] = view

        def failover(n: int, source: str) -> messages.Event:
            return messages.Event(
                "failover", messages.now(), source, "w1", "", {"cause": "forged", "n": n}
            )

        w = m.identity(Role.WORKER, thief)
        with Attacker(ctx, w, w.probe_name, log=log) as a:
            # Until the watcher's subscription is live (it hears, and refuses, one of them).
            deadline = time.monotonic() + 10
            while not view.bad.snapshot() and time.monotonic() < deadline:
                a.send_message(
                    f"failover in {leader}'s name on {thief}'s own events topic",
                    t.events_of(Role.WORKER, thief),
                    failover(-1, f"coordinator/{leader}"),
                    qos=1,
                )
                time.sleep(0.2)
            for n in range(self.count):
                a.send_message(
                    f"failover in {leader}'s name on {leader}'s events topic",
                    t.events_of(Role.COORDINATOR, leader),
                    failover(n, f"coordinator/{leader}"),
                    qos=1,
                )
                a.send_message(
                    f"failover in {leader}'s name on {thief}'s own events topic",
                    t.events_of(Role.WORKER, thief),
                    failover(n, f"coordinator/{leader}"),
                    qos=1,
                )
                a.send_message(
                    "failover on the events topic of earlier versions",
                    f"{t.prefix}/events",
                    failover(n, f"coordinator/{leader}"),
                    qos=1,
                )
            a.send_message(
                f"failover under {thief}'s own name, retained for later watchers",
                t.events_of(Role.WORKER, thief),
                failover(self.count, f"worker/{thief}"),
                qos=1,
                retain=True,
            )
            # The thief stays connected until the live watcher has had its own-topic ones (at
            # least one before the loop, then each of the count): a client that leaves at once
            # may take its last QoS 1 messages with it on a loaded machine.
            deadline = time.monotonic() + 10
            while (
                view.bad.snapshot().get("event_wrong_source", 0) < self.count + 1
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
        late = MeshObserver(m.cfg, client_id="late-view")  # a watcher that comes later
        m.clients.append(late.client)
        late.start(15)
        ctx.notes["late"] = late
        return ("w1",)

    def own_checks(
        self, ctx: DrillContext, rec: Recording, fault: Fault, end: float
    ) -> list[Check]:
        views: dict[str, MeshObserver] = {"view": ctx.notes["view"], "late-view": ctx.notes["late"]}
        shown = {
            name: [e for e in v.failovers if e.detail.get("cause") == "forged"]
            for name, v in views.items()
        }
        recorded = [e for e in rec.events if e.detail.get("cause") == "forged"]
        refused = {name: v.bad.snapshot() for name, v in views.items()}
        for v in views.values():
            v.stop()
        ctx.notes["refused_by_watch"] = refused
        wrong = refused["view"].get("event_wrong_source", 0)
        for a in self._log(ctx).attempts.values():
            if not a.delivered:
                a.how = "refused by the broker (ACL)"
            elif "retained" in a.what:
                a.ignored = a.delivered if not recorded else 0
                a.how = "live: its own name, a worker reporting a failover; retained: refused"
            else:
                # The drill's recording saw every delivered one (the live view only those
                # after its subscription): none of them was believed there.
                a.ignored = a.delivered if not recorded else 0
                a.how = f"refused by every watcher: not its topic's source (live view: ×{wrong})"
        ok = not shown["view"] and not shown["late-view"] and not recorded
        return [
            Check(
                "no_forged_event_shown",
                ok and wrong >= self.count,
                f"forged failovers shown: live watcher {len(shown['view'])}, later watcher "
                f"{len(shown['late-view'])}, drill recording {len(recorded)}; refused by the "
                f"watchers: {refused}",
            )
        ]

    def own_metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        return {"refused_by_watch": ctx.notes.get("refused_by_watch")}


class RetainedFlood(AttackCase):
    name = "RETAINED_FLOOD"
    summary = (
        "a stolen worker secret tries 3000 retained messages on other workers' statuses and "
        "made-up apps, and 300 of 1 KiB on its own topics; then the leader is restarted"
    )
    flood, own, chunk = 3000, 300, 100

    def attack(self, ctx: DrillContext, log: AttackLog) -> tuple[str, ...]:
        m, t = ctx.mesh, ctx.mesh.topics
        thief = _other_worker(ctx, _primary(ctx))
        others = [w for w in WORKERS if w != thief]
        births = {w: _birth(ctx, w) for w in others}
        ctx.notes.update(thief=thief, leader=_leader(ctx))
        stolen = m.identity(Role.WORKER, thief)
        watch: Watch = ctx.notes["watch"]
        with Attacker(ctx, stolen, stolen.probe_name, log=log) as a:
            for i in range(self.flood):
                if i % 3 == 0:
                    w = others[i % 2]
                    a.send_message(
                        "births of the other workers, new incarnations (retained)",
                        t.worker_status(w),
                        replace(births[w], incarnation=f"flood{i}", ts=messages.now()),
                        retain=True,
                    )
                elif i % 3 == 1:
                    app = f"x{i}"
                    a.send_message(
                        "routes of made-up apps (retained)",
                        t.app_route(app),
                        messages.Route(app, thief, "efficientnet_lite0", 1, 1, messages.now()),
                        retain=True,
                    )
                else:
                    a.send(
                        f"results of made-up apps under {thief}'s own id (retained)",
                        t.app_results(f"x{i}", thief),
                        f"flood {i}".encode(),
                        retain=True,
                    )
                if i % self.chunk == self.chunk - 1:
                    time.sleep(0.05)
            own = (
                t.worker_heartbeat(thief),
                t.app_results("a1", thief),
                t.app_results("a2", thief),
            )
            for i in range(self.own):
                a.send(
                    f"1 KiB on {thief}'s own topics: heartbeat, results of a1 and a2 (retained)",
                    own[i % len(own)],
                    f"{i:08d}".encode() * 128,
                    retain=True,
                )
                if i % self.chunk == self.chunk - 1:
                    time.sleep(0.05)
            log.settle(watch)  # everything out before the connection closes
        return (thief,)

    def recover(self, ctx: DrillContext, fault: Fault) -> Fault:
        t = time.time()
        ctx.notes["takeover"] = _restart_leader(ctx, t)
        return replace(fault, t_recover=t)

    def _caps(self, ctx: DrillContext) -> dict[str, Any]:
        """What the embedded broker's log counted of the thief's account."""
        thief = ctx.mesh.identity(Role.WORKER, ctx.notes["thief"])
        path = _broker_log(ctx)
        caps: dict[str, int] = {}
        for e in _log_events(path, "retained_cap"):
            if e.get("account") in thief.usernames:
                cap = str(e.get("cap"))
                caps[cap] = max(caps.get(cap, 0), int(e.get("refused_total", 0)))
        denied = {
            str(e.get("topic"))
            for e in _log_events(path, "acl_denied")
            if e.get("username") in thief.usernames
        }
        return {"retained_refused": caps, "acl_denied_topics": len(denied)}

    def own_checks(
        self, ctx: DrillContext, rec: Recording, fault: Fault, end: float
    ) -> list[Check]:
        log, retained = self._log(ctx), ctx.notes["retained"]
        kept = set(ctx.notes.get("forged_retained_elsewhere", []))
        for a in log.attempts.values():
            stays = sum(1 for tp, d in set(a.keys) if _digest(retained.get(tp, b"")) == d)
            a.ignored = a.delivered
            a.how = (
                "refused by the broker (ACL)"
                if not a.delivered
                else "the ACL lets the account write these topics: delivered live, not "
                f"decodable by any reader; retained by the broker: {stays}"
            )
        # At most one per topic that the account may write under the mesh's own ACL, which
        # names each worker and app (faillite.identity.AclScope): never one per made-up id.
        assert ctx.mesh.cfg is not None
        thief = ctx.mesh.identity(Role.WORKER, ctx.notes["thief"])
        writable = [
            f
            for access, f in identity_acl(thief, acl_scope(ctx.mesh.cfg))
            if access in (Access.WRITE, Access.READWRITE)
        ]
        problems = [
            p
            for w in WORKERS
            if (inc := _live_incarnation(rec, w)) is None
            or (p := _status_is_birth(retained, ctx, w, inc)) is not None
        ]
        e: messages.Event = ctx.notes["takeover"]
        leader: messages.CoordinatorStatus = ctx.notes["leader"]
        joined = {
            x.worker for x in rec.events_of("worker_joined", e.ts - 1.0) if x.source == e.source
        }
        bounded = Check(
            "retained_bounded",
            len(kept) <= len(writable),
            f"forged messages left retained: {len(kept)}; the account may write "
            f"{len(writable)} topic(s) under the mesh's ACL"
            + (f" (e.g. kept: {sorted(kept)[0]})" if kept else ""),
        )
        caps = self._caps(ctx) if ctx.mesh.spec.broker == "amqtt" else None
        ctx.notes["caps"] = caps
        out = [
            Check(
                "births_retained",
                not problems,
                "a fresh subscriber gets every worker's real birth"
                if not problems
                else "; ".join(str(p) for p in problems),
            ),
            Check(
                "restarted_coordinator_sees_all",
                joined >= set(WORKERS) and int(e.detail.get("term", 0)) == leader.term + 1,
                f"leader c1 stopped after the flood: {e.source} took over with term "
                f"{e.detail.get('term')} and saw workers {sorted(joined)}",
            ),
            bounded,
        ]
        if caps is not None:
            refused = caps["retained_refused"]
            out.append(
                Check(
                    "caps_counted",
                    bool(refused) and caps["acl_denied_topics"] > 0,
                    "embedded broker's log: retained refused "
                    + (", ".join(f"{c} ≥{n}" for c, n in refused.items()) or "none")
                    + f"; publishes denied on {caps['acl_denied_topics']} topic(s)",
                )
            )
        return out

    def own_metrics(self, ctx: DrillContext, rec: Recording, fault: Fault) -> dict[str, Any]:
        return {"broker_caps": ctx.notes.get("caps")}


ATTACKS: dict[str, type[FaultCase]] = {
    c.name: c
    for c in (
        ClientIdHijack,
        ImpersonatedWorker,
        ImpersonatedCamera,
        ImageBomb,
        ScanBomb,
        ForgedTerm,
        ForgedOffline,
        ForgedEvents,
        RetainedFlood,
    )
}
