"""Configuration models of a mesh, shared by every role.

Configs are YAML files validated by pydantic models that reject unknown keys, so a typo such as
``heartbeat_intervall`` fails at load time with a message naming the key and its place.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from faillite.identity import base_name
from faillite.topics import check_id
from faillite.uplink_policy import DEFAULT_KINDS as DEFAULT_UP_KINDS
from faillite.uplink_policy import FilterError, check_prefix, down_problem
from faillite.uplink_policy import Kind as UplinkKind


class ConfigError(ValueError):
    """A config file that cannot be used; the message says where and why."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Id = Annotated[str, Field(min_length=1, max_length=64)]


class TlsServerConfig(StrictModel):
    """The broker's side of TLS, read by the broker only (the embedded broker and the generated
    Mosquitto config): its certificate and key (``faillite pki server``).

    ``require_client_certificate``: only clients with a certificate of the mesh CA get in, and
    the certificate's common name is the client's identity (``demo.worker.w1``; Mosquitto's
    ``require_certificate`` and ``use_identity_as_username``): its ACL follows from that name,
    and the username and password in CONNECT are not used."""

    certfile: Path
    keyfile: Path
    require_client_certificate: bool = False
    # The CA's revocation list (faillite pki revoke): a client certificate on it is refused.
    crlfile: Path | None = None


class TlsConfig(StrictModel):
    """TLS on every broker connection, with the mesh's own CA (``faillite pki init``).

    Every role verifies the broker's certificate against ``ca_certs`` (the chain, and the host
    it connects to against the certificate's subjectAltName). ``certfile`` / ``keyfile``: this
    node's client certificate (``faillite pki client``), needed where the broker requires one.
    ``server``: the broker's own certificate; nodes other than the broker leave it out. Relative
    paths are relative to the config file. Each
    node holds only its own files: ``ca.crt`` and its certificate and key, never the CA key.
    ``probe_certfile`` / ``probe_keyfile``: the certificate of the identity's probe name
    (``{name}.probe``, issued beside it by ``faillite pki client``), for the short look before a
    role connects under its id: a broker that names each client by its certificate (Mosquitto's
    ``use_username_as_clientid``) would give a look with the role's own certificate the role's
    client id, and take a live process's session over. Without it that look is skipped.
    """

    ca_certs: Path
    certfile: Path | None = None
    keyfile: Path | None = None
    probe_certfile: Path | None = None
    probe_keyfile: Path | None = None
    server: TlsServerConfig | None = None

    @model_validator(mode="after")
    def _client_pair(self) -> TlsConfig:
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("tls.keyfile is set without tls.certfile")
        if self.probe_keyfile is not None and self.probe_certfile is None:
            raise ValueError("tls.probe_keyfile is set without tls.probe_certfile")
        if self.probe_certfile is not None and self.certfile is None:
            raise ValueError("tls.probe_certfile is set without tls.certfile")
        return self

    def for_probe(self) -> TlsConfig | None:
        """These settings for the identity's probe name; None where the role presents a
        certificate and no probe certificate is given."""
        if self.certfile is None:
            return self
        if self.probe_certfile is None:
            return None
        return self.model_copy(
            update={"certfile": self.probe_certfile, "keyfile": self.probe_keyfile}
        )


class BrokerAddress(StrictModel):
    """Another broker of the mesh: a kit's second broker, bridged to the first."""

    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)


class BridgeConfig(StrictModel):
    """This broker's bridge to the mesh's other brokers (Mosquitto): every topic of the mesh,
    both ways, over TLS when the mesh has it, as the account ``{mesh}.bridge.{id}``. Only one
    broker of each pair bridges; the other just has the account."""

    id: Id
    to: tuple[BrokerAddress, ...] = Field(min_length=1, max_length=8)
    qos: Literal[0, 1] = 1


class BrokerConfig(StrictModel):
    """Where clients connect, and how the embedded broker authenticates and authorizes them."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=0, le=65535)
    # Where a client goes when its broker is gone, in order after host:port (the mesh's other
    # brokers, bridged to this one). A client stays on the broker it reached while that one
    # lasts; it walks the list again, from the top, only when that broker is gone.
    fallbacks: tuple[BrokerAddress, ...] = Field(default=(), max_length=8)
    bridge: BridgeConfig | None = None  # on a broker host: bridge to the mesh's other brokers
    # A broker that dies silently (its board lost power) is only noticed by what it does not
    # send: heard nothing for ``probe_after_s``, a client pings it; still nothing
    # ``silent_after_s`` later, it drops the connection and goes to the next broker. Far
    # quicker than the keepalive, which a kit on WiFi keeps long.
    probe_after_s: float = Field(default=0.5, gt=0, le=60)
    silent_after_s: float = Field(default=1.5, gt=0, le=300)
    keepalive_s: int = Field(default=5, ge=1, le=3600)
    # Reconnect backoff: full jitter, capped low enough that a kit is back within about a
    # second of its broker (a LAN or WiFi kit, not a WAN client of a cloud broker).
    reconnect_min_s: float = Field(default=0.05, gt=0, le=60)
    reconnect_max_s: float = Field(default=1.0, gt=0, le=300)
    # Accounts, one per device (faillite accounts): the broker reads the password hashes, each
    # node its own secret, ``{secrets_dir}/{mesh}.{role}.{id}.secret``. Neither is set in an
    # open mesh (loopback only); each path is read only by the nodes that need it.
    password_file: Path | None = None
    secrets_dir: Path | None = None
    acl: bool = True
    # Failed logins from one address: each waits this long, doubling up to the cap, before
    # its refusal; attempts from that address wait their turn (the embedded broker).
    login_delay_s: float = Field(default=0.2, ge=0, le=60)
    login_delay_max_s: float = Field(default=5.0, ge=0, le=600)
    # New connections per source address, past a burst, on a broker host's firewall: the
    # generated nftables rules (Mosquitto 2.0 cannot slow down failed logins itself).
    connects_per_source_s: float = Field(default=5.0, gt=0, le=10_000)
    connect_burst_per_source: int = Field(default=20, ge=1, le=100_000)
    # Connections one address may hold open at once on a broker host's firewall (Mosquitto
    # never times out a socket that sends no CONNECT; the embedded broker caps those itself).
    max_connections_per_source: int = Field(default=64, ge=1, le=100_000)
    max_payload_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # A broker that re-reads its accounts and the CA's revocation list on SIGHUP (Mosquitto)
    # writes its pid here; ``faillite accounts revoke`` and ``faillite pki revoke`` signal it,
    # so a revocation takes effect at once (the embedded broker notices by itself).
    pid_file: Path | None = None
    # From TCP accept to a complete CONNECT: a client trickling bytes does not extend it.
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # Embedded broker caps; an account is a username. Clients without one share an account,
    # capped per account only where the broker has accounts (otherwise it is everyone).
    max_connections: int = Field(default=1024, ge=1)
    max_connections_per_account: int = Field(default=16, ge=1)
    max_retained_messages: int = Field(default=10_000, ge=1)
    max_retained_bytes: int = Field(default=64 * 1024 * 1024, ge=1)  # payloads and topics
    max_retained_per_account: int = Field(default=1024, ge=1)
    max_retained_bytes_per_account: int = Field(default=16 * 1024 * 1024, ge=1)
    tls: TlsConfig | None = None

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Every broker a client may use, in the order it tries them."""
        return ((self.host, self.port), *((f.host, f.port) for f in self.fallbacks))

    @property
    def max_packet_bytes(self) -> int:
        """The largest MQTT packet a broker reads at all: a payload over ``max_payload_bytes``
        is dropped, a packet over this (twice that, plus room for topic and headers) ends the
        connection, judged from its length header before the packet is buffered."""
        return 2 * self.max_payload_bytes + PACKET_HEADROOM

    @property
    def client_certificates(self) -> bool:
        """The broker admits clients by their certificate's identity."""
        server = self.tls.server if self.tls is not None else None
        return server is not None and server.require_client_certificate

    @property
    def accounts(self) -> bool:
        """Only a device with its own account gets in (a password or a client certificate)."""
        return self.password_file is not None or self.client_certificates

    @property
    def open_to_anyone(self) -> bool:
        """Clients without credentials get in."""
        return not self.accounts

    def exposure_problem(self) -> str | None:
        """Why a broker with this config must not listen where it says, or None.

        Secure by default: a broker that anyone may use (no accounts, or anonymous clients
        admitted) listens on loopback only; on any other address a kit's WiFi would let
        strangers in."""
        if not self.open_to_anyone or is_loopback(self.host):
            return None
        return (
            f"refusing to listen on {self.host or 'every address'}:{self.port}: the broker "
            "has no accounts, so anyone who can reach that address could use it. Give each "
            "device an account (faillite accounts init; broker.password_file) or require "
            "client certificates (broker.tls.server), or listen on 127.0.0.1"
        )

    def credentials(self, client_id: str) -> tuple[str, str | None]:
        """(username, password) of the identity behind ``client_id`` (its name is the username).

        The password is ``$FAILLITE_MQTT_PASSWORD`` if set, else this node's secret file in
        ``secrets_dir``, else None (an open mesh)."""
        username = base_name(client_id)
        env = os.environ.get("FAILLITE_MQTT_PASSWORD")
        if env:
            return client_id, env
        if self.secrets_dir is None:
            return client_id, None
        path = self.secrets_dir / f"{username}{SECRET_SUFFIX}"
        try:
            secret = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"no secret for {username} at {path} ({exc.strerror}): each node holds its own "
                "identities' secrets (faillite accounts add)"
            ) from exc
        return client_id, secret


SECRET_SUFFIX = ".secret"
PACKET_HEADROOM = 65536  # topic and headers on top of the largest payload


def is_loopback(host: str) -> bool:
    """``host`` names this machine's loopback only (an address literal or ``localhost``)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere, or "" (every address)


class SensorConfig(StrictModel):
    id: Id
    source: str = "scene"  # "scene", a camera index, a file, a folder of images or a URL
    fps: float = Field(default=10.0, gt=0, le=240)
    width: int = Field(default=640, ge=16, le=7680)
    height: int = Field(default=480, ge=16, le=4320)
    jpeg_quality: int = Field(default=85, ge=10, le=100)
    loop: bool = True

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_id("sensor", v)


class AppConfig(StrictModel):
    """An inference application: one sensor's frames through one model family."""

    id: Id
    sensor: Id
    family: str
    slo_ms: float = Field(default=200.0, gt=0)
    weight: float = Field(default=1.0, gt=0)
    critical: bool = False
    # Hot protection, for the most critical apps: the backup runs every frame too (its compute
    # is spent all the time, and priced so by the planner) and publishes only once promoted,
    # so a crash costs detection and one message, not a frame wait and an inference. Implies
    # critical: where no server has the compute, the backup is warm.
    hot: bool = False

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_id("app", v)


class BackendSection(StrictModel):
    """A worker's ``backend`` section: ``type`` names the backend. Each backend's own config
    class subclasses this one and lives beside the backend, in ``workers/backends/``."""

    type: str


# Backend sections are validated at load time, unknown keys named, by the backend registry
# of the worker role (workers/backends/registry.py: type -> config class, backend class).
# The core looks it up by module name, as a plug-in lookup (like an entry point), not as a
# code dependency: the core imports no role (tests/unit/test_architecture.py). The lookup is
# light: the registry and the backend modules import pydantic and nothing heavy (no numpy,
# cv2, onnxruntime or tensorrt at module level), so a broker node, which has none of them,
# validates the worker sections of the mesh config it loads.
BACKEND_REGISTRY = "workers.backends.registry"
DEFAULT_BACKEND = "onnxruntime"


def backend_section(data: Any) -> BackendSection:
    """``data`` (a mapping with a ``type``) as the config class of the backend it names."""
    registry = importlib.import_module(BACKEND_REGISTRY)
    section: BackendSection = registry.parse_config(data)
    return section


class QuarantineConfig(StrictModel):
    """``quarantine:`` of a worker: a camera one of whose frames cost more than ``factor`` times
    its typical decode (CPU time) and more than ``floor_ms`` is dropped unread for ``base_s``,
    doubling at each new offence up to ``max_s``, forgiven after ``forgive_s`` clean
    (workers/quarantine.py)."""

    floor_ms: float = Field(default=250.0, gt=0, le=600_000)
    factor: float = Field(default=20.0, gt=1, le=10_000)
    base_s: float = Field(default=5.0, gt=0, le=86_400)
    max_s: float = Field(default=300.0, gt=0, le=86_400)
    forgive_s: float = Field(default=600.0, ge=0, le=86_400)
    alpha: float = Field(default=0.1, gt=0, le=1)


class BatchingConfig(StrictModel):
    """``batching:`` of a worker: frames of apps that share a variant run as one batch.

    ``max_batch``: the most frames in one inference call (a model that takes a fixed batch of
    1 runs them one by one). ``max_wait_ms``: how long a batch that is not full waits for more
    frames (0: never wait; take what is queued). ``preprocess_threads``: threads decoding and
    preprocessing frames while the previous batch infers (default: half the CPUs this process
    may run on, 2 to 8: decoding, not inference, is a GPU worker's cost per frame).
    ``max_batch_ms``: how long one batch may take to serve, as measured per frame on this
    worker: a slow device gets smaller batches, so results keep coming well within the
    coordinator's ``stall_s`` (a batch is one long stretch without progress).
    ``scaled_decode``: decode a JPEG frame at 1/2, 1/4 or 1/8 of its size where the model's
    input still gets every pixel it needs (libjpeg's scaled IDCT: a 1080p frame for a
    224-pixel model decodes and preprocesses in less than half the time)."""

    max_batch: int = Field(default=8, ge=1, le=256)
    max_wait_ms: float = Field(default=2.0, ge=0, le=1000)
    preprocess_threads: int | None = Field(default=None, ge=1, le=64)
    max_batch_ms: float = Field(default=250.0, gt=0, le=60_000)
    scaled_decode: bool = True

    def pool_size(self) -> int:
        """``preprocess_threads``, or the default for the CPUs this process may use."""
        if self.preprocess_threads is not None:
            return self.preprocess_threads
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(2, min(8, (cpus or 2) // 2))


class WorkerConfig(StrictModel):
    id: Id
    device_class: str = "cpu"
    memory_mb: float = Field(default=2048.0, gt=0)
    # The GPU memory the mesh may use on this worker, MB. Set, the planner places by it (and
    # by the variants' measured gpu_memory_mb) instead of host memory: a GPU worker.
    gpu_memory_mb: float | None = Field(default=None, gt=0)
    compute_budget: float = Field(default=1.0, gt=0)  # share of the device inference may use
    disk_mb: float = Field(default=10_000.0, gt=0)
    failure_domain: str | None = None
    backend: SerializeAsAny[BackendSection] = Field(
        default_factory=lambda: backend_section({"type": DEFAULT_BACKEND})
    )
    # Used when ``backend`` cannot run here (its runtime missing or broken, no device): a
    # Jetson whose TensorRT does not match serves on ONNX Runtime's CPU, and says so.
    fallback_backend: SerializeAsAny[BackendSection] | None = None
    queue_size: int = Field(default=2, ge=1, le=64)
    heartbeat_interval_s: float = Field(default=0.1, gt=0, le=60)
    models_dir: Path | None = None
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    quarantine: QuarantineConfig = Field(default_factory=QuarantineConfig)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_id("worker", v)

    @field_validator("backend", mode="before")
    @classmethod
    def _backend(cls, v: Any) -> BackendSection:
        return backend_section(v)

    @field_validator("fallback_backend", mode="before")
    @classmethod
    def _fallback(cls, v: Any) -> BackendSection | None:
        return None if v is None else backend_section(v)

    @property
    def domain(self) -> str:
        return self.failure_domain or self.id


class StaticServe(StrictModel):
    app: Id
    variant: str


class SigningConfig(StrictModel):
    """Ed25519 signatures on assignments and the coordinator status (``faillite/signing.py``,
    keys from ``faillite pki signing-key``): workers and coordinators refuse what is unsigned
    or badly signed, so even a client the broker wrongly lets write those topics cannot steer
    a worker or depose a leader. ``public_key`` on every worker and coordinator;
    ``private_key`` on coordinators only. Paths are opened as given: use absolute paths."""

    public_key: Path
    private_key: Path | None = None


class CoordinatorConfig(StrictModel):
    """``static``: serve what ``assignments`` says. ``planner``: place with the CVXPY planner,
    detect failures, fail over to warm / cold backups, upgrade, re-plan and fail back."""

    type: Literal["static", "planner"] = "static"
    # static: worker id -> what it serves
    assignments: dict[str, tuple[StaticServe, ...]] = Field(default_factory=dict)
    # planner:
    method: Literal["lp", "milp", "greedy"] = "lp"
    startup_wait_s: float = Field(default=3.0, ge=0)  # wait this long for births before planning
    phi_threshold: float = Field(default=8.0, gt=0)
    # Never suspect sooner (x interval): a loaded board's heartbeat thread can wait 0.4 s for
    # the CPU (NO_FAIL_WITH_STRESS saw it at 2.5); stretched further by the host's load. 4
    # keeps a silent death detected within 0.5 s at 100 ms heartbeats.
    min_silence_intervals: float = Field(default=4.0, gt=0)
    max_silence_intervals: float = Field(default=10.0, gt=0)  # always suspect past this
    confirm_intervals: float = Field(default=0.5, ge=0)  # a suspicion must hold this long
    stall_s: float = Field(default=1.0, gt=0)  # frames waiting, no progress: gray failure
    # A worker loading a variant it was told to is not judged stalled meanwhile, this long at most.
    load_timeout_s: float = Field(default=30.0, gt=0)
    # A worker's apps over their SLO this long: shed one step (or move, if the worker alone is
    # slow and another would serve better).
    slo_sustain_s: float = Field(default=5.0, gt=0)
    shed_calm_s: float = Field(default=10.0, gt=0)  # calm this long: take one shed step back
    mttr_weight: float = Field(default=0.002, ge=0)  # accuracy points per ms of expected MTTR
    ladder_settle_s: float = Field(default=0.0, ge=0)  # serve a rung this long before the next
    failback_load_timeout_s: float = Field(default=60.0, gt=0)
    replan_delay_s: float = Field(default=0.5, ge=0)  # after a failover, before re-planning
    # A worker slow on its own (against its peers and its profile) whose apps another would
    # serve better is failed over (a gray failure) and held out this long before it may serve.
    gray_probation_s: float = Field(default=30.0, gt=0)
    # A routed app whose frames flow (its worker counts them processed, or a backup following
    # them counts them received) with no result from its worker this long: the worker is
    # failed over (results_missing) and held out gray_probation_s, doubling per offence. 0: off.
    results_missing_s: float = Field(default=5.0, ge=0)
    # After our own reconnect (a broker restart), workers get this long to reconnect too.
    reconnect_grace_s: float = Field(default=5.0, ge=0)  # the reconnect backoff's cap
    # A worker judged dead whose retained status still says online this long after (past
    # its broker's 1.5 x keepalive: no last-will is coming, its broker died with it) gets its
    # offline status from the leader. None: 1.5 x broker.keepalive_s + 2 s.
    obituary_after_s: float | None = Field(default=None, gt=0)
    # Standby coordinators: take over once the leader has been gone this long (x rank).
    takeover_delay_s: float = Field(default=0.5, ge=0)
    # The leader beats this often (coordinator/beat); a standby that heard it beat reads it as
    # gone after leader_silence_s without a beat while its own link was fine (a leader whose
    # broker died with it leaves its online status retained on the other broker for good).
    # Five beats: a lossy WiFi link (2 % loss, QoS 0) loses five in a row about never.
    leader_beat_s: float = Field(default=0.5, gt=0, le=60)
    leader_silence_s: float = Field(default=2.5, gt=0, le=600)
    # The coordinator ids of this mesh (leader and standbys): a status of another id deposes
    # no leader and names none for workers. Empty: any id.
    ids: tuple[Id, ...] = ()
    signing: SigningConfig | None = None  # None: assignments and status travel unsigned

    @field_validator("ids")
    @classmethod
    def _ids(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_id("coordinator", i) for i in v)

    @model_validator(mode="after")
    def _beats(self) -> CoordinatorConfig:
        if self.leader_silence_s < 3 * self.leader_beat_s:
            raise ValueError(
                f"leader_silence_s ({self.leader_silence_s}) must be at least 3 x leader_beat_s "
                f"({self.leader_beat_s}): a beat or two lost is no leader's death"
            )
        return self


class UpstreamConfig(StrictModel):
    """The rear site's broker, as the uplink reaches it: its own address(es), CA and account,
    nothing of the kit's. ``password_file``: one line, the secret of ``username`` (relative
    paths are relative to the config file). A rear link is slow and lossy: the liveness
    settings are far laxer than the kit's own."""

    host: str = Field(min_length=1, max_length=253)
    port: int = Field(default=8883, ge=1, le=65535)
    fallbacks: tuple[BrokerAddress, ...] = Field(default=(), max_length=8)
    tls: TlsConfig | None = None
    username: str | None = Field(default=None, min_length=1, max_length=256)
    password_file: Path | None = None
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    keepalive_s: int = Field(default=30, ge=1, le=3600)
    probe_after_s: float = Field(default=10.0, gt=0, le=600)
    silent_after_s: float = Field(default=20.0, gt=0, le=600)
    reconnect_min_s: float = Field(default=0.5, gt=0, le=60)
    reconnect_max_s: float = Field(default=15.0, gt=0, le=600)

    @model_validator(mode="after")
    def _client_side(self) -> UpstreamConfig:
        if self.tls is not None and self.tls.server is not None:
            raise ValueError("uplink.upstream.tls.server: the uplink is a client of the rear")
        if self.password_file is not None and self.username is None:
            raise ValueError("uplink.upstream.password_file is set without username")
        return self


class UplinkConfig(StrictModel):
    """A kit reporting to a rear site (``faillite uplink``, docs/uplink.md): the mesh's
    results, statuses, placement and events go up to ``upstream`` under ``prefix``, queued
    while the link is down (at most ``max_queued_messages`` / ``max_queued_bytes``, oldest
    dropped first and counted; retained state coalesced per topic). Nothing comes down but
    the topics ``down`` lists (relative to the mesh, e.g. ``apps/+/tasking``), each at most
    ``max_down_bytes``. The uplink connects to the kit's broker as ``{mesh}.uplink.{id}``,
    whose ACL lets it write only those ``down`` topics."""

    id: Id = "rear"
    upstream: UpstreamConfig
    prefix: str = "rear/{mesh}"  # on the rear broker; {mesh} is the kit's mesh id
    up: tuple[UplinkKind, ...] = Field(default=DEFAULT_UP_KINDS, min_length=1)
    qos: Literal[0, 1] = 1
    max_queued_messages: int = Field(default=10_000, ge=1, le=10_000_000)
    max_queued_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Sent but not yet acknowledged: a slow link keeps the rest in our queue, where the
    # bound and the oldest-first drop apply, not in the MQTT client's unbounded one.
    max_inflight: int = Field(default=16, ge=1, le=1000)
    down: tuple[str, ...] = Field(default=(), max_length=64)
    max_down_bytes: int = Field(default=16 * 1024, ge=1, le=16 * 1024 * 1024)
    status_interval_s: float = Field(default=10.0, gt=0, le=3600)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_id("uplink", v)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        try:
            check_prefix(v.replace("{mesh}", "mesh"))
        except FilterError as exc:
            raise ValueError(str(exc)) from exc
        return v

    @model_validator(mode="after")
    def _down(self) -> UplinkConfig:
        if len(set(self.up)) != len(self.up):
            raise ValueError("uplink.up repeats a kind")
        if (problem := down_problem(self.down, self.up)) is not None:
            raise ValueError(problem)
        return self

    def topic_prefix(self, mesh: str) -> str:
        return self.prefix.replace("{mesh}", mesh)


class MeshConfig(StrictModel):
    mesh: Id = "demo"
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    models_dir: Path | None = (
        None  # default: $FAILLITE_MODELS_DIR or ~/.local/share/faillite/models
    )
    catalog: Path = Path("catalog.yaml")
    max_frame_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    sensors: tuple[SensorConfig, ...] = ()
    apps: tuple[AppConfig, ...] = ()
    workers: tuple[WorkerConfig, ...] = ()
    coordinator: CoordinatorConfig = Field(default_factory=CoordinatorConfig)
    uplink: UplinkConfig | None = None  # reporting to a rear site

    @field_validator("mesh")
    @classmethod
    def _mesh(cls, v: str) -> str:
        return check_id("mesh", v)

    @model_validator(mode="after")
    def _references(self) -> MeshConfig:
        for kind, items in (("sensor", self.sensors), ("app", self.apps), ("worker", self.workers)):
            ids = [i.id for i in items]
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"duplicate {kind} ids: {', '.join(dupes)}")
        sensors = {s.id for s in self.sensors}
        for app in self.apps:
            if app.sensor not in sensors:
                raise ValueError(f"app {app.id!r} names unknown sensor {app.sensor!r}")
        apps = {a.id for a in self.apps}
        workers = {w.id for w in self.workers}
        for worker, serves in self.coordinator.assignments.items():
            if worker not in workers:
                raise ValueError(f"coordinator.assignments names unknown worker {worker!r}")
            for s in serves:
                if s.app not in apps:
                    raise ValueError(
                        f"coordinator.assignments[{worker}] names unknown app {s.app!r}"
                    )
        return self

    @property
    def models_path(self) -> Path:
        """Where model files live: the config's ``models_dir`` or the per-user default."""
        return self.models_dir if self.models_dir is not None else default_models_dir()

    def worker(self, worker_id: str) -> WorkerConfig:
        for w in self.workers:
            if w.id == worker_id:
                return w
        raise ConfigError(f"no worker {worker_id!r} in mesh {self.mesh!r}")

    def sensor(self, sensor_id: str) -> SensorConfig:
        for s in self.sensors:
            if s.id == sensor_id:
                return s
        raise ConfigError(f"no sensor {sensor_id!r} in mesh {self.mesh!r}")

    def app(self, app_id: str) -> AppConfig:
        for a in self.apps:
            if a.id == app_id:
                return a
        raise ConfigError(f"no app {app_id!r} in mesh {self.mesh!r}")


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s)"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key {str(err['loc'][-1])!r}")
        else:
            lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def _resolve(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else (base / p)


def load_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def load_mesh_config(path: str | Path, overrides: dict[str, Any] | None = None) -> MeshConfig:
    """Load and validate a mesh config; relative paths in it are relative to the file."""
    path = Path(path)
    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, not {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        cfg = MeshConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from exc
    base = path.parent
    env_models = os.environ.get("FAILLITE_MODELS_DIR")
    if env_models:
        models_dir = Path(env_models)
    elif cfg.models_dir is not None:
        models_dir = _resolve(base, cfg.models_dir)
    else:
        models_dir = default_models_dir()
    return cfg.model_copy(
        update={
            "models_dir": models_dir,
            "catalog": _resolve(base, cfg.catalog),
            "broker": _resolve_broker(base, cfg.broker),
            "uplink": None if cfg.uplink is None else _resolve_uplink(base, cfg.uplink),
        }
    )


def _resolve_uplink(base: Path, uplink: UplinkConfig) -> UplinkConfig:
    """``uplink`` with its upstream's files made relative to the config file."""
    up = uplink.upstream
    update: dict[str, Any] = {
        "password_file": None if up.password_file is None else _resolve(base, up.password_file)
    }
    if up.tls is not None:
        update["tls"] = up.tls.model_copy(
            update={
                "ca_certs": _resolve(base, up.tls.ca_certs),
                "certfile": None if up.tls.certfile is None else _resolve(base, up.tls.certfile),
                "keyfile": None if up.tls.keyfile is None else _resolve(base, up.tls.keyfile),
            }
        )
    return uplink.model_copy(update={"upstream": up.model_copy(update=update)})


def _resolve_broker(base: Path, broker: BrokerConfig) -> BrokerConfig:
    """``broker`` with its file paths (accounts, TLS) made relative to the config file."""

    def opt(p: Path | None) -> Path | None:
        return None if p is None else _resolve(base, p)

    update: dict[str, Any] = {
        "password_file": opt(broker.password_file),
        "secrets_dir": opt(broker.secrets_dir),
    }
    tls = broker.tls
    if tls is not None:
        server = tls.server
        update["tls"] = tls.model_copy(
            update={
                "ca_certs": _resolve(base, tls.ca_certs),
                "certfile": opt(tls.certfile),
                "keyfile": opt(tls.keyfile),
                "probe_certfile": opt(tls.probe_certfile),
                "probe_keyfile": opt(tls.probe_keyfile),
                "server": None
                if server is None
                else server.model_copy(
                    update={
                        "certfile": _resolve(base, server.certfile),
                        "keyfile": _resolve(base, server.keyfile),
                        "crlfile": opt(server.crlfile),
                    }
                ),
            }
        )
    return broker.model_copy(update=update)


def default_models_dir() -> Path:
    env = os.environ.get("FAILLITE_MODELS_DIR")
    if env:
        return Path(env)
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "faillite" / "models"


def packaged_config(name: str) -> Path:
    """Path of a config shipped in the ``configs/`` folder (installed as configs)."""
    import configs

    return Path(configs.__file__).parent / name
