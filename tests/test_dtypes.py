"""float16 and float64 convolution and transposed convolution, end to end.

Oracle: the sparse matrix (conv_matrix) applied in float64 to the same values; onnxruntime
too for float16 (its CPU Conv and ConvTranspose take float16 and float32, not float64).
"""

import numpy as np
import onnxruntime as ort
import pytest

import convforge as cf
from convforge import shapes
from convforge.export import compare, conv_model, conv_transpose_model, run_onnxruntime

ACTIVATIONS = {
    None: lambda v: v,
    "relu": lambda v: np.maximum(v, 0),
    "silu": lambda v: v / (1 + np.exp(-v)),
    "tanh": np.tanh,
}

CONV_CASES = [
    dict(x_shape=(2, 3, 17), w_shape=(4, 3, 3), stride=2, padding="same", dilation=1, groups=1),
    dict(x_shape=(1, 4, 9, 7), w_shape=(6, 2, 3, 2), stride=(2, 1), padding=((1, 0), (2, 1)),
         dilation=(1, 2), groups=2),
    dict(x_shape=(1, 4, 8, 8), w_shape=(8, 1, 3, 3), stride=1, padding="same_lower",
         dilation=2, groups=4),
    dict(x_shape=(1, 2, 5, 4, 6), w_shape=(3, 2, 2, 3, 2), stride=(1, 2, 3), padding=1,
         dilation=1, groups=1),
]  # fmt: skip

CONV_TRANSPOSE_CASES = [
    dict(x_shape=(2, 3, 7), w_shape=(3, 2, 4), stride=3, padding=1, output_padding=2,
         dilation=1, groups=1),
    dict(x_shape=(1, 4, 5, 6), w_shape=(4, 3, 3, 3), stride=2, padding="same",
         output_padding=0, dilation=1, groups=2),
    dict(x_shape=(1, 3, 4, 5), w_shape=(3, 1, 2, 3), stride=(1, 2), padding=((0, 1), (2, 0)),
         output_padding=(1, 1), dilation=(2, 1), groups=3),
    dict(x_shape=(1, 2, 3, 4, 2), w_shape=(2, 2, 3, 2, 2), stride=2, padding=(1, 0, 0),
         output_padding=(1, 0, 1), dilation=1, groups=1),
]  # fmt: skip


def values(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def ort_supports(op, dtype):
    """Whether onnxruntime's CPU provider runs ``op`` in ``dtype`` (False: NOT_IMPLEMENTED)."""
    geom = shapes.conv_geometry((1, 1, 3), (1, 1, 2))
    tgeom = shapes.conv_transpose_geometry((1, 1, 3), (1, 1, 2))
    model = conv_model(geom, dtype) if op == "Conv" else conv_transpose_model(tgeom, dtype)
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own NotImplemented class
        assert "NOT_IMPLEMENTED" in str(err), err
        return False
    return True


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
def test_onnxruntime_cpu_dtypes(op):
    """The dtypes the onnxruntime oracle can check: float16 and float32, not float64."""
    assert ort_supports(op, "float16") and ort_supports(op, "float32")
    assert not ort_supports(op, "float64")


@pytest.mark.parametrize("dtype", ["float16", "float64"])
@pytest.mark.parametrize("case", CONV_CASES, ids=range(len(CONV_CASES)))
@pytest.mark.parametrize("activation", [None, "silu"])
def test_conv_dtype(case, dtype, activation):
    rng = np.random.default_rng(1)
    geom = shapes.conv_geometry(**case)
    x, w = values(rng, geom.x_shape, dtype), values(rng, geom.w_shape, dtype)
    b = values(rng, (geom.out_channels,), dtype)
    kwargs = {k: v for k, v in case.items() if k not in ("x_shape", "w_shape")}
    y = cf.conv(x, w, b, activation=activation, **kwargs)
    assert y.dtype == dtype and y.shape == geom.out_shape
    c = cf.conv_matrix(w.astype(np.float64), geom)
    linear = (c @ x.astype(np.float64).ravel()).reshape(geom.out_shape)
    linear += b.astype(np.float64).reshape((1, -1) + (1,) * geom.ndim)
    oracle = ACTIVATIONS[activation](linear).astype(dtype)
    assert compare(y, oracle).ok, compare(y, oracle)
    if dtype == "float16":
        model = conv_model(geom, dtype, bias=True, activation=activation)
        (expected,) = run_onnxruntime(model, {"x": x, "w": w, "bias": b})
        assert compare(y, expected).ok, compare(y, expected)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
@pytest.mark.parametrize("case", CONV_TRANSPOSE_CASES, ids=range(len(CONV_TRANSPOSE_CASES)))
def test_conv_transpose_dtype(case, dtype):
    rng = np.random.default_rng(2)
    geom = shapes.conv_transpose_geometry(**case)
    x, w = values(rng, geom.x_shape, dtype), values(rng, geom.w_shape, dtype)
    b = values(rng, (geom.out_channels,), dtype)
    kwargs = {k: v for k, v in case.items() if k not in ("x_shape", "w_shape")}
    y = cf.conv_transpose(x, w, b, activation="relu", **kwargs)
    assert y.dtype == dtype and y.shape == geom.out_shape
    c = cf.conv_matrix(w.astype(np.float64), geom.adjoint())
    linear = (c.T @ x.astype(np.float64).ravel()).reshape(geom.out_shape)
    linear += b.astype(np.float64).reshape((1, -1) + (1,) * geom.ndim)
    oracle = np.maximum(linear, 0).astype(dtype)
    assert compare(y, oracle).ok, compare(y, oracle)
    if dtype == "float16" and all(op < s for op, s in zip(geom.output_padding, geom.stride)):
        model = conv_transpose_model(geom, dtype, bias=True, activation="relu")
        (expected,) = run_onnxruntime(model, {"x": x, "w": w, "bias": b})
        assert compare(y, expected).ok, compare(y, expected)


@pytest.mark.parametrize("op", ["conv", "conv_transpose"])
def test_float16_accumulates_in_float32(op):
    """4000 products of 1: a float16 sum stalls at 2048 (spacing 2 above it), float32 does not."""
    x = np.ones((1, 4000, 3), np.float16)
    if op == "conv":
        y = cf.conv(x, np.ones((2, 4000, 1), np.float16))
    else:
        y = cf.conv_transpose(x, np.ones((4000, 2, 1), np.float16))
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, np.full((1, 2, 3), 4000, np.float16))
