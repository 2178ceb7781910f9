"""Who may connect and which topics they may use: the embedded broker's access policy.

Pure logic (no amqtt, no event loop), shared by the broker plugins and unit-testable on its own.
The rules are :func:`faillite.identity.identity_acl`, the same the Mosquitto ACL file is
generated from (:mod:`broker.mosquitto`).

Policy, by configuration:

- **Open** (no ``password_file``, no client certificates required): everyone gets in with full
  access. Such a broker listens on loopback only (``BrokerConfig.exposure_problem``).
- **Accounts** (``password_file``): a client gets in only as an identity of this mesh with an
  account, with its client id equal to its username (its own, never another's), and the right
  secret. Its ACL follows from its identity. There is no anonymous access: a dashboard gets an
  observer account. Failed logins from one address are slowed down (:class:`LoginThrottle`).
- **Client certificates** (``tls.server.require_client_certificate``): the certificate's common
  name is the identity; with a ``password_file`` too, the identity must still have an account
  there, so deleting its lines revokes it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Final

from faillite.accounts import AccountsError, PasswordHash, read_password_file
from faillite.compat import StrEnum
from faillite.config import BrokerConfig
from faillite.identity import AclScope, Identity, InvalidIdentityError, identity_acl
from faillite.topics import Access, matches


class Operation(StrEnum):
    """What a client does with a topic (the values match amqtt's ``Action``)."""

    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    RECEIVE = "receive"


@dataclass(frozen=True, slots=True)
class Admission:
    """Outcome of a CONNECT: admitted as an identity (``None``: unrestricted), or refused."""

    admitted: bool
    identity: Identity | None = None
    # Why refused: no_username, client_id_not_account, not_an_identity, other_mesh,
    # unknown_user, bad_password, no_certificate_identity, revoked.
    reason: str | None = None


def filter_covers(rule: str, sub: str) -> bool:
    """True if every topic that subscription filter ``sub`` matches is matched by ``rule``."""
    r_levels = rule.split("/")
    s_levels = sub.split("/")
    for i, level in enumerate(s_levels):
        if i >= len(r_levels):
            return False
        r = r_levels[i]
        if r == "#":
            return True
        if level == "#":
            return False
        if level == "+":
            if r != "+":
                return False
        elif r not in ("+", level):
            return False
    # "a/#" also matches the parent level "a" (§4.7.1.2).
    return len(r_levels) == len(s_levels) or (
        len(r_levels) == len(s_levels) + 1 and r_levels[-1] == "#"
    )


_READS: Final = (Access.READ, Access.READWRITE)
_WRITES: Final = (Access.WRITE, Access.READWRITE)


class LoginThrottle:
    """Failed logins per source address: each failure doubles the wait before the next
    attempt from there is judged (from ``base_s`` up to ``max_s``); a quiet minute forgets
    them, a valid login from the same address does not (a guesser beside one stolen device
    would otherwise start afresh after each of its logins; only refusals ever wait).
    Bounded: the least recently failing sources are forgotten first."""

    def __init__(
        self, base_s: float, max_s: float, *, forget_s: float = 60.0, max_sources: int = 4096
    ) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.forget_s = forget_s
        self.max_sources = max_sources
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def delay(self, source: str, now: float) -> float:
        """How long a refusal for ``source`` is held back now."""
        entry = self._failures.get(source)
        if entry is None:
            return 0.0
        count, last = entry
        if now - last > self.forget_s:
            del self._failures[source]
            return 0.0
        return min(self.base_s * 2.0 ** min(count - 1, 30), self.max_s)

    def failed(self, source: str, now: float) -> float:
        """Count a failure; the delay it earns."""
        count, last = self._failures.pop(source, (0, now))
        if now - last > self.forget_s:
            count = 0
        self._failures[source] = (count + 1, now)
        while len(self._failures) > self.max_sources:
            self._failures.popitem(last=False)
        return self.delay(source, now)


class AccessPolicy:
    """Accounts and per-identity topic rules of one mesh's broker."""

    def __init__(self, cfg: BrokerConfig, mesh: str, scope: AclScope | None = None) -> None:
        self.mesh = mesh
        self.scope = scope
        self.accounts_enabled = cfg.accounts
        self.acl_enabled = cfg.acl and self.accounts_enabled
        self.throttle = LoginThrottle(cfg.login_delay_s, cfg.login_delay_max_s)
        self.password_file: Path | None = cfg.password_file
        self._hashes: dict[str, PasswordHash] = {}
        self._stamp: tuple[int, int] | None = None
        self.generation = 0  # of the accounts read: one more per reload that changed them
        # Read once at start: an unreadable file fails the broker start, not a CONNECT.
        self.reload()
        # Per-instance cache: topics repeat (one per sensor / worker / app), checks are per message.
        self.allowed = lru_cache(maxsize=8192)(self._allowed)
        self._rules = lru_cache(maxsize=1024)(self._rules_of)

    def reload(self) -> bool:
        """Re-read the password file if it changed (an account added or revoked); True if so.
        A file that became unreadable or malformed keeps the accounts last read."""
        if self.password_file is None:
            return False
        st = self.password_file.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return False
        hashes = read_password_file(self.password_file)
        self._hashes, self._stamp = hashes, stamp
        self.generation += 1
        return True

    def try_reload(self) -> str | None:
        """:meth:`reload`, with the error as text instead of raised (for a running broker)."""
        try:
            self.reload()
        except (OSError, AccountsError) as exc:
            return str(exc)
        return None

    def has_account(self, username: str) -> bool:
        return username in self._hashes

    def revoked(self, username: str | None) -> bool:
        """A client admitted under ``username`` whose account is gone from the password file
        (a client of an open mesh, or one admitted by certificate alone, never is)."""
        return (
            self.password_file is not None
            and bool(username)
            and not self.has_account(str(username))
        )

    def _identity(self, name: str) -> Identity | str:
        try:
            identity = Identity.parse(name)
        except (InvalidIdentityError, ValueError):
            return "not_an_identity"
        return identity if identity.mesh == self.mesh else "other_mesh"

    def admit(self, username: str | None, password: str | None, *, client_id: str) -> Admission:
        """Check a CONNECT's credentials and client id (the caller throttles failures).

        Costs one PBKDF2 (about 0.5 ms) when the name is an account: run it off the loop."""
        if not self.accounts_enabled:
            return Admission(True, None)  # an open, loopback-only mesh
        if not username:
            return Admission(False, reason="no_username")
        if client_id != username:
            return Admission(False, reason="client_id_not_account")
        identity = self._identity(username)
        if isinstance(identity, str):
            return Admission(False, reason=identity)
        expected = self._hashes.get(username)
        if expected is None:
            return Admission(False, reason="unknown_user")
        if password is None or not expected.verify(password):
            return Admission(False, reason="bad_password")
        return Admission(True, identity if self.acl_enabled else None)

    def admit_certificate(self, common_name: str | None, *, client_id: str) -> Admission:
        """Admission by a verified client certificate whose common name is the identity."""
        if not common_name:
            return Admission(False, reason="no_certificate_identity")
        identity = self._identity(common_name)
        if isinstance(identity, str):
            return Admission(False, reason=identity)
        if client_id not in identity.usernames:
            return Admission(False, reason="client_id_not_account")
        if self.password_file is not None and common_name not in self._hashes:
            return Admission(False, reason="revoked")
        return Admission(True, identity if self.acl_enabled else None)

    def _rules_of(self, identity: Identity) -> tuple[tuple[Access, str], ...]:
        return identity_acl(identity, self.scope)

    def _allowed(self, identity: Identity | None, op: Operation, topic: str) -> bool:
        """May a client of ``identity`` (``None``: unrestricted) do ``op`` on ``topic``?

        Subscriptions are granted only when the whole filter is readable: amqtt replays retained
        messages on SUBSCRIBE without a per-message read check, so a broader filter would leak.
        """
        if identity is None:
            return True
        rules = self._rules(identity)
        if op is Operation.PUBLISH:
            return any(a in _WRITES and matches(f, topic) for a, f in rules)
        if op is Operation.SUBSCRIBE:
            return any(a in _READS and filter_covers(f, topic) for a, f in rules)
        return any(a in _READS and matches(f, topic) for a, f in rules)
