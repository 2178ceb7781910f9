"""Hot standby: the results of the apps this worker is the hot backup of, held until promoted.

A hot backup runs every frame of its app, as the primary does, and publishes nothing: consumers
must never see two results of one frame. It follows the app's results from the other workers
(the primary's), so that on promotion it publishes at once those of its held results that the
primary did not publish (newer sequence numbers, still fresh), then serves live. A crash then
costs detection and one assignment, not the wait for the next frame and its inference.

:attr:`HotResults.lock` orders the two paths that publish an app's results: the inference
thread's (hold while hot, publish once promoted) and the control thread's promotion (switch the
serving table, then flush what was held), so held results never come after live ones.

Threads: :meth:`seen` runs on the network thread, :meth:`hold` on the inference thread,
:meth:`release` and :meth:`forget` on the control thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from faillite import messages

HELD_RESULTS = 8  # per app: a few frame intervals' worth, more is never fresh enough
# A held frame (a warm backup's) or result (a hot backup's) older than this is not worth
# serving on promotion.
HELD_MAX_AGE_NS = 500_000_000


@dataclass(frozen=True, slots=True)
class Held:
    result: messages.Result
    held_ns: int  # monotonic


class HotResults:
    def __init__(self, keep: int = HELD_RESULTS, max_age_ns: int = HELD_MAX_AGE_NS) -> None:
        self.lock = threading.RLock()
        self._keep = keep
        self._max_age_ns = max_age_ns
        self._held: dict[str, deque[Held]] = {}
        self._others: dict[str, int] = {}  # app -> last seq another worker published
        self.suppressed = 0  # held results never published (the primary's, or stale)

    def seen(self, app: str, seq: int) -> None:
        """Another worker published ``app``'s result of frame ``seq``. The last one, not the
        highest: a camera that restarts counts from 0 again."""
        with self.lock:
            self._others[app] = seq

    def hold(self, result: messages.Result, now_ns: int | None = None) -> None:
        with self.lock:
            q = self._held.get(result.app)
            if q is None:
                q = self._held[result.app] = deque(maxlen=self._keep)
            if len(q) == self._keep:
                self.suppressed += 1
            q.append(Held(result, time.monotonic_ns() if now_ns is None else now_ns))

    def release(self, app: str, now_ns: int | None = None) -> list[messages.Result]:
        """On promotion: the held results of ``app`` the primary did not publish, still fresh,
        oldest first; the rest are dropped (counted in :attr:`suppressed`)."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        with self.lock:
            q = self._held.pop(app, deque())
            out = [
                h.result
                for h in q
                if now - h.held_ns < self._max_age_ns
                and not self.already_published(app, h.result.seq)
            ]
            self.suppressed += len(q) - len(out)
            return out

    def already_published(self, app: str, seq: int) -> bool:
        """Whether another worker published ``app``'s result of frame ``seq`` (as far as seen):
        a result still in flight at the promotion is checked here too."""
        with self.lock:
            last = self._others.get(app)
            return last is not None and seq <= last

    def forget(self, app: str) -> None:
        """``app`` is no longer hot here (revoked), or hot anew: drop what was held for it and
        what was seen of the others' results."""
        with self.lock:
            self.suppressed += len(self._held.pop(app, ()))
            self._others.pop(app, None)

    def held(self, app: str) -> int:
        with self.lock:
            return len(self._held.get(app, ()))
