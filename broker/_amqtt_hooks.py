"""What the embedded broker does to amqtt 0.12.1 around the ``Broker`` class (the subclass
itself is :mod:`broker._amqtt_session`).

amqtt 0.12 has gaps that matter to the mesh; each is closed with the smallest hook we found:

1. **Keepalive is never enforced** (the protocol handler's read-timeout callback is a no-op), so
   a client that goes silent with its socket open is never dropped and its last-will never
   fires. Hook: we own the listening socket and hand each connection to amqtt through its public
   "external" listener (``Broker.external_connected``). Our stream protocol stamps the arrival
   time of every byte and reads the keepalive from the CONNECT packet's fixed position on the
   wire (MQTT 3.1.1 §3.1.2.10, not amqtt internals). A timer per connection aborts the TCP
   connection once the client has been silent for 1.5 × keepalive. amqtt then sees an ordinary
   lost connection: it publishes (and retains, if asked) the will and ends the session.
2. **No connect timeout**: a socket that never completes its CONNECT is kept forever. Same
   timer: ``connect_timeout_s`` from the TCP accept, however slowly the client trickles bytes.
3. **No packet or payload limit.** Our stream protocol reads each packet's fixed header as the
   bytes arrive (MQTT 3.1.1 §2.2.3: type, then the remaining length) and aborts the connection
   when a packet declares more than ``max_packet_bytes``, before amqtt buffers any of it. Below
   that, at admission (the auth plugin call: the last plugin call before the session's message
   loop starts) the session's inbound queue is replaced by one that drops publishes over
   ``max_payload_bytes``; QoS 1/2 flows still complete, as with Mosquitto's
   message_size_limit.
4. **Retained messages replayed to clients that never subscribed**: on every CONNECT amqtt 0.12
   replays the retained messages matching *every* client's filters to the new client, which
   bypasses the ACL. :class:`broker._amqtt_session.MeshBroker` overrides the one private
   method that does it.

Sessions, takeovers, wills' QoS and the connection and retained caps are in
:mod:`broker._amqtt_session` (the ``Broker`` subclass).

TLS is terminated by our listening socket (an ``ssl.SSLContext`` given to ``create_server``);
amqtt sees the decrypted stream and records the connection's ``SSLObject`` on the session. With
client certificates required, the auth plugin admits a client by its verified certificate's
common name (an identity, ``demo.worker.w1``), the way Mosquitto's ``use_identity_as_username``
does.

``tests/test_broker.py`` pins the upstream behaviour these hooks rely on or work around.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, cast

import structlog
from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from broker._acl import AccessPolicy, Admission, Operation
from broker._revocation import Revocations
from broker._tls_gate import TlsGate
from faillite.identity import Identity
from faillite.tls import peer_common_name

KEEPALIVE_FACTOR: Final = 1.5  # MQTT 3.1.1 §3.1.2.10
CONNECT_TIMEOUT_S: Final = 10.0  # from TCP accept to the CONNECT packet
LISTENER: Final = "default"
# Session.attributes key: the client's Identity, or None for unrestricted (an open mesh).
IDENTITY_KEY: Final = "faillite.identity"
MAX_SOURCE_LOCKS: Final = 4096
MAX_PENDING_PER_SOURCE: Final = 8
# Connections from one address that have not sent their CONNECT yet: a device opens one or two.
MAX_UNADMITTED_PER_SOURCE: Final = 32
_CONNECT_PREFIX_MAX: Final = 512  # bytes kept to read the CONNECT head; client ids are short
_NOT_ADMITTED: Final = object()

Logger = structlog.typing.FilteringBoundLogger


# -- keepalive and connect timeout -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectHead:
    """What the watchdog needs from a CONNECT packet."""

    keepalive_s: int
    client_id: str | None


def parse_connect_head(buf: bytes, *, final: bool = False) -> ConnectHead | None:
    """Read keepalive and client id from the first bytes of a connection (MQTT 3.1.1 §3.1).

    Returns None while more bytes are needed; with ``final`` the client id may be left None
    rather than waited for. Raises ValueError if the bytes cannot be a CONNECT.
    """
    if not buf:
        return None
    if buf[0] != 0x10:
        raise ValueError(f"first packet type {buf[0] >> 4} is not CONNECT")
    pos = 1
    for _ in range(4):  # remaining length: 1 to 4 bytes; its value is not needed
        if pos >= len(buf):
            return None
        more = buf[pos] & 0x80
        pos += 1
        if not more:
            break
    else:
        raise ValueError("malformed remaining length")
    if len(buf) < pos + 2:
        return None
    name_len = int.from_bytes(buf[pos : pos + 2], "big")
    if name_len > 6:  # "MQTT" (3.1.1) or "MQIsdp" (3.1)
        raise ValueError(f"protocol name of {name_len} bytes")
    pos += 2 + name_len + 2  # name, protocol level, connect flags
    if len(buf) < pos + 2:
        return None
    keepalive = int.from_bytes(buf[pos : pos + 2], "big")
    pos += 2
    if len(buf) >= pos + 2:
        id_end = pos + 2 + int.from_bytes(buf[pos : pos + 2], "big")
        if len(buf) >= id_end:
            return ConnectHead(keepalive, buf[pos + 2 : id_end].decode("utf-8", "replace"))
    return ConnectHead(keepalive, None) if final else None


class PacketLengths:
    """The remaining length of every packet on one connection, read from the stream as it
    arrives (MQTT 3.1.1 §2.2.3): a type byte, a variable-length integer of 1 to 4 bytes, then
    that many bytes, which are only counted, never looked at."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._skip = 0  # body bytes of the current packet still to come
        self._in_header = False  # the type byte is read, the length is being read
        self._length = 0
        self._shift = 0

    def feed(self, data: bytes) -> str | None:
        """None while every packet so far is within the limit, else why not."""
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                take = min(self._skip, n - i)
                self._skip -= take
                i += take
                continue
            b = data[i]
            i += 1
            if not self._in_header:
                self._in_header, self._length, self._shift = True, 0, 0
                continue
            self._length |= (b & 0x7F) << self._shift
            self._shift += 7
            if b & 0x80:
                if self._shift >= 28:
                    return "malformed remaining length"
                continue
            self._in_header = False
            if self._length > self.limit:
                return f"a packet of {self._length} bytes (limit {self.limit})"
            self._skip = self._length
        return None


class Unadmitted:
    """Connections per source address that have not sent their CONNECT head yet, capped: one
    address cannot hold the broker's sockets with idle or trickling connections (each of which
    the CONNECT timeout ends anyway) while devices elsewhere wait to get in."""

    def __init__(self, cap: int = MAX_UNADMITTED_PER_SOURCE) -> None:
        self.cap = cap
        self.open: Counter[str] = Counter()
        self.refused = 0

    def enter(self, source: str) -> bool:
        if self.open[source] >= self.cap:
            self.refused += 1
            return False
        self.open[source] += 1
        return True

    def leave(self, source: str) -> None:
        self.open[source] -= 1
        if self.open[source] <= 0:
            del self.open[source]

    def log_refusal(
        self, log: Logger, limiter: LogLimiter | None, source: str, *, stage: str
    ) -> None:
        """One line per source and window for the connections refused over its cap
        (``stage``: in the TLS handshake, or before the CONNECT)."""
        skipped = limiter.admit(("unadmitted", source)) if limiter else 0
        if skipped is not None:
            log.warning(
                "too_many_unadmitted",
                source=source,
                stage=stage,
                cap=self.cap,
                refused_total=self.refused,
                suppressed=skipped,
            )


class ConnectionWatch:
    """Liveness of one TCP connection: silent for longer than its limit, it is aborted.

    The limit is ``connect_timeout_s`` from the accept until the CONNECT head is read (bytes
    trickled meanwhile do not extend it), then 1.5 × keepalive of silence (none for keepalive
    0). One timer per connection, re-armed lazily: receiving data only stamps a time, so the
    per-byte cost is one clock read. Every packet's length header is checked as it arrives
    (:class:`PacketLengths`).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        log: Logger,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        max_packet_bytes: int | None = None,
        unadmitted: Unadmitted | None = None,
        limiter: LogLimiter | None = None,
    ) -> None:
        self._loop = loop
        self._log = log
        self._unadmitted = unadmitted
        self._limiter = limiter
        self._source: str | None = None  # counted in ``unadmitted`` until its CONNECT head
        self.last_rx = loop.time()
        self.accepted_at = self.last_rx
        self.limit_s: float | None = connect_timeout_s
        self._lengths = PacketLengths(max_packet_bytes) if max_packet_bytes else None
        self.head: ConnectHead | None = None
        self.expired = False
        self.peer = "?"
        self._prefix = bytearray()
        self._parsing = True
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
            if self._unadmitted is not None:
                source = str(peer[0])
                if not self._unadmitted.enter(source):
                    self._refuse(source)
                    return
                self._source = source
        self._reschedule()

    def _refuse(self, source: str) -> None:
        """Over the source's cap: closed at once (logged once per source and window)."""
        self.expired = True
        assert self._unadmitted is not None and self._transport is not None
        self._unadmitted.log_refusal(self._log, self._limiter, source, stage="connect")
        self._transport.abort()

    def _admitted(self) -> None:
        if self._source is not None and self._unadmitted is not None:
            self._unadmitted.leave(self._source)
            self._source = None

    def stop(self) -> None:
        self._admitted()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None

    def on_data(self, data: bytes) -> bool:
        """Note ``data``; False: the connection is aborted, the data must go no further."""
        self.last_rx = self._loop.time()
        if self._lengths is not None:
            why = self._lengths.feed(data)
            if why is not None:
                self._abort("packet_too_large", detail=why)
                return False
        if self._parsing:
            self._read_connect_head(data)
        return True

    def _abort(self, event: str, **fields: Any) -> None:
        self.expired = True
        client = self.head.client_id if self.head is not None else None
        self._log.warning(event, peer=self.peer, client_id=client, **fields)
        if self._transport is not None:
            self._transport.abort()

    def _read_connect_head(self, data: bytes) -> None:
        self._prefix += data[: _CONNECT_PREFIX_MAX - len(self._prefix)]
        try:
            head = parse_connect_head(
                bytes(self._prefix), final=len(self._prefix) >= _CONNECT_PREFIX_MAX
            )
        except ValueError:
            # Not MQTT: amqtt refuses it; the connect timeout stays as a backstop.
            self._parsing = False
            self._prefix.clear()
            return
        if head is None:
            return
        self._parsing = False
        self._prefix.clear()
        self.head = head
        self._admitted()
        self.limit_s = head.keepalive_s * KEEPALIVE_FACTOR if head.keepalive_s > 0 else None
        self._reschedule()

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.limit_s is not None and self._transport is not None:
            since = self.accepted_at if self.head is None else self.last_rx
            delay = max(0.0, since + self.limit_s - self._loop.time())
            self._timer = self._loop.call_later(delay, self._check)

    def _check(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing() or self.limit_s is None:
            return
        if self.head is None:  # the CONNECT deadline counts from the accept, trickle or not
            waited = self._loop.time() - self.accepted_at
            if waited < self.limit_s:
                self._timer = self._loop.call_later(self.limit_s - waited, self._check)
                return
            self.expired = True
            self._log.warning("connect_timeout", peer=self.peer, waited_s=round(waited, 3))
            transport.abort()
            return
        if not transport.is_reading():
            # Paused by flow control: the peer filled our buffer faster than amqtt reads it.
            # Busy, not silent: count it as heard from now.
            self.last_rx = self._loop.time()
        silent = self._loop.time() - self.last_rx
        if silent < self.limit_s:  # data arrived since the timer was set
            self._timer = self._loop.call_later(self.limit_s - silent, self._check)
            return
        self.expired = True
        self._log.warning(
            "keepalive_expired",
            client_id=self.head.client_id,
            peer=self.peer,
            keepalive_s=self.head.keepalive_s,
            silent_s=round(silent, 3),
        )
        # A TCP abort is exactly what a dead peer looks like to amqtt: EOF on the reader, then
        # its lost-connection path publishes the will and ends the session.
        transport.abort()


class _WatchedProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, telling a :class:`ConnectionWatch` about every byte."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        on_connected: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
        watch: ConnectionWatch,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(reader, on_connected, loop=loop)
        self._watch = watch

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._watch.start(cast(asyncio.Transport, transport))
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._watch.on_data(data):
            super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._watch.stop()
        super().connection_lost(exc)


class MeshListener:
    """Our TCP listener: accepts connections and hands them to amqtt's external listener."""

    def __init__(
        self,
        broker: Broker,
        log: Logger,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        max_packet_bytes: int | None = None,
        unadmitted: Unadmitted | None = None,
    ) -> None:
        self._broker = broker
        self._log = log
        self._connect_timeout_s = connect_timeout_s
        self._max_packet_bytes = max_packet_bytes
        self.unadmitted = unadmitted if unadmitted is not None else Unadmitted()
        self._limiter = LogLimiter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._handshakes: set[asyncio.Task[None]] = set()

    def protocol_factory(self) -> asyncio.Protocol:
        loop = asyncio.get_running_loop()
        watch = ConnectionWatch(
            loop,
            self._log,
            connect_timeout_s=self._connect_timeout_s,
            max_packet_bytes=self._max_packet_bytes,
            unadmitted=self.unadmitted,
            limiter=self._limiter,
        )
        return _WatchedProtocol(asyncio.StreamReader(loop=loop), self._serve, watch, loop)

    def tls_protocol_factory(
        self, context: ssl.SSLContext, handshake_timeout_s: float
    ) -> Callable[[], asyncio.Protocol]:
        """For a TLS listener (``create_server`` without ``ssl``): each connection's
        handshake is run by a :class:`TlsGate`, counted per source from its accept."""

        def refused(source: str) -> None:
            self.unadmitted.log_refusal(self._log, self._limiter, source, stage="handshake")

        def make() -> asyncio.Protocol:
            return TlsGate(
                self.protocol_factory,
                context,
                self.unadmitted,
                timeout_s=handshake_timeout_s,
                refused=refused,
                tasks=self._handshakes,
            )

        return make

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:  # asyncio keeps only weak references to tasks
            self._tasks.add(task)
        try:
            await self._broker.external_connected(
                StreamReaderAdapter(reader), StreamWriterAdapter(writer), LISTENER
            )
        except (AMQTTError, MQTTError, NoDataError, OSError) as exc:
            peer = writer.get_extra_info("peername")
            self._log.warning("connection_error", peer=str(peer), error=repr(exc))
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def drain(self, timeout_s: float) -> None:
        """Wait for connection handlers to end (after broker shutdown), then cancel the rest;
        handshakes still under way are cancelled at once."""
        for handshake in set(self._handshakes):
            handshake.cancel()
        tasks = set(self._tasks)
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


# -- admission, ACL, payload limit ---------------------------------------------------------


class LogLimiter:
    """At most one log line per key per window; the next line reports how many were skipped."""

    def __init__(self, window_s: float = 10.0, max_keys: int = 4096) -> None:
        self._window_s = window_s
        self._max_keys = max_keys
        self._seen: dict[tuple[str, ...], tuple[float, int]] = {}

    def admit(self, key: tuple[str, ...]) -> int | None:
        """None: stay quiet. Otherwise log now, with this many earlier lines suppressed."""
        now = time.monotonic()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self._window_s:
            self._seen[key] = (last[0], last[1] + 1)
            return None
        if len(self._seen) >= self._max_keys:
            self._seen.clear()  # bounded memory beats perfect counts for a log limiter
        self._seen[key] = (now, 0)
        return 0 if last is None else last[1]


@dataclass(slots=True)
class BrokerRuntime:
    """State shared by one broker's plugins; handed to them through their ``Config``."""

    policy: AccessPolicy
    max_payload_bytes: int
    log: Logger
    limiter: LogLimiter
    certificates: bool = False  # client certificates name the identity
    revocations: Revocations | None = None  # the CA's list, as it is now
    _source_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    pending: Counter[str] = field(default_factory=Counter)  # logins waiting, per address
    # Everything refused since start, by kind (the log lines are rate-limited, these are not).
    refused: Counter[str] = field(default_factory=Counter)

    def source_lock(self, source: str) -> asyncio.Lock:
        """One login judged at a time per source address (bounded: idle locks are dropped)."""
        lock = self._source_locks.get(source)
        if lock is None:
            if len(self._source_locks) >= MAX_SOURCE_LOCKS:
                for key in [k for k, v in self._source_locks.items() if not v.locked()]:
                    del self._source_locks[key]
            lock = self._source_locks[source] = asyncio.Lock()
        return lock

    def denied(self, session: Session, op: Operation, topic: str) -> None:
        self.refused[f"acl_{op.value}"] += 1
        if op is Operation.RECEIVE:  # expected for broad filters; not worth a warning
            self.log.debug("acl_denied", client_id=session.client_id, action=op, topic=topic)
            return
        skipped = self.limiter.admit(("acl", str(session.client_id), op, topic))
        if skipped is not None:
            self.log.warning(
                "acl_denied",
                client_id=session.client_id,
                username=session.username,
                identity=_identity_name(session),
                action=op,
                topic=topic,
                suppressed=skipped,
            )

    def payload_dropped(self, session: Session, topic: str, size: int) -> None:
        self.refused["payload_too_large"] += 1
        skipped = self.limiter.admit(("payload", str(session.client_id), topic))
        if skipped is not None:
            self.log.warning(
                "payload_too_large",
                client_id=session.client_id,
                username=session.username,
                topic=topic,
                size=size,
                limit=self.max_payload_bytes,
                suppressed=skipped,
            )


def _identity_name(session: Session) -> str | None:
    identity = session.attributes.get(IDENTITY_KEY)
    return identity.name if isinstance(identity, Identity) else None


class _PayloadLimitQueue(asyncio.Queue[Any]):
    """A session's inbound queue that drops publishes bigger than the limit."""

    def __init__(self, session: Session, runtime: BrokerRuntime) -> None:
        super().__init__()
        self._session = session
        self._runtime = runtime

    def put_nowait(self, item: Any) -> None:
        # put() waits for room, then calls put_nowait(): overriding this one covers both.
        data = getattr(item, "data", None)
        if data is not None and len(data) > self._runtime.max_payload_bytes:
            self._runtime.payload_dropped(self._session, str(item.topic), len(data))
            return
        super().put_nowait(item)


def _limit_payloads(session: Session, runtime: BrokerRuntime) -> None:
    old = session.delivered_message_queue
    if isinstance(old, _PayloadLimitQueue):
        return  # a persistent session reconnecting
    new = _PayloadLimitQueue(session, runtime)
    while not old.empty():
        new.put_nowait(old.get_nowait())
    session.delivered_message_queue = new


def _runtime_of(plugin: Any) -> BrokerRuntime:
    runtime = getattr(plugin.config, "runtime", None)
    if not isinstance(runtime, BrokerRuntime):
        raise TypeError(f"{type(plugin).__name__} needs a BrokerRuntime in its config")
    return runtime


class MeshAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no type hints
    """Admission of each CONNECT: credentials, role, will topic check, payload limit."""

    @dataclass
    class Config:
        runtime: Any = None

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._rt = _runtime_of(self)

    async def authenticate(self, *, session: Session) -> bool:
        rt = self._rt
        _limit_payloads(session, rt)
        source = str(session.remote_address)
        # Attempts from one address are judged one at a time, and a refusal is held back
        # (doubling per failure): a brute force gets a few guesses a second, whatever its
        # parallelism, and costs the broker one hash per guess. Past a few waiting, more from
        # that address are refused at once: waiting sockets cost memory too.
        lock = rt.source_lock(source)
        if rt.pending[source] >= MAX_PENDING_PER_SOURCE:
            rt.refused["auth_too_many_pending_logins"] += 1
            rt.log.warning(
                "auth_refused",
                client_id=session.client_id,
                username=session.username,
                reason="too_many_pending_logins",
                peer=f"{session.remote_address}:{session.remote_port}",
            )
            return False
        rt.pending[source] += 1
        try:
            await lock.acquire()
        finally:
            rt.pending[source] -= 1
            if not rt.pending[source]:
                del rt.pending[source]
        try:
            # Both lists as they are now (a stat each), not as of the last second's watch: a
            # device revoked a moment ago must not get back in before the watch turns.
            problem = rt.policy.try_reload()
            if problem is not None:
                rt.log.error("password_file_unreadable", error=problem)
            if rt.revocations is not None and (problem := rt.revocations.try_reload()):
                rt.log.error("crlfile_unreadable", error=problem)
            admission = await self._admit(session)
            if not admission.admitted:
                rt.refused[f"auth_{admission.reason}"] += 1
                delay = rt.policy.throttle.failed(source, time.monotonic())
                rt.log.warning(
                    "auth_refused",
                    client_id=session.client_id,
                    username=session.username,
                    reason=admission.reason,
                    peer=f"{session.remote_address}:{session.remote_port}",
                    delay_s=round(delay, 3),
                )
                await asyncio.sleep(delay)
                return False
        finally:
            lock.release()
        session.attributes[IDENTITY_KEY] = admission.identity
        will_topic = session.will_topic
        if (
            session.will_flag
            and will_topic is not None
            and not rt.policy.allowed(admission.identity, Operation.PUBLISH, will_topic)
        ):
            # Mosquitto accepts such a client and silently drops its will; so do we, loudly.
            rt.log.warning(
                "will_denied",
                client_id=session.client_id,
                username=session.username,
                identity=_identity_name(session),
                topic=will_topic,
            )
            session.will_flag = False
        return True

    async def _admit(self, session: Session) -> Admission:
        rt = self._rt
        client_id = str(session.client_id)
        if rt.certificates:
            ssl_object = session.ssl_object
            identity = peer_common_name(ssl_object.getpeercert() if ssl_object else None)
            # Like use_identity_as_username: the certificate names the account, not CONNECT.
            session.username = identity
            session.password = None
            if rt.revocations is not None and rt.revocations.revokes(ssl_object):
                return Admission(False, reason="revoked_certificate")  # revoked since start
            return rt.policy.admit_certificate(identity, client_id=client_id)
        username, password = session.username, session.password
        if not rt.policy.accounts_enabled or not rt.policy.has_account(str(username)):
            return rt.policy.admit(username, password, client_id=client_id)  # no hash to compute
        # The hash costs about a millisecond: off the event loop.
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: rt.policy.admit(username, password, client_id=client_id)
        )

    async def on_broker_client_connected(self, *, client_id: str, client_session: Session) -> None:
        self._rt.log.info(
            "client_connected",
            client_id=client_id,
            username=client_session.username,
            identity=_identity_name(client_session),
            keepalive_s=client_session.keep_alive,
            clean_session=client_session.clean_session,
            will=client_session.will_topic if client_session.will_flag else None,
            peer=f"{client_session.remote_address}:{client_session.remote_port}",
        )

    async def on_broker_client_disconnected(
        self, *, client_id: str, client_session: Session
    ) -> None:
        self._rt.log.info("client_disconnected", client_id=client_id)


class MeshAclPlugin(BaseTopicPlugin):  # type: ignore[misc]  # amqtt ships no type hints
    """Per-role topic ACL (loaded only when accounts exist and the ACL is on)."""

    @dataclass
    class Config:
        runtime: Any = None

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._rt = _runtime_of(self)

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Any = None,
    ) -> bool:
        if session is None or topic is None or action is None:
            return False
        identity = session.attributes.get(IDENTITY_KEY, _NOT_ADMITTED)
        if identity is _NOT_ADMITTED:
            return False
        op = operation_of(action)
        if self._rt.policy.allowed(cast(Identity | None, identity), op, topic):
            return True
        self._rt.denied(session, op, topic)
        return False


def operation_of(action: Any) -> Operation:
    """amqtt's ``Action`` as our Operation, by its value: on Python 3.10 amqtt's own StrEnum
    backport gives ``str(Action.PUBLISH) == "Action.PUBLISH"``, and every ACL check failed."""
    return Operation(getattr(action, "value", action))


def amqtt_config(runtime: BrokerRuntime) -> dict[str, Any]:
    """amqtt configuration: our listener only, our plugins only (no $SYS, no packet logging)."""
    plugins: dict[str, Any] = {f"{__name__}.MeshAuthPlugin": {"runtime": runtime}}
    if runtime.policy.acl_enabled:
        plugins[f"{__name__}.MeshAclPlugin"] = {"runtime": runtime}
    return {"listeners": {LISTENER: {"type": "external"}}, "plugins": plugins}
