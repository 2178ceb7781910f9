"""Test helpers for a real mesh: configs on disk, a collecting MQTT client, frame publishing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import skimage.data
import yaml

from faillite import envelope
from faillite.config import BrokerConfig, MeshConfig, load_mesh_config, packaged_config
from faillite.mqtt import MeshClient
from field_kit.recorder import Recorder

T = TypeVar("T")


def write_config(
    tmp_path: Path,
    endpoint: Any,
    models_dir: Path,
    *,
    mesh: str = "t",
    workers: Iterable[dict[str, Any]] = ({"id": "w1"},),
    sensors: Iterable[dict[str, Any]] = ({"id": "cam1", "source": "scene:chelsea", "fps": 10},),
    apps: Iterable[dict[str, Any]] = (
        {"id": "a1", "sensor": "cam1", "family": "efficientnet_lite"},
    ),
    assignments: dict[str, list[dict[str, str]]] | None = None,
    catalog: Path | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    data: dict[str, Any] = {
        "mesh": mesh,
        "catalog": str(catalog or packaged_config("catalog.yaml")),
        "models_dir": str(models_dir),
        "broker": {"host": endpoint.host, "port": endpoint.port, "keepalive_s": 2},
        "sensors": list(sensors),
        "apps": list(apps),
        "workers": [
            {
                "heartbeat_interval_s": 0.1,
                "backend": {"type": "onnxruntime", "intra_op_threads": 1},
                **w,
            }
            for w in workers
        ],
        "coordinator": {"type": "static", "assignments": assignments or {}},
        **(extra or {}),
    }
    path = tmp_path / f"{mesh}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


Collector = Recorder  # the tests' name for it


def chelsea_frame(seq: int, width: int = 640, height: int = 480) -> bytes:
    import cv2

    img = cv2.resize(skimage.data.chelsea()[:, :, ::-1], (width, height))
    return envelope.pack(
        envelope.encode_jpeg(img), seq=seq, capture_ns=time.time_ns(), width=width, height=height
    )


class FramePump:
    """Publishes a fixed JPEG frame on a sensor topic at a rate, from a thread."""

    def __init__(self, client: MeshClient | Collector, topic: str, fps: float = 10.0) -> None:
        self._client = client.client if isinstance(client, Collector) else client
        self._topic = topic
        self._period = 1.0 / fps
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0

    def _run(self) -> None:
        import cv2

        img = cv2.resize(skimage.data.chelsea()[:, :, ::-1], (640, 480))
        jpeg = envelope.encode_jpeg(img)
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


def load(path: Path) -> MeshConfig:
    return load_mesh_config(path)


def broker_cfg(endpoint: Any) -> BrokerConfig:
    return BrokerConfig(host=endpoint.host, port=endpoint.port, keepalive_s=2)
