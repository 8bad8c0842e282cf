"""Special CPU paths (grouped/depthwise, long 1-D causal/dilated, sub-pixel transposed
convolution) against onnxruntime and the sparse-matrix form.

Each schedule rule is compiled directly (a schedule error fails the test instead of
falling back to the generic rule), at reduced sizes and at sizes the tiles do not divide.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import s_tir, te, tirx

import convforge as cf
from convforge import api, ops, shapes
from convforge.build import compile_computation
from convforge.export import compare, conv_model, conv_transpose_model, run_onnxruntime
from convforge.schedules import cpu_causal, cpu_grouped, cpu_subpixel
from convforge.schedules.cpu_direct import has_block
from convforge.targets import host_target


def _conv_kernel(geom, dtype, bias, activation, schedule):
    def build():
        x = te.placeholder(geom.x_shape, dtype, name="x")
        w = te.placeholder(geom.w_shape, dtype, name="w")
        b = te.placeholder((geom.out_channels,), dtype, name="bias") if bias else None
        inputs = [x, w] + ([b] if bias else [])
        return inputs, [ops.conv(x, w, geom, ops.Epilogue(b, activation))]

    return compile_computation("conv", build, host_target(), lambda f, t: schedule(f, t).mod)


def _prim_func(geom):
    x = te.placeholder(geom.x_shape, "float32", name="x")
    w = te.placeholder(geom.w_shape, "float32", name="w")
    return te.create_prim_func([x, w, ops.conv(x, w, geom)])


def _check_conv_rule(geom, schedule, rng, *, bias=True, activation="relu", dtype="float32"):
    x = rng.standard_normal(geom.x_shape).astype(dtype)
    w = rng.standard_normal(geom.w_shape).astype(dtype)
    b = rng.standard_normal(geom.out_channels).astype(dtype) if bias else None
    kernel = _conv_kernel(geom, dtype, bias, activation, schedule)
    y = kernel(x, w, b) if bias else kernel(x, w)
    model = conv_model(geom, dtype, bias=bias, activation=activation)
    (expected,) = run_onnxruntime(model, {"x": x, "w": w, "bias": b})
    agreement = compare(y, expected)
    assert agreement.ok, agreement


GROUPED = [
    # (x_shape, w_shape, attributes): depthwise, grouped 2..32, sizes the tiles do not divide
    ((1, 16, 14, 14), (16, 1, 3, 3), dict(padding=1, groups=16)),
    ((2, 12, 9, 13), (24, 1, 3, 3), dict(padding=1, groups=12)),  # multiplier 2
    ((1, 32, 10, 10), (32, 4, 3, 3), dict(padding=1, groups=8)),
    ((1, 8, 11, 7), (6, 4, 3, 3), dict(padding=(1, 2), groups=2)),
    ((1, 64, 6, 6), (64, 2, 3, 3), dict(padding="same", groups=32)),
    ((1, 16, 17, 19), (16, 1, 5, 5), dict(padding=2, stride=2, groups=16)),
    ((1, 6, 40), (6, 1, 3), dict(padding=1, dilation=2, groups=6)),
    ((1, 4, 5, 6, 7), (4, 1, 3, 3, 3), dict(padding=1, groups=4)),
]


@pytest.mark.parametrize("x_shape, w_shape, attrs", GROUPED)
def test_grouped_rule_matches_onnxruntime(x_shape, w_shape, attrs, rng):
    geom = shapes.conv_geometry(x_shape, w_shape, **attrs)
    assert cpu_grouped.is_grouped(_prim_func(geom))
    _check_conv_rule(geom, cpu_grouped.schedule_grouped, rng)


LONG_1D = [
    # causal k=2 d=8, k=3 d=512 (cf.causal_conv1d), a length no tile divides, depthwise
    ((1, 8, 2048), (8, 8, 2), dict(padding="causal", dilation=8)),
    ((1, 4, 2048), (6, 4, 3), dict(padding="causal", dilation=512)),
    ((2, 3, 1031), (5, 3, 3), dict(padding="causal", dilation=4)),
    ((1, 5, 1500), (7, 5, 4), dict(padding=[(3, 5)], dilation=3, stride=1)),
]


@pytest.mark.parametrize("x_shape, w_shape, attrs", LONG_1D)
def test_long_1d_rule_matches_onnxruntime(x_shape, w_shape, attrs, rng):
    geom = shapes.conv_geometry(x_shape, w_shape, **attrs)
    assert cpu_causal.is_long_1d(_prim_func(geom))
    _check_conv_rule(geom, cpu_causal.schedule_long_1d, rng)


@pytest.mark.parametrize(
    "rule, case",
    [(cpu_grouped.schedule_grouped, GROUPED[2]), (cpu_causal.schedule_long_1d, LONG_1D[2])],
)
def test_rules_float16_match_onnxruntime(rule, case, rng):
    x_shape, w_shape, attrs = case
    geom = shapes.conv_geometry(x_shape, w_shape, **attrs)
    _check_conv_rule(geom, rule, rng, dtype="float16", activation=None)


def test_causal_conv1d_api_matches_onnxruntime(rng):
    x = rng.standard_normal((1, 6, 1100)).astype(np.float32)
    w = rng.standard_normal((6, 6, 3)).astype(np.float32)
    y = cf.causal_conv1d(x, w, dilation=64)
    geom = shapes.conv_geometry(x.shape, w.shape, padding="causal", dilation=64)
    (expected,) = run_onnxruntime(conv_model(geom), {"x": x, "w": w})
    assert compare(y, expected).ok, compare(y, expected)


def _subpixel_kernel(geom, dtype, bias, activation, schedule, op=ops.conv_transpose_subpixel):
    def build():
        x = te.placeholder(geom.x_shape, dtype, name="x")
        w = te.placeholder(geom.w_shape, dtype, name="w")
        b = te.placeholder((geom.out_channels,), dtype, name="bias") if bias else None
        inputs = [x, w] + ([b] if bias else [])
        return inputs, [op(x, w, geom, ops.Epilogue(b, activation))]

    return compile_computation(
        "conv_transpose", build, host_target(), lambda f, t: schedule(f, t).mod
    )


SUBPIXEL = [
    ((1, 32, 8, 8), (32, 16, 4, 4), dict(stride=2, padding=1)),  # 256->128 k4 s2, reduced
    ((1, 8, 16, 16), (8, 3, 4, 4), dict(stride=2, padding=1)),  # 64->3 k4 s2, reduced
    ((2, 6, 5, 7), (6, 2, 3, 3), dict(stride=2, padding=1, output_padding=1, groups=3)),
    ((1, 4, 9), (4, 5, 5), dict(stride=3, padding=[(2, 1)], dilation=2)),
    ((1, 3, 3, 4, 5), (3, 2, 2, 3, 2), dict(stride=(2, 1, 3), padding=1)),
    ((1, 2, 3, 3), (2, 2, 1, 1), dict(stride=3, output_padding=2)),  # phases without taps
]


@pytest.mark.parametrize(
    "x_shape, w_shape, attrs, dtype, blocked",
    [(*case, "float32", False) for case in SUBPIXEL]
    + [(*SUBPIXEL[2], "float16", False)]
    # dense 2-D/3-D: phases in NCHW[x]c blocks, as the API builds them on a CPU
    + [(*SUBPIXEL[0], "float32", True)]
    + [
        (
            (2, 8, 7, 7),
            (8, 16, 3, 3),
            dict(stride=2, padding=1),
            "float32",
            True,
        ),  # 7/6-wide phases
        ((1, 4, 3, 4, 5), (4, 16, 2, 3, 2), dict(stride=(2, 1, 3), padding=1), "float32", True),
        # grouped, 16 output channels per group: each phase's blocks inside one group
        ((1, 8, 5, 6), (8, 16, 3, 3), dict(stride=2, padding=1, groups=2), "float32", True),
    ],
)
def test_subpixel_rule_matches_onnxruntime(x_shape, w_shape, attrs, dtype, blocked, rng):
    geom = shapes.conv_transpose_geometry(x_shape, w_shape, **attrs)
    x = rng.standard_normal(geom.x_shape).astype(dtype)
    w = rng.standard_normal(geom.w_shape).astype(dtype)
    b = rng.standard_normal(geom.out_channels).astype(dtype)
    op = api.conv_transpose_op(geom, host_target()) if blocked else ops.conv_transpose_subpixel
    kernel = _subpixel_kernel(geom, dtype, True, "silu", cpu_subpixel.schedule_subpixel, op)
    assert blocked == has_block(kernel.func, "conv_nchwc")
    model = conv_transpose_model(geom, dtype, bias=True, activation="silu")
    (expected,) = run_onnxruntime(model, {"x": x, "w": w, "bias": b})
    agreement = compare(kernel(x, w, b), expected)
    assert agreement.ok, agreement


def test_conv_transpose_selects_subpixel_for_strides_above_one():
    strided = shapes.conv_transpose_geometry((1, 2, 4, 4), (2, 2, 3, 3), stride=(1, 2))
    unit = shapes.conv_transpose_geometry((1, 2, 4, 4), (2, 2, 3, 3), stride=1)
    assert api.conv_transpose_op(strided).func is ops.conv_transpose_subpixel
    assert api.conv_transpose_op(unit) is ops.conv_transpose


@pytest.mark.parametrize(
    "w_shape, groups, target, blocked",
    [
        ((4, 32, 4, 4), 1, host_target(), True),
        ((4, 3, 4, 4), 1, host_target(), False),  # a ragged channel block: direct phases
        ((4, 16, 4, 4), 2, host_target(), True),  # 16 channels per group: blocks in a group
        ((4, 4, 4, 4), 2, host_target(), False),  # 4 per group, under a vector: direct phases
        ((4, 32, 4, 4), 1, {"kind": "cuda", "arch": "sm_80"}, False),
    ],
)
def test_subpixel_phases_blocked_for_dense_cpu_convolutions(w_shape, groups, target, blocked):
    geom = shapes.conv_transpose_geometry((1, 4, 5, 5), w_shape, stride=2, groups=groups)
    x = te.placeholder(geom.x_shape, "float32", name="x")
    w = te.placeholder(geom.w_shape, "float32", name="w")
    y = api.conv_transpose_op(geom, target)(x, w, geom)
    func = te.create_prim_func([x, w, y])
    assert has_block(func, "conv_nchwc") == blocked
    assert has_block(func, "subpixel_interleave")


def _reduction_macs(op, geom):
    """Iterations of every reduction block (spatial x reduction extents) in ``op``'s TIR."""
    x = te.placeholder(geom.x_shape, "float32", name="x")
    w = te.placeholder(geom.w_shape, "float32", name="w")
    sch = s_tir.Schedule(te.create_prim_func([x, w, op(x, w, geom)]))
    total = 0
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        iter_vars = sch.get(block).iter_vars
        if any(int(iv.iter_type) == tirx.IterVar.CommReduce for iv in iter_vars):
            total += int(np.prod([int(iv.dom.extent) for iv in iter_vars]))
    return total


def test_subpixel_skips_the_inserted_zeros():
    """conv(dilate(x)) spends (s-1)/s of its products per axis on inserted zeros; the phase
    convolutions together do 1/prod(stride) of its work."""
    geom = shapes.conv_transpose_geometry((1, 4, 6, 6), (4, 2, 4, 4), stride=2, padding=1)
    dilated = _reduction_macs(ops.conv_transpose, geom)
    phases = _reduction_macs(ops.conv_transpose_subpixel, geom)
    assert phases * 4 == dilated


@st.composite
def transpose_cases(draw):
    nd = draw(st.integers(1, 2))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 2))
    opg = draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    size = tuple(draw(st.integers(1, 6 if nd == 2 else 9)) for _ in range(nd))
    pads = tuple(
        (draw(st.integers(0, d * (k - 1))), draw(st.integers(0, d * (k - 1))))
        for k, d in zip(kernel, dilation)
    )
    return dict(
        x_shape=(draw(st.integers(1, 2)), cin, *size), w_shape=(cin, opg, *kernel),
        stride=stride, dilation=dilation, padding=pads, output_padding=output_padding,
        groups=groups, bias=draw(st.booleans()),
    )  # fmt: skip


@settings(max_examples=100)
@given(transpose_cases())
def test_subpixel_matches_onnxruntime_and_sparse_transpose(case):
    try:
        geom = shapes.conv_transpose_geometry(
            case["x_shape"], case["w_shape"], stride=case["stride"], padding=case["padding"],
            output_padding=case["output_padding"], dilation=case["dilation"],
            groups=case["groups"],
        )  # fmt: skip
    except ValueError as err:
        assert "removes the whole output" in str(err)
        return
    rng = np.random.default_rng(abs(hash(str(case))) % 2**32)
    x = rng.standard_normal(geom.x_shape).astype(np.float32)
    w = rng.standard_normal(geom.w_shape).astype(np.float32)
    b = rng.standard_normal(geom.out_channels).astype(np.float32) if case["bias"] else None
    schedule = cpu_subpixel.schedule_subpixel  # directly: a schedule error fails the test
    kernel = _subpixel_kernel(geom, "float32", b is not None, None, schedule)
    y = kernel(x, w, b) if b is not None else kernel(x, w)
    if all(op < s for op, s in zip(geom.output_padding, geom.stride)):
        # onnxruntime refuses output_padding >= stride (PyTorch allows < max(stride, dilation))
        (expected,) = run_onnxruntime(
            conv_transpose_model(geom, bias=b is not None), {"x": x, "w": w, "bias": b}
        )
        assert compare(y, expected).ok, compare(y, expected)
    c = cf.conv_matrix(w, geom.adjoint())
    dense = (c.T @ x.astype(np.float64).ravel()).reshape(geom.out_shape)
    if b is not None:
        dense += b.reshape((1, -1) + (1,) * geom.ndim)
    assert compare(y, dense.astype(np.float32)).ok, compare(y, dense)


def test_subpixel_api_float64_matches_sparse_transpose(rng):
    x = rng.standard_normal((1, 4, 5, 4))
    w = rng.standard_normal((4, 3, 3, 4))
    y = cf.conv_transpose(x, w, stride=(2, 3), padding=[(1, 0), (2, 1)], output_padding=1)
    geom = shapes.conv_transpose_geometry(
        x.shape, w.shape, stride=(2, 3), padding=[(1, 0), (2, 1)], output_padding=1
    )
    dense = (cf.conv_matrix(w, geom.adjoint()).T @ x.ravel()).reshape(geom.out_shape)
    assert compare(y, dense).ok, compare(y, dense)
