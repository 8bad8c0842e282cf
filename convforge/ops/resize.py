"""N-d resize (ONNX Resize, opset 19+) in TE, and resize followed by a convolution.

Layout ``(N, C, *spatial)``. Source coordinates are computed in float32 with the operation
order of the ONNX spec (as onnxruntime does), so nearest-neighbour ties round exactly as
there. Block names (the contract with ``convforge.schedules``): ``resize``, then the
convolution's own blocks (``pad``, ``conv``, ``conv_epilogue``).
"""

from __future__ import annotations

import itertools

import numpy as np
from tvm import te, tirx

from convforge.ops.conv import conv
from convforge.shapes import ConvGeometry, ResizeGeometry


def _f32(value: float) -> tirx.PrimExpr:
    return tirx.const(float(np.float32(value)), "float32")


def source_coordinate(position: tirx.PrimExpr, axis: int, geom: ResizeGeometry) -> tirx.PrimExpr:
    """float32 input coordinate of output ``position`` along ``axis`` (ONNX
    ``coordinate_transformation_mode``)."""
    x = position.astype("float32")
    scale = _f32(geom.scale[axis])
    in_len, out_len = geom.in_size[axis], geom.out_size[axis]
    mode = geom.coordinate_mode
    half = _f32(0.5)
    if mode == "asymmetric":
        return x / scale
    if mode == "half_pixel":
        return (x + half) / scale - half
    if mode == "pytorch_half_pixel":
        return (x + half) / scale - half if out_len > 1 else _f32(0.0)
    if mode == "align_corners":
        if out_len == 1:
            return _f32(0.0)
        return x * _f32(in_len - 1) / _f32(out_len - 1)
    if mode == "half_pixel_symmetric":
        f32 = np.float32
        output_width = f32(geom.scale[axis]) * f32(in_len)
        adjustment = f32(out_len) / output_width
        center = f32(in_len) / f32(2)
        offset = center * (f32(1) - adjustment)
        # onnxruntime evaluates this sum in double (its 0.5 literals are doubles).
        x64 = position.astype("float64")
        f64 = [tirx.const(float(v), "float64") for v in (offset, 0.5, f32(geom.scale[axis]))]
        return (f64[0] + (x64 + f64[1]) / f64[2] - f64[1]).astype("float32")
    raise ValueError(f"coordinate_mode {mode!r} is not supported")


def _clamp(index: tirx.PrimExpr, length: int) -> tirx.PrimExpr:
    return tirx.max(tirx.min(index, length - 1), 0)


def nearest_index(coord: tirx.PrimExpr, length: int, nearest_mode: str) -> tirx.PrimExpr:
    """int32 input index of a float32 coordinate (ONNX ``nearest_mode``), clamped to the input."""
    low = tirx.floor(coord)
    frac = coord - low  # exact in float32
    low = low.astype("int32")
    if nearest_mode == "floor":
        index = low
    elif nearest_mode == "ceil":
        index = tirx.ceil(coord).astype("int32")
    elif nearest_mode == "round_prefer_floor":
        index = low + (frac > _f32(0.5)).astype("int32")
    elif nearest_mode == "round_prefer_ceil":
        index = low + (frac >= _f32(0.5)).astype("int32")
    else:
        raise ValueError(f"nearest_mode {nearest_mode!r} is not supported")
    return _clamp(index, length)


def resize(x: te.Tensor, geom: ResizeGeometry, name: str = "resize") -> te.Tensor:
    """Resize the spatial axes of ``x`` (N, C, *I) to ``geom.out_size`` (nearest or N-linear).

    Linear mode clamps the source coordinate to ``[0, I-1]`` and blends the ``2^ndim``
    neighbours with float32 weights (computed in ``x``'s dtype for float64).
    """
    dtype = x.dtype
    weight_dtype = "float64" if dtype == "float64" else "float32"

    def body(n, c, *pos):
        coords = [source_coordinate(p, a, geom) for a, p in enumerate(pos)]
        if geom.mode == "nearest":
            src = [
                nearest_index(cd, length, geom.nearest_mode)
                for cd, length in zip(coords, geom.in_size)
            ]
            return x[(n, c, *src)]
        corners = []
        for cd, length in zip(coords, geom.in_size):
            clamped = tirx.max(tirx.min(cd, _f32(length - 1)), _f32(0.0))
            low = tirx.floor(clamped)
            high_weight = (clamped - low).astype(weight_dtype)
            low_index = low.astype("int32")
            high_index = tirx.min(low_index + 1, length - 1)
            one = tirx.const(1, weight_dtype)
            corners.append(((low_index, one - high_weight), (high_index, high_weight)))
        total = None
        for choice in itertools.product(*corners):
            weight = choice[0][1]
            for _, w in choice[1:]:
                weight = weight * w
            term = weight * x[(n, c, *(idx for idx, _ in choice))].astype(weight_dtype)
            total = term if total is None else total + term
        return total.astype(dtype)

    return te.compute(geom.out_shape, body, name=name)


def resize_conv(
    x: te.Tensor,
    w: te.Tensor,
    bias: te.Tensor | None,
    resize_geom: ResizeGeometry,
    conv_geom: ConvGeometry,
    activation: str | None = None,
) -> te.Tensor:
    """``conv(resize(x))`` as one computation: the ``resize`` block feeds the convolution.

    x: (N, C, *I), w: (O, C/groups, *K) -> (N, O, *conv_geom.out_size); ``conv_geom`` is the
    geometry of the convolution on the resized tensor.
    """
    return conv(resize(x, resize_geom), w, bias, conv_geom, activation)
