"""TLS contexts of the mesh: the clients' (every role) and the embedded broker's.

Standard library only (``ssl``), so a role pays nothing for TLS until its config asks for it.
Both sides speak TLS 1.2 or newer. A client verifies the broker's chain against the mesh CA
(``broker.tls.ca_certs``) and the host it connects to against the certificate's subjectAltName
(an IP address literal is matched against the IP entries). A broker that requires client
certificates verifies them against the same CA; the certificate's common name is then the
client's identity (:func:`peer_common_name`).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from faillite.config import ConfigError, TlsConfig, TlsServerConfig

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def _why(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, ssl.SSLError):
        return exc.strerror
    return str(exc) or type(exc).__name__


def _load_ca(ctx: ssl.SSLContext, ca_certs: Path, what: str) -> None:
    try:
        ctx.load_verify_locations(cafile=str(ca_certs))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{what}: cannot load the mesh CA {ca_certs}: {_why(exc)}") from exc


def _load_pair(ctx: ssl.SSLContext, certfile: Path, keyfile: Path | None, what: str) -> None:
    try:
        ctx.load_cert_chain(str(certfile), str(keyfile) if keyfile is not None else None)
    except (OSError, ssl.SSLError) as exc:
        key = f" / {keyfile}" if keyfile is not None else ""
        raise ConfigError(
            f"{what}: cannot load the certificate {certfile}{key}: {_why(exc)}"
        ) from exc


def client_context(tls: TlsConfig) -> ssl.SSLContext:
    """The context a role connects with: verifies the broker's chain and host name against
    the mesh CA; presents the node's client certificate if it has one. Raises ConfigError
    naming the file that cannot be loaded."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.minimum_version = MINIMUM_VERSION
    _load_ca(ctx, tls.ca_certs, "broker.tls.ca_certs")
    if tls.certfile is not None:
        _load_pair(ctx, tls.certfile, tls.keyfile, "broker.tls.certfile")
    return ctx


def server_settings(tls: TlsConfig) -> TlsServerConfig:
    """The broker's own TLS settings; ConfigError where the config has none."""
    if tls.server is None:
        raise ConfigError(
            "TLS is configured (broker.tls) but the broker has no certificate of its own: set "
            "broker.tls.server.certfile and keyfile (faillite pki server makes them)"
        )
    return tls.server


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """The embedded broker's context: its certificate and key; with client certificates
    required, every client must present one signed by the mesh CA."""
    server = server_settings(tls)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MINIMUM_VERSION
    _load_pair(ctx, server.certfile, server.keyfile, "broker.tls.server")
    if server.require_client_certificate:
        ctx.verify_mode = ssl.CERT_REQUIRED
        _load_ca(ctx, tls.ca_certs, "broker.tls.ca_certs")
        if server.crlfile is not None:
            try:
                ctx.load_verify_locations(cafile=str(server.crlfile))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"broker.tls.server.crlfile: cannot load {server.crlfile}: {_why(exc)}"
                ) from exc
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def peer_common_name(peercert: dict[str, Any] | None) -> str | None:
    """The first common name in a verified peer certificate (``SSLObject.getpeercert()``), the
    one Mosquitto's ``use_identity_as_username`` takes; None without a certificate."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and isinstance(value, str) and value:
                return value
    return None
