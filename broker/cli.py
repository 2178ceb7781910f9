"""``faillite broker``: run the embedded MQTT broker (registered by entry point)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from faillite import log as flog
from faillite.cli import add_common, load_config, role_imports
from faillite.identity import acl_scope


def register(sub: Any) -> None:
    p = sub.add_parser("broker", help="run the embedded MQTT broker (amqtt)")
    add_common(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with role_imports("broker", "broker"):
        from broker.embedded import BrokerSetupError, run_broker

    cfg = load_config(args)
    flog.configure(mesh=cfg.mesh, role="broker")
    broker = cfg.broker
    if args.host or args.port is not None:
        broker = broker.model_copy(
            update={
                "host": args.host or broker.host,
                "port": broker.port if args.port is None else args.port,
            }
        )
    try:
        run_broker(broker, cfg.mesh, acl_scope(cfg))
    except BrokerSetupError as exc:
        print(f"faillite broker: {exc}", file=sys.stderr)
        return 1
    return 0
