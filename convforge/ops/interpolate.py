"""ONNX Resize as a TE computation: nearest, linear and cubic, every coordinate mode.

Along each resized axis with input size ``n``, output size ``m`` and scale ``s`` (the given
scale, not ``m / n``: the two differ when ``n * s`` is not an integer), output index ``o``
maps to the input coordinate ``x`` of the ONNX spec's ``coordinate_transformation_mode``;
the value is a weighted sum of taps around ``x`` (1 nearest, 2 linear, 4 cubic), with tap
indices clamped to ``[0, n - 1]`` (edge padding) as the ONNX reference does. Separable:
an N-d resize sums the products of per-axis weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from tvm import te, tirx

#: Coordinate modes, interpolation modes and nearest rounding modes supported.
COORDINATE_MODES = (
    "half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
    "asymmetric", "tf_crop_and_resize",
)  # fmt: skip
MODES = ("nearest", "linear", "cubic")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _coordinate(o, n: int, m: int, s: float, mode: str, roi: tuple[float, float]):
    f = tirx.const
    o = o.astype("float32")
    if mode == "half_pixel":
        return (o + f(0.5, "float32")) / f(s, "float32") - f(0.5, "float32")
    if mode == "half_pixel_symmetric":
        adjustment = m / (s * n)
        offset = (n / 2) * (1 - adjustment)
        return f(offset, "float32") + (o + f(0.5, "float32")) / f(s, "float32") - f(0.5, "float32")
    if mode == "pytorch_half_pixel":
        if m == 1:
            return f(0.0, "float32")
        return (o + f(0.5, "float32")) / f(s, "float32") - f(0.5, "float32")
    if mode == "align_corners":
        return f(0.0, "float32") if m == 1 else o * f((n - 1) / (m - 1), "float32")
    if mode == "asymmetric":
        return o / f(s, "float32")
    if mode == "tf_crop_and_resize":
        start, end = roi
        if m == 1:
            return f(0.5 * (start + end) * (n - 1), "float32")
        return f(start * (n - 1), "float32") + o * f((end - start) * (n - 1) / (m - 1), "float32")
    raise ValueError(
        f"coordinate_transformation_mode must be one of {COORDINATE_MODES}, got {mode!r}"
    )


def _nearest_index(x, nearest_mode: str):
    half = tirx.const(0.5, "float32")
    floor = tirx.floor(x)
    if nearest_mode == "floor":
        index = floor
    elif nearest_mode == "ceil":
        index = tirx.ceil(x)
    elif nearest_mode == "round_prefer_floor":
        index = tirx.if_then_else(x - floor == half, floor, tirx.round(x))
    elif nearest_mode == "round_prefer_ceil":
        index = tirx.if_then_else(x - floor == half, floor + 1, tirx.round(x))
    else:
        raise ValueError(f"nearest_mode must be one of {NEAREST_MODES}, got {nearest_mode!r}")
    return index.astype("int32")


def _cubic_weights(r, a: float) -> list:
    A = tirx.const(a, "float32")
    one = tirx.const(1.0, "float32")

    def outer(t):  # |t| in [1, 2)
        return ((A * t - 5 * A) * t + 8 * A) * t - 4 * A

    def inner(t):  # |t| in [0, 1)
        return ((A + 2) * t - (A + 3)) * t * t + one

    return [outer(r + one), inner(r), inner(one - r), outer(2 * one - r)]


def _axis_taps(o, n, m, s, mode, coordinate_mode, nearest_mode, cubic_a, exclude_outside, roi):
    """[(index, weight)] for one output index along one axis, and an 'inside roi' flag."""
    x = _coordinate(o, n, m, s, coordinate_mode, roi)
    inside = None
    if coordinate_mode == "tf_crop_and_resize":
        inside = tirx.all(x >= tirx.const(0.0, "float32"), x <= tirx.const(n - 1, "float32"))

    def clamp(i):
        return tirx.max(tirx.min(i, n - 1), 0)

    if mode == "nearest":
        return [(clamp(_nearest_index(x, nearest_mode)), None)], inside
    base = tirx.floor(x)
    r = x - base
    base = base.astype("int32")
    if mode == "linear":
        return [(clamp(base), tirx.const(1.0, "float32") - r), (clamp(base + 1), r)], inside
    weights = _cubic_weights(r, cubic_a)
    indices = [base - 1 + t for t in range(4)]
    if exclude_outside:
        valid = [tirx.all(i >= 0, i <= n - 1) for i in indices]
        weights = [
            tirx.if_then_else(v, w, tirx.const(0.0, "float32")) for v, w in zip(valid, weights)
        ]
        total = weights[0] + weights[1] + weights[2] + weights[3]
        weights = [w / total for w in weights]
    return [(clamp(i), w) for i, w in zip(indices, weights)], inside


def resize(
    x: te.Tensor,
    out_shape: Sequence[int],
    scales: Sequence[float],
    *,
    mode: str = "nearest",
    coordinate_mode: str = "half_pixel",
    nearest_mode: str = "round_prefer_floor",
    cubic_coeff_a: float = -0.75,
    exclude_outside: bool = False,
    roi: Sequence[tuple[float, float]] | None = None,
    extrapolation_value: float = 0.0,
) -> te.Tensor:
    """ONNX Resize of ``x`` to ``out_shape`` with per-axis ``scales`` (all axes, 1 = unchanged).

    ``roi``: per-axis (start, end), used by ``tf_crop_and_resize`` only.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    in_shape = [int(v) for v in x.shape]
    roi = roi or [(0.0, 1.0)] * len(in_shape)
    axes = [k for k, (n, m, s) in enumerate(zip(in_shape, out_shape, scales)) if n != m or s != 1]
    dtype = x.dtype
    acc = "float32" if dtype == "float16" else dtype

    def body(*idx):
        per_axis, inside = [], []
        for k in axes:
            taps, ok = _axis_taps(
                idx[k], in_shape[k], out_shape[k], scales[k], mode, coordinate_mode,
                nearest_mode, cubic_coeff_a, exclude_outside, roi[k],
            )  # fmt: skip
            per_axis.append(taps)
            if ok is not None:
                inside.append(ok)
        value = None
        for combo in itertools.product(*per_axis):
            src = list(idx)
            weight = None
            for k, (index, w) in zip(axes, combo):
                src[k] = index
                if w is not None:
                    weight = w if weight is None else weight * w
            term = x[tuple(src)].astype(acc)
            term = term if weight is None else term * weight.astype(acc)
            value = term if value is None else value + term
        value = value.astype(dtype)
        if inside:
            value = tirx.if_then_else(
                tirx.all(*inside), value, tirx.const(extrapolation_value, dtype)
            )
        return value

    return te.compute(tuple(int(v) for v in out_shape), body, name="resize")
