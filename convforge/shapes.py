"""Convolution arithmetic: the single source of truth for shapes, padding and validation.

Every TE op, ONNX exporter, CLI command and error message in convforge derives its
shapes from this module. Conventions (ONNX / PyTorch): data ``(N, C, *spatial)``,
convolution weight ``(O, C/groups, *kernel)``, transposed-convolution weight
``(C, O/groups, *kernel)``.

Along one spatial axis with input ``i``, kernel ``k``, stride ``s``, dilation ``d`` and
pads ``(lo, hi)``::

    convolution:             o = floor((i + lo + hi - d*(k-1) - 1) / s) + 1
    transposed convolution:  o = s*(i-1) + output_padding + d*(k-1) + 1 - lo - hi

All validation raises :class:`ValueError` naming the parameter and the rule broken. Every
size (stride, padding, dilation, kernel, output_shape, output sizes, shapes such as
``x_shape``) is parsed by one helper, :func:`as_ints`: ints, numpy integer scalars and
sequences (tuples, lists, 1-d integer arrays) of them are accepted; floats (even ``2.0``),
strings, bools and None are refused.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PaddingArg = int | str | Sequence[int] | Sequence[tuple[int, int]]

#: Padding modes accepted wherever ``padding`` is.
PADDING_MODES = ("valid", "same", "same_upper", "same_lower", "half", "full", "causal")


def is_int(value: object) -> bool:
    """Whether ``value`` is an integer as numpy users pass one: an ``int``, a numpy integer
    scalar or a 0-d integer array (``bool`` and ``numpy.bool_`` are not integers here)."""
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, numbers.Integral):
        return True
    return isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iu"


def _is_sequence(value: object) -> bool:
    """A list, tuple or other sequence, or a 1-d+ numpy array; never a string or bytes."""
    if isinstance(value, str | bytes | bytearray):
        return False
    if isinstance(value, np.ndarray):
        return value.ndim >= 1
    return isinstance(value, Sequence)


def as_int(value: object, name: str, *, minimum: int | None = None) -> int:
    """``value`` as a Python int: the one place sizes are parsed (see :func:`as_ints`).

    Accepts an int, a numpy integer or a 0-d integer array; refuses bools, floats (even
    ``2.0``), strings and None with a ValueError naming ``name``; with ``minimum``, refuses
    smaller values.
    """
    if not is_int(value):
        raise ValueError(f"{name} must be an integer (int or numpy integer), got {value!r}")
    result = int(value)
    if minimum is not None and result < minimum:
        rule = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return result


def as_ints(
    value: object,
    name: str,
    ndim: int | None = None,
    *,
    minimum: int | None = None,
    broadcast: bool = True,
) -> tuple[int, ...]:
    """The single size-normalizing helper: ``value`` as a tuple of Python ints.

    ``value`` is one integer (broadcast to ``ndim`` entries when ``broadcast`` and ``ndim``
    are given) or a sequence (list, tuple, 1-d numpy integer array) of integers, each as
    :func:`as_int` accepts them. Anything else (floats, strings such as ``"16"``, bools,
    None, nested sequences) raises ValueError naming ``name`` and the rule; so do a length
    other than ``ndim`` and entries below ``minimum``.
    """
    counted = "ints" if ndim is None else f"{ndim} ints"
    if is_int(value):
        if not broadcast or ndim is None:
            raise ValueError(f"{name} must be a sequence of {counted}, got {value!r}")
        values: tuple = (value,) * ndim
    elif _is_sequence(value):
        values = tuple(value)
        if ndim is not None and len(values) != ndim:
            form = "an int or a sequence" if broadcast else "a sequence"
            raise ValueError(f"{name} must be {form} of {counted}, got {value!r}")
    else:
        form = "an int or a sequence" if broadcast and ndim is not None else "a sequence"
        raise ValueError(f"{name} must be {form} of {counted} (integers), got {value!r}")
    if not all(is_int(v) for v in values):
        raise ValueError(f"{name} must hold integers (int or numpy integer), got {value!r}")
    result = tuple(int(v) for v in values)
    if minimum is not None and any(v < minimum for v in result):
        rule = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return result


def _is_real(value: object) -> bool:
    """A real number as numpy users pass one (int, float, numpy scalar; no bool, no str)."""
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and value.dtype.kind in "iuf"
    return isinstance(value, numbers.Real)


def as_shape(value: object, name: str) -> tuple[int, ...]:
    """An array shape given as a sequence of integers (``x_shape``): every entry an integer."""
    return as_ints(value, name, broadcast=False)


#: Elements any one tensor may have: TVM indexes buffers with int32 (a larger tensor failed
#: inside TVM with "Literal value ... exceeds range of int32"). Every geometry refuses a
#: larger input, weight, output or padded input when it is made, before any compilation.
MAX_ELEMENTS = 2**31 - 1


def check_index_range(**tensors: Sequence[int]) -> None:
    """Refuse (ValueError naming the tensor, its size and the limit) any of the named
    shapes with more than :data:`MAX_ELEMENTS` elements."""
    for name, shape in tensors.items():
        count = math.prod(int(v) for v in shape)
        if count > MAX_ELEMENTS:
            raise ValueError(
                f"{name} of shape {tuple(int(v) for v in shape)} has {count} elements, more "
                f"than {MAX_ELEMENTS} (2**31 - 1, the int32 index limit of convforge's kernels)"
            )


def check_positive_int(value: object, name: str) -> int:
    """``value`` as an int >= 1 (numpy integers accepted; bools, floats refused), else a
    ValueError naming ``name``."""
    if not is_int(value) or int(value) < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def as_tuple(
    value: int | Sequence[int], ndim: int, name: str, *, minimum: int = 1
) -> tuple[int, ...]:
    """Broadcast an int or check a length-``ndim`` sequence; every entry must be >= minimum
    (:func:`as_ints` with broadcasting)."""
    return as_ints(value, name, ndim, minimum=minimum)


def conv_output_size(i: int, k: int, s: int = 1, lo: int = 0, hi: int = 0, d: int = 1) -> int:
    """Output length of a convolution along one axis (may be <= 0 for invalid shapes)."""
    return (i + lo + hi - d * (k - 1) - 1) // s + 1


def conv_transpose_output_size(
    i: int, k: int, s: int = 1, lo: int = 0, hi: int = 0, d: int = 1, output_padding: int = 0
) -> int:
    """Output length of a transposed convolution along one axis."""
    return s * (i - 1) + output_padding + d * (k - 1) + 1 - lo - hi


def same_pads(i: int, k: int, s: int, d: int, lower: bool = False) -> tuple[int, int]:
    """Pads giving ``o = ceil(i/s)`` (ONNX SAME_UPPER; ``lower`` puts the odd pad first)."""
    o = -(-i // s)
    total = max((o - 1) * s + d * (k - 1) + 1 - i, 0)
    small, big = total // 2, total - total // 2
    return (big, small) if lower else (small, big)


def resolve_padding(
    padding: PaddingArg,
    in_size: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> tuple[tuple[int, int], ...]:
    """Turn any accepted ``padding`` form into explicit ``(lo, hi)`` pairs, one per axis.

    Forms: an int (all sides), ``ndim`` ints (both sides of each axis), ``ndim``
    ``(lo, hi)`` pairs, or a mode from :data:`PADDING_MODES`.
    """
    ndim = len(in_size)
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return ((0, 0),) * ndim
        if mode in ("same", "same_upper", "half"):
            return tuple(
                same_pads(i, k, s, d) for i, k, s, d in zip(in_size, kernel, stride, dilation)
            )
        if mode == "same_lower":
            return tuple(
                same_pads(i, k, s, d, lower=True)
                for i, k, s, d in zip(in_size, kernel, stride, dilation)
            )
        if mode == "full":
            return tuple((d * (k - 1),) * 2 for k, d in zip(kernel, dilation))
        if mode == "causal":
            if ndim != 1:
                raise ValueError(f"padding='causal' applies to 1-D convolution only, got {ndim}-D")
            return ((dilation[0] * (kernel[0] - 1), 0),)
        raise ValueError(f"padding mode {padding!r} is unknown; expected one of {PADDING_MODES}")
    if is_int(padding):
        pairs = ((padding, padding),) * ndim
    elif _is_sequence(padding):
        items = tuple(padding)
        if len(items) != ndim:
            raise ValueError(
                f"padding must be an int, a mode, {ndim} ints or {ndim} (lo, hi) pairs; got {padding!r}"
            )
        pairs = tuple(
            (p, p) if is_int(p) else tuple(p) if _is_sequence(p) else (p, p) for p in items
        )
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"padding pairs must be (lo, hi), got {padding!r}")
    else:
        raise ValueError(
            f"padding must be an int, a mode {PADDING_MODES}, {ndim} ints or {ndim} (lo, hi) "
            f"pairs of integers; got {padding!r}"
        )
    for pair in pairs:
        for p in pair:
            if not is_int(p) or p < 0:
                raise ValueError(f"padding must be non-negative integers, got {padding!r}")
    return tuple((int(lo), int(hi)) for lo, hi in pairs)


def receptive_field(layers: Sequence[tuple[int, int, int]]) -> int:
    """Receptive field (in input samples) of a stack of ``(kernel, stride, dilation)`` layers."""
    field, jump = 1, 1
    for k, s, d in layers:
        field += d * (k - 1) * jump
        jump *= s
    return field


def _check_rank(x_shape: Sequence[int], w_shape: Sequence[int], ndim: int | None) -> int:
    if len(x_shape) < 3 or len(x_shape) > 5:
        raise ValueError(f"x must have rank 3, 4 or 5 (N, C, *spatial), got shape {tuple(x_shape)}")
    if len(w_shape) != len(x_shape):
        raise ValueError(
            f"weight must have the rank of x ({len(x_shape)}), got shape {tuple(w_shape)}"
        )
    spatial = len(x_shape) - 2
    if ndim is not None and spatial != ndim:
        raise ValueError(f"x must have {ndim} spatial axes, got shape {tuple(x_shape)}")
    if any(int(v) <= 0 for v in (*x_shape, *w_shape)):
        raise ValueError(
            f"every axis of x and weight must be positive (no empty axis), "
            f"got x {tuple(x_shape)}, weight {tuple(w_shape)}"
        )
    return spatial


def _check_bias(bias_shape: Sequence[int] | None, channels: int) -> None:
    if bias_shape is not None and tuple(bias_shape) != (channels,):
        raise ValueError(f"bias must have shape ({channels},), got {tuple(bias_shape)}")


class _BatchChannelShapes:
    """The shapes of a geometry of ``(N, C, *in_size) -> (N, O, *out_size)``, from the
    ``batch``, ``in_channels``, ``out_channels``, ``in_size`` and ``out_size`` its subclass
    declares (as fields or properties)."""

    batch: int
    in_channels: int
    out_channels: int
    in_size: tuple[int, ...]
    out_size: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.in_size)

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.batch, self.in_channels, *self.in_size)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.batch, self.out_channels, *self.out_size)


@dataclass(frozen=True)
class _ConvFields(_BatchChannelShapes):
    """The fields a convolution and a transposed convolution share (in this order; each
    subclass appends its own, ending with ``out_size``)."""

    batch: int
    in_channels: int
    out_channels: int
    groups: int
    in_size: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class ConvGeometry(_ConvFields):
    """Every size of one N-d convolution, validated. Shapes are ``(N, C, *spatial)``."""

    out_size: tuple[int, ...]

    @property
    def w_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel)

    def __post_init__(self) -> None:
        padded = (
            self.batch,
            self.in_channels,
            *(i + max(lo, 0) + max(hi, 0) for i, (lo, hi) in zip(self.in_size, self.padding)),
        )
        check_index_range(x=self.x_shape, weight=self.w_shape, output=self.out_shape)
        check_index_range(padded_x=padded)

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the direct algorithm."""
        return (
            math.prod(self.out_shape) * (self.in_channels // self.groups) * math.prod(self.kernel)
        )

    @property
    def is_unpadded_1x1(self) -> bool:
        """Every kernel extent 1 and no padding (any stride)."""
        return all(k == 1 for k in self.kernel) and all(p == (0, 0) for p in self.padding)

    @property
    def is_pointwise(self) -> bool:
        """An unpadded 1x1 convolution with stride 1: a matrix multiply over the positions."""
        return self.is_unpadded_1x1 and all(s == 1 for s in self.stride)

    @property
    def is_row_pointwise(self) -> bool:
        """A pointwise 2-D convolution over one row (N, C, 1, P): the matrix multiply
        ``W (O x C/groups) @ X (C x P)`` per group (how the CPU computes 1x1s)."""
        return self.is_pointwise and self.ndim == 2 and self.in_size[0] == 1


def _conv_arguments(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    stride: int | Sequence[int],
    dilation: int | Sequence[int],
    groups: int,
    ndim: int | None,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], int]:
    """The arguments a convolution and a transposed convolution validate alike: both shapes
    (as int tuples of one rank, :func:`_check_rank`), ``stride`` and ``dilation`` per
    spatial axis, ``groups`` positive and dividing the input channels. Returns
    ``(x_shape, w_shape, stride, dilation, groups)``; a ValueError names the parameter."""
    x_shape, w_shape = as_shape(x_shape, "x_shape"), as_shape(w_shape, "w_shape")
    nd = _check_rank(x_shape, w_shape, ndim)
    stride_t = as_tuple(stride, nd, "stride")
    dilation_t = as_tuple(dilation, nd, "dilation")
    groups = check_positive_int(groups, "groups")
    if x_shape[1] % groups:
        raise ValueError(f"groups ({groups}) must divide the input channels ({x_shape[1]})")
    return x_shape, w_shape, stride_t, dilation_t, groups


def _check_window_fits(axis: int, size: int, k: int, d: int, lo: int, hi: int) -> None:
    """ValueError unless the dilated window (``d * (k - 1) + 1``) fits the input of ``size``
    padded by ``lo`` and ``hi`` along spatial ``axis`` (convolutions and pools alike)."""
    span = d * (k - 1) + 1
    if span > size + lo + hi:
        raise ValueError(
            f"kernel is larger than the padded input along spatial axis {axis}: "
            f"dilated kernel {span} (k={k}, dilation={d}) > padded input {size + lo + hi} "
            f"(size {size} + padding {lo}+{hi})"
        )


def conv_geometry(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: PaddingArg = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    bias_shape: Sequence[int] | None = None,
    ndim: int | None = None,
) -> ConvGeometry:
    """Validate a convolution's arguments and compute every size.

    Sizes are ints, numpy integers or sequences (lists, tuples, integer arrays) of them
    (see :func:`as_ints`); anything else raises ValueError naming the parameter.
    """
    x_shape, w_shape, stride_t, dilation_t, groups = _conv_arguments(
        x_shape, w_shape, stride, dilation, groups, ndim
    )
    batch, channels, *in_size = x_shape
    out_channels, w_in, *kernel = w_shape
    if out_channels % groups:
        raise ValueError(f"groups ({groups}) must divide the output channels ({out_channels})")
    if w_in != channels // groups:
        raise ValueError(
            f"weight shape {tuple(w_shape)} does not match: axis 1 must be "
            f"in_channels/groups = {channels}/{groups} = {channels // groups}"
        )
    _check_bias(bias_shape, out_channels)
    pads = resolve_padding(padding, in_size, kernel, stride_t, dilation_t)
    out_size = []
    for axis, (i, k, s, d, (lo, hi)) in enumerate(zip(in_size, kernel, stride_t, dilation_t, pads)):
        _check_window_fits(axis, i, k, d, lo, hi)
        out_size.append(conv_output_size(i, k, s, lo, hi, d))
    return ConvGeometry(
        batch, channels, out_channels, groups, tuple(in_size), tuple(kernel),
        stride_t, dilation_t, pads, tuple(out_size),
    )  # fmt: skip


def causal_conv1d_geometry(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    *,
    dilation: int = 1,
    groups: int = 1,
    bias_shape: Sequence[int] | None = None,
) -> ConvGeometry:
    """A dilated causal 1-D convolution: x (N, C, L), w (O, C/groups, K) -> (N, O, L).

    Stride 1 and pads ``(d*(k-1), 0)``: ``y[t]`` sees only ``x[t - d*(k-1) .. t]``.
    """
    if len(x_shape) != 3:
        raise ValueError(
            f"x must have shape (N, C, L) for causal_conv1d (rank 3), got {tuple(x_shape)}"
        )
    return conv_geometry(
        x_shape, w_shape, padding="causal", dilation=dilation, groups=groups,
        bias_shape=bias_shape, ndim=1,
    )  # fmt: skip


@dataclass(frozen=True)
class ConvTransposeGeometry(_ConvFields):
    """Every size of one N-d transposed convolution; weight is ``(C, O/groups, *kernel)``.

    ``padding`` and ``output_padding`` are the explicit ones that give ``out_size``; where
    an ``output_shape`` exceeds the unpadded output, ``output_padding`` includes the rows
    appended for it (see :func:`transpose_pads_for_output_shape`).
    """

    output_padding: tuple[int, ...]
    out_size: tuple[int, ...]

    @property
    def w_shape(self) -> tuple[int, ...]:
        return (self.in_channels, self.out_channels // self.groups, *self.kernel)

    def __post_init__(self) -> None:
        check_index_range(x=self.x_shape, weight=self.w_shape, output=self.out_shape)

    @property
    def macs(self) -> int:
        return math.prod(self.x_shape) * (self.out_channels // self.groups) * math.prod(self.kernel)

    def adjoint(self) -> ConvGeometry:
        """The forward convolution C (output-sized input -> input-sized output) whose C^T this is.

        Built with the same stride, dilation and pads; the extra ``output_padding`` rows
        at the high end are read by no output of C (they are cropped by the floor).
        """
        return ConvGeometry(
            self.batch, self.out_channels, self.in_channels, self.groups, self.out_size,
            self.kernel, self.stride, self.dilation, self.padding, self.in_size,
        )  # fmt: skip


def transpose_pads_for_output_shape(
    i: int, k: int, s: int, d: int, output_padding: int, out: int, *, upper: bool, axis: int = 0
) -> tuple[tuple[int, int], int]:
    """Pads and output_padding giving a transposed convolution the output length ``out``.

    Returns ``((lo, hi), output_padding)``. With ``total = s*(i-1) + output_padding +
    d*(k-1) + 1 - out`` (ONNX ConvTranspose):

    - ``total >= 0``: ``upper`` (ONNX ``auto_pad=SAME_UPPER``) gives ``(total//2,
      total - total//2)``, otherwise (``NOTSET``, ``SAME_LOWER``) ``(total - total//2,
      total//2)``; the spec text and onnxruntime 1.32 agree on this split.
    - ``total < 0``: the spec is silent; onnxruntime pads nothing and appends ``-total``
      zero rows at the end, accepting this while ``output_padding - total < s`` (the
      output still maps back onto ``i`` inputs). We do the same: the extra rows join
      ``output_padding``.

    Raises ValueError if ``out`` is unreachable.
    """
    full = conv_transpose_output_size(i, k, s, 0, 0, d, output_padding)
    total = full - out
    if out < 1 or (total < 0 and output_padding - total >= s):
        largest = max(full, full - output_padding + s - 1)
        raise ValueError(
            f"output_shape is unreachable along spatial axis {axis}: size {out} must be in "
            f"[1, {largest}] for input {i}, kernel {k}, stride {s}, dilation {d}, "
            f"output_padding {output_padding}"
        )
    if total < 0:
        return (0, 0), output_padding - total
    small, big = total // 2, total - total // 2
    return ((small, big) if upper else (big, small)), output_padding


def conv_transpose_geometry(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: PaddingArg = 0,
    output_padding: int | Sequence[int] = 0,
    output_shape: Sequence[int] | None = None,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    bias_shape: Sequence[int] | None = None,
) -> ConvTransposeGeometry:
    """Validate a transposed convolution's arguments and compute every size.

    ``output_shape`` (spatial sizes, or the full ``(N, C, *spatial)``) derives the pads as
    the ONNX ConvTranspose spec does (see :func:`transpose_pads_for_output_shape`): the
    odd pad at the end for ``padding='same'``/``'same_upper'`` (ONNX ``SAME_UPPER``), at
    the start otherwise (``NOTSET``, ``SAME_LOWER``); explicit pads are then ignored.
    ``padding='same'`` (or ``'same_lower'``) without ``output_shape`` means
    ``output_shape = input * stride``, as the spec says, also where that exceeds the
    unpadded output (then zero rows are appended). onnxruntime 1.32 differs there: with
    ``auto_pad`` and no ``output_shape`` it clamps the total padding at 0 and returns the
    unpadded output, shorter than ``input * stride``
    (``convforge.export.conv_transpose_model`` writes ``output_shape`` to get the spec's
    result). ``output_padding`` must be < max(stride, dilation) (PyTorch's rule);
    onnxruntime refuses any ``output_padding >= stride``.
    """
    x_shape, w_shape, stride_t, dilation_t, groups = _conv_arguments(
        x_shape, w_shape, stride, dilation, groups, None
    )
    nd = len(stride_t)
    batch, channels, *in_size = x_shape
    w_in, w_out, *kernel = w_shape
    out_pad = as_tuple(output_padding, nd, "output_padding", minimum=0)
    if w_in != channels:
        raise ValueError(
            f"weight shape {tuple(w_shape)} does not match: axis 0 must be in_channels = {channels}"
        )
    out_channels = w_out * groups
    _check_bias(bias_shape, out_channels)
    for axis, (op, s, d) in enumerate(zip(out_pad, stride_t, dilation_t)):
        if op >= max(s, d):
            raise ValueError(
                f"output_padding ({op}) must be smaller than max(stride, dilation) = {max(s, d)} "
                f"along spatial axis {axis}"
            )
    mode = padding.lower() if isinstance(padding, str) else None
    if mode == "causal":
        raise ValueError("padding='causal' is not defined for transposed convolution")
    if mode is not None and mode not in PADDING_MODES:
        raise ValueError(f"padding mode {padding!r} is unknown; expected one of {PADDING_MODES}")
    upper = mode in ("same", "same_upper", "half")
    if mode in ("same", "same_upper", "same_lower", "half") and output_shape is None:
        output_shape = tuple(i * s for i, s in zip(in_size, stride_t))
    if output_shape is not None:
        target = as_ints(output_shape, "output_shape", broadcast=False)
        if len(target) == nd + 2:
            if tuple(target[:2]) != (batch, out_channels):
                raise ValueError(
                    f"output_shape {target} must start with (N, C_out) = ({batch}, {out_channels})"
                )
            target = target[2:]
        if len(target) != nd:
            raise ValueError(
                f"output_shape must give {nd} integer spatial sizes (or N, C_out and them), "
                f"got {output_shape!r}"
            )
        pads, adjusted = [], []
        for axis, (i, k, s, d, op, o) in enumerate(
            zip(in_size, kernel, stride_t, dilation_t, out_pad, target)
        ):
            pair, op = transpose_pads_for_output_shape(
                i, k, s, d, op, int(o), upper=upper, axis=axis
            )
            pads.append(pair)
            adjusted.append(op)
        pads_t, out_pad = tuple(pads), tuple(adjusted)
    else:
        pads_t = resolve_padding(padding, in_size, kernel, stride_t, dilation_t)
    out_size = []
    for axis, (i, k, s, d, op, (lo, hi)) in enumerate(
        zip(in_size, kernel, stride_t, dilation_t, out_pad, pads_t)
    ):
        o = conv_transpose_output_size(i, k, s, lo, hi, d, op)
        if o < 1:
            raise ValueError(
                f"padding {pads_t[axis]} removes the whole output along spatial axis {axis}: "
                f"lo + hi = {lo + hi} must be smaller than the unpadded output size {o + lo + hi}"
            )
        out_size.append(o)
    return ConvTransposeGeometry(
        batch, channels, out_channels, groups, tuple(in_size), tuple(kernel), stride_t,
        dilation_t, pads_t, out_pad, tuple(out_size),
    )  # fmt: skip


# --- Resize ------------------------------------------------------------------------------

#: Interpolation modes of :func:`resize_geometry` (ONNX Resize ``mode``).
RESIZE_MODES = ("nearest", "linear", "cubic")
#: ONNX Resize ``coordinate_transformation_mode`` values that need no ``roi``; the
#: remaining one, :data:`CROP_COORDINATE_MODE`, is accepted together with a ``roi``.
COORDINATE_MODES = (
    "half_pixel",
    "half_pixel_symmetric",
    "asymmetric",
    "align_corners",
    "pytorch_half_pixel",
)
#: ONNX Resize's coordinate mode that samples a region of interest (``roi``).
CROP_COORDINATE_MODE = "tf_crop_and_resize"
#: ONNX Resize ``nearest_mode`` values.
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def as_float32(value: float) -> float:
    """The float32 value nearest ``value`` (ONNX Resize scales are float32 tensors)."""
    return float(np.float32(value))


def resize_output_size(i: int, scale: float) -> int:
    """ONNX Resize output length: ``floor(i * scale)`` with ``scale`` rounded to float32."""
    return math.floor(i * as_float32(scale))


class _ChannelwiseShapes(_BatchChannelShapes):
    """Shapes of an op that keeps the channels, ``(N, C, *in_size) -> (N, C, *out_size)``
    (resize and pooling geometries, which declare ``batch``, ``channels``, ``in_size`` and
    ``out_size``); by default ``__post_init__`` checks that every index fits in int32/int64
    as :func:`check_index_range` requires."""

    channels: int

    @property
    def in_channels(self) -> int:
        return self.channels

    @property
    def out_channels(self) -> int:
        return self.channels

    def __post_init__(self) -> None:
        check_index_range(x=self.x_shape, output=self.out_shape)


@dataclass(frozen=True)
class ResizeGeometry(_ChannelwiseShapes):
    """Every size and attribute of one N-d resize of ``(N, C, *in_size)``.

    ``scale`` holds the float32 per-axis scales the coordinate transform uses: the given
    scales, or ``float32(out) / float32(in)`` when output sizes were given
    (``sizes_given``; the ONNX export then feeds ``sizes`` instead of ``scales``).
    ``cubic_coeff_a`` and ``exclude_outside`` shape the 'cubic' kernel; ``roi`` (one
    ``(start, end)`` per spatial axis, normalized) and ``extrapolation_value`` belong to
    'tf_crop_and_resize' (``roi`` is None under every other coordinate mode).
    ``antialias`` (ONNX Resize-18, 'linear' and 'cubic' only): a downscaled axis
    interpolates with the filter's support stretched by ``1/scale``
    (:func:`convforge.ops.resize.resize_antialias`).
    """

    batch: int
    channels: int
    in_size: tuple[int, ...]
    out_size: tuple[int, ...]
    scale: tuple[float, ...]
    mode: str
    coordinate_mode: str
    nearest_mode: str
    sizes_given: bool
    cubic_coeff_a: float = -0.75
    exclude_outside: bool = False
    extrapolation_value: float = 0.0
    roi: tuple[tuple[float, float], ...] | None = None
    antialias: bool = False


def _check_data_rank(x_shape: Sequence[int], name: str = "x") -> int:
    x_shape = as_shape(x_shape, f"{name}_shape")
    if len(x_shape) < 3 or len(x_shape) > 5:
        raise ValueError(
            f"{name} must have rank 3, 4 or 5 (N, C, *spatial), got shape {tuple(x_shape)}"
        )
    if any(int(v) <= 0 for v in x_shape):
        raise ValueError(f"{name} shape must be positive, got {tuple(x_shape)}")
    return len(x_shape) - 2


def resize_geometry(
    x_shape: Sequence[int],
    *,
    scale: float | Sequence[float] | None = None,
    size: int | Sequence[int] | None = None,
    mode: str = "nearest",
    coordinate_mode: str = "asymmetric",
    nearest_mode: str = "floor",
    cubic_coeff_a: float = -0.75,
    exclude_outside: bool = False,
    extrapolation_value: float = 0.0,
    roi: Sequence[tuple[float, float]] | None = None,
    antialias: bool = False,
) -> ResizeGeometry:
    """Validate a resize's arguments (exactly one of ``scale``, ``size``) and compute its sizes.

    ``scale``: a positive finite number or one per spatial axis; output = floor(i * scale).
    ``size``: output spatial sizes (an int or one per axis). ``cubic_coeff_a``,
    ``exclude_outside``, ``extrapolation_value``: the ONNX Resize attributes. ``roi``: one
    finite ``(start, end)`` per spatial axis, given exactly when ``coordinate_mode`` is
    'tf_crop_and_resize' (ONNX's ``roi`` input restricted to the spatial axes).
    ``antialias``: ONNX Resize-18's attribute (a bool; modes 'linear' and 'cubic' only,
    as onnxruntime and ONNX's reference define it).
    """
    nd = _check_data_rank(x_shape)
    batch, channels, *in_size = as_shape(x_shape, "x_shape")
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {RESIZE_MODES}, got {mode!r}")
    if coordinate_mode not in COORDINATE_MODES and (
        coordinate_mode != CROP_COORDINATE_MODE or roi is None
    ):
        raise ValueError(
            f"coordinate_mode must be one of {COORDINATE_MODES} (or {CROP_COORDINATE_MODE!r} "
            f"with a roi), got {coordinate_mode!r}"
        )
    if nearest_mode not in NEAREST_MODES:
        raise ValueError(f"nearest_mode must be one of {NEAREST_MODES}, got {nearest_mode!r}")
    for name, value in (
        ("cubic_coeff_a", cubic_coeff_a),
        ("extrapolation_value", extrapolation_value),
    ):
        if not _is_real(value) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not isinstance(exclude_outside, bool):
        raise ValueError(f"exclude_outside must be a bool, got {exclude_outside!r}")
    if not isinstance(antialias, bool):
        raise ValueError(f"antialias must be a bool, got {antialias!r}")
    if antialias and mode == "nearest":
        raise ValueError("antialias applies to modes 'linear' and 'cubic' only, got 'nearest'")
    roi_t = None
    if roi is not None:
        if coordinate_mode != CROP_COORDINATE_MODE:
            raise ValueError(
                f"roi is used only by coordinate_mode {CROP_COORDINATE_MODE!r}, got "
                f"coordinate_mode {coordinate_mode!r}"
            )
        try:
            roi_t = tuple((float(start), float(end)) for start, end in roi)
        except (TypeError, ValueError):
            roi_t = ()
        if len(roi_t) != nd or not all(map(math.isfinite, itertools.chain(*roi_t))):
            raise ValueError(
                f"roi must hold {nd} (start, end) pairs of finite numbers (one per spatial "
                f"axis), got {roi!r}"
            )
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale and size")
    if size is not None:
        out_size = as_tuple(size, nd, "size")
        scales = tuple(as_float32(as_float32(o) / as_float32(i)) for o, i in zip(out_size, in_size))
    else:
        if _is_real(scale):
            raw = (scale,) * nd
        else:
            raw = tuple(scale) if _is_sequence(scale) else ()
            if len(raw) != nd:
                raise ValueError(
                    f"scale must be a number or a sequence of {nd} numbers (one per spatial "
                    f"axis), got {scale!r}"
                )
        for s in raw:
            if not _is_real(s) or not math.isfinite(s):
                raise ValueError(f"scale must hold finite numbers, got {scale!r}")
            if s <= 0:
                raise ValueError(f"scale must be positive, got {scale!r}")
        raw = tuple(float(s) for s in raw)
        scales = tuple(as_float32(s) for s in raw)
        out_size = tuple(resize_output_size(i, s) for i, s in zip(in_size, scales))
        for axis, (i, s, o) in enumerate(zip(in_size, raw, out_size)):
            if o < 1:
                raise ValueError(
                    f"scale {s} leaves no output along spatial axis {axis}: floor({i} * {s}) = {o}"
                )
    return ResizeGeometry(
        batch, channels, tuple(in_size), tuple(out_size), scales, mode, coordinate_mode,
        nearest_mode, size is not None, float(cubic_coeff_a), exclude_outside,
        float(extrapolation_value), roi_t, antialias,
    )  # fmt: skip


# --- Pooling -----------------------------------------------------------------------------

#: Pooling kinds of :func:`pool_geometry`.
POOL_KINDS = ("max", "avg")


def pool_output_size(
    i: int, k: int, s: int = 1, lo: int = 0, hi: int = 0, d: int = 1, ceil_mode: bool = False
) -> int:
    """Output length of a pooling along one axis (ONNX / PyTorch).

    ``floor`` (or ``ceil`` with ``ceil_mode``) of ``(i + lo + hi - d*(k-1) - 1) / s``, plus
    one; with ``ceil_mode`` a last window that would start past ``i + lo`` (inside the high
    padding or beyond) is dropped.
    """
    span = i + lo + hi - d * (k - 1) - 1
    if not ceil_mode:
        return span // s + 1
    o = -(-span // s) + 1
    if (o - 1) * s >= i + lo:
        o -= 1
    return o


@dataclass(frozen=True)
class _PoolFields(_ChannelwiseShapes):
    """The fields every pooling geometry starts with (each appends its own, ending with
    ``out_size``)."""

    kind: str
    batch: int
    channels: int
    in_size: tuple[int, ...]


@dataclass(frozen=True)
class PoolGeometry(_PoolFields):
    """Every size of one N-d max or average pooling of ``(N, C, *in_size)``."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    ceil_mode: bool
    count_include_pad: bool
    out_size: tuple[int, ...]

    def __post_init__(self) -> None:
        check_index_range(
            x=self.x_shape, output=self.out_shape, padded_x=(*self.x_shape[:2], *self.reach)
        )

    @property
    def windows_tile(self) -> bool:
        """Whether the windows are disjoint and adjacent (kernel == stride, no dilation)."""
        return self.kernel == self.stride and set(self.dilation) == {1}

    @property
    def windows_inside(self) -> bool:
        """Whether the windows tile the unpadded input from its origin, every one inside it
        (no padding, no ``ceil_mode`` overhang; a remainder past the last window is dropped):
        output ``p`` reads exactly the inputs ``[p*k, p*k + k)``."""
        return (
            self.windows_tile
            and all(lo == 0 and hi == 0 for lo, hi in self.padding)
            and all(o * k <= i for o, k, i in zip(self.out_size, self.kernel, self.in_size))
        )

    @property
    def reach(self) -> tuple[int, ...]:
        """Padded length each axis must have so every window lies inside it (ceil_mode may
        need more than ``i + lo + hi``)."""
        return tuple(
            max(i + lo + hi, (o - 1) * s + d * (k - 1) + 1)
            for i, k, s, d, (lo, hi), o in zip(
                self.in_size, self.kernel, self.stride, self.dilation, self.padding, self.out_size
            )
        )


def pool_geometry(
    x_shape: Sequence[int],
    kernel: int | Sequence[int],
    *,
    kind: str,
    stride: int | Sequence[int] | None = None,
    padding: PaddingArg = 0,
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
    count_include_pad: bool = False,
) -> PoolGeometry:
    """Validate a pooling's arguments and compute every size.

    ``stride`` defaults to 1 (ONNX); ``dilation`` applies to both kinds (ONNX AveragePool
    allows it since opset 19); every explicit pad must be smaller than the kernel (ONNX
    Runtime and PyTorch require it).
    """
    nd = _check_data_rank(x_shape)
    if kind not in POOL_KINDS:
        raise ValueError(f"kind must be one of {POOL_KINDS}, got {kind!r}")
    batch, channels, *in_size = as_shape(x_shape, "x_shape")
    kernel_t = as_tuple(kernel, nd, "kernel")
    stride_t = as_tuple(1 if stride is None else stride, nd, "stride")
    dilation_t = as_tuple(dilation, nd, "dilation")
    for flag, name in ((ceil_mode, "ceil_mode"), (count_include_pad, "count_include_pad")):
        if not isinstance(flag, bool | np.bool_):
            raise ValueError(f"{name} must be a bool, got {flag!r}")
    ceil_mode, count_include_pad = bool(ceil_mode), bool(count_include_pad)
    pads = resolve_padding(padding, in_size, kernel_t, stride_t, dilation_t)
    out_size = []
    for axis, (i, k, s, d, (lo, hi)) in enumerate(
        zip(in_size, kernel_t, stride_t, dilation_t, pads)
    ):
        if lo >= k or hi >= k:
            raise ValueError(
                f"padding ({lo}, {hi}) must be smaller than the kernel ({k}) along spatial axis {axis}"
            )
        _check_window_fits(axis, i, k, d, lo, hi)
        out_size.append(pool_output_size(i, k, s, lo, hi, d, ceil_mode))
    return PoolGeometry(
        kind, batch, channels, tuple(in_size), kernel_t, stride_t, dilation_t, pads, ceil_mode,
        count_include_pad, tuple(out_size),
    )  # fmt: skip


def adaptive_cell(index: int, in_len: int, out_len: int) -> tuple[int, int]:
    """Input range ``[floor(index*I/O), ceil((index+1)*I/O))`` of adaptive-pooling cell ``index``."""
    return (index * in_len) // out_len, -(-((index + 1) * in_len) // out_len)


def adaptive_max_cell(in_len: int, out_len: int) -> int:
    """Length of the longest adaptive-pooling cell along one axis."""
    return max(e - s for s, e in (adaptive_cell(i, in_len, out_len) for i in range(out_len)))


@dataclass(frozen=True)
class AdaptivePoolGeometry(_PoolFields):
    """Adaptive pooling of ``(N, C, *in_size)`` to the grid ``out_size`` (PyTorch semantics)."""

    out_size: tuple[int, ...]

    @property
    def window(self) -> tuple[int, ...]:
        """Longest cell along each axis (the reduction extent)."""
        return tuple(adaptive_max_cell(i, o) for i, o in zip(self.in_size, self.out_size))

    def cells(self, axis: int) -> list[tuple[int, int]]:
        """``[start, end)`` of every cell along spatial ``axis``."""
        i, o = self.in_size[axis], self.out_size[axis]
        return [adaptive_cell(j, i, o) for j in range(o)]


def adaptive_pool_geometry(
    x_shape: Sequence[int], output_size: int | Sequence[int], *, kind: str
) -> AdaptivePoolGeometry:
    """Validate an adaptive pooling: ``output_size`` is an int or one positive int per axis."""
    nd = _check_data_rank(x_shape)
    if kind not in POOL_KINDS:
        raise ValueError(f"kind must be one of {POOL_KINDS}, got {kind!r}")
    batch, channels, *in_size = as_shape(x_shape, "x_shape")
    out = as_tuple(output_size, nd, "output_size")
    return AdaptivePoolGeometry(kind, batch, channels, tuple(in_size), out)


def global_pool_geometry(x_shape: Sequence[int], *, kind: str) -> AdaptivePoolGeometry:
    """Global pooling = adaptive pooling to a grid of ones: ``(N, C, *S) -> (N, C, 1, ...)``."""
    nd = _check_data_rank(x_shape)
    return adaptive_pool_geometry(x_shape, (1,) * nd, kind=kind)


# --- Dense layers and classifier heads ---------------------------------------------------


@dataclass(frozen=True)
class DenseGeometry:
    """``y = x @ w.T + b``: x ``(N, F)``, w ``(K, F)``, b ``(K,)`` -> ``(N, K)`` (ONNX Gemm transB=1)."""

    batch: int
    features: int
    classes: int

    def __post_init__(self) -> None:
        check_index_range(x=self.x_shape, weight=self.w_shape, output=self.out_shape)

    @property
    def x_shape(self) -> tuple[int, int]:
        return (self.batch, self.features)

    @property
    def w_shape(self) -> tuple[int, int]:
        return (self.classes, self.features)

    @property
    def out_shape(self) -> tuple[int, int]:
        return (self.batch, self.classes)


def dense_geometry(
    x_shape: Sequence[int], w_shape: Sequence[int], bias_shape: Sequence[int] | None = None
) -> DenseGeometry:
    """Validate a dense layer: x ``(N, F)``, w ``(K, F)``, optional bias ``(K,)``."""
    if len(x_shape) != 2 or any(int(v) <= 0 for v in x_shape):
        raise ValueError(f"x must have a positive shape (N, F), got {tuple(x_shape)}")
    if len(w_shape) != 2 or any(int(v) <= 0 for v in w_shape):
        raise ValueError(f"w must have a positive shape (K, F), got {tuple(w_shape)}")
    if int(w_shape[1]) != int(x_shape[1]):
        raise ValueError(
            f"w shape {tuple(w_shape)} does not match: axis 1 must be the features of x "
            f"({int(x_shape[1])})"
        )
    _check_bias(bias_shape, int(w_shape[0]))
    return DenseGeometry(int(x_shape[0]), int(x_shape[1]), int(w_shape[0]))


def check_softmax_input(x_shape: Sequence[int]) -> None:
    """Softmax runs along axis 1 (classes) of a ``(N, K, ...)`` array."""
    if len(x_shape) < 2 or any(int(v) <= 0 for v in x_shape):
        raise ValueError(
            f"x must have rank >= 2 (N, classes, ...) and a positive shape, got {tuple(x_shape)}"
        )


def flatten_features(x_shape: Sequence[int]) -> int:
    """Features of ``(N, C, *S)`` flattened from axis 1 (ONNX Flatten axis=1): ``C * prod(S)``."""
    return math.prod(int(v) for v in x_shape[1:])


# --- Nearest upsampling + convolution as per-phase convolutions --------------------------


def nearest_repeat_factors(geom: ResizeGeometry) -> tuple[int, ...] | None:
    """Integer factors ``f`` when ``geom`` is exactly ``u[o] = x[o // f]`` on every axis, else None.

    That holds for mode 'nearest' with integer scales (out = f * in) under 'asymmetric' +
    'floor' (and + 'round_prefer_floor' for f <= 2: ``o/2`` ties round down), and under the
    half-pixel modes with a rounding ``nearest_mode``: their source coordinate
    ``(o + 0.5)/f - 0.5`` is never a tie and rounds to ``o // f``.
    """
    if geom.mode != "nearest":
        return None
    asymmetric_floor = geom.coordinate_mode == "asymmetric" and (
        geom.nearest_mode == "floor"
        or (geom.nearest_mode == "round_prefer_floor" and all(s <= 2 for s in geom.scale))
    )
    half_pixel_round = geom.coordinate_mode in (
        "half_pixel",
        "half_pixel_symmetric",
        "pytorch_half_pixel",
    ) and geom.nearest_mode in ("round_prefer_floor", "round_prefer_ceil")
    if not (asymmetric_floor or half_pixel_round):
        return None
    factors = []
    for i, o, s in zip(geom.in_size, geom.out_size, geom.scale):
        if not float(s).is_integer() or o != i * int(s):
            return None
        factors.append(int(s))
    return tuple(factors)


@dataclass(frozen=True)
class PhaseConvLayout:
    """Convolution of an x``f`` nearest-upsampled input computed on the low-resolution input.

    Output ``p`` of the convolution reads upsampled samples ``t = p*s - lo + r*d``, that is
    input samples ``t // f``. With ``t' = p*s + shift`` (``shift = pad_lo*f - lo``, so
    ``t' >= 0``), ``phase = t' % f`` and ``base = t' // f``, tap ``r`` reads the padded
    input at ``base + (phase + r*d) // f``: the ``k`` taps fold into ``taps`` =
    ``(f - 1 + d*(k-1)) // f + 1`` per phase (x2 nearest + 3x3: 2x2 per phase, 2.25x fewer
    multiply-adds), and the upsampled tensor is never formed. Stride 1: output ``p = f*j + ph``
    (output phase ``ph``, row ``j < rows = ceil(out/f)``) reads the padded input at
    ``j + (ph + shift) // f + m`` with the folded kernel of input phase ``(ph + shift) % f``.
    """

    factors: tuple[int, ...]
    taps: tuple[int, ...]
    shift: tuple[int, ...]
    rows: tuple[int, ...]
    x_padding: tuple[tuple[int, int], ...]

    @property
    def ndim(self) -> int:
        return len(self.factors)


def phase_conv_layout(
    resize_geom: ResizeGeometry, conv_geom: ConvGeometry
) -> PhaseConvLayout | None:
    """The per-phase layout of ``conv(resize(x))``, or None unless the resize is a repeat
    (:func:`nearest_repeat_factors`) and the convolution has stride 1."""
    factors = nearest_repeat_factors(resize_geom)
    if factors is None or all(f == 1 for f in factors) or any(s != 1 for s in conv_geom.stride):
        return None
    taps, shift, rows, pads = [], [], [], []
    for f, i, k, d, (lo, _), o in zip(
        factors, resize_geom.in_size, conv_geom.kernel, conv_geom.dilation, conv_geom.padding,
        conv_geom.out_size,
    ):  # fmt: skip
        m = (f - 1 + d * (k - 1)) // f + 1
        pad_lo = -(-lo // f)
        sh = pad_lo * f - lo
        n_rows = -(-o // f)
        taps.append(m)
        shift.append(sh)
        rows.append(n_rows)
        pads.append((pad_lo, max(0, n_rows + (f - 1 + sh) // f + m - 1 - i - pad_lo)))
    return PhaseConvLayout(factors, tuple(taps), tuple(shift), tuple(rows), tuple(pads))


def causal_state_length(kernel: int, dilation: int = 1) -> int:
    """Past input samples a causal convolution needs to continue a sequence: ``d*(k-1)``."""
    return dilation * (kernel - 1)


@dataclass(frozen=True)
class CausalStateGeometry:
    """A causal 1-D convolution that carries its past input as a state.

    ``y = conv(concat(state, x), w)`` with 'valid' padding, so ``y`` has the length of ``x``;
    ``present_state`` is the last ``d*(k-1)`` samples of ``concat(state, x)``. With a zero
    state this is :func:`causal_conv1d` (left padding ``d*(k-1)``). ``conv`` is the geometry
    of the valid convolution over the concatenation (length ``state_length + L``).
    """

    conv: ConvGeometry
    state_length: int

    @property
    def x_shape(self) -> tuple[int, int, int]:
        c = self.conv
        return (c.batch, c.in_channels, c.in_size[0] - self.state_length)

    @property
    def state_shape(self) -> tuple[int, int, int]:
        return (self.conv.batch, self.conv.in_channels, self.state_length)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.conv.out_shape

    @property
    def length(self) -> int:
        """Samples per call (the length of ``x`` and ``y``)."""
        return self.conv.out_size[0]


def causal_state_geometry(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    *,
    dilation: int = 1,
    groups: int = 1,
    bias_shape: Sequence[int] | None = None,
    state_shape: Sequence[int] | None = None,
) -> CausalStateGeometry:
    """Validate a causal convolution with state: x (N, C, L), w (O, C/groups, k),
    state (N, C, d*(k-1)) (``None``: not given, zeros)."""
    if len(x_shape) != 3:
        raise ValueError(f"x must have shape (N, C, L), got {tuple(x_shape)}")
    dilation = check_positive_int(dilation, "dilation")
    x_shape, w_shape = as_shape(x_shape, "x_shape"), as_shape(w_shape, "w_shape")
    _check_rank(x_shape, w_shape, 1)
    batch, channels, length = (int(v) for v in x_shape)
    state_length = causal_state_length(int(w_shape[2]), dilation)
    expected = (batch, channels, state_length)
    if state_shape is not None and as_shape(state_shape, "state_shape") != expected:
        raise ValueError(
            f"state must have shape (N, C, dilation*(k-1)) = {expected}, got {tuple(state_shape)}"
        )
    conv = conv_geometry(
        (batch, channels, state_length + length), w_shape, padding="valid",
        dilation=dilation, groups=groups, bias_shape=bias_shape,
    )  # fmt: skip
    return CausalStateGeometry(conv, state_length)


def depthwise_causal_state_geometry(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    *,
    bias_shape: Sequence[int] | None = None,
    state_shape: Sequence[int] | None = None,
) -> CausalStateGeometry:
    """ONNX CausalConvWithState (opset 27): depthwise, no dilation.

    x (N, C, L), weight (C, 1, k), bias (C,), past_state (N, C, k-1).
    """
    if len(x_shape) != 3:
        raise ValueError(f"x must have shape (N, C, L), got {tuple(x_shape)}")
    channels = int(x_shape[1])
    if len(w_shape) != 3 or int(w_shape[0]) != channels or int(w_shape[1]) != 1:
        raise ValueError(
            f"weight must have shape (C, 1, k) = ({channels}, 1, k) for a depthwise causal "
            f"convolution, got {tuple(w_shape)}"
        )
    return causal_state_geometry(
        x_shape, w_shape, groups=channels, bias_shape=bias_shape, state_shape=state_shape
    )
