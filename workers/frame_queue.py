"""Per-app bounded frame queues that drop the oldest frame, served round-robin.

A slow worker should serve fresh frames, not build a backlog: ``put`` never blocks, and a full
app queue loses its oldest frame (counted). One app with a fast camera cannot starve another,
because the consumer takes apps in turn.

:meth:`FrameQueues.take_batch` takes the frames of several apps at once, for one batched
inference call (:mod:`workers.batching`): apps in turn as above, one frame of each per pass.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

# What :meth:`FrameQueues.take_batch` asks of an app: the batch it may share (apps of equal
# keys run together) and the most frames such a batch may hold; None: the app is not served.
Grouping = Callable[[str], "tuple[Hashable, int] | None"]


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
            return self._pop_next()

    def take_batch(self, group: Grouping, timeout: float, max_wait_s: float) -> list[QueuedFrame]:
        """Frames to run as one batch; [] on timeout or when closed.

        The first is the next frame round-robin (as :meth:`get`). If ``group`` says its app is
        served, frames of the apps ``group`` puts with it follow, one per app per pass, apps in
        turn, up to the limit ``group`` gives; while the batch is not full and other apps
        share its group, frames arriving within ``max_wait_s`` of the first join it. An app
        left out (another group, or the batch was full) keeps its turn: the apps served go to
        the back of the order."""
        with self._cond:
            if not self._cond.wait_for(self._ready, timeout) or self._closed:
                return []
            first = self._pop_next()
            if first is None:
                return []
            g = group(first.app)
            if g is None:
                return [first]  # not served (revoked while queued): the caller drops it
            key, limit = g
            batch = [first]
            mates: dict[str, bool] = {first.app: True}
            deadline = time.monotonic() + max_wait_s
            while len(batch) < limit:
                self._fill(batch, limit, key, group, mates)
                left = deadline - time.monotonic()
                if len(batch) >= limit or self._closed or left <= 0:
                    break
                if not self._has_mates(first.app, key, group, mates):
                    break  # an app alone on its model: waiting would only add latency
                self._cond.wait(left)
            # Every app served goes to the back of the turn order, so apps left out of a full
            # batch come first in the next one.
            for app in dict.fromkeys(f.app for f in batch):
                if app in self._queues:
                    self._order.remove(app)
                    self._order.append(app)
            return batch

    def _pop_next(self) -> QueuedFrame | None:
        for _ in range(len(self._order)):
            app = self._order[0]
            self._order.rotate(-1)
            q = self._queues[app]
            if q:
                return q.popleft()
        return None

    def _fill(
        self,
        batch: list[QueuedFrame],
        limit: int,
        key: Hashable,
        group: Grouping,
        mates: dict[str, bool],
    ) -> None:
        """Add frames of apps grouped with ``key``: one per app per pass, in turn order."""
        while len(batch) < limit:
            took = False
            for app in self._order:
                q = self._queues[app]
                if not q:
                    continue
                if self._mate(app, key, group, mates):
                    batch.append(q.popleft())
                    took = True
                    if len(batch) >= limit:
                        return
            if not took:
                return

    def _has_mates(self, app: str, key: Hashable, group: Grouping, mates: dict[str, bool]) -> bool:
        """Whether another app with a queue here is grouped with ``app``."""
        return any(other != app and self._mate(other, key, group, mates) for other in self._order)

    @staticmethod
    def _mate(app: str, key: Hashable, group: Grouping, mates: dict[str, bool]) -> bool:
        """Whether ``app`` is grouped with ``key`` (asked once per app and batch)."""
        mate = mates.get(app)
        if mate is None:
            g = group(app)
            mate = mates[app] = g is not None and g[0] == key
        return mate

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
