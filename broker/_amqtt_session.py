"""Sessions, takeovers and caps of the embedded broker: :class:`MeshBroker`, amqtt 0.12.1's
``Broker`` with MQTT 3.1.1 kept where the mesh's safety depends on it.

What amqtt 0.12.1 does, and what the overrides here do instead:

1. **A live session is touched before the newcomer is authenticated.** amqtt reads the CONNECT
   and at once deletes the live session and subscriptions of that client id (clean session)
   or copies the newcomer's will and credentials onto it (persistent session), then
   authenticates; a CONNECT with a live client's id and a wrong password blinds that client.
   Here the CONNECT is only read, the newcomer authenticated (once, cached on its session),
   and only an admitted newcomer gets near ``_sessions``.
2. **Takeover (§3.1.4-2).** amqtt leaves the old connection of a clean session running. Here
   the old connection is closed, without its will (the device itself is reconnecting), and
   only for the same account; another account's newcomer is refused (identifier rejected)
   and the live client keeps its session. amqtt finds a session's connection, and removes
   its subscriptions, by client id; here by the session itself, so what is still queued on
   a replaced connection never reaches or changes its successor's.
3. **Wills at the will's QoS.** amqtt delivers a will at the will's QoS whatever each
   subscription granted; here at no more than the subscription's (§3.3.5).
4. **Persistent sessions** (clean session 0): amqtt does not redeliver unacknowledged QoS 1 on
   resume, so they are refused (identifier rejected) rather than half kept. The mesh's own
   clients use clean sessions.
5. **No wills at shutdown.** amqtt fires every connected client's will while it stops; here
   a stopping broker fires none: its clients are not lost, it is.
6. **No caps.** Connections (total, per account) and retained messages (count and bytes,
   total and per account) are capped here; see :class:`SessionLimits`. An account is a
   username, a device's probe name (:mod:`faillite.identity`) counted as the device.

Every amqtt method overridden or relied on is pinned by source hash in
``tests/unit/test_amqtt_pinned.py``: an amqtt upgrade fails there until each is re-checked.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass, field
from typing import Any, Final

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.events import BrokerEvents
from amqtt.mqtt.connack import (
    IDENTIFIER_REJECTED,
    NOT_AUTHORIZED,
    SERVER_UNAVAILABLE,
    ConnackPacket,
)
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session
from amqtt.utils import gen_client_id

from broker._amqtt_hooks import BrokerRuntime
from faillite.config import BrokerConfig
from faillite.identity import base_name
from faillite.topics import parse

_AUTHENTICATED: Final = "faillite.authenticated"  # Session.attributes: the auth result
_CONNECTED: Final = "connected"  # amqtt's session state of a live connection
ANONYMOUS: Final = "anonymous"  # how clients without a username are named in logs

Account = str | None  # a username; None: no username


def account_of(session: Session | None) -> Account:
    """The account of a session: its username, a device's probe name counted as the device."""
    if session is None or not session.username:
        return None
    return base_name(str(session.username))


def _name(account: Account) -> str:
    return account if account is not None else ANONYMOUS


def _peer(session: Session) -> str:
    return f"{session.remote_address}:{session.remote_port}"


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """The broker's caps. Per-account caps apply to clients without a username only where
    the broker has accounts: without any, "anonymous" is everyone and the totals apply."""

    max_connections: int
    max_connections_per_account: int
    max_retained_messages: int
    max_retained_bytes: int
    max_retained_per_account: int
    max_retained_bytes_per_account: int
    cap_anonymous: bool

    @classmethod
    def of(cls, cfg: BrokerConfig, *, has_accounts: bool) -> SessionLimits:
        return cls(
            max_connections=cfg.max_connections,
            max_connections_per_account=cfg.max_connections_per_account,
            max_retained_messages=cfg.max_retained_messages,
            max_retained_bytes=cfg.max_retained_bytes,
            max_retained_per_account=cfg.max_retained_per_account,
            max_retained_bytes_per_account=cfg.max_retained_bytes_per_account,
            cap_anonymous=has_accounts,
        )

    def per_account(self, account: Account) -> bool:
        return account is not None or self.cap_anonymous


@dataclass(slots=True)
class RetainedQuota:
    """Who owns each retained topic and what it costs; a topic counts once, for its last
    publisher, so an account overwriting its own topic does not count it twice."""

    limits: SessionLimits
    owners: dict[str, tuple[Account, int]] = field(default_factory=dict)
    count: collections.Counter[Account] = field(default_factory=collections.Counter)
    size: collections.Counter[Account] = field(default_factory=collections.Counter)
    total_count: int = 0
    total_size: int = 0

    def admit(self, topic: str, account: Account, size: int) -> str | None:
        """Record ``account`` as the owner of ``topic`` at ``size`` bytes, or name the cap
        that refuses it (nothing recorded then)."""
        lim = self.limits
        prev_account, prev_size = self.owners.get(topic, (None, 0))
        had = topic in self.owners
        total_count = self.total_count + (0 if had else 1)
        total_size = self.total_size - prev_size + size
        mine = had and prev_account == account
        count = self.count[account] + (0 if mine else 1)
        acct_size = self.size[account] - (prev_size if mine else 0) + size
        if total_count > lim.max_retained_messages:
            return "max_retained_messages"
        if total_size > lim.max_retained_bytes:
            return "max_retained_bytes"
        if lim.per_account(account):
            if count > lim.max_retained_per_account:
                return "max_retained_per_account"
            if acct_size > lim.max_retained_bytes_per_account:
                return "max_retained_bytes_per_account"
        self.release(topic)
        self.owners[topic] = (account, size)
        self.count[account] += 1
        self.size[account] += size
        self.total_count += 1
        self.total_size += size
        return None

    def release(self, topic: str) -> None:
        owner = self.owners.pop(topic, None)
        if owner is None:
            return
        account, size = owner
        self.count[account] -= 1
        self.size[account] -= size
        if self.count[account] <= 0:
            del self.count[account], self.size[account]
        self.total_count -= 1
        self.total_size -= size


class MeshBroker(Broker):  # type: ignore[misc]  # amqtt ships no type hints
    """amqtt's Broker with the session rules, caps and delivery fixes of this module, and
    retained messages replayed only for the client's own subscriptions."""

    def __init__(
        self, config: dict[str, Any], runtime: BrokerRuntime, limits: SessionLimits
    ) -> None:
        super().__init__(config)
        self._rt = runtime
        self._limits = limits
        self._retained_quota = RetainedQuota(limits)
        self._closing = False
        self.refusals: collections.Counter[str] = collections.Counter()  # by event or cap

    # -- CONNECT ---------------------------------------------------------------------------

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[Any, Session]:
        # Only reads the CONNECT: amqtt's version changes the live session of that client id
        # here, before anyone has checked who the newcomer is.
        try:
            handler, session = await BrokerProtocolHandler.init_from_connect(
                reader, writer, self.plugins_manager
            )
        except MQTTError:  # not a valid CONNECT; amqtt has sent the CONNACK it calls for
            await writer.close()
            raise
        except NoDataError as exc:
            # Logged by amqtt as "...: No data from": a port probe, debug in broker.embedded.
            raise AMQTTError(f"No data from {remote_address}:{remote_port}: {exc}") from exc
        return handler, session

    async def _authenticate(self, session: Session, listener: Any) -> bool:
        # The auth plugin may hash passwords: once per connection, whoever asks again.
        cached = session.attributes.get(_AUTHENTICATED)
        if isinstance(cached, bool):
            return cached
        result = bool(await super()._authenticate(session, listener))
        session.attributes[_AUTHENTICATED] = result
        return result

    async def _handle_client_session(
        self,
        reader: Any,
        writer: Any,
        session: Session,
        handler: Any,
        server: Any,
        listener_name: str,
    ) -> None:
        if not await self._authenticate(session, self.listeners_config[listener_name]):
            await _refuse(writer, NOT_AUTHORIZED)  # MeshAuthPlugin has logged why
            return
        account = account_of(session)
        if not session.clean_session:
            self._refused("persistent_session_refused", session, account)
            await _refuse(writer, IDENTIFIER_REJECTED)
            return
        if not session.client_id:
            session.client_id = gen_client_id()
        client_id: str = session.client_id
        held = self._sessions.get(client_id)
        live = held if held is not None and held[0].transitions.state == _CONNECTED else None
        if live is not None and account_of(live[0]) != account:
            self._refused(
                "session_takeover_refused", session, account, holder=_name(account_of(live[0]))
            )
            await _refuse(writer, IDENTIFIER_REJECTED)
            return
        cap = self._connection_cap(client_id, account)
        if cap is not None:
            self._refused("connection_cap", session, account, cap=cap[0], limit=cap[1])
            await _refuse(writer, SERVER_UNAVAILABLE)
            return
        # Checked above and registered here without an await in between: no other connection
        # can change what was checked.
        session.parent = 0
        session.transitions.connect()
        handler.attach(session, reader, writer)
        if held is not None:
            self._retire(held[0])
        self._sessions[client_id] = (session, handler)
        try:
            if live is not None:
                self._takeover(live, session, account)
                await live[1].handle_connection_closed()
                await self._stop_handler(live[1])
            await handler.mqtt_connack_authorize(True)
            if not self._registered(session):
                return  # taken over in the meantime by a newer connection of its own
            await self.plugins_manager.fire_event(
                BrokerEvents.CLIENT_CONNECTED, client_id=client_id, client_session=session
            )
            await handler.start()
            await self._client_message_loop(session, handler)
        finally:
            if session.transitions.state == _CONNECTED:
                # The loop ended without amqtt's disconnect handling (an error): do not leave
                # a live-looking session holding a connection slot.
                session.transitions.disconnect()

    async def watch_accounts(self, interval_s: float = 1.0) -> None:
        """Until cancelled: when the password file or the CA's revocation list changes, re-read
        it and end the connection of every client whose account is gone or whose certificate
        is revoked (its will fires, as for any lost client), so a revoked device is out within
        about ``interval_s``, not at its next reconnect."""
        policy, crl = self._rt.policy, self._rt.revocations
        seen = (policy.generation, crl.generation if crl else 0)
        while True:
            await asyncio.sleep(interval_s)
            problem = policy.try_reload()
            if problem is not None:
                self._rt.log.error("password_file_unreadable", error=problem)
            if crl is not None and (problem := crl.try_reload()) is not None:
                self._rt.log.error("crlfile_unreadable", error=problem)
            now = (policy.generation, crl.generation if crl else 0)
            if now == seen:
                continue
            seen = now
            for client_id, (session, handler) in list(self._sessions.items()):
                if session.transitions.state != _CONNECTED:
                    continue
                certificate = crl is not None and crl.revokes(session.ssl_object)
                if not certificate and not policy.revoked(session.username):
                    continue
                self._rt.log.warning(
                    "revoked_client_disconnected", client_id=client_id, peer=_peer(session)
                )
                with contextlib.suppress(Exception):  # gone already, whatever amqtt says
                    await handler.writer.close()

    def _connection_cap(self, client_id: str, account: Account) -> tuple[str, int] | None:
        """The cap a new connection for ``client_id`` would exceed (a takeover replaces the
        connection it takes over, so that one is not counted)."""
        lim = self._limits
        total = mine = 0
        for cid, (other, _handler) in self._sessions.items():
            if cid == client_id or other.transitions.state != _CONNECTED:
                continue
            total += 1
            if account_of(other) == account:
                mine += 1
        if total >= lim.max_connections:
            return "max_connections", lim.max_connections
        if lim.per_account(account) and mine >= lim.max_connections_per_account:
            return "max_connections_per_account", lim.max_connections_per_account
        return None

    def _retire(self, old: Session) -> None:
        """Synchronously detach the session a newcomer replaces: no will, no subscriptions."""
        old.will_flag = False
        empty = []
        for topic_filter, subs in self._subscriptions.items():
            subs[:] = [(s, qos) for s, qos in subs if s.client_id != old.client_id]
            if not subs:
                empty.append(topic_filter)
        for topic_filter in empty:
            del self._subscriptions[topic_filter]

    def _takeover(self, old: tuple[Session, Any], new: Session, account: Account) -> None:
        skipped = self._rt.limiter.admit(("session_takeover", str(new.client_id)))
        if skipped is not None:
            self._rt.log.info(
                "session_takeover",
                client_id=new.client_id,
                account=_name(account),
                old_peer=_peer(old[0]),
                peer=_peer(new),
                suppressed=skipped,
            )

    def _refused(self, event: str, session: Session, account: Account, **fields: Any) -> None:
        self.refusals[event] += 1
        skipped = self._rt.limiter.admit((event, str(session.client_id), _name(account)))
        if skipped is not None:
            self._rt.log.warning(
                event,
                client_id=session.client_id,
                account=_name(account),
                peer=_peer(session),
                refused_total=self.refusals[event],
                suppressed=skipped,
                **fields,
            )

    def _registered(self, session: Session) -> bool:
        held = self._sessions.get(session.client_id)
        return held is not None and held[0] is session

    def _get_handler(self, session: Session) -> Any:
        # By identity, not client id: a replaced session must not reach its successor's
        # connection (amqtt looks the handler up by client id).
        held = self._sessions.get(session.client_id)
        return held[1] if held is not None and held[0] is session else None

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        if not self._registered(session):
            return 0x80  # a SUBSCRIBE still queued on a connection that was taken over
        return int(await super().add_subscription(subscription, session))

    def _del_subscription(self, a_filter: str, session: Session) -> int:
        # By identity, not client id: an UNSUBSCRIBE still queued on a connection that was
        # taken over must not remove its successor's subscription.
        subs = self._subscriptions.get(a_filter, [])
        for index, (subscriber, _qos) in enumerate(subs):
            if subscriber is session:
                del subs[index]
                return 1
        return 0

    async def _cleanup_session(self, client_id: str) -> None:
        # The session monitor removes by client id what it found disconnected a moment ago;
        # a newcomer may hold that id by now.
        held = self._sessions.get(client_id)
        if not self._closing and held is not None and held[0].transitions.state == _CONNECTED:
            return
        await super()._cleanup_session(client_id)

    async def shutdown(self) -> None:
        self._closing = True
        # The broker is going down, not its clients: a will now would tell every subscriber
        # that a live client died (a standby would take a live leader's term).
        for session, _handler in self._sessions.values():
            session.will_flag = False
        await super().shutdown()

    # -- delivery --------------------------------------------------------------------------

    async def _run_broadcast(self, running_tasks: collections.deque[asyncio.Task[Any]]) -> None:
        # amqtt's, with three changes: a forced QoS (a will's) is capped by each
        # subscription's (§3.3.5); the filters are iterated over a copy (the ACL check awaits,
        # and a SUBSCRIBE meanwhile broke the iteration); no queue for offline persistent
        # sessions (refused at CONNECT).
        broadcast = await self._broadcast_queue.get()
        topic = broadcast["topic"]
        forced = broadcast.get("qos")
        for topic_filter, subscriptions in list(self._subscriptions.items()):
            if not self._matches(topic, topic_filter):
                continue
            for target, sub_qos in list(subscriptions):
                qos = sub_qos if forced is None else min(int(forced), sub_qos)
                if not await self._topic_filtering(target, topic=topic, action=Action.RECEIVE):
                    continue
                if target.transitions.state != _CONNECTED:
                    continue
                handler = self._get_handler(target)
                if handler is not None:
                    running_tasks.append(
                        asyncio.ensure_future(
                            handler.mqtt_publish(topic, broadcast["data"], qos, retain=False)
                        )
                    )

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        # amqtt 0.12 calls this on every CONNECT for every filter any client holds; the retained
        # messages of other clients' filters would reach this client unasked and unchecked.
        subscribers = self.subscriptions.get(subscription[0], ())
        if not any(s.client_id == session.client_id for s, _qos in subscribers):
            return
        await super()._publish_retained_messages_for_subscription(subscription, session)

    # -- retained messages -----------------------------------------------------------------

    async def retain_message(
        self,
        source_session: Session | None,
        topic_name: str | None,
        data: bytes | bytearray | None,
        qos: int | None = None,
    ) -> None:
        if topic_name is None:
            return
        if not data:  # clearing always works and frees the quota (§3.3.1-10)
            self._retained_quota.release(topic_name)
            await super().retain_message(source_session, topic_name, data, qos)
            return
        account = account_of(source_session)
        size = len(data) + len(topic_name.encode())
        if not retainable(topic_name):
            # Frames, heartbeats, results, events: a retained one would be replayed to every
            # late subscriber as if it were current. Delivered live, never kept.
            self._retained_refused(source_session, account, topic_name, size, "not_retained_topic")
            return
        cap = self._retained_quota.admit(topic_name, account, size)
        if cap is None:
            await super().retain_message(source_session, topic_name, data, qos)
            return
        self._retained_refused(source_session, account, topic_name, size, cap)
        if topic_name in self._retained_messages:
            # Superseded by the message just refused: a late subscriber gets nothing rather
            # than a state its publisher has replaced.
            self._retained_quota.release(topic_name)
            await super().retain_message(source_session, topic_name, b"", qos)

    def _retained_refused(
        self, session: Session | None, account: Account, topic: str, size: int, cap: str
    ) -> None:
        self.refusals[cap] += 1
        skipped = self._rt.limiter.admit(("retained_cap", _name(account), cap))
        if skipped is not None:
            self._rt.log.warning(
                "retained_cap",
                client_id=session.client_id if session is not None else None,
                account=_name(account),
                topic=topic,
                size=size,
                cap=cap,
                limit=getattr(self._limits, cap, None),
                refused_total=self.refusals[cap],
                suppressed=skipped,
            )


def retainable(topic: str) -> bool:
    """Whether a retained publish on ``topic`` may be kept: any topic outside the mesh's scheme
    (the broker is the mesh's, but not only its), a mesh topic only if the scheme retains it."""
    parsed = parse(topic)
    return parsed is None or parsed[1].spec.retained


async def _refuse(writer: Any, return_code: int) -> None:
    """CONNACK with ``return_code`` (session present 0, §3.2.2-4), then close."""
    with contextlib.suppress(OSError):  # gone already
        await ConnackPacket.build(0, return_code).to_stream(writer)
    await writer.close()
