"""CPU schedule of the element-wise functions a compiled model leaves to TVM (no tuning).

TVM's CPU pipeline legalizes the nodes convforge does not lower (residual Add, Mul of gated
units, Relu, Transpose, Concat...) to plain loop nests: one thread, scalar code (evidence:
benchmarks/results/thresholds.md#elementwise-min-parallel). The rule here inlines every producer into the last block, runs the outer loops in parallel and vectorizes
the innermost one; a function it does not fit (a reduction, a non-inlinable producer) is left
as TVM made it.
"""

from __future__ import annotations

import math

import tvm
from tvm import s_tir, tirx

from convforge.targets import profile


def schedule_elementwise(func: tirx.PrimFunc, target: tvm.target.Target) -> tirx.PrimFunc | None:
    """``func`` with its producers inlined, outer loops parallel and the innermost loop
    vectorized (by whole vectors), or None when ``func`` is not element-wise."""
    try:
        return _schedule(func, target)
    except (RuntimeError, ValueError):  # ScheduleError is a RuntimeError
        return None


def _schedule(func: tirx.PrimFunc, target: tvm.target.Target) -> tirx.PrimFunc | None:
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if not blocks:
        return None
    for block in blocks[:-1]:
        sch.compute_inline(block)
    last = blocks[-1]
    if any(int(iv.iter_type) != tirx.IterVar.DataPar for iv in sch.get(last).iter_vars):
        return None
    loops = sch.get_loops(last)
    if not loops:
        return None
    if not all(isinstance(sch.get(loop).extent, tirx.IntImm) for loop in loops):
        return None  # symbolic sizes: left as TVM made them
    extents = [int(sch.get(loop).extent) for loop in loops]
    target_profile = profile(target)
    lanes = target_profile.vector_lanes(str(sch.get(last).writes[0].source.dtype))
    if extents[-1] % lanes == 0 and extents[-1] > lanes:
        loops = [*loops[:-1], *sch.split(loops[-1], [None, lanes])]
    if extents[-1] % lanes == 0:
        sch.vectorize(loops[-1])
    # below elementwise_min_parallel outputs one thread is faster than waking the pool
    # (evidence: benchmarks/results/thresholds.md#elementwise-min-parallel)
    if math.prod(extents) >= target_profile.elementwise_min_parallel and len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:-1]))
    return sch.mod["main"]
