"""Transposed convolution against onnxruntime, the sparse form C^T y and the adjoint identity.

Oracles: onnxruntime running ``conv_transpose_model`` (written with explicit pads, with
``output_shape`` or with ``auto_pad`` as the call asks); ``C^T y`` where
``C = conv_matrix(w, geom.adjoint())`` in float64; and ``<conv(x), y> == <x,
conv_transpose(y)>`` between the TVM conv and transposed-conv kernels in float64.
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import convforge as cf
from convforge import shapes
from convforge.export import compare, conv_transpose_model, run_onnxruntime

ACTIVATIONS = {None: lambda v: v, "relu": lambda v: np.maximum(v, 0)}


@st.composite
def conv_transpose_cases(draw):
    nd = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 3))
    if draw(st.booleans()):  # depthwise: one input channel per group
        groups = cin = draw(st.integers(1, 4))
        cout = cin * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 4 if nd < 3 else 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 3 if nd < 3 else 2)) for _ in range(nd))
    size = tuple(draw(st.integers(1, {1: 9, 2: 6, 3: 4}[nd])) for _ in range(nd))
    output_padding = tuple(
        draw(st.integers(0, max(s, d) - 1)) if draw(st.booleans()) else 0
        for s, d in zip(stride, dilation)
    )
    padding = draw(
        st.one_of(
            st.sampled_from(["valid", "same", "same_lower"]),
            st.integers(0, 2),
            st.tuples(*[st.integers(0, 3) for _ in range(nd)]),
            st.tuples(*[st.tuples(st.integers(0, 3), st.integers(0, 3)) for _ in range(nd)]),
        )
    )
    output_shape = None
    if draw(st.integers(0, 3)) == 0:  # explicit output_shape, around the unpadded size
        output_shape = tuple(
            max(
                1,
                shapes.conv_transpose_output_size(i, k, s, 0, 0, d, op) + draw(st.integers(-4, 2)),
            )
            for i, k, s, d, op in zip(size, kernel, stride, dilation, output_padding)
        )
    return dict(
        x_shape=(draw(st.integers(1, 2)), cin, *size), w_shape=(cin, cout // groups, *kernel),
        stride=stride, dilation=dilation, padding=padding, output_padding=output_padding,
        output_shape=output_shape, groups=groups, bias=draw(st.booleans()),
        activation=draw(st.sampled_from([None, None, "relu"])),
    )  # fmt: skip


def export_form(case, geom):
    """The ONNX attributes that state the call as the user wrote it: (auto_pad, output_shape)."""
    mode = case["padding"] if isinstance(case["padding"], str) else None
    auto_pad = {"same": "SAME_UPPER", "same_lower": "SAME_LOWER"}.get(mode, "NOTSET")
    if case["output_shape"] is not None:
        # onnx's shape inference fails on an output_shape below the input size.
        if any(o < i for o, i in zip(geom.out_size, geom.in_size)):
            return "NOTSET", False
        return auto_pad, True
    if auto_pad == "NOTSET":
        return ("VALID", False) if mode == "valid" else ("NOTSET", False)
    # onnxruntime clamps auto_pad's padding at 0 (against the spec), and onnx's shape
    # inference adds output_padding to input * stride, unless output_shape is set.
    unpadded = [
        shapes.conv_transpose_output_size(i, k, s, 0, 0, d, op)
        for i, k, s, d, op in zip(
            geom.in_size, geom.kernel, geom.stride, geom.dilation, case["output_padding"]
        )
    ]
    clamped = any(i * s > u for i, s, u in zip(geom.in_size, geom.stride, unpadded))
    return auto_pad, clamped or any(geom.output_padding)


def call_kwargs(case):
    return dict(
        stride=case["stride"], padding=case["padding"], output_padding=case["output_padding"],
        output_shape=case["output_shape"], dilation=case["dilation"], groups=case["groups"],
    )  # fmt: skip


@given(conv_transpose_cases())
def test_conv_transpose_matches_onnxruntime_sparse_form_and_adjoint(case):
    rng = np.random.default_rng(abs(hash(str(case))) % 2**32)
    kwargs = call_kwargs(case)
    try:
        geom = shapes.conv_transpose_geometry(case["x_shape"], case["w_shape"], **kwargs)
    except ValueError as err:
        assert "removes the whole output" in str(err) or "unreachable" in str(err), err
        return
    # float32 values, so the float64 runs and the float64 oracle see the same numbers.
    x = rng.standard_normal(case["x_shape"]).astype(np.float32)
    w = rng.standard_normal(case["w_shape"]).astype(np.float32)
    b = rng.standard_normal(geom.out_channels).astype(np.float32) if case["bias"] else None
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    act = case["activation"]
    y = cf.conv_transpose(x, w, b, activation=act, **kwargs)
    assert y.shape == geom.out_shape

    # Sparse form: conv_transpose(x) = C^T x with C the adjoint forward convolution.
    c = cf.conv_matrix(w64, geom.adjoint())
    dense = (c.T @ x64.ravel()).reshape(geom.out_shape)
    if b is not None:
        dense = dense + b.astype(np.float64).reshape((1, -1) + (1,) * geom.ndim)
    dense = ACTIVATIONS[act](dense)
    assert compare(y, dense.astype(np.float32)).ok, compare(y, dense.astype(np.float32))

    # onnxruntime refuses output_padding >= stride (PyTorch allows it while < dilation).
    if all(op < s for op, s in zip(geom.output_padding, geom.stride)):
        auto_pad, with_shape = export_form(case, geom)
        model = conv_transpose_model(
            geom, bias=b is not None, activation=act, auto_pad=auto_pad, output_shape=with_shape
        )
        (expected,) = run_onnxruntime(model, {"x": x, "w": w, "bias": b})
        assert compare(y, expected).ok, (auto_pad, with_shape, compare(y, expected))

    # Adjoint identity in float64 with the TVM kernels: <conv(u), x> == <u, conv_transpose(x)>.
    adj = geom.adjoint()
    u = rng.standard_normal(geom.out_shape)
    conv_u = cf.conv(
        u, w64, stride=adj.stride, padding=adj.padding, dilation=adj.dilation, groups=adj.groups
    )
    # Output rows beyond the input's (output_padding >= stride) meet no input: crop them.
    conv_u = conv_u[tuple(slice(0, n) for n in geom.x_shape)]
    assert conv_u.shape == geom.x_shape
    y64 = cf.conv_transpose(x64, w64, **kwargs)
    lhs, rhs = float(np.vdot(conv_u, x64)), float(np.vdot(u, y64))
    scale = float(np.abs(conv_u).ravel() @ np.abs(x64).ravel()) + 1.0
    assert abs(lhs - rhs) <= 1e-12 * scale, (lhs, rhs)
    assert compare(y64, (c.T @ x64.ravel()).reshape(geom.out_shape)).ok
