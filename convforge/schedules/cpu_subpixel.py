"""CPU schedule of the sub-pixel transposed convolution (ops.conv_transpose_subpixel).

Each phase's weight gather and input window (a crop of the shared padded input) are
inlined into its convolution (strided reads, no copies), each phase convolution is
register-tiled by :func:`convforge.schedules.cpu_direct.schedule_direct`, the shared
padding is one parallel copy, and the interleave is split by the stride along every
spatial axis with the phase loops unrolled, so each unrolled body copies one phase and
its phase test folds away. The phases are computed inside the interleave's one parallel
loop over output tiles (batch x channel tiles x row bands): one parallel region instead
of one per phase, and each tile is interleaved while in cache.
"""

from __future__ import annotations

import dataclasses

import tvm
from tvm import s_tir, tirx

from convforge.schedules.cpu_direct import (
    accumulator_budget,
    conv_blocks,
    default_tiles,
    has_block,
    largest_divisor,
    schedule_direct,
    width_tile,
)
from convforge.targets import vector_lanes

#: Parallel tasks wanted; with fewer (batch x channel) tiles, the rows are split in bands.
PARALLEL_TASKS = 8


def is_subpixel(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` is a sub-pixel transposed convolution."""
    return has_block(func, "subpixel_interleave")


def schedule_subpixel(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule:
    """Schedule every block of a sub-pixel transposed convolution (see the module doc)."""
    sch = s_tir.Schedule(func)
    strides = [
        int(v) for v in sch.get(sch.get_sblock("subpixel_interleave")).annotations["strides"]
    ]
    blocks = {sch.get(b).name_hint: b for b in sch.get_child_blocks(sch.get_sblock("root"))}
    for name, block in blocks.items():
        if name.startswith("subpixel_weight"):
            sch.compute_inline(block)
    budget = accumulator_budget(target)
    phases = []  # (block, output shape, lanes, tiles)
    for block in conv_blocks(sch):
        out = sch.get(block).writes[0].source
        shape = tuple(int(v) for v in out.shape)
        lanes = vector_lanes(target, str(out.dtype))
        phases.append((block, shape, lanes, default_tiles(shape, lanes, budget, pad="inline")))
    channel_tile = min((tiles.channel_tile for *_, tiles in phases), default=1)
    if "subpixel_pad" in blocks:
        loops = sch.get_loops(blocks["subpixel_pad"])
        sch.parallel(sch.fuse(*loops[:-1]))
    interleave = blocks["subpixel_interleave"]
    n, channels, *spatial = sch.get_loops(interleave)
    c_outer, c_inner = sch.split(channels, [None, channel_tile])
    outer = []  # per spatial axis: the loop over the positions of one phase
    for loop, stride in zip(spatial, strides):
        if stride > 1:
            loop_outer, phase = sch.split(loop, [None, stride])
            sch.unroll(phase)
            outer.append(loop_outer)
        else:
            outer.append(loop)
    # one parallel loop over (batch, channel tiles, bands of rows), with
    # every phase computing its share of the tile inside it
    tasks = int(sch.get(n).extent) * int(sch.get(c_outer).extent)
    if len(outer) > 1:  # bands of rows (never of the vectorized width)
        bands = largest_divisor(int(sch.get(outer[0]).extent), -(-PARALLEL_TASKS // tasks))
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
