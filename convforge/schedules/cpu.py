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

import contextlib
import math

import tvm
from tvm import s_tir, tirx

from convforge.schedules import (
    cpu_causal,
    cpu_conv,
    cpu_gather,
    cpu_grouped,
    cpu_subpixel,
    cpu_winograd,
)
from convforge.schedules.cpu_conv import schedule_conv_nchwc
from convforge.schedules.cpu_direct import largest_divisor
from convforge.schedules.cpu_pool import schedule_named_block
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
    """Split ``anchor``'s loops (N, C, *spatial) into parallel outer tiles and a register block
    of at most ``budget`` vector accumulators (the profile's ``accumulator_budget``).

    Returns (loop to compute the reduction at, channel-inner loop, width-inner loop).
    """
    loops = sch.get_loops(anchor)
    extents = [int(sch.get(loop).extent) for loop in loops]
    if len(loops) < 2:
        raise ValueError("needs at least two output axes")
    width_tile = _vector_tile(extents[-1], lanes)
    vectors = -(-width_tile // lanes)
    channel_tile = largest_divisor(extents[1], max(1, budget // vectors))
    c_outer, c_inner = sch.split(loops[1], [None, channel_tile])
    w_outer, w_inner = sch.split(loops[-1], [None, width_tile])
    middle = list(loops[2:-1])
    if len(loops) == 2:  # (N, C): the width axis is the channel axis itself
        sch.reorder(loops[0], w_outer, c_outer, c_inner, w_inner)
        sch.parallel(sch.fuse(loops[0], w_outer))
        return c_outer, c_inner, w_inner
    sch.reorder(loops[0], c_outer, *middle, w_outer, c_inner, w_inner)
    sch.parallel(sch.fuse(loops[0], c_outer, *middle[:1]))
    return w_outer, c_inner, w_inner


def _schedule_reduction(
    sch: s_tir.Schedule, block: s_tir.SBlockRV, target: tvm.target.Target
) -> str:
    """Tile one reduction block; returns the name of the block whose loops hold the tile."""
    target_profile = profile(target)
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


#: Whole-function rules, tried in order: (predicate on the PrimFunc, its schedule). The
#: first rule whose predicate holds schedules ``func``; on a schedule error the generic
#: per-block rule below does.
SPECIAL_RULES = (
    (cpu_winograd.is_winograd_pool, cpu_winograd.schedule_winograd_pool),
    (cpu_winograd.is_winograd, cpu_winograd.schedule_winograd),
    (cpu_winograd.is_nonfinite_flag, cpu_winograd.schedule_nonfinite_flag),
    (cpu_subpixel.is_subpixel, cpu_subpixel.schedule_subpixel),
    (cpu_gather.is_gather, cpu_gather.schedule_gather),
    (cpu_grouped.is_grouped, cpu_grouped.schedule_grouped),
    (cpu_conv.is_pointwise_row, cpu_conv.schedule_pointwise_row),
    (cpu_causal.is_long_1d, cpu_causal.schedule_long_1d),
)

#: Blocks with a dedicated schedule: name -> rule(schedule, block, target), which returns
#: the names of the other blocks it scheduled (fused into its loops). Other reduction
#: blocks get the generic register tiling, element-wise blocks a parallel loop.
BLOCK_RULES = {
    "conv_nchwc": schedule_conv_nchwc,
}


def schedule_cpu(func: tirx.PrimFunc, target: tvm.target.Target) -> tvm.IRModule:
    """Apply the first special rule that fits ``func``, else the default CPU schedule.

    A block the rule does not fit stays as it is (correct, slower) rather than failing.
    A small ``func`` (:func:`is_small`) gets the same schedule on one thread.
    """
    sch = None
    for applies, rule in SPECIAL_RULES:
        if applies(func):
            with contextlib.suppress(ValueError, RuntimeError):  # ScheduleError: RuntimeError
                sch = rule(func, target)
            break
    if sch is None:
        sch = generic_cpu_schedule(func, target)
    if is_small(func, target):
        sch = without_parallel_loops(sch, func)
    return sch.mod


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
    """The block-by-block rules of :func:`schedule_cpu` (no special rule), as a Schedule
    whose trace replays them (tuning seeds its search from it)."""
    sch = s_tir.Schedule(func)
    fused: set[str] = set()
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint in fused:
            continue
        trial = sch.copy()
        rule = BLOCK_RULES.get(trial.get(block).name_hint)
        try:
            named = schedule_named_block(trial, block, target)  # pool, dense, softmax
            if named is not None:
                fused.update(named)
            elif rule is not None:
                fused.update(rule(trial, block, target) or ())
            elif _is_reduction(trial, block):
                fused.add(_schedule_reduction(trial, block, target))
            else:
                _schedule_injective(trial, block)
        except (ValueError, RuntimeError):  # ScheduleError is a RuntimeError
            continue
        sch = trial
    return sch
