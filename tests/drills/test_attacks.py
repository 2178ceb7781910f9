"""Attack drills: every attack case (``field_kit/drill/attacks.py``, and on access itself
``field_kit/drill/access_attacks.py``) in its short form on both brokers (where the case runs
there and the brokers' part differs), on a mesh with one account per device, plus the pieces
they are built of.

Each case attacks with a stolen device secret and passes only if the broker refused, or the
mesh ignored, every forged message: every app served throughout (no gap longer than one
failover), nobody suspected or failed over, nothing forged left in the retained state, and the
fault cases' invariants (recovered, single serving, no crash, nothing retained stale).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from faillite import envelope, messages
from faillite.compat import python_module
from faillite.topics import Topics
from field_kit.brokers import BROKER_KINDS, mosquitto_binary
from field_kit.drill import attacks
from field_kit.drill.access_attacks import ACCESS_ATTACKS
from field_kit.drill.analysis import Recording
from field_kit.drill.attacks import (
    ATTACKS,
    FORGED_SEQ,
    AttackLog,
    image_bomb,
    scan_bomb,
)
from field_kit.drill.cases import DrillOptions
from field_kit.drill.own_secret import OUTCOME_ATTACKS
from field_kit.drill.report import write_report
from field_kit.drill.runner import CASES, run_case

INVARIANTS = {
    "converged",
    "recovered",
    "single_serving",
    "no_stale_retained",
    "no_crash",
    "served_throughout",
    "no_failover",
    "retained_state_intact",
}
OWN_CHECKS = {
    "CLIENT_ID_HIJACK": {"session_kept", "no_forged_will", "served_by_its_worker"},
    "IMPERSONATED_WORKER": {
        "served_by_its_worker",
        "victim_birth_retained",
        "route_filter_refuses_forgeries",
    },
    "IMPERSONATED_CAMERA": {"results_keep_their_class"},
    "IMAGE_BOMB": {"bombs_refused_unread"},
    "SCAN_BOMB": {"bombs_refused_unread"},
    "FORGED_TERM": {
        "served_by_its_worker",
        "forged_term_refused",
        "leader_kept",
        "restarted_coordinator_leads",
    },
    "FORGED_OFFLINE": {"forged_offline_refused"},
    "FORGED_EVENTS": {"no_forged_event_shown"},
    "RETAINED_FLOOD": {"births_retained", "restarted_coordinator_sees_all", "retained_bounded"},
    "CONNECTION_FLOOD": {"flood_capped", "device_logs_in_during_flood"},
    "REVOKED_WORKER": {"revoked_out_at_once", "revoked_stays_out", "only_the_revoked_failed_over"},
    "SILENT_THIEF": {"judged_on_outcomes", "thief_kept_out", "only_the_victim_failed_over"},
    "FORGED_SUCCESSOR": {"successor_refused", "victim_birth_retained"},
}
# The revoked worker and the one whose place a thief took are meant to fail over (that one
# only): their cases check that instead.
FAILS_OVER = {"REVOKED_WORKER": "no_failover", "SILENT_THIEF": "no_failover"}
# What the per-identity ACL must refuse, whatever the broker: wills on another device's status,
# the other camera's frames, the victim's topics written with another worker's secret, a
# worker's writes on the coordinator's topics, other workers' statuses and made-up routes.
REFUSED_AT_LEAST = {
    "CLIENT_ID_HIJACK": 4,
    "IMPERSONATED_WORKER": 22,
    "IMPERSONATED_CAMERA": 24,
    "IMAGE_BOMB": 0,
    "SCAN_BOMB": 0,
    "FORGED_TERM": 2,
    "FORGED_OFFLINE": 0,  # a coordinator may write a worker's status: its obituary
    "FORGED_EVENTS": 10,  # the leader's events topic and the old shared one
    "RETAINED_FLOOD": 2000,
    "CONNECTION_FLOOD": 900,  # sockets closed at once past the address's cap of 32
    "REVOKED_WORKER": 5,  # every login with the revoked secret
    "SILENT_THIEF": 0,  # its own topics, its own secret: what refuses it is the outcome
    "FORGED_SUCCESSOR": 0,  # its own status: what refuses it is the handover key
}
EVERY_ATTACK = {**ATTACKS, **ACCESS_ATTACKS, **OUTCOME_ATTACKS}
WITHOUT_CREDENTIALS = {"CONNECTION_FLOOD"}  # nothing stolen: sockets from anyone
# Attacks whose every message the brokers deliver alike (a camera's frames on its own topic, a
# coordinator account's writes on workers' statuses, which both ACLs allow): what refuses them
# is the mesh, so CI runs them on one broker (`faillite drill NAME --broker mosquitto` runs
# them on the other; docs/drills/attacks-* hold both).
BROKER_AGNOSTIC = {"IMAGE_BOMB", "SCAN_BOMB", "FORGED_OFFLINE", "FORGED_SUCCESSOR"}


# -- the attacks, short form, on both brokers ----------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("broker", BROKER_KINDS)
@pytest.mark.parametrize("name", list(EVERY_ATTACK))
def test_attack_is_refused_or_ignored(
    name: str, broker: str, tmp_path: Path, models_dir: Path
) -> None:
    if broker == "mosquitto" and mosquitto_binary() is None:
        pytest.skip("mosquitto binary not found: apt-get install mosquitto (CI installs it)")
    if broker != "amqtt" and name in BROKER_AGNOSTIC:
        pytest.skip(f"{name} never reaches what differs between brokers (run: --broker {broker})")
    case = EVERY_ATTACK[name]()
    opts = DrillOptions(broker=broker, short=True)
    if (why := case.why_not_on(opts)) is not None:
        pytest.skip(why)
    result = run_case(case, opts, tmp_path, models_dir)
    failed = [f"{c['name']}: {c['detail']}" for c in result["checks"] if not c["ok"]]
    assert result["status"] == "passed", "\n".join(failed) + "\n" + result.get("error", "")
    names = {c["name"] for c in result["checks"]}
    assert (INVARIANTS - {FAILS_OVER.get(name, "")}) | OWN_CHECKS[name] <= names
    if name == "RETAINED_FLOOD" and broker == "amqtt":
        assert "caps_counted" in names
    attack = result["metrics"]["attack"]
    assert attack["attempted"] > 0 and (attack["thieves"] or name in WITHOUT_CREDENTIALS)
    assert attack["refused"] >= REFUSED_AT_LEAST[name]
    for a in attack["attempts"]:
        assert a["attempted"] == a["refused"] + a["delivered"], a
        if a["delivered"]:  # whatever the broker let through, the mesh ignored, counted
            assert a["ignored"] is not None and a["ignored"] >= a["delivered"], a
    assert max(result["metrics"]["service_gap_ms"].values()) < case.gap_bound_ms
    # No process of the drill outlives it.
    out = subprocess.run(["pgrep", "-f", result["logs"].rsplit("/", 2)[0]], capture_output=True)
    assert out.stdout == b""


def test_attack_cases_are_listed_as_such() -> None:
    out = subprocess.run(
        [*python_module("faillite"), "drill", "--list"], capture_output=True, text=True
    )
    assert out.returncode == 0
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}
    for name, cls in EVERY_ATTACK.items():
        assert "[attack]" in lines[name]
        assert CASES[name] is cls
        assert cls().spec(DrillOptions()).accounts


# -- the pieces ----------------------------------------------------------------------------


def test_image_bomb_declares_a_huge_image_and_is_refused_unread() -> None:
    bomb = image_bomb()
    assert envelope.read_jpeg_header(bomb) == (32767, 32767, 3)
    assert len(bomb) < 1000
    frame = envelope.unpack(
        envelope.pack(bomb, seq=FORGED_SEQ, capture_ns=0, width=640, height=480),
        max_bytes=1 << 21,
    )
    with pytest.raises(envelope.FrameError) as info:
        envelope.check_image(frame, max_pixels=640 * 480)
    assert info.value.reason == "image_too_large"


def test_scan_bomb_is_a_real_decodable_jpeg_of_its_size_and_refused_unread() -> None:
    """What libjpeg would spend on it is not timed here (bench/frame_check.py does, side by
    side with a camera's frame); that it decodes, and is refused before, is."""
    import cv2
    import numpy as np

    small = scan_bomb(64, 48, max_bytes=6000)  # few enough scans to decode in a test
    assert envelope.read_jpeg_header(small) == (64, 48, 3)
    assert cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_COLOR).shape == (48, 64, 3)
    bomb = scan_bomb()
    assert 2**20 < len(bomb) <= 2 * 2**20 and bomb.count(b"\xff\xda") > 100_000
    frame = envelope.unpack(
        envelope.pack(bomb, seq=FORGED_SEQ, capture_ns=0, width=640, height=480),
        max_bytes=1 << 21,
    )
    with pytest.raises(envelope.FrameError) as info:
        envelope.check_image(frame, max_pixels=640 * 480)
    assert info.value.reason == "costly_image" and "scans" in str(info.value)


def _result(app: str, worker: str, ts: float) -> messages.Result:
    return messages.Result(
        app=app,
        seq=1,
        sensor="cam1",
        capture_ts=ts - 0.03,
        ts=ts,
        worker=worker,
        incarnation="i",
        variant="efficientnet_lite0",
        generation=1,
        latency=messages.Latency(0.0, 0.0, 0.0, 0.0, 0.0),
        top=(),
    )


def test_recording_believes_the_topic_not_the_payload() -> None:
    """A result or heartbeat whose payload names another worker than its topic (a stolen
    worker secret writing on its own topics) is nobody's: the analysis leaves it out."""
    t = Topics("m")
    hb = messages.Heartbeat(worker="w1", incarnation="i", seq=5, ts=1.0)
    raw = [
        (0.1, t.app_results("a1", "w1"), messages.encode(_result("a1", "w1", 1.0))),
        (0.2, t.app_results("a1", "w3"), messages.encode(_result("a1", "w1", 1.1))),
        (0.3, t.app_results("a2", "w3"), messages.encode(_result("a1", "w3", 1.2))),
        (0.4, t.worker_heartbeat("w1"), messages.encode(hb)),
        (0.5, t.worker_heartbeat("w3"), messages.encode(hb)),
    ]
    rec = Recording.of(SimpleNamespace(raw=lambda since=0.0: raw))  # type: ignore[arg-type]
    assert [(r.app, r.worker) for r in rec.results["a1"]] == [("a1", "w1")]
    assert list(rec.heartbeats) == ["w1"] and len(rec.heartbeats["w1"]) == 1
    assert rec.wrong_topic == 3


def test_attack_log_counts_what_the_watcher_saw() -> None:
    log = AttackLog()
    for i in range(3):
        log.add("frames", "t/frames", b"f%d" % i)
    log.add("status", "t/status", b"s")
    seen = {("t/frames", attacks._digest(b"f1")), ("t/other", attacks._digest(b"s"))}
    assert log.count_delivered(SimpleNamespace(seen=seen)) == 1  # type: ignore[arg-type]
    log.attempt("frames").ignored = 1
    d = log.as_dict()
    assert (d["attempted"], d["refused"], d["ignored"]) == (4, 3, 1)
    frames, status = d["attempts"]
    assert (frames["attempted"], frames["refused"], frames["delivered"]) == (3, 2, 1)
    assert status["delivered"] == 0 and status["ignored"] is None  # nothing to ignore


def test_report_lists_each_attack(tmp_path: Path) -> None:
    attack: dict[str, Any] = {
        "thieves": {"m.worker.w3": "m.worker.w3.probe"},
        "attempts": [
            {
                "what": "births of the other workers (retained)",
                "attempted": 1000,
                "refused": 1000,
                "delivered": 0,
                "ignored": None,
                "how": "refused by the broker (ACL)",
            },
            {
                "what": "results of made-up apps | under its own id",
                "attempted": 1000,
                "refused": 0,
                "delivered": 1000,
                "ignored": 1000,
                "how": "delivered live",
            },
        ],
        "attempted": 2000,
        "refused": 1000,
        "ignored": 1000,
    }
    result = {
        "case": "RETAINED_FLOOD",
        "summary": "a flood",
        "status": "passed",
        "checks": [{"name": "births_retained", "ok": True, "detail": "ok"}],
        "metrics": {"attack": attack},
    }
    write_report([result], tmp_path, DrillOptions(broker="mosquitto"))
    md = (tmp_path / "report.md").read_text()
    assert "## Attacks" in md and "### RETAINED_FLOOD (passed)" in md
    assert "| births of the other workers (retained) | 1000 | 1000 | 0 | – |" in md
    assert "made-up apps \\| under its own id | 1000 | 0 | 1000 | 1000 |" in md
    assert "attack: 2000 forged, 1000 refused by the broker, 1000 ignored by the mesh" in md
    data = orjson.loads((tmp_path / "drills.json").read_bytes())
    assert data["cases"][0]["metrics"]["attack"]["refused"] == 1000
