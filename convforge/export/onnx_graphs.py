"""The ONNX model equivalent to each convforge operator (default opset 22).

Inputs are graph inputs named as the numpy API's arguments (``x``, ``w``, ``bias``), or
initializers when arrays are given; every model passes ``onnx.checker`` with full shape
inference. Attributes come from the validated geometry, never recomputed here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from convforge.filemode import atomic_write
from convforge.shapes import (
    AdaptivePoolGeometry,
    ConvGeometry,
    ConvTransposeGeometry,
    DenseGeometry,
    PoolGeometry,
    ResizeGeometry,
    same_pads,
    transpose_pads_for_output_shape,
)

DEFAULT_OPSET = 22

_ONNX_DTYPES = {
    "float16": TensorProto.FLOAT16,
    "float32": TensorProto.FLOAT,
    "float64": TensorProto.DOUBLE,
    "int64": TensorProto.INT64,
    "int32": TensorProto.INT32,
    "uint8": TensorProto.UINT8,
    "int8": TensorProto.INT8,
}


#: Values of the ONNX ``auto_pad`` attribute.
AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def onnx_dtype(dtype: str) -> int:
    return _ONNX_DTYPES[str(dtype)]


def flat_pads(padding: Sequence[tuple[int, int]]) -> list[int]:
    """(lo, hi) pairs -> ONNX ``pads`` = [x1_begin, x2_begin, ..., x1_end, x2_end, ...]."""
    return [lo for lo, _ in padding] + [hi for _, hi in padding]


def activation_nodes(
    activation: str | None, src: str, dst: str, dtype: str = "float32"
) -> list[onnx.NodeProto]:
    """Nodes computing ``dst = activation(src)`` (an Identity for ``None``) on ``dtype``."""
    if activation is None:
        return [helper.make_node("Identity", [src], [dst])]
    if activation == "relu":
        return [helper.make_node("Relu", [src], [dst])]
    if activation == "relu6":  # Clip(x, 0, 6), its bounds as Constant nodes (opset 11+)
        bounds = [f"{src}_relu6_{side}" for side in ("low", "high")]
        return [
            *(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
                np.array(value, dtype))) for name, value in zip(bounds, (0, 6))),
            helper.make_node("Clip", [src, *bounds], [dst]),
        ]  # fmt: skip
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
    auto_pad: str = "NOTSET",
    name: str = "conv",
) -> onnx.ModelProto:
    """ONNX Conv (+ activation) for ``geom``; inputs x, w[, bias] -> output y.

    ``auto_pad`` 'NOTSET' writes explicit ``pads``; 'SAME_UPPER', 'SAME_LOWER' or 'VALID'
    writes that attribute instead, and raises ValueError unless the pads ONNX derives from
    it are ``geom.padding`` (convforge's 'same', 'same_lower', 'valid'). onnxruntime 1.32
    refuses SAME_* with a dilation above 1 ("Dilation not supported"); explicit pads work.
    """
    attrs = _conv_padding_attrs(geom, auto_pad)
    return _single_conv_model("Conv", attrs, geom, dtype, bias, activation, weights, opset, name)


def _conv_padding_attrs(geom: ConvGeometry, auto_pad: str) -> dict:
    """A (Q)Conv node's attributes for ``geom``: explicit ``pads`` ('NOTSET'), or
    ``auto_pad`` where the pads ONNX derives from it are ``geom.padding`` (else ValueError)."""
    attrs = _conv_attrs(geom)
    if auto_pad == "NOTSET":
        attrs["pads"] = flat_pads(geom.padding)
    else:
        if auto_pad == "VALID":
            derived = ((0, 0),) * geom.ndim
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            derived = tuple(
                same_pads(i, k, s, d, lower=auto_pad == "SAME_LOWER")
                for i, k, s, d in zip(geom.in_size, geom.kernel, geom.stride, geom.dilation)
            )
        else:
            raise ValueError(f"auto_pad must be one of {AUTO_PADS}, got {auto_pad!r}")
        if derived != geom.padding:
            raise ValueError(
                f"auto_pad={auto_pad} means pads {derived}, not the geometry's {geom.padding}"
            )
        attrs["auto_pad"] = auto_pad
    return attrs


def conv_transpose_model(
    geom: ConvTransposeGeometry,
    dtype: str = "float32",
    *,
    bias: bool = False,
    activation: str | None = None,
    weights: Mapping[str, np.ndarray] | None = None,
    opset: int = DEFAULT_OPSET,
    auto_pad: str = "NOTSET",
    output_shape: bool = False,
) -> onnx.ModelProto:
    """ONNX ConvTranspose (+ activation) for ``geom``; inputs x, w[, bias] -> output y.

    By default writes explicit ``pads`` and ``output_padding``. ``output_shape=True``
    writes the ``output_shape`` attribute (spatial sizes) instead of ``pads``;
    ``auto_pad`` 'SAME_UPPER' / 'SAME_LOWER' / 'VALID' writes that attribute. Either way
    raises ValueError unless the pads ONNX derives are ``geom.padding``
    (:func:`convforge.shapes.transpose_pads_for_output_shape`). SAME_* without
    ``output_shape`` is refused where ``input * stride`` exceeds the unpadded output
    (onnxruntime 1.32 clamps the padding at 0 there, against the spec) and where
    ``output_padding`` is not 0 (onnx 1.23 shape inference then says ``input * stride +
    output_padding``, onnxruntime ``input * stride``): write ``output_shape`` there.
    ``output_shape=True`` is refused where an output size is below the input size: onnx
    1.23 shape inference then drops the output's remaining axes (onnxruntime is right).
    """
    if auto_pad not in AUTO_PADS:
        raise ValueError(f"auto_pad must be one of {AUTO_PADS}, got {auto_pad!r}")
    attrs = {**_conv_attrs(geom), "output_padding": list(geom.output_padding)}
    if auto_pad != "NOTSET":
        attrs["auto_pad"] = auto_pad
    if output_shape:
        if any(o < i for o, i in zip(geom.out_size, geom.in_size)):
            raise ValueError(
                f"output_shape {geom.out_size} below the input size {geom.in_size} breaks onnx "
                "shape inference; export with explicit pads"
            )
        attrs["output_shape"] = list(geom.out_size)
    if auto_pad == "NOTSET" and not output_shape:
        attrs["pads"] = flat_pads(geom.padding)
    elif auto_pad != "VALID" and not output_shape and any(geom.output_padding):
        raise ValueError(
            f"auto_pad={auto_pad} with output_padding {geom.output_padding} has no agreed "
            "output size without output_shape (onnx shape inference and onnxruntime differ)"
        )
    elif auto_pad == "VALID" and not output_shape:
        if any(pair != (0, 0) for pair in geom.padding):
            raise ValueError(f"auto_pad=VALID means no pads, not the geometry's {geom.padding}")
    else:
        for axis, (i, k, s, d, op, o) in enumerate(
            zip(geom.in_size, geom.kernel, geom.stride, geom.dilation, geom.output_padding,
                geom.out_size)
        ):  # fmt: skip
            target = o if output_shape else i * s
            derived, derived_op = transpose_pads_for_output_shape(
                i, k, s, d, op, target, upper=auto_pad == "SAME_UPPER", axis=axis
            )
            if (derived, derived_op, target) != (geom.padding[axis], op, o):
                raise ValueError(
                    f"auto_pad={auto_pad}{' with output_shape' if output_shape else ''} gives "
                    f"pads {derived} and output size {target} along spatial axis {axis}, not "
                    f"the geometry's pads {geom.padding[axis]} and size {o}"
                )
    return _single_conv_model(
        "ConvTranspose", attrs, geom, dtype, bias, activation, weights, opset, "conv_transpose"
    )


def _conv_attrs(geom: ConvGeometry | ConvTransposeGeometry) -> dict:
    """The attributes Conv and ConvTranspose share: kernel_shape, strides, dilations, group."""
    return dict(
        kernel_shape=list(geom.kernel), strides=list(geom.stride),
        dilations=list(geom.dilation), group=geom.groups,
    )  # fmt: skip


def _single_conv_model(
    op_type: str,
    attrs: dict,
    geom: ConvGeometry | ConvTransposeGeometry,
    dtype: str,
    bias: bool,
    activation: str | None,
    weights: Mapping[str, np.ndarray] | None,
    opset: int,
    name: str,
) -> onnx.ModelProto:
    """One ``op_type`` node with ``attrs`` on inputs x, w[, bias] (+ activation) -> y."""
    node = helper.make_node(op_type, _operands("x", bias), ["conv"], **attrs)
    inputs = _inputs(geom.x_shape, geom.w_shape, geom.out_channels, dtype, bias)
    return make_model(
        [node, *activation_nodes(activation, "conv", "y", dtype)], inputs,
        {"y": (geom.out_shape, dtype)}, initializers=weights, opset=opset, name=name,
    )  # fmt: skip


def causal_conv1d_model(
    geom: ConvGeometry,
    dtype: str = "float32",
    *,
    bias: bool = False,
    activation: str | None = None,
    weights: Mapping[str, np.ndarray] | None = None,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """ONNX Conv with pads ``[d*(k-1), 0]`` (left only) for a causal 1-D ``geom``.

    ``geom`` comes from :func:`convforge.shapes.causal_conv1d_geometry`; inputs x, w[, bias]
    -> output y of the input's length.
    """
    expected = ((geom.dilation[0] * (geom.kernel[0] - 1), 0),) if geom.ndim == 1 else None
    if geom.padding != expected or geom.stride != (1,):
        raise ValueError(
            "geom must be a causal 1-D convolution (stride 1, pads (d*(k-1), 0)), got "
            f"{geom.ndim}-D with stride {geom.stride} and pads {geom.padding}"
        )
    return conv_model(
        geom, dtype, bias=bias, activation=activation, weights=weights, opset=opset,
        name="causal_conv1d",
    )  # fmt: skip


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write ``model`` atomically: a crash leaves either the old file or the new one."""
    atomic_write(path, model.SerializeToString(), suffix=".onnx")


# --- integer convolutions: QLinearConv, ConvInteger, QDQ ----------------------------------


def qlinear_conv_model(
    geom: ConvGeometry,
    *,
    w: np.ndarray,
    x_dtype: str,
    x_scale: float,
    x_zero_point: int,
    w_scale: float | np.ndarray,
    w_zero_point: int | np.ndarray,
    y_scale: float,
    y_zero_point: int,
    bias: np.ndarray | None = None,
    auto_pad: str = "NOTSET",
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """ONNX QLinearConv for ``geom``: input x (``x_dtype``), every other operand an
    initializer (w of its own dtype, float32 scales, zero points of x's and w's dtypes,
    w's scale and zero point scalars or per output channel, int32 bias) -> y of x's dtype.
    ``auto_pad`` as :func:`conv_model`."""
    w_dtype = str(w.dtype)
    consts = {
        "x_scale": np.asarray(x_scale, np.float32),
        "x_zero_point": np.asarray(x_zero_point, x_dtype),
        "w": w,
        "w_scale": np.asarray(w_scale, np.float32),
        "w_zero_point": np.asarray(w_zero_point, w_dtype),
        "y_scale": np.asarray(y_scale, np.float32),
        "y_zero_point": np.asarray(y_zero_point, x_dtype),
    }
    if bias is not None:
        consts["bias"] = np.asarray(bias, np.int32)
    node = helper.make_node(
        "QLinearConv", ["x", *consts], ["y"], **_conv_padding_attrs(geom, auto_pad)
    )
    return make_model(
        [node], {"x": (geom.x_shape, x_dtype)}, {"y": (geom.out_shape, x_dtype)},
        initializers=consts, opset=opset, name="qlinear_conv",
    )  # fmt: skip


def conv_integer_model(
    geom: ConvGeometry,
    *,
    w: np.ndarray,
    x_dtype: str,
    x_zero_point: int | None = None,
    w_zero_point: int | np.ndarray | None = None,
    auto_pad: str = "NOTSET",
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """ONNX ConvInteger for ``geom``: input x (``x_dtype``); w and the zero points (None:
    absent, 0) initializers -> y int32. ``auto_pad`` as :func:`conv_model`."""
    consts: dict[str, np.ndarray] = {"w": w}
    operands = ["x", "w"]
    if x_zero_point is not None or w_zero_point is not None:
        consts["x_zero_point"] = np.asarray(x_zero_point or 0, x_dtype)
        operands.append("x_zero_point")
    if w_zero_point is not None:
        consts["w_zero_point"] = np.asarray(w_zero_point, w.dtype)
        operands.append("w_zero_point")
    node = helper.make_node("ConvInteger", operands, ["y"], **_conv_padding_attrs(geom, auto_pad))
    return make_model(
        [node], {"x": (geom.x_shape, x_dtype)}, {"y": (geom.out_shape, "int32")},
        initializers=consts, opset=opset, name="conv_integer",
    )  # fmt: skip


def qdq_conv_model(
    geom: ConvGeometry,
    *,
    w: np.ndarray,
    x_dtype: str,
    x_scale: float,
    x_zero_point: int,
    w_scale: float | np.ndarray,
    w_zero_point: int | np.ndarray,
    y_scale: float,
    y_zero_point: int,
    bias: np.ndarray | None = None,
    activation: str | tuple[float, float] | None = None,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """The QDQ form of :func:`qlinear_conv_model` (what onnxruntime's quantizer writes):
    DequantizeLinear of x, of w (axis 0 where per channel) and of the int32 bias (scale
    x_scale * w_scale) -> Conv [-> Relu | Clip(low, high)] -> QuantizeLinear."""
    w_scale = np.asarray(w_scale, np.float32)
    per_channel = w_scale.ndim == 1
    consts = {
        "x_scale": np.asarray(x_scale, np.float32),
        "x_zero_point": np.asarray(x_zero_point, x_dtype),
        "w_q": w,
        "w_scale": w_scale,
        "w_zero_point": np.asarray(w_zero_point, w.dtype),
        "y_scale": np.asarray(y_scale, np.float32),
        "y_zero_point": np.asarray(y_zero_point, x_dtype),
    }
    axis = {"axis": 0} if per_channel else {}
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "x_scale", "x_zero_point"], ["x_real"]),
        helper.make_node(
            "DequantizeLinear", ["w_q", "w_scale", "w_zero_point"], ["w_real"], **axis
        ),
    ]
    operands = ["x_real", "w_real"]
    if bias is not None:
        consts["bias_q"] = np.asarray(bias, np.int32)
        consts["bias_scale"] = (np.float32(x_scale) * w_scale).astype(np.float32)
        consts["bias_zero_point"] = np.zeros(w_scale.shape, np.int32)
        nodes.append(
            helper.make_node(
                "DequantizeLinear", ["bias_q", "bias_scale", "bias_zero_point"], ["bias_real"],
                **axis,
            )
        )  # fmt: skip
        operands.append("bias_real")
    nodes.append(
        helper.make_node("Conv", operands, ["conv"], **_conv_padding_attrs(geom, "NOTSET"))
    )
    src = "conv"
    if activation == "relu":
        nodes.append(helper.make_node("Relu", ["conv"], ["act"]))
        src = "act"
    elif activation is not None:
        consts["clip_low"] = np.asarray(activation[0], np.float32)
        consts["clip_high"] = np.asarray(activation[1], np.float32)
        nodes.append(helper.make_node("Clip", ["conv", "clip_low", "clip_high"], ["act"]))
        src = "act"
    nodes.append(helper.make_node("QuantizeLinear", [src, "y_scale", "y_zero_point"], ["y"]))
    return make_model(
        nodes, {"x": (geom.x_shape, x_dtype)}, {"y": (geom.out_shape, x_dtype)},
        initializers=consts, opset=opset, name="qdq_conv",
    )  # fmt: skip


# --- Resize, pooling, dense layers, heads ------------------------------------------------


def _operands(src: str, bias: bool) -> list[str]:
    """The inputs of a Conv/Gemm node reading ``src`` and the graph's ``w`` (and ``bias``)."""
    return [src, "w", "bias"] if bias else [src, "w"]


def _inputs(x_shape, w_shape, out_channels: int, dtype: str, bias: bool) -> dict:
    """``make_model``'s graph inputs x, w and, with ``bias``, bias (out_channels,)."""
    inputs = {"x": (tuple(x_shape), dtype), "w": (tuple(w_shape), dtype)}
    if bias:
        inputs["bias"] = ((out_channels,), dtype)
    return inputs


def _constant(name: str, values: Sequence[int | float], dtype=np.int64) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=numpy_helper.from_array(np.asarray(values, dtype), name)
    )


def resize_nodes(geom: ResizeGeometry, src: str, dst: str) -> list[onnx.NodeProto]:
    """ONNX Resize of ``src`` with ``geom``'s attributes; ``scales`` (float32, 1 for N and C)
    or, when output sizes were given, ``sizes``; a ``roi`` ((0, 1) for N and C) under
    'tf_crop_and_resize'."""
    nodes, roi = [], ""
    if geom.roi is not None:
        roi = f"{dst}_roi"
        starts, ends = zip(*geom.roi)
        nodes.append(_constant(roi, [0.0, 0.0, *starts, 1.0, 1.0, *ends], np.float32))
    if geom.sizes_given:
        nodes.append(_constant(f"{dst}_sizes", geom.out_shape))
        operands = [src, roi, "", f"{dst}_sizes"]
    else:
        nodes.append(_constant(f"{dst}_scales", [1.0, 1.0, *geom.scale], np.float32))
        operands = [src, roi, f"{dst}_scales"]
    resize = helper.make_node(
        "Resize", operands, [dst], mode=geom.mode,
        coordinate_transformation_mode=geom.coordinate_mode, nearest_mode=geom.nearest_mode,
        cubic_coeff_a=geom.cubic_coeff_a, exclude_outside=int(geom.exclude_outside),
        extrapolation_value=geom.extrapolation_value,
        **({"antialias": 1} if geom.antialias else {}),
    )  # fmt: skip
    return [*nodes, resize]


def resize_model(
    geom: ResizeGeometry, dtype: str = "float32", *, opset: int = DEFAULT_OPSET
) -> onnx.ModelProto:
    """ONNX Resize for ``geom``: input x -> output y."""
    return make_model(
        resize_nodes(geom, "x", "y"), {"x": (geom.x_shape, dtype)},
        {"y": (geom.out_shape, dtype)}, opset=opset, name="resize",
    )  # fmt: skip


def resize_conv_model(
    resize_geom: ResizeGeometry,
    conv_geom: ConvGeometry,
    dtype: str = "float32",
    *,
    bias: bool = False,
    activation: str | None = None,
    weights: Mapping[str, np.ndarray] | None = None,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """ONNX Resize followed by Conv (+ activation); inputs x, w[, bias] -> output y."""
    conv = helper.make_node(
        "Conv", _operands("resized", bias), ["conv"], pads=flat_pads(conv_geom.padding),
        **_conv_attrs(conv_geom),
    )  # fmt: skip
    inputs = _inputs(resize_geom.x_shape, conv_geom.w_shape, conv_geom.out_channels, dtype, bias)
    nodes = [
        *resize_nodes(resize_geom, "x", "resized"), conv,
        *activation_nodes(activation, "conv", "y", dtype),
    ]  # fmt: skip
    return make_model(
        nodes, inputs, {"y": (conv_geom.out_shape, dtype)}, initializers=weights, opset=opset,
        name="resize_conv",
    )  # fmt: skip


def pool_model(
    geom: PoolGeometry, dtype: str = "float32", *, opset: int = DEFAULT_OPSET
) -> onnx.ModelProto:
    """ONNX MaxPool or AveragePool (explicit pads, ceil_mode, count_include_pad, dilations:
    AveragePool's only where one is not 1, as opset 19 added them) for ``geom``."""
    attrs = dict(
        kernel_shape=list(geom.kernel), strides=list(geom.stride),
        pads=flat_pads(geom.padding), ceil_mode=int(geom.ceil_mode),
    )  # fmt: skip
    if geom.kind == "max":
        node = helper.make_node("MaxPool", ["x"], ["y"], dilations=list(geom.dilation), **attrs)
    else:
        if any(d != 1 for d in geom.dilation):
            attrs["dilations"] = list(geom.dilation)
        node = helper.make_node(
            "AveragePool", ["x"], ["y"], count_include_pad=int(geom.count_include_pad), **attrs
        )
    return make_model(
        [node], {"x": (geom.x_shape, dtype)}, {"y": (geom.out_shape, dtype)}, opset=opset,
        name=f"{geom.kind}_pool",
    )  # fmt: skip


def adaptive_pool_nodes(geom: AdaptivePoolGeometry, src: str, dst: str) -> list[onnx.NodeProto]:
    """Adaptive pooling as standard ONNX (it has no operator of its own).

    Global pooling is GlobalAveragePool/GlobalMaxPool. Otherwise the pooling is separable
    (a cell is a product of intervals): one axis at a time, each cell ``[start, end)`` is a
    Slice reduced by ReduceMean/ReduceMax (keepdims), and the cells are concatenated.
    """
    if all(o == 1 for o in geom.out_size):
        op = "GlobalAveragePool" if geom.kind == "avg" else "GlobalMaxPool"
        return [helper.make_node(op, [src], [dst])]
    reduce_op = "ReduceMean" if geom.kind == "avg" else "ReduceMax"
    nodes: list[onnx.NodeProto] = []
    current = src
    for axis in range(geom.ndim):
        onnx_axis = axis + 2
        out = dst if axis == geom.ndim - 1 else f"{dst}_axis{axis}"
        if geom.in_size[axis] == geom.out_size[axis]:  # one sample per cell
            nodes.append(helper.make_node("Identity", [current], [out]))
            current = out
            continue
        prefix = f"{dst}_a{axis}"
        nodes.append(_constant(f"{prefix}_axes", [onnx_axis]))
        parts = []
        for j, (start, end) in enumerate(geom.cells(axis)):
            name = f"{prefix}_c{j}"
            nodes += [
                _constant(f"{name}_start", [start]),
                _constant(f"{name}_end", [end]),
                helper.make_node(
                    "Slice", [current, f"{name}_start", f"{name}_end", f"{prefix}_axes"],
                    [f"{name}_slice"],
                ),
                helper.make_node(
                    reduce_op, [f"{name}_slice", f"{prefix}_axes"], [f"{name}_pooled"],
                    keepdims=1,
                ),
            ]  # fmt: skip
            parts.append(f"{name}_pooled")
        nodes.append(helper.make_node("Concat", parts, [out], axis=onnx_axis))
        current = out
    return nodes


def adaptive_pool_model(
    geom: AdaptivePoolGeometry, dtype: str = "float32", *, opset: int = DEFAULT_OPSET
) -> onnx.ModelProto:
    """The ONNX graph of an adaptive (or global) pooling: input x -> output y."""
    return make_model(
        adaptive_pool_nodes(geom, "x", "y"), {"x": (geom.x_shape, dtype)},
        {"y": (geom.out_shape, dtype)}, opset=opset, name=f"adaptive_{geom.kind}_pool",
    )  # fmt: skip


def _gemm(src: str, dst: str, bias: bool) -> onnx.NodeProto:
    return helper.make_node("Gemm", _operands(src, bias), [dst], transB=1)


def dense_model(
    geom: DenseGeometry,
    dtype: str = "float32",
    *,
    bias: bool = False,
    weights: Mapping[str, np.ndarray] | None = None,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """ONNX Gemm (transB=1): inputs x (N, F), w (K, F)[, bias (K,)] -> y (N, K)."""
    return make_model(
        [_gemm("x", "y", bias)], _inputs(geom.x_shape, geom.w_shape, geom.classes, dtype, bias),
        {"y": (geom.out_shape, dtype)}, initializers=weights, opset=opset, name="dense",
    )  # fmt: skip


def softmax_model(
    shape: Sequence[int], dtype: str = "float32", *, opset: int = DEFAULT_OPSET
) -> onnx.ModelProto:
    """ONNX Softmax along axis 1: x -> y of the same shape."""
    node = helper.make_node("Softmax", ["x"], ["y"], axis=1)
    return make_model(
        [node], {"x": (shape, dtype)}, {"y": (shape, dtype)}, opset=opset, name="softmax"
    )


def flatten_dense_head_model(
    x_shape: Sequence[int],
    geom: DenseGeometry,
    dtype: str = "float32",
    *,
    bias: bool = False,
    weights: Mapping[str, np.ndarray] | None = None,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """Flatten (axis 1) -> Gemm -> Softmax: x (N, C, *S) -> y (N, K)."""
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1), _gemm("flat", "scores", bias),
        helper.make_node("Softmax", ["scores"], ["y"], axis=1),
    ]  # fmt: skip
    return make_model(
        nodes, _inputs(x_shape, geom.w_shape, geom.classes, dtype, bias),
        {"y": (geom.out_shape, dtype)}, initializers=weights, opset=opset,
        name="flatten_dense_head",
    )  # fmt: skip


def grid_pool_head_model(
    pool_geom: AdaptivePoolGeometry,
    classes: int,
    dtype: str = "float32",
    *,
    bias: bool = False,
    weights: Mapping[str, np.ndarray] | None = None,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """Adaptive pooling graph -> Flatten -> Gemm -> Softmax: x (N, C, *S) -> y (N, K)."""
    features = math.prod(pool_geom.out_shape[1:])
    nodes = [
        *adaptive_pool_nodes(pool_geom, "x", "pooled"),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1), _gemm("flat", "scores", bias),
        helper.make_node("Softmax", ["scores"], ["y"], axis=1),
    ]  # fmt: skip
    return make_model(
        nodes, _inputs(pool_geom.x_shape, (classes, features), classes, dtype, bias),
        {"y": ((pool_geom.batch, classes), dtype)}, initializers=weights, opset=opset,
        name="grid_pool_head",
    )  # fmt: skip


def fully_conv_head_model(
    geom: ConvGeometry,
    dtype: str = "float32",
    *,
    bias: bool = False,
    weights: Mapping[str, np.ndarray] | None = None,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """1x1 Conv -> GlobalAveragePool -> Flatten -> Softmax: x (N, C, *S) -> y (N, K)."""
    conv = helper.make_node(
        "Conv", _operands("x", bias), ["scores"], kernel_shape=list(geom.kernel)
    )
    nodes = [
        conv, helper.make_node("GlobalAveragePool", ["scores"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Softmax", ["flat"], ["y"], axis=1),
    ]  # fmt: skip
    return make_model(
        nodes, _inputs(geom.x_shape, geom.w_shape, geom.out_channels, dtype, bias),
        {"y": ((geom.batch, geom.out_channels), dtype)}, initializers=weights, opset=opset,
        name="fully_conv_head",
    )  # fmt: skip
