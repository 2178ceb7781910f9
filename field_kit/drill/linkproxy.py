"""A TCP forwarder from a namespace's link to the broker on loopback, optionally impaired.

Workers in a drill namespace reach the broker through this forwarder, listening on the host
end of their veth link (the broker itself stays on loopback). Where the kernel has no
``sch_netem``, the forwarder applies the WiFi impairment in user space instead: every chunk is
held for the one-way delay plus normal jitter, in order (TCP never reorders), and a lost
segment shows up the way TCP shows it to an application: as a retransmission timeout's stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from dataclasses import dataclass, field

from faillite.log import get_logger
from field_kit.drill.netns import Impairment

log = get_logger("linkproxy")
MIN_RTO_S = 0.2  # Linux's minimum retransmission timeout


@dataclass
class ProxyStats:
    connections: int = 0
    chunks: int = 0
    bytes: int = 0
    lost: int = 0  # chunks held for a retransmission timeout
    delays_ms: list[float] = field(default_factory=list)


class LinkProxy:
    def __init__(
        self,
        listen_host: str,
        listen_port: int,
        target_host: str,
        target_port: int,
        impairment: Impairment | None = None,
        seed: int = 0,
    ) -> None:
        self.listen = (listen_host, listen_port)
        self.target = (target_host, target_port)
        self.impairment = impairment
        self.stats = ProxyStats()
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="linkproxy", daemon=True)
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> LinkProxy:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise OSError(f"link proxy on {self.listen}: {self._error}") from self._error
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(5)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, *self.listen, reuse_address=True)
            )
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def _delay_s(self) -> float:
        imp = self.impairment
        if imp is None:
            return 0.0
        d = max(0.0, self._rng.gauss(imp.delay_ms, imp.jitter_ms)) / 1000
        # A lost segment waits one retransmission timeout; a lost retransmission, twice that.
        rto = max(MIN_RTO_S, 2 * imp.delay_ms / 1000)
        while self._rng.random() * 100 < imp.loss_pct:
            self.stats.lost += 1
            d += rto
            rto *= 2
        return d

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        for src, dst in ((reader, up_w), (up_r, writer)):
            task = asyncio.ensure_future(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                at, data = await queue.get()
                if not data:
                    break
                wait = at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(data)
                await dst.drain()

        sender = asyncio.ensure_future(deliver())
        last = 0.0
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                d = self._delay_s()
                last = max(last, time.monotonic() + d)  # in order, like TCP
                self.stats.chunks += 1
                self.stats.bytes += len(data)
                if len(self.stats.delays_ms) < 100_000:
                    self.stats.delays_ms.append(d * 1000)
                queue.put_nowait((last, data))
            queue.put_nowait((0.0, b""))
            await sender
        except (OSError, asyncio.CancelledError):
            sender.cancel()
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                dst.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    """Run one impaired link as its own process (in a namespace): until SIGTERM or SIGINT."""
    import argparse
    import signal

    p = argparse.ArgumentParser(
        prog="python -m field_kit.drill.linkproxy", description=main.__doc__
    )
    p.add_argument("--listen", required=True, type=_address, help="HOST:PORT")
    p.add_argument("--target", required=True, type=_address, help="HOST:PORT")
    wifi = Impairment()
    p.add_argument("--delay-ms", type=float, default=wifi.delay_ms)
    p.add_argument("--jitter-ms", type=float, default=wifi.jitter_ms)
    p.add_argument("--loss-pct", type=float, default=wifi.loss_pct)
    args = p.parse_args(argv)
    imp = Impairment(args.delay_ms, args.jitter_ms, args.loss_pct)
    (lhost, lport), (thost, tport) = args.listen, args.target
    proxy = LinkProxy(lhost, lport, thost, tport, imp).start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: done.set())
    log.info("link_up", listen=args.listen, target=args.target, impairment=str(imp))
    done.wait()
    proxy.stop()
    s = proxy.stats
    log.info("link_down", connections=s.connections, chunks=s.chunks, lost=s.lost)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
