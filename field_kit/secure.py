"""The secured twin of a mesh on one machine: every safeguard of a kit on a hostile network.

``faillite up --secure`` runs the mesh this way: one account per device (and for the live
view), TLS with a CA made for the run, and signed assignments and leader status. Everything is
made in the run's folder; nothing of it is reused or needed afterwards.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from faillite.accounts import mesh_identities, provision
from faillite.config import MeshConfig, SigningConfig
from faillite.signing import generate_key
from field_kit.tlsmesh import LoopbackPki


def secure_twin(
    cfg: MeshConfig,
    folder: Path,
    *,
    observers: tuple[str, ...] = (),
    tls: bool = True,
    signing: bool = True,
) -> MeshConfig:
    """``cfg`` with accounts for its devices, coordinators and ``observers``, made in
    ``folder`` (password file, one secret per identity), TLS and signing keys."""
    folder = folder.resolve()
    password_file = folder / "broker" / "passwd"
    secrets_dir = folder / "secrets"
    provision(password_file, secrets_dir, mesh_identities(cfg, observers=observers))
    broker: dict[str, object] = {"password_file": password_file, "secrets_dir": secrets_dir}
    if tls:
        broker["tls"] = LoopbackPki.create(folder / "pki").broker_tls
    coordinator = cfg.coordinator
    if signing:
        private, public = generate_key(folder / "signing")
        coordinator = coordinator.model_copy(
            update={"signing": SigningConfig(public_key=public, private_key=private)}
        )
    return cfg.model_copy(
        update={"broker": cfg.broker.model_copy(update=broker), "coordinator": coordinator}
    )


def write_config(cfg: MeshConfig, path: Path) -> Path:
    """``cfg`` as a YAML file every role can start from (its paths are absolute)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = cfg.model_dump(mode="json", exclude_none=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
