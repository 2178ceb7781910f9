"""Measured profiles replace estimates: the book's rules, then the core re-planning with them."""

from __future__ import annotations

import pytest

from coordinator.core import CoordinatorCore
from coordinator.decisions import RequestPlan
from coordinator.events import ProfileReported
from coordinator.planning import SolverPlanner
from coordinator.profiles import ProfileBook
from faillite import messages
from faillite.catalog import ESTIMATE, Catalog, estimated, merge_overlays
from faillite.config import MeshConfig
from tests.unit.test_coordinator_core import CATALOG, LITE0, LITE1, LITE2, Sim, events, mesh_config

EDGE = merge_overlays(CATALOG, [estimated(CATALOG, "edge", "cpu", latency_scale=3.0)])
CLASSES = {"w1": "edge", "w2": "edge", "w3": "cpu"}


def report(
    worker: str = "w1", device_class: str = "edge", **latency: float
) -> messages.WorkerProfile:
    lat = {LITE0: 4.0, LITE1: 6.0, LITE2: 8.0, **latency}
    return messages.WorkerProfile(
        worker,
        device_class,
        f"{worker}, onnxruntime",
        1.0,
        tuple(messages.VariantCost(v, ms, 100.0, 500.0, 20.0) for v, ms in lat.items()),
    )


def edge_profile(catalog: Catalog, variant: str) -> tuple[float, str]:
    p = catalog.variant(variant).profile("edge")
    assert p is not None
    return p.latency_ms, p.source


def test_a_measured_report_replaces_the_estimate_of_its_class() -> None:
    book = ProfileBook(EDGE, CLASSES)
    assert edge_profile(book.catalog, LITE0)[1].startswith(ESTIMATE)
    assert book.report(report()) == ""
    assert book.rebuild() == ["edge"]
    ms, source = edge_profile(book.catalog, LITE0)
    assert ms == 4.0 and source.startswith("measured on the board by w1")
    assert book.rebuild() == []  # nothing new: nothing to re-plan
    assert book.base is EDGE  # the given catalog is kept apart


def test_a_class_is_planned_for_its_slowest_board() -> None:
    book = ProfileBook(EDGE, CLASSES)
    book.report(report("w1", **{LITE0: 4.0, LITE2: 8.0}))
    book.report(report("w2", **{LITE0: 5.0, LITE2: 7.0}))
    assert book.rebuild() == ["edge"]
    assert edge_profile(book.catalog, LITE0)[0] == 5.0
    assert edge_profile(book.catalog, LITE2)[0] == 8.0
    # A board's new report replaces its old one, not the other board's.
    book.report(report("w2", **{LITE0: 4.5}))
    assert book.rebuild() == ["edge"]
    assert edge_profile(book.catalog, LITE0)[0] == 4.5


@pytest.mark.parametrize(
    ("msg", "why"),
    [
        (report("w1", "cpu"), "is not the worker's"),  # speaking for another class
        (report("w9"), "not in the mesh config"),
        (report("w3", "cpu"), "measured in this coordinator's files"),  # given: kept
    ],
)
def test_a_report_that_is_not_the_boards_own_is_refused(
    msg: messages.WorkerProfile, why: str
) -> None:
    book = ProfileBook(EDGE, CLASSES)
    assert why in book.report(msg)
    assert book.rebuild() == [] and book.catalog is EDGE


def test_a_variant_the_catalog_lacks_is_refused() -> None:
    book = ProfileBook(EDGE, CLASSES)
    bad = messages.WorkerProfile(
        "w1", "edge", "x", 1.0, (messages.VariantCost("yolo_giant", 1.0, 1.0),)
    )
    assert "yolo_giant" in book.report(bad)


def edge_sim() -> Sim:
    data = mesh_config().model_dump(mode="json", exclude_defaults=True)
    for w in data["workers"]:
        w["device_class"] = "edge"
    cfg = MeshConfig.model_validate(data)
    sim = Sim(cfg, SolverPlanner(cfg, EDGE, "greedy"))
    sim.core = CoordinatorCore(cfg, EDGE)
    return sim


def test_the_core_replans_with_what_a_board_measured() -> None:
    sim = edge_sim()
    sim.start()
    out = sim.feed(ProfileReported(sim.now, sim.ts, report("w2")))
    (measured,) = events(out, "profile_measured")
    assert measured.worker == "w2" and measured.detail["device_classes"] == ["edge"]
    (ask,) = [d for d in out if isinstance(d, RequestPlan)]
    assert ask.request.reason == "profile_measured"
    assert ask.request.catalog is not None
    assert edge_profile(ask.request.catalog, LITE0)[0] == 4.0
    # The judge of slowness compares with the measured figures from now on.
    assert sim.core.pace.catalog is ask.request.catalog
    # The same report again (a reconnect's republish) changes nothing.
    again = sim.feed(ProfileReported(sim.now, sim.ts, report("w2")))
    assert not events(again, "profile_measured")
    assert not [d for d in again if isinstance(d, RequestPlan)]
    sim.run_until(lambda o: events(o, "replan"), 2.0, "the re-plan")


def test_a_report_before_the_first_plan_is_planned_with() -> None:
    sim = edge_sim()
    out = sim.feed(ProfileReported(sim.now, sim.ts, report("w1")))
    assert events(out, "profile_measured")
    assert not [d for d in out if isinstance(d, RequestPlan)]  # no plan yet to redo
    first = [d for d in sim.start() if isinstance(d, RequestPlan)]
    assert first and first[0].request.catalog is not None
    assert edge_profile(first[0].request.catalog, LITE0)[0] == 4.0


def test_a_refused_report_is_noted_and_plans_nothing() -> None:
    sim = Sim()  # every worker is of class cpu, measured in the packaged catalog
    sim.start()
    out = sim.feed(ProfileReported(sim.now, sim.ts, report("w1", "cpu")))
    assert not events(out, "profile_measured")
    assert any(getattr(d, "event", "") == "profile_refused" for d in out)
