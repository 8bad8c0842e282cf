"""CPU schedule of the Winograd convolution (ops.winograd; when to use it: plan.winograd_tiles).

One parallel loop over tasks (batch x tile rows x blocks of tiles, about 256 KB of
intermediates each) runs the whole pipeline for its task while it is in cache: the
channels-last input transform (vectorized along the channels, both separable passes in
registers), the matrix multiply of every transform point (register tiles of ``out_block``
channels x ``tile_block`` tiles, like ``cpu_conv.schedule_conv_nchwc``), and the output
transform (vectorized along the channel block, each pass unrolling the loop that selects its
row) written back in NCHW with bias and activation, the tile's columns vectorized. With
dilation the output is written back by its own parallel pass (the phase of an output column
is not an affine function of the tile loops). Where every task would read more of the
transformed weight than the pipeline's intermediates weigh, the three steps run as passes
instead (:func:`_fuse_tasks`). The padding (a blocked transpose to channels last) and the
weight transform are parallel passes. A ``window_max`` of the output (a max pool whose
windows each lie in one tile) runs in the tasks that wrote its tiles
(:func:`schedule_winograd_pool`).
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from convforge.ops import blocks
from convforge.ops.blocks import (
    NONFINITE_ROWS,
    WINDOW_MAX,
    WINOGRAD_GEMM,
    WINOGRAD_INPUT,
    WINOGRAD_INPUT_ROWS,
    WINOGRAD_OUTPUT,
    WINOGRAD_OUTPUT_ROWS,
    WINOGRAD_PAD,
    WINOGRAD_UNPACK,
    WINOGRAD_WEIGHT,
    WINOGRAD_WEIGHT_ROWS,
)
from convforge.ops.winograd import DILATION_ATTR
from convforge.schedules.cpu_direct import (
    has_block,
    knobbed_profile,
    largest_divisor,
    schedule_knobs,
)
from convforge.targets import TargetProfile, vector_lanes


def is_winograd(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` is a Winograd convolution."""
    return has_block(func, WINOGRAD_GEMM)


#: The schedule knob choosing the pipeline per task (:data:`PIPELINE_TASKS`) or the passes
#: (:data:`PIPELINE_PASSES`) where a tuned plan sets it; else :func:`_fuse_tasks` decides
#: (defined with the other annotation names in :mod:`convforge.ops.blocks`).
PIPELINE_KNOB, PIPELINE_TASKS, PIPELINE_PASSES = (
    blocks.PIPELINE_KNOB, blocks.PIPELINE_TASKS, blocks.PIPELINE_PASSES,
)  # fmt: skip

#: Input columns per block of the padding's transpose to channels last.
TRANSPOSE_COLUMNS = 16


def _groups_per_task(inner: int, groups: int, group_floats: int, thresholds: TargetProfile) -> int:
    """Tile blocks per task: the largest divisor of the ``inner`` tile loop whose V and M fit
    the profile's ``winograd_task_floats`` and that leaves its ``parallel_tasks`` of the
    ``groups`` tile blocks' tasks."""
    task_floats, tasks = thresholds.winograd_task_floats, thresholds.parallel_tasks
    limit = max(1, min(task_floats // group_floats, groups // tasks))
    return largest_divisor(inner, limit)


def _fuse_tasks(
    sch: s_tir.Schedule, gemm: s_tir.SBlockRV, tasks: int, thresholds: TargetProfile
) -> bool:
    """Whether to run the whole pipeline per task (every task reads all of the transformed
    weight U) rather than in passes (V and M written out and read back once, the multiply
    parallel over transform points and channel blocks, U read once): by rows while U stays
    in cache (the profile's ``winograd_cached_weight_floats``), else the one moving less data, an
    intermediate written out and read back counting the profile's ``pass_traffic`` times
    its size (evidence: benchmarks/results/thresholds.md#winograd-rows-or-passes).
    """
    n, rows, tb, pw, a, b, kb, ti, ki, c = (
        int(sch.get(loop).extent) for loop in sch.get_loops(gemm)
    )
    tiles = n * rows * tb * pw * ti
    u_size, v_size, m_size = a * b * kb * ki * c, a * b * tiles * c, a * b * tiles * kb * ki
    if u_size <= thresholds.winograd_cached_weight_floats:
        return True
    return tasks * u_size <= u_size + thresholds.pass_traffic * (v_size + m_size)


def _separable_in_registers(
    sch: s_tir.Schedule, first: s_tir.SBlockRV, at: s_tir.LoopRV, n_loops: int, second: list
) -> None:
    """A two-pass transform in registers: the ``first`` pass computed at ``at`` in local
    storage, its last ``n_loops`` loops unrolled but the innermost (vectorized); the second
    pass's ``second`` loops likewise (point loops unrolled, so every selection of a matrix
    row folds to its own expression, and the vector loop last)."""
    sch.compute_at(first, at, preserve_unit_loops=True)
    sch.set_scope(first, 0, "local")
    for loops in (sch.get_loops(first)[-n_loops:], second):
        for loop in loops[:-1]:
            sch.unroll(loop)
        sch.vectorize(loops[-1])


def schedule_winograd(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule:
    """Schedule every block of a Winograd convolution (see the module docstring)."""
    sch = s_tir.Schedule(func)
    names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
    block = sch.get_sblock
    lanes = vector_lanes(target, str(sch.get(block(WINOGRAD_GEMM)).writes[0].source.dtype))
    knobs = schedule_knobs(sch, block(WINOGRAD_GEMM))
    thresholds = knobbed_profile(target, knobs)
    if WINOGRAD_WEIGHT in names:  # per (channel block, channel): G w G^T, vectorized
        weight = block(WINOGRAD_WEIGHT)
        a, b, kb, c, ki = sch.get_loops(weight)
        sch.reorder(kb, c, a, b, ki)
        kc = sch.fuse(kb, c)
        sch.parallel(kc)
        _separable_in_registers(sch, block(WINOGRAD_WEIGHT_ROWS), kc, 5, [a, b, ki])

    y = block(WINOGRAD_OUTPUT)
    dh, dw = (int(d) for d in sch.get(y).annotations[DILATION_ATTR])
    n_n, qh_n, tb_n, pw_n, kb_n, mh, mw, tile_block, ob = (
        int(sch.get(loop).extent) for loop in sch.get_loops(y)
    )
    gemm = block(WINOGRAD_GEMM)
    *_, a_n, b_n, _, _, _, c_n = (int(sch.get(loop).extent) for loop in sch.get_loops(gemm))
    group = a_n * b_n * tile_block * (c_n + kb_n * ob)  # V and M floats of one tile block
    unpack = block(WINOGRAD_UNPACK)
    if dh == dw == 1:  # write back inside the task: (n, th, tbo) | tbi, kb | jh, ki, (ti, jw)
        n, k, oh, ow = sch.get_loops(unpack)
        kb, ki = sch.split(k, [kb_n, ob])
        th, jh = sch.split(oh, [qh_n, mh])
        tb, ti, jw = sch.split(ow, [tb_n, tile_block, mw])
        sch.reorder(n, th, tb, kb, jh, ki, ti, jw)
        per_task = _groups_per_task(tb_n, n_n * qh_n * tb_n, group, thresholds)
        tb_outer, _ = sch.split(tb, [None, per_task])
        task = sch.fuse(n, th, tb_outer)
        sch.compute_at(y, kb, preserve_unit_loops=True)
        sch.vectorize(sch.fuse(ti, jw))
    else:  # (n, qh, tb, pwo) | pwi, kb, ...; written back by its own pass
        n, qh, tb, pw, *_ = sch.get_loops(y)
        per_task = _groups_per_task(pw_n, n_n * qh_n * tb_n * pw_n, group, thresholds)
        pw_outer, _ = sch.split(pw, [None, per_task])
        task = sch.fuse(n, qh, tb, pw_outer)
        sch.parallel(sch.fuse(*sch.get_loops(unpack)[:2]))
    sch.parallel(task)
    out_rows = block(WINOGRAD_OUTPUT_ROWS)
    sch.compute_at(out_rows, sch.get_loops(y)[-5], preserve_unit_loops=True)  # at kb
    # each pass unrolls only the loop that selects its matrix row (the row's expression folds
    # to its own terms); the other point loop stays a loop: unrolling it too doubled LLVM's
    # time for the kernel at the same speed (benchmarks/results/thresholds.md#winograd-unroll)
    *_, jh, b, ti, ki = sch.get_loops(out_rows)
    sch.unroll(jh)
    sch.vectorize(ki)
    *_, jh, jw, ti, ki = sch.get_loops(y)
    sch.unroll(jw)
    sch.vectorize(ki)

    v = block(WINOGRAD_INPUT)
    pipeline = knobs.get(PIPELINE_KNOB)
    if pipeline is None:
        pipeline = (
            PIPELINE_TASKS
            if _fuse_tasks(sch, gemm, int(sch.get(task).extent), thresholds)
            else PIPELINE_PASSES
        )
    if pipeline == PIPELINE_TASKS:
        sch.compute_at(gemm, task, preserve_unit_loops=True)
        sch.compute_at(v, task, preserve_unit_loops=True)
        input_task = task
    else:
        input_task = sch.fuse(*sch.get_loops(v)[:4])
        sch.parallel(input_task)
        n, qh, tb, pw, a, b, kb, ti, ki, rc = sch.get_loops(gemm)
        sch.reorder(a, b, kb, n, qh, tb, pw, ti, ki, rc)
        sch.parallel(sch.fuse(a, b, kb))

    # input transform: per (tile, channel vector), both passes unrolled in registers
    a, b, ti, c = sch.get_loops(v)[-4:]
    c_in = int(sch.get(c).extent)
    c_outer, c_inner = sch.split(c, [None, largest_divisor(c_in, lanes)])
    sch.reorder(ti, c_outer, a, b, c_inner)
    _separable_in_registers(sch, block(WINOGRAD_INPUT_ROWS), c_outer, 4, [a, b, c_inner])

    # padding to channels last, per undilated task, so that its input rows stay in cache
    # (evidence: benchmarks/results/thresholds.md#winograd-padding-per-task), as a blocked
    # transpose of 16 columns x a vector of channels (a plain loop reads one channel row per
    # element)
    pad = block(WINOGRAD_PAD)
    if dh == dw == 1:
        sch.compute_at(pad, input_task, preserve_unit_loops=True)
    n, h, w, c = sch.get_loops(pad)[-4:]
    c_outer, c_inner = sch.split(c, [None, largest_divisor(int(sch.get(c).extent), lanes)])
    w_outer, w_inner = sch.split(w, [None, TRANSPOSE_COLUMNS])
    sch.reorder(h, w_outer, c_outer, w_inner, c_inner)
    sch.vectorize(c_inner)
    if dh != dw or dh > 1:  # a dilated task reads a sparse box of rows: pad once, in parallel
        sch.parallel(sch.fuse(n, h, w_outer))

    # matrix multiply per transform point, channel block and tile block: c | ti (unrolled),
    # ki (vectorized)
    *_, tile, ti, ki, rc = sch.get_loops(gemm)  # tile: kb by rows, pw by passes
    sch.reorder(rc, ti, ki)
    accumulators = sch.cache_write(gemm, 0, "local")
    sch.reverse_compute_at(accumulators, tile, preserve_unit_loops=True)
    sch.unroll(ti)
    sch.vectorize(ki)
    sch.decompose_reduction(gemm, rc)
    sch.vectorize(sch.get_loops(accumulators)[-1])
    return sch


def is_winograd_pool(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` is a Winograd convolution followed by a ``window_max``."""
    return is_winograd(func) and has_block(func, WINDOW_MAX)


def schedule_winograd_pool(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule:
    """The Winograd schedule with the ``window_max`` computed in each of its tasks (the
    lowering pools only windows inside one output tile of the undilated convolution, so
    each task pools the tiles it wrote)."""
    sch = schedule_winograd(func, target)
    task = sch.get_loops(sch.get_sblock(WINOGRAD_UNPACK))[0]
    sch.reverse_compute_at(sch.get_sblock(WINDOW_MAX), task)
    return sch


def is_nonfinite_flag(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` is ``ops.winograd.nonfinite_flag`` (the check before a Winograd call)."""
    return has_block(func, NONFINITE_ROWS)


def schedule_nonfinite_flag(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule:
    """``ops.winograd.nonfinite_flag``'s schedule: its chunks in parallel, each a pass over
    its part of x vectorized along the lanes (one read of x; the other blocks are tiny)."""
    sch = s_tir.Schedule(func)
    rows = sch.get_sblock(NONFINITE_ROWS)
    p, j, i = sch.get_loops(rows)
    sch.parallel(p)
    sch.reorder(p, i, j)
    sch.vectorize(j)
    sch.decompose_reduction(rows, i)
    return sch
