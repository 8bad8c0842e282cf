"""The numpy API: validate -> build TE op -> schedule -> compile (cached) -> run.

Semantics follow ``torch.nn.functional`` and the ONNX operators for the same arguments.
Every argument is validated by :mod:`convforge.shapes` before anything is compiled.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from convforge import ops, qparams, shapes
from convforge.build import (
    Computation,
    Kernel,
    aligned,
    cached_kernel,
    persistent_kernel,
)
from convforge.ops.activation import check_activation
from convforge.ops.qconv import fits_pmaddubsw
from convforge.plan import ALGORITHMS as ALGORITHMS  # re-exported: algorithm= values
from convforge.plan import (
    ConvPlan,
    DensePlan,
    check_algorithm,
    conv_transpose_op,
    plan_conv,
    plan_dense,
    plan_qconv,
)
from convforge.schedules import tuning_dbs
from convforge.targets import TargetArg, resolve_target, target_key
from convforge.tvm_import import te

#: dtypes the compiled kernels accept.
DTYPES = ("float16", "float32", "float64")

#: Winograd's float32 error bound, measured (``benchmarks/winograd_error.py``):
#: ``|y - y_exact| <= WINOGRAD_ERROR_BOUND[form] * max|x| * sum|w_k|`` for every output of
#: output channel k, max|x| over the whole input, sum|w_k| over k's weight. The largest ratios
#: seen over normal, uniform, single-outlier and 1%-outlier inputs, 8-320 channels: F(4x4,
#: 3x3) 7.5e-7 (dilated too), F(2x2, 3x3) 3e-8, F(4x4, r x r) over the stride phases 4e-7
#: (3x3, 5x5, 7x7); the bounds below are these, rounded up about 3x. The direct float32
#: convolution: 1.3e-7. First-order worst case from the transforms, ``2**-24 * (|A^T|_inf
#: |G|_inf |B^T|_inf)**2``: F(4x4, 3x3) 2.2e-3, F(2x2, 3x3) 4.8e-6, F(4x4, 2x2) 2.6e-4,
#: F(4x4, 4x4) 3.5e-2 (not reached by any data measured). The error of an output scales
#: with max|x| over its tile's input window, not its receptive field: next to an outlier
#: (1e3 in 1e-3 noise) it reached 9% of the output's own scale ``max|x_receptive| * sum|w_k|``
#: (the direct convolution's 1e-7), enough to flip the sign of small outputs. Such data
#: wants ``algorithm="direct"``.
WINOGRAD_ERROR_BOUND = {"F(4x4,3x3)": 2e-6, "F(2x2,3x3)": 1e-7, "stride-2 phases": 1.5e-6}


def nonfinite_check(size: int, target: TargetArg = None) -> Kernel:
    """The compiled check of a float32 array of ``size`` values for a NaN or an infinity:
    one vectorized pass over the exponent bits (:func:`convforge.ops.winograd.nonfinite_flag`),
    as compiled models check a Winograd convolution's input; takes x flat, returns a bool."""

    target = resolve_target(target)
    key = (size, target_key(target))
    kernel = _nonfinite_checks.get(key)
    if kernel is None:  # not cached_kernel: its tuning-database lookup costs more than the check

        def build():
            (tx,) = placeholders("float32", x=(size,))
            return [tx], [ops.winograd.nonfinite_flag(tx)]

        kernel = _nonfinite_checks.setdefault(
            key, persistent_kernel("nonfinite_flag", (size,), build, target)
        )
    return kernel


#: (size, target key) -> :func:`nonfinite_check`'s kernel.
_nonfinite_checks: dict[tuple[int, str], Kernel] = {}


def as_float_arrays(**arrays: np.ndarray | None) -> tuple[str, list[np.ndarray | None]]:
    """Check that every given array is a float array of one supported dtype; return it."""
    given = {name: np.asarray(a) for name, a in arrays.items() if a is not None}
    listing = ", ".join(f"{name}: {a.dtype}" for name, a in given.items())
    names = ", ".join(given)
    dtypes = {str(a.dtype) for a in given.values()}
    if len(dtypes) != 1:
        raise ValueError(f"{names} must share one dtype, got {listing}")
    dtype = dtypes.pop()
    if dtype not in DTYPES:
        raise ValueError(f"dtype of {names} must be one of {DTYPES}, got {listing}")
    return dtype, [given.get(name) for name in arrays]


def placeholders(dtype: str, **shapes_: Sequence[int] | None) -> list[te.Tensor | None]:
    """One TE placeholder per named shape (``None`` stays ``None``)."""
    return [
        None if shape is None else te.placeholder(tuple(shape), dtype, name=name)
        for name, shape in shapes_.items()
    ]


class WeightCache:
    """:func:`conv`'s packed weights: a weight array passed again, unchanged, is packed
    once (the NCHW[x]c blocks or Winograd transform its kernel would otherwise compute on
    every call) and the kernel that reads it packed runs.

    Keyed safely: an entry is found by the array's ``id``, the plan and the active tuning
    databases (:func:`~convforge.schedules.tuning.active_databases`), and used only when
    the array's bytes equal, bit for bit, a private copy taken when it was first seen (so
    an array mutated in place, or a new array that reuses a freed one's id, is never
    computed with a stale pack: it is remembered anew and computed as on a first call).
    The first call with a weight computes as before (packing in the kernel) and keeps the
    copy; the second packs. A kernel with a tuning record keeps packing per call (the
    record is for that PrimFunc). The comparison costs one pass over the weight (memcmp speed,
    about 10x cheaper than hashing it). A Winograd weight is transformed in float64 once
    packed (``plan.pack``), in float32 inside the kernel before: the second and later
    calls may differ from the first in the last bits (both within
    :data:`WINOGRAD_ERROR_BOUND`); blocked packing is a copy and changes nothing.

    At most ``max_entries`` weights and ``max_total_bytes`` of copies and packs together
    (least recently used dropped); a weight over ``max_bytes`` is never cached.
    :data:`WEIGHT_CACHE` is :func:`conv`'s; ``clear()`` empties it, ``max_entries = 0``
    turns it off. Thread-safe.
    """

    def __init__(
        self, max_entries: int = 32, max_bytes: int = 64 << 20, max_total_bytes: int = 256 << 20
    ):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_total_bytes = max_total_bytes
        #: Calls that used a cached pack, and packs made.
        self.hits = 0
        self.packs = 0
        self._entries: OrderedDict[tuple, list[np.ndarray | None]] = OrderedDict()
        self._lock = threading.Lock()

    def packed(self, w: np.ndarray, plan: ConvPlan, target: TargetArg = None) -> np.ndarray | None:
        """``w`` packed for ``plan.with_constant_weight()`` when ``w`` was seen before with
        the same bytes and plan; else None (``w`` remembered, to be packed next time; or
        never, where ``plan``'s per-call kernel on ``target`` has a tuning record)."""
        if w.nbytes > self.max_bytes or self.max_entries <= 0:
            return None
        # the active tuning databases: whether the per-call kernel has a record (and so
        # whether w is packed at all) is decided again under others (their folders' state,
        # tuning.database_state, would cost 25-40 us more per call)
        databases = (tuple(map(str, tuning_dbs.active_databases())), tuning_dbs.active_match())
        key = (id(w), plan.key, databases)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and _same_bits(entry[0], w):
                self._entries.move_to_end(key)
                if entry[1] is None:
                    per_call = cached_kernel("conv", plan.key, plan.computation(), target)
                    if getattr(per_call, "tuning_record", None) is not None:
                        entry[1] = _TUNED  # its record is for the per-call PrimFunc
                        return None
                    # aligned once: the kernel reads it in place
                    entry[1] = aligned(plan.with_constant_weight().pack(w))
                    self.packs += 1
                    self._evict()
                elif entry[1] is _TUNED:
                    return None
                else:
                    self.hits += 1
                return entry[1]
            self._entries[key] = [w.copy(), None]
            self._entries.move_to_end(key)
            self._evict()
            return None

    def _evict(self) -> None:
        """Drop least recently used entries down to the bounds (the newest always stays)."""

        def size(entry: list) -> int:
            return sum(a.nbytes for a in entry if a is not None)

        total = sum(size(e) for e in self._entries.values())
        while len(self._entries) > 1 and (
            len(self._entries) > self.max_entries or total > self.max_total_bytes
        ):
            total -= size(self._entries.popitem(last=False)[1])

    def clear(self) -> None:
        """Forget every weight (and the counters)."""
        with self._lock:
            self._entries.clear()
            self.hits = self.packs = 0

    def __len__(self) -> int:
        return len(self._entries)


#: A :class:`WeightCache` entry whose per-call kernel is tuned: never packed.
_TUNED = np.empty(0)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether a and b hold the same values bit for bit (NaN payloads, -0.0 included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    bits = np.dtype(f"u{a.dtype.itemsize}")
    return bool(np.array_equal(a.view(bits), b.view(bits)))


#: :func:`conv`'s cache of packed weights (:class:`WeightCache`).
WEIGHT_CACHE = WeightCache()


def _run(name, key, build, arrays, target):
    kernel = cached_kernel(name, key, build, target)
    return kernel(*[a for a in arrays if a is not None])


def conv(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: shapes.PaddingArg = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    activation: str | None = None,
    target: TargetArg = None,
    algorithm: str = "auto",
) -> np.ndarray:
    """N-d convolution (1-D, 2-D, 3-D), as ``torch.nn.functional.conv{1,2,3}d`` / ONNX Conv.

    x: (N, C, *I), w: (O, C/groups, *K), bias: (O,) -> (N, O, *out). ``padding`` is an int,
    per-axis ints, per-axis (lo, hi) pairs or a mode ('valid', 'same', 'same_lower', 'full').
    ``activation``: None, 'relu', 'relu6' (``min(max(x, 0), 6)``), 'silu', 'sigmoid' or
    'tanh', fused into the kernel.

    Computed as :func:`convforge.plan.plan_conv` plans it, exactly as a compiled model
    computes the same Conv (e.g. a strided unpadded 1x1 as x subsampled by the stride, then
    the dense 1x1 kernel). ``algorithm``: 'auto' (Winograd where the plan picks it),
    'direct' (never Winograd: float32 rounding about 1e-7 of ``max|x| * sum|w|``), or
    'winograd' (wherever it applies, else ValueError): its error is bounded by
    :data:`WINOGRAD_ERROR_BOUND` ``* max|x| * sum|w|`` (2e-6 for F(4x4, 3x3), measured),
    which next to an outlier can exceed a small output and flip its sign. Non-finite
    inputs: an output is NaN or +-inf exactly where the direct convolution gives one (a
    Winograd call whose x holds a NaN or an infinity runs the direct kernel instead,
    which the check of x decides).

    A weight array passed again with the same bytes is packed once and reused
    (:class:`WeightCache`: keyed by identity and checked bit for bit, so a mutated array is
    never computed with a stale pack).
    """
    dtype, (x, w, bias) = as_float_arrays(x=x, w=w, bias=bias)
    geom = shapes.conv_geometry(
        x.shape, w.shape, stride=stride, padding=padding, dilation=dilation, groups=groups,
        bias_shape=None if bias is None else bias.shape,
    )  # fmt: skip
    check_activation(activation)
    check_algorithm(algorithm)
    target = resolve_target(target)
    plan = plan_conv(
        geom, dtype, target, algorithm=algorithm, activation=activation, bias=bias is not None
    )
    if plan.needs_finite_check:
        x = aligned(x)
        if nonfinite_check(x.size, target)(x.reshape(-1)):
            plan = plan.direct()  # Winograd would spread a NaN/inf over its whole tile
    name, weight = "conv", w.reshape(plan.kernel_geometry.w_shape)
    packed = WEIGHT_CACHE.packed(w, plan, target) if plan.algorithm.packs else None
    if packed is not None:  # w seen before, unchanged: its pack, as prepare_conv runs it
        name, plan, weight = "prepared_conv", plan.with_constant_weight(), packed
    kernel = cached_kernel(name, plan.key, plan.computation(), target)
    arrays = (plan.prepare_x(x), weight, bias)
    return kernel(*[a for a in arrays if a is not None]).reshape(geom.out_shape)


def prepared_input(x: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, what: str) -> np.ndarray:
    """x as an array, ValueError unless it has the ``shape`` and ``dtype`` a prepared
    ``what`` (:class:`PreparedConv`, :class:`PreparedDense`) was prepared for."""
    x = np.asarray(x)
    if x.shape != shape or x.dtype != dtype:
        raise ValueError(
            f"x must have shape {shape} and dtype {dtype} (the shape and dtype the {what} "
            f"was prepared for), got {x.shape} {x.dtype}"
        )
    return x


@dataclass(frozen=True)
class PreparedConv:
    """:func:`conv` with one weight, packed once (:func:`prepare_conv`): ``op(x)`` for x of
    ``geom.x_shape`` runs only the compiled ``kernel`` on x (as ``plan.prepare_x`` gives
    it) and ``constants`` (the packed weight, then the bias if any). A Winograd kernel has
    a ``direct`` fallback (prepared on its first use) that runs where x holds a NaN or an
    infinity."""

    geom: shapes.ConvGeometry
    kernel: Kernel
    constants: tuple[np.ndarray, ...]
    #: How the kernel computes (:func:`convforge.plan.plan_conv`, constant weight).
    plan: ConvPlan
    #: For a Winograd kernel: prepares the same convolution with algorithm='direct'.
    direct: Callable[[], PreparedConv] | None = None
    #: For a Winograd kernel: :func:`nonfinite_check` of x.
    check: Kernel | None = None

    @property
    def algorithm(self) -> str:
        """'winograd' or 'direct': how :attr:`kernel` computes (finite inputs)."""
        return "direct" if self.plan.algorithm.exact else self.plan.algorithm.name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = prepared_input(x, self.geom.x_shape, self.constants[0].dtype, "convolution")
        if self.direct is not None and self.check is not None:
            x = aligned(x)
            if self.check(x.reshape(-1)):
                return self.direct()(x)
        y = self.kernel(self.plan.prepare_x(x), *self.constants)
        return y.reshape(self.geom.out_shape)


def prepare_conv(
    w: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    x_shape: Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: shapes.PaddingArg = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    activation: str | None = None,
    target: TargetArg = None,
    algorithm: str = "auto",
) -> PreparedConv:
    """:func:`conv` of inputs of ``x_shape`` with a fixed weight: w (and its Winograd
    transform or channel blocks) is packed once, here, as a compiled model packs a constant
    weight and onnxruntime prepacks an initializer; the result computes ``conv(x, w, bias,
    ...)`` with the same arguments. It holds a copy: later changes to w do not reach it.

    ``algorithm`` and non-finite inputs as in :func:`conv` (a constant weight admits
    Winograd on more shapes under 'auto'); ``op.algorithm`` says which one was taken,
    ``op.plan`` how.
    """
    dtype, (w, bias) = as_float_arrays(w=w, bias=bias)
    geom = shapes.conv_geometry(
        shapes.as_shape(x_shape, "x_shape"), w.shape, stride=stride, padding=padding,
        dilation=dilation, groups=groups, bias_shape=None if bias is None else bias.shape,
    )  # fmt: skip
    check_activation(activation)
    check_algorithm(algorithm)
    target = resolve_target(target)
    plan = plan_conv(
        geom, dtype, target, constant_weight=True, algorithm=algorithm, activation=activation,
        bias=bias is not None,
    )  # fmt: skip
    packed = plan.pack(w)  # a new array: later changes to w do not reach it
    kernel = cached_kernel("prepared_conv", plan.key, plan.computation(), target)
    constants = (packed,) if bias is None else (packed, bias.copy())
    direct = check = None
    if plan.needs_finite_check:
        check = nonfinite_check(math.prod(geom.x_shape), target)
        direct_args = dict(
            x_shape=geom.x_shape, stride=geom.stride, padding=geom.padding,
            dilation=geom.dilation, groups=geom.groups, activation=activation, target=target,
            algorithm="direct",
        )  # fmt: skip
        bias_copy = None if bias is None else bias.copy()
        direct = functools.cache(
            functools.partial(prepare_conv, w.copy(), bias_copy, **direct_args)
        )
    return PreparedConv(geom, kernel, constants, plan, direct, check)


def conv_transpose(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: shapes.PaddingArg = 0,
    output_padding: int | Sequence[int] = 0,
    output_shape: Sequence[int] | None = None,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    activation: str | None = None,
    target: TargetArg = None,
) -> np.ndarray:
    """N-d transposed convolution, as ``torch.nn.functional.conv_transpose{1,2,3}d`` / ONNX ConvTranspose.

    x: (N, C, *I), w: (C, O/groups, *K), bias: (O,) -> (N, O, *out) with
    ``out = s*(i-1) + output_padding + d*(k-1) + 1 - lo - hi``, or ``output_shape`` whose
    pads are derived as the ONNX spec and onnxruntime do (``padding='same'`` puts the odd
    pad at the end, anything else at the start); ``padding='same'``/``'same_lower'`` alone
    means ``out = i * s``. See :func:`convforge.shapes.conv_transpose_geometry`.
    """
    dtype, (x, w, bias) = as_float_arrays(x=x, w=w, bias=bias)
    geom = shapes.conv_transpose_geometry(
        x.shape, w.shape, stride=stride, padding=padding, output_padding=output_padding,
        output_shape=output_shape, dilation=dilation, groups=groups,
        bias_shape=None if bias is None else bias.shape,
    )  # fmt: skip
    check_activation(activation)

    build = conv_transpose_computation(geom, dtype, bias is not None, activation, target)
    key = (geom, dtype, bias is not None, activation)
    return _run("conv_transpose", key, build, (x, w, bias), target)


def conv_transpose_computation(
    geom: shapes.ConvTransposeGeometry,
    dtype: str,
    bias: bool,
    activation: str | None,
    target: TargetArg = None,
) -> Computation:
    """The TE computation :func:`conv_transpose` compiles for ``geom`` on ``target``."""

    def build():
        tx, tw, tb = placeholders(
            dtype, x=geom.x_shape, w=geom.w_shape, bias=(geom.out_channels,) if bias else None
        )
        outputs = [conv_transpose_op(geom, target)(tx, tw, geom, ops.Epilogue(tb, activation))]
        return [t for t in (tx, tw, tb) if t is not None], outputs

    return build


def causal_conv1d(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    dilation: int = 1,
    groups: int = 1,
    activation: str | None = None,
    target: TargetArg = None,
) -> np.ndarray:
    """Dilated causal 1-D convolution: ``y[t]`` sees only ``x[t - d*(k-1) .. t]``.

    x: (N, C, L), w: (O, C/groups, K) -> (N, O, L); the input is padded with
    ``d*(k-1)`` zeros on the left only (WaveNet, ByteNet decoder).
    """
    shapes.causal_conv1d_geometry(
        np.shape(x), np.shape(w), dilation=dilation, groups=groups,
        bias_shape=None if bias is None else np.shape(bias),
    )  # fmt: skip
    return conv(
        x, w, bias, padding="causal", dilation=dilation, groups=groups,
        activation=activation, target=target,
    )  # fmt: skip


# --- Resize ------------------------------------------------------------------------------


def _resize_geometry(x_shape, scale, size, mode, coordinate_mode, nearest_mode, antialias=False):
    if scale is None and size is None:
        scale = 2
    return shapes.resize_geometry(
        x_shape, scale=scale, size=size, mode=mode, coordinate_mode=coordinate_mode,
        nearest_mode=nearest_mode, antialias=antialias,
    )  # fmt: skip


def resize(
    x: np.ndarray,
    scale: float | Sequence[float] | None = None,
    *,
    size: int | Sequence[int] | None = None,
    mode: str = "nearest",
    coordinate_mode: str = "asymmetric",
    nearest_mode: str = "floor",
    antialias: bool = False,
    target: TargetArg = None,
) -> np.ndarray:
    """N-d resize of x (N, C, *I), exactly as ONNX Resize (opset 19+) with the same attributes.

    ``scale`` (one number or one per spatial axis, rounded to float32 as ONNX scales are;
    default 2 unless ``size`` is given): output = floor(I * scale). ``size``: output spatial
    sizes. ``mode``: 'nearest', 'linear' (bi-/trilinear) or 'cubic' (Keys, a = -0.75, per
    axis; onnxruntime runs cubic on 2 spatial axes only). ``coordinate_mode``: ONNX
    ``coordinate_transformation_mode`` ('asymmetric', 'half_pixel', 'half_pixel_symmetric',
    'align_corners', 'pytorch_half_pixel'). ``nearest_mode``: 'round_prefer_floor',
    'round_prefer_ceil', 'floor', 'ceil'. The defaults ('nearest', 'asymmetric', 'floor')
    are ``torch.nn.functional.interpolate(mode="nearest")``; ONNX's own defaults are
    'half_pixel' and 'round_prefer_floor'. ``antialias`` ('linear' and 'cubic'; ONNX
    Resize-18): a downscaled axis is filtered with the kernel stretched by ``1/scale``, as
    onnxruntime does (an axis whose length does not change is copied).
    """
    dtype, (x,) = as_float_arrays(x=x)
    geom = _resize_geometry(x.shape, scale, size, mode, coordinate_mode, nearest_mode, antialias)

    def build():
        (tx,) = placeholders(dtype, x=x.shape)
        return [tx], [ops.resize(tx, geom)]

    return _run("resize", (geom, dtype), build, (x,), target)


def resize_conv(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    scale: float | Sequence[float] | None = None,
    size: int | Sequence[int] | None = None,
    mode: str = "nearest",
    coordinate_mode: str = "asymmetric",
    nearest_mode: str = "floor",
    stride: int | Sequence[int] = 1,
    padding: shapes.PaddingArg = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    activation: str | None = None,
    target: TargetArg = None,
) -> np.ndarray:
    """``conv(resize(x), w, bias)`` compiled as one kernel (ONNX Resize followed by Conv).

    Resize arguments as :func:`resize` (``scale`` defaults to 2), convolution arguments as
    :func:`conv`, applied to the resized tensor. x: (N, C, *I), w: (O, C/groups, *K).
    Where the resize repeats every sample ``f`` times (nearest, integer scale, 'asymmetric' +
    'floor' or a half-pixel mode + a rounding ``nearest_mode``: see
    :func:`convforge.shapes.nearest_repeat_factors`), the kernel convolves the
    low-resolution input with per-phase folded kernels and never forms the upsampled tensor
    (x2 + 3x3: 2.25x fewer multiply-adds).
    """
    dtype, (x, w, bias) = as_float_arrays(x=x, w=w, bias=bias)
    rgeom = _resize_geometry(x.shape, scale, size, mode, coordinate_mode, nearest_mode)
    cgeom = shapes.conv_geometry(
        rgeom.out_shape, w.shape, stride=stride, padding=padding, dilation=dilation,
        groups=groups, bias_shape=None if bias is None else bias.shape,
    )  # fmt: skip
    check_activation(activation)

    layout = shapes.phase_conv_layout(rgeom, cgeom)

    def build():
        tx, tw, tb = placeholders(
            dtype, x=x.shape, w=w.shape, bias=None if bias is None else bias.shape
        )
        epilogue = ops.Epilogue(tb, activation)
        if layout is not None:  # nearest integer upsampling: per-phase folded kernels
            out = ops.nearest_upsample_conv(tx, tw, layout, cgeom, epilogue)
        else:
            out = ops.resize_conv(tx, tw, rgeom, cgeom, epilogue)
        return [t for t in (tx, tw, tb) if t is not None], [out]

    key = (rgeom, cgeom, dtype, bias is not None, activation)
    return _run("resize_conv", key, build, (x, w, bias), target)


# --- Pooling -----------------------------------------------------------------------------


def _pool(x, geom, target):
    dtype, (x,) = as_float_arrays(x=x)

    def build():
        (tx,) = placeholders(dtype, x=x.shape)
        if isinstance(geom, shapes.PoolGeometry):
            return [tx], [ops.pool(tx, geom)]
        return [tx], [ops.adaptive_pool(tx, geom)]

    return _run("pool", (geom, dtype), build, (x,), target)


def max_pool(
    x: np.ndarray,
    kernel: int | Sequence[int],
    *,
    stride: int | Sequence[int] | None = None,
    padding: shapes.PaddingArg = 0,
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
    target: TargetArg = None,
) -> np.ndarray:
    """N-d max pooling as ONNX MaxPool: x (N, C, *I) -> (N, C, *out).

    ``stride`` defaults to 1 (ONNX; pass ``stride=kernel`` for PyTorch's default);
    ``padding`` takes every form of :func:`conv` and pads with -inf; ``ceil_mode`` rounds the
    output size up, dropping a last window that would start in the high padding.
    """
    geom = shapes.pool_geometry(
        np.shape(x), kernel, kind="max", stride=stride, padding=padding, dilation=dilation,
        ceil_mode=ceil_mode,
    )  # fmt: skip
    return _pool(x, geom, target)


def avg_pool(
    x: np.ndarray,
    kernel: int | Sequence[int],
    *,
    stride: int | Sequence[int] | None = None,
    padding: shapes.PaddingArg = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = False,
    dilation: int | Sequence[int] = 1,
    target: TargetArg = None,
) -> np.ndarray:
    """N-d average pooling as ONNX AveragePool / ``torch.nn.functional.avg_poolNd``.

    The divisor is the number of the window's taps inside the input
    (``count_include_pad=False``) or inside the padded input (``True``); ``ceil_mode`` as
    :func:`max_pool`; ``dilation`` spaces the taps (ONNX AveragePool-19).
    """
    geom = shapes.pool_geometry(
        np.shape(x), kernel, kind="avg", stride=stride, padding=padding, ceil_mode=ceil_mode,
        count_include_pad=count_include_pad, dilation=dilation,
    )  # fmt: skip
    return _pool(x, geom, target)


def adaptive_avg_pool(
    x: np.ndarray, output_size: int | Sequence[int], *, target: TargetArg = None
) -> np.ndarray:
    """Adaptive average pooling to a fixed grid (``torch.nn.AdaptiveAvgPoolNd``): x (N, C, *I)
    -> (N, C, *output_size); cell j of an axis spans ``[floor(j*I/O), ceil((j+1)*I/O))``."""
    geom = shapes.adaptive_pool_geometry(np.shape(x), output_size, kind="avg")
    return _pool(x, geom, target)


def adaptive_max_pool(
    x: np.ndarray, output_size: int | Sequence[int], *, target: TargetArg = None
) -> np.ndarray:
    """Adaptive max pooling to a fixed grid (``torch.nn.AdaptiveMaxPoolNd``), cells as
    :func:`adaptive_avg_pool`."""
    geom = shapes.adaptive_pool_geometry(np.shape(x), output_size, kind="max")
    return _pool(x, geom, target)


def global_avg_pool(x: np.ndarray, *, target: TargetArg = None) -> np.ndarray:
    """Mean over all spatial axes (ONNX GlobalAveragePool): (N, C, *I) -> (N, C, 1, ...)."""
    return _pool(x, shapes.global_pool_geometry(np.shape(x), kind="avg"), target)


def global_max_pool(x: np.ndarray, *, target: TargetArg = None) -> np.ndarray:
    """Max over all spatial axes (ONNX GlobalMaxPool): (N, C, *I) -> (N, C, 1, ...)."""
    return _pool(x, shapes.global_pool_geometry(np.shape(x), kind="max"), target)


# --- Dense layers and classifier heads ---------------------------------------------------


def dense(
    x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, *, target: TargetArg = None
) -> np.ndarray:
    """``x @ w.T + bias`` (ONNX Gemm transB=1, ``torch.nn.functional.linear``): x (N, F),
    w (K, F), bias (K,) -> (N, K)."""
    dtype, (x, w, bias) = as_float_arrays(x=x, w=w, bias=bias)
    geom = shapes.dense_geometry(x.shape, w.shape, None if bias is None else bias.shape)

    def build():
        tx, tw, tb = placeholders(
            dtype, x=x.shape, w=w.shape, bias=None if bias is None else bias.shape
        )
        return [t for t in (tx, tw, tb) if t is not None], [ops.dense(tx, tw, tb)]

    return _run("dense", (geom, dtype, bias is not None), build, (x, w, bias), target)


@dataclass(frozen=True)
class PreparedDense:
    """:func:`dense` with one weight, packed once (:func:`prepare_dense`) as a compiled model
    packs a Gemm's constant weight (:class:`convforge.plan.DensePlan`): ``op(x)`` for x of
    ``x_shape`` runs the compiled kernel on x and ``constants`` (the packed weight, then
    the bias if any)."""

    x_shape: tuple[int, int]
    kernel: Kernel
    constants: tuple[np.ndarray, ...]
    #: How the kernel computes (the ONNX lowering's plan of a Gemm with a constant B).
    plan: DensePlan

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = prepared_input(x, self.x_shape, self.constants[0].dtype, "dense layer")
        as_kernel = x.reshape(*x.shape, 1, 1)  # x (N, F) as the kernel's (N, F, 1, 1)
        return self.kernel(self.constants[0], as_kernel, *self.constants[1:])


def prepare_dense(
    w: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    x_shape: Sequence[int],
    target: TargetArg = None,
) -> PreparedDense:
    """:func:`dense` of inputs of ``x_shape`` (N, F) with a fixed weight w (K, F): w is
    packed once, here, into vector-wide column blocks (:func:`convforge.plan.plan_dense`,
    the kernel a compiled model runs for an ONNX Gemm with a constant B); the result
    computes ``dense(x, w, bias)``. It holds a copy: later changes to w do not reach it."""
    dtype, (w, bias) = as_float_arrays(w=w, bias=bias)
    x_shape = shapes.as_shape(x_shape, "x_shape")
    geom = shapes.dense_geometry(x_shape, w.shape, None if bias is None else bias.shape)
    target = resolve_target(target)
    plan = plan_dense(x_shape, w.shape, dtype, target)
    packed = plan.pack(w)

    def build():
        tp, tx, tb = placeholders(
            dtype, packed=packed.shape, x=plan.kernel_geometry.w_shape,
            bias=None if bias is None else bias.shape,
        )  # fmt: skip
        out = ops.dense_unpack(plan.compute(tp, tx), tb, plan.out_features)
        return [t for t in (tp, tx, tb) if t is not None], [out]

    kernel = cached_kernel("prepared_dense", (geom, dtype, bias is not None, plan), build, target)
    constants = (packed,) if bias is None else (packed, bias.copy())
    return PreparedDense(tuple(x_shape), kernel, constants, plan)


def softmax(x: np.ndarray, *, target: TargetArg = None) -> np.ndarray:
    """Numerically stable softmax along axis 1 (classes) of x (N, K, ...) (ONNX Softmax axis=1)."""
    dtype, (x,) = as_float_arrays(x=x)
    shapes.check_softmax_input(x.shape)

    def build():
        (tx,) = placeholders(dtype, x=x.shape)
        return [tx], [ops.softmax(tx)]

    return _run("softmax", (x.shape, dtype), build, (x,), target)


def _head(name, x, w, bias, key, make, target):
    dtype, (x, w, bias) = as_float_arrays(x=x, w=w, bias=bias)

    def build():
        tx, tw, tb = placeholders(
            dtype, x=x.shape, w=w.shape, bias=None if bias is None else bias.shape
        )
        return [t for t in (tx, tw, tb) if t is not None], [make(tx, tw, tb)]

    full_key = (x.shape, w.shape, dtype, bias is not None, key)
    return _run(name, full_key, build, (x, w, bias), target)


def _check_head_input(x_shape) -> None:
    if len(x_shape) < 3 or any(int(v) <= 0 for v in x_shape):
        raise ValueError(
            f"x must have rank >= 3 (N, C, *spatial) and a positive shape, got {tuple(x_shape)}"
        )


def flatten_dense_head(
    x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, *, target: TargetArg = None
) -> np.ndarray:
    """Classifier head ``softmax(flatten(x) @ w.T + bias)``: x (N, C, *S), w (K, C*prod(S))
    -> (N, K) class probabilities (flatten in row-major order, as ONNX Flatten axis=1)."""
    _check_head_input(np.shape(x))
    features = shapes.flatten_features(np.shape(x))
    shapes.dense_geometry(
        (np.shape(x)[0], features), np.shape(w), None if bias is None else np.shape(bias)
    )
    return _head("flatten_dense_head", x, w, bias, None, ops.flatten_dense_head, target)


def grid_pool_head(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    grid: int | Sequence[int] = 3,
    pool: str = "avg",
    target: TargetArg = None,
) -> np.ndarray:
    """Classifier head for any input size: adaptive ``pool`` ('avg' or 'max') of x (N, C, *S)
    to ``grid`` G, flatten, dense with w (K, C*prod(G)), softmax -> (N, K)."""
    _check_head_input(np.shape(x))
    grid = shapes.as_tuple(grid, len(np.shape(x)) - 2, "grid")
    geom = shapes.adaptive_pool_geometry(np.shape(x), grid, kind=pool)
    shapes.dense_geometry(
        (geom.batch, shapes.flatten_features(geom.out_shape)), np.shape(w),
        None if bias is None else np.shape(bias),
    )  # fmt: skip

    def make(tx, tw, tb):
        return ops.grid_pool_head(tx, tw, tb, geom)

    return _head("grid_pool_head", x, w, bias, geom, make, target)


def fully_conv_head(
    x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, *, target: TargetArg = None
) -> np.ndarray:
    """Fully convolutional classifier head for any input size: 1x1 convolution to K classes
    with w (K, C, 1, ...), global average pooling, softmax -> (N, K)."""
    _check_head_input(np.shape(x))
    geom = shapes.conv_geometry(
        np.shape(x), np.shape(w), bias_shape=None if bias is None else np.shape(bias)
    )
    if any(k != 1 for k in geom.kernel):
        raise ValueError(f"w must be a 1x1 kernel (K, C, 1, ...), got shape {np.shape(w)}")

    def make(tx, tw, tb):
        return ops.fully_conv_head(tx, tw, tb, geom)

    return _head("fully_conv_head", x, w, bias, geom, make, target)


def causal_conv_with_state(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    state: np.ndarray | None = None,
    *,
    dilation: int = 1,
    groups: int | None = None,
    activation: str | None = None,
    target: TargetArg = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Causal 1-D convolution carrying its past input: returns ``(y, present_state)``.

    ``y = act(conv(concat(state, x), w) + bias)`` with 'valid' padding and ``present_state``
    = the last ``d*(k-1)`` samples of ``concat(state, x)``; a ``None`` state is zeros, so
    feeding a sequence chunk by chunk (passing each present_state on) equals
    :func:`causal_conv1d` on the whole sequence. x: (N, C, L), w: (O, C/groups, k),
    state: (N, C, d*(k-1)). ``groups=None`` is depthwise (groups = C, w: (C, 1, k)): with
    ``dilation=1`` that is ONNX CausalConvWithState (opset 27), whose activation names
    'none' and 'swish' are accepted too.
    """
    dtype, (x, w, bias, state) = as_float_arrays(x=x, w=w, bias=bias, state=state)
    activation = {"none": None, "swish": "silu"}.get(activation, activation)
    check_activation(activation)
    if groups is None:
        if np.ndim(x) != 3:
            raise ValueError(f"x must have shape (N, C, L), got {x.shape}")
        groups = x.shape[1]
    geom = shapes.causal_state_geometry(
        x.shape, w.shape, dilation=dilation, groups=groups,
        bias_shape=None if bias is None else bias.shape,
        state_shape=None if state is None else state.shape,
    )  # fmt: skip

    def build():
        tx, tw, tb, ts = placeholders(
            dtype, x=x.shape, w=w.shape, bias=None if bias is None else bias.shape,
            state=None if state is None else state.shape,
        )  # fmt: skip
        outputs = ops.causal_conv_state(tx, tw, ts, geom, ops.Epilogue(tb, activation))
        return [t for t in (tx, tw, tb, ts) if t is not None], list(outputs)

    key = (geom, dtype, bias is not None, state is not None, activation)
    kernel = cached_kernel("causal_conv_with_state", key, build, target)
    y, new_state = kernel(*[a for a in (x, w, bias, state) if a is not None])
    return y, new_state


# --- integer convolutions (ONNX QLinearConv, ConvInteger) ------------------------------


def _integer_conv(
    x: np.ndarray,
    w: np.ndarray,
    quant: Callable[[str, str, int], qparams.QuantArgs],
    stride: int | Sequence[int],
    padding: shapes.PaddingArg,
    dilation: int | Sequence[int],
    groups: int,
    target: TargetArg,
) -> np.ndarray:
    """Validate x, w, the geometry and ``quant(x_dtype, w_dtype, channels)``'s arguments,
    then run the planned integer kernel (:func:`convforge.plan.plan_qconv`)."""
    x = qparams.integer_array(x, "x")
    w = qparams.integer_array(w, "w")
    geom = shapes.conv_geometry(
        x.shape, w.shape, stride=stride, padding=padding, dilation=dilation, groups=groups
    )
    args = quant(str(x.dtype), str(w.dtype), geom.out_channels)
    plan = plan_qconv(
        geom, str(x.dtype), str(w.dtype), target, requantize=args.requantizes,
        w_zero_point=args.has_w_zero_point, narrow_weights=fits_pmaddubsw(w),
    )  # fmt: skip
    kernel = cached_kernel("qconv", plan.key, plan.computation(), plan.target)
    return kernel(x, plan.pack(w), *args.kernel_constants(w))


def qconv(
    x: np.ndarray,
    x_scale: float | np.ndarray,
    x_zero_point: int | np.ndarray,
    w: np.ndarray,
    w_scale: float | np.ndarray,
    w_zero_point: int | np.ndarray,
    y_scale: float | np.ndarray,
    y_zero_point: int | np.ndarray,
    bias: np.ndarray | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: shapes.PaddingArg = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    activation: str | tuple[float, float] | None = None,
    target: TargetArg = None,
) -> np.ndarray:
    """ONNX QLinearConv (QLinearConv's argument order; geometry keywords as :func:`conv`,
    ``padding='same'``/``'same_lower'``/``'valid'`` being ``auto_pad``).

    x: (N, C, *I) uint8 or int8; w: (O, C/groups, *K) uint8 or int8; x_scale, y_scale:
    float32 scalars > 0; w_scale: a scalar or (O,) (per output channel); zero points: x's
    and y's scalars of x's dtype, w's a scalar or (O,) of w's dtype; bias: int32 (O,) of
    scale x_scale * w_scale -> (N, O, *out) of x's dtype::

        y = saturate(round((acc + bias[o]) * x_scale * w_scale[o] / y_scale) + y_zp)

    ``acc`` the exact int32 sum of ``(x - x_zp) * (w - w_zp)`` (padding is x_zp, a real
    0), rounded half to even as onnxruntime does it: the multiplier ``x_scale *
    w_scale[o] / y_scale`` and ``float32(acc) * multiplier`` in float32
    (:mod:`convforge.ops.qconv`). ``activation``: None, 'relu' or a Clip's real bounds
    ``(low, high)``, applied in the requantization (as the float Relu/Clip of the real
    value, quantized). Every argument is validated (ValueError naming it and the rule,
    :mod:`convforge.qparams`) before anything is compiled; CPU targets only.
    """

    def quant(x_dtype: str, w_dtype: str, channels: int) -> qparams.QuantArgs:
        return qparams.quant_args(
            x_dtype, w_dtype, channels, x_zero_point=x_zero_point, w_zero_point=w_zero_point,
            x_scale=x_scale, w_scale=w_scale, y_scale=y_scale, y_zero_point=y_zero_point,
            bias=bias, activation=activation, requantize=True,
        )  # fmt: skip

    return _integer_conv(x, w, quant, stride, padding, dilation, groups, target)


def conv_integer(
    x: np.ndarray,
    w: np.ndarray,
    x_zero_point: int | np.ndarray | None = None,
    w_zero_point: int | np.ndarray | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: shapes.PaddingArg = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    target: TargetArg = None,
) -> np.ndarray:
    """ONNX ConvInteger: ``sum (x - x_zp) * (w - w_zp)`` as int32 (modulo 2**32), x padded
    with x_zp. x: (N, C, *I) uint8 or int8; w: (O, C/groups, *K) uint8 or int8; x_zero_point
    a scalar of x's dtype, w_zero_point a scalar or (O,) of w's dtype (None: 0) -> (N, O,
    *out) int32. Geometry keywords and validation as :func:`qconv`."""

    def quant(x_dtype: str, w_dtype: str, channels: int) -> qparams.QuantArgs:
        return qparams.quant_args(
            x_dtype, w_dtype, channels, x_zero_point=x_zero_point, w_zero_point=w_zero_point,
            requantize=False,
        )  # fmt: skip

    return _integer_conv(x, w, quant, stride, padding, dilation, groups, target)
