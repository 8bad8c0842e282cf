"""N-d resize (ONNX Resize, opset 19+) in TE, and resize followed by a convolution.

Layout ``(N, C, *spatial)``; modes nearest, linear and cubic under every coordinate mode,
'tf_crop_and_resize' included. Source coordinates are computed in float32 with the
operation order of the ONNX spec (as onnxruntime does), so nearest-neighbour ties round
exactly as there. Separable: each spatial axis contributes taps (1 nearest, 2 linear,
4 cubic) and an N-d resize sums the products of per-axis weights. With ``antialias``
(linear and cubic, ONNX Resize-18) the resize runs one pass per resized axis, each a
reduction over a window of the filter stretched by ``1/scale`` (blocks ``resize_weight<a>``,
``resize_weight_sum<a>``, ``resize_pass<a>``) and then ``resize``. Block names (the contract with ``convforge.schedules``): ``resize``, then the
convolution's own blocks (``pad``, ``conv``, ``conv_epilogue``); the per-phase fast path
of nearest integer upsampling + conv: ``phase_weight``, ``pad``, ``phase_conv``,
``phase_conv_epilogue``.
"""

from __future__ import annotations

import itertools

import numpy as np

from convforge.ops import blocks
from convforge.ops.activation import NO_EPILOGUE, Epilogue
from convforge.ops.conv import accumulator_dtype, conv, pad
from convforge.shapes import ConvGeometry, PhaseConvLayout, ResizeGeometry
from convforge.tvm_import import te, tirx


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
    if mode == "tf_crop_and_resize":
        start, end = geom.roi[axis]
        if out_len == 1:
            return _f32(0.5 * (start + end) * (in_len - 1))
        return _f32(start * (in_len - 1)) + x * _f32((end - start) * (in_len - 1) / (out_len - 1))
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


def _cubic_weights(frac: tirx.PrimExpr, a: float, dtype: str) -> list[tirx.PrimExpr]:
    """Keys' cubic convolution weights (coefficient ``a``) of the taps at offsets -1, 0, 1, 2
    from ``floor(coord)``, ``frac = coord - floor(coord)``."""
    coeff = tirx.const(a, dtype)
    one = tirx.const(1.0, dtype)

    def outer(t):  # |t| in [1, 2)
        return ((coeff * t - 5 * coeff) * t + 8 * coeff) * t - 4 * coeff

    def inner(t):  # |t| in [0, 1)
        return ((coeff + 2) * t - (coeff + 3)) * t * t + one

    return [outer(frac + one), inner(frac), inner(one - frac), outer(2 * one - frac)]


def axis_taps(
    coord: tirx.PrimExpr, length: int, geom: ResizeGeometry, weight_dtype: str
) -> list[tuple[tirx.PrimExpr, tirx.PrimExpr | None]]:
    """``(input index, weight)`` of each tap of a float32 source coordinate along an axis of
    ``length`` samples (weight None: the single nearest tap). Linear clamps the coordinate
    to ``[0, length-1]``; cubic clamps its tap indices (edge padding) and, with
    ``exclude_outside``, zeroes the weights of taps outside the input and renormalizes."""
    if geom.mode == "nearest":
        return [(nearest_index(coord, length, geom.nearest_mode), None)]
    one = tirx.const(1, weight_dtype)
    if geom.mode == "linear":
        clamped = tirx.max(tirx.min(coord, _f32(length - 1)), _f32(0.0))
        low = tirx.floor(clamped)
        high_weight = (clamped - low).astype(weight_dtype)
        low_index = low.astype("int32")
        high_index = tirx.min(low_index + 1, length - 1)
        return [(low_index, one - high_weight), (high_index, high_weight)]
    low = tirx.floor(coord)
    weights = _cubic_weights((coord - low).astype(weight_dtype), geom.cubic_coeff_a, weight_dtype)
    indices = [low.astype("int32") + offset for offset in (-1, 0, 1, 2)]
    if geom.exclude_outside:
        zero = tirx.const(0, weight_dtype)
        weights = [
            tirx.if_then_else(tirx.all(i >= 0, i <= length - 1), w, zero)
            for i, w in zip(indices, weights)
        ]
        total = weights[0] + weights[1] + weights[2] + weights[3]
        weights = [w / total for w in weights]
    return [(_clamp(i, length), w) for i, w in zip(indices, weights)]


def _f32_value(value: float) -> float:
    return float(np.float32(value))


def antialias_window(geom: ResizeGeometry, axis: int) -> tuple[int, float, float]:
    """``(taps, support, inv_scale)`` of the antialiasing filter along spatial ``axis``, in
    onnxruntime's float32 arithmetic: the filter (tent of half-width 1 for 'linear', Keys'
    cubic of half-width 2) reaches ``support = half_width / scale`` input samples when
    downscaling (``half_width`` when upscaling) and is evaluated at ``distance *
    inv_scale`` (``inv_scale = scale`` when downscaling, else 1); ``taps = 2 *
    ceil(support) + 1`` samples bound every window."""
    f32 = np.float32
    half_width = f32(1.0 if geom.mode == "linear" else 2.0)
    inverse = f32(1.0) / f32(geom.scale[axis])  # onnxruntime's "scale" (input per output)
    support = half_width * inverse if inverse >= f32(1.0) else half_width
    inv_scale = f32(1.0) / inverse if inverse >= f32(1.0) else f32(1.0)
    return int(np.ceil(support)) * 2 + 1, float(support), float(inv_scale)


def _antialias_filter(t: tirx.PrimExpr, mode: str, a: float, dtype: str) -> tirx.PrimExpr:
    """The tent (linear) or Keys' cubic (coefficient ``a``) filter at distance ``t``."""
    t = tirx.abs(t)
    one, zero = tirx.const(1.0, dtype), tirx.const(0.0, dtype)
    if mode == "linear":
        return tirx.if_then_else(t < one, one - t, zero)
    coeff = tirx.const(a, dtype)
    inner = ((coeff + 2) * t - (coeff + 3)) * t * t + one
    outer = (((t - 5) * t + 8) * t - 4) * coeff
    return tirx.if_then_else(t < one, inner, tirx.if_then_else(t < 2 * one, outer, zero))


def _antialias_pass(t: te.Tensor, axis: int, geom: ResizeGeometry, dtype: str) -> te.Tensor:
    """Resize spatial ``axis`` of ``t`` with the antialiasing filter (onnxruntime's
    ``SetupUpsampleFilterAntiAlias``): output ``p`` centred at ``c = coord(p) + 0.5`` reads
    the samples ``[floor(c - support + 0.5), floor(c + support + 0.5))`` (at most ``taps``),
    weighted by the filter at ``(i - c + 0.5) * inv_scale`` and normalized by the weights'
    sum. Samples outside the input read the nearest edge sample (onnxruntime folds their
    weights onto the edge), or with ``exclude_outside`` weigh nothing."""
    in_len, out_len = geom.in_size[axis], geom.out_size[axis]
    taps, support, inv_scale = antialias_window(geom, axis)
    identity = np.float32(geom.scale[axis]) == np.float32(1.0)
    half = _f32(0.5)

    def window(p):
        coord = p.astype("float32") if identity else source_coordinate(p, axis, geom)
        center = coord + half
        first = tirx.floor(center - _f32(support) + half).astype("int32")
        last = tirx.floor(center + _f32(support) + half).astype("int32")
        return center, first, tirx.max(tirx.min(last - first, taps), 0)

    def weight(p, j):
        center, first, count = window(p)
        distance = ((first + j).astype("float32") - center + half) * _f32(inv_scale)
        w = _antialias_filter(distance, geom.mode, geom.cubic_coeff_a, "float32")
        valid = [j < count]
        if geom.exclude_outside:
            valid += [first + j >= 0, first + j < in_len]
        return tirx.if_then_else(tirx.all(*valid), w, _f32(0.0))

    weights = te.compute((out_len, taps), weight, name=f"{blocks.RESIZE_WEIGHT}{axis}")
    rk = te.reduce_axis((0, taps), f"rw{axis}")
    total = te.compute(
        (out_len,),
        lambda p: te.sum(weights[p, rk], axis=rk),
        name=f"{blocks.RESIZE_WEIGHT_SUM}{axis}",
    )
    rj = te.reduce_axis((0, taps), f"rj{axis}")

    def body(n, c, *pos):
        p = pos[axis]
        _, first, count = window(p)
        norm = tirx.if_then_else(total[p] == _f32(0.0), _f32(1.0), _f32(1.0) / total[p])
        src = list(pos)
        src[axis] = _clamp(first + rj, in_len)
        value = (weights[p, rj] * norm).astype(dtype) * t[(n, c, *src)].astype(dtype)
        # taps past the window weigh nothing: also not a non-finite sample's 0 * inf
        return te.sum(tirx.if_then_else(rj < count, value, tirx.const(0, dtype)), axis=rj)

    shape = [int(v) for v in t.shape]
    shape[axis + 2] = out_len
    return te.compute(shape, body, name=f"{blocks.RESIZE_PASS}{axis}")


def resize_antialias(x: te.Tensor, geom: ResizeGeometry, name: str = blocks.RESIZE) -> te.Tensor:
    """Antialiased linear or cubic resize (``geom.antialias``): one filter pass
    (:func:`_antialias_pass`) per axis whose length changes (onnxruntime copies an axis of
    unchanged length), in float32 (float64 for float64 ``x``), then the ``resize`` block
    (cast, and 'tf_crop_and_resize''s ``extrapolation_value`` where a source coordinate
    lies outside the input)."""
    dtype = x.dtype
    acc = "float64" if dtype == "float64" else "float32"
    t = x
    for axis, (i, o) in enumerate(zip(geom.in_size, geom.out_size)):
        if i != o:
            t = _antialias_pass(t, axis, geom, acc)

    def body(n, c, *pos):
        value = t[(n, c, *pos)].astype(dtype)
        if geom.coordinate_mode != "tf_crop_and_resize":
            return value
        coords = [source_coordinate(p, a, geom) for a, p in enumerate(pos)]
        return _extrapolated(value, coords, geom, dtype)

    return te.compute(geom.out_shape, body, name=name)


def _extrapolated(
    value: tirx.PrimExpr, coords: list, geom: ResizeGeometry, dtype: str
) -> tirx.PrimExpr:
    """'tf_crop_and_resize': ``value`` where every source coordinate lies in ``[0, I-1]``,
    else ``geom.extrapolation_value``."""
    inside = [
        tirx.all(cd >= _f32(0.0), cd <= _f32(length - 1))
        for cd, length in zip(coords, geom.in_size)
    ]
    return tirx.if_then_else(tirx.all(*inside), value, tirx.const(geom.extrapolation_value, dtype))


def resize(x: te.Tensor, geom: ResizeGeometry, name: str = blocks.RESIZE) -> te.Tensor:
    """Resize the spatial axes of ``x`` (N, C, *I) to ``geom.out_size`` (nearest, N-linear or
    N-cubic; taps as :func:`axis_taps`; with ``geom.antialias``: :func:`resize_antialias`).

    Weights are float32 (``x``'s dtype for float64). Under 'tf_crop_and_resize' an output
    whose source coordinate lies outside ``[0, I-1]`` on some axis is
    ``geom.extrapolation_value``.
    """
    if geom.antialias:
        return resize_antialias(x, geom, name)
    dtype = x.dtype
    weight_dtype = "float64" if dtype == "float64" else "float32"

    def body(n, c, *pos):
        coords = [source_coordinate(p, a, geom) for a, p in enumerate(pos)]
        taps = [
            axis_taps(cd, length, geom, weight_dtype) for cd, length in zip(coords, geom.in_size)
        ]
        total = None
        for choice in itertools.product(*taps):
            term = x[(n, c, *(index for index, _ in choice))]
            weights = [w for _, w in choice if w is not None]
            if weights:
                weight = weights[0]
                for w in weights[1:]:
                    weight = weight * w
                term = weight * term.astype(weight_dtype)
            total = term if total is None else total + term
        value = total.astype(dtype)
        if geom.coordinate_mode != "tf_crop_and_resize":
            return value
        return _extrapolated(value, coords, geom, dtype)

    return te.compute(geom.out_shape, body, name=name)


def resize_conv(
    x: te.Tensor,
    w: te.Tensor,
    resize_geom: ResizeGeometry,
    conv_geom: ConvGeometry,
    epilogue: Epilogue = NO_EPILOGUE,
) -> te.Tensor:
    """``conv(resize(x))`` as one computation: the ``resize`` block feeds the convolution.

    x: (N, C, *I), w: (O, C/groups, *K) -> (N, O, *conv_geom.out_size); ``conv_geom`` is the
    geometry of the convolution on the resized tensor, ``epilogue`` its end (as in
    :func:`convforge.ops.conv`).
    """
    return conv(resize(x, resize_geom), w, conv_geom, epilogue)


def fold_phase_weights(
    w: te.Tensor, layout: PhaseConvLayout, dilation: tuple[int, ...]
) -> te.Tensor:
    """(O, C/g, *K) -> (O, C/g, *f, *taps): ``W[phase, m] = sum of w[r] over the taps r with
    (phase + r*d) // f == m`` (per axis), summed in the accumulator dtype."""
    out_channels, cin, *kernel = (int(v) for v in w.shape)
    acc = accumulator_dtype(w.dtype)
    nd = layout.ndim
    rk = [te.reduce_axis((0, k), f"rk{a}") for a, k in enumerate(kernel)]

    def body(o, c, *phase_tap):
        phases, taps = phase_tap[:nd], phase_tap[nd:]
        lands = [
            (ph + r * d) // f == m
            for ph, m, r, d, f in zip(phases, taps, rk, dilation, layout.factors)
        ]
        value = tirx.if_then_else(tirx.all(*lands), w[(o, c, *rk)].astype(acc), tirx.const(0, acc))
        return te.sum(value, axis=rk)

    shape = (out_channels, cin, *layout.factors, *layout.taps)
    return te.compute(shape, body, name=blocks.PHASE_WEIGHT)


def nearest_upsample_conv(
    x: te.Tensor,
    w: te.Tensor,
    layout: PhaseConvLayout,
    conv_geom: ConvGeometry,
    epilogue: Epilogue = NO_EPILOGUE,
) -> te.Tensor:
    """``conv(nearest_upsample(x, f))`` (stride 1) as per-phase convolutions of the
    low-resolution x with folded kernels (see :class:`convforge.shapes.PhaseConvLayout`);
    equal to :func:`resize_conv` wherever ``layout`` exists.

    ``phase_conv[n, o, *ph, *j] = sum_{c, m} xpad[n, c, *(j + (ph + shift)//f + m)] *
    W[o, c, *((ph + shift) % f), *m]`` is an ordinary convolution per output phase ``ph``
    (its width ``j`` contiguous in x), and ``phase_interleave`` writes output
    ``p = f*j + ph``, ending in ``epilogue`` (as :func:`convforge.ops.conv`'s). Blocks:
    ``phase_weight``, ``pad``, ``phase_conv``, ``phase_interleave``.
    """
    dtype = x.dtype
    acc = accumulator_dtype(dtype)
    folded = fold_phase_weights(w, layout, conv_geom.dilation)
    xp = pad(x, layout.x_padding)
    groups = conv_geom.groups
    cin = conv_geom.in_channels // groups
    opg = conv_geom.out_channels // groups
    rc = te.reduce_axis((0, cin), "rc")
    rm = [te.reduce_axis((0, m), f"rm{a}") for a, m in enumerate(layout.taps)]
    nd = layout.ndim

    def body(n, o, *phase_row):
        phase, row = phase_row[:nd], phase_row[nd:]
        shifted = [ph + sh for ph, sh in zip(phase, layout.shift)]
        src = [j + t // f + m for j, t, f, m in zip(row, shifted, layout.factors, rm)]
        tap_phase = [t % f for t, f in zip(shifted, layout.factors)]
        channel = rc if groups == 1 else (o // opg) * cin + rc
        prod = xp[(n, channel, *src)].astype(acc) * folded[(o, rc, *tap_phase, *rm)]
        return te.sum(prod, axis=[rc, *rm])

    shape = (conv_geom.batch, conv_geom.out_channels, *layout.factors, *layout.rows)
    phases = te.compute(shape, body, name=blocks.PHASE_CONV)

    def interleave(n, o, *pos):
        phase = [p % f for p, f in zip(pos, layout.factors)]
        row = [p // f for p, f in zip(pos, layout.factors)]
        return epilogue.apply(phases[(n, o, *phase, *row)], (n, o, *pos), acc, dtype)

    return te.compute(conv_geom.out_shape, interleave, name=blocks.PHASE_INTERLEAVE)
