"""Frames through their app's model: decode, preprocess, infer, and the results to publish.

Two ways through, giving the same results:

- :meth:`FrameRunner.prepare` then :meth:`FrameRunner.infer`: a batch of frames of apps that
  share a model (:mod:`workers.batching`); ``prepare`` runs on the preprocess threads, each
  frame into its own slot of the batch tensor, ``infer`` on the inference thread;
- :meth:`FrameRunner.run`: one frame, all on the calling thread.

Inference runs under the model cache's ``in_use`` lock (the service takes it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from faillite import envelope, messages
from faillite.badinput import BadInput
from faillite.models.preprocess import decode_scale, preprocess, top_k
from workers.backends import Staged
from workers.frame_queue import QueuedFrame
from workers.serving import Serving

TOP_K = 5

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Prepared:
    """One frame decoded and preprocessed into its slot of a batch tensor."""

    item: QueuedFrame
    st: Serving
    seq: int
    capture_ts: float
    decode_ms: float
    preprocess_ms: float


class FrameRunner:
    def __init__(
        self,
        worker: str,
        incarnation: str,
        *,
        max_frame_bytes: int,
        labels: tuple[str, ...],
        bad: BadInput,
        scaled_decode: bool = True,
        on_decoded: Callable[[str, float], None] | None = None,
    ) -> None:
        """``on_decoded(sensor, cpu_ms)``: each frame's decoding cost, in CPU time of the
        decoding thread (a board too busy to run it does not make a frame look costly)."""
        self.on_decoded = on_decoded
        self.worker = worker
        self.incarnation = incarnation
        self.max_frame_bytes = max_frame_bytes
        self.labels = labels
        self.bad = bad
        self.scaled_decode = scaled_decode

    def prepare(self, item: QueuedFrame, st: Serving, out: FloatArray) -> Prepared | None:
        """Decode ``item`` and preprocess it into ``out`` (a ``[1,...]`` slot of a batch);
        None for a frame that cannot be read (counted). Thread-safe."""
        t0 = time.monotonic_ns()
        c0 = time.thread_time_ns()
        try:
            frame = envelope.unpack(item.payload, max_bytes=self.max_frame_bytes)
            scale = 1
            if self.scaled_decode and frame.width and frame.height:
                scale = decode_scale(st.spec, frame.height, frame.width)
            image = envelope.decode_image(frame, scale)
        except envelope.FrameError as exc:
            self.bad.count(exc.reason, str(exc), app=item.app, sensor=st.sensor)
            return None
        finally:
            if self.on_decoded is not None:
                self.on_decoded(st.sensor, (time.thread_time_ns() - c0) / 1e6)
        t1 = time.monotonic_ns()
        preprocess(image, st.spec, out=out)
        t2 = time.monotonic_ns()
        return Prepared(item, st, frame.seq, frame.capture_ts, (t1 - t0) / 1e6, (t2 - t1) / 1e6)

    def infer(
        self,
        model_st: Serving,
        frames: Sequence[Prepared],
        batch: FloatArray | Staged,
        generation: int,
    ) -> list[messages.Result]:
        """Run ``batch`` (row i is ``frames[i]``; staged on the device or not) through
        ``model_st``'s model in one call and split the output into each frame's result. A
        backend failure raises :class:`~workers.backends.BackendError`."""
        t0 = time.monotonic_ns()
        model = model_st.model
        logits = model.infer_staged(batch) if isinstance(batch, Staged) else model.infer(batch)
        t1 = time.monotonic_ns()
        if logits.shape[0] != len(frames):
            raise ValueError(f"model gave {logits.shape[0]} outputs for {len(frames)} frames")
        infer_ms = (t1 - t0) / 1e6
        now = time.time()
        out = []
        for i, p in enumerate(frames):
            # Time spent waiting, not worked on: in the queue, for a batch to form, for the
            # previous batch's inference.
            waited_ms = (t0 - p.item.received_ns) / 1e6 - p.decode_ms - p.preprocess_ms
            out.append(self._result(p, logits[i], waited_ms, infer_ms, now, generation))
        return out

    def run(self, item: QueuedFrame, st: Serving, generation: int) -> messages.Result | None:
        """The result of ``item`` through ``st``'s model, alone; None for a frame that cannot
        be read (counted). A backend failure raises :class:`~workers.backends.BackendError`."""
        batch = np.empty(batch_shape(st, 1), dtype=np.float32)
        p = self.prepare(item, st, batch)
        if p is None:
            return None
        return self.infer(st, (p,), batch, generation)[0]

    def _result(
        self,
        p: Prepared,
        logits: FloatArray,
        waited_ms: float,
        infer_ms: float,
        now: float,
        generation: int,
    ) -> messages.Result:
        st, labels = p.st, self.labels
        top = tuple(
            messages.Label(
                int(i), labels[i] if st.labels and i < len(labels) else str(i), round(float(s), 5)
            )
            for i, s in top_k(logits.reshape(-1), TOP_K)
        )
        return messages.Result(
            app=st.app,
            seq=p.seq,
            sensor=st.sensor,
            capture_ts=p.capture_ts,
            ts=now,
            worker=self.worker,
            incarnation=self.incarnation,
            variant=st.variant,
            generation=generation,
            latency=messages.Latency(
                queue_ms=round(max(0.0, waited_ms), 3),
                decode_ms=round(p.decode_ms, 3),
                preprocess_ms=round(p.preprocess_ms, 3),
                inference_ms=round(infer_ms, 3),
                total_ms=round((now - p.capture_ts) * 1000, 3),
            ),
            top=top,
        )


def batch_shape(st: Serving, n: int) -> tuple[int, int, int, int]:
    """The input tensor shape of ``n`` frames for ``st``'s model."""
    h, w = st.spec.size
    return (n, 3, h, w) if st.spec.layout == "nchw" else (n, h, w, 3)
