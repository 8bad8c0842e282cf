"""CPU schedule of the sub-pixel transposed convolution (ops.conv_transpose_subpixel).

Phases in NCHW[x]c blocks (dense 2-D/3-D, ``conv_nchwc``): one parallel loop over
(batch, output-channel blocks) of the interleave, inside which every phase packs its
weight slice (the gather inlined), computes its register tiles (reductions outside an
unrolled width x vectorized channel tile, the accumulators in registers), writes them
back and the block is interleaved; the shared padding is one parallel copy that each
phase reads through a crop. One parallel region serves every pass: with the TVM pool's
workers blocking between parallel loops, a region per pass cost more than the phases
(evidence: benchmarks/results/thresholds.md#subpixel-one-region).

Direct phases (``conv``: grouped, 1-D, ragged channel blocks): each phase's weight
gather and input window (a crop of the shared padded input) are inlined into its
convolution (strided reads, no copies), each phase convolution is register-tiled by
:func:`convforge.schedules.cpu_direct.schedule_direct`, the shared padding is one parallel
copy, and the interleave is split by the stride along every spatial axis with the phase
loops unrolled, so each unrolled body copies one phase and its phase test folds away. The phases are computed inside the interleave's one parallel
loop over output tiles (batch x channel tiles x row bands): one parallel region instead
of one per phase, and each tile is interleaved while in cache.
"""

from __future__ import annotations

import dataclasses

import tvm
from tvm import s_tir, tirx

from convforge.ops.blocks import (
    CONV_NCHWC,
    NCHWC_PACK_W,
    NCHWC_PAD_X,
    SUBPIXEL_INTERLEAVE,
    SUBPIXEL_PAD,
    SUBPIXEL_STRIDES_ATTR,
    SUBPIXEL_WEIGHT,
)
from convforge.schedules.cpu_direct import (
    accumulator_budget,
    conv_blocks,
    default_tiles,
    has_block,
    largest_divisor,
    producer_named,
    schedule_direct,
    width_tile,
)
from convforge.targets import profile, vector_lanes


def is_subpixel(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` is a sub-pixel transposed convolution this schedule fits: any but
    NCHW[x]c phases with different output-channel blocks (those keep the generic rules)."""
    if not has_block(func, SUBPIXEL_INTERLEAVE):
        return False
    sch = s_tir.Schedule(func)
    out_blocks = {
        int(sch.get(b).writes[0].source.shape[-1])
        for b in sch.get_child_blocks(sch.get_sblock("root"))
        if sch.get(b).name_hint.startswith(CONV_NCHWC)
    }
    return len(out_blocks) <= 1


def schedule_subpixel(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule:
    """Schedule every block of a sub-pixel transposed convolution (see the module doc)."""
    sch = s_tir.Schedule(func)
    strides = [
        int(v)
        for v in sch.get(sch.get_sblock(SUBPIXEL_INTERLEAVE)).annotations[SUBPIXEL_STRIDES_ATTR]
    ]
    blocks = {sch.get(b).name_hint: b for b in sch.get_child_blocks(sch.get_sblock("root"))}
    for name, block in blocks.items():
        if name.startswith(SUBPIXEL_WEIGHT):
            sch.compute_inline(block)
    if any(name.startswith(CONV_NCHWC) for name in blocks):
        _schedule_blocked_phases(sch, blocks, strides, target)
        return sch
    budget = accumulator_budget(target)
    phases = []  # (block, output shape, lanes, tiles)
    for block in conv_blocks(sch):
        out = sch.get(block).writes[0].source
        shape = tuple(int(v) for v in out.shape)
        lanes = vector_lanes(target, str(out.dtype))
        phases.append((block, shape, lanes, default_tiles(shape, lanes, budget, pad="inline")))
    channel_tile = min((tiles.channel_tile for *_, tiles in phases), default=1)
    if SUBPIXEL_PAD in blocks:
        loops = sch.get_loops(blocks[SUBPIXEL_PAD])
        sch.parallel(sch.fuse(*loops[:-1]))
    n, c_outer, c_inner, outer = _split_interleave(
        sch, blocks[SUBPIXEL_INTERLEAVE], strides, channel_tile
    )
    # one parallel loop over (batch, channel tiles, bands of rows), with
    # every phase computing its share of the tile inside it; with fewer (batch x channel)
    # tiles than the profile's parallel_tasks, the rows are split in bands
    tasks = int(sch.get(n).extent) * int(sch.get(c_outer).extent)
    wanted = profile(target).parallel_tasks
    if len(outer) > 1:  # bands of rows (never of the vectorized width)
        bands = largest_divisor(int(sch.get(outer[0]).extent), -(-wanted // tasks))
        band, _ = sch.split(outer[0], [bands, None])
        sch.reorder(n, c_outer, band, c_inner)
        parallel = sch.fuse(n, c_outer, band)
    else:
        bands = 1
        parallel = sch.fuse(n, c_outer)
    sch.parallel(parallel)
    for block, shape, lanes, tiles in phases:
        if bands > 1:  # a band's rows of one phase need not fill row tiles: widen instead
            vectors = max(1, budget // channel_tile)
            tiles = dataclasses.replace(
                tiles, row_tile=1, width_tile=width_tile(shape[-1], lanes, max_vectors=vectors)
            )
        tiles = dataclasses.replace(tiles, channel_tile=channel_tile)
        schedule_direct(sch, block, tiles, at=parallel)
    return sch


def _split_interleave(sch, interleave, strides, channel_tile):
    """Split the interleave's channels by ``channel_tile`` and each strided axis by its
    stride (the phase loop unrolled, so each body copies one phase). Returns the loops
    (n, channel outer, channel inner, [per axis: the loop over one phase's positions])."""
    n, channels, *spatial = sch.get_loops(interleave)
    c_outer, c_inner = sch.split(channels, [None, channel_tile])
    outer = []
    for loop, stride in zip(spatial, strides):
        if stride > 1:
            loop_outer, phase = sch.split(loop, [None, stride])
            sch.unroll(phase)
            outer.append(loop_outer)
        else:
            outer.append(loop)
    return n, c_outer, c_inner, outer


def _schedule_blocked_phases(sch, blocks, strides, target) -> None:
    """The NCHW[x]c-phase schedule of the module doc (weight gathers already inlined):
    one parallel loop over (batch, output-channel blocks) of the interleave, inside which
    every phase packs its weight slice, computes its register tiles and writes them back."""
    if SUBPIXEL_PAD in blocks:  # one parallel copy; each phase's own padding is a crop
        loops = sch.get_loops(blocks[SUBPIXEL_PAD])
        sch.parallel(sch.fuse(*loops[:-1]))
        sch.vectorize(loops[-1])
    phases = []  # (pad, pack, conv, unpack) per phase
    for name, conv in blocks.items():
        if name.startswith(CONV_NCHWC):
            pad = producer_named(sch, conv, NCHWC_PAD_X)
            pack = producer_named(sch, conv, NCHWC_PACK_W)
            (unpack,) = sch.get_consumers(conv)
            phases.append((pad, pack, conv, unpack))
    out_blocks = {int(sch.get(conv).writes[0].source.shape[-1]) for _, _, conv, _ in phases}
    if len(out_blocks) != 1:
        raise ValueError(f"phases with different output-channel blocks {sorted(out_blocks)}")
    (out_block,) = out_blocks
    n, c_outer, _, _ = _split_interleave(sch, blocks[SUBPIXEL_INTERLEAVE], strides, out_block)
    task = sch.fuse(n, c_outer)
    sch.parallel(task)
    for pad, pack, conv, unpack in phases:
        if pad is not None:  # a crop of subpixel_pad (none when the crop is empty)
            sch.compute_inline(pad)
        sch.compute_at(unpack, task, preserve_unit_loops=True)
        *_, channels, rows, width = sch.get_loops(unpack)
        width_block = int(sch.get(conv).writes[0].source.shape[-2])
        wo, wi = sch.split(width, [None, width_block])
        sch.reorder(rows, wo, channels, wi)
        sch.vectorize(wi)
        sch.compute_at(conv, wo, preserve_unit_loops=True)
        # the conv's own loops at the tile: (n, ob, *outer, wo) of extent 1, wi, oi, reductions
        loops = sch.get_loops(conv)
        n_reduce = sum(
            int(iv.iter_type) == tirx.IterVar.CommReduce for iv in sch.get(conv).iter_vars
        )
        tile_wi, tile_oi = loops[-n_reduce - 2 : -n_reduce]
        reduce_ = loops[-n_reduce:]
        sch.reorder(*reduce_, tile_wi, tile_oi)
        sch.set_scope(conv, 0, "local")
        sch.unroll(tile_wi)
        sch.vectorize(tile_oi)
        sch.decompose_reduction(conv, reduce_[0])
        sch.compute_at(pack, task, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(pack)[-1])
