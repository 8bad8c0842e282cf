"""ONNX models of causal convolution with state and of streaming stacks.

- :func:`causal_conv_with_state_model`: the ONNX ``CausalConvWithState`` node (opset 27).
- :func:`causal_conv_state_model`: the same computation (any dilation, groups) from
  standard ops, ``Concat`` + ``Conv`` (valid) + ``Slice``, that any runtime runs.
- :func:`stack_model`: a :class:`~convforge.streaming.StackSpec` stack, stateful (inputs
  ``x`` and ``past_state.{i}``, outputs ``y`` and ``present_state.{i}``) or a full-sequence
  causal graph (``Conv`` with left pads, no state). The time axis is symbolic (``L``), so
  one model takes chunks of any length.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper

from convforge.export.onnx_graphs import DEFAULT_OPSET, activation_nodes, make_model
from convforge.shapes import CausalStateGeometry
from convforge.streaming import StackSpec

#: First opset defining CausalConvWithState.
CAUSAL_CONV_WITH_STATE_OPSET = 27

_LAST = np.iinfo(np.int64).max


def causal_conv_with_state_model(
    geom: CausalStateGeometry,
    dtype: str = "float32",
    *,
    bias: bool = False,
    state: bool = True,
    activation: str | None = None,
    opset: int = CAUSAL_CONV_WITH_STATE_OPSET,
) -> onnx.ModelProto:
    """One ``CausalConvWithState`` node: inputs x, w[, bias][, past_state] -> y, present_state.

    ``geom`` must be depthwise without dilation (ONNX defines no other form);
    ``activation``: None or 'silu'.
    """
    conv = geom.conv
    if conv.groups != conv.in_channels or conv.w_shape[1] != 1 or conv.dilation != (1,):
        raise ValueError("CausalConvWithState is depthwise (w: (C, 1, k)) without dilation")
    if activation not in (None, "silu"):
        raise ValueError(f"CausalConvWithState's activation is None or 'silu', got {activation!r}")
    names = ["x", "w", "bias" if bias else "", "past_state" if state else ""]
    while not names[-1]:
        names.pop()
    node = helper.make_node(
        "CausalConvWithState", names, ["y", "present_state"], activation=activation or "none"
    )
    inputs = {"x": (geom.x_shape, dtype), "w": (conv.w_shape, dtype)}
    if bias:
        inputs["bias"] = ((conv.out_channels,), dtype)
    if state:
        inputs["past_state"] = (geom.state_shape, dtype)
    outputs = {"y": (geom.out_shape, dtype), "present_state": (geom.state_shape, dtype)}
    return make_model([node], inputs, outputs, opset=opset, name="causal_conv_with_state")


def _constant(name: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=helper.make_tensor(name, onnx.TensorProto.INT64,
                                                         [len(values)], values)
    )  # fmt: skip


def _state_nodes(
    x: str, state: str, joined: str, present: str, state_length: int, prefix: str
) -> list[onnx.NodeProto]:
    """``joined = Concat(state, x)`` and ``present = joined[..., -state_length:]``."""
    return [
        helper.make_node("Concat", [state, x], [joined], axis=2),
        _constant(f"{prefix}starts", [-state_length]),
        _constant(f"{prefix}ends", [_LAST]),
        _constant(f"{prefix}axes", [2]),
        helper.make_node(
            "Slice", [joined, f"{prefix}starts", f"{prefix}ends", f"{prefix}axes"], [present]
        ),
    ]


def causal_conv_state_model(
    geom: CausalStateGeometry,
    dtype: str = "float32",
    *,
    bias: bool = False,
    activation: str | None = None,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """Causal conv with state from standard ops: inputs x, w[, bias], past_state -> y,
    present_state (``Concat`` + ``Conv`` with 'valid' padding + ``Slice``)."""
    if geom.state_length == 0:
        raise ValueError("a 1-tap convolution has no state (k must be >= 2)")
    conv = geom.conv
    nodes = _state_nodes("x", "past_state", "joined", "present_state", geom.state_length, "")
    conv_node = helper.make_node(
        "Conv", ["joined", "w", "bias"] if bias else ["joined", "w"], ["conv"],
        kernel_shape=list(conv.kernel), dilations=list(conv.dilation), group=conv.groups,
        pads=[0, 0],
    )  # fmt: skip
    nodes.append(conv_node)
    nodes += activation_nodes(activation, "conv", "y", dtype)
    inputs = {"x": (geom.x_shape, dtype), "w": (conv.w_shape, dtype)}
    if bias:
        inputs["bias"] = ((conv.out_channels,), dtype)
    inputs["past_state"] = (geom.state_shape, dtype)
    outputs = {"y": (geom.out_shape, dtype), "present_state": (geom.state_shape, dtype)}
    return make_model(nodes, inputs, outputs, opset=opset, name="causal_conv_state")


def stack_model(
    spec: StackSpec,
    weights: Mapping[str, np.ndarray],
    *,
    batch: int = 1,
    stateful: bool = True,
    dtype: str = "float32",
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """The stack of :mod:`convforge.streaming` as ONNX, weights as initializers.

    stateful: inputs ``x`` (N, in, L), ``past_state.{i}`` (N, C, d_i*(k-1)); outputs ``y``
    (N, out, L), ``present_state.{i}``. Otherwise: input ``x``, output ``y``, each dilated
    layer a ``Conv`` with ``d*(k-1)`` left pads (the full-sequence causal pass, zero past).
    """
    spec.check_weights(weights)
    c, s, k = spec.channels, spec.skip_channels, spec.kernel_size
    init: dict[str, np.ndarray] = {}
    nodes: list[onnx.NodeProto] = []

    def weight(name: str, array: np.ndarray) -> str:
        init[name] = np.ascontiguousarray(array, dtype=dtype)
        return name

    def pointwise(src: str, dst: str, w: np.ndarray, b: np.ndarray, name: str) -> None:
        nodes.append(
            helper.make_node(
                "Conv",
                [src, weight(f"{name}.w", w), weight(f"{name}.b", b)],
                [dst],
                kernel_shape=[1],
            )
        )

    def channel_slice(src: str, dst: str, start: int, stop: int) -> None:
        starts, ends, axes = f"{dst}.starts", f"{dst}.ends", f"{dst}.axes"
        init.update({
            starts: np.array([start], np.int64), ends: np.array([stop], np.int64),
            axes: np.array([1], np.int64),
        })  # fmt: skip
        nodes.append(helper.make_node("Slice", [src, starts, ends, axes], [dst]))

    states = spec.state_shapes(batch)
    inputs: dict[str, tuple] = {"x": ((batch, spec.in_channels, "L"), dtype)}
    outputs: dict[str, tuple] = {"y": ((batch, spec.out_channels, "L"), dtype)}
    pointwise("x", "h0", weights["input.w"], weights["input.b"], "input")
    skip = None
    for i, (d, state_length) in enumerate(zip(spec.dilations, spec.state_lengths)):
        h, p = f"h{i}", f"layer{i}."
        conv_inputs = [
            weight(f"{p}dilated.w", weights["dilated.w"][i]),
            weight(f"{p}dilated.b", weights["dilated.b"][i]),
        ]
        if stateful:
            past, present = f"past_state.{i}", f"present_state.{i}"
            inputs[past] = (states[past], dtype)
            outputs[present] = (states[past], dtype)
            nodes += _state_nodes(h, past, f"{p}joined", present, state_length, p)
            source, pads = f"{p}joined", [0, 0]
        else:
            source, pads = h, [state_length, 0]
        nodes.append(
            helper.make_node(
                "Conv",
                [source, *conv_inputs],
                [f"{p}pre"],
                kernel_shape=[k],
                dilations=[d],
                pads=pads,
            )
        )
        channel_slice(f"{p}pre", f"{p}filter", 0, c)
        channel_slice(f"{p}pre", f"{p}gate", c, 2 * c)
        nodes += [
            helper.make_node("Tanh", [f"{p}filter"], [f"{p}tanh"]),
            helper.make_node("Sigmoid", [f"{p}gate"], [f"{p}sigmoid"]),
            helper.make_node("Mul", [f"{p}tanh", f"{p}sigmoid"], [f"{p}z"]),
        ]
        pointwise(f"{p}z", f"{p}mix", weights["mix.w"][i], weights["mix.b"][i], f"{p}mix")
        channel_slice(f"{p}mix", f"{p}skip", c, c + s)
        if skip is None:
            skip = f"{p}skip"
        else:
            nodes.append(helper.make_node("Add", [skip, f"{p}skip"], [f"{p}skip_sum"]))
            skip = f"{p}skip_sum"
        if i + 1 < spec.layers:
            channel_slice(f"{p}mix", f"{p}residual", 0, c)
            nodes.append(helper.make_node("Add", [h, f"{p}residual"], [f"h{i + 1}"]))
    nodes += activation_nodes("relu", skip, "skip_relu")
    pointwise("skip_relu", "y", weights["head.w"], weights["head.b"], "head")
    return make_model(
        nodes, inputs, outputs, initializers=init, opset=opset,
        name="streaming_stack" if stateful else "causal_stack",
    )  # fmt: skip
