"""The MQTT transport of every role: the one module that owns paho-mqtt 2.x.

- MQTT 3.1.1 only (the embedded broker speaks nothing newer).
- Its own network thread with full-jitter exponential reconnect backoff, capped by the
  broker config (``reconnect_max_s``, 1 s by default: a kit is back within about a second of
  its broker; paho's own backoff has no jitter, so a kit would reconnect in lockstep).
- A broker that cannot be reached is one clear warning, then a reminder every 30 s, while
  the client keeps trying; nothing blocks unless the caller asks to wait for the connection.
- After every (re)connect: re-subscribe every filter, publish the role's birth (its
  :class:`~faillite.presence.Presence`) and call the ``on_connect`` hooks.
- Roles receive typed messages: :meth:`MeshClient.subscribe_json` decodes each payload into its
  message class and hands over an :class:`Inbound`; a payload that does not decode is counted
  by reason and logged (rate-limited) here, in :attr:`MeshClient.bad`, and never reaches the
  role. Binary payloads (frames) come as :class:`Raw`.
- Handlers run on the network thread and must be quick: enqueue, never infer or load models.
  A handler that raises is counted (:attr:`MeshClient.handler_errors`, every one) and logged,
  rate-limited (:class:`HandlerErrorLog`): a flood of messages that make a handler raise must
  not flood the log; it never kills the network thread.
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from faillite import messages
from faillite.badinput import BadInput
from faillite.config import BrokerConfig
from faillite.identity import PROBE_SUFFIX
from faillite.log import get_logger
from faillite.tls import client_context

log = get_logger("mqtt")

M = TypeVar("M")
UNREACHABLE_LOG_EVERY_S = 30.0
CONNECT_TIMEOUT_S = 2.0
HANDLER_ERROR_LOG_EVERY_S = 1.0


class ConnectError(ConnectionError):
    """The broker could not be reached or refused us within the allowed time."""


@dataclass(frozen=True, slots=True)
class Raw:
    """A message as it came: binary payloads (frames), or for tools that record everything."""

    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True, slots=True)
class Inbound(Generic[M]):
    """A decoded message with where it came from; ``retain``: replayed from the broker's store."""

    topic: str
    message: M
    retain: bool


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class PresenceHooks(Protocol):
    """What the client calls of a role's presence (:class:`faillite.presence.Presence`)."""

    def attach(self, client: MeshClient) -> None:
        """The client is made: subscribe to what the presence watches."""

    def prepare(self) -> Will:
        """Before each connect: the last-will of the connection about to be made."""

    def arrive(self) -> None:
        """Connected: publish the birth."""

    def leave(self) -> None:
        """A clean stop: publish the graceful offline."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Full-jitter exponential backoff: sleep uniform(0, min(cap, base * 2**attempt))."""

    base_s: float = 0.05
    cap_s: float = 1.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.cap_s, self.base_s * (2 ** min(attempt, 16))))

    @classmethod
    def of(cls, broker: BrokerConfig) -> Backoff:
        return cls(broker.reconnect_min_s, max(broker.reconnect_min_s, broker.reconnect_max_s))


class HandlerErrorLog:
    """Rate-limited log of handler exceptions, per subscription filter.

    The first exception of each type under a filter is logged with its traceback; after that,
    at most one line (no traceback) per ``every_s`` per filter, with how many errors went
    unlogged since the last line. :meth:`flush` reports what is still unlogged (at stop).
    Counting every error is the caller's (:attr:`MeshClient.handler_errors`)."""

    MAX_KINDS = 1024  # (filter, exception type) pairs remembered; bounded memory

    def __init__(
        self,
        every_s: float = HANDLER_ERROR_LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._kinds: set[tuple[str, str]] = set()
        self._last_line: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def report(self, topic_filter: str, topic: str, exc: BaseException) -> None:
        """Log (or count as suppressed) ``exc``, raised by the handler of ``topic_filter``;
        call from the ``except`` block (the traceback is the one being handled)."""
        kind = (topic_filter, f"{type(exc).__module__}.{type(exc).__qualname__}")
        now = self._clock()
        with self._lock:
            first = kind not in self._kinds
            if first:
                if len(self._kinds) >= self.MAX_KINDS:
                    self._kinds.clear()
                self._kinds.add(kind)
            elif now - self._last_line.get(topic_filter, -1e18) < self._every_s:
                self._suppressed[topic_filter] = self._suppressed.get(topic_filter, 0) + 1
                return
            self._last_line[topic_filter] = now
            suppressed = self._suppressed.pop(topic_filter, 0)
        if first:
            log.exception(
                "handler_error",
                topic=topic,
                filter=topic_filter,
                error=kind[1],
                suppressed_since_last=suppressed,
            )
        else:
            log.error(
                "handler_error",
                topic=topic,
                filter=topic_filter,
                error=kind[1],
                message=str(exc)[:200],
                suppressed_since_last=suppressed,
                note="traceback logged at its first occurrence",
            )

    def flush(self) -> None:
        """One line per filter with errors not logged yet."""
        with self._lock:
            pending, self._suppressed = self._suppressed, {}
        for topic_filter, n in pending.items():
            log.error("handler_errors_suppressed", filter=topic_filter, suppressed=n)


def _no_op(*_args: Any) -> None:
    pass


def _settled(info: paho.MQTTMessageInfo) -> bool:
    """Acknowledged, or never going to be: paho raises for a publish made while disconnected
    (it stays queued for the next session; nothing to wait for on this one)."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return True


class MeshClient:
    """One MQTT connection with typed subscriptions, a presence and a reconnecting thread."""

    def __init__(
        self,
        client_id: str,
        broker: BrokerConfig,
        *,
        will: Will | None = None,
        presence: PresenceHooks | None = None,
        backoff: Backoff | None = None,
        keepalive_s: int | None = None,
        bad: BadInput | None = None,
        quiet: bool = False,
        probe_after_s: float | None = None,
    ) -> None:
        self.client_id = client_id
        self._quiet = quiet  # a short-lived probe: its caller says what matters
        self._broker = broker
        self._keepalive = keepalive_s or broker.keepalive_s
        self._backoff = backoff or Backoff.of(broker)
        self._subs: dict[str, int] = {}
        self._on_connect_hooks: list[Callable[[], None]] = []
        self._on_disconnect_hooks: list[Callable[[], None]] = []
        self._on_answer_hooks: list[Callable[[], None]] = []
        self._asked = False  # ask_broker()'s ping is out, its answer not yet seen
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._stop_deadline = 0.0
        self._inflight: list[paho.MQTTMessageInfo] = []
        self._unsubacked = threading.Event()
        self._unsub_mid = -1
        self._thread: threading.Thread | None = None
        self.bad = bad if bad is not None else BadInput()
        self.presence = presence
        self.handler_errors = 0
        self.handler_error_log = HandlerErrorLog()
        self.unexpected_messages = 0
        self.connects = 0
        self.connect_failures = 0  # in a row, since the last connection that came up
        self._down_since = self._last_reminder = 0.0
        self.address: tuple[str, int] = broker.addresses[0]  # the broker tried or on now
        self._last_address: tuple[str, int] | None = None  # the last one that took us
        self.broker_switches = 0
        self._probe_after_s = probe_after_s or broker.probe_after_s
        self._probe_at = 0.0  # when the quiet broker was pinged (0: not now)
        self._heard_at = time.monotonic()  # the broker's last message or ping answer

        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=paho.MQTTv311,
        )
        # The client id is the identity's name, and so the username (faillite.identity).
        c.username_pw_set(*broker.credentials(client_id))
        if broker.tls is not None:
            # TLS 1.2+, the broker's chain checked against the mesh CA and the host we connect
            # to against its subjectAltName; our client certificate if we have one.
            c.tls_set_context(client_context(broker.tls))
        if will is not None:
            c.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_message = self._handle_unexpected
        c.on_unsubscribe = self._handle_unsubscribe
        c.max_inflight_messages_set(100)
        # With no loop_start() thread, paho writes a publish straight from the caller's thread,
        # racing the network thread and corrupting the stream. A registered-write callback
        # makes paho queue it and wake our network thread instead, which does all writes.
        c.on_socket_register_write = _no_op
        c.on_socket_open = _no_delay
        # A broker node that died silently answers nothing: give up on it in a few seconds
        # and try the next broker (paho's default is 5 s per attempt).
        c.connect_timeout = CONNECT_TIMEOUT_S
        self._client = c
        if presence is not None:
            presence.attach(self)

    @property
    def broker(self) -> BrokerConfig:
        return self._broker

    # -- subscriptions and hooks ---------------------------------------------------------

    def subscribe(self, topic_filter: str, handler: Callable[[Raw], None], qos: int = 1) -> None:
        """Route raw messages matching ``topic_filter`` to ``handler``; kept across reconnects."""

        def wrapped(_c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
            self._heard_at = time.monotonic()
            try:
                handler(Raw(msg.topic, bytes(msg.payload), bool(msg.retain)))
            except Exception as exc:
                self._handler_failed(topic_filter, msg.topic, exc)

        self._add(topic_filter, wrapped, qos)

    def subscribe_json(
        self,
        topic_filter: str,
        schema: type[M],
        handler: Callable[[Inbound[M]], None],
        qos: int = 1,
        *,
        on_cleared: Callable[[str], None] | None = None,
    ) -> None:
        """Decode messages matching ``topic_filter`` as ``schema`` and hand them to ``handler``.

        A payload that does not decode is counted (``bad``) and logged here, never passed on.
        An empty payload (a retained message cleared) goes to ``on_cleared`` if given."""

        def wrapped(_c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
            self._heard_at = time.monotonic()
            try:
                if not msg.payload:
                    if on_cleared is not None:
                        on_cleared(msg.topic)
                    return
                try:
                    decoded = messages.decode(schema, msg.payload)
                except messages.MessageError as exc:
                    self.bad.count(exc.reason, str(exc), topic=msg.topic)
                    return
                handler(Inbound(msg.topic, decoded, bool(msg.retain)))
            except Exception as exc:
                self._handler_failed(topic_filter, msg.topic, exc)

        self._add(topic_filter, wrapped, qos)

    def _handler_failed(self, topic_filter: str, topic: str, exc: Exception) -> None:
        """A handler raised: count it always, log it rate-limited (from the except block)."""
        self.handler_errors += 1
        self.handler_error_log.report(topic_filter, topic, exc)

    def _add(self, topic_filter: str, callback: Callable[..., None], qos: int) -> None:
        with self._lock:
            self._subs[topic_filter] = qos
        self._client.message_callback_add(topic_filter, callback)
        if self._connected.is_set():
            self._client.subscribe(topic_filter, qos=qos)

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            self._subs.pop(topic_filter, None)
        self._client.message_callback_remove(topic_filter)
        if self._connected.is_set():
            self._client.unsubscribe(topic_filter)

    def on_connect(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` after every successful (re)connect, on the network thread."""
        self._on_connect_hooks.append(hook)

    def on_disconnect(self, hook: Callable[[], None]) -> None:
        self._on_disconnect_hooks.append(hook)

    def ask_broker(self) -> None:
        """Ping the broker now; the :meth:`on_answer` hooks run when it answers. A message
        that may be the broker's last words (a stopping broker publishes the last-will of
        every client it drops) is believed once the broker is still there after it."""
        if self._connected.is_set() and not self._asked:
            self._asked = self._client._send_pingreq() == MQTTErrorCode.MQTT_ERR_SUCCESS

    def on_answer(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` on the network thread when the broker answers :meth:`ask_broker`."""
        self._on_answer_hooks.append(hook)

    def _answered(self) -> None:
        if self._asked and self._client._ping_t == 0:  # its PINGRESP came
            self._asked = False
            self._heard_at = time.monotonic()
            for hook in self._on_answer_hooks:
                try:
                    hook()
                except Exception:
                    log.exception("on_answer_hook_failed")

    # -- publishing ------------------------------------------------------------------------

    def publish(
        self, topic: str, payload: bytes | str | None, qos: int = 0, retain: bool = False
    ) -> bool:
        """Publish; False if not connected (QoS 0 is dropped then; QoS>0 is queued by paho)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if qos > 0:
            with self._lock:
                if len(self._inflight) >= 64:
                    self._inflight = [i for i in self._inflight if not _settled(i)]
                self._inflight.append(info)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish_message(self, topic: str, msg: Any, qos: int = 0, retain: bool = False) -> bool:
        return self.publish(topic, messages.encode(msg), qos=qos, retain=retain)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, connect_timeout: float | None = 30.0) -> None:
        """Start the network thread; with a timeout, wait for the first connection."""
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-{self.client_id}", daemon=True
        )
        self._thread.start()
        if connect_timeout is not None and not self._connected.wait(connect_timeout):
            self.stop()
            raise ConnectError(
                f"no connection to {', '.join(_where(a) for a in self._broker.addresses)} "
                f"within {connect_timeout:.0f}s"
            )

    def stop(self, *, final: Callable[[], object] | None = None) -> None:
        """Publish the graceful offline (or run ``final``), disconnect cleanly and join."""
        if self._connected.is_set():
            try:
                if final is not None:
                    final()
                elif self.presence is not None:
                    self.presence.leave()
            except Exception:
                log.exception("final_publish_failed")
        # The network thread keeps running until the DISCONNECT has gone out after every queued
        # packet (the graceful offline, the last results), or the deadline passes.
        self._stop_deadline = time.monotonic() + 3.0
        self._stopping.set()
        if self._connected.is_set():
            self._quiesce(timeout=1.0)
            self._client.disconnect()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        self.handler_error_log.flush()

    def _quiesce(self, timeout: float) -> None:
        """Let the broker go quiet before the socket closes.

        paho closes the socket right after writing DISCONNECT. A socket closed with unread
        data (a PUBACK, a message still arriving) sends a TCP reset, and the broker then drops
        what it had not read yet (our last publishes, the DISCONNECT itself, so it would fire
        our last-will). So: stop every subscription and wait for the broker's acknowledgements
        of it and of our QoS 1 publishes first.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            filters = list(self._subs)
        if filters:
            self._unsubacked.clear()
            rc, mid = self._client.unsubscribe(filters)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                self._unsub_mid = mid
                self._unsubacked.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            pending = list(self._inflight)
        for info in pending:
            while not _settled(info) and time.monotonic() < deadline:
                time.sleep(0.005)
        while self._client.want_write() and time.monotonic() < deadline:
            time.sleep(0.005)

    def _back_off(self, attempt: int, exc: BaseException) -> int:
        """A connection that did not come up: say so (one clear line, then a reminder every
        ``UNREACHABLE_LOG_EVERY_S``), wait the backoff; returns the next attempt number."""
        delay = self._backoff.delay(attempt)
        now = time.monotonic()
        self.connect_failures += 1
        where = ", ".join(_where(a) for a in self._broker.addresses)
        if self.connect_failures <= len(self._broker.addresses):
            self._down_since = self._last_reminder = now
            if not self._quiet:
                log.warning(
                    "broker_unreachable",
                    broker=where,
                    error=str(exc) or type(exc).__name__,
                    retrying_every_s=f"<={self._backoff.cap_s:g}",
                )
        elif now - self._last_reminder >= UNREACHABLE_LOG_EVERY_S and not self._quiet:
            self._last_reminder = now
            log.warning(
                "broker_still_unreachable",
                broker=where,
                down_s=round(now - self._down_since, 1),
                attempts=self.connect_failures,
            )
        log.debug("connect_failed", broker=where, error=str(exc), retry_in_s=round(delay, 3))
        self._stopping.wait(delay)
        return attempt + 1

    def _run(self) -> None:
        addresses = self._broker.addresses
        at = 0  # the broker tried now: the one we were on, until it is gone
        attempt = 0
        while not self._stopping.is_set():
            if self.presence is not None:
                will = self.presence.prepare()
                self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
            host, port = addresses[at]
            try:
                self._client.connect(host, port, self._keepalive)
            except (OSError, ssl.SSLError) as exc:
                at, attempt = self._next_broker(at, attempt, exc)
                continue
            self.address = (host, port)
            connects_before = self.connects
            self._probe_at = 0.0
            while True:
                rc = self._client.loop(timeout=0.05)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
                self._answered()  # connection lost, or closed by stop() after DISCONNECT went out
                if self._stopping.is_set() and time.monotonic() > self._stop_deadline:
                    break
                if self._connected.is_set() and self._broker_silent():
                    self._client.disconnect()  # a silent broker: on to the next one
            if self._stopping.is_set():
                break
            self._connected.clear()
            if self.connects > connects_before:  # it was up: the next broker, backoff over
                attempt, self.connect_failures = 0, 0
                at = (at + 1) % len(addresses)
                self._stopping.wait(self._backoff.delay(0))
                continue
            # The broker closed it before accepting us (a refused certificate under TLS 1.3).
            closed = ConnectionError("the broker closed the connection before accepting it")
            at, attempt = self._next_broker(at, attempt, closed)

    def link_quiet_s(self) -> float:
        """Seconds since the broker last sent us a message or answered our ping (0 while not
        connected). Our own clock: paho's resets itself when paho sends its keepalive."""
        if not self._connected.is_set():
            return 0.0
        return max(0.0, time.monotonic() - self._heard_at)

    def _broker_silent(self) -> bool:
        """Ping a broker that has been quiet; True once it has not answered in time."""
        quiet = self.link_quiet_s()
        if quiet < self._probe_after_s:
            self._probe_at = 0.0
            return False
        now = time.monotonic()
        if not self._probe_at:
            self._probe_at = now
            self._client._send_pingreq()
            return False
        if self._client._ping_t == 0:  # its PINGRESP came: the broker is there
            self._heard_at, self._probe_at = now, 0.0
            return False
        if now - self._probe_at < self._broker.silent_after_s:
            return False
        self._probe_at = 0.0
        log.warning("broker_silent", broker=_where(self.address), quiet_s=round(quiet, 2))
        return True

    def _next_broker(self, at: int, attempt: int, exc: BaseException) -> tuple[int, int]:
        """The broker at ``at`` did not take us: the next one in the list, at once but for a
        jitter (clients spread out); after a whole round, back off as with one broker."""
        n = len(self._broker.addresses)
        self.connect_failures += 1
        if n > 1 and self.connect_failures % n:
            log.debug("broker_skipped", broker=_where(self._broker.addresses[at]), error=str(exc))
            self._stopping.wait(self._backoff.delay(0))
            return (at + 1) % n, attempt
        self.connect_failures -= 1  # _back_off counts it
        return (at + 1) % n, self._back_off(attempt, exc)

    # -- paho callbacks (network thread) ---------------------------------------------------

    def _handle_connect(
        self,
        _c: paho.Client,
        _u: Any,
        _flags: paho.ConnectFlags,
        reason: ReasonCode,
        _props: Any,
    ) -> None:
        if reason.is_failure:
            log.error(
                "connect_refused",
                broker=_where(self.address),
                reason=str(reason),
            )
            return
        self.connects += 1
        self._heard_at = time.monotonic()
        with self._lock:
            subs = list(self._subs.items())
        for topic_filter, qos in subs:
            self._client.subscribe(topic_filter, qos=qos)
        self._connected.set()
        host, port = self.address
        previous = self._last_address
        if previous is not None and previous != (host, port):
            self.broker_switches += 1
            log.warning("broker_switched", broker=_where(self.address), previous=_where(previous))
        elif previous is None and (host, port) != self._broker.addresses[0]:
            primary = _where(self._broker.addresses[0])
            log.warning("on_fallback_broker", broker=_where(self.address), primary=primary)
        self._last_address = (host, port)
        log.info("connected", host=host, port=port, n=self.connects)
        if self.presence is not None:
            try:
                self.presence.arrive()
            except Exception:
                self.handler_errors += 1
                log.exception("birth_failed")
        for hook in self._on_connect_hooks:
            try:
                hook()
            except Exception:
                self.handler_errors += 1
                log.exception("on_connect_hook_failed")

    def _handle_disconnect(
        self,
        _c: paho.Client,
        _u: Any,
        _flags: paho.DisconnectFlags,
        reason: ReasonCode,
        _props: Any,
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._asked = False  # no answer will come on this connection
        if not self._stopping.is_set() and was:
            log.warning("disconnected", reason=str(reason))
        for hook in self._on_disconnect_hooks:
            try:
                hook()
            except Exception:
                log.exception("on_disconnect_hook_failed")

    def _handle_unsubscribe(
        self, _c: paho.Client, _u: Any, mid: int, _reasons: Any, _props: Any
    ) -> None:
        if mid == self._unsub_mid:
            self._unsubacked.set()

    def _handle_unexpected(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        self._heard_at = time.monotonic()
        # amqtt 0.12 replays retained messages to clients that did not subscribe to them.
        self.unexpected_messages += 1


def _no_delay(_c: paho.Client, _u: Any, sock: Any) -> None:
    """paho never sets TCP_NODELAY: a frame that goes out in more than one segment (always over
    TLS, as 16 KiB records) then waits out the peer's delayed ACK, about 40 ms a frame."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _where(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def probe_id(client_id: str) -> str:
    """The identity's second client id, for a short look at the broker that must not take
    ``client_id``'s session over (MQTT disconnects a client when another connects with its
    id); with accounts it is a username of the same secret (:mod:`faillite.identity`)."""
    return f"{client_id}{PROBE_SUFFIX}"
