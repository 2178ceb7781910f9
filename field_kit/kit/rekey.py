"""``faillite kit rekey NODE``: a board is lost (or its secrets leaked); its replacement gets
new secrets, and what the lost board held stops working, without re-keying the whole kit.

- Every identity of the node gets a new secret; the broker's password file forgets the old one
  (the broker node's folder changes: reinstall it, or the broker keeps accepting the old).
- A coordinator node held the kit's signing key: a new one is made, so everything the lost
  board could sign is refused; every node's public key changes, so every node is reinstalled.
- A broker node held the broker's TLS key: a new certificate is issued (same CA).

Nothing else changes: the CA, the other nodes' secrets. The node folders whose files changed
are returned: those nodes need their new bundle.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from faillite import pki
from faillite.accounts import add_account
from faillite.signing import generate_key
from field_kit.kit.model import Kit
from field_kit.kit.render import Provisioning, identities, render


@dataclass(frozen=True, slots=True)
class Rekeyed:
    node: str
    secrets: tuple[str, ...]  # the identities with a new secret
    rotated: tuple[str, ...]  # kit keys made anew because the node held them
    changed: tuple[str, ...]  # the nodes whose files changed: reinstall them


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((folder / "etc").rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def rekey(kit: Kit, out: Path, node_id: str, *, in_place: bool = False) -> Rekeyed:
    """Re-key ``node_id`` of ``kit``, rendered in ``out`` (as it was: ``in_place`` or not)."""
    node = kit.node(node_id)
    prov = Provisioning(out / "_provisioning")
    if not (prov.ca / pki.CA_CERT).exists():
        raise FileNotFoundError(f"{prov.root}: the kit has no keys yet (faillite kit render)")
    before = {n.id: _digest(out / n.id) for n in kit.nodes if (out / n.id).is_dir()}
    mine = identities(kit, node)
    for identity in mine:
        add_account(prov.passwd, prov.secrets, identity, replace=True)
    rotated = []
    if "coordinator" in node.roles:
        generate_key(prov.signing, overwrite=True)
        rotated.append("signing key")
    if node.id in kit.broker.nodes:
        hosts = [kit.node(b).host for b in kit.broker.nodes]
        pki.issue_server(prov.ca, "broker", hosts, overwrite=True)
        rotated.append("broker certificate")
    render(kit, out, in_place=in_place)
    changed = tuple(n.id for n in kit.nodes if before.get(n.id) != _digest(out / n.id))
    return Rekeyed(node.id, tuple(i.name for i in mine), tuple(rotated), changed)
