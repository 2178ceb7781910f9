"""The embedded MQTT broker (amqtt) for zero-setup runs: ``faillite broker``.

What it adds to amqtt 0.12 (details and reasons in :mod:`broker._amqtt_hooks`):

- keepalive enforcement: a client silent for 1.5 × its keepalive is dropped and its last-will
  published, as MQTT 3.1.1 §3.1.2.10 requires (amqtt alone never drops it);
- a CONNECT deadline (``connect_timeout_s``, 10 s) from the TCP accept: a client trickling
  its CONNECT a byte at a time is closed on time;
- password accounts and the per-role topic ACL of ``faillite.topics.role_acl`` (the policy table
  is in :mod:`broker._acl`); denied publishes are dropped and logged;
- a payload limit (``max_payload_bytes``): bigger publishes are dropped and logged; a packet
  whose length header declares more than twice that (``max_packet_bytes``) ends the
  connection before any of it is buffered;
- retained messages go only to clients that subscribed to them;
- MQTT 3.1.1 sessions where the mesh's safety depends on them (:mod:`broker._amqtt_session`):
  nothing of a live client is touched before a newcomer with its client id is authenticated;
  a takeover closes the old connection, without its will, and only for the same account;
  wills reach each subscriber at no more than its subscription's QoS; persistent sessions
  (clean session 0) are refused, as amqtt would not redeliver their messages;
- caps on connections and retained messages (count and bytes), in total and per account
  (``max_connections``, ``max_retained_*``): a connection over a cap is refused (server
  unavailable), a retained message over a cap is delivered but not retained (and the
  retained message it replaces is dropped);
- TLS (``broker.tls.server``): TLS 1.2+ with the broker's certificate from the mesh CA
  (``faillite pki``); with ``require_client_certificate`` only clients holding a certificate of
  the mesh CA get in, and the certificate's common name is their account, as with Mosquitto's
  ``use_identity_as_username`` (:class:`broker._amqtt_hooks.CertificateIdentities`).

Run as a process (:func:`run_broker`, both ``faillite broker`` and ``python -m broker``) it speaks
systemd's notify protocol (:mod:`faillite.sdnotify`; nothing without ``$NOTIFY_SOCKET``):
``READY=1`` once it listens, ``STOPPING=1`` when signalled, and watchdog pings while a task on
its event loop keeps beating (a blocked loop serves nobody, whatever its threads do).

Limits that remain: MQTT 3.1.1 only, one listener (TLS or plain, not both), no persistence
across restarts (clients republish their retained state on reconnect), no shared subscriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

from broker._acl import AccessPolicy
from broker._amqtt_hooks import (
    BrokerRuntime,
    LogLimiter,
    MeshListener,
    amqtt_config,
)
from broker._amqtt_session import MeshBroker, SessionLimits
from broker._revocation import Revocations
from faillite.accounts import AccountsError
from faillite.config import BrokerConfig, ConfigError
from faillite.identity import AclScope
from faillite.log import get_logger
from faillite.sdnotify import Beats, Watchdog, notify
from faillite.tls import server_context
from faillite.topics import check_id

log = get_logger("broker")

SHUTDOWN_GRACE_S = 5.0
LOOP_BEAT_S = 1.0  # how often the event loop marks that it runs (with a watchdog only)
LOOP_STALE_S = 10.0  # an event loop that has not run its beat task this long is hung
# amqtt logs a socket closed before CONNECT (a port probe, a health check) as an error.
_BENIGN_PREFIXES = ("No data from ", "Failed to initialize client session: No data")


class BrokerSetupError(RuntimeError):
    """The broker cannot start with this configuration (port taken, TLS files missing, ...)."""


class _AmqttLogBridge(logging.Handler):
    """amqtt logs through stdlib logging: re-emit its records as structlog events, so the
    broker's output stays one JSON object per line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed %-format in the library's call
            message = str(record.msg)
        level = record.levelno
        if message.startswith(_BENIGN_PREFIXES):
            level = logging.DEBUG
        if level >= logging.ERROR:
            emit = log.error
        elif level >= logging.WARNING:
            emit = log.warning
        elif level >= logging.INFO:
            emit = log.info
        else:
            emit = log.debug
        extra = {"exc_info": record.exc_info} if record.exc_info else {}
        emit("amqtt_log", logger=record.name, message=message, **extra)


@contextlib.contextmanager
def _amqtt_logs_as_events() -> Iterator[None]:
    amqtt_logger = logging.getLogger("amqtt")
    bridge = _AmqttLogBridge()
    propagate = amqtt_logger.propagate
    amqtt_logger.addHandler(bridge)
    amqtt_logger.propagate = False
    try:
        yield
    finally:
        amqtt_logger.removeHandler(bridge)
        amqtt_logger.propagate = propagate


async def serve(
    cfg: BrokerConfig,
    mesh: str,
    *,
    ready: Callable[[int], None] | None = None,
    scope: AclScope | None = None,
) -> None:
    """Run the broker on ``cfg.host:cfg.port`` until cancelled, then stop cleanly.

    Port 0 picks a free port; ``ready`` gets the actual one once clients can connect.
    Raises :class:`BrokerSetupError` (or ``ConfigError`` for an unset ``password_env``).
    """
    check_id("mesh", mesh)
    exposure = cfg.exposure_problem()
    if exposure is not None:
        raise BrokerSetupError(exposure)
    tls: ssl.SSLContext | None = None
    if cfg.tls is not None:
        try:
            tls = server_context(cfg.tls)
        except ConfigError as exc:
            raise BrokerSetupError(str(exc)) from exc
    try:
        policy = AccessPolicy(cfg, mesh, scope)
    except (OSError, AccountsError) as exc:
        raise BrokerSetupError(f"broker.password_file: {exc}") from exc
    crlfile = cfg.tls.server.crlfile if cfg.tls is not None and cfg.tls.server else None
    runtime = BrokerRuntime(
        policy,
        cfg.max_payload_bytes,
        log,
        LogLimiter(),
        certificates=cfg.client_certificates,
        revocations=Revocations(crlfile, tls) if crlfile is not None else None,
    )
    with _amqtt_logs_as_events():
        await _run(cfg, mesh, policy, runtime, ready, tls)


async def _run(
    cfg: BrokerConfig,
    mesh: str,
    policy: AccessPolicy,
    runtime: BrokerRuntime,
    ready: Callable[[int], None] | None,
    tls: ssl.SSLContext | None,
) -> None:
    limits = SessionLimits.of(cfg, has_accounts=policy.accounts_enabled)
    broker = MeshBroker(amqtt_config(runtime), runtime, limits)
    listener = MeshListener(
        broker,
        log,
        connect_timeout_s=cfg.connect_timeout_s,
        max_packet_bytes=cfg.max_packet_bytes,
    )
    await broker.start()
    server: asyncio.Server | None = None
    watching = policy.accounts_enabled or runtime.revocations is not None
    watch = asyncio.create_task(broker.watch_accounts()) if watching else None
    try:
        try:
            # With TLS, each connection's handshake is ours (a TlsGate): counted per source
            # from the accept, and dropped like a socket that never sends CONNECT if it never
            # finishes (the CONNECT timeout starts once the handshake is done).
            factory = (
                listener.protocol_factory
                if tls is None
                else listener.tls_protocol_factory(tls, cfg.connect_timeout_s)
            )
            server = await asyncio.get_running_loop().create_server(
                factory, cfg.host, cfg.port, reuse_address=True
            )
        except OSError as exc:
            raise BrokerSetupError(
                f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}"
            ) from exc
        ports = sorted({s.getsockname()[1] for s in server.sockets})
        log.info(
            "broker_listening",
            host=cfg.host,
            port=ports[0],
            ports=ports,
            mesh=mesh,
            accounts=policy.accounts_enabled,
            acl=policy.acl_enabled,
            max_payload_bytes=cfg.max_payload_bytes,
            tls=tls is not None,
            client_certificates=runtime.certificates,
        )
        if ready is not None:
            ready(ports[0])
        await asyncio.Event().wait()  # until cancelled
    finally:
        log.info("broker_stopping", mesh=mesh)
        if watch is not None:
            watch.cancel()
        if server is not None:
            server.close()
        await broker.shutdown()
        await listener.drain(SHUTDOWN_GRACE_S)
        if server is not None:
            await server.wait_closed()
        refused = runtime.refused + broker.refusals
        log.info("broker_stopped", mesh=mesh, refused=dict(sorted(refused.items())))


async def _beat(beats: Beats) -> None:
    while True:
        beats.beat("event")
        await asyncio.sleep(LOOP_BEAT_S)


def _ready(cfg: BrokerConfig) -> Callable[[int], None]:
    def ready(port: int) -> None:
        notify("READY=1", f"STATUS=listening on {cfg.host}:{port}")

    return ready


async def _serve_until_signal(cfg: BrokerConfig, mesh: str, scope: AclScope | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    handlers = {
        signal.SIGINT: stop.set,
        signal.SIGTERM: stop.set,
        # What Mosquitto needs to apply a revocation: here a no-op (the password file and the
        # revocation list are re-read within a second of a change), never the default death.
        signal.SIGHUP: lambda: log.info("broker_reload_signalled", mesh=mesh),
    }
    for sig, handler in handlers.items():
        try:
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
        except (ValueError, RuntimeError, NotImplementedError):
            pass  # not the main thread: the caller stops us by cancelling instead
    pid_file = _write_pid(cfg.pid_file)
    server = asyncio.create_task(serve(cfg, mesh, scope=scope, ready=_ready(cfg)))
    stopper = asyncio.create_task(stop.wait())
    beats = Beats()
    watchdog = Watchdog(lambda: beats.stale(LOOP_STALE_S), name="broker")
    beating = asyncio.create_task(_beat(beats)) if watchdog.start() else None
    try:
        await asyncio.wait({server, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if server.done():
            server.result()  # a setup error: let it propagate
            return
        log.info("broker_signalled", mesh=mesh)
        notify("STOPPING=1")
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
    finally:
        watchdog.stop()
        if beating is not None:
            beating.cancel()
        stopper.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)


def _write_pid(path: Path | None) -> Path | None:
    """``broker.pid_file``: this process's pid, writable by its owner only (the revocation
    tooling signals whatever it names)."""
    if path is None:
        return None
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(f"{os.getpid()}\n")
        tmp.chmod(0o644)
        tmp.replace(path)
    except OSError as exc:
        raise ConfigError(f"broker.pid_file {path}: cannot write it ({exc.strerror})") from exc
    return path


def run_broker(cfg: BrokerConfig, mesh: str, scope: AclScope | None = None) -> None:
    """Run the embedded broker until SIGINT or SIGTERM, then stop cleanly."""
    _descriptors(cfg.max_connections)
    asyncio.run(_serve_until_signal(cfg, mesh, scope))


def _descriptors(max_connections: int) -> None:
    """Room for every connection the caps allow, and for a flood being shed, within the hard
    limit (Python starts at a soft 1024: a flood from many addresses would starve accept())."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * max_connections + 256
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if want > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            log.info("descriptor_limit_raised", soft=want, was=soft)
