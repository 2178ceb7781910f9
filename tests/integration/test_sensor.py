"""Sensors: real OpenCV sources and encoding, publishing on real brokers, latency follow-up."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from plugins.mesh import Collector, broker_cfg, load, write_config

from faillite import envelope, messages
from faillite.config import SensorConfig
from faillite.topics import Topics
from field_kit.procs import ProcessGroup, faillite_cmd
from sensors.publisher import SensorPublisher
from sensors.sources import (
    CaptureSource,
    FolderSource,
    SceneSource,
    SourceError,
    open_source,
)


def test_scene_moves_and_cycles_photos() -> None:
    s = SceneSource(320, 240, ("chelsea", "coffee"), hold_s=0.2)
    a = s.read()
    time.sleep(0.05)
    b = s.read()
    assert a.shape == (240, 320, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 0.5  # it moves
    assert s.current_photo(0.1) == "chelsea" and s.current_photo(0.3) == "coffee"
    with pytest.raises(SourceError, match="unknown scene photo"):
        SceneSource(10, 10, ("nope",))


def test_folder_source_skips_unreadable_and_loops(tmp_path: Path) -> None:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((20, 30, 3), i * 40, np.uint8))
    (tmp_path / "3.jpg").write_bytes(b"not a jpeg")
    src = FolderSource(tmp_path, 64, 48, loop=True)
    frames = [src.read() for _ in range(5)]
    assert all(f is not None and f.shape == (48, 64, 3) for f in frames)
    assert src.unreadable >= 1
    assert frames[0] is not None and frames[3] is not None
    assert int(frames[0].mean()) == int(frames[3].mean())  # looped to the first image
    once = FolderSource(tmp_path, 64, 48, loop=False)
    assert [once.read() is None for _ in range(4)] == [False, False, False, True]


def test_video_file_source(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(5):
        w.write(np.full((48, 64, 3), i * 50, np.uint8))
    w.release()
    src = open_source(str(path), 32, 24, loop=False)
    assert isinstance(src, CaptureSource) and src.kind == "file"
    got = []
    while (f := src.read()) is not None:
        got.append(f)
    assert len(got) == 5 and got[0].shape == (24, 32, 3)


def test_open_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not 'scene'"):
        open_source(str(tmp_path / "missing.mp4"), 10, 10)
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path), 10, 10)


def test_publishes_enveloped_jpegs_at_rate_with_status(broker: Any) -> None:
    mesh = "sens" + broker.kind[:3]
    cfg = SensorConfig(id="cam1", source="scene:chelsea", fps=20, width=320, height=240)
    t = Topics(mesh)
    from faillite.config import MeshConfig

    col = (
        Collector(MeshConfig(mesh=mesh, broker=broker_cfg(broker)))
        .follow(f"faillite/{mesh}/sensors/#", qos=0)
        .start()
    )
    # The collector's subscription must be live before the first frame: a marker it publishes
    # under the same filter has come back (QoS 0 frames sent earlier would simply be missed).
    marker = f"faillite/{mesh}/sensors/marker/status"
    deadline = time.monotonic() + 10
    while not any(tp == marker for _t, tp, _p in col.raw()):
        assert time.monotonic() < deadline, "the collector's subscription never became live"
        col.publish(marker, b"m", qos=0)
        time.sleep(0.1)
    pub = SensorPublisher(mesh, cfg, broker_cfg(broker))
    pub.run(duration_s=1.5)
    col.wait_for(
        lambda: [
            s
            for s in col.messages(t.sensor_status("cam1"), messages.SensorStatus)
            if s.state == "offline"
        ],
        5,
        "graceful offline",
    )
    statuses = col.messages(t.sensor_status("cam1"), messages.SensorStatus)
    assert [s.state for s in statuses][:1] == ["online"]
    assert statuses[-1].reason == "graceful" and statuses[-1].incarnation == pub.incarnation
    with col._cond:
        raw = [p for _t, tp, p in col._msgs if tp == t.sensor_frames("cam1")]
    frames = [envelope.unpack(p, max_bytes=1 << 22) for p in raw]
    # 1.5 s at 20 fps: every slot of the schedule is either sent or counted as dropped (a
    # loaded machine drops some), and every frame sent arrives before the graceful offline.
    assert 28 <= pub.sent + pub.dropped <= 32, (pub.sent, pub.dropped)
    assert len(frames) == pub.sent >= 10
    seqs = [f.seq for f in frames]
    assert seqs == sorted(seqs)
    img = envelope.decode_image(frames[-1])
    assert img.shape == (240, 320, 3)
    assert len(set(seqs)) == len(seqs)
    col.stop()


def test_results_follow_up_measures_end_to_end_latency(
    tmp_path: Path, broker: Any, models_dir: Path
) -> None:
    mesh = "lat" + broker.kind[:3]
    path = write_config(tmp_path, broker, models_dir, mesh=mesh)
    cfg = load(path)
    t = Topics(mesh)
    col = Collector(cfg).start()
    a = messages.Assignment(
        worker="w1",
        term=1,
        generation=1,
        ts=messages.now(),
        serve=(messages.Serve("a1", "cam1", "efficientnet_lite0"),),
    )
    col.publish(t.worker_assignment("w1"), messages.encode(a), retain=True)
    with ProcessGroup(tmp_path / "logs") as group:
        group.start("w1", "worker", faillite_cmd("worker", "--id", "w1", "--config", str(path)))
        pub = SensorPublisher(mesh, cfg.sensor("cam1"), cfg.broker, follow_results=True)
        th = threading.Thread(target=pub.run, kwargs={"duration_s": 60}, daemon=True)
        th.start()
        deadline = time.monotonic() + 60
        while pub.results < 10 and time.monotonic() < deadline:
            time.sleep(0.2)
        pub.stop()
        th.join(10)
    col.publish(t.worker_assignment("w1"), b"", retain=True)
    col.stop()
    assert pub.results >= 10
    e2e = pub.e2e.snapshot()
    assert 0 < e2e.p50 < 5000


def test_http_url_source(tmp_path: Path) -> None:
    """An HTTP stream through OpenCV's FFmpeg backend, from a server on loopback."""
    import functools
    import http.server

    path = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(4):
        w.write(np.full((48, 64, 3), 30 + i * 50, np.uint8))
    w.release()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/clip.avi"
        src = open_source(url, 64, 48, loop=False)
        assert isinstance(src, CaptureSource) and src.kind == "url"
        first = src.read()
        assert first is not None and first.shape == (48, 64, 3)
        src.close()
    finally:
        server.shutdown()
        server.server_close()
