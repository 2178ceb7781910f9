"""Last-wills, believed once the broker is still there after them.

A broker that stops (SIGTERM, a restart, an upgrade) publishes the last-will of every client it
drops, healthy workers' included, and drops us a few milliseconds later: a last-will tells of
a worker's death only if the broker lived on after sending it. So a live last-will is held
until anything else comes from the broker (a heartbeat, a birth, the answer to the ping its
arrival sent; another last-will does not count): then it is confirmed, and judged in the order
it came. If our own link drops first, it is withdrawn: the workers' reconnects and their
heartbeats decide instead. On one host the ping's answer takes well under a millisecond.

A last-will delivered retained (on our subscribe after a reconnect) for a worker we believe
alive is history, maybe a stopping broker's: no verdict either; its silence is, after the
reconnect grace.

Pure: fed events with their times, it returns what to judge and reads no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from coordinator.events import WorkerOffline

Reading = Literal["verdict", "hold", "history"]


def read_offline(ev: WorkerOffline, alive: bool) -> Reading:
    """What an offline status is: a verdict to judge now (a worker that said goodbye, or one
    we do not believe alive), a live last-will to hold, or a retained one that is history."""
    if ev.status.reason != "lost" or not alive:
        return "verdict"
    return "history" if ev.retained else "hold"


@dataclass
class WillHold:
    held: list[WorkerOffline] = field(default_factory=list)

    def hold(self, ev: WorkerOffline) -> None:
        self.held.append(ev)

    def confirm(self) -> list[WorkerOffline]:
        """The broker was heard from after every held last-will: judge them, oldest first."""
        out, self.held = self.held, []
        return out

    def withdraw(self) -> list[WorkerOffline]:
        """Our link dropped before the broker was heard from again: they were its last words."""
        return self.confirm()

    def __bool__(self) -> bool:
        return bool(self.held)
