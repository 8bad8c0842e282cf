"""CPU schedule of the gather-form transposed convolution (ops.conv_transpose_gather).

``conv_transpose_taps`` (every product, summed over the channels: a matrix multiply) gets
the generic register tiling of :mod:`convforge.schedules.cpu`. The per-output gather
(``conv_transpose_gather``, a few masked taps chosen by ``%`` and ``//`` of the position)
and its ``conv_epilogue`` run per output in one parallel loop over (batch, channels and
the outer spatial axes), with no ``vectorize``: with the gather vectorized by the
generic rule, a 1-D stride-2000 case died with SIGSEGV (unscheduled it ran correctly), so
vectorizing the ``//`` and ``%`` of a vector of positions is not trusted here. LLVM may
still vectorize the plain loop, correctly.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from convforge.ops.blocks import CONV_TRANSPOSE_GATHER, CONV_TRANSPOSE_TAPS
from convforge.schedules.cpu_direct import has_block


def is_gather(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` is a gather-form transposed convolution."""
    return has_block(func, CONV_TRANSPOSE_GATHER)


def _stage_pipeline(sch: s_tir.Schedule) -> bool:
    """Whether TVM sees the root of ``sch`` as a stage pipeline (every block's read region
    covered by its producers), which ``compute_at`` needs. A gather whose masked taps
    index past the products of a degenerate geometry (a 1x1x1 kernel with padding and
    stride 2x3x3, say) is not one."""
    root = sch.get_sref(sch.get_sblock("root"))
    return sch.state._get_cached_flags(root).stage_pipeline


def schedule_gather(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule:
    """Schedule the products by the generic tiling and the gather per output (module doc).

    Never vectorizes the gather. Where TVM cannot move blocks (:func:`_stage_pipeline`
    false), the products keep their plain loops and the gather and its epilogue run as
    two parallel loops.
    """
    from convforge.schedules.cpu import _schedule_reduction

    sch = s_tir.Schedule(func)
    movable = _stage_pipeline(sch)
    if movable:
        _schedule_reduction(sch, sch.get_sblock(CONV_TRANSPOSE_TAPS), target)
    gather = sch.get_sblock(CONV_TRANSPOSE_GATHER)
    consumers = sch.get_consumers(gather)
    anchors = [consumers[0]] if consumers else []
    if not movable or not anchors:
        anchors.insert(0, gather)
    for anchor in anchors:
        spatial = sum(
            int(iv.iter_type) != tirx.IterVar.CommReduce for iv in sch.get(anchor).iter_vars
        )
        loops = sch.get_loops(anchor)[:spatial]
        outer = loops[:-1] if len(loops) > 2 else loops[:1]
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    if movable and consumers:
        sch.compute_at(gather, loops[-1], preserve_unit_loops=True)
    return sch
