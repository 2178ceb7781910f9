"""amqtt code that broker._amqtt_session overrides or relies on, pinned by source hash.

MeshBroker replaces some amqtt methods and calls or is called by others; a change to any of them
upstream may reopen a gap (a live session touched before authentication, a will at the wrong
QoS, a cap bypassed). A failure here is not a bug: re-read the named amqtt method against
``broker/_amqtt_session.py``, adjust the override if needed, then update the hash below.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect

import pytest
from amqtt.broker import Broker
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.protocol.handler import ProtocolHandler
from amqtt.session import Session

from broker._amqtt_session import MeshBroker

AMQTT_VERSION = "0.12.1"

# sha256 of inspect.getsource(...), first 16 hex digits, as in amqtt 0.12.1.
PINNED: dict[str, str] = {
    # overridden by MeshBroker
    "Broker._initialize_client_session": "5dd89158bbe46266",
    "Broker._handle_client_session": "8b1b52a03df9daf5",
    "Broker._authenticate": "4d7db8cc6fe2c3f6",
    "Broker.add_subscription": "07757b63113c395e",
    "Broker.retain_message": "6233eff2618baede",
    "Broker._cleanup_session": "530ae891d9f536cc",
    "Broker._del_subscription": "415f349273b0552d",
    "Broker.shutdown": "800adcdd80ded223",
    "Broker._run_broadcast": "e852128b3e38e04a",
    "Broker._get_handler": "169908c149fded36",
    "Broker._publish_retained_messages_for_subscription": "d6ad257821ba29ef",
    # relied on: what calls the overrides, what they call, the state they share
    "Broker.__init__": "5158ff3ca6493baf",
    "Broker._client_connected": "432b724bc4fb7946",
    "Broker._client_message_loop": "916c4647c3389918",
    "Broker._handle_disconnect": "8c3b8702f3567055",
    "Broker._handle_message_delivery": "89727723da550bed",
    "Broker._handle_subscription": "3dae18afa195209e",
    "Broker._handle_unsubscription": "29253b1b63036d7a",
    "Broker._del_all_subscriptions": "615579810f47d1e0",
    "Broker._session_monitor": "5091fa20cdfdc203",
    "Broker._broadcast_message": "78ad4edb7efb3b72",
    "Broker._stop_handler": "496013328caf21d0",
    "Broker._matches": "c03b25d98f4c0a34",
    "Broker._topic_filtering": "9259ae5e1dd3e20d",
    "BrokerProtocolHandler.init_from_connect": "036dc04c1133a18f",
    "BrokerProtocolHandler.mqtt_connack_authorize": "4e64256ea1f5c73c",
    "BrokerProtocolHandler.handle_connection_closed": "e9c448557a8dab58",
    "BrokerProtocolHandler.handle_disconnect": "63b454d06eab58f8",
    "BrokerProtocolHandler.stop": "70e440da78e7178b",
    "ProtocolHandler.attach": "ff8ecc04c80a9feb",
    "Session._init_states": "63c76988bf4f81ce",
}

_CLASSES: dict[str, type] = {
    "Broker": Broker,
    "BrokerProtocolHandler": BrokerProtocolHandler,
    "ProtocolHandler": ProtocolHandler,
    "Session": Session,
}


def _digest(qualname: str) -> str:
    cls_name, method = qualname.split(".")
    # The class's own attribute: the upstream code, whatever a subclass does.
    source = inspect.getsource(vars(_CLASSES[cls_name])[method])
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def test_amqtt_version() -> None:
    version = importlib.metadata.version("amqtt")
    assert version == AMQTT_VERSION, (
        f"amqtt is {version}; broker/_amqtt_session.py and broker/_amqtt_hooks.py were checked "
        f"against {AMQTT_VERSION}: re-check every pinned method below, then update the pins"
    )


@pytest.mark.parametrize("qualname", sorted(PINNED))
def test_amqtt_method_unchanged(qualname: str) -> None:
    assert _digest(qualname) == PINNED[qualname], (
        f"amqtt's {qualname} changed. MeshBroker (broker/_amqtt_session.py) overrides or relies "
        "on it: re-check the override against the new code (authentication before any session "
        "change, takeover, will QoS, caps), then update its hash in tests/unit/test_amqtt_pinned.py"
    )


def test_every_override_is_pinned() -> None:
    overridden = {
        f"Broker.{name}"
        for name in vars(MeshBroker)
        if not name.startswith("__") and name in vars(Broker)
    }
    missing = overridden - PINNED.keys()
    assert not missing, f"MeshBroker overrides {sorted(missing)}: pin the upstream code here"
