"""Device-class profile overlays (``faillite profile``'s files) merged into the catalog: pure."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from faillite.catalog import (
    Catalog,
    DeviceProfile,
    ProfileOverlay,
    load_catalog,
    load_overlay,
    load_profile_overlays,
    merge_overlays,
    overlay_path,
)
from faillite.config import ConfigError, packaged_config


@pytest.fixture(scope="module")
def base() -> Catalog:
    return load_catalog(packaged_config("catalog.yaml"))


def prof(latency: float, memory: float = 50.0, **extra: object) -> DeviceProfile:
    return DeviceProfile(latency_ms=latency, memory_mb=memory, load_ms=10, **extra)  # type: ignore[arg-type]


def test_an_overlay_adds_a_device_class_and_leaves_the_rest(base: Catalog) -> None:
    merged = base.with_profiles("test-cpu", {"efficientnet_lite0": prof(3.0, p99_ms=4.0)})
    lite0 = merged.variant("efficientnet_lite0")
    assert lite0.profile("test-cpu") == prof(3.0, p99_ms=4.0)
    assert lite0.profile("cpu") == base.variant("efficientnet_lite0").profile("cpu")
    for v in base.variants():  # only the named variant changed, and only in its new class
        if v.name != "efficientnet_lite0":
            assert merged.variant(v.name) == v
    assert base.variant("efficientnet_lite0").profile("test-cpu") is None  # base untouched


def test_an_overlay_replaces_the_profile_of_its_class_only(base: Catalog) -> None:
    before = base.variant("efficientnet_lite1").profiles
    assert "cpu" in before
    merged = base.with_profiles("cpu", {"efficientnet_lite1": prof(99.0, 123.0)})
    after = merged.variant("efficientnet_lite1").profiles
    assert after["cpu"] == prof(99.0, 123.0)
    assert {k: v for k, v in after.items() if k != "cpu"} == {
        k: v for k, v in before.items() if k != "cpu"
    }
    assert merged.variant("efficientnet_lite0").profile("cpu") == base.variant(
        "efficientnet_lite0"
    ).profile("cpu")


def test_unknown_variants_are_refused_by_name(base: Catalog) -> None:
    with pytest.raises(ConfigError, match=r"not in the catalog: mobilenet_x, zzz_net"):
        base.with_profiles("test-cpu", {"zzz_net": prof(1), "mobilenet_x": prof(1)})


def test_two_overlays_of_one_class_are_refused(base: Catalog) -> None:
    a = ProfileOverlay(device_class="x", profiles={"efficientnet_lite0": prof(1)})
    b = ProfileOverlay(device_class="x", profiles={"efficientnet_lite1": prof(2)})
    with pytest.raises(ConfigError, match=r"'x' is profiled twice: a.yaml and b.yaml"):
        merge_overlays(base, {"a.yaml": a, "b.yaml": b})
    c = ProfileOverlay(device_class="y", profiles={"efficientnet_lite1": prof(2)})
    merged = merge_overlays(base, [a, c])
    assert merged.variant("efficientnet_lite0").profile("x") == prof(1)
    assert merged.variant("efficientnet_lite1").profile("y") == prof(2)


def test_overlays_load_from_the_models_dir(base: Catalog, tmp_path: Path) -> None:
    assert load_profile_overlays(base, tmp_path) == base  # no profiles/ folder
    assert load_profile_overlays(base, None) == base
    path = overlay_path(tmp_path, "jetson-orin-nx")
    assert path == tmp_path / "profiles" / "jetson-orin-nx.yaml"
    path.parent.mkdir()
    data = {
        "device_class": "jetson-orin-nx",
        "source": "here",
        "profiles": {"resnet_synth18": {"latency_ms": 4.5, "memory_mb": 80, "p99_ms": 5.0}},
    }
    path.write_text(yaml.safe_dump(data))
    (path.parent / "notes.txt").write_text("not an overlay")
    merged = load_profile_overlays(base, tmp_path)
    got = merged.variant("resnet_synth18").profile("jetson-orin-nx")
    assert got is not None and got.latency_ms == 4.5 and got.p99_ms == 5.0
    assert load_catalog(packaged_config("catalog.yaml"), overlays=tmp_path) == merged
    assert load_overlay(path).device_class == "jetson-orin-nx"


def test_a_bad_overlay_file_is_a_config_error_naming_it(base: Catalog, tmp_path: Path) -> None:
    path = overlay_path(tmp_path, "x")
    path.parent.mkdir()
    path.write_text(
        yaml.safe_dump(
            {"device_class": "x", "profiles": {"nope": {"latency_ms": 1, "memory_mb": 1}}}
        )
    )
    with pytest.raises(ConfigError, match=r"x\.yaml.*not in the catalog: nope"):
        load_profile_overlays(base, tmp_path)
    path.write_text(
        yaml.safe_dump(
            {
                "device_class": "x",
                "profiles": {"efficientnet_lite0": {"latency_ms": 0, "memory_mb": 1}},
            }
        )
    )
    with pytest.raises(ConfigError, match=r"x\.yaml"):
        load_profile_overlays(base, tmp_path)
