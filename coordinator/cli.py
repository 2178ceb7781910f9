"""``faillite coordinator``: run a coordinator, leader or standby (registered by entry point)."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable
from typing import Any

from faillite import log as flog
from faillite.cli import add_common, load_config, role_imports, until_signal
from faillite.sdnotify import Watchdog, notify


def register(sub: Any) -> None:
    p = sub.add_parser("coordinator", help="run the coordinator")
    add_common(p)
    p.add_argument("--id", default="main", help="this coordinator's id (default: main)")
    p.add_argument(
        "--standby",
        action="store_true",
        help="wait as a standby and take over when the leader is gone",
    )
    p.add_argument(
        "--rank",
        type=int,
        default=1,
        help="standby rank: rank r takes over after r x coordinator.takeover_delay_s",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from faillite.catalog import load_catalog
    from faillite.signing import SigningError

    with role_imports("coordinator", "coordinator"):
        from coordinator.planning import planner_for
        from coordinator.service import CoordinatorService, StandbyWatch

    cfg = load_config(args)
    flog.configure(mesh=cfg.mesh, role="coordinator", coordinator=args.id)
    # Measured profiles of device classes (`faillite profile`) beside the models: plannable.
    catalog = load_catalog(cfg.catalog, overlays=cfg.models_path)
    if cfg.coordinator.ids and args.id not in cfg.coordinator.ids:
        # Workers and the other coordinators would ignore everything it says.
        print(
            f"faillite coordinator: --id {args.id!r} is not in coordinator.ids "
            f"({', '.join(cfg.coordinator.ids)})",
            file=sys.stderr,
        )
        return 2
    # systemd (Type=notify): the watchdog asks the standby's watch, then the leader.
    health: list[Callable[[], str | None]] = []
    watchdog = Watchdog(lambda: health[-1]() if health else None, name="coordinator")
    term_floor = 0
    try:  # a signing mesh: the coordinator's key must load (a standby's too, before it waits)
        if args.standby:
            stop = threading.Event()
            until_signal(stop.set)
            watch = StandbyWatch(cfg, args.id, args.rank)
            # Load the solver while waiting: the first plan after a takeover must not pay for it.
            warm = planner_for(cfg, catalog).warm_up
            threading.Thread(target=warm, name="planner-warm-up", daemon=True).start()
            health.append(watch.alive)
            watchdog.start()
            # Ready as a standby once it watches (the watch connects in the background).
            notify("READY=1", f"STATUS=standby {args.id} (rank {watch.rank}) watching")
            if watch.wait_for_vacancy(stop) is None:
                watchdog.stop()
                notify("STOPPING=1")
                return 0
            term_floor = watch.highest_term  # a successor's term is above the newest leader seen
        coord = CoordinatorService.from_config(cfg, catalog, args.id, term_floor=term_floor)
    except SigningError as exc:
        print(f"faillite coordinator: {exc}", file=sys.stderr)
        return 2
    health.append(coord.alive)
    watchdog.start()
    until_signal(coord.request_stop)
    led = coord.start()
    if led and not coord.stopping:  # it holds its term: ready as the leader
        notify("READY=1", f"STATUS=leader {args.id}, term {coord.leadership.term}")
    if led:
        coord.wait()
    watchdog.stop()
    notify("STOPPING=1")
    coord.stop()
    return 0 if led else 2  # refused to lead: term_exhausted in the log says why
