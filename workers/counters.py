"""Progress counters and per-app stats of a worker, and its heartbeat message.

What the counters mean (the heartbeat carries them; the coordinator's progress detector compares
``frames_received`` and ``frames_processed`` between heartbeats):

- ``frames_received``: frames put into this worker's frame queues for apps it serves, one per
  app a frame is for. A warm backup's held frame counts when a promotion queues it (it was only
  held before). Frames refused before queueing (oversized, malformed, image bombs) are not
  counted: ``errors`` has them.
- ``frames_processed``: frames that went through inference and gave a result (published or
  not). Never more than ``frames_received``.
- ``frames_dropped``: frames the drop-oldest queues threw away for newer ones.
- ``results_published``: results handed to a connected transport.
- ``last_progress_ts``: wall-clock time (``ts`` of its result) of the last processed frame; left
  out of the heartbeat while no frame has been processed yet.
- ``busy``: the inference thread holds a frame (interceptors, decode, inference, publish).
- per app, ``latency_ms``: recent mean from capture to result; ``infer_ms``: recent mean of
  the worker's own time per frame (decode, preprocess, its share of its batch's inference,
  and what interceptors held it), over the same results: ``latency_ms`` minus ``infer_ms`` is
  waiting (queue, batch, network), which overload causes, not a slow worker; ``shed``: frames
  skipped for the assignment's ``max_fps`` (never counted as received).

The rest of ``frames_received``, less processed, dropped and still queued, are frames that
failed (``errors``) or whose app was revoked while they waited.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

from faillite import messages
from faillite.stats import Window

# Results per app behind the heartbeat's mean latency and per-frame time: a few seconds of a
# camera's frames, so the coordinator sees a load come and go (and what shedding changed) soon.
LATENCY_WINDOW = 25


def cpu_load() -> float:
    """The host's 1-minute load average per CPU this process may run on (2 decimals); 0.0
    where the platform has no load average."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    return round(load / max(1, cpus), 2)


def service_ms(latency: messages.Latency, frames: int, held_ms: float = 0.0) -> float:
    """The worker's own time on one frame of a model call of ``frames`` frames: its decode and
    preprocess, its share of the call's inference, and ``held_ms`` (what interceptors held it:
    the drills' slow fault stands for a slow device)."""
    share = latency.inference_ms / max(1, frames)
    return held_ms + latency.decode_ms + latency.preprocess_ms + share


class Counters:
    """Thread-safe counters: frames arrive on the network thread, held frames are queued by the
    control thread, results come from the inference thread, the heartbeat thread reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.frames_received = 0
        self.frames_processed = 0
        self.results_published = 0
        self.last_progress_ts: float | None = None
        self.busy = False
        self._received: dict[str, int] = {}
        self._processed: dict[str, int] = {}
        self._latency: dict[str, Window] = {}
        self._infer: dict[str, Window] = {}
        self._shed: dict[str, int] = {}

    def received(self, app: str) -> None:
        """One frame of ``app`` put into its queue."""
        with self._lock:
            self.frames_received += 1
            self._received[app] = self._received.get(app, 0) + 1

    def shed(self, app: str) -> None:
        """One frame of ``app`` skipped for its ``max_fps`` (network thread)."""
        with self._lock:
            self._shed[app] = self._shed.get(app, 0) + 1

    def processed(
        self, app: str, *, total_ms: float, ts: float, published: bool, infer_ms: float = 0.0
    ) -> None:
        """One frame of ``app`` served: its result (at ``ts``) was published or not;
        ``total_ms`` from capture to result, ``infer_ms`` the worker's own time on it."""
        with self._lock:
            if published:
                self.results_published += 1
            self.frames_processed += 1
            self._processed[app] = self._processed.get(app, 0) + 1
            window = self._latency.get(app)
            if window is None:
                window = self._latency[app] = Window(LATENCY_WINDOW)
                self._infer[app] = Window(LATENCY_WINDOW)
            service = self._infer[app]
            self.last_progress_ts = ts
        window.add(total_ms)
        service.add(infer_ms)

    def published(self) -> None:
        """A result counted as processed before (a hot backup's, held) was published now."""
        with self._lock:
            self.results_published += 1

    def app_stats(
        self, apps: Iterable[str], dropped: dict[str, int]
    ) -> dict[str, messages.AppStats]:
        with self._lock:
            return self._app_stats(apps, dropped)

    def _app_stats(
        self, apps: Iterable[str], dropped: dict[str, int]
    ) -> dict[str, messages.AppStats]:
        return {
            app: messages.AppStats(
                received=self._received.get(app, 0),
                processed=self._processed.get(app, 0),
                dropped=dropped.get(app, 0),
                latency_ms=round(w.mean(), 2) if (w := self._latency.get(app)) else 0.0,
                infer_ms=round(w.mean(), 2) if (w := self._infer.get(app)) else 0.0,
                shed=self._shed.get(app, 0),
            )
            for app in apps
        }

    def heartbeat(
        self,
        *,
        worker: str,
        incarnation: str,
        seq: int,
        apps: Iterable[str],
        dropped: dict[str, int],
        queue_depth: int,
        rss_mb: float,
        loaded: tuple[str, ...],
        generation: int,
        errors: dict[str, int],
        gpu_used_mb: float = 0.0,
        loading: tuple[str, ...] = (),
        loading_s: float = 0.0,
        cpu_load: float = 0.0,
    ) -> messages.Heartbeat:
        """The heartbeat message (``last_progress_ts`` None while no frame was processed)."""
        with self._lock:  # one snapshot: totals and per-app stats agree
            stats = self._app_stats(apps, dropped)
            received, processed = self.frames_received, self.frames_processed
            published, last, busy = self.results_published, self.last_progress_ts, self.busy
        return messages.Heartbeat(
            worker=worker,
            incarnation=incarnation,
            seq=seq,
            ts=messages.now(),
            frames_received=received,
            frames_processed=processed,
            frames_dropped=sum(dropped.values()),
            results_published=published,
            queue_depth=queue_depth,
            busy=busy,
            last_progress_ts=last,
            rss_mb=rss_mb,
            gpu_used_mb=gpu_used_mb,
            loaded=loaded,
            loading=loading,
            loading_s=loading_s,
            cpu_load=cpu_load,
            generation=generation,
            errors=errors,
            apps=stats,
        )
