"""Seconds an app went without results, as ``up`` and ``watch`` count them: the part of each
gap past the outage threshold, unserved, or paused when its route said it was shed."""

from __future__ import annotations

import pytest

from field_kit.observe import AppView


def test_gaps_past_the_threshold_count_as_unserved() -> None:
    v = AppView("a1", last_ts=100.0)
    v.gap(100.5, within=1.0)  # a frame late: nothing
    assert v.unserved_s == 0.0 and v.longest_gap_s == 0.5
    v.last_ts = 100.5
    v.gap(104.0, within=1.0)  # 3.5 s without results: 2.5 s past the threshold
    assert v.unserved_s == pytest.approx(2.5) and v.paused_s == 0.0
    assert v.longest_gap_s == pytest.approx(3.5)


def test_a_gap_while_the_route_said_shed_is_a_pause() -> None:
    v = AppView("a2", last_ts=100.0)
    v.shed_seen_at = 101.0  # the coordinator paused it during the gap
    v.gap(110.0, within=1.0)
    assert v.paused_s == pytest.approx(9.0) and v.unserved_s == 0.0


def test_an_app_never_served_has_no_gap_to_count() -> None:
    v = AppView("a3")
    v.gap(50.0, within=1.0)
    assert v.unserved_s == 0.0 and v.longest_gap_s == 0.0
