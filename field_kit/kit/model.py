"""``kit.yaml``: one description of a field kit, validated like every config (an unknown key is
rejected with its path), from which every node's files are rendered (:mod:`.render`)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from faillite.config import ConfigError, StrictModel, format_validation_error, load_yaml
from faillite.topics import check_id
from faillite.uplink_policy import DEFAULT_KINDS, Kind, down_problem

Id = Annotated[str, Field(min_length=1, max_length=64)]
Role = Literal["broker", "coordinator", "worker", "sensor"]


class LinkSettings(StrictModel):
    """Liveness settings for the nodes on one kind of link (a WiFi link needs more slack)."""

    heartbeat_interval_s: float = Field(gt=0, le=60)
    keepalive_s: int = Field(ge=1, le=3600)


def _default_links() -> dict[str, LinkSettings]:
    return {
        "lan": LinkSettings(heartbeat_interval_s=0.1, keepalive_s=3),
        "wifi": LinkSettings(heartbeat_interval_s=0.25, keepalive_s=5),
    }


class Node(StrictModel):
    id: Id
    host: str = Field(min_length=1, max_length=253)  # address or name the others reach it by
    arch: Literal["x86_64", "aarch64"]
    device_class: str = Field(min_length=1, max_length=64)  # a profile of the catalog
    accelerator: Literal["none", "cuda", "tensorrt"] = "none"
    memory_mb: float = Field(gt=0)
    gpu_memory_mb: float = Field(default=0, ge=0)
    disk_mb: float = Field(gt=0)  # the budget for model files
    failure_domain: str = Field(min_length=1, max_length=64)
    link: str = "wifi"
    roles: tuple[Role, ...] = Field(min_length=1)
    # The node's system Python, which its venv is made with: a Jetson's JetPack 6 has 3.10.
    python: Literal["3.10", "3.11", "3.12", "3.13"] | None = None
    # A Jetson's JetPack release: its TensorRT (what the worker expects to find) and Python.
    jetpack: Literal["6.0", "6.1", "6.2"] | None = None

    @model_validator(mode="after")
    def _target(self) -> Node:
        if self.jetpack is not None and not self.jetson:
            raise ValueError(f"node {self.id!r}: jetpack is for aarch64 nodes with a GPU")
        if self.jetson and self.python not in (None, "3.10"):
            raise ValueError(f"node {self.id!r}: JetPack 6's system Python is 3.10")
        return self

    @property
    def tensorrt_major(self) -> int | None:
        """The TensorRT major version its JetPack ships (6.0: 8.6; 6.1 and 6.2: 10.3)."""
        if not self.jetson:
            return None
        return 8 if self.jetpack == "6.0" else 10

    @property
    def jetson(self) -> bool:
        return self.arch == "aarch64" and self.accelerator != "none"

    @property
    def target_python(self) -> str:
        return self.python or ("3.10" if self.jetson else "3.11")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_id("node", v)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return check_host(v)


_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_host(v: str) -> str:
    """An IP address, or a host name of RFC 1123 labels (what the others reach a node by, and
    what its certificate names)."""
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        pass
    labels = v.rstrip(".").split(".")
    if not all(_LABEL.fullmatch(x) for x in labels) or labels[-1].isdigit():
        raise ValueError(f"host {v!r} is neither an IP address nor a host name")
    return v.lower()


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class BrokerSpec(StrictModel):
    node: Id
    kind: Literal["mosquitto", "amqtt"] = "mosquitto"
    port: int = Field(default=8883, ge=1, le=65535)
    # More brokers, on other nodes, each bridged to ``node``: every role goes to them, in
    # order, when the broker it is on is gone (Mosquitto only: the embedded one has no bridge).
    fallback_nodes: tuple[Id, ...] = Field(default=(), max_length=4)

    @property
    def nodes(self) -> tuple[str, ...]:
        return (self.node, *self.fallback_nodes)


class Camera(StrictModel):
    id: Id
    node: Id  # the node whose sensor process reads it
    source: str = Field(min_length=1, max_length=1024)
    fps: float = Field(default=10.0, gt=0, le=240)
    width: int = Field(default=640, ge=16, le=7680)
    height: int = Field(default=480, ge=16, le=4320)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_id("sensor", v)


class App(StrictModel):
    id: Id
    camera: Id
    family: str = Field(min_length=1, max_length=64)
    critical: bool = False
    hot: bool = False  # a hot backup (faillite.config.AppConfig.hot)
    slo_ms: float = Field(default=250.0, gt=0)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_id("app", v)


class UplinkSpec(StrictModel):
    """The kit's report to its rear site (``faillite uplink`` on ``node``, docs/uplink.md).

    ``ca_certs`` (the rear broker's CA) and ``secret_file`` (the rear account's secret, one
    line) are files of the rear site, given here (relative to kit.yaml) and copied to ``node``
    only. ``down``: the topics, relative to the mesh, that the rear site may send into the kit
    (none by default); the kit broker's ACL lets the uplink write those and nothing else."""

    node: Id
    id: Id = "rear"
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(default=8883, ge=1, le=65535)
    username: str | None = Field(default=None, min_length=1, max_length=256)
    ca_certs: Path | None = None
    secret_file: Path | None = None
    prefix: str = "rear/{mesh}"
    up: tuple[Kind, ...] = Field(default=DEFAULT_KINDS, min_length=1)
    down: tuple[str, ...] = Field(default=(), max_length=64)
    max_queued_messages: int = Field(default=10_000, ge=1)
    max_queued_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_id("uplink", v)

    @model_validator(mode="after")
    def _down(self) -> UplinkSpec:
        if (problem := down_problem(self.down, self.up)) is not None:
            raise ValueError(problem)
        if self.secret_file is not None and self.username is None:
            raise ValueError("uplink.secret_file is set without uplink.username")
        return self


class Estimate(StrictModel):
    """A device class not measured yet, planned from one that was: its figures scaled. The
    plan it gives is marked an estimate; ``faillite profile`` on the board replaces it."""

    base: str = Field(min_length=1, max_length=64)  # a device class with measured profiles
    latency_scale: float = Field(gt=0, le=100)  # its latency = base's x this
    memory_scale: float = Field(default=1.0, gt=0, le=100)
    load_scale: float = Field(default=1.0, gt=0, le=100)


class Kit(StrictModel):
    kit: Id  # the mesh id
    links: dict[str, LinkSettings] = Field(default_factory=_default_links)
    nodes: tuple[Node, ...] = Field(min_length=1)
    broker: BrokerSpec
    cameras: tuple[Camera, ...] = ()
    apps: tuple[App, ...] = ()
    observers: tuple[Id, ...] = ("ops",)  # operator accounts (faillite watch, MQTT Explorer)
    uplink: UplinkSpec | None = None  # reporting to a rear site
    # Device classes without a measured profile yet, estimated from one that has one.
    estimates: dict[str, Estimate] = Field(default_factory=dict)

    @field_validator("kit")
    @classmethod
    def _kit(cls, v: str) -> str:
        return check_id("kit", v)

    @model_validator(mode="after")
    def _references(self) -> Kit:
        nodes = {n.id: n for n in self.nodes}
        for kind, ids in (
            ("node", [n.id for n in self.nodes]),
            ("camera", [c.id for c in self.cameras]),
            ("app", [a.id for a in self.apps]),
        ):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"duplicate {kind} ids: {', '.join(dupes)}")
        # Two boards cannot share an address; a kit rehearsed on one machine runs on loopback.
        hosts = [n.host for n in self.nodes if not _loopback(n.host)]
        shared = sorted({h for h in hosts if hosts.count(h) > 1})
        if shared:
            named = {h: [n.id for n in self.nodes if n.host == h] for h in shared}
            raise ValueError(
                "nodes share an address: "
                + "; ".join(f"{h} ({', '.join(ids)})" for h, ids in named.items())
            )
        for n in self.nodes:
            if n.link not in self.links:
                raise ValueError(f"node {n.id!r}: link {n.link!r} is not one of links")
        for b in self.broker.nodes:
            node = nodes.get(b)
            if node is None or "broker" not in node.roles:
                raise ValueError(f"broker node {b!r} must be a node with role broker")
        if len(set(self.broker.nodes)) != len(self.broker.nodes):
            raise ValueError("broker.fallback_nodes repeats a broker node")
        others = sorted(
            n.id for n in self.nodes if "broker" in n.roles and n.id not in self.broker.nodes
        )
        if others:
            raise ValueError(
                f"nodes {', '.join(others)} have the broker role but are not broker.node or "
                "in broker.fallback_nodes"
            )
        if self.broker.fallback_nodes and self.broker.kind != "mosquitto":
            raise ValueError(
                "broker.fallback_nodes needs kind: mosquitto (the embedded broker has no bridge)"
            )
        if not any("coordinator" in n.roles for n in self.nodes):
            raise ValueError("no node has the coordinator role")
        cameras = {c.id for c in self.cameras}
        for c in self.cameras:
            node = nodes.get(c.node)
            if node is None or "sensor" not in node.roles:
                raise ValueError(f"camera {c.id!r}: node {c.node!r} must have role sensor")
        for a in self.apps:
            if a.camera not in cameras:
                raise ValueError(f"app {a.id!r} names unknown camera {a.camera!r}")
        if self.uplink is not None and self.uplink.node not in nodes:
            raise ValueError(f"uplink.node {self.uplink.node!r} is not a node of the kit")
        return self

    def with_role(self, role: Role) -> list[Node]:
        return [n for n in self.nodes if role in n.roles]

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.id == node_id)


def load_kit(path: Path) -> Kit:
    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, not {type(data).__name__}")
    try:
        kit = Kit.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from exc
    up = kit.uplink
    if up is None:
        return kit
    # The rear site's files are named relative to kit.yaml.
    files = {
        k: (v if v is None or v.is_absolute() else path.parent / v)
        for k, v in (("ca_certs", up.ca_certs), ("secret_file", up.secret_file))
    }
    return kit.model_copy(update={"uplink": up.model_copy(update=files)})


EXAMPLE = """\
# A FailLite field kit: five Jetson Orin NX boards on the kit's WiFi, two cameras.
# `faillite kit render kit.yaml --out build/` writes one folder per node from this file.
kit: recon1                      # the mesh id: one per kit

links:                           # liveness per kind of link (a WiFi link needs more slack)
  wifi: {heartbeat_interval_s: 0.25, keepalive_s: 5}
  lan: {heartbeat_interval_s: 0.1, keepalive_s: 3}

broker:
  node: orin1                    # the one node that runs the broker
  kind: mosquitto                # or amqtt (the embedded broker)
  port: 8883                     # TLS with the kit's own CA

nodes:
  - id: orin1
    host: 10.42.0.11             # the address the other nodes reach it by
    arch: aarch64
    device_class: jetson-orin-nx # a device profile of the model catalog
    accelerator: tensorrt        # none | cuda | tensorrt (engines built by faillite profile)
    jetpack: "6.1"               # its TensorRT (10) and Python (3.10); a mismatch: CPU fallback
    memory_mb: 16384
    gpu_memory_mb: 16384         # Jetson: shared with the CPU
    disk_mb: 20000               # budget for model files on this node
    failure_domain: pack-a       # nodes that fail together (one battery, one backpack)
    link: wifi
    roles: [broker, coordinator, worker]
  - id: orin2
    host: 10.42.0.12
    arch: aarch64
    device_class: jetson-orin-nx
    accelerator: tensorrt
    memory_mb: 16384
    gpu_memory_mb: 16384
    disk_mb: 20000
    failure_domain: pack-b
    link: wifi
    roles: [coordinator, worker, sensor]   # a standby coordinator
  - id: orin3
    host: 10.42.0.13
    arch: aarch64
    device_class: jetson-orin-nx
    accelerator: tensorrt
    memory_mb: 16384
    gpu_memory_mb: 16384
    disk_mb: 20000
    failure_domain: pack-c
    link: wifi
    roles: [worker, sensor]
  - id: orin4
    host: 10.42.0.14
    arch: aarch64
    device_class: jetson-orin-nx
    accelerator: tensorrt
    memory_mb: 16384
    gpu_memory_mb: 16384
    disk_mb: 8000
    failure_domain: pack-d
    link: wifi
    roles: [worker]
  - id: orin5
    host: 10.42.0.15
    arch: aarch64
    device_class: jetson-orin-nx
    accelerator: tensorrt
    memory_mb: 8192
    gpu_memory_mb: 8192
    disk_mb: 8000
    failure_domain: pack-e
    link: wifi
    roles: [worker]

cameras:
  - {id: cam-north, node: orin2, source: "rtsp://10.42.0.21/stream1", fps: 10}
  - {id: cam-south, node: orin3, source: "rtsp://10.42.0.22/stream1", fps: 10}

apps:
  - {id: north-watch, camera: cam-north, family: efficientnet_lite, critical: true, slo_ms: 250}
  - {id: south-watch, camera: cam-south, family: efficientnet_lite, slo_ms: 400}

observers: [ops]                 # operator accounts: faillite watch, MQTT Explorer

# Until `faillite profile` has measured the boards, the planner estimates them from a measured
# device class (the catalog's 2-core x86 CPU here), scaled; `kit stage` says it is an estimate.
estimates:
  jetson-orin-nx: {base: cpu, latency_scale: 0.3, memory_scale: 1.5}

# Reporting to a rear site over a slow link (docs/uplink.md): results, statuses, placement and
# events go up, queued while the link is down; nothing comes down unless `down` lists it.
# uplink:
#   node: orin1                    # runs faillite uplink
#   host: rear.example.net         # the rear site's broker
#   port: 8883
#   username: recon1-uplink        # the rear site's account for this kit
#   ca_certs: rear/ca.crt          # the rear broker's CA (relative to this file)
#   secret_file: rear/uplink.secret
#   down: []                       # e.g. ["apps/+/tasking"]: what the rear may send in
"""
