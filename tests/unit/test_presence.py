"""Presence: a worker's births are sealed, and only its own offline twins unseal them."""

from __future__ import annotations

from faillite import messages
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
