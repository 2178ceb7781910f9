"""``faillite worker``: run an inference worker (registered by entry point)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from faillite import log as flog
from faillite.cli import add_common, add_replace, load_config, role_imports, until_signal
from faillite.presence import IdentityInUseError
from faillite.sdnotify import Watchdog, notify

FAULTS_PLUGIN = "field_kit.drill.faults"  # what --fault-injection loads


def register(sub: Any) -> None:
    p = sub.add_parser("worker", help="run an inference worker")
    add_common(p)
    p.add_argument("--id", required=True, help="worker id in the config")
    p.add_argument(
        "--plugin",
        action="append",
        metavar="MODULE",
        help="load a worker plug-in (a module with install(worker)); repeatable",
    )
    p.add_argument(
        "--fault-injection",
        action="store_true",
        help=f"drills: --plugin {FAULTS_PLUGIN} (SIGUSR1 toggles a hung inference thread, "
        "SIGUSR2 slow frames)",
    )
    add_replace(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from faillite.catalog import load_catalog

    with role_imports("worker", "worker"):
        from workers.plugins import PluginError, load_plugin
        from workers.service import Worker

    cfg = load_config(args)
    flog.configure(mesh=cfg.mesh, role="worker", worker=args.id)
    worker = Worker(cfg, cfg.worker(args.id), load_catalog(cfg.catalog))
    plugins = list(args.plugin or ())
    if args.fault_injection and FAULTS_PLUGIN not in plugins:
        plugins.append(FAULTS_PLUGIN)
    try:
        for name in plugins:  # on the main thread: a plug-in may install signal handlers
            load_plugin(name, worker)
            flog.get_logger("worker").info("plugin_loaded", plugin=name)
    except PluginError as exc:
        print(f"faillite worker: {exc}", file=sys.stderr)
        return 2
    until_signal(worker.request_stop)
    try:
        worker.claim(replace=args.replace)
    except IdentityInUseError as exc:
        print(f"faillite worker: {exc}", file=sys.stderr)
        return 2
    if not worker.stopping:  # no SIGTERM while it looked
        worker.start()
        # systemd (Type=notify): ready once its threads run. Not once connected: connecting is
        # retried in the background by design, and a worker waiting for its broker is doing
        # its job (its heartbeats, not systemd, tell the mesh whether it serves).
        watchdog = Watchdog(worker.alive, name="worker")
        watchdog.start()
        notify("READY=1", f"STATUS=worker {args.id} running")
        worker.wait()
        watchdog.stop()
    notify("STOPPING=1")
    worker.stop()
    return 0
