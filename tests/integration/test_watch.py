"""`faillite watch`: the live view of a running mesh, from outside it, as a field team runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from test_up import _demo_config, _serving_worker, _worker_pid

from faillite.config import load_mesh_config, packaged_config
from field_kit.brokers import BrokerLauncher
from field_kit.procs import faillite_cmd, free_port, wait_port
from field_kit.secure import secure_twin, write_config

EVENT_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (\S+)\s+(.*)$")


def _events(out: str) -> list[tuple[str, str]]:
    return [(m[1], m[2]) for line in out.splitlines() if (m := EVENT_LINE.match(line))]


def test_watch_shows_a_secured_mesh_and_its_failover(tmp_path: Path, models_dir: Path) -> None:
    """`faillite up --secure` runs the mesh (accounts, TLS, signing); `faillite watch` connects
    to its broker from outside as observer `ops`, shows every app's results and the events,
    among them the failover of a worker killed meanwhile, and exits 0: every app was served."""
    cfg = _demo_config(tmp_path, models_dir)
    logs = tmp_path / "logs"
    port = free_port()
    up_out = (tmp_path / "up.out").open("w")
    up = subprocess.Popen(
        faillite_cmd(
            "up", "--config", str(cfg), "--secure", "--observer", "ops", "--port", str(port),
            "--no-view", "--duration", "60", "--logs-dir", str(logs),
        ),
        stdout=up_out,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    watch: subprocess.Popen[str] | None = None
    duration = 30.0
    try:
        assert wait_port("127.0.0.1", port, timeout=40, proc=up), "the mesh's broker never listened"
        secure = logs / "secure" / "mesh.yaml"
        assert secure.exists()
        watch = subprocess.Popen(
            faillite_cmd(
                "watch", "-c", str(secure), "--broker", f"127.0.0.1:{port}", "--as", "ops",
                "--duration", str(duration), "--no-view",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        started = time.monotonic()
        victim = None
        while victim is None and time.monotonic() - started < duration - 10:
            assert up.poll() is None and watch.poll() is None
            time.sleep(0.5)
            victim = _serving_worker(logs, "gate-watch", ("w1", "w2"))
        assert victim is not None, "gate-watch never served with a warm backup in time"
        time.sleep(1.5)  # results flowing from it, seen by the watch
        os.kill(_worker_pid(up.pid, victim), signal.SIGKILL)
        killed_at = time.monotonic()
        out, _ = watch.communicate(timeout=duration + 30)
    finally:
        for proc in (watch, up):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in (watch, up):
            if proc is not None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        up_out.close()
    assert started + duration - killed_at > 7, "killed too late for the test to mean anything"
    assert watch.returncode == 0, out[-4000:]
    assert "Traceback" not in out
    assert f"connected to 127.0.0.1:{port} as demo.observer.ops" in out
    # The apps' results: the periodic lines and the summary.
    for app in ("gate-watch", "kitchen-watch"):
        counts = [int(n) for n in re.findall(rf"{app}: (\d+) results", out)]
        assert counts and max(counts) > 0, (app, out[-3000:])
        summary = re.search(rf"^  {app}\s+results=(\d+)", out, re.MULTILINE)
        assert summary is not None and int(summary[1]) > 5, out[-3000:]
    assert "every app got results and was still served at the end" in out
    # The events, one line each with their wall-clock time; the failover among them.
    events = _events(out)
    assert events, out[-3000:]
    failovers = [what for kind, what in events if kind == "failover"]
    assert any(what.startswith(f"{victim} failed (") for what in failovers), events
    assert "gate-watch->" in failovers[-1], failovers
    assert re.search(r"^failovers:\n  at [\d.]+ s: " + victim, out, re.MULTILINE), out[-2000:]


def test_watch_with_refused_credentials_says_so_in_one_line(
    tmp_path: Path, broker_launcher: BrokerLauncher
) -> None:
    """An observer id the broker has no account for is refused: one clear line, retries, and
    with --duration exit 1 when it never connected. No secret at all: one config error line."""
    cfg = secure_twin(
        load_mesh_config(packaged_config("demo.yaml")),
        tmp_path / "secure",
        observers=("ops",),
        signing=False,
    )
    ep = broker_launcher.start("amqtt", cfg.broker, mesh=cfg.mesh)
    config = write_config(cfg, tmp_path / "secure" / "mesh.yaml")
    where = f"127.0.0.1:{ep.port}"
    base = ["watch", "-c", str(config), "--broker", where, "--duration", "5", "--no-view"]

    refused = subprocess.run(
        faillite_cmd(*base, "--as", "intruder"),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FAILLITE_MQTT_PASSWORD": "not-a-secret-of-any-account"},
    )
    out = refused.stdout + refused.stderr
    assert refused.returncode == 1, out
    assert "Traceback" not in out
    lines = out.splitlines()
    not_connected = [line for line in lines if line.startswith("NOT CONNECTED")]
    assert len(not_connected) == 1, out
    assert f"to {where} as demo.observer.intruder" in not_connected[0]
    assert "did not accept this identity" in not_connected[0]
    assert lines[-1].startswith(f"never connected to {where} as demo.observer.intruder"), out
    assert "summary" not in out

    unreachable = subprocess.run(
        faillite_cmd(*base[:4], f"127.0.0.1:{free_port()}", *base[5:], "--as", "ops"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = unreachable.stdout + unreachable.stderr
    assert unreachable.returncode == 1 and "Traceback" not in out, out
    assert "cannot reach it" in out and "NOT CONNECTED" in out

    no_secret = subprocess.run(
        faillite_cmd(*base, "--as", "nobody"), capture_output=True, text=True, timeout=60
    )
    out = no_secret.stdout + no_secret.stderr
    assert no_secret.returncode == 2 and "Traceback" not in out, out
    assert out.strip().splitlines() == [
        line for line in out.strip().splitlines() if "no secret for demo.observer.nobody" in line
    ], out
