"""The serving table: which apps this worker serves now, with which loaded model.

- Assignments apply in ``(term, generation)`` order; an older or equal one is ignored (the
  worker's fence, :mod:`workers.fencing`, decides first and may force a new leader's).
- Fencing: an app the new assignment takes away stops at once, before any (slow) model load.
- Load, then switch: an app changes variant when the new model is ready (an upgrade keeps
  serving the old variant meanwhile); warm variants load only after serving is switched, so a
  warm load never delays serving; models nobody needs are unloaded last.
- Warm standby: for the apps this worker is the warm backup of, the latest frame is held; a
  promotion queues it at once (if still fresh) instead of waiting for the next frame.

Threads: :meth:`route` runs on the network thread, :meth:`apply` on the control thread, the
inference and heartbeat threads read. The tables are replaced whole, never mutated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from faillite import messages
from faillite.catalog import Catalog, Preprocess
from faillite.log import get_logger
from workers.backends import LoadedModel
from workers.counters import Counters
from workers.events import EventSink
from workers.frame_queue import FrameQueues, QueuedFrame
from workers.model_cache import ModelCache

log = get_logger("worker")
HELD_FRAME_MAX_AGE_NS = 500_000_000  # a held frame older than this is not worth serving


@dataclass(frozen=True, slots=True)
class Serving:
    """An app this worker serves now, with the loaded model it uses."""

    app: str
    sensor: str
    variant: str
    model: LoadedModel
    spec: Preprocess
    labels: bool


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
    ) -> None:
        """``follow``: called with the sensors whose frames are needed, whenever that changes
        (the service subscribes to their frame topics)."""
        self.models = models
        self.catalog = catalog
        self.queues = queues
        self.counters = counters
        self._follow = follow
        self._emit = emit
        self.assignment: messages.Assignment | None = None
        self._serving: dict[str, Serving] = {}
        self._by_sensor: dict[str, tuple[str, ...]] = {}
        self._standby_by_sensor: dict[str, tuple[str, ...]] = {}
        self._standby: tuple[messages.Serve, ...] = ()
        self._held: dict[str, QueuedFrame] = {}
        self.sensors: frozenset[str] = frozenset()

    # -- readers ---------------------------------------------------------------------------

    def get(self, app: str) -> Serving | None:
        return self._serving.get(app)

    @property
    def apps(self) -> tuple[str, ...]:
        return tuple(self._serving)

    @property
    def generation(self) -> int:
        a = self.assignment
        return a.generation if a is not None else 0

    def held(self) -> dict[str, QueuedFrame]:
        return dict(self._held)

    # -- network thread --------------------------------------------------------------------

    def route(self, sensor: str, payload: bytes, received_ns: int) -> None:
        """A frame of ``sensor``: queue it for every app served from it, hold it for every app
        this worker is the warm backup of."""
        for app in self._by_sensor.get(sensor, ()):
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
        wanted = {s.app: s for s in a.serve}
        # Fencing: an app taken away stops now, before any slow model load.
        keep = {
            app: s
            for app, s in self._serving.items()
            if app in wanted and wanted[app].sensor == s.sensor
        }
        for app in set(self._serving) - set(keep):
            log.info("serve_stopped", app=app, generation=a.generation)
            self._emit("serve_stopped", app=app, generation=a.generation)
        # Standby entries of apps about to be promoted stay, so their held frame survives.
        self._set(keep, a.standby + tuple(sb for sb in self._standby if sb.app in wanted))
        # Load what serving needs, switch each app as its model is ready (an upgrade keeps
        # serving the old variant until the new one is loaded), and only then load the warm
        # backups: a warm load never delays serving.
        for variant in dict.fromkeys(s.variant for s in a.serve):
            self.models.load(variant)
        table: dict[str, Serving] = {}
        for s in a.serve:
            model = self.models.get(s.variant)
            if model is None:
                old = self._serving.get(s.app)
                if old is not None:
                    table[s.app] = old  # keep the old variant rather than stop
                log.error("app_unservable", app=s.app, variant=s.variant)
                continue
            v = self.catalog.variant(s.variant)
            table[s.app] = Serving(
                s.app, s.sensor, s.variant, model, v.preprocess, v.labels == "imagenet1k"
            )
        self.assignment = a  # results of the new table carry the new generation
        held = {app: f for app in table if app not in keep and (f := self._held.pop(app, None))}
        self._set(table, a.standby)
        self._serve_held(held)
        ms = (time.perf_counter() - t0) * 1000
        serving = {k: s.variant for k, s in table.items()}
        log.info(
            "assignment_applied",
            term=a.term,
            generation=a.generation,
            serving=serving,
            warm=list(a.warm),
            standby=[s.app for s in a.standby],
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
        self.models.keep_only({s.variant for s in table.values()} | set(a.warm))
        return True

    def _serve_held(self, held: dict[str, QueuedFrame]) -> None:
        """A promoted warm backup serves the latest frame it held, if still fresh; the frame
        counts as received now that it is queued."""
        now = time.monotonic_ns()
        for frame in held.values():
            if now - frame.received_ns < HELD_FRAME_MAX_AGE_NS:
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
