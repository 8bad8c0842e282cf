"""Default CPU schedule for convforge's TE operators (no tuning).

One rule serves every reduction-shaped op (convolutions, pools, dense): the output is
tiled into register blocks of ``channel_tile x width_tile`` (width along the innermost
spatial axis, a multiple of the vector width where the size allows), the outer tiles run
in parallel, the reduction is computed at the tile with the reduction loops outside the
register block, whose width axis is vectorized and channel axis unrolled. Element-wise
producers (padding, zero-insertion, weight transforms) are materialized and parallelized;
element-wise epilogues (bias, activation, cast) are fused into the tile.
"""

from __future__ import annotations

import math

import tvm
from tvm import s_tir, tirx

from convforge.ops import blocks
from convforge.schedules import (
    cpu_causal,
    cpu_conv,
    cpu_gather,
    cpu_grouped,
    cpu_pool,
    cpu_qconv,
    cpu_subpixel,
    cpu_winograd,
)
from convforge.schedules.cpu_conv import schedule_conv_nchwc
from convforge.schedules.cpu_direct import (
    function_knobs,
    knobbed_profile,
    largest_divisor,
    schedule_knobs,
)
from convforge.schedules.rules import (
    BlockRule,
    FunctionRule,
    ScheduleRule,
    apply_block_rules,
    apply_rules,
)
from convforge.targets import profile


def _vector_tile(n: int, lanes: int) -> int:
    """Divisor of ``n`` up to two vectors, preferring whole vectors, then half vectors."""
    divisors = [d for d in range(1, min(n, 2 * lanes) + 1) if n % d == 0]
    return max(divisors, key=lambda d: (d % lanes == 0, d % max(1, lanes // 2) == 0, d))


def _is_reduction(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> bool:
    return any(int(iv.iter_type) == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def _schedule_injective(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> None:
    loops = sch.get_loops(block)
    if len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:-1]))
    elif loops:
        sch.parallel(loops[0])


def _register_tile(sch: s_tir.Schedule, anchor: s_tir.SBlockRV, lanes: int, budget: int) -> tuple:
    """Split ``anchor``'s loops (N, C, *spatial, W; at least three) into parallel outer
    tiles and a register block of at most ``budget`` vector accumulators (the profile's
    ``accumulator_budget``).

    Returns (loop to compute the reduction at, channel-inner loop, width-inner loop).
    """
    loops = sch.get_loops(anchor)
    extents = [int(sch.get(loop).extent) for loop in loops]
    width_tile = _vector_tile(extents[-1], lanes)
    vectors = -(-width_tile // lanes)
    channel_tile = largest_divisor(extents[1], max(1, budget // vectors))
    c_outer, c_inner = sch.split(loops[1], [None, channel_tile])
    w_outer, w_inner = sch.split(loops[-1], [None, width_tile])
    middle = list(loops[2:-1])
    sch.reorder(loops[0], c_outer, *middle, w_outer, c_inner, w_inner)
    sch.parallel(sch.fuse(loops[0], c_outer, *middle[:1]))
    return w_outer, c_inner, w_inner


def _schedule_reduction(
    sch: s_tir.Schedule, block: s_tir.SBlockRV, target: tvm.target.Target
) -> str:
    """Tile one reduction block; returns the name of the block whose loops hold the tile."""
    target_profile = knobbed_profile(target, schedule_knobs(sch, block))
    lanes = target_profile.vector_lanes(str(sch.get(block).writes[0].source.dtype))
    iter_vars = sch.get(block).iter_vars
    n_spatial = sum(int(iv.iter_type) != tirx.IterVar.CommReduce for iv in iter_vars)
    consumers = sch.get_consumers(block)
    if (
        len(consumers) == 1
        and not _is_reduction(sch, consumers[0])
        and not sch.get_consumers(consumers[0])
        and len(sch.get_loops(consumers[0])) == n_spatial
    ):
        anchor = consumers[0]  # fuse the element-wise epilogue into the tile
    else:
        anchor = sch.cache_write(block, 0, "global")
    at, c_inner, w_inner = _register_tile(sch, anchor, lanes, target_profile.accumulator_budget)
    sch.vectorize(w_inner)
    sch.unroll(c_inner)
    sch.compute_at(block, at, preserve_unit_loops=True)
    inner = sch.get_loops(block)[-len(iter_vars) :]  # one loop per block iterator
    spatial, reduce_ = inner[:n_spatial], inner[n_spatial:]
    if len(spatial) > 2:  # channel next to width: (N, *middle, C, W)
        spatial = [spatial[0], *spatial[2:-1], spatial[1], spatial[-1]]
    sch.reorder(*reduce_, *spatial)
    sch.unroll(spatial[-2])
    sch.vectorize(spatial[-1])
    sch.decompose_reduction(block, reduce_[0])
    return sch.get(anchor).name_hint


# --- whole-function rules (each schedules every block of the functions it applies to) ---


#: The CPU's whole-function rules, in order: the first that applies schedules the function
#: (:func:`schedule_cpu`); a function none applies to gets :data:`CPU_BLOCK_RULES`. Each is
#: a (name, predicate, schedule) of the module that schedules that algorithm.
CPU_RULES: tuple[ScheduleRule[s_tir.Schedule], ...] = (
    FunctionRule(
        "WinogradPoolRule",
        cpu_winograd.is_winograd_pool,
        cpu_winograd.schedule_winograd_pool,
        "A Winograd convolution with its max pool fused per task (``window_max``).",
    ),
    FunctionRule(
        "WinogradRule",
        cpu_winograd.is_winograd,
        cpu_winograd.schedule_winograd,
        "A Winograd convolution (``winograd_gemm``): the pipeline of ``cpu_winograd``.",
    ),
    FunctionRule(
        "NonfiniteFlagRule",
        cpu_winograd.is_nonfinite_flag,
        cpu_winograd.schedule_nonfinite_flag,
        "The non-finite check before a Winograd call (``nonfinite_rows``).",
    ),
    FunctionRule(
        "SubpixelRule",
        cpu_subpixel.is_subpixel,
        cpu_subpixel.schedule_subpixel,
        "A sub-pixel transposed convolution (``subpixel_interleave``).",
    ),
    FunctionRule(
        "GatherRule",
        cpu_gather.is_gather,
        cpu_gather.schedule_gather,
        "The gather form of a large-stride transposed convolution.",
    ),
    FunctionRule(
        "GroupedRule",
        cpu_grouped.is_grouped,
        cpu_grouped.schedule_grouped,
        "A depthwise or grouped direct convolution.",
    ),
    FunctionRule(
        "PointwiseRowRule",
        cpu_conv.is_pointwise_row,
        cpu_conv.schedule_pointwise_row,
        "A 1x1 convolution over one long row (positions vectorized).",
    ),
    FunctionRule(
        "LongSequenceRule",
        cpu_causal.is_long_1d,
        cpu_causal.schedule_long_1d,
        "A 1-D (causal or dilated) convolution over a long sequence.",
    ),
    FunctionRule(
        "QConvRowsRule",
        cpu_qconv.is_qconv_rows,
        cpu_qconv.schedule_qconv_rows,
        "An integer 1x1 convolution in the rows form (``qconv_rows``: vpdpbusd, positions in lanes).",
    ),
    FunctionRule(
        "QConvPackedRule",
        cpu_qconv.is_qconv_packed,
        cpu_qconv.schedule_qconv_packed,
        "An integer convolution in a blocked form (``qconv_pack_x``: vpmaddwd, vpmaddubsw, vpdpbusd).",
    ),
    FunctionRule(
        "QConvRule",
        cpu_qconv.is_qconv,
        cpu_qconv.schedule_qconv,
        "An integer convolution (``qconv``, ConvInteger/QLinearConv): int32 register tiles.",
    ),
)


# --- block rules (the generic schedule: each root block by the first that applies) -------


class ConvNchwcRule(BlockRule):
    """``conv_nchwc``: its register tile, the unpack (or its max pool) fused into it."""

    def applies(
        self, sch: s_tir.Schedule, block: s_tir.SBlockRV, target: tvm.target.Target
    ) -> bool:
        return sch.get(block).name_hint == blocks.CONV_NCHWC and cpu_conv.fits_conv_nchwc(
            sch, block
        )

    def apply(
        self, sch: s_tir.Schedule, block: s_tir.SBlockRV, target: tvm.target.Target
    ) -> set[str]:
        return set(schedule_conv_nchwc(sch, block, target))


class ReductionRule(BlockRule):
    """Any other reduction with at least three output axes (N, C, ..., W): the generic
    register tiling. Fewer axes (a row of sums, a flag) keep their plain loops."""

    def applies(
        self, sch: s_tir.Schedule, block: s_tir.SBlockRV, target: tvm.target.Target
    ) -> bool:
        iter_vars = sch.get(block).iter_vars
        spatial = sum(int(iv.iter_type) != tirx.IterVar.CommReduce for iv in iter_vars)
        return spatial >= 3 and spatial < len(iter_vars)

    def apply(
        self, sch: s_tir.Schedule, block: s_tir.SBlockRV, target: tvm.target.Target
    ) -> set[str]:
        return {_schedule_reduction(sch, block, target)}


class InjectiveRule(BlockRule):
    """An element-wise block: its outer loops fused and run in parallel."""

    def applies(
        self, sch: s_tir.Schedule, block: s_tir.SBlockRV, target: tvm.target.Target
    ) -> bool:
        return not _is_reduction(sch, block)

    def apply(
        self, sch: s_tir.Schedule, block: s_tir.SBlockRV, target: tvm.target.Target
    ) -> set[str]:
        _schedule_injective(sch, block)
        return set()


#: The CPU's block rules, in order (:func:`generic_cpu_schedule`): pools, dense and softmax
#: by name (``cpu_pool``), ``conv_nchwc``, then any reduction, then element-wise blocks. A
#: block none applies to (a reduction to a scalar or a vector) keeps its plain loops.
CPU_BLOCK_RULES: tuple[BlockRule, ...] = (
    *cpu_pool.BLOCK_RULES,
    ConvNchwcRule(),
    ReductionRule(),
    InjectiveRule(),
)


def schedule_cpu(func: tirx.PrimFunc, target: tvm.target.Target) -> tvm.IRModule:
    """Schedule ``func`` by the first of :data:`CPU_RULES` that applies, else block by
    block (:func:`generic_cpu_schedule`). A small ``func`` (:func:`is_small`) gets the same
    schedule on one thread. A rule that raises is an error under
    ``CONVFORGE_STRICT_SCHEDULES=1`` and otherwise a warning on the ``convforge`` logger,
    after which the generic schedule is used (see :mod:`convforge.schedules.rules`).
    """
    sch = apply_rules(CPU_RULES, func, target, generic_cpu_schedule)
    threads = function_knobs(func).get(THREADS_KNOB)
    if threads == THREADS_ONE or (threads != THREADS_ALL and is_small(func, target)):
        sch = without_parallel_loops(sch, func)
    return sch.mod


#: The schedule knob overriding :func:`is_small` for a tuned plan (defined with the other
#: annotation names in :mod:`convforge.ops.blocks`).
THREADS_KNOB, THREADS_ONE, THREADS_ALL = blocks.THREADS_KNOB, blocks.THREADS_ONE, blocks.THREADS_ALL


def is_small(func: tirx.PrimFunc, target: tvm.target.Target) -> bool:
    """Whether ``func`` runs on one thread on ``target``: fewer than the profile's
    ``min_parallel_iterations`` block iterations over arguments of fewer than its
    ``min_parallel_bytes`` (waking the pool's idle workers would cost more than the other
    cores give). Evidence: benchmarks/results/thresholds.md#min-parallel-iterations and
    #min-parallel-bytes."""
    thresholds = profile(target)
    if block_iterations(func) >= thresholds.min_parallel_iterations:
        return False
    sizes = (math.prod(int(n) for n in p.shape) * tvm.DataType(p.dtype).bits for p in func.params)
    return sum(sizes) // 8 < thresholds.min_parallel_bytes


def block_iterations(func: tirx.PrimFunc) -> int:
    """How many times the blocks of ``func`` run in all (its work, in block instances)."""
    sch = s_tir.Schedule(func)
    total = 0
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        total += math.prod(int(iv.dom.extent) for iv in sch.get(block).iter_vars)
    return total


def without_parallel_loops(sch: s_tir.Schedule, func: tirx.PrimFunc) -> s_tir.Schedule:
    """``sch``'s schedule of ``func`` replayed without its ``parallel`` steps."""
    trace = sch.trace
    steps = [inst for inst in trace.insts if inst.kind.name != "Parallel"]
    serial = s_tir.Schedule(func)
    s_tir.schedule.Trace(steps, trace.decisions).apply_to_schedule(serial, remove_postproc=False)
    return serial


def generic_cpu_schedule(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule:
    """:data:`CPU_BLOCK_RULES` over the root blocks of ``func`` (no whole-function rule), as
    a Schedule whose trace replays them (tuning seeds its search from it)."""
    return apply_block_rules(CPU_BLOCK_RULES, func, target)
