"""Test helpers for a real mesh: configs on disk, a collecting MQTT client, frame publishing."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from faillite.config import BrokerConfig, MeshConfig, load_mesh_config, packaged_config
from faillite.signing import Signer, generate_key, load_signer
from faillite.topics import Topics
from field_kit.pump import photo_frame
from field_kit.recorder import Recorder

T = TypeVar("T")


def write_config(
    tmp_path: Path,
    endpoint: Any,
    models_dir: Path,
    *,
    mesh: str = "t",
    workers: Iterable[dict[str, Any]] = ({"id": "w1"},),
    sensors: Iterable[dict[str, Any]] = ({"id": "cam1", "source": "scene:chelsea", "fps": 10},),
    apps: Iterable[dict[str, Any]] = (
        {"id": "a1", "sensor": "cam1", "family": "efficientnet_lite"},
    ),
    assignments: dict[str, list[dict[str, str]]] | None = None,
    catalog: Path | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    data: dict[str, Any] = {
        "mesh": mesh,
        "catalog": str(catalog or packaged_config("catalog.yaml")),
        "models_dir": str(models_dir),
        "broker": {"host": endpoint.host, "port": endpoint.port, "keepalive_s": 2},
        "sensors": list(sensors),
        "apps": list(apps),
        "workers": [
            {
                "heartbeat_interval_s": 0.1,
                "backend": {"type": "onnxruntime", "intra_op_threads": 1},
                **w,
            }
            for w in workers
        ],
        "coordinator": {"type": "static", "assignments": assignments or {}},
        **(extra or {}),
    }
    path = tmp_path / f"{mesh}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


Collector = Recorder  # the tests' name for it


@dataclass(frozen=True, slots=True)
class SignedMesh:
    """A mesh config whose coordinators sign (a key pair of the test's own), loaded."""

    path: Path
    cfg: MeshConfig
    topics: Topics
    signer: Signer


def signed_mesh(
    tmp_path: Path,
    endpoint: Any,
    models_dir: Path,
    *,
    mesh: str,
    assignments: dict[str, list[dict[str, str]]],
    **coordinator: Any,
) -> SignedMesh:
    """:func:`write_config` with a static coordinator that signs (``coordinator``: more of its
    settings, such as ``ids``), and the signer the mesh's coordinators hold."""
    private, public = generate_key(tmp_path / "keys")
    signing = {"public_key": str(public), "private_key": str(private)}
    section = {"type": "static", "assignments": assignments, "signing": signing, **coordinator}
    path = write_config(tmp_path, endpoint, models_dir, mesh=mesh, extra={"coordinator": section})
    cfg = load(path)
    assert cfg.coordinator.signing is not None
    return SignedMesh(path, cfg, Topics(mesh), load_signer(cfg.coordinator.signing, mesh))


def chelsea_frame(seq: int, width: int = 640, height: int = 480) -> bytes:
    return photo_frame(seq, width, height, "chelsea")


def load(path: Path) -> MeshConfig:
    return load_mesh_config(path)


def broker_cfg(endpoint: Any) -> BrokerConfig:
    return BrokerConfig(host=endpoint.host, port=endpoint.port, keepalive_s=2)
