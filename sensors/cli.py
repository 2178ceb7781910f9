"""``faillite sensor``: publish one camera's frames (registered by entry point)."""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

from faillite import log as flog
from faillite.cli import add_common, add_replace, load_config, role_imports, until_signal
from faillite.config import ConfigError
from faillite.presence import IdentityInUseError
from faillite.sdnotify import Watchdog, notify
from faillite.signing import SigningError, mesh_verifier


def register(sub: Any) -> None:
    p = sub.add_parser("sensor", help="publish a camera's frames")
    add_common(p)
    p.add_argument("--id", required=True, help="sensor id in the config")
    p.add_argument("--source", help="override: scene, camera index, file, folder or URL")
    p.add_argument("--fps", type=float, help="override the target frame rate")
    p.add_argument(
        "--results",
        action="store_true",
        help="follow results of this sensor's apps and print end-to-end latency",
    )
    p.add_argument("--duration", type=float, help="stop after SECONDS")
    p.add_argument("--frames", type=int, help="stop after N frames")
    add_replace(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with role_imports("sensor", "sensor"):
        from sensors.publisher import SensorPublisher

    cfg = load_config(args)
    flog.configure(mesh=cfg.mesh, role="sensor", sensor=args.id)
    scfg = cfg.sensor(args.id)
    updates: dict[str, Any] = {}
    if args.source:
        updates["source"] = args.source
    if args.fps:
        updates["fps"] = args.fps
    scfg = scfg.model_copy(update=updates)
    try:
        verifier = mesh_verifier(cfg.coordinator.signing, cfg.mesh)
    except SigningError as exc:
        raise ConfigError(f"coordinator.signing: {exc}") from exc
    pub = SensorPublisher(
        cfg.mesh,
        scfg,
        cfg.broker,
        follow_results=args.results,
        apps=tuple(a.id for a in cfg.apps if a.sensor == scfg.id),
        verifier=verifier,
    )
    try:
        pub.claim(replace=args.replace)
    except IdentityInUseError as exc:
        print(f"faillite sensor: {exc}", file=sys.stderr)
        return 2
    until_signal(pub.stop)
    every = 2.0 if args.results else 5.0

    def report() -> None:
        while not pub.stopped.wait(every):
            print(pub.report().line(scfg.id), flush=True)

    threading.Thread(target=report, name="status-line", daemon=True).start()

    # systemd (Type=notify): ready once the first frame went out (to the broker, or counted
    # not_connected while the client connects in the background).
    def ready() -> None:
        notify("READY=1", f"STATUS=sensor {scfg.id} publishing")

    watchdog = Watchdog(pub.alive, name="sensor")
    watchdog.start()
    pub.run(duration_s=args.duration, max_frames=args.frames, ready=ready)
    watchdog.stop()
    notify("STOPPING=1")
    print(pub.report().line(scfg.id), flush=True)
    return 0
