"""A recording MQTT client: every message on the filters it follows, with arrival times.

The drills, the benchmarks and the integration tests all watch a mesh through this one class.
"""

from __future__ import annotations

import threading
import time
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
        self._cond = threading.Condition()

    def follow(self, topic_filter: str, qos: int = 1) -> Recorder:
        self.client.subscribe(topic_filter, self._on, qos=qos)
        return self

    def _on(self, msg: Raw) -> None:
        with self._cond:
            self._msgs.append((time.monotonic(), msg.topic, msg.payload))
            self._cond.notify_all()

    def start(self) -> Recorder:
        self.client.start(connect_timeout=15)
        return self

    def stop(self) -> None:
        self.client.stop()

    def raw(self, since: float = 0.0) -> list[tuple[float, str, bytes]]:
        with self._cond:
            return [m for m in self._msgs if m[0] >= since]

    def messages(self, topic: str, cls: type[T], since: float = 0.0) -> list[T]:
        """Decoded messages on one topic, or on every topic a filter matches (undecodable ones
        skipped)."""
        with self._cond:
            raw = [(t, p) for t, tp, p in self._msgs if matches(topic, tp) and t >= since and p]
        out = []
        for _t, p in raw:
            try:
                out.append(messages.decode(cls, p))
            except messages.MessageError:
                continue
        return out

    def wait_for(self, fn: Callable[[], T], timeout: float, what: str = "condition") -> T:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = fn()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
                self._cond.wait(min(remaining, 0.2))

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)
