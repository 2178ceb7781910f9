"""TLS settings: the config shape, the contexts' errors, the Mosquitto listener, and how the
embedded broker admits a client by its certificate. No broker, no network."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker import mosquitto as mq
from broker._acl import AccessPolicy
from broker.embedded import BrokerSetupError, serve
from faillite import pki
from faillite.accounts import add_account
from faillite.config import (
    BrokerConfig,
    ConfigError,
    TlsConfig,
    TlsServerConfig,
    load_mesh_config,
)
from faillite.identity import Identity
from faillite.tls import client_context, peer_common_name, server_context
from faillite.topics import Role


def _tls(d: Path, *, require: bool = False, server: bool = True) -> TlsConfig:
    return TlsConfig(
        ca_certs=d / "ca.crt",
        server=TlsServerConfig(
            certfile=d / "broker.crt", keyfile=d / "broker.key", require_client_certificate=require
        )
        if server
        else None,
    )


def _load(tmp_path: Path, broker: dict[str, Any]) -> BrokerConfig:
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump({"mesh": "m", "broker": broker}))
    return load_mesh_config(path).broker


# -- the config shape ---------------------------------------------------------------------------


def test_tls_is_off_by_default_and_old_configs_still_load(tmp_path: Path) -> None:
    assert _load(tmp_path, {}).tls is None
    client_side = {"ca_certs": "/k/ca.crt", "certfile": "/k/w1.crt", "keyfile": "/k/w1.key"}
    old = _load(tmp_path, {"tls": client_side})  # the shape before broker TLS existed
    assert old.tls == TlsConfig(
        ca_certs=Path("/k/ca.crt"), certfile=Path("/k/w1.crt"), keyfile=Path("/k/w1.key")
    )
    assert old.tls.server is None


def test_the_broker_section(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        {
            "tls": {
                "ca_certs": "/k/ca.crt",
                "server": {
                    "certfile": "/k/broker.crt",
                    "keyfile": "/k/broker.key",
                    "require_client_certificate": True,
                },
            }
        },
    )
    assert cfg.tls is not None and cfg.tls.server is not None
    assert cfg.tls.server.require_client_certificate
    assert (
        TlsServerConfig(certfile=Path("a"), keyfile=Path("b")).require_client_certificate is False
    )


@pytest.mark.parametrize(
    ("tls", "problem"),
    [
        ({"ca_certs": "/k/ca.crt", "cafile": "x"}, "unknown key 'cafile'"),
        ({"ca_certs": "/k/ca.crt", "server": {"certfile": "/a", "keyfile": "/b",
                                              "require_certificate": True}},
         "unknown key 'require_certificate'"),
        ({"ca_certs": "/k/ca.crt", "server": {"certfile": "/a"}}, "server.keyfile"),
        ({"certfile": "/a"}, "ca_certs"),
        ({"ca_certs": "/k/ca.crt", "keyfile": "/k/w1.key"}, "keyfile is set without"),
    ],
)  # fmt: skip
def test_bad_tls_sections_are_named(tmp_path: Path, tls: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        _load(tmp_path, {"tls": tls})


# -- contexts -----------------------------------------------------------------------------------


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ca_certs: cannot load the mesh CA .*ca\.crt"):
        client_context(TlsConfig(ca_certs=tmp_path / "ca.crt"))
    pki.init_ca(tmp_path)
    with pytest.raises(ConfigError, match=r"certfile: cannot load the certificate .*w1\.crt"):
        client_context(TlsConfig(ca_certs=tmp_path / "ca.crt", certfile=tmp_path / "w1.crt"))
    with pytest.raises(ConfigError, match=r"broker\.tls\.server: cannot load"):
        server_context(_tls(tmp_path))
    with pytest.raises(ConfigError, match="no certificate of its own"):
        server_context(_tls(tmp_path, server=False))


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path: Path) -> None:
    pki.init_ca(tmp_path)
    pki.issue_server(tmp_path, "broker", ["127.0.0.1"])
    pki.issue_client(tmp_path, "w1")
    wrong = TlsConfig(
        ca_certs=tmp_path / "ca.crt",
        server=TlsServerConfig(certfile=tmp_path / "broker.crt", keyfile=tmp_path / "w1.key"),
    )
    with pytest.raises(ConfigError, match="cannot load the certificate"):
        server_context(wrong)


def test_peer_common_name() -> None:
    subject = ((("countryName", "DE"),), (("commonName", "w1"),), (("commonName", "x"),))
    assert peer_common_name({"subject": subject}) == "w1"
    assert peer_common_name({}) is None  # no certificate (or not verified)
    assert peer_common_name(None) is None
    assert peer_common_name({"subject": ((("organizationName", "o"),),)}) is None


def test_the_embedded_broker_refuses_tls_without_its_certificate(tmp_path: Path) -> None:
    async def start(cfg: BrokerConfig) -> None:
        await asyncio.wait_for(serve(cfg, "m"), timeout=5)

    with pytest.raises(BrokerSetupError, match=r"broker\.tls\.server"):
        asyncio.run(start(BrokerConfig(port=0, tls=_tls(tmp_path, server=False))))
    with pytest.raises(BrokerSetupError, match=r"cannot load the certificate .*broker\.crt"):
        asyncio.run(start(BrokerConfig(port=0, tls=_tls(tmp_path))))


# -- identities on the embedded broker ----------------------------------------------------------


CAM1 = Identity("m", Role.SENSOR, "cam1")
COORD = Identity("m", Role.COORDINATOR, "main")


def test_the_common_name_is_the_identity(tmp_path: Path) -> None:
    policy = AccessPolicy(BrokerConfig(tls=_tls(tmp_path, require=True)), "m")
    cam = policy.admit_certificate(CAM1.name, client_id=CAM1.name)
    assert cam.admitted and cam.identity == CAM1
    # Its look before connecting uses the same certificate under the probe id.
    assert policy.admit_certificate(CAM1.name, client_id=CAM1.probe_name).admitted
    assert policy.admit_certificate(CAM1.name, client_id=COORD.name).reason == (
        "client_id_not_account"
    )
    assert policy.admit_certificate("stranger", client_id="stranger").reason == "not_an_identity"
    other = Identity("n", Role.SENSOR, "cam1").name
    assert policy.admit_certificate(other, client_id=other).reason == "other_mesh"
    assert policy.admit_certificate(None, client_id="x").reason == "no_certificate_identity"
    no_acl = AccessPolicy(BrokerConfig(tls=_tls(tmp_path, require=True), acl=False), "m")
    admission = no_acl.admit_certificate(CAM1.name, client_id=CAM1.name)
    assert admission.admitted and admission.identity is None


def test_a_certificate_is_revoked_with_its_account(tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    add_account(pw, tmp_path / "secrets", CAM1)
    cfg = BrokerConfig(tls=_tls(tmp_path, require=True), password_file=pw)
    policy = AccessPolicy(cfg, "m")
    assert policy.admit_certificate(CAM1.name, client_id=CAM1.name).admitted
    assert policy.admit_certificate(COORD.name, client_id=COORD.name).reason == "revoked"


# -- Mosquitto ---------------------------------------------------------------------------------


def _conf(cfg: BrokerConfig, tmp_path: Path) -> str:
    return mq.write_mosquitto_config(
        cfg, "m", tmp_path / "out", identities=[CAM1, COORD]
    ).read_text()


def test_mosquitto_tls_listener(tmp_path: Path) -> None:
    text = _conf(BrokerConfig(port=8883, tls=_tls(tmp_path)), tmp_path)
    lines = text.splitlines()
    assert lines.index("listener 8883 127.0.0.1") < lines.index(f"cafile {tmp_path}/ca.crt")
    for line in (
        f"certfile {tmp_path}/broker.crt",
        f"keyfile {tmp_path}/broker.key",
        "tls_version tlsv1.2",
    ):
        assert line in lines
    assert "require_certificate true" not in text
    assert "use_identity_as_username" not in text
    assert "cafile" not in _conf(BrokerConfig(port=1883), tmp_path)


def test_mosquitto_with_client_certificates(tmp_path: Path) -> None:
    cfg = BrokerConfig(port=8883, tls=_tls(tmp_path, require=True))
    lines = _conf(cfg, tmp_path).splitlines()
    assert "require_certificate true" in lines
    assert "use_identity_as_username true" in lines
    # Certificates only, no password file: the client id is still the certificate's name, so
    # a certificate can take no other device's session.
    assert "use_username_as_clientid true" in lines
    assert not any(line.startswith("password_file") for line in lines)


def test_mosquitto_pid_file_only_where_configured(tmp_path: Path) -> None:
    assert "\npid_file " not in _conf(BrokerConfig(port=1883), tmp_path)
    cfg = BrokerConfig(port=1883, pid_file=tmp_path / "run" / "mosquitto.pid")
    assert f"pid_file {tmp_path}/run/mosquitto.pid" in _conf(cfg, tmp_path).splitlines()


def test_mosquitto_tls_paths_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    tls = TlsConfig(
        ca_certs=Path("k/ca.crt"),
        server=TlsServerConfig(certfile=Path("k/b.crt"), keyfile=Path("k/b.key")),
    )
    assert f"cafile {tmp_path}/k/ca.crt" in _conf(BrokerConfig(port=8883, tls=tls), tmp_path)


def test_mosquitto_needs_the_server_certificate(tmp_path: Path) -> None:
    with pytest.raises(mq.MosquittoConfigError, match=r"broker\.tls\.server"):
        _conf(BrokerConfig(port=8883, tls=_tls(tmp_path, server=False)), tmp_path)


def test_amqtt_hook_point_of_resumed_sessions() -> None:
    """MeshBroker overrides this private method to judge a resumed session by the connection
    that resumes it (tests/integration/test_tls.py shows why); re-check before upgrading."""
    import inspect

    from amqtt.broker import Broker
    from amqtt.session import Session

    init = Broker._initialize_client_session
    params = list(inspect.signature(init).parameters)
    assert params == ["self", "reader", "writer", "remote_address", "remote_port"]
    assert Session().ssl_object is None
