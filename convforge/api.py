"""The numpy API: validate -> build TE op -> schedule -> compile (cached) -> run.

Semantics follow ``torch.nn.functional`` and the ONNX operators for the same arguments.
Every argument is validated by :mod:`convforge.shapes` before anything is compiled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tvm import te

from convforge import ops, shapes
from convforge.build import cached_kernel
from convforge.ops.activation import check_activation
from convforge.targets import TargetArg

#: dtypes the compiled kernels accept.
DTYPES = ("float16", "float32", "float64")


def as_float_arrays(**arrays: np.ndarray | None) -> tuple[str, list[np.ndarray | None]]:
    """Check that every given array is a float array of one supported dtype; return it."""
    given = {name: np.asarray(a) for name, a in arrays.items() if a is not None}
    dtypes = {str(a.dtype) for a in given.values()}
    if len(dtypes) != 1:
        listing = ", ".join(f"{name}: {a.dtype}" for name, a in given.items())
        raise ValueError(f"arrays must share one dtype, got {listing}")
    dtype = dtypes.pop()
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype}")
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
) -> np.ndarray:
    """N-d convolution (1-D, 2-D, 3-D), as ``torch.nn.functional.conv{1,2,3}d`` / ONNX Conv.

    x: (N, C, *I), w: (O, C/groups, *K), bias: (O,) -> (N, O, *out). ``padding`` is an int,
    per-axis ints, per-axis (lo, hi) pairs or a mode ('valid', 'same', 'same_lower', 'full').
    ``activation``: None, 'relu', 'silu', 'sigmoid' or 'tanh', fused into the kernel.
    """
    dtype, (x, w, bias) = as_float_arrays(x=x, w=w, bias=bias)
    geom = shapes.conv_geometry(
        x.shape, w.shape, stride=stride, padding=padding, dilation=dilation, groups=groups,
        bias_shape=None if bias is None else bias.shape,
    )  # fmt: skip
    check_activation(activation)

    def build():
        tx, tw, tb = placeholders(
            dtype, x=x.shape, w=w.shape, bias=None if bias is None else bias.shape
        )
        return [t for t in (tx, tw, tb) if t is not None], [ops.conv(tx, tw, tb, geom, activation)]

    return _run("conv", (geom, dtype, bias is not None, activation), build, (x, w, bias), target)


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
    pads are derived as the ONNX spec says.
    """
    dtype, (x, w, bias) = as_float_arrays(x=x, w=w, bias=bias)
    geom = shapes.conv_transpose_geometry(
        x.shape, w.shape, stride=stride, padding=padding, output_padding=output_padding,
        output_shape=output_shape, dilation=dilation, groups=groups,
        bias_shape=None if bias is None else bias.shape,
    )  # fmt: skip
    check_activation(activation)

    def build():
        tx, tw, tb = placeholders(
            dtype, x=x.shape, w=w.shape, bias=None if bias is None else bias.shape
        )
        outputs = [conv_transpose_op(geom)(tx, tw, tb, geom, activation)]
        return [t for t in (tx, tw, tb) if t is not None], outputs

    key = (geom, dtype, bias is not None, activation)
    return _run("conv_transpose", key, build, (x, w, bias), target)


def conv_transpose_op(geom: shapes.ConvTransposeGeometry) -> Callable[..., te.Tensor]:
    """The TE form used for ``geom``: sub-pixel phases for stride > 1 (no products of
    inserted zeros), else the plain flipped-kernel convolution (the dilate form, which
    inserts no zeros at stride 1)."""
    if any(s > 1 for s in geom.stride):
        return ops.conv_transpose_subpixel
    return ops.conv_transpose


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
    if np.ndim(x) != 3:
        raise ValueError(f"x must have shape (N, C, L) for causal_conv1d, got {np.shape(x)}")
    return conv(
        x, w, bias, padding="causal", dilation=dilation, groups=groups,
        activation=activation, target=target,
    )  # fmt: skip
