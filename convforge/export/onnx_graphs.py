"""The ONNX model equivalent to each convforge operator (default opset 22).

Inputs are graph inputs named as the numpy API's arguments (``x``, ``w``, ``bias``), or
initializers when arrays are given; every model passes ``onnx.checker`` with full shape
inference. Attributes come from the validated geometry, never recomputed here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from convforge.shapes import ConvGeometry, ConvTransposeGeometry

DEFAULT_OPSET = 22

_ONNX_DTYPES = {
    "float16": TensorProto.FLOAT16,
    "float32": TensorProto.FLOAT,
    "float64": TensorProto.DOUBLE,
    "int64": TensorProto.INT64,
}


def onnx_dtype(dtype: str) -> int:
    return _ONNX_DTYPES[str(dtype)]


def flat_pads(padding: Sequence[tuple[int, int]]) -> list[int]:
    """(lo, hi) pairs -> ONNX ``pads`` = [x1_begin, x2_begin, ..., x1_end, x2_end, ...]."""
    return [lo for lo, _ in padding] + [hi for _, hi in padding]


def activation_nodes(activation: str | None, src: str, dst: str) -> list[onnx.NodeProto]:
    """Nodes computing ``dst = activation(src)`` (an Identity for ``None``)."""
    if activation is None:
        return [helper.make_node("Identity", [src], [dst])]
    if activation == "relu":
        return [helper.make_node("Relu", [src], [dst])]
    if activation == "sigmoid":
        return [helper.make_node("Sigmoid", [src], [dst])]
    if activation == "tanh":
        return [helper.make_node("Tanh", [src], [dst])]
    if activation == "silu":
        return [
            helper.make_node("Sigmoid", [src], [f"{src}_sigmoid"]),
            helper.make_node("Mul", [src, f"{src}_sigmoid"], [dst]),
        ]
    raise ValueError(f"activation {activation!r} has no ONNX form")


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Mapping[str, tuple[Sequence[int], str]],
    outputs: Mapping[str, tuple[Sequence[int | str], str]],
    *,
    initializers: Mapping[str, np.ndarray] | None = None,
    opset: int = DEFAULT_OPSET,
    name: str = "convforge",
) -> onnx.ModelProto:
    """Assemble, shape-infer and check a model; arrays in ``initializers`` become constants."""
    initializers = dict(initializers or {})
    graph = helper.make_graph(
        list(nodes),
        name,
        [
            helper.make_tensor_value_info(n, onnx_dtype(dt), list(shape))
            for n, (shape, dt) in inputs.items()
            if n not in initializers
        ],
        [
            helper.make_tensor_value_info(n, onnx_dtype(dt), list(s))
            for n, (s, dt) in outputs.items()
        ],
        initializer=[numpy_helper.from_array(np.asarray(a), n) for n, a in initializers.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="convforge"
    )
    model.ir_version = min(model.ir_version, 10)  # onnxruntime reads IR <= 10
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def conv_model(
    geom: ConvGeometry,
    dtype: str = "float32",
    *,
    bias: bool = False,
    activation: str | None = None,
    weights: Mapping[str, np.ndarray] | None = None,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """ONNX Conv (+ activation) for ``geom``; inputs x, w[, bias] -> output y."""
    names = ["x", "w", "bias"] if bias else ["x", "w"]
    conv = helper.make_node(
        "Conv", names, ["conv"], kernel_shape=list(geom.kernel), strides=list(geom.stride),
        dilations=list(geom.dilation), pads=flat_pads(geom.padding), group=geom.groups,
    )  # fmt: skip
    inputs = {"x": (geom.x_shape, dtype), "w": (geom.w_shape, dtype)}
    if bias:
        inputs["bias"] = ((geom.out_channels,), dtype)
    return make_model(
        [conv, *activation_nodes(activation, "conv", "y")], inputs,
        {"y": (geom.out_shape, dtype)}, initializers=weights, opset=opset, name="conv",
    )  # fmt: skip


def conv_transpose_model(
    geom: ConvTransposeGeometry,
    dtype: str = "float32",
    *,
    bias: bool = False,
    activation: str | None = None,
    weights: Mapping[str, np.ndarray] | None = None,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """ONNX ConvTranspose (explicit pads and output_padding) for ``geom``."""
    names = ["x", "w", "bias"] if bias else ["x", "w"]
    node = helper.make_node(
        "ConvTranspose", names, ["conv"], kernel_shape=list(geom.kernel),
        strides=list(geom.stride), dilations=list(geom.dilation), pads=flat_pads(geom.padding),
        output_padding=list(geom.output_padding), group=geom.groups,
    )  # fmt: skip
    inputs = {"x": (geom.x_shape, dtype), "w": (geom.w_shape, dtype)}
    if bias:
        inputs["bias"] = ((geom.out_channels,), dtype)
    return make_model(
        [node, *activation_nodes(activation, "conv", "y")], inputs,
        {"y": (geom.out_shape, dtype)}, initializers=weights, opset=opset, name="conv_transpose",
    )  # fmt: skip


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write ``model`` atomically: a crash leaves either the old file or the new one."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".onnx")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
