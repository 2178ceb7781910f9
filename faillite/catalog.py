"""The model catalog: families of interchangeable variants with their measured costs.

A family (``efficientnet_lite``) holds variants ordered from smallest to largest. The planner
picks variants per app and per server; workers load them by file name from the models dir;
the profiler fills ``profiles`` per device class.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, ValidationError, model_validator

from faillite.config import ConfigError, StrictModel, format_validation_error, load_yaml


class Preprocess(StrictModel):
    """How a BGR uint8 frame becomes the model's input tensor."""

    size: tuple[int, int]  # (height, width) of the model input
    resize: Literal["center_crop", "stretch"] = "center_crop"
    crop_pct: float = Field(default=0.875, gt=0, le=1)  # center_crop: crop = size / crop_pct
    mean: tuple[float, float, float] = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # RGB, 0..255
    std: tuple[float, float, float] = (0.229 * 255, 0.224 * 255, 0.225 * 255)
    color: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["nchw", "nhwc"] = "nchw"


ESTIMATE: Final = "estimate"  # the source of a profile that was not measured starts with it


class DeviceProfile(StrictModel):
    """Measured costs of one variant on one device class."""

    latency_ms: float = Field(gt=0)
    memory_mb: float = Field(gt=0)
    load_ms: float = Field(default=0.0, ge=0)
    first_inference_ms: float = Field(default=0.0, ge=0)
    source: str = ""
    # Further figures ``faillite profile`` measures; the planner reads only the four above.
    p99_ms: float | None = Field(default=None, gt=0)  # batch-1 latency, 99th percentile
    warm_load_ms: float | None = Field(default=None, ge=0)  # load into a process already serving
    gpu_memory_mb: float | None = Field(default=None, ge=0)  # NVML, None where not measurable
    throughput_fps: float | None = Field(default=None, gt=0)  # batch 1, back-to-back
    best_batch: int | None = Field(default=None, ge=1)
    best_batch_fps: float | None = Field(default=None, gt=0)  # images/s at best_batch
    batching: str | None = None  # how batches were run, or why they were not

    @property
    def estimate(self) -> bool:
        """Scaled from another class's figures (``kit.yaml``'s ``estimates``), not measured."""
        return self.source.startswith(ESTIMATE)


class Variant(StrictModel):
    name: str
    file: str  # file name in the models dir
    accuracy: float = Field(ge=0, le=100)  # ImageNet top-1 %, or the catalog's figure
    memory_mb: float = Field(gt=0)  # resident cost when loaded (CPU reference)
    file_size_mb: float = Field(gt=0)
    params_m: float | None = None
    gflops: float | None = None
    builder: Literal["efficientnet_lite", "synthetic_resnet", "external"] = "external"
    build: dict[str, Any] = Field(default_factory=dict)
    preprocess: Preprocess
    labels: Literal["imagenet1k", "none"] = "imagenet1k"
    accuracy_source: str = ""
    profiles: dict[str, DeviceProfile] = Field(default_factory=dict)

    def profile(self, device_class: str) -> DeviceProfile | None:
        return self.profiles.get(device_class)


class Family(StrictModel):
    name: str
    task: Literal["classification"] = "classification"
    variants: tuple[Variant, ...]

    @model_validator(mode="after")
    def _ordered(self) -> Family:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"family {self.name!r} has duplicate variant names")
        if not self.variants:
            raise ValueError(f"family {self.name!r} has no variants")
        return self

    def smallest(self) -> Variant:
        return min(self.variants, key=lambda v: v.memory_mb)

    def largest(self) -> Variant:
        return max(self.variants, key=lambda v: v.accuracy)


class Catalog(StrictModel):
    families: tuple[Family, ...]

    @model_validator(mode="after")
    def _unique(self) -> Catalog:
        seen: set[str] = set()
        for fam in self.families:
            for v in fam.variants:
                if v.name in seen:
                    raise ValueError(f"variant {v.name!r} appears in two families")
                seen.add(v.name)
        return self

    def family(self, name: str) -> Family:
        for fam in self.families:
            if fam.name == name:
                return fam
        raise KeyError(f"unknown model family {name!r}")

    def variant(self, name: str) -> Variant:
        for fam in self.families:
            for v in fam.variants:
                if v.name == name:
                    return v
        raise KeyError(f"unknown model variant {name!r}")

    def family_of(self, variant: str) -> Family:
        for fam in self.families:
            if any(v.name == variant for v in fam.variants):
                return fam
        raise KeyError(f"unknown model variant {variant!r}")

    def variants(self) -> list[Variant]:
        return [v for fam in self.families for v in fam.variants]

    def with_profiles(self, device_class: str, profiles: Mapping[str, DeviceProfile]) -> Catalog:
        """This catalog with ``profiles`` as the profiles of ``device_class``.

        Each named variant gets (or has replaced) its profile for that device class; every
        other device class, and every variant not named, is left as it was. A name that is not
        a variant of the catalog raises :class:`ConfigError` naming it."""
        if not device_class:
            raise ConfigError("a profile overlay needs a device class")
        known = {v.name for v in self.variants()}
        unknown = sorted(set(profiles) - known)
        if unknown:
            raise ConfigError(
                f"profiles for device class {device_class!r} name variants not in the catalog: "
                + ", ".join(unknown)
            )
        families = []
        for fam in self.families:
            variants = tuple(
                v.model_copy(update={"profiles": {**v.profiles, device_class: profiles[v.name]}})
                if v.name in profiles
                else v
                for v in fam.variants
            )
            families.append(fam.model_copy(update={"variants": variants}))
        return self.model_copy(update={"families": tuple(families)})


class ProfileOverlay(StrictModel):
    """One device class's measured profiles: a file ``faillite profile`` writes.

    It lives in ``<models_dir>/profiles/<device_class>.yaml``, beside the files it measured;
    :func:`load_profile_overlays` merges every such file into the catalog."""

    device_class: str = Field(min_length=1)
    source: str = ""  # where and how it was measured: host, CPU / GPU, runtime versions, date
    machine: dict[str, Any] = Field(default_factory=dict)
    profiles: dict[str, DeviceProfile]

    @property
    def estimate(self) -> bool:
        return self.source.startswith(ESTIMATE)


PROFILES_SUBDIR = "profiles"


def estimated(
    catalog: Catalog,
    device_class: str,
    base: str,
    *,
    latency_scale: float,
    memory_scale: float = 1.0,
    load_scale: float = 1.0,
) -> ProfileOverlay:
    """Profiles of ``device_class`` estimated from ``base``'s measured ones, scaled; their
    source says so, so that a plan made from them can say it is an estimate."""
    source = (
        f"{ESTIMATE}: {base} x{latency_scale:g} latency, x{memory_scale:g} memory "
        "(not measured; faillite profile on the device replaces it)"
    )
    profiles = {}
    for family in catalog.families:
        for v in family.variants:
            p = v.profiles.get(base)
            if p is None:
                continue
            profiles[v.name] = DeviceProfile(
                latency_ms=p.latency_ms * latency_scale,
                memory_mb=p.memory_mb * memory_scale,
                load_ms=p.load_ms * load_scale,
                first_inference_ms=p.first_inference_ms * latency_scale,
                source=source,
            )
    if not profiles:
        raise ConfigError(f"no variant has a measured {base!r} profile to estimate from")
    return ProfileOverlay(device_class=device_class, source=source, profiles=profiles)


def overlay_dir(models_dir: str | Path) -> Path:
    return Path(models_dir) / PROFILES_SUBDIR


def overlay_path(models_dir: str | Path, device_class: str) -> Path:
    """Where ``faillite profile`` writes the overlay of ``device_class`` by default."""
    return overlay_dir(models_dir) / f"{device_class}.yaml"


def load_overlay(path: str | Path) -> ProfileOverlay:
    path = Path(path)
    data = load_yaml(path)
    try:
        return ProfileOverlay.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from exc


def merge_overlays(
    catalog: Catalog, overlays: Mapping[str, ProfileOverlay] | list[ProfileOverlay]
) -> Catalog:
    """``catalog`` with every overlay applied (pure). ``overlays`` maps a source name (a path)
    to its overlay, or is a list; two overlays of one device class are refused."""
    named = (
        overlays if isinstance(overlays, Mapping) else {str(i): o for i, o in enumerate(overlays)}
    )
    seen: dict[str, str] = {}
    for name, ov in named.items():
        if ov.device_class in seen:
            raise ConfigError(
                f"device class {ov.device_class!r} is profiled twice: {seen[ov.device_class]} "
                f"and {name}"
            )
        seen[ov.device_class] = name
        try:
            catalog = catalog.with_profiles(ov.device_class, ov.profiles)
        except ConfigError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return catalog


def load_profile_overlays(catalog: Catalog, models_dir: str | Path | None) -> Catalog:
    """``catalog`` with the overlays in ``<models_dir>/profiles/*.yaml`` merged, in name order.

    A device class profiled once with ``faillite profile`` becomes plannable this way (the
    coordinator and ``faillite kit stage`` call it). No such folder: the catalog unchanged."""
    if models_dir is None:
        return catalog
    folder = overlay_dir(models_dir)
    if not folder.is_dir():
        return catalog
    paths = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return merge_overlays(catalog, {str(p): load_overlay(p) for p in paths})


def load_catalog(path: str | Path, *, overlays: str | Path | None = None) -> Catalog:
    """The catalog at ``path``; with ``overlays`` (a models dir), its measured device profiles
    (``<overlays>/profiles/*.yaml``) merged in, see :func:`load_profile_overlays`."""
    path = Path(path)
    data = load_yaml(path)
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from exc
    return load_profile_overlays(catalog, overlays)
