"""Liveness from outcomes: a worker is also judged by what reaches the mesh from it, not only
by what it says of itself.

Heartbeats are a worker's own word: a process that beats while its apps get nothing (a thief
with the worker's secret beating in its place, a publish path that broke) looks healthy to
the silence and stall detectors. This sub-machine watches each app's routed worker against
evidence that frames flow for that app:

- ``claimed``: the routed worker's own heartbeats count frames processed for the app (each
  one gives a result), and none of those results reached us;
- ``witnessed``: a peer that follows the same frames (a warm or hot backup) counts frames
  received for the app, while the routed worker, with the assignment applied and nothing
  loading, counts none.

Either, for ``window_s`` since the route began or since the worker's last result, makes the
app overdue. A slow worker is never overdue: it publishes fewer results, not none, and a
worker that gets no frames (its camera is down) has nothing to answer for. The verdict holds
the worker out on a probation that doubles with each offence of the same incarnation (a thief
that keeps the id would otherwise take the apps back every probation). Pure: fed events with
their monotonic time, it reads no clock and publishes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from faillite import messages


@dataclass(frozen=True, slots=True)
class OutcomeConfig:
    window_s: float = 5.0  # evidence of frames and no result for this long: overdue
    min_frames: int = 3  # frames of evidence needed (a heartbeat can count one before its result)
    probation_s: float = 30.0  # first hold-out; doubled at each offence of one incarnation
    max_probation_s: float = 600.0


@dataclass(frozen=True, slots=True)
class Overdue:
    worker: str
    app: str
    silent_s: float  # since the route began or the worker's last result of the app
    evidence: str  # why frames flowed


@dataclass(slots=True)
class _Routed:
    worker: str
    generation: int  # of the plan that routed the app there
    since: float  # route begun or last result
    own: tuple[int, int] | None  # the worker's (received, processed) then; None: not heard yet
    peers: dict[str, int] = field(default_factory=dict)  # peer -> received then


@dataclass(slots=True)
class _Seen:
    """A worker's last heartbeat, as far as outcomes go."""

    incarnation: str
    generation: int
    loading: bool
    counts: dict[str, tuple[int, int]]  # app -> (received, processed)


class OutcomeWatch:
    def __init__(self, cfg: OutcomeConfig | None = None) -> None:
        self.cfg = cfg or OutcomeConfig()
        self._routed: dict[str, _Routed] = {}  # app -> who must publish its results
        self._seen: dict[str, _Seen] = {}  # worker -> its last heartbeat
        self._offences: dict[str, tuple[str, int]] = {}  # worker -> (incarnation, verdicts)
        self._held: dict[str, float] = {}  # worker -> when its probation ends

    # -- what the core tells it ------------------------------------------------------------

    def route(self, routes: Mapping[str, str], generation: int, now: float) -> None:
        """``routes``: app -> the worker that must publish its results now (apps nobody serves,
        or paused, left out). A new or moved route starts its window over."""
        for app in [a for a, r in self._routed.items() if routes.get(a) != r.worker]:
            del self._routed[app]
        for app, worker in routes.items():
            if app not in self._routed:
                self._routed[app] = self._baseline(app, worker, generation, now)

    def result(self, app: str, worker: str, incarnation: str, now: float) -> None:
        r = self._routed.get(app)
        seen = self._seen.get(worker)
        if (
            r is None
            or r.worker != worker
            or (seen is not None and seen.incarnation != incarnation)
        ):
            return  # not the routed worker's (or an older incarnation's, still in flight)
        self._routed[app] = self._baseline(app, worker, r.generation, now)

    def heartbeat(self, hb: messages.Heartbeat, now: float) -> None:
        before = self._seen.get(hb.worker)
        self._seen[hb.worker] = _Seen(
            hb.incarnation,
            hb.generation,
            bool(hb.loading),
            {app: (s.received, s.processed) for app, s in hb.apps.items()},
        )
        restarted = before is not None and before.incarnation != hb.incarnation
        for app, r in self._routed.items():
            counts = self._seen[hb.worker].counts.get(app)
            if r.worker == hb.worker:
                if restarted:  # counters start again with an incarnation, and so does its window
                    r.own, r.since = counts, max(r.since, now)
                elif r.own is None:
                    r.own = counts
            elif counts is not None and (hb.worker not in r.peers or restarted):
                r.peers[hb.worker] = counts[0]

    def restart(self, now: float, grace_s: float = 0.0) -> None:
        """Our own link was down (a broker restart): results were lost in transit and workers
        served their queues unconnected. Every window starts over once they have had
        ``grace_s`` to reconnect, from their next heartbeats."""
        for r in self._routed.values():
            r.since, r.own = now + grace_s, None
            r.peers.clear()

    def forget(self, worker: str) -> None:
        """It failed or left: its heartbeats are evidence of nothing any more."""
        self._seen.pop(worker, None)
        for r in self._routed.values():
            r.peers.pop(worker, None)

    # -- verdicts --------------------------------------------------------------------------

    def overdue(self, now: float) -> list[Overdue]:
        out: list[Overdue] = []
        for app, r in sorted(self._routed.items()):
            silent = now - r.since
            seen = self._seen.get(r.worker)
            if silent < self.cfg.window_s or seen is None:
                continue
            counts = seen.counts.get(app)
            if r.own is not None and counts is not None:
                claimed = counts[1] - r.own[1]
                if claimed >= self.cfg.min_frames:
                    out.append(
                        Overdue(r.worker, app, silent, f"it counts {claimed} frames processed")
                    )
                    continue
                if counts[0] > r.own[0]:
                    continue  # it gets frames: slow, not silent (the stall detector's case)
            if seen.loading or seen.generation < r.generation:
                continue  # not told yet, or still loading what it was told
            witness = self._witness(app, r)
            if witness is not None:
                peer, frames = witness
                out.append(
                    Overdue(
                        r.worker,
                        app,
                        silent,
                        f"{peer} received {frames} of its frames, {r.worker} none",
                    )
                )
        return out

    def convict(self, worker: str, incarnation: str, now: float) -> float:
        """Hold it out; returns for how long (doubling with each offence of the incarnation)."""
        inc, before = self._offences.get(worker, (incarnation, 0))
        n = before + 1 if inc == incarnation else 1
        self._offences[worker] = (incarnation, n)
        hold = min(self.cfg.probation_s * float(2 ** (n - 1)), self.cfg.max_probation_s)
        self._held[worker] = now + hold
        for app in [a for a, r in self._routed.items() if r.worker == worker]:
            del self._routed[app]
        return hold

    def released(self, now: float) -> list[str]:
        """Workers whose probation is over (each once)."""
        done = [w for w, until in self._held.items() if now >= until]
        for w in done:
            del self._held[w]
        return sorted(done)

    def held(self, worker: str) -> bool:
        return worker in self._held

    # -- helpers ---------------------------------------------------------------------------

    def _baseline(self, app: str, worker: str, generation: int, now: float) -> _Routed:
        seen = self._seen.get(worker)
        own = seen.counts.get(app) if seen is not None else None
        peers = {
            p: s.counts[app][0] for p, s in self._seen.items() if p != worker and app in s.counts
        }
        return _Routed(worker, generation, now, own, peers)

    def _witness(self, app: str, r: _Routed) -> tuple[str, int] | None:
        best: tuple[str, int] | None = None
        for peer, base in r.peers.items():
            seen = self._seen.get(peer)
            if seen is None or app not in seen.counts:
                continue
            frames = seen.counts[app][0] - base
            if frames >= self.cfg.min_frames and (best is None or frames > best[1]):
                best = (peer, frames)
        return best
