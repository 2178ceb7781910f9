"""The mesh's own CA (``faillite.pki``, ``faillite pki``): what it writes and what verifies.

Certificates are checked with ``cryptography``'s own path validation (the web PKI rules: a
server certificate for the host asked, a client certificate, both chained to the mesh CA) and
with ``ssl`` (the contexts every role and the embedded broker build). No network.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from faillite import pki
from faillite.cli import main as faillite_main
from faillite.config import TlsConfig, TlsServerConfig
from faillite.tls import client_context, server_context


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    out = tmp_path / "ca"
    pki.init_ca(out)
    return out


def _store(ca_dir: Path) -> Store:
    return Store([pki.load_certificate(ca_dir / pki.CA_CERT)])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_ca_is_a_p256_ca_for_end_entities_only(ca_dir: Path) -> None:
    ca = pki.load_ca(ca_dir)
    assert ca.key.curve.name == "secp256r1"
    assert ca.cert.subject == ca.cert.issuer
    bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    lifetime = ca.cert.not_valid_after_utc - ca.cert.not_valid_before_utc
    assert dt.timedelta(days=5 * 365) <= lifetime <= dt.timedelta(days=5 * 365 + 1)
    ca.cert.verify_directly_issued_by(ca.cert)  # self-signed


def test_a_server_certificate_verifies_for_its_hosts_only(ca_dir: Path) -> None:
    issued = pki.issue_server(ca_dir, "broker", ["127.0.0.1", "localhost", "kit-broker.local"])
    assert (issued.cert, issued.key) == (ca_dir / "broker.crt", ca_dir / "broker.key")
    cert = pki.load_certificate(issued.cert)
    assert pki.common_name(cert) == "broker"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "kit-broker.local"]
    builder = PolicyBuilder().store(_store(ca_dir))
    for subject in (
        IPAddress(ipaddress.ip_address("127.0.0.1")),
        DNSName("localhost"),
        DNSName("kit-broker.local"),
    ):
        chain = builder.build_server_verifier(subject).verify(cert, [])
        assert chain[-1] == pki.load_certificate(ca_dir / pki.CA_CERT)
    with pytest.raises(VerificationError):
        builder.build_server_verifier(IPAddress(ipaddress.ip_address("127.0.0.2"))).verify(cert, [])
    with pytest.raises(VerificationError):
        builder.build_server_verifier(DNSName("other.local")).verify(cert, [])


def test_a_client_certificate_names_its_account_and_verifies(ca_dir: Path) -> None:
    issued = pki.issue_client(ca_dir, "w1")
    cert = pki.load_certificate(issued.cert)
    assert pki.common_name(cert) == "w1"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    verified = PolicyBuilder().store(_store(ca_dir)).build_client_verifier().verify(cert, [])
    assert verified.subjects == [x509.UniformResourceIdentifier("urn:faillite:account:w1")]
    # Not usable as a server certificate: its EKU says client only.
    with pytest.raises(VerificationError):
        PolicyBuilder().store(_store(ca_dir)).build_server_verifier(DNSName("w1")).verify(cert, [])


def test_certificates_of_another_ca_do_not_verify(ca_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    pki.init_ca(other)
    cert = pki.load_certificate(pki.issue_server(other, "broker", ["127.0.0.1"]).cert)
    with pytest.raises(VerificationError):
        PolicyBuilder().store(_store(ca_dir)).build_server_verifier(
            IPAddress(ipaddress.ip_address("127.0.0.1"))
        ).verify(cert, [])


def test_the_files_load_into_ssl_contexts(ca_dir: Path) -> None:
    pki.issue_server(ca_dir, "broker", ["127.0.0.1"])
    pki.issue_client(ca_dir, "w1")
    tls = TlsConfig(
        ca_certs=ca_dir / "ca.crt",
        certfile=ca_dir / "w1.crt",
        keyfile=ca_dir / "w1.key",
        server=TlsServerConfig(
            certfile=ca_dir / "broker.crt",
            keyfile=ca_dir / "broker.key",
            require_client_certificate=True,
        ),
    )
    client = client_context(tls)
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    assert client.minimum_version >= ssl.TLSVersion.TLSv1_2
    server = server_context(tls)
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert server.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_private_keys_are_0600_and_certificates_0644(ca_dir: Path) -> None:
    pki.issue_server(ca_dir, "broker", ["127.0.0.1"])
    pki.issue_client(ca_dir, "w1")
    for name in ("ca", "broker", "w1"):
        assert _mode(ca_dir / f"{name}.key") == 0o600, name
        assert _mode(ca_dir / f"{name}.crt") == 0o644, name


def test_an_existing_ca_is_never_overwritten_without_force(ca_dir: Path) -> None:
    before = (ca_dir / "ca.key").read_bytes(), (ca_dir / "ca.crt").read_bytes()
    with pytest.raises(pki.PkiError, match="already here"):
        pki.init_ca(ca_dir)
    (ca_dir / "ca.crt").unlink()  # half a CA left: still not replaced
    with pytest.raises(pki.PkiError, match=r"ca\.key exists"):
        pki.init_ca(ca_dir)
    assert (ca_dir / "ca.key").read_bytes() == before[0]
    pki.init_ca(ca_dir, overwrite=True)
    assert (ca_dir / "ca.key").read_bytes() != before[0]
    assert _mode(ca_dir / "ca.key") == 0o600
    assert not list(ca_dir.glob(".*.tmp"))


def test_issued_files_are_not_overwritten_without_force(ca_dir: Path) -> None:
    first = pki.issue_client(ca_dir, "w1")
    key = first.key.read_bytes()
    with pytest.raises(pki.PkiError, match="exists"):
        pki.issue_client(ca_dir, "w1")
    assert first.key.read_bytes() == key
    again = pki.issue_client(ca_dir, "w1", overwrite=True)
    assert again.key.read_bytes() != key and _mode(again.key) == 0o600


def test_issuing_into_another_folder(ca_dir: Path, tmp_path: Path) -> None:
    issued = pki.issue_client(ca_dir, "cam1", out_dir=tmp_path / "node")
    assert issued.cert == tmp_path / "node" / "cam1.crt"
    assert not (ca_dir / "cam1.crt").exists()


@pytest.mark.parametrize("name", ["", "ca", "a b", "w1:x", "#", "-lead", "x" * 65, "w1.key"])
def test_bad_names_are_refused(ca_dir: Path, name: str) -> None:
    with pytest.raises(pki.PkiError):
        pki.issue_client(ca_dir, name)


@pytest.mark.parametrize("host", ["bad host", "a..b", "-x.local", ""])
def test_bad_hosts_are_refused(ca_dir: Path, host: str) -> None:
    with pytest.raises(pki.PkiError):
        pki.issue_server(ca_dir, "broker", [host])


def test_a_server_certificate_needs_a_host(ca_dir: Path) -> None:
    with pytest.raises(pki.PkiError, match="host"):
        pki.issue_server(ca_dir, "broker", [])


def test_a_ca_whose_key_does_not_match_is_refused(ca_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    pki.init_ca(other)
    (ca_dir / "ca.key").write_bytes((other / "ca.key").read_bytes())
    with pytest.raises(pki.PkiError, match="not the key"):
        pki.load_ca(ca_dir)
    with pytest.raises(pki.PkiError, match="cannot read"):
        pki.load_ca(tmp_path / "nowhere")


def test_a_leaf_never_outlives_its_ca(tmp_path: Path) -> None:
    ca = pki.make_ca(days=30)
    cert, _key = pki.make_client_certificate(ca, "w1", days=365)
    assert cert.not_valid_after_utc <= ca.cert.not_valid_after_utc


def test_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kit"
    assert faillite_main(["pki", "init", "--out", str(out)]) == 0
    assert faillite_main(["pki", "init", "--out", str(out)]) == 2
    assert "already here" in capsys.readouterr().err
    args = ["pki", "server", "--ca", str(out), "--name", "broker"]
    assert faillite_main([*args, "--host", "127.0.0.1", "--host", "kit-broker.local"]) == 0
    assert faillite_main(["pki", "client", "--ca", str(out), "--name", "w1"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / n) for n in ("broker.crt", "broker.key", "w1.crt", "w1.key")]
    assert faillite_main(["pki", "client", "--ca", str(out), "--name", "w1"]) == 2
    assert faillite_main(["pki", "client", "--ca", str(out), "--name", "w1", "--force"]) == 0
    assert faillite_main(["pki", "client", "--ca", str(tmp_path / "none"), "--name", "x"]) == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "broker.crt",
        "broker.key",
        "ca.crt",
        "ca.key",
        "w1.crt",
        "w1.key",
    ]
