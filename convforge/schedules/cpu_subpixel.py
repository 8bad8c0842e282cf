"""CPU schedule of the sub-pixel transposed convolution (ops.conv_transpose_subpixel).

Each phase's weight gather is inlined into its convolution (a strided read of the
original weight, no copy), each phase convolution is register-tiled by
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
            schedule_direct(sch, block, default_tiles(shape, lanes, budget, pad="global"))
    interleave = blocks["subpixel_interleave"]
    loops = sch.get_loops(interleave)
    sch.parallel(sch.fuse(*loops[:-1]))
    return sch.mod
