"""The model catalog: families of interchangeable variants with their measured costs.

A family (``efficientnet_lite``) holds variants ordered from smallest to largest. The planner
picks variants per app and per server; workers load them by file name from the models dir;
the profiler fills ``profiles`` per device class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

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


class DeviceProfile(StrictModel):
    """Measured costs of one variant on one device class."""

    latency_ms: float = Field(gt=0)
    memory_mb: float = Field(gt=0)
    load_ms: float = Field(default=0.0, ge=0)
    first_inference_ms: float = Field(default=0.0, ge=0)
    source: str = ""


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


def load_catalog(path: str | Path) -> Catalog:
    path = Path(path)
    data = load_yaml(path)
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from exc
