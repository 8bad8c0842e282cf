"""Element-wise activations fused into convolution epilogues, their float32 math, and the
:class:`Epilogue` every convolution op ends in (bias, residual, activation, cast).

LLVM turns ``exp`` and ``tanh`` of a float32 vector into one libm call per lane, which made a
fused sigmoid or tanh cost more than the convolution it ends (evidence:
benchmarks/results/thresholds.md#polynomial-activations). :func:`exp` and :func:`tanh` are polynomial forms that vectorize: the
Cephes ``expf`` range reduction and polynomial (about 2 ulp), and the rational ``tanh`` of
Eigen (and TVM's ``fast_tanh``), exact to a few ulp. float64 keeps the libm functions.

Non-finite values follow onnxruntime (the same op of the exported ONNX graph) exactly: every
activation maps NaN to NaN (the polynomial forms clamp their argument, so a select on a bit
test passes NaN through; relu and relu6 select on ordered compares, false for NaN);
``relu(+inf) = +inf``, ``relu(-inf) = 0``; ``relu6(x) = min(max(x, 0), 6)`` (ONNX
``Clip(x, 0, 6)``, PyTorch's ``relu6``), so ``relu6(+inf) = 6``; ``sigmoid(+-inf) = 1, 0``;
``tanh(+-inf) = +-1``; ``silu(+inf) = +inf``, ``silu(-inf) = NaN`` (``-inf * 0``, as
ONNX's ``x * Sigmoid(x)``). ``exp`` overflows to +inf above 88.72 and is 0 below -87.34
(where expf's subnormal results begin), so ``silu`` of a large negative number is -0, as in
onnxruntime, not ``x * 2**-126``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from convforge.tvm_import import te, tirx

#: Names accepted by every ``activation=`` argument.
ACTIVATIONS = ("relu", "relu6", "silu", "sigmoid", "tanh")


def check_activation(activation: str | None) -> None:
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or one of {ACTIVATIONS}, got {activation!r}")


_LOG2E = 1.44269504088896341
#: ln 2 split in two so that ``n * _LN2_HI`` is exact for the |n| <= 128 of float32.
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
#: Cephes expf: exp(r) ~ 1 + r + r^2 * P(r) on |r| <= ln(2)/2, P's coefficients high to low.
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
          1.6666665459e-1, 5.0000001201e-1)  # fmt: skip
#: Eigen's tanh on [-9, 9] (float32 tanh is +-1 outside): x * P(x^2) / Q(x^2), high to low.
_TANH_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
           5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
           4.89352455891786e-03)  # fmt: skip
_TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
           4.89352518554385e-03)  # fmt: skip


def _horner(x: tirx.PrimExpr, coefficients: tuple[float, ...], dtype: str) -> tirx.PrimExpr:
    result = tirx.const(coefficients[0], dtype)
    for c in coefficients[1:]:
        result = result * x + tirx.const(c, dtype)
    return result


#: float dtype -> (its integer twin, the mask of all but the sign bit, +inf's bits).
_FLOAT_BITS = {
    "float32": ("int32", 0x7FFFFFFF, 0x7F800000),
    "float64": ("int64", 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000),
}


def is_nan(value: tirx.PrimExpr, dtype: str) -> tirx.PrimExpr:
    """Whether ``value`` (of ``dtype``) is NaN, as integer operations on its bits (``|bits| > bits(inf)``),
    which vectorize: ``tirx.isnan`` is a call that makes TVM scalarize the whole loop, and
    a written ``x != x`` is simplified away by TVM's arithmetic (floats taken as reals)."""
    if dtype not in _FLOAT_BITS:
        return tirx.isnan(value)
    int_dtype, mask, inf = _FLOAT_BITS[dtype]
    bits = tirx.reinterpret(int_dtype, value) & tirx.const(mask, int_dtype)
    return bits > tirx.const(inf, int_dtype)


#: float32 ``exp`` overflows to +inf above this (the largest x with a finite expf) ...
_EXP_OVERFLOW = 88.72283935546875
#: ... and the polynomial form returns 0 below this (ln 2**-126: expf's subnormal range).
_EXP_UNDERFLOW = -87.33654475


def exp(value: tirx.PrimExpr, dtype: str) -> tirx.PrimExpr:
    """``e**value`` for a scalar of ``dtype``; float32 as a vectorizable polynomial:
    clamped to [ln 2**-126, 88.38], ``n = round(value / ln 2)``, ``2**n`` built in the exponent
    bits, times exp of the remainder (Cephes ``expf``). NaN gives NaN, x > 88.72 (+inf
    included) +inf, x < -87.34 (-inf included) 0."""
    if dtype != "float32":
        return te.exp(value)
    const = functools.partial(tirx.const, dtype=dtype)
    x = tirx.max(tirx.min(value, const(88.3762626647949)), const(_EXP_UNDERFLOW))
    n = tirx.floor(x * const(_LOG2E) + const(0.5))
    r = x - n * const(_LN2_HI) - n * const(_LN2_LO)
    poly = _horner(r, _EXP_P, dtype) * r * r + r + const(1.0)
    exponent = (n.astype("int32") + 127) << 23
    result = poly * tirx.reinterpret(dtype, exponent)
    result = tirx.Select(value < const(_EXP_UNDERFLOW), const(0.0), result)
    result = tirx.Select(value > const(_EXP_OVERFLOW), const(math.inf), result)
    return tirx.Select(is_nan(value, dtype), value, result)


def tanh(value: tirx.PrimExpr, dtype: str) -> tirx.PrimExpr:
    """``tanh(value)`` for a scalar of ``dtype``; float32 as Eigen's rational form (NaN
    passed through, +-inf give +-1)."""
    if dtype != "float32":
        return te.tanh(value)
    x = tirx.max(tirx.min(value, tirx.const(9.0, dtype)), tirx.const(-9.0, dtype))
    x2 = x * x
    return tirx.Select(
        is_nan(value, dtype), value, x * _horner(x2, _TANH_P, dtype) / _horner(x2, _TANH_Q, dtype)
    )


def sigmoid(value: tirx.PrimExpr, dtype: str) -> tirx.PrimExpr:
    """``1 / (1 + e**-value)`` for a scalar of ``dtype``."""
    one = tirx.const(1.0, dtype)
    return one / (one + exp(-value, dtype))


def activate(value: tirx.PrimExpr, activation: str | None, dtype: str) -> tirx.PrimExpr:
    """Apply ``activation`` to one scalar expression of ``dtype`` (``None``: identity)."""
    if activation is None:
        return value
    if activation in ("relu", "relu6"):
        # Selects on ordered compares, false for NaN, so NaN passes through with no test
        # (LLVM emits a compare and mask, or x86's vminps). max(value, 0) is LLVM's maxnum,
        # 0 for NaN, and needed a NaN test and blend more (thresholds.md#relu-selects).
        zero = tirx.const(0, dtype)
        value = tirx.Select(value < zero, zero, value)
        if activation == "relu6":
            six = tirx.const(6, dtype)
            value = tirx.Select(value > six, six, value)
        return value
    if activation == "sigmoid":
        return sigmoid(value, dtype)
    if activation == "silu":
        return value * sigmoid(value, dtype)
    if activation == "tanh":
        return tanh(value, dtype)
    raise ValueError(f"activation must be None or one of {ACTIVATIONS}, got {activation!r}")


@dataclass(frozen=True, eq=False)
class Epilogue:
    """The element-wise end of a convolution, fused into its kernel: for the accumulated
    value ``acc`` of output ``(n, o, *p)``, ``act(acc + bias[o] + residual[n, o, *p])`` cast
    to the output dtype (:meth:`apply`). Every convolution op of :mod:`convforge.ops` takes
    one; ``Epilogue()`` (:data:`NO_EPILOGUE`) adds nothing and only casts.

    ``bias``: (O,) or None; ``activation``: None or one of :data:`ACTIVATIONS` (else
    ValueError, when the epilogue is made); ``residual``: a tensor of the convolution's
    output shape added before the activation (ResNet's shortcut), or None. Holds TE
    tensors, so it compares by identity.
    """

    bias: te.Tensor | None = None
    activation: str | None = None
    residual: te.Tensor | None = None

    def __post_init__(self) -> None:
        check_activation(self.activation)

    @property
    def is_identity(self) -> bool:
        """Whether it adds and activates nothing (then only the cast remains)."""
        return self.bias is None and self.residual is None and self.activation is None

    def refuse_residual(self, op: str) -> None:
        """ValueError naming ``op`` where a residual is given to an op that takes none."""
        if self.residual is not None:
            raise ValueError(f"{op} takes no residual: its epilogue's residual must be None")

    def apply(self, value: tirx.PrimExpr, index: tuple, acc: str, dtype: str) -> tirx.PrimExpr:
        """``act(value + bias[o] + residual[n, o, *p])`` in ``acc``, cast to ``dtype``, for
        the accumulated ``value`` (of dtype ``acc``) of output ``index = (n, o, *p)``."""
        if self.bias is not None:
            value = value + self.bias[index[1]].astype(acc)
        if self.residual is not None:
            value = value + self.residual[index].astype(acc)
        return activate(value, self.activation, acc).astype(dtype)


#: The epilogue that adds and activates nothing: the default of every convolution op.
NO_EPILOGUE = Epilogue()
