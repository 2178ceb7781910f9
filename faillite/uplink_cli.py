"""``faillite uplink``: report the kit to its rear site (registered by entry point; also
``python -m faillite.uplink_cli``)."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence
from typing import Any

from faillite import log as flog
from faillite.cli import add_common, load_config, until_signal
from faillite.config import ConfigError
from faillite.sdnotify import Watchdog, notify


def _arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--duration", type=float, help="stop after SECONDS")
    p.add_argument(
        "--status-every", type=float, default=5.0, help="status line on stdout every SECONDS"
    )
    p.set_defaults(func=run)


def register(sub: Any) -> None:
    p = sub.add_parser("uplink", help="report results, statuses and events to a rear site")
    _arguments(p)


def run(args: argparse.Namespace) -> int:
    from faillite.uplink import Uplink

    cfg = load_config(args)
    if cfg.uplink is None:
        raise ConfigError(f"{args.config or 'the config'} has no uplink section")
    flog.configure(mesh=cfg.mesh, role="uplink", uplink=cfg.uplink.id)
    uplink = Uplink(cfg)
    done = threading.Event()
    until_signal(done.set)
    uplink.start()
    # systemd (Type=notify): ready once running; both links connect (and reconnect) on their
    # own, a rear site out of reach being the normal case for a kit in the field.
    notify("READY=1", f"STATUS={uplink.status_line()}")
    watchdog = Watchdog(uplink.alive, name="uplink")
    watchdog.start()
    deadline = args.duration
    waited = 0.0
    while not done.wait(args.status_every):
        line = uplink.status_line()
        print(line, flush=True)
        notify(f"STATUS={line}")
        waited += args.status_every
        if deadline is not None and waited >= deadline:
            break
    watchdog.stop()
    notify("STOPPING=1")
    uplink.stop()
    print(uplink.status_line(), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="faillite uplink", description=__doc__)
    _arguments(p)
    args = p.parse_args(argv)
    try:
        rc: int = args.func(args)
    except ConfigError as exc:
        print(f"faillite uplink: config error: {exc}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
