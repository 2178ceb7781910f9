"""A frame pump for tests and benchmarks: one scene photo as JPEG frames on a sensor topic, at a
rate, from a thread (no camera, no sensor process)."""

from __future__ import annotations

import threading
import time

from faillite import envelope
from faillite.mqtt import MeshClient
from field_kit.recorder import Recorder


def photo_frame(seq: int, width: int = 640, height: int = 480, photo: str = "chelsea") -> bytes:
    """One enveloped JPEG frame of a scene photo (``sensors/scene/``), captured now."""

    from sensors.sources import fit, scene_photo

    img = fit(scene_photo(photo), width, height)
    return envelope.pack(
        envelope.encode_jpeg(img), seq=seq, capture_ns=time.time_ns(), width=width, height=height
    )


class FramePump:
    """Publishes a fixed JPEG frame on a sensor topic at a rate, from a thread."""

    def __init__(
        self, client: MeshClient | Recorder, topic: str, fps: float = 10.0, photo: str = "chelsea"
    ) -> None:
        self._client = client.client if isinstance(client, Recorder) else client
        self._topic = topic
        self._period = 1.0 / fps
        self._photo = photo
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="frame-pump", daemon=True)
        self.sent = 0

    def _run(self) -> None:
        from sensors.sources import fit, scene_photo

        jpeg = envelope.encode_jpeg(fit(scene_photo(self._photo), 640, 480))
        while not self._stop.wait(self._period):
            payload = envelope.pack(
                jpeg, seq=self.sent, capture_ns=time.time_ns(), width=640, height=480
            )
            self._client.publish(self._topic, payload, qos=0)
            self.sent += 1

    def __enter__(self) -> FramePump:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
