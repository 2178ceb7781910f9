"""The CA's revocation list as the embedded broker enforces it, re-read when its file changes.

OpenSSL reads ``broker.tls.server.crlfile`` into the listening context once: without this a
certificate revoked while its device is connected keeps its connection, and gets new ones, until
the broker restarts. Here the list is polled (with the password file, every second): a new one
goes into the context for new handshakes, every CONNECT is checked against it, and the live
connections of the certificates it names are closed (``revoked_client_disconnected``).
"""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

from cryptography import x509

from faillite.pki import PkiError, revoked_serials


class Revocations:
    """The serial numbers the CA's list revokes now, and a generation that moves with it."""

    def __init__(self, path: Path | None, tls: ssl.SSLContext | None = None) -> None:
        self.path = path
        self._tls = tls
        self._stamp: tuple[int, int, int] | None = None
        self.serials: frozenset[int] = frozenset()
        self.generation = 0
        self.try_reload()

    def try_reload(self) -> str | None:
        """Read the list again if its file changed; a problem to log, or None. A list that
        cannot be read leaves the last one in force (never nobody revoked)."""
        if self.path is None:
            return None
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return None
            serials = frozenset(revoked_serials(self.path))
        except (OSError, PkiError) as exc:
            return f"{self.path}: {exc}"
        if self._tls is not None and self._stamp is not None:
            # New handshakes too (OpenSSL prefers the newest list of an issuer).
            with contextlib.suppress(ssl.SSLError, OSError):
                self._tls.load_verify_locations(cafile=str(self.path))
        self._stamp, self.serials = stamp, serials
        self.generation += 1
        return None

    def revokes(self, ssl_object: ssl.SSLObject | None) -> bool:
        """Whether the peer certificate of a TLS connection is on the list."""
        if ssl_object is None or not self.serials:
            return False
        der = ssl_object.getpeercert(binary_form=True)
        if not der:
            return False
        return x509.load_der_x509_certificate(der).serial_number in self.serials
