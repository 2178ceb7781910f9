"""The coordinator process: term, generations, retained assignments, routes and placement.

This issue's coordinator publishes the static plan of the config. The seams for the real one:
a :class:`Planner` computes a :class:`Plan`; :class:`Coordinator` owns publishing (retained,
republished after every reconnect), terms and generations, and membership from births.
"""

from __future__ import annotations

import abc
import threading
import uuid
from dataclasses import dataclass, field
from typing import Literal

import paho.mqtt.client as paho

from faillite import messages
from faillite.badinput import BadInput
from faillite.catalog import Catalog
from faillite.config import MeshConfig
from faillite.log import bind, get_logger
from faillite.mqtt import MeshClient, Will
from faillite.topics import WORKER_ASSIGNMENT, WORKER_STATUS, Role, Topics, parse

log = get_logger("coordinator")


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    serve: tuple[messages.Serve, ...] = ()
    warm: tuple[str, ...] = ()
    disk: tuple[str, ...] = ()
    standby: tuple[messages.Serve, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    workers: dict[str, WorkerPlan]
    entries: tuple[messages.PlacementEntry, ...] = ()
    solver: str = "static"
    objective: float | None = None
    lp_bound: float | None = None
    gap: float | None = None


class Planner(abc.ABC):
    name: str

    @abc.abstractmethod
    def plan(self, alive: set[str]) -> Plan:
        """Compute the plan for the workers in ``alive``."""


class StaticPlanner(Planner):
    """The plan written in the config's ``coordinator.assignments``."""

    name = "static"

    def __init__(self, mesh: MeshConfig, catalog: Catalog) -> None:
        self.mesh = mesh
        for worker, serves in mesh.coordinator.assignments.items():
            for s in serves:
                app = mesh.app(s.app)
                fam = catalog.family_of(s.variant)
                if fam.name != app.family:
                    raise ValueError(
                        f"static assignment {worker}/{s.app}: variant {s.variant!r} is of family "
                        f"{fam.name!r}, app {s.app!r} wants {app.family!r}"
                    )

    def plan(self, alive: set[str]) -> Plan:
        workers: dict[str, WorkerPlan] = {}
        entries: list[messages.PlacementEntry] = []
        for w in self.mesh.workers:
            serves = tuple(
                messages.Serve(s.app, self.mesh.app(s.app).sensor, s.variant)
                for s in self.mesh.coordinator.assignments.get(w.id, ())
            )
            workers[w.id] = WorkerPlan(serve=serves)
            entries.extend(
                messages.PlacementEntry(s.app, w.id, s.variant, "primary") for s in serves
            )
        return Plan(workers, tuple(entries))


@dataclass
class Member:
    worker: str
    incarnation: str
    online: bool
    status: messages.WorkerStatus
    history: list[str] = field(default_factory=list)


class Coordinator:
    def __init__(
        self, mesh: MeshConfig, catalog: Catalog, planner: Planner, coordinator_id: str = "main"
    ) -> None:
        self.mesh = mesh
        self.catalog = catalog
        self.planner = planner
        self.id = coordinator_id
        self.topics = Topics(mesh.mesh)
        self.incarnation = uuid.uuid4().hex[:12]
        bind(coordinator=coordinator_id, incarnation=self.incarnation)
        self.term = 0
        self.generation = 0
        self.plan: Plan | None = None
        self.members: dict[str, Member] = {}
        self.bad = BadInput()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._previous_term = threading.Event()
        self._seen_term = 0
        # The last placement a previous term left retained: a successor keeps apps where they
        # are instead of reshuffling a mesh that is serving fine.
        self.inherited: messages.Placement | None = None
        self.deposed = False
        self.term_floor = 0  # a standby's memory of the newest leader's term
        will = Will(self.topics.coordinator_status, messages.encode(self._status("offline")))
        self.client = MeshClient(
            f"faillite-{mesh.mesh}-coordinator-{coordinator_id}",
            mesh.broker,
            role=Role.COORDINATOR,
            will=will,
        )
        self.client.subscribe(self.topics.coordinator_status, self._on_coordinator_status)
        self.client.subscribe(self.topics.filter(WORKER_STATUS), self._on_worker_status)
        # Retained assignments carry the last term too (the coordinator's own status may have
        # been replaced by its last-will).
        self.client.subscribe(self.topics.filter(WORKER_ASSIGNMENT), self._on_assignment)
        self.client.subscribe(self.topics.placement, self._on_placement)
        self.client.on_connect(self._republish)

    def _status(self, state: str) -> messages.CoordinatorStatus:
        return messages.CoordinatorStatus(
            coordinator=self.id,
            incarnation=self.incarnation,
            state=state,  # type: ignore[arg-type]
            term=self.term,
            ts=messages.now(),
            kind=self.planner.name,
        )

    # -- network thread --------------------------------------------------------------------

    def _on_coordinator_status(self, msg: paho.MQTTMessage) -> None:
        if not msg.payload:
            self._previous_term.set()
            return
        try:
            st = messages.decode(messages.CoordinatorStatus, msg.payload)
        except messages.MessageError as exc:
            self.bad.count(exc.reason, str(exc), topic=msg.topic)
            self._previous_term.set()
            return
        if st.incarnation != self.incarnation:
            self._seen_term = max(self._seen_term, st.term)
            if self.term and st.state == "leader" and st.term > self.term:
                # A successor took over (we were frozen or cut off): step down quietly. Workers
                # already fence our assignments by term.
                log.warning(
                    "coordinator_deposed",
                    term=self.term,
                    successor=st.coordinator,
                    successor_term=st.term,
                )
                self.deposed = True
                self._stop.set()
            elif self.term and not self.deposed and st.state != "leader" and st.term <= self.term:
                # A predecessor's late last-will replaced our retained status: put it back.
                self._republish()
        self._previous_term.set()

    def _on_placement(self, msg: paho.MQTTMessage) -> None:
        if not msg.payload:
            return
        p = self.bad.decode(messages.Placement, msg)
        if p is not None and p.term != self.term:
            self.inherited = p

    def _on_assignment(self, msg: paho.MQTTMessage) -> None:
        if not msg.payload:
            return
        a = self.bad.decode(messages.Assignment, msg)
        if a is None:
            return
        self._seen_term = max(self._seen_term, a.term)
        self._previous_term.set()

    def _on_worker_status(self, msg: paho.MQTTMessage) -> None:
        parsed = parse(msg.topic)
        if not msg.payload or parsed is None:
            return
        worker = parsed[1].ids["worker"]
        st = self.bad.decode(messages.WorkerStatus, msg)
        if st is None:
            return
        with self._lock:
            cur = self.members.get(worker)
            if st.state == "offline" and cur is not None and cur.incarnation != st.incarnation:
                # A late last-will of an older incarnation must not kill the newer one.
                log.info(
                    "stale_offline_ignored",
                    worker=worker,
                    stale=st.incarnation,
                    current=cur.incarnation,
                )
                return
            self.members[worker] = Member(worker, st.incarnation, st.state == "online", st)
        log.info(
            "member",
            worker=worker,
            state=st.state,
            reason=st.reason,
            worker_incarnation=st.incarnation,
            models_on_disk=list(st.models_on_disk),
        )

    # -- publishing ------------------------------------------------------------------------

    def acquire_term(self, wait_s: float = 1.0) -> int:
        """Next term after the highest one retained on the broker (a restart moves it on)."""
        if self._previous_term.wait(wait_s):
            self._stop.wait(0.2)  # the rest of the retained burst
        previous = max(self._seen_term, self.term_floor)
        self.term = previous + 1
        log.info("term_acquired", term=self.term, previous=previous)
        # Claim the term at once: standbys must not read the planning time as a vacancy.
        self.client.publish(
            self.topics.coordinator_status,
            messages.encode(self._status("leader")),
            qos=1,
            retain=True,
        )
        return self.term

    def publish_plan(self, plan: Plan) -> None:
        with self._lock:
            self.generation += 1
            self.plan = plan
        self._publish_current()
        log.info(
            "plan_published",
            term=self.term,
            generation=self.generation,
            solver=plan.solver,
            assignments={
                w: [f"{s.app}:{s.variant}" for s in p.serve] for w, p in plan.workers.items()
            },
        )

    def _publish_current(self) -> None:
        if self.deposed:
            return
        with self._lock:
            plan, term, gen = self.plan, self.term, self.generation
        self.client.publish(
            self.topics.coordinator_status,
            messages.encode(self._status("leader")),
            qos=1,
            retain=True,
        )
        if plan is None:
            return
        now = messages.now()
        for worker, wp in plan.workers.items():
            a = messages.Assignment(
                worker=worker,
                term=term,
                generation=gen,
                ts=now,
                serve=wp.serve,
                warm=wp.warm,
                disk=wp.disk,
                standby=wp.standby,
            )
            self.client.publish(
                self.topics.worker_assignment(worker), messages.encode(a), qos=1, retain=True
            )
        for worker, wp in plan.workers.items():
            for s in wp.serve:
                r = messages.Route(
                    app=s.app,
                    worker=worker,
                    variant=s.variant,
                    term=term,
                    generation=gen,
                    since=now,
                    state=self._route_state(s.app, worker, s.variant),
                )
                self.client.publish(
                    self.topics.app_route(s.app), messages.encode(r), qos=1, retain=True
                )
        placement = messages.Placement(
            term=term,
            generation=gen,
            ts=now,
            entries=plan.entries,
            objective=plan.objective,
            lp_bound=plan.lp_bound,
            gap=plan.gap,
            solver=plan.solver,
        )
        self.client.publish(self.topics.placement, messages.encode(placement), qos=1, retain=True)

    def _route_state(self, app: str, worker: str, variant: str) -> Literal["serving", "degraded"]:
        """Static plans are served as planned."""
        return "serving"

    def _republish(self) -> None:
        # Brokers can lose retained state on restart: after every reconnect, publish it again.
        if self.term:
            threading.Thread(target=self._publish_current, daemon=True).start()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.client.start()
        self.acquire_term()
        self.publish_plan(self.planner.plan(set(self.members)))

    def stop(self) -> None:
        self._stop.set()
        if self.deposed:
            self.client.stop()  # the retained status is the successor's now
            return
        self.client.stop(
            final=lambda: self.client.publish(
                self.topics.coordinator_status,
                messages.encode(self._status("offline")),
                qos=1,
                retain=True,
            )
        )

    def wait(self) -> None:
        # Wake now and then: a signal the kernel hands to another thread only runs its Python
        # handler once the main thread executes bytecode again.
        while not self._stop.wait(0.25):
            pass

    def request_stop(self) -> None:
        self._stop.set()
