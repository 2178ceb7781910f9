"""A flood of idle connections without credentials costs the embedded broker nothing that
matters: one source address holds at most MAX_UNADMITTED_PER_SOURCE sockets before its CONNECT
(the rest are closed at once), and a device on another loopback address gets in meanwhile."""

from __future__ import annotations

import time
from pathlib import Path

from plugins.brokers import FLOOD_SOCKETS

from broker._amqtt_hooks import MAX_UNADMITTED_PER_SOURCE
from faillite import pki
from faillite.accounts import add_account
from faillite.config import BrokerConfig, TlsConfig, TlsServerConfig
from faillite.identity import Identity
from faillite.tls import client_context
from faillite.topics import Role
from field_kit.brokers import BrokerLauncher
from field_kit.guessing import Flood, login

MESH = "flood"
W1 = Identity(MESH, Role.WORKER, "w1")
CAM1 = Identity(MESH, Role.SENSOR, "cam1")
SOCKETS = FLOOD_SOCKETS


def test_a_flood_from_one_address_leaves_room_for_devices(
    broker_launcher: BrokerLauncher, tmp_path: Path, descriptors: None
) -> None:
    pw, secrets = tmp_path / "passwd", tmp_path / "secrets"
    for who in (W1, CAM1):
        add_account(pw, secrets, who)
    secret = {w: (secrets / f"{w.name}.secret").read_text().strip() for w in (W1, CAM1)}
    ep = broker_launcher.start(
        "amqtt", BrokerConfig(password_file=pw, login_delay_s=0, login_delay_max_s=0), mesh=MESH
    )
    with Flood(ep.host, ep.port, SOCKETS, source="127.0.0.1") as flood:
        held = flood.settle(MAX_UNADMITTED_PER_SOURCE, within_s=10)
        assert held <= MAX_UNADMITTED_PER_SOURCE, f"{held} of {SOCKETS} still open"
        # Another address: in at once. The flooding address itself: its cap is full.
        assert login(ep.host, ep.port, CAM1.name, secret[CAM1], source="127.0.0.2") == 0
        assert login(ep.host, ep.port, W1.name, secret[W1], source="127.0.0.1", timeout=3) < 0
    # The flood gone, the address is welcome again.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if login(ep.host, ep.port, W1.name, secret[W1], source="127.0.0.1") == 0:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the flooding address stayed locked out after the flood")
    log = broker_launcher.process(ep).log_path.read_text()
    assert "too_many_unadmitted" in log
    assert log.count("too_many_unadmitted") < 20  # one line per source and window, not per socket


def test_a_flood_of_handshakes_never_finished_leaves_room_for_devices(
    broker_launcher: BrokerLauncher, tmp_path: Path, descriptors: None
) -> None:
    """TLS: a socket that never finishes its handshake counts against its source from the
    accept (the handshake is the broker's own, :class:`broker._tls_gate.TlsGate`), so 1000
    sockets that never send a ClientHello hold at most the cap; a device elsewhere gets in."""
    ca = tmp_path / "ca"
    pki.init_ca(ca)
    pki.issue_server(ca, "broker", ["127.0.0.1"])
    tls = TlsConfig(
        ca_certs=ca / pki.CA_CERT,
        server=TlsServerConfig(certfile=ca / "broker.crt", keyfile=ca / "broker.key"),
    )
    # A long handshake timeout: what closes the flood here must be the cap, not the timeout.
    ep = broker_launcher.start("amqtt", BrokerConfig(tls=tls, connect_timeout_s=120), mesh=MESH)
    device = client_context(TlsConfig(ca_certs=ca / pki.CA_CERT))
    with Flood(ep.host, ep.port, SOCKETS, source="127.0.0.2") as flood:
        held = flood.settle(MAX_UNADMITTED_PER_SOURCE, within_s=10)
        assert held <= MAX_UNADMITTED_PER_SOURCE, f"{held} of {SOCKETS} still open"
        t0 = time.monotonic()
        assert login(ep.host, ep.port, CAM1.name, "", source="127.0.0.1", tls=device) == 0
        assert time.monotonic() - t0 < 5
    log = broker_launcher.process(ep).log_path.read_text()
    assert '"stage":"handshake"' in log.replace(" ", "")
