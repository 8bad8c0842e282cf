"""CPU schedule of grouped and depthwise convolutions (memory-bound, short reductions).

The output channel tile divides the channels per group, so each register block reads one
group's input; the spatial tile is up to two vectors of width, plus rows when the width is
a single vector; the zero padding is computed per parallel tile (channels x rows), never
as a whole padded copy.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from convforge.schedules.cpu_direct import (
    accumulator_budget,
    default_tiles,
    schedule_direct,
    schedule_knobs,
    single_conv,
)
from convforge.targets import vector_lanes


def conv_groups(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> int:
    """Groups of a ``conv`` block, from its input (N, C, ...) and weight (O, C/g, ...)."""
    data, weight = (region.source for region in sch.get(block).reads[:2])
    return int(data.shape[1]) // int(weight.shape[1])


def is_grouped(func: tirx.PrimFunc) -> bool:
    """A plain grouped (groups > 1) 1-D, 2-D or 3-D convolution (pad, conv, epilogue)."""
    sch = s_tir.Schedule(func)
    block = single_conv(sch)
    return block is not None and conv_groups(sch, block) > 1


def schedule_grouped(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule:
    """Register-tile the grouped convolution of ``func`` (see the module doc)."""
    sch = s_tir.Schedule(func)
    block = single_conv(sch)
    out = sch.get(block).writes[0].source
    shape = tuple(int(v) for v in out.shape)
    out_per_group = shape[1] // conv_groups(sch, block)
    lanes = vector_lanes(target, str(out.dtype))
    budget = schedule_knobs(sch, block).get("direct_accumulators", accumulator_budget(target))
    tiles = default_tiles(shape, lanes, budget, channel_limit=out_per_group, pad="tile")
    schedule_direct(sch, block, tiles)
    return sch
