"""Test helpers for a real mesh: configs on disk, a collecting MQTT client, frame publishing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as paho
import skimage.data
import yaml

from faillite import envelope, messages
from faillite.config import BrokerConfig, MeshConfig, load_mesh_config, packaged_config
from faillite.mqtt import MeshClient
from faillite.topics import Role, Topics

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


class Collector:
    """A test client that records every message on the filters it follows."""

    def __init__(self, cfg: MeshConfig, name: str = "test") -> None:
        self.topics = Topics(cfg.mesh)
        self.client = MeshClient(f"faillite-{cfg.mesh}-{name}", cfg.broker, role=Role.ADMIN)
        self._msgs: list[tuple[float, str, bytes]] = []
        self._cond = threading.Condition()

    def follow(self, topic_filter: str, qos: int = 1) -> Collector:
        self.client.subscribe(topic_filter, self._on, qos=qos)
        return self

    def _on(self, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self._msgs.append((time.monotonic(), msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def start(self) -> Collector:
        self.client.start(connect_timeout=15)
        return self

    def stop(self) -> None:
        self.client.stop()

    def messages(self, topic: str, cls: type[T], since: float = 0.0) -> list[T]:
        with self._cond:
            raw = [(t, p) for t, tp, p in self._msgs if tp == topic and t >= since and p]
        out = []
        for _t, p in raw:
            try:
                out.append(messages.decode(cls, p))
            except messages.MessageError:
                continue
        return out

    def wait_for(self, fn: Callable[[], T], timeout: float, what: str = "condition") -> T:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = fn()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
                self._cond.wait(min(remaining, 0.2))

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)


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
