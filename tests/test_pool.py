"""Max/average, adaptive and global pooling against onnxruntime and numpy."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import convforge as cf
from convforge import shapes
from convforge.export import adaptive_pool_model, compare, pool_model, run_onnxruntime


@st.composite
def pool_cases(draw):
    nd = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(shapes.POOL_KINDS))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding = draw(
        st.one_of(
            st.sampled_from(["valid", "same", "same_lower"]),
            st.integers(0, 1),
            st.tuples(*[st.tuples(st.integers(0, 2), st.integers(0, 2)) for _ in range(nd)]),
        )
    )
    max_size = {1: 12, 2: 8, 3: 5}[nd]
    size = tuple(draw(st.integers(1, max_size)) for _ in range(nd))
    args = dict(stride=stride, padding=padding, ceil_mode=draw(st.booleans()), dilation=dilation)
    if kind == "avg":
        args["count_include_pad"] = draw(st.booleans())
    x_shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), *size)
    return kind, x_shape, kernel, args


def numpy_adaptive_pool(x, out_size, kind):
    """Independent oracle: loop over cells [floor(j*I/O), ceil((j+1)*I/O)) per axis."""
    reduce = np.max if kind == "max" else np.mean
    in_size = x.shape[2:]
    y = np.empty(x.shape[:2] + tuple(out_size), x.dtype)
    for cell in itertools.product(*[range(o) for o in out_size]):
        window = tuple(
            slice(j * i // o, -(-(j + 1) * i // o)) for j, i, o in zip(cell, in_size, out_size)
        )
        axes = tuple(range(2, x.ndim))
        y[(slice(None), slice(None), *cell)] = reduce(x[(slice(None), slice(None), *window)], axes)
    return y


@st.composite
def adaptive_cases(draw):
    nd = draw(st.integers(1, 3))
    max_size = {1: 12, 2: 8, 3: 5}[nd]
    size = tuple(draw(st.integers(1, max_size)) for _ in range(nd))
    kind = draw(st.sampled_from(shapes.POOL_KINDS))
    if draw(st.integers(0, 4)) == 0:
        out = None  # global pooling
    else:
        out = tuple(draw(st.integers(1, max_size)) for _ in range(nd))
    return kind, (draw(st.integers(1, 2)), draw(st.integers(1, 3)), *size), out


def check_adaptive(case):
    kind, x_shape, out = case
    x = np.random.default_rng(len(str(case))).standard_normal(x_shape).astype(np.float32)
    if out is None:
        geom = shapes.global_pool_geometry(x_shape, kind=kind)
        y = (cf.global_max_pool if kind == "max" else cf.global_avg_pool)(x)
    else:
        geom = shapes.adaptive_pool_geometry(x_shape, out, kind=kind)
        y = (cf.adaptive_max_pool if kind == "max" else cf.adaptive_avg_pool)(x, out)
    oracle = numpy_adaptive_pool(x.astype(np.float64), geom.out_size, kind)
    assert compare(y, oracle.astype(np.float32)).ok, compare(y, oracle)
    (expected,) = run_onnxruntime(adaptive_pool_model(geom), {"x": x})
    assert compare(y, expected).ok, compare(y, expected)


@given(st.one_of(pool_cases(), adaptive_cases()))
def test_pooling_matches_onnxruntime_and_numpy(case):
    """One family: max/avg pooling (vs onnxruntime), adaptive and global pooling (vs numpy
    and onnxruntime running the exported graph)."""
    if len(case) == 3:
        check_adaptive(case)
        return
    kind, x_shape, kernel, args = case
    try:
        geom = shapes.pool_geometry(x_shape, kernel, kind=kind, **args)
    except ValueError as err:
        assert "smaller than the kernel" in str(err) or "larger than the padded" in str(err)
        return
    x = np.random.default_rng(len(str(case))).standard_normal(x_shape).astype(np.float32)
    y = (cf.max_pool if kind == "max" else cf.avg_pool)(x, kernel, **args)
    (expected,) = run_onnxruntime(pool_model(geom), {"x": x})
    assert compare(y, expected).ok, compare(y, expected)


def test_ceil_mode_drops_a_window_starting_in_the_padding():
    # PyTorch: L=5, k=2, s=2, pad=1, ceil_mode -> ceil(5/2)+1 = 4 windows, the last would
    # start at 6 - 1 = 5 = L (in the high padding): dropped, 3 remain.
    assert shapes.pool_output_size(5, 2, 2, 1, 1, ceil_mode=True) == 3
    assert shapes.pool_output_size(6, 2, 2, 1, 1, ceil_mode=True) == 4
    x = np.arange(5, dtype=np.float32).reshape(1, 1, 5)
    np.testing.assert_array_equal(
        cf.max_pool(x, 2, stride=2, padding=1, ceil_mode=True).ravel(), [0, 2, 4]
    )
    # count_include_pad counts the padding but not the overhang beyond it: [pad, 0], [1, 2],
    # [3, 4] -> divisors 2, 2, 2; with L=4: [pad,0],[1,2],[3,pad] -> 2, 2, 2.
    np.testing.assert_allclose(
        cf.avg_pool(x, 2, stride=2, padding=1, ceil_mode=True, count_include_pad=True).ravel(),
        [0 / 2, 3 / 2, 7 / 2],
    )


def test_adaptive_cells_follow_pytorch():
    assert shapes.adaptive_pool_geometry((1, 1, 5), 3, kind="avg").cells(0) == [
        (0, 2), (1, 4), (3, 5),
    ]  # fmt: skip
    assert shapes.adaptive_pool_geometry((1, 1, 2), 5, kind="max").cells(0) == [
        (0, 1), (0, 1), (0, 2), (1, 2), (1, 2),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: cf.max_pool(x, 0), "kernel must be positive"),
        (lambda x: cf.max_pool(x, 2, padding=2), "smaller than the kernel"),
        (lambda x: cf.max_pool(x, 7), "kernel is larger than the padded input"),
        (lambda x: cf.avg_pool(x, 2, stride=(1, 1, 1)), "stride must be an int or a sequence of 2"),
        (lambda x: cf.max_pool(x, 2, padding="wide"), "padding mode 'wide' is unknown"),
        (lambda x: cf.max_pool(x, 2, ceil_mode=1), "ceil_mode must be a bool"),
        (lambda x: cf.adaptive_avg_pool(x, (2, 0)), "output_size must be positive"),
        (lambda x: cf.global_avg_pool(x[0, 0]), "rank 3, 4 or 5"),
    ],
)
def test_pool_rejects_bad_arguments(call, message):
    x = np.zeros((1, 2, 6, 6), np.float32)
    with pytest.raises(ValueError, match=message):
        call(x)


@pytest.mark.parametrize("count_include_pad", [False, True])
def test_dilated_avg_pool_divides_by_the_taps_it_counts(count_include_pad):
    """Average pooling with dilation 3 (ONNX AveragePool-19) against a loop over the taps:
    L=7, k=3, d=3, pad (2, 2), stride 2, ceil_mode. The divisor counts the taps inside the
    input, or inside the padded input with count_include_pad."""
    x = np.arange(1, 8, dtype=np.float64).reshape(1, 1, 7) ** 2
    y = cf.avg_pool(
        x, 3, stride=2, padding=((2, 2),), dilation=3, ceil_mode=True,
        count_include_pad=count_include_pad,
    )  # fmt: skip
    expected = []
    for p in range(shapes.pool_output_size(7, 3, 2, 2, 2, 3, ceil_mode=True)):
        taps = [p * 2 - 2 + r * 3 for r in range(3)]
        inside = [t for t in taps if 0 <= t < 7]
        counted = [t for t in taps if (-2 <= t < 9 if count_include_pad else 0 <= t < 7)]
        expected.append(sum(x[0, 0, t] for t in inside) / len(counted))
    np.testing.assert_allclose(y.ravel(), expected, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_adaptive_pools_in_other_dtypes_match_numpy(dtype, rng):
    x = rng.standard_normal((2, 3, 7, 5)).astype(dtype)
    for kind, fn in (("avg", cf.adaptive_avg_pool), ("max", cf.adaptive_max_pool)):
        y = fn(x, (3, 2))
        assert y.dtype == x.dtype
        oracle = numpy_adaptive_pool(x.astype(np.float64), (3, 2), kind).astype(dtype)
        assert compare(y, oracle).ok, (kind, compare(y, oracle))


@pytest.mark.parametrize(
    "kind, x_shape, kernel, args",
    [
        ("max", (1, 8, 64, 64), (4, 4), dict(stride=4)),
        ("avg", (2, 3, 33, 30), (3, 3), dict(stride=3, padding=1, count_include_pad=False)),
        ("avg", (1, 4, 9, 10), (2, 2), dict(stride=2, padding=(1, 0), ceil_mode=True)),
        ("max", (1, 2, 4, 6, 8), (2, 2, 2), dict(stride=2)),
        ("avg", (1, 3, 40), (5,), dict(stride=5)),
        ("max", (1, 64, 128, 128), (2, 2), dict(stride=2)),  # large: runs in parallel
    ],
)
def test_pools_whose_windows_tile_the_input_match_onnxruntime(kind, x_shape, kernel, args):
    """kernel == stride: the schedule walks window rows across output rows (1-D, 2-D, 3-D,
    padding, ceil_mode, average divisors)."""
    geom = shapes.pool_geometry(x_shape, kernel, kind=kind, **args)
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    y = (cf.max_pool if kind == "max" else cf.avg_pool)(x, kernel, **args)
    (expected,) = run_onnxruntime(pool_model(geom), {"x": x})
    assert compare(y, expected).ok, compare(y, expected)


@pytest.mark.parametrize(
    "kind, x_shape, kernel, args, slides",
    [
        # rows of whole vectors (32 positions): every tap outside a vectorized output row
        ("max", (1, 8, 64, 64), (3, 3), dict(stride=2, padding=1), True),
        ("avg", (2, 3, 37, 31), (3, 2), dict(stride=(2, 1), padding=1, count_include_pad=False),
         True),
        ("max", (1, 4, 3, 20, 63), (2, 3, 3),
         dict(stride=(1, 2, 2), padding=(0, 1, 1), dilation=(1, 2, 1)), True),
        # a row narrower than a vector (13 of 16): one vector of its width
        ("max", (1, 16, 27, 27), (3, 3), dict(stride=2), True),
        # rows ending in a partial vector (ResNet-50's 56; 55): the taps inside the row
        ("max", (1, 64, 112, 112), (3, 3), dict(stride=2, padding=1), False),
        ("max", (1, 8, 111, 111), (3, 3), dict(stride=2), False),
    ],
)  # fmt: skip
def test_sliding_windows_run_vectorized_rows_and_match_onnxruntime(
    kind, x_shape, kernel, args, slides
):
    """Overlapping windows, scheduled for AVX-512 (16 float lanes): rows of whole vectors
    or narrower than one (8-16 positions) slide, every tap outside a vectorized output row
    (each (N, C) task padding its plane); rows ending in a partial vector keep the taps
    inside the row (thresholds.md#pool-row-vectors). The rule applies (no silent fallback)
    and the pool agrees with onnxruntime on this CPU."""
    from tvm import s_tir, te

    from convforge import ops
    from convforge.schedules.cpu_pool import BLOCK_RULES
    from convforge.targets import resolve_target

    zen4 = resolve_target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4"})
    geom = shapes.pool_geometry(x_shape, kernel, kind=kind, **args)
    tx = te.placeholder(x_shape, "float32", name="x")
    sch = s_tir.Schedule(te.create_prim_func([tx, ops.pool(tx, geom)]))
    rule = next(r for r in BLOCK_RULES if r.name == "PoolRule")
    block = sch.get_sblock("pool")
    assert rule.applies(sch, block, zen4)
    names = rule.apply(sch, block, zen4)
    padded = any(lo or hi for lo, hi in geom.padding)
    assert ("pool_pad" in names) == (slides and padded)
    assert ("T.vectorized" in sch.mod.script()) == slides
    x = np.random.default_rng(2).standard_normal(x_shape).astype(np.float32)
    y = (cf.max_pool if kind == "max" else cf.avg_pool)(x, kernel, **args)
    (expected,) = run_onnxruntime(pool_model(geom), {"x": x})
    assert compare(y, expected).ok, compare(y, expected)
