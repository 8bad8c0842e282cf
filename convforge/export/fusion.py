"""Fusion on the ONNX graph, before import: what a convolution kernel absorbs.

A Conv absorbs a ``Resize`` (nearest, linear or cubic, constant scales/sizes) whose output only it
reads: it becomes one resize-convolution kernel (``convforge.ops.resize_conv``).
A Conv or ConvTranspose absorbs, in graph order, while its output feeds exactly one node
and is not a graph output:

- ``BatchNormalization`` (inference form, constant parameters, constant Conv weight):
  folded into the weight and bias, ``w' = w * g/sqrt(v+eps)``, ``b' = (b - m) * g/sqrt(v+eps) + beta``;
- ``Add`` of a constant per-channel tensor (shape ``(C, 1, ...)`` or ``(1, C, 1, ...)``):
  folded into the bias;
- ``Add`` (or a two-input ``Sum``) of a tensor of exactly the convolution's output shape (a
  residual connection; Conv only, not a resize-convolution), which becomes the Conv's 4th
  input: after it only an activation is absorbed, and the Conv moves to just before its
  first consumer (after the residual's producer);
- one element-wise activation (``Relu``, ``Clip(x, 0, 6)`` = ReLU6, ``Sigmoid``, ``Tanh``,
  or ``x * Sigmoid(x)`` = SiLU), after which only a pool may follow;
- last, a ``MaxPool`` (Conv only, not a resize-convolution) whose windows tile its input
  (kernel == strides, no pads, no dilation, no Indices output): the lowering computes the
  pool inside the convolution's kernel where the shapes allow (no ``ceil_mode`` overhang;
  see :func:`convforge.export.lowering.lower_conv`), else as its own kernel.

Before those, a quantized (QDQ) Conv becomes one QLinearConv, and a quantized classifier
Gemm that QLinearConv over its input reshaped to (N, C, 1, 1)
(:func:`fuse_qdq_convolutions`).

The fused node keeps its op type and gets attributes read by
:mod:`convforge.export.lowering`: ``convforge_activation``, ``convforge_residual``,
``convforge_max_pool_*`` and ``convforge_fused`` (names of the absorbed nodes, for the
report). The result is fed only to TVM's importer; onnxruntime always runs the original
model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from convforge import shapes
from convforge.export.lowering import (
    ACTIVATION_ATTR,
    CLIP_ATTR,
    FUSED_ATTR,
    MAX_POOL_ATTRS,
    RESIDUAL_ATTR,
    RESIZE_ATTRS,
)
from convforge.export.prepare import infer_shapes

_ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh"}


def default_node_name(node: onnx.NodeProto, index: int) -> str:
    """The name :func:`name_nodes` gives the ``index``-th node when it has none."""
    return node.name or f"{node.op_type}_{index}"


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` where every node has a unique name (``<op_type>_<index>`` if unnamed)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # 0.02 s for 100 MB of weights; serializing and parsing took 0.34 s
    model = copy
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if node.name in seen:
            node.name = ""
        node.name = default_node_name(node, index)
        seen.add(node.name)
    return model


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.constants = {t.name: t for t in self.graph.initializer}
        self.outputs = {o.name for o in self.graph.output}
        inferred = infer_shapes(model).graph
        self.types = {
            v.name: v.type.tensor_type
            for v in (*inferred.input, *inferred.value_info, *inferred.output)
        }

    def same_type(self, a: str, b: str) -> bool:
        """Whether tensors ``a`` and ``b`` have one known element type and shape (a
        symbolic dimension matches only the same symbol)."""
        types = [self.types.get(name) for name in (a, b)]
        if any(t is None or not t.HasField("shape") for t in types):
            return False
        dims = [
            [d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in t.shape.dim]
            for t in types
        ]
        return (
            types[0].elem_type == types[1].elem_type and dims[0] == dims[1] and None not in dims[0]
        )

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return [n for n in self.graph.node if tensor in n.input]

    def constant(self, name: str) -> np.ndarray | None:
        tensor = self.constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def add_constant(self, name: str, value: np.ndarray) -> str:
        tensor = numpy_helper.from_array(value, name)
        self.graph.initializer.append(tensor)
        self.constants[name] = tensor
        return name

    def sole_consumer(self, tensor: str) -> onnx.NodeProto | None:
        users = self.consumers(tensor)
        return users[0] if len(users) == 1 and tensor not in self.outputs else None


def _per_channel(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``value`` as a (C,) vector when adding it to a (N, C, ...) tensor is per-channel."""
    if value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if shape[0] != 1 or any(s != 1 for s in shape[2:]) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).copy()


def fuse_convolutions(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` (nodes named) with resize, bias, BN and activations fused into
    convolutions."""
    model = name_nodes(model)
    g = _Graph(model)
    fuse_qdq_convolutions(g)
    for conv in list(g.graph.node):
        if conv.op_type not in ("Conv", "ConvTranspose"):
            continue
        fused = _absorb_resize(g, conv) if conv.op_type == "Conv" else []
        _absorb_followers(g, conv, fused, plain=conv.op_type == "Conv" and not fused)
    return model


# --- QDQ convolutions -> one integer kernel ---------------------------------------------

_INT8_TYPES = (onnx.TensorProto.UINT8, onnx.TensorProto.INT8)


def _producer(g: _Graph, tensor: str) -> onnx.NodeProto | None:
    return next((n for n in g.graph.node if tensor in n.output), None)


def _attribute(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _dequantized(g: _Graph, tensor: str, constant: bool) -> onnx.NodeProto | None:
    """The DequantizeLinear producing ``tensor`` with constant scale and zero point (and a
    constant input where ``constant``), per tensor or per channel along axis 0 (weights,
    bias) of an 8-bit or int32 input, no ``block_size``; else None."""
    dq = _producer(g, tensor)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx"):
        return None
    if len(dq.input) < 3 or any(g.constant(name) is None for name in dq.input[1:3]):
        return None
    if constant and g.constant(dq.input[0]) is None:
        return None
    scale = g.constant(dq.input[1])
    if _attribute(dq, "block_size", 0) or scale.dtype != np.float32:
        return None
    if scale.size > 1 and (not constant or _attribute(dq, "axis", 1) != 0):
        return None
    return dq


def _clip_bounds(g: _Graph, clip: onnx.NodeProto) -> tuple[float, float] | None:
    """A Clip's (low, high), +-inf where a bound is absent; None where a bound is not a
    constant scalar (opset 11+ inputs; opset 6's attributes)."""
    if len(clip.input) == 1:
        return float(_attribute(clip, "min", -np.inf)), float(_attribute(clip, "max", np.inf))
    bounds = [-np.inf, np.inf]
    for side, name in enumerate(clip.input[1:3]):
        if name:
            value = g.constant(name)
            if value is None or value.size != 1:
                return None
            bounds[side] = float(value.reshape(()))
    return bounds[0], bounds[1]


def _quantize_after(g: _Graph, tensor: str) -> tuple[list[onnx.NodeProto], object] | None:
    """The nodes from ``tensor`` to the QuantizeLinear ending a QDQ Conv: [Relu | Clip]
    QuantizeLinear, each the sole reader of the last (per-tensor constant scale and zero
    point); with the activation ('relu', a Clip's (low, high), or None). Else None."""
    nodes: list[onnx.NodeProto] = []
    activation: object = None
    nxt = g.sole_consumer(tensor)
    if nxt is not None and nxt.op_type == "Relu":
        nodes, activation = [nxt], "relu"
    elif nxt is not None and nxt.op_type == "Clip":
        activation = _clip_bounds(g, nxt)
        if activation is None:
            return None
        nodes = [nxt]
    if nodes:
        nxt = g.sole_consumer(nodes[-1].output[0])
    if nxt is None or nxt.op_type != "QuantizeLinear" or len(nxt.input) < 3:
        return None
    scale, zero = (g.constant(name) for name in nxt.input[1:3])
    if scale is None or zero is None or scale.size != 1 or zero.size != 1:
        return None
    if scale.dtype != np.float32 or _attribute(nxt, "block_size", 0):
        return None
    return [*nodes, nxt], activation


def fuse_qdq_convolutions(g: _Graph) -> None:
    """Each QDQ convolution ``DequantizeLinear(x), DequantizeLinear(W const)
    [, DequantizeLinear(int32 bias const)] -> Conv [-> Relu | Clip] -> QuantizeLinear``
    (onnxruntime's quantizer's form: per-tensor x and y, per-tensor or per-channel W)
    becomes one QLinearConv node (named as the Conv; the activation as ``convforge_activation``
    or ``convforge_clip``) reading the quantized x and writing the quantized y, so chains of
    Q/DQ between such convolutions disappear; a DequantizeLinear nothing else reads goes
    too. A QDQ Gemm of the same form (the classifier: x (N, C), ``transB=1``) becomes that
    QLinearConv over x reshaped to (N, C, 1, 1) (:func:`_fuse_qdq_gemm`). A MaxPool between
    a DequantizeLinear and a QuantizeLinear of the same scale and zero point then runs on
    the integers (:func:`_integer_max_pool`). A Conv or Gemm that does not fit (a float
    bias, a bias scale other than x_scale * w_scale, y of another type than x, a DQ with a
    block size, ...) stays float. The QLinearConv computes exactly what onnxruntime's own
    QDQ-to-QLinearConv fusion does (its requantization: :mod:`convforge.ops.qconv`)."""
    for conv in list(g.graph.node):
        if conv.op_type != "Conv" or len(conv.input) < 2 or conv.output[0] in g.outputs:
            continue
        parts = _qdq_parts(g, conv, conv.input[2] if len(conv.input) > 2 else "")
        if parts is None:
            continue
        node = helper.make_node(
            "QLinearConv", _qlinear_inputs(parts), [parts.quantize.output[0]], name=conv.name
        )
        node.attribute.extend(conv.attribute)
        _replace(g, conv, parts, node)
    for gemm in list(g.graph.node):
        if gemm.op_type == "Gemm":
            _fuse_qdq_gemm(g, gemm)
    for pool in list(g.graph.node):
        if pool.op_type == "MaxPool":
            _integer_max_pool(g, pool)
    _fold_constant_dequantize(g)


class _QDQParts(NamedTuple):
    """The nodes around a QDQ Conv or Gemm (:func:`_qdq_parts`)."""

    dq_x: onnx.NodeProto
    dq_w: onnx.NodeProto
    dq_b: onnx.NodeProto | None
    #: [Relu | Clip] QuantizeLinear after the operator.
    followers: list[onnx.NodeProto]
    #: 'relu', a Clip's (low, high), or None.
    activation: object

    @property
    def quantize(self) -> onnx.NodeProto:
        return self.followers[-1]


def _qdq_parts(g: _Graph, node: onnx.NodeProto, bias: str) -> _QDQParts | None:
    """The QDQ form around ``node`` (its input 0 the activation x, input 1 the weight W,
    ``bias`` its bias input or ''): x and y per tensor and of one 8-bit type, W an 8-bit
    constant per tensor or per channel (axis 0), the bias an int32 constant of scale
    x_scale * w_scale and zero point 0; else None (the node stays float)."""
    dq_x = _dequantized(g, node.input[0], constant=False)
    dq_w = _dequantized(g, node.input[1], constant=True)
    if dq_x is None or dq_w is None or g.constant(dq_x.input[1]).size != 1:
        return None
    x_type = g.types.get(dq_x.input[0])
    if x_type is None or x_type.elem_type not in _INT8_TYPES:
        return None
    if g.constant(dq_w.input[0]).dtype not in (np.int8, np.uint8):
        return None
    dq_b = None
    if bias:
        dq_b = _dequantized(g, bias, constant=True)
        if dq_b is None or g.constant(dq_b.input[0]).dtype != np.int32:
            return None
        expected = (g.constant(dq_x.input[1]) * g.constant(dq_w.input[1])).astype(np.float32)
        bias_scale = g.constant(dq_b.input[1])
        if np.any(np.broadcast_to(bias_scale, expected.shape) != expected) or np.any(
            g.constant(dq_b.input[2]) != 0
        ):
            return None
    tail = _quantize_after(g, node.output[0])
    if tail is None:
        return None
    followers, activation = tail
    if g.constant(followers[-1].input[2]).dtype != np.dtype(
        onnx.helper.tensor_dtype_to_np_dtype(x_type.elem_type)
    ):
        return None
    return _QDQParts(dq_x, dq_w, dq_b, followers, activation)


def _qlinear_inputs(parts: _QDQParts, x: str | None = None, w: str | None = None) -> list[str]:
    """A QLinearConv's inputs from ``parts`` (x and w: other tensors in their place)."""
    x_scale, x_zero = parts.dq_x.input[1:3]
    w_scale, w_zero = parts.dq_w.input[1:3]
    inputs = [x or parts.dq_x.input[0], x_scale, x_zero, w or parts.dq_w.input[0], w_scale,
              w_zero, *parts.quantize.input[1:3]]  # fmt: skip
    if parts.dq_b is not None:
        inputs.append(parts.dq_b.input[0])
    return inputs


def _replace(
    g: _Graph,
    node: onnx.NodeProto,
    parts: _QDQParts,
    qconv: onnx.NodeProto,
    before: Sequence[onnx.NodeProto] = (),
    after: Sequence[onnx.NodeProto] = (),
) -> None:
    """Put ``qconv`` (with ``before`` and ``after`` around it) where ``node`` was, with
    ``parts``' activation; remove ``node``, its followers and the DequantizeLinears nothing
    else reads (named in ``qconv``'s fused list)."""
    if parts.activation == "relu":
        qconv.attribute.append(helper.make_attribute(ACTIVATION_ATTR, "relu"))
    elif parts.activation is not None:
        qconv.attribute.append(helper.make_attribute(CLIP_ATTR, list(parts.activation)))
    position = list(g.graph.node).index(node)
    for gone in (node, *parts.followers):
        g.graph.node.remove(gone)
    absorbed = []
    for dq in (parts.dq_x, parts.dq_w, parts.dq_b):  # one still read by another node stays
        if dq is not None and not g.consumers(dq.output[0]) and dq.output[0] not in g.outputs:
            position -= list(g.graph.node).index(dq) < position
            g.graph.node.remove(dq)
            absorbed.append(dq.name)
    absorbed += [n.name for n in parts.followers]
    qconv.attribute.append(helper.make_attribute(FUSED_ATTR, absorbed))
    for offset, new in enumerate((*before, qconv, *after)):
        g.graph.node.insert(position + offset, new)


def _fuse_qdq_gemm(g: _Graph, gemm: onnx.NodeProto) -> None:
    """A QDQ Gemm ``DequantizeLinear(x (N, C)), DequantizeLinear(W const (O, C))
    [, DequantizeLinear(int32 bias (O,))] -> Gemm(transB=1, alpha=beta=1, transA=0)
    [-> Relu | Clip] -> QuantizeLinear`` (onnxruntime's quantizer's classifier) becomes
    ``Reshape(x, (N, C, 1, 1)) -> QLinearConv(W as (O, C, 1, 1)) -> Reshape(y, (N, O))``:
    the same sums and requantization as onnxruntime's QGemm, on the integer convolution
    kernels (a 1x1 over one position)."""
    if len(gemm.input) < 2 or gemm.output[0] in g.outputs:
        return
    if (_attribute(gemm, "transA", 0), _attribute(gemm, "transB", 0)) != (0, 1) or any(
        float(_attribute(gemm, name, 1.0)) != 1.0 for name in ("alpha", "beta")
    ):
        return
    x_type = g.types.get(gemm.input[0])
    if x_type is None or len(x_type.shape.dim) != 2 or not x_type.shape.dim[1].dim_value:
        return
    bias = gemm.input[2] if len(gemm.input) > 2 else ""
    parts = _qdq_parts(g, gemm, bias)
    if parts is None:
        return
    w = g.constant(parts.dq_w.input[0])
    channels = x_type.shape.dim[1].dim_value
    if w.ndim != 2 or w.shape[1] != channels:
        return
    if parts.dq_b is not None and g.constant(parts.dq_b.input[0]).shape != (w.shape[0],):
        return
    name = gemm.name
    w4 = g.add_constant(f"{name}_w_nchw", w.reshape(*w.shape, 1, 1))
    to_nchw = g.add_constant(f"{name}_nchw_shape", np.array([0, channels, 1, 1], np.int64))
    to_rows = g.add_constant(f"{name}_rows_shape", np.array([0, w.shape[0]], np.int64))
    x4, y4 = f"{name}_x_nchw", f"{name}_y_nchw"
    before = helper.make_node("Reshape", [parts.dq_x.input[0], to_nchw], [x4], name=x4)
    qconv = helper.make_node("QLinearConv", _qlinear_inputs(parts, x=x4, w=w4), [y4], name=name)
    after = helper.make_node("Reshape", [y4, to_rows], [parts.quantize.output[0]], name=y4)
    _replace(g, gemm, parts, qconv, [before], [after])


def _integer_max_pool(g: _Graph, pool: onnx.NodeProto) -> None:
    """``DequantizeLinear -> MaxPool -> QuantizeLinear`` with one scale and zero point
    (per tensor, the same values and type on both sides) becomes the MaxPool of the
    quantized tensor: the maximum commutes with the increasing dequantization and
    QuantizeLinear(DequantizeLinear(q)) is q, so the result is exact (onnxruntime drops
    such Q/DQ pairs around a MaxPool too)."""
    if len(pool.output) != 1 or pool.output[0] in g.outputs:
        return
    dq = _dequantized(g, pool.input[0], constant=False)
    quantize = g.sole_consumer(pool.output[0])
    if dq is None or quantize is None or quantize.op_type != "QuantizeLinear":
        return
    if len(quantize.input) < 3 or _attribute(quantize, "block_size", 0):
        return
    before = [g.constant(name) for name in dq.input[1:3]]
    after = [g.constant(name) for name in quantize.input[1:3]]
    if any(v is None or v.size != 1 for v in (*before, *after)):
        return
    if any(a.dtype != b.dtype or a.item() != b.item() for a, b in zip(before, after)):
        return
    pool.input[0] = dq.input[0]
    pool.output[0] = quantize.output[0]
    g.graph.node.remove(quantize)
    absorbed = [quantize.name]
    if not g.consumers(dq.output[0]) and dq.output[0] not in g.outputs:
        g.graph.node.remove(dq)
        absorbed.insert(0, dq.name)
    pool.attribute.append(helper.make_attribute(FUSED_ATTR, absorbed))


def _fold_constant_dequantize(g: _Graph) -> None:
    """A DequantizeLinear of constants that is left (the weight of a Gemm, of a Conv that
    stayed float) becomes its float32 value, computed once here as onnxruntime computes
    it (``float(q - zero_point) * scale``, per tensor or along ``axis``), so the float
    kernel reading it sees a constant (a packed weight) instead of a dequantization on
    every run."""
    for dq in list(g.graph.node):
        if dq.op_type != "DequantizeLinear" or _attribute(dq, "block_size", 0):
            continue
        values = [g.constant(name) if name else None for name in dq.input]
        if values[0] is None or any(name and v is None for name, v in zip(dq.input, values)):
            continue
        q, scale = values[0], values[1]
        zero = values[2] if len(values) > 2 and values[2] is not None else np.zeros((), q.dtype)
        if scale.dtype != np.float32 or q.dtype not in (np.int8, np.uint8, np.int32):
            continue
        shape = [1] * q.ndim
        if scale.size > 1:
            axis = _attribute(dq, "axis", 1) % max(1, q.ndim)
            shape[axis] = scale.size
        centered = q.astype(np.int64) - zero.astype(np.int64).reshape(
            shape if zero.size > 1 else ()
        )
        value = centered.astype(np.float32) * scale.reshape(shape if scale.size > 1 else ())
        g.graph.node.remove(dq)
        g.add_constant(dq.output[0], value.astype(np.float32))


def _absorb_resize(g: _Graph, conv: onnx.NodeProto) -> list[str]:
    """Fold a Resize feeding ``conv`` (nearest/linear/cubic, constant spatial scales or sizes)."""
    resize = next((n for n in g.graph.node if conv.input[0] in n.output), None)
    if (
        resize is None
        or resize.op_type != "Resize"
        or g.sole_consumer(resize.output[0]) is not conv
    ):
        return []
    attrs = {a.name: helper.get_attribute_value(a) for a in resize.attribute}
    text = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
    mode = text.get("mode", "nearest")
    coordinate_mode = text.get("coordinate_transformation_mode", "half_pixel")
    if (
        set(attrs) - {"mode", "coordinate_transformation_mode", "nearest_mode"}
        or mode not in shapes.RESIZE_MODES
        or coordinate_mode not in shapes.COORDINATE_MODES
    ):
        return []
    inputs = list(resize.input) + [""] * (4 - len(resize.input))
    scales = g.constant(inputs[2]) if inputs[2] else None
    sizes = g.constant(inputs[3]) if inputs[3] else None
    by_scale = scales is not None and scales.size > 0
    values = scales if by_scale else sizes
    if values is None or values.size < 3 or (inputs[2] and scales is None):
        return []
    if by_scale and any(float(v) != 1.0 for v in values[:2]):
        return []
    conv.input[0] = resize.input[0]
    conv.attribute.extend(
        [
            helper.make_attribute(RESIZE_ATTRS["mode"], mode),
            helper.make_attribute(RESIZE_ATTRS["coordinate_mode"], coordinate_mode),
            helper.make_attribute(
                RESIZE_ATTRS["nearest_mode"], text.get("nearest_mode", "round_prefer_floor")
            ),
            helper.make_attribute(
                RESIZE_ATTRS["scale" if by_scale else "size"],
                [float(v) if by_scale else int(v) for v in values],
            ),
        ]
    )
    g.graph.node.remove(resize)
    return [resize.name]


def _absorb_followers(g: _Graph, conv: onnx.NodeProto, fused: list[str], plain: bool) -> None:
    """Absorb what follows ``conv`` (module doc); ``plain`` (a Conv, not a
    resize-convolution): a residual Add and a MaxPool may be."""
    weight = g.constant(conv.input[1])
    activation = None
    added = False  # a residual was absorbed: only an activation may follow
    while activation is None:
        out = conv.output[0]
        users = g.consumers(out)
        if out in g.outputs or not users:
            break
        nxt = users[0] if len(users) == 1 else None
        if nxt is not None and nxt.op_type in _ACTIVATIONS:
            activation = _ACTIVATIONS[nxt.op_type]
        elif nxt is not None and nxt.op_type == "Clip" and _clip_bounds(g, nxt) == (0.0, 6.0):
            activation = "relu6"
        elif _is_silu(g, out, users):
            sigmoid, nxt = sorted(users, key=lambda n: n.op_type != "Sigmoid")
            g.graph.node.remove(sigmoid)
            fused.append(sigmoid.name)
            activation = "silu"
        elif added:
            break
        elif nxt is not None and weight is not None and _fold_affine(g, conv, nxt, weight):
            weight = g.constant(conv.input[1])
        elif plain and nxt is not None and _add_residual(g, conv, nxt):
            added = True
        else:
            break
        conv.output[0] = nxt.output[0]
        fused.append(nxt.name)
        g.graph.node.remove(nxt)
    if plain:
        _absorb_max_pool(g, conv, fused)
    if fused:
        conv.attribute.append(helper.make_attribute(FUSED_ATTR, fused))
    if activation is not None:
        conv.attribute.append(helper.make_attribute(ACTIVATION_ATTR, activation))
    if added:  # run after the residual's producer: just before the first consumer
        moved = onnx.NodeProto()
        moved.CopyFrom(conv)
        g.graph.node.remove(conv)
        users = g.consumers(moved.output[0])
        nodes = list(g.graph.node)
        g.graph.node.insert(nodes.index(users[0]) if users else len(nodes), moved)


def _absorb_max_pool(g: _Graph, conv: onnx.NodeProto, fused: list[str]) -> None:
    """Absorb the MaxPool that alone reads ``conv``'s output if its windows tile it."""
    pool = g.sole_consumer(conv.output[0])
    if pool is None or pool.op_type != "MaxPool" or len(pool.output) != 1:
        return
    attrs = {a.name: helper.get_attribute_value(a) for a in pool.attribute}
    kernel = list(attrs["kernel_shape"])
    if (
        list(attrs.get("strides", [1] * len(kernel))) != kernel
        or any(attrs.get("pads", ()))
        or any(d != 1 for d in attrs.get("dilations", ()))
        or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")
    ):
        return
    conv.attribute.extend(
        [
            helper.make_attribute(MAX_POOL_ATTRS["node"], pool.name),
            helper.make_attribute(MAX_POOL_ATTRS["kernel_shape"], kernel),
            helper.make_attribute(MAX_POOL_ATTRS["ceil_mode"], attrs.get("ceil_mode", 0)),
        ]
    )
    conv.output[0] = pool.output[0]
    fused.append(pool.name)
    g.graph.node.remove(pool)


def _add_residual(g: _Graph, conv: onnx.NodeProto, add: onnx.NodeProto) -> bool:
    """Make the other input of ``add`` (an Add, or a Sum of two inputs: the same, as older
    exports such as the ONNX zoo's ResNet-50 write it; a tensor of ``conv``'s output type)
    ``conv``'s residual: its 4th input, after a bias (zeros when it had none)."""
    out = conv.output[0]
    if add.op_type not in ("Add", "Sum") or len(add.input) != 2 or list(add.input).count(out) != 1:
        return False
    other = add.input[1] if add.input[0] == out else add.input[0]
    if other in g.constants or not g.same_type(out, other):
        return False
    if len(conv.input) < 3 or not conv.input[2]:
        channels = g.types[out].shape.dim[1].dim_value
        dtype = onnx.helper.tensor_dtype_to_np_dtype(g.types[out].elem_type)
        zeros = g.add_constant(f"{conv.name}__zero_bias", np.zeros(channels, dtype))
        del conv.input[2:]
        conv.input.append(zeros)
    conv.input.append(other)
    conv.attribute.append(helper.make_attribute(RESIDUAL_ATTR, 1))
    return True


def _is_silu(g: _Graph, out: str, users: list[onnx.NodeProto]) -> bool:
    if len(users) != 2 or {u.op_type for u in users} != {"Sigmoid", "Mul"}:
        return False
    sigmoid = next(u for u in users if u.op_type == "Sigmoid")
    mul = next(u for u in users if u.op_type == "Mul")
    return (
        sorted(mul.input) == sorted([out, sigmoid.output[0]])
        and g.sole_consumer(sigmoid.output[0]) is mul
    )


def _fold_affine(g: _Graph, conv: onnx.NodeProto, nxt: onnx.NodeProto, weight: np.ndarray) -> bool:
    """Fold a BatchNormalization or per-channel constant Add into ``conv``'s weight/bias."""
    transposed = conv.op_type == "ConvTranspose"
    groups = next((a.i for a in conv.attribute if a.name == "group"), 1)
    channels = weight.shape[1] * groups if transposed else weight.shape[0]
    bias = g.constant(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
    if len(conv.input) > 2 and conv.input[2] and bias is None:
        return False
    bias = np.zeros(channels, weight.dtype) if bias is None else bias
    if nxt.op_type == "BatchNormalization" and len(nxt.output) == 1 and not transposed:
        params = [g.constant(name) for name in nxt.input[1:5]]
        if any(p is None for p in params):
            return False
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        eps = next((a.f for a in nxt.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        weight = (weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))).astype(weight.dtype)
        bias = ((bias - mean) * scale + beta).astype(weight.dtype)
    elif nxt.op_type == "Add":
        other = [name for name in nxt.input if name != conv.output[0]]
        value = g.constant(other[0]) if len(other) == 1 else None
        rank = weight.ndim
        per_channel = None if value is None else _per_channel(value, channels, rank)
        if per_channel is None or value.dtype != weight.dtype:
            return False
        bias = bias + per_channel
    else:
        return False
    conv.input[1] = g.add_constant(f"{conv.name}__fused_weight_{nxt.name}", weight)
    bias_name = g.add_constant(f"{conv.name}__fused_bias_{nxt.name}", bias)
    if len(conv.input) > 2:
        conv.input[2] = bias_name
    else:
        conv.input.append(bias_name)
    return True
