"""Default CPU schedule of dense convolutions with blocked output channels (no tuning).

:func:`channel_blocks` picks the block sizes of :func:`convforge.ops.conv_nchwc` for a
target: the output-channel block is ``m`` vector registers wide (the vectorized axis), the
width block ``wb`` output positions, and the ``m * wb`` accumulators of one register tile
take at most half the target's vector registers (AVX2: 16 ymm, AVX-512: 32 zmm, NEON: 32
q), leaving the rest to weight vectors and broadcast inputs. :func:`schedule_conv_nchwc`
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
import functools
import math

import tvm
from tvm import s_tir

from convforge.ops.blocks import NCHWC_MAX_POOL, PAD
from convforge.ops.conv import accumulator_dtype
from convforge.ops.conv_nchwc import ChannelBlocks
from convforge.schedules.cpu_direct import (
    accumulator_budget,
    default_tiles,
    largest_divisor,
    producer_named,
    schedule_direct,
    single_conv,
    smallest_divisor_at_least,
)
from convforge.shapes import ConvGeometry
from convforge.targets import is_cpu, vector_bits, vector_lanes, vector_registers

#: Output-channel vectors per tile: powers of two (3 x 16 lanes ran over 10x slower on Zen 4).
_CHANNEL_VECTORS = (1, 2, 4)
#: Parallel tasks wanted; with fewer (batch x channel block x row) tiles, the width tiles
#: are split too (the 1x1 256->64 56x56 conv in one 64-channel block and one row of 3136
#: positions ran on one of two cores: 0.89 instead of 0.50 ms, AVX-512).
PARALLEL_TASKS = 8
#: Independent accumulators that keep the FMA units busy (about 2 units x 4 cycles latency).
_LATENCY_ACCUMULATORS = 8


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def channel_blocks(
    geom: ConvGeometry, dtype: str, target: tvm.target.Target, pool_width: int | None = None
) -> ChannelBlocks:
    """Block sizes of the NCHW[x]c layout for ``geom`` on ``target``; with ``pool_width``
    (a max pool computed in the kernel, :func:`schedule_conv_max_pool`) the width block
    divides it or is a multiple of it.

    Chooses ``m`` (1, 2 or, with 32 registers, 4) output-channel vectors and ``wb`` output
    columns per register tile with at most half the vector registers as accumulators
    (measured on Zen 4: tiles of 24 zmm accumulators ran 2-3x slower than 16, LLVM spills
    the hoisted weight vectors and broadcasts), minimizing (padding waste)^3 x (1 + loads per multiply-add) x (latency
    stall when fewer than 8 accumulators). Waste counts thrice: on Zen 3 the 8x7 tile of a
    14- or 7-wide map ran 12-15% faster than the 16x4 tile that rounds it up to 16 or 8,
    and 16x3 on a 9-wide map up to 20% faster than 16x4, though the model without the cube
    prefers 16x4 (fewer loads, 8 accumulators); on 27- and 56-wide maps 16x4 stays.
    """
    lanes = vector_lanes(target, accumulator_dtype(dtype))
    reduction = geom.in_channels // geom.groups * math.prod(geom.kernel)
    tile = register_tile(
        geom.out_channels, geom.out_size[-1], lanes, vector_registers(target), reduction,
        pool_width,
    )  # fmt: skip
    # A 1x1 over a short row reads its input as contiguous panels (nchwc_pack_x): the
    # strided column reads missed cold caches. 1024->256 over 196 positions, one AVX-512
    # core, caches flushed: 1.41 -> 0.98 ms (0.68 -> 0.66 warm); ResNet-50 in one process,
    # 2 cores: 33.5-33.6 vs 34.5-34.9 ms. Over 3136 positions (AVX2 code) it ran 1.20
    # instead of 0.83 ms warm.
    pack_input = geom.is_row_pointwise and geom.out_size[-1] < POINTWISE_ROW_POSITIONS
    return ChannelBlocks(*tile, pack_input=pack_input)


#: Multiply-adds per output at most which a register tile takes at most 2 channel
#: vectors: with a short reduction the tile's write-back dominates, and a tile of 2 x 8
#: (AVX-512, 2 cores) ran faster than 4 x 4: 3x3 3->64 on 256x256 (27 multiply-adds)
#: 1.16 vs 2.05 ms, 8->64 (72) 0.54 vs 0.63, 16->64 (144) 0.95 vs 1.13; the 7x7 stride-2
#: 3->64 stem (147) 0.79 vs 0.78 alone, 0.92 vs 0.87 onnxruntime's in the benchmark; 3x3
#: 128->128 (1152) ran 1.35 vs 0.89.
SHORT_REDUCTION = 144


def register_tile(
    out_channels: int,
    width: int,
    lanes: int,
    registers: int,
    reduction: int | None = None,
    aligned: int | None = None,
) -> tuple[int, int]:
    """``(out_block, width_block)`` of :func:`channel_blocks`' rule for a multiply of
    ``out_channels`` (vectorized, in blocks of 1, 2 or 4 vectors of ``lanes``) by ``width``
    columns (broadcast) over ``reduction`` multiply-adds (None: long) on a target with
    ``registers`` vector registers; ``aligned``: only width blocks dividing it or
    multiples of it."""
    best: tuple[float, int, int] | None = None
    for m in _CHANNEL_VECTORS:
        if m > 2 and registers <= 16:
            break  # 4 vectors of 16 registers ran 1.2-2.3x slower than 2 (AVX2, Zen 3)
        if m > 2 and reduction is not None and reduction <= SHORT_REDUCTION:
            break  # see SHORT_REDUCTION
        if m > 1 and (m // 2) * lanes >= out_channels:
            break  # a smaller block already covers every output channel
        ob = m * lanes
        channel_waste = _ceil_div(out_channels, ob) * ob / out_channels
        for wb in range(1, min(registers // 2 // m, width) + 1):
            if aligned is not None and aligned % wb and wb % aligned:
                continue
            waste = channel_waste * _ceil_div(width, wb) * wb / width
            loads_per_fma = (m + wb) / (m * wb)
            latency_stall = max(1.0, _LATENCY_ACCUMULATORS / (m * wb))
            score = waste**3 * (1 + loads_per_fma) * latency_stall
            if best is None or score < best[0] - 1e-9:
                best = (score, m, wb)
    assert best is not None
    _, m, wb = best
    return m * lanes, wb


def schedule_conv_nchwc(
    sch: s_tir.Schedule, block: s_tir.SBlockRV, target: tvm.target.Target | None = None
) -> list[str]:
    """Register-tile the ``conv_nchwc`` block (see the module docstring); the tile sizes are
    those of the computation (``target`` is not needed). Returns the name of the unpack
    block fused into the tile; a ``nchwc_max_pool`` instead gets :func:`schedule_conv_max_pool`."""
    (unpack,) = sch.get_consumers(block)
    if sch.get(unpack).name_hint == NCHWC_MAX_POOL:
        return schedule_conv_max_pool(sch, block, unpack)
    loops = sch.get_loops(block)
    iter_vars = sch.get(block).iter_vars
    n_reduce = sum(int(iv.iter_type) == tvm.tirx.IterVar.CommReduce for iv in iter_vars)
    n_spatial = len(iter_vars) - n_reduce
    spatial, reduce_ = loops[:n_spatial], loops[n_spatial:]
    n, ob, *outer, wo, wi, oi = spatial
    parallel = [n, ob, *outer[:2]]
    tasks = math.prod(int(sch.get(loop).extent) for loop in parallel)
    if tasks < PARALLEL_TASKS:
        # too few (batch x channel block x row) tiles, e.g. a 1x1 convolution computed
        # over one row: split the width tiles too
        parts = smallest_divisor_at_least(int(sch.get(wo).extent), -(-PARALLEL_TASKS // tasks))
        wo_part, wo = sch.split(wo, [parts, None])
        parallel.append(wo_part)
    sch.reorder(*parallel, wo, *reduce_, wi, oi)
    sch.parallel(sch.fuse(*parallel))
    sch.reverse_compute_at(unpack, wo)
    sch.set_scope(block, 0, "local")  # the accumulators: one register tile
    sch.unroll(wi)
    sch.vectorize(oi)
    sch.decompose_reduction(block, reduce_[0])
    # write back along the output width: wb contiguous floats per channel (19% faster on the
    # 7x7 stem than scalar stores); a tile of one value has no loop of its own to vectorize
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
    sch: s_tir.Schedule, conv: s_tir.SBlockRV, pool: s_tir.SBlockRV
) -> list[str]:
    """``conv_nchwc`` computed inside its ``nchwc_max_pool`` (kernel k along the width,
    a divisor or a multiple of the width block WB): parallel over (batch, channel block,
    pooled rows), then per chunk of pooled columns (one pooled column, or WB/k of them)
    the window rows, and for each register tile (WB columns; k/WB tiles per window row)
    its reduction (WB unrolled, OB vectorized) and at once the max of its epilogue into
    the chunk's pooled values, held in registers and written back in NCHW. The
    full-resolution convolution output is never stored: the lecture classifiers' 3x3
    3->64 over 256x256 with its 4x4 pool ran in 1.4-1.5 ms inside the model instead of
    2.0 ms + 0.26 ms for the pool (2 Zen 4 cores). Returns the blocks it scheduled."""
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
    if tasks < PARALLEL_TASKS:  # few pooled rows: split the chunks too
        parts = smallest_divisor_at_least(int(sch.get(chunk).extent), -(-PARALLEL_TASKS // tasks))
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


@functools.lru_cache(maxsize=1024)  # the target queries take ~1 ms: keep API calls cheap
def dense_conv_blocks(
    geom: ConvGeometry, dtype: str, target: tvm.target.Target
) -> ChannelBlocks | None:
    """NCHW[x]c blocks when ``geom`` is computed in that layout on ``target``, else None.

    Dense (groups == 1) 2-D and 3-D convolutions on CPU targets, except a 1x1 convolution
    over one long row on AVX-512 (:func:`is_pointwise_row`); 1-D (causal) convolutions and
    grouped/depthwise ones keep the generic computation and their own schedules.
    """
    if not is_cpu(target) or geom.groups != 1 or geom.ndim not in (2, 3):
        return None
    long_row = geom.is_row_pointwise and geom.out_size[-1] >= POINTWISE_ROW_POSITIONS
    if long_row and vector_bits(target) >= 512:
        return None
    return channel_blocks(geom, dtype, target)


#: A 1x1 stride-1 convolution over one row of at least this many positions (how the API
#: computes 1x1 convolutions, :func:`convforge.api.kernel_geometry`) is a matrix multiply
#: ``W (O x C) @ X (C x P)`` computed directly on AVX-512: the positions vectorized and
#: the weights broadcast, in parallel time tiles (:func:`pointwise_time_tile`).
#: On 2 AVX-512 cores this beat NCHW[x]c: 256->64 over 3136 positions 0.38 vs 0.43 ms,
#: 64->256 0.30 vs 0.48, 512->128 over 784 0.37 vs 0.39, 128->512 0.38 vs 0.42; over 196
#: and 49 positions NCHW[x]c was as fast or 2x faster (too few time tiles).
POINTWISE_ROW_POSITIONS = 512
#: Fewest positions per parallel time tile of a pointwise row. Longer tiles read fewer,
#: longer row segments, which matters with cold caches (as inside a model): 64->256 over
#: 3136 positions with bias, residual and ReLU, one thread, caches flushed: 1.74 ms in
#: tiles of 64, 1.05 in 256, 1.00 in 1024 (0.71-0.74 ms warm for all); ResNet-50 in one
#: process, 2 cores: 34.9-35.7 ms with :func:`pointwise_time_tile`, 35.9-36.0 in tiles of 64.
POINTWISE_TIME_TILE = 64


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
    time_tile = pointwise_time_tile(shape[-1], tiles.width_tile)
    schedule_direct(sch, block, dataclasses.replace(tiles, time_tile=time_tile))
    return sch


def pointwise_time_tile(positions: int, width_tile: int) -> int:
    """Positions per parallel time tile: the longest whole number of width tiles that
    still leaves :data:`PARALLEL_TASKS` tiles, and at least :data:`POINTWISE_TIME_TILE`."""
    tiles = -(-positions // width_tile)
    chunks = largest_divisor(tiles, max(1, tiles // PARALLEL_TASKS))
    return max(chunks * width_tile, -(-POINTWISE_TIME_TILE // width_tile) * width_tile)
