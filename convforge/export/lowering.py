"""ONNX node -> convforge kernel: the dispatch table behind :func:`convforge.compile_model`.

Each entry of :data:`LOWERINGS` maps an ONNX ``op_type`` to a function
``lower(ctx, node_name, inputs, attrs) -> relax.Expr`` that validates the node through
:mod:`convforge.shapes`, builds convforge's TE computation, schedules it (default
schedule, or the tuned one where a tuning database has a record) and emits a
``relax.call_tir`` of the scheduled PrimFunc. The table replaces TVM's own converters for
those op types inside TVM's relax ONNX importer (see :func:`convforge_converters`);
every other op type keeps TVM's importer and default legalization.

Adding an operator is one entry: e.g. ``"MaxPool": lower_max_pool`` once the pool TE op
exists. Fusion of bias, batch-norm and activations happens before import on the ONNX
graph (:mod:`convforge.export.fusion`): a fused node carries the attributes
``convforge_activation`` and ``convforge_fused`` read here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, te

from convforge import ops, shapes
from convforge.build import schedule_for
from convforge.export.codegen import OPT_LEVEL_ATTR
from convforge.ops.qconv import fits_pmaddubsw
from convforge.plan import ConvPlan, conv_transpose_op, plan_conv, plan_dense, plan_qconv
from convforge.schedules.tuning import RECORD_ATTR

#: Attribute names the fusion pass sets on a fused ONNX node.
ACTIVATION_ATTR = "convforge_activation"
FUSED_ATTR = "convforge_fused"
#: Set on a Conv whose 4th input (a tensor of its output's shape) is added to its output
#: before the activation (a residual connection).
RESIDUAL_ATTR = "convforge_residual"

#: Attributes of a Resize folded into the Conv it feeds (mode, coordinate_mode,
#: nearest_mode, and the full-rank scales or sizes).
RESIZE_ATTRS = {
    key: f"convforge_resize_{key}"
    for key in ("mode", "coordinate_mode", "nearest_mode", "scale", "size")
}

#: Attributes of a MaxPool folded into the Conv it follows (its windows tile the Conv's
#: output: strides == kernel_shape, no pads or dilation): the pool's node name, its
#: kernel_shape and ceil_mode.
MAX_POOL_ATTRS = {key: f"convforge_max_pool_{key}" for key in ("node", "kernel_shape", "ceil_mode")}

#: Set on a QLinearConv the fusion made of a QDQ Conv followed by a Clip: the Clip's real
#: (low, high), applied in the requantization (``convforge_activation`` 'relu' for a Relu).
CLIP_ATTR = "convforge_clip"

#: relax's kOpaque: keeps FuseOps from merging other ops into an already scheduled kernel.
_OPAQUE = 8


@dataclass(frozen=True)
class KernelRecord:
    """Which kernel serves one ONNX node of a compiled model."""

    node: str  #: ONNX node name
    op_type: str  #: ONNX op type
    kernel: str  #: convforge operator, e.g. ``conv2d``
    function: str  #: name of the scheduled PrimFunc in the compiled module
    schedule: str  #: ``default`` or ``tuned``
    fused: tuple[str, ...] = ()  #: ONNX nodes folded into this kernel (bias, BN, activation)
    macs: int = 0  #: multiply-accumulates of the direct algorithm


class KernelStep(NamedTuple):
    """One kernel of a node: ``compute(*placeholders)`` on placeholders of ``args``' shapes
    (its outputs the kernel's), reported as ``kernel`` with the nodes ``attrs`` says were
    fused into it and ``macs`` multiply-accumulates of the direct algorithm; ``opt_level``:
    LLVM's optimization level for it (:attr:`convforge.plan.ConvPlan.llvm_opt_level`; None:
    LLVM's default), stamped on the PrimFunc for :mod:`convforge.export.codegen`."""

    kernel: str
    attrs: dict
    args: Sequence[relax.Expr]
    compute: Callable[..., Sequence[te.Tensor]]
    macs: int = 0
    opt_level: int | None = None


@dataclass
class LoweringContext:
    """State shared by the lowerings of one model: target, block builder, records."""

    target: tvm.target.Target
    tuning_db: str | os.PathLike | None = None
    records: list[KernelRecord] = field(default_factory=list)
    #: Function name -> the PrimFunc before scheduling (what ``convforge tune --onnx`` tunes).
    functions: dict[str, tvm.tirx.PrimFunc] = field(default_factory=dict)
    bb: relax.BlockBuilder | None = None
    opset: int = 22
    progress: Callable[[str], None] | None = None
    #: ``api.ALGORITHMS``: 'winograd' takes Winograd for every convolution it applies to.
    algorithm: str = "auto"
    #: ``CompileProfile`` that gets 'kernel compute' and 'kernel schedule' seconds, or None.
    profile: Any = None
    #: Names of the PrimFuncs added to the module (the block builder adds a PrimFunc that is
    #: structurally equal to one already added under the first one's name: identical kernels
    #: of several nodes are one function, compiled once).
    added_functions: set[str] = field(default_factory=set)
    #: Recorded function name -> the plan of the Conv it computes (``convforge tune
    #: --onnx`` tunes its knobs).
    plans: dict[str, ConvPlan] = field(default_factory=dict)
    #: Called with (name, PrimFunc) for each new kernel function as it is added, or None:
    #: the CPU codegen builds it while the import goes on
    #: (:class:`convforge.export.codegen.EarlyBuilds`).
    prebuild: Callable[[str, tvm.tirx.PrimFunc], None] | None = None
    _scheduled: dict[int, tuple[tvm.IRModule, str]] = field(default_factory=dict)

    def emit_kernel(self, node: str, op_type: str, step: KernelStep) -> relax.Expr:
        """:meth:`add_kernel` of ``step``, then its ``call_tir`` on ``step.args``."""
        gvar, out_ty = self.add_kernel(node, op_type, step)
        return relax.call_tir(gvar, list(step.args), out_ty)

    def add_kernel(
        self, node: str, op_type: str, step: KernelStep, *, suffix: str = "", record: bool = True
    ) -> tuple[relax.GlobalVar, relax.TensorType | list[relax.TensorType]]:
        """Add the scheduled PrimFunc of ``step.compute`` on ``step.args``' shapes (its name
        the node's, plus ``suffix``); return it and its output type. ``record``: list it in
        :attr:`records` and :attr:`functions` (the kernel of the node, reported and tuned)."""
        kernel, attrs, args, compute, macs, opt_level = step
        start = time.perf_counter()
        placeholders = [
            te.placeholder(
                static_shape(a, f"input {i} of node {node!r}"), tensor_dtype(a), f"in{i}"
            )
            for i, a in enumerate(args)
        ]
        outputs = list(compute(*placeholders))
        func = te.create_prim_func([*placeholders, *outputs])
        built = time.perf_counter()
        scheduled, schedule_kind = self._schedule(func)
        if self.profile is not None:
            self.profile.add("kernel compute", built - start)
            self.profile.add("kernel schedule", time.perf_counter() - built)
        prim = (
            scheduled["main"]
            .without_attr("global_symbol")
            .with_attrs({"tir.is_scheduled": True, "op_pattern": _OPAQUE})
        )
        if opt_level is not None:
            prim = prim.with_attr(OPT_LEVEL_ATTR, opt_level)
        name = "cf_" + re.sub(r"\W", "_", node) + suffix
        gvar = self.bb.add_func(prim, name)
        if self.prebuild is not None and gvar.name_hint not in self.added_functions:
            self.prebuild(gvar.name_hint, prim)
        self.added_functions.add(gvar.name_hint)
        out_ty = [relax.TensorType([int(v) for v in t.shape], str(t.dtype)) for t in outputs]
        out_ty = out_ty[0] if len(out_ty) == 1 else out_ty
        if not record:
            return gvar, out_ty
        self.functions.setdefault(gvar.name_hint, func.with_attr("global_symbol", "main"))
        self.records.append(
            KernelRecord(
                node, op_type, kernel, gvar.name_hint, schedule_kind, fused_nodes(attrs), macs
            )
        )
        if self.progress is not None:
            self.progress(f"kernel {len(self.records)}: {node} -> {kernel} ({schedule_kind})")
        return gvar, out_ty

    def tuning_scope(self) -> contextlib.AbstractContextManager:
        """``tuning_db`` made the active tuning database (nothing changes without one)."""
        if self.tuning_db is None:
            return contextlib.nullcontext()
        from convforge.schedules import tuning

        return tuning.use_tuning_db(self.tuning_db)

    def _schedule(self, func: tvm.tirx.PrimFunc) -> tuple[tvm.IRModule, str]:
        """Schedule ``func`` once per structure (repeated layers share the result)."""
        key = tvm_ffi.structural_hash(func)
        if key not in self._scheduled:
            self._scheduled[key] = self._schedule_new(func)
        return self._scheduled[key]

    def _schedule_new(self, func: tvm.tirx.PrimFunc) -> tuple[tvm.IRModule, str]:
        """``schedule_for`` (which takes a tuned record where an active tuning database has
        one), with ``tuning_db`` made the active database while it runs."""
        func = func.with_attr("global_symbol", "main")
        with self.tuning_scope():
            mod = schedule_for(func, self.target)
        tuned = mod.attrs is not None and RECORD_ATTR in mod.attrs
        return mod, "tuned" if tuned else "default"


def static_shape(expr: relax.Expr, what: str) -> tuple[int, ...]:
    """The static shape of a relax tensor expression (ValueError when a dimension is symbolic)."""
    shape = expr.ty.shape
    if shape is None:
        raise ValueError(f"{what} has an unknown shape; give input_shapes")
    dims = []
    for v in shape.values:
        if not isinstance(v, tvm.tirx.IntImm):
            raise ValueError(f"{what} has symbolic dimension {v}; give input_shapes")
        dims.append(int(v))
    return tuple(dims)


def tensor_dtype(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def fused_nodes(attrs: dict) -> tuple[str, ...]:
    return tuple(_text(v) for v in attrs.get(FUSED_ATTR, ()))


def activation_of(attrs: dict) -> str | None:
    value = attrs.get(ACTIVATION_ATTR)
    return None if value is None else _text(value)


def onnx_padding(attrs: dict, ndim: int) -> shapes.PaddingArg:
    """ONNX ``auto_pad``/``pads`` -> a convforge padding argument."""
    auto_pad = _text(attrs.get("auto_pad", b"NOTSET")).upper()
    if auto_pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        return auto_pad.lower()
    if auto_pad != "NOTSET":
        raise ValueError(
            f"auto_pad must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, got {auto_pad}"
        )
    pads = attrs.get("pads", (0,) * (2 * ndim))
    return tuple((int(pads[i]), int(pads[i + ndim])) for i in range(ndim))


def _node_name(attrs: dict) -> str:
    return attrs["tvm_custom"]["name"]


def lower_conv(ctx: LoweringContext, inputs: list, attrs: dict) -> relax.Expr:
    """ONNX Conv (1-D, 2-D, 3-D, any auto_pad, groups, bias, fused residual and activation,
    a folded Resize, and a fused max pool: inside the convolution's kernel where the plan
    allows, else as its own kernel after the convolution's), as
    :func:`convforge.plan.plan_conv` plans it: this function parses the node and emits
    the plan's slice, reshapes, packed weight and kernel call."""
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    residual = inputs[3] if RESIDUAL_ATTR in attrs else None
    node = _node_name(attrs)
    x_shape, w_shape = static_shape(x, f"Conv {node!r} input"), static_shape(w, "weight")
    nd = len(x_shape) - 2
    resize_geom = None
    if RESIZE_ATTRS["mode"] in attrs:  # a Resize folded into this Conv
        by_scale = RESIZE_ATTRS["scale"] in attrs
        values = attrs[RESIZE_ATTRS["scale" if by_scale else "size"]]
        resize_geom = shapes.resize_geometry(
            x_shape, mode=_text(attrs[RESIZE_ATTRS["mode"]]),
            coordinate_mode=_text(attrs[RESIZE_ATTRS["coordinate_mode"]]),
            nearest_mode=_text(attrs[RESIZE_ATTRS["nearest_mode"]]),
            **({"scale": [float(v) for v in values[2:]]} if by_scale else {"size": [int(v) for v in values[2:]]}),
        )  # fmt: skip
    geom = shapes.conv_geometry(
        x_shape if resize_geom is None else resize_geom.out_shape, w_shape,
        stride=attrs.get("strides", 1), dilation=attrs.get("dilations", 1),
        padding=onnx_padding(attrs, nd), groups=int(attrs.get("group", 1)),
        bias_shape=None if bias is None else static_shape(bias, "bias"),
    )  # fmt: skip
    pool_node, pool_geom = _fused_max_pool(attrs, geom)
    constant = isinstance(w, tvm.ir.expr.Constant)
    with ctx.tuning_scope():  # a knob record of the tuning database changes the plan
        plan = plan_conv(
            geom, tensor_dtype(x), ctx.target, constant_weight=constant,
            algorithm=ctx.algorithm, strict=False, pool=pool_geom, resize=resize_geom,
            activation=activation_of(attrs), bias=bias is not None,
            residual=residual is not None,
        )  # fmt: skip
    recorded = len(ctx.records)
    x, unpacked, residual = _kernel_inputs(ctx, plan, x, w, residual)
    w = _kernel_weight(ctx, plan, unpacked)
    args = [a for a in (x, w, bias, residual) if a is not None]
    if plan.pool is None and pool_node is not None:  # the pool runs as its own kernel
        unpooled = tuple(name for name in fused_nodes(attrs) if name != pool_node)
        attrs = {**attrs, FUSED_ATTR: unpooled}
    step = KernelStep(
        plan.label, attrs, args, _plan_compute(plan), plan.kernel_geometry.macs,
        plan.llvm_opt_level,
    )  # fmt: skip
    if plan.needs_finite_check:  # the direct kernel where x is not finite
        direct = plan.direct()
        steps: list[KernelStep] = [
            KernelStep(
                f"conv{nd}d (direct)", {}, [x, _kernel_weight(ctx, direct, unpacked), *args[2:]],
                _plan_compute(direct), direct.kernel_geometry.macs, direct.llvm_opt_level,
            )
        ]  # fmt: skip
        if plan.pool is not None and direct.pool is None:
            pool = plan.pool
            steps.append(KernelStep("max_pool (direct)", {}, [None], lambda t: [ops.pool(t, pool)]))
        out = _finite_or_direct(ctx, node, x, step, steps)
    else:
        out = ctx.emit_kernel(node, "Conv", step)
    for kernel_record in ctx.records[recorded:]:
        ctx.plans.setdefault(kernel_record.function, plan)
    if plan.reshapes:
        out = relax.op.reshape(ctx.bb.emit(out), plan.geometry.out_shape)
    if pool_node is None or plan.pool is not None:
        return out
    return _emit_pool(ctx, pool_node, "MaxPool", ctx.bb.emit(out), pool_geom)


def _kernel_inputs(
    ctx: LoweringContext,
    plan: ConvPlan,
    x: relax.Expr,
    w: relax.Expr,
    residual: relax.Expr | None,
) -> tuple[relax.Expr, relax.Expr, relax.Expr | None]:
    """x sliced by the plan's ``subsample`` and x, w and the residual reshaped to its kernel
    geometry (w unpacked: a constant w stays a constant)."""
    bb, geom = ctx.bb, plan.kernel_geometry
    if plan.subsample is not None:
        nd = plan.geometry.ndim
        in_size, axes = list(plan.geometry.in_size), list(range(2, 2 + nd))
        x = bb.emit(relax.op.strided_slice(x, axes, [0] * nd, in_size, list(plan.subsample)))
    if not plan.reshapes:
        return x, w, residual
    x = bb.emit(relax.op.reshape(x, geom.x_shape))
    if isinstance(w, tvm.ir.expr.Constant):
        w = relax.const(w.value.numpy().reshape(geom.w_shape))
    else:
        w = bb.emit(relax.op.reshape(w, geom.w_shape))
    if residual is not None:
        residual = bb.emit(relax.op.reshape(residual, geom.out_shape))
    return x, w, residual


def _kernel_weight(ctx: LoweringContext, plan: ConvPlan, w: relax.Expr) -> relax.Expr:
    """w as the plan's kernel reads it: a constant packed once, here (not on every
    inference); any other w as it is."""
    if not plan.packs:
        return w
    return relax.const(plan.pack(w.value.numpy()))


def _plan_compute(plan: ConvPlan) -> Callable[..., list[te.Tensor]]:
    """The ``compute(tx, tw, [tb], [tr])`` of :meth:`LoweringContext.add_kernel` for
    ``plan`` (bias and residual present as the plan says)."""

    def compute(tx, tw, *rest):
        tb = rest[0] if plan.bias else None
        tr = rest[-1] if plan.residual else None
        return [plan.compute(tx, tw, tb, tr)]

    return compute


def _finite_or_direct(
    ctx: LoweringContext, node: str, x: relax.Expr, winograd: KernelStep, direct: list[KernelStep]
) -> relax.Expr:
    """A call of a relax function that runs the Winograd kernel ``winograd`` where x is
    finite and the ``direct`` kernels where x holds a NaN or an infinity
    (:func:`convforge.ops.winograd.nonfinite_flag`, then a ``relax.If``): Winograd's
    outputs are non-finite only where the direct convolution's are. The Winograd kernel is
    the node's (recorded, reported, tuned); the check and the direct kernels are not."""
    args = winograd.args
    wino_gv, wino_ty = ctx.add_kernel(node, "Conv", winograd)
    size = math.prod(static_shape(x, "x"))
    flat = relax.Var("x_flat", relax.TensorType([size], tensor_dtype(x)))
    flag = KernelStep("nonfinite_flag", {}, [flat], lambda t: [ops.winograd.nonfinite_flag(t)])
    flag_gv, flag_ty = ctx.add_kernel(node, "Conv", flag, suffix="_nonfinite", record=False)
    direct_calls = []
    for i, step in enumerate(direct):
        if step.args == [None]:  # the previous step's output
            _, prev_ty = direct_calls[-1]
            step = step._replace(args=[relax.Var("prev", prev_ty)])
        gv_ty = ctx.add_kernel(node, "Conv", step, suffix=f"_direct{i or ''}", record=False)
        direct_calls.append(gv_ty)
    inputs: list[relax.Expr] = []  # the function's parameters: every non-constant argument
    for a in [*args, *(a for step in direct for a in step.args if a is not None)]:
        if not isinstance(a, tvm.ir.expr.Constant) and not any(a.same_as(b) for b in inputs):
            inputs.append(a)
    params = [relax.Var(f"arg{i}", a.ty) for i, a in enumerate(inputs)]

    def bound(values):
        return [next((p for p, b in zip(params, inputs) if b.same_as(a)), a) for a in values]

    sub = relax.BlockBuilder()
    with sub.function("main", params):
        with sub.dataflow():  # where a reshape is a view, not a copy
            xf = sub.emit(relax.op.reshape(bound([x])[0], [size]))
            flag = sub.emit_output(relax.call_tir(flag_gv, [xf], flag_ty))
        then = None
        for (gv, ty), step in zip(direct_calls, direct):
            step_args = [then] if step[2] == [None] else bound(step[2])
            then = relax.call_tir(gv, step_args, ty)
        other = relax.call_tir(wino_gv, bound(args), wino_ty)
        y = sub.emit(relax.If(flag, then, other))
        sub.emit_func_output(y)
    func = sub.get()["main"].without_attr("global_symbol")  # private to the module
    gvar = ctx.bb.add_func(func, "cf_" + re.sub(r"\W", "_", node) + "_finite_or_direct")
    return relax.Call(gvar, inputs)


def _fused_max_pool(
    attrs: dict, conv: shapes.ConvGeometry
) -> tuple[str | None, shapes.PoolGeometry | None]:
    """The node name and geometry of the MaxPool fused into a Conv of geometry ``conv``
    (:data:`MAX_POOL_ATTRS`), or (None, None)."""
    if MAX_POOL_ATTRS["node"] not in attrs:
        return None, None
    kernel = tuple(int(k) for k in attrs[MAX_POOL_ATTRS["kernel_shape"]])
    geom = shapes.pool_geometry(
        conv.out_shape, kernel, kind="max", stride=kernel,
        ceil_mode=bool(attrs[MAX_POOL_ATTRS["ceil_mode"]]),
    )  # fmt: skip
    return _text(attrs[MAX_POOL_ATTRS["node"]]), geom


def lower_conv_transpose(ctx: LoweringContext, inputs: list, attrs: dict) -> relax.Expr:
    """ONNX ConvTranspose (output_shape, output_padding, every auto_pad, groups with bias)."""
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    node = _node_name(attrs)
    x_shape, w_shape = static_shape(x, f"ConvTranspose {node!r} input"), static_shape(w, "weight")
    nd = len(x_shape) - 2
    auto_pad = _text(attrs.get("auto_pad", b"NOTSET")).upper()
    padding = onnx_padding(attrs, nd)
    if auto_pad == "VALID":
        padding = 0
    output_shape = attrs.get("output_shape")
    geom = shapes.conv_transpose_geometry(
        x_shape, w_shape, stride=attrs.get("strides", 1), dilation=attrs.get("dilations", 1),
        padding=padding, output_padding=attrs.get("output_padding", 0),
        output_shape=None if output_shape is None else tuple(int(v) for v in output_shape),
        groups=int(attrs.get("group", 1)),
        bias_shape=None if bias is None else static_shape(bias, "bias"),
    )  # fmt: skip
    activation = activation_of(attrs)

    def compute(tx, tw, tb=None):
        return [conv_transpose_op(geom, ctx.target)(tx, tw, geom, ops.Epilogue(tb, activation))]

    args = [x, w] if bias is None else [x, w, bias]
    step = KernelStep(f"conv_transpose{nd}d", attrs, args, compute, geom.macs)
    return ctx.emit_kernel(node, "ConvTranspose", step)


def lower_causal_conv_with_state(ctx: LoweringContext, inputs: list, attrs: dict) -> relax.Expr:
    """ONNX CausalConvWithState (opset 27) -> ``ops.causal_conv_with_state``.

    Inputs input (B, C, L), weight (C, 1, K), bias (C,)?, past_state (B, C, K-1)?; outputs
    output (B, C, L) and present_state, the last K-1 samples of [past_state, input].
    """
    node = _node_name(attrs)
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    past = inputs[3] if len(inputs) > 3 else None
    x_shape = static_shape(x, f"CausalConvWithState {node!r} input")
    w_shape = static_shape(w, "weight")
    activation = _text(attrs.get("activation", b"none")).lower()
    args = [a for a in (x, w, bias, past) if a is not None]

    def compute(tx, tw, *rest):
        tb = rest[0] if bias is not None else None
        state = rest[-1] if past is not None else None
        return list(ops.causal_conv_with_state(tx, tw, tb, state, activation))

    macs = math.prod(x_shape) * w_shape[-1]
    step = KernelStep("causal_conv_with_state", attrs, args, compute, macs)
    return ctx.emit_kernel(node, "CausalConvWithState", step)


def lower_gemm(ctx: LoweringContext, inputs: list, attrs: dict) -> relax.Expr | None:
    """ONNX Gemm ``A (N, K) @ B + C`` with a constant B, as a convolution over packed B
    (:func:`convforge.plan.plan_dense`); TVM permutes the kernel's (O'/W, N, W) to (N, O'),
    slices and adds C. Declines (TVM's converter takes the node) for transA, alpha/beta != 1 or a non-constant B.
    """
    b = inputs[1]
    if (
        attrs.get("transA", 0)
        or attrs.get("alpha", 1.0) != 1.0
        or attrs.get("beta", 1.0) != 1.0
        or not isinstance(b, tvm.ir.expr.Constant)
    ):
        return None
    node = _node_name(attrs)
    a = inputs[0]
    c = inputs[2] if len(inputs) > 2 else None
    n, k = static_shape(a, f"Gemm {node!r} A")
    matrix = b.value.numpy()
    w = matrix if attrs.get("transB", 0) else matrix.T  # (O, K)
    plan = plan_dense((n, k), w.shape, tensor_dtype(a), ctx.target)
    geom, padded, out_features = plan.kernel_geometry, plan.padded, plan.out_features
    bb = ctx.bb
    args = [bb.emit(relax.const(plan.pack(w))), bb.emit(relax.op.reshape(a, geom.w_shape))]

    def compute(tx, tw):
        return [plan.compute(tx, tw)]

    step = KernelStep(plan.label, attrs, args, compute, geom.macs)
    out = bb.emit(ctx.emit_kernel(node, "Gemm", step))
    if n > 1:
        out = bb.emit(relax.op.permute_dims(out, [1, 0, 2, 3]))
    out = relax.op.reshape(out, (n, padded))
    if padded != out_features:
        out = relax.op.strided_slice(bb.emit(out), axes=[1], begin=[0], end=[out_features])
    return out if c is None else relax.op.add(bb.emit(out), c)


def _constant(expr: relax.Expr | None) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None


#: Attributes of ONNX Resize (opset 10-19) that :func:`lower_resize` honours; any other
#: attribute is refused (TVM's converter would drop it).
RESIZE_ATTRIBUTES = frozenset(
    {
        "mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a",
        "exclude_outside", "extrapolation_value", "antialias", "axes",
        "keep_aspect_ratio_policy",
    }
)  # fmt: skip


def refuse(op_type: str, node: str, what: str, why: str) -> ValueError:
    """The one-line error of a node convforge cannot run exactly as onnxruntime does."""
    return ValueError(f"node {node!r} ({op_type}): {what}: {why}")


def _node_geometry(
    op_type: str, node: str, build: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """``build(*args, **kwargs)`` (a ``shapes`` geometry constructor) for ONNX node ``node``;
    its ValueError becomes :func:`refuse`'s, naming the node and the rule broken."""
    try:
        return build(*args, **kwargs)
    except ValueError as error:
        raise refuse(op_type, node, "attributes", str(error)) from None


def _unknown_attributes(attrs: dict, known: frozenset[str]) -> list[str]:
    return sorted(k for k in attrs if k != "tvm_custom" and k not in known)


def _constant_input(
    op_type: str, node: str, expr: relax.Expr | None, name: str
) -> np.ndarray | None:
    """The value of an optional constant input (None when absent); refuses a computed one."""
    if expr is None:
        return None
    value = _constant(expr)
    if value is None:
        raise refuse(
            op_type, node, f"input {name!r}",
            "must be a constant (an initializer or Constant node): convforge compiles the "
            "output shape and the interpolation weights ahead of time",
        )  # fmt: skip
    return value


def _leading_identity(
    x_shape: Sequence[int], out_shape: Sequence[int], scales: Sequence[float], roi
) -> int:
    """How many leading axes a resize leaves untouched (same length, scale 1, full roi)."""
    lead = 0
    for n, m, sc, r in zip(x_shape, out_shape, scales, roi):
        if n != m or np.float32(sc) != np.float32(1.0) or r != (0.0, 1.0):
            break
        lead += 1
    return lead


def emit_resize(
    ctx: LoweringContext,
    node: str,
    op_type: str,
    x: relax.Expr,
    out_shape: Sequence[int],
    scales: Sequence[float],
    *,
    by_size: bool,
    roi: Sequence[tuple[float, float]] | None = None,
    **attributes,
) -> relax.Expr:
    """The convforge resize of ``x`` (any rank) to ``out_shape`` with full-rank float32
    ``scales`` (the coordinate transform's; ``by_size``: the sizes were given) and
    ``roi`` (full rank, 'tf_crop_and_resize' only). Leading untouched axes fold into
    (N, C); at most 3 axes after them may change (ValueError otherwise). ``attributes``
    go to :func:`convforge.shapes.resize_geometry`."""
    x_shape = static_shape(x, f"{op_type} {node!r} input")
    rank = len(x_shape)
    full_roi = list(roi) if roi is not None else [(0.0, 1.0)] * rank
    lead = min(_leading_identity(x_shape, out_shape, scales, full_roi), rank - 1)
    if rank == 0 or rank - lead > 3:
        raise refuse(
            op_type, node, f"input of shape {tuple(x_shape)} resized to {tuple(out_shape)}",
            "convforge resizes at most 3 axes, all after every unchanged leading axis",
        )  # fmt: skip
    inner = (1, math.prod(x_shape[:lead]), *x_shape[lead:]) if lead != 2 else tuple(x_shape)
    spatial = slice(lead, rank)  # the axes of ``inner`` after (N, C)
    if math.prod(out_shape) >= 2**31:
        raise refuse(
            op_type, node, f"output shape {tuple(out_shape)}",
            f"{math.prod(out_shape)} elements need 64-bit indices, which convforge's kernels lack",
        )  # fmt: skip
    dtype = tensor_dtype(x)
    if attributes.get("mode", "nearest") != "nearest" and not dtype.startswith("float"):
        raise refuse(
            op_type, node, f"mode={attributes['mode']!r} on {dtype}",
            "interpolating integers needs onnxruntime's rounding, which convforge lacks",
        )  # fmt: skip
    geom = _node_geometry(
        op_type, node, shapes.resize_geometry, inner, size=list(out_shape[spatial]),
        roi=full_roi[spatial] if roi is not None else None, **attributes,
    )  # fmt: skip
    if not by_size:  # the given scales drive the coordinate transform
        geom = dataclasses.replace(geom, scale=tuple(shapes.as_float32(v) for v in scales[spatial]))
    if tuple(inner) != tuple(x_shape):
        x = ctx.bb.emit(relax.op.reshape(x, inner))
    step = KernelStep("resize", {}, [x], lambda tx: [ops.resize(tx, geom)])
    out = ctx.emit_kernel(node, op_type, step)
    if tuple(inner) != tuple(x_shape):
        out = relax.op.reshape(ctx.bb.emit(out), list(out_shape))
    return out


def _text_attr(op_type: str, node: str, attrs: dict, name: str, default: str, allowed) -> str:
    value = _text(attrs.get(name, default))
    if value not in allowed:
        raise refuse(op_type, node, f"{name}={value!r}", f"must be one of {sorted(allowed)}")
    return value


def lower_resize(ctx: LoweringContext, inputs: list, attrs: dict) -> relax.Expr:
    """ONNX Resize (opset 10-19+) with onnxruntime's semantics, in convforge's own kernel
    (:func:`convforge.ops.resize`): every mode and coordinate mode, ``axes``,
    ``keep_aspect_ratio_policy`` (with sizes: one scale for all of ``axes``, the min or
    the max of ``sizes/in``, output ``round_half_up(in * scale)``), ``antialias``
    (linear/cubic), ``cubic_coeff_a``, ``exclude_outside``, ``extrapolation_value``.

    TVM's own converter resizes by ``out/in`` instead of the given scale and ignores
    ``antialias``; it never takes a Resize. Refused with a one-line ValueError: a roi,
    scales or sizes computed at run time (a roi too under 'tf_crop_and_resize'), scales
    together with sizes, an unknown attribute or value, a resize of more than 3 axes (after
    the unchanged leading ones), an output past int32 indexing, linear/cubic on integers.
    Resize-10 'nearest' rounds as onnxruntime's 'simple' mode (down when upscaling, up when
    downscaling; mixed axes run as two resizes).
    """
    op = "Resize"
    node = _node_name(attrs)
    x = inputs[0]
    x_shape = static_shape(x, f"Resize {node!r} input")
    rank = len(x_shape)
    unknown = _unknown_attributes(attrs, RESIZE_ATTRIBUTES)
    if unknown:
        raise refuse(op, node, f"attribute {unknown[0]!r}", "is not an attribute convforge knows")
    extra = [inputs[i] if len(inputs) > i else None for i in range(1, 4)]
    if ctx.opset < 11:  # Resize-10: (X, scales)
        extra = [None, extra[0], None]
    mode = _text_attr(op, node, attrs, "mode", "nearest", shapes.RESIZE_MODES)
    coordinate_modes = {*shapes.COORDINATE_MODES, shapes.CROP_COORDINATE_MODE}
    coordinate_mode = _text_attr(
        op, node, attrs, "coordinate_transformation_mode",
        "half_pixel" if ctx.opset >= 11 else "asymmetric", coordinate_modes,
    )  # fmt: skip
    if coordinate_mode != shapes.CROP_COORDINATE_MODE:
        extra[0] = None  # only tf_crop_and_resize reads the roi: it may be computed
    roi_values, scale_values, size_values = (
        _constant_input(op, node, e, name) for e, name in zip(extra, ("roi", "scales", "sizes"))
    )
    nearest_mode = _text_attr(
        op, node, attrs, "nearest_mode", "round_prefer_floor", shapes.NEAREST_MODES
    )
    policy = _text_attr(
        op, node, attrs, "keep_aspect_ratio_policy", "stretch",
        {"stretch", "not_larger", "not_smaller"},
    )  # fmt: skip
    axes = [int(a) for a in attrs.get("axes", range(rank))]
    if any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) != len(axes):
        raise refuse(op, node, f"axes={axes}", f"must be distinct axes of a rank-{rank} input")
    axes = [a % rank for a in axes]
    by_size = scale_values is None or not scale_values.size
    given = size_values if by_size else scale_values
    both = not by_size and size_values is not None and size_values.size
    if given is None or not given.size or both:
        raise refuse(op, node, "scales and sizes", "give exactly one of them (non-empty)")
    if given.size != len(axes):
        raise refuse(
            op, node, "scales" if not by_size else "sizes",
            f"must have {len(axes)} entries (one per axis), got {given.size}",
        )  # fmt: skip
    scales = [1.0] * rank
    out_shape = list(x_shape)
    if not by_size:
        for a, v in zip(axes, given.tolist()):
            if not (math.isfinite(v) and v > 0):
                raise refuse(op, node, f"scales={given.tolist()}", "must be positive and finite")
            scales[a] = shapes.as_float32(v)
            out_shape[a] = shapes.resize_output_size(x_shape[a], v)
    else:
        sizes = [int(v) for v in given.tolist()]
        if any(v <= 0 for v in sizes):
            raise refuse(op, node, f"sizes={sizes}", "must be positive")
        if policy == "stretch":
            for a, v in zip(axes, sizes):
                out_shape[a] = v
        else:
            f32 = np.float32
            ratios = [f32(v) / f32(x_shape[a]) for a, v in zip(axes, sizes)]
            common = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                out_shape[a] = math.floor(float(common) * x_shape[a] + 0.5)
                scales[a] = float(common)
            by_size = False  # the common scale drives the coordinate transform
    if any(v <= 0 for v in out_shape):
        raise refuse(op, node, f"output shape {out_shape}", "has an empty axis")
    if by_size:
        scales = [float(np.float32(m) / np.float32(n)) for m, n in zip(out_shape, x_shape)]
    roi = None
    if coordinate_mode == shapes.CROP_COORDINATE_MODE:
        if roi_values is None or roi_values.size != 2 * len(axes):
            raise refuse(
                op,
                node,
                "roi",
                f"tf_crop_and_resize needs {2 * len(axes)} values (start, end per axis)",
            )
        k = len(axes)
        roi = [(0.0, 1.0)] * rank
        for i, a in enumerate(axes):
            roi[a] = (float(roi_values[i]), float(roi_values[i + k]))
    if attrs.get("antialias", 0) and mode == "nearest":
        raise refuse(op, node, "antialias=1", "is defined for modes 'linear' and 'cubic' only")
    if ctx.opset < 11 and mode == "nearest":  # onnxruntime's Resize-10 'simple' rounding:
        # per axis down when upscaling, up when downscaling; nearest is separable, so mixed
        # axes run as two resizes, the downscaled axes first
        down = [np.float32(sc) < np.float32(1.0) for sc in scales]
        if any(down) and not all(d for d, m, n in zip(down, out_shape, x_shape) if m != n):
            partial = [m if d else n for d, m, n in zip(down, out_shape, x_shape)]
            x = ctx.bb.emit(
                emit_resize(
                    ctx, f"{node}_down", op, x, partial,
                    [sc if d else 1.0 for d, sc in zip(down, scales)], by_size=False,
                    mode=mode, coordinate_mode=coordinate_mode, nearest_mode="ceil",
                )
            )  # fmt: skip
            scales = [1.0 if d else sc for d, sc in zip(down, scales)]
            down = [False] * rank
        nearest_mode = "ceil" if any(down) else "floor"
    return emit_resize(
        ctx, node, op, x, out_shape, scales, by_size=by_size, roi=roi,
        mode=mode, coordinate_mode=coordinate_mode, nearest_mode=nearest_mode,
        cubic_coeff_a=float(attrs.get("cubic_coeff_a", -0.75)),
        exclude_outside=bool(attrs.get("exclude_outside", 0)),
        extrapolation_value=float(attrs.get("extrapolation_value", 0.0)),
        antialias=bool(attrs.get("antialias", 0)),
    )  # fmt: skip


def lower_upsample(ctx: LoweringContext, inputs: list, attrs: dict) -> relax.Expr:
    """ONNX Upsample (deprecated; opset 7: ``scales`` attribute, opset 9: ``scales`` input)
    as the equivalent Resize, as onnxruntime runs it: 'asymmetric' coordinates, nearest
    rounds down (Upsample's scales are >= 1), 'linear' interpolates. Refused: a computed ``scales`` input, a scale below 1 (ONNX requires
    >= 1), an unknown mode or attribute."""
    op = "Upsample"
    node = _node_name(attrs)
    x = inputs[0]
    x_shape = static_shape(x, f"Upsample {node!r} input")
    unknown = _unknown_attributes(attrs, frozenset({"mode", "scales"}))
    if unknown:
        raise refuse(op, node, f"attribute {unknown[0]!r}", "is not an attribute convforge knows")
    mode = _text_attr(op, node, attrs, "mode", "nearest", {"nearest", "linear"})
    if "scales" in attrs:
        values = [float(v) for v in attrs["scales"]]
    else:
        given = _constant_input(op, node, inputs[1] if len(inputs) > 1 else None, "scales")
        if given is None:
            raise refuse(
                op, node, "scales", "missing (an attribute before opset 9, an input since)"
            )
        values = [float(v) for v in given.ravel()]
    if len(values) != len(x_shape):
        raise refuse(
            op, node, f"scales={values}", f"must have {len(x_shape)} entries (one per axis)"
        )
    if any(not (math.isfinite(v) and v >= 1) for v in values):
        raise refuse(op, node, f"scales={values}", "must be finite and >= 1 (ONNX Upsample)")
    out_shape = [shapes.resize_output_size(n, v) for n, v in zip(x_shape, values)]
    return emit_resize(
        ctx, node, op, x, out_shape, [shapes.as_float32(v) for v in values], by_size=False,
        mode="nearest" if mode == "nearest" else "linear", coordinate_mode="asymmetric",
        nearest_mode="floor",
    )  # fmt: skip


#: Attributes of ONNX MaxPool / AveragePool that :func:`lower_pool` honours.
POOL_ATTRIBUTES = frozenset(
    {"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides", FUSED_ATTR}
)


def lower_pool(ctx: LoweringContext, inputs: list, attrs: dict, kind: str) -> relax.Expr:
    """ONNX MaxPool / AveragePool / LpPool in convforge's kernels: every auto_pad,
    ceil_mode, dilations (AveragePool-19 included), count_include_pad, LpPool's ``p``,
    and MaxPool's ``Indices`` output with either ``storage_order``
    (:func:`convforge.ops.max_pool_with_indices`). Refused with a one-line ValueError
    (TVM's converter never takes the node): an unknown attribute, a bad value, and
    ``auto_pad`` SAME_UPPER/SAME_LOWER with a dilation > 1, where onnxruntime pads as if
    the kernel were undilated (its output shape contradicts ONNX's shape inference)."""
    op = {"max": "MaxPool", "avg": "AveragePool", "lp": "LpPool"}[kind]
    node = _node_name(attrs)
    known = POOL_ATTRIBUTES | {
        {"max": "storage_order", "avg": "count_include_pad", "lp": "p"}[kind]
    }
    unknown = _unknown_attributes(attrs, known)
    if unknown:
        raise refuse(op, node, f"attribute {unknown[0]!r}", "is not an attribute convforge knows")
    if "kernel_shape" not in attrs:
        raise refuse(op, node, "kernel_shape", "is required")
    x = inputs[0]
    x_shape = static_shape(x, f"{op} {node!r} input")
    auto_pad = _text(attrs.get("auto_pad", b"NOTSET")).upper()
    pads = list(attrs.get("pads", ()))
    if pads and len(pads) != 2 * (len(x_shape) - 2):
        raise refuse(op, node, f"pads={pads}", f"must have {2 * (len(x_shape) - 2)} entries")
    dilations = [int(d) for d in attrs.get("dilations", ())]
    if auto_pad.startswith("SAME") and any(d != 1 for d in dilations):
        raise refuse(
            op, node, f"auto_pad={auto_pad} with dilations={dilations}",
            "onnxruntime pads as if undilated, against ONNX's output shape; give explicit pads",
        )  # fmt: skip
    geom = _node_geometry(
        op, node, shapes.pool_geometry, x_shape, tuple(int(k) for k in attrs["kernel_shape"]),
        kind="max" if kind == "max" else "avg",
        stride=attrs.get("strides"), padding=onnx_padding(attrs, len(x_shape) - 2),
        dilation=attrs.get("dilations", 1), ceil_mode=bool(attrs.get("ceil_mode", 0)),
        count_include_pad=bool(attrs.get("count_include_pad", 0)),
    )  # fmt: skip
    if kind == "lp":
        p = attrs.get("p", 2)
        if not (isinstance(p, int | float) and math.isfinite(p) and p > 0):
            raise refuse(op, node, f"p={p!r}", "must be a positive finite number")
        step = KernelStep(f"lp_pool{geom.ndim}d", {}, [x], lambda tx: [ops.lp_pool(tx, geom, p)])
        return ctx.emit_kernel(node, op, step)
    if kind == "max" and attrs["tvm_custom"]["num_outputs"] > 1:
        storage_order = int(attrs.get("storage_order", 0))
        if storage_order not in (0, 1):
            raise refuse(op, node, f"storage_order={storage_order}", "must be 0 or 1")
        step = KernelStep(
            f"max_pool{geom.ndim}d_with_indices", {}, [x],
            lambda tx: list(ops.max_pool_with_indices(tx, geom, storage_order)),
        )  # fmt: skip
        return ctx.emit_kernel(node, op, step)
    return _emit_pool(ctx, node, op, x, geom, attrs)


def _emit_pool(
    ctx: LoweringContext,
    node: str,
    op_type: str,
    x: relax.Expr,
    geom: shapes.PoolGeometry,
    attrs: dict | None = None,
) -> relax.Expr:
    """The ``ops.pool`` kernel of ``geom`` on ``x`` for ONNX node ``node`` (``attrs``: the
    node's, for the nodes fused into it); labelled ``(int8)`` on 8-bit integers."""
    kernel = f"{geom.kind}_pool{geom.ndim}d"
    if tensor_dtype(x) in ("uint8", "int8"):
        kernel += " (int8)"
    step = KernelStep(kernel, attrs or {}, [x], lambda tx: [ops.pool(tx, geom)])
    return ctx.emit_kernel(node, op_type, step)


def lower_global_pool(ctx: LoweringContext, inputs: list, attrs: dict, kind: str) -> relax.Expr:
    """ONNX GlobalAveragePool / GlobalMaxPool: (N, C, *S) -> (N, C, 1, ...)."""
    node = _node_name(attrs)
    x = inputs[0]
    geom = shapes.global_pool_geometry(static_shape(x, f"global pool {node!r} input"), kind=kind)
    op_type = "GlobalMaxPool" if kind == "max" else "GlobalAveragePool"
    step = KernelStep(f"global_{kind}_pool", attrs, [x], lambda tx: [ops.adaptive_pool(tx, geom)])
    return ctx.emit_kernel(node, op_type, step)


def lower_sum(ctx: LoweringContext, inputs: list, attrs: dict) -> relax.Expr | None:
    """ONNX Sum of two inputs as an Add (the same, broadcasting included); declines other
    counts. TVM's converter stacks the inputs and reduces the stack: a reduction that
    element-wise neighbours (a quantized model's DequantizeLinear, Relu, QuantizeLinear
    around its residual Sum) do not fuse with, and an intermediate as large as the inputs."""
    if len(inputs) != 2:
        return None
    return relax.op.add(inputs[0], inputs[1])


def lower_lrn(ctx: LoweringContext, inputs: list, attrs: dict) -> relax.Expr | None:
    """ONNX LRN as TVM's converter builds it (x over ``power(bias + alpha/size * window
    sum of squares, beta)``, the window sum an average pool over channels), with the power
    for beta 0.75 taken as ``sqrt(s) * sqrt(sqrt(s))`` and for 0.5 as ``sqrt(s)``: LLVM has
    no vector form of ``pow`` (one ``powf`` call per element; GoogLeNet's two LRNs were 10%
    of its time), and ``sqrt`` is one vector instruction, correctly rounded (within 2 ulp of
    ``s ** 0.75``). Other betas, or a converter shaped otherwise: TVM's result as is."""
    from tvm.relax.frontend.onnx.onnx_frontend import LocalResponseNormalization

    out = LocalResponseNormalization.get_converter(ctx.opset)(ctx.bb, inputs, attrs, {})
    beta = float(attrs.get("beta", 0.75))
    denominator = out.args[1] if isinstance(out, relax.Call) and len(out.args) == 2 else None
    if (
        beta not in (0.5, 0.75)
        or out.op != tvm.ir.Op.get("relax.divide")
        or not isinstance(denominator, relax.Call)
        or denominator.op != tvm.ir.Op.get("relax.power")
    ):
        return out
    root = ctx.bb.emit(relax.op.sqrt(denominator.args[0]))
    if beta == 0.75:
        root = relax.op.multiply(root, relax.op.sqrt(root))
    return relax.op.divide(out.args[0], root)


def lower_softmax(ctx: LoweringContext, inputs: list, attrs: dict) -> relax.Expr | None:
    """ONNX Softmax along axis 1 of (N, K, ...); declines any other axis."""
    node = _node_name(attrs)
    x = inputs[0]
    x_shape = static_shape(x, f"Softmax {node!r} input")
    axis = int(attrs.get("axis", -1 if ctx.opset >= 13 else 1)) % len(x_shape)
    if axis != 1 or (ctx.opset < 13 and len(x_shape) > 2):  # before 13: over axes [axis:]
        return None
    shapes.check_softmax_input(x_shape)
    step = KernelStep("softmax", attrs, [x], lambda tx: [ops.softmax(tx)])
    return ctx.emit_kernel(node, "Softmax", step)


def _float_input(x: relax.Expr) -> str | None:
    """The dtype of ``x`` when it is float32/float64 (the dtypes with NaN handled), else None."""
    dtype = str(getattr(x.ty, "dtype", ""))
    return dtype if dtype in ("float32", "float64") else None


def lower_clip(ctx: LoweringContext, inputs: list, attrs: dict) -> relax.Expr | None:
    """ONNX Clip on float32/float64 as ``minimum(maximum(x, lo), hi)``, which the CPU
    pipeline legalizes with NaN propagating (onnxruntime keeps a NaN input; TVM's converter
    emits ``topi.maximum``/``topi.minimum``, which turn it into a bound). As onnxruntime: a
    missing bound is the dtype's lowest/largest finite value (so +-inf become finite), a NaN
    bound is no bound (+-inf). Other dtypes: TVM's converter."""
    x = inputs[0]
    dtype = _float_input(x)
    if dtype is None:
        return None
    if ctx.opset < 11:
        bounds = [attrs.get("min"), attrs.get("max")]
        bounds = [None if b is None else relax.const(float(b), dtype) for b in bounds]
    else:
        bounds = [inputs[k] if len(inputs) > k else None for k in (1, 2)]
    finfo = np.finfo(dtype)
    result = x
    for bound, op, missing, unbounded in (
        (bounds[0], relax.op.maximum, finfo.min, -np.inf),
        (bounds[1], relax.op.minimum, finfo.max, np.inf),
    ):
        value = np.array(missing, dtype) if bound is None else _constant(bound)
        if value is not None:
            value = np.where(np.isnan(value), unbounded, value).astype(dtype)
            bound = relax.const(value, dtype)
        else:
            bound = ctx.bb.normalize(
                relax.op.where(relax.op.isnan(bound), relax.const(unbounded, dtype), bound)
            )
        result = ctx.bb.normalize(op(result, bound))
    return result


def lower_thresholded_relu(ctx: LoweringContext, inputs: list, attrs: dict) -> relax.Expr | None:
    """ONNX ThresholdedRelu as ``x if x > alpha else 0``: NaN and -inf give 0 as in
    onnxruntime (TVM's converter computes ``x * (x > alpha)``: NaN for both)."""
    x = inputs[0]
    dtype = _float_input(x)
    if dtype is None:
        return None
    alpha = float(attrs.get("alpha", 1.0))

    def thresholded(tx: te.Tensor) -> te.Tensor:
        zero, threshold = tvm.tirx.const(0, dtype), tvm.tirx.const(alpha, dtype)
        return te.compute(
            tx.shape,
            lambda *i: tvm.tirx.Select(tx(*i) > threshold, tx(*i), zero),
            name="thresholded_relu",
        )

    return ctx.bb.call_te(thresholded, x, primfunc_name_hint="thresholded_relu")


#: The attributes a QLinearConv/ConvInteger node may carry (ONNX's, and the fusion's).
_INTEGER_CONV_ATTRIBUTES = frozenset(
    {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides", ACTIVATION_ATTR,
     CLIP_ATTR, FUSED_ATTR}
)  # fmt: skip


def _integer_conv(
    ctx: LoweringContext, op_type: str, x: relax.Expr, w: relax.Expr, attrs: dict, quant: dict
) -> relax.Expr:
    """The integer kernel of a QLinearConv (``quant`` holds scales) or ConvInteger node:
    x a tensor; w and every value of ``quant`` (name -> relax expression or None)
    constants, validated by :mod:`convforge.qparams` and folded into the kernel's
    per-channel constants (:meth:`convforge.qparams.QuantArgs.kernel_constants`)."""
    from convforge import qparams

    node = _node_name(attrs)
    unknown = _unknown_attributes(attrs, _INTEGER_CONV_ATTRIBUTES)
    if unknown:
        raise refuse(op_type, node, "attributes", f"unknown attributes {unknown}")
    values = {"w": w, **quant}
    constants = {}
    for name, expr in values.items():
        if expr is None:
            constants[name] = None
            continue
        value = _constant(expr)
        if value is None:
            raise refuse(
                op_type, node, f"input {name!r}",
                "must be a constant (an initializer or Constant node): convforge folds the "
                "weights, zero points and scales into the kernel's per-channel constants",
            )  # fmt: skip
        constants[name] = value
    w_value = constants.pop("w")
    x_shape = static_shape(x, f"{op_type} {node!r} input")
    x_dtype, w_dtype = tensor_dtype(x), str(w_value.dtype)
    nd = len(x_shape) - 2
    geom = _node_geometry(
        op_type, node, shapes.conv_geometry, x_shape, w_value.shape,
        stride=attrs.get("strides", 1), dilation=attrs.get("dilations", 1),
        padding=onnx_padding(attrs, nd), groups=int(attrs.get("group", 1)),
    )  # fmt: skip
    activation: Any = activation_of(attrs)
    if CLIP_ATTR in attrs:
        activation = tuple(float(v) for v in attrs[CLIP_ATTR])
    requantize = op_type == "QLinearConv"
    try:
        qparams.integer_array(np.zeros(0, x_dtype), "x")
        qparams.integer_array(w_value, "w")
        args = qparams.quant_args(
            x_dtype, w_dtype, geom.out_channels, requantize=requantize,
            activation=activation, **constants,
        )  # fmt: skip
    except ValueError as error:
        raise refuse(op_type, node, "inputs", str(error)) from None
    plan = plan_qconv(
        geom, x_dtype, w_dtype, ctx.target, requantize=requantize,
        w_zero_point=args.has_w_zero_point, narrow_weights=fits_pmaddubsw(w_value),
    )  # fmt: skip
    constants = [plan.pack(w_value), *args.kernel_constants(w_value)]
    kernel_args = [x, *map(relax.const, constants)]
    step = KernelStep(plan.label, attrs, kernel_args, lambda *t: [plan.compute(*t)], geom.macs)
    return ctx.emit_kernel(node, op_type, step)


def lower_qlinear_conv(ctx: LoweringContext, inputs: list, attrs: dict) -> relax.Expr:
    """ONNX QLinearConv (x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale,
    y_zero_point[, B]; N-d, every auto_pad, groups; a fused Relu/Clip of a QDQ Conv) as
    convforge's integer kernel (:func:`convforge.plan.plan_qconv`); every input but x a
    constant."""
    names = ("x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "y_scale",
             "y_zero_point", "bias")  # fmt: skip
    given = dict(zip(names, list(inputs[1:]) + [None] * (len(names) + 1 - len(inputs))))
    w = given.pop("w")
    return _integer_conv(ctx, "QLinearConv", inputs[0], w, attrs, given)


def lower_conv_integer(ctx: LoweringContext, inputs: list, attrs: dict) -> relax.Expr:
    """ONNX ConvInteger (x, w[, x_zero_point[, w_zero_point]]) as convforge's integer
    kernel; w and the zero points constants."""
    rest = [*inputs[2:], None, None]
    quant = {"x_zero_point": rest[0], "w_zero_point": rest[1]}
    return _integer_conv(ctx, "ConvInteger", inputs[0], inputs[1], attrs, quant)


#: ONNX op_type -> lowering to a convforge kernel; a lowering returning ``None`` declines the
#: node, and it and every other op type go to TVM's own converter.
LOWERINGS: dict[str, Callable[[LoweringContext, list, dict], relax.Expr | None]] = {
    "Conv": lower_conv,
    "ConvTranspose": lower_conv_transpose,
    "CausalConvWithState": lower_causal_conv_with_state,
    "Gemm": lower_gemm,
    "Resize": lower_resize,
    "Upsample": lower_upsample,
    "MaxPool": functools.partial(lower_pool, kind="max"),
    "AveragePool": functools.partial(lower_pool, kind="avg"),
    "LpPool": functools.partial(lower_pool, kind="lp"),
    "GlobalMaxPool": functools.partial(lower_global_pool, kind="max"),
    "GlobalAveragePool": functools.partial(lower_global_pool, kind="avg"),
    "Softmax": lower_softmax,
    "LRN": lower_lrn,
    "Sum": lower_sum,
    "Clip": lower_clip,
    "ThresholdedRelu": lower_thresholded_relu,
    "QLinearConv": lower_qlinear_conv,
    "ConvInteger": lower_conv_integer,
}


@contextlib.contextmanager
def convforge_converters(ctx: LoweringContext) -> Iterator[None]:
    """Within this context TVM's ONNX importer converts :data:`LOWERINGS` op types with ours."""
    from tvm.relax.frontend.onnx import onnx_frontend

    original = onnx_frontend._get_convert_map

    def converter(lower, tvm_converter):
        class Converter:
            @staticmethod
            def get_converter(opset):
                def convert(bb, inputs, attrs, params):
                    ctx.bb, ctx.opset = bb, opset
                    lowered = lower(ctx, list(inputs), attrs)
                    if lowered is None and tvm_converter is not None:
                        return tvm_converter.get_converter(opset)(bb, inputs, attrs, params)
                    if lowered is None:
                        raise ValueError(f"node {_node_name(attrs)!r}: no lowering accepts it")
                    return lowered

                return convert

        return Converter

    def patched():
        tvm_map = original()
        ours = {op: converter(fn, tvm_map.get(op)) for op, fn in LOWERINGS.items()}
        return {**tvm_map, **ours}

    onnx_frontend._get_convert_map = patched
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original
