"""TLS on both real brokers, with the mesh's own CA (``faillite.pki``), on loopback.

Per broker kind (amqtt: the embedded broker, in its own process; Mosquitto): a MeshClient
trusting the mesh CA connects and a message round-trips; a client trusting another CA, and a
broker whose certificate another CA signed, get no connection; the host name check is against
the server certificate's subjectAltName. With client certificates required: no certificate, no
connection; a certificate of the mesh CA gets in, and its common name is the identity whatever
the CONNECT says (the ACL of that identity applies).
"""

from __future__ import annotations

import contextlib
import queue
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from faillite import messages, pki
from faillite.accounts import add_account
from faillite.config import BrokerConfig, TlsConfig, TlsServerConfig
from faillite.identity import Identity
from faillite.mqtt import ConnectError, MeshClient, Raw, Will
from faillite.presence import IdentityInUseError, Presence
from faillite.revocation import Applied, apply_revocation
from faillite.tls import client_context
from faillite.topics import Role, Topics
from field_kit.brokers import BROKER_KINDS, BrokerEndpoint, BrokerLauncher, BrokerUnavailableError
from field_kit.procs import wait_until

MESH = "tlsmesh"
T = Topics(MESH)
REFUSED_WITHIN_S = 2.0  # a refused client gets no connection within this long
CAM1 = Identity(MESH, Role.SENSOR, "cam1")
W1 = Identity(MESH, Role.WORKER, "w1")
COORD = Identity(MESH, Role.COORDINATOR, "main")
STRANGER = Identity(MESH, Role.WORKER, "stranger")  # a certificate, but no account


@dataclass(frozen=True)
class Pki:
    mesh: Path  # the mesh CA's folder: ca.crt, broker.crt (127.0.0.1, localhost), clients
    accounts: Path  # passwd, and secrets/ with each identity's secret
    foreign: Path  # another CA: its own ca.crt and a broker.crt for the same hosts
    elsewhere: Path  # broker certificate of the mesh CA for another host only

    def tls(self, *, client: Identity | None = None, ca: Path | None = None) -> TlsConfig:
        """A node's TLS settings: trusts ``ca`` (default the mesh CA), presents ``client``."""
        ca_dir = ca or self.mesh
        return TlsConfig(
            ca_certs=ca_dir / pki.CA_CERT,
            certfile=self.mesh / f"{client.name}.crt" if client else None,
            keyfile=self.mesh / f"{client.name}.key" if client else None,
        )

    def server(self, *, folder: Path | None = None, require_client: bool = False) -> TlsConfig:
        """The broker's TLS settings with the certificate in ``folder`` (default: the mesh's)."""
        d = folder or self.mesh
        return TlsConfig(
            ca_certs=self.mesh / pki.CA_CERT,
            server=TlsServerConfig(
                certfile=d / "broker.crt",
                keyfile=d / "broker.key",
                require_client_certificate=require_client,
            ),
        )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    mesh, foreign, elsewhere = root / "mesh", root / "foreign", root / "elsewhere"
    pki.init_ca(mesh)
    pki.issue_server(mesh, "broker", ["127.0.0.1", "localhost"])
    for identity in (CAM1, W1, COORD, STRANGER):
        pki.issue_client(mesh, identity.name)
    pki.issue_client(mesh, W1.probe_name)  # the certificate of w1's look before connecting
    pki.init_ca(foreign, common_name="Somebody Else's CA")
    pki.issue_server(foreign, "broker", ["127.0.0.1", "localhost"])
    pki.issue_client(foreign, CAM1.name)
    pki.issue_server(mesh, "broker", ["kit-broker.local"], out_dir=elsewhere)
    accounts = root / "accounts"
    for identity in (CAM1, W1, COORD):
        add_account(accounts / "passwd", accounts / "secrets", identity)
    return Pki(mesh, accounts, foreign, elsewhere)


def _start(launcher: BrokerLauncher, kind: str, cfg: BrokerConfig) -> BrokerEndpoint:
    try:
        return launcher.start(kind, cfg, mesh=MESH)
    except BrokerUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module", params=BROKER_KINDS, ids=BROKER_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerLauncher]:
    with BrokerLauncher(tmp_path_factory.mktemp("tls-brokers")) as launcher:
        yield launcher


@pytest.fixture(scope="module")
def tls_broker(launcher: BrokerLauncher, kind: str, certs: Pki) -> BrokerEndpoint:
    """TLS with the mesh CA's certificate; no accounts (loopback), no client certificates."""
    return _start(launcher, kind, BrokerConfig(tls=certs.server()))


@pytest.fixture(scope="module")
def mtls_broker(launcher: BrokerLauncher, kind: str, certs: Pki) -> BrokerEndpoint:
    """Client certificates required, accounts with the per-identity ACL."""
    cfg = BrokerConfig(
        tls=certs.server(require_client=True),
        password_file=certs.accounts / "passwd",
        acl=True,
        login_delay_s=0.0,
    )
    return _start(launcher, kind, cfg)


# -- helpers ------------------------------------------------------------------------------------


def uid() -> str:
    return uuid.uuid4().hex[:8]


def node_config(
    ep: BrokerEndpoint, tls: TlsConfig, *, host: str | None = None, secrets: Path | None = None
) -> BrokerConfig:
    """What a node's config says: the broker, its TLS files, where its secret is."""
    return BrokerConfig(host=host or ep.host, port=ep.port, tls=tls, secrets_dir=secrets)


@contextlib.contextmanager
def connected(
    cfg: BrokerConfig, role: Role = Role.ADMIN, name: str | Identity = "c"
) -> Iterator[MeshClient]:
    client_id = name.name if isinstance(name, Identity) else f"{name}-{uid()}"
    client = MeshClient(client_id, cfg, quiet=True)
    client.start(connect_timeout=10)
    try:
        yield client
    finally:
        client.stop()


def refused(cfg: BrokerConfig, role: Role = Role.ADMIN, identity: Identity | None = None) -> bool:
    """True if a MeshClient with ``cfg`` gets no connection (it keeps retrying meanwhile)."""
    client_id = identity.name if identity is not None else f"refused-{uid()}"
    client = MeshClient(client_id, cfg, quiet=True)
    try:
        client.start(connect_timeout=REFUSED_WITHIN_S)
    except ConnectError:
        return client.connects == 0
    client.stop()
    return False


def handshake_error(ep: BrokerEndpoint, tls: TlsConfig, host: str) -> ssl.SSLError | None:
    """The client-side TLS handshake with ``tls`` to the broker reached as ``host``."""
    ctx = client_context(tls)
    with socket.create_connection((ep.host, ep.port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=host):
                return None
        except ssl.SSLError as exc:
            return exc


MARKER = b"marker"


class Inbox:
    """What a subscription received, markers (see :func:`listening`) left out."""

    def __init__(self) -> None:
        self.q: queue.Queue[Raw] = queue.Queue()
        self.marked = False

    def __call__(self, msg: Raw) -> None:
        if msg.payload == MARKER:
            self.marked = True
        else:
            self.q.put(msg)

    def get(self, timeout: float = 5.0) -> Raw:
        return self.q.get(timeout=timeout)

    def drained(self, quiet_s: float = 0.4) -> list[Raw]:
        time.sleep(quiet_s)
        out = []
        while not self.q.empty():
            out.append(self.q.get_nowait())
        return out


def listening(client: MeshClient, topic_filter: str, marker_topic: str) -> Inbox:
    """Subscribe ``client`` and return once the subscription is live: a marker it publishes
    on ``marker_topic`` (matched by the filter) has come back."""
    inbox = Inbox()
    client.subscribe(topic_filter, inbox)
    deadline = time.monotonic() + 10
    while not inbox.marked:
        assert time.monotonic() < deadline, f"subscription to {topic_filter} never became live"
        client.publish(marker_topic, MARKER, qos=1)
        time.sleep(0.1)
    return inbox


def round_trip(pub: MeshClient, sub: MeshClient, topic: str) -> bytes:
    """Publish on ``topic`` once ``sub``'s subscription is live; what ``sub`` receives."""
    inbox = listening(sub, topic, topic)
    pub.publish(topic, b"over-tls", qos=1)
    return inbox.get().payload


# -- TLS with the mesh CA -----------------------------------------------------------------------


def test_a_client_with_the_mesh_ca_connects_and_a_message_round_trips(
    tls_broker: BrokerEndpoint, certs: Pki
) -> None:
    cfg = node_config(tls_broker, certs.tls())
    topic = f"faillite/{MESH}/events/{uid()}"
    with connected(cfg, name="pub") as pub, connected(cfg, name="sub") as sub:
        assert round_trip(pub, sub, topic) == b"over-tls"


def test_the_host_name_is_checked_against_the_subject_alt_names(
    tls_broker: BrokerEndpoint, certs: Pki
) -> None:
    # The certificate names IP 127.0.0.1 and DNS localhost: both verify.
    assert handshake_error(tls_broker, certs.tls(), "127.0.0.1") is None
    assert handshake_error(tls_broker, certs.tls(), "localhost") is None
    with connected(node_config(tls_broker, certs.tls(), host="localhost")) as client:
        assert client.connected
    # An address it does not name is refused, although the chain is the mesh CA's.
    err = handshake_error(tls_broker, certs.tls(), "127.0.0.2")
    assert isinstance(err, ssl.SSLCertVerificationError), err
    assert "mismatch" in str(err)


def test_a_client_trusting_another_ca_gets_no_connection(
    tls_broker: BrokerEndpoint, certs: Pki
) -> None:
    foreign = certs.tls(ca=certs.foreign)
    err = handshake_error(tls_broker, foreign, "127.0.0.1")
    assert isinstance(err, ssl.SSLCertVerificationError), err
    assert refused(node_config(tls_broker, foreign))


def test_a_plain_client_gets_no_connection_to_a_tls_broker(tls_broker: BrokerEndpoint) -> None:
    assert refused(BrokerConfig(host=tls_broker.host, port=tls_broker.port))


def test_a_broker_whose_certificate_another_ca_signed_is_refused(
    launcher: BrokerLauncher, kind: str, certs: Pki
) -> None:
    impostor = _start(launcher, kind, BrokerConfig(tls=certs.server(folder=certs.foreign)))
    err = handshake_error(impostor, certs.tls(), "127.0.0.1")
    assert isinstance(err, ssl.SSLCertVerificationError), err
    assert "unable to get local issuer certificate" in str(err)
    assert refused(node_config(impostor, certs.tls()))


def test_a_broker_certificate_for_another_host_is_refused(
    launcher: BrokerLauncher, kind: str, certs: Pki
) -> None:
    other = _start(launcher, kind, BrokerConfig(tls=certs.server(folder=certs.elsewhere)))
    err = handshake_error(other, certs.tls(), "127.0.0.1")
    assert isinstance(err, ssl.SSLCertVerificationError), err
    assert refused(node_config(other, certs.tls()))


# -- client certificates required ---------------------------------------------------------------


def test_without_a_client_certificate_there_is_no_connection(
    mtls_broker: BrokerEndpoint, certs: Pki
) -> None:
    # Even with a valid account and its secret.
    cfg = node_config(mtls_broker, certs.tls(), secrets=certs.accounts / "secrets")
    assert refused(cfg, Role.COORDINATOR, COORD)


def test_a_client_certificate_of_another_ca_gets_no_connection(
    mtls_broker: BrokerEndpoint, certs: Pki
) -> None:
    tls = TlsConfig(
        ca_certs=certs.mesh / pki.CA_CERT,
        certfile=certs.foreign / f"{CAM1.name}.crt",
        keyfile=certs.foreign / f"{CAM1.name}.key",
    )
    assert refused(node_config(mtls_broker, tls), identity=CAM1)


def test_the_certificate_common_name_is_the_identity(
    mtls_broker: BrokerEndpoint, certs: Pki
) -> None:
    """cam1's certificate, no password: in as cam1 (sensor). cam1's certificate with the
    coordinator's secret in CONNECT: still cam1, so an assignment it publishes is dropped by
    the ACL, while its sensor status goes through."""
    status = T.sensor_status("cam1")
    assignment = T.worker_assignment("w1")
    watcher_cfg = node_config(mtls_broker, certs.tls(client=COORD))  # no password at all
    cam_cfg = node_config(mtls_broker, certs.tls(client=CAM1))
    claims_coord = node_config(
        mtls_broker, certs.tls(client=CAM1), secrets=certs.accounts / "secrets"
    )
    with connected(watcher_cfg, Role.COORDINATOR, COORD) as watcher:
        inbox = listening(watcher, T.everything, T.events_of(Role.COORDINATOR, COORD.id))
        for cfg in (cam_cfg, claims_coord):
            with connected(cfg, Role.SENSOR, CAM1) as cam:
                cam.publish(assignment, b"from-cam1", qos=1)
                cam.publish(status, b"online", qos=1)
                msg = inbox.get()
                assert (msg.topic, msg.payload) == (status, b"online")
                assert [m.topic for m in inbox.drained()] == []
        # The coordinator's own certificate may publish the assignment.
        watcher.publish(assignment, b"from-coord", qos=1)
        assert inbox.get().payload == b"from-coord"
        watcher.publish(assignment, b"", qos=1, retain=True)


def test_a_certificate_with_another_identitys_client_id(
    mtls_broker: BrokerEndpoint, certs: Pki
) -> None:
    """cam1's certificate under the coordinator's client id: the embedded broker refuses it
    (a client connects only as itself); Mosquitto replaces the client id with the
    certificate's name (``use_username_as_clientid``) and admits it as cam1, with cam1's
    rules, taking nobody's session."""
    cfg = node_config(mtls_broker, certs.tls(client=CAM1))
    if mtls_broker.kind == "amqtt":
        assert refused(cfg, identity=COORD)
    else:
        assert not refused(cfg, identity=COORD)


def test_a_certificate_without_an_account(mtls_broker: BrokerEndpoint, certs: Pki) -> None:
    """The CA signed it but no account has its name (never made, or revoked). The embedded
    broker refuses it; Mosquitto (use_identity_as_username) admits it with no ACL rules: it
    can do nothing."""
    cfg = node_config(mtls_broker, certs.tls(client=STRANGER))
    if mtls_broker.kind == "amqtt":
        assert refused(cfg, identity=STRANGER)
        return
    with connected(
        node_config(mtls_broker, certs.tls(client=COORD)), Role.COORDINATOR, COORD
    ) as watcher:
        inbox = listening(watcher, T.everything, T.events_of(Role.COORDINATOR, COORD.id))
        with connected(cfg, name=STRANGER) as stranger:
            stranger.publish(T.events_of(Role.SENSOR, "cam1"), b"from-stranger", qos=1)
            stranger.publish(T.sensor_status("cam1"), b"from-stranger", qos=1)
            assert inbox.drained(0.5) == []


def test_a_revoked_certificate_gets_no_connection(
    launcher: BrokerLauncher, kind: str, certs: Pki, tmp_path: Path
) -> None:
    """``faillite pki revoke``: the CA's list names w1's certificate; a broker given the list
    refuses it at the handshake, and every other device's certificate still gets in."""
    ca = tmp_path / "ca"
    ca.mkdir()
    for name in (pki.CA_CERT, pki.CA_KEY, "broker.crt", "broker.key"):
        (ca / name).write_bytes((certs.mesh / name).read_bytes())
    crl = pki.revoke(ca, certs.mesh / f"{W1.name}.crt")
    assert pki.revoke(ca, certs.mesh / f"{W1.name}.crt") == crl  # twice: one entry
    assert len(pki.revoked_serials(crl)) == 1
    server = certs.server(require_client=True)
    assert server.server is not None
    tls = server.model_copy(update={"server": server.server.model_copy(update={"crlfile": crl})})
    ep = _start(launcher, kind, BrokerConfig(tls=tls, password_file=certs.accounts / "passwd"))
    assert refused(node_config(ep, certs.tls(client=W1)), identity=W1)
    with connected(node_config(ep, certs.tls(client=CAM1)), Role.SENSOR, CAM1) as cam:
        assert cam.connected


def _revocable(
    launcher: BrokerLauncher, kind: str, certs: Pki, tmp_path: Path, *, pid_file: Path | None
) -> tuple[BrokerEndpoint, BrokerConfig, Path, Path]:
    """A broker requiring client certificates, checked against a list of its own CA (a copy
    of the mesh CA, so revocations stay in this test): the endpoint, the broker's config as
    the revocation tooling reads it, the CA folder, the list."""
    ca = tmp_path / "ca"
    ca.mkdir()
    for name in (pki.CA_CERT, pki.CA_KEY, "broker.crt", "broker.key"):
        (ca / name).write_bytes((certs.mesh / name).read_bytes())
    crl = pki.revoke(ca, certs.mesh / f"{STRANGER.name}.crt")  # a list that names someone else
    server = certs.server(require_client=True)
    assert server.server is not None
    tls = server.model_copy(update={"server": server.server.model_copy(update={"crlfile": crl})})
    cfg = BrokerConfig(tls=tls, password_file=certs.accounts / "passwd", pid_file=pid_file)
    ep = _start(launcher, kind, cfg)
    return ep, cfg.model_copy(update={"port": ep.port}), ca, crl


def _revoke_w1_while_connected(
    ep: BrokerEndpoint, certs: Pki, revoke: Callable[[], object]
) -> None:
    """w1 and cam1 connected; ``revoke`` w1: its connection ends within seconds and none of
    its reconnects gets in; cam1 keeps its one connection."""
    with (
        connected(node_config(ep, certs.tls(client=W1)), Role.WORKER, W1) as w1,
        connected(node_config(ep, certs.tls(client=CAM1)), Role.SENSOR, CAM1) as cam,
    ):
        assert w1.connected and w1.connects == 1
        revoke()
        assert wait_until(lambda: not w1.connected, 10), "the revoked certificate kept its link"
        time.sleep(1.5)  # its client keeps retrying: none gets in
        assert not w1.connected and w1.connects == 1
        assert cam.connected and cam.connects == 1
    assert refused(node_config(ep, certs.tls(client=W1)), identity=W1)


def test_the_embedded_broker_applies_a_revoked_certificate_by_itself(
    launcher: BrokerLauncher, certs: Pki, tmp_path: Path
) -> None:
    """No tooling: the embedded broker re-reads the CA's list when it changes, closes w1's
    live connection and refuses its reconnects, with no restart."""
    ep, _cfg, ca, _crl = _revocable(launcher, "amqtt", certs, tmp_path, pid_file=None)
    _revoke_w1_while_connected(ep, certs, lambda: pki.revoke(ca, certs.mesh / f"{W1.name}.crt"))
    assert "revoked_client_disconnected" in launcher.process(ep).log_path.read_text()


def test_pki_revoke_ends_a_live_certificate_on_either_broker(
    launcher: BrokerLauncher, kind: str, certs: Pki, tmp_path: Path
) -> None:
    """``faillite pki revoke -c``: the broker named by ``broker.pid_file`` is signalled
    (Mosquitto reloads the list for new handshakes; the embedded broker logs it) and w1's
    session is taken over by a fresh certificate of its name, since Mosquitto keeps a live
    connection whose certificate was revoked. That certificate is revoked right after."""
    pid_file = tmp_path / "broker.pid"
    ep, running, ca, crl = _revocable(launcher, kind, certs, tmp_path, pid_file=pid_file)
    assert wait_until(pid_file.exists, 10), "no pid file"
    applied: list[Applied] = []

    def revoke() -> None:
        pki.revoke(ca, certs.mesh / f"{W1.name}.crt")
        applied.append(apply_revocation(running, name=W1.name, ca_dir=ca))

    _revoke_w1_while_connected(ep, certs, revoke)
    assert applied == [Applied(pid=launcher.process(ep).proc.pid, session_ended=True)]
    assert len(pki.revoked_serials(crl)) == 3  # the stranger, w1, the takeover's certificate
    if kind == "amqtt":
        assert "broker_reload_signalled" in launcher.process(ep).log_path.read_text()


def test_with_certificates_only_a_certificate_takes_no_other_session(
    launcher: BrokerLauncher, kind: str, certs: Pki
) -> None:
    """Client certificates and no password file: cam1's certificate under the coordinator's
    client id takes nothing from it on either broker (the embedded broker refuses it;
    Mosquitto renames the client to its certificate's name, ``use_username_as_clientid``):
    the coordinator keeps its one connection and its will does not fire."""
    ep = _start(launcher, kind, BrokerConfig(tls=certs.server(require_client=True), acl=False))
    will_topic = f"faillite/{MESH}/events/will-{uid()}"
    coord = MeshClient(
        COORD.name,
        node_config(ep, certs.tls(client=COORD)),
        will=Will(will_topic, b"coordinator-gone", qos=1),
        quiet=True,
    )
    coord.start(connect_timeout=10)
    try:
        with connected(node_config(ep, certs.tls(client=W1)), Role.WORKER, W1) as watcher:
            wills = listening(watcher, will_topic, will_topic)
            intruder = MeshClient(COORD.name, node_config(ep, certs.tls(client=CAM1)), quiet=True)
            try:
                intruder.start(connect_timeout=REFUSED_WITHIN_S)
                admitted = True
            except ConnectError:
                admitted = False
            finally:
                intruder.stop()
            assert admitted == (kind == "mosquitto")
            # A round trip on the coordinator's connection: had it been taken over, the marker
            # could only come back on a second connection.
            probe = f"faillite/{MESH}/events/probe-{uid()}"
            listening(coord, probe, probe)
            assert coord.connects == 1
            assert wills.drained() == []
    finally:
        coord.stop()


def test_the_look_before_connecting_takes_no_live_session_with_certificates(
    launcher: BrokerLauncher, kind: str, certs: Pki
) -> None:
    """Certificates only, a worker id live: a second process's look before it connects
    (Presence.claim) presents the probe name's certificate, so it sees the live one and
    refuses, and never takes the live connection over (Mosquitto names a client by its
    certificate). Without a probe certificate the look is skipped, never taken with the
    role's own certificate."""
    ep = _start(launcher, kind, BrokerConfig(tls=certs.server(require_client=True), acl=False))
    status, beat = T.worker_status("w1"), T.worker_heartbeat("w1")
    live = MeshClient(W1.name, node_config(ep, certs.tls(client=W1)), quiet=True)
    live.start(connect_timeout=10)
    stop = threading.Event()

    def beating() -> None:
        while not stop.wait(0.1):
            live.publish(beat, b"{}")

    thread = threading.Thread(target=beating, daemon=True)
    birth = messages.WorkerStatus(worker="w1", incarnation="live1", state="online", ts=time.time())
    try:
        live.publish(status, messages.encode(birth), qos=1, retain=True)
        thread.start()
        own = certs.tls(client=W1)
        with_probe = own.model_copy(
            update={
                "probe_certfile": certs.mesh / f"{W1.probe_name}.crt",
                "probe_keyfile": certs.mesh / f"{W1.probe_name}.key",
            }
        )

        def presence() -> Presence[messages.WorkerStatus]:
            return Presence(status, messages.WorkerStatus, lambda ts: replace(birth, ts=ts))

        with pytest.raises(IdentityInUseError, match="already running under incarnation live1"):
            presence().claim(node_config(ep, with_probe), W1.name, life_topic=beat, liveness_s=1)
        presence().claim(node_config(ep, own), W1.name, life_topic=beat, liveness_s=1)  # skipped
        time.sleep(0.5)  # a takeover would show as a reconnect of the live client
        assert live.connects == 1
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(2)
        live.publish(status, b"", qos=1, retain=True)
        live.stop()


def test_every_mesh_connection_sends_without_delay(tls_broker: BrokerEndpoint, certs: Pki) -> None:
    """Nagle's algorithm off (TCP_NODELAY) on the transport's socket, TLS or not: otherwise a
    frame written as several TLS records waits out the broker's delayed ACK (+40 ms)."""
    with connected(node_config(tls_broker, certs.tls())) as client:
        sock = client._client.socket()
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
