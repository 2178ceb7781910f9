"""The two private parts of paho-mqtt that faillite.mqtt relies on, checked against the
installed paho: a paho upgrade that changes them fails here, not in a kit whose broker died.

``MeshClient`` pings a quiet broker (``_send_pingreq``) and knows the answer came when paho
clears ``_ping_t`` (its PINGRESP handler)."""

from __future__ import annotations

import inspect

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def test_a_pingresp_clears_ping_t() -> None:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="pin")
    assert c._ping_t == 0
    assert "self._ping_t = 0" in inspect.getsource(paho.Client._handle_pingresp)


def test_send_pingreq_takes_no_argument_and_marks_the_ping() -> None:
    sig = inspect.signature(paho.Client._send_pingreq)
    assert list(sig.parameters) == ["self"]
    assert "self._ping_t = time_func()" in inspect.getsource(paho.Client._send_pingreq)
