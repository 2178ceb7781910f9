"""Accounts of a mesh: one per device, a random secret each, hashes only on the broker.

The password file is Mosquitto's own format (``username:$7$iterations$salt$hash``, PBKDF2-HMAC-
SHA512), read by both brokers, so an account added or revoked here is the same on either. Each
identity has two usernames (its name and its probe name, :mod:`faillite.identity`) with one
secret. A secret is written once, to ``{secrets_dir}/{name}.secret`` (0600), for the node that
runs that device; the broker node gets the password file and no secret at all. Revoking removes
one identity's lines and touches no other account.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from faillite.config import SECRET_SUFFIX, MeshConfig
from faillite.identity import Identity, InvalidIdentityError
from faillite.topics import Role

# mosquitto_passwd 2.0 writes 101; more makes each guess dearer where the hash file leaks, at
# about 0.5 ms per login on a small ARM core. Secrets are 256-bit random anyway.
PBKDF2_ITERATIONS: Final = 1000
SALT_BYTES: Final = 12  # as mosquitto_passwd
SECRET_BYTES: Final = 32
MAX_ITERATIONS: Final = 1_000_000  # a hash line asking for more is refused, not computed


class AccountsError(ValueError):
    """A password file or secret that cannot be used; the message says which and why."""


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """Mosquitto's ``$7$`` hash: PBKDF2-HMAC-SHA512, base64 salt and 64-byte derived key."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """One parsed ``$7$`` hash."""

    iterations: int
    salt: bytes
    key: bytes

    @classmethod
    def parse(cls, encoded: str) -> PasswordHash:
        parts = encoded.split("$")
        if len(parts) != 5 or parts[0] or parts[1] != "7":
            raise AccountsError(f"not a Mosquitto $7$ hash: {encoded[:12]!r}...")
        try:
            iterations = int(parts[2])
            salt = base64.b64decode(parts[3], validate=True)
            key = base64.b64decode(parts[4], validate=True)
        except ValueError as exc:
            raise AccountsError(f"malformed $7$ hash: {exc}") from exc
        if not 1 <= iterations <= MAX_ITERATIONS or len(key) != 64:
            raise AccountsError(f"$7$ hash out of range (iterations {iterations})")
        return cls(iterations, salt, key)

    def verify(self, password: str) -> bool:
        given = hashlib.pbkdf2_hmac("sha512", password.encode(), self.salt, self.iterations)
        return hmac.compare_digest(given, self.key)


def verify_password(password: str, encoded: str) -> bool:
    """Check ``password`` against a ``$7$`` hash (ours or mosquitto_passwd's)."""
    return PasswordHash.parse(encoded).verify(password)


def read_password_file(path: Path) -> dict[str, PasswordHash]:
    """Username -> hash. Blank lines and ``#`` comments are skipped; a bad line is an error."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise AccountsError(f"cannot read password file {path}: {exc.strerror}") from exc
    out: dict[str, PasswordHash] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        if not sep:
            raise AccountsError(f"{path}:{n}: expected username:hash")
        try:
            out[user] = PasswordHash.parse(encoded)
        except AccountsError as exc:
            raise AccountsError(f"{path}:{n}: {exc}") from exc
    return out


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the start, replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)


def _password_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def _username_of(line: str) -> str:
    return line.split(":", 1)[0].strip()


def secret_path(secrets_dir: Path, identity: Identity) -> Path:
    return secrets_dir / f"{identity.name}{SECRET_SUFFIX}"


def add_account(
    password_file: Path, secrets_dir: Path, identity: Identity, *, replace: bool = False
) -> Path:
    """Create ``identity``'s secret and its two hash lines; return the secret's path.

    An existing account is an error unless ``replace`` (a new secret: the old one stops
    working at the broker's next reload)."""
    lines = _password_lines(password_file)
    taken = {_username_of(line) for line in lines}
    if identity.name in taken and not replace:
        raise AccountsError(f"{identity.name} already has an account (use --replace)")
    lines = [line for line in lines if _username_of(line) not in identity.usernames]
    secret = secrets.token_urlsafe(SECRET_BYTES)
    lines += [f"{u}:{hash_password(secret)}" for u in identity.usernames]
    path = secret_path(secrets_dir, identity)
    _write_private(path, secret + "\n")
    _write_private(password_file, "\n".join(lines) + "\n")
    return path


def revoke_account(password_file: Path, name: str) -> bool:
    """Remove one identity's lines (its probe's too); False if it had none."""
    identity = Identity.parse(name)
    lines = _password_lines(password_file)
    kept = [line for line in lines if _username_of(line) not in identity.usernames]
    if len(kept) == len(lines):
        return False
    _write_private(password_file, "\n".join(kept) + ("\n" if kept else ""))
    return True


def list_accounts(password_file: Path) -> list[Identity]:
    out: list[Identity] = []
    for user in read_password_file(password_file):
        try:
            identity = Identity.parse(user)
        except (InvalidIdentityError, ValueError):
            continue
        if user == identity.name:
            out.append(identity)
    return out


def mesh_identities(
    cfg: MeshConfig,
    *,
    coordinators: Iterable[str] | None = None,
    observers: Iterable[str] = (),
    admins: Iterable[str] = (),
) -> list[Identity]:
    """Every device of a mesh config, plus the coordinators (default: ``coordinator.ids``, or
    ``main``), observers and admins named."""
    m = cfg.mesh
    if coordinators is None:
        coordinators = cfg.coordinator.ids or ("main",)
    groups: Mapping[Role, Iterable[str]] = {
        Role.SENSOR: (s.id for s in cfg.sensors),
        Role.WORKER: (w.id for w in cfg.workers),
        Role.COORDINATOR: coordinators,
        Role.OBSERVER: observers,
        Role.ADMIN: admins,
        Role.UPLINK: (cfg.uplink.id,) if cfg.uplink is not None else (),
    }
    return [Identity(m, role, i) for role, ids in groups.items() for i in ids]


def provision(
    password_file: Path,
    secrets_dir: Path,
    identities: Iterable[Identity],
    *,
    replace: bool = False,
) -> list[Path]:
    """An account and a secret for each identity; the secrets' paths."""
    return [add_account(password_file, secrets_dir, i, replace=replace) for i in identities]
