"""Secure by default: a broker that anyone may use listens on loopback only.

Nothing here binds anything but loopback: the refusals happen before a socket is opened."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from broker import mosquitto as mq
from broker.embedded import BrokerSetupError, serve
from faillite.compat import python_module
from faillite.config import BrokerConfig, is_loopback

PASSWD = Path("/nonexistent/passwd")  # only its presence in the config matters here


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"]
)
def test_loopback_is_always_allowed(host: str) -> None:
    assert is_loopback(host)
    assert BrokerConfig(host=host).exposure_problem() is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.4.1", "10.0.0.7", "kit-broker"])
def test_an_open_broker_may_not_listen_beyond_loopback(host: str) -> None:
    problem = BrokerConfig(host=host).exposure_problem()
    assert problem is not None and "has no accounts" in problem and "127.0.0.1" in problem
    assert "faillite accounts init" in problem


def test_accounts_may_listen_anywhere() -> None:
    cfg = BrokerConfig(host="0.0.0.0", password_file=PASSWD)
    assert cfg.exposure_problem() is None
    conf = mq.render_conf(
        cfg, "demo", password_file=PASSWD, acl_file=None, persistence_dir=Path("/tmp/p")
    )
    assert "listener 1883 0.0.0.0" in conf and "allow_anonymous false" in conf
    assert "use_username_as_clientid true" in conf


def test_the_embedded_broker_refuses_before_listening() -> None:
    with pytest.raises(BrokerSetupError, match="has no accounts"):
        asyncio.run(serve(BrokerConfig(host="0.0.0.0", port=0), "demo"))


def test_mosquitto_config_is_not_written_for_an_open_network_broker() -> None:
    with pytest.raises(mq.MosquittoConfigError, match="has no accounts"):
        mq.render_conf(
            BrokerConfig(host="0.0.0.0"),
            "demo",
            password_file=None,
            acl_file=None,
            persistence_dir=Path("/tmp/p"),
        )


def test_faillite_broker_says_why_in_one_line() -> None:
    out = subprocess.run(
        [*python_module("faillite"), "broker", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "refusing to listen on 0.0.0.0" in out.stderr
    assert "Traceback" not in out.stderr
