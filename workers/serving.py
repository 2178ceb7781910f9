"""The serving table: which apps this worker serves now, with which loaded model.

- Assignments apply in ``(term, generation)`` order; an older or equal one is ignored (the
  worker's fence, :mod:`workers.fencing`, decides first and may force a new leader's).
- Fencing: an app the new assignment takes away stops at once, before any (slow) model load.
- Load, then switch: an app changes variant when the new model is ready (an upgrade keeps
  serving the old variant meanwhile); warm variants load only after serving is switched, so a
  warm load never delays serving; models nobody needs are unloaded last.
- Warm standby: for the apps this worker is the warm backup of, the latest frame is held; a
  promotion queues it at once (if still fresh) instead of waiting for the next frame.
- Overload shedding: an app whose assignment entry has ``max_fps`` gets at most that many frames
  a second queued (:class:`RateGate`, on the network thread); the rest are skipped before
  queueing and counted as ``shed``, not as received. A new ``max_fps`` holds from the apply on.
- Hot standby: the apps this worker is the hot backup of are in the table too, marked ``hot``:
  their frames are queued and run like the served ones, their results held
  (:mod:`workers.hot`). A promotion switches the table and flushes the held results under
  :attr:`HotResults.lock`, the lock the inference thread delivers under.

Threads: :meth:`route` runs on the network thread, :meth:`apply` on the control thread, the
inference and heartbeat threads read. The tables are replaced whole, never mutated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from faillite import messages
from faillite.catalog import Catalog, Preprocess
from faillite.log import get_logger
from workers.backends import LoadedModel
from workers.counters import Counters
from workers.events import EventSink
from workers.frame_queue import FrameQueues, QueuedFrame
from workers.hot import HELD_MAX_AGE_NS, HotResults
from workers.model_cache import ModelCache

log = get_logger("worker")


# The longest a gate makes a frame wait for the next: any max_fps the codec lets through
# (above 0, however small) gives a finite interval.
MAX_GATE_INTERVAL_NS = 3600 * 10**9


class RateGate:
    """At most ``max_fps`` frames a second, on the frames' own receive times (GCRA, the
    virtual-scheduling form of a token bucket): O(1) per frame, no clock read, no lock (one
    thread admits). A frame may come up to half an interval early, so a camera's jitter around
    exactly ``max_fps`` sheds nothing, while the long-run rate stays at most ``max_fps``."""

    __slots__ = ("_due_ns", "_early_ns", "_interval_ns", "max_fps")

    def __init__(self, max_fps: float) -> None:
        self.max_fps = max_fps
        self._interval_ns = int(min(1e9 / max_fps, MAX_GATE_INTERVAL_NS))
        self._early_ns = self._interval_ns // 2
        self._due_ns: int | None = None  # when the next frame is due; None: none admitted yet

    def admit(self, now_ns: int) -> bool:
        """Whether a frame received at ``now_ns`` (monotonic) is within the rate."""
        due = self._due_ns
        if due is not None and now_ns < due - self._early_ns:
            return False
        self._due_ns = (now_ns if due is None else max(due, now_ns)) + self._interval_ns
        return True


@dataclass(frozen=True, slots=True)
class Serving:
    """An app this worker serves now, with the loaded model it uses."""

    app: str
    sensor: str
    variant: str
    model: LoadedModel
    spec: Preprocess
    labels: bool
    hot: bool = False  # a hot backup: run every frame, hold the results (workers.hot)


class ServingTable:
    def __init__(
        self,
        models: ModelCache,
        catalog: Catalog,
        queues: FrameQueues,
        counters: Counters,
        *,
        follow: Callable[[frozenset[str]], None],
        emit: EventSink,
        hot: HotResults | None = None,
        watch: Callable[[frozenset[str]], None] = lambda apps: None,
        publish_held: Callable[[messages.Result], None] = lambda r: None,
    ) -> None:
        """``follow``: called with the sensors whose frames are needed, whenever that changes
        (the service subscribes to their frame topics); ``watch``: with the apps whose results
        other workers publish must be followed (the hot ones here); ``publish_held``: publishes
        a result a promoted hot backup held."""
        self.models = models
        self.catalog = catalog
        self.queues = queues
        self.counters = counters
        self._follow = follow
        self._emit = emit
        self.hot = hot or HotResults()
        self._watch = watch
        self._publish_held = publish_held
        self.watched: frozenset[str] = frozenset()
        self.assignment: messages.Assignment | None = None
        self._serving: dict[str, Serving] = {}
        self._by_sensor: dict[str, tuple[str, ...]] = {}
        self._standby_by_sensor: dict[str, tuple[str, ...]] = {}
        self._gates: dict[str, RateGate] = {}  # apps under a max_fps
        self._standby: tuple[messages.Serve, ...] = ()
        self._held: dict[str, QueuedFrame] = {}
        self.sensors: frozenset[str] = frozenset()

    # -- readers ---------------------------------------------------------------------------

    def get(self, app: str) -> Serving | None:
        return self._serving.get(app)

    @property
    def apps(self) -> tuple[str, ...]:
        """The apps served (published) here; hot backups are not."""
        return tuple(a for a, s in self._serving.items() if not s.hot)

    @property
    def hot_apps(self) -> tuple[str, ...]:
        return tuple(a for a, s in self._serving.items() if s.hot)

    @property
    def generation(self) -> int:
        a = self.assignment
        return a.generation if a is not None else 0

    def held(self) -> dict[str, QueuedFrame]:
        return dict(self._held)

    # -- network thread --------------------------------------------------------------------

    def route(self, sensor: str, payload: bytes, received_ns: int) -> None:
        """A frame of ``sensor``: queue it for every app served (or hot) from it, hold it for
        every app this worker is the warm backup of."""
        gates = self._gates
        for app in self._by_sensor.get(sensor, ()):
            gate = gates.get(app)
            if gate is not None and not gate.admit(received_ns):
                self.counters.shed(app)
                continue
            self.counters.received(app)
            self.queues.put(QueuedFrame(app, payload, received_ns))
        for app in self._standby_by_sensor.get(sensor, ()):
            self._held[app] = QueuedFrame(app, payload, received_ns)

    # -- control thread --------------------------------------------------------------------

    def apply(self, a: messages.Assignment, *, force: bool = False) -> bool:
        """Apply ``a`` if newer than the current assignment: fence revoked apps at once, load,
        switch, then load warm variants and release the rest. False if ``a`` is stale.
        ``force``: apply it whatever the current one's version (the fence decided)."""
        cur = self.assignment
        if not force and cur is not None and a.version() <= cur.version():
            log.info(
                "assignment_ignored",
                term=a.term,
                generation=a.generation,
                current=list(cur.version()),
            )
            return False
        t0 = time.perf_counter()
        serve_apps = {s.app for s in a.serve}
        hot_wanted = tuple(h for h in a.hot if h.app not in serve_apps)
        wanted = {s.app: s for s in (*a.serve, *hot_wanted)}
        # The coordinator sheds load now, not after the loads below.
        self._gates = self._rate_gates(wanted)
        # Fencing: an app taken away stops now, before any slow model load.
        keep = {
            app: s
            for app, s in self._serving.items()
            if app in wanted and wanted[app].sensor == s.sensor
        }
        for app in set(self._serving) - set(keep):
            if not self._serving[app].hot:
                log.info("serve_stopped", app=app, generation=a.generation)
                self._emit("serve_stopped", app=app, generation=a.generation)
        # Standby entries of apps about to be promoted stay, so their held frame survives.
        self._switch(keep, a.standby + tuple(sb for sb in self._standby if sb.app in wanted))
        # Load what serving needs, switch each app as its model is ready (an upgrade keeps
        # serving the old variant until the new one is loaded), and only then load the hot and
        # warm backups: a backup's load never delays serving.
        for variant in dict.fromkeys(s.variant for s in a.serve):
            self.models.load(variant)
        table = self._entries(a.serve, hot=False)
        self.assignment = a  # results of the new table carry the new generation
        held = {app: f for app in table if app not in keep and (f := self._held.pop(app, None))}
        # Hot backups already running stay in the table while the served apps switch.
        running_hot = {
            h.app: was
            for h in hot_wanted
            if (was := self._serving.get(h.app)) is not None
            and was.hot
            and was.variant == h.variant
        }
        self._switch({**table, **running_hot}, a.standby)
        self._serve_held(held)
        for variant in dict.fromkeys(h.variant for h in hot_wanted):
            self.models.load(variant)
        if hot_wanted:
            self._switch({**table, **self._entries(hot_wanted, hot=True)}, a.standby)
        ms = (time.perf_counter() - t0) * 1000
        serving = {k: s.variant for k, s in table.items()}
        log.info(
            "assignment_applied",
            term=a.term,
            generation=a.generation,
            serving=serving,
            warm=list(a.warm),
            standby=[s.app for s in a.standby],
            hot=[h.app for h in hot_wanted],
            apply_ms=round(ms, 1),
        )
        self._emit(
            "assignment_applied",
            term=a.term,
            generation=a.generation,
            serving=serving,
            apply_ms=round(ms, 1),
        )
        for variant in a.warm:
            self.models.load(variant)
        self.models.keep_only({s.variant for s in self._serving.values()} | set(a.warm))
        return True

    def _rate_gates(self, wanted: dict[str, messages.Serve]) -> dict[str, RateGate]:
        """The gates of ``wanted``'s apps that have a ``max_fps``; an unchanged one keeps its
        gate (and its schedule)."""
        gates: dict[str, RateGate] = {}
        for app, s in wanted.items():
            if s.max_fps is None:
                continue
            old = self._gates.get(app)
            gates[app] = (
                old if old is not None and old.max_fps == s.max_fps else RateGate(s.max_fps)
            )
        return gates

    def _entries(self, serve: tuple[messages.Serve, ...], *, hot: bool) -> dict[str, Serving]:
        """Table entries of ``serve`` whose model is loaded; a served app whose new variant
        could not be loaded keeps its old entry (rather than stop)."""
        table: dict[str, Serving] = {}
        for s in serve:
            model = self.models.get(s.variant)
            if model is None:
                old = self._serving.get(s.app)
                if old is not None and not hot and not old.hot:
                    table[s.app] = old  # keep the old variant rather than stop
                log.error("app_unservable", app=s.app, variant=s.variant, hot=hot)
                continue
            v = self.catalog.variant(s.variant)
            table[s.app] = Serving(
                s.app, s.sensor, s.variant, model, v.preprocess, v.labels == "imagenet1k", hot
            )
        return table

    def _switch(self, table: dict[str, Serving], standby: tuple[messages.Serve, ...]) -> None:
        """Install ``table``; a hot backup promoted by it publishes what it held (those results
        the primary did not publish) before any live result: both under the hot lock."""
        with self.hot.lock:
            promoted = [
                app
                for app, st in table.items()
                if not st.hot and (old := self._serving.get(app)) is not None and old.hot
            ]
            for app in set(self._serving) - set(table):
                if self._serving[app].hot:
                    self.hot.forget(app)
            for app, st in table.items():
                if st.hot and not ((old := self._serving.get(app)) is not None and old.hot):
                    self.hot.forget(app)  # hot anew: nothing seen yet counts
            self._set(table, standby)
            generation = self.generation
            for app in promoted:
                released = self.hot.release(app)
                for r in released:
                    self._publish_held(replace(r, generation=generation))
                log.info("hot_promoted", app=app, generation=generation, released=len(released))
                self._emit("hot_promoted", app=app, generation=generation, released=len(released))

    def _serve_held(self, held: dict[str, QueuedFrame]) -> None:
        """A promoted warm backup serves the latest frame it held, if still fresh; the frame
        counts as received now that it is queued."""
        now = time.monotonic_ns()
        for frame in held.values():
            if now - frame.received_ns < HELD_MAX_AGE_NS:
                self.counters.received(frame.app)
                self.queues.put(frame)

    def _set(self, table: dict[str, Serving], standby: tuple[messages.Serve, ...]) -> None:
        by_sensor: dict[str, list[str]] = {}
        for s in table.values():
            by_sensor.setdefault(s.sensor, []).append(s.app)
        standby_by_sensor: dict[str, list[str]] = {}
        for sb in standby:
            if sb.app not in table:
                standby_by_sensor.setdefault(sb.sensor, []).append(sb.app)
        for app in [
            a for a in list(self._held) if not any(a in v for v in standby_by_sensor.values())
        ]:
            self._held.pop(app, None)
        for app in set(self._serving) - set(table):
            self.queues.discard(app)
        self._serving = table
        self._by_sensor = {k: tuple(v) for k, v in by_sensor.items()}
        self._standby_by_sensor = {k: tuple(v) for k, v in standby_by_sensor.items()}
        self._standby = standby
        sensors = frozenset(by_sensor) | frozenset(standby_by_sensor)
        if sensors != self.sensors:
            self.sensors = sensors
            self._follow(sensors)
        watched = frozenset(a for a, s in table.items() if s.hot)
        if watched != self.watched:
            self.watched = watched
            self._watch(watched)
