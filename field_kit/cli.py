"""``faillite up``: a whole mesh on this machine (registered by entry point). The drills and the
simulator register their own commands (``field_kit.drill.runner``, ``field_kit.simulate.cli``)."""

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
    )
    return up(cfg, opts)
