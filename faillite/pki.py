"""The mesh's own certificate authority: a CA, broker (server) and node (client) certificates.

Pure Python with ``cryptography`` (no ``openssl`` calls). Everything lands in one folder under
fixed names, so a kit's provisioning is a few commands (``faillite pki``)::

    ca.crt  ca.key           the mesh CA (EC P-256, CA:true, path length 0)
    <name>.crt  <name>.key   a broker's server certificate, or a node's client certificate
    crl.pem                  the revoked certificates (``faillite pki revoke``), for brokers

Private keys are written mode 0600 from the start (no window where they are readable by others)
and unencrypted: a broker or a node must load its key unattended. The CA key never leaves the
provisioning machine: a broker gets ``ca.crt`` and its own pair, a node ``ca.crt`` and (with
client certificates) its own pair. Nothing is overwritten unless asked (``overwrite=True``);
in particular an existing CA is never replaced by accident, since every certificate it issued
would stop verifying.

A client certificate's common name is an account name: with client certificates required, both
brokers take it as the client's identity (Mosquitto's ``use_identity_as_username``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from faillite.identity import PROBE_SUFFIX

CA_CERT: Final = "ca.crt"
CA_KEY: Final = "ca.key"
CRL: Final = "crl.pem"  # the certificates revoked so far, signed by the CA
CA_COMMON_NAME: Final = "FailLite Mesh CA"
CA_DAYS: Final = 5 * 365
LEAF_DAYS: Final = 2 * 365
CLOCK_SKEW: Final = dt.timedelta(minutes=5)  # not-before backdated: nodes' clocks differ
ACCOUNT_URN: Final = "urn:faillite:account:"  # client certificates: the account, as a SAN too
KEY_MODE: Final = 0o600
CERT_MODE: Final = 0o644
# A file name and a certificate CN, and an account name Mosquitto accepts (no ':', '#', spaces).
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DNS_RE: Final = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)


class PkiError(RuntimeError):
    """A certificate that cannot be made or loaded as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class Issued:
    """Where a certificate and its private key were written."""

    cert: Path
    key: Path


def check_name(name: str) -> str:
    """``name`` if it can be a certificate's file name and common name, else PkiError."""
    if not _NAME_RE.match(name) or name.endswith((".crt", ".key")):
        raise PkiError(
            f"name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (it is the file name and the certificate's common name)"
        )
    if name == "ca":
        raise PkiError("name 'ca' is the CA's own file name; choose another")
    return name


def san_entry(host: str) -> x509.GeneralName:
    """A subjectAltName entry for ``host``: an IP address literal or a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if not _DNS_RE.match(host):
        raise PkiError(f"host {host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host.rstrip(".").lower())


# -- files ---------------------------------------------------------------------------------


def _write(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    """Write ``data`` to ``path`` created with ``mode``; an existing file only if ``overwrite``.

    A replacement is written beside the target and renamed over it, so a reader never sees a
    half-written file and the key's mode holds from its first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            raise PkiError(f"{path} exists; not overwriting it (--force replaces it)") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        path.chmod(mode)  # the umask may have narrowed a certificate's mode
        return
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        tmp.chmod(mode)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _save(
    out_dir: Path,
    name: str,
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    *,
    overwrite: bool,
) -> Issued:
    issued = Issued(out_dir / f"{name}.crt", out_dir / f"{name}.key")
    if not overwrite:
        existing = [p for p in (issued.cert, issued.key) if p.exists()]
        if existing:  # check both first: never leave a new key beside an old certificate
            raise PkiError(f"{existing[0]} exists; not overwriting it (--force replaces it)")
    # The key first: a certificate on disk always has its key beside it.
    _write(issued.key, _key_pem(key), KEY_MODE, overwrite=overwrite)
    _write(issued.cert, _cert_pem(cert), CERT_MODE, overwrite=overwrite)
    return issued


def load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise PkiError(f"cannot read certificate {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise PkiError(f"{path} is not a PEM certificate: {exc}") from exc


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise PkiError(f"cannot read private key {path}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path}: expected an EC private key, got {type(key).__name__}")
    return key


# -- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Authority:
    """A loaded CA: its certificate and the key that signs with it."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(days: int, now: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    if days < 1:
        raise PkiError(f"validity of {days} days: at least 1")
    start = (now or dt.datetime.now(dt.timezone.utc)) - CLOCK_SKEW
    return start, start + CLOCK_SKEW + dt.timedelta(days=days)


def make_ca(
    common_name: str = CA_COMMON_NAME, *, days: int = CA_DAYS, now: dt.datetime | None = None
) -> Authority:
    """A new self-signed mesh CA (in memory): may sign end-entity certificates only."""
    key = _new_key()
    start, end = _validity(days, now)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def _leaf(
    ca: Authority,
    common_name: str,
    usage: x509.ObjectIdentifier,
    sans: Sequence[x509.GeneralName],
    days: int,
    now: dt.datetime | None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    start, end = _validity(days, now)
    ca_end = ca.cert.not_valid_after_utc
    end = min(end, ca_end)  # a certificate outliving its CA would only fail later, confusingly
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(ca.key, hashes.SHA256()), key


def make_server_certificate(
    ca: Authority,
    name: str,
    hosts: Sequence[str],
    *,
    days: int = LEAF_DAYS,
    now: dt.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A broker's certificate: serverAuth, one subjectAltName entry per host (IP or DNS).

    Clients check the address they connect to against these entries, so list every name and
    address the broker is reached by (``127.0.0.1`` and ``localhost`` for a local broker)."""
    check_name(name)
    if not hosts:
        raise PkiError("a server certificate needs at least one host (--host)")
    sans = list(dict.fromkeys(san_entry(h) for h in hosts))
    return _leaf(ca, name, ExtendedKeyUsageOID.SERVER_AUTH, sans, days, now)


def make_client_certificate(
    ca: Authority, name: str, *, days: int = LEAF_DAYS, now: dt.datetime | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A node's certificate: clientAuth, common name ``name`` (the account it is).

    The brokers read the common name. The subjectAltName repeats it as a URI
    (``urn:faillite:account:<name>``) for verifiers that require a subjectAltName on every
    end-entity certificate (``cryptography``'s client verifier)."""
    check_name(name)
    san = x509.UniformResourceIdentifier(f"{ACCOUNT_URN}{name}")
    return _leaf(ca, name, ExtendedKeyUsageOID.CLIENT_AUTH, [san], days, now)


# -- the folder API (what ``faillite pki`` runs) ---------------------------------------------


def init_ca(
    out_dir: Path,
    *,
    common_name: str = CA_COMMON_NAME,
    days: int = CA_DAYS,
    overwrite: bool = False,
) -> Issued:
    """Create the mesh CA in ``out_dir`` (``ca.crt``, ``ca.key``).

    An existing CA (either file) is kept and this raises PkiError, unless ``overwrite``:
    replacing it invalidates every certificate it issued."""
    issued = Issued(out_dir / CA_CERT, out_dir / CA_KEY)
    if not overwrite:
        existing = [p for p in (issued.cert, issued.key) if p.exists()]
        if existing:
            raise PkiError(
                f"{existing[0]} exists: a mesh CA is already here. Replacing it would "
                "invalidate every certificate it issued; --force does it anyway"
            )
    ca = make_ca(common_name, days=days)
    _write(issued.key, _key_pem(ca.key), KEY_MODE, overwrite=overwrite)
    _write(issued.cert, _cert_pem(ca.cert), CERT_MODE, overwrite=overwrite)
    return issued


def load_ca(ca_dir: Path) -> Authority:
    """The CA in ``ca_dir``; PkiError if it is missing, not a CA, or its key does not match."""
    cert = load_certificate(ca_dir / CA_CERT)
    key = load_private_key(ca_dir / CA_KEY)
    if cert.public_key() != key.public_key():
        raise PkiError(f"{ca_dir / CA_KEY} is not the key of {ca_dir / CA_CERT}")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise PkiError(f"{ca_dir / CA_CERT} is not a CA certificate")
    return Authority(cert, key)


def issue_server(
    ca_dir: Path,
    name: str,
    hosts: Sequence[str],
    *,
    out_dir: Path | None = None,
    days: int = LEAF_DAYS,
    overwrite: bool = False,
) -> Issued:
    """Issue ``<name>.crt`` / ``<name>.key`` for a broker reached at ``hosts``, signed by the
    CA in ``ca_dir``, into ``out_dir`` (default: ``ca_dir``)."""
    ca = load_ca(ca_dir)
    cert, key = make_server_certificate(ca, name, hosts, days=days)
    return _save(out_dir or ca_dir, name, cert, key, overwrite=overwrite)


def issue_client(
    ca_dir: Path,
    name: str,
    *,
    out_dir: Path | None = None,
    days: int = LEAF_DAYS,
    overwrite: bool = False,
) -> Issued:
    """Issue a client certificate whose common name is the account ``name``."""
    ca = load_ca(ca_dir)
    cert, key = make_client_certificate(ca, name, days=days)
    return _save(out_dir or ca_dir, name, cert, key, overwrite=overwrite)


def probe_certificate(cert_path: Path) -> Path:
    """Where the probe name's certificate of ``cert_path``'s identity is kept: beside it."""
    return cert_path.with_name(f"{cert_path.name.removesuffix('.crt')}{PROBE_SUFFIX}.crt")


def common_name(cert: x509.Certificate) -> str | None:
    """The first common name of ``cert``'s subject (the one Mosquitto takes as identity)."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode()


def revoke(ca_dir: Path, cert_path: Path, *, now: dt.datetime | None = None) -> Path:
    """Add ``cert_path``'s certificate to the CA's revocation list (``crl.pem``, re-signed with
    every earlier entry); return its path. The list is valid as long as the CA: a broker that
    checks it must never refuse everyone because a list went stale in the field."""
    ca = load_ca(ca_dir)
    cert = load_certificate(cert_path)
    if cert.issuer != ca.cert.subject:
        raise PkiError(f"{cert_path} was not issued by the CA in {ca_dir}")
    now = now or dt.datetime.now(dt.timezone.utc)
    crl_path = ca_dir / CRL
    revoked = list(_revoked(crl_path))
    if any(r.serial_number == cert.serial_number for r in revoked):
        return crl_path
    revoked.append(
        x509.RevokedCertificateBuilder()
        .serial_number(cert.serial_number)
        .revocation_date(now)
        .build()
    )
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(ca.cert.not_valid_after_utc)
    )
    for r in revoked:
        builder = builder.add_revoked_certificate(r)
    crl = builder.sign(ca.key, hashes.SHA256())
    _write(crl_path, crl.public_bytes(serialization.Encoding.PEM), CERT_MODE, overwrite=True)
    return crl_path


def _revoked(crl_path: Path) -> list[x509.RevokedCertificate]:
    if not crl_path.exists():
        return []
    try:
        return list(x509.load_pem_x509_crl(crl_path.read_bytes()))
    except ValueError as exc:
        raise PkiError(f"{crl_path} is not a certificate revocation list: {exc}") from exc


def revoked_serials(crl_path: Path) -> set[int]:
    return {r.serial_number for r in _revoked(crl_path)}
