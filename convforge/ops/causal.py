"""Causal 1-D convolution that carries its past input as a state (streaming, WaveNet-style).

``y = conv(concat(state, x), w)`` with 'valid' padding; ``present_state`` = the last
``d*(k-1)`` samples of ``concat(state, x)``. Built on the generic :func:`convforge.ops.conv`;
shapes come from :func:`convforge.shapes.causal_state_geometry`.
"""

from __future__ import annotations

from convforge.ops import blocks
from convforge.ops.activation import NO_EPILOGUE, Epilogue
from convforge.ops.conv import conv, pad
from convforge.shapes import CausalStateGeometry, depthwise_causal_state_geometry
from convforge.tvm_import import te, tirx

#: ``activation`` values of ONNX CausalConvWithState and the convforge activation they mean.
ONNX_ACTIVATIONS = {None: None, "none": None, "silu": "silu", "swish": "silu"}


def concat_state(state: te.Tensor | None, x: te.Tensor, geom: CausalStateGeometry) -> te.Tensor:
    """``concat(state, x)`` along time: (N, C, d*(k-1) + L); a ``None`` state is zeros."""
    if state is None:
        return pad(x, ((geom.state_length, 0),), name=blocks.CONCAT)
    if geom.state_length == 0:
        return x
    s = geom.state_length

    def body(n, c, t):  # if_then_else reads only the branch taken
        return tirx.if_then_else(t < s, state[n, c, t], x[n, c, t - s])

    return te.compute(geom.conv.x_shape, body, name=blocks.CONCAT)


def present_state(joined: te.Tensor, geom: CausalStateGeometry) -> te.Tensor:
    """The last ``d*(k-1)`` samples of ``concat(state, x)``: the next call's state.

    Its first ``state_length - L`` samples come from the old state, the rest from x; the
    block annotation ``state_split`` gives that boundary to schedules.
    """
    start = geom.length
    return te.compute(
        geom.state_shape,
        lambda n, c, t: joined[n, c, t + start],
        name=blocks.PRESENT_STATE,
        attrs={blocks.STATE_SPLIT_ATTR: max(geom.state_length - geom.length, 0)},
    )


def causal_conv_state(
    x: te.Tensor,
    w: te.Tensor,
    state: te.Tensor | None,
    geom: CausalStateGeometry,
    epilogue: Epilogue = NO_EPILOGUE,
) -> tuple[te.Tensor, te.Tensor]:
    """General (dense, grouped, dilated) causal convolution with state.

    x: (N, C, L), w: (O, C/groups, k), state: (N, C, d*(k-1)) or None (zeros), the
    epilogue's bias (O,) -> (y: (N, O, L), present_state: (N, C, d*(k-1))); y ends in
    ``epilogue`` (as :func:`convforge.ops.conv`'s).
    """
    joined = concat_state(state, x, geom)
    y = conv(joined, w, geom.conv, epilogue)
    return y, present_state(joined, geom)


def causal_conv_with_state(
    x: te.Tensor,
    w: te.Tensor,
    bias: te.Tensor | None = None,
    state: te.Tensor | None = None,
    activation: str | None = None,
) -> tuple[te.Tensor, te.Tensor]:
    """ONNX ``CausalConvWithState`` (opset 27) as a TE computation.

    x: (N, C, L) input; w: (C, 1, k) depthwise weight; bias: (C,) or None; state:
    (N, C, k-1) past_state or None (zeros); activation: None, 'none', 'silu' or 'swish'
    (fused ``v * sigmoid(v)``). Returns ``(output (N, C, L), present_state (N, C, k-1))``:
    ``output[n, c, t] = act(bias[c] + sum_j w[c, 0, j] * concat(state, x)[n, c, t + j])`` and
    present_state = the last k-1 samples of ``concat(state, x)``. Raises ValueError on
    shapes or activation ONNX does not allow.
    """
    if activation not in ONNX_ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {sorted(k for k in ONNX_ACTIVATIONS if k)} or None, "
            f"got {activation!r}"
        )
    geom = depthwise_causal_state_geometry(
        [int(v) for v in x.shape], [int(v) for v in w.shape],
        bias_shape=None if bias is None else [int(v) for v in bias.shape],
        state_shape=None if state is None else [int(v) for v in state.shape],
    )  # fmt: skip
    return causal_conv_state(x, w, state, geom, Epilogue(bias, ONNX_ACTIVATIONS[activation]))
