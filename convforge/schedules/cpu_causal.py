"""CPU schedule of long 1-D convolutions (causal, dilated; cf.causal_conv1d).

The time axis is tiled in parallel (each core walks its own stretch of the sequence), the
output channels are tiled inside a time tile, so the input window of a time tile
(all input channels, tile + dilated kernel span) stays in cache for every output channel;
the left zero padding is written once per time tile into that window.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from convforge.schedules.cpu_direct import (
    DirectTiles,
    accumulator_budget,
    largest_divisor,
    schedule_direct,
    single_conv,
    width_tile,
)
from convforge.targets import TargetProfile, profile


def is_long_1d(func: tirx.PrimFunc) -> bool:
    """A plain 1-D convolution whose output is at least ``long_1d_min_length`` long (the
    predicate has no target: it reads the default every profile carries)."""
    sch = s_tir.Schedule(func)
    block = single_conv(sch)
    if block is None:
        return False
    shape = sch.get(block).writes[0].source.shape
    return len(shape) == 3 and int(shape[-1]) >= TargetProfile.long_1d_min_length


def long_1d_tiles(
    out_shape: tuple[int, ...], lanes: int, budget: int, time_tile: int
) -> DirectTiles:
    """Width tile, as many channels as ``budget`` accumulators allow, and a time tile of up
    to ``time_tile`` outputs (a divisor of the width tiles when a good one exists)."""
    width = width_tile(out_shape[-1], lanes)
    vectors = -(-width // lanes)
    channels = largest_divisor(out_shape[1], max(1, budget // vectors))
    tiles = -(-out_shape[-1] // width)
    chunks = largest_divisor(tiles, max(1, time_tile // width))
    if 4 * chunks * width < time_tile:  # no good divisor: a ragged last time tile
        chunks = max(1, time_tile // width)
    return DirectTiles(channels, width, time_tile=chunks * width, pad="tile")


def schedule_long_1d(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule:
    """Tile the long 1-D convolution of ``func`` along time, then channels (module doc)."""
    sch = s_tir.Schedule(func)
    block = single_conv(sch)
    out = sch.get(block).writes[0].source
    target_profile = profile(target)
    lanes = target_profile.vector_lanes(str(out.dtype))
    shape = tuple(int(v) for v in out.shape)
    tiles = long_1d_tiles(
        shape, lanes, accumulator_budget(target), target_profile.long_1d_time_tile
    )
    schedule_direct(sch, block, tiles)
    return sch
