"""The relax pipeline :func:`convforge.compile_model` builds with on CPU targets.

TVM's own CPU pipeline (``relax.backend.cpu_generic``) with two passes added: after operator
fusion, every PrimFunc that is not already scheduled (convforge's kernels are) and is
element-wise gets :func:`convforge.schedules.cpu_elementwise.schedule_elementwise`; after the
dataflow lowering, the PrimFuncs no function calls any more are dropped
(:func:`drop_uncalled_prim_funcs`: the reshapes that became views).
GPU targets keep TVM's default pipeline (its dlight rules schedule such functions there).
``relax.nn.relu`` (an ONNX Relu that no convolution absorbed) is legalized as convforge's
relu, which keeps NaN as onnxruntime does (TVM's ``max(x, 0)`` makes it 0). The same holds
for ``relax.clip``, ``relax.maximum``/``relax.minimum``, the reductions ``relax.max``/``relax.min``
and ``relax.sign`` (TVM drops NaN or maps it to a bound or 0; onnxruntime keeps NaN): on float32
and float64 they are legalized here with NaN propagating (tested bit-wise with
:func:`convforge.ops.activation.is_nan`, which vectorizes); other dtypes keep TVM's legalization.
"""

from __future__ import annotations

from contextlib import nullcontext

import tvm
from tvm import relax, te, tirx
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

from convforge.ops.activation import _FLOAT_BITS, activate, is_nan
from convforge.schedules.cpu_elementwise import schedule_elementwise
from convforge.targets import is_cpu


def _legalize_relu(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """``relax.nn.relu`` as :func:`convforge.ops.activate`'s relu (NaN stays NaN)."""

    def relu(x: te.Tensor) -> te.Tensor:
        return te.compute(x.shape, lambda *i: activate(x(*i), "relu", str(x.dtype)), name="relu")

    return bb.call_te(relu, call.args[0], primfunc_name_hint="relu")


def _tvm_legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """``call`` legalized by TVM's own registered rule (dtypes with no NaN)."""
    return tvm.ir.Op.get(call.op.name).get_attr("FLegalize")(bb, call)


def _is_float(expr: relax.Expr) -> bool:
    return str(expr.ty.dtype) in _FLOAT_BITS


def nan_max(a: tirx.PrimExpr, b: tirx.PrimExpr, dtype: str) -> tirx.PrimExpr:
    """``max(a, b)``, NaN when either is NaN (onnxruntime's Max; TVM's drops NaN): ``b`` if
    it is NaN, else ``a > b`` keeps a NaN ``a`` (one bit test and two selects)."""
    return tirx.Select(is_nan(b, dtype), b, tirx.Select(b > a, b, a))


def nan_min(a: tirx.PrimExpr, b: tirx.PrimExpr, dtype: str) -> tirx.PrimExpr:
    """``min(a, b)``, NaN when either is NaN (onnxruntime's Min; TVM's drops NaN)."""
    return tirx.Select(is_nan(b, dtype), b, tirx.Select(b < a, b, a))


def _scalar_or_tensor(expr: relax.Expr, dtype: str):
    """A 0-d constant as a TIR constant of ``dtype`` (a simpler PrimFunc), else ``expr``."""
    if isinstance(expr, tvm.ir.expr.Constant) and expr.ty.ndim == 0:
        return tirx.const(expr.value.numpy().item(), dtype)
    return expr


def _broadcast_value(operand, out_shape: list, index: tuple) -> tirx.PrimExpr:
    """``operand`` (a tensor broadcast numpy-style to ``out_shape``, or a scalar) at ``index``."""
    if not isinstance(operand, te.Tensor):
        return operand
    offset = len(out_shape) - len(operand.shape)
    at = []
    for d, extent in enumerate(operand.shape):
        one = isinstance(extent, tirx.IntImm) and int(extent) == 1
        at.append(0 if one else index[offset + d])
    return operand(*at)


def _legalize_binary(combine, name: str):
    """``relax.maximum``/``relax.minimum`` (numpy broadcasting) with ``combine``."""

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        if not _is_float(call):
            return _tvm_legalize(bb, call)
        dtype = str(call.ty.dtype)
        out_shape = list(call.ty.shape.values)
        a, b = (_scalar_or_tensor(arg, dtype) for arg in call.args)

        def compute(*args):
            operands = iter(args)
            x = next(operands) if isinstance(a, relax.Expr) else a
            y = next(operands) if isinstance(b, relax.Expr) else b
            return te.compute(
                out_shape,
                lambda *i: combine(
                    _broadcast_value(x, out_shape, i), _broadcast_value(y, out_shape, i), dtype
                ),
                name=name,
            )

        tensors = [arg for arg in (a, b) if isinstance(arg, relax.Expr)]
        return bb.call_te(compute, *tensors, primfunc_name_hint=name)

    return legalize


def _legalize_clip(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """``relax.clip(x, lo, hi)`` as ``min(max(x, lo), hi)``, NaN kept (TVM's gives ``lo``)."""
    if not _is_float(call):
        return _tvm_legalize(bb, call)
    dtype = str(call.ty.dtype)

    def clip(x: te.Tensor, lo: tirx.PrimExpr, hi: tirx.PrimExpr) -> te.Tensor:
        lo, hi = tirx.Cast(dtype, lo), tirx.Cast(dtype, hi)
        return te.compute(
            x.shape,
            lambda *i: tirx.Select(is_nan(x(*i), dtype), x(*i), tirx.min(tirx.max(x(*i), lo), hi)),
            name="clip",
        )

    return bb.call_te(clip, *call.args, primfunc_name_hint="clip")


def _legalize_sign(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """``relax.sign``: -1, 0 or 1, NaN for NaN (TVM's gives 0)."""
    if not _is_float(call):
        return _tvm_legalize(bb, call)
    dtype = str(call.ty.dtype)

    def sign(x: te.Tensor) -> te.Tensor:
        one, zero = tirx.const(1, dtype), tirx.const(0, dtype)

        def value(v):
            signed = tirx.Select(v > zero, one, tirx.Select(v < zero, -one, zero))
            return tirx.Select(is_nan(v, dtype), v, signed)

        return te.compute(x.shape, lambda *i: value(x(*i)), name="sign")

    return bb.call_te(sign, call.args[0], primfunc_name_hint="sign")


def nan_reduce(x: te.Tensor, axis: list[int] | None, keepdims: bool, kind: str) -> te.Tensor:
    """``max``/``min`` (``kind``) of ``x`` over ``axis`` (None: all; negative counts from
    the end) as TVM's ``topi.max``/``topi.min`` shape it (``keepdims``: reduced axes kept
    with extent 1), but NaN when the slice holds a NaN (TVM's drop NaN): ONNX's reference
    semantics (numpy's). onnxruntime 1.32's is order-dependent (NaN for a row that starts
    with NaN, NaN dropped elsewhere). The identity is -inf (max) or +inf (min)."""
    dtype = str(x.dtype)
    ndim = len(x.shape)
    axes = sorted({int(a) % ndim for a in axis} if axis is not None else range(ndim))
    combine = nan_max if kind == "max" else nan_min
    start = float("-inf") if kind == "max" else float("inf")
    reducer = te.comm_reducer(
        lambda a, b: combine(a, b, dtype), lambda t: tirx.const(start, t), name=f"nan_{kind}"
    )
    kept = [d for d in range(ndim) if d not in axes]
    out_shape = (
        [1 if d in axes else x.shape[d] for d in range(ndim)]
        if keepdims
        else [x.shape[d] for d in kept]
    )

    def value(*index):
        rvars = {d: te.reduce_axis((0, x.shape[d]), name=f"k{d}") for d in axes}
        at = []
        outer = iter(index)
        for d in range(ndim):
            if d in rvars:
                at.append(rvars[d])
                if keepdims:
                    next(outer)
            else:
                at.append(next(outer))
        return reducer(x(*at), axis=list(rvars.values()))

    return te.compute(out_shape, value, name=f"reduce_{kind}")


def _legalize_reduce(kind: str):
    """``relax.max``/``relax.min`` with NaN propagating, same ``axis``/``keepdims`` attrs."""

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        x = call.args[0]
        if not _is_float(x):
            return _tvm_legalize(bb, call)
        axis = None if call.attrs.axis is None else [int(a) for a in call.attrs.axis]
        if any(
            isinstance(n, tirx.IntImm) and int(n) == 0
            for d, n in enumerate(x.ty.shape.values)
            if axis is None or d in {a % x.ty.ndim for a in axis}
        ):
            return _tvm_legalize(bb, call)  # an empty slice: TVM's result, as before
        return bb.call_te(
            lambda t: nan_reduce(t, axis, bool(call.attrs.keepdims), kind),
            x,
            primfunc_name_hint=f"reduce_{kind}",
        )

    return legalize


#: Ops legalized by convforge's computations rather than TVM's (before TVM's own LegalizeOps).
LEGALIZE = {
    "relax.nn.relu": _legalize_relu,
    "relax.clip": _legalize_clip,
    "relax.maximum": _legalize_binary(nan_max, "maximum"),
    "relax.minimum": _legalize_binary(nan_min, "minimum"),
    "relax.max": _legalize_reduce("max"),
    "relax.min": _legalize_reduce("min"),
    "relax.sign": _legalize_sign,
}


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


@relax.expr_functor.mutator
class _EmptyConstantsAsAllocations(relax.PyExprMutator):
    def visit_generic_const_(self, op: tvm.ir.expr.Constant) -> relax.Expr:
        value = op.value
        if not isinstance(value, tvm.runtime.Tensor) or 0 not in value.shape:
            return op
        # an allocation, which no later pass folds back into a constant (zeros would be):
        # with no elements, there is nothing to fill
        return relax.op.builtin.alloc_tensor(
            relax.ShapeExpr(list(value.shape)), str(value.dtype), runtime_device_index=0
        )


def empty_constants_as_allocations() -> tvm.transform.Pass:
    """Every constant tensor with no elements becomes an allocation of its shape: TVM
    0.27 writes such a constant into a library but cannot read it back (``Tensor::Load``
    fails on its 0 data bytes: "Invalid DLTensor file format"), e.g. the empty state of a
    kernel-size-1 CausalConvWithState."""

    @tvm.transform.module_pass(opt_level=0, name="EmptyConstantsAsAllocations")
    def apply(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mutator = _EmptyConstantsAsAllocations(mod)
                mod[gvar] = mutator.visit_expr(func)
        return mod

    return apply


def drop_uncalled_prim_funcs() -> tvm.transform.Pass:
    """Every PrimFunc that no relax function of the module refers to is removed.
    ``RewriteDataflowReshape`` turns each reshape in a dataflow block into a view
    (``vm.builtin.reshape``) but leaves its PrimFunc in the module, where codegen would still
    compile it (30 dead reshapes in the light ResNet-50: ~1 s of LLVM). The relax functions
    themselves are left as they are (TVM's ``DeadCodeElimination`` decides which PrimFuncs
    are reachable from them; its rewrite of their bodies is not kept)."""

    @tvm.transform.module_pass(opt_level=0, name="DropUncalledPrimFuncs")
    def apply(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        entries = [g.name_hint for g, f in mod.functions.items() if isinstance(f, relax.Function)]
        if not entries:
            return mod
        reachable = {
            g.name_hint for g in relax.transform.DeadCodeElimination(entries)(mod).functions
        }
        mod = mod.clone()  # the pass's input stays as it was
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, tirx.PrimFunc) and gvar.name_hint not in reachable:
                del mod[gvar]
        return mod

    return apply


def relax_pipeline(target: tvm.target.Target, profile=None) -> tvm.transform.Pass | str:
    """The pipeline for ``tvm.compile(mod, target, relax_pipeline=...)``; ``profile`` (a
    :class:`convforge.export.compile_profile.CompileProfile`) gets its seconds as
    'relax pipeline'."""
    if not is_cpu(target):
        return "default"

    @tvm.transform.module_pass(opt_level=0, name="ConvforgeCPUPipeline")
    def pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        timed = profile.phase("relax pipeline") if profile is not None else nullcontext()
        with target, timed:
            passes = [
                empty_constants_as_allocations(),
                *cpu_generic.library_dispatch_passes(target),
                relax.transform.LegalizeOps(LEGALIZE),
                *cpu_generic.legalize_passes(target),
                schedule_tvm_elementwise(target),
                *cpu_generic.dataflow_lower_passes(target),
                drop_uncalled_prim_funcs(),
                *cpu_generic.finalize_passes(target),
            ]
            return tvm.transform.Sequential(passes)(mod)

    return pipeline
