"""``faillite kit stage``: which model files each node must hold, decided by the planner under
each node's disk budget, copied into its folder and verified.

What is not on a node's disk cannot serve there, so a node holds, in this order while its
``disk_mb`` lasts: the variants of the primaries the plan puts on it, of its warm backups, of
its cold backups (the smaller first rung too), then every variant its failover table may load
or upgrade to on it. What does not fit is reported with the apps that lose protection because
of it. A node never needs the network to fail over: whatever its table calls on is on disk.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Final, Literal

import yaml

from coordinator.planner import Method, ProblemError
from coordinator.planning import PlanRequest, SolverPlanner
from faillite.catalog import (
    PROFILES_SUBDIR,
    Catalog,
    DeviceProfile,
    ProfileOverlay,
    estimated,
    load_catalog,
)
from faillite.config import ConfigError, MeshConfig, packaged_config
from field_kit.kit.model import Kit
from field_kit.kit.render import OPERATOR, VAR, mesh_document

Why = Literal["primary", "warm", "cold", "failover"]
PRIORITY: Final[dict[Why, int]] = {"primary": 0, "warm": 1, "cold": 2, "failover": 3}
MODELS: Final = VAR / "models"
MANIFEST: Final = "stage.json"
PLAN: Final = "plan.json"  # <out>/_operator/plan.json: each app's planned primary


class StageError(RuntimeError):
    """A kit that cannot be staged (no profile for a device class, a missing model file)."""


@dataclass(frozen=True, slots=True)
class StagedFile:
    variant: str
    file: str
    size_mb: float
    why: Why
    apps: tuple[str, ...]
    sha256: str = ""


@dataclass
class NodeStage:
    node: str
    budget_mb: float
    files: list[StagedFile] = field(default_factory=list)
    left_out: list[StagedFile] = field(default_factory=list)  # over the budget

    @property
    def used_mb(self) -> float:
        return sum(f.size_mb for f in self.files)

    @property
    def unprotected(self) -> list[str]:
        """Apps that lose a primary or a backup on this node because a file did not fit."""
        return sorted({a for f in self.left_out for a in f.apps})


@dataclass
class KitStage:
    nodes: list[NodeStage]
    # Apps the plan itself could give no backup (or no primary): nothing fits anywhere.
    unprotected: dict[str, str] = field(default_factory=dict)
    # Profiles staged with the models (coordinators plan with them), and the device classes
    # among them that were estimated, not measured.
    profiles: dict[str, ProfileOverlay] = field(default_factory=dict)
    estimated: list[str] = field(default_factory=list)

    @property
    def apps_unserved(self) -> list[str]:
        """Apps no node can serve: the plan placed them nowhere, or their primary's file did
        not fit where it placed them."""
        unplaced = {a for a, why in self.unprotected.items() if why.startswith("not placed")}
        lost = {a for st in self.nodes for f in st.left_out if f.why == "primary" for a in f.apps}
        return sorted(unplaced | lost)

    @property
    def primaries(self) -> dict[str, tuple[str, str]]:
        """app -> (node, variant) of its primary as planned: the worker that should serve it
        when the kit goes out (``kit check`` compares)."""
        return {
            app: (st.node, f.variant)
            for st in self.nodes
            for f in st.files
            if f.why == "primary"
            for app in f.apps
        }

    @property
    def apps_losing_protection(self) -> list[str]:
        return sorted(set(self.unprotected) | {a for st in self.nodes for a in st.unprotected})


def _wanted(
    kit: Kit, catalog: Catalog, method: Method
) -> tuple[dict[str, list[StagedFile]], dict[str, str]]:
    node = kit.with_role("worker")[0]
    mesh = MeshConfig.model_validate(mesh_document(kit, node))
    planner = SolverPlanner(mesh, catalog, method)
    try:
        result = planner.plan(
            PlanRequest("stage", frozenset(w.id for w in mesh.workers), models_on_disk={})
        )
    except ProblemError as exc:
        raise StageError(f"{exc} (faillite profile measures it on the device)") from exc
    if result is None:
        raise StageError("the kit has no worker to plan on")
    wants: dict[str, dict[str, tuple[Why, set[str]]]] = {w.id: {} for w in mesh.workers}

    def want(server: str, variant: str, why: Why, app: str) -> None:
        cur = wants[server].get(variant)
        if cur is None:
            wants[server][variant] = (why, {app})
            return
        best = why if PRIORITY[why] < PRIORITY[cur[0]] else cur[0]
        wants[server][variant] = (best, cur[1] | {app})

    placement = result.placement
    for app, a in placement.primary.items():
        want(a.server, a.variant, "primary", app)
    for app, b in placement.backups.items():
        kind: Why = "warm" if b.kind == "warm" else "cold"
        want(b.server, b.variant, kind, app)
        if b.first is not None:
            want(b.server, b.first, kind, app)
    for plan in (result.table or {}).values():
        for step in plan.steps():
            if step.action in ("load", "upgrade"):
                want(step.server, step.variant, "failover", step.app)
    out: dict[str, list[StagedFile]] = {}
    for server, variants in wants.items():
        files = [
            StagedFile(
                v,
                catalog.variant(v).file,
                catalog.variant(v).file_size_mb,
                why,
                tuple(sorted(apps)),
            )
            for v, (why, apps) in variants.items()
        ]
        # Most needed first; among equals the smaller, so more fits.
        out[server] = sorted(files, key=lambda f: (PRIORITY[f.why], f.size_mb, f.variant))
    unprotected = {a: "no backup fits" for a in placement.unprotected()}
    unprotected |= {a: f"not placed: {why}" for a, why in placement.unplaced.items()}
    return out, unprotected


def kit_profiles(kit: Kit, catalog: Catalog) -> tuple[Catalog, dict[str, ProfileOverlay]]:
    """``catalog`` with the kit's declared estimates for device classes nobody measured, and
    the profiles of every device class the kit's workers are (measured or estimated) that the
    packaged catalog lacks: staged with the models, so the coordinators plan with them too."""
    packaged = load_catalog(packaged_config("catalog.yaml"))
    out: dict[str, ProfileOverlay] = {}
    for device_class in sorted({n.device_class for n in kit.with_role("worker")}):
        measured = _profiles_of(catalog, device_class)
        if not measured and device_class in kit.estimates:
            e = kit.estimates[device_class]
            try:
                ov = estimated(
                    catalog,
                    device_class,
                    e.base,
                    latency_scale=e.latency_scale,
                    memory_scale=e.memory_scale,
                    load_scale=e.load_scale,
                )
            except ConfigError as exc:
                raise StageError(f"estimates.{device_class}: {exc}") from exc
            catalog = catalog.with_profiles(device_class, ov.profiles)
            out[device_class] = ov
        elif measured and not _profiles_of(packaged, device_class):
            source = next(iter(measured.values())).source
            out[device_class] = ProfileOverlay(
                device_class=device_class, source=source, profiles=measured
            )
    return catalog, out


def _profiles_of(catalog: Catalog, device_class: str) -> dict[str, DeviceProfile]:
    return {
        v.name: p
        for fam in catalog.families
        for v in fam.variants
        if (p := v.profiles.get(device_class)) is not None
    }


def plan_stage(kit: Kit, catalog: Catalog, *, method: Method = "lp") -> KitStage:
    """What each worker node holds under its budget, and what it had to leave out. The
    planner already places within every node's disk budget; what its failover tables call on
    beyond that is left out here, most needed files kept first."""
    catalog, profiles = kit_profiles(kit, catalog)
    wants, unprotected = _wanted(kit, catalog, method)
    stages: list[NodeStage] = []
    for node in kit.with_role("worker"):
        st = NodeStage(node.id, node.disk_mb)
        for f in wants.get(node.id, []):
            (st.files if st.used_mb + f.size_mb <= node.disk_mb else st.left_out).append(f)
        stages.append(st)
    estimates = sorted(c for c, ov in profiles.items() if ov.estimate)
    return KitStage(stages, unprotected, profiles, estimates)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stage(
    kit: Kit, catalog: Catalog, models_dir: Path, out: Path, *, method: Method = "lp"
) -> KitStage:
    """Copy each node's files from ``models_dir`` into ``out/<node>/var/lib/faillite/models``,
    verify each copy (sha256), and write the manifest ``stage.json`` beside them."""
    stages = plan_stage(kit, catalog, method=method)
    for node in kit.nodes:  # every node: a coordinator plans with them, a worker reports them
        folder = out / node.id / str(MODELS).lstrip("/") / PROFILES_SUBDIR
        if folder.exists():
            shutil.rmtree(folder)
        for device_class, ov in stages.profiles.items():
            folder.mkdir(parents=True, exist_ok=True)
            doc = ov.model_dump(mode="json", exclude_defaults=True)
            (folder / f"{device_class}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    for st in stages.nodes:
        dest = out / st.node / str(MODELS).lstrip("/")
        for old in dest.glob("*"):  # what was staged before; the profiles are this stage's
            if old.is_file():
                old.unlink()
        dest.mkdir(parents=True, exist_ok=True)
        verified: list[StagedFile] = []
        for f in st.files:
            src = models_dir / f.file
            if not src.is_file():
                raise StageError(f"{src}: missing (faillite models build makes it)")
            want = _sha256(src)
            shutil.copyfile(src, dest / f.file)
            got = _sha256(dest / f.file)
            if got != want:
                raise StageError(f"{dest / f.file}: copy differs from {src} (sha256)")
            verified.append(StagedFile(**{**asdict(f), "sha256": got}))
        st.files = verified
        (dest / MANIFEST).write_text(json.dumps(manifest(st), indent=2, sort_keys=True) + "\n")
    operator = out / OPERATOR
    operator.mkdir(parents=True, exist_ok=True)
    plan = {app: {"worker": w, "variant": v} for app, (w, v) in sorted(stages.primaries.items())}
    (operator / PLAN).write_text(json.dumps({"kit": kit.kit, "apps": plan}, indent=2) + "\n")
    return stages


def manifest(st: NodeStage) -> dict[str, object]:
    return {
        "node": st.node,
        "budget_mb": st.budget_mb,
        "used_mb": round(st.used_mb, 2),
        "files": [asdict(f) for f in st.files],
        "left_out": [asdict(f) for f in st.left_out],
        "unprotected_apps": st.unprotected,
        "models_dir": str(PurePosixPath(MODELS)),
    }


def report(stages: KitStage) -> str:
    lines = [
        f"{'node':<10} {'files':>5} {'MB':>8} {'budget':>8}  left out (apps losing protection)"
    ]
    for st in stages.nodes:
        left = ", ".join(f"{f.variant} ({', '.join(f.apps)})" for f in st.left_out) or "-"
        lines.append(
            f"{st.node:<10} {len(st.files):>5} {st.used_mb:>8.1f} {st.budget_mb:>8.0f}  {left}"
        )
    for app, why in sorted(stages.unprotected.items()):
        lines.append(f"{app}: {why}")
    for device_class in stages.estimated:
        lines.append(
            f"{device_class}: planned from an ESTIMATE ({stages.profiles[device_class].source})"
        )
    return "\n".join(lines)
