"""`faillite up`: the whole mesh on the embedded broker, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import yaml

from faillite.config import packaged_config
from field_kit.procs import faillite_cmd, free_port, wait_port

# Labels a classifier may give the scene's photos (chelsea the cat; coffee).
SCENE_LABELS = {
    "Egyptian cat",
    "tabby",
    "tiger cat",
    "lynx",
    "espresso",
    "cup",
    "coffee mug",
    "eggnog",
    "cappuccino",
}


def _demo_config(tmp_path: Path, models_dir: Path) -> Path:
    data = yaml.safe_load(packaged_config("demo.yaml").read_text())
    data["catalog"] = str(packaged_config("catalog.yaml"))
    data["models_dir"] = str(models_dir)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_up_runs_the_demo_and_summarizes(tmp_path: Path, models_dir: Path) -> None:
    cfg = _demo_config(tmp_path, models_dir)
    summary = tmp_path / "summary.json"
    proc = subprocess.run(
        faillite_cmd(
            "up",
            "--config",
            str(cfg),
            "--duration",
            "12",
            "--port",
            "0",
            "--no-view",
            "--logs-dir",
            str(tmp_path / "logs"),
            "--summary-json",
            str(summary),
        ),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads(summary.read_text())
    assert s["all_served"] and not s["crashed"]
    assert set(s["apps"]) == {"gate-watch", "kitchen-watch"}
    for app, stats in s["apps"].items():
        assert stats["results"] > 5, app
        assert set(stats["top_labels"]) & SCENE_LABELS, stats["top_labels"]
        assert 0 < stats["e2e_ms"]["p50"] <= stats["e2e_ms"]["p99"]
    for stats in s["apps"].values():
        assert len(stats["workers"]) == 1  # no failure: one worker serves each app
        assert stats["variant"].startswith("efficientnet_lite")
    assert "every app got results" in proc.stdout
    for name in ("broker", "coordinator", "worker-w1", "worker-w2", "sensor-cam-gate"):
        assert (tmp_path / "logs" / f"{name}.log").stat().st_size > 0


def test_ctrl_c_stops_every_process(tmp_path: Path, models_dir: Path) -> None:
    cfg = _demo_config(tmp_path, models_dir)
    port = free_port()
    proc = subprocess.Popen(
        faillite_cmd(
            "up",
            "--config",
            str(cfg),
            "--port",
            str(port),
            "--no-view",
            "--logs-dir",
            str(tmp_path / "logs"),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_port("127.0.0.1", port, timeout=60), "broker never listened"
        time.sleep(4)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 6  # broker, coordinator, 2 workers, 2 sensors
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "summary after" in out
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [p.pid for p in alive]
    assert not wait_port("127.0.0.1", port, timeout=0.5), "broker port still open"
    assert not any(c.pid == os.getpid() for c in alive)


def test_up_refuses_a_busy_port(tmp_path: Path, models_dir: Path) -> None:
    import socket

    cfg = _demo_config(tmp_path, models_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(
            faillite_cmd(
                "up", "--config", str(cfg), "--port", str(port), "--duration", "1", "--no-view"
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2
    assert "already in use" in proc.stderr
