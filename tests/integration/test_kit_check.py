"""``faillite kit check`` against a running secured mesh (``faillite up --secure``: accounts,
TLS, signing), every app served or why not (a real broker and mesh), and a node's staged models
against their manifest."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from plugins.mesh import Collector, load, write_config
from test_up import _demo_config

from faillite import messages
from faillite.identity import Identity
from faillite.topics import Role, Topics
from field_kit.kit.check import RouteSeen, app_served, check_mesh, check_node
from field_kit.procs import ProcessGroup, faillite_cmd, free_port, wait_port
from field_kit.pump import FramePump


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
                "PASS apps: gate-watch served by w",
                "PASS apps: kitchen-watch served by w",
                "PASS clocks",
            ):
                assert any(line.startswith(expected) for line in lines), (expected, lines)
            # A mission longer than the certificates last is a no-go.
            long = _check(secure, port, "--as", "ops", "--mission-days", "40000")
            assert long.returncode == 1 and "FAIL certificates: kit CA" in long.stdout
            assert "the mission needs 40000" in long.stdout
            stranger = _check(secure, port, "--as", "nobody")
            assert stranger.returncode == 1 and "FAIL login" in stranger.stdout
            assert "Traceback" not in stranger.stderr
            # An app of the config that the mesh does not serve (here: nobody planned it).
            data = yaml.safe_load(secure.read_text())
            data["apps"].append({**data["apps"][0], "id": "ghost-watch", "critical": False})
            ghost = secure.with_name("ghost.yaml")  # beside it: its relative paths hold
            ghost.write_text(yaml.safe_dump(data))
            out = _check(ghost, port, "--as", "ops", "--results-within", "1")
            assert out.returncode == 1, out.stdout + out.stderr
            assert "FAIL apps: ghost-watch not served: no route retained" in out.stdout
            assert "PASS apps: gate-watch served by w" in out.stdout
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(30)


def test_an_app_is_served_only_with_a_route_a_live_worker_and_results() -> None:
    live, now = {"w1"}, 100.0
    fresh = {"w1": 99.0}

    def detail(route: RouteSeen | None, results: dict[str, float] = fresh) -> str:
        c = app_served("a1", route, live, results, now, 5.0)
        return ("PASS " if c.ok else "FAIL ") + c.detail

    assert detail(RouteSeen("w1", "v0", "serving")).startswith("PASS a1 served by w1 (v0")
    assert detail(RouteSeen("w1", "v1", "degraded")).startswith("PASS a1 served by w1 (v1")
    assert detail(None) == "FAIL a1 not served: no route retained"
    assert detail(RouteSeen("", "", "unserved")).startswith("FAIL a1 not served: unserved")
    assert detail(RouteSeen("", "", "shed")) == "FAIL a1 not served: shed under overload"
    assert detail(RouteSeen("w2", "v0", "serving")) == (
        "FAIL a1 not served: route to a dead worker w2"
    )
    assert detail(RouteSeen("w1", "v0", "serving"), {}) == (
        "FAIL a1 not served: no results in 5 s from w1"
    )
    assert detail(RouteSeen("w1", "v0", "serving"), {"w1": 94.0}).startswith("FAIL")  # too old
    assert detail(RouteSeen("w1", "v0", "serving"), {"w2": 99.0}).startswith("FAIL")  # not its
    # Served, but by another than its planned primary: the kit would go out on its backup.
    on_backup = app_served("a1", RouteSeen("w1", "v0", "serving"), live, fresh, now, 5.0, "w3")
    assert not on_backup.ok
    assert on_backup.detail.startswith("a1 served by w1, not by w3, its planned primary")
    assert app_served("a1", RouteSeen("w1", "v0", "serving"), live, fresh, now, 5.0, "w1").ok
    # A state this reader does not know is no route to believe, and not served.
    r = messages.Route("a1", "", "", 3, 7, 0.0, "unserved")
    assert RouteSeen.read(messages.encode(r)) == RouteSeen("", "", "unserved")
    assert RouteSeen.read(b'{"app": "a1", "state": "paused-by-someone"}') == RouteSeen(
        "", "", "paused-by-someone"
    )
    assert RouteSeen.read(b'{"app": "a1", "state": "serving"}') is None  # not a valid route
    assert RouteSeen.read(b"not json") is None


def test_unserved_apps_fail_and_say_why(tmp_path: Path, broker: Any, models_dir: Path) -> None:
    """A real broker and mesh (a static coordinator, one worker, frames of one camera): a1 is
    served; every other app is not, each for its own reason."""
    mesh = "kitapps" + broker.kind[:3]
    apps = {
        "a1": "cam1",  # w1 serves it, frames come: served
        "a2": "cam1",  # routed to w2, which never started
        "a3": "cam2",  # w1 serves it, but cam2 sends no frame: no results
        "a4": "cam1",  # the plan leaves it out: no route
        "a5": "cam1",  # a retained unserved route
        "a6": "cam1",  # a retained shed route (paused under overload)
    }
    path = write_config(
        tmp_path,
        broker,
        models_dir,
        mesh=mesh,
        workers=({"id": "w1"}, {"id": "w2"}),
        sensors=({"id": "cam1"}, {"id": "cam2"}),
        apps=[{"id": a, "sensor": cam, "family": "efficientnet_lite"} for a, cam in apps.items()],
        assignments={
            "w1": [
                {"app": "a1", "variant": "efficientnet_lite0"},
                {"app": "a3", "variant": "efficientnet_lite0"},
            ],
            "w2": [{"app": "a2", "variant": "efficientnet_lite0"}],
        },
    )
    cfg, t = load(path), Topics(mesh)
    col = Collector(cfg, "obs").follow(f"faillite/{mesh}/#").start()
    for app, state in (("a5", "unserved"), ("a6", "shed")):
        route = messages.Route(app, "", "", 1, 1, messages.now(), "unserved")
        payload = messages.encode(route).replace(b'"unserved"', f'"{state}"'.encode())
        col.publish(t.app_route(app), payload, retain=True)
    try:
        with (
            ProcessGroup(tmp_path / "logs") as group,
            FramePump(col, t.sensor_frames("cam1"), 5),
        ):
            group.start("c1", "coordinator", faillite_cmd("coordinator", "--config", str(path)))
            group.start("w1", "worker", faillite_cmd("worker", "--id", "w1", "--config", str(path)))
            col.wait_for(
                lambda: col.messages(t.app_results("a1", "w1"), messages.Result),
                60,
                "a result of a1 from w1",
            )
            col.wait_for(lambda: col.messages(t.app_route("a2"), messages.Route), 10, "a2's route")
            checks = check_mesh(
                cfg, Identity(mesh, Role.OBSERVER, "ops"), wait_s=1.0, tolerance_s=5.0,
                results_s=3.0,
            )  # fmt: skip
    finally:
        for app in ("a5", "a6"):
            col.publish(t.app_route(app), b"", retain=True)
        col.stop()
    lines = {c.detail.split()[0]: c.line() for c in checks if c.name == "apps"}
    assert lines["a1"].startswith("PASS apps: a1 served by w1 (efficientnet_lite0, serving)")
    assert lines["a2"].startswith("FAIL apps: a2 not served: route to a dead worker w2")
    assert lines["a3"].startswith("FAIL apps: a3 not served: no results in 3 s from w1")
    assert lines["a4"].startswith("FAIL apps: a4 not served: no route retained")
    assert lines["a5"].startswith("FAIL apps: a5 not served: unserved")
    assert lines["a6"].startswith("FAIL apps: a6 not served: shed under overload")
    assert all("fix: " in lines[a] for a in ("a2", "a3", "a4", "a5", "a6"))


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
    # Intact but not models: a backup that cannot load is no backup.
    assert (
        not checks["loadable"].ok and "0 of 2 staged model files open" in checks["loadable"].detail
    )
    (tmp_path / "b.onnx").write_bytes(b"tampered")
    models = {c.name: c for c in check_node(tmp_path)}["models"]
    assert not models.ok and "bad: b.onnx" in models.detail and models.fix


def test_staged_models_that_onnx_runtime_opens_pass(tmp_path: Path, models_dir: Path) -> None:
    data = (models_dir / "efficientnet_lite0.onnx").read_bytes()
    (tmp_path / "efficientnet_lite0.onnx").write_bytes(data)
    manifest = {
        "node": "n1",
        "budget_mb": 100,
        "used_mb": 20,
        "files": [
            {
                "variant": "efficientnet_lite0",
                "file": "efficientnet_lite0.onnx",
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        ],
    }
    (tmp_path / "stage.json").write_text(json.dumps(manifest))
    checks = {c.name: c for c in check_node(tmp_path)}
    assert checks["loadable"].ok and "1 of 1 staged model files open" in checks["loadable"].detail
