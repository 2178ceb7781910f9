"""A small ONNX graph builder shared by the model builders, and graph statistics.

Both families are plain conv nets, so a handful of node helpers cover them. Models use opset 17
with IR version 8 (the pairing onnx defines for opset 17), which every onnxruntime >= 1.14 loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
# The batch dimension's symbolic name: built models take any batch size, so a worker can run
# the frames of several apps in one call (workers.batching).
BATCH_DIM = "batch"

FloatArray = npt.NDArray[np.float32]


class GraphBuilder:
    """Accumulates nodes and initializers; each helper returns its output tensor's name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self._relu6_bounds: tuple[str, str] | None = None

    def _unique(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"duplicate tensor name {name!r}")
        self._names.add(name)
        return name

    def const(self, name: str, value: npt.NDArray[Any]) -> str:
        self.initializers.append(
            numpy_helper.from_array(np.ascontiguousarray(value), self._unique(name))
        )
        return name

    def conv(
        self,
        x: str,
        name: str,
        weight: FloatArray,
        bias: FloatArray | None,
        *,
        stride: int = 1,
        pads: tuple[int, int, int, int] = (0, 0, 0, 0),  # top, left, bottom, right
        group: int = 1,
    ) -> str:
        inputs = [x, self.const(f"{name}.weight", weight)]
        if bias is not None:
            inputs.append(self.const(f"{name}.bias", bias))
        out = self._unique(name)
        top, left, bottom, right = pads
        self.nodes.append(
            helper.make_node(
                "Conv",
                inputs,
                [out],
                name=name,
                kernel_shape=list(weight.shape[2:]),
                strides=[stride, stride],
                pads=[top, left, bottom, right],  # ONNX order: all begins, then all ends
                group=group,
            )
        )
        return out

    def relu(self, x: str) -> str:
        out = self._unique(f"{x}.relu")
        self.nodes.append(helper.make_node("Relu", [x], [out], name=out))
        return out

    def relu6(self, x: str) -> str:
        # Clip with constant bounds; onnxruntime fuses Conv+Clip into one kernel.
        if self._relu6_bounds is None:
            self._relu6_bounds = (
                self.const("relu6.min", np.array(0.0, dtype=np.float32)),
                self.const("relu6.max", np.array(6.0, dtype=np.float32)),
            )
        out = self._unique(f"{x}.relu6")
        lo, hi = self._relu6_bounds
        self.nodes.append(helper.make_node("Clip", [x, lo, hi], [out], name=out))
        return out

    def add(self, a: str, b: str, name: str) -> str:
        out = self._unique(name)
        self.nodes.append(helper.make_node("Add", [a, b], [out], name=name))
        return out

    def max_pool(self, x: str, name: str, *, kernel: int, stride: int, pad: int) -> str:
        out = self._unique(name)
        self.nodes.append(
            helper.make_node(
                "MaxPool",
                [x],
                [out],
                name=name,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[pad] * 4,
            )
        )
        return out

    def classifier(self, x: str, weight: FloatArray, bias: FloatArray, output: str) -> str:
        """Global average pool, flatten, then a fully connected layer into ``output``."""
        pooled = self._unique("head.pool")
        flat = self._unique("head.flatten")
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled], name=pooled))
        self.nodes.append(helper.make_node("Flatten", [pooled], [flat], name=flat, axis=1))
        w = self.const("fc.weight", weight)
        b = self.const("fc.bias", bias)
        self.nodes.append(
            helper.make_node("Gemm", [flat, w, b], [self._unique(output)], name="fc", transB=1)
        )
        return output

    def model(
        self,
        *,
        graph_name: str,
        input_name: str,
        input_shape: tuple[int | str, ...],
        output_name: str,
        output_shape: tuple[int | str, ...],
        metadata: Mapping[str, str],
        doc: str = "",
    ) -> onnx.ModelProto:
        """The model; a ``str`` dim of a shape is symbolic (a ``dim_param``, e.g. the batch)."""
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
            [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, list(output_shape))],
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="faillite",
            doc_string=doc,
        )
        helper.set_model_props(model, dict(metadata))
        return model


def count_params(model: onnx.ModelProto) -> int:
    """Number of float weights (initializers), scalars included."""
    total = 0
    for init in model.graph.initializer:
        n = 1
        for d in init.dims:
            n *= d
        total += n
    return total


def count_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of Conv and Gemm nodes, from inferred static shapes.

    Catalogs (torchvision, the EfficientNet paper) quote this figure as "FLOPs"; so does ours.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = weights[node.input[1]]  # [out, in/group, kh, kw]
            out = shapes[node.output[0]]
            macs += int(np.prod(out[1:])) * int(np.prod(w[1:]))
        elif node.op_type == "Gemm":
            w = weights[node.input[1]]
            macs += int(np.prod(w))
    return macs
