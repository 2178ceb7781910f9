"""Signed coordinator output: Ed25519, with a key only coordinators hold.

The broker's ACL lets only coordinator accounts write assignments and the coordinator status;
MQTT 3.1.1 carries no publisher identity, so a broker with a wrong ACL would let anybody steer
the workers. Signing is the line behind it: with ``coordinator.signing`` configured, the leader
signs everything it writes that others act on (assignments, its status: birth, last-will and
clean offline; its beat, routes, the placement, and the obituary of a worker whose last-will
was lost), and every reader that holds the public key refuses one that is unsigned or badly
signed (counted ``bad_signature``). A worker's own last-will cannot be signed (the broker
publishes it); it is sealed instead (``faillite.presence``).

What is signed (:func:`signed_bytes`): a context string, the mesh id, the topic, and the
message's fields without ``sig`` as orjson with sorted keys. A signature holds for one mesh and
one topic: an assignment of ``w1`` replayed on ``w2``'s topic, or into another mesh, fails. An
older signed message replayed on its own topic is refused by the ``(term, generation)`` order
(``workers/fencing.py``), as is any older one.

The signature covers the fields of the schema the reader decodes. A field added later must come
with a new ``v`` (or stay out of the signed bytes), or older readers would refuse the message.

Keys: ``faillite pki signing-key`` writes the private key (PKCS#8 PEM, mode 0600, coordinators
only) and the public key (SubjectPublicKeyInfo PEM, every worker and coordinator).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from faillite import messages

if TYPE_CHECKING:
    from faillite.config import SigningConfig

CONTEXT: Final = b"faillite-signature-v1"
KEY_MODE: Final = 0o600
PUBLIC_MODE: Final = 0o644
REASON: Final = "bad_signature"  # the bad-input reason workers count refusals under

# The messages a mesh signs.
S = TypeVar(
    "S",
    messages.Assignment,
    messages.CoordinatorStatus,
    messages.CoordinatorBeat,
    messages.Route,
    messages.Placement,
    messages.WorkerStatus,
)
Signed = (
    messages.Assignment
    | messages.CoordinatorStatus
    | messages.CoordinatorBeat
    | messages.Route
    | messages.Placement
    | messages.WorkerStatus
)


class SigningError(RuntimeError):
    """A signing key that cannot be loaded or written; the message says which and why."""


class SignatureError(ValueError):
    """A message that is unsigned or whose signature does not verify."""

    reason = REASON


def signed_bytes(mesh: str, topic: str, msg: Signed) -> bytes:
    """What a signature covers: the mesh, the topic and every field but ``sig``."""
    body = messages.to_dict(msg)
    body.pop("sig", None)
    return b"\n".join(
        (CONTEXT, mesh.encode(), topic.encode(), orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    )


class Verifier:
    """Checks signatures with the mesh's public key."""

    def __init__(self, key: Ed25519PublicKey, mesh: str) -> None:
        self._key = key
        self.mesh = mesh

    def verify(self, topic: str, msg: Signed) -> None:
        """Return if ``msg`` on ``topic`` carries a good signature; else :class:`SignatureError`."""
        if not msg.sig:
            raise SignatureError(f"unsigned {type(msg).__name__} on {topic}")
        try:
            sig = base64.b64decode(msg.sig, validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError(f"{type(msg).__name__} on {topic}: sig is not base64") from None
        try:
            self._key.verify(sig, signed_bytes(self.mesh, topic, msg))
        except InvalidSignature:
            raise SignatureError(
                f"{type(msg).__name__} on {topic}: signature does not verify"
            ) from None

    def valid(self, topic: str, msg: Signed) -> bool:
        try:
            self.verify(topic, msg)
        except SignatureError:
            return False
        return True


class Signer:
    """Signs what a coordinator writes, with the key only coordinators hold."""

    def __init__(self, key: Ed25519PrivateKey, mesh: str) -> None:
        self._key = key
        self.mesh = mesh
        self.verifier = Verifier(key.public_key(), mesh)

    def sign(self, topic: str, msg: S) -> S:
        """``msg`` with its ``sig`` for ``topic`` (any old ``sig`` is replaced)."""
        sig = self._key.sign(signed_bytes(self.mesh, topic, msg))
        return dataclasses.replace(msg, sig=base64.b64encode(sig).decode("ascii"))


# -- keys --------------------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read the {what} {path}: {exc.strerror}") from exc


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(_read(path, "signing public key"))
    except ValueError as exc:
        raise SigningError(f"{path}: not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{path}: not an Ed25519 public key ({type(key).__name__})")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path, "signing key"), password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{path}: not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: not an Ed25519 private key ({type(key).__name__})")
    return key


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_verifier(cfg: SigningConfig, mesh: str) -> Verifier:
    """A worker's side: the public key only."""
    return Verifier(load_public_key(cfg.public_key), mesh)


def mesh_verifier(cfg: SigningConfig | None, mesh: str) -> Verifier | None:
    """A reader's verifier where the mesh signs (``coordinator.signing``), else None."""
    return load_verifier(cfg, mesh) if cfg is not None else None


def load_signer(cfg: SigningConfig, mesh: str) -> Signer:
    """A coordinator's side: its private key, which must match the mesh's public key (a
    coordinator signing with another key would be refused by every worker)."""
    if cfg.private_key is None:
        raise SigningError(
            "coordinator.signing has no private_key: a coordinator of a signing mesh needs it "
            "(faillite pki signing-key)"
        )
    key = load_private_key(cfg.private_key)
    if _raw(key.public_key()) != _raw(load_public_key(cfg.public_key)):
        raise SigningError(
            f"{cfg.private_key} does not belong to the public key {cfg.public_key}: workers "
            "would refuse everything this coordinator signs"
        )
    return Signer(key, mesh)


def _write(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    """Write ``data`` created with ``mode`` from its first byte; a replacement goes beside the
    target and is renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path if not overwrite else path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise SigningError(f"{path} exists; not overwriting it (--force replaces it)") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        target.chmod(mode)  # the umask may have narrowed it
        if target != path:
            target.replace(path)
    except BaseException:
        if target != path:
            target.unlink(missing_ok=True)
        raise


def generate_key(
    out_dir: Path, name: str = "signing", *, overwrite: bool = False
) -> tuple[Path, Path]:
    """A new Ed25519 pair: ``{name}.key`` (mode 0600, coordinators only) and ``{name}.pub``
    (every worker and coordinator). Returns their paths."""
    if not name or "/" in name or name.startswith("."):
        raise SigningError(f"name {name!r}: a plain file name, without '/' or a leading '.'")
    key = Ed25519PrivateKey.generate()
    private = out_dir / f"{name}.key"
    public = out_dir / f"{name}.pub"
    if not overwrite:
        for p in (private, public):
            if p.exists():
                raise SigningError(f"{p} exists; not overwriting it (--force replaces it)")
    _write(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        KEY_MODE,
        overwrite=overwrite,
    )
    _write(
        public,
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        PUBLIC_MODE,
        overwrite=overwrite,
    )
    return private, public
