"""A revocation that takes effect at once on a broker that has to be told.

The embedded broker notices a changed password file or revocation list by itself within a
second and ends the revoked device's live connection. A broker that re-reads them only on
SIGHUP (Mosquitto) names its pid in ``broker.pid_file``: :func:`signal_reload` tells it. Then
Mosquitto ends the live connection of a revoked *account*, but keeps that of a revoked
*certificate* (it checks the list at the handshake only). :func:`end_session` ends that one
too: it takes the session over with a fresh certificate of the same name, whose key never
leaves memory and a private folder deleted at once, and whose certificate is revoked right
after; the revoked device's connection ends as on the embedded broker (its last-will fires,
so the coordinator moves its apps), and its reconnects meet the reloaded list.
"""

from __future__ import annotations

import os
import signal
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from faillite.config import BrokerConfig, ConfigError, TlsConfig

# Mosquitto applies a SIGHUP at its next loop turn (the signal interrupts its wait): well
# within this, after which a takeover meets the reloaded revocation list.
RELOAD_SETTLE_S: Final = 0.5
TAKEOVER_TIMEOUT_S: Final = 10.0


class RevocationError(RuntimeError):
    """A revocation was written but the running broker could not be made to apply it."""


@dataclass(frozen=True, slots=True)
class Applied:
    """What was done to the running broker: the pid signalled, whether a live session of
    the revoked certificate's name was taken over (and so ended)."""

    pid: int | None
    session_ended: bool = False


def signal_reload(pid_file: Path) -> int:
    """SIGHUP the broker whose pid ``pid_file`` holds; return that pid.

    The pid file must be writable by its owner only: one that others may write would let them
    aim this signal (which ends most processes) at anything this user may signal."""
    try:
        info = pid_file.stat()
        text = pid_file.read_text().strip()
    except OSError as exc:
        raise RevocationError(
            f"cannot read the broker's pid file {pid_file} ({exc.strerror}): is the broker "
            "running with broker.pid_file set (regenerate its config)?"
        ) from exc
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RevocationError(f"{pid_file} is writable by others: not trusted to name the broker")
    if not text.isdigit() or int(text) <= 1:
        raise RevocationError(f"{pid_file} holds no pid: {text[:20]!r}")
    pid = int(text)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError as exc:
        raise RevocationError(f"no process {pid}: {pid_file} is stale (broker stopped?)") from exc
    except PermissionError as exc:
        raise RevocationError(
            f"not allowed to signal the broker (pid {pid}): run as its user or root"
        ) from exc
    return pid


def end_session(broker: BrokerConfig, name: str, ca_dir: Path) -> None:
    """Take over the live session of ``name`` (an identity) with a fresh certificate of that
    name from the CA in ``ca_dir``, disconnect cleanly, and revoke that certificate.

    Raises RevocationError where the broker does not admit the takeover (then the revoked
    connection lasts until it drops by itself)."""
    from faillite import pki
    from faillite.mqtt import ConnectError, MeshClient

    if broker.tls is None:
        raise RevocationError("the broker has no TLS: there is no certificate session to end")
    with tempfile.TemporaryDirectory(prefix="faillite-takeover-") as d:
        folder = Path(d)  # mode 0700: the key is this user's only, and gone on return
        try:
            issued = pki.issue_client(ca_dir, name, out_dir=folder, days=1)
        except pki.PkiError as exc:
            raise RevocationError(f"cannot issue the takeover certificate: {exc}") from exc
        tls = TlsConfig(ca_certs=broker.tls.ca_certs, certfile=issued.cert, keyfile=issued.key)
        # Only the certificate speaks: no secret of the revoked device is needed or read.
        taker = broker.model_copy(update={"tls": tls, "secrets_dir": None, "password_file": None})
        try:
            client = MeshClient(name, taker, quiet=True)
            client.start(connect_timeout=TAKEOVER_TIMEOUT_S)
        except (ConnectError, ConfigError) as exc:
            raise RevocationError(f"the broker refused the takeover of {name}: {exc}") from exc
        finally:
            pki.revoke(ca_dir, issued.cert)
        client.stop()


def apply_revocation(broker: BrokerConfig, *, name: str | None, ca_dir: Path | None) -> Applied:
    """Make the running broker apply a revocation just written: signal it where it has to be
    told (``broker.pid_file``) and, for a certificate (``name`` and ``ca_dir`` given) on a
    broker that requires them, end its live session. Nothing to do for the embedded broker."""
    if broker.pid_file is None:
        return Applied(pid=None)
    pid = signal_reload(broker.pid_file)
    if name is None or ca_dir is None or not broker.client_certificates:
        return Applied(pid=pid)
    time.sleep(RELOAD_SETTLE_S)
    end_session(broker, name, ca_dir)
    signal_reload(broker.pid_file)  # the takeover certificate, revoked, is refused from now
    return Applied(pid=pid, session_ended=True)
