"""A kit and its rear site on one machine, for the uplink's test and figures.

Two network namespaces on one LAN (:class:`~field_kit.drill.netns.Lan`): ``kit`` runs the kit's
Mosquitto (accounts and the generated ACL) and ``faillite uplink``; ``rear`` runs the rear
site's Mosquitto (its own accounts). The link between them is WiFi-like (``Lan.wifi``: netem,
or the user-space link on the rear node) and can be cut and healed. Small clients run inside
the namespaces as subprocesses of this module (``python -m field_kit.uplink_rig``): ``feed``
(results and worker statuses into the kit broker), ``record`` (every message under a filter,
one JSON line each, with its arrival time), ``snapshot`` (the retained messages a new
subscriber gets) and ``publish``. Needs root and Mosquitto.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import yaml

from broker.mosquitto import write_mosquitto_config
from faillite import pki
from faillite.accounts import add_account, secret_path
from faillite.compat import python_module
from faillite.config import BrokerConfig, TlsConfig
from faillite.identity import AclScope, Identity
from faillite.mqtt import MeshClient, Raw
from faillite.topics import Role
from field_kit.brokers import mosquitto_binary
from field_kit.drill.netns import Impairment, Lan

MESH: Final = "kit1"
REAR: Final = "rearsite"  # the rear site's account names look like a mesh's: rearsite.admin.x
KIT_IP: Final = "10.77.0.1"
REAR_IP: Final = "10.77.0.2"
PORT: Final = 1883
WORKERS: Final = ("w1", "w2")
APPS: Final = ("a1", "a2")
START_TIMEOUT_S: Final = 15.0


@dataclass
class RigSettings:
    impairment: Impairment = field(default_factory=Impairment)
    max_queued_messages: int = 50
    max_queued_bytes: int = 1024 * 1024
    max_inflight: int = 8
    down: tuple[str, ...] = ("apps/+/tasking",)
    max_down_bytes: int = 1024
    status_interval_s: float = 1.0
    rear_tls: bool = True  # the rear broker on TLS with the rear site's own CA


class RearRig:
    """The two brokers, the link and the uplink; :meth:`close` removes every process,
    namespace and nft table it made (the nft table lives in the rear namespace)."""

    def __init__(self, workdir: Path, settings: RigSettings | None = None) -> None:
        self.dir = workdir
        self.s = settings or RigSettings()
        self.lan = Lan(f"flu{uuid.uuid4().hex[:5]}", {"kit": KIT_IP, "rear": REAR_IP})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.link_mode = ""
        self.kit_secrets = workdir / "kit" / "secrets"
        self.rear_secrets = workdir / "rear" / "secrets"
        self.uplink_identity = Identity(MESH, Role.UPLINK, "rear")
        self.rear_ca = workdir / "rear" / "ca"

    # -- set-up --------------------------------------------------------------------------

    def start(self) -> RearRig:
        try:
            self.lan.create()
            self._kit_broker()
            self._rear_broker()
            self.link_mode = self.lan.wifi(self.s.impairment, broker="rear", port=PORT)
            self.start_uplink()
        except BaseException:
            self.close()
            raise
        return self

    def _kit_broker(self) -> None:
        d = self.dir / "kit"
        passwd = d / "passwd"
        ids = [
            self.uplink_identity,
            Identity(MESH, Role.ADMIN, "feed"),
            Identity(MESH, Role.ADMIN, "watch"),
        ]
        for i in ids:
            add_account(passwd, self.kit_secrets, i, replace=True)
        cfg = BrokerConfig(host=KIT_IP, port=PORT, password_file=passwd, keepalive_s=5)
        conf = write_mosquitto_config(
            cfg,
            MESH,
            d / "broker",
            run_as=getpass.getuser() if os.geteuid() == 0 else None,
            scope=AclScope.of(WORKERS, APPS, self.s.down),
            identities=ids,
        )
        self._broker("kit", conf)

    def _rear_broker(self) -> None:
        d = self.dir / "rear"
        passwd = d / "passwd"
        for who in ("kit1", "ops"):
            add_account(passwd, self.rear_secrets, Identity(REAR, Role.ADMIN, who), replace=True)
        tls: list[str] = []
        if self.s.rear_tls:  # the rear site's CA, not the kit's
            pki.init_ca(self.rear_ca, common_name="rear site CA", overwrite=True)
            server = pki.issue_server(self.rear_ca, "rear", [REAR_IP], overwrite=True)
            tls = [
                f"cafile {(self.rear_ca / pki.CA_CERT).absolute()}",
                f"certfile {server.cert.absolute()}",
                f"keyfile {server.key.absolute()}",
                "tls_version tlsv1.2",
            ]
        conf = d / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    "# The rear site's broker: its own accounts, nothing of the kit's.",
                    *([f"user {getpass.getuser()}"] if os.geteuid() == 0 else []),
                    "per_listener_settings false",
                    f"listener {PORT} {REAR_IP}",
                    *tls,
                    "set_tcp_nodelay true",
                    "allow_anonymous false",
                    f"password_file {passwd.absolute()}",
                    "persistence false",
                    "max_queued_messages 100000",
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",
                    "connection_messages true",
                    "",
                ]
            )
        )
        self._broker("rear", conf)

    def _broker(self, node: str, conf: Path) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto not installed (apt-get install mosquitto)")
        log_path = self.dir / f"{node}-broker.log"
        self._spawn(f"{node}-broker", node, [binary, "-c", str(conf)], log_path)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            if " running" in text:
                return
            if self.procs[f"{node}-broker"].poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{node} broker did not start:\n{log_path.read_text()[-2000:]}")

    def _spawn(self, name: str, node: str, argv: list[str], log_path: Path) -> None:
        with log_path.open("ab") as out:
            self.procs[name] = subprocess.Popen(
                self.lan.wrap(node, argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "FAILLITE_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"},
            )

    def uplink_config(self) -> Path:
        path = self.dir / "kit" / "mesh.yaml"
        s = self.s
        doc: dict[str, Any] = {
            "mesh": MESH,
            "broker": {
                "host": KIT_IP,
                "port": PORT,
                "secrets_dir": str(self.kit_secrets),
                "keepalive_s": 5,
            },
            "uplink": {
                "id": self.uplink_identity.id,
                "upstream": {
                    "host": REAR_IP,
                    "port": PORT,
                    "username": f"{REAR}.admin.kit1",
                    "password_file": str(
                        secret_path(self.rear_secrets, Identity(REAR, Role.ADMIN, "kit1"))
                    ),
                    "keepalive_s": 5,
                    # Quick to notice the cut link and to come back: a test, not a WAN.
                    "probe_after_s": 1.0,
                    "silent_after_s": 2.0,
                    "reconnect_min_s": 0.2,
                    "reconnect_max_s": 1.0,
                    **self._rear_tls(),
                },
                "max_queued_messages": s.max_queued_messages,
                "max_queued_bytes": s.max_queued_bytes,
                "max_inflight": s.max_inflight,
                "down": list(s.down),
                "max_down_bytes": s.max_down_bytes,
                "status_interval_s": s.status_interval_s,
            },
        }
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def _rear_tls(self) -> dict[str, Any]:
        if not self.s.rear_tls:
            return {}
        return {"tls": {"ca_certs": str((self.rear_ca / pki.CA_CERT).absolute())}}

    def start_uplink(self) -> None:
        argv = [*python_module("faillite.uplink_cli")]
        argv += ["--config", str(self.uplink_config()), "--status-every", "1"]
        self._spawn("uplink", "kit", argv, self.dir / "uplink.log")

    def uplink_log(self) -> str:
        return (self.dir / "uplink.log").read_text(errors="replace")

    # -- the clients in the namespaces -----------------------------------------------------

    def _client_argv(self, node: str, who: str) -> list[str]:
        tls: list[str] = []
        if node == "kit":
            host, secrets, name = KIT_IP, self.kit_secrets, Identity(MESH, Role.ADMIN, who).name
        else:
            host, secrets, name = REAR_IP, self.rear_secrets, Identity(REAR, Role.ADMIN, who).name
            if self.s.rear_tls:
                tls = ["--ca", str((self.rear_ca / pki.CA_CERT).absolute())]
        argv = [*python_module("field_kit.uplink_rig"), "--host", host]
        argv += ["--port", str(PORT), "--secrets-dir", str(secrets), "--name", name]
        return [*argv, *tls]

    def run_client(self, node: str, who: str, *args: str, timeout: float = 60) -> str:
        """Run one short client command on ``node``; its stdout."""
        argv = self.lan.wrap(node, [*self._client_argv(node, who), *args])
        out = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{args[0]} on {node} failed: {out.stderr.decode()[-2000:]}")
        return out.stdout.decode()

    def run_client_as_uplink(self, *args: str) -> str:
        """A client on the kit broker under the uplink's probe name: its rights, not its
        session (the uplink stays connected)."""
        argv = [*python_module("field_kit.uplink_rig"), "--host", KIT_IP,
                "--port", str(PORT), "--secrets-dir", str(self.kit_secrets),
                "--name", self.uplink_identity.probe_name, *args]  # fmt: skip
        out = subprocess.run(self.lan.wrap("kit", argv), capture_output=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"{args[0]} as the uplink failed: {out.stderr.decode()[-2000:]}")
        return out.stdout.decode()

    def record(self, node: str, who: str, topic_filter: str) -> Path:
        """A recorder on ``node`` of everything under ``topic_filter``, until :meth:`close`."""
        path = self.dir / f"record-{node}-{who}.jsonl"
        argv = [*self._client_argv(node, who), "record", "--filter", topic_filter]
        self._spawn(
            f"record-{node}-{who}", node, [*argv, "--out", str(path)], path.with_suffix(".log")
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not path.exists() and time.monotonic() < deadline:  # made once subscribed
            time.sleep(0.05)
        return path

    def feed(self, *args: str) -> str:
        return self.run_client("kit", "feed", "feed", *args)

    def snapshot(self, topic_filter: str) -> list[dict[str, Any]]:
        out = self.run_client("rear", "ops", "snapshot", "--filter", topic_filter)
        return [orjson.loads(line) for line in out.splitlines() if line.strip()]

    def publish_rear(self, topic: str, payload: str, *, retain: bool = False) -> None:
        extra = ["--retain"] if retain else []
        self.run_client("rear", "ops", "publish", "--topic", topic, "--payload", payload, *extra)

    # -- the link ------------------------------------------------------------------------

    def cut(self) -> None:
        self.lan.cut("kit")

    def heal(self) -> None:
        self.lan.heal("kit")

    # -- tear-down -----------------------------------------------------------------------

    def close(self) -> None:
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(8 if name == "uplink" else 5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
        self.lan.destroy()

    def __enter__(self) -> RearRig:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()


def read_records(path: Path) -> list[dict[str, Any]]:
    """The lines a recorder wrote so far (a partly written last line is left out)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            out.append(orjson.loads(line))
    return out


# -- the client side: runs inside a namespace --------------------------------------------------


def _client(args: argparse.Namespace) -> MeshClient:
    cfg = BrokerConfig(
        host=args.host,
        port=args.port,
        secrets_dir=Path(args.secrets_dir),
        tls=TlsConfig(ca_certs=Path(args.ca)) if args.ca else None,
        keepalive_s=5,
        # The recorder and feeder sit beside their broker: any silence is the broker's.
        probe_after_s=5.0,
        silent_after_s=10.0,
    )
    return MeshClient(args.name, cfg)


def _feed(args: argparse.Namespace) -> None:
    c = _client(args)
    c.start(connect_timeout=10)
    pad = "p" * args.pad
    for worker, state in (s.split("=", 1) for s in args.status):
        payload = orjson.dumps({"state": state, "ts": time.time(), "tag": args.tag})
        c.publish(f"faillite/{MESH}/workers/{worker}/status", payload, qos=1, retain=True)
    period = 1.0 / args.rate
    start = time.monotonic()
    for i in range(args.results):
        delay = start + i * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        payload = orjson.dumps({"seq": i, "ts": time.time(), "tag": args.tag, "pad": pad})
        c.publish(f"faillite/{MESH}/apps/{args.app}/results/w1", payload, qos=1)
    for _ in range(args.events):
        c.publish(
            f"faillite/{MESH}/events/coordinator/main", orjson.dumps({"tag": args.tag}), qos=1
        )
    c.stop()


def _record(args: argparse.Namespace) -> None:
    out = Path(args.out)
    f = out.with_suffix(".tmp").open("ab", buffering=0)

    def on(raw: Raw) -> None:
        line = {"t": time.time(), "topic": raw.topic, "retain": raw.retain}
        line["payload"] = raw.payload.decode(errors="replace")
        f.write(orjson.dumps(line) + b"\n")

    c = _client(args)
    c.subscribe(args.filter, on, qos=1)
    c.start(connect_timeout=10)
    time.sleep(0.3)  # the SUBACK
    f.close()
    out.with_suffix(".tmp").rename(out)
    f = out.open("ab", buffering=0)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(1)


def _snapshot(args: argparse.Namespace) -> None:
    got: list[Raw] = []
    c = _client(args)
    c.subscribe(args.filter, got.append, qos=1)
    c.start(connect_timeout=10)
    time.sleep(args.wait)
    c.stop()
    for raw in got:
        if raw.retain:
            line = {"topic": raw.topic, "payload": raw.payload.decode(errors="replace")}
            sys.stdout.write(orjson.dumps(line).decode() + "\n")


def _publish(args: argparse.Namespace) -> None:
    c = _client(args)
    c.start(connect_timeout=10)
    c.publish(args.topic, args.payload.encode(), qos=1, retain=args.retain)
    c.stop()


def _terminate(*_args: object) -> None:
    raise KeyboardInterrupt  # a recorder's stop: leave quietly


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    p = argparse.ArgumentParser(prog="python -m field_kit.uplink_rig")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--secrets-dir", required=True)
    p.add_argument("--name", required=True, help="the account (and client id)")
    p.add_argument("--ca", help="the broker's CA certificate: connect over TLS")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("feed")
    f.add_argument("--results", type=int, default=0)
    f.add_argument("--rate", type=float, default=50.0)
    f.add_argument("--app", default="a1")
    f.add_argument("--tag", default="")
    f.add_argument("--pad", type=int, default=100, help="bytes of padding per result")
    f.add_argument("--status", action="append", default=[], help="WORKER=STATE (retained)")
    f.add_argument("--events", type=int, default=0)
    r = sub.add_parser("record")
    r.add_argument("--filter", required=True)
    r.add_argument("--out", required=True)
    s = sub.add_parser("snapshot")
    s.add_argument("--filter", required=True)
    s.add_argument("--wait", type=float, default=1.0)
    u = sub.add_parser("publish")
    u.add_argument("--topic", required=True)
    u.add_argument("--payload", required=True)
    u.add_argument("--retain", action="store_true")
    args = p.parse_args(argv)
    {"feed": _feed, "record": _record, "snapshot": _snapshot, "publish": _publish}[args.cmd](args)
    return 0


@contextlib.contextmanager
def rig(workdir: Path, settings: RigSettings | None = None) -> Iterator[RearRig]:
    r = RearRig(workdir, settings)
    with r:
        yield r


if __name__ == "__main__":
    sys.exit(main())
