"""RouteFilter: results believed only from the worker the app's newest retained route names.

Crafted sequences, no broker: a fake clock drives the handover grace and the held results."""

from __future__ import annotations

import time
from typing import Literal

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from faillite import messages
from faillite.mqtt import Inbound
from faillite.routes import GRACE_S, RouteFilter, Verdict, app_of
from faillite.signing import Signer
from faillite.topics import Role, Topics

APP = "gate-watch"
T = Topics("demo")
MAX_GENERATION = 2**53 - 1  # the codec's bound (a forged 2^62 does not even decode)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def route(
    worker: str,
    generation: int,
    term: int = 1,
    state: Literal["serving", "degraded", "unserved"] = "serving",
    app: str = APP,
) -> messages.Route:
    variant = "efficientnet_lite0" if worker else ""
    return messages.Route(app, worker, variant, term, generation, time.time(), state)


def result(worker: str, generation: int, app: str = APP, seq: int = 1) -> messages.Result:
    now = time.time()
    return messages.Result(
        app=app,
        seq=seq,
        sensor="cam-gate",
        capture_ts=now - 0.03,
        ts=now,
        worker=worker,
        incarnation="i-" + worker,
        variant="efficientnet_lite0",
        generation=generation,
        latency=messages.Latency(0.1, 1.0, 1.0, 20.0, 30.0),
        top=(messages.Label(285, "Egyptian cat", 0.6),),
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def flt(clock: Clock) -> RouteFilter:
    return RouteFilter(clock=clock)


def test_accepts_the_routed_worker_up_to_the_routes_generation(flt: RouteFilter) -> None:
    flt.on_route(route("w1", 7, term=3))
    assert flt.check(result("w1", 7)) is Verdict.ROUTED
    # An older generation: the worker still applying the newer assignment.
    assert flt.check(result("w1", 5)) is Verdict.ROUTED
    assert flt.refused.snapshot() == {}


def test_a_worker_not_routed_is_refused_and_counted(flt: RouteFilter) -> None:
    flt.on_route(route("w1", 7))
    for _ in range(187):
        assert flt.check(result("evil", 7)) is Verdict.NOT_ROUTED
    assert flt.check(result("w2", 3)) is Verdict.NOT_ROUTED
    assert flt.refused.snapshot() == {"result_not_routed": 188}
    assert flt.check(result("w1", 7)) is Verdict.ROUTED


def test_a_forged_generation_far_ahead_is_refused_and_moves_nothing(
    flt: RouteFilter, clock: Clock
) -> None:
    flt.on_route(route("w1", 7))
    # Forged as the routed worker and as another one, far ahead: held, then refused.
    assert flt.check(result("w1", MAX_GENERATION)) is Verdict.HELD
    assert flt.check(result("evil", MAX_GENERATION)) is Verdict.HELD
    # The next real results are all accepted (the observer's bug: it ignored 19 of them).
    assert [flt.check(result("w1", 7, seq=i)) for i in range(19)] == [Verdict.ROUTED] * 19
    clock.advance(GRACE_S + 0.01)
    assert flt.check(result("w1", 7)) is Verdict.ROUTED  # expires what was held
    assert flt.refused.snapshot() == {"result_generation_ahead": 2}
    assert flt.held() == 0
    cur = flt.route(APP)
    assert cur is not None and (cur.worker, cur.generation) == ("w1", 7)


def test_held_results_overflow_is_refused_at_once(flt: RouteFilter) -> None:
    flt.on_route(route("w1", 7))
    verdicts = [flt.check(result("evil", 8 + i)) for i in range(100)]
    assert verdicts.count(Verdict.HELD) == 64
    assert verdicts.count(Verdict.GENERATION_AHEAD) == 36
    assert flt.refused.snapshot() == {"result_generation_ahead": 36}


def test_failover_handover_with_grace(flt: RouteFilter, clock: Clock) -> None:
    flt.on_route(route("w1", 7))
    assert flt.check(result("w1", 7)) is Verdict.ROUTED
    # w1 fails; the coordinator routes the app to its warm backup w2 under generation 8.
    assert flt.on_route(route("w2", 8, state="degraded")) == []
    assert flt.check(result("w2", 8)) is Verdict.ROUTED
    # w1's last in-flight results, within the grace: accepted as handover.
    clock.advance(GRACE_S / 2)
    assert flt.check(result("w1", 7)) is Verdict.HANDOVER
    # ...but never with a generation above the route it was named by.
    assert flt.check(result("w1", 8)) is Verdict.NOT_ROUTED
    # After the grace, w1 is just a worker that is not routed.
    clock.advance(GRACE_S)
    assert flt.check(result("w1", 7)) is Verdict.NOT_ROUTED
    assert flt.check(result("w2", 8)) is Verdict.ROUTED
    assert flt.refused.snapshot() == {"result_not_routed": 2}


def test_grace_covers_every_route_superseded_within_it(flt: RouteFilter, clock: Clock) -> None:
    flt.on_route(route("w1", 7))
    flt.on_route(route("w2", 8))  # failover
    clock.advance(0.1)
    flt.on_route(route("w2", 9))  # the re-plan right after makes w2 the primary
    assert flt.check(result("w1", 7)) is Verdict.HANDOVER
    assert flt.check(result("w2", 9)) is Verdict.ROUTED


def test_new_term_same_worker_old_generation(flt: RouteFilter, clock: Clock) -> None:
    """Generations start again under a new term: the same worker's results under its old
    assignment (generation 7) are ahead of the new route (3, 1), accepted within the grace."""
    flt.on_route(route("w1", 7, term=2))
    flt.on_route(route("w1", 1, term=3))
    assert flt.check(result("w1", 7)) is Verdict.HANDOVER
    assert flt.check(result("w1", 1)) is Verdict.ROUTED
    clock.advance(GRACE_S + 0.1)
    assert flt.check(result("w1", 7)) is Verdict.HELD  # ahead of (3, 1) now
    clock.advance(GRACE_S + 0.1)
    flt.expire()
    assert flt.refused.snapshot() == {"result_generation_ahead": 1}


def test_unserved_app_accepts_nothing(flt: RouteFilter, clock: Clock) -> None:
    flt.on_route(route("w1", 7))
    flt.on_route(route("", 8, state="unserved"))
    clock.advance(0.01)
    assert flt.check(result("w1", 7)) is Verdict.APP_UNSERVED  # no grace once unserved
    assert flt.check(result("w1", 8)) is Verdict.APP_UNSERVED
    assert flt.check(result("", 8)) is Verdict.APP_UNSERVED
    assert flt.refused.snapshot() == {"result_app_unserved": 3}
    # Served again later (a worker joined): its worker's results count again.
    flt.on_route(route("w3", 9))
    assert flt.check(result("w3", 9)) is Verdict.ROUTED


def test_unserved_route_naming_a_worker_is_still_unserved(flt: RouteFilter) -> None:
    flt.on_route(route("w1", 7, state="unserved"))
    assert flt.check(result("w1", 7)) is Verdict.APP_UNSERVED


def test_before_any_route_results_are_unverified(flt: RouteFilter) -> None:
    assert flt.route(APP) is None
    assert flt.check(result("w1", 3)) is Verdict.UNVERIFIED
    assert flt.check(result("anyone", MAX_GENERATION)) is Verdict.UNVERIFIED
    assert Verdict.UNVERIFIED.accepted
    assert flt.unverified == {APP: 2} and flt.unverified_total == 2
    assert flt.refused.snapshot() == {}
    # Once the app has a route it is judged strictly.
    flt.on_route(route("w1", 3))
    assert flt.check(result("anyone", 3)) is Verdict.NOT_ROUTED
    assert flt.check(result("w1", 3)) is Verdict.ROUTED
    assert flt.unverified_total == 2


def test_routes_after_results_release_the_held_ones(flt: RouteFilter, clock: Clock) -> None:
    """The coordinator publishes assignments before routes: a promoted warm backup's first
    result can arrive before the route that names it. It is held, and released by the route."""
    flt.on_route(route("w1", 7))
    early = result("w2", 8)
    assert flt.check(early, received=123.0) is Verdict.HELD
    forged = result("evil", 8)
    assert flt.check(forged) is Verdict.HELD
    clock.advance(0.05)
    released = flt.on_route(route("w2", 8, state="degraded"))
    assert [(r.result, r.received, r.verdict) for r in released] == [(early, 123.0, Verdict.ROUTED)]
    assert flt.refused.snapshot() == {"result_not_routed": 1}  # the forged one, judged now
    assert flt.held() == 0


def test_held_result_still_ahead_keeps_its_deadline(flt: RouteFilter, clock: Clock) -> None:
    flt.on_route(route("w1", 7))
    assert flt.check(result("w1", 9)) is Verdict.HELD
    clock.advance(0.5)
    assert flt.on_route(route("w1", 8)) == []  # still ahead of 8
    assert flt.held() == 1
    clock.advance(GRACE_S)
    assert flt.on_route(route("w1", 9)) == []  # too late: refused, not released
    assert flt.refused.snapshot() == {"result_generation_ahead": 1}


def test_older_or_equal_routes_change_nothing(flt: RouteFilter) -> None:
    flt.on_route(route("w2", 8, term=3))
    flt.on_route(route("w1", 7, term=3))  # a late retained replay
    flt.on_route(route("w1", 9, term=2))  # a deposed leader's late publish
    flt.on_route(route("w9", 8, term=3))  # same version: the first one stays
    cur = flt.route(APP)
    assert cur is not None and (cur.worker, cur.term, cur.generation) == ("w2", 3, 8)
    assert flt.stale_routes == 3
    assert flt.check(result("w1", 7)) is Verdict.NOT_ROUTED  # no grace: never superseded


def test_cleared_route_makes_the_app_unknown_again(flt: RouteFilter) -> None:
    flt.on_route(route("w1", 7))
    flt.forget(APP)
    assert flt.check(result("w2", 1)) is Verdict.UNVERIFIED


def test_topics_must_match_the_payload(flt: RouteFilter) -> None:
    flt.on_route(route("w1", 7))
    wrong_app = T.app_results("kitchen-watch", "w1")
    assert flt.check(result("w1", 7), topic=wrong_app) is Verdict.WRONG_TOPIC
    # The payload claims the routed worker, the topic (which the broker binds to the
    # publisher's account) says w2 published it.
    assert flt.check(result("w1", 7), topic=T.app_results(APP, "w2")) is Verdict.WRONG_TOPIC
    assert flt.check(result("w1", 7), topic=T.app_results(APP, "w1")) is Verdict.ROUTED
    assert flt.on_route(route("evil", 9), topic_app="kitchen-watch") == []
    cur = flt.route(APP)
    assert cur is not None and cur.worker == "w1" and flt.route("kitchen-watch") is None
    assert flt.refused.snapshot() == {"result_wrong_topic": 2, "route_wrong_topic": 1}
    assert app_of(T.app_results(APP, "w1")) == APP and app_of(T.app_route(APP)) == APP
    assert app_of(T.placement) is None and app_of("elsewhere/x") is None


def test_apps_are_judged_apart(flt: RouteFilter) -> None:
    flt.on_route(route("w1", 7))
    flt.on_route(route("w2", 7, app="kitchen-watch"))
    assert flt.check(result("w2", 7)) is Verdict.NOT_ROUTED
    assert flt.check(result("w2", 7, app="kitchen-watch")) is Verdict.ROUTED


# -- the observer, fed decoded messages (no broker) ------------------------------------------


def test_observer_counts_only_routed_results_and_reports_refusals() -> None:
    from faillite.config import load_mesh_config, packaged_config
    from field_kit.observe import MeshObserver

    cfg = load_mesh_config(packaged_config("demo.yaml"))
    t = Topics(cfg.mesh)
    obs = MeshObserver(cfg, client_id="test")
    obs.mark_start()

    def send(r: messages.Result) -> None:
        obs._on_result(Inbound(t.app_results(r.app, r.worker), r, False))

    obs._on_route(Inbound(t.app_route(APP), route("w1", 7), True))
    send(result("w1", 7))
    # The attack: a forged generation far ahead, then forged results of a worker not routed.
    send(result("evil", MAX_GENERATION))
    for _ in range(50):
        send(result("evil", 7))
    real = [result("w1", 7, seq=i) for i in range(19)]
    for r in real:
        send(r)
    send(result("w1", 7, app="invented-app"))  # neither configured nor routed
    s = obs.summary(1.0)
    gate = s["apps"][APP]
    assert gate["results"] == 20 and gate["workers"] == {"w1": 20}
    assert gate["worker"] == "w1" and gate["unverified_results"] == 0
    assert s["refused_results"] == {"result_not_routed": 50, "result_unknown_app": 1}
    assert "invented-app" not in s["apps"]
    assert obs.apps[APP].generation == 7

    # A failover: w2 named by generation 8; its first result came before the route.
    send(result("w2", 8))
    obs._on_route(Inbound(t.app_route(APP), route("w2", 8, state="degraded"), True))
    send(result("w1", 7))  # w1's last in-flight result, within the grace
    send(result("w2", 8))
    gate = obs.summary(1.0)["apps"][APP]
    assert gate["workers"] == {"w1": 21, "w2": 2} and gate["worker"] == "w2"
    assert "refused results: 51" in obs.line()

    # Before any route: counted, marked unverified.
    send(result("w3", 1, app="kitchen-watch"))
    s = obs.summary(1.0)
    assert s["apps"]["kitchen-watch"]["results"] == 1
    assert s["apps"]["kitchen-watch"]["unverified_results"] == 1
    assert s["unverified_results"] == 1


def test_where_the_mesh_signs_an_unsigned_route_steers_nobody(clock: Clock) -> None:
    """An account that may write routes but holds no signing key names a worker of its own."""
    signer = Signer(Ed25519PrivateKey.generate(), "demo")
    flt = RouteFilter(clock=clock, verifier=signer.verifier)
    flt.on_route(signer.sign(T.app_route(APP), route("w1", 7)))
    assert flt.on_route(route("w9", 8)) == []  # unsigned
    assert flt.on_route(signer.sign(T.app_route("yard"), route("w9", 9))) == []  # moved
    assert flt.route(APP) is not None and flt.route(APP).worker == "w1"  # type: ignore[union-attr]
    assert flt.check(result("w9", 7)) is Verdict.NOT_ROUTED
    assert flt.refused.snapshot()["bad_signature"] == 2
    flt.on_route(signer.sign(T.app_route(APP), route("w2", 8)))
    assert flt.route(APP).worker == "w2"  # type: ignore[union-attr]


def test_observer_believes_an_event_only_from_its_sources_own_topic() -> None:
    """A worker (or camera) may write only its own events topic: a failover it reports in a
    coordinator's name is refused, and so is any event retained for later watchers."""
    from faillite.config import load_mesh_config, packaged_config
    from field_kit.observe import MeshObserver

    cfg = load_mesh_config(packaged_config("demo.yaml"))
    t = Topics(cfg.mesh)
    obs = MeshObserver(cfg, client_id="test")
    failover = messages.Event("failover", time.time(), "coordinator/main", "w1")
    obs._on_event(Inbound(t.events_of(Role.WORKER, "w2"), failover, False))  # forged
    obs._on_event(Inbound(t.events_of(Role.COORDINATOR, "main"), failover, True))  # retained
    assert obs.failovers == [] and obs.events_total == 0
    assert obs.bad.snapshot() == {"event_wrong_source": 1, "event_retained": 1}
    obs._on_event(Inbound(t.events_of(Role.COORDINATOR, "main"), failover, False))
    assert obs.failovers == [failover]
