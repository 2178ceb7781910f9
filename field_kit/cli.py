"""``faillite up``: a whole mesh on this machine, and ``faillite watch``: the live view of any
mesh (registered by entry point). The drills and the simulator register their own commands
(``field_kit.drill.runner``, ``field_kit.simulate.cli``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from faillite import log as flog
from faillite.cli import add_common, config_path, load_config, role_imports


def register_up(sub: Any) -> None:
    p = sub.add_parser("up", help="run a whole mesh on this machine with a live view")
    add_common(p)
    p.add_argument("--duration", type=float, help="run SECONDS, print a summary, exit")
    p.add_argument(
        "--port", type=int, help="embedded broker port (0: a free one); default: the config's"
    )
    p.add_argument("--no-view", action="store_true", help="plain periodic lines, no live table")
    p.add_argument("--logs-dir", help="where each process's log goes (default ./runs/up-*)")
    p.add_argument("--summary-json", help="also write the summary as JSON here")
    p.add_argument(
        "--secure",
        action="store_true",
        help="one account per device, TLS with a CA made for the run, signed assignments",
    )
    p.add_argument(
        "--observer",
        action="append",
        default=[],
        metavar="ID",
        help="with --secure: also an account for observer ID (faillite watch --as ID); repeatable",
    )
    p.set_defaults(func=run_up)


def run_up(args: argparse.Namespace) -> int:
    with role_imports("up", "demo"):
        from field_kit.up import UpOptions
        from field_kit.up import run_up as up

    cfg = load_config(args)
    flog.configure(
        mesh=cfg.mesh,
        role="up",
        fmt="console",
        level=os.environ.get("FAILLITE_LOG_LEVEL", "warning"),
    )
    opts = UpOptions(
        config_path=config_path(args.config).resolve(),
        duration_s=args.duration,
        port=args.port,
        view=not args.no_view,
        logs_dir=Path(args.logs_dir) if args.logs_dir else None,
        summary_json=Path(args.summary_json) if args.summary_json else None,
        models_dir=Path(args.models_dir).resolve() if args.models_dir else None,
        secure=args.secure,
        observers=tuple(args.observer),
    )
    return up(cfg, opts)


def register_watch(sub: Any) -> None:
    p = sub.add_parser(
        "watch", help="live view of a running mesh (any broker): results per app and events"
    )
    add_common(p)
    p.add_argument(
        "--as",
        dest="as_id",
        default="watch",
        metavar="ID",
        help="observer id: connects as {mesh}.observer.ID with its secret (default: watch)",
    )
    p.add_argument("--duration", type=float, help="watch SECONDS, print a summary, exit")
    p.add_argument("--no-view", action="store_true", help="plain periodic lines and event lines")
    p.add_argument("--events-only", action="store_true", help="only the events, one line each")
    p.add_argument("--json", action="store_true", help="each event as one JSON line (scripts)")
    p.add_argument("--events", type=int, default=12, metavar="N", help="events in the live view")
    p.set_defaults(func=run_watch)


def run_watch(args: argparse.Namespace) -> int:
    with role_imports("watch", "demo"):
        from field_kit.watch import WatchOptions
        from field_kit.watch import run_watch as watch

    cfg = load_config(args)
    # The transport's own lines (broker_unreachable, connect_refused, once per try) give way to
    # the view's: one line when the connection is down, one when it is up.
    flog.configure(
        mesh=cfg.mesh,
        role="watch",
        fmt="console",
        level=os.environ.get("FAILLITE_LOG_LEVEL", "critical"),
    )
    opts = WatchOptions(
        observer_id=args.as_id,
        duration_s=args.duration,
        view=not args.no_view,
        events_only=args.events_only,
        json=args.json,
        events=max(0, args.events),
    )
    return watch(cfg, opts)
