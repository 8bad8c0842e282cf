"""CPU schedule of grouped and depthwise convolutions (memory-bound, short reductions).

The output channel tile divides the channels per group, so each register block reads one
group's input; the spatial tile is up to two vectors of width, plus rows when the width is
a single vector; the zero padding is computed per parallel tile (channels x rows), never
as a whole padded copy. With a stride s > 1 along the width (and a wide kernel or a narrow
output: the target profile's thresholds), that padded input is stored as s phases,
``(..., w % s, w // s)`` (:func:`deinterleave_strided_input`), so the width vectors of a
register tile are contiguous loads instead of strided ones.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.sym.pattern import detect_linear_equation

from convforge.ops.blocks import PAD
from convforge.schedules.cpu_direct import (
    accumulator_budget,
    default_tiles,
    producer_named,
    schedule_direct,
    schedule_knobs,
    single_conv,
)
from convforge.targets import profile, vector_lanes


def conv_groups(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> int:
    """Groups of a ``conv`` block, from its input (N, C, ...) and weight (O, C/g, ...)."""
    data, weight = (region.source for region in sch.get(block).reads[:2])
    return int(data.shape[1]) // int(weight.shape[1])


def is_grouped(func: tirx.PrimFunc) -> bool:
    """A plain grouped (groups > 1) 1-D, 2-D or 3-D convolution (pad, conv, epilogue)."""
    sch = s_tir.Schedule(func)
    block = single_conv(sch)
    return block is not None and conv_groups(sch, block) > 1


def strided_read(
    sch: s_tir.Schedule, block: s_tir.SBlockRV, prefix: str = PAD
) -> tuple[s_tir.SBlockRV, int, int, int] | None:
    """Where ``block`` reads its padded input (the producer whose name starts with
    ``prefix``) with a stride s > 1 along the innermost axis and s divides the padded width:
    (that producer, s, the kernel's width, the output's width); else None."""
    pad = producer_named(sch, block, prefix)
    if pad is None:
        return None
    padded = sch.get(pad).writes[0].source
    conv = sch.get(block)
    (region,) = [r for r in conv.reads if r.source.same_as(padded)]
    reduction = tirx.IterVar.CommReduce
    spatial = [iv for iv in conv.iter_vars if int(iv.iter_type) != reduction]
    kernel_width = int(
        [iv for iv in conv.iter_vars if int(iv.iter_type) == reduction][-1].dom.extent
    )
    coefficients = detect_linear_equation(region.region[-1].min, [spatial[-1].var])
    if len(coefficients) != 2 or not isinstance(coefficients[0], tirx.IntImm):
        return None
    stride, width = int(coefficients[0]), int(padded.shape[-1])
    if stride <= 1 or width % stride:
        return None
    return pad, stride, kernel_width, int(spatial[-1].dom.extent)


def store_as_phases(sch: s_tir.Schedule, pad: s_tir.SBlockRV, stride: int) -> None:
    """Store and compute ``pad``'s output as ``stride`` phases of its last axis:
    ``pad[..., w]`` -> ``pad[..., w % s, w // s]``; every reader is rewritten with it."""
    padded = sch.get(pad).writes[0].source

    def phases(*index):
        *outer, w = index
        return (*outer, w % stride, w // stride)

    sch.transform_layout(pad, ("write", 0), phases)
    index_dtype = str(sch.get(pad).iter_vars[0].var.ty)
    sch.transform_block_layout(
        pad, tirx.IndexMap.from_func(phases, ndim=len(padded.shape), index_dtype=index_dtype)
    )


def deinterleave_strided_input(
    sch: s_tir.Schedule, block: s_tir.SBlockRV, target: tvm.target.Target
) -> int:
    """Where the ``conv`` ``block`` reads its zero-padded input (``pad``) with a stride s > 1
    along the innermost axis and s divides the padded width (:func:`strided_read`), store
    and compute that input as s phases (:func:`store_as_phases`). The read at ``wo*s + kw``
    becomes phase ``kw % s`` at ``wo + kw // s`` (contiguous in the output position wo);
    the pad pass reads x with the stride instead, once. Only for kernels at least the
    profile's ``deinterleave_min_kernel`` wide or outputs at most its
    ``deinterleave_max_width`` wide (a 3x3 over wider maps ran slower so). Returns s (1:
    nothing changed). Evidence: benchmarks/results/thresholds.md#deinterleaved-depthwise."""
    found = strided_read(sch, block)
    if found is None:
        return 1
    pad, stride, kernel_width, out_width = found
    thresholds = profile(target)
    narrow = out_width <= thresholds.deinterleave_max_width
    if kernel_width < thresholds.deinterleave_min_kernel and not narrow:
        return 1
    store_as_phases(sch, pad, stride)
    return stride


def schedule_grouped(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule:
    """Register-tile the grouped convolution of ``func`` (see the module doc)."""
    sch = s_tir.Schedule(func)
    block = single_conv(sch)
    deinterleave_strided_input(sch, block, target)
    out = sch.get(block).writes[0].source
    shape = tuple(int(v) for v in out.shape)
    out_per_group = shape[1] // conv_groups(sch, block)
    lanes = vector_lanes(target, str(out.dtype))
    budget = schedule_knobs(sch, block).get("direct_accumulators", accumulator_budget(target))
    tiles = default_tiles(shape, lanes, budget, channel_limit=out_per_group, pad="tile")
    schedule_direct(sch, block, tiles)
    return sch
