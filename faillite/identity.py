"""Identities: one account per device, its client ids, and what it may do on the broker.

An identity is ``(mesh, role, id)``, named ``{mesh}.{role}.{id}`` (``demo.worker.w1``). The name
is the account's username *and* its client id: a client may connect only as itself (the embedded
broker refuses any other client id; Mosquitto gets ``use_username_as_clientid``), so no account
can take over another's session or fire its last-will. A process looks at the broker before it
connects under its id (:mod:`faillite.presence`); that short look uses the identity's second
client id, ``{name}.probe``, a second username with the same secret and the same rights, so it
never takes the live client's session.

The ACL is per identity, generated here for both brokers (the embedded broker's plugin and the
Mosquitto ``acl`` file): a worker writes only its own status, heartbeat and results, a sensor only
its own frames and status, coordinators the control topics of the mesh's own workers and apps.
Where the mesh's workers and apps are known (:class:`AclScope`), the rules name each of them, so
an account can hold retained messages on a few topics only: a stolen credential cannot flood the
broker's retained store under made-up ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from faillite.topics import (
    ROOT,
    Access,
    InvalidIdError,
    Role,
    Topics,
    check_id,
)
from faillite.uplink_policy import KINDS, up_filters

if TYPE_CHECKING:
    from faillite.config import MeshConfig

PROBE_SUFFIX: Final = ".probe"
_SEP: Final = "."


class InvalidIdentityError(ValueError):
    """A name that is not ``{mesh}.{role}.{id}`` (optionally ``.probe``)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """One device's account: a worker, sensor, coordinator, observer or admin of one mesh."""

    mesh: str
    role: Role
    id: str

    def __post_init__(self) -> None:
        check_id("mesh", self.mesh)
        check_id(self.role.value, self.id)

    @property
    def name(self) -> str:
        """The username and client id."""
        return f"{self.mesh}{_SEP}{self.role.value}{_SEP}{self.id}"

    @property
    def probe_name(self) -> str:
        """The client id (and username) of this identity's look before it connects."""
        return self.name + PROBE_SUFFIX

    @property
    def usernames(self) -> tuple[str, str]:
        return self.name, self.probe_name

    @classmethod
    def parse(cls, name: str) -> Identity:
        """The identity a username or client id names (its probe name included)."""
        base = name.removesuffix(PROBE_SUFFIX)
        parts = base.split(_SEP)
        if len(parts) != 3:
            raise InvalidIdentityError(
                f"{name!r} is not an identity: expected mesh.role.id, e.g. demo.worker.w1"
            )
        mesh, role, ident = parts
        try:
            return cls(mesh, Role(role), ident)
        except ValueError as exc:  # InvalidIdError, or an unknown role
            raise InvalidIdentityError(f"{name!r} is not an identity: {exc}") from exc


def base_name(client_id: str) -> str:
    """The identity name behind a client id (its probe id maps to the identity itself)."""
    return client_id.removesuffix(PROBE_SUFFIX)


@dataclass(frozen=True, slots=True)
class AclScope:
    """The mesh's workers and apps, when known: rules then name each one instead of ``+``."""

    workers: tuple[str, ...]
    apps: tuple[str, ...]
    # What the uplink may bring down from the rear site (``uplink.down``, relative filters).
    uplink_down: tuple[str, ...] = ()
    # Each camera's apps: a camera then reads only their results and routes (least privilege:
    # another camera's apps are none of its business). Empty: not known, every app's.
    camera_apps: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def of(
        cls,
        workers: Iterable[str],
        apps: Iterable[str],
        uplink_down: Iterable[str] = (),
        camera_apps: Iterable[tuple[str, str]] = (),
    ) -> AclScope:
        """``camera_apps``: (camera, app) pairs, one per app."""
        by_camera: dict[str, set[str]] = {}
        for camera, app in camera_apps:
            by_camera.setdefault(camera, set()).add(app)
        return cls(
            tuple(sorted(set(workers))),
            tuple(sorted(set(apps))),
            tuple(uplink_down),
            tuple((c, tuple(sorted(a))) for c, a in sorted(by_camera.items())),
        )

    def apps_of(self, camera: str) -> tuple[str, ...] | None:
        """The apps of ``camera``; None where the scope does not know cameras."""
        if not self.camera_apps:
            return None
        return dict(self.camera_apps).get(camera, ())


def acl_scope(cfg: MeshConfig) -> AclScope | None:
    """The workers and apps a mesh config names; None for a config that names neither (a
    broker-only config: the rules then use ``+``)."""
    if not cfg.workers and not cfg.apps:
        return None
    down = cfg.uplink.down if cfg.uplink is not None else ()
    return AclScope.of(
        (w.id for w in cfg.workers),
        (a.id for a in cfg.apps),
        down,
        ((a.sensor, a.id) for a in cfg.apps),
    )


Rule = tuple[Access, str]


def identity_acl(identity: Identity, scope: AclScope | None = None) -> tuple[Rule, ...]:
    """The topic rules of one identity. ``scope`` None: ``+`` for other workers' and apps' ids."""
    t = Topics(identity.mesh)
    me = identity.id
    apps = scope.apps if scope is not None else ("+",)
    workers = scope.workers if scope is not None else ("+",)
    match identity.role:
        case Role.SENSOR:
            # Its own frames and status, read too: the look before connecting checks whether
            # its id is live. Results and routes (``faillite sensor --results``): of its own
            # apps only, where the scope knows them.
            mine = scope.apps_of(me) if scope is not None else None
            reads: tuple[Rule, ...] = (
                ((Access.READ, t.app_results_filter()), (Access.READ, _any_app(t, "route")))
                if mine is None
                else tuple(
                    rule
                    for app in mine
                    for rule in (
                        (Access.READ, t.app_results_filter(app)),
                        (Access.READ, t.app_route(app)),
                    )
                )
            )
            return (
                (Access.READWRITE, t.sensor_frames(me)),
                (Access.READWRITE, t.sensor_status(me)),
                *reads,
                (Access.WRITE, t.events_of(Role.SENSOR, me)),
            )
        case Role.WORKER:
            return (
                (Access.READ, _any_sensor_frames(t)),
                (Access.READ, t.worker_assignment(me)),
                (Access.READ, t.coordinator_status),
                (Access.READWRITE, t.worker_status(me)),
                (Access.READWRITE, t.worker_heartbeat(me)),
                (Access.READWRITE, t.worker_profile(me)),
                *((Access.WRITE, _results(t, app, me)) for app in apps),
                # A hot backup follows the primary's results: on promotion it publishes
                # only those the primary did not (workers.hot).
                (Access.READ, t.app_results_filter()),
                (Access.WRITE, t.events_of(Role.WORKER, me)),
            )
        case Role.COORDINATOR:
            return (
                (Access.READ, t.everything),
                *((Access.WRITE, _assignment(t, w)) for w in workers),
                # The offline status of a worker whose last-will died with its broker.
                *((Access.WRITE, _status(t, w)) for w in workers),
                *((Access.WRITE, _route(t, app)) for app in apps),
                (Access.WRITE, t.coordinator_status),
                (Access.WRITE, t.coordinator_beat),  # the leader's liveness, for standbys
                (Access.WRITE, t.placement),
                (Access.WRITE, t.events_of(Role.COORDINATOR, me)),
            )
        case Role.OBSERVER:
            return ((Access.READ, t.everything),)
        case Role.ADMIN:
            return ((Access.READWRITE, f"{ROOT}/{identity.mesh}/#"),)
        case Role.BRIDGE:
            # Carries every client's messages of the mesh from the other broker, whose ACL
            # judged each publisher already.
            return ((Access.READWRITE, f"{ROOT}/{identity.mesh}/#"),)
        case Role.UPLINK:
            # Reads what may go up (never frames); writes only what the kit lets come down.
            down = scope.uplink_down if scope is not None else ()
            return (
                *((Access.READ, f"{t.prefix}/{f}") for f in up_filters(KINDS)),
                *((Access.WRITE, f"{t.prefix}/{f}") for f in down),
            )


def _results(t: Topics, app: str, worker: str) -> str:
    return t.app_results(app, worker) if app != "+" else f"{t.prefix}/apps/+/results/{worker}"


def _status(t: Topics, worker: str) -> str:
    return t.worker_status(worker) if worker != "+" else f"{t.prefix}/workers/+/status"


def _assignment(t: Topics, worker: str) -> str:
    return t.worker_assignment(worker) if worker != "+" else f"{t.prefix}/workers/+/assignment"


def _route(t: Topics, app: str) -> str:
    return t.app_route(app) if app != "+" else _any_app(t, "route")


def _any_app(t: Topics, leaf: str) -> str:
    return f"{t.prefix}/apps/+/{leaf}"


def _any_sensor_frames(t: Topics) -> str:
    return f"{t.prefix}/sensors/+/frames"


def is_identity(name: str) -> bool:
    try:
        Identity.parse(name)
    except (InvalidIdentityError, InvalidIdError):
        return False
    return True
