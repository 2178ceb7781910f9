"""`faillite up`: the whole mesh on the embedded broker, as a user runs it."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import yaml
from rich.console import Console

from faillite import messages
from faillite.config import load_mesh_config, packaged_config
from faillite.mqtt import Inbound
from faillite.topics import Role, Topics
from field_kit.observe import MeshObserver
from field_kit.procs import faillite_cmd, free_port, wait_port
from field_kit.up import _print_summary

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
    assert s["ok"] and s["all_served"] and s["served_at_end"]
    assert not s["exited"] and not s["failovers"]
    assert set(s["apps"]) == {"gate-watch", "kitchen-watch"}
    for app, stats in s["apps"].items():
        assert stats["results"] > 5, app
        assert set(stats["top_labels"]) & SCENE_LABELS, stats["top_labels"]
        assert 0 < stats["e2e_ms"]["p50"] <= stats["e2e_ms"]["p99"]
    for stats in s["apps"].values():
        assert len(stats["workers"]) == 1  # no failure: one worker serves each app
        assert stats["variant"].startswith("efficientnet_lite")
        assert stats["served_at_end"], stats["served_detail"]
    assert "every app got results" in proc.stdout
    for name in ("broker", "coordinator", "worker-w1", "worker-w2", "sensor-cam-gate"):
        assert (tmp_path / "logs" / f"{name}.log").stat().st_size > 0


def test_up_secure_serves_with_accounts_tls_and_signing(tmp_path: Path, models_dir: Path) -> None:
    """The whole mesh as a kit on a hostile network runs it: every process under its own
    account, over TLS with the run's CA, the leader's assignments signed and verified."""
    cfg = _demo_config(tmp_path, models_dir)
    summary = tmp_path / "summary.json"
    logs = tmp_path / "logs"
    proc = subprocess.run(
        faillite_cmd(
            "up", "--config", str(cfg), "--duration", "15", "--port", "0", "--no-view",
            "--logs-dir", str(logs), "--summary-json", str(summary), "--secure",
        ),
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads(summary.read_text())
    assert s["ok"] and not s["exited"] and not s["failovers"]
    for app, stats in s["apps"].items():
        assert stats["results"] > 5 and stats["served_at_end"], (app, stats)
    assert not s["refused_results"]
    secure = yaml.safe_load((logs / "secure" / "mesh.yaml").read_text())
    assert secure["broker"]["tls"]["ca_certs"] and secure["coordinator"]["signing"]
    broker_log = (logs / "broker.log").read_text()
    connected = {
        json.loads(line)["client_id"]
        for line in broker_log.splitlines()
        if '"client_connected"' in line
    }
    assert {"demo.worker.w1", "demo.worker.w2", "demo.coordinator.main"} <= connected
    assert {"demo.sensor.cam-gate", "demo.observer.up-view"} <= connected
    assert '"auth_refused"' not in broker_log
    worker_log = (logs / "worker-w1.log").read_text()
    assert '"bad_signature"' not in worker_log and '"assignment_applied"' in worker_log


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


def _log_events(path: Path, event: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("event") == event:
            out.append(rec)
    return out


def _serving_worker(logs: Path, app: str, workers: tuple[str, ...]) -> str | None:
    """The worker whose latest applied assignment serves ``app``, once its backup is warm."""
    serving = None
    for w in workers:
        applied = _log_events(logs / f"worker-{w}.log", "assignment_applied")
        if applied and app in (applied[-1].get("serving") or {}):
            serving = w
    if serving is None:
        return None
    others = [w for w in workers if w != serving]
    if not all(_log_events(logs / f"worker-{w}.log", "model_loaded") for w in others):
        return None  # the backup has not loaded its model yet
    return serving


def _worker_pid(up_pid: int, worker: str) -> int:
    for child in psutil.Process(up_pid).children(recursive=True):
        cmd = child.cmdline()
        if "worker" in cmd and "--id" in cmd and cmd[cmd.index("--id") + 1] == worker:
            return child.pid
    raise LookupError(f"no process of worker {worker}")


def test_up_reports_a_killed_workers_failover_and_exits_0(tmp_path: Path, models_dir: Path) -> None:
    """A user kills the worker serving the critical app to watch a failover: the mesh
    recovers, so the run succeeds, and the summary says what failed over and what exited."""
    cfg = _demo_config(tmp_path, models_dir)
    assert yaml.safe_load(cfg.read_text())["coordinator"]["type"] == "planner"
    logs = tmp_path / "logs"
    summary = tmp_path / "summary.json"
    duration = 30.0
    proc = subprocess.Popen(
        faillite_cmd(
            "up",
            "--config",
            str(cfg),
            "--duration",
            str(duration),
            "--port",
            "0",
            "--no-view",
            "--logs-dir",
            str(logs),
            "--summary-json",
            str(summary),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        started = time.monotonic()
        victim = None
        while victim is None and time.monotonic() - started < duration - 10:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            time.sleep(0.5)
            victim = _serving_worker(logs, "gate-watch", ("w1", "w2"))
        assert victim is not None, "gate-watch never served with a warm backup in time"
        time.sleep(1.5)  # results flowing from it
        pid = _worker_pid(proc.pid, victim)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        out, _ = proc.communicate(timeout=duration + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert time.monotonic() - killed_at > 8, "killed too late for the test to mean anything"
    assert proc.returncode == 0, out[-4000:]
    s = json.loads(summary.read_text())
    assert s["ok"] and s["all_served"] and s["served_at_end"], s["apps"]

    fos = [f for f in s["failovers"] if f["worker"] == victim]
    assert len(fos) == 1, s["failovers"]
    fo = fos[0]
    assert fo["cause"] in ("last_will", "heartbeat_silence"), fo
    assert 0 < fo["t_s"] < duration
    rec = fo["recoveries"]["gate-watch"]
    assert rec["server"] != victim and rec["kind"] in ("warm", "cold")
    assert rec["variant"].startswith("efficientnet_lite")
    assert rec["first_result_s"] is not None and rec["first_result_s"] >= fo["t_s"]
    assert 0 < rec["mttr_ms"] < 5000, rec
    assert rec["gap_ms"] is not None and rec["gap_ms"] > 0
    assert s["apps"]["gate-watch"]["worker"] == rec["server"]
    assert set(s["apps"]["gate-watch"]["workers"]) == {victim, rec["server"]}

    dead = [e for e in s["exited"] if e["name"] == f"worker-{victim}"]
    assert len(dead) == 1, s["exited"]
    assert dead[0]["exit_code"] == -signal.SIGKILL and dead[0]["pid"] == pid
    assert dead[0]["log"] == str(logs / f"worker-{victim}.log")
    assert [e["name"] for e in s["exited"]] == [f"worker-{victim}"]  # nothing else died

    assert "failovers:" in out and f"{victim} failed ({fo['cause']})" in out
    assert f"gate-watch -> {rec['server']} {rec['kind']}" in out
    assert f"worker-{victim} exit -9" in out
    assert "every app got results and was still served at the end" in out


def _result(t: Topics, app: str, worker: str, generation: int) -> Inbound[messages.Result]:
    now = time.time()
    r = messages.Result(
        app=app,
        seq=1,
        sensor="cam-gate",
        capture_ts=now - 0.05,
        ts=now,
        worker=worker,
        incarnation="i-" + worker,
        variant="efficientnet_lite0",
        generation=generation,
        latency=messages.Latency(1.0, 1.0, 1.0, 20.0, 50.0),
        top=(messages.Label(285, "Egyptian cat", 0.6),),
    )
    return Inbound(t.app_results(app, worker), r, False)


def test_summary_judges_served_at_the_end_from_results_and_failovers() -> None:
    """No broker: decoded results and events handed to the observer's handlers. An app
    recovered onto a survivor is served; an app the failover could not place, and that got
    nothing since, is not; an app whose results stopped long before the end is not either."""
    cfg = load_mesh_config(packaged_config("demo.yaml"))
    t = Topics(cfg.mesh)
    obs = MeshObserver(cfg, client_id="test")
    obs.mark_start()
    for _ in range(3):
        obs._on_result(_result(t, "gate-watch", "w2", 1))
        obs._on_result(_result(t, "kitchen-watch", "w2", 1))
        time.sleep(0.01)
    failed = time.time()
    time.sleep(0.02)
    ev = messages.Event(
        kind="failover",
        ts=failed + 0.001,
        source="coordinator/main",
        worker="w2",
        detail={
            "cause": "last_will",
            "generation": 2,
            "source": "table",
            "decision_ms": 0.1,
            "detected_ts": failed,
            "silence_ms": 0.0,
            "recoveries": {
                "gate-watch": {
                    "server": "w1",
                    "kind": "warm",
                    "variant": "efficientnet_lite1",
                    "final": "efficientnet_lite1",
                }
            },
            "unrecoverable": {"kitchen-watch": "no memory left"},
        },
    )
    obs._on_event(Inbound(t.events_of(Role.COORDINATOR, "main"), ev, False))
    obs._on_result(_result(t, "gate-watch", "w1", 2))
    first_new = time.time()
    obs._on_result(_result(t, "gate-watch", "w1", 2))

    s = obs.summary(1.0, end=time.time() + 1.0)
    gate, kitchen = s["apps"]["gate-watch"], s["apps"]["kitchen-watch"]
    assert gate["served_at_end"] and not kitchen["served_at_end"]
    assert "unrecoverable" in kitchen["served_detail"]
    assert s["all_served"] and not s["served_at_end"]
    (fo,) = s["failovers"]
    assert fo["worker"] == "w2" and fo["cause"] == "last_will"
    assert fo["unrecoverable"] == {"kitchen-watch": "no memory left"}
    r = fo["recoveries"]["gate-watch"]
    assert r["server"] == "w1" and r["kind"] == "warm" and r["variant"] == "efficientnet_lite1"
    assert 0 < r["mttr_ms"] <= (first_new - failed) * 1000 + 1
    assert r["gap_ms"] is not None and r["gap_ms"] >= r["mttr_ms"]
    assert gate["workers"] == {"w2": 3, "w1": 2}

    # Long after its last result, an app is not served any more.
    late = obs.summary(1.0, end=time.time() + 30.0)
    assert not late["apps"]["gate-watch"]["served_at_end"]

    # w1 fails too and gate-watch is recovered onto w2: with no result from w2 yet, it is
    # recovering right after the failover, and not served if it never comes back.
    time.sleep(0.02)
    again = time.time()
    ev2 = messages.Event(
        kind="failover",
        ts=again,
        source="coordinator/main",
        worker="w1",
        detail={
            "cause": "heartbeat_silence",
            "generation": 3,
            "detected_ts": again,
            "silence_ms": 10.0,
            "recoveries": {"gate-watch": {"server": "w2", "kind": "cold", "variant": "x"}},
        },
    )
    obs._on_event(Inbound(t.events_of(Role.COORDINATOR, "main"), ev2, False))
    soon = obs.summary(1.0, end=again + 1.0)
    assert soon["apps"]["gate-watch"]["served_at_end"]
    assert soon["failovers"][1]["recoveries"]["gate-watch"]["first_result_s"] is None
    never = obs.summary(1.0, end=again + 10.0)
    assert not never["apps"]["gate-watch"]["served_at_end"]
    assert "no result since its failover" in never["apps"]["gate-watch"]["served_detail"]

    s["exited"] = [
        {"name": "worker-w2", "role": "worker", "pid": 1, "exit_code": -9, "t_s": 1.0, "log": "x"}
    ]
    s["ok"] = False
    buf = io.StringIO()
    _print_summary(Console(file=buf, width=200), s)
    text = buf.getvalue()
    assert "w2 failed (last_will)" in text and "gate-watch -> w1 warm" in text
    assert "kitchen-watch unrecoverable" in text and "worker-w2 exit -9" in text
    assert "NOT SERVED AT THE END" in text


def test_an_app_paused_under_overload_is_shed_not_lost() -> None:
    """No broker: an app whose route says ``shed`` at the end is not served, says why, and
    does not fail the run; an app with no results and no such route does."""
    cfg = load_mesh_config(packaged_config("demo.yaml"))
    t = Topics(cfg.mesh)
    obs = MeshObserver(cfg, client_id="test")
    obs.mark_start()
    for app, gen in (("gate-watch", 1), ("kitchen-watch", 1)):
        route = messages.Route(app, "w2", "efficientnet_lite0", 1, gen, time.time())
        obs._on_route(Inbound(t.app_route(app), route, True))
        obs._on_result(_result(t, app, "w2", gen))
    shed = messages.Route("kitchen-watch", "", "", 1, 2, time.time(), "shed")
    obs._on_route(Inbound(t.app_route("kitchen-watch"), shed, True))
    s = obs.summary(1.0, end=time.time() + 30.0)
    kitchen, gate = s["apps"]["kitchen-watch"], s["apps"]["gate-watch"]
    assert not kitchen["served_at_end"] and kitchen["shed_at_end"]
    assert "shed" in kitchen["served_detail"]
    assert not gate["served_at_end"] and not gate["shed_at_end"]
    assert not s["served_or_shed_at_end"]
    obs._on_result(_result(t, "gate-watch", "w2", 1))
    s = obs.summary(1.0)
    assert s["served_or_shed_at_end"]
