"""Scenarios: a fleet of A2 servers and camera apps built from measured profiles, seeded.

Variants, memory, latency, load and first-inference times come from a profiles CSV shaped like
``configs/a2_profiles.csv`` (read with the planner's :func:`load_profiles_csv`); accuracies come
from the A2 catalog (``configs/a2_catalog.yaml``), matched by variant name. Families are the
CSV's ``model_family``.

The memory budget is set relative to what the apps' primaries need: ``memory_scale`` x the sum,
over apps, of the memory of the best variant each could run (most accurate within its latency
SLO and one device's compute). At the default scale 1.5 the fleet holds every primary but full
homogeneous warm replication, which needs 2x, does not fit.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.planner import (
    App,
    Knobs,
    Problem,
    ProblemError,
    Server,
    Variant,
    VariantCost,
    load_profiles_csv,
)
from faillite.catalog import Catalog, load_catalog
from faillite.config import ConfigError, packaged_config
from field_kit.simulate.errors import ScenarioError

DEVICE_CLASS = "a2"
A2_MEMORY_MB = 16 * 1024.0  # an NVIDIA A2 has 16 GB
A2_HEADROOM_MB = 1024.0  # kept free for the CUDA context, activations and decode buffers
DEFAULT_MEMORY_SCALE = 1.5


def default_profiles() -> Path:
    return packaged_config("a2_profiles.csv")


def default_catalog() -> Path:
    return packaged_config("a2_catalog.yaml")


@dataclass(frozen=True, slots=True)
class SiteSpec:
    """The shape of a generated scenario; the seed fills in families, rates, SLOs."""

    n_apps: int
    n_servers: int
    servers_per_domain: int = 1  # 1: each server its own failure domain; else racks
    critical_share: float = 0.25
    rates_fps: tuple[float, ...] = (5.0, 10.0, 15.0, 20.0, 30.0)
    slos_ms: tuple[float, ...] = (25.0, 50.0, 100.0)
    critical_weight: float = 2.0
    description: str = ""

    def __post_init__(self) -> None:
        if self.n_apps < 1 or self.n_servers < 2:
            raise ScenarioError("a scenario needs at least 1 app and 2 servers")
        if self.servers_per_domain < 1 or self.servers_per_domain >= self.n_servers:
            raise ScenarioError("servers_per_domain must be >= 1 and leave a second domain")
        if not 0.0 <= self.critical_share <= 1.0:
            raise ScenarioError(f"critical_share must be in [0, 1], got {self.critical_share}")


SCENARIOS: Mapping[str, SiteSpec] = {
    "site27": SiteSpec(
        27,
        8,
        1,
        description="27-model edge site (the size of FailLite's evaluation) on 8 A2 servers, "
        "each its own failure domain",
    ),
    "fleet1000": SiteSpec(
        1000,
        100,
        5,
        # Ten cameras per A2: at 5-30 fps the best variants would need 2.1 A2s of compute per
        # server, so the fleet's cameras run slower (the fleet is then ~60 % busy).
        rates_fps=(1.0, 2.0, 5.0, 10.0),
        description="1000 apps (1-10 fps) on 100 A2 servers in 20 racks of 5 (a rack is a "
        "failure domain)",
    ),
}


@dataclass(frozen=True, slots=True)
class Catalogued:
    """Variants and A2 costs of a profiles CSV, with the catalog's accuracies."""

    variants: tuple[Variant, ...]
    costs: Mapping[tuple[str, str], VariantCost]
    profiles: Path
    catalog: Path

    def family(self, name: str) -> tuple[Variant, ...]:
        return tuple(v for v in self.variants if v.family == name)

    def families(self) -> tuple[str, ...]:
        return tuple(sorted({v.family for v in self.variants}))


def load_catalogued(profiles: Path | None = None, catalog: Path | None = None) -> Catalogued:
    """Variants of the profiles CSV with accuracies from the catalog (by variant name)."""
    profiles = profiles or default_profiles()
    catalog = catalog or default_catalog()
    try:
        rows = load_profiles_csv(profiles, DEVICE_CLASS)
    except ProblemError as exc:
        raise ScenarioError(str(exc)) from exc
    if not rows:
        raise ScenarioError(f"{profiles}: no profile rows")
    try:
        cat: Catalog = load_catalog(catalog)
    except (ConfigError, OSError) as exc:
        raise ScenarioError(f"cannot load catalog {catalog}: {exc}") from exc
    variants: list[Variant] = []
    costs: dict[tuple[str, str], VariantCost] = {}
    for name, row in rows.items():
        try:
            acc = cat.variant(name).accuracy
        except KeyError:
            raise ScenarioError(
                f"{profiles}: variant {name!r} has no accuracy in catalog {catalog}"
            ) from None
        variants.append(Variant(name, row.family, acc, row.file_size_mb))
        costs[(name, DEVICE_CLASS)] = row.cost
    return Catalogued(tuple(variants), costs, Path(profiles), Path(catalog))


def best_variant(cat: Catalogued, app: App) -> Variant:
    """The most accurate variant of the app's family within its SLO and one device's compute
    (ties: the smaller one): what the app would run with memory to spare."""
    ok = []
    for v in cat.family(app.family):
        c = cat.costs[(v.name, DEVICE_CLASS)]
        if c.latency_ms <= app.slo_ms and app.rate_fps * c.latency_ms / 1000.0 <= 1.0:
            ok.append((v.accuracy, -c.memory_mb, v.name, v))
    if not ok:
        raise ScenarioError(f"app {app.id}: no variant of {app.family} meets its SLO on an A2")
    return max(ok)[3]


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    seed: int
    memory_scale: float
    problem: Problem
    server_memory_mb: float
    primary_need_mb: float  # Σ memory of each app's best variant (see best_variant)
    description: str = ""
    profiles: str = ""
    spec: SiteSpec | None = None
    best: Mapping[str, str] = field(default_factory=dict)  # app -> its best variant

    @property
    def total_memory_mb(self) -> float:
        return sum(s.memory_mb for s in self.problem.servers)

    @property
    def full_replication_mb(self) -> float:
        """Memory of every best primary plus a warm replica of the same variant."""
        return 2.0 * self.primary_need_mb

    def full_replication_fits(self) -> bool:
        return self.total_memory_mb >= self.full_replication_mb

    def budget_statement(self) -> str:
        n = len(self.problem.servers)
        verdict = "does not fit" if not self.full_replication_fits() else "fits (by total)"
        return (
            f"Memory budget: {n} A2 servers x {self.server_memory_mb:,.0f} MB = "
            f"{self.total_memory_mb:,.0f} MB for models (memory scale {self.memory_scale:g} x "
            f"the primaries' need of {self.primary_need_mb:,.0f} MB, each app at its best "
            f"variant). Full homogeneous warm replication would need "
            f"{self.full_replication_mb:,.0f} MB: it {verdict}."
        )

    def params(self) -> dict[str, object]:
        p = self.problem
        doms = p.domains()
        return {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "apps": len(p.apps),
            "critical_apps": sum(a.critical for a in p.apps),
            "servers": len(p.servers),
            "failure_domains": len(doms),
            "servers_per_domain": max(len(v) for v in doms.values()),
            "families": len({a.family for a in p.apps}),
            "variants": len(p.variants),
            "rates_fps": sorted({a.rate_fps for a in p.apps}),
            "slos_ms": sorted({a.slo_ms for a in p.apps}),
            "memory_scale": self.memory_scale,
            "server_memory_mb": self.server_memory_mb,
            "total_memory_mb": self.total_memory_mb,
            "primary_need_mb": round(self.primary_need_mb, 3),
            "full_replication_mb": round(self.full_replication_mb, 3),
            "full_replication_fits": self.full_replication_fits(),
            "detection_ms": p.knobs.detection_ms,
            "reroute_ms": p.knobs.reroute_ms,
            "profiles": self.profiles,
        }


def generate(
    spec: SiteSpec,
    cat: Catalogued,
    seed: int,
    memory_scale: float = DEFAULT_MEMORY_SCALE,
    *,
    name: str = "custom",
    knobs: Knobs | None = None,
) -> Scenario:
    """A seeded scenario of ``spec`` shape: families spread evenly over the apps, rates and
    SLOs drawn from the spec, equal A2 servers sized by ``memory_scale``."""
    if not (memory_scale > 0 and math.isfinite(memory_scale)):
        raise ScenarioError(f"memory scale must be > 0, got {memory_scale}")
    rng = random.Random(seed)
    fams = list(cat.families())
    pool: list[str] = []
    while len(pool) < spec.n_apps:  # every family once per round, in a seeded order
        rnd = fams[:]
        rng.shuffle(rnd)
        pool += rnd
    width = len(str(spec.n_apps - 1))
    apps: list[App] = []
    best: dict[str, str] = {}
    need = 0.0
    for i in range(spec.n_apps):
        critical = rng.random() < spec.critical_share
        app = App(
            id=f"app{i:0{width}d}",
            family=pool[i],
            rate_fps=rng.choice(spec.rates_fps),
            slo_ms=rng.choice(spec.slos_ms),
            weight=spec.critical_weight if critical else 1.0,
            critical=critical,
        )
        v = best_variant(cat, app)
        best[app.id] = v.name
        need += cat.costs[(v.name, DEVICE_CLASS)].memory_mb
        apps.append(app)
    per_server = float(round(memory_scale * need / spec.n_servers))
    cap = A2_MEMORY_MB - A2_HEADROOM_MB
    if per_server > cap:
        raise ScenarioError(
            f"memory scale {memory_scale:g} asks {per_server:,.0f} MB per server, more than an "
            f"A2 has for models ({cap:,.0f} MB)"
        )
    swidth = len(str(spec.n_servers - 1))
    dwidth = len(str(spec.n_servers // spec.servers_per_domain))
    servers = tuple(
        Server(
            id=f"a2-{s:0{swidth}d}",
            memory_mb=per_server,
            compute_budget=1.0,
            failure_domain=(
                None
                if spec.servers_per_domain == 1
                else f"rack{s // spec.servers_per_domain:0{dwidth}d}"
            ),
            device_class=DEVICE_CLASS,
        )
        for s in range(spec.n_servers)
    )
    try:
        problem = Problem(servers, tuple(apps), cat.variants, dict(cat.costs), knobs or Knobs())
    except ProblemError as exc:
        raise ScenarioError(str(exc)) from exc
    return Scenario(
        name=name,
        seed=seed,
        memory_scale=memory_scale,
        problem=problem,
        server_memory_mb=per_server,
        primary_need_mb=need,
        description=spec.description,
        profiles=str(cat.profiles),
        spec=spec,
        best=best,
    )


def named(
    name: str,
    seed: int = 0,
    memory_scale: float = DEFAULT_MEMORY_SCALE,
    *,
    profiles: Path | None = None,
    catalog: Path | None = None,
    knobs: Knobs | None = None,
) -> Scenario:
    """One of :data:`SCENARIOS` by name."""
    spec = SCENARIOS.get(name)
    if spec is None:
        raise ScenarioError(
            f"unknown scenario {name!r} (choose from {', '.join(sorted(SCENARIOS))})"
        )
    cat = load_catalogued(profiles, catalog)
    return generate(spec, cat, seed, memory_scale, name=name, knobs=knobs)


def from_problem(
    problem: Problem, name: str = "custom", *, description: str = "", seed: int = 0
) -> Scenario:
    """A scenario around a hand-made problem (tests): the need is each app's best variant."""
    need = 0.0
    best: dict[str, str] = {}
    for app in problem.apps:
        fits = [
            (v.accuracy, -c.memory_mb, v.name)
            for v in problem.family(app.family)
            for s in problem.servers
            if (c := problem.cost_on(v.name, s.id)) is not None
            and c.latency_ms <= app.slo_ms
            and app.rate_fps * c.latency_ms / 1000.0 <= s.compute_budget
        ]
        if fits:
            _, neg_mem, vname = max(fits)
            best[app.id] = vname
            need += -neg_mem
    total = sum(s.memory_mb for s in problem.servers)
    return Scenario(
        name=name,
        seed=seed,
        memory_scale=total / need if need else math.inf,
        problem=problem,
        server_memory_mb=max((s.memory_mb for s in problem.servers), default=0.0),
        primary_need_mb=need,
        description=description,
        best=best,
    )
