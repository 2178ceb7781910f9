"""Issue 11, item 3: a kit reporting to a rear site over a WiFi-like link.

Two real Mosquitto brokers in two network namespaces (the kit's, with accounts and the
generated ACL; the rear site's, with its own accounts), a WiFi-like link between them
(``Lan.wifi``), and ``faillite uplink`` as a real process on the kit's node. A feeder on the
kit publishes results and worker statuses; recorders on both brokers write what arrives.

Checked: live results arrive upstream under the rear prefix; with the link cut the uplink's
queue fills, the oldest results are dropped and the count it reports matches what never
arrived; after the heal the newest arrive and the retained worker statuses upstream converge
on their latest values; a message published on the rear broker under a topic the kit does not
allow never reaches the kit broker (and the uplink's kit account could not write it anyway),
an allowed one does, and an allowed one that is too large does not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from field_kit.brokers import mosquitto_binary
from field_kit.drill.netns import Impairment, root_problem
from field_kit.procs import wait_until
from field_kit.uplink_rig import MESH, RearRig, RigSettings, read_records

PREFIX = f"rear/{MESH}"
STATUS = f"{PREFIX}/uplink/rear/status"
BOUND = 50
INFLIGHT = 8
CUT_RESULTS = 200

pytestmark = pytest.mark.slow


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[RearRig]:
    problem = root_problem()
    if problem is not None:
        pytest.skip(problem)
    if mosquitto_binary() is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    settings = RigSettings(
        impairment=Impairment(delay_ms=20, jitter_ms=10, loss_pct=1.0),
        max_queued_messages=BOUND,
        max_inflight=INFLIGHT,
        down=("apps/+/tasking",),
        max_down_bytes=1024,
    )
    with RearRig(tmp_path, settings) as r:
        yield r


def _wait(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    value = wait_until(cond, timeout, 0.1)
    if not value:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
    return value


def _seqs(records: list[dict[str, Any]], tag: str) -> list[int]:
    out = []
    for r in records:
        if r["topic"] == f"{PREFIX}/apps/a1/results/w1":
            p = orjson.loads(r["payload"])
            if p["tag"] == tag:
                out.append(p["seq"])
    return out


def _status(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The uplink's last live status (its last-will, from a connection the cut killed, may
    come after it: the next status corrects that on the rear site)."""
    mine = [orjson.loads(r["payload"]) for r in records if r["topic"] == STATUS]
    online = [s for s in mine if s["state"] == "online"]
    return online[-1] if online else None


def test_uplink_carries_the_kit_up_bounded_and_lets_down_only_what_the_kit_allows(
    rig: RearRig,
) -> None:
    rear = rig.record("rear", "ops", f"{PREFIX}/#")
    kit = rig.record("kit", "watch", f"faillite/{MESH}/#")
    _wait(lambda: _status(read_records(rear)), 20, "the uplink's status on the rear broker")

    # Live: every result arrives, under the rear prefix, with the link's delay.
    rig.feed("--results", "20", "--rate", "50", "--tag", "live", "--status", "w1=online")
    got = _wait(
        lambda: len(set(_seqs(read_records(rear), "live"))) == 20, 20, "the live results upstream"
    )
    assert got
    assert not any(r["topic"].startswith("faillite/") for r in read_records(rear))

    # Cut: the queue fills past its bound and the oldest results go.
    rig.cut()
    rig.feed("--results", str(CUT_RESULTS), "--rate", "200", "--tag", "cut")
    # Queued behind a full in-flight window: "back" replaces "offline" before either goes up.
    rig.feed("--status", "w1=offline")
    rig.feed("--status", "w1=back", "--status", "w2=up")
    assert not _seqs(read_records(rear), "cut"), "results went up over a cut link"
    # The uplink notices the dead link (its probe of a silent broker), then the cut lasts on.
    _wait(lambda: "uplink_rear_lost" in rig.uplink_log(), 20, "the uplink to notice the cut")
    time.sleep(1.5)
    rig.heal()

    def settled() -> dict[str, Any] | None:
        st = _status(read_records(rear))
        if st is None or not st["rear_connected"] or st["queued"] or st["inflight"]:
            return None
        return st if st["accepted"] >= 20 + CUT_RESULTS else None

    status = _wait(settled, 60, "the uplink to drain after the heal")
    time.sleep(1.0)  # the last acknowledged messages reach the recorder
    arrived = set(_seqs(read_records(rear), "cut"))
    missing = set(range(CUT_RESULTS)) - arrived
    # Only what was already on the wire when the link went down may be older than the tail.
    tail = sorted(arrived - set(range(INFLIGHT)))
    assert tail and tail[-1] == CUT_RESULTS - 1, "the newest result never arrived"
    assert tail == list(range(tail[0], CUT_RESULTS)), "the queue kept a gap, not the newest"
    assert len(tail) >= BOUND - 10
    assert missing and max(missing) < tail[0], "a newer result was dropped before an older one"
    assert status["dropped_by_kind"].get("results") == len(missing), (status, len(missing))
    assert status["dropped"] == len(missing)
    assert status["high_water"] == BOUND
    assert status["coalesced"] >= 1  # w1's "offline" replaced by "back" while queued
    assert status["last_outage_s"] is not None and status["last_outage_s"] > 1.0

    # Retained state upstream converged on the latest values, retained.
    snap = {s["topic"]: orjson.loads(s["payload"]) for s in rig.snapshot(f"{PREFIX}/workers/#")}
    assert snap[f"{PREFIX}/workers/w1/status"]["state"] == "back"
    assert snap[f"{PREFIX}/workers/w2/status"]["state"] == "up"

    # Down: only the allowed topic reaches the kit, within its size limit.
    rig.publish_rear(f"{PREFIX}/workers/w1/assignment", '{"steer": true}', retain=True)
    rig.publish_rear(f"{PREFIX}/coordinator/status", '{"leader": "rear"}')
    rig.publish_rear(f"{PREFIX}/apps/a2/tasking", "x" * 2000)  # allowed, too large
    rig.publish_rear(f"{PREFIX}/apps/a1/tasking", '{"task": "look-north"}')

    def kit_topics() -> list[str]:
        return [r["topic"] for r in read_records(kit)]

    _wait(lambda: f"faillite/{MESH}/apps/a1/tasking" in kit_topics(), 20, "the allowed message")
    # The uplink's own kit account cannot write a steering topic either (the generated ACL):
    # its probe name has the same secret and rights, without taking the uplink's session.
    rig.run_client_as_uplink("publish", "--topic", f"faillite/{MESH}/workers/w1/assignment",
                             "--payload", '{"steer": "acl"}')  # fmt: skip
    rig.run_client_as_uplink("publish", "--topic", f"faillite/{MESH}/apps/a2/tasking",
                             "--payload", "acl-ok")  # fmt: skip
    _wait(lambda: f"faillite/{MESH}/apps/a2/tasking" in kit_topics(), 20, "the ACL's control")
    time.sleep(1.0)
    topics = kit_topics()
    assert f"faillite/{MESH}/workers/w1/assignment" not in topics
    assert f"faillite/{MESH}/coordinator/status" not in topics
    tasking = [r for r in read_records(kit) if r["topic"] == f"faillite/{MESH}/apps/a2/tasking"]
    assert [r["payload"] for r in tasking] == ["acl-ok"]  # the 2000-byte one never came down

    final = _wait(
        lambda: (s := _status(read_records(rear))) and s["down_passed"] >= 1 and s,
        10,
        "the uplink's down counts",
    )
    assert final["down_passed"] == 1
    assert final["down_refused"].get("too_large") == 1
    assert final["down_refused"].get("not_allowed", 0) == 0  # never even subscribed
