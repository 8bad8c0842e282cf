"""Convolution and transposed convolution against onnxruntime and the sparse-matrix form."""

import zlib

import numpy as np
import pytest
import tvm
from hypothesis import given
from hypothesis import strategies as st

import convforge as cf
from convforge import shapes
from convforge.export import compare, conv_model, run_onnxruntime
from convforge.plan import plan_conv
from tests.strategies import grouped_conv_axes

AVX2 = tvm.target.Target({"kind": "llvm", "mcpu": "znver3"})


@st.composite
def conv_cases(draw):
    nd, groups, cin, cout, kernel, stride = draw(grouped_conv_axes(in_per_group=3))
    if draw(st.booleans()) and nd < 3:  # depthwise
        groups, cin = cin, cin
        cout = cin * draw(st.integers(1, 2))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    padding = draw(
        st.one_of(
            st.sampled_from(["valid", "same", "same_lower", "full"]),
            st.integers(0, 2),
            st.tuples(*[st.tuples(st.integers(0, 3), st.integers(0, 3)) for _ in range(nd)]),
        )
    )
    max_size = {1: 14, 2: 9, 3: 6}[nd]
    size = tuple(
        draw(st.integers(max(1, (k - 1) * d + 1 - 2), max_size + (k - 1) * d))
        for k, d in zip(kernel, dilation)
    )
    batch = draw(st.integers(1, 2))
    return dict(
        x_shape=(batch, cin, *size), w_shape=(cout, cin // groups, *kernel), stride=stride,
        dilation=dilation, padding=padding, groups=groups,
        bias=draw(st.booleans()), activation=draw(st.sampled_from([None, None, "relu", "silu"])),
    )  # fmt: skip


@given(conv_cases())
def test_conv_matches_onnxruntime_and_sparse_matrix(case):
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    try:
        geom = shapes.conv_geometry(
            case["x_shape"], case["w_shape"], stride=case["stride"], padding=case["padding"],
            dilation=case["dilation"], groups=case["groups"],
        )  # fmt: skip
    except ValueError as err:
        assert "larger than the padded input" in str(err)
        return
    x = rng.standard_normal(case["x_shape"]).astype(np.float32)
    w = rng.standard_normal(case["w_shape"]).astype(np.float32)
    b = rng.standard_normal(geom.out_channels).astype(np.float32) if case["bias"] else None
    y = cf.conv(
        x, w, b, stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
        groups=case["groups"], activation=case["activation"],
    )  # fmt: skip
    model = conv_model(geom, bias=b is not None, activation=case["activation"])
    (expected,) = run_onnxruntime(model, {"x": x, "w": w, "bias": b})
    assert compare(y, expected).ok, compare(y, expected)
    if case["activation"] is None:
        c = cf.conv_matrix(w, geom)
        dense = (c @ x.astype(np.float64).ravel()).reshape(geom.out_shape)
        if b is not None:
            dense += b.reshape((1, -1) + (1,) * geom.ndim)
        assert compare(y, dense.astype(np.float32)).ok


#: Convolutions the plan now computes in NCHW[x]c that used the generic form before:
#: grouped with a whole number of vectors of output channels per group (ResNeXt, a grouped
#: 1x1 as in ShuffleNet, 3-D; 16 per group, so that 8- and 16-lane hosts alike take it),
#: and 1-D ones run as 2-D over one row. (x, w, options, the kernel geometry's x shape, or
#: None where it is the convolution's own.)
NCHWC_FORMS = {
    "grouped_3x3": ((1, 32, 9, 9), (32, 16, 3, 3), dict(padding=1, groups=2), None),
    "grouped_3x3_s2_16_per_group": (
        (2, 32, 10, 11), (64, 8, 3, 3), dict(stride=2, padding=(1, 2), groups=4), None,
    ),
    "grouped_1x1_row": ((1, 48, 5, 6), (48, 16, 1, 1), dict(groups=3), (1, 48, 1, 30)),
    "grouped_3d": ((1, 16, 4, 5, 5), (32, 8, 3, 3, 3), dict(padding=1, groups=2), None),
    "1d_stride2": ((1, 16, 41), (24, 16, 3), dict(stride=2), (1, 16, 1, 41)),
    "1d_grouped_dilated_same": (
        (2, 16, 30), (32, 8, 5), dict(padding="same", dilation=2, groups=2), (2, 16, 1, 30),
    ),
    "1d_pointwise_strided": ((1, 8, 50), (16, 8, 1), dict(stride=3), (1, 8, 1, 17)),
}  # fmt: skip


@pytest.mark.parametrize("name", NCHWC_FORMS)
def test_nchwc_grouped_and_1d_forms_match_onnxruntime_and_sparse_matrix(name):
    """The blocked form of grouped and 1-D convolutions (plan.nchwc_blocks, the plan's 1-D
    row geometry) against onnxruntime and the sparse-matrix form, with bias and ReLU, the
    weight per call and packed once."""
    x_shape, w_shape, options, kernel_x = NCHWC_FORMS[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    geom = shapes.conv_geometry(x_shape, w_shape, **options)
    plan = plan_conv(geom, "float32", algorithm="direct")  # the host, as cf.conv
    assert plan.algorithm.name == "blocked"
    assert plan.kernel_geometry.x_shape == (kernel_x or geom.x_shape)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(geom.out_channels).astype(np.float32)
    y = cf.conv(x, w, b, activation="relu", **options)
    prepared = cf.prepare_conv(w, b, x_shape=x_shape, activation="relu", **options)(x)
    (expected,) = run_onnxruntime(
        conv_model(geom, bias=True, activation="relu"), {"x": x, "w": w, "bias": b}
    )
    assert compare(y, expected).ok, compare(y, expected)
    assert compare(prepared, expected).ok, compare(prepared, expected)
    dense = (cf.conv_matrix(w, geom) @ x.astype(np.float64).ravel()).reshape(geom.out_shape)
    dense = np.maximum(dense + b.reshape((1, -1) + (1,) * geom.ndim), 0)
    assert compare(y, dense.astype(np.float32)).ok


def test_long_stride_one_1d_and_narrow_groups_keep_their_own_schedules():
    """A stride-1 1-D convolution over at least ``row_1d_max_length`` outputs keeps the
    time-tiled direct schedule; a group narrower than a vector, and depthwise, the grouped
    direct one (the blocked kernel's output block would span groups)."""
    long_1d = shapes.conv_geometry((1, 8, 2048), (8, 8, 3), padding=1)
    narrow = shapes.conv_geometry((1, 16, 8, 8), (16, 4, 3, 3), padding=1, groups=4)
    depthwise = shapes.conv_geometry((1, 16, 8, 8), (16, 1, 3, 3), padding=1, groups=16)
    for geom in (long_1d, narrow, depthwise):
        plan = plan_conv(geom, "float32", AVX2)
        assert plan.algorithm.name == "generic" and plan.kernel_geometry == geom
    strided = shapes.conv_geometry((1, 8, 16000), (8, 8, 3), padding=1, stride=2)
    assert plan_conv(strided, "float32", AVX2).algorithm.name == "blocked"
