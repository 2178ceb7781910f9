"""A kit rehearsed on this machine: described in kit.yaml, rendered in place (each node's paths
point into its own folder), staged, its processes started exactly as its systemd units say
(only the venv's path differs), checked ready with ``faillite kit check``, then drilled with
``faillite kit check --drill``: its critical app's primary killed by the operator's command (here
a ``kill`` of the process, where a field kit would ``ssh`` to a node and ``systemctl kill``), and
the app served again from the backup its staging put on disk, the leader unmoved.

Two nodes on loopback (the embedded broker, accounts, TLS with the kit's CA, signed
assignments, a standby coordinator). The five-node form in network namespaces is not here.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import yaml
from plugins.watching import watch, watched

from faillite.catalog import Catalog
from faillite.compat import python_module
from field_kit.kit.model import Kit
from field_kit.kit.render import VENV, render
from field_kit.kit.stage import stage
from field_kit.procs import free_port, wait_port


def _kit(port: int) -> Kit:
    node = {
        "host": "127.0.0.1", "arch": "x86_64", "device_class": "cpu", "memory_mb": 1024,
        "disk_mb": 1000, "link": "lan",
    }  # fmt: skip
    return Kit.model_validate(
        {
            "kit": "rehearsal",
            "broker": {"node": "n1", "kind": "amqtt", "port": port},
            "nodes": [
                {
                    **node,
                    "id": "n1",
                    "failure_domain": "a",
                    "roles": ["broker", "coordinator", "worker"],
                },
                {
                    **node,
                    "id": "n2",
                    "failure_domain": "b",
                    "roles": ["coordinator", "worker", "sensor"],
                },
            ],
            "cameras": [{"id": "cam1", "node": "n2", "source": "scene:chelsea", "fps": 5}],
            "apps": [
                {"id": "a1", "camera": "cam1", "family": "efficientnet_lite", "critical": True}
            ],
            # "drill" for the drill's own observer: one client id per connection (a second
            # "ops" beside faillite watch's would take over its session).
            "observers": ["ops", "drill"],
        }
    )


def _exec_starts(folder: Path) -> dict[str, list[str]]:
    """Each unit's command, with this test's venv in place of the node's."""
    out = {}
    for unit in sorted((folder / "etc/systemd/system").iterdir()):
        line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
        argv = shlex.split(line.removeprefix("ExecStart="))
        faillite = str(Path(str(folder.resolve())) / str(VENV).lstrip("/") / "bin" / "faillite")
        assert argv[0] == faillite, argv
        out[unit.stem] = [*python_module("faillite"), *argv[1:]]
    return out


def test_a_rendered_kit_runs_passes_its_check_and_fails_over(
    catalog: Catalog, models_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    kit = _kit(port)
    build = tmp_path / "build"
    render(kit, build, in_place=True)
    staged = stage(kit, catalog, models_dir, build)
    assert not staged.apps_losing_protection
    secrets = build / "_provisioning/accounts/secrets"
    secret = (secrets / "rehearsal.observer.ops.secret").read_text().strip()
    drill_secret = (secrets / "rehearsal.observer.drill.secret").read_text().strip()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    watching: subprocess.Popen[str] | None = None
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        starts = {n: _exec_starts(build / n) for n in ("n1", "n2")}
        order = ["faillite-broker", "faillite-coordinator", "faillite-worker", "faillite-sensor"]
        for prefix in order:
            for node, units in starts.items():
                for name, argv in units.items():
                    if name.startswith(prefix):
                        with (logs / f"{node}-{name}.log").open("wb") as log:
                            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
                        procs[f"{node}/{name}"] = proc
                        (logs / f"{node}-{name}.pid").write_text(str(proc.pid))
            if prefix == "faillite-broker":
                assert wait_port("127.0.0.1", port, timeout=30, proc=procs["n1/faillite-broker"])
        client_cfg = build / "n2/etc/faillite/mesh.yaml"
        deadline = time.monotonic() + 60
        while True:
            check = subprocess.run(
                [*python_module("faillite"), "kit", "check", "-c", str(client_cfg),
                 "--as", "ops", "--wait", "2",
                 "--staged-dir", str(build / "n1/var/lib/faillite/models")],
                capture_output=True, text=True, timeout=60,
                env={**os.environ, "FAILLITE_MQTT_PASSWORD": secret},
            )  # fmt: skip
            if check.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "PASS roles: worker n2 up" in check.stdout and "PASS models" in check.stdout
        watching = watch(client_cfg, secret, 180, as_="ops")  # stopped (SIGTERM) after the drill
        time.sleep(2)  # connected and following before the kill
        pids = shlex.quote(str(logs).replace("{", "{{").replace("}", "}}"))
        kill_with = "sh -c " + shlex.quote(f"kill -KILL $(cat {pids}/{{node}}-faillite-worker.pid)")
        drill = subprocess.run(
            [*python_module("faillite"), "kit", "check", "-c", str(client_cfg),
             "--as", "drill", "--wait", "2", "--drill", "--kill-with", kill_with],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "FAILLITE_MQTT_PASSWORD": drill_secret},
        )  # fmt: skip
        said = drill.stdout + drill.stderr
        time.sleep(2)  # the backup's results after the drill, for the watch's summary
        watching.send_signal(signal.SIGTERM)
        after = watched(watching, 0)
        assert drill.returncode == 0, said
        killed = re.search(r"^PASS drill: KILL_PRIMARY a1: killed primary (\w+) ", said, re.M)
        served = re.search(
            r"; served again by (\w+) \((warm|cold) backup, variant [^)]+\) after MTTR \d+ ms", said
        )
        assert killed is not None and served is not None, said
        primary, server = killed[1], served[1]
        assert primary in ("n1", "n2") and server != primary, said
        assert re.search(r"^PASS drill_leader: leader n[12] term \d+ before and after", said, re.M)
        assert procs[f"{primary}/faillite-worker"].wait(10) == -signal.SIGKILL, said
        a1 = after["summary"]["apps"]["a1"]
        assert a1["served_at_end"] and a1["worker"] == server, after["summary"]
        failovers = {e["worker"] for e in after["events"] if e.get("kind") == "failover"}
        assert primary in failovers, after["events"]
    finally:
        if watching is not None and watching.poll() is None:
            watching.kill()
            watching.communicate()
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    staged_files = yaml.safe_load((build / "n1/etc/faillite/mesh.yaml").read_text())
    assert staged_files["models_dir"].startswith(str(build.resolve()))
