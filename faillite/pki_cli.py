"""``faillite pki``: the mesh's own CA and its certificates (registered by entry point).

::

    faillite pki init   --out DIR                                  # ca.crt, ca.key
    faillite pki server --ca DIR --name broker --host 127.0.0.1 --host kit-broker.local
    faillite pki client --ca DIR --name demo.worker.w1             # CN: the identity
    faillite pki signing-key --out DIR                             # signing.key, signing.pub
    faillite pki revoke --ca DIR DIR/demo.worker.w2.crt [-c mesh.yaml]  # DIR/crl.pem

Each prints the files it wrote. Nothing existing is overwritten without ``--force``. Give each
node ``ca.crt`` and its own pair only; the CA key stays on the machine that issues. The
signing key (``coordinator.signing``) goes to coordinators only, its ``.pub`` to every worker
and coordinator.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

CA_DAYS = 5 * 365  # faillite.pki's defaults; repeated so the help imports no cryptography
LEAF_DAYS = 2 * 365


def register(sub: Any) -> None:
    p = sub.add_parser("pki", help="make the mesh's CA, broker and node certificates (TLS)")
    psub = p.add_subparsers(dest="pki_command", required=True)

    init = psub.add_parser("init", help="create the mesh CA: DIR/ca.crt and DIR/ca.key")
    init.add_argument("--out", required=True, help="folder to write into")
    init.add_argument("--cn", default="FailLite Mesh CA", help="the CA's common name")
    init.add_argument("--days", type=int, default=CA_DAYS, help=f"validity (default {CA_DAYS})")
    init.add_argument(
        "--force",
        action="store_true",
        help="replace an existing CA (every certificate it issued stops verifying)",
    )
    init.set_defaults(func=cmd_init)

    server = psub.add_parser("server", help="issue a broker's certificate: DIR/NAME.crt, .key")
    _leaf_args(server)
    server.add_argument(
        "--host",
        action="append",
        required=True,
        help="an address or DNS name clients reach the broker by (repeatable)",
    )
    server.set_defaults(func=cmd_server)

    client = psub.add_parser(
        "client", help="issue a node's client certificate; its common name is the account"
    )
    _leaf_args(client)
    client.set_defaults(func=cmd_client)

    sig = psub.add_parser(
        "signing-key",
        help="make the coordinators' Ed25519 signing key: DIR/NAME.key (0600), DIR/NAME.pub",
    )
    sig.add_argument("--out", required=True, help="folder to write into")
    sig.add_argument("--name", default="signing", help="file name (default: signing)")
    sig.add_argument(
        "--force",
        action="store_true",
        help="replace an existing key (workers must get the new .pub)",
    )
    sig.set_defaults(func=cmd_signing_key)

    rev = psub.add_parser(
        "revoke", help="add a client certificate to DIR/crl.pem (broker.tls.server.crlfile)"
    )
    rev.add_argument("--ca", required=True, help="folder of the mesh CA (ca.crt, ca.key)")
    rev.add_argument("cert", help="the certificate to revoke (NAME.crt)")
    rev.add_argument(
        "--config",
        "-c",
        help="the mesh config: make its running broker apply the list now (broker.pid_file: "
        "signal it, and end the certificate's live session)",
    )
    rev.set_defaults(func=cmd_revoke)


def _leaf_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca", required=True, help="folder of the mesh CA (ca.crt, ca.key)")
    p.add_argument("--name", required=True, help="file name and common name")
    p.add_argument("--out", help="folder to write into (default: the CA's)")
    p.add_argument("--days", type=int, default=LEAF_DAYS, help=f"validity (default {LEAF_DAYS})")
    p.add_argument("--force", action="store_true", help="replace existing files of this name")


def _done(*paths: Path) -> int:
    for path in paths:
        print(path)
    return 0


def _failed(exc: Exception) -> int:
    print(f"faillite pki: {exc}", file=sys.stderr)
    return 2


def _issue(make: Callable[[], Any]) -> int:
    """Run one issuing step; its error is one line, its files are printed."""
    from faillite.pki import PkiError

    try:
        issued = make()
    except (PkiError, OSError) as exc:
        return _failed(exc)
    return _done(issued.cert, issued.key)


def cmd_init(args: argparse.Namespace) -> int:
    from faillite.pki import init_ca

    return _issue(
        lambda: init_ca(Path(args.out), common_name=args.cn, days=args.days, overwrite=args.force)
    )


def cmd_server(args: argparse.Namespace) -> int:
    from faillite.pki import issue_server

    out = Path(args.out) if args.out else None
    return _issue(
        lambda: issue_server(
            Path(args.ca), args.name, args.host, out_dir=out, days=args.days, overwrite=args.force
        )
    )


def cmd_client(args: argparse.Namespace) -> int:
    from faillite.identity import PROBE_SUFFIX, is_identity
    from faillite.pki import issue_client

    out = Path(args.out) if args.out else None
    # An identity also gets its probe name's certificate (tls.probe_certfile): the look a
    # role takes before connecting must not come under its own client id.
    names = [args.name] + ([args.name + PROBE_SUFFIX] if is_identity(args.name) else [])
    for name in names:

        def issue(name: str = name) -> Any:
            return issue_client(
                Path(args.ca), name, out_dir=out, days=args.days, overwrite=args.force
            )

        if rc := _issue(issue):
            return rc
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from faillite.config import ConfigError, load_mesh_config
    from faillite.pki import PkiError, common_name, load_certificate, probe_certificate, revoke
    from faillite.revocation import RevocationError, apply_revocation

    probe = probe_certificate(Path(args.cert))
    try:
        cert = load_certificate(Path(args.cert))
        crl = revoke(Path(args.ca), Path(args.cert))
        if probe.exists():  # the identity's probe name goes with it
            revoke(Path(args.ca), probe)
    except (PkiError, OSError) as exc:
        return _failed(exc)
    _done(crl)
    if args.config is None:
        print(f"revoked {args.cert}; give brokers the new list and reload them", file=sys.stderr)
        return 0
    try:
        broker = load_mesh_config(args.config).broker
        applied = apply_revocation(broker, name=common_name(cert), ca_dir=Path(args.ca))
    except (ConfigError, RevocationError, PkiError, OSError) as exc:
        print(f"faillite pki: revoked, but the broker was not told: {exc}", file=sys.stderr)
        return 1
    if applied.pid is None:
        print(f"revoked {args.cert}; the embedded broker applies it by itself", file=sys.stderr)
    else:
        ended = "; its live session ended" if applied.session_ended else ""
        print(f"revoked {args.cert}; broker (pid {applied.pid}) reloaded{ended}", file=sys.stderr)
    return 0


def cmd_signing_key(args: argparse.Namespace) -> int:
    from faillite.signing import SigningError, generate_key

    try:
        private, public = generate_key(Path(args.out), args.name, overwrite=args.force)
    except (SigningError, OSError) as exc:
        return _failed(exc)
    return _done(private, public)
