"""Default CPU schedule rules for the blocks of pooling, dense and softmax.

:data:`BLOCK_RULES` come first in ``schedules.cpu.CPU_BLOCK_RULES``; each applies by block
name (:mod:`convforge.ops.blocks`, the contract with ``convforge.ops.pool`` and
``convforge.ops.heads``) and returns the names of the blocks it scheduled.
``pool_pad`` and ``resize`` fit the generic injective rule of ``schedule_cpu`` (parallel
outer loops).

- ``pool`` (max, average, adaptive, global): (N, C) run in parallel. Windows that tile the
  input walk each window row across the whole output row, the ``pool_epilogue`` division
  fused per output row. Sliding windows over rows at least a vector long run every tap
  over the whole output row, vectorized, with the padding written per (N, C) task; other
  pools (adaptive, global) take each output in the plain loop order (LLVM vectorizes it),
  the division fused per output. Evidence: benchmarks/results/thresholds.md#pool-rows.
- ``dense`` (x (N, F) @ w (K, F)^T): the reduction over F is split by a vector of lanes and
  ``rfactor``-ed, so ``lanes`` partial sums run as one vector along contiguous x and w
  rows; the output classes run in parallel and the epilogue is fused per class.
- ``softmax_*``: for (N, K) one pass per row (parallel over rows): max, exp and sum,
  normalize, the element-wise steps vectorized along the classes. For (N, K, ..., L) the
  positions along L are tiled, tiles run in parallel and every step is vectorized along
  the positions of a tile (WaveNet's per-step softmax over 256 classes)."""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import s_tir, tirx

from convforge.ops import blocks
from convforge.schedules.cpu_direct import largest_divisor
from convforge.schedules.rules import BlockRule, NamedBlockRule
from convforge.targets import vector_lanes

#: Output rows of this many positions (inclusive) narrower than a vector slide as one
#: vector of their width. #pool-row-vectors
NARROW_POOL_ROWS = (8, 16)


def _sliding_vector(width: int, lanes: int) -> int:
    """The vector a pool's output row of ``width`` positions slides (its taps outside the
    row) with ``lanes`` lanes, or 0: the taps stay inside the row (LLVM vectorizes that
    loop nest itself). Whole vectors where ``lanes`` divides the row; a narrow row as one
    vector of its width (:data:`NARROW_POOL_ROWS`); a row that would end in a partial vector
    or is otherwise narrower than one keeps its taps inside (ran 0.15-0.4x the time of
    sliding a partial last vector, thresholds.md#pool-row-vectors)."""
    low, high = NARROW_POOL_ROWS
    if width >= lanes:
        return lanes if width % lanes == 0 else 0
    return width if low <= width <= high else 0


def _schedule_dense(sch: s_tir.Schedule, block: s_tir.SBlockRV, lanes: int) -> set[str]:
    consumers = sch.get_consumers(block)
    epilogue = consumers[0] if len(consumers) == 1 else None
    if epilogue is not None and sch.get(epilogue).name_hint != blocks.DENSE_EPILOGUE:
        epilogue = None
    last = epilogue if epilogue is not None else block
    _, _, rf = sch.get_loops(block)
    vector = largest_divisor(int(sch.get(rf).extent), lanes)
    names = {sch.get(last).name_hint, blocks.DENSE}
    partial = None
    if vector > 1:  # rfactor first: it refuses a block already moved by compute_at
        partial = sch.rfactor(sch.split(rf, [None, vector])[1], factor_axis=2)
        names.add(sch.get(partial).name_hint)
    n, k = sch.get_loops(last)[:2]
    sch.reorder(k, n)
    sch.parallel(k)
    if epilogue is not None:
        sch.compute_at(block, n, preserve_unit_loops=True)
    if partial is not None:
        sch.compute_at(partial, sch.get_loops(block)[1], preserve_unit_loops=True)
        lane, *units, outer = sch.get_loops(partial)[-4:]  # (rf_inner, n, k, rf_outer)
        sch.reorder(*units, outer, lane)
        sch.vectorize(lane)
        sch.decompose_reduction(partial, outer)
    return names


def _schedule_pool(sch: s_tir.Schedule, block: s_tir.SBlockRV, lanes: int) -> set[str]:
    names = {blocks.POOL}
    loops = sch.get_loops(block)
    spatial = sum(int(iv.iter_type) != tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)
    outs, taps = loops[2:spatial], loops[spatial:]
    tiling = blocks.POOL_WINDOWS_TILE_ATTR in sch.get(block).annotations
    width = int(sch.get(outs[-1]).extent) if outs else 0
    sliding = not tiling and len(outs) > 1 and taps and _sliding_vector(width, lanes) > 0
    if tiling:  # window rows outside the output row: every input row is read once, in order
        sch.reorder(*outs[:-1], *taps[:-1], outs[-1], taps[-1])
    elif sliding:  # every tap outside the output row, which is vectorized
        sch.reorder(*outs[:-1], *taps, outs[-1])
    task = sch.fuse(*loops[:2])
    sch.parallel(task)
    if tiling:
        sch.decompose_reduction(block, sch.get_loops(block)[spatial - 2])
    elif sliding:
        row = sch.get_loops(block)[-1]
        sch.vectorize(sch.split(row, [None, _sliding_vector(width, lanes)])[1])
        sch.decompose_reduction(block, sch.get_loops(block)[len(outs)])
        pad = next(
            (b for b in sch.get_producers(block) if sch.get(b).name_hint == blocks.POOL_PAD), None
        )
        if pad is not None:  # each (batch, channel) task pads its own plane
            sch.compute_at(pad, task, preserve_unit_loops=True)
            names.add(blocks.POOL_PAD)
    consumers = sch.get_consumers(block)
    if len(consumers) == 1 and sch.get(consumers[0]).name_hint == blocks.POOL_EPILOGUE:
        # per output row when the window rows are outside it, else per output
        at = spatial - 3 if tiling or sliding else spatial - 2
        sch.reverse_compute_at(consumers[0], sch.get_loops(block)[at])
        names.add(blocks.POOL_EPILOGUE)
    return names


#: Positions along the last axis of (N, K, ..., L) that one softmax tile normalizes at once.
_SOFTMAX_TILE = 64


def _schedule_softmax(sch: s_tir.Schedule, lanes: int) -> set[str]:
    names = blocks.SOFTMAX
    loops = sch.get_loops(sch.get_sblock(blocks.SOFTMAX_NORM))  # (N, K, *rest)
    if len(loops) == 2:  # classes innermost: one row per task, vectorized along the classes
        sch.parallel(loops[0])
        for name in reversed(names[:-1]):
            sch.compute_at(sch.get_sblock(name), loops[0], preserve_unit_loops=True)
        for name in (blocks.SOFTMAX_EXP, blocks.SOFTMAX_NORM):
            inner = sch.get_loops(sch.get_sblock(name))[-1]
            vector = largest_divisor(int(sch.get(inner).extent), lanes)
            if vector > 1:
                sch.vectorize(sch.split(inner, [None, vector])[1])
        return set(names)
    # (N, K, *outer, L): tiles of positions along L run in parallel; in a tile every step
    # walks the classes with the positions as the vectorized inner axis (contiguous in x).
    n, k, *outer, last = loops
    length = int(sch.get(last).extent)
    divisors = [d for d in range(1, min(length, _SOFTMAX_TILE) + 1) if length % d == 0]
    tile = max(divisors, key=lambda d: (d % lanes == 0, d))  # whole vectors where possible
    last_outer, last_inner = sch.split(last, [None, tile])
    sch.reorder(n, *outer, last_outer, k, last_inner)
    sch.parallel(sch.fuse(n, *outer, last_outer))
    at = sch.get_loops(sch.get_sblock(blocks.SOFTMAX_NORM))[0]
    for name in reversed(names[:-1]):
        sch.compute_at(sch.get_sblock(name), at, preserve_unit_loops=True)
    for name in names:
        block = sch.get_sblock(name)
        inner = sch.get_loops(block)[1:]  # below the parallel loop
        if name in (blocks.SOFTMAX_MAX, blocks.SOFTMAX_SUM):
            # the reduction outside, the contiguous positions inside: LLVM vectorizes them
            # (the vectorize primitive refuses a reduction's spatial loop)
            sch.reorder(inner[-1], inner[-2])
        else:
            sch.vectorize(inner[-1])
    return set(names)


def _with_lanes(
    schedule: Callable[[s_tir.Schedule, s_tir.SBlockRV, int], set[str]],
) -> Callable[[s_tir.Schedule, s_tir.SBlockRV, tvm.target.Target], set[str]]:
    """``schedule(sch, block, lanes)`` as a block rule's ``apply``: ``lanes`` is the vector
    width of the block's output dtype on the target."""

    def apply(sch: s_tir.Schedule, block: s_tir.SBlockRV, target: tvm.target.Target) -> set[str]:
        return schedule(
            sch, block, vector_lanes(target, str(sch.get(block).writes[0].source.dtype))
        )

    return apply


#: This module's block rules, first in ``schedules.cpu.CPU_BLOCK_RULES``.
BLOCK_RULES: tuple[BlockRule, ...] = (
    NamedBlockRule(
        "DenseRule",
        blocks.DENSE,
        _with_lanes(_schedule_dense),
        "``dense`` (and its ``dense_epilogue``): rfactor-ed vector partial sums.",
    ),
    NamedBlockRule(
        "PoolRule",
        blocks.POOL,
        _with_lanes(_schedule_pool),
        "``pool`` (with its ``pool_pad`` and ``pool_epilogue``).",
    ),
    NamedBlockRule(
        "SoftmaxRule",
        blocks.SOFTMAX_MAX,
        _with_lanes(lambda sch, _block, lanes: _schedule_softmax(sch, lanes)),
        "The four ``softmax_*`` blocks, found from the first (``softmax_max``).",
    ),
)
