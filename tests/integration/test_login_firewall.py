"""A Mosquitto host slows password guessing down with the nftables rules generated beside its
config (Mosquitto 2.0 has no setting for it; the embedded broker does it itself).

In a network namespace made for it (root, ``nft``, ``ip`` and Mosquitto needed; skipped
otherwise): Mosquitto with one account per device, a guesser on 127.0.0.1 for 2 s without the
rules and for 4 s with them, side by side; a device on 127.0.0.2 logs in at once meanwhile.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from faillite.accounts import add_account
from faillite.config import BrokerConfig
from faillite.identity import Identity
from faillite.topics import Role
from field_kit.guessing import firewall_problem, firewalled_mosquitto, flooded_mosquitto

MESH = "fw"
W1 = Identity(MESH, Role.WORKER, "w1")
CAM1 = Identity(MESH, Role.SENSOR, "cam1")
RATE, BURST = 5, 10

pytestmark = pytest.mark.skipif(firewall_problem() is not None, reason=firewall_problem() or "")


def test_the_generated_firewall_caps_guesses_per_source(tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    for who in (W1, CAM1):
        add_account(pw, tmp_path / "secrets", who)
    secret = (tmp_path / "secrets" / f"{CAM1.name}.secret").read_text().strip()
    cfg = BrokerConfig(password_file=pw, connects_per_source_s=RATE, connect_burst_per_source=BURST)
    run = firewalled_mosquitto(
        cfg, MESH, tmp_path, victim=W1.name, device=(CAM1.name, secret), seconds=(2.0, 4.0)
    )
    rules = (tmp_path / "mosquitto" / "nftables.conf").read_text()
    assert f"limit rate over {RATE}/second burst {BURST} packets" in rules
    assert run.without["answered"] > 10 * (RATE * 4 + BURST), run  # fast without the rules
    # At most the rate over 4 s plus one burst.
    assert run.with_rules["answered"] <= RATE * 4 + BURST + 5, run
    assert run.with_rules["accepted"] == 0 and run.without["accepted"] == 0
    assert run.device_rc == 0 and run.device_s < 1.0, run  # another address: at once


def test_the_generated_firewall_caps_open_connections_per_source(tmp_path: Path) -> None:
    """Mosquitto never times out a socket that sends no CONNECT: 1000 of them from one address
    would fill its max_connections for good. With the rules one address holds at most
    ``max_connections_per_source``; a device on another address gets in meanwhile."""
    pw = tmp_path / "passwd"
    add_account(pw, tmp_path / "secrets", CAM1)
    secret = (tmp_path / "secrets" / f"{CAM1.name}.secret").read_text().strip()
    cap = 16
    cfg = BrokerConfig(
        password_file=pw,
        connects_per_source_s=10_000,  # the open-connection cap alone
        connect_burst_per_source=100_000,
        max_connections_per_source=cap,
        max_connections=500,
    )
    run = flooded_mosquitto(cfg, MESH, tmp_path, device=(CAM1.name, secret), sockets=1000)
    rules = (tmp_path / "mosquitto" / "nftables.conf").read_text()
    assert f"ct count over {cap}" in rules
    assert run["held"] <= cap, run
    assert run["failed"] >= 1000 - cap, run  # refused at once (a reset), not queued
    assert run["device_rc"] == 0, run
