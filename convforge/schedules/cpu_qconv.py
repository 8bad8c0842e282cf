"""Default CPU schedule of the integer convolutions (``ops/qconv.py``: ConvInteger,
QLinearConv).

The output ``(N, O, *spatial)`` of the ``qconv_requant`` block (the int32 dot product
``qconv`` fused into it) is tiled as the direct float convolution is
(:mod:`convforge.schedules.cpu_direct`)::

    parallel( N, O/channel_tile, rows/row_tile )
      width/width_tile
        reduction loops (C/groups, *kernel)
          channel_tile (unrolled) x row_tile (unrolled) x width_tile (vectorized, int32)

``channel_tile * row_tile * width_tile / lanes`` int32 vector accumulators stay in
registers (lanes: int32 lanes of the target's vectors, 8 on AVX2); every reduction step
widens ``row_tile * width_tile`` activations and broadcasts ``channel_tile`` weights, whose
products are formed in int16 where they fit (:func:`convforge.ops.qconv.product_dtype`).
The requantization (add the per-channel term, float32 multiply, round, clamp, narrow) runs
on the register block before it is stored. The padded input (padding value x_zp) is
written per parallel tile. Where a weight zero point is not 0, the padded input and the
per-position window sums of x (``qconv_x_sum``) are computed once, in parallel, before.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from convforge.ops.blocks import QCONV, QCONV_PAD, QCONV_REQUANT, QCONV_X_SUM
from convforge.schedules.cpu_direct import default_tiles, has_block
from convforge.targets import profile


def is_qconv(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` is an integer convolution of :func:`convforge.ops.qconv.qconv`."""
    return has_block(func, QCONV) and has_block(func, QCONV_REQUANT)


def _named(sch: s_tir.Schedule, name: str) -> s_tir.SBlockRV | None:
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint == name:
            return block
    return None


def _parallel_root(sch: s_tir.Schedule, block: s_tir.SBlockRV, outer: int) -> None:
    """A root block's first ``outer`` loops (spatial ones) fused and run in parallel."""
    loops = sch.get_loops(block)[:outer]
    sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])


def schedule_qconv(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule:
    """The schedule of the module doc for ``func`` (:func:`is_qconv`) on a CPU ``target``."""
    sch = s_tir.Schedule(func)
    conv = _named(sch, QCONV)
    requant = _named(sch, QCONV_REQUANT)
    pad = _named(sch, QCONV_PAD)
    x_sum = _named(sch, QCONV_X_SUM)
    n_spatial = sum(int(iv.iter_type) != tirx.IterVar.CommReduce for iv in sch.get(conv).iter_vars)
    out_shape = tuple(int(sch.get(loop).extent) for loop in sch.get_loops(requant))
    lanes = profile(target).vector_lanes("int32")
    budget = profile(target).direct_accumulators
    tiles = default_tiles(out_shape, lanes, budget, channel_limit=group_channels(func))

    loops = sch.get_loops(requant)
    n, channels, *spatial = loops
    width = out_shape[-1]
    c_outer, c_inner = sch.split(channels, [None, tiles.channel_tile])
    rows_outer, rows_inner = [], []
    if len(spatial) > 1:
        r_outer, r_inner = sch.split(spatial[-2], [None, tiles.row_tile])
        rows_outer, rows_inner = [*spatial[:-2], r_outer], [r_inner]
    w_outer, w_inner = sch.split(spatial[-1], [None, tiles.width_tile])
    sch.reorder(n, c_outer, *rows_outer, w_outer, c_inner, *rows_inner, w_inner)
    parallel = sch.fuse(n, c_outer, *rows_outer)
    if width % tiles.width_tile:
        for loop in (parallel, w_outer):
            sch.annotate(loop, "pragma_loop_partition_hint", 1)
    sch.parallel(parallel)
    sch.vectorize(w_inner)
    sch.unroll(c_inner)
    for loop in rows_inner:
        sch.unroll(loop)
    sch.compute_at(conv, w_outer, preserve_unit_loops=True)
    inner = sch.get_loops(conv)[-len(sch.get(conv).iter_vars) :]
    spatial_loops, reduce_loops = inner[:n_spatial], inner[n_spatial:]
    sch.reorder(*reduce_loops, *spatial_loops)
    for loop in spatial_loops[:-1]:
        sch.unroll(loop)
    sch.vectorize(spatial_loops[-1])
    sch.decompose_reduction(conv, reduce_loops[0])
    if x_sum is not None:
        # read by the window sums and the dot product: both computed whole, before
        if pad is not None:
            _parallel_root(sch, pad, len(sch.get_loops(pad)) - 1)
        _parallel_root(sch, x_sum, min(3, n_spatial - 1))
    elif pad is not None:
        sch.compute_at(pad, parallel, preserve_unit_loops=True)
        pad_loops = sch.get_loops(pad)[1:]
        if pad_loops:
            sch.vectorize(pad_loops[-1])
    return sch


def group_channels(func: tirx.PrimFunc) -> int:
    """The output channels of one group of ``func`` (x, w its first two arguments:
    groups = x's channels / w's axis 1), which bound a register tile's channels."""
    x, w = func.params[:2]
    groups = int(x.shape[1]) // int(w.shape[1])
    return int(w.shape[0]) // groups
