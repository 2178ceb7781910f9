"""The placement problem as plain frozen data: servers, apps, variants and per-device costs.

Units: memory and disk in MB (MiB, as the profiler measures them), latencies and times in ms,
compute as a share of one device's time (an app costs ``rate_fps * latency_ms / 1000``),
accuracy in % top-1. Nothing here talks MQTT: the coordinator builds a :class:`Problem` from its
config and the workers' births, the simulator from a catalog or :func:`random_problem`.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from faillite.catalog import Catalog
    from faillite.config import MeshConfig


class ProblemError(ValueError):
    """A problem that cannot be built (unknown family, missing profile, bad numbers)."""


class InfeasibleError(ProblemError):
    """Something cannot be placed at all; the message names what does not fit and why."""


@dataclass(frozen=True, slots=True)
class Server:
    id: str
    memory_mb: float
    compute_budget: float = 1.0  # share of the device's time inference may use
    failure_domain: str | None = None  # servers that fail together (rack, power, kit); None: own
    device_class: str = "cpu"
    disk_mb: float = math.inf
    models_on_disk: frozenset[str] = frozenset()  # variant names already stored there

    @property
    def domain(self) -> str:
        return self.failure_domain or self.id


@dataclass(frozen=True, slots=True)
class App:
    id: str
    family: str
    rate_fps: float
    slo_ms: float = math.inf  # latency SLO of one inference
    weight: float = 1.0
    critical: bool = False
    # The most critical: a hot backup (runs every frame too, publishes once promoted) where
    # compute allows, else warm. Implies critical.
    hot: bool = False

    @property
    def protected_warm(self) -> bool:
        """Wants a loaded (hot or warm) backup."""
        return self.critical or self.hot


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    family: str
    accuracy: float
    file_size_mb: float


@dataclass(frozen=True, slots=True)
class VariantCost:
    """Measured cost of one variant on one device class."""

    memory_mb: float
    latency_ms: float
    load_ms: float = 0.0
    first_inference_ms: float = 0.0

    @property
    def restore_ms(self) -> float:
        """Cold start: load the file, then the (slow) first inference."""
        return self.load_ms + self.first_inference_ms


@dataclass(frozen=True, slots=True)
class Knobs:
    """Weights of the objective. Accuracy is in points, so every bonus is in points per weight."""

    mttr_weight: float = 0.002  # λ: accuracy points lost per ms of expected time to recovery
    detection_ms: float = 300.0  # heartbeat detection + confirmation
    reroute_ms: float = 3.0  # republishing the route once a warm replica is chosen
    # Lexicographic preferences as large bonuses: placing an app beats upgrading ~10 others, a
    # warm backup of a critical app beats ~10 cold backups. Reports subtract them again.
    placement_bonus: float = 1000.0
    critical_bonus: float = 1000.0
    # A hot backup of a hot app beats a warm one even at a lower variant: it is what the
    # operator asked for, and it pays for itself in compute (priced: it runs every frame).
    hot_bonus: float = 500.0
    stickiness: float = 0.5  # bonus for keeping an app where it is (re-plans, failback)
    primary_share: float = 1.0  # share of memory and compute stage 1 may give to primaries
    # Cold backups also keep the fastest-to-load smaller variant on disk, so a failover can
    # load it first and upgrade afterwards (the progressive ladder); costs disk only.
    prestage_ladder: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.primary_share <= 1:
            raise ProblemError(f"primary_share must be in (0, 1], got {self.primary_share}")
        for name in ("mttr_weight", "detection_ms", "reroute_ms", "placement_bonus"):
            if getattr(self, name) < 0:
                raise ProblemError(f"knob {name} must be >= 0")


@dataclass(frozen=True, slots=True)
class Problem:
    servers: tuple[Server, ...]
    apps: tuple[App, ...]
    variants: tuple[Variant, ...]
    costs: Mapping[tuple[str, str], VariantCost]  # (variant, device_class) -> cost
    knobs: Knobs = Knobs()
    _servers: dict[str, Server] = field(init=False, repr=False, compare=False)
    _apps: dict[str, App] = field(init=False, repr=False, compare=False)
    _variants: dict[str, Variant] = field(init=False, repr=False, compare=False)
    _families: dict[str, tuple[Variant, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for kind, ids in (
            ("server", [s.id for s in self.servers]),
            ("app", [a.id for a in self.apps]),
            ("variant", [v.name for v in self.variants]),
        ):
            if len(set(ids)) != len(ids):
                dupes = sorted({i for i in ids if ids.count(i) > 1})
                raise ProblemError(f"duplicate {kind} ids: {', '.join(dupes)}")
        fams: dict[str, list[Variant]] = {}
        for v in self.variants:
            fams.setdefault(v.family, []).append(v)
        for s in self.servers:
            if s.memory_mb < 0 or s.compute_budget < 0 or s.disk_mb < 0:
                raise ProblemError(f"server {s.id!r}: negative capacity")
        for a in self.apps:
            if a.family not in fams:
                raise ProblemError(f"app {a.id!r} wants family {a.family!r}, which has no variant")
            if a.rate_fps <= 0 or a.weight <= 0 or a.slo_ms <= 0:
                raise ProblemError(f"app {a.id!r}: rate, weight and SLO must be > 0")
        for (vname, dc), c in self.costs.items():
            if c.memory_mb <= 0 or c.latency_ms <= 0 or c.load_ms < 0 or c.first_inference_ms < 0:
                raise ProblemError(f"cost of {vname!r} on {dc!r}: memory and latency must be > 0")
        object.__setattr__(self, "_servers", {s.id: s for s in self.servers})
        object.__setattr__(self, "_apps", {a.id: a for a in self.apps})
        object.__setattr__(self, "_variants", {v.name: v for v in self.variants})
        object.__setattr__(
            self,
            "_families",
            {f: tuple(sorted(vs, key=lambda v: v.accuracy)) for f, vs in fams.items()},
        )

    # -- lookups ---------------------------------------------------------------------------

    def server(self, server_id: str) -> Server:
        return self._servers[server_id]

    def app(self, app_id: str) -> App:
        return self._apps[app_id]

    def variant(self, name: str) -> Variant:
        return self._variants[name]

    def has_server(self, server_id: str) -> bool:
        return server_id in self._servers

    def family(self, name: str) -> tuple[Variant, ...]:
        """Variants of a family, least accurate first."""
        return self._families.get(name, ())

    def cost(self, variant: str, device_class: str) -> VariantCost | None:
        return self.costs.get((variant, device_class))

    def cost_on(self, variant: str, server_id: str) -> VariantCost | None:
        return self.costs.get((variant, self._servers[server_id].device_class))

    def domains(self) -> dict[str, tuple[str, ...]]:
        """Failure domain -> its servers, in server order."""
        out: dict[str, list[str]] = {}
        for s in self.servers:
            out.setdefault(s.domain, []).append(s.id)
        return {d: tuple(ids) for d, ids in out.items()}

    def mttr_ms(
        self, variant: str, server_id: str, kind: Literal["hot", "warm", "cold"], app: str = ""
    ) -> float:
        """Expected time to recovery of a backup: warm = detect + reroute, cold adds a load, hot
        saves the wait for the next frame and its inference (it has run them already)."""
        k = self.knobs
        base = k.detection_ms + k.reroute_ms
        if kind == "hot":
            c = self.cost_on(variant, server_id)
            saved = self.hot_saving_ms(app, c.latency_ms if c is not None else 0.0)
            return max(base - saved, 0.0)
        if kind == "warm":
            return base
        c = self.cost_on(variant, server_id)
        return base + (c.restore_ms if c is not None else math.inf)

    def hot_saving_ms(self, app: str, latency_ms: float) -> float:
        """What a hot backup saves over a warm one: half a frame interval on average (a warm
        one waits for the next frame) and one inference."""
        rate = self._apps[app].rate_fps if app in self._apps else 0.0
        return (500.0 / rate if rate > 0 else 0.0) + latency_ms

    # -- derived problems ------------------------------------------------------------------

    def without(self, server_ids: Iterable[str]) -> Problem:
        """The same problem on the servers not in ``server_ids`` (the survivors of a failure)."""
        gone = set(server_ids)
        return replace(self, servers=tuple(s for s in self.servers if s.id not in gone))

    def with_servers(self, servers: Iterable[Server]) -> Problem:
        return replace(self, servers=tuple(servers))

    def with_knobs(self, **changes: float | bool) -> Problem:
        return replace(self, knobs=replace(self.knobs, **changes))  # type: ignore[arg-type]

    # -- constructors ----------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        mesh: MeshConfig,
        catalog: Catalog,
        alive: set[str] | None = None,
        models_on_disk: Mapping[str, Iterable[str]] | None = None,
        *,
        knobs: Knobs | None = None,
        default_latency_ms: float | None = None,
    ) -> Problem:
        """The problem of a mesh config: its workers (only ``alive`` ones if given) and apps.

        An app's rate is its sensor's fps. Device costs come from each variant's profile for the
        worker's device class; without one, memory falls back to the variant's reference
        ``memory_mb`` and latency to ``default_latency_ms``; if that is None too, the variant
        cannot be costed and a :class:`ProblemError` says which variant and device class.

        A worker listed in ``models_on_disk`` (it reported its files) can run only those: the
        mesh moves no model files (``faillite kit stage`` pre-positions them), so it has no
        disk to fetch into. Unlisted workers keep their ``disk_mb`` (planning ahead, staging).

        GPU workers (``gpu_memory_mb`` set) are placed by GPU memory: their capacity is that
        budget, and a variant costs its profile's ``gpu_memory_mb`` on their device class (the
        profile's ``memory_mb`` where the GPU figure was not measured). CPU workers keep host
        memory. Costs are per device class, so a class is all GPU workers or all CPU ones.
        """
        disk = models_on_disk or {}
        gpu_classes = {w.device_class for w in mesh.workers if w.gpu_memory_mb is not None}
        for dc in sorted(gpu_classes):
            mixed = sorted(
                w.id for w in mesh.workers if w.device_class == dc and w.gpu_memory_mb is None
            )
            if mixed:
                raise ProblemError(
                    f"device class {dc!r} has workers with gpu_memory_mb and without it "
                    f"({', '.join(mixed)}): a class is planned by GPU memory or by host memory; "
                    "set gpu_memory_mb on all of them or give them their own device class"
                )
        servers = tuple(
            Server(
                id=w.id,
                memory_mb=w.gpu_memory_mb if w.gpu_memory_mb is not None else w.memory_mb,
                compute_budget=w.compute_budget,
                failure_domain=w.domain,
                device_class=w.device_class,
                disk_mb=0.0 if w.id in disk else w.disk_mb,
                models_on_disk=frozenset(disk.get(w.id, ())),
            )
            for w in mesh.workers
            if alive is None or w.id in alive
        )
        apps = tuple(
            App(
                id=a.id,
                family=a.family,
                rate_fps=mesh.sensor(a.sensor).fps,
                slo_ms=a.slo_ms,
                weight=a.weight,
                critical=a.critical,
                hot=a.hot,
            )
            for a in mesh.apps
        )
        classes = sorted({w.device_class for w in mesh.workers})
        variants: list[Variant] = []
        costs: dict[tuple[str, str], VariantCost] = {}
        for fam_name in sorted({a.family for a in mesh.apps}):
            try:
                fam = catalog.family(fam_name)
            except KeyError:
                users = sorted(a.id for a in mesh.apps if a.family == fam_name)
                raise ProblemError(
                    f"model family {fam_name!r} (apps {', '.join(users)}) is not in the catalog"
                ) from None
            for v in fam.variants:
                variants.append(Variant(v.name, fam.name, v.accuracy, v.file_size_mb))
                for dc in classes:
                    prof = v.profile(dc)
                    if prof is not None:
                        mem = prof.memory_mb
                        if dc in gpu_classes and prof.gpu_memory_mb:  # 0: not measured
                            mem = prof.gpu_memory_mb
                        costs[(v.name, dc)] = VariantCost(
                            mem, prof.latency_ms, prof.load_ms, prof.first_inference_ms
                        )
                    elif default_latency_ms is not None:
                        costs[(v.name, dc)] = VariantCost(v.memory_mb, default_latency_ms)
                    else:
                        workers = sorted(w.id for w in mesh.workers if w.device_class == dc)
                        raise ProblemError(
                            f"variant {v.name!r} (family {fam.name!r}) has no profile for device "
                            f"class {dc!r} (workers {', '.join(workers)}): its latency there is "
                            "unknown; profile it on that device or pass default_latency_ms"
                        )
        return cls(servers, apps, tuple(variants), costs, knobs or Knobs())


# -- measured profiles (CSV) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CsvProfile:
    """One row of a profiles CSV shaped like ``shared/data/a2_profiles.csv``."""

    variant: str
    family: str
    input_size: tuple[int, int]  # (height, width)
    device: str
    file_size_mb: float
    gflops: float
    params_m: float
    cost: VariantCost
    device_class: str


_CSV_COLUMNS = (
    "model_variant",
    "model_family",
    "model_input_shape",
    "device",
    "onnx_file_size_mb",
    "onnx_load_duration_ms",
    "onnx_gpu_load_memory_mb",
    "onnx_gflops",
    "onnx_mparams",
    "first_inference_time_ms",
    "avg_latency_ms",
)


def load_profiles_csv(path: str | Path, device_class: str = "a2") -> dict[str, CsvProfile]:
    """Variant name -> measured profile.

    ``device_class`` is our name for the device the rows describe (the file's ``device`` column
    is free text such as "NVIDIA A2" and is kept as ``device``).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProblemError(f"cannot read profiles {path}: {exc.strerror}") from exc
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in _CSV_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise ProblemError(f"{path}: missing column(s) {', '.join(missing)}")
    out: dict[str, CsvProfile] = {}
    for line, row in enumerate(reader, start=2):
        try:
            dims = [int(x) for x in row["model_input_shape"].strip("()[] ").split(",")]
            out[row["model_variant"]] = CsvProfile(
                variant=row["model_variant"],
                family=row["model_family"],
                input_size=(dims[-2], dims[-1]),
                device=row["device"],
                file_size_mb=float(row["onnx_file_size_mb"]),
                gflops=float(row["onnx_gflops"]),
                params_m=float(row["onnx_mparams"]),
                cost=VariantCost(
                    memory_mb=float(row["onnx_gpu_load_memory_mb"]),
                    latency_ms=float(row["avg_latency_ms"]),
                    load_ms=float(row["onnx_load_duration_ms"]),
                    first_inference_ms=float(row["first_inference_time_ms"]),
                ),
                device_class=device_class,
            )
        except (ValueError, IndexError) as exc:
            raise ProblemError(f"{path}:{line}: bad value ({exc})") from exc
    return out


# -- random instances ------------------------------------------------------------------------


def random_problem(
    n_apps: int,
    n_servers: int,
    n_variants: int,
    seed: int,
    *,
    n_families: int | None = None,
    n_domains: int | None = None,
    critical_share: float = 0.2,
    hot_share: float = 0.0,
    tightness: float = 1.0,
    knobs: Knobs | None = None,
) -> Problem:
    """A seeded random instance for tests and benchmarks.

    Families of ``n_variants`` variants with increasing accuracy, memory and latency; two device
    classes (``a2`` and a 2.5x slower ``orin``); servers spread round-robin over failure domains
    of about four servers; total memory about twice what every app's largest variant needs
    (``tightness`` > 1 makes it scarcer); some apps critical, some with tight SLOs, some
    (``hot_share``, drawn apart so that a seed's other draws stay the same) hot.
    """
    rng = random.Random(seed)
    hot_rng = random.Random(seed + 1)
    n_families = n_families or max(1, min(6, n_apps // 4 or 1))
    classes = {"a2": (1.0, 1.0), "orin": (2.5, 1.1)}  # latency and memory factors
    variants: list[Variant] = []
    costs: dict[tuple[str, str], VariantCost] = {}
    top_mem: dict[str, float] = {}
    mid_lat: dict[str, float] = {}
    for f in range(n_families):
        fam = f"fam{f}"
        m0, g = rng.uniform(60, 150), rng.uniform(1.4, 2.0)
        acc = rng.uniform(55, 70)
        l0, h = rng.uniform(0.5, 2.0), rng.uniform(1.4, 1.9)
        for i in range(n_variants):
            name = f"{fam}_v{i}"
            mem = m0 * g**i
            file_mb = mem * rng.uniform(0.3, 0.5)
            variants.append(Variant(name, fam, round(acc, 3), round(file_mb, 2)))
            for dc, (lat_f, mem_f) in classes.items():
                costs[(name, dc)] = VariantCost(
                    memory_mb=round(mem * mem_f, 2),
                    latency_ms=round(l0 * h**i * lat_f, 3),
                    load_ms=round((150 + 2.0 * file_mb) * lat_f**0.5, 1),
                    first_inference_ms=round(rng.uniform(100, 600) * (1 + 0.3 * i), 1),
                )
            acc += rng.uniform(2, 6) / (1 + 0.3 * i)
        top_mem[fam] = m0 * g ** (n_variants - 1)
        mid_lat[fam] = l0 * h ** (n_variants // 2)
    apps = []
    for i in range(n_apps):
        fam = f"fam{rng.randrange(n_families)}"
        tight = rng.random() < 0.1
        apps.append(
            App(
                id=f"app{i}",
                family=fam,
                rate_fps=float(rng.choice((1, 2, 5, 10, 15))),
                slo_ms=round(2.2 * mid_lat[fam], 2) if tight else float(rng.choice((100, 200))),
                weight=round(rng.uniform(0.5, 2.0), 3),
                critical=rng.random() < critical_share,
                hot=hot_share > 0 and hot_rng.random() < hot_share,
            )
        )
    need = sum(top_mem[a.family] for a in apps)
    mean_mem = 2.0 * need / max(1, n_servers) / tightness
    n_domains = n_domains or max(2, math.ceil(n_servers / 4))
    all_names = [v.name for v in variants]
    mean_file = sum(v.file_size_mb for v in variants) / len(variants)
    servers = []
    for s in range(n_servers):
        dc = "orin" if rng.random() < 0.3 else "a2"
        on_disk = frozenset(n for n in all_names if rng.random() < 0.15)
        servers.append(
            Server(
                id=f"srv{s}",
                memory_mb=round(mean_mem * rng.uniform(0.6, 1.4), 1),
                compute_budget=1.0,
                failure_domain=f"dom{s % n_domains}",
                device_class=dc,
                # Disk holds about 2-6 files per hosted app: binding now and then.
                disk_mb=round(mean_file * rng.uniform(2, 6) * max(1, n_apps / n_servers), 1),
                models_on_disk=on_disk,
            )
        )
    return Problem(tuple(servers), tuple(apps), tuple(variants), costs, knobs or Knobs())
