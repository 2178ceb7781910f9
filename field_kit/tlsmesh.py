"""The TLS twin of a loopback mesh, for benchmarks and drills that compare it with plain MQTT.

:meth:`LoopbackPki.create` makes the mesh's own CA with ``faillite.pki`` in a (temporary)
folder and a broker certificate for the loopback addresses. Every node then verifies the broker
(chain and subjectAltName) against that CA; no client certificates, no accounts: the cost
measured is the encryption and the handshakes, not authentication.

- :meth:`LoopbackPki.broker_config`: what :class:`field_kit.brokers.BrokerLauncher` starts a
  TLS broker with (its certificate and key);
- :meth:`LoopbackPki.mesh_document`: a plain mesh config (the YAML document as a dict) turned
  into the same mesh over TLS, for the processes started with ``--config``;
- :meth:`LoopbackPki.node_broker`: a node's ``BrokerConfig`` over TLS, for clients made here.

The module functions of the same names take ``None`` for "plain MQTT" and return their input
unchanged then, so a benchmark runs one code path for both meshes.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from faillite import pki
from faillite.config import BrokerConfig, TlsConfig, TlsServerConfig

LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost")
BROKER_CERT: Final = "broker"  # broker.crt / broker.key beside ca.crt


@dataclass(frozen=True, slots=True)
class LoopbackPki:
    """A mesh CA and a broker certificate for loopback, in ``folder``."""

    folder: Path

    @classmethod
    def create(cls, folder: Path, hosts: Sequence[str] = LOOPBACK_HOSTS) -> LoopbackPki:
        """A new CA in ``folder`` (which must not hold one) and the broker's certificate."""
        folder = folder.resolve()
        pki.init_ca(folder)
        pki.issue_server(folder, BROKER_CERT, hosts)
        return cls(folder)

    @property
    def node_tls(self) -> TlsConfig:
        """A node's settings: trusts the mesh CA, presents no certificate."""
        return TlsConfig(ca_certs=self.folder / pki.CA_CERT)

    @property
    def broker_tls(self) -> TlsConfig:
        """The broker's settings: its own certificate and key, client certificates optional."""
        return self.node_tls.model_copy(
            update={
                "server": TlsServerConfig(
                    certfile=self.folder / f"{BROKER_CERT}.crt",
                    keyfile=self.folder / f"{BROKER_CERT}.key",
                )
            }
        )

    def broker_config(self, cfg: BrokerConfig | None = None) -> BrokerConfig:
        """``cfg`` (default: the defaults) for the broker process, with TLS."""
        return (cfg or BrokerConfig()).model_copy(update={"tls": self.broker_tls})

    def node_broker(self, cfg: BrokerConfig) -> BrokerConfig:
        """``cfg`` as a node uses it: the same broker, reached over TLS."""
        return cfg.model_copy(update={"tls": self.node_tls})

    def mesh_document(self, doc: dict[str, Any]) -> dict[str, Any]:
        """A copy of the mesh config document ``doc`` whose nodes reach the broker over TLS."""
        out = copy.deepcopy(doc)
        out.setdefault("broker", {})["tls"] = self.node_tls.model_dump(
            mode="json", exclude_none=True
        )
        return out


def broker_config(tls: LoopbackPki | None, cfg: BrokerConfig | None = None) -> BrokerConfig:
    """The broker process's config: ``cfg`` as it is without ``tls``, with it over TLS."""
    return tls.broker_config(cfg) if tls else (cfg or BrokerConfig())


def node_broker(tls: LoopbackPki | None, cfg: BrokerConfig) -> BrokerConfig:
    """A node's broker settings: ``cfg`` as it is without ``tls``, with it over TLS."""
    return tls.node_broker(cfg) if tls else cfg


def mesh_document(tls: LoopbackPki | None, doc: dict[str, Any]) -> dict[str, Any]:
    """The mesh config document: ``doc`` as it is without ``tls``, with it over TLS."""
    return tls.mesh_document(doc) if tls else doc
