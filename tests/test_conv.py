"""Convolution and transposed convolution against onnxruntime and the sparse-matrix form."""

import zlib

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import convforge as cf
from convforge import shapes
from convforge.export import compare, conv_model, run_onnxruntime
from tests.strategies import grouped_conv_axes


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
