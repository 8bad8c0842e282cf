"""The argument contract: numpy integers work wherever a size is taken (checked against
onnxruntime and numpy, not against convforge), and a refused streaming state changes nothing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import convforge as cf
from convforge import shapes
from convforge.export import (
    compare,
    conv_model,
    conv_transpose_model,
    pool_model,
    resize_model,
    run_onnxruntime,
)

i64, i32 = np.int64, np.int32


def _normal(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_conv_with_numpy_integers_matches_onnxruntime(rng):
    x, w, b = _normal(rng, 1, 4, 9, 8), _normal(rng, 6, 2, 3, 3), _normal(rng, 6)
    y = cf.conv(
        x, w, b, stride=i64(2), padding=(i64(1), i32(2)), dilation=np.array([1, 2]), groups=i32(2)
    )
    # the oracle's geometry is built from Python ints only
    geom = shapes.conv_geometry(
        (1, 4, 9, 8), (6, 2, 3, 3), stride=2, padding=(1, 2), dilation=(1, 2), groups=2
    )
    (expected,) = run_onnxruntime(conv_model(geom, bias=True), {"x": x, "w": w, "bias": b})
    assert compare(y, expected).ok, compare(y, expected)


def test_prepare_conv_with_a_numpy_x_shape_matches_onnxruntime(rng):
    x, w = _normal(rng, 1, 3, 7, 7), _normal(rng, 5, 3, 3, 3)
    op = cf.prepare_conv(w, x_shape=np.array(x.shape), padding=np.array([[1, 1], [0, 2]]))
    geom = shapes.conv_geometry((1, 3, 7, 7), (5, 3, 3, 3), padding=((1, 1), (0, 2)))
    (expected,) = run_onnxruntime(conv_model(geom), {"x": x, "w": w})
    assert compare(op(x), expected).ok


def test_conv_transpose_with_numpy_integers_matches_onnxruntime(rng):
    x, w = _normal(rng, 1, 4, 5, 6), _normal(rng, 4, 3, 3, 3)
    y = cf.conv_transpose(x, w, stride=i64(2), output_shape=np.array([10, 12], dtype=i32))
    geom = shapes.conv_transpose_geometry(
        (1, 4, 5, 6), (4, 3, 3, 3), stride=2, output_shape=(10, 12)
    )
    (expected,) = run_onnxruntime(conv_transpose_model(geom, output_shape=True), {"x": x, "w": w})
    assert y.shape == (1, 3, 10, 12)
    assert compare(y, expected).ok
    y = cf.conv_transpose(x, w, stride=(i64(2), i64(3)), padding=i32(1), output_padding=i64(1))
    geom = shapes.conv_transpose_geometry(
        (1, 4, 5, 6), (4, 3, 3, 3), stride=(2, 3), padding=1, output_padding=1
    )
    (expected,) = run_onnxruntime(conv_transpose_model(geom), {"x": x, "w": w})
    assert compare(y, expected).ok


def test_causal_conv1d_with_a_numpy_dilation_matches_the_sparse_matrix(rng):
    x, w = _normal(rng, 2, 3, 11), _normal(rng, 4, 3, 3)
    y = cf.causal_conv1d(x, w, dilation=i64(2))
    geom = shapes.conv_geometry((2, 3, 11), (4, 3, 3), padding=((4, 0),), dilation=2)
    expected = (cf.conv_matrix(w, geom) @ x.astype(np.float64).ravel()).reshape(geom.out_shape)
    assert compare(y, expected.astype(np.float32)).ok


def test_pools_with_numpy_integers_match_onnxruntime_and_numpy(rng):
    x = _normal(rng, 1, 2, 9, 7)
    y = cf.max_pool(x, np.array([3, 2]), stride=i64(2), padding=i32(1), ceil_mode=np.bool_(True))
    geom = shapes.pool_geometry(
        (1, 2, 9, 7), (3, 2), kind="max", stride=2, padding=1, ceil_mode=True
    )
    (expected,) = run_onnxruntime(pool_model(geom), {"x": x})
    assert compare(y, expected).ok
    y = cf.adaptive_avg_pool(x, (i64(4), i32(3)))
    expected = np.empty((1, 2, 4, 3), np.float32)
    for j, k in itertools.product(range(4), range(3)):  # cells [floor(j*I/O), ceil((j+1)*I/O))
        rows = slice(j * 9 // 4, -(-(j + 1) * 9 // 4))
        cols = slice(k * 7 // 3, -(-(k + 1) * 7 // 3))
        expected[:, :, j, k] = x[:, :, rows, cols].mean(axis=(2, 3))
    assert compare(y, expected).ok


def test_resize_with_numpy_sizes_and_scales_matches_onnxruntime(rng):
    x = _normal(rng, 1, 2, 4, 5)
    y = cf.resize(x, size=np.array([7, 10]), mode="linear", coordinate_mode="half_pixel")
    geom = shapes.resize_geometry(
        (1, 2, 4, 5), size=(7, 10), mode="linear", coordinate_mode="half_pixel"
    )
    (expected,) = run_onnxruntime(resize_model(geom), {"x": x})
    assert compare(y, expected).ok
    y = cf.resize(x, np.float32(2))
    (expected,) = run_onnxruntime(
        resize_model(shapes.resize_geometry((1, 2, 4, 5), scale=2)), {"x": x}
    )
    assert compare(y, expected).ok


def test_geometry_of_numpy_integers_is_the_geometry_of_ints():
    spec = cf.StackSpec(i64(2), i32(4), i64(4), i64(1), np.array([1, 2]), kernel_size=i64(2))
    assert spec == cf.StackSpec(2, 4, 4, 1, (1, 2)) and type(spec.channels) is int
    with pytest.raises(ValueError, match="dilations"):
        cf.StackSpec(2, 4, 4, 1, "12")
    with pytest.raises(ValueError, match="kernel_size"):
        cf.StackSpec(2, 4, 4, 1, (1, 2), kernel_size=2.0)


# --- StreamingCausalStack.load_state: all or nothing ------------------------------------


@pytest.fixture(scope="module")
def stack():
    spec = cf.StackSpec(2, 4, 4, 1, (1, 2, 4), kernel_size=3)
    stack = cf.StreamingCausalStack(spec, spec.random_weights(seed=1))
    stack.run(np.random.default_rng(2).standard_normal((1, 2, 12)).astype(np.float32), [5, 7])
    return stack


def _refusals(snapshot):
    names = sorted(snapshot)
    good = {n: a + 1 for n, a in snapshot.items()}  # valid, different: must not be applied
    last = names[-1]
    yield "missing key", {n: good[n] for n in names[:-1]}
    yield "extra key", {**good, "past_state.9": good[names[0]]}
    yield "wrong shape", {**good, last: good[last][..., :-1]}
    yield "NaN", {**good, last: np.where(good[last] > 0, np.nan, good[last])}
    yield "inf", {**good, last: np.full_like(good[last], np.inf)}
    yield "overflow", {**good, last: np.full(good[last].shape, 1e300)}
    yield "complex", {**good, last: good[last].astype(np.complex64)}
    yield "strings", {**good, last: good[last].astype(str)}
    yield "not a mapping", list(good.items())


def test_refused_state_leaves_the_stack_unchanged(stack):
    snapshot = {n: np.array(a, copy=True) for n, a in stack.state_dict().items()}
    assert any(np.any(a != 0) for a in snapshot.values())  # a state worth keeping
    for why, states in _refusals(snapshot):
        with pytest.raises(ValueError, match="states"):
            stack.load_state(states)
        after = stack.state_dict()
        for name, value in snapshot.items():
            assert np.array_equal(after[name], value), f"{why}: {name} changed"
    valid = {n: a * 0.5 for n, a in snapshot.items()}
    stack.load_state(valid)
    for name, value in stack.state_dict().items():
        assert np.array_equal(value, valid[name])


def test_compile_model_input_shapes_take_numpy_integers_and_refuse_fractions():
    from onnx import helper

    from convforge.export.model import TensorSpec, compiled_shapes
    from convforge.export.onnx_graphs import make_model

    specs = [TensorSpec("x", (None, 3, None, None), "float32")]
    assert compiled_shapes(specs, {"x": np.array([1, 3, 8, 8])}) == {"x": (1, 3, 8, 8)}
    node = helper.make_node("Relu", ["x"], ["y"])
    model = make_model(
        [node], {"x": (("N", 3, "H", "W"), "float32")}, {"y": (("N", 3, "H", "W"), "float32")}
    )
    with pytest.raises(ValueError, match=r"input_shapes\['x'\] must hold integers"):
        cf.compile_model(model, input_shapes={"x": (1, 3, 8.5, 8)})
