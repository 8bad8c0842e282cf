"""CPU schedule of the sub-pixel transposed convolution (ops.conv_transpose_subpixel).

Each phase's weight gather and input window (crop of the shared padded input) are
inlined into its convolution (strided reads, no copies), each phase convolution is register-tiled by
:func:`convforge.schedules.cpu_direct.schedule_direct`, and the interleave is split by the
stride along every spatial axis with the phase loops unrolled, so each unrolled body
copies one phase and its phase test folds away.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from convforge.schedules.cpu_direct import accumulator_budget, default_tiles, schedule_direct
from convforge.targets import vector_lanes


def is_subpixel(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` is a sub-pixel transposed convolution."""
    sch = s_tir.Schedule(func)
    return any(
        sch.get(b).name_hint == "subpixel_interleave"
        for b in sch.get_child_blocks(sch.get_sblock("root"))
    )


def schedule_subpixel(func: tirx.PrimFunc, target: tvm.target.Target) -> tvm.IRModule:
    sch = s_tir.Schedule(func)
    strides = [
        int(v) for v in sch.get(sch.get_sblock("subpixel_interleave")).annotations["strides"]
    ]
    blocks = {sch.get(b).name_hint: b for b in sch.get_child_blocks(sch.get_sblock("root"))}
    for name, block in blocks.items():
        if name.startswith("subpixel_weight"):
            sch.compute_inline(block)
    budget = accumulator_budget(target)
    for name, block in blocks.items():
        if name == "conv" or (name.startswith("conv_") and name[5:].isdigit()):
            out = sch.get(block).writes[0].source
            lanes = vector_lanes(target, str(out.dtype))
            shape = tuple(int(v) for v in out.shape)
            schedule_direct(sch, block, default_tiles(shape, lanes, budget, pad="inline"))
    if "subpixel_pad" in blocks:
        loops = sch.get_loops(blocks["subpixel_pad"])
        sch.parallel(sch.fuse(*loops[:-1]))
    interleave = blocks["subpixel_interleave"]
    n, channels, *spatial = sch.get_loops(interleave)
    outer = []
    for loop, stride in zip(spatial, strides):
        if stride > 1:
            loop_outer, phase = sch.split(loop, [None, stride])
            sch.unroll(phase)
            outer.append(loop_outer)
        else:
            outer.append(loop)
    sch.parallel(sch.fuse(n, channels, outer[0]))
    return sch.mod
