"""The TLS handshake, counted with the connections that have not logged in yet.

Given an ``ssl`` context, ``create_server`` calls a protocol's ``connection_made`` only once the
handshake is done: a source could hold any number of sockets in the handshake (sending nothing,
or a ClientHello byte by byte) without being counted by :class:`broker._amqtt_hooks.Unadmitted`.
A :class:`TlsGate` is the protocol of the plain TCP connection instead: it counts its source
from the accept, runs the handshake itself (``loop.start_tls``, bounded in time), and then hands
the TLS transport, and every event after, to the mesh's protocol, which counts the connection
until its CONNECT as for plain TCP.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Protocol, cast


class SourceCap(Protocol):
    def enter(self, source: str) -> bool: ...

    def leave(self, source: str) -> None: ...


class TlsGate(asyncio.Protocol):
    """One accepted connection of a TLS listener (see the module docstring)."""

    def __init__(
        self,
        inner: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        cap: SourceCap,
        *,
        timeout_s: float,
        refused: Callable[[str], None],
        tasks: set[asyncio.Task[None]],
    ) -> None:
        self._make_inner = inner
        self._context = context
        self._cap = cap
        self._timeout_s = timeout_s
        self._refused = refused
        self._tasks = tasks
        self._source: str | None = None  # counted in ``cap`` until the handshake ends
        self._wrapped = False  # the TLS layer reads the socket now, not us
        self._inner: asyncio.Protocol | None = None
        self._early: list[bytes] = []  # decrypted before the mesh's protocol took over
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = cast(asyncio.Transport, transport)
        peer = raw.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self._cap.enter(source):
            self._refused(source)
            raw.abort()
            return
        self._source = source
        task = asyncio.get_running_loop().create_task(self._handshake(raw))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handshake(self, raw: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        self._wrapped = True
        try:
            tls = await loop.start_tls(
                raw, self, self._context, server_side=True, ssl_handshake_timeout=self._timeout_s
            )
        except (OSError, ssl.SSLError, asyncio.TimeoutError, RuntimeError):
            raw.abort()  # a failed or slow handshake: nothing to hand over (the peer sees why)
            return
        finally:
            self._admitted()
        if tls is None or tls.is_closing():
            return
        inner = self._make_inner()
        self._inner = inner
        inner.connection_made(tls)
        for data in self._early:
            inner.data_received(data)
        self._early.clear()
        if self._eof and not inner.eof_received():
            tls.close()

    def _admitted(self) -> None:
        if self._source is not None:
            self._cap.leave(self._source)
            self._source = None

    # -- events of the TLS transport, for the mesh's protocol -----------------------------------

    def data_received(self, data: bytes) -> None:
        if not self._wrapped:
            raise RuntimeError("TLS gate: ciphertext before the TLS layer took the socket")
        if self._inner is None:
            self._early.append(data)
        else:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is None:
            self._eof = True  # handed on with the transport (TLS closes it either way)
            return None
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._admitted()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()
