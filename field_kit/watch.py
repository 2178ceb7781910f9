"""``faillite watch``: the live view of a running mesh, on any broker, for a field team.

Connects as an observer identity, ``{mesh}.observer.{ID}`` (its secret from
``broker.secrets_dir``, TLS from ``broker.tls``, as for every role; the observer's ACL reads
everything and writes nothing), and shows what ``faillite up`` shows (results per app, who serves
each, its backup, workers online, the leader) with the mesh's events below it: failures,
failovers, upgrades, re-plans, leader changes, each with its wall-clock time and what it says.

Events are not retained: the view shows those published while it is connected. A broker that
cannot be reached, or that refuses the identity, gets one line saying so, and the view keeps
trying (with ``--duration``, a view that never connected exits 1). With ``--duration`` it prints
the summary of ``faillite up`` at the end and exits 0 when every app was served at the end.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from rich.console import Console

from faillite import messages
from faillite.config import ConfigError, MeshConfig
from faillite.topics import InvalidIdError
from field_kit.observe import MeshObserver
from field_kit.view import event_line, follow, print_summary, table_with_events

DEFAULT_ID = "watch"


@dataclass(frozen=True, slots=True)
class WatchOptions:
    observer_id: str = DEFAULT_ID
    duration_s: float | None = None
    view: bool = True  # the live table (on a terminal); False: plain periodic lines
    events_only: bool = False  # no table, no periodic lines: the events, one line each
    json: bool = False  # each event as one JSON line on stdout (lines for people on stderr)
    events: int = 12  # events under the live table


def _why_not(host: str, port: int) -> str:
    """Why a connection did not come up, as far as a plain TCP connection tells."""
    try:
        with socket.create_connection((host, port), timeout=2.0):
            pass
    except OSError as exc:
        return f"cannot reach it ({exc.strerror or exc})"
    return (
        "it is reachable but did not accept this identity (no such account, a wrong or "
        "revoked secret, or a TLS mismatch)"
    )


class Link:
    """The observer's connection as people see it: one line when it is down, one when up."""

    def __init__(self, observer: MeshObserver, say: Callable[[str], None]) -> None:
        self._client = observer.client
        self._say = say
        broker = observer.cfg.broker
        self.host, self.port = broker.host, broker.port
        self.where = f"{broker.host}:{broker.port}"
        self.name = observer.identity.name
        self.state = "connecting"  # then "up" or "down"
        self.ever = False
        self.why = ""

    def check(self) -> None:
        up = self._client.connected
        if up and self.state != "up":
            self.state, self.ever = "up", True
            self._say(f"connected to {self.where} as {self.name}")
        elif not up and self.state == "up":
            self.state, self.why = "down", "the connection was lost"
            self._say(f"LOST the connection to {self.where}; retrying")
        elif not up and self.state == "connecting" and self._client.connect_failures > 0:
            self.state, self.why = "down", _why_not(self.host, self.port)
            self._say(f"NOT CONNECTED to {self.where} as {self.name}: {self.why}; retrying")

    def header(self) -> str:
        if self.state == "up":
            return f"[green]connected[/] to {self.where} as {self.name}"
        if self.state == "down":
            return f"[red]NOT CONNECTED[/] to {self.where} as {self.name}: {self.why}; retrying"
        return f"connecting to {self.where} as {self.name} ..."


def run_watch(cfg: MeshConfig, opts: WatchOptions) -> int:
    console = Console(soft_wrap=not sys.stdout.isatty())
    people = Console(stderr=True, soft_wrap=True) if opts.json else console

    def say(text: str) -> None:
        people.print(text, highlight=False, markup=False)

    try:
        observer = MeshObserver(cfg, client_id=opts.observer_id)
    except InvalidIdError as exc:
        raise ConfigError(f"--as {opts.observer_id!r}: {exc}") from exc
    link = Link(observer, say)
    tls = " over TLS" if cfg.broker.tls is not None else ""
    say(f"watching mesh {cfg.mesh} on {link.where} as {link.name}{tls}")

    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    old_int = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    live = opts.view and not opts.events_only and not opts.json and sys.stdout.isatty()
    periodic = not opts.events_only and not opts.json
    seen = 0

    def tick() -> None:
        nonlocal seen
        link.check()
        seen, new = observer.events_after(seen)
        for ev in new:
            if opts.json:
                sys.stdout.write(messages.encode(ev).decode() + "\n")
                sys.stdout.flush()
            elif not live:
                console.print(event_line(ev), highlight=False, markup=False)

    def done() -> bool:
        over = opts.duration_s is not None and time.monotonic() - start >= opts.duration_s
        return over or stop.is_set()

    start = time.monotonic()
    try:
        observer.start(timeout=None)  # keeps trying in the background; Link says how it goes
        observer.mark_start()
        follow(
            observer,
            console,
            live=live,
            done=done,
            stop=stop,
            start=start,
            render=lambda: table_with_events(observer, opts.events, link.header()),
            line=lambda: observer.line() if periodic and link.state == "up" else None,
            tick=tick,
        )
        tick()  # the last events
    finally:
        observer.stop()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    elapsed = time.monotonic() - start
    if not link.ever:
        why = f": {link.why}" if link.why else ""
        say(f"never connected to {link.where} as {link.name} in {elapsed:.0f} s{why}")
        return 1
    summary = observer.summary(elapsed)
    summary["ok"] = bool(summary["all_served"] and summary["served_at_end"])
    if opts.json:
        sys.stdout.write(orjson.dumps({"summary": summary}).decode() + "\n")
    else:
        print_summary(console, summary)
    return 1 if opts.duration_s is not None and not summary["ok"] else 0
