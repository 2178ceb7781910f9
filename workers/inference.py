"""One frame through its app's model: decode, preprocess, infer, and the result to publish.

Runs on the inference thread, under the model cache's ``in_use`` lock (the service takes it).
"""

from __future__ import annotations

import time

from faillite import envelope, messages
from faillite.badinput import BadInput
from faillite.models.preprocess import preprocess, top_k
from workers.frame_queue import QueuedFrame
from workers.serving import Serving

TOP_K = 5


class FrameRunner:
    def __init__(
        self,
        worker: str,
        incarnation: str,
        *,
        max_frame_bytes: int,
        labels: tuple[str, ...],
        bad: BadInput,
    ) -> None:
        self.worker = worker
        self.incarnation = incarnation
        self.max_frame_bytes = max_frame_bytes
        self.labels = labels
        self.bad = bad

    def run(self, item: QueuedFrame, st: Serving, generation: int) -> messages.Result | None:
        """The result of ``item`` through ``st``'s model; None for a frame that cannot be read
        (counted). A backend failure raises :class:`~workers.backends.BackendError`."""
        t0 = time.monotonic_ns()
        try:
            frame = envelope.unpack(item.payload, max_bytes=self.max_frame_bytes)
            image = envelope.decode_image(frame)
        except envelope.FrameError as exc:
            self.bad.count(exc.reason, str(exc), app=item.app, sensor=st.sensor)
            return None
        t1 = time.monotonic_ns()
        batch = preprocess(image, st.spec)
        t2 = time.monotonic_ns()
        logits = st.model.infer(batch)
        t3 = time.monotonic_ns()
        labels = self.labels
        top = tuple(
            messages.Label(
                int(i), labels[i] if st.labels and i < len(labels) else str(i), round(float(p), 5)
            )
            for i, p in top_k(logits.reshape(-1), TOP_K)
        )
        now = time.time()
        return messages.Result(
            app=st.app,
            seq=frame.seq,
            sensor=st.sensor,
            capture_ts=frame.capture_ts,
            ts=now,
            worker=self.worker,
            incarnation=self.incarnation,
            variant=st.variant,
            generation=generation,
            latency=messages.Latency(
                queue_ms=round((t0 - item.received_ns) / 1e6, 3),
                decode_ms=round((t1 - t0) / 1e6, 3),
                preprocess_ms=round((t2 - t1) / 1e6, 3),
                inference_ms=round((t3 - t2) / 1e6, 3),
                total_ms=round((now - frame.capture_ts) * 1000, 3),
            ),
            top=top,
        )
