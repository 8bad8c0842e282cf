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
    conv_blocks,
    largest_divisor,
    schedule_direct,
    width_tile,
)
from convforge.targets import vector_lanes

#: Sequences at least this long take this rule.
MIN_LENGTH = 1024
#: Outputs per parallel time tile (upper bound).
TIME_TILE = 1024


def is_long_1d(func: tirx.PrimFunc) -> bool:
    """A single 1-D convolution whose output is at least :data:`MIN_LENGTH` long."""
    sch = s_tir.Schedule(func)
    blocks = conv_blocks(sch)
    if len(blocks) != 1:
        return False
    shape = sch.get(blocks[0]).writes[0].source.shape
    return len(shape) == 3 and int(shape[-1]) >= MIN_LENGTH


def long_1d_tiles(out_shape: tuple[int, ...], lanes: int, budget: int) -> DirectTiles:
    width = width_tile(out_shape[-1], lanes)
    vectors = -(-width // lanes)
    channels = largest_divisor(out_shape[1], max(1, budget // vectors))
    tiles = -(-out_shape[-1] // width)
    chunks = largest_divisor(tiles, max(1, TIME_TILE // width))
    if 4 * chunks * width < TIME_TILE:  # no good divisor: a ragged last time tile
        chunks = max(1, TIME_TILE // width)
    return DirectTiles(channels, width, time_tile=chunks * width, pad="tile")


def schedule_long_1d(func: tirx.PrimFunc, target: tvm.target.Target) -> tvm.IRModule:
    sch = s_tir.Schedule(func)
    (block,) = conv_blocks(sch)
    out = sch.get(block).writes[0].source
    lanes = vector_lanes(target, str(out.dtype))
    shape = tuple(int(v) for v in out.shape)
    schedule_direct(sch, block, long_1d_tiles(shape, lanes, accumulator_budget(target)))
    return sch.mod
