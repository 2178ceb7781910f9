"""Which results to believe: those of the worker that an app's retained route names.

A worker publishes on ``apps/{app}/results/{worker}``, and with per-device accounts the broker
lets only that worker write there, so the topic says who published a result; the payload's
``worker`` must agree with it. A worker can still write any ``generation``, and a worker the
coordinator no longer routes may keep publishing. Consumers and observers therefore judge every
:class:`~faillite.messages.Result` against the app's newest :class:`~faillite.messages.Route`
(retained, QoS 1, published only by the coordinator) with a :class:`RouteFilter`:

- The newest route is the one with the highest ``(term, generation)``; an older or equal one
  (a retained replay after a reconnect, a deposed leader's late publish) changes nothing.
- A result is accepted (``ROUTED``) when it comes from the worker the newest route names, with a
  ``generation`` not above the route's: a worker stamps its results with the generation of the
  assignment it serves under, which is the route's, or an older one while it applies a newer
  assignment. A route in state ``unserved`` (or any state but ``serving``/``degraded``, or
  naming no worker) accepts nothing (``result_app_unserved``).
- Handover: when a newer route supersedes one, the results of the superseded route's worker
  (with a generation up to that route's) are still accepted for ``grace_s`` (1 s) after the
  newer route arrived here (``HANDOVER``): frames it took before it was fenced, or the same
  worker's results under its old generation right after a coordinator takeover (generations
  start again at 1 under a new term). Never when the newest route is ``unserved``: once the
  coordinator says nobody serves the app, nothing is shown as served.
- A result whose generation is above the newest route's (from any worker) may be ahead of its
  route (the coordinator publishes assignments before routes, and a promoted warm backup
  serves its held frame at once): it is ``HELD`` for up to ``grace_s``. When a newer route
  arrives, held results are judged again and those it accepts come back from
  :meth:`RouteFilter.on_route` with their arrival time; those still unjudged when their grace
  runs out are refused as ``result_generation_ahead`` (a forged generation far ahead ends there;
  it never moves anything).
- Before any route of an app is known (no coordinator yet, a retained route lost with a broker's
  store, a client whose credentials cannot read routes), a result is accepted but marked
  ``UNVERIFIED`` and counted: every coordinator (static or planner) publishes the routes right
  after the assignments, before any worker can serve, so in a mesh with a coordinator this
  state lasts until the retained routes arrive after subscribing. Callers must not let an
  unverified result move any state that later results are judged by (a generation mark).
  Once an app has a route, it is judged strictly; a cleared (empty) retained route makes it
  unknown again.
- A result whose payload names another app or worker than its topic is refused
  (``result_wrong_topic``).
- Where the mesh signs (a ``verifier``), a route without the coordinators' signature for its
  own app's topic is refused (``bad_signature``): an account that may write routes but holds
  no signing key cannot steer a consumer to a worker of its choosing.

Refusals are counted by reason with :class:`~faillite.badinput.BadInput` (rate-limited log).

In an open mesh (no accounts, loopback only) the topic is the publisher's word too.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from faillite import messages
from faillite.badinput import BadInput
from faillite.compat import StrEnum
from faillite.signing import SignatureError, Verifier
from faillite.topics import Topics, parse

GRACE_S = 1.0
SERVED_STATES = frozenset({"serving", "degraded"})
MAX_SUPERSEDED = 8  # superseded routes remembered per app (those within the grace)
MAX_HELD = 64  # results held per app waiting for their route; more are refused at once
MAX_UNVERIFIED_APPS = 1024  # apps counted by name in ``unverified`` (the total counts all)


class Verdict(StrEnum):
    """What :meth:`RouteFilter.check` decided about one result."""

    ROUTED = "routed"  # from the worker the newest route names
    HANDOVER = "handover"  # from a route superseded less than the grace ago
    UNVERIFIED = "unverified"  # no route known for the app yet: accepted, marked
    HELD = "held"  # ahead of the newest route: judged again when a newer one comes
    NOT_ROUTED = "result_not_routed"
    GENERATION_AHEAD = "result_generation_ahead"
    APP_UNSERVED = "result_app_unserved"
    WRONG_TOPIC = "result_wrong_topic"

    @property
    def accepted(self) -> bool:
        return self in (Verdict.ROUTED, Verdict.HANDOVER, Verdict.UNVERIFIED)

    @property
    def refused(self) -> bool:
        return not self.accepted and self is not Verdict.HELD


@dataclass(frozen=True, slots=True)
class Released:
    """A held result that a newer route accepted, with the arrival time the caller gave."""

    result: messages.Result
    received: float
    verdict: Verdict


@dataclass(slots=True)
class _Held:
    result: messages.Result
    received: float  # caller's stamp (wall clock by default)
    until: float  # filter clock


@dataclass(slots=True)
class _AppRoutes:
    current: messages.Route
    superseded: list[tuple[messages.Route, float]] = field(default_factory=list)  # newest first
    held: list[_Held] = field(default_factory=list)


def app_of(topic: str) -> str | None:
    """The ``{app}`` of an ``apps/{app}/...`` topic; None for any other topic."""
    parsed = parse(topic)
    if parsed is None:
        return None
    return parsed[1].ids.get("app")


def _publisher_of(topic: str) -> tuple[str | None, str | None]:
    """(app, worker) of a results topic (None where the topic does not say)."""
    parsed = parse(topic)
    if parsed is None:
        return None, None
    ids = parsed[1].ids
    return ids.get("app"), ids.get("worker")


def served(route: messages.Route) -> bool:
    """Whether ``route`` names a worker serving the app (unknown states are not served)."""
    return route.state in SERVED_STATES and bool(route.worker)


def _version(route: messages.Route) -> tuple[int, int]:
    return (route.term, route.generation)


class RouteFilter:
    """Judges results against the apps' retained routes (see the module's docstring).

    Thread-safe; pure apart from the injected ``clock`` (monotonic seconds) and the rate-limited
    log of refusals through ``refused``.
    """

    def __init__(
        self,
        *,
        grace_s: float = GRACE_S,
        refused: BadInput | None = None,
        clock: Callable[[], float] = time.monotonic,
        verifier: Verifier | None = None,
    ) -> None:
        self.grace_s = grace_s
        self._verifier = verifier
        self._topics = Topics(verifier.mesh) if verifier is not None else None
        self.refused = refused if refused is not None else BadInput()
        self._clock = clock
        self._lock = threading.Lock()
        self._apps: dict[str, _AppRoutes] = {}
        self.unverified: Counter[str] = Counter()  # accepted before the app had a route
        self.unverified_total = 0
        self.stale_routes = 0  # routes ignored: not newer than the app's current one

    # -- routes ----------------------------------------------------------------------------

    def route(self, app: str) -> messages.Route | None:
        """The app's newest route, or None before any."""
        with self._lock:
            s = self._apps.get(app)
            return s.current if s is not None else None

    def on_route(self, route: messages.Route, *, topic_app: str | None = None) -> list[Released]:
        """Take a route; returns the held results that it (or its predecessors' grace) now
        accepts, oldest first. An older or equal route, or one on another app's topic, is
        ignored."""
        if topic_app is not None and route.app != topic_app:
            self.refused.count(
                "route_wrong_topic",
                f"route of {route.app!r} on the topic of {topic_app!r}",
                app=topic_app,
            )
            return []
        if self._verifier is not None and self._topics is not None:
            try:
                self._verifier.verify(self._topics.app_route(route.app), route)
            except SignatureError as exc:
                self.refused.count(exc.reason, str(exc), app=route.app)
                return []
        now = self._clock()
        with self._lock:
            s = self._apps.get(route.app)
            if s is None:
                self._apps[route.app] = _AppRoutes(route)
                return []
            if _version(route) <= _version(s.current):
                self.stale_routes += 1
                return []
            s.superseded.insert(0, (s.current, now))
            del s.superseded[MAX_SUPERSEDED:]
            s.current = route
            held, s.held = s.held, []
            released: list[Released] = []
            refused: list[tuple[Verdict, messages.Result]] = []
            for h in held:
                if h.until < now:
                    refused.append((Verdict.GENERATION_AHEAD, h.result))
                    continue
                verdict = self._judge(s, h.result, now)
                if verdict.accepted:
                    released.append(Released(h.result, h.received, verdict))
                elif verdict is Verdict.HELD:
                    s.held.append(h)  # still ahead: keeps its original deadline
                else:
                    refused.append((verdict, h.result))
        for verdict, r in refused:
            self._count(verdict, r, route)
        return released

    def forget(self, app: str) -> None:
        """The app's retained route was cleared: it is unknown again (held results dropped,
        refused as ahead of any route)."""
        with self._lock:
            s = self._apps.pop(app, None)
        for h in s.held if s is not None else ():
            self._count(Verdict.GENERATION_AHEAD, h.result, None)

    # -- results ---------------------------------------------------------------------------

    def check(
        self,
        result: messages.Result,
        *,
        topic: str | None = None,
        received: float | None = None,
    ) -> Verdict:
        """Judge one result. ``topic``: the topic it came on (its app and worker levels are
        checked against the payload's); ``received``: the caller's arrival stamp, given back if
        the result is held and released later (wall clock by default)."""
        if topic is not None:
            topic_app, topic_worker = _publisher_of(topic)
            if result.app != topic_app or result.worker != topic_worker:
                self._count(Verdict.WRONG_TOPIC, result, None, topic=topic)
                return Verdict.WRONG_TOPIC
        now = self._clock()
        expired: list[_Held] = []
        with self._lock:
            s = self._apps.get(result.app)
            if s is None:
                self.unverified_total += 1
                if result.app in self.unverified or len(self.unverified) < MAX_UNVERIFIED_APPS:
                    self.unverified[result.app] += 1
                return Verdict.UNVERIFIED
            expired = self._expire(s, now)
            verdict = self._judge(s, result, now)
            if verdict is Verdict.HELD:
                if len(s.held) < MAX_HELD:
                    stamp = time.time() if received is None else received
                    s.held.append(_Held(result, stamp, now + self.grace_s))
                else:
                    verdict = Verdict.GENERATION_AHEAD
            current = s.current
        for h in expired:
            self._count(Verdict.GENERATION_AHEAD, h.result, current)
        if verdict.refused:
            self._count(verdict, result, current)
        return verdict

    def expire(self) -> int:
        """Refuse the held results whose grace ran out (also done by every later check of the
        same app); call before reading the counts. Returns how many."""
        now = self._clock()
        out: list[tuple[messages.Result, messages.Route]] = []
        with self._lock:
            for s in self._apps.values():
                out += [(h.result, s.current) for h in self._expire(s, now)]
        for r, route in out:
            self._count(Verdict.GENERATION_AHEAD, r, route)
        return len(out)

    def held(self) -> int:
        """Results held now, waiting for their route."""
        with self._lock:
            return sum(len(s.held) for s in self._apps.values())

    # -- internals (lock held) ---------------------------------------------------------------

    def _expire(self, s: _AppRoutes, now: float) -> list[_Held]:
        if not s.held or s.held[0].until >= now:
            return []
        keep = [h for h in s.held if h.until >= now]
        gone = [h for h in s.held if h.until < now]
        s.held = keep
        return gone

    def _judge(self, s: _AppRoutes, r: messages.Result, now: float) -> Verdict:
        cur = s.current
        if not served(cur):
            return Verdict.APP_UNSERVED
        if r.worker == cur.worker and r.generation <= cur.generation:
            return Verdict.ROUTED
        for old, superseded_at in s.superseded:
            if now - superseded_at > self.grace_s:
                break  # newest first: the rest are older still
            if served(old) and r.worker == old.worker and r.generation <= old.generation:
                return Verdict.HANDOVER
        if r.generation > cur.generation:
            return Verdict.HELD
        return Verdict.NOT_ROUTED

    def _count(
        self,
        verdict: Verdict,
        r: messages.Result,
        route: messages.Route | None,
        **fields: str,
    ) -> None:
        self.refused.count(
            verdict.value,
            f"result of {r.app!r} from {r.worker!r} generation {r.generation}",
            app=r.app,
            worker=r.worker,
            generation=r.generation,
            routed_worker=route.worker if route is not None else None,
            routed_term=route.term if route is not None else None,
            routed_generation=route.generation if route is not None else None,
            routed_state=route.state if route is not None else None,
            **fields,
        )
