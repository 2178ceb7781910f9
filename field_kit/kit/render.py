"""``faillite kit render``: a kit description into one folder per node, laid out like the node's
root file system (``cp -a build/orin1/etc /`` puts everything in place).

Per node: ``etc/faillite/mesh.yaml`` (its own broker and liveness settings), the secrets of the
identities it runs and nothing else, the kit CA's certificate, the coordinators' public signing
key (the private one on coordinator nodes only), on the broker node the broker's certificate,
the password hashes and the broker's own config (Mosquitto with TLS, per-identity ACL and the
login firewall, or the embedded broker), systemd units for its roles, and a README for the
person at that board.

Keys, certificates and secrets are made once, in ``<out>/_provisioning/`` (the CA key and the
operators' secrets stay there, never in a node folder), and reused by every later render:
rendering is deterministic, the same kit giving the same bytes, keys included, until
``--rotate`` makes new ones.
"""

from __future__ import annotations

import ipaddress
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final

import yaml

from broker.mosquitto import write_mosquitto_config
from faillite import pki
from faillite.accounts import add_account, secret_path
from faillite.config import (
    BridgeConfig,
    BrokerAddress,
    BrokerConfig,
    TlsConfig,
    TlsServerConfig,
    packaged_config,
)
from faillite.identity import AclScope, Identity
from faillite.signing import generate_key
from faillite.topics import Role
from field_kit.kit.hardening import RESTART, START_LIMITS, Sandbox, directives, is_local_device
from field_kit.kit.model import Kit, Node, UplinkSpec
from field_kit.kit.owners import MOSQUITTO_STATE, ROLE_USERS, ownership, users

ETC: Final = PurePosixPath("/etc/faillite")
VAR: Final = PurePosixPath("/var/lib/faillite")
VENV: Final = PurePosixPath("/opt/faillite/venv")


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a node's files live: under ``/`` on a deployed node, or under its own folder when
    a kit runs in place on one machine (tests, rehearsals)."""

    root: PurePosixPath = field(default_factory=lambda: PurePosixPath("/"))

    def under(self, path: PurePosixPath) -> PurePosixPath:
        return self.root / str(path).lstrip("/")

    @property
    def etc(self) -> PurePosixPath:
        return self.under(ETC)

    @property
    def var(self) -> PurePosixPath:
        return self.under(VAR)

    @property
    def venv(self) -> PurePosixPath:
        return self.under(VENV)


DEPLOYED: Final = Layout()
# systemd's watchdog of a FailLite role (Type=notify): a role pings while its loops make
# progress (faillite.sdnotify), so one that hung without exiting is killed and restarted.
WATCHDOG_SEC: Final = 30
SECRET_MODE: Final = 0o600
OPERATOR: Final = "_operator"  # <out>/_operator/mesh.yaml: the operator's laptop's config
RELEASE_KEY: Final = "release"  # _provisioning/release/release.{key,pub}; etc/faillite/release.pub


@dataclass(frozen=True, slots=True)
class Provisioning:
    """The kit's keys, made once: CA, broker certificate, accounts, signing key."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca"

    @property
    def passwd(self) -> Path:
        return self.root / "accounts" / "passwd"

    @property
    def secrets(self) -> Path:
        return self.root / "accounts" / "secrets"

    @property
    def signing(self) -> Path:
        return self.root / "signing"

    @property
    def release(self) -> Path:
        """The release key: signs the kit's bundles; its public half is on every node."""
        return self.root / "release"


def identities(kit: Kit, node: Node) -> list[Identity]:
    """The identities whose processes run on ``node``."""
    out: list[Identity] = []
    if "coordinator" in node.roles:
        out.append(Identity(kit.kit, Role.COORDINATOR, node.id))
    if "worker" in node.roles:
        out.append(Identity(kit.kit, Role.WORKER, node.id))
    out += [Identity(kit.kit, Role.SENSOR, c.id) for c in kit.cameras if c.node == node.id]
    if node.id in kit.broker.fallback_nodes:
        out.append(Identity(kit.kit, Role.BRIDGE, node.id))  # its bridge to broker.node
    if kit.uplink is not None and kit.uplink.node == node.id:
        out.append(Identity(kit.kit, Role.UPLINK, kit.uplink.id))
    return out


def all_identities(kit: Kit) -> list[Identity]:
    observers = [Identity(kit.kit, Role.OBSERVER, o) for o in kit.observers]
    return [i for n in kit.nodes for i in identities(kit, n)] + observers


def provision(kit: Kit, prov: Provisioning, *, rotate: bool = False) -> None:
    """Make what is missing (everything with ``rotate``)."""
    hosts = [kit.node(b).host for b in kit.broker.nodes]
    if rotate or not (prov.ca / pki.CA_CERT).exists():
        pki.init_ca(prov.ca, common_name=f"FailLite kit {kit.kit} CA", overwrite=True)
        # One certificate for every broker of the kit: clients check the address they dial.
        pki.issue_server(prov.ca, "broker", hosts, overwrite=True)
    if rotate or not (prov.signing / "signing.key").exists():
        prov.signing.mkdir(parents=True, exist_ok=True)
        generate_key(prov.signing, overwrite=True)
    if rotate or not (prov.release / f"{RELEASE_KEY}.key").exists():
        prov.release.mkdir(parents=True, exist_ok=True)
        generate_key(prov.release, RELEASE_KEY, overwrite=True)
    for identity in all_identities(kit):
        if rotate or not secret_path(prov.secrets, identity).exists():
            add_account(prov.passwd, prov.secrets, identity, replace=True)


def _copy(src: Path, dst: Path, mode: int = 0o644) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    dst.chmod(mode)


def _local(folder: Path, path: PurePosixPath) -> Path:
    """Where the file that lives at ``path`` on the node goes in its folder."""
    return folder / str(path).lstrip("/")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _worker(kit: Kit, node: Node, lay: Layout) -> dict[str, Any]:
    backend: dict[str, Any]
    if node.accelerator == "tensorrt":
        backend = {"type": "tensorrt", "engines_dir": str(lay.var / "engines")}
        if node.tensorrt_major is not None:
            backend["expect_major"] = node.tensorrt_major
    elif node.accelerator == "cuda":
        backend = {
            "type": "onnxruntime",
            "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
        }
    else:
        backend = {"type": "onnxruntime", "providers": ["CPUExecutionProvider"]}
    doc = {
        "id": node.id,
        "device_class": node.device_class,
        "memory_mb": node.gpu_memory_mb or node.memory_mb,
        "disk_mb": node.disk_mb,
        "failure_domain": node.failure_domain,
        "heartbeat_interval_s": kit.links[node.link].heartbeat_interval_s,
        "backend": backend,
    }
    if node.accelerator != "none":
        # A GPU runtime that does not run here (a JetPack that does not match): serve on the
        # CPU, slower, rather than not at all; the worker says so in its log.
        doc["fallback_backend"] = {"type": "onnxruntime", "providers": ["CPUExecutionProvider"]}
    return doc


def listen_host(node: Node) -> str:
    return node.host if _is_address(node.host) else "0.0.0.0"


def mesh_document(kit: Kit, node: Node, lay: Layout = DEPLOYED) -> dict[str, Any]:
    """The mesh config ``node`` runs with (its link's liveness, its own keys' paths)."""
    broker_node = kit.node(kit.broker.node)
    tls: dict[str, Any] = {"ca_certs": str(lay.etc / "tls" / pki.CA_CERT)}
    broker: dict[str, Any] = {
        "host": broker_node.host,
        "port": kit.broker.port,
        "keepalive_s": kit.links[node.link].keepalive_s,
        "secrets_dir": str(lay.etc / "secrets"),
    }
    if kit.broker.fallback_nodes:
        broker["fallbacks"] = [
            {"host": kit.node(b).host, "port": kit.broker.port} for b in kit.broker.fallback_nodes
        ]
    if node.id == broker_node.id:
        # Its own address where the kit names one (allowed off loopback: every client has
        # its own account), every address where the kit names it by a host name.
        broker["host"] = listen_host(node)
    if node.id in kit.broker.nodes:
        broker["password_file"] = str(lay.etc / "broker" / "passwd")
        tls["server"] = {
            "certfile": str(lay.etc / "tls" / "broker.crt"),
            "keyfile": str(lay.etc / "tls" / "broker.key"),
        }
    broker["tls"] = tls
    signing: dict[str, Any] = {"public_key": str(lay.etc / "signing" / "signing.pub")}
    if "coordinator" in node.roles:
        signing["private_key"] = str(lay.etc / "signing" / "signing.key")
    doc: dict[str, Any] = {
        "mesh": kit.kit,
        "catalog": "catalog.yaml",
        "models_dir": str(lay.var / "models"),
        "broker": broker,
        "sensors": [
            {"id": c.id, "source": c.source, "fps": c.fps, "width": c.width, "height": c.height}
            for c in kit.cameras
        ],
        "apps": [
            {
                "id": a.id,
                "sensor": a.camera,
                "family": a.family,
                "critical": a.critical,
                "hot": a.hot,
                "slo_ms": a.slo_ms,
            }
            for a in kit.apps
        ],
        "workers": [_worker(kit, n, lay) for n in kit.with_role("worker")],
        "coordinator": {
            "type": "planner",
            "ids": [n.id for n in kit.with_role("coordinator")],
            "signing": signing,
        },
    }
    if kit.uplink is not None:
        # On every node, like the rest of the mesh: the broker's ACL follows its ``down``.
        doc["uplink"] = _uplink(kit.uplink, lay)
    return doc


def operator_document(kit: Kit, prov: Provisioning) -> dict[str, Any]:
    """The mesh config of the operator's laptop (``faillite watch``, ``faillite kit check``):
    the kit's broker and CA, the observers' secrets where ``render`` keeps them, no keys."""
    plain = next((n for n in kit.nodes if not {"broker", "coordinator"} & set(n.roles)), None)
    doc = mesh_document(kit, plain or kit.nodes[0], DEPLOYED)
    link = "wifi" if "wifi" in kit.links else next(iter(kit.links))
    broker = doc["broker"]
    broker["host"] = kit.node(kit.broker.node).host
    broker["keepalive_s"] = kit.links[link].keepalive_s
    broker["secrets_dir"] = str(prov.secrets.resolve())
    broker.pop("password_file", None)
    broker["tls"] = {"ca_certs": str((prov.ca / pki.CA_CERT).resolve())}
    doc["catalog"] = str(packaged_config("catalog.yaml"))
    doc["models_dir"] = str((prov.root / "models").resolve())
    doc["coordinator"]["signing"] = {"public_key": str((prov.signing / "signing.pub").resolve())}
    return doc


def _uplink(u: UplinkSpec, lay: Layout) -> dict[str, Any]:
    where = lay.etc / "uplink"
    upstream: dict[str, Any] = {"host": u.host, "port": u.port}
    if u.username is not None:
        upstream["username"] = u.username
    if u.secret_file is not None:
        upstream["password_file"] = str(where / "rear.secret")
    if u.ca_certs is not None:
        upstream["tls"] = {"ca_certs": str(where / "rear-ca.crt")}
    return {
        "id": u.id,
        "upstream": upstream,
        "prefix": u.prefix,
        "up": list(u.up),
        "down": list(u.down),
        "max_queued_messages": u.max_queued_messages,
        "max_queued_bytes": u.max_queued_bytes,
    }


def _unit(
    description: str,
    exec_start: str,
    *,
    after: list[str],
    user: str | None,
    sandbox: Sandbox,
    writable: Sequence[str],
    notify: bool = True,
    exec_start_pre: str | None = None,
    runtime: str | None = None,
) -> str:
    # A FailLite role tells systemd when it is ready (units ordered After= it wait for that)
    # and pings the watchdog while its loops make progress; one that exits, or hangs and stops
    # pinging, is restarted. The mesh's own heartbeats and the coordinator judge liveness
    # between nodes: they fail apps over, systemd brings the process back.
    service = ["Type=notify", "NotifyAccess=main", f"WatchdogSec={WATCHDOG_SEC}"] if notify else []
    lines = [
        "[Unit]",
        f"Description={description}",
        "Wants=network-online.target",
        f"After={' '.join(['network-online.target', *after])}",
        *START_LIMITS,
        "",
        "[Service]",
        *service,
        *([f"User={user}"] if user else []),
        "Environment=FAILLITE_LOG_FORMAT=json",
        # Its handover key (faillite.handover): where a --replace on this board (root, or
        # the role's user) finds it; systemd makes it (0700, the role's) and clears it.
        *(
            [
                f"RuntimeDirectory={runtime}",
                "RuntimeDirectoryMode=0700",
                f"Environment=FAILLITE_RUNTIME_DIR=/run/{runtime}",
            ]
            if runtime
            else []
        ),
        # "+": this one command runs outside the sandbox (the login firewall needs root).
        *([f"ExecStartPre=+{exec_start_pre}"] if exec_start_pre else []),
        f"ExecStart={exec_start}",
        *RESTART,
        *directives(sandbox, writable),
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def units(kit: Kit, node: Node, lay: Layout = DEPLOYED) -> dict[str, str]:
    """systemd units of ``node``'s roles: file name -> text."""
    cfg = lay.etc / "mesh.yaml"
    fl = lay.venv / "bin" / "faillite"
    local_broker = ["faillite-broker.service"] if "broker" in node.roles else []
    state = [str(lay.var)]  # models, TensorRT engines: all a role writes
    out: dict[str, str] = {}
    if "broker" in node.roles:
        if kit.broker.kind == "mosquitto":
            conf = lay.etc / "broker"
            out["faillite-broker.service"] = _unit(
                f"FailLite kit {kit.kit}: Mosquitto broker",
                f"/usr/sbin/mosquitto -c {conf / 'mosquitto.conf'}",
                after=[],
                user=None,  # Mosquitto drops to its own user (mosquitto.conf)
                notify=False,  # no FailLite role: a plain service, no watchdog of ours
                exec_start_pre=f"/usr/sbin/nft -f {conf / 'nftables.conf'}",
                sandbox="mosquitto",
                writable=[str(lay.under(PurePosixPath("/" + MOSQUITTO_STATE)))],
            )
        else:
            out["faillite-broker.service"] = _unit(
                f"FailLite kit {kit.kit}: embedded broker",
                f"{fl} broker --config {cfg}",
                after=[],
                user=ROLE_USERS["broker"],
                sandbox="role",
                writable=state,
            )
    coordinators = [n.id for n in kit.with_role("coordinator")]
    if "coordinator" in node.roles:
        rank = coordinators.index(node.id)
        standby = f" --standby --rank {rank}" if rank else ""
        out["faillite-coordinator.service"] = _unit(
            f"FailLite kit {kit.kit}: coordinator {node.id}",
            f"{fl} coordinator --config {cfg} --id {node.id}{standby}",
            after=local_broker,
            user=ROLE_USERS["coordinator"],
            sandbox="role",
            writable=state,
        )
    if "worker" in node.roles:
        out["faillite-worker.service"] = _unit(
            f"FailLite kit {kit.kit}: worker {node.id}",
            f"{fl} worker --config {cfg} --id {node.id}",
            after=local_broker,
            user=ROLE_USERS["worker"],
            sandbox="role" if node.accelerator == "none" else "gpu_worker",
            writable=state,
            runtime="faillite-worker",
        )
    if kit.uplink is not None and kit.uplink.node == node.id:
        out["faillite-uplink.service"] = _unit(
            f"FailLite kit {kit.kit}: uplink to the rear site",
            f"{fl} uplink --config {cfg}",
            after=local_broker,
            user=ROLE_USERS["uplink"],
            sandbox="role",
            writable=state,
        )
    for cam in (c for c in kit.cameras if c.node == node.id):
        out[f"faillite-sensor-{cam.id}.service"] = _unit(
            f"FailLite kit {kit.kit}: camera {cam.id}",
            f"{fl} sensor --config {cfg} --id {cam.id}",
            after=local_broker,
            user=ROLE_USERS["sensor"],
            sandbox="camera_device" if is_local_device(cam.source) else "role",
            writable=state,
            runtime=f"faillite-sensor-{cam.id}",
        )
    return out


def _readme(
    kit: Kit, node: Node, unit_names: list[str], secrets: list[str], mine: list[Identity]
) -> str:
    made = users(kit, node)
    owners = [
        f"    chown {owner}: /{rel} && chmod {mode:o} /{rel}"
        for rel, (owner, mode) in sorted(ownership(kit, node, mine).items())
    ]
    return "\n".join(
        [
            f"# Node {node.id} of kit {kit.kit}",
            "",
            f"{node.device_class} ({node.arch}, accelerator {node.accelerator}) at {node.host};"
            f" roles: {', '.join(node.roles)}.",
            "",
            "Install with this node's bundle (`faillite kit bundle`): its `install.py` does what"
            " follows, after checking the bundle's signature. By hand, as root:",
            "",
            "    cp -a etc var /",
            *(
                f"    useradd --system --user-group --no-create-home --home-dir /nonexistent"
                f" --shell /usr/sbin/nologin{' --groups ' + ','.join(g) if g else ''} {u}"
                for u, g in sorted(made.items())
            ),
            *owners,
            "    systemctl daemon-reload",
            f"    systemctl enable --now {' '.join(unit_names)}",
            "",
            "What is here: `etc/faillite/mesh.yaml` (this node's config), the kit CA's certificate,"
            " the coordinators' public signing key, and the secrets of this node's own identities"
            f" ({', '.join(secrets) or 'none'}); nothing of any other node. Each role runs as its"
            " own user and reads its own secrets only.",
            "",
        ]
    )


def render(kit: Kit, out: Path, *, rotate: bool = False, in_place: bool = False) -> list[Path]:
    """Render every node of ``kit`` into ``out/<node>/``; returns the node folders.

    ``in_place``: each node's paths point into its own folder (``out/<node>/etc/faillite/...``),
    so the kit runs from ``out`` on one machine as rendered (a rehearsal, the tests)."""
    prov = Provisioning(out / "_provisioning")
    provision(kit, prov, rotate=rotate)
    down = kit.uplink.down if kit.uplink is not None else ()
    scope = AclScope.of(
        (n.id for n in kit.with_role("worker")),
        (a.id for a in kit.apps),
        down,
        ((a.camera, a.id) for a in kit.apps),
    )
    folders: list[Path] = []
    operator = prov.root.parent / OPERATOR
    operator.mkdir(parents=True, exist_ok=True)
    (operator / "mesh.yaml").write_text(
        yaml.safe_dump(operator_document(kit, prov), sort_keys=False)
    )
    for node in kit.nodes:
        folder = out / node.id
        # What render wrote before goes; what stage put under var/ (the models) stays.
        if (folder / "etc").exists():
            shutil.rmtree(folder / "etc")
        (folder / "README.md").unlink(missing_ok=True)
        lay = Layout(PurePosixPath(folder.resolve())) if in_place else DEPLOYED
        etc = _local(folder, ETC)
        etc.mkdir(parents=True)
        doc = mesh_document(kit, node, lay)
        (etc / "mesh.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        _copy(packaged_config("catalog.yaml"), etc / "catalog.yaml")
        _copy(prov.ca / pki.CA_CERT, etc / "tls" / pki.CA_CERT)
        _copy(prov.signing / "signing.pub", etc / "signing" / "signing.pub")
        # What the node's next bundle must be signed with (an upgrade by anyone else is refused).
        _copy(prov.release / f"{RELEASE_KEY}.pub", etc / f"{RELEASE_KEY}.pub")
        if "coordinator" in node.roles:
            _copy(prov.signing / "signing.key", etc / "signing" / "signing.key", SECRET_MODE)
        mine = identities(kit, node)
        for identity in mine:
            src = secret_path(prov.secrets, identity)
            _copy(src, etc / "secrets" / src.name, SECRET_MODE)
        up = kit.uplink
        if up is not None and up.node == node.id:  # the rear site's files, on this node only
            if up.ca_certs is not None:
                _copy(up.ca_certs, etc / "uplink" / "rear-ca.crt")
            if up.secret_file is not None:
                _copy(up.secret_file, etc / "uplink" / "rear.secret", SECRET_MODE)
        if "broker" in node.roles:
            _copy(prov.ca / "broker.crt", etc / "tls" / "broker.crt")
            _copy(prov.ca / "broker.key", etc / "tls" / "broker.key", SECRET_MODE)
            _copy(prov.passwd, etc / "broker" / "passwd", SECRET_MODE)
            if kit.broker.kind == "mosquitto":
                _mosquitto(kit, node, doc, etc / "broker", scope, lay, prov.secrets)
        names = units(kit, node, lay)
        for name, text in names.items():
            unit = _local(folder, PurePosixPath("/etc/systemd/system") / name)
            unit.parent.mkdir(parents=True, exist_ok=True)
            unit.write_text(text)
        # The modes here; the owners once installed (install.py makes the users).
        for rel, (_owner, mode) in ownership(kit, node, mine).items():
            if (folder / rel).exists():
                (folder / rel).chmod(mode)
        secrets = [i.name for i in mine]
        (folder / "README.md").write_text(_readme(kit, node, sorted(names), secrets, mine))
        folders.append(folder)
    return folders


def _mosquitto(
    kit: Kit,
    node: Node,
    doc: dict[str, Any],
    where: Path,
    scope: AclScope,
    lay: Layout,
    secrets: Path,
) -> None:
    b = doc["broker"]
    server = b["tls"]["server"]
    primary = kit.node(kit.broker.node)
    bridge = None
    if node.id in kit.broker.fallback_nodes:  # bridged to the kit's first broker
        to = (BrokerAddress(host=primary.host, port=kit.broker.port),)
        bridge = BridgeConfig(id=node.id, to=to)
    cfg = BrokerConfig(
        host=listen_host(node),
        port=b["port"],
        keepalive_s=b["keepalive_s"],
        secrets_dir=secrets,  # the bridge's secret goes into its mosquitto.conf (0600)
        bridge=bridge,
        password_file=Path(b["password_file"]),
        tls=TlsConfig(
            ca_certs=Path(b["tls"]["ca_certs"]),
            server=TlsServerConfig(
                certfile=Path(server["certfile"]), keyfile=Path(server["keyfile"])
            ),
        ),
    )
    write_mosquitto_config(
        cfg,
        kit.kit,
        where,
        install_dir=Path(str(lay.etc / "broker")),
        persistence_dir=Path(str(lay.under(PurePosixPath("/" + MOSQUITTO_STATE)))),
        run_as="mosquitto",
        scope=scope,
        identities=all_identities(kit),
    )
