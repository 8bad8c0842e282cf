"""ONNX's implicit padding forms (auto_pad, ConvTranspose output_shape) against onnxruntime.

The oracle models here are single ONNX nodes written by the test with the attributes a user
would write; onnxruntime runs them and the explicit-pads model of convforge's geometry.
"""

import itertools

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import convforge as cf
from convforge import shapes
from convforge.export import compare, conv_model, conv_transpose_model, run_onnxruntime

ort.set_default_logger_severity(4)  # the refused cases below would log errors
MODES = {"NOTSET": 0, "SAME_UPPER": "same", "SAME_LOWER": "same_lower", "VALID": "valid"}


def node_model(op, x_shape, w_shape, **attrs):
    """One ``op`` node with exactly ``attrs``, no shape inference (output shape left open)."""
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "w"], ["y"], **attrs)],
        op,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape)),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w_shape)),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    model.ir_version = 10
    return model


def run_or_none(model, feeds):
    """onnxruntime's output, or None where onnxruntime refuses the model or the input."""
    try:
        return run_onnxruntime(model, feeds)[0]
    except Exception as err:  # onnxruntime raises its own exception classes
        assert "INVALID_ARGUMENT" in str(err) or "Fail" in str(err), err
        return None


def test_conv_transpose_output_shape_and_auto_pad_pads_match_onnxruntime():
    """Every small 1-D case: our pads for output_shape / same / same_lower are onnxruntime's."""
    rng = np.random.default_rng(4)
    checked = refused_both = clamped = 0
    for i, k, s, d in itertools.product(range(1, 4), range(1, 4), range(1, 4), range(1, 3)):
        x = rng.standard_normal((1, 2, i)).astype(np.float32)
        w = rng.standard_normal((2, 1, k)).astype(np.float32)
        for op in range(max(s, d)):
            unpadded = shapes.conv_transpose_output_size(i, k, s, 0, 0, d, op)
            for auto_pad, out in itertools.product(
                ["NOTSET", "SAME_UPPER", "SAME_LOWER"], [None, *range(1, unpadded + s + 1)]
            ):
                if auto_pad == "NOTSET" and out is None:
                    continue
                attrs = dict(kernel_shape=[k], strides=[s], dilations=[d], output_padding=[op])
                attrs.update(auto_pad=auto_pad, group=2)
                if out is not None:
                    attrs["output_shape"] = [out]
                expected = run_or_none(
                    node_model("ConvTranspose", x.shape, w.shape, **attrs), {"x": x, "w": w}
                )
                try:
                    geom = shapes.conv_transpose_geometry(
                        x.shape, w.shape, stride=s, dilation=d, output_padding=op,
                        output_shape=None if out is None else (out,), padding=MODES[auto_pad],
                        groups=2,
                    )  # fmt: skip
                except ValueError:
                    assert expected is None, (i, k, s, d, op, auto_pad, out)
                    refused_both += 1
                    continue
                if op >= s:  # PyTorch's rule allows op < dilation; onnxruntime refuses it
                    assert expected is None
                    continue
                if out is None and i * s > unpadded:
                    # onnxruntime clamps SAME's total padding at 0 (the spec says i*s).
                    assert expected.shape[-1] == unpadded and geom.out_size == (i * s,)
                    clamped += 1
                    continue
                assert expected is not None, (i, k, s, d, op, auto_pad, out)
                (ours,) = run_onnxruntime(conv_transpose_model(geom), {"x": x, "w": w})
                assert compare(ours, expected).ok, (i, k, s, d, op, auto_pad, out)
                checked += 1
    assert checked > 1000 and refused_both > 100 and clamped > 10, (checked, refused_both, clamped)


def test_conv_auto_pad_matches_onnxruntime():
    """Every small 1-D case: padding 'same' / 'same_lower' / 'valid' give ONNX auto_pad's pads."""
    rng = np.random.default_rng(5)
    checked = 0
    for i, k, s, d in itertools.product(range(1, 7), range(1, 5), range(1, 4), range(1, 4)):
        x = rng.standard_normal((1, 1, i)).astype(np.float32)
        w = rng.standard_normal((1, 1, k)).astype(np.float32)
        for auto_pad in ["SAME_UPPER", "SAME_LOWER", "VALID"]:
            attrs = dict(kernel_shape=[k], strides=[s], dilations=[d], auto_pad=auto_pad)
            expected = run_or_none(node_model("Conv", x.shape, w.shape, **attrs), {"x": x, "w": w})
            try:
                geom = shapes.conv_geometry(
                    x.shape, w.shape, stride=s, dilation=d, padding=MODES[auto_pad]
                )
            except ValueError:
                assert expected is None, (i, k, s, d, auto_pad)
                continue
            if d > 1 and auto_pad != "VALID":  # onnxruntime: "Dilation not supported for SAME"
                assert expected is None
                continue
            assert expected is not None, (i, k, s, d, auto_pad)
            (ours,) = run_onnxruntime(conv_model(geom), {"x": x, "w": w})
            assert compare(ours, expected).ok, (i, k, s, d, auto_pad)
            checked += 1
    assert checked > 250, checked


@pytest.mark.parametrize(
    "x_shape, w_shape, stride, dilation, groups",
    # onnxruntime refuses dilation with auto_pad SAME_*: dilation only with 'valid'.
    [((1, 2, 9, 8), (4, 2, 3, 4), (2, 3), 1, 1), ((2, 4, 7, 5), (4, 1, 2, 3), 2, 1, 4)],
)
@pytest.mark.parametrize("padding", ["same", "same_lower", "valid"])
def test_tvm_conv_padding_modes_match_onnxruntime_auto_pad(
    x_shape, w_shape, stride, dilation, groups, padding
):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    y = cf.conv(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)
    geom = shapes.conv_geometry(
        x_shape, w_shape, stride=stride, padding=padding, dilation=dilation, groups=groups
    )
    auto_pad = {"same": "SAME_UPPER", "same_lower": "SAME_LOWER", "valid": "VALID"}[padding]
    (expected,) = run_onnxruntime(conv_model(geom, auto_pad=auto_pad), {"x": x, "w": w})
    assert compare(y, expected).ok, compare(y, expected)


def test_exporters_refuse_forms_that_do_not_state_the_geometry():
    explicit = shapes.conv_geometry((1, 1, 8), (1, 1, 3), padding=((2, 0),))
    with pytest.raises(ValueError, match="auto_pad=SAME_UPPER means pads"):
        conv_model(explicit, auto_pad="SAME_UPPER")
    with pytest.raises(ValueError, match="auto_pad must be one of"):
        conv_model(explicit, auto_pad="SAME")
    same_op = shapes.conv_transpose_geometry(
        (1, 1, 4), (1, 1, 3), stride=2, padding="same", output_padding=1
    )
    with pytest.raises(ValueError, match="output_padding"):
        conv_transpose_model(same_op, auto_pad="SAME_UPPER")
    lower = shapes.conv_transpose_geometry((1, 1, 4), (1, 1, 3), stride=2, padding="same_lower")
    with pytest.raises(ValueError, match="not the geometry's pads"):
        conv_transpose_model(lower, auto_pad="SAME_UPPER", output_shape=True)
    small = shapes.conv_transpose_geometry((1, 1, 6), (1, 1, 1), output_shape=(4,))
    with pytest.raises(ValueError, match="breaks onnx shape inference"):
        conv_transpose_model(small, output_shape=True)
