"""Who owns what on a node: one service user per role, so a role reads its own secrets only.

A camera's process cannot read the coordinators' signing key, a worker cannot read the broker's
TLS key: each secret file is its role's user's, mode 0600, in a folder others may pass through
(0711) but not list. What every role reads (the mesh config, the CA certificate, the public
signing key, the models) stays root's and readable. Mosquitto runs as Debian's ``mosquitto``
user (its package makes it); the others are made by ``install.py`` (system users, no login).
A GPU worker and a camera read from a local device join the ``video`` group (JetPack gives the
GPU's device nodes to it).

Paths are relative to the node's root; ``install.py`` applies them (standard library only, so
this module hands it plain data through ``bundle.json``).
"""

from __future__ import annotations

from typing import Final

from faillite.identity import Identity
from faillite.topics import Role
from field_kit.kit.hardening import is_local_device
from field_kit.kit.model import Kit, Node

ROLE_USERS: Final[dict[str, str]] = {
    "broker": "faillite-broker",  # the embedded broker; Mosquitto is "mosquitto"
    "coordinator": "faillite-coordinator",
    "worker": "faillite-worker",
    "sensor": "faillite-sensor",
    "uplink": "faillite-uplink",
}
MOSQUITTO_USER: Final = "mosquitto"
SECRET: Final = 0o600
PASS_THROUGH: Final = 0o711  # a folder of secrets: each user reaches its own file, lists none
PUBLIC: Final = 0o644
ETC: Final = "etc/faillite"
STATE: Final = "var/lib/faillite"
MOSQUITTO_STATE: Final = f"{STATE}/mosquitto"  # not Debian's /var/lib/mosquitto


def broker_user(kit: Kit) -> str:
    return MOSQUITTO_USER if kit.broker.kind == "mosquitto" else ROLE_USERS["broker"]


def users(kit: Kit, node: Node) -> dict[str, tuple[str, ...]]:
    """The service users ``node`` needs made (Mosquitto's comes with its package), each with
    its supplementary groups."""
    out: dict[str, tuple[str, ...]] = {}
    if "broker" in node.roles and kit.broker.kind != "mosquitto":
        out[ROLE_USERS["broker"]] = ()
    if "coordinator" in node.roles:
        out[ROLE_USERS["coordinator"]] = ()
    if "worker" in node.roles:
        out[ROLE_USERS["worker"]] = ("video",) if node.accelerator != "none" else ()
    cams = [c for c in kit.cameras if c.node == node.id]
    if cams:
        local = any(is_local_device(c.source) for c in cams)
        out[ROLE_USERS["sensor"]] = ("video",) if local else ()
    if kit.uplink is not None and kit.uplink.node == node.id:
        out[ROLE_USERS["uplink"]] = ()
    return out


def _identity_user(kit: Kit, identity: Identity) -> str:
    if identity.role is Role.BRIDGE:
        return MOSQUITTO_USER  # the bridge's secret is in mosquitto.conf, read by Mosquitto
    return ROLE_USERS[str(identity.role)]


def ownership(kit: Kit, node: Node, identities: list[Identity]) -> dict[str, tuple[str, int]]:
    """Path (relative to the node's root) -> (owner, mode), for what is not root's 0644."""
    out: dict[str, tuple[str, int]] = {
        f"{ETC}/secrets": ("root", PASS_THROUGH),
        f"{ETC}/signing": ("root", PASS_THROUGH),
        f"{ETC}/signing/signing.pub": ("root", PUBLIC),
    }
    for identity in identities:
        out[f"{ETC}/secrets/{identity.name}.secret"] = (_identity_user(kit, identity), SECRET)
    if "coordinator" in node.roles:
        out[f"{ETC}/signing/signing.key"] = (ROLE_USERS["coordinator"], SECRET)
    if "worker" in node.roles:
        out[f"{STATE}/engines"] = (ROLE_USERS["worker"], 0o700)  # TensorRT builds engines here
        # What `faillite profile` measures at install, as the worker, goes here.
        out[f"{STATE}/models/profiles"] = (ROLE_USERS["worker"], 0o755)
    if "broker" in node.roles:
        owner = broker_user(kit)
        out[f"{ETC}/tls/broker.key"] = (owner, SECRET)
        out[f"{ETC}/broker"] = ("root", PASS_THROUGH if kit.broker.kind == "mosquitto" else 0o755)
        out[f"{ETC}/broker/passwd"] = (owner, SECRET)
        if kit.broker.kind == "mosquitto":
            out[f"{ETC}/broker/mosquitto.conf"] = (owner, SECRET)  # a bridge's secret is in it
            out[MOSQUITTO_STATE] = (owner, 0o700)
    if kit.uplink is not None and kit.uplink.node == node.id:
        out[f"{ETC}/uplink"] = ("root", PASS_THROUGH)
        if kit.uplink.secret_file is not None:
            out[f"{ETC}/uplink/rear.secret"] = (ROLE_USERS["uplink"], SECRET)
    return out
