"""The numpy API: validate -> build TE op -> schedule -> compile (cached) -> run.

Semantics follow ``torch.nn.functional`` and the ONNX operators for the same arguments.
Every argument is validated by :mod:`convforge.shapes` before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tvm import te

from convforge import ops, shapes
from convforge.build import (
    Computation,
    Kernel,
    aligned,
    cached_kernel,
    compile_computation,
)
from convforge.ops.activation import check_activation
from convforge.schedules.cpu_conv import dense_conv_blocks
from convforge.schedules.cpu_winograd import MIN_CHANNELS as MIN_WINOGRAD_CHANNELS
from convforge.schedules.cpu_winograd import winograd_tiles
from convforge.targets import TargetArg, resolve_target, target_key

#: dtypes the compiled kernels accept.
DTYPES = ("float16", "float32", "float64")

#: Values of every ``algorithm=`` argument: ``auto`` (Winograd where :func:`conv_layout`
#: finds it faster), ``direct`` (never Winograd) or ``winograd`` (wherever it applies).
ALGORITHMS = ("auto", "direct", "winograd")

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


def check_algorithm(algorithm: str) -> None:
    """ValueError unless ``algorithm`` is one of :data:`ALGORITHMS`."""
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")


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
            key, compile_computation("nonfinite_flag", build, target, persistent=True)
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
    ``activation``: None, 'relu', 'silu', 'sigmoid' or 'tanh', fused into the kernel.

    ``algorithm``: 'auto' (Winograd where :func:`conv_layout` picks it, as before), 'direct'
    (never Winograd: float32 rounding about 1e-7 of ``max|x| * sum|w|``), or 'winograd'
    (wherever it applies, else ValueError): its error is bounded by
    :data:`WINOGRAD_ERROR_BOUND` ``* max|x| * sum|w|`` (2e-6 for F(4x4, 3x3), measured),
    which next to an outlier can exceed a small output and flip its sign. Non-finite inputs: an output is NaN or
    +-inf exactly where the direct convolution gives one (a Winograd call whose x holds a
    NaN or an infinity runs the direct kernel instead, which the check of x decides).
    """
    dtype, (x, w, bias) = as_float_arrays(x=x, w=w, bias=bias)
    geom = shapes.conv_geometry(
        x.shape, w.shape, stride=stride, padding=padding, dilation=dilation, groups=groups,
        bias_shape=None if bias is None else bias.shape,
    )  # fmt: skip
    check_activation(activation)
    check_algorithm(algorithm)
    target = resolve_target(target)
    computed = kernel_geometry(geom, dtype, target)
    layout = conv_layout(computed, dtype, target, algorithm=algorithm)
    if isinstance(layout, ops.WinogradTiles):
        x = aligned(x)
        if nonfinite_check(x.size, target)(x.reshape(-1)):
            algorithm = "direct"  # Winograd would spread a NaN/inf over its whole tile
            layout = conv_layout(computed, dtype, target, algorithm=algorithm)
    build = conv_computation(
        computed, dtype, bias is not None, activation, target, algorithm=algorithm
    )
    key = (computed, dtype, bias is not None, activation, layout)  # layout: the algorithm
    arrays = (x.reshape(computed.x_shape), w.reshape(computed.w_shape), bias)
    return _run("conv", key, build, arrays, target).reshape(geom.out_shape)


def kernel_geometry(
    geom: shapes.ConvGeometry, dtype: str, target: TargetArg = None
) -> shapes.ConvGeometry:
    """The geometry the kernel for ``geom`` computes (x, w and the output reshaped to it).

    On a CPU a dense 2-D/3-D 1x1 convolution with stride 1 and no padding is a matrix
    multiply over the positions: it is computed over one row of prod(spatial) positions, so
    that 14- and 7-wide maps do not cap the register tile's width (ResNet-50's 14x14 1x1
    convolutions: up to 1.6x faster). Any other ``geom`` is computed as it is.
    """
    target = resolve_target(target)
    pointwise = geom.ndim in (2, 3) and geom.is_pointwise and any(n > 1 for n in geom.in_size[:-1])
    if not pointwise or dense_conv_blocks(geom, dtype, target) is None:
        return geom
    positions = math.prod(geom.in_size)
    return shapes.conv_geometry(
        (geom.batch, geom.in_channels, 1, positions), (geom.out_channels, geom.in_channels, 1, 1)
    )


def conv_computation(
    geom: shapes.ConvGeometry,
    dtype: str,
    bias: bool,
    activation: str | None,
    target: TargetArg = None,
    packed_weight_shape: tuple[int, ...] | None = None,
    algorithm: str = "auto",
) -> Computation:
    """The TE computation :func:`conv` compiles for ``geom`` on ``target``, over
    :func:`kernel_geometry`'s shapes (tuning uses it too, so a tuned record is found for
    exactly the PrimFunc the API builds); with ``packed_weight_shape``, the one
    :func:`prepare_conv` compiles, reading a weight :func:`pack_conv_weight` packed.
    ``algorithm`` as :func:`conv_layout`'s."""
    geom = kernel_geometry(geom, dtype, target)

    def build():
        tx, tw, tb = placeholders(
            dtype, x=geom.x_shape, w=packed_weight_shape or geom.w_shape,
            bias=(geom.out_channels,) if bias else None,
        )  # fmt: skip
        out = conv_for_target(
            tx, tw, tb, geom, activation, target,
            weight_packed=packed_weight_shape is not None, algorithm=algorithm,
        )  # fmt: skip
        return [t for t in (tx, tw, tb) if t is not None], [out]

    return build


def conv_layout(
    geom: shapes.ConvGeometry,
    dtype: str,
    target: TargetArg = None,
    constant_weight: bool = False,
    algorithm: str = "auto",
) -> ops.WinogradTiles | ops.ChannelBlocks | None:
    """How :func:`conv_for_target` computes ``geom`` on ``target``: Winograd tiles
    (:func:`winograd_tiles`: 3x3 stride-1 float32 on a CPU; more of them with a
    ``constant_weight``, transformed once), else NCHW[x]c blocks (:func:`dense_conv_blocks`:
    other dense 2-D/3-D on a CPU), else None (generic).

    ``algorithm`` (:data:`ALGORITHMS`): 'auto' is the choice above; 'direct' never takes
    Winograd; 'winograd' takes it wherever it applies (as for a constant weight, whatever
    the weight) and raises ValueError naming ``algorithm`` where it does not."""
    check_algorithm(algorithm)
    target = resolve_target(target)
    if algorithm == "direct":
        return dense_conv_blocks(geom, dtype, target)
    if algorithm == "winograd":
        winograd = winograd_tiles(geom, dtype, target, True)
        if winograd is None:
            raise ValueError(
                f"algorithm='winograd' does not apply to this convolution ({dtype}, "
                f"{geom.ndim}-D, kernel {geom.kernel}, stride {geom.stride}, dilation "
                f"{geom.dilation}, groups {geom.groups}, {geom.in_channels}->"
                f"{geom.out_channels} channels, output {geom.out_size}) on target "
                f"{target.kind.name}: Winograd needs a CPU, float32, an ungrouped 2-D "
                f"convolution with at least {MIN_WINOGRAD_CHANNELS} channels in and out, 3x3 "
                "with stride 1 or a square kernel with stride 2 (undilated, within the "
                "channel limits of cpu_winograd.MAX_PHASE_CHANNELS), and an output of at "
                "least one tile per axis; use algorithm='auto' or 'direct'"
            )
        return winograd
    winograd = winograd_tiles(geom, dtype, target, constant_weight)
    return winograd or dense_conv_blocks(geom, dtype, target)


def conv_for_target(
    x: te.Tensor,
    w: te.Tensor,
    bias: te.Tensor | None,
    geom: shapes.ConvGeometry,
    activation: str | None,
    target: TargetArg = None,
    *,
    weight_packed: bool = False,
    residual: te.Tensor | None = None,
    algorithm: str = "auto",
) -> te.Tensor:
    """The convolution computation for ``target`` (the numpy API's and compiled models'),
    chosen by :func:`conv_layout` (with ``algorithm``): :func:`convforge.ops.conv2d_winograd`,
    :func:`convforge.ops.conv_nchwc` or the generic :func:`convforge.ops.conv`.
    x (N, C, *I), w (O, C/groups, *K), or with ``weight_packed`` w already in the layout
    the computation reads (:func:`pack_conv_weight`, a constant); ``residual`` (N, O, *out)
    is added before the activation."""
    layout = conv_layout(
        geom, str(x.dtype), target, constant_weight=weight_packed, algorithm=algorithm
    )
    if isinstance(layout, ops.WinogradTiles):
        return ops.conv2d_winograd(
            x, w, bias, geom, layout, activation,
            weight_transformed=weight_packed, residual=residual,
        )  # fmt: skip
    if layout is None:
        if weight_packed:
            raise ValueError("weight_packed needs a CPU layout (conv_layout is None)")
        return ops.conv(x, w, bias, geom, activation, residual=residual)
    return ops.conv_nchwc(
        x, w, bias, geom, layout, activation, weight_packed=weight_packed, residual=residual
    )


def pack_conv_weight(w: np.ndarray, layout: ops.WinogradTiles | ops.ChannelBlocks) -> np.ndarray:
    """A constant weight (O, C, *K) in ``layout`` (:func:`conv_layout` with
    ``constant_weight=True``), as :func:`conv_for_target` reads it with ``weight_packed``
    (packed once, at compile time)."""
    if isinstance(layout, ops.WinogradTiles):
        return ops.transform_weight_array(w, layout)
    return ops.pack_weight_array(w, layout)


@dataclass(frozen=True)
class PreparedConv:
    """:func:`conv` with one weight, packed once (:func:`prepare_conv`): ``op(x)`` for x of
    ``geom.x_shape`` runs only the compiled ``kernel`` on x and ``constants`` (the packed
    weight, then the bias if any). A Winograd kernel has a ``direct`` fallback (prepared on
    its first use) that runs where x holds a NaN or an infinity."""

    geom: shapes.ConvGeometry
    kernel: Kernel
    constants: tuple[np.ndarray, ...]
    #: The layout the kernel computes in (Winograd tiles, channel blocks or None: generic).
    layout: ops.WinogradTiles | ops.ChannelBlocks | None = None
    #: For a Winograd kernel: prepares the same convolution with algorithm='direct'.
    direct: Callable[[], PreparedConv] | None = None
    #: For a Winograd kernel: :func:`nonfinite_check` of x.
    check: Kernel | None = None

    @property
    def algorithm(self) -> str:
        """'winograd' or 'direct': how :attr:`kernel` computes (finite inputs)."""
        return "winograd" if isinstance(self.layout, ops.WinogradTiles) else "direct"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        dtype = self.constants[0].dtype
        if x.shape != self.geom.x_shape or x.dtype != dtype:
            raise ValueError(
                f"x must have shape {self.geom.x_shape} and dtype {dtype} (the shape and "
                f"dtype the convolution was prepared for), got {x.shape} {x.dtype}"
            )
        if self.direct is not None and self.check is not None:
            x = aligned(x)
            if self.check(x.reshape(-1)):
                return self.direct()(x)
        y = self.kernel(x.reshape(self.kernel.input_shapes[0]), *self.constants)
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
    Winograd on more shapes under 'auto'); ``op.algorithm`` says which one was taken.
    """
    dtype, (w, bias) = as_float_arrays(w=w, bias=bias)
    geom = shapes.conv_geometry(
        shapes.as_shape(x_shape, "x_shape"), w.shape, stride=stride, padding=padding,
        dilation=dilation, groups=groups, bias_shape=None if bias is None else bias.shape,
    )  # fmt: skip
    check_activation(activation)
    check_algorithm(algorithm)
    target = resolve_target(target)
    computed = kernel_geometry(geom, dtype, target)
    layout = conv_layout(computed, dtype, target, constant_weight=True, algorithm=algorithm)
    original = w
    w = w.reshape(computed.w_shape)
    packed = w.copy() if layout is None else pack_conv_weight(w, layout)
    packed_shape = None if layout is None else packed.shape
    build = conv_computation(
        computed, dtype, bias is not None, activation, target, packed_shape, algorithm
    )
    key = (computed, dtype, bias is not None, activation, layout)  # layout fixes the packing
    kernel = cached_kernel("prepared_conv", key, build, target)
    constants = (packed,) if bias is None else (packed, bias.copy())
    direct = check = None
    if isinstance(layout, ops.WinogradTiles):
        check = nonfinite_check(math.prod(geom.x_shape), target)
        direct_args = dict(
            x_shape=geom.x_shape, stride=geom.stride, padding=geom.padding,
            dilation=geom.dilation, groups=geom.groups, activation=activation, target=target,
            algorithm="direct",
        )  # fmt: skip
        bias_copy = None if bias is None else bias.copy()
        direct = functools.cache(
            functools.partial(prepare_conv, original.copy(), bias_copy, **direct_args)
        )
    return PreparedConv(geom, kernel, constants, layout, direct, check)


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
        outputs = [conv_transpose_op(geom, target)(tx, tw, tb, geom, activation)]
        return [t for t in (tx, tw, tb) if t is not None], outputs

    return build


#: Sub-pixel transposed convolutions have at most this many stride phases; above it each
#: output gathers its taps (``ops.conv_transpose_gather``, stride-independent size). The
#: phases' interleave crashed TVM at stride 40 in 2-D (1600 branches), and compile time
#: grows with them (2 Zen 3 cores: k3 s8 3.7 s, k16 s8 145 s; the gather 0.2-0.5 s, as
#: fast at k16 s8, 1.7-2.5x slower on the suite's s2 workloads, which stay sub-pixel).
MAX_SUBPIXEL_PHASES = 16


def conv_transpose_op(
    geom: shapes.ConvTransposeGeometry, target: TargetArg = None
) -> Callable[..., te.Tensor]:
    """The TE form used for ``geom`` on ``target``: sub-pixel phases for stride > 1 (no
    products of inserted zeros) up to :data:`MAX_SUBPIXEL_PHASES` phases, a gather per
    output above (bounded compile time for any stride), else the plain flipped-kernel
    convolution (the dilate form, which inserts no zeros at stride 1). The phases are
    NCHW[x]c convolutions where
    :func:`dense_conv_blocks` has blocks that the output channels fill (AVX-512, 2 cores:
    256->128 k4 s2 16->32 in 1.08 instead of 1.70 ms), else direct ones (64->3 k4 s2
    64->128, one ragged block: 0.22 ms direct, 0.80 blocked)."""
    if not any(s > 1 for s in geom.stride):
        return ops.conv_transpose
    if math.prod(geom.stride) > MAX_SUBPIXEL_PHASES:
        return ops.conv_transpose_gather
    target = resolve_target(target)
    phase_geoms = [g for _, _, g in ops.subpixel_phases(geom)[2] if g is not None]

    @functools.cache
    def shared_out_block(dtype: str) -> int | None:
        """The phases share one output-channel block (the interleave's schedule splits the
        channels by it): the smallest any phase's register tile takes, so every phase's
        tile stays within the registers its own choice fits; None: direct phases."""
        blocks = [dense_conv_blocks(g, dtype, target) for g in phase_geoms]
        if not blocks or any(b is None or geom.out_channels % b.out_block for b in blocks):
            return None
        return min(b.out_block for b in blocks)

    def phase_conv(x, w, bias, phase_geom, activation):
        out_block = shared_out_block(str(x.dtype))
        if out_block is None:
            return ops.conv(x, w, bias, phase_geom, activation)
        blocks = dense_conv_blocks(phase_geom, str(x.dtype), target)
        blocks = dataclasses.replace(blocks, out_block=out_block)
        return ops.conv_nchwc(x, w, bias, phase_geom, blocks, activation)

    return functools.partial(ops.conv_transpose_subpixel, phase_conv=phase_conv)


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
        if layout is not None:  # nearest integer upsampling: per-phase folded kernels
            out = ops.nearest_upsample_conv(tx, tw, tb, layout, cgeom, activation)
        else:
            out = ops.resize_conv(tx, tw, tb, rgeom, cgeom, activation)
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
        outputs = ops.causal_conv_state(tx, tw, tb, ts, geom, activation)
        return [t for t in (tx, tw, tb, ts) if t is not None], list(outputs)

    key = (geom, dtype, bias is not None, state is not None, activation)
    kernel = cached_kernel("causal_conv_with_state", key, build, target)
    y, new_state = kernel(*[a for a in (x, w, bias, state) if a is not None])
    return y, new_state
