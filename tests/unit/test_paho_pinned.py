"""The two private parts of paho-mqtt that faillite.mqtt relies on, checked against the
installed paho: a paho upgrade that changes them fails here, not in a kit whose broker died.

``MeshClient`` pings a quiet broker (``_send_pingreq``) and measures the quiet from paho's
``_last_bytes_received`` (any bytes read from the broker, a PINGRESP included)."""

from __future__ import annotations

import inspect

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def test_last_bytes_received_is_a_monotonic_time_paho_updates_on_every_read() -> None:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="pin")
    assert isinstance(c._last_bytes_received, float)
    src = inspect.getsource(paho.Client)
    assert src.count("self._last_bytes_received = time_func()") >= 2
    assert paho.time_func is paho.time.monotonic or "monotonic" in inspect.getsource(
        paho.time_func
    )


def test_send_pingreq_takes_no_argument_and_marks_the_ping() -> None:
    sig = inspect.signature(paho.Client._send_pingreq)
    assert list(sig.parameters) == ["self"]
    assert "self._ping_t = time_func()" in inspect.getsource(paho.Client._send_pingreq)
