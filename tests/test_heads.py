"""Dense, softmax and the three classifier heads against onnxruntime and numpy."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import convforge as cf
from convforge import shapes
from convforge.export import (
    compare,
    dense_model,
    flatten_dense_head_model,
    fully_conv_head_model,
    grid_pool_head_model,
    run_onnxruntime,
    softmax_model,
)


def numpy_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def feeds(x, w, b):
    return {"x": x, "w": w} if b is None else {"x": x, "w": w, "bias": b}


@st.composite
def dense_softmax_cases(draw):
    return dict(
        batch=draw(st.integers(1, 4)),
        features=draw(st.integers(1, 40)),
        classes=draw(st.integers(1, 20)),
        bias=draw(st.booleans()),
        extra=draw(st.lists(st.integers(1, 3), max_size=2)),
        logit_scale=draw(st.sampled_from([1.0, 100.0, 1e4])),
        op=draw(st.sampled_from(["dense", "softmax"])),
    )


def check_dense_or_softmax(batch, features, classes, bias, extra, logit_scale, op):
    rng = np.random.default_rng(batch * 1000 + features * 10 + classes)
    x = rng.standard_normal((batch, features)).astype(np.float32)
    w = rng.standard_normal((classes, features)).astype(np.float32)
    b = rng.standard_normal(classes).astype(np.float32) if bias else None
    if op == "softmax":
        # softmax of (N, K, *extra) along axis 1; large logits check the max subtraction
        z = (rng.standard_normal((batch, classes, *extra)) * logit_scale).astype(np.float32)
        p = cf.softmax(z)
        (expected,) = run_onnxruntime(softmax_model(z.shape), {"x": z})
        assert np.isfinite(p).all()
        assert compare(p, expected).ok, compare(p, expected)
        assert compare(p, numpy_softmax(z.astype(np.float64)).astype(np.float32)).ok
        return
    y = cf.dense(x, w, b)
    geom = shapes.dense_geometry(x.shape, w.shape, None if b is None else b.shape)
    (expected,) = run_onnxruntime(dense_model(geom, bias=bias), feeds(x, w, b))
    assert compare(y, expected).ok, compare(y, expected)


@st.composite
def head_cases(draw):
    nd = draw(st.integers(1, 3))
    max_size = {1: 12, 2: 7, 3: 4}[nd]
    sizes = [tuple(draw(st.integers(1, max_size)) for _ in range(nd)) for _ in range(2)]
    if draw(st.integers(0, 3)):  # a quarter of the examples run the same weights on 2 sizes
        sizes = sizes[:1]
    return dict(
        head=draw(st.sampled_from(["flatten_dense", "grid_pool", "fully_conv"])),
        batch=draw(st.integers(1, 2)),
        channels=draw(st.integers(1, 4)),
        classes=draw(st.integers(1, 6)),
        sizes=sizes,
        grid=tuple(draw(st.integers(1, 3)) for _ in range(nd)),
        pool=draw(st.sampled_from(shapes.POOL_KINDS)),
        bias=draw(st.booleans()),
    )


@given(st.one_of(dense_softmax_cases(), head_cases()))
def test_dense_softmax_and_heads_match_onnxruntime(case):
    """One family: dense or softmax (vs onnxruntime and numpy) or one of the three heads
    (grid_pool and fully_conv: in a quarter of the examples, the same weights on two input
    sizes)."""
    if "head" not in case:
        check_dense_or_softmax(**case)
        return
    rng = np.random.default_rng(len(str(case)))
    n, c, k, grid = case["batch"], case["channels"], case["classes"], case["grid"]
    nd = len(grid)
    b = rng.standard_normal(k).astype(np.float32) if case["bias"] else None
    if case["head"] == "flatten_dense":
        x = rng.standard_normal((n, c, *case["sizes"][0])).astype(np.float32)
        w = rng.standard_normal((k, shapes.flatten_features(x.shape))).astype(np.float32)
        y = cf.flatten_dense_head(x, w, b)
        geom = shapes.dense_geometry((n, w.shape[1]), w.shape)
        model = flatten_dense_head_model(x.shape, geom, bias=b is not None)
        (expected,) = run_onnxruntime(model, feeds(x, w, b))
        assert compare(y, expected).ok, compare(y, expected)
        return
    # grid_pool and fully_conv accept any input size: the same weights on two sizes
    if case["head"] == "grid_pool":
        w = rng.standard_normal((k, c * int(np.prod(grid)))).astype(np.float32)
    else:
        w = rng.standard_normal((k, c) + (1,) * nd).astype(np.float32)
    for size in case["sizes"]:
        x = rng.standard_normal((n, c, *size)).astype(np.float32)
        if case["head"] == "grid_pool":
            y = cf.grid_pool_head(x, w, b, grid=grid, pool=case["pool"])
            pool_geom = shapes.adaptive_pool_geometry(x.shape, grid, kind=case["pool"])
            model = grid_pool_head_model(pool_geom, k, bias=b is not None)
        else:
            y = cf.fully_conv_head(x, w, b)
            model = fully_conv_head_model(
                shapes.conv_geometry(x.shape, w.shape), bias=b is not None
            )
        assert y.shape == (n, k)
        (expected,) = run_onnxruntime(model, feeds(x, w, b))
        assert compare(y, expected).ok, compare(y, expected)


@pytest.mark.parametrize("head", ["grid_pool", "fully_conv"])
def test_size_agnostic_heads_on_two_input_sizes(head, rng):
    # the same weights on a 7x9 and a 12x5 input (3x3 grid: cells of unequal length)
    w = rng.standard_normal((4, 3 * 9) if head == "grid_pool" else (4, 3, 1, 1)).astype("f4")
    b = rng.standard_normal(4).astype("f4")
    for size in [(7, 9), (12, 5)]:
        x = rng.standard_normal((2, 3, *size)).astype("f4")
        if head == "grid_pool":
            y = cf.grid_pool_head(x, w, b, grid=3)
            geom = shapes.adaptive_pool_geometry(x.shape, 3, kind="avg")
            model = grid_pool_head_model(geom, 4, bias=True)
        else:
            y = cf.fully_conv_head(x, w, b)
            model = fully_conv_head_model(shapes.conv_geometry(x.shape, w.shape), bias=True)
        (expected,) = run_onnxruntime(model, feeds(x, w, b))
        assert y.shape == (2, 4)
        assert compare(y, expected).ok, compare(y, expected)


def test_fully_conv_head_is_softmax_of_mean_class_scores(rng):
    x = rng.standard_normal((2, 3, 5, 6))
    w = rng.standard_normal((4, 3, 1, 1))
    b = rng.standard_normal(4)
    scores = np.einsum("ncij,kc->nk", x, w[:, :, 0, 0]) / 30 + b
    np.testing.assert_allclose(cf.fully_conv_head(x, w, b), numpy_softmax(scores), rtol=1e-10)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x, w: cf.dense(x[0], w[0]), "x must have a positive shape"),
        (lambda x, w: cf.dense(x[0, :, :, 0], w[0, :, :, 0]), "axis 1 must be the features"),
        (lambda x, w: cf.softmax(x[0, 0, 0]), "rank >= 2"),
        (lambda x, w: cf.flatten_dense_head(x, np.zeros((3, 5), np.float32)), "axis 1 must be"),
        (lambda x, w: cf.grid_pool_head(x, np.zeros((3, 8), np.float32)), "axis 1 must be"),
        (lambda x, w: cf.grid_pool_head(x, w, pool="sum"), "kind must be one of"),
        (lambda x, w: cf.fully_conv_head(x, np.zeros((3, 2, 3, 3), np.float32)), "1x1 kernel"),
    ],
)
def test_heads_reject_bad_arguments(call, message):
    x = np.zeros((1, 2, 4, 4), np.float32)
    w = np.zeros((3, 2, 1, 1), np.float32)
    with pytest.raises(ValueError, match=message):
        call(x, w)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_softmax_in_other_dtypes_matches_numpy(dtype, rng):
    z = (rng.standard_normal((3, 11)) * 30).astype(dtype)
    p = cf.softmax(z)
    assert p.dtype == z.dtype
    assert compare(p, numpy_softmax(z.astype(np.float64)).astype(dtype)).ok


@pytest.mark.parametrize("shape", [(1, 256, 1024), (2, 7, 1000), (1, 3, 5, 33), (2, 4, 8, 64)])
def test_softmax_over_classes_of_long_rows_matches_onnxruntime(shape):
    """(N, K, ..., L): positions tiled in parallel (whole vectors, ragged and odd L)."""
    z = (np.random.default_rng(3).standard_normal(shape) * 8).astype(np.float32)
    p = cf.softmax(z)
    (expected,) = run_onnxruntime(softmax_model(z.shape), {"x": z})
    assert compare(p, expected).ok
    assert compare(p, numpy_softmax(z.astype(np.float64)).astype(np.float32)).ok
