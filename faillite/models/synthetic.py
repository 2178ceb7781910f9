"""Synthetic ResNet-like ONNX classifiers with seeded random weights, for tests and scale.

The graphs have the shapes and costs of torchvision's ResNets (BatchNorm folded into conv
biases): same layers, parameter counts and multiply-adds, so latency and memory are realistic.
The weights are meaningless but deterministic for a seed and scaled so activations stay O(1):
He-normal convs, and each residual branch's last conv scaled down as a zero-ish BatchNorm gamma
would, so the sum over many blocks does not blow up.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx

from faillite.models.graph import BATCH_DIM, FloatArray, GraphBuilder

__all__ = ["BUILDER_VERSION", "RESNET_LAYOUTS", "ResNetLayout", "build_synthetic_resnet"]

BUILDER_VERSION = "2"  # 2: dynamic batch dim. Bump when the produced graph changes
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
_BRANCH_GAIN = 0.2  # scale of each residual branch's output relative to its input


@dataclass(frozen=True)
class ResNetLayout:
    block: Literal["basic", "bottleneck"]
    blocks: tuple[int, int, int, int]


RESNET_LAYOUTS: dict[int, ResNetLayout] = {
    18: ResNetLayout("basic", (2, 2, 2, 2)),
    34: ResNetLayout("basic", (3, 4, 6, 3)),
    50: ResNetLayout("bottleneck", (3, 4, 6, 3)),
    101: ResNetLayout("bottleneck", (3, 4, 23, 3)),
    152: ResNetLayout("bottleneck", (3, 8, 36, 3)),
}


class _Init:
    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def conv(self, cout: int, cin: int, k: int, gain: float = 1.0) -> tuple[FloatArray, FloatArray]:
        std = gain * np.sqrt(2.0 / (cin * k * k))  # He-normal: keeps ReLU activations O(1)
        w = self._rng.standard_normal((cout, cin, k, k), dtype=np.float32)
        w *= np.float32(std)
        b = self._rng.standard_normal(cout, dtype=np.float32)
        b *= np.float32(0.01 * gain)
        return w, b

    def fc(self, cout: int, cin: int) -> tuple[FloatArray, FloatArray]:
        w = self._rng.standard_normal((cout, cin), dtype=np.float32)
        w *= np.float32(1.0 / np.sqrt(cin))
        return w, np.zeros(cout, dtype=np.float32)


def build_synthetic_resnet(
    depth: int = 18,
    *,
    seed: int = 0,
    width: int = 64,
    num_classes: int = 1000,
    image_size: int = 224,
    name: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """A ResNet-``depth`` shaped classifier: input ``[N,3,S,S]`` float32, output ``[N,C]``,
    for any batch size N."""
    try:
        layout = RESNET_LAYOUTS[depth]
    except KeyError:
        known = ", ".join(str(d) for d in RESNET_LAYOUTS)
        raise ValueError(f"no synthetic ResNet of depth {depth} (known: {known})") from None
    if width < 1 or num_classes < 1 or image_size < 32:
        raise ValueError("width and num_classes must be >= 1 and image_size >= 32")
    init = _Init(seed)
    g = GraphBuilder()

    w, b = init.conv(width, 3, 7)
    x = g.relu(g.conv(INPUT_NAME, "stem", w, b, stride=2, pads=(3, 3, 3, 3)))
    x = g.max_pool(x, "stem.pool", kernel=3, stride=2, pad=1)

    expansion = 4 if layout.block == "bottleneck" else 1
    cin = width
    for stage, count in enumerate(layout.blocks):
        planes = width * 2**stage
        cout = planes * expansion
        for i in range(count):
            stride = 2 if (stage > 0 and i == 0) else 1
            name = f"layer{stage + 1}.{i}"
            shortcut = x
            if stride != 1 or cin != cout:
                w, b = init.conv(cout, cin, 1, gain=_BRANCH_GAIN)
                shortcut = g.conv(x, f"{name}.downsample", w, b, stride=stride)
            if layout.block == "basic":
                w, b = init.conv(planes, cin, 3)
                y = g.relu(g.conv(x, f"{name}.conv1", w, b, stride=stride, pads=(1, 1, 1, 1)))
                w, b = init.conv(cout, planes, 3, gain=_BRANCH_GAIN)
                y = g.conv(y, f"{name}.conv2", w, b, pads=(1, 1, 1, 1))
            else:
                w, b = init.conv(planes, cin, 1)
                y = g.relu(g.conv(x, f"{name}.conv1", w, b))
                w, b = init.conv(planes, planes, 3)
                y = g.relu(g.conv(y, f"{name}.conv2", w, b, stride=stride, pads=(1, 1, 1, 1)))
                w, b = init.conv(cout, planes, 1, gain=_BRANCH_GAIN)
                y = g.conv(y, f"{name}.conv3", w, b)
            x = g.relu(g.add(y, shortcut, f"{name}.add"))
            cin = cout

    w_fc, b_fc = init.fc(num_classes, cin)
    g.classifier(x, w_fc, b_fc, OUTPUT_NAME)

    variant = name or f"resnet_synth{depth}"
    params: dict[str, Any] = {
        "depth": depth,
        "seed": seed,
        "width": width,
        "num_classes": num_classes,
        "image_size": image_size,
    }
    props = {
        "faillite.variant": variant,
        "faillite.builder": "synthetic_resnet",
        "faillite.builder_version": BUILDER_VERSION,
        "faillite.synthetic": "true",  # random weights: predictions mean nothing
        "build": json.dumps(params, sort_keys=True),
        **dict(metadata or {}),
    }
    return g.model(
        graph_name=variant,
        input_name=INPUT_NAME,
        input_shape=(BATCH_DIM, 3, image_size, image_size),
        output_name=OUTPUT_NAME,
        output_shape=(BATCH_DIM, num_classes),
        metadata=props,
        doc=f"synthetic ResNet-{depth} (random weights, seed {seed}), built by faillite",
    )
