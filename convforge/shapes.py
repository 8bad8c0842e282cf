"""Convolution arithmetic: the single source of truth for shapes, padding and validation.

Every TE op, ONNX exporter, CLI command and error message in convforge derives its
shapes from this module. Conventions (ONNX / PyTorch): data ``(N, C, *spatial)``,
convolution weight ``(O, C/groups, *kernel)``, transposed-convolution weight
``(C, O/groups, *kernel)``.

Along one spatial axis with input ``i``, kernel ``k``, stride ``s``, dilation ``d`` and
pads ``(lo, hi)``::

    convolution:             o = floor((i + lo + hi - d*(k-1) - 1) / s) + 1
    transposed convolution:  o = s*(i-1) + output_padding + d*(k-1) + 1 - lo - hi

All validation raises :class:`ValueError` naming the parameter and the rule broken.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

PaddingArg = int | str | Sequence[int] | Sequence[tuple[int, int]]

#: Padding modes accepted wherever ``padding`` is.
PADDING_MODES = ("valid", "same", "same_upper", "same_lower", "half", "full", "causal")


def as_tuple(
    value: int | Sequence[int], ndim: int, name: str, *, minimum: int = 1
) -> tuple[int, ...]:
    """Broadcast an int or check a length-``ndim`` sequence; every entry must be >= minimum."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        values = (value,) * ndim
    else:
        values = tuple(value)
        if len(values) != ndim:
            raise ValueError(f"{name} must be an int or a sequence of {ndim} ints, got {value!r}")
    for v in values:
        if isinstance(v, bool) or not float(v).is_integer():
            raise ValueError(f"{name} must hold integers, got {value!r}")
        if v < minimum:
            rule = "positive" if minimum == 1 else f">= {minimum}"
            raise ValueError(f"{name} must be {rule}, got {value!r}")
    return tuple(int(v) for v in values)


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
    if isinstance(padding, int) and not isinstance(padding, bool):
        pairs = ((padding, padding),) * ndim
    else:
        items = tuple(padding)
        if len(items) != ndim:
            raise ValueError(
                f"padding must be an int, a mode, {ndim} ints or {ndim} (lo, hi) pairs; got {padding!r}"
            )
        pairs = tuple((p, p) if isinstance(p, int) else tuple(p) for p in items)
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"padding pairs must be (lo, hi), got {padding!r}")
    for pair in pairs:
        for p in pair:
            if isinstance(p, bool) or not isinstance(p, int) or p < 0:
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
            f"shapes must be positive, got x {tuple(x_shape)}, weight {tuple(w_shape)}"
        )
    return spatial


def _check_bias(bias_shape: Sequence[int] | None, channels: int) -> None:
    if bias_shape is not None and tuple(bias_shape) != (channels,):
        raise ValueError(f"bias must have shape ({channels},), got {tuple(bias_shape)}")


@dataclass(frozen=True)
class ConvGeometry:
    """Every size of one N-d convolution, validated. Shapes are ``(N, C, *spatial)``."""

    batch: int
    in_channels: int
    out_channels: int
    groups: int
    in_size: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    out_size: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.in_size)

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.batch, self.in_channels, *self.in_size)

    @property
    def w_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.batch, self.out_channels, *self.out_size)

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the direct algorithm."""
        return (
            math.prod(self.out_shape) * (self.in_channels // self.groups) * math.prod(self.kernel)
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
    """Validate a convolution's arguments and compute every size."""
    nd = _check_rank(x_shape, w_shape, ndim)
    batch, channels, *in_size = (int(v) for v in x_shape)
    out_channels, w_in, *kernel = (int(v) for v in w_shape)
    stride_t = as_tuple(stride, nd, "stride")
    dilation_t = as_tuple(dilation, nd, "dilation")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if channels % groups:
        raise ValueError(f"groups ({groups}) must divide the input channels ({channels})")
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
        span = d * (k - 1) + 1
        if span > i + lo + hi:
            raise ValueError(
                f"kernel is larger than the padded input along spatial axis {axis}: "
                f"dilated kernel {span} (k={k}, dilation={d}) > padded input {i + lo + hi} "
                f"(size {i} + padding {lo}+{hi})"
            )
        out_size.append(conv_output_size(i, k, s, lo, hi, d))
    return ConvGeometry(
        batch, channels, out_channels, groups, tuple(in_size), tuple(kernel),
        stride_t, dilation_t, pads, tuple(out_size),
    )  # fmt: skip


@dataclass(frozen=True)
class ConvTransposeGeometry:
    """Every size of one N-d transposed convolution; weight is ``(C, O/groups, *kernel)``."""

    batch: int
    in_channels: int
    out_channels: int
    groups: int
    in_size: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    output_padding: tuple[int, ...]
    out_size: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.in_size)

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.batch, self.in_channels, *self.in_size)

    @property
    def w_shape(self) -> tuple[int, ...]:
        return (self.in_channels, self.out_channels // self.groups, *self.kernel)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.batch, self.out_channels, *self.out_size)

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
    the ONNX ConvTranspose spec does: total = s*(i-1) + output_padding + d*(k-1) + 1 - out,
    split as the spec says: the odd pad at the end for ``padding='same'``/``'same_upper'``,
    at the start otherwise; explicit pads are then ignored. ``padding='same'`` (or
    ``'same_lower'``) without ``output_shape`` means output = input * stride.
    """
    nd = _check_rank(x_shape, w_shape, None)
    batch, channels, *in_size = (int(v) for v in x_shape)
    w_in, w_out, *kernel = (int(v) for v in w_shape)
    stride_t = as_tuple(stride, nd, "stride")
    dilation_t = as_tuple(dilation, nd, "dilation")
    out_pad = as_tuple(output_padding, nd, "output_padding", minimum=0)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if channels % groups:
        raise ValueError(f"groups ({groups}) must divide the input channels ({channels})")
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
    upper = isinstance(padding, str) and padding.lower() in ("same", "same_upper", "half")
    same = isinstance(padding, str) and padding.lower() in (
        "same",
        "same_upper",
        "same_lower",
        "half",
    )
    if same and output_shape is None:
        output_shape = tuple(i * s for i, s in zip(in_size, stride_t))
    if output_shape is not None:
        target = tuple(int(v) for v in output_shape)
        if len(target) == nd + 2:
            if target[:2] != (batch, out_channels):
                raise ValueError(
                    f"output_shape {target} must start with (N, C_out) = ({batch}, {out_channels})"
                )
            target = target[2:]
        if len(target) != nd:
            raise ValueError(f"output_shape must give {nd} spatial sizes, got {output_shape!r}")
        pads = []
        for axis, (i, k, s, d, op, o) in enumerate(
            zip(in_size, kernel, stride_t, dilation_t, out_pad, target)
        ):
            full = conv_transpose_output_size(i, k, s, 0, 0, d, op)
            total = full - o
            if o < 1 or total < 0:
                raise ValueError(
                    f"output_shape {tuple(target)} is unreachable along spatial axis {axis}: "
                    f"size must be in [1, {full}] for input {i}, kernel {k}, stride {s}, "
                    f"dilation {d}, output_padding {op}"
                )
            small, big = total // 2, total - total // 2
            pads.append((small, big) if upper else (big, small))
        pads_t = tuple(pads)
    else:
        if isinstance(padding, str) and padding.lower() == "causal":
            raise ValueError("padding='causal' is not defined for transposed convolution")
        pads_t = resolve_padding(padding, in_size, kernel, stride_t, dilation_t)
    out_size = []
    for axis, (i, k, s, d, op, (lo, hi)) in enumerate(
        zip(in_size, kernel, stride_t, dilation_t, out_pad, pads_t)
    ):
        o = conv_transpose_output_size(i, k, s, lo, hi, d, op)
        if o < 1:
            raise ValueError(
                f"padding {pads_t[axis]} removes the whole output along spatial axis {axis} "
                f"(unpadded size {o + lo + hi})"
            )
        out_size.append(o)
    return ConvTransposeGeometry(
        batch, channels, out_channels, groups, tuple(in_size), tuple(kernel), stride_t,
        dilation_t, pads_t, out_pad, tuple(out_size),
    )  # fmt: skip


def resize_output_size(size: int, scale: float) -> int:
    """ONNX Resize output length from a scale: ``floor(size * scale)``, in float32 as
    onnxruntime computes it (also for ``tf_crop_and_resize``: the roi moves the sampling
    positions, not the output size)."""
    import numpy as np

    if not scale > 0:
        raise ValueError(f"scales must be positive, got {scale}")
    return int(np.floor(np.float32(size) * np.float32(scale)))
