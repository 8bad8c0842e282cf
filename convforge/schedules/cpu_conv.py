"""Default CPU schedule of dense convolutions with blocked output channels (no tuning).

The block sizes of :func:`convforge.ops.conv_nchwc` are chosen by the plan layer
(:func:`convforge.plan.channel_blocks`: one register tile of ``out_block`` channels x
``width_block`` positions, at most half the vector registers). :func:`schedule_conv_nchwc`
orders the loops of ``conv_nchwc`` as ``n, ob, *outer, wo | c, *k | wi (unrolled), oi
(vectorized)``, keeps the tile in local (register) storage, writes it back through the
fused unpack/epilogue block (vectorized along the width) and runs the outer tiles in
parallel; padding and weight packing are parallel element-wise passes. A 1x1 convolution
is the same loop nest: a matrix multiply with a packed weight operand. A max pool read
from the accumulators (``nchwc_max_pool``) takes each register tile's max as the tile is
computed (:func:`schedule_conv_max_pool`).
"""

from __future__ import annotations

import dataclasses
import math

import tvm
from tvm import s_tir

from convforge.ops.blocks import NCHWC_MAX_POOL, PAD
from convforge.schedules.cpu_direct import (
    accumulator_budget,
    default_tiles,
    knobbed_profile,
    largest_divisor,
    producer_named,
    schedule_direct,
    schedule_knobs,
    single_conv,
    smallest_divisor_at_least,
)
from convforge.targets import TargetProfile, profile, vector_lanes


def schedule_conv_nchwc(
    sch: s_tir.Schedule, block: s_tir.SBlockRV, target: tvm.target.Target
) -> list[str]:
    """Register-tile the ``conv_nchwc`` block (see the module docstring); the tile sizes are
    those of the computation, ``target``'s profile gives the ``parallel_tasks`` wanted
    before the width tiles are split too. Returns the name of the unpack block fused into
    the tile; a ``nchwc_max_pool`` instead gets :func:`schedule_conv_max_pool`."""
    (unpack,) = sch.get_consumers(block)
    if sch.get(unpack).name_hint == NCHWC_MAX_POOL:
        return schedule_conv_max_pool(sch, block, unpack, target)
    loops = sch.get_loops(block)
    iter_vars = sch.get(block).iter_vars
    n_reduce = sum(int(iv.iter_type) == tvm.tirx.IterVar.CommReduce for iv in iter_vars)
    n_spatial = len(iter_vars) - n_reduce
    spatial, reduce_ = loops[:n_spatial], loops[n_spatial:]
    n, ob, *outer, wo, wi, oi = spatial
    parallel = [n, ob, *outer[:2]]
    tasks = math.prod(int(sch.get(loop).extent) for loop in parallel)
    wanted = knobbed_profile(target, schedule_knobs(sch, block)).parallel_tasks
    if tasks < wanted:
        # too few (batch x channel block x row) tiles, e.g. a 1x1 convolution computed
        # over one row: split the width tiles too
        parts = smallest_divisor_at_least(int(sch.get(wo).extent), -(-wanted // tasks))
        wo_part, wo = sch.split(wo, [parts, None])
        parallel.append(wo_part)
    sch.reorder(*parallel, wo, *reduce_, wi, oi)
    sch.parallel(sch.fuse(*parallel))
    sch.reverse_compute_at(unpack, wo)
    sch.set_scope(block, 0, "local")  # the accumulators: one register tile
    sch.unroll(wi)
    sch.vectorize(oi)
    sch.decompose_reduction(block, reduce_[0])
    # write back along the output width: wb contiguous floats per channel (evidence:
    # benchmarks/results/thresholds.md#vectorized-write-back); a tile of one value has no
    # loop of its own to vectorize
    write_back = sch.get_loops(unpack)[-1]
    if len(sch.get_child_blocks(write_back)) == 1:
        sch.vectorize(write_back)
    return [sch.get(unpack).name_hint]


def fits_conv_nchwc(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> bool:
    """Whether :func:`schedule_conv_nchwc` fits the ``conv_nchwc`` ``block``: always, except
    a ``nchwc_max_pool`` consumer whose kernel width and the width block WB do not divide
    one another (the conv then keeps its plain loops)."""
    consumers = sch.get_consumers(block)
    if len(consumers) != 1 or sch.get(consumers[0]).name_hint != NCHWC_MAX_POOL:
        return len(consumers) == 1
    spatial = [
        int(iv.dom.extent)
        for iv in sch.get(block).iter_vars
        if int(iv.iter_type) != tvm.tirx.IterVar.CommReduce
    ]
    k, wb = int(sch.get(sch.get_loops(consumers[0])[-1]).extent), spatial[-2]
    return k % wb == 0 or wb % k == 0


def schedule_conv_max_pool(
    sch: s_tir.Schedule, conv: s_tir.SBlockRV, pool: s_tir.SBlockRV, target: tvm.target.Target
) -> list[str]:
    """``conv_nchwc`` computed inside its ``nchwc_max_pool`` (kernel k along the width,
    a divisor or a multiple of the width block WB): parallel over (batch, channel block,
    pooled rows), then per chunk of pooled columns (one pooled column, or WB/k of them)
    the window rows, and for each register tile (WB columns; k/WB tiles per window row)
    its reduction (WB unrolled, OB vectorized) and at once the max of its epilogue into
    the chunk's pooled values, held in registers and written back in NCHW. The
    full-resolution convolution output is never stored (evidence:
    benchmarks/results/thresholds.md#conv-max-pool). Returns the blocks it scheduled."""
    iter_vars = sch.get(conv).iter_vars
    reduction = tvm.tirx.IterVar.CommReduce
    spatial = [int(iv.dom.extent) for iv in iter_vars if int(iv.iter_type) != reduction]
    n_reduce = len(iter_vars) - len(spatial)
    *_, wb, ob = spatial
    n, o, *rest = sch.get_loops(pool)
    positions, taps = rest[: len(rest) // 2], rest[len(rest) // 2 :]
    k = int(sch.get(taps[-1]).extent)
    cb, oi = sch.split(o, [None, ob])
    if k % wb == 0:  # k/WB register tiles per window row
        chunk = positions[-1]
        at, tile = sch.split(taps[-1], [None, wb])
        inner = [tile]
        sch.reorder(n, cb, *positions, *taps[:-1], at, tile, oi)
    elif wb % k == 0:  # WB/k pooled columns per register tile
        chunk, columns = sch.split(positions[-1], [None, wb // k])
        at = taps[-2]
        inner = [columns, taps[-1]]
        sch.reorder(n, cb, *positions[:-1], chunk, *taps[:-1], columns, taps[-1], oi)
    else:
        raise ValueError(f"pool width {k} and width block {wb} do not divide one another")
    parallel = [n, cb, *positions[:-1]]
    tasks = math.prod(int(sch.get(loop).extent) for loop in parallel)
    wanted = knobbed_profile(target, schedule_knobs(sch, conv)).parallel_tasks
    if tasks < wanted:  # few pooled rows: split the chunks too
        parts = smallest_divisor_at_least(int(sch.get(chunk).extent), -(-wanted // tasks))
        part, chunk = sch.split(chunk, [parts, None])
        parallel.append(part)
    sch.parallel(sch.fuse(*parallel))
    pooled = sch.cache_write(pool, 0, "local")  # the chunk's pooled values, in registers
    sch.transform_layout(pool, ("write", 0), lambda n, o, *p: (n, *p, o))  # channels inner
    sch.reverse_compute_at(pooled, chunk, preserve_unit_loops=True)
    for loop in inner:
        sch.unroll(loop)
    sch.vectorize(oi)
    sch.vectorize(sch.get_loops(sch.decompose_reduction(pool, taps[0]))[-1])
    sch.compute_at(conv, at, preserve_unit_loops=True)
    sch.set_scope(conv, 0, "local")  # the accumulators: one register tile
    conv_loops = sch.get_loops(conv)
    reduce_ = conv_loops[-n_reduce:]
    wi, oi_conv = conv_loops[-n_reduce - 2 : -n_reduce]
    sch.reorder(*reduce_, wi, oi_conv)
    sch.unroll(wi)
    sch.vectorize(oi_conv)
    sch.decompose_reduction(conv, reduce_[0])
    return [sch.get(pool).name_hint, sch.get(pooled).name_hint]


#: A 1x1 stride-1 convolution over one row of at least this many positions (how the API
#: computes 1x1 convolutions, :func:`convforge.plan.plan_conv`) is a matrix multiply
#: ``W (O x C) @ X (C x P)`` computed directly on AVX-512: the positions vectorized and
#: the weights broadcast, in parallel time tiles (:func:`pointwise_time_tile`). The
#: profile's ``pointwise_row_positions``, read here by :func:`is_pointwise_row` and the
#: choice functions, which take no target yet. Evidence:
#: benchmarks/results/thresholds.md#pointwise-row-positions.
POINTWISE_ROW_POSITIONS = TargetProfile.pointwise_row_positions


def is_pointwise_row(func: tvm.tirx.PrimFunc) -> bool:
    """A plain dense 1x1 convolution over (N, C, 1, P >= POINTWISE_ROW_POSITIONS)."""
    sch = s_tir.Schedule(func)
    block = single_conv(sch)
    if block is None or producer_named(sch, block, PAD) is not None:
        return False
    out = sch.get(block).writes[0].source.shape
    reduce_extents = [
        int(iv.dom.extent)
        for iv in sch.get(block).iter_vars
        if int(iv.iter_type) == tvm.tirx.IterVar.CommReduce
    ]
    return (
        len(out) == 4
        and int(out[2]) == 1
        and int(out[3]) >= POINTWISE_ROW_POSITIONS
        and reduce_extents[1:] == [1, 1]
    )


def schedule_pointwise_row(func: tvm.tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule:
    """Direct register tiles (channels x vectors of positions) in parallel time tiles."""
    sch = s_tir.Schedule(func)
    block = single_conv(sch)
    out = sch.get(block).writes[0].source
    lanes = vector_lanes(target, str(out.dtype))
    shape = tuple(int(v) for v in out.shape)
    tiles = default_tiles(shape, lanes, accumulator_budget(target))
    time_tile = pointwise_time_tile(shape[-1], tiles.width_tile, target)
    schedule_direct(sch, block, dataclasses.replace(tiles, time_tile=time_tile))
    return sch


def pointwise_time_tile(positions: int, width_tile: int, target: tvm.target.Target) -> int:
    """Positions per parallel time tile: the longest whole number of width tiles that
    still leaves ``target``'s profile's ``parallel_tasks`` tiles, and at least its
    ``pointwise_time_tile`` positions (longer tiles read fewer, longer row segments;
    evidence: benchmarks/results/thresholds.md#pointwise-time-tile)."""
    thresholds = profile(target)
    tiles = -(-positions // width_tile)
    chunks = largest_divisor(tiles, max(1, tiles // thresholds.parallel_tasks))
    least = thresholds.pointwise_time_tile
    return max(chunks * width_tile, -(-least // width_tile) * width_tile)
