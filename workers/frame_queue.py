"""Per-app bounded frame queues that drop the oldest frame, served round-robin.

A slow worker should serve fresh frames, not build a backlog: ``put`` never blocks, and a full
app queue loses its oldest frame (counted). One app with a fast camera cannot starve another,
because the consumer takes apps in turn.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QueuedFrame:
    app: str
    payload: bytes
    received_ns: int  # monotonic_ns on arrival (network thread)


class FrameQueues:
    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError("queue length must be at least 1")
        self._maxlen = maxlen
        self._queues: dict[str, deque[QueuedFrame]] = {}
        self._order: deque[str] = deque()
        self._cond = threading.Condition()
        self.dropped: dict[str, int] = {}
        self._closed = False

    def put(self, item: QueuedFrame) -> bool:
        """Enqueue; returns True if an older frame of the same app was dropped for it."""
        with self._cond:
            q = self._queues.get(item.app)
            if q is None:
                q = self._queues[item.app] = deque(maxlen=self._maxlen)
                self._order.append(item.app)
            dropped = len(q) == self._maxlen
            if dropped:
                self.dropped[item.app] = self.dropped.get(item.app, 0) + 1
            q.append(item)
            self._cond.notify()
            return dropped

    def get(self, timeout: float) -> QueuedFrame | None:
        """Next frame, round-robin over apps; None on timeout or when closed."""
        with self._cond:
            if not self._cond.wait_for(self._ready, timeout):
                return None
            if self._closed:
                return None
            for _ in range(len(self._order)):
                app = self._order[0]
                self._order.rotate(-1)
                q = self._queues[app]
                if q:
                    return q.popleft()
            return None

    def _ready(self) -> bool:
        return self._closed or any(self._queues.values())

    def discard(self, app: str) -> int:
        """Forget an app's queue (it is no longer served); returns frames thrown away."""
        with self._cond:
            q = self._queues.pop(app, None)
            if q is None:
                return 0
            self._order.remove(app)
            return len(q)

    def dropped_snapshot(self) -> dict[str, int]:
        with self._cond:
            return dict(self.dropped)

    def depth(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def depths(self) -> dict[str, int]:
        with self._cond:
            return {a: len(q) for a, q in self._queues.items()}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
