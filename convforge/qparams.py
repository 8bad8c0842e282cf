"""Validation of integer-convolution arguments (ONNX QLinearConv / ConvInteger), before
anything is compiled: one ValueError naming the parameter and the rule.

The rules (ONNX's): x and w are uint8 or int8 arrays; x's zero point is a scalar of x's
dtype, w's a scalar or one per output channel of w's dtype, the output's a scalar of x's
dtype (QLinearConv's output has x's dtype); scales are float32 values, finite and above 0,
x's and y's scalars, w's a scalar or one per output channel; the bias is int32, one per
output channel. A zero point given as a Python int must lie in its dtype's range; one given
as a numpy array or scalar must have the dtype exactly. :class:`QuantArgs` holds the
normalized values and computes the kernel's per-channel constants
(:func:`convforge.ops.qconv.weight_term`, :func:`~convforge.ops.qconv.requant_multiplier`).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from convforge.ops import qconv as qconv_ops

#: dtypes of x and w (activations and weights).
INT8_DTYPES = qconv_ops.INT8_DTYPES
#: A fused activation of the requantization: None, 'relu', or a Clip's real (low, high).
QActivation = str | tuple[float, float] | None


def integer_array(value: object, name: str) -> np.ndarray:
    """``value`` as an array of uint8 or int8, else ValueError naming ``name``."""
    array = np.asarray(value)
    if str(array.dtype) not in INT8_DTYPES:
        raise ValueError(f"{name} must be a uint8 or int8 array, got dtype {array.dtype}")
    return array


def zero_point(value: object, dtype: str, name: str, channels: int | None = None) -> np.ndarray:
    """A zero point of ``dtype`` as an int32 array: shape () or, where ``channels`` is
    given, () or (channels,). ``None`` means 0. A numpy value must have ``dtype``; a Python
    int must lie in ``dtype``'s range."""
    if value is None:
        return np.zeros((), np.int32)
    lo, hi = qconv_ops.dtype_range(dtype)
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.generic)):
        if not lo <= int(value) <= hi:
            raise ValueError(f"{name} must lie in [{lo}, {hi}] ({dtype}), got {value}")
        return np.asarray(int(value), np.int32)
    array = np.asarray(value)
    if str(array.dtype) != dtype:
        raise ValueError(f"{name} must have dtype {dtype} (as its tensor), got {array.dtype}")
    return _shaped(array, name, channels).astype(np.int32)


def scale(value: object, name: str, channels: int | None = None) -> np.ndarray:
    """A scale as a float32 array of shape () or, where ``channels`` is given, () or
    (channels,); every value finite and above 0 (as float32)."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a float, got {value!r}")
    array = np.asarray(value)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be a float or float array, got dtype {array.dtype}")
    array = _shaped(array, name, channels)
    with np.errstate(over="ignore"):
        as32 = array.astype(np.float32)
    if not (np.all(np.isfinite(as32)) and np.all(as32 > 0)):
        raise ValueError(f"{name} must be finite and > 0 (as float32), got {array.tolist()}")
    return as32


def _shaped(array: np.ndarray, name: str, channels: int | None) -> np.ndarray:
    if array.ndim == 0 or (array.shape == (1,)):
        return array.reshape(())
    if channels is not None and array.shape == (channels,):
        return array
    rule = (
        "a scalar"
        if channels is None
        else f"a scalar or of shape ({channels},) (one per output channel)"
    )
    raise ValueError(f"{name} must be {rule}, got shape {array.shape}")


def bias_array(value: object, channels: int) -> np.ndarray | None:
    """The bias as int32 (channels,), None if None."""
    if value is None:
        return None
    array = np.asarray(value)
    if array.dtype != np.int32:
        raise ValueError(
            f"bias must be an int32 array (its scale is x_scale * w_scale), got {array.dtype}"
        )
    if array.shape != (channels,):
        raise ValueError(
            f"bias must have shape ({channels},) (one per output channel), got {array.shape}"
        )
    return array


def check_activation(activation: object) -> QActivation:
    """None, 'relu', or a Clip's (low, high) real bounds (floats, low <= high, not NaN)."""
    if activation is None or activation == "relu":
        return activation  # type: ignore[return-value]
    if isinstance(activation, tuple) and len(activation) == 2:
        try:
            low, high = (float(v) for v in activation)
        except (TypeError, ValueError):
            low = high = float("nan")
        if not (np.isnan(low) or np.isnan(high)) and low <= high:
            return (low, high)
    raise ValueError(
        f"activation must be None, 'relu' or a clip's (low, high) with low <= high, got "
        f"{activation!r}"
    )


@dataclass(frozen=True, eq=False)
class QuantArgs:
    """The validated quantization arguments of one integer convolution with O output
    channels: zero points as int32 arrays (() or (O,)), scales as float32 arrays (None for
    ConvInteger), the int32 bias or None, the fused activation."""

    x_dtype: str
    w_dtype: str
    channels: int
    x_zero_point: np.ndarray
    w_zero_point: np.ndarray
    x_scale: np.ndarray | None = None
    w_scale: np.ndarray | None = None
    y_scale: np.ndarray | None = None
    y_zero_point: np.ndarray | None = None
    bias: np.ndarray | None = None
    activation: QActivation = None

    @property
    def requantizes(self) -> bool:
        """QLinearConv (scales given) rather than ConvInteger."""
        return self.y_scale is not None

    @property
    def has_w_zero_point(self) -> bool:
        """Whether a weight zero point is not 0."""
        return bool(np.any(self.w_zero_point != 0))

    def w_zero_points(self) -> np.ndarray:
        """int32 (O,): the weight zero point of every output channel."""
        return np.broadcast_to(self.w_zero_point, (self.channels,)).astype(np.int32)

    def bounds(self) -> tuple[int, int]:
        """The output's integer (lo, hi) (:func:`convforge.ops.qconv.activation_bounds`)."""
        if not self.requantizes:
            return (-(2**31), 2**31 - 1)
        return qconv_ops.activation_bounds(
            self.activation, float(self.y_scale), int(self.y_zero_point), self.x_dtype
        )

    def params(self) -> np.ndarray:
        """The kernel's int32 (x_zp, y_zp, lo, hi)."""
        y_zp = 0 if self.y_zero_point is None else int(self.y_zero_point)
        return np.array([int(self.x_zero_point), y_zp, *self.bounds()], np.int32)

    def term(self, w: np.ndarray) -> np.ndarray:
        """The kernel's int32 per-channel term of weight ``w`` (O, C/groups, *K)."""
        return qconv_ops.weight_term(w, int(self.x_zero_point), self.w_zero_points(), self.bias)

    def multiplier(self) -> np.ndarray:
        """The kernel's float32 per-channel requantization multiplier."""
        return qconv_ops.requant_multiplier(
            float(self.x_scale), self.w_scale, float(self.y_scale), self.channels
        )

    def kernel_constants(self, w: np.ndarray) -> list[np.ndarray]:
        """Everything the kernel reads after x and w, in the order of
        :meth:`convforge.plan.QConvPlan.input_shapes`."""
        constants = [self.params(), self.term(w)]
        if self.requantizes:
            constants.append(self.multiplier())
        if self.has_w_zero_point:
            constants.append(self.w_zero_points())
        return constants


def quant_args(
    x_dtype: str,
    w_dtype: str,
    channels: int,
    *,
    x_zero_point: object = None,
    w_zero_point: object = None,
    x_scale: object = None,
    w_scale: object = None,
    y_scale: object = None,
    y_zero_point: object = None,
    bias: object = None,
    activation: object = None,
    requantize: bool,
) -> QuantArgs:
    """Validate the arguments (module doc) of an integer convolution of ``x_dtype`` x and
    ``w_dtype`` w with ``channels`` output channels: QLinearConv where ``requantize`` (every
    scale and y_zero_point required), else ConvInteger (no scales, bias or activation)."""
    x_zp = zero_point(x_zero_point, x_dtype, "x_zero_point")
    w_zp = zero_point(w_zero_point, w_dtype, "w_zero_point", channels)
    if not requantize:
        return QuantArgs(x_dtype, w_dtype, channels, x_zp, w_zp)
    for name, value in (("x_scale", x_scale), ("w_scale", w_scale), ("y_scale", y_scale),
                        ("y_zero_point", y_zero_point)):  # fmt: skip
        if value is None:
            raise ValueError(f"{name} is required (QLinearConv)")
    return QuantArgs(
        x_dtype, w_dtype, channels, x_zp, w_zp,
        x_scale=scale(x_scale, "x_scale"), w_scale=scale(w_scale, "w_scale", channels),
        y_scale=scale(y_scale, "y_scale"),
        y_zero_point=zero_point(y_zero_point, x_dtype, "y_zero_point"),
        bias=bias_array(bias, channels), activation=check_activation(activation),
    )  # fmt: skip
