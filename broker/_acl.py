"""Who may connect and which topics they may use: the embedded broker's access policy.

Pure logic (no amqtt), shared by the broker plugins and unit-testable on its own. The rules are
``faillite.topics.role_acl(mesh)``, the same table the Mosquitto ACL file is generated from.

Policy, by configuration (the Mosquitto files written by :mod:`broker.mosquitto` give
the same result):

=================  ===============  =====  ==============================  ====================
``users``          allow_anonymous  acl    anonymous clients               users
=================  ===============  =====  ==============================  ====================
none               true             any    full access                     (any name accepted)
none               false            any    refused (so is everyone)        refused
some               true             true   read-only observer of the mesh  their role's rules
some               false            true   refused                         their role's rules
some               any              false  full access if allowed          full access
=================  ===============  =====  ==============================  ====================

Anonymous clients get the observer role when accounts exist so that a dashboard (MQTT Explorer)
can watch the mesh without credentials but nobody without an account can command it.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Final

from faillite.config import BrokerConfig
from faillite.topics import Access, Role, role_acl

ANONYMOUS_ROLE: Final = Role.OBSERVER


class Operation(StrEnum):
    """What a client does with a topic (the values match amqtt's ``Action``)."""

    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    RECEIVE = "receive"


@dataclass(frozen=True, slots=True)
class Admission:
    """Outcome of a CONNECT: admitted with a role (``None``: unrestricted), or refused."""

    admitted: bool
    role: Role | None = None
    reason: str | None = None  # why refused: anonymous_not_allowed, unknown_user, bad_password


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 §4.7 matching of a concrete ``topic`` against ``topic_filter``."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False  # §4.7.2: wildcards at the first level never match $-topics
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels) or (level != "+" and level != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


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


class AccessPolicy:
    """Credentials and per-role topic rules of one mesh's broker."""

    def __init__(self, cfg: BrokerConfig, mesh: str) -> None:
        self.mesh = mesh
        self.allow_anonymous = cfg.allow_anonymous
        # Resolved once at start: a missing password_env fails the broker start, not a CONNECT.
        self._users: dict[str, tuple[bytes, Role]] = {
            u.username: (u.resolve_password().encode(), u.role) for u in cfg.users
        }
        self.auth_enabled = bool(self._users)
        self.acl_enabled = cfg.acl and self.auth_enabled
        self._rules = role_acl(mesh)
        # Per-instance cache: topics repeat (one per sensor / worker / app), checks are per message.
        self.allowed = lru_cache(maxsize=8192)(self._allowed)

    def admit(self, username: str | None, password: str | None) -> Admission:
        """Check a CONNECT's credentials; the role decides the client's topic rules."""
        if not username:
            if not self.allow_anonymous:
                return Admission(False, reason="anonymous_not_allowed")
            return Admission(True, ANONYMOUS_ROLE if self.acl_enabled else None)
        if not self.auth_enabled:
            # No accounts: like Mosquitto without a password file, the name is not checked.
            if not self.allow_anonymous:
                return Admission(False, reason="anonymous_not_allowed")
            return Admission(True, None)
        account = self._users.get(username)
        if account is None:
            return Admission(False, reason="unknown_user")
        expected, role = account
        given = (password or "").encode()
        if password is None or not hmac.compare_digest(given, expected):
            return Admission(False, reason="bad_password")
        return Admission(True, role if self.acl_enabled else None)

    def _allowed(self, role: Role | None, op: Operation, topic: str) -> bool:
        """May a client of ``role`` (``None``: unrestricted) do ``op`` on ``topic``?

        Subscriptions are granted only when the whole filter is readable: amqtt replays retained
        messages on SUBSCRIBE without a per-message read check, so a broader filter would leak.
        """
        if role is None:
            return True
        rules = self._rules.get(role, ())
        if op is Operation.PUBLISH:
            return any(a in _WRITES and topic_matches(f, topic) for a, f in rules)
        if op is Operation.SUBSCRIBE:
            return any(a in _READS and filter_covers(f, topic) for a, f in rules)
        return any(a in _READS and topic_matches(f, topic) for a, f in rules)
