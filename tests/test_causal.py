"""Dilated causal 1-D convolution against onnxruntime (Conv with pads [d*(k-1), 0]), and causality."""

import zlib

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import convforge as cf
from convforge import shapes
from convforge.export import causal_conv1d_model, compare, run_onnxruntime


@st.composite
def causal_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2]))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    if draw(st.booleans()):  # depthwise
        groups = cin = draw(st.integers(1, 4))
        cout = cin * draw(st.integers(1, 2))
    length = draw(st.integers(1, 24))
    return dict(
        x_shape=(draw(st.integers(1, 2)), cin, length),
        w_shape=(cout, cin // groups, draw(st.integers(1, 5))),
        dilation=draw(st.integers(1, 4)), groups=groups, bias=draw(st.booleans()),
        activation=draw(st.sampled_from([None, None, "relu", "tanh"])),
        t0=draw(st.integers(0, length - 1)),
    )  # fmt: skip


@given(causal_cases())
def test_causal_conv1d_matches_onnxruntime_and_is_causal(case):
    rng = np.random.default_rng(zlib.crc32(str(case).encode()))  # stable across runs
    geom = shapes.causal_conv1d_geometry(
        case["x_shape"], case["w_shape"], dilation=case["dilation"], groups=case["groups"]
    )
    assert geom.out_shape == (case["x_shape"][0], case["w_shape"][0], case["x_shape"][2])
    x = rng.standard_normal(case["x_shape"]).astype(np.float32)
    w = rng.standard_normal(case["w_shape"]).astype(np.float32)
    b = rng.standard_normal(geom.out_channels).astype(np.float32) if case["bias"] else None
    act = case["activation"]
    kwargs = dict(dilation=case["dilation"], groups=case["groups"], activation=act)
    y = cf.causal_conv1d(x, w, b, **kwargs)

    model = causal_conv1d_model(geom, bias=b is not None, activation=act)
    (expected,) = run_onnxruntime(model, {"x": x, "w": w, "bias": b})
    assert compare(y, expected).ok, compare(y, expected)

    # Causality: changing x[t0:] leaves y[:t0] bit-for-bit unchanged.
    t0 = case["t0"]
    perturbed = x.copy()
    perturbed[..., t0:] += rng.standard_normal(perturbed[..., t0:].shape).astype(np.float32)
    y2 = cf.causal_conv1d(perturbed, w, b, **kwargs)
    np.testing.assert_array_equal(y2[..., :t0], y[..., :t0])
    if act is None:  # and y[t0] does see x[t0] (through w[..., k-1])
        assert not np.array_equal(y2[..., t0], y[..., t0])
