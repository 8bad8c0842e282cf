"""The relax pipeline :func:`convforge.compile_model` builds with on CPU targets.

TVM's own CPU pipeline (``relax.backend.cpu_generic``) with one pass added after operator
fusion: every PrimFunc that is not already scheduled (convforge's kernels are) and is
element-wise gets :func:`convforge.schedules.cpu_elementwise.schedule_elementwise`.
GPU targets keep TVM's default pipeline (its dlight rules schedule such functions there).
``relax.nn.relu`` (an ONNX Relu that no convolution absorbed) is legalized as convforge's
relu, which keeps NaN as onnxruntime does (TVM's ``max(x, 0)`` makes it 0).
"""

from __future__ import annotations

import tvm
from tvm import relax, te
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

from convforge.ops.activation import activate
from convforge.schedules.cpu_elementwise import schedule_elementwise


def _legalize_relu(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """``relax.nn.relu`` as :func:`convforge.ops.activate`'s relu (NaN stays NaN)."""

    def relu(x: te.Tensor) -> te.Tensor:
        return te.compute(x.shape, lambda *i: activate(x(*i), "relu", str(x.dtype)), name="relu")

    return bb.call_te(relu, call.args[0], primfunc_name_hint="relu")


#: Ops legalized by convforge's computations rather than TVM's (before TVM's own LegalizeOps).
LEGALIZE = {"relax.nn.relu": _legalize_relu}


def schedule_tvm_elementwise(target: tvm.target.Target) -> tvm.transform.Pass:
    """Schedule the unscheduled element-wise PrimFuncs of a module for ``target``."""

    @tvm.transform.module_pass(opt_level=0, name="ScheduleTVMElementwise")
    def apply(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gvar, func in mod.functions.items():
            if not isinstance(func, tvm.tirx.PrimFunc):
                continue
            if func.attrs is not None and func.attrs.get("tir.is_scheduled", False):
                continue
            scheduled = schedule_elementwise(func, target)
            if scheduled is not None:
                updates[gvar] = scheduled.with_attr("tir.is_scheduled", True)
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    return apply


def relax_pipeline(target: tvm.target.Target) -> tvm.transform.Pass | str:
    """The pipeline for ``tvm.compile(mod, target, relax_pipeline=...)``."""
    if target.kind.name != "llvm":
        return "default"

    @tvm.transform.module_pass(opt_level=0, name="ConvforgeCPUPipeline")
    def pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            passes = [
                *cpu_generic.library_dispatch_passes(target),
                relax.transform.LegalizeOps(LEGALIZE),
                *cpu_generic.legalize_passes(target),
                schedule_tvm_elementwise(target),
                *cpu_generic.dataflow_lower_passes(target),
                *cpu_generic.finalize_passes(target),
            ]
            return tvm.transform.Sequential(passes)(mod)

    return pipeline
