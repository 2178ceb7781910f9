"""Presence: a worker's births are sealed, and only its own offline twins unseal them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from faillite import handover, messages
from faillite.mqtt import Inbound
from faillite.presence import Presence, unseals, will_seal

TOPIC = "faillite/demo/workers/w1/status"


def _worker(ts: float) -> messages.WorkerStatus:
    return messages.WorkerStatus(worker="w1", incarnation="abc123", state="online", ts=ts)


def test_each_connection_seals_its_birth_with_a_secret_only_its_will_reveals() -> None:
    p = Presence(TOPIC, messages.WorkerStatus, _worker)
    will = messages.decode(messages.WorkerStatus, p.prepare().payload)
    birth = p.birth
    assert birth is not None and len(birth.will_seal) == 64
    assert (will.state, will.reason, will.will_seal) == ("offline", "lost", "")
    assert unseals(birth.will_seal, will.will_key)
    assert will.will_key not in messages.encode(birth).decode()  # the birth does not leak it
    p.announce()  # a birth made again on the same connection: the same will, the same seal
    assert p.birth is not None and p.birth.will_seal == birth.will_seal
    again = messages.decode(messages.WorkerStatus, p.prepare().payload)  # a reconnect
    assert p.birth is not None and p.birth.will_seal != birth.will_seal
    assert unseals(p.birth.will_seal, again.will_key)
    assert not unseals(p.birth.will_seal, will.will_key)


def test_unseals_refuses_what_is_not_the_key() -> None:
    key = "ab" * 16
    assert unseals(will_seal(key), key)
    assert not unseals(will_seal(key), "ac" * 16)
    assert not unseals(will_seal(key), "")
    assert not unseals(will_seal(key), "not hex")
    assert not unseals("", key)


def test_a_status_without_a_seal_field_is_left_alone() -> None:
    def sensor(ts: float) -> messages.SensorStatus:
        return messages.SensorStatus(sensor="cam", state="online", incarnation="i1", ts=ts)

    p = Presence("faillite/demo/sensors/cam/status", messages.SensorStatus, sensor)
    will = messages.decode(messages.SensorStatus, p.prepare().payload)
    assert (will.state, will.reason) == ("offline", "lost")


# -- handover keys: a live process gives way only to a successor on its own board --------------


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FAILLITE_RUNTIME_DIR", str(tmp_path / "run"))
    return tmp_path / "run"


def _live(inc: str = "abc123") -> Presence[messages.WorkerStatus]:
    p = Presence(TOPIC, messages.WorkerStatus, lambda ts: replace(_worker(ts), incarnation=inc))
    p.prepare()
    p.arrive()  # no client: publishes nothing, keeps its handover key
    return p


def _newer(p: Presence[messages.WorkerStatus], key: str) -> Inbound[messages.WorkerStatus]:
    assert p.birth is not None
    st = replace(p.birth, incarnation="thief1", ts=p.birth.ts + 1, handover_key=key)
    return Inbound(TOPIC, st, retain=False)


def test_a_newer_birth_without_the_handover_key_is_refused(runtime: Path) -> None:
    p = _live()
    assert p.birth is not None and len(p.birth.handover_seal) == 64
    p._on_status(_newer(p, ""))
    p._on_status(_newer(p, "ab" * 16))
    assert p.replaced is None and p.takeovers_refused == 2


def test_a_successor_on_the_same_board_finds_the_key_and_the_live_process_gives_way(
    runtime: Path,
) -> None:
    p = _live()
    assert p.birth is not None
    key, _looked = handover.find(TOPIC, p.birth.incarnation)
    assert key is not None and unseals(p.birth.handover_seal, key)
    assert (runtime / f"{TOPIC.replace('/', '.')}.handover").stat().st_mode & 0o777 == 0o600
    assert key not in messages.encode(p.birth).decode()  # its births never reveal it
    p._on_status(_newer(p, key))
    assert p.replaced is not None and p.takeovers_refused == 0
    assert handover.find(TOPIC, p.birth.incarnation)[0] is None  # gone with it


def test_a_key_file_names_its_incarnation_and_a_successors_is_not_dropped(runtime: Path) -> None:
    path = handover.keep(TOPIC, "old", "aa" * 16)
    assert path is not None and handover.find(TOPIC, "other")[0] is None
    handover.keep(TOPIC, "new", "bb" * 16)  # the successor's, written over it
    handover.drop(path, "old")  # the predecessor leaving late
    assert handover.find(TOPIC, "new")[0] == "bb" * 16
    handover.drop(path, "new")
    assert not path.exists()
