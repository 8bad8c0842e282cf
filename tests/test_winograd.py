"""Winograd convolution: its matrices against numpy, its kernels against onnxruntime.

The matrices are checked on their defining identity (``A^T [(G g) * (B^T d)]`` is the
correlation of d with g, numpy's ``np.correlate``); every kernel, with the weight given per
call or transformed once at compile time, against onnxruntime running the equivalent ONNX
Conv. Each case asserts that the Winograd computation was the one chosen and that its
schedule applied (``schedule_winograd`` raises instead of falling back).
"""

import re

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import te

import convforge as cf
from convforge import api, ops, shapes
from convforge.build import compile_computation
from convforge.export import compare, conv_model, run_onnxruntime
from convforge.ops.winograd import phase_weight_array, winograd_matrices
from convforge.plan import MAX_PHASE_CHANNELS, plan_conv, winograd_tiles
from convforge.schedules.cpu_winograd import schedule_winograd
from convforge.targets import host_target, profile

ZEN3 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3"}
AVX512 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"}
NEON = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n1"}


@pytest.mark.parametrize("m, r", [(2, 3), (4, 3), (6, 3), (2, 2), (3, 2), (4, 2), (2, 5)])
def test_matrices_compute_the_correlation(m, r):
    at, g, bt = winograd_matrices(m, r)
    assert at.shape == (m, m + r - 1) and g.shape == (m + r - 1, r) and bt.shape == (m + r - 1,) * 2
    rng = np.random.default_rng(m * 10 + r)
    for _ in range(5):
        d, w = rng.standard_normal(m + r - 1), rng.standard_normal(r)
        np.testing.assert_allclose(
            at @ ((g @ w) * (bt @ d)), np.correlate(d, w, "valid"), atol=1e-12
        )


def test_input_transform_has_integer_entries():
    """The transforms applied to activations at run time are small integers (exact in float)."""
    at, _, bt = winograd_matrices(4, 3)
    assert np.array_equal(bt, np.round(bt)) and np.array_equal(at, np.round(at))
    assert np.abs(bt).max() <= 5


def _arrays(x_shape, w_shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    return x, w, b


def _ort_reference(x, w, b, geom, activation=None):
    model = conv_model(geom, "float32", bias=b is not None, activation=activation)
    (expected,) = run_onnxruntime(model, {"x": x, "w": w, "bias": b})
    return expected


# (x shape, w shape, conv keyword arguments, activation): every case has >= 32 tiles, so
# the numpy API computes it by Winograd with the weight given per call.
CASES = {
    "pad1": ((1, 16, 24, 24), (16, 16, 3, 3), dict(padding=1), None),
    "valid_odd_sizes_relu": ((1, 8, 27, 23), (20, 8, 3, 3), {}, "relu"),
    "same_upper_batch3": ((3, 12, 13, 14), (9, 12, 3, 3), dict(padding="same"), "sigmoid"),
    "asymmetric_pads": ((1, 10, 21, 25), (24, 10, 3, 3), dict(padding=((2, 0), (0, 1))), None),
    "dilated2": ((1, 16, 33, 30), (16, 16, 3, 3), dict(padding=2, dilation=2), None),
    "dilated_mixed": ((2, 8, 19, 26), (12, 8, 3, 3), dict(padding=(1, 3), dilation=(1, 3)), "tanh"),
    "padding_beyond_kernel": ((1, 8, 17, 18), (8, 8, 3, 3), dict(padding=((4, 3), (0, 5))), None),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_per_call_weight_matches_onnxruntime(case):
    x_shape, w_shape, kwargs, activation = CASES[case]
    x, w, b = _arrays(x_shape, w_shape)
    geom = shapes.conv_geometry(x.shape, w.shape, **kwargs)
    tiles = _tiles(geom)
    assert isinstance(tiles, ops.WinogradTiles), tiles
    _check_schedule_applies(geom, tiles, weight_transformed=False)
    y = cf.conv(x, w, b, activation=activation, **kwargs)
    agreement = compare(y, _ort_reference(x, w, b, geom, activation))
    assert agreement.ok, agreement


def _check_schedule_applies(geom, tiles, weight_transformed):
    tx = te.placeholder(geom.x_shape, "float32", name="x")
    (sh, sw), kb = tiles.stride, -(-geom.out_channels // tiles.out_block)
    a = tiles.m + -(-geom.kernel[0] // sh) - 1  # ceil(k/s) taps per stride phase
    channels = sh * sw * geom.in_channels
    w_shape = (a, a, kb, channels, tiles.out_block) if weight_transformed else geom.w_shape
    tw = te.placeholder(w_shape, "float32", name="w")
    out = ops.conv2d_winograd(tx, tw, geom, tiles, weight_transformed=weight_transformed)
    func = te.create_prim_func([tx, tw, out])
    schedule_winograd(func, host_target())  # raises a ScheduleError if a step does not apply


def _tiles(geom, target=None, constant_weight=False, algorithm="auto"):
    """The Winograd tiles the plan computes ``geom`` with, or None (another algorithm)."""
    plan = plan_conv(geom, "float32", target, constant_weight=constant_weight, algorithm=algorithm)
    return getattr(plan.algorithm, "tiles", None)


def _constant_weight_conv(x, w, b, geom, activation=None, target=None, algorithm="auto"):
    """The compiled-model path: the plan of a constant weight, transformed once
    (``plan.pack``), then the computation that reads it."""
    target = tvm.target.Target(target) if target else host_target()
    plan = plan_conv(
        geom, "float32", target, constant_weight=True, activation=activation, bias=True,
        algorithm=algorithm,
    )  # fmt: skip
    assert plan.needs_finite_check and plan.packs
    packed = plan.pack(w)
    return compile_computation("conv", plan.computation(), target)(x, packed, b)


@pytest.mark.parametrize(
    "x_shape, w_shape, m",
    [((1, 16, 9, 11), (24, 16, 3, 3), 4), ((1, 320, 6, 7), (20, 320, 3, 3), 2)],
    ids=["few_tiles_f4", "many_channels_f2"],
)
def test_constant_weight_matches_onnxruntime(x_shape, w_shape, m):
    """Few tiles take Winograd when the weight is transformed once; over 256 input channels
    F(2x2, 3x3) keeps the float32 rounding within tolerance."""
    x, w, b = _arrays(x_shape, w_shape, seed=1)
    geom = shapes.conv_geometry(x.shape, w.shape, padding=1)
    assert _tiles(geom) is None
    tiles = _tiles(geom, constant_weight=True)
    assert isinstance(tiles, ops.WinogradTiles) and tiles.m == m
    _check_schedule_applies(geom, tiles, weight_transformed=True)
    y = _constant_weight_conv(x, w, b, geom, activation="relu")
    agreement = compare(y, _ort_reference(x, w, b, geom, "relu"))
    assert agreement.ok, agreement


# (x shape, w shape, conv keyword arguments): stride-2 convolutions, computed by F(4x4,
# r x r) over the four stride phases (r = ceil(k/2)) when the weight is transformed once:
# 'auto' takes them on AVX-512 (planned for skylake-avx512, not run: this host may lack
# it) except 3x3 ones of fewer than 16 input channels, not on AVX2 (the host's runs take
# them by algorithm='winograd').
STRIDED_CASES = {
    "resnet_128ch": ((1, 128, 28, 28), (128, 128, 3, 3), dict(stride=2, padding=1)),
    "asymmetric_pads_batch2": ((2, 16, 23, 18), (24, 16, 3, 3), dict(stride=2, padding=((1, 0), (2, 1)))),
    "valid_odd_sizes": ((1, 8, 21, 17), (8, 8, 3, 3), dict(stride=2)),
    "same_upper": ((1, 12, 19, 20), (40, 12, 3, 3), dict(stride=2, padding="same")),
    "stem_7x7": ((1, 3, 45, 38), (24, 3, 7, 7), dict(stride=2, padding=3)),
    "kernel_5x5_valid": ((2, 16, 23, 21), (16, 16, 5, 5), dict(stride=2)),
    "kernel_4x4": ((1, 8, 22, 22), (8, 8, 4, 4), dict(stride=2, padding=1)),
}  # fmt: skip


@pytest.mark.parametrize("case", list(STRIDED_CASES), ids=list(STRIDED_CASES))
def test_strided_constant_weight_matches_onnxruntime(case):
    x_shape, w_shape, kwargs = STRIDED_CASES[case]
    x, w, b = _arrays(x_shape, w_shape, seed=4)
    geom = shapes.conv_geometry(x.shape, w.shape, **kwargs)
    auto = _tiles(geom, AVX512, constant_weight=True)
    explicit = _tiles(geom, AVX512, constant_weight=True, algorithm="winograd")
    if geom.kernel == (3, 3) and geom.in_channels < 16:  # thresholds.md#stride-phase-winograd
        assert auto is None and explicit is not None
    else:
        assert auto == explicit
    tiles = _tiles(geom, constant_weight=True, algorithm="winograd")
    assert isinstance(tiles, ops.WinogradTiles) and tiles.stride == (2, 2), tiles
    _check_schedule_applies(geom, tiles, weight_transformed=True)
    _check_schedule_applies(geom, tiles, weight_transformed=False)
    y = _constant_weight_conv(x, w, b, geom, activation="relu", algorithm="winograd")
    agreement = compare(y, _ort_reference(x, w, b, geom, "relu"))
    assert agreement.ok, agreement


def test_strided_winograd_with_weight_per_call_matches_onnxruntime():
    """The computation also transforms a weight given per call (which the chooser leaves to
    the direct convolution, for speed): checked on its own."""
    x, w, b = _arrays((1, 16, 26, 25), (20, 16, 3, 3), seed=6)
    geom = shapes.conv_geometry(x.shape, w.shape, stride=2, padding=1)
    tiles = ops.WinogradTiles(4, 16, 2, stride=(2, 2))

    def computation():
        tx, tw, tb = api.placeholders("float32", x=x.shape, w=w.shape, b=b.shape)
        return [tx, tw, tb], [ops.conv2d_winograd(tx, tw, geom, tiles, ops.Epilogue(tb))]

    y = compile_computation("conv", computation, host_target())(x, w, b)
    agreement = compare(y, _ort_reference(x, w, b, geom))
    assert agreement.ok, agreement


def test_phase_weight_array_holds_the_taps_of_each_phase():
    w = np.random.default_rng(7).standard_normal((5, 3, 3, 3))
    phases = phase_weight_array(w, (2, 2))
    assert phases.shape == (5, 12, 2, 2)
    for ph, pw, c, u, v in np.ndindex(2, 2, 3, 2, 2):
        i, j = 2 * u + ph, 2 * v + pw
        expected = w[:, c, i, j] if i < 3 and j < 3 else 0
        np.testing.assert_array_equal(phases[:, (ph * 2 + pw) * 3 + c, u, v], expected)


def test_winograd_refuses_strided_dilation():
    geom = shapes.conv_geometry((1, 8, 16, 16), (8, 8, 3, 3), stride=2, dilation=2)
    tx, tw = api.placeholders("float32", x=geom.x_shape, w=geom.w_shape)
    with pytest.raises(ValueError, match="undilated"):
        ops.conv2d_winograd(tx, tw, geom, ops.WinogradTiles(4, 8, 1, stride=(2, 2)))
    with pytest.raises(ValueError, match=r"tiles\.stride=\(1, 1\)"):
        ops.conv2d_winograd(tx, tw, geom, ops.WinogradTiles(4, 8, 1))


@pytest.mark.parametrize("stride", [1, 2])
def test_compiled_model_uses_winograd_and_matches_onnxruntime(stride):
    """A model's 3x3 conv (BN and ReLU fused) on a small map: Winograd with the weight
    transformed at compile time, named so in the report, against onnxruntime."""
    rng = np.random.default_rng(5)
    c = 16
    weights = {
        "w": (rng.standard_normal((c, c, 3, 3)) / 12).astype(np.float32),
        "scale": rng.uniform(0.5, 1.5, c).astype(np.float32),
        "shift": rng.standard_normal(c).astype(np.float32),
        "mean": rng.standard_normal(c).astype(np.float32),
        "var": rng.uniform(0.5, 1.5, c).astype(np.float32),
    }
    nodes = [
        helper.make_node(
            "Conv",
            ["x", "w"],
            ["c"],
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            strides=[stride, stride],
        ),
        helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["n"]),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 10 // stride, 10 // stride])],
        [numpy_helper.from_array(a, name) for name, a in weights.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    # a 3x3 at stride 2: 'auto' keeps the direct convolution on AVX2 (stride_phase_min_kernel)
    compiled = cf.compile_model(model, algorithm="auto" if stride == 1 else "winograd")
    rows = {row.node: row for row in compiled.report().rows}
    phases = ", stride 2x2 phases" if stride == 2 else ""
    assert rows["Conv_0"].kernel == f"conv2d (winograd F4x4{phases})", rows["Conv_0"]
    assert rows["Conv_0"].kernel in str(compiled.report())  # the table shows it whole
    x = rng.standard_normal((1, c, 10, 10)).astype(np.float32)
    (expected,) = run_onnxruntime(model, {"x": x})
    agreement = compare(compiled(x)[0], expected)
    assert agreement.ok, agreement


def test_transformed_weight_equals_g_w_gt():
    """transform_weight_array against G w G^T written out with numpy, channel blocks padded."""
    w = np.random.default_rng(2).standard_normal((10, 3, 3, 3))
    u = ops.transform_weight_array(w, ops.WinogradTiles(4, 8, 1))
    _, g, _ = winograd_matrices(4, 3)
    assert u.shape == (6, 6, 2, 3, 8)
    for k in range(16):
        for c in range(3):
            expected = g @ w[k, c] @ g.T if k < 10 else np.zeros((6, 6))
            np.testing.assert_allclose(u[:, :, k // 8, c, k % 8], expected, atol=1e-12)


def test_avx2_build_matches_onnxruntime():
    """The Zen 3 (AVX2) build of both weight paths, run on this x86 host."""
    x, w, b = _arrays((1, 16, 20, 20), (16, 16, 3, 3), seed=3)
    geom = shapes.conv_geometry(x.shape, w.shape, padding=1)
    expected = _ort_reference(x, w, b, geom)
    assert compare(cf.conv(x, w, b, padding=1, target=ZEN3), expected).ok
    assert compare(_constant_weight_conv(x, w, b, geom, target=ZEN3), expected).ok


def test_stride_phases_build_for_avx2_and_neon():
    """The Zen 3 (AVX2) build of the stride-phase computation, run on this x86 host against
    onnxruntime, and its AArch64 build (cross-compiled, not run): vector multiply-adds."""
    x, w, b = _arrays((1, 16, 22, 20), (24, 16, 3, 3), seed=8)
    geom = shapes.conv_geometry(x.shape, w.shape, stride=2, padding=1)
    y = _constant_weight_conv(x, w, b, geom, "relu", target=ZEN3, algorithm="winograd")
    assert compare(y, _ort_reference(x, w, b, geom, "relu")).ok
    neon = tvm.target.Target(NEON)
    plan = plan_conv(geom, "float32", neon, constant_weight=True)
    tiles = plan.algorithm.tiles
    assert isinstance(tiles, ops.WinogradTiles) and tiles.stride == (2, 2)
    computation = plan.computation()
    asm = compile_computation("conv", computation, neon).executable.mod.inspect_source("asm")
    assert re.search(r"\bfmla\s+v\d+\.4s", asm), "no NEON vector fmla"


def test_chooser_keeps_the_direct_convolution_elsewhere():
    target = host_target()
    big = dict(x_shape=(1, 16, 32, 32), w_shape=(16, 16, 3, 3))

    def tiles(dtype="float32", constant=True, x_shape=big["x_shape"], w_shape=big["w_shape"], **kw):
        geom = shapes.conv_geometry(x_shape, w_shape, **kw)
        return winograd_tiles(geom, dtype, target, constant)

    assert tiles(padding=1) is not None
    strided = tiles(stride=2, padding=1)
    assert (strided.m, strided.stride) == (4, (2, 2)), strided
    assert tiles(stride=2, padding=1, constant=False) is None  # per call: too large a U
    assert tiles(stride=2, padding=2, dilation=2) is None
    assert tiles(stride=3, padding=1) is None
    assert tiles(stride=(1, 2), padding=1) is None
    assert MAX_PHASE_CHANNELS[2] < 4 * 256
    assert tiles(x_shape=(1, 256, 32, 32), w_shape=(16, 256, 3, 3), stride=2) is None
    stem = dict(x_shape=(1, 3, 64, 64), w_shape=(16, 3, 7, 7), stride=2, padding=3)
    assert tiles(**stem, constant=False).stride == (2, 2)  # a small U: also per call
    assert tiles(x_shape=(1, 1, 64, 64), w_shape=(16, 1, 7, 7), stride=2) is None  # 4 phases
    assert MAX_PHASE_CHANNELS[4] < 4 * 32
    assert tiles(x_shape=(1, 32, 64, 64), w_shape=(16, 32, 7, 7), stride=2) is None
    assert tiles(x_shape=(1, 3, 64, 64), w_shape=(16, 3, 9, 9), stride=2) is None  # r=5
    assert tiles(w_shape=(16, 4, 3, 3), groups=4, padding=1) is None
    assert tiles(w_shape=(16, 16, 5, 5), padding=2) is None
    assert tiles(dtype="float64", padding=1) is None
    assert tiles(x_shape=(1, 4, 32, 32), w_shape=(16, 4, 3, 3), padding=1) is None
    assert tiles(x_shape=(1, 16, 3, 3), padding=0) is None  # one output: no whole tile
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host=target)
    geom = shapes.conv_geometry(big["x_shape"], big["w_shape"], padding=1)
    assert winograd_tiles(geom, "float32", cuda, True) is None
    strided_geom = shapes.conv_geometry(big["x_shape"], big["w_shape"], stride=2, padding=1)
    stem_geom = shapes.conv_geometry(**stem)
    for mcpu, phases in (("znver3", False), ("haswell", False), ("skylake-avx512", True)):
        cpu = tvm.target.Target({**ZEN3, "mcpu": mcpu})
        assert profile(cpu).stride_phase_min_kernel == (0 if phases else 7), mcpu
        auto = _tiles(strided_geom, cpu, constant_weight=True)
        assert (auto is not None and auto.stride == (2, 2)) is phases, (mcpu, auto)
        assert _tiles(strided_geom, cpu, True, "winograd").stride == (2, 2)  # asked for
        assert _tiles(stem_geom, cpu, constant_weight=True).stride == (2, 2)  # 7x7: always
    assert _tiles(shapes.conv_geometry(**big, padding=1), ZEN3, True).stride == (1, 1)
    small = shapes.conv_geometry((1, 16, 14, 14), (16, 16, 3, 3), padding=1)  # 16 tiles
    assert profile(target).min_tiles_per_call_weight > 16
    assert winograd_tiles(small, "float32", target) is None
    assert winograd_tiles(small, "float32", target, True) is not None
