"""Batched serving: frames of apps that share a loaded model run through it in one call.

Three stages, so that decoding and preprocessing overlap inference:

- the batcher thread takes a batch from the drop-oldest queues
  (:meth:`~workers.frame_queue.FrameQueues.take_batch`: apps in turn, only apps served by the
  same loaded model, at most ``batching.max_batch`` frames and no more than the model takes,
  waiting at most ``batching.max_wait_ms`` for a batch to fill) and hands each frame to the
  preprocess pool;
- the preprocess pool (``batching.preprocess_threads``) decodes and preprocesses each frame
  straight into its row of the batch tensor: cv2 and numpy release the GIL, so this runs while
  the inference thread infers the previous batch;
- the worker's inference thread takes batches in order (:meth:`Batcher.next`), waits for their
  rows (:meth:`Batch.ready`), and runs the model once (:meth:`FrameRunner.infer`).

At most one batch is prepared ahead of the one inferring, and it is taken from the queues only
once the previous one went to inference: frames wait in the drop-oldest queues, where fresher
frames replace them, not in a backlog here. A frame that cannot be read is
counted and left out of its batch; the others are served.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from faillite.config import BatchingConfig
from faillite.log import get_logger
from workers.backends import LoadedModel, Staged
from workers.frame_queue import FrameQueues, QueuedFrame
from workers.inference import FloatArray, FrameRunner, Prepared, batch_shape
from workers.serving import Serving

log = get_logger("worker")

STATS_EVERY_S = 5.0  # how often the batcher logs its batch sizes while serving
FRAME_TIME_EWMA = 0.3  # weight of a faster batch in the time per frame (a slower one: all)


def model_max_batch(model: LoadedModel) -> int:
    """The most frames ``model`` takes in one call (:attr:`LoadedModel.max_batch`: 1 for a
    model whose batch dim is fixed at 1, as built before batch dims were dynamic)."""
    return max(1, model.max_batch)


@dataclass(frozen=True, slots=True)
class Batch:
    """Frames of apps served by one loaded model, being decoded into ``tensor``'s rows."""

    st: Serving  # the first frame's serving entry: its model runs the batch
    items: tuple[QueuedFrame, ...]
    tensor: FloatArray
    staged: Future[tuple[list[Prepared], Staged]]

    def ready(self) -> tuple[list[Prepared], Staged]:
        """Wait for every row and the batch's copy to the device: the frames that could be
        read and their rows (a frame that could not was counted by the preprocess job)."""
        return self.staged.result()


class Batcher:
    """The batcher thread and the preprocess pool; the inference thread calls :meth:`next`."""

    def __init__(
        self,
        queues: FrameQueues,
        lookup: Callable[[str], Serving | None],
        runner: FrameRunner,
        cfg: BatchingConfig,
        *,
        beat: Callable[[], None] | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        """``lookup``: the serving entry of an app, None if it is not served (its frames are
        dropped). ``beat``: called at least every 0.1 s while the batcher thread runs.
        ``stopping``: the owner's stop event (the batcher thread ends when it is set)."""
        self.queues = queues
        self.lookup = lookup
        self.runner = runner
        self.cfg = cfg
        self._beat = beat or (lambda: None)
        self._pool = ThreadPoolExecutor(cfg.pool_size(), thread_name_prefix="worker-prep")
        self._ready: queue.Queue[Batch] = queue.Queue()
        # One batch prepared ahead of the one inferring, no more: the next is taken from the
        # queues only once the inference thread took this one, so frames wait where fresher
        # ones replace them.
        self._ahead = threading.Semaphore(1)
        self._stop = stopping or threading.Event()
        self.thread = threading.Thread(target=self._loop, name="worker-batcher", daemon=True)
        # Per loaded model, the measured time to serve one frame (unloaded models drop out).
        self._frame_s: weakref.WeakKeyDictionary[LoadedModel, float] = weakref.WeakKeyDictionary()
        self.batches = 0
        self.frames = 0
        self.largest = 0
        self._logged = (0.0, 0)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def next(self, timeout: float) -> Batch | None:
        """The next batch, in the order they were formed; None on timeout."""
        try:
            batch = self._ready.get(timeout=timeout)
        except queue.Empty:
            return None
        self._ahead.release()
        return batch

    # -- batcher thread --------------------------------------------------------------------

    def _loop(self) -> None:
        max_wait_s = self.cfg.max_wait_ms / 1000
        while not self._stop.is_set():
            self._beat()
            if not self._ahead.acquire(timeout=0.1):
                continue  # a batch is ready and the inference thread has not taken it yet
            served: dict[str, Serving] = {}
            taken = self.queues.take_batch(partial(self._group, served), 0.1, max_wait_s)
            items = [f for f in taken if f.app in served]
            if not items:
                self._ahead.release()
                continue
            try:
                self._ready.put(self._submit(items, served))
            except Exception as exc:  # the batcher thread must outlive any one batch
                self._ahead.release()
                log.exception("batch_error", apps=[f.app for f in items])
                for f in items:
                    self.runner.bad.count("inference_error", repr(exc), app=f.app)
                continue
            self._stats(len(items))

    def _group(self, served: dict[str, Serving], app: str) -> tuple[Hashable, int] | None:
        """``app``'s batch key (its loaded model) and limit; its serving entry into ``served``
        (what the batch's frames are served as)."""
        st = self.lookup(app)
        if st is None:
            return None
        served[app] = st
        return st.model, min(self.cfg.max_batch, model_max_batch(st.model), self._by_time(st))

    def _by_time(self, st: Serving) -> int:
        """The most frames of ``st``'s model that fit in ``max_batch_ms``, at the time per
        frame measured here (no limit before the first batch)."""
        per_frame_s = self._frame_s.get(st.model)
        if per_frame_s is None or per_frame_s <= 0:
            return self.cfg.max_batch
        return max(1, int(self.cfg.max_batch_ms / 1000 / per_frame_s))

    def observe(self, model: LoadedModel, seconds: float, frames: int) -> None:
        """A batch of ``frames`` frames of ``model`` took ``seconds`` to serve (inference
        thread; interceptors included: what the coordinator sees as time without progress)."""
        if frames < 1:
            return
        per = seconds / frames
        old = self._frame_s.get(model)
        # Slower at once (a device that slows down must not stall a batch), faster gradually.
        if old is None or per > old:
            self._frame_s[model] = per
        else:
            self._frame_s[model] = old + FRAME_TIME_EWMA * (per - old)

    def _submit(self, items: list[QueuedFrame], served: dict[str, Serving]) -> Batch:
        st = served[items[0].app]
        tensor = np.empty(batch_shape(st, len(items)), dtype=np.float32)
        jobs = [
            self._pool.submit(self._prepare, item, served[item.app], tensor[i : i + 1])
            for i, item in enumerate(items)
        ]
        # Submitted after its rows (the pool runs jobs in order): no deadlock with one thread.
        return Batch(st, tuple(items), tensor, self._pool.submit(self._stage, st, tensor, jobs))

    @staticmethod
    def _stage(
        st: Serving, tensor: FloatArray, jobs: list[Future[Prepared | None]]
    ) -> tuple[list[Prepared], Staged]:
        """The rows that could be read, copied to the model's device while the previous
        batch still infers."""
        done = [j.result() for j in jobs]
        keep = [i for i, p in enumerate(done) if p is not None]
        frames = [p for p in done if p is not None]
        x = tensor if len(keep) == len(done) else np.ascontiguousarray(tensor[keep])
        return frames, st.model.stage(x)

    def _prepare(self, item: QueuedFrame, st: Serving, out: FloatArray) -> Prepared | None:
        try:
            return self.runner.prepare(item, st, out)
        except Exception as exc:  # one frame must never poison its batch
            log.exception("preprocess_error", app=item.app, variant=st.variant)
            self.runner.bad.count("preprocess_error", repr(exc), app=item.app)
            return None

    def _stats(self, size: int) -> None:
        self.batches += 1
        self.frames += size
        self.largest = max(self.largest, size)
        now = time.monotonic()
        at, batches = self._logged
        if now - at >= STATS_EVERY_S:
            if at:
                log.info(
                    "batching",
                    batches=self.batches,
                    frames=self.frames,
                    mean_size=round(self.frames / self.batches, 2),
                    recent_batches=self.batches - batches,
                    largest=self.largest,
                    max_batch=self.cfg.max_batch,
                )
            self._logged = (now, self.batches)
