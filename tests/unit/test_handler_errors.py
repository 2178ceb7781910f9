"""A handler that raises is counted every time and logged rate-limited (no broker: messages are
dispatched through the client's paho callbacks directly)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import paho.mqtt.client as paho
from structlog.testing import capture_logs

from faillite import messages
from faillite.config import BrokerConfig
from faillite.mqtt import HandlerErrorLog, Inbound, MeshClient, Raw
from faillite.topics import APP_RESULTS, Role, Topics

T = Topics("demo")


def _msg(topic: str, payload: bytes) -> paho.MQTTMessage:
    m = paho.MQTTMessage(topic=topic.encode())
    m.payload = payload
    return m


def _deliver(client: MeshClient, topic: str, payload: bytes) -> None:
    """What paho's network thread does with an incoming PUBLISH."""
    client._client._handle_on_message(_msg(topic, payload))


def _errors(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"].startswith("handler_error")]


def _result(n: int) -> bytes:
    r = messages.Result(
        app="gate-watch",
        seq=n,
        sensor="cam-gate",
        capture_ts=1.0,
        ts=1.1,
        worker="w1",
        incarnation="i1",
        variant="efficientnet_lite0",
        generation=1,
        latency=messages.Latency(0.1, 1.0, 1.0, 20.0, 30.0),
        top=(),
    )
    return messages.encode(r)


def test_a_flood_of_raising_messages_does_not_flood_the_log() -> None:
    client = MeshClient("t", BrokerConfig())
    calls = 0

    def boom(_inb: Inbound[messages.Result]) -> None:
        nonlocal calls
        calls += 1
        raise ValueError(f"bad result {calls}")

    client.subscribe_json(T.filter(APP_RESULTS), messages.Result, boom, qos=0)
    topic = T.app_results("gate-watch", "w1")
    with capture_logs() as logs:
        for i in range(1000):
            _deliver(client, topic, _result(i))
    assert calls == 1000 and client.handler_errors == 1000
    errors = _errors(logs)
    assert 1 <= len(errors) <= 3, errors  # the first with its traceback; a slow run: a line/s
    first = errors[0]
    assert first["event"] == "handler_error" and first["log_level"] == "error"
    assert first["exc_info"] is True  # log.exception: the traceback is rendered
    assert first["filter"] == "faillite/demo/apps/+/results/+" and first["topic"] == topic
    assert first["error"] == "builtins.ValueError"

    # At stop, what went unlogged is said once, with its count.
    with capture_logs() as logs:
        client.handler_error_log.flush()
    (line,) = _errors(logs)
    assert line["event"] == "handler_errors_suppressed"
    unlogged = 1000 - len(errors)
    assert line["suppressed"] + sum(e["suppressed_since_last"] for e in errors) == unlogged


def test_raw_handlers_too_and_each_filter_apart() -> None:
    client = MeshClient("t", BrokerConfig())

    def raw_boom(_raw: Raw) -> None:
        raise RuntimeError("frame handler")

    def status_boom(_inb: Inbound[messages.Event]) -> None:
        raise KeyError("x")

    client.subscribe("faillite/demo/sensors/+/frames", raw_boom, qos=0)
    client.subscribe_json(T.events, messages.Event, status_boom, qos=0)
    ev = messages.encode(messages.Event(kind="k", ts=1.0, source="coordinator/main"))
    with capture_logs() as logs:
        for _ in range(500):
            _deliver(client, "faillite/demo/sensors/cam1/frames", b"\x00" * 40)
            _deliver(client, T.events_of(Role.COORDINATOR, "main"), ev)
    assert client.handler_errors == 1000
    errors = _errors(logs)
    assert len(errors) <= 6
    assert {e["filter"] for e in errors if e.get("exc_info")} == {
        "faillite/demo/sensors/+/frames",
        T.events,
    }


def test_limiter_first_of_each_type_then_a_line_per_second() -> None:
    now = [0.0]
    lim = HandlerErrorLog(every_s=1.0, clock=lambda: now[0])

    def fail(exc: Exception) -> None:
        raise exc

    def raise_and_report(exc: Exception, topic_filter: str = "f") -> None:
        try:
            fail(exc)
        except Exception as caught:
            lim.report(topic_filter, "t", caught)

    with capture_logs() as logs:
        for _ in range(100):
            raise_and_report(ValueError("v"))  # 1 line with traceback, 99 suppressed
        raise_and_report(KeyError("k"))  # a new type: its traceback, at once
        now[0] = 0.5
        raise_and_report(ValueError("v"))  # suppressed
        now[0] = 1.2
        raise_and_report(ValueError("v"))  # one line, no traceback, with the count
        raise_and_report(ValueError("v"))  # suppressed again
        now[0] = 5.0
        raise_and_report(ValueError("v"), "other")  # another filter: its own first
        lim.flush()
        lim.flush()  # nothing left: no line
    got = [
        (e["event"], e.get("filter"), "exc_info" in e, e.get("suppressed_since_last")) for e in logs
    ]
    assert got == [
        ("handler_error", "f", True, 0),
        ("handler_error", "f", True, 99),
        ("handler_error", "f", False, 1),
        ("handler_error", "other", True, 0),
        ("handler_errors_suppressed", "f", False, None),
    ]
    assert logs[-1]["suppressed"] == 1
