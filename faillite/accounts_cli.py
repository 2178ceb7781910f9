"""``faillite accounts``: one broker account per device (registered by entry point).

::

    faillite accounts init -c mesh.yaml --observer ops       # every device of the config
    faillite accounts add -c mesh.yaml worker w9
    faillite accounts revoke -c mesh.yaml demo.worker.w9
    faillite accounts list -c mesh.yaml

The broker reads ``broker.password_file`` (hashes only; the embedded broker picks up a change
within a second, Mosquitto on SIGHUP, which ``revoke`` sends where ``broker.pid_file`` is set);
each secret in ``broker.secrets_dir`` goes to the one node
that runs that device, and nowhere else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from faillite.cli import add_common, load_config
from faillite.config import BrokerConfig, ConfigError
from faillite.topics import InvalidIdError, Role


def register(sub: Any) -> None:
    p = sub.add_parser("accounts", help="per-device broker accounts: secrets and password hashes")
    psub = p.add_subparsers(dest="accounts_command", required=True)

    init = psub.add_parser("init", help="an account for every sensor and worker of the config")
    add_common(init)
    for role in ("coordinator", "observer", "admin"):
        init.add_argument(
            f"--{role}",
            action="append",
            default=[],
            help=f"a {role} id to give an account too (repeatable)"
            + (" (default: coordinator.ids, or main)" if role == "coordinator" else ""),
        )
    init.add_argument("--replace", action="store_true", help="new secrets for existing accounts")
    init.set_defaults(func=cmd_init)

    add = psub.add_parser("add", help="an account for one device")
    add_common(add)
    add.add_argument("role", choices=[r.value for r in Role])
    add.add_argument("id")
    add.add_argument("--replace", action="store_true", help="a new secret for an existing one")
    add.set_defaults(func=cmd_add)

    revoke = psub.add_parser("revoke", help="remove one device's account; the others keep theirs")
    add_common(revoke)
    revoke.add_argument("name", help="the identity, mesh.role.id (faillite accounts list)")
    revoke.set_defaults(func=cmd_revoke)

    ls = psub.add_parser("list", help="the identities with an account")
    add_common(ls)
    ls.set_defaults(func=cmd_list)


def _paths(args: argparse.Namespace, *, secrets: bool = True) -> tuple[str, BrokerConfig, Path]:
    cfg = load_config(args)
    broker = cfg.broker
    if broker.password_file is None or (secrets and broker.secrets_dir is None):
        raise ConfigError(
            "the config sets no broker.password_file"
            + (" and broker.secrets_dir" if secrets else "")
            + ": say where the broker's hashes and the nodes' secrets go"
        )
    return cfg.mesh, broker, broker.password_file


def cmd_init(args: argparse.Namespace) -> int:
    from faillite import accounts

    def run() -> int:
        cfg = load_config(args)
        _mesh, broker, pw = _paths(args)
        assert broker.secrets_dir is not None
        identities = accounts.mesh_identities(
            cfg, coordinators=args.coordinator or None, observers=args.observer, admins=args.admin
        )
        for path in accounts.provision(pw, broker.secrets_dir, identities, replace=args.replace):
            print(path)
        print(f"{pw}: {len(identities)} accounts", file=sys.stderr)
        return 0

    return _guarded(run)


def cmd_add(args: argparse.Namespace) -> int:
    from faillite import accounts
    from faillite.identity import Identity

    def run() -> int:
        mesh, broker, pw = _paths(args)
        assert broker.secrets_dir is not None
        identity = Identity(mesh, Role(args.role), args.id)
        print(accounts.add_account(pw, broker.secrets_dir, identity, replace=args.replace))
        return 0

    return _guarded(run)


def cmd_revoke(args: argparse.Namespace) -> int:
    from faillite import accounts
    from faillite.revocation import RevocationError, apply_revocation

    def run() -> int:
        _mesh, broker, pw = _paths(args, secrets=False)
        if not accounts.revoke_account(pw, args.name):
            print(f"faillite accounts: {args.name} has no account in {pw}", file=sys.stderr)
            return 1
        print(f"revoked {args.name}", file=sys.stderr)
        try:
            applied = apply_revocation(broker, name=None, ca_dir=None)
        except RevocationError as exc:
            print(f"faillite accounts: the broker was not told: {exc}", file=sys.stderr)
            return 1
        if applied.pid is not None:
            print(f"broker (pid {applied.pid}) reloaded: {args.name} is out", file=sys.stderr)
        return 0

    return _guarded(run)


def cmd_list(args: argparse.Namespace) -> int:
    from faillite import accounts

    def run() -> int:
        _mesh, _broker, pw = _paths(args, secrets=False)
        for identity in accounts.list_accounts(pw):
            print(identity.name)
        return 0

    return _guarded(run)


def _guarded(run: Any) -> int:
    from faillite.accounts import AccountsError
    from faillite.identity import InvalidIdentityError

    try:
        return int(run())
    except (ConfigError, AccountsError, InvalidIdentityError, InvalidIdError, OSError) as exc:
        print(f"faillite accounts: {exc}", file=sys.stderr)
        return 2
