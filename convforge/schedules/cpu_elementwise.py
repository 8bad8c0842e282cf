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

from convforge.schedules.cpu_direct import largest_divisor
from convforge.targets import profile


def _vector(extent: int, lanes: int) -> int:
    """The vector the innermost loop of ``extent`` runs in: whole vectors of ``lanes`` where
    they divide it, else its largest divisor up to ``lanes`` if that fills at least half a
    vector (a 14- or 28-wide row of float32 on AVX-512: 14 lanes), else 0 (scalar; LLVM
    may still vectorize it). #elementwise-vectors"""
    if extent % lanes == 0:
        return lanes
    divisor = largest_divisor(extent, lanes)
    return divisor if 2 * divisor >= lanes else 0


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
    vector = _vector(extents[-1], lanes)
    if vector and extents[-1] > vector:
        loops = [*loops[:-1], *sch.split(loops[-1], [None, vector])]
    if vector:
        sch.vectorize(loops[-1])
    # below elementwise_min_parallel outputs one thread is faster than waking the pool
    # (evidence: benchmarks/results/thresholds.md#elementwise-min-parallel)
    if math.prod(extents) >= target_profile.elementwise_min_parallel and len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:-1]))
    return sch.mod["main"]
