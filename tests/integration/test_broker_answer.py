"""Asking the broker whether it is still there: the answer a last-will waits for.

A stopping broker publishes the last-will of every client it drops, then drops us; the
coordinator believes a last-will once the broker answers a ping sent after it (``ask_broker``,
``on_answer``). Against both real brokers.
"""

from __future__ import annotations

import threading

from faillite.config import BrokerConfig
from faillite.identity import Identity
from faillite.mqtt import MeshClient
from faillite.topics import Role
from field_kit.brokers import BrokerEndpoint


def test_the_broker_answers_when_asked(broker: BrokerEndpoint) -> None:
    c = MeshClient(
        Identity("answer", Role.ADMIN, "asker").name,
        BrokerConfig(host=broker.host, port=broker.port),
    )
    answered = threading.Event()
    c.on_answer(answered.set)
    c.start(connect_timeout=10)
    try:
        c.ask_broker()
        assert answered.wait(5), "no answer to the ping"
        answered.clear()
        c.ask_broker()  # and again: each question gets its answer
        assert answered.wait(5), "no answer to the second ping"
    finally:
        c.stop()
