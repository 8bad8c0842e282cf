"""Non-finite values and the convolution algorithm choice, against onnxruntime.

- Fused activations and softmax map NaN, +-inf and huge finite values exactly as
  onnxruntime's ops of the exported ONNX graph do (numpy API and compiled models).
- Winograd: an output is NaN/inf only where its receptive field holds a non-finite input,
  with the direct convolution's (onnxruntime's) value: positions and values of non-finite
  outputs match exactly, finite ones within the float32 tolerance, through ``cf.conv``,
  ``cf.prepare_conv`` and ``cf.compile_model`` (stride-1 3x3, dilated, stride-2 phases).
- ``algorithm="auto" | "direct" | "winograd"``: refusals, the cache key, ``report()``, the
  outlier case (direct is right; Winograd stays within its documented bound), the CLI.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from isolated import run_cli
from onnx import helper
from onnx.reference import ReferenceEvaluator

import convforge as cf
from convforge import api, shapes
from convforge.api import WINOGRAD_ERROR_BOUND
from convforge.build import cache_size, recording_kernels
from convforge.export import (
    compare,
    conv_model,
    flatten_dense_head_model,
    run_onnxruntime,
    save_model,
    softmax_model,
)
from convforge.export.onnx_graphs import make_model
from convforge.ops import WinogradTiles
from convforge.plan import plan_conv

#: Every special float32 value, and large finite ones either side of exp's range.
SPECIAL = np.array(
    [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 9.5, -9.5, 88.0, 89.0, -88.0, -104.0,
     100.0, -100.0, 1e30, -1e30, 3.4e38, -3.4e38],
    np.float32,
)  # fmt: skip


def assert_like(actual: np.ndarray, expected: np.ndarray) -> None:
    """NaN, +inf and -inf at exactly the same positions; finite values within tolerance."""
    assert actual.shape == expected.shape
    for kind in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(kind(actual), kind(expected), err_msg=kind.__name__)
    finite = np.isfinite(expected)
    if finite.any():
        agreement = compare(actual[finite], expected[finite])
        assert agreement.ok, agreement


# --- fused activations and softmax ------------------------------------------------------


@pytest.mark.parametrize("activation", ["relu", "relu6", "sigmoid", "tanh", "silu"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_activation_maps_special_values_as_onnxruntime(activation, dtype):
    x = SPECIAL.astype(dtype).reshape(1, 1, 1, -1)
    w = np.ones((1, 1, 1, 1), dtype)  # y = act(x) exactly
    geom = shapes.conv_geometry(x.shape, w.shape)
    model = conv_model(geom, dtype, activation=activation)
    if dtype == "float32":
        expected = run_onnxruntime(model, {"x": x, "w": w})
    else:  # onnxruntime has no float64 Conv: ONNX's reference evaluator
        with np.errstate(all="ignore"):
            expected = ReferenceEvaluator(model).run(None, {"x": x, "w": w})
    assert_like(cf.conv(x, w, activation=activation), expected[0])


def test_activation_select_stays_vectorized():
    """The NaN selects keep the epilogue's vector code: one unordered compare per lane."""
    import tvm
    from tvm import s_tir, te

    from convforge.ops import activate
    from convforge.targets import host_target

    def activated(tx, name):
        return te.compute((64,), lambda i: activate(tx[i], name, "float32"), name="y")

    for name in ("relu", "tanh", "sigmoid"):
        tx = te.placeholder((64,), "float32", "x")
        ty = activated(tx, name)
        sch = s_tir.Schedule(te.create_prim_func([tx, ty]).with_attr("global_symbol", "main"))
        sch.vectorize(sch.split(sch.get_loops(sch.get_sblock("y"))[0], [None, 8])[1])
        ir = tvm.compile(sch.mod, target=host_target()).mod.inspect_source("ll")
        # compares and selects on vectors (LLVM may widen the 8 lanes), none on scalars: a
        # tirx.isnan call made TVM scalarize the whole loop
        assert re.search(r"select <\d+ x i1>", ir), name
        assert not re.search(r"(fcmp \w+|fdiv|select i1) float ", ir), name


ROWS = np.array(
    [[1, np.nan, 2, 0], [1, np.inf, 2, 0], [1, -np.inf, 2, 0], [np.inf, np.inf, 1, 0],
     [-np.inf, -np.inf, -np.inf, -np.inf], [1e30, 3e38, -3e38, 0], [1, 2, 3, 4],
     [-np.inf, 5, -np.inf, 5]],
    np.float32,
)  # fmt: skip


def test_softmax_maps_special_values_as_onnxruntime():
    expected = run_onnxruntime(softmax_model(ROWS.shape), {"x": ROWS})[0]
    assert_like(cf.softmax(ROWS), expected)
    # along axis 1 of (N, K, L): the tiled schedule
    x = np.repeat(ROWS.T[None], 3, axis=0).copy()  # (3, 4, 8)
    expected = run_onnxruntime(softmax_model(x.shape), {"x": x})[0]
    assert_like(cf.softmax(x), expected)


def test_head_softmax_maps_special_values_as_onnxruntime():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 2, 2)).astype(np.float32)
    x[1, 0, 0, 0], x[2, 1, 1, 1], x[3, 0, 1, 0] = np.nan, np.inf, -np.inf
    w = rng.standard_normal((5, 8)).astype(np.float32)
    geom = shapes.dense_geometry((4, 8), w.shape, None)
    expected = run_onnxruntime(flatten_dense_head_model(x.shape, geom), {"x": x, "w": w})[0]
    assert_like(cf.flatten_dense_head(x, w), expected)


def test_compiled_conv_tanh_and_softmax_propagate_nan():
    x = np.tile(SPECIAL, (1, 8, 1, 1)).reshape(1, 8, 1, -1)
    w = np.eye(8, dtype=np.float32).reshape(8, 8, 1, 1)
    geom = shapes.conv_geometry(x.shape, w.shape)
    model = conv_model(geom, activation="tanh", weights={"w": w})
    assert_like(cf.compile_model(model)(x)[0], run_onnxruntime(model, {"x": x})[0])
    model = softmax_model(ROWS.shape)
    assert_like(cf.compile_model(model)(ROWS)[0], run_onnxruntime(model, {"x": ROWS})[0])


# --- Winograd and non-finite inputs -------------------------------------------------------

#: name: (x shape, w shape, convolution arguments); each one Winograd with a constant weight.
GEOMETRIES = {
    "3x3": ((1, 8, 16, 16), (8, 8, 3, 3), dict(padding=1)),
    "dilated": ((1, 8, 18, 18), (8, 8, 3, 3), dict(padding=2, dilation=2)),
    "stride2": ((1, 8, 16, 16), (8, 8, 3, 3), dict(padding=1, stride=2)),
}

#: Non-finite inputs at tile borders (F(4x4): tiles of 4 outputs), corners and together.
PLACEMENTS = {
    "nan": [(0, 3, 3, np.nan)],
    "+inf": [(1, 4, 8, np.inf)],
    "-inf": [(2, 15, 15, -np.inf)],
    "mixed": [(0, 0, 0, np.nan), (3, 7, 4, np.inf), (3, 7, 5, -np.inf), (5, 12, 11, np.inf)],
}


def _inputs(name: str, rng: np.random.Generator):
    x_shape, w_shape, kwargs = GEOMETRIES[name]
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    return x, w, bias, kwargs


def _poisoned(x: np.ndarray, placement: str) -> np.ndarray:
    x = x.copy()
    for c, h, w, value in PLACEMENTS[placement]:
        x[0, c, h, w] = value
    return x


def _reference(geom, x, w, bias, activation=None):
    model = conv_model(geom, bias=True, activation=activation)
    return run_onnxruntime(model, {"x": x, "w": w, "bias": bias})[0]


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_winograd_nonfinite_outputs_are_the_direct_convolutions(name):
    x, w, bias, kwargs = _inputs(name, np.random.default_rng(1))
    geom = shapes.conv_geometry(x.shape, w.shape, bias_shape=bias.shape, **kwargs)
    plan = plan_conv(geom, "float32", algorithm="winograd")
    assert isinstance(plan.algorithm.tiles, WinogradTiles)
    prepared = cf.prepare_conv(w, bias, x_shape=x.shape, algorithm="winograd", **kwargs)
    assert prepared.algorithm == "winograd"
    for placement in PLACEMENTS:
        poisoned = _poisoned(x, placement)
        expected = _reference(geom, poisoned, w, bias)
        assert np.isfinite(expected).sum() > expected.size // 2  # most outputs stay finite
        assert_like(cf.conv(poisoned, w, bias, algorithm="winograd", **kwargs), expected)
        assert_like(prepared(poisoned), expected)
    assert_like(prepared(x), _reference(geom, x, w, bias))  # finite: Winograd itself


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_compiled_winograd_nonfinite_outputs_are_the_direct_convolutions(name):
    x, w, bias, kwargs = _inputs(name, np.random.default_rng(2))
    geom = shapes.conv_geometry(x.shape, w.shape, bias_shape=bias.shape, **kwargs)
    model = conv_model(geom, bias=True, activation="relu", weights={"w": w, "bias": bias})
    compiled = cf.compile_model(model, algorithm="winograd")
    assert "winograd" in next(r.kernel for r in compiled.report(x).rows if r.op_type == "Conv")
    for placement in PLACEMENTS:
        poisoned = _poisoned(x, placement)
        expected = run_onnxruntime(model, {"x": poisoned})[0]
        assert_like(compiled(poisoned)[0], expected)
    assert_like(compiled(x)[0], run_onnxruntime(model, {"x": x})[0])


def test_compiled_winograd_with_fused_pool_and_an_unfused_relu():
    """Conv -> Relu -> MaxPool in one Winograd kernel (its direct fallback pools too), and
    a Relu no convolution absorbs (TVM's lowering, legalized as convforge's relu)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 16, 16, 16)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Relu", ["x"], ["z"]),
    ]
    model = make_model(
        nodes, {"x": (x.shape, "float32"), "w": (w.shape, "float32")},
        {"y": ((1, 16, 8, 8), "float32"), "z": (x.shape, "float32")}, initializers={"w": w},
    )  # fmt: skip
    compiled = cf.compile_model(model)
    conv = next(r.kernel for r in compiled.report(x).rows if r.op_type == "Conv")
    assert conv == "conv2d (winograd F4x4) + max_pool2d"
    for placement in ("nan", "+inf", "-inf", "mixed"):
        poisoned = _poisoned(x, placement)
        for ours, theirs in zip(compiled(poisoned), run_onnxruntime(model, {"x": poisoned})):
            assert_like(ours, theirs)


# --- the algorithm choice ------------------------------------------------------------------


def _outlier_case(channels: int = 16, size: int = 16):
    """1e-3 noise with one 1e3 outlier: Winograd's tile rounding swamps its neighbours."""
    rng = np.random.default_rng(3)
    x = (1e-3 * rng.standard_normal((1, channels, size, size))).astype(np.float32)
    x[0, 0, size // 2, size // 2] = 1e3
    w = rng.standard_normal((channels, channels, 3, 3)).astype(np.float32)
    return x, w


def test_direct_algorithm_is_right_next_to_an_outlier():
    x, w = _outlier_case()
    geom = shapes.conv_geometry(x.shape, w.shape, padding=1)
    expected = run_onnxruntime(conv_model(geom), {"x": x, "w": w})[0]
    direct = cf.conv(x, w, padding=1, algorithm="direct")
    prepared = cf.prepare_conv(w, x_shape=x.shape, padding=1, algorithm="direct")
    assert prepared.algorithm == "direct"
    for y in (direct, prepared(x)):
        assert compare(y, expected).ok
        # every output's sign, also the small outputs next to the outlier
        big = np.abs(expected) > 1e-6
        np.testing.assert_array_equal(np.sign(y[big]), np.sign(expected[big]))
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kwargs", [dict(padding=1), dict(padding=1, stride=2)])
def test_winograd_error_is_within_its_documented_bound(kwargs):
    """``|y - exact| <= bound * max|x| * sum|w|`` (float64 oracle: the sparse matrix)."""
    x, w = _outlier_case()
    geom = shapes.conv_geometry(x.shape, w.shape, **kwargs)
    y = cf.conv(x, w, algorithm="winograd", **kwargs).astype(np.float64)
    exact = (cf.conv_matrix(w.astype(np.float64), geom) @ x.astype(np.float64).ravel()).reshape(
        geom.out_shape
    )
    scale = np.abs(x).max() * np.abs(w).sum(axis=(1, 2, 3))[None, :, None, None]
    bound = WINOGRAD_ERROR_BOUND["F(4x4,3x3)" if geom.stride == (1, 1) else "stride-2 phases"]
    assert (np.abs(y - exact) / scale).max() <= bound


def test_algorithm_refusals():
    x = np.zeros((1, 8, 16, 16), np.float32)
    w = np.zeros((8, 8, 3, 3), np.float32)
    for bad in ("fast", "Direct", None, 1):
        with pytest.raises(ValueError, match="algorithm must be one of"):
            cf.conv(x, w, algorithm=bad)
        with pytest.raises(ValueError, match="algorithm must be one of"):
            cf.prepare_conv(w, x_shape=x.shape, algorithm=bad)
    not_winograd = [
        (x, np.zeros((8, 8, 1, 1), np.float32), {}),  # 1x1
        (x, np.zeros((8, 8, 5, 5), np.float32), {}),  # 5x5 stride 1
        (x.astype(np.float64), w.astype(np.float64), {}),  # float64
        (x, np.zeros((8, 1, 3, 3), np.float32), dict(groups=8)),  # depthwise
        (np.zeros((1, 8, 16), np.float32), np.zeros((8, 8, 3), np.float32), {}),  # 1-D
    ]
    for xx, ww, kwargs in not_winograd:
        with pytest.raises(ValueError, match="algorithm='winograd' does not apply"):
            cf.conv(xx, ww, algorithm="winograd", **kwargs)
        with pytest.raises(ValueError, match="algorithm='winograd' does not apply"):
            cf.prepare_conv(ww, x_shape=xx.shape, algorithm="winograd", **kwargs)
    model = conv_model(shapes.conv_geometry(x.shape, w.shape))
    with pytest.raises(ValueError, match="algorithm must be one of"):
        cf.compile_model(model, algorithm="fastest")


def test_algorithm_is_part_of_the_kernel_cache_key_and_the_report():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 16, 32, 32)).astype(np.float32)  # 64 tiles: auto = Winograd
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    geom = shapes.conv_geometry(x.shape, w.shape, padding=1)
    expected = run_onnxruntime(conv_model(geom), {"x": x, "w": w})[0]
    kernels = {}
    for algorithm in ("direct", "winograd", "auto"):
        api.WEIGHT_CACHE.clear()  # each a first call with w: its plan's kernel, not a pack
        before = cache_size()
        with recording_kernels() as used:
            y = cf.conv(x, w, padding=1, algorithm=algorithm)
        assert compare(y, expected).ok
        (kernels[algorithm],) = [k for k in used if k.name == "conv"]
        assert cache_size() - before <= 2  # the kernel, and Winograd's input check
    assert kernels["direct"] is not kernels["winograd"]
    assert kernels["auto"] is kernels["winograd"]  # auto keeps today's choice here
    assert "winograd_gemm" in kernels["winograd"].func.script()
    assert "winograd_gemm" not in kernels["direct"].func.script()

    model = conv_model(geom, weights={"w": w})
    reported = {}
    for algorithm in ("auto", "direct", "winograd"):
        compiled = cf.compile_model(model, algorithm=algorithm)
        assert compare(compiled(x)[0], expected).ok
        reported[algorithm] = next(r.kernel for r in compiled.report(x).rows)
        assert compiled.metadata["algorithm"] == algorithm
    assert reported == {
        "auto": "conv2d (winograd F4x4)",
        "winograd": "conv2d (winograd F4x4)",
        "direct": "conv2d",
    }


def test_cli_algorithm(tmp_path):
    x, w = _outlier_case(channels=8)
    geom = shapes.conv_geometry(x.shape, w.shape, padding=1)
    path = tmp_path / "conv.onnx"
    save_model(conv_model(geom, weights={"w": w}), path)
    np.savez(tmp_path / "x.npz", x=x)
    outcome = run_cli(
        ["check", str(path), "--inputs", str(tmp_path / "x.npz"), "--algorithm", "direct"]
    )
    assert outcome.returncode == 0, outcome.describe()
    assert "conv2d" in outcome.stdout or "ok" in outcome.stdout.lower(), outcome.describe()
    # NaN and infinities through Winograd (auto, a constant weight): outputs agree exactly
    np.savez(tmp_path / "nan.npz", x=_poisoned(x, "mixed"))
    outcome = run_cli(["check", str(path), "--inputs", str(tmp_path / "nan.npz")])
    assert outcome.returncode == 0, outcome.describe()
    outcome = run_cli(["compile", str(path), "-o", str(tmp_path / "m.so"), "--algorithm", "best"])
    assert outcome.returncode == 2, outcome.describe()
    assert "--algorithm" in outcome.stderr and "invalid choice" in outcome.stderr
