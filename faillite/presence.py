"""A role's presence on its retained status topic: the same code for workers, sensors and
coordinators (a coordinator's status is the leader's, on a topic every coordinator shares: it
announces only once it holds a term, and leadership, not the id guard below, judges it).

- **Birth**: built afresh before every (re)connect and published, retained, once connected.
- **Last-will**: the birth's twin, set on the connection that publishes that birth: the same
  message with ``state: offline, reason: lost`` (same incarnation, same ``ts``: the time of
  the birth it ends; the broker publishes it at a time nobody chooses).
- **Graceful offline** at a clean stop (``reason: graceful``, ``ts``: when it left).
- **Sealed wills** (statuses with a ``will_seal`` field): each connection draws a secret; its
  births carry the secret's hash, its last-will and graceful offline the secret itself. Anyone
  who may write the status topic (a coordinator account, for obituaries) can forge an offline,
  but not one that unseals the birth it claims to end: a reader that saw the birth refuses it
  (:func:`unseals`). A coordinator's obituary is signed instead.
- **Republish after reconnect** (brokers can lose retained state), and after a late last-will
  of our own incarnation overwrote the birth.
- **One process per id.** :meth:`Presence.claim` looks, before the role connects under its id,
  whether that id is alive under another incarnation (an online birth retained and signs of
  life on ``life_topic``); if so the role refuses to start, unless it was told to replace the
  other one: it then announces its own birth first, and the other process, seeing a newer
  birth of its id, steps down (:attr:`Presence.replaced`) without touching the status.
- **Handover keys** (statuses with a ``handover_seal`` field, :mod:`faillite.handover`): that
  newer birth must reveal the key whose hash the live process's births carry, which only its
  own board holds; one that does not (a thief with the id's secret) is refused
  (``takeover_refused``) and the live process puts its birth back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from faillite import handover, messages
from faillite.log import get_logger
from faillite.mqtt import Inbound, MeshClient, Raw, Will, probe_id

if TYPE_CHECKING:
    from faillite.config import BrokerConfig

log = get_logger("presence")


# How long a replaced predecessor's heartbeats must be quiet before we take its id.
STEP_DOWN_S = 2.0


class Status(Protocol):
    """What a status message must have (``WorkerStatus``, ``SensorStatus``)."""

    @property
    def incarnation(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def ts(self) -> float: ...


S = TypeVar("S", bound=Status)


def _offline(status: Any, reason: str, ts: float) -> Any:
    return dataclasses.replace(status, state="offline", reason=reason, ts=ts)


def will_seal(key: str) -> str:
    """The seal a birth carries for the will ``key`` (hex) its connection's offline reveals."""
    return hashlib.sha256(bytes.fromhex(key)).hexdigest()


def unseals(seal: str, key: str) -> bool:
    """Whether ``key`` is the secret of the birth sealed with ``seal``."""
    try:
        return hmac.compare_digest(will_seal(key), seal)
    except ValueError:  # not hex
        return False


def hands_over(seal: str, key: str) -> bool:
    """Whether a successor revealing ``key`` may take over from a process whose births carry
    handover ``seal`` (one that carries none asks for nothing)."""
    return not seal or unseals(seal, key)


class IdentityInUseError(RuntimeError):
    """Another live process already serves under this id."""


class Presence(Generic[S]):
    """Birth, last-will, graceful offline and the one-process-per-id guard of one role."""

    def __init__(
        self,
        topic: str,
        schema: type[S],
        birth: Callable[[float], S],
        *,
        on_replaced: Callable[[S], None] | None = None,
        offline: Callable[[S, str, float], S] | None = None,
        watch: bool = True,
        announce_on_connect: Callable[[], bool] | None = None,
    ) -> None:
        """``birth(ts)``: the online status; ``offline(birth, reason, ts)``: its offline twin
        (default: ``state: offline`` with ``reason`` and ``ts``). ``watch``: guard the id (a
        newer birth of it replaces us; a late last-will of ours is overwritten), for per-id
        topics; a coordinator's status topic is shared by every coordinator, and leadership
        judges it. ``announce_on_connect``: whether a connect publishes the birth (a
        coordinator has nothing to announce before it holds a term)."""
        self.topic = topic
        self.schema = schema
        self._make = birth
        self._offline = offline or _offline
        self._watch = watch
        self._on_connect = announce_on_connect
        self._on_replaced = on_replaced
        self._client: MeshClient | None = None
        self._lock = threading.Lock()
        self._birth: S | None = None
        self._arrived = False
        self._leaving = False
        self._silent = False  # a deposed leader: the status is a successor's now
        self.replaced: S | None = None  # the newer birth of our id that took over
        fields = {f.name for f in dataclasses.fields(schema)}  # type: ignore[arg-type]
        self._sealed = "will_seal" in fields
        self._key = ""  # this connection's will secret (sealed statuses)
        # This process's handover key (statuses that carry one), and where it is kept.
        self._handover = secrets.token_hex(16) if "handover_seal" in fields else ""
        self._handover_file: Path | None = None
        self.takeovers_refused = 0

    @property
    def birth(self) -> S | None:
        return self._birth

    def attach(self, client: MeshClient) -> None:
        """Called by the client it belongs to: watch our own status topic."""
        self._client = client
        if self._watch:
            client.subscribe_json(self.topic, self.schema, self._on_status, qos=1)

    # -- the client's side ---------------------------------------------------------------

    def prepare(self) -> Will:
        """Before a connect: a fresh birth, and its twin as the last-will of that connection."""
        with self._lock:
            if self._sealed:
                self._key = secrets.token_hex(16)
            self._birth = birth = self._sealed_birth(messages.now())
            will = self._twin(birth, "lost", birth.ts)
        return Will(self.topic, messages.encode(will))

    def _sealed_birth(self, ts: float) -> S:
        birth = self._handed(self._make(ts))
        if self._sealed:
            birth = dataclasses.replace(birth, will_seal=will_seal(self._key))  # type: ignore[type-var]
        return birth

    def _handed(self, birth: S, key: str = "") -> S:
        """``birth`` with our handover seal, revealing ``key`` (a predecessor's) if given."""
        if not self._handover:
            return birth
        return dataclasses.replace(  # type: ignore[type-var]
            birth, handover_seal=will_seal(self._handover), handover_key=key
        )

    def _twin(self, birth: S, reason: str, ts: float) -> S:
        """The offline twin of ``birth``: unsealing it, where statuses are sealed."""
        offline = self._offline(birth, reason, ts)
        if self._sealed:
            offline = dataclasses.replace(offline, will_seal="", will_key=self._key)  # type: ignore[type-var]
        return offline

    def arrive(self) -> None:
        """Connected: publish the birth prepared for this connection."""
        with self._lock:
            birth, self._arrived = self._birth, True
            if self._muted() or (self._on_connect is not None and not self._on_connect()):
                return
            if self._handover and self._handover_file is None and birth is not None:
                self._handover_file = handover.keep(self.topic, birth.incarnation, self._handover)
        if birth is not None and self._client is not None:
            self._client.publish_message(self.topic, birth, qos=1, retain=True)

    def _drop_handover(self) -> None:
        if self._birth is not None:
            handover.drop(self._handover_file, self._birth.incarnation)

    def announce(self) -> None:
        """Publish a birth made now (a coordinator that took its term, or republishes)."""
        with self._lock:
            if self._muted():
                return
            self._birth = birth = self._sealed_birth(messages.now())
        if self._client is not None:
            self._client.publish_message(self.topic, birth, qos=1, retain=True)

    def silence(self) -> None:
        """Publish nothing more: the status is a successor's now (a deposed leader)."""
        with self._lock:
            self._silent = True

    def leave(self) -> None:
        """A clean stop: say so ourselves, unless a newer process of our id took over."""
        with self._lock:
            birth = self._birth
            self._drop_handover()
            if self._muted() or birth is None or self._client is None:
                self._leaving = True
                return
            self._leaving = True
            offline = self._twin(birth, "graceful", messages.now())
        self._client.publish_message(self.topic, offline, qos=1, retain=True)

    def _muted(self) -> bool:
        return self.replaced is not None or self._leaving or self._silent

    def _on_status(self, inbound: Inbound[S]) -> None:
        st = inbound.message
        with self._lock:
            birth = self._birth
            if birth is None or not self._arrived or self._leaving or self.replaced is not None:
                return
            if st.incarnation == birth.incarnation:
                if st.state == "online":
                    return
                republish = True  # a late last-will of ours replaced the birth
            elif st.state != "online":
                return  # an older incarnation's last-will
            elif st.ts > birth.ts and self._hands_over_to(birth, st):
                self.replaced = st
                republish = False
            elif st.ts > birth.ts:
                self.takeovers_refused += 1
                log.warning(
                    "takeover_refused",
                    topic=self.topic,
                    claimed_by=st.incarnation,
                    reason="its birth does not reveal our handover key: not a --replace on "
                    "this board (a stolen secret?); our birth goes back",
                )
                republish = True
            else:
                republish = True  # an older claim of our id published late: ours stands
        if republish:
            log.warning(
                "birth_republished",
                topic=self.topic,
                overwritten_by=st.incarnation,
                state=st.state,
            )
            self.arrive()
            return
        log.warning(
            "replaced",
            topic=self.topic,
            successor=st.incarnation,
            successor_ts=st.ts,
            note="a newer process took over this id; stepping down without publishing",
        )
        self._drop_handover()
        if self._on_replaced is not None:
            self._on_replaced(st)

    def _hands_over_to(self, birth: S, st: S) -> bool:
        return hands_over(getattr(birth, "handover_seal", ""), getattr(st, "handover_key", ""))

    # -- before connecting ----------------------------------------------------------------

    def claim(
        self,
        broker: BrokerConfig,
        client_id: str,
        *,
        life_topic: str,
        liveness_s: float,
        replace: bool = False,
        connect_s: float = 2.0,
        settle_s: float = 0.3,
        quiet_timeout_s: float = 10.0,
    ) -> None:
        """Refuse to start (:class:`IdentityInUseError`) if our id is alive under another
        incarnation: its birth is retained and something arrives on ``life_topic`` (its
        heartbeats, its frames) within ``liveness_s``. A retained birth without signs of life
        is stale (a frozen or dead process whose last-will has not fired yet): we go ahead, and
        it steps down if it ever wakes. With ``replace`` a live one is told to step down, and this
        returns once it has gone quiet on ``life_topic``."""
        if broker.tls is not None and (probe_tls := broker.tls.for_probe()) is not broker.tls:
            if probe_tls is None:
                log.warning(
                    "identity_unchecked",
                    topic=self.topic,
                    reason="a client certificate and no tls.probe_certfile: a look with this "
                    "certificate would take this id's own session where the broker names "
                    "clients by certificate (Mosquitto); faillite pki client issues one",
                )
                return
            broker = broker.model_copy(update={"tls": probe_tls})
        probe = MeshClient(probe_id(client_id), broker, quiet=True)
        seen: list[S] = []
        life = threading.Event()
        last_life = [0.0]
        probe.subscribe_json(self.topic, self.schema, lambda inb: seen.append(inb.message))

        def on_life(_raw: Raw) -> None:
            last_life[0] = time.monotonic()
            life.set()

        probe.subscribe(life_topic, on_life, qos=0)
        probe.start(connect_timeout=None)
        try:
            deadline = time.monotonic() + connect_s
            while not probe.wait_connected(0.02):
                if probe.connect_failures or time.monotonic() > deadline:
                    log.info("identity_unchecked", topic=self.topic, reason="broker unreachable")
                    return
            time.sleep(settle_s)  # the retained status, if any, arrives right after SUBACK
            other = seen[-1] if seen else None
            if other is None or other.state != "online":
                return
            if not life.wait(max(0.0, liveness_s - settle_s)):
                log.info(
                    "stale_birth_overridden",
                    topic=self.topic,
                    stale=other.incarnation,
                    silent_s=liveness_s,
                )
                return
            where = ", ".join(f"{k} {v}" for k in ("host", "pid") if (v := getattr(other, k, None)))
            running = (
                f"{self.topic.rsplit('/', 2)[-2]} is already running under incarnation "
                f"{other.incarnation}" + (f" ({where})" if where else "") + ", started "
                f"{max(0.0, messages.now() - other.ts):.0f} s ago"
            )
            if not replace:
                raise IdentityInUseError(
                    f"{running}; stop it first, or start this one with --replace to take over "
                    "(on the same board)"
                )
            key = ""
            if getattr(other, "handover_seal", ""):
                found, looked = handover.find(self.topic, other.incarnation)
                if found is None:
                    raise IdentityInUseError(
                        f"{running}; --replace takes over only on the board it runs on, which "
                        f"keeps its handover key (not found in {', '.join(map(str, looked))}): "
                        "run --replace there as its user or root, or stop it first (systemctl "
                        "stop, or kill its pid), then start this one"
                    )
                key = found
            announce = self._handed(self._make(messages.now()), key)
            probe.publish_message(self.topic, announce, qos=1, retain=True)
            log.warning("replacing", topic=self.topic, predecessor=other.incarnation)
            # Connect under the id only once the predecessor has left: before that the broker
            # would drop it (firing its last-will) and it would take the id back on reconnect.
            # It stops beating at once but leaves only after its last packets are
            # acknowledged (up to a second, more on a busy machine): wait that out too.
            quiet_s = max(STEP_DOWN_S, liveness_s / 3.0)
            deadline = time.monotonic() + quiet_timeout_s
            while time.monotonic() - last_life[0] < quiet_s:
                if time.monotonic() > deadline:
                    log.warning(
                        "predecessor_still_live", topic=self.topic, waited_s=quiet_timeout_s
                    )
                    break
                time.sleep(0.05)
        finally:
            probe.stop()
