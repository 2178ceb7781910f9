"""``faillite kit check`` against a running secured mesh (``faillite up --secure``: accounts,
TLS, signing), and a node's staged models against their manifest."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path

from test_up import _demo_config

from field_kit.kit.check import check_node
from field_kit.procs import faillite_cmd, free_port, wait_port


def _check(secure: Path, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        faillite_cmd(
            "kit", "check", "-c", str(secure), "--broker", f"127.0.0.1:{port}", "--wait", "2",
            *extra,
        ),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_running_secured_mesh_passes_and_a_stranger_fails(
    tmp_path: Path, models_dir: Path
) -> None:
    cfg = _demo_config(tmp_path, models_dir)
    logs = tmp_path / "logs"
    port = free_port()
    with (tmp_path / "up.out").open("w") as up_out:
        up = subprocess.Popen(
            faillite_cmd(
                "up", "--config", str(cfg), "--secure", "--observer", "ops", "--port", str(port),
                "--no-view", "--duration", "60", "--logs-dir", str(logs),
            ),
            stdout=up_out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            assert wait_port("127.0.0.1", port, timeout=40, proc=up)
            secure = logs / "secure" / "mesh.yaml"
            deadline = time.monotonic() + 45
            while True:  # until every role is up
                out = _check(secure, port, "--as", "ops")
                if out.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert out.returncode == 0, out.stdout + out.stderr
            lines = out.stdout.splitlines()
            for expected in (
                "PASS broker_tls",
                "PASS certificates: kit CA",
                "PASS login: as demo.observer.ops",
                "PASS roles: worker w1 up",
                "PASS roles: worker w2 up",
                "PASS roles: camera cam-gate up",
                "PASS coordinator: leader main",
                "PASS clocks",
            ):
                assert any(line.startswith(expected) for line in lines), (expected, lines)
            stranger = _check(secure, port, "--as", "nobody")
            assert stranger.returncode == 1 and "FAIL login" in stranger.stdout
            assert "Traceback" not in stranger.stderr
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(30)


def test_staged_models_are_checked_against_their_manifest(tmp_path: Path) -> None:
    files = {"a.onnx": b"model a", "b.onnx": b"model b"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    manifest = {
        "node": "n1",
        "budget_mb": 100,
        "used_mb": 1,
        "files": [
            {"variant": n[0], "file": n, "sha256": hashlib.sha256(d).hexdigest()}
            for n, d in files.items()
        ],
    }
    (tmp_path / "stage.json").write_text(json.dumps(manifest))
    engines = tmp_path / "engines"
    engines.mkdir()
    (engines / "a.engine").write_bytes(b"x")
    checks = {c.name: c for c in check_node(tmp_path, engines)}
    assert checks["disk"].ok and checks["models"].ok
    assert not checks["engines"].ok and "missing: b" in checks["engines"].detail
    (tmp_path / "b.onnx").write_bytes(b"tampered")
    models = {c.name: c for c in check_node(tmp_path)}["models"]
    assert not models.ok and "bad: b.onnx" in models.detail and models.fix
