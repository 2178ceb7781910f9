"""A device's login while 1000 idle connections without credentials flood the broker from
another address: figures side by side, flood and no flood, on both brokers.

Run (root for the Mosquitto part: a network namespace and its generated nftables rules)::

    python bench/flood.py [--sockets 1000] [--repeat 5] [--json FILE]

Embedded broker: it caps the connections one address holds before their CONNECT
(``MAX_UNADMITTED_PER_SOURCE``) and closes the rest at once; with TLS, from the accept, so
sockets that never finish their handshake count too (``broker/_tls_gate.py``). Mosquitto:
the firewall rules ``broker.mosquitto`` writes beside its config cap the connections one
address holds open
(``broker.max_connections_per_source``; its rate cap is lifted here, or the flood would take
minutes to build). The Aedes cluster (3 nodes on one Redis; flooded: node 0): each node caps
one address's sockets before admission the same way (``broker/cluster/aedes/node.mjs``). Each
figure is a device's CONNECT to CONNACK from 127.0.0.2, median of ``--repeat``.
"""

from __future__ import annotations

import argparse
import json
import resource
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from faillite import pki
from faillite.accounts import add_account
from faillite.config import BrokerConfig, TlsConfig, TlsServerConfig
from faillite.identity import Identity
from faillite.tls import client_context
from faillite.topics import Role
from field_kit.brokers import BrokerLauncher
from field_kit.guessing import Flood, firewall_problem, flooded_mosquitto, login

MESH = "bench"
CAM = Identity(MESH, Role.SENSOR, "cam1")


def _account(tmp: Path) -> tuple[Path, str]:
    pw = tmp / "passwd"
    add_account(pw, tmp / "secrets", CAM)
    return pw, (tmp / "secrets" / f"{CAM.name}.secret").read_text().strip()


def _timed_login(
    host: str, port: int, secret: str, tls: ssl.SSLContext | None = None
) -> tuple[int, float]:
    t = time.monotonic()
    rc = login(host, port, CAM.name, secret, source="127.0.0.2", tls=tls)
    return rc, (time.monotonic() - t) * 1000


def _tls(tmp: Path) -> tuple[TlsConfig, ssl.SSLContext]:
    """The broker's TLS (a CA of this run) and a device's context for it."""
    ca = tmp / "ca"
    pki.init_ca(ca)
    pki.issue_server(ca, "broker", ["127.0.0.1"])
    server = TlsServerConfig(certfile=ca / "broker.crt", keyfile=ca / "broker.key")
    return (
        TlsConfig(ca_certs=ca / pki.CA_CERT, server=server),
        client_context(TlsConfig(ca_certs=ca / pki.CA_CERT)),
    )


def embedded(tmp: Path, sockets: int, repeat: int, *, tls: bool = False) -> dict[str, Any]:
    """With ``tls``: the flood's sockets never start their handshake (each held in it)."""
    pw, secret = _account(tmp)
    server, device = _tls(tmp) if tls else (None, None)
    out: dict[str, Any] = {}
    with BrokerLauncher(tmp / "brokers") as launcher:
        ep = launcher.start("amqtt", BrokerConfig(password_file=pw, tls=server), mesh=MESH)
        for label, n in (("no flood", 0), (f"{sockets} idle sockets", sockets)):
            with Flood(ep.host, ep.port, n, source="127.0.0.1") as flood:
                time.sleep(0.5)
                runs = [_timed_login(ep.host, ep.port, secret, device) for _ in range(repeat)]
                out[label] = {
                    "held": flood.open_count(),
                    "device_rc": [rc for rc, _ in runs],
                    "login_ms_p50": round(statistics.median(ms for _, ms in runs), 1),
                }
    return out


def mosquitto(tmp: Path, sockets: int, repeat: int) -> dict[str, Any]:
    pw, secret = _account(tmp)
    # The per-source rate cap lifted (it would take the flood minutes to build up): the open
    # connection cap alone.
    cfg = BrokerConfig(
        password_file=pw, connects_per_source_s=10_000, connect_burst_per_source=100_000
    )
    out: dict[str, Any] = {}
    unguarded = cfg.max_connections + 50
    cases = (
        ("no flood", 0, True),
        (f"{sockets} idle sockets", sockets, True),
        (f"{unguarded}, no firewall", unguarded, False),  # what a host without the rules gets
    )
    for label, n, firewall in cases:
        runs = [
            flooded_mosquitto(
                cfg,
                MESH,
                tmp / f"m{n}-{i}",
                device=(CAM.name, secret),
                sockets=n,
                firewall=firewall,
            )
            for i in range(repeat)
        ]
        out[label] = {
            "held": max(r["held"] for r in runs),
            "device_rc": [r["device_rc"] for r in runs],
            "login_ms_p50": round(statistics.median(r["device_s"] for r in runs) * 1000, 1),
        }
    return out


def aedes(tmp: Path, sockets: int, repeat: int) -> dict[str, Any] | None:
    from broker.cluster import engine_problem, start_cluster

    if engine_problem("aedes") is not None:
        return None
    pw, secret = _account(tmp)
    out: dict[str, Any] = {}
    security = BrokerConfig(password_file=pw, secrets_dir=tmp / "secrets", login_delay_s=0.1)
    with start_cluster("aedes", tmp / "cluster", 3, security=security, mesh=MESH) as cluster:
        node = cluster.nodes[0]
        for label, n in (("no flood", 0), (f"{sockets} idle sockets", sockets)):
            with Flood(node.host, node.port, n, source="127.0.0.1") as flood:
                time.sleep(0.5)
                runs = [_timed_login(node.host, node.port, secret) for _ in range(repeat)]
                out[label] = {
                    "held": flood.open_count(),
                    "device_rc": [rc for rc, _ in runs],
                    "login_ms_p50": round(statistics.median(ms for _, ms in runs), 1),
                }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sockets", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * args.sockets + 256), hard))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        print("... embedded broker", file=sys.stderr, flush=True)
        results["embedded"] = embedded(Path(d) / "e", args.sockets, args.repeat)
        print("... embedded broker, TLS", file=sys.stderr, flush=True)
        results["embedded-tls"] = embedded(Path(d) / "t", args.sockets, args.repeat, tls=True)
        print("... Aedes cluster", file=sys.stderr, flush=True)
        if (cluster := aedes(Path(d) / "a", args.sockets, args.repeat)) is not None:
            results["aedes"] = cluster
        problem = firewall_problem()
        if problem is None:
            print("... Mosquitto in a namespace", file=sys.stderr, flush=True)
            results["mosquitto"] = mosquitto(Path(d) / "m", args.sockets, args.repeat)
        else:
            print(f"Mosquitto skipped: {problem}", file=sys.stderr)
    print(
        f"{'broker':<12} {'flood':<20} {'held open':>9} {'device CONNACK':>15} {'login ms p50':>13}"
    )
    for broker, rows in results.items():
        for label, r in rows.items():
            ok = "0" if all(rc == 0 for rc in r["device_rc"]) else str(r["device_rc"])
            print(f"{broker:<12} {label:<20} {r['held']:>9} {ok:>15} {r['login_ms_p50']:>13}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
