"""Register-tiled direct convolution on CPU, with explicit tile sizes (shared by the rules
for depthwise/grouped, causal/dilated 1-D and sub-pixel transposed convolutions).

The output ``(N, O, *spatial)`` of one ``conv`` block (or of its element-wise epilogue,
which is fused) is split into

    parallel( N, O/channel_tile, rows/row_tile [, width/time_tile] )
      [O/channel_tile when the time axis is tiled]   width/width_tile
        reduction loops (C/groups, *kernel)
          channel_tile (unrolled) x row_tile (unrolled) x width_tile (vectorized)

so ``channel_tile * row_tile * width_tile / lanes`` accumulators stay in vector registers
while every reduction step loads ``row_tile * width_tile / lanes`` input vectors and
broadcasts ``channel_tile`` weights. Tiling the time axis outside the channel tiles keeps
one input window in cache for every output channel (long 1-D sequences). The zero padding
is computed per parallel tile (never a full padded copy) or inlined, as the rule says.
A ragged last width/time tile is split off by TVM's LoopPartition (loop hints), so the
full tiles run without bounds tests.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx

from convforge.ops.blocks import CONV, CONV_EPILOGUE, PAD, SCHEDULE_KNOBS_ATTR, is_numbered
from convforge.targets import TargetProfile, profile

#: Schedule knobs that override the :class:`~convforge.targets.TargetProfile` field of the
#: same name for one kernel (:func:`knobbed_profile`).
PROFILE_KNOBS = (
    "parallel_tasks",
    "winograd_task_floats",
    "direct_accumulators",
    "accumulator_budget",
)


def schedule_knobs(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> dict[str, int]:
    """The schedule knobs a tuned plan annotated on ``block`` (``ops.blocks.knob_attrs``);
    {} for a default plan."""
    knobs = sch.get(block).annotations.get(SCHEDULE_KNOBS_ATTR)
    return {} if knobs is None else {str(k): int(v) for k, v in knobs.items()}


def function_knobs(func: tirx.PrimFunc) -> dict[str, int]:
    """The schedule knobs annotated on any root block of ``func`` ({} for a default plan)."""
    sch = s_tir.Schedule(func)
    knobs: dict[str, int] = {}
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        knobs.update(schedule_knobs(sch, block))
    return knobs


def knobbed_profile(target: tvm.target.Target, knobs: dict[str, int]) -> TargetProfile:
    """``target``'s profile with the fields named in :data:`PROFILE_KNOBS` that ``knobs``
    sets replaced (the profile itself when it sets none)."""
    changes = {k: v for k, v in knobs.items() if k in PROFILE_KNOBS}
    base = profile(target)
    return dataclasses.replace(base, **changes) if changes else base


@dataclass(frozen=True)
class DirectTiles:
    """Tile sizes of one direct convolution. Channel and row tiles divide their axes;
    the width and time tiles may leave a ragged last tile."""

    channel_tile: int
    width_tile: int
    row_tile: int = 1
    time_tile: int | None = None  # outer tile of the innermost axis, parallel with N
    #: "tile": the zero-padded input window is written per parallel tile (measured faster
    #: than one whole padded copy, and far faster than "inline" for real padding, whose
    #: bounds test stays in the vector loop); "inline": for pure crops (no zeros)
    pad: str = "tile"


def accumulator_budget(target: tvm.target.Target) -> int:
    """Vector accumulators a direct register block may hold on ``target``: its profile's
    ``direct_accumulators`` (24 of AVX-512's 32 registers, else 12)."""
    return profile(target).direct_accumulators


def has_block(func: tirx.PrimFunc, name: str) -> bool:
    """Whether ``func``'s root holds a block named ``name`` (block names are the contract
    between ops/ and schedules/)."""
    return name in _root_block_names(func)


@functools.lru_cache(maxsize=64)
def _root_block_names(func: tirx.PrimFunc) -> frozenset[str]:
    """The names of the blocks under ``func``'s root (kept per function object, which the
    cache holds: the schedule rules ask several times about one function, and making a
    schedule costs about a millisecond)."""
    sch = s_tir.Schedule(func)
    return frozenset(sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root")))


def largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def smallest_divisor_at_least(n: int, least: int) -> int:
    """The smallest divisor of ``n`` that is at least ``least`` (``n`` itself if none is)."""
    return min([d for d in range(max(1, least), n + 1) if n % d == 0] or [n])


def width_tile(n: int, lanes: int, max_vectors: int = 2) -> int:
    """Tile of the innermost axis ``n``: up to ``max_vectors`` whole vectors when they
    divide ``n``, else the largest divisor of ``n`` that fits one vector if it fills at
    least half of it, else one vector (the last tile is then ragged)."""
    for vectors in range(max_vectors, 0, -1):
        if n % (vectors * lanes) == 0:
            return vectors * lanes
    divisor = largest_divisor(n, lanes)
    return divisor if divisor == n or 2 * divisor >= lanes else lanes


def is_reduction(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> bool:
    return any(int(iv.iter_type) == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def producer_named(sch: s_tir.Schedule, block: s_tir.SBlockRV, prefix: str):
    """The producer of ``block`` whose name starts with ``prefix``, or None."""
    for producer in sch.get_producers(block):
        if sch.get(producer).name_hint.startswith(prefix):
            return producer
    return None


def epilogue_of(sch: s_tir.Schedule, block: s_tir.SBlockRV):
    """The element-wise ``conv_epilogue`` consuming ``block``, or None."""
    consumers = sch.get_consumers(block)
    if len(consumers) == 1 and sch.get(consumers[0]).name_hint.startswith(CONV_EPILOGUE):
        return consumers[0]
    return None


def schedule_direct(
    sch: s_tir.Schedule,
    block: s_tir.SBlockRV,
    tiles: DirectTiles,
    at: s_tir.LoopRV | None = None,
) -> None:
    """Tile one ``conv`` reduction block (and fuse its epilogue) as the module doc says.

    With ``at`` (a loop of the only consumer), the output is computed there, one
    consumer tile at a time, inside the consumer's parallel loop instead of its own.
    """
    n_spatial = sum(int(iv.iter_type) != tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)
    pad = producer_named(sch, block, PAD)
    epilogue = epilogue_of(sch, block)
    anchor = epilogue if epilogue is not None else sch.cache_write(block, 0, "global")
    outer = 0
    if at is not None:
        sch.compute_at(anchor, at, preserve_unit_loops=True)
        at_sref = sch.get_sref(at)
        outer = 1 + [sch.get_sref(loop).same_as(at_sref) for loop in sch.get_loops(anchor)].index(
            True
        )
    loops = sch.get_loops(anchor)[outer:]
    n, channels, *spatial = loops
    width = int(sch.get(spatial[-1]).extent)
    c_outer, c_inner = sch.split(channels, [None, tiles.channel_tile])
    rows_outer, rows_inner = [], []
    if len(spatial) > 1:
        r_outer, r_inner = sch.split(spatial[-2], [None, tiles.row_tile])
        rows_outer, rows_inner = [*spatial[:-2], r_outer], [r_inner]
    if tiles.time_tile is not None:
        t_outer, w_outer, w_inner = sch.split(
            spatial[-1], [None, tiles.time_tile // tiles.width_tile, tiles.width_tile]
        )
        sch.reorder(n, *rows_outer, t_outer, c_outer, w_outer, c_inner, *rows_inner, w_inner)
        parallel = sch.fuse(n, *rows_outer, t_outer)
    else:
        w_outer, w_inner = sch.split(spatial[-1], [None, tiles.width_tile])
        sch.reorder(n, c_outer, *rows_outer, w_outer, c_inner, *rows_inner, w_inner)
        parallel = sch.fuse(n, c_outer, *rows_outer)
    if width % tiles.width_tile or (tiles.time_tile and width % tiles.time_tile):
        # a ragged last tile: TVM's LoopPartition splits these loops into the full tiles
        # (no bounds test) and the remainder
        for loop in (parallel, w_outer):
            sch.annotate(loop, "pragma_loop_partition_hint", 1)
    if at is None:
        sch.parallel(parallel)
    sch.vectorize(w_inner)
    sch.unroll(c_inner)
    for loop in rows_inner:
        sch.unroll(loop)
    sch.compute_at(block, w_outer, preserve_unit_loops=True)
    inner = sch.get_loops(block)[-len(sch.get(block).iter_vars) :]
    spatial_loops, reduce_loops = inner[:n_spatial], inner[n_spatial:]
    # register block order: (N, C, *rows, W) with C before the rows
    sch.reorder(*reduce_loops, *spatial_loops)
    for loop in spatial_loops[:-1]:
        sch.unroll(loop)
    sch.vectorize(spatial_loops[-1])
    sch.decompose_reduction(block, reduce_loops[0])
    if pad is not None:
        if tiles.pad == "inline":
            sch.compute_inline(pad)
        else:
            sch.compute_at(pad, parallel, preserve_unit_loops=True)
            pad_loops = sch.get_loops(pad)[1:]
            if pad_loops:
                sch.vectorize(pad_loops[-1])


def default_tiles(
    out_shape: tuple[int, ...], lanes: int, budget: int, channel_limit: int | None = None, **options
) -> DirectTiles:
    """Register block for an output ``(N, O, *spatial)``: the width tile, then as many
    output channels as registers allow (each shares the input vectors), then rows
    (each shares the broadcast weights) with the registers left; ``channel_limit`` caps
    the channel tile to a divisor of it (one group's channels)."""
    width = width_tile(out_shape[-1], lanes)
    vectors = -(-width // lanes)
    limit = max(1, budget // vectors)
    channels = largest_divisor(channel_limit or out_shape[1], limit)
    rows = 1
    if len(out_shape) > 3:
        rows = largest_divisor(out_shape[-2], max(1, budget // (vectors * channels)))
    return DirectTiles(channels, width, rows, **options)


def conv_blocks(sch: s_tir.Schedule) -> list[s_tir.SBlockRV]:
    """The ``conv`` reduction blocks of the function (``conv``, ``conv_1``, ...)."""
    blocks = []
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        name = sch.get(block).name_hint
        if is_numbered(name, CONV):
            blocks.append(block)
    return blocks


def single_conv(sch: s_tir.Schedule) -> s_tir.SBlockRV | None:
    """The ``conv`` block of a function made of exactly ``[pad] conv [conv_epilogue]``
    (a plain :func:`convforge.ops.conv`), else None."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    if names.count(CONV) != 1 or not set(names) <= {PAD, CONV, CONV_EPILOGUE}:
        return None
    return blocks[names.index(CONV)]
