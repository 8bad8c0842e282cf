"""Transposed convolution against onnxruntime, the sparse form C^T y and the adjoint identity.

Oracles: onnxruntime running ``conv_transpose_model`` (written with explicit pads, with
``output_shape`` or with ``auto_pad`` as the call asks); ``C^T y`` where
``C = conv_matrix(w, geom.adjoint())`` in float64; and ``<conv(u), x> == <u,
conv_transpose(x)>`` between the TVM conv and transposed-conv kernels. Half the examples
run the kernels in float64 (adjoint identity to 1e-12), half in float32 (to 1e-5).
"""

import zlib

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import convforge as cf
from convforge import shapes
from convforge.export import compare, conv_transpose_model, run_onnxruntime
from tests.strategies import grouped_conv_axes

ACTIVATIONS = {None: lambda v: v, "relu": lambda v: np.maximum(v, 0)}


@st.composite
def conv_transpose_cases(draw):
    nd, groups, cin, cout, kernel, stride = draw(grouped_conv_axes(in_per_group=2))
    if draw(st.booleans()):  # depthwise: one input channel per group
        groups = cin = draw(st.integers(1, 4))
        cout = cin * draw(st.integers(1, 2))
    dilation = tuple(draw(st.integers(1, 3 if nd < 3 else 2)) for _ in range(nd))
    size = tuple(draw(st.integers(1, {1: 9, 2: 6, 3: 4}[nd])) for _ in range(nd))
    output_padding = tuple(
        draw(st.integers(0, max(s, d) - 1)) if draw(st.booleans()) else 0
        for s, d in zip(stride, dilation)
    )
    unpadded = [
        shapes.conv_transpose_output_size(i, k, s, 0, 0, d, op)
        for i, k, s, d, op in zip(size, kernel, stride, dilation, output_padding)
    ]
    # Every padding form, never so large that it removes the whole output.
    form = draw(st.sampled_from(["mode", "int", "ints", "pairs"]))
    if form == "mode":
        padding = draw(st.sampled_from(["valid", "same", "same_lower"]))
    elif form == "int":
        padding = draw(st.integers(0, min(2, (min(unpadded) - 1) // 2)))
    elif form == "ints":
        padding = tuple(draw(st.integers(0, min(3, (u - 1) // 2))) for u in unpadded)
    else:
        padding = []
        for u in unpadded:
            lo = draw(st.integers(0, min(3, u - 1)))
            padding.append((lo, draw(st.integers(0, min(3, u - 1 - lo)))))
        padding = tuple(padding)
    output_shape = None
    if draw(st.integers(0, 3)) == 0:  # around the unpadded size, up to what ONNX can reach
        output_shape = tuple(
            max(1, u + draw(st.integers(-4, max(0, s - 1 - op))))
            for u, s, op in zip(unpadded, stride, output_padding)
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


@given(conv_transpose_cases(), st.sampled_from(["float32", "float64"]))
def test_conv_transpose_matches_onnxruntime_sparse_form_and_adjoint(case, dtype):
    rng = np.random.default_rng(zlib.crc32(str(case).encode()))  # stable across runs
    kwargs = call_kwargs(case)
    geom = shapes.conv_transpose_geometry(case["x_shape"], case["w_shape"], **kwargs)
    # float32 values, so the float64 kernel, onnxruntime (float32 only) and the float64
    # oracle all see the same numbers.
    x32 = rng.standard_normal(case["x_shape"]).astype(np.float32)
    w32 = rng.standard_normal(case["w_shape"]).astype(np.float32)
    b32 = rng.standard_normal(geom.out_channels).astype(np.float32) if case["bias"] else None
    x, w = x32.astype(dtype), w32.astype(dtype)
    b = None if b32 is None else b32.astype(dtype)
    act = case["activation"]
    y = cf.conv_transpose(x, w, b, activation=act, **kwargs)
    assert y.shape == geom.out_shape and y.dtype == dtype

    # Sparse form: conv_transpose(x) = C^T x with C the adjoint forward convolution.
    adj = geom.adjoint()
    c = cf.conv_matrix(w32.astype(np.float64), adj)
    bias_term = 0.0 if b is None else b32.astype(np.float64).reshape((1, -1) + (1,) * geom.ndim)
    linear = (c.T @ x32.astype(np.float64).ravel()).reshape(geom.out_shape) + bias_term
    assert compare(y, ACTIVATIONS[act](linear).astype(dtype)).ok

    # onnxruntime refuses output_padding >= stride (PyTorch allows it while < dilation).
    if all(op < s for op, s in zip(geom.output_padding, geom.stride)):
        auto_pad, with_shape = export_form(case, geom)
        model = conv_transpose_model(
            geom, bias=b is not None, activation=act, auto_pad=auto_pad, output_shape=with_shape
        )
        (expected,) = run_onnxruntime(model, {"x": x32, "w": w32, "bias": b32})
        assert compare(y, expected).ok, (auto_pad, with_shape, compare(y, expected))

    # Adjoint identity between the TVM kernels: <conv(u), x> + <u, bias> == <u, y>.
    if act is None:
        u = rng.standard_normal(geom.out_shape).astype(dtype)
        conv_u = cf.conv(
            u, w, stride=adj.stride, padding=adj.padding, dilation=adj.dilation, groups=adj.groups
        )
        # Rows beyond the input's (output_padding >= stride) meet no input: crop them.
        conv_u = conv_u[tuple(slice(0, n) for n in geom.x_shape)]
        assert conv_u.shape == geom.x_shape
        u64 = u.astype(np.float64)
        lhs = float(np.vdot(conv_u.astype(np.float64), x32)) + float(np.sum(u64 * bias_term))
        rhs = float(np.vdot(u64, y))
        scale = float(np.abs(u64).ravel() @ np.abs(linear).ravel()) + 1.0
        tight = 1e-12 if dtype == "float64" else 1e-5
        assert abs(lhs - rhs) <= tight * scale, (lhs, rhs)
