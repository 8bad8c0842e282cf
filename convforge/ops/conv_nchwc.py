"""Convolution with output channels blocked (NCHW[x]c), and its layout transforms.

Same result as :func:`convforge.ops.conv` (layout ``(N, C, *spatial)`` in and out) for
dense convolutions and for grouped ones whose output block lies inside one group
(:func:`blocks_fit`), computed as four TE blocks (names are the contract with
``convforge.schedules.cpu_conv``):

- ``nchwc_pad_x``: the input zero-padded (NCHW; also extended on the high side so that the
  rounded-up output width reads inside it);
- ``nchwc_pack_x`` (with ``pack_input``): ``xb[n, wo, c, wi] = xp[n, c, 0, wo*WB + wi]``;
- ``nchwc_pack_w``: ``wp[ob, c, *k, oi] = w[ob*OB + oi, c, *k]`` (c < C/groups; zeros
  past the last output channel); a compiled model packs its constant weights once instead
  (:func:`pack_weight_array`, ``weight_packed=True``);
- ``conv_nchwc``: ``y[n, ob, *s, wo, wi, oi] = sum_{c, *k} xp[n, g*C/groups + c,
  *(s*stride + k*dil)] * wp[ob, c, *k, oi]`` with ``g = ob*OB // (O/groups)`` the group of
  the block: output channels in blocks of OB (the vectorized axis), the innermost output
  axis in tiles of ``width_block`` positions;
- ``nchwc_unpack``: ``out[n, o, *s] = epilogue(y[n, o // OB, ..., o % OB])`` (bias,
  residual, activation, cast);
- or, in :func:`conv_nchwc_max_pool`, ``nchwc_max_pool`` instead of the unpack: the max
  over each pooling window of the same values, read from ``y``.

The input is not blocked: the kernel only broadcasts single input values, so the packing
pass would cost more than it saves (evidence:
benchmarks/results/thresholds.md#nchwc-unblocked-input). Output channels and the output
width are rounded up to whole blocks, so every register tile is full and the schedule needs
no boundary checks; the extra outputs are never read back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convforge.ops.activation import NO_EPILOGUE, Epilogue
from convforge.ops.blocks import (
    CONV_NCHWC,
    NCHWC_MAX_POOL,
    NCHWC_PACK_W,
    NCHWC_PACK_X,
    NCHWC_PAD_X,
    NCHWC_UNPACK,
    knob_attrs,
)
from convforge.ops.conv import accumulator_dtype, pad
from convforge.shapes import ConvGeometry, PoolGeometry, check_positive_int
from convforge.tvm_import import te, tirx


@dataclass(frozen=True)
class ChannelBlocks:
    """Block sizes: ``out_block`` output channels (the vectorized axis, a multiple of the
    vector lanes) x ``width_block`` output positions along the innermost spatial axis make
    one register tile of accumulators. ``pack_input`` (a 1x1 over one row only,
    ``ConvGeometry.is_row_pointwise``): the input is first copied to ``nchwc_pack_x``
    ``(N, P/WB, C, WB)``, so each width tile reads one contiguous panel."""

    out_block: int
    width_block: int
    pack_input: bool = False

    def __post_init__(self) -> None:
        for name in ("out_block", "width_block"):
            check_positive_int(getattr(self, name), name)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def blocks_fit(geom: ConvGeometry, out_block: int) -> bool:
    """Whether output blocks of ``out_block`` channels compute ``geom``: always for a dense
    convolution; a grouped one needs the block to divide the output channels per group
    (each block then reads one group's input channels)."""
    return geom.groups == 1 or (geom.out_channels // geom.groups) % out_block == 0


def pack_weight(w: te.Tensor, geom: ConvGeometry, blocks: ChannelBlocks) -> te.Tensor:
    """``nchwc_pack_w``: w (O, C/groups, *K) -> (ceil(O/OB), C/groups, *K, OB), zeros past
    channel O."""
    ob, out_channels = blocks.out_block, geom.out_channels

    def pack_w(obi, c, *rest):
        *k, oi = rest
        o = obi * ob + oi
        if out_channels % ob == 0:
            return w[(o, c, *k)]
        value = w[(tirx.min(o, out_channels - 1), c, *k)]
        return tirx.if_then_else(o < out_channels, value, tirx.const(0, w.dtype))

    shape = (_ceil_div(out_channels, ob), geom.in_channels // geom.groups, *geom.kernel, ob)
    return te.compute(shape, pack_w, name=NCHWC_PACK_W)


def pack_weight_array(w: np.ndarray, blocks: ChannelBlocks) -> np.ndarray:
    """:func:`pack_weight` of a constant weight, in numpy (done once, at compile time)."""
    ob = blocks.out_block
    chunks = _ceil_div(w.shape[0], ob)
    padded = np.zeros((chunks * ob, *w.shape[1:]), w.dtype)
    padded[: w.shape[0]] = w
    blocked = padded.reshape(chunks, ob, *w.shape[1:])
    return np.ascontiguousarray(np.moveaxis(blocked, 1, -1))


def conv_nchwc(
    x: te.Tensor,
    w: te.Tensor,
    geom: ConvGeometry,
    blocks: ChannelBlocks,
    epilogue: Epilogue = NO_EPILOGUE,
    *,
    weight_packed: bool = False,
    pool: PoolGeometry | None = None,
    knobs: dict[str, int] | None = None,
) -> te.Tensor:
    """Convolution through blocked output channels: x (N, C, *I), w (O, C/groups, *K) ->
    (N, O, *out).

    Equal to ``conv(x, w, geom, epilogue)`` up to float summation order; a grouped ``geom``
    needs ``blocks_fit(geom, blocks.out_block)`` (else ValueError). ``weight_packed``: w is
    already :func:`pack_weight`'s (ceil(O/OB), C/groups, *K, OB) (a constant packed by
    :func:`pack_weight_array`).

    ``pool``: a max pool of the output whose windows tile it (``pool.windows_inside``,
    else ValueError), computed with it: -> (N, O, *pool.out_size). Its block
    ``nchwc_max_pool``, ``out[n, o, *p] = max_r epilogue(y[n, o // OB, *(p*k + r) ...])``
    (the epilogue at output ``(n, o, *(p*k + r))``), reads the blocked accumulators (no
    ``nchwc_unpack``), so a schedule can pool each register tile as it is computed.

    ``knobs``: schedule knobs annotated on the ``conv_nchwc`` block
    (``blocks.SCHEDULE_KNOBS_ATTR``).
    """
    if pool is not None and (
        pool.kind != "max" or pool.x_shape != geom.out_shape or not pool.windows_inside
    ):
        raise ValueError(
            f"conv_nchwc's pool must be a max pool of the {geom.out_shape} output whose "
            f"windows tile it without padding or overhang, got {pool}"
        )
    y = _accumulate(x, w, geom, blocks, weight_packed, knobs)
    ob, wb = blocks.out_block, blocks.width_block
    dtype, acc = x.dtype, accumulator_dtype(x.dtype)

    def read(n, o, *pos):
        """The epilogue of the accumulator of output ``(n, o, *pos)``."""
        *outer, last = pos
        value = y[(n, o // ob, *outer, last // wb, last % wb, o % ob)]
        return epilogue.apply(value, (n, o, *pos), acc, dtype)

    if pool is None:
        return te.compute(geom.out_shape, read, name=NCHWC_UNPACK)
    taps = [te.reduce_axis((0, k), f"rp{a}") for a, k in enumerate(pool.kernel)]

    def pooled(n, o, *pos):
        return te.max(
            read(n, o, *(p * k + r for p, k, r in zip(pos, pool.kernel, taps))), axis=taps
        )

    return te.compute(pool.out_shape, pooled, name=NCHWC_MAX_POOL)


def _accumulate(
    x: te.Tensor,
    w: te.Tensor,
    geom: ConvGeometry,
    blocks: ChannelBlocks,
    weight_packed: bool,
    knobs: dict[str, int] | None = None,
) -> te.Tensor:
    """The ``conv_nchwc`` block (with its padding and packing):
    (N, ceil(O/OB), *out[:-1], ceil(out[-1]/WB), WB, OB) accumulators."""
    if not blocks_fit(geom, blocks.out_block):
        raise ValueError(
            f"conv_nchwc's out_block ({blocks.out_block}) must divide the output channels per "
            f"group ({geom.out_channels // geom.groups}, groups={geom.groups})"
        )
    if blocks.pack_input and not geom.is_row_pointwise:
        raise ValueError("ChannelBlocks.pack_input needs a 1x1 stride-1 convolution over one row")
    dtype = x.dtype
    acc = accumulator_dtype(dtype)
    ob, wb = blocks.out_block, blocks.width_block
    out_chunks = _ceil_div(geom.out_channels, ob)
    width_chunks = _ceil_div(geom.out_size[-1], wb)
    padded_out = (*geom.out_size[:-1], width_chunks * wb)
    # Padded input extent that the rounded-up output grid reads, per axis.
    extents = [
        (o - 1) * s + (k - 1) * d + 1
        for o, k, s, d in zip(padded_out, geom.kernel, geom.stride, geom.dilation)
    ]
    pads = [(lo, e - i - lo) for e, i, (lo, _) in zip(extents, geom.in_size, geom.padding)]
    xp = pad(x, pads, name=NCHWC_PAD_X)
    wp = w if weight_packed else pack_weight(w, geom, blocks)
    group_in = geom.in_channels // geom.groups
    blocks_per_group = geom.out_channels // geom.groups // ob  # 0 when dense (unused)
    rc = te.reduce_axis((0, group_in), "rc")
    rk = [te.reduce_axis((0, k), f"rk{i}") for i, k in enumerate(geom.kernel)]
    if blocks.pack_input:
        xb = te.compute(
            (geom.batch, width_chunks, geom.in_channels, wb),
            lambda n, wo, c, wi: xp[n, c, 0, wo * wb + wi],
            name=NCHWC_PACK_X,
        )

        def read_x(n, c, outer, wo, wi):
            return xb[n, wo, c, wi]
    else:

        def read_x(n, c, outer, wo, wi):
            pos = [*outer, wo * wb + wi]
            src = [p * s + r * d for p, r, s, d in zip(pos, rk, geom.stride, geom.dilation)]
            return xp[(n, c, *src)]

    def body(n, obi, *rest):
        *outer, wo, wi, oi = rest
        c = rc if geom.groups == 1 else obi // blocks_per_group * group_in + rc
        prod = read_x(n, c, outer, wo, wi).astype(acc) * wp[(obi, rc, *rk, oi)].astype(acc)
        return te.sum(prod, axis=[rc, *rk])

    return te.compute(
        (geom.batch, out_chunks, *padded_out[:-1], width_chunks, wb, ob),
        body,
        name=CONV_NCHWC,
        attrs=knob_attrs(knobs),
    )
