"""The float32 exp, tanh and sigmoid of the kernels' epilogues against numpy in float64, and
the contract of :class:`convforge.ops.Epilogue`."""

import numpy as np
import pytest
import tvm
from tvm import s_tir, te

from convforge import ops, shapes
from convforge.ops import activation
from convforge.targets import host_target

#: Every float32 region: tiny, around 0, the polynomial range, saturation, over/underflow.
POINTS = np.concatenate([
    np.linspace(-120.0, 120.0, 48001),
    np.linspace(-1e-3, 1e-3, 2001),
    [0.0, -0.0, 1e-30, -1e-30, 1e-45, 88.0, 88.3, 88.4, -87.0, -87.4, -104.0, 9.0, -9.0, 9.1],
]).astype(np.float32)  # fmt: skip

REFERENCES = {
    "exp": np.exp,
    "tanh": np.tanh,
    "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
}


def _vectorized(name: str, x: np.ndarray) -> np.ndarray:
    """``activation.<name>`` over ``x`` (its dtype), compiled with the loop vectorized."""
    fn, dtype = getattr(activation, name), str(x.dtype)
    tx = te.placeholder(x.shape, dtype, "x")
    ty = te.compute(x.shape, lambda i: fn(tx[i], dtype), name="y")
    sch = s_tir.Schedule(te.create_prim_func([tx, ty]).with_attr("global_symbol", "main"))
    (loop,) = sch.get_loops(sch.get_sblock("y"))
    sch.vectorize(sch.split(loop, [None, 8])[1])
    out = tvm.runtime.tensor(np.zeros_like(x))
    tvm.compile(sch.mod, target=host_target()).mod["main"](tvm.runtime.tensor(x), out)
    return out.numpy()


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_float32_math_is_within_a_few_ulp_of_float64(name):
    x = POINTS[: POINTS.size // 8 * 8]
    got = _vectorized(name, x).astype(np.float64)
    with np.errstate(over="ignore"):
        expected = REFERENCES[name](x.astype(np.float64))
    normal = (np.abs(expected) > np.finfo(np.float32).tiny) & (np.abs(expected) < 1e38)
    relative = np.abs(got - expected)[normal] / np.abs(expected)[normal]
    assert relative.max() < 4e-7, f"{name}: {relative.max():.2e} at {x[normal][relative.argmax()]}"
    # outside float32's normal range: exp underflows to at most the smallest normal and
    # overflows to +inf where float32's exp does; tanh and sigmoid stay in their bounds
    with np.errstate(over="ignore"):
        assert np.array_equal(np.isfinite(got), np.isfinite(expected.astype(np.float32)))
    assert np.all(np.abs(got - expected)[~normal & (expected < 1)] <= np.finfo(np.float32).tiny)
    if name == "exp":
        assert np.all(got[~normal & (expected >= 1)] > 1e38)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_float64_is_exact_to_float64(name):
    x = np.linspace(-30.0, 30.0, 4001)[:4000]
    got = _vectorized(name, x)
    np.testing.assert_allclose(got, REFERENCES[name](x), rtol=1e-14, atol=0)


def test_an_epilogue_refuses_an_unknown_activation_when_made():
    with pytest.raises(ValueError, match=r"activation must be None or one of .* got 'elu'"):
        activation.Epilogue(activation="elu")


@pytest.mark.parametrize(
    "op", ["conv_transpose", "conv_transpose_gather", "conv_transpose_subpixel"]
)
def test_transposed_convolutions_refuse_a_residual_before_building(op):
    geom = shapes.conv_transpose_geometry((1, 4, 5, 5), (4, 2, 3, 3), stride=2)
    x = te.placeholder(geom.x_shape, "float32", "x")
    w = te.placeholder(geom.w_shape, "float32", "w")
    r = te.placeholder(geom.out_shape, "float32", "r")
    with pytest.raises(ValueError, match=f"{op} takes no residual"):
        getattr(ops, op)(x, w, geom, activation.Epilogue(residual=r))
