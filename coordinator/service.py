"""The coordinator process around the core: MQTT, timers and threads, no decisions.

Threads of :class:`CoordinatorService`:
- network (paho, in :class:`~faillite.mqtt.MeshClient`): decodes what arrives into typed
  :mod:`~coordinator.events` stamped with their arrival time and queues them; leadership input
  (coordinator statuses, assignments, placements) is judged here, it is cheap.
- monitor: a :class:`~coordinator.events.Tick` every 10 ms (silence, stalls, timers).
- control: the one thread that feeds the :class:`~coordinator.core.CoordinatorCore`, one event
  at a time, and carries out its decisions in order (publish, emit, ask for a plan).
- planner: runs the :class:`~coordinator.planning.Planner` strategy in the background and
  queues its result.

Retained state (the leader's status, assignments, routes, placement) is published again after
every reconnect (brokers can lose it) and after a predecessor's late last-will replaced our
status. A leader that sees a higher term steps down without publishing anything more, unless
that term is forged (far above ours) or from an id that is no coordinator of the mesh: then it
logs ``forged_term`` (or ``unknown_coordinator``) and puts its own state back. Where the mesh
signs (``coordinator.signing``), every assignment and status it writes is signed, and statuses
and assignments that are unsigned or badly signed are ignored (counted ``bad_signature``).

:class:`StandbyWatch`: a standby's MQTT side, around :class:`~coordinator.leadership.Vacancy`.
The leader beats on ``coordinator/beat`` every ``coordinator.leader_beat_s`` (signed where the
mesh signs); the standby pings its broker after 0.2 s of quiet, so that a leader's silence is
never its own link's.

Both mark their loops' progress (``beats``; the control and monitor loops, the standby's wait);
their ``alive()`` says which one hung, for systemd's watchdog (:mod:`faillite.sdnotify`, wired in
``coordinator/cli.py``). The planner is not judged: a solve may take long.
"""

from __future__ import annotations

import math
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace

from coordinator.core import CoordinatorCore
from coordinator.decisions import (
    Decision,
    EmitEvent,
    Note,
    PublishObituary,
    PublishState,
    RequestPlan,
    RetainedState,
)
from coordinator.events import (
    BrokerHeard,
    Event,
    HeartbeatSeen,
    InheritedPlacement,
    LinkDown,
    LinkUp,
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
from coordinator.leadership import (
    STARTUP_GRACE_S,
    Leadership,
    TermExhaustedError,
    Vacancy,
)
from coordinator.planner import ProblemError
from coordinator.planning import Planner, planner_for
from faillite import messages
from faillite.catalog import Catalog
from faillite.config import MeshConfig
from faillite.identity import Identity
from faillite.log import bind, get_logger
from faillite.mqtt import Inbound, MeshClient
from faillite.presence import Presence
from faillite.sdnotify import Beats
from faillite.signing import S as SignedT
from faillite.signing import SignatureError, Signed, Signer, Verifier, load_signer
from faillite.topics import (
    APP_RESULTS,
    APP_ROUTE,
    WORKER_ASSIGNMENT,
    WORKER_HEARTBEAT,
    WORKER_PROFILE,
    WORKER_STATUS,
    Role,
    Topics,
    parse,
)

log = get_logger("coordinator")
standby_log = get_logger("standby")
TICK_S = 0.01
LINK_PROBE_AFTER_S = 0.1
TERM_WAIT_S = 1.0  # for the first retained status or assignment before taking a term
TERM_BURST_S = 0.2  # then for the rest of the retained burst
WATCHDOG_STALE_S = 20.0  # a loop silent this long counts as hung (systemd restarts the process)

# A standby pings its broker after this much quiet: a beat's absence that is its own link's
# is told apart from the leader's (beats come every coordinator.leader_beat_s).
STANDBY_PROBE_AFTER_S = 0.2


def _check_signature(
    verifier: Verifier | None,
    client: MeshClient,
    topic: str,
    msg: Signed,
) -> bool:
    """Whether ``msg`` may be believed: always where the mesh does not sign; else only with a
    good signature (a refusal is counted ``bad_signature`` and logged rate-limited)."""
    if verifier is None:
        return True
    try:
        verifier.verify(topic, msg)
    except SignatureError as exc:
        client.bad.count(exc.reason, str(exc), topic=topic, term=getattr(msg, "term", None))
        return False
    return True


def _clock() -> tuple[float, float]:
    return time.monotonic(), time.time()


class _Quiet:
    """At most one log line per key a second: forged input must not flood the log. ``allow``
    returns how many were kept quiet since the last line, or None (keep this one quiet)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -1e9) < 1.0:
                self._quiet[key] = self._quiet.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._quiet.pop(key, 0)


class CoordinatorService:
    def __init__(
        self,
        mesh: MeshConfig,
        catalog: Catalog,
        planner: Planner,
        coordinator_id: str = "main",
        *,
        term_floor: int = 0,
    ) -> None:
        self.mesh = mesh
        self.planner = planner
        self.id = coordinator_id
        self.topics = Topics(mesh.mesh)
        self.incarnation = uuid.uuid4().hex[:12]
        self._beat_sent = 0.0  # monotonic: when our last beat as leader went out
        bind(coordinator=coordinator_id, incarnation=self.incarnation)
        self.leadership = Leadership(
            coordinator_id,
            self.incarnation,
            planner.kind,
            term_floor=term_floor,
            coordinators=frozenset(mesh.coordinator.ids),
        )
        signing = mesh.coordinator.signing
        # Raises SigningError (the CLI says why) without a usable private key.
        self.signer: Signer | None = (
            load_signer(signing, mesh.mesh) if signing is not None else None
        )
        self._quiet = _Quiet()
        self._resend_lock = threading.Lock()
        self._resend_queued = False
        self.core = CoordinatorCore(mesh, catalog, adaptive=planner.adaptive)
        self._known = {w.id for w in mesh.workers}
        self._inbox: queue.Queue[Event] = queue.Queue()
        self._stop = threading.Event()
        self.beats = Beats()
        self._heard = threading.Event()  # a retained term (status or assignment) arrived
        self._leading = threading.Lock()  # leadership: network thread vs start()
        self._publishing = threading.Lock()  # one retained state at a time, the newest last
        self._planning = threading.Lock()  # one plan at a time
        self._retained: RetainedState | None = None
        # The leader's status, with its last-will as the twin; it has nothing to announce
        # before it holds a term, and leadership (not the presence) judges the shared topic.
        self.presence = Presence(
            self.topics.coordinator_status,
            messages.CoordinatorStatus,
            lambda ts: self._sign(
                self.topics.coordinator_status, self.leadership.status("leader", ts)
            ),
            # The last-will and the clean offline are signed too: a standby must believe them.
            offline=lambda st, _reason, ts: self._sign(
                self.topics.coordinator_status, replace(st, state="offline", ts=ts)
            ),
            watch=False,
            announce_on_connect=lambda: self.leadership.term > 0,
        )
        self.client = MeshClient(
            Identity(mesh.mesh, Role.COORDINATOR, coordinator_id).name,
            mesh.broker,
            presence=self.presence,
            # Workers' heartbeats arrive every 0.1-0.25 s: a pause in them is worth a ping at
            # once, so that a silent broker is told apart from silent workers (Tick).
            probe_after_s=LINK_PROBE_AFTER_S,
        )
        c, t = self.client, self.topics
        c.subscribe_json(
            t.coordinator_status,
            messages.CoordinatorStatus,
            self._on_coordinator_status,
            on_cleared=lambda _topic: self._heard.set(),
        )
        c.subscribe_json(t.filter(WORKER_STATUS), messages.WorkerStatus, self._on_worker_status)
        c.subscribe_json(t.filter(WORKER_PROFILE), messages.WorkerProfile, self._on_profile)
        # Retained assignments carry the last term too (the coordinator's own status may have
        # been replaced by its last-will).
        c.subscribe_json(t.filter(WORKER_ASSIGNMENT), messages.Assignment, self._on_assignment)
        c.subscribe_json(t.placement, messages.Placement, self._on_placement)
        c.subscribe_json(t.filter(APP_ROUTE), messages.Route, self._on_route)
        if planner.adaptive:
            c.subscribe_json(
                t.filter(WORKER_HEARTBEAT), messages.Heartbeat, self._on_heartbeat, qos=0
            )
            # Outcomes: what reaches the mesh from a worker, not what it says of itself.
            c.subscribe_json(t.filter(APP_RESULTS), messages.Result, self._on_result, qos=0)
        c.on_connect(self._republish)
        # While our own link is down every worker looks silent: judge nobody until it is back.
        c.on_connect(lambda: self._inbox.put(LinkUp(*_clock())))
        c.on_disconnect(lambda: self._inbox.put(LinkDown(*_clock())))
        c.on_answer(lambda: self._inbox.put(BrokerHeard(*_clock())))

    @classmethod
    def from_config(
        cls,
        mesh: MeshConfig,
        catalog: Catalog,
        coordinator_id: str = "main",
        *,
        term_floor: int = 0,
    ) -> CoordinatorService:
        """The coordinator the config asks for (``coordinator.type``, ``method``)."""
        return cls(mesh, catalog, planner_for(mesh, catalog), coordinator_id, term_floor=term_floor)

    # -- signatures --------------------------------------------------------------------------

    def _sign(self, topic: str, msg: SignedT) -> SignedT:
        return self.signer.sign(topic, msg) if self.signer is not None else msg

    def _signed(self, topic: str, msg: Signed) -> bool:
        """Whether ``msg`` may be believed: always where the mesh does not sign."""
        return _check_signature(
            self.signer.verifier if self.signer else None, self.client, topic, msg
        )

    def _suspect(self, event: str, msg: messages.Assignment | messages.CoordinatorStatus) -> None:
        """A forged term or a foreign coordinator: log it (rate-limited) and, while we lead,
        put our own state back over it (it may have replaced our retained status)."""
        if (quiet := self._quiet.allow(event)) is not None:
            log.warning(
                event,
                message=type(msg).__name__,
                quiet_since_last=quiet,
                term=msg.term,
                our_term=self.leadership.term,
                reference=self.leadership.reference,
                max_jump=self.leadership.max_jump,
                coordinator=getattr(msg, "coordinator", None),
                worker=getattr(msg, "worker", None),
            )
        self._put_back_if_leading()

    # -- network thread ----------------------------------------------------------------------

    def _on_coordinator_status(self, inb: Inbound[messages.CoordinatorStatus]) -> None:
        st = inb.message
        if not self._signed(self.topics.coordinator_status, st):
            return
        with self._leading:
            verdict = self.leadership.on_status(st, live=not inb.retain)
            term = self.leadership.term
        if verdict == "forged":
            self._suspect("forged_term", st)
        elif verdict == "foreign":
            self._suspect("unknown_coordinator", st)
        elif verdict == "step_down":
            log.warning(
                "coordinator_deposed", term=term, successor=st.coordinator, successor_term=st.term
            )
            self._report_deposition(term, st)
            self._inbox.put(SteppedDown(*_clock(), st.coordinator, st.term))
            self._stop.set()
        elif verdict == "restore":
            # A predecessor's late last-will replaced our retained status: put it back.
            self._republish()
        self._heard.set()

    def _report_deposition(self, term: int, st: messages.CoordinatorStatus) -> None:
        """Deposed while we led, connected and beating: no standby could have found us gone.
        A coordinator started to lead, a partition between coordinators, or a coordinator's
        board and key in other hands: said where operators look (an event, not only a log)."""
        since = time.monotonic() - self._beat_sent
        if not (self.client.connected and since < 2 * self.mesh.coordinator.leader_beat_s):
            return
        self._beat_sent = -math.inf  # said once (the successor's status may come twice)
        detail = {
            "term": term,
            "successor": st.coordinator,
            "successor_term": st.term,
            "last_beat_ms": round(since * 1000, 1),
            "note": "a successor took the term while this leader beat: one started to lead, "
            "a partition, or a coordinator's board and key in other hands",
        }
        self._emit(EmitEvent("deposed_while_leading", "", "", detail, False), 0.0, 0.0)

    def _on_assignment(self, inb: Inbound[messages.Assignment]) -> None:
        a = inb.message
        if not self._signed(inb.topic, a):
            return
        with self._leading:
            verdict = self.leadership.on_assignment(a)
        if verdict == "forged":
            self._suspect("forged_term", a)  # and our own assignment goes back over it
            return
        self._heard.set()
        self._put_back_if_older(a.term, a.generation, inb.topic)

    def _on_placement(self, inb: Inbound[messages.Placement]) -> None:
        p = inb.message
        if not self._signed(inb.topic, p):
            self._put_back_if_leading()
            return
        with self._leading:
            inherited = self.leadership.inherits(p)
        if inherited:
            self._inbox.put(InheritedPlacement(*_clock(), p))
        self._put_back_if_older(p.term, p.generation, inb.topic)

    def _on_route(self, inb: Inbound[messages.Route]) -> None:
        r = inb.message
        if not self._signed(inb.topic, r):
            self._put_back_if_leading()
            return
        self._put_back_if_older(r.term, r.generation, inb.topic)

    def _put_back_if_leading(self) -> None:
        """Something unsigned replaced our retained state: ours goes back over it."""
        if self.leadership.term and not self.leadership.deposed:
            self._republish()

    def _put_back_if_older(self, term: int, generation: int, topic: str) -> None:
        """An older state of ours arrived (a broker that comes back with what it stored, and
        its bridge replays it over the newer one): publish the newest again. Our own echoes of
        the newest change nothing."""
        current = self._retained
        if (
            current is None
            or self.leadership.deposed
            or (term, generation) >= (current.term, current.generation)
        ):
            return
        if (quiet := self._quiet.allow("older_state_replayed")) is not None:
            log.warning(
                "older_state_replayed",
                topic=topic,
                term=term,
                generation=generation,
                our_term=current.term,
                our_generation=current.generation,
                quiet_since_last=quiet,
            )
        self._republish()

    def _on_worker_status(self, inb: Inbound[messages.WorkerStatus]) -> None:
        st, parsed = inb.message, parse(inb.topic)
        if parsed is None:
            return
        if st.worker != parsed[1].ids["worker"] or st.worker not in self._known:
            self.client.bad.count("unknown_worker", f"status of {st.worker!r}", topic=inb.topic)
            return
        if st.state == "online":
            self._inbox.put(WorkerBirth(*_clock(), st))
            return
        if st.reason == "silent" and not self._signed(inb.topic, st):
            return  # an obituary is a coordinator's word: signed where the mesh signs
        if st.reason == "lost" and not inb.retain:
            # A last-will counts once the broker is still there after it (coordinator.wills).
            self.client.ask_broker()
        self._inbox.put(WorkerOffline(*_clock(), st, retained=inb.retain))

    def _on_own_topic(self, topic: str, worker: str, what: str) -> bool:
        """The topic is what the broker's ACL binds to the publisher: a message naming another
        worker (a stolen credential pushing a victim's seq window ahead, or speaking for its
        profile) is not believed, and counted."""
        parsed = parse(topic)
        if parsed is not None and parsed[1].ids.get("worker") == worker:
            return True
        self.client.bad.count("wrong_topic", f"{what} of {worker!r}", topic=topic)
        return False

    def _on_profile(self, inb: Inbound[messages.WorkerProfile]) -> None:
        if self._on_own_topic(inb.topic, inb.message.worker, "profile"):
            self._inbox.put(ProfileReported(*_clock(), inb.message))

    def _on_heartbeat(self, inb: Inbound[messages.Heartbeat]) -> None:
        if self._on_own_topic(inb.topic, inb.message.worker, "heartbeat"):
            self._inbox.put(HeartbeatSeen(*_clock(), inb.message))

    def _on_result(self, inb: Inbound[messages.Result]) -> None:
        r, parsed = inb.message, parse(inb.topic)
        if parsed is None or parsed[1].ids.get("app") != r.app:
            self.client.bad.count("wrong_topic", f"result of {r.app!r}", topic=inb.topic)
            return
        if self._on_own_topic(inb.topic, r.worker, "result"):
            self._inbox.put(ResultSeen(*_clock(), r.app, r.worker, r.incarnation))

    # -- control thread ----------------------------------------------------------------------

    def _control_loop(self) -> None:
        while not self._stop.is_set():
            self.beats.beat("control")
            try:
                event = self._inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                t0 = time.perf_counter()
                decisions = self.core.handle(event)
                self._carry_out(decisions, (time.perf_counter() - t0) * 1000)
            except Exception:
                log.exception("control_error", kind=type(event).__name__)

    def _carry_out(self, decisions: list[Decision], decision_ms: float) -> None:
        publish_ms = 0.0
        for d in decisions:
            if isinstance(d, PublishState):
                t0 = time.perf_counter()
                self._publish_state(d)
                publish_ms = (time.perf_counter() - t0) * 1000
            elif isinstance(d, EmitEvent):
                self._emit(d, decision_ms, publish_ms)
            elif isinstance(d, PublishObituary):
                st = d.status
                topic = self.topics.worker_status(st.worker)
                self.client.publish_message(topic, self._sign(topic, st), qos=1, retain=True)
            elif isinstance(d, RequestPlan):
                self._plan_in_background(d)
            elif isinstance(d, Note):
                log.info(d.event, **d.fields)

    def _emit(self, d: EmitEvent, decision_ms: float, publish_ms: float) -> None:
        detail = dict(d.detail)
        if d.timed:
            detail["decision_ms"] = round(decision_ms, 3)
            detail["publish_ms"] = round(publish_ms, 3)
        ev = messages.Event(
            kind=d.kind,
            ts=messages.now(),
            source=f"coordinator/{self.id}",
            worker=d.worker,
            app=d.app,
            detail=detail,
        )
        topic = self.topics.events_of(Role.COORDINATOR, self.id)
        self.client.publish(topic, messages.encode(ev), qos=0)
        log.info(d.kind, worker=d.worker or None, app=d.app or None, **detail)

    def _plan_in_background(self, d: RequestPlan) -> None:
        def work() -> None:
            if d.delay_s and self._stop.wait(d.delay_s):
                return
            with self._planning:
                try:
                    result = self.planner.plan(d.request)
                except ProblemError as exc:
                    log.exception("replan_failed", reason=d.request.reason, error=str(exc))
                    self._inbox.put(PlanFailed(*_clock(), d.request, str(exc)))
                    return
            self._inbox.put(PlanReady(*_clock(), d.request, result))

        threading.Thread(target=work, name="planner", daemon=True).start()

    def _beat_loop(self) -> None:
        """The leader's liveness for standbys (``coordinator/beat``): not retained, so only a
        leader that runs and reaches a broker beats; a deposed one stops at once."""
        every = self.mesh.coordinator.leader_beat_s
        topic = self.topics.coordinator_beat
        seq = 0
        while not self._stop.is_set() and not self.leadership.deposed:
            if self.client.connected:
                seq += 1
                beat = messages.CoordinatorBeat(
                    coordinator=self.id,
                    incarnation=self.incarnation,
                    term=self.leadership.term,
                    seq=seq,
                    ts=messages.now(),
                )
                if self.client.publish(topic, messages.encode(self._sign(topic, beat)), qos=0):
                    self._beat_sent = time.monotonic()
            self._stop.wait(every)

    def _monitor_loop(self) -> None:
        while not self._stop.wait(TICK_S):
            self.beats.beat("monitor")
            self._inbox.put(Tick(*_clock(), self.client.link_quiet_s()))

    # -- publishing --------------------------------------------------------------------------

    def _publish_state(self, d: PublishState) -> None:
        st = d.state
        with self._publishing:
            self._retained = st
            self._send(st)
        log.info(
            "plan_published",
            term=st.term,
            generation=st.generation,
            solver=st.solver,
            assignments={w: [f"{s.app}:{s.variant}" for s in p.serve] for w, p in st.workers},
        )
        if self.planner.adaptive:
            log.info("published", reason=d.reason, generation=st.generation)

    def _send(self, st: RetainedState | None) -> None:
        """The leader's status, then the retained state (under ``_publishing``)."""
        if self.leadership.deposed:
            return  # the retained state is the successor's now
        self.presence.announce()
        if st is None:
            return
        now, t, c = messages.now(), self.topics, self.client

        def put(topic: str, msg: SignedT) -> None:
            c.publish(topic, messages.encode(self._sign(topic, msg)), qos=1, retain=True)

        for worker, wp in st.workers:
            topic = t.worker_assignment(worker)
            a = messages.Assignment(
                worker=worker,
                term=st.term,
                generation=st.generation,
                ts=now,
                serve=wp.serve,
                warm=wp.warm,
                disk=wp.disk,
                standby=wp.standby,
                hot=wp.hot,
            )
            put(topic, a)

        routes = [
            messages.Route(r.app, r.worker, r.variant, st.term, st.generation, now, r.state)
            for r in st.routes
        ]
        for r in routes:
            if r.state != "unserved":
                put(t.app_route(r.app), r)
        placement = messages.Placement(
            term=st.term,
            generation=st.generation,
            ts=now,
            entries=st.entries,
            objective=st.objective,
            lp_bound=st.lp_bound,
            gap=st.gap,
            solver=st.solver,
        )
        put(t.placement, placement)
        for r in routes:
            if r.state == "unserved":
                put(t.app_route(r.app), r)

    def _republish(self) -> None:
        # Brokers can lose retained state on restart: after every reconnect, publish it again.
        # Requests coalesce: one resend waiting is enough (forged input may come in floods).
        if not self.leadership.term or self._stop.is_set():
            return  # stopping: our goodbye comes back to us, and stays
        with self._resend_lock:
            if self._resend_queued:
                return
            self._resend_queued = True
        threading.Thread(target=self._resend, name="republish", daemon=True).start()

    def _resend(self) -> None:
        with self._publishing:
            with self._resend_lock:
                self._resend_queued = False
            self._send(self._retained)

    # -- lifecycle ---------------------------------------------------------------------------

    @staticmethod
    def _spawn(name: str, target: Callable[[], None]) -> None:
        threading.Thread(target=target, name=name, daemon=True).start()

    def _acquire_term(self) -> int | None:
        """Next term after the highest one retained on the broker, claimed at once: standbys
        must not read the planning time as a vacancy. None: no term is left (refused)."""
        if self._heard.wait(TERM_WAIT_S):
            self._stop.wait(TERM_BURST_S)  # the rest of the retained burst
        refused: TermExhaustedError | None = None
        with self._leading:
            try:
                term = self.leadership.acquire()
            except TermExhaustedError as exc:
                refused = exc
        if refused is not None:
            self.presence.silence()  # we never led: the status topic is not ours to touch
            log.error(
                "term_exhausted",
                highest_term=refused.highest,
                max_term=messages.MAX_COUNT,
                error=str(refused),
            )
            return None
        log.info("term_acquired", term=term, previous=term - 1)
        self.presence.announce()
        return term

    def start(self) -> bool:
        """Connect (a broker that is not there yet is retried: the transport says so once),
        take the term and start judging; returns early if asked to stop meanwhile. False: it
        refused to lead (no term left: ``term_exhausted`` says why) and has stopped."""
        self._spawn("control", self._control_loop)
        self._spawn("planner-warm-up", self.planner.warm_up)
        self.client.start(connect_timeout=None)
        while not self.client.wait_connected(0.25):
            if self._stop.is_set():
                return True
        term = self._acquire_term()
        if term is None:
            self._stop.set()
            return False
        self._inbox.put(TermAcquired(*_clock(), term))
        self._spawn("leader-beat", self._beat_loop)
        if self.planner.adaptive:
            self._spawn("monitor", self._monitor_loop)
        return True

    def stop(self) -> None:
        self._stop.set()
        if self.leadership.deposed:
            self.presence.silence()  # the retained status is the successor's now
        self.client.stop()  # the presence says offline, unless deposed

    def wait(self) -> None:
        # Wake now and then: a signal the kernel hands to another thread only runs its Python
        # handler once the main thread executes bytecode again.
        while not self._stop.wait(0.25):
            pass

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def alive(self) -> str | None:
        """Why this coordinator looks hung (a loop without progress), or None."""
        return None if self._stop.is_set() else self.beats.stale(WATCHDOG_STALE_S)


class StandbyWatch:
    """Watches the leader's retained status and returns once the leadership is vacant. It has
    no last-will of its own: it must never overwrite the leader's status."""

    def __init__(self, mesh: MeshConfig, coordinator_id: str, rank: int = 1) -> None:
        self.id = coordinator_id
        self.rank = max(1, rank)
        delay_s = mesh.coordinator.takeover_delay_s * self.rank
        # The leader's own reconnect backoff (its MeshClient's, of the same broker config):
        # after our reconnect it may be moving brokers too, or putting back the status that a
        # restarted broker lost. A leader starting beside us may connect that much later too.
        backoff_s = max(mesh.broker.reconnect_min_s, mesh.broker.reconnect_max_s)  # Backoff.of
        self.vacancy = Vacancy(
            delay_s,
            startup_s=STARTUP_GRACE_S + backoff_s,
            backoff_s=backoff_s,
            beat_s=mesh.coordinator.leader_beat_s,
            coordinators=frozenset(mesh.coordinator.ids),
            silence_s=mesh.coordinator.leader_silence_s,
        )
        signing = mesh.coordinator.signing
        # A standby must hold the private key too (it will lead): fail now, not at takeover.
        self.verifier: Verifier | None = (
            load_signer(signing, mesh.mesh).verifier if signing is not None else None
        )
        topics = Topics(mesh.mesh)
        self._topic = topics.coordinator_status
        self._beat_topic = topics.coordinator_beat
        self._quiet = _Quiet()
        self._cond = threading.Condition()
        self.beats = Beats()
        self.client = MeshClient(
            # A standby watches under its identity's second client id (faillite.identity).
            Identity(mesh.mesh, Role.COORDINATOR, coordinator_id).probe_name,
            mesh.broker,
            # A pause between beats is worth a ping: the leader's silence must not be our own
            # link's (link_quiet_s).
            probe_after_s=STANDBY_PROBE_AFTER_S,
        )
        self.client.subscribe_json(
            self._topic,
            messages.CoordinatorStatus,
            self._on_status,
            on_cleared=self._on_cleared,
        )
        self.client.subscribe_json(self._beat_topic, messages.CoordinatorBeat, self._on_beat, qos=0)
        self.client.on_connect(self._on_connect)
        self.client.on_disconnect(self._on_disconnect)
        self.client.on_answer(self._on_answer)

    @property
    def highest_term(self) -> int:
        return self.vacancy.highest_term

    def _on_answer(self) -> None:
        with self._cond:
            self.vacancy.confirm()
            self._cond.notify_all()

    def _on_connect(self) -> None:
        with self._cond:
            self.vacancy.connected(time.monotonic())

    def _on_disconnect(self) -> None:
        with self._cond:
            self.vacancy.disconnected(time.monotonic())

    def _on_cleared(self, _topic: str) -> None:
        with self._cond:
            self.vacancy.cleared(time.monotonic())
            self._cond.notify_all()

    def _on_status(self, inb: Inbound[messages.CoordinatorStatus]) -> None:
        st = inb.message
        if not _check_signature(self.verifier, self.client, self._topic, st):
            return
        with self._cond:
            reading = self.vacancy.on_status(st, time.monotonic())
            self._cond.notify_all()
        if reading in ("forged", "foreign"):
            event = "forged_term" if reading == "forged" else "unknown_coordinator"
            if (quiet := self._quiet.allow(event)) is not None:
                standby_log.warning(
                    event,
                    quiet_since_last=quiet,
                    coordinator=st.coordinator,
                    term=st.term,
                    state=st.state,
                    leader_term=self.vacancy.highest_term,
                )
        elif reading == "gone":
            # News only once the broker outlives it. Whatever its retain flag says: the embedded
            # broker delivers a will it fires while stopping with the flag set.
            with self._cond:
                self.vacancy.hold(time.monotonic())
            self.client.ask_broker()
            standby_log.warning(
                "leader_gone",
                leader=st.coordinator,
                leader_incarnation=st.incarnation,
                term=st.term,
                takeover_in_s=self.vacancy.delay_s,
            )
        elif reading == "stale":
            standby_log.info("stale_leader_offline_ignored", stale=st.incarnation, term=st.term)

    def _on_beat(self, inb: Inbound[messages.CoordinatorBeat]) -> None:
        beat = inb.message
        # Where the mesh signs, a beat without the coordinators' key keeps nobody alive.
        if not _check_signature(self.verifier, self.client, self._beat_topic, beat):
            return
        with self._cond:
            reading = self.vacancy.on_beat(beat, time.monotonic())
            self._cond.notify_all()
        if reading == "back":
            standby_log.warning(
                "leader_beats_again", leader=beat.coordinator, term=beat.term, seq=beat.seq
            )

    def _judge_silence(self, now: float) -> None:
        """Under ``_cond``: the newest leader's silence, our own link's quiet left out."""
        silent = self.vacancy.judge_silence(now, self.client.link_quiet_s())
        if silent is not None and (leader := self.vacancy.leader) is not None:
            standby_log.warning(
                "leader_silent",
                leader=leader.coordinator,
                leader_incarnation=leader.incarnation,
                term=leader.term,
                silent_s=round(silent, 3),
                leader_silence_s=self.vacancy.silence_s,
                takeover_in_s=self.vacancy.delay_s,
            )

    def wait_for_vacancy(self, stop: threading.Event) -> float | None:
        """Block until the leadership has been vacant ``delay_s``; returns the seconds since
        the vacancy was seen, or None when ``stop`` was set first."""
        self.client.start(connect_timeout=None)
        v = self.vacancy
        standby_log.info(
            "standby",
            coordinator=self.id,
            rank=self.rank,
            takeover_delay_s=v.delay_s,
            retained_settle_s=v.settle_s,  # after a connect, what the broker retains
            leader_backoff_s=v.backoff_s,  # the leader's reconnect allowance, once
        )
        try:
            with self._cond:
                while not stop.is_set():
                    self.beats.beat("standby")
                    now = time.monotonic()
                    if self.client.connected:
                        self._judge_silence(now)
                    due = self.vacancy.due(now)
                    if due is not None and self.client.connected:
                        return due
                    self._cond.wait(0.05)
                return None
        finally:
            self.client.stop()

    def alive(self) -> str | None:
        """Why this standby looks hung (its watch loop without progress), or None."""
        return self.beats.stale(WATCHDOG_STALE_S)
