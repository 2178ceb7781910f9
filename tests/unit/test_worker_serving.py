"""The serving table without a broker: assignment order, fencing before loads, warm and hot
standby."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from faillite import messages
from faillite.badinput import BadInput
from faillite.catalog import Catalog
from workers.backends import Backend, LoadedModel
from workers.counters import Counters
from workers.frame_queue import FrameQueues
from workers.hot import HELD_MAX_AGE_NS, HotResults
from workers.model_cache import ModelCache
from workers.serving import ServingTable

L0, L1, L2 = "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"


class Log(list[tuple[Any, ...]]):
    """What happened, in order: loads, closes and events in one list."""

    def __call__(self, kind: str, app: str = "", **detail: Any) -> None:
        self.append(("event", kind, app))

    def kinds(self) -> list[tuple[Any, ...]]:
        return [e[:3] if e[0] == "event" else e for e in self]


class FakeModel(LoadedModel):
    def __init__(self, variant: str, log: Log) -> None:
        self.variant = variant
        self.providers = ("Fake",)
        self.input_shape = (1, 3, 8, 8)
        self._log = log

    def infer(self, batch: Any) -> Any:
        return np.zeros((1, 1000), np.float32)

    def close(self) -> None:
        self._log.append(("close", self.variant))


class FakeBackend(Backend):
    type = "fake"

    def __init__(self, log: Log) -> None:
        self.log = log
        self.on_load: list[Any] = []  # callables run at each load (to look at the table then)

    def devices(self) -> tuple[str, ...]:
        return ("Fake",)

    def load(self, variant: str, path: Path) -> LoadedModel:
        self.log.append(("load", variant))
        for f in self.on_load:
            f(variant)
        return FakeModel(variant, self.log)


class Rig:
    def __init__(self, catalog: Catalog) -> None:
        self.log = Log()
        self.backend = FakeBackend(self.log)
        self.bad = BadInput()
        self.models = ModelCache(
            self.backend, catalog, Path("/nonexistent"), bad=self.bad, emit=self.log
        )
        self.queues = FrameQueues(2)
        self.counters = Counters()
        self.followed: list[frozenset[str]] = []
        self.watched: list[frozenset[str]] = []
        self.released: list[messages.Result] = []
        self.table = ServingTable(
            self.models,
            catalog,
            self.queues,
            self.counters,
            follow=self.followed.append,
            emit=self.log,
            watch=self.watched.append,
            publish_held=self.released.append,
        )

    def apply(
        self,
        generation: int,
        serve: list[tuple[str, str, str]],
        *,
        term: int = 1,
        warm: tuple[str, ...] = (),
        standby: Sequence[tuple[str, str, str]] = (),
        hot: Sequence[tuple[str, str, str]] = (),
    ) -> bool:
        return self.table.apply(
            messages.Assignment(
                worker="w1",
                term=term,
                generation=generation,
                ts=messages.now(),
                serve=tuple(messages.Serve(*s) for s in serve),
                warm=warm,
                standby=tuple(messages.Serve(*s) for s in standby),
                hot=tuple(messages.Serve(*s) for s in hot),
            )
        )

    def drain(self) -> list[tuple[str, bytes]]:
        out = []
        while (f := self.queues.get(0.01)) is not None:
            out.append((f.app, f.payload))
        return out


@pytest.fixture
def rig(catalog: Catalog) -> Rig:
    return Rig(catalog)


def _beat(rig: Any, seq: int) -> messages.Heartbeat:
    """A heartbeat of the rig's worker at generation 2, from its counters and serving table."""
    beat: messages.Heartbeat = rig.counters.heartbeat(
        worker="w1",
        incarnation="i",
        seq=seq,
        apps=rig.table.apps,
        dropped={},
        queue_depth=0,
        rss_mb=0.0,
        loaded=(),
        generation=2,
        errors={},
    )
    return beat


def test_assignments_apply_in_term_generation_order(rig: Rig) -> None:
    assert rig.apply(2, [("a1", "cam1", L0)])
    assert not rig.apply(1, [("a1", "cam1", L2)])  # older generation: ignored
    assert not rig.apply(2, [("a1", "cam1", L2)])  # same version: ignored
    assert ("load", L2) not in rig.log
    assert rig.table.get("a1").variant == L0  # type: ignore[union-attr]
    assert rig.apply(1, [("a1", "cam1", L1)], term=2)  # a newer term wins over any generation
    assert rig.table.get("a1").variant == L1  # type: ignore[union-attr]
    assert rig.table.generation == 1 and rig.table.assignment.term == 2  # type: ignore[union-attr]


def test_revoked_apps_are_fenced_before_any_load(rig: Rig) -> None:
    rig.apply(1, [("a1", "cam1", L0), ("a2", "cam2", L0)])
    rig.table.route("cam1", b"f1", time.monotonic_ns())
    assert rig.queues.depth() == 1
    served_during_load: list[tuple[str, ...]] = []
    rig.backend.on_load.append(lambda _v: served_during_load.append(rig.table.apps))
    rig.log.clear()
    # a1 taken away, a2 moved to another sensor (fenced too), a3 new with a model to load.
    rig.apply(2, [("a2", "cam3", L0), ("a3", "cam1", L1)])
    kinds = rig.log.kinds()
    first_load = kinds.index(("load", L1))
    stopped = [i for i, k in enumerate(kinds) if k[:2] == ("event", "serve_stopped")]
    assert {kinds[i][2] for i in stopped} == {"a1", "a2"}
    assert max(stopped) < first_load
    assert served_during_load == [()]  # nothing served while the model loaded
    assert rig.queues.depth() == 0  # a1's queued frame is gone with it
    assert sorted(rig.table.apps) == ["a2", "a3"]
    assert rig.followed[-1] == {"cam1", "cam3"}


def test_upgrade_keeps_the_old_variant_until_the_new_one_loads(rig: Rig) -> None:
    rig.apply(1, [("a1", "cam1", L0)])
    rig.apply(2, [("a1", "cam1", "no_such_variant")])
    assert rig.table.get("a1").variant == L0  # type: ignore[union-attr]
    assert rig.bad.snapshot() == {"unknown_variant": 1}
    assert rig.table.generation == 2


def test_warm_loads_after_the_switch_and_unneeded_models_are_released(rig: Rig) -> None:
    rig.apply(1, [("a1", "cam1", L0)], warm=(L2,))
    kinds = rig.log.kinds()
    assert kinds.index(("load", L0)) < kinds.index(("event", "assignment_applied", ""))
    assert kinds.index(("event", "assignment_applied", "")) < kinds.index(("load", L2))
    assert set(rig.models.loaded) == {L0, L2}
    rig.apply(2, [("a1", "cam1", L1)])
    assert set(rig.models.loaded) == {L1}
    assert ("close", L0) in rig.log and ("close", L2) in rig.log
    assert rig.models.load_count == 3


def test_promotion_serves_the_held_frame_and_counts_it_received(rig: Rig) -> None:
    rig.apply(1, [("a1", "cam1", L0)], warm=(L1,), standby=[("a2", "cam2", L1)])
    assert rig.followed[-1] == {"cam1", "cam2"}  # the warm backup follows a2's frames
    rig.table.route("cam2", b"old", time.monotonic_ns())
    rig.table.route("cam2", b"latest", time.monotonic_ns())
    assert rig.queues.depth() == 0  # held, not queued: a2 is not served here yet
    assert rig.counters.frames_received == 0
    loads = rig.models.load_count
    rig.apply(2, [("a1", "cam1", L0), ("a2", "cam2", L1)])
    assert rig.models.load_count == loads  # warm: nothing to load
    assert rig.drain() == [("a2", b"latest")]
    hb = _beat(rig, 1)
    assert hb.frames_received == 1 and hb.apps["a2"].received == 1
    rig.counters.processed("a2", total_ms=5.0, ts=messages.now(), published=True)
    hb2 = _beat(rig, 2)
    assert hb2.frames_processed <= hb2.frames_received
    assert rig.table.held() == {}


def test_a_stale_held_frame_is_not_served(rig: Rig) -> None:
    rig.apply(1, [], warm=(L1,), standby=[("a2", "cam2", L1)])
    rig.table.route("cam2", b"stale", time.monotonic_ns() - 2 * HELD_MAX_AGE_NS)
    rig.apply(2, [("a2", "cam2", L1)])
    assert rig.drain() == []
    assert rig.counters.frames_received == 0
    rig.table.route("cam2", b"live", time.monotonic_ns())  # served normally from now on
    assert rig.drain() == [("a2", b"live")]
    assert rig.counters.frames_received == 1


def test_standby_dropped_forgets_its_held_frame(rig: Rig) -> None:
    rig.apply(1, [], standby=[("a2", "cam2", L1)])
    rig.table.route("cam2", b"x", time.monotonic_ns())
    assert set(rig.table.held()) == {"a2"}
    rig.apply(2, [])
    assert rig.table.held() == {}
    assert rig.followed[-1] == frozenset()


# -- hot standby -----------------------------------------------------------------------------


def _result(app: str, seq: int, generation: int = 1) -> messages.Result:
    lat = messages.Latency(0.0, 0.0, 0.0, 1.0, 2.0)
    now = messages.now()
    return messages.Result(app, seq, "cam2", now, now, "w1", "i", L1, generation, lat, ())


def test_held_results_keep_what_the_primary_did_not_publish_and_is_fresh() -> None:
    hot = HotResults(keep=4)
    t = 10 * HELD_MAX_AGE_NS
    hot.hold(_result("a2", 1), now_ns=t - 2 * HELD_MAX_AGE_NS)  # stale by then
    for seq in (5, 6, 7):
        hot.hold(_result("a2", seq), now_ns=t)
    hot.seen("a2", 6)
    assert hot.already_published("a2", 6) and not hot.already_published("a2", 7)
    assert [r.seq for r in hot.release("a2", now_ns=t + 1)] == [7]
    assert hot.suppressed == 3 and hot.held("a2") == 0
    # A camera that restarts counts from 0: the last seq seen counts, not the highest.
    hot.seen("a3", 900)
    hot.seen("a3", 2)
    hot.hold(_result("a3", 3), now_ns=t)
    assert [r.seq for r in hot.release("a3", now_ns=t)] == [3]
    for seq in range(10):  # bounded: the oldest go first
        hot.hold(_result("a4", seq), now_ns=t)
    assert hot.held("a4") == 4
    hot.forget("a4")
    assert hot.held("a4") == 0 and hot.release("a4", now_ns=t) == []


def test_a_hot_backup_runs_every_frame_but_is_not_served(rig: Rig) -> None:
    rig.apply(1, [("a1", "cam1", L0)], hot=[("a2", "cam2", L1)])
    assert rig.table.apps == ("a1",) and rig.table.hot_apps == ("a2",)
    assert rig.table.get("a2").hot  # type: ignore[union-attr]
    assert set(rig.models.loaded) == {L0, L1}
    assert rig.followed[-1] == {"cam1", "cam2"} and rig.watched[-1] == {"a2"}
    rig.table.route("cam2", b"f", time.monotonic_ns())
    assert rig.drain() == [("a2", b"f")]  # queued to run, unlike a warm backup's held frame
    assert "a2" not in _beat(rig, 1).apps  # nothing reported as served


def test_hot_models_load_after_serving_switched(rig: Rig) -> None:
    rig.apply(1, [("a1", "cam1", L0)])
    seen: list[tuple[str, ...]] = []
    rig.backend.on_load.append(lambda v: seen.append(rig.table.apps) if v == L1 else None)
    rig.apply(2, [("a1", "cam1", L2)], hot=[("a2", "cam2", L1)])
    assert seen == [("a1",)] and rig.table.get("a1").variant == L2  # type: ignore[union-attr]


def test_promotion_publishes_the_held_results_the_primary_missed(rig: Rig) -> None:
    rig.apply(1, [("a1", "cam1", L0)], hot=[("a2", "cam2", L1)])
    for seq in (5, 6, 7):
        rig.table.hot.hold(_result("a2", seq))
    rig.table.hot.seen("a2", 6)
    loads = rig.models.load_count
    rig.apply(2, [("a1", "cam1", L0), ("a2", "cam2", L1)])
    assert rig.models.load_count == loads  # running already: nothing to load
    assert [(r.seq, r.generation) for r in rig.released] == [(7, 2)]  # the new generation
    assert not rig.table.get("a2").hot  # type: ignore[union-attr]
    assert sorted(rig.table.apps) == ["a1", "a2"] and rig.watched[-1] == frozenset()
    assert ("event", "hot_promoted", "a2") in rig.log.kinds()


def test_a_revoked_hot_backup_forgets_what_it_held(rig: Rig) -> None:
    rig.apply(1, [], hot=[("a2", "cam2", L1)])
    rig.table.hot.hold(_result("a2", 1))
    rig.table.hot.seen("a2", 0)
    rig.apply(2, [])
    assert rig.table.get("a2") is None and rig.table.hot.held("a2") == 0
    assert rig.watched[-1] == frozenset() and rig.followed[-1] == frozenset()
    assert L1 not in rig.models.loaded
    # Hot again later: what was seen of the others' results before does not count.
    rig.apply(3, [], hot=[("a2", "cam2", L1)])
    assert not rig.table.hot.already_published("a2", 0)
