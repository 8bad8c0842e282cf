"""cf.prepare_conv (weight packed once) against onnxruntime, and its argument checks."""

import numpy as np
import pytest

import convforge as cf
from convforge import ops, shapes
from convforge.export import compare, conv_model, run_onnxruntime
from convforge.plan import plan_conv

# (x shape, w shape, conv keyword arguments): each packed form of a weight (Winograd at
# stride 1 and over stride phases, NCHW[x]c blocks, a 1x1 over one row, generic), with
# bias and activation, and the dtypes without a CPU packing. The 3x3's stride phases are
# asked for (algorithm='winograd'): 'auto' takes them for a 3x3 on AVX-512 only, for a 7x7
# everywhere (profile.stride_phase_min_kernel).
CASES = {
    "winograd_few_tiles": ((1, 16, 9, 11), (24, 16, 3, 3), dict(padding=1)),
    "winograd_stride_phases": ((1, 32, 20, 18), (40, 32, 3, 3), dict(stride=2, padding=1, algorithm="winograd")),
    "winograd_stem": ((2, 3, 21, 19), (16, 3, 7, 7), dict(stride=2, padding=3)),
    "nchwc_5x5": ((2, 4, 13, 11), (16, 4, 5, 5), dict(stride=(1, 2), padding=2)),
    "pointwise_row": ((1, 32, 14, 14), (64, 32, 1, 1), {}),
    "dilated_3d": ((1, 8, 7, 8, 9), (16, 8, 3, 3, 3), dict(padding="same", dilation=(1, 2, 1))),
    "grouped": ((1, 16, 12, 12), (16, 4, 3, 3), dict(padding=1, groups=4)),
    "causal_1d": ((1, 8, 50), (8, 8, 2), dict(padding="causal", dilation=4)),
}  # fmt: skip


def _arrays(x_shape, w_shape, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(dtype)
    return x, w, rng.standard_normal(w_shape[0]).astype(dtype)


def _onnxruntime(x, w, b, geom, activation):
    model = conv_model(geom, "float32", bias=b is not None, activation=activation)
    (expected,) = run_onnxruntime(model, {"x": x, "w": w, "bias": b})
    return expected


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("bias, activation", [(True, "relu"), (False, None)])
def test_prepared_conv_matches_onnxruntime(case, bias, activation):
    x_shape, w_shape, kwargs = CASES[case]
    x, w, b = _arrays(x_shape, w_shape)
    b = b if bias else None
    op = cf.prepare_conv(w, b, x_shape=x.shape, activation=activation, **kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k != "algorithm"}
    geom = shapes.conv_geometry(x.shape, w.shape, **kwargs)
    assert op.geom == geom
    agreement = compare(op(x), _onnxruntime(x, w, b, geom, activation))
    assert agreement.ok, agreement


def test_stride_phase_winograd_is_what_a_prepared_conv_runs():
    """The packed weight is the F(4x4, 2x2) transform of the four stride phases
    (4 x 32 = 128 channels), where the per-call API keeps the direct convolution."""
    x_shape, w_shape, kwargs = CASES["winograd_stride_phases"]
    geom = shapes.conv_geometry(x_shape, w_shape, stride=2, padding=1)
    _, w, _ = _arrays(x_shape, w_shape)
    op = cf.prepare_conv(w, x_shape=x_shape, **kwargs)
    tiles = op.plan.algorithm.tiles
    assert isinstance(tiles, ops.WinogradTiles) and tiles.stride == (2, 2)
    assert op.plan.label == "conv2d (winograd F4x4, stride 2x2 phases)"
    assert not plan_conv(geom, "float32").needs_finite_check  # per call: direct
    assert op.constants[0].shape == (5, 5, -(-40 // tiles.out_block), 128, tiles.out_block)


def test_float64_and_later_weight_changes():
    """A dtype with no packed form runs the generic kernel on a copy of the weight:
    changing w afterwards does not change the prepared convolution (oracle: the sparse
    matrix form; onnxruntime has no float64 Conv)."""
    x, w, b = _arrays((2, 6, 10, 9), (4, 6, 3, 3), dtype="float64", seed=1)
    op = cf.prepare_conv(w, b, x_shape=x.shape, stride=(1, 2), padding="same")
    geom = shapes.conv_geometry(x.shape, w.shape, stride=(1, 2), padding="same")
    expected = (cf.conv_matrix(w, geom) @ x.ravel()).reshape(geom.out_shape)
    expected += b.reshape(1, -1, 1, 1)
    w[...], b[...] = 0, 0
    agreement = compare(op(x), expected)
    assert agreement.ok, agreement


def test_bad_arguments_are_refused_before_compiling():
    from convforge.build import cache_size

    x, w, b = _arrays((1, 8, 10, 10), (8, 8, 3, 3))
    before = cache_size()
    with pytest.raises(ValueError, match="groups"):
        cf.prepare_conv(w, x_shape=x.shape, groups=3)
    with pytest.raises(ValueError, match="larger than the padded input"):
        cf.prepare_conv(w, x_shape=(1, 8, 2, 2))
    with pytest.raises(ValueError, match="activation"):
        cf.prepare_conv(w, x_shape=x.shape, activation="gelu")
    with pytest.raises(ValueError, match="dtype"):
        cf.prepare_conv(w, b.astype(np.float64), x_shape=x.shape)
    assert cache_size() == before
    op = cf.prepare_conv(w, b, x_shape=x.shape, padding=1)
    with pytest.raises(ValueError, match=r"x must have shape \(1, 8, 10, 10\) and dtype float32"):
        op(x[:, :, :9])
    with pytest.raises(ValueError, match="dtype float32"):
        op(x.astype(np.float64))


@pytest.mark.parametrize(
    "n, f, k, dtype, with_bias",
    [(1, 512, 1000, "float32", True), (3, 100, 37, "float32", False), (2, 24, 5, "float64", True)],
)
def test_prepare_dense_runs_the_packed_gemm_plan(n, f, k, dtype, with_bias):
    """cf.prepare_dense packs w once as a compiled model packs a Gemm's constant B (the
    lowering's plan_dense), output features padded to whole vectors and sliced off again;
    its result is x @ w.T + bias (numpy in float64), and it holds a copy of w."""
    rng = np.random.default_rng(n * f + k)
    x = rng.standard_normal((n, f)).astype(dtype)
    w = (rng.standard_normal((k, f)) / np.sqrt(f)).astype(dtype)
    bias = rng.standard_normal(k).astype(dtype) if with_bias else None
    op = cf.prepare_dense(w, bias, x_shape=x.shape)
    expected = x.astype(np.float64) @ w.T.astype(np.float64)
    if with_bias:
        expected += bias
    w[:] = 0  # the prepared layer keeps its own packed copy
    y = op(x)
    assert y.shape == (n, k) and y.dtype == np.dtype(dtype)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert op.plan.label == "dense" and op.plan.padded % op.plan.width == 0
    assert op.constants[0].shape == op.plan.kernel_geometry.x_shape


def test_prepare_dense_refuses_other_shapes():
    w = np.ones((4, 3), np.float32)
    op = cf.prepare_dense(w, x_shape=(2, 3))
    with pytest.raises(ValueError, match="x must have shape"):
        op(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"shape \(N, F\)"):
        cf.prepare_dense(w, x_shape=(2, 3, 1))


# --- cf.conv's cache of packed weights (api.WeightCache) ----------------------------------


@pytest.mark.parametrize(
    "x_shape, w_shape, kwargs",
    [
        ((1, 24, 14, 14), (48, 24, 1, 1), {}),  # blocked 1x1 over one row
        ((1, 16, 20, 20), (16, 16, 3, 3), dict(padding=1)),  # Winograd, weight per call
    ],
    ids=["blocked_1x1", "winograd_3x3"],
)
def test_a_reused_weight_is_packed_once_and_a_mutated_one_never_reuses_its_pack(
    x_shape, w_shape, kwargs
):
    """Against the sparse-matrix oracle on every call: the second call with the same array
    packs it, the third reuses the pack; after an in-place change (one element, or only
    the sign of a zero) the result follows the new weight and the old pack is not used."""
    from convforge import api

    x, w, b = _arrays(x_shape, w_shape, seed=5)
    w[0, 0, 0, 0] = 0.0
    geom = shapes.conv_geometry(x.shape, w.shape, **kwargs)

    def expected():
        y = cf.conv_matrix(w.astype(np.float64), geom) @ x.astype(np.float64).ravel()
        return (y.reshape(geom.out_shape) + b.reshape(1, -1, 1, 1)).astype(np.float32)

    cache = api.WEIGHT_CACHE
    cache.clear()
    for packs, hits in [(0, 0), (1, 0), (1, 1)]:
        assert compare(cf.conv(x, w, b, **kwargs), expected()).ok
        assert (cache.packs, cache.hits) == (packs, hits)
    w[1, 2, 0, 0] += 3.0  # changed in place: same id, other bytes
    assert compare(cf.conv(x, w, b, **kwargs), expected()).ok
    assert (cache.packs, cache.hits) == (1, 1)  # remembered anew, not packed yet
    assert compare(cf.conv(x, w, b, **kwargs), expected()).ok
    assert (cache.packs, cache.hits) == (2, 1)
    w[0, 0, 0, 0] = -0.0  # equal as a float, other bits: not the same weight
    cf.conv(x, w, b, **kwargs)
    assert (cache.packs, cache.hits) == (2, 1)
    other = w.copy()  # same bytes, another array: its own entry
    assert compare(cf.conv(x, other, b, **kwargs), expected()).ok
    assert (cache.packs, cache.hits) == (2, 1)
    cache.clear()
    assert len(cache) == 0


def test_weight_cache_is_bounded_and_can_be_turned_off():
    from convforge import api
    from convforge.plan import plan_conv as plan_of

    geom = shapes.conv_geometry((1, 8, 6, 6), (16, 8, 1, 1))
    plan = plan_of(geom, "float32")
    assert plan.algorithm.packs
    cache = api.WeightCache(max_entries=2)
    weights = [np.full((16, 8, 1, 1), i, np.float32) for i in range(3)]
    for w in weights:
        assert cache.packed(w, plan) is None
    assert len(cache) == 2  # the least recently used (weights[0]) dropped
    assert cache.packed(weights[0], plan) is None  # so it is remembered anew
    packed = cache.packed(weights[0], plan)
    np.testing.assert_array_equal(packed, plan.with_constant_weight().pack(weights[0]))
    off = api.WeightCache(max_entries=0)
    assert off.packed(weights[0], plan) is None and off.packed(weights[0], plan) is None
    small = api.WeightCache(max_bytes=100)
    assert small.packed(weights[0], plan) is None and len(small) == 0
    # the bytes of copies and packs together are bounded too (each weight: 512 bytes)
    total = api.WeightCache(max_total_bytes=1100)
    for w in weights:
        assert total.packed(w, plan) is None
    assert len(total) == 2  # three copies (1536 bytes) did not fit: the oldest dropped
    assert total.packed(weights[2], plan) is not None  # its pack (512 more) evicts weights[1]
    assert len(total) == 1


def test_weight_cache_leaves_a_tuned_kernel_its_weight_per_call(monkeypatch):
    """A tuning record is for the per-call PrimFunc: where the per-call kernel has one, the
    weight is never packed (the tuned kernel keeps running)."""
    from types import SimpleNamespace

    from convforge import api

    geom = shapes.conv_geometry((1, 8, 6, 6), (16, 8, 1, 1))
    plan = plan_conv(geom, "float32")
    tuned = SimpleNamespace(tuning_record="a record")
    monkeypatch.setattr(api, "cached_kernel", lambda *args, **kwargs: tuned)
    cache = api.WeightCache()
    w = np.ones((16, 8, 1, 1), np.float32)
    assert [cache.packed(w, plan) for _ in range(3)] == [None, None, None]
    assert (cache.packs, cache.hits) == (0, 0)
