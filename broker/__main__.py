"""``python -m broker``: run the embedded broker until SIGINT / SIGTERM.

    python -m broker [--config mesh.yaml] [--mesh ID] [--host H] [--port P]
                     [--worker ID ...] [--app ID ...]

Without ``--config`` the broker runs with defaults (anonymous, no ACL) for mesh ``demo``.
``--host`` / ``--port`` / ``--mesh`` override the config. Port 0 picks a free port; the
``broker_listening`` log line says which.
"""

from __future__ import annotations

import argparse
import sys

from broker.embedded import BrokerSetupError, run_broker
from faillite import log as flog
from faillite.config import BrokerConfig, ConfigError, MeshConfig, load_mesh_config
from faillite.identity import AclScope, acl_scope
from faillite.topics import InvalidIdError, check_id


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m broker", description=__doc__)
    p.add_argument("--config", "-c", help="mesh config (YAML); its broker section is used")
    p.add_argument("--mesh", help="mesh id (default: the config's, else 'demo')")
    p.add_argument("--host", help="listen address (default: the config's)")
    p.add_argument("--port", type=_port, help="listen port, 0 for a free one")
    p.add_argument("--log-level", help="debug, info, warning, error (default: info)")
    p.add_argument(
        "--worker",
        action="append",
        default=[],
        help="a worker id the ACL names (repeatable; default: the config's workers)",
    )
    p.add_argument("--app", action="append", default=[], help="an app id the ACL names (likewise)")
    p.add_argument(
        "--camera-app",
        action="append",
        default=[],
        metavar="CAMERA=APP",
        help="an app of a camera: that camera reads only its apps' results (likewise)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_mesh_config(args.config) if args.config else MeshConfig()
        mesh = check_id("mesh", args.mesh) if args.mesh else cfg.mesh
    except (ConfigError, InvalidIdError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    broker: BrokerConfig = cfg.broker
    updates: dict[str, object] = {}
    if args.host:
        updates["host"] = args.host
    if args.port is not None:
        updates["port"] = args.port
    if updates:
        broker = broker.model_copy(update=updates)
    flog.configure(level=args.log_level, mesh=mesh, role="broker")
    try:
        down = cfg.uplink.down if cfg.uplink is not None else ()
        pairs = [(c, a) for c, _, a in (x.partition("=") for x in args.camera_app) if a]
        scope = (
            AclScope.of(args.worker, args.app, down, pairs)
            if args.worker or args.app
            else acl_scope(cfg)
        )
        run_broker(broker, mesh, scope)
    except (BrokerSetupError, ConfigError) as exc:
        flog.get_logger("broker").error("broker_failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
