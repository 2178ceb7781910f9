"""Counting and logging of bad input: one bad message is counted and logged, never fatal.

Logging is rate-limited per reason (a flood of garbage must not flood the log or slow the
process), but every occurrence is counted; counters travel in heartbeats.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from faillite.log import get_logger

log = get_logger("badinput")


class BadInput:
    def __init__(self, logs_per_s: float = 5.0) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._interval = 1.0 / logs_per_s
        self._last_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def count(self, reason: str, error: str, **fields: Any) -> None:
        now = time.monotonic()
        with self._lock:
            self.counts[reason] = self.counts.get(reason, 0) + 1
            if now - self._last_log.get(reason, -1e9) < self._interval:
                self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
                return
            self._last_log[reason] = now
            suppressed = self._suppressed.pop(reason, 0)
            total = self.counts[reason]
        log.warning(
            "bad_input",
            reason=reason,
            error=error,
            total=total,
            suppressed_since_last=suppressed,
            **fields,
        )

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)
