"""A recording MQTT client: every message on the filters it follows, with arrival times.

The drills, the benchmarks and the integration tests all watch a mesh through this one class.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import TypeVar

from faillite import messages
from faillite.config import MeshConfig
from faillite.identity import Identity
from faillite.mqtt import MeshClient, Raw
from faillite.topics import Role, Topics, matches

T = TypeVar("T")


class Recorder:
    """Records (monotonic arrival, topic, payload) of every message on the followed filters."""

    def __init__(self, cfg: MeshConfig, name: str = "recorder") -> None:
        self.topics = Topics(cfg.mesh)
        self.client = MeshClient(Identity(cfg.mesh, Role.ADMIN, name).name, cfg.broker)
        self._msgs: list[tuple[float, str, bytes]] = []
        # The same, by arrival time (for bisect) and by topic: an hour's soak records hundreds
        # of thousands of messages, and a check that scanned them all on every poll would
        # starve the network thread that records them.
        self._times: list[float] = []
        self._by_topic: dict[str, list[tuple[float, bytes]]] = {}
        self._cond = threading.Condition()

    def follow(self, topic_filter: str, qos: int = 1) -> Recorder:
        self.client.subscribe(topic_filter, self._on, qos=qos)
        return self

    def _on(self, msg: Raw) -> None:
        with self._cond:
            t = time.monotonic()
            self._msgs.append((t, msg.topic, msg.payload))
            self._times.append(t)
            self._by_topic.setdefault(msg.topic, []).append((t, msg.payload))
            self._cond.notify_all()

    def start(self) -> Recorder:
        self.client.start(connect_timeout=15)
        return self

    def stop(self) -> None:
        self.client.stop()

    def raw(self, since: float = 0.0) -> list[tuple[float, str, bytes]]:
        with self._cond:
            return self._msgs[bisect_left(self._times, since) :]

    def on_topic(self, topic: str, since: float = 0.0) -> list[tuple[float, bytes]]:
        """(arrival, payload) of every message recorded on exactly ``topic`` since ``since``."""
        with self._cond:
            return [m for m in self._by_topic.get(topic, ()) if m[0] >= since]

    def last_on(self, topics: set[str], since: float = 0.0) -> dict[str, tuple[float, bytes]]:
        """The last message recorded since ``since`` on each of ``topics`` that has one."""
        with self._cond:
            return {
                tp: msgs[-1]
                for tp in topics
                if (msgs := self._by_topic.get(tp)) and msgs[-1][0] >= since
            }

    def messages(self, topic: str, cls: type[T], since: float = 0.0) -> list[T]:
        """Decoded messages on one topic, or on every topic a filter matches (undecodable ones
        skipped)."""
        if "+" not in topic and "#" not in topic:
            raw = [(t, p) for t, p in self.on_topic(topic, since) if p]
        else:
            with self._cond:
                raw = [(t, p) for t, tp, p in self.raw(since) if p and matches(topic, tp)]
        out = []
        for _t, p in raw:
            try:
                out.append(messages.decode(cls, p))
            except messages.MessageError:
                continue
        return out

    def wait_for(self, fn: Callable[[], T], timeout: float, what: str = "condition") -> T:
        deadline = time.monotonic() + timeout
        while True:
            # Not under the lock: the network thread goes on recording while ``fn`` looks.
            value = fn()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            with self._cond:
                self._cond.wait(min(remaining, 0.2))

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)
