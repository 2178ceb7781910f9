"""Config models: unknown keys named, impossible configs refused, shipped configs valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from faillite.catalog import load_catalog
from faillite.config import ConfigError, load_mesh_config, packaged_config


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "mesh.yaml"
    p.write_text(text)
    return p


def test_shipped_demo_config_is_valid() -> None:
    cfg = load_mesh_config(packaged_config("demo.yaml"))
    assert cfg.mesh == "demo"
    assert cfg.coordinator.type == "planner"
    catalog = load_catalog(cfg.catalog)
    for app in cfg.apps:
        assert catalog.family(app.family).variants


def test_unknown_key_is_named(tmp_path: Path) -> None:
    p = _write(tmp_path, "mesh: m\nworkers:\n  - id: w1\n    heartbeat_intervall: 1\n")
    with pytest.raises(ConfigError, match=r"workers\.0\.heartbeat_intervall: unknown key"):
        load_mesh_config(p)


def test_unknown_backend_type(tmp_path: Path) -> None:
    p = _write(tmp_path, "workers:\n  - id: w1\n    backend: {type: tflite}\n")
    with pytest.raises(ConfigError, match="backend"):
        load_mesh_config(p)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("mesh: Bad/Mesh\n", "mesh"),
        ("sensors: [{id: c}]\napps: [{id: a, sensor: nope, family: f}]\n", "unknown sensor"),
        ("workers: [{id: w}, {id: w}]\n", "duplicate worker ids"),
        ("workers: [{id: w, memory_mb: -5}]\n", "memory_mb"),
        ("coordinator: {assignments: {ghost: []}}\n", "unknown worker"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("mesh: [unclosed\n", "not valid YAML"),
    ],
)
def test_impossible_configs_refused(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_mesh_config(_write(tmp_path, text))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_mesh_config(tmp_path / "nope.yaml")


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    p = _write(tmp_path, "catalog: sub/cat.yaml\nmodels_dir: m\n")
    cfg = load_mesh_config(p)
    assert cfg.catalog == tmp_path / "sub" / "cat.yaml"
    assert cfg.models_path == tmp_path / "m"


def test_credentials_come_from_this_nodes_secret_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from faillite.config import BrokerConfig

    monkeypatch.delenv("FAILLITE_MQTT_PASSWORD", raising=False)
    assert BrokerConfig().credentials("demo.worker.w1") == ("demo.worker.w1", None)
    cfg = BrokerConfig(secrets_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"no secret for demo.worker.w1 .*faillite accounts"):
        cfg.credentials("demo.worker.w1")
    (tmp_path / "demo.worker.w1.secret").write_text("s3cret\n")
    assert cfg.credentials("demo.worker.w1") == ("demo.worker.w1", "s3cret")
    # The look before connecting uses the identity's second name, with the same secret.
    assert cfg.credentials("demo.worker.w1.probe") == ("demo.worker.w1.probe", "s3cret")
    monkeypatch.setenv("FAILLITE_MQTT_PASSWORD", "from-env")
    assert cfg.credentials("demo.worker.w1") == ("demo.worker.w1", "from-env")


def test_broker_paths_resolve_against_the_file(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "broker:\n  password_file: b/passwd\n  secrets_dir: s\n"
        "  tls: {ca_certs: pki/ca.crt, server: {certfile: pki/b.crt, keyfile: pki/b.key}}\n",
    )
    b = load_mesh_config(p).broker
    assert b.password_file == tmp_path / "b" / "passwd" and b.secrets_dir == tmp_path / "s"
    assert b.tls is not None and b.tls.ca_certs == tmp_path / "pki" / "ca.crt"
    assert b.tls.server is not None and b.tls.server.keyfile == tmp_path / "pki" / "b.key"
    assert b.accounts and not b.open_to_anyone
