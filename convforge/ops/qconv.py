"""Integer convolutions in TE: ONNX ConvInteger and QLinearConv.

Layout ``(N, C, *spatial)``; weight ``(O, C/groups, *kernel)``; uint8 or int8 activations
and weights; every shape rule is :class:`~convforge.shapes.ConvGeometry`'s.

ONNX defines, for output ``(n, o, *p)`` of group ``g = o // (O/groups)``::

    acc = sum_{c, r} (x[n, g*C/groups + c, *(p*s + r*d)] - x_zp) * (w[o, c, *r] - w_zp[o])

in int32, the padding being ``x_zp`` (a real 0). ConvInteger returns ``acc``; QLinearConv
returns ``saturate(round(acc_real / y_scale) + y_zp)``, ``acc_real = (acc + bias[o]) *
x_scale * w_scale[o]``. The kernel computes ``acc`` with the zero points folded out of its
inner loop::

    acc = sum x*w  +  term[o]  -  w_zp[o] * sum_{c, r} x     (x padded with x_zp)
    term[o] = bias[o] - x_zp * sum_{c, r} w[o] + (C/groups * prod(kernel)) * x_zp * w_zp[o]

so the reduction (block ``qconv``) is a plain integer dot product; ``term`` (:func:`weight_term`)
is computed once per weight, and the window sums of x (block ``qconv_x_sum``, one per
position and group, shared by the group's output channels) only where a weight zero point
is not 0. Sums are modulo 2**32 (int32 wraps), so the folded form equals ONNX's ``acc``
wherever that fits int32, as onnxruntime's does.

Requantization (block ``qconv_requant``) is onnxruntime's (MLAS ``MlasRequantizeOutput``),
bit for bit: the multiplier ``x_scale * w_scale[o] / y_scale`` in float32 (two float32
roundings, :func:`requant_multiplier`), ``float32(acc) * multiplier`` rounded half to even,
clamped to ``[lo, hi]`` and ``y_zp`` added. ``lo``/``hi`` are the output type's range, or
narrower for a fused ReLU (``lo = y_zp``) or Clip (:func:`activation_bounds`). Where
``float32(acc) * multiplier`` is not exact, this can differ by 1 from round-half-even of
the exact real ``acc * x_scale * w_scale / y_scale``: measured in tests/test_qconv.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from convforge.ops import blocks
from convforge.shapes import ConvGeometry
from convforge.tvm_import import te, tirx

#: The integer dtypes of activations and weights.
INT8_DTYPES = ("uint8", "int8")
#: Kernel parameter vector (int32) indices: x zero point, y zero point, output bounds.
X_ZP, Y_ZP, LO, HI = range(4)


def dtype_range(dtype: str) -> tuple[int, int]:
    """(min, max) of an 8-bit integer dtype."""
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def product_dtype(x_dtype: str, w_dtype: str) -> str:
    """The narrowest dtype that holds every product x*w exactly: int16 unless both are
    uint8 (255*255 > 32767), then int32."""
    return "int32" if x_dtype == w_dtype == "uint8" else "int16"


def pad_with(x: te.Tensor, pads: Sequence[tuple[int, int]], value: tirx.PrimExpr) -> te.Tensor:
    """``x`` with its spatial axes padded by ``(lo, hi)`` pairs of ``value`` (block
    ``qconv_pad``, annotated with the interior of its last axis: ``qconv_pack_interior``);
    ``x`` itself without padding."""
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        return x
    lead = len(x.shape) - len(pads)
    sizes = [int(v) for v in x.shape]
    shape = sizes[:lead] + [n + lo + hi for n, (lo, hi) in zip(sizes[lead:], pads)]

    def body(*idx):
        src = list(idx[:lead])
        inside = []
        for i, n, (lo, hi) in zip(idx[lead:], sizes[lead:], pads):
            src.append(i - lo)
            if lo > 0:
                inside.append(i >= lo)
            if hi > 0:
                inside.append(i < n + lo)
        return tirx.if_then_else(tirx.all(*inside), x[tuple(src)], value)

    lo, _ = pads[-1]
    interior = [lo, lo + sizes[-1]]
    return te.compute(
        shape, body, name=blocks.QCONV_PAD, attrs={blocks.QCONV_PACK_INTERIOR_ATTR: interior}
    )


def qconv(
    x: te.Tensor,
    w: te.Tensor,
    params: te.Tensor,
    term: te.Tensor,
    geom: ConvGeometry,
    *,
    multiplier: te.Tensor | None = None,
    w_zero_point: te.Tensor | None = None,
    out_dtype: str = "int32",
) -> te.Tensor:
    """ConvInteger (``multiplier`` None, ``out_dtype`` int32) or QLinearConv (``out_dtype``
    uint8/int8) as the module doc says.

    x: (N, C, *I) uint8/int8; w: (O, C/groups, *K) uint8/int8; params: int32 (4,) =
    (x_zp, y_zp, lo, hi) (:data:`X_ZP` ...; y_zp, lo, hi unused by ConvInteger); term:
    int32 (O,) (:func:`weight_term`); multiplier: float32 (O,); w_zero_point: int32 (O,),
    or None where every weight zero point is 0 -> (N, O, *out_size) of ``out_dtype``.
    """
    x_zp = params[X_ZP]
    xp = pad_with(x, geom.padding, x_zp.astype(x.dtype))
    cin = geom.in_channels // geom.groups
    opg = geom.out_channels // geom.groups
    prod = product_dtype(str(x.dtype), str(w.dtype))

    def window(pos, rk):
        return [p * s + r * d for p, r, s, d in zip(pos, rk, geom.stride, geom.dilation)]

    rc = te.reduce_axis((0, cin), "rc")
    rk = [te.reduce_axis((0, k), f"rk{i}") for i, k in enumerate(geom.kernel)]

    def dot(n, o, *pos):
        base = 0 if geom.groups == 1 else (o // opg) * cin
        value = xp[(n, base + rc, *window(pos, rk))].astype(prod) * w[(o, rc, *rk)].astype(prod)
        return te.sum(value.astype("int32"), axis=[rc, *rk])

    acc = te.compute(geom.out_shape, dot, name=blocks.QCONV)
    x_sum = None
    if w_zero_point is not None:
        sc = te.reduce_axis((0, cin), "sc")
        sk = [te.reduce_axis((0, k), f"sk{i}") for i, k in enumerate(geom.kernel)]

        def window_sum(n, g, *pos):
            value = xp[(n, g * cin + sc, *window(pos, sk))].astype("int32")
            return te.sum(value, axis=[sc, *sk])

        x_sum = te.compute(
            (geom.batch, geom.groups, *geom.out_size), window_sum, name=blocks.QCONV_X_SUM
        )

    def requant(n, o, *pos):
        value = acc[(n, o, *pos)] + term[o]
        if x_sum is not None:
            value = value - w_zero_point[o] * x_sum[(n, o // opg, *pos)]
        return requantize(value, o, params, multiplier, out_dtype)

    return te.compute(geom.out_shape, requant, name=blocks.QCONV_REQUANT)


def requantize(
    value: tirx.PrimExpr,
    o: tirx.PrimExpr,
    params: te.Tensor,
    multiplier: te.Tensor | None,
    out_dtype: str,
) -> tirx.PrimExpr:
    """The int32 accumulator ``value`` (bias and zero-point terms included) of output
    channel ``o``: itself (ConvInteger, ``multiplier`` None), else onnxruntime's
    requantization (module doc) to ``out_dtype``."""
    if multiplier is None:
        return value
    y_zp = params[Y_ZP]
    scaled = value.astype("float32") * multiplier[o]
    low = (params[LO] - y_zp).astype("float32")
    high = (params[HI] - y_zp).astype("float32")
    clamped = tirx.max(tirx.min(scaled, high), low)
    return (tirx.nearbyint(clamped).astype("int32") + y_zp).astype(out_dtype)


# --- the per-channel constants (numpy; once per weight) --------------------------------


def weight_term(
    w: np.ndarray, x_zero_point: int, w_zero_point: np.ndarray, bias: np.ndarray | None
) -> np.ndarray:
    """int32 (O,): ``bias[o] - x_zp * sum(w[o]) + w[o].size * x_zp * w_zp[o]`` (modulo
    2**32), the part of ``acc`` that does not depend on x (the module doc).

    w: (O, C/groups, *K) integer; w_zero_point: (O,) integers; bias: (O,) int32 or None.
    """
    w64 = np.asarray(w, np.int64).reshape(len(w), -1)
    count = w64.shape[1]
    x_zp = int(x_zero_point)
    term = -x_zp * w64.sum(axis=1) + count * x_zp * np.asarray(w_zero_point, np.int64)
    if bias is not None:
        term = term + np.asarray(bias, np.int64)
    return (term & 0xFFFFFFFF).astype(np.uint32).view(np.int32)


def requant_multiplier(
    x_scale: float, w_scale: np.ndarray, y_scale: float, channels: int
) -> np.ndarray:
    """float32 (O,): ``x_scale * w_scale[o] / y_scale``, each operation rounded to float32
    (onnxruntime's order); a scalar ``w_scale`` serves every channel."""
    xs = np.float32(x_scale)
    ws = np.broadcast_to(np.asarray(w_scale, np.float32).reshape(-1), (channels,))
    return ((xs * ws).astype(np.float32) / np.float32(y_scale)).astype(np.float32)


def activation_bounds(
    activation: str | tuple[float, float] | None, y_scale: float, y_zero_point: int, dtype: str
) -> tuple[int, int]:
    """The output's integer bounds (lo, hi): ``dtype``'s range, narrowed by a fused
    ``activation``: 'relu' (lo = y_zp: a real 0) or a Clip's real bounds ``(low, high)``
    (each quantized as the output is: round half to even of bound / y_scale, + y_zp).
    Quantizing is monotone, so clamping after it equals quantizing the clipped value."""
    lo, hi = dtype_range(dtype)
    if activation is None:
        return lo, hi
    if activation == "relu":
        return max(lo, int(y_zero_point)), hi
    low, high = activation
    ys = np.float32(y_scale)

    def quantized(bound: float) -> int | None:
        if math.isinf(bound):
            return None
        return int(np.rint(np.float32(bound) / ys)) + int(y_zero_point)

    qlow, qhigh = quantized(low), quantized(high)
    if qlow is not None:
        lo = min(max(lo, qlow), hi)
    if qhigh is not None:
        hi = max(min(hi, qhigh), lo)
    return lo, hi


# --- the blocked forms for x86 ``vpmaddwd`` / ``vpmaddubsw`` / ``vpdpbusd`` ---------------

#: Output channels per block (one int32 vector of AVX2; 16, one of AVX-512, for
#: ``vpdpbusd``: :data:`VNNI_OUT_BLOCK`); input channels per int32 lane of one instruction:
#: a pair of int16 (``vpmaddwd``), a quad of uint8 x int8 (``vpmaddubsw``, ``vpdpbusd``).
OUT_BLOCK, PAIR, QUAD = 8, 2, 4
VNNI_OUT_BLOCK = 16
#: Output channels per block of the AArch64 ``usdot`` form (one 128-bit int32 vector).
USDOT_OUT_BLOCK = 4


def packed_weight_shape(
    geom: ConvGeometry, step: int = PAIR, out_block: int = OUT_BLOCK
) -> tuple[int, ...]:
    """(ceil(O/out_block), ceil(C/step), *K, out_block, step): the weight
    :func:`qconv_packed` reads (int16 for pairs, int8 for quads)."""
    return (-(-geom.out_channels // out_block), -(-geom.in_channels // step), *geom.kernel,
            out_block, step)  # fmt: skip


def pack_weight(w: np.ndarray, step: int = PAIR, out_block: int = OUT_BLOCK) -> np.ndarray:
    """w (O, C, *K) of uint8/int8 -> :func:`packed_weight_shape` (int16 for ``step`` 2,
    int8 for 4; zeros where O or C is not a multiple of its block), the layout one
    instruction reads: ``out_block`` output channels x ``step`` input channels, consecutive."""
    out_channels, in_channels, *kernel = w.shape
    blocks_, groups_ = -(-out_channels // out_block), -(-in_channels // step)
    dtype = np.int16 if step == PAIR else np.int8
    padded = np.zeros((blocks_ * out_block, groups_ * step, *kernel), dtype)
    padded[:out_channels, :in_channels] = w
    padded = padded.reshape(blocks_, out_block, groups_, step, *kernel)
    nd = len(kernel)
    order = (0, 2, *range(4, 4 + nd), 1, 3)
    return np.ascontiguousarray(padded.transpose(order))


#: Temporaries a register tile of the blocked form keeps beside its accumulators and one
#: weight vector per channel block: the broadcast x, the instructions' result and
#: vpmaddubsw's vector of ones (AVX2); the broadcast x alone for ``vpdpbusd`` and
#: ``usdot``, which accumulate in place.
TEMPORARIES = {OUT_BLOCK: 3, VNNI_OUT_BLOCK: 1, USDOT_OUT_BLOCK: 1}


def _tiles(blocks: int, width: int, out_block: int, thresholds: Any, dividing: bool):
    """(accumulators, positions, channel blocks) of each register tile of the blocked form
    that fits: channel blocks a divisor of ``blocks`` (up to 4), positions of the last axis
    (divisors of ``width`` where ``dividing``); accumulators, one weight vector per channel
    block and the :data:`TEMPORARIES` within the profile's ``vector_registers``, the
    accumulators within its ``direct_accumulators``."""
    temporaries = TEMPORARIES[out_block]
    for ob in (d for d in range(1, 5) if blocks % d == 0):
        for w in range(1, width + 1):
            acc = ob * w
            fits = acc + ob + temporaries <= thresholds.vector_registers
            if fits and acc <= thresholds.direct_accumulators and (width % w == 0 or not dividing):
                yield acc, w, ob


def packed_tile(blocks: int, width: int, out_block: int, thresholds: Any) -> tuple[int, int]:
    """(channel blocks, positions) of the blocked form's register tile over ``blocks``
    channel blocks of ``out_block`` and a last axis ``width`` on a target of profile
    ``thresholds`` (:func:`_tiles`, positions dividing ``width``): the most accumulators,
    more positions first on a tie. (On AVX-512 VNNI, up to 28 accumulators fit but ran
    1.3-1.5x slower than 14-16 on a Zen 4: 3x3 64->64 56x56 and 1x1 256->64.)"""
    _, w, ob = max(_tiles(blocks, width, out_block, thresholds, dividing=True))
    return ob, w


def tiled_width(blocks: int, width: int, out_block: int, thresholds: Any) -> int:
    """The width the blocked form's int32 output is computed over: ``width`` itself where
    its divisors allow a register tile (:func:`packed_tile`) of at least half the
    accumulators of the best tile, else (a prime width such as 109, SqueezeNet's first
    convolution, left one position per tile) the least multiple of a tile of at least 3/4
    of them; the extra positions read x's padding value and are never requantized."""
    fitted, _, _ = max(_tiles(blocks, width, out_block, thresholds, dividing=True))
    tiles = list(_tiles(blocks, width, out_block, thresholds, dividing=False))
    best = max(acc for acc, _, _ in tiles)
    if 2 * fitted >= best:
        return width
    return min(-(-width // w) * w for acc, w, _ in tiles if 4 * acc >= 3 * best)


def fits_pmaddubsw(w: np.ndarray) -> bool:
    """Whether int8 weights w (O, C, *K) can be read by ``vpmaddubsw`` exactly with any
    uint8 x: it sums two products x_a*w_a + x_b*w_b of neighbouring input channels in
    int16, saturating, so every such pair needs ``255 * (|w_a| + |w_b|) <= 32767``, i.e.
    ``|w_a| + |w_b| <= 128`` (always true for 7-bit weights, onnxruntime's quantizer's
    ``reduce_range``)."""
    if np.asarray(w).dtype != np.int8:
        return False
    packed = np.abs(pack_weight(w, QUAD).astype(np.int16))
    sums = packed[..., 0::2] + packed[..., 1::2]
    return bool(sums.max(initial=0) <= 128)


def _pack_x(
    x: te.Tensor, params: te.Tensor, geom: ConvGeometry, step: int, out_size: Sequence[int]
) -> tuple[te.Tensor, bool]:
    """x padded (x_zp) and blocked by ``step`` channels (block ``qconv_pack_x``: (N,
    ceil(C/step), *positions, step); widened to int16 for pairs), covering the positions an
    output of ``out_size`` reads (its last axis may run past the output's: those read x_zp),
    annotated with the interior of its last axis (``qconv_pack_interior``); and whether it
    is subsampled: a strided 1x1 without padding reads x at p * stride only, so x is packed
    there, once each, and read at p."""
    x_dtype = "int16" if step == PAIR else str(x.dtype)
    x_zp = params[X_ZP].astype(x_dtype)
    subsampled = (
        all(k == 1 for k in geom.kernel)
        and not any(lo or hi for lo, hi in geom.padding)
        and any(s > 1 for s in geom.stride)
    )
    extra = (out_size[-1] - geom.out_size[-1]) * geom.stride[-1]  # read by the extra outputs
    padded_size = [n + lo + hi for n, (lo, hi) in zip(geom.in_size, geom.padding)]
    padded_size[-1] += extra

    def pack(n, cb, *rest):
        pos, ci = rest[:-1], rest[-1]
        c = cb * step + ci
        inside = [c < geom.in_channels]
        src = []
        if subsampled:
            src = [i * s for i, s in zip(pos, geom.stride)]
            inside.append(pos[-1] < geom.out_size[-1])
        else:
            for i, n_in, (lo, _) in zip(pos, geom.in_size, geom.padding):
                src.append(i - lo)
                inside += [i >= lo, i < n_in + lo]
        return tirx.if_then_else(tirx.all(*inside), x[(n, c, *src)].astype(x_dtype), x_zp)

    if subsampled:
        pack_size, interior = list(out_size), [0, geom.out_size[-1]]
    else:
        pack_size = padded_size
        interior = [geom.padding[-1][0], geom.padding[-1][0] + geom.in_size[-1]]
    xp = te.compute(
        (geom.batch, -(-geom.in_channels // step), *pack_size, step), pack,
        name=blocks.QCONV_PACK_X, attrs={blocks.QCONV_PACK_INTERIOR_ATTR: interior},
    )  # fmt: skip
    return xp, subsampled


def qconv_packed(
    x: te.Tensor,
    w: te.Tensor,
    params: te.Tensor,
    term: te.Tensor,
    geom: ConvGeometry,
    *,
    multiplier: te.Tensor | None = None,
    out_dtype: str = "int32",
    out_width: int | None = None,
    blocked_requant: bool = False,
) -> te.Tensor:
    """:func:`qconv` (groups 1, every weight zero point 0) with w packed by
    :func:`pack_weight` (its last axes: ``out_block``, 8 or 16, and ``step``, 2 or 4): x is
    padded (x_zp) and blocked by ``step`` channels (block ``qconv_pack_x``: (N,
    ceil(C/step), *padded, step); widened to int16 for pairs, uint8 for quads); the dot
    product (block ``qconv``) accumulates (N, ceil(O/out_block), *out, out_block) int32,
    each step ``step`` input channels for ``out_block`` output channels (what ``vpmaddwd``,
    ``vpmaddubsw`` + ``vpmaddwd`` or ``vpdpbusd`` compute); the requantization
    (``qconv_requant``) reads it back in (N, O, *out). Extra channels carry zero weights;
    ``out_width`` (:func:`tiled_width`) computes the last axis over that many positions,
    the extra ones on x's padding value. A strided 1x1 convolution without padding packs x
    at the positions it reads only (p * stride), and the dot product reads them in order.
    ``blocked_requant`` (out_block dividing O; :func:`transpose_chunk`): the requantization
    writes the 8-bit output in the dot product's blocked layout (channels in the lanes) and
    block ``qconv_out`` transposes it to (N, O, *out)."""
    step, out_block = int(w.shape[-1]), int(w.shape[-2])
    pairs = -(-geom.in_channels // step)
    out_size = [*geom.out_size[:-1], out_width or geom.out_size[-1]]
    xp, subsampled = _pack_x(x, params, geom, step, out_size)
    rc = te.reduce_axis((0, pairs), "rc")
    rk = [te.reduce_axis((0, k), f"rk{i}") for i, k in enumerate(geom.kernel)]
    ri = te.reduce_axis((0, step), "ri")
    out_blocks = -(-geom.out_channels // out_block)

    def dot(n, ob, *rest):
        pos, oi = rest[:-1], rest[-1]
        if subsampled:
            src = [p + r for p, r in zip(pos, rk)]
        else:
            src = [p * s + r * d for p, r, s, d in zip(pos, rk, geom.stride, geom.dilation)]
        value = xp[(n, rc, *src, ri)].astype("int32") * w[(ob, rc, *rk, oi, ri)].astype("int32")
        return te.sum(value, axis=[rc, *rk, ri])

    acc = te.compute((geom.batch, out_blocks, *out_size, out_block), dot, name=blocks.QCONV)

    if blocked_requant:

        def requant_block(n, ob, *rest):
            pos, oi = rest[:-1], rest[-1]
            o = ob * out_block + oi
            return requantize(acc[(n, ob, *pos, oi)] + term[o], o, params, multiplier, out_dtype)

        q = te.compute(acc.shape, requant_block, name=blocks.QCONV_REQUANT)
        return te.compute(
            geom.out_shape,
            lambda n, o, *pos: q[(n, o // out_block, *pos, o % out_block)],
            name=blocks.QCONV_OUT,
        )

    def requant(n, o, *pos):
        value = acc[(n, o // out_block, *pos, o % out_block)] + term[o]
        return requantize(value, o, params, multiplier, out_dtype)

    return te.compute(geom.out_shape, requant, name=blocks.QCONV_REQUANT)


def transpose_chunk(width: int, out_block: int) -> int:
    """Positions per transposition step of the blocked form's 8-bit output
    (``blocked_requant``): the largest divisor of the output's last axis ``width`` that is
    at most ``out_block`` (each step permutes ``out_block`` channels x that many positions
    in registers and stores ``out_block`` rows of them)."""
    return max(d for d in range(1, min(width, out_block) + 1) if width % d == 0)


# --- the rows form for AVX-512 VNNI: output positions in the vector lanes ------------------

#: Output positions per int32 vector of the rows form (one ``vpdpbusd`` on zmm registers).
ROWS_LANES = 16


def is_rows_geometry(geom: ConvGeometry) -> bool:
    """Whether :func:`qconv_rows` computes ``geom``: a 1x1 convolution of one group, stride
    1, no padding (any number of spatial axes)."""
    return (
        geom.groups == 1
        and all(k == 1 for k in geom.kernel)
        and all(s == 1 for s in geom.stride)
        and all(lo == hi == 0 for lo, hi in geom.padding)
    )


def rows_width(width: int) -> int:
    """The last axis of the rows form's int32 output: ``width`` rounded up to whole
    vectors of :data:`ROWS_LANES` positions (the extra ones read x's zero point and are
    never requantized)."""
    return -(-width // ROWS_LANES) * ROWS_LANES


def rows_weight_shape(geom: ConvGeometry) -> tuple[int, int, int]:
    """(O, ceil(C/4), 4): the int8 weight :func:`qconv_rows` reads."""
    return geom.out_channels, -(-geom.in_channels // QUAD), QUAD


def pack_weight_rows(w: np.ndarray) -> np.ndarray:
    """w (O, C, 1, ...) int8 -> :func:`rows_weight_shape` (zeros past C): each output
    channel's quads of input channels, which one ``vpdpbusd`` broadcasts."""
    out_channels, in_channels = w.shape[:2]
    quads = -(-in_channels // QUAD)
    padded = np.zeros((out_channels, quads * QUAD), np.int8)
    padded[:, :in_channels] = np.asarray(w).reshape(out_channels, in_channels)
    return padded.reshape(out_channels, quads, QUAD)


def qconv_rows(
    x: te.Tensor,
    w: te.Tensor,
    params: te.Tensor,
    term: te.Tensor,
    geom: ConvGeometry,
    *,
    multiplier: te.Tensor | None = None,
    out_dtype: str = "int32",
) -> te.Tensor:
    """:func:`qconv` of a geometry :func:`is_rows_geometry` accepts (uint8 x, int8 w,
    every weight zero point 0) with w packed by :func:`pack_weight_rows`: x blocked by
    quads of channels (block ``qconv_pack_x``: (N, ceil(C/4), *spatial[:-1],
    rows_width(W), 4) uint8, x_zp past C and W); the dot product (block ``qconv_rows``)
    accumulates (N, O, *spatial[:-1], rows_width(W)) int32, output positions consecutive,
    each step one output channel's quad of weights against 16 positions' quads of x (what
    ``vpdpbusd`` with a broadcast weight computes); the requantization (``qconv_requant``)
    reads it in the output's own layout (N, O, *spatial): no transposition."""
    quads = -(-geom.in_channels // QUAD)
    *rows, width = geom.in_size
    padded = rows_width(width)
    xp, _ = _pack_x(x, params, geom, QUAD, [*rows, padded])
    rc = te.reduce_axis((0, quads), "rc")
    ri = te.reduce_axis((0, QUAD), "ri")

    def dot(n, o, *pos):
        value = xp[(n, rc, *pos, ri)].astype("int32") * w[o, rc, ri].astype("int32")
        return te.sum(value, axis=[rc, ri])

    acc = te.compute((geom.batch, geom.out_channels, *rows, padded), dot, name=blocks.QCONV_ROWS)

    def requant(n, o, *pos):
        return requantize(acc[(n, o, *pos)] + term[o], o, params, multiplier, out_dtype)

    return te.compute(geom.out_shape, requant, name=blocks.QCONV_REQUANT)
