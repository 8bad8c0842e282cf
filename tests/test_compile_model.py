"""Whole-model compilation against onnxruntime running the same ONNX graph (the oracle)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

import convforge as cf
from convforge.examples import networks
from convforge.export.check import compare, run_onnxruntime
from convforge.export.model import import_model
from convforge.export.onnx_graphs import save_model
from convforge.export.pipeline import schedule_tvm_elementwise
from convforge.plan import plan_conv
from convforge.schedules.cpu_elementwise import schedule_elementwise
from convforge.targets import host_target, resolve_target


def _he(rng, shape):
    return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


def _assert_matches_onnxruntime(model, feeds, compiled=None, **tolerances):
    compiled = compiled or cf.compile_model(model)
    ours = compiled(**feeds)
    theirs = run_onnxruntime(model, feeds)
    assert len(ours) == len(theirs) == len(model.graph.output)
    for out, actual, expected in zip(model.graph.output, ours, theirs):
        agreement = compare(actual, expected, **tolerances)
        assert agreement.ok, f"output {out.name}: {agreement}"
    return compiled


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_every_auto_pad_matches_onnxruntime(nd, rng):
    size = {1: (11,), 2: (9, 10), 3: (5, 6, 7)}[nd]
    x_shape, kernel = (2, 4, *size), [3] * nd
    common = {"kernel_shape": kernel, "strides": [2] * nd}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y_notset"], pads=[1] * nd + [0] * nd, dilations=[2] * nd, **common),
        helper.make_node("Conv", ["x", "w", "b"], ["y_same_upper"], auto_pad="SAME_UPPER", **common),
        helper.make_node("Conv", ["x", "w"], ["y_same_lower"], auto_pad="SAME_LOWER", **common),
        helper.make_node("Conv", ["x", "wg"], ["y_valid_grouped"], auto_pad="VALID", group=2, **common),
    ]  # fmt: skip
    weights = {
        "w": _he(rng, (6, 4, *kernel)),
        "b": rng.standard_normal(6).astype(np.float32),
        "wg": _he(rng, (6, 2, *kernel)),
    }
    outputs = {
        name: (None, "float32")
        for name in ("y_notset", "y_same_upper", "y_same_lower", "y_valid_grouped")
    }
    model = _model(nodes, {"x": x_shape}, outputs, weights)
    compiled = _assert_matches_onnxruntime(
        model, {"x": rng.standard_normal(x_shape).astype(np.float32)}
    )
    assert {k.kernel for k in compiled.report().rows if k.op_type == "Conv"} == {f"conv{nd}d"}


def test_grouped_and_1d_blocked_convolutions_in_a_model_match_onnxruntime(rng):
    """ResNeXt's grouped 3x3 (16 channels per group) with its residual Add and Relu fused,
    and a wav2vec-style strided 1-D convolution (run as a 2-D row), both in NCHW[x]c
    (packed constant weights), against onnxruntime; the report keeps their own names."""
    grouped = [
        helper.make_node("Conv", ["x", "wg", "bg"], ["g"], group=2, pads=[1] * 4, kernel_shape=[3, 3]),
        helper.make_node("Add", ["g", "x"], ["ga"]),
        helper.make_node("Relu", ["ga"], ["y"]),
        helper.make_node("Conv", ["s", "w1"], ["s1"], strides=[2], kernel_shape=[3]),
        helper.make_node("Relu", ["s1"], ["z"]),
    ]  # fmt: skip
    weights = {
        "wg": _he(rng, (32, 16, 3, 3)),
        "bg": rng.standard_normal(32).astype(np.float32),
        "w1": _he(rng, (24, 16, 3)),
    }
    model = _model(grouped, {"x": (1, 32, 7, 9), "s": (2, 16, 41)}, {"y": None, "z": None}, weights)
    feeds = {
        "x": rng.standard_normal((1, 32, 7, 9)).astype(np.float32),
        "s": rng.standard_normal((2, 16, 41)).astype(np.float32),
    }
    compiled = _assert_matches_onnxruntime(model, feeds)
    plans = [
        plan_conv(cf.shapes.conv_geometry((1, 32, 7, 9), (32, 16, 3, 3), padding=1, groups=2), "float32"),
        plan_conv(cf.shapes.conv_geometry((2, 16, 41), (24, 16, 3), stride=2), "float32"),
    ]  # fmt: skip
    assert [p.algorithm.name for p in plans] == ["blocked", "blocked"]
    kernels = {row.kernel for row in compiled.report().rows if row.op_type == "Conv"}
    assert kernels == {"conv2d", "conv1d"}


@pytest.mark.parametrize("op", ["Add", "Sum"])
def test_residual_add_or_two_input_sum_fuses_into_the_conv(op, rng):
    """A residual written as Sum of two inputs (the ONNX zoo's ResNet-50) fuses into the
    convolution with the Relu after it, as Add does; results as onnxruntime's."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4, kernel_shape=[3, 3]),
        helper.make_node(op, ["c", "x"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    model = _model(nodes, {"x": (1, 16, 9, 9)}, {"y": None}, {"w": _he(rng, (16, 16, 3, 3))})
    feeds = {"x": rng.standard_normal((1, 16, 9, 9)).astype(np.float32)}
    compiled = _assert_matches_onnxruntime(model, feeds)
    kernels = {row.op_type: row.kernel for row in compiled.report().rows}
    assert kernels[op].startswith("fused into") and kernels["Relu"].startswith("fused into")


def test_clip_0_6_fuses_as_relu6_and_other_clips_stay_separate(rng):
    """MobileNetV2's ReLU6 (``Clip(x, 0, 6)``: bounds as initializers, or opset 6's
    attributes) fuses into the convolution before it; a Clip with other bounds does not.
    Inputs scaled so that values fall on both sides of both bounds."""
    shape = (1, 16, 9, 9)
    for opset, clip_6, clip_5 in (
        (22, helper.make_node("Clip", ["c1", "zero", "six"], ["r"], name="relu6"),
         helper.make_node("Clip", ["c2", "zero", "five"], ["y"], name="clip5")),
        (10, helper.make_node("Clip", ["c1"], ["r"], name="relu6", min=0.0, max=6.0),
         helper.make_node("Clip", ["c2"], ["y"], name="clip5", min=0.0, max=5.0)),
    ):  # fmt: skip
        nodes = [
            helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4, kernel_shape=[3, 3]),
            clip_6,
            helper.make_node("Conv", ["r", "w2"], ["c2"], kernel_shape=[1, 1]),
            clip_5,
        ]
        weights = {"w1": 8 * _he(rng, (16, 16, 3, 3)), "w2": 8 * _he(rng, (16, 16, 1, 1))}
        if opset > 10:
            weights |= {
                k: np.array(v, np.float32) for k, v in (("zero", 0), ("six", 6), ("five", 5))
            }
        model = _model(nodes, {"x": shape}, {"y": None}, weights, opset=opset)
        feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
        # direct: Winograd's error on outputs this large is beyond compare's tolerance
        compiled = _assert_matches_onnxruntime(
            model, feeds, cf.compile_model(model, algorithm="direct")
        )
        kernels = {row.node: row.kernel for row in compiled.report().rows}
        assert kernels["relu6"].startswith("fused into"), (opset, kernels)
        assert kernels["clip5"] == "TVM default", (opset, kernels)


def _model(nodes, inputs, outputs, weights, opset=22):
    """A model whose output shapes come from onnx shape inference (``None`` shapes)."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in outputs],
        initializer=[onnx.numpy_helper.from_array(v, n) for n, v in weights.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert all(o.type.tensor_type.HasField("shape") for o in model.graph.output)
    onnx.checker.check_model(model)
    return model


def test_conv_transpose_importer_gaps_match_onnxruntime(rng):
    """output_shape, grouped with bias, output_padding, every auto_pad (TVM's own gaps)."""
    x_shape = (1, 4, 5, 6)
    k = {"kernel_shape": [3, 3], "strides": [2, 2]}
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w"], ["y_output_shape"], output_shape=[10, 13], **k),
        helper.make_node("ConvTranspose", ["x", "wg", "b"], ["y_grouped_bias"], group=2, pads=[1, 0, 0, 1], **k),
        helper.make_node("ConvTranspose", ["x", "w"], ["y_output_padding"], output_padding=[1, 0], **k),
        helper.make_node("ConvTranspose", ["x", "w"], ["y_same_upper"], auto_pad="SAME_UPPER", **k),
        helper.make_node("ConvTranspose", ["x", "w"], ["y_same_lower"], auto_pad="SAME_LOWER", **k),
        helper.make_node("ConvTranspose", ["x", "w"], ["y_valid"], auto_pad="VALID", **k),
    ]  # fmt: skip
    weights = {
        "w": _he(rng, (4, 3, 3, 3)),
        "wg": _he(rng, (4, 3, 3, 3)),
        "b": rng.standard_normal(6).astype(np.float32),
    }
    outputs = {n.output[0]: None for n in nodes}
    model = _model(nodes, {"x": x_shape}, outputs, weights)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    compiled = _assert_matches_onnxruntime(model, feeds)
    assert compiled(**feeds)[0].shape == (1, 3, 10, 13)


def test_fusion_of_batch_norm_bias_and_activations_matches_onnxruntime(rng):
    x_shape = (1, 3, 12, 12)
    c = 8
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["bn"], name="bn", epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["c2"], kernel_shape=[1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "channel_bias"], ["a"], name="add"),
        helper.make_node("Sigmoid", ["a"], ["s"], name="sigmoid"),
        helper.make_node("Mul", ["a", "s"], ["silu"], name="mul"),
        helper.make_node("Conv", ["silu", "w3"], ["c3"], kernel_shape=[3, 3], name="conv3"),
        helper.make_node("Tanh", ["c3"], ["t"], name="tanh"),
        helper.make_node("Add", ["t", "c3"], ["y"], name="uses_c3_twice"),
    ]  # fmt: skip
    weights = {
        "w1": _he(rng, (c, 3, 3, 3)),
        "b1": rng.standard_normal(c).astype(np.float32),
        "g": rng.random(c).astype(np.float32) + 0.5,
        "beta": rng.standard_normal(c).astype(np.float32),
        "mean": rng.standard_normal(c).astype(np.float32),
        "var": rng.random(c).astype(np.float32) + 0.5,
        "w2": _he(rng, (c, c, 1, 1)),
        "channel_bias": rng.standard_normal((c, 1, 1)).astype(np.float32),
        "w3": _he(rng, (c, c, 3, 3)),
    }
    model = _model(nodes, {"x": x_shape}, {"y": None}, weights)
    compiled = _assert_matches_onnxruntime(
        model, {"x": rng.standard_normal(x_shape).astype(np.float32)}
    )
    kernels = {r.node: r.kernel for r in compiled.report().rows}
    assert kernels["bn"] == kernels["relu"] == "fused into conv1"
    assert kernels["add"] == kernels["sigmoid"] == kernels["mul"] == "fused into conv2"
    assert kernels["tanh"] == "TVM default"  # c3 has two consumers: no fusion
    functions = [name for name, _ in compiled.report().tvm_functions]
    assert any("tanh" in f for f in functions) and any("add" in f for f in functions)


def test_residual_adds_fuse_into_convolutions_and_match_onnxruntime(rng):
    """ResNet's blocks: Conv -> BN -> Add(shortcut) -> Relu is one kernel for a Winograd
    3x3, a 1x1 over a map (computed over one row) and a strided 3x3; the projection
    shortcut's conv comes after the Add's other operand's conv in graph order (the fused
    conv moves after it); a broadcast Add and an Add of a constant are not residuals."""
    c, x_shape = 16, (1, 16, 12, 12)
    bn = ["g", "beta", "mean", "var"]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4, name="wino"),
        helper.make_node("BatchNormalization", ["c1", *bn], ["b1"], name="bn1"),
        helper.make_node("Add", ["x", "b1"], ["a1"], name="add1"),  # identity shortcut first
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[1, 1], name="pointwise"),
        helper.make_node("Conv", ["r1", "w3"], ["c3"], kernel_shape=[1, 1], name="projection"),
        helper.make_node("Add", ["c2", "c3"], ["a2"], name="add2"),
        helper.make_node("Relu", ["a2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w4", "b4"], ["c4"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4, name="strided"),
        helper.make_node("Add", ["c4", "row"], ["a4"], name="broadcast_add"),
        helper.make_node("Conv", ["a4", "w5"], ["c5"], kernel_shape=[1, 1], name="last"),
        helper.make_node("Add", ["c5", "constant"], ["y"], name="constant_add"),
    ]  # fmt: skip
    weights = {
        "w1": _he(rng, (c, c, 3, 3)),
        "g": rng.random(c).astype(np.float32) + 0.5,
        "beta": rng.standard_normal(c).astype(np.float32),
        "mean": rng.standard_normal(c).astype(np.float32),
        "var": rng.random(c).astype(np.float32) + 0.5,
        "w2": _he(rng, (2 * c, c, 1, 1)),
        "w3": _he(rng, (2 * c, c, 1, 1)),
        "w4": _he(rng, (2 * c, 2 * c, 3, 3)),
        "b4": rng.standard_normal(2 * c).astype(np.float32),
        "row": rng.standard_normal((1, 1, 1, 6)).astype(np.float32),
        "w5": _he(rng, (c, 2 * c, 1, 1)),
        "constant": rng.standard_normal((1, c, 6, 6)).astype(np.float32),
    }
    model = _model(nodes, {"x": x_shape}, {"y": None}, weights)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    compiled = _assert_matches_onnxruntime(model, feeds)
    kernels = {r.node: r.kernel for r in compiled.report().rows}
    assert kernels["wino"] == "conv2d (winograd F4x4)"
    assert kernels["bn1"] == kernels["add1"] == kernels["relu1"] == "fused into wino"
    # the first conv reached in graph order takes the Add: the pointwise one, whose
    # residual (the projection's output) is computed after it in the original graph
    assert kernels["add2"] == kernels["relu2"] == "fused into pointwise"
    assert kernels["broadcast_add"] == kernels["constant_add"] == "TVM default"


@pytest.mark.parametrize(
    "x_shape, strides",
    [((1, 8, 17), [2]), ((2, 8, 15, 12), [2, 3]), ((1, 4, 5, 7, 9), [2, 1, 2])],
)
def test_strided_pointwise_convs_run_on_the_subsampled_input_and_match_onnxruntime(
    x_shape, strides, rng
):
    """A strided unpadded 1x1 Conv (1-D, 2-D, 3-D, odd sizes) is a slice then a stride-1
    1x1 kernel: the kernel's input is the subsampled map."""
    nd = len(x_shape) - 2
    w = _he(rng, (6, x_shape[1], *[1] * nd))
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1] * nd, strides=strides)
    model = _model([node], {"x": x_shape}, {"y": None}, {"w": w})
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    _assert_matches_onnxruntime(model, feeds)
    geom = cf.shapes.conv_geometry(x_shape, w.shape, stride=strides)
    plan = plan_conv(geom, "float32", host_target(), constant_weight=True)
    assert plan.subsample == geom.stride and plan.x_shape == (*x_shape[:2], *geom.out_size)
    assert all(s == 1 for s in plan.kernel_geometry.stride)


def test_resize_non_integer_scales_every_mode_matches_onnxruntime(rng):
    """TVM's converter resizes by out/in, not the given scale; convforge's lowering by the scale."""
    coordinate_modes = [
        "half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
        "asymmetric", "tf_crop_and_resize",
    ]  # fmt: skip
    nodes, outputs = [], []
    for mode in ("nearest", "linear", "cubic"):
        for coordinate_mode in coordinate_modes:
            out = f"{mode}_{coordinate_mode}"
            roi = "roi" if coordinate_mode == "tf_crop_and_resize" else ""
            nodes.append(
                helper.make_node(
                    "Resize",
                    ["x", roi, "scales"],
                    [out],
                    mode=mode,
                    coordinate_transformation_mode=coordinate_mode,
                    extrapolation_value=-1.0,
                )
            )
            outputs.append(out)
    extra = [
        ("nearest_ceil", {"mode": "nearest", "nearest_mode": "ceil"}, "scales"),
        ("nearest_floor", {"mode": "nearest", "nearest_mode": "floor"}, "scales"),
        ("nearest_prefer_ceil", {"mode": "nearest", "nearest_mode": "round_prefer_ceil"}, "scales"),
        (
            "cubic_exclude_outside",
            {"mode": "cubic", "exclude_outside": 1, "cubic_coeff_a": -0.5},
            "scales",
        ),
    ]
    for out, attrs, scales in extra:
        nodes.append(helper.make_node("Resize", ["x", "", scales], [out], **attrs))
        outputs.append(out)
    nodes.append(
        helper.make_node("Resize", ["x", "", "", "sizes"], ["linear_sizes"], mode="linear")
    )
    outputs.append("linear_sizes")
    weights = {
        "scales": np.array([1, 1, 1.75, 0.65], np.float32),
        "roi": np.array([0, 0, 0.1, 0.2, 1, 1, 0.9, 0.8], np.float32),
        "sizes": np.array([1, 2, 7, 13], np.int64),
    }
    model = _model(nodes, {"x": (1, 2, 10, 11)}, dict.fromkeys(outputs), weights, opset=19)
    compiled = _assert_matches_onnxruntime(
        model, {"x": rng.standard_normal((1, 2, 10, 11)).astype(np.float32)}
    )
    kernels = {r.node: r.kernel for r in compiled.report().rows}
    assert kernels["Resize_0"] == kernels["Resize_5"] == "resize"  # tf_crop
    assert kernels["Resize_12"] == "resize"  # cubic


def test_pools_match_onnxruntime(rng):
    k = {"kernel_shape": [3, 3], "strides": [2, 2]}
    nodes = [
        helper.make_node("MaxPool", ["x"], ["max_same"], auto_pad="SAME_UPPER", **k),
        helper.make_node("MaxPool", ["x"], ["max_ceil_dilated"], ceil_mode=1, dilations=[2, 1], **k),
        helper.make_node("AveragePool", ["x"], ["avg_pads"], pads=[1, 0, 1, 2], **k),
        helper.make_node("AveragePool", ["x"], ["avg_include_pad"], pads=[1, 1, 1, 1], count_include_pad=1, **k),
        helper.make_node("AveragePool", ["x"], ["avg_same_lower"], auto_pad="SAME_LOWER", **k),
        helper.make_node("GlobalAveragePool", ["x"], ["global_avg"]),
        helper.make_node("GlobalMaxPool", ["x"], ["global_max"]),
    ]  # fmt: skip
    outputs = dict.fromkeys(n.output[0] for n in nodes)
    model = _model(nodes, {"x": (2, 3, 11, 10)}, outputs, {})
    compiled = _assert_matches_onnxruntime(
        model, {"x": rng.standard_normal((2, 3, 11, 10)).astype(np.float32)}
    )
    kernels = {r.kernel for r in compiled.report().rows}
    assert kernels == {"max_pool2d", "avg_pool2d", "global_avg_pool", "global_max_pool"}


def test_resize_followed_by_conv_is_one_kernel_matching_onnxruntime(rng):
    nodes = [
        helper.make_node("Resize", ["x", "", "twice"], ["up"], mode="nearest", name="up"),
        helper.make_node("Conv", ["up", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
        helper.make_node("Resize", ["x", "", "", "sizes"], ["lin"], mode="linear", name="linear"),
        helper.make_node("Conv", ["lin", "w"], ["z"], kernel_shape=[3, 3], auto_pad="SAME_UPPER", name="conv_lin"),
        helper.make_node("Resize", ["x", "", "by_1_5"], ["cub"], mode="cubic", name="cubic"),
        helper.make_node("Conv", ["cub", "w"], ["v"], kernel_shape=[3, 3], name="conv_cubic"),
    ]  # fmt: skip
    weights = {
        "twice": np.array([1, 1, 2, 2], np.float32),
        "by_1_5": np.array([1, 1, 1.5, 1.5], np.float32),
        "sizes": np.array([1, 4, 13, 9], np.int64),
        "w": _he(rng, (5, 4, 3, 3)),
        "b": rng.standard_normal(5).astype(np.float32),
    }
    model = _model(nodes, {"x": (1, 4, 6, 7)}, dict.fromkeys(["y", "z", "v"]), weights)
    compiled = _assert_matches_onnxruntime(
        model, {"x": rng.standard_normal((1, 4, 6, 7)).astype(np.float32)}
    )
    kernels = {r.node: r.kernel for r in compiled.report().rows}
    assert kernels == {
        "up": "fused into conv", "conv": "resize_conv2d", "relu": "fused into conv",
        "linear": "fused into conv_lin", "conv_lin": "resize_conv2d",
        "cubic": "fused into conv_cubic", "conv_cubic": "resize_conv2d",
    }  # fmt: skip


def test_causal_conv_with_state_matches_onnxruntime(rng):
    b, c, length, k = 2, 6, 9, 4
    nodes = [
        helper.make_node("CausalConvWithState", ["x", "w", "bias", "past"], ["y1", "state1"], activation="silu"),
        helper.make_node("CausalConvWithState", ["x", "w"], ["y2", "state2"]),
    ]  # fmt: skip
    weights = {"w": _he(rng, (c, 1, k)), "bias": rng.standard_normal(c).astype(np.float32)}
    model = _model(
        nodes,
        {"x": (b, c, length), "past": (b, c, k - 1)},
        dict.fromkeys(["y1", "state1", "y2", "state2"]),
        weights,
        opset=27,
    )
    feeds = {
        "x": rng.standard_normal((b, c, length)).astype(np.float32),
        "past": rng.standard_normal((b, c, k - 1)).astype(np.float32),
    }
    compiled = _assert_matches_onnxruntime(model, feeds)
    assert {r.kernel for r in compiled.report().rows} == {"causal_conv_with_state"}


def test_gemm_as_convolution_and_declined_forms_match_onnxruntime(rng):
    nodes = [
        helper.make_node("Gemm", ["x", "wt", "b"], ["y_transb"], transB=1, name="dense"),
        helper.make_node("Gemm", ["x", "w"], ["y_plain"], name="plain"),
        helper.make_node("Gemm", ["x", "w", "b"], ["y_scaled"], alpha=0.5, name="scaled"),
    ]
    weights = {
        "wt": _he(rng, (40, 30)),
        "w": _he(rng, (30, 40)),
        "b": rng.standard_normal(40).astype(np.float32),
    }
    model = _model(
        nodes, {"x": (3, 30)}, dict.fromkeys(["y_transb", "y_plain", "y_scaled"]), weights
    )
    compiled = _assert_matches_onnxruntime(
        model, {"x": rng.standard_normal((3, 30)).astype(np.float32)}
    )
    kernels = {r.node: r.kernel for r in compiled.report().rows}
    assert kernels == {"dense": "dense", "plain": "dense", "scaled": "TVM default"}


def _small_fully_convolutional(rng):
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["y"], ["g"]),
    ]
    weights = {"w1": _he(rng, (4, 2, 3, 3)), "w2": _he(rng, (5, 4, 3, 3))}
    graph = helper.make_graph(
        nodes, "dyn",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, "H", "W"])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None),
         helper.make_tensor_value_info("g", onnx.TensorProto.FLOAT, None)],
        initializer=[onnx.numpy_helper.from_array(v, n) for n, v in weights.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    model.ir_version = 10
    return model


def test_dynamic_batch_and_spatial_size(tmp_path, rng):
    model = _small_fully_convolutional(rng)
    with pytest.raises(ValueError, match="input_shapes"):
        cf.compile_model(model)
    compiled = cf.compile_model(model, input_shapes={"x": (1, 2, 11, 9)})
    x = rng.standard_normal((3, 2, 11, 9)).astype(np.float32)  # batch 3 on a batch-1 build
    _assert_matches_onnxruntime(model, {"x": x}, compiled)
    other_size = rng.standard_normal((2, 2, 7, 12)).astype(np.float32)  # compiles a specialization
    _assert_matches_onnxruntime(model, {"x": other_size}, compiled)
    with pytest.raises(ValueError, match=r"must have shape \(1, 2, 11, 9\)"):
        compiled(x[:, :1])
    library = tmp_path / "dynamic.so"
    compiled.export_library(library)
    loaded = cf.load(library)
    _assert_matches_onnxruntime(model, {"x": x}, loaded)
    with pytest.raises(ValueError, match=r"must have shape \(1, 2, 11, 9\)"):
        loaded(other_size)


def test_inputs_by_position_and_name_outputs_in_model_order(rng):
    model = _model(
        [helper.make_node("Conv", ["a", "w"], ["first"], kernel_shape=[1]),
         helper.make_node("Sub", ["first", "b"], ["second"])],
        {"a": (1, 2, 5), "b": (1, 3, 5)}, {"second": None, "first": None},
        {"w": _he(rng, (3, 2, 1))},
    )  # fmt: skip
    compiled = cf.compile_model(model)
    a = rng.standard_normal((1, 2, 5)).astype(np.float32)
    b = rng.standard_normal((1, 3, 5)).astype(np.float32)
    expected = run_onnxruntime(model, {"a": a, "b": b})
    for ours in (compiled(a, b), compiled(b=b, a=a), compiled(a, b=b)):
        assert [o.shape for o in ours] == [(1, 3, 5), (1, 3, 5)]
        for actual, theirs in zip(ours, expected):
            assert compare(actual, theirs).ok
    assert compiled.output_names == ["second", "first"]
    with pytest.raises(ValueError, match="missing input"):
        compiled(a)
    with pytest.raises(ValueError, match="unknown input 'c'"):
        compiled(a, b, c=b)
    with pytest.raises(ValueError, match="given twice"):
        compiled(a, a=a, b=b)


def test_export_library_loads_in_a_process_without_onnx(tmp_path, rng, capfd):
    model = networks.decoder("transposed", channels=(4, 3, 2))
    compiled = cf.compile_model(model)
    library = tmp_path / "decoder.so"
    capfd.readouterr()
    compiled.export_library(library)
    assert "Scope Saving" not in capfd.readouterr().err  # TVM's per-constant warnings
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np\n"
        "sys.modules['onnx'] = None; sys.modules['onnxruntime'] = None  # importing them fails\n"
        "import convforge as cf\n"
        f"model = cf.load({str(library)!r})\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, model(x=np.load({str(tmp_path / 'x.npy')!r}))[0])\n"
        "print(model.input_names, model.output_names)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "Scope Loaded" not in done.stderr
    assert compare(np.load(tmp_path / "y.npy"), run_onnxruntime(model, {"x": x})[0]).ok
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".tmp-")] == []


def test_scope_warning_filter_keeps_every_other_line(capfd):
    from convforge.export.model import without_scope_warnings

    with without_scope_warnings():
        os.write(2, b"[02:00:00] /src/runtime/vm/executable.cc:340: Warning: Scope Loaded:\n")
        os.write(2, b"a real warning\n[02:00:00] executable.cc:276: Warning: Scope Saving: x\n")
    assert (
        capfd.readouterr().err
        == "a real warning\n[02:00:00] executable.cc:276: Warning: Scope Saving: x\n"
    )


def test_check_model_finds_the_diverging_node(rng):
    model = _small_fully_convolutional(rng)
    other = onnx.ModelProto.FromString(model.SerializeToString())
    other.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(_he(rng, (5, 4, 3, 3)), "w2"))
    x = rng.standard_normal((1, 2, 8, 8)).astype(np.float32)
    assert cf.check_model(model, {"x": x}).ok
    wrong = cf.compile_model(other, input_shapes={"x": x.shape})
    result = cf.check_model(model, {"x": x}, compiled=wrong)
    assert not result.ok and not result.outputs[0].ok
    assert json.loads(json.dumps(result.to_dict()))["ok"] is False
    assert cf.check_model(model, {"x": x}, per_node=True).first_divergence is None


def test_per_node_check_names_the_first_diverging_tensor(monkeypatch, rng):
    """onnxruntime's intermediate ``r`` (Relu) is perturbed: the check must point at it."""
    from convforge.export import check_model as module

    def perturbed(model, feeds):
        outputs = run_onnxruntime(model, feeds)
        names = [o.name for o in model.graph.output]
        outputs[names.index("r")] = outputs[names.index("r")] + 1.0
        return outputs

    monkeypatch.setattr(module, "run_onnxruntime", perturbed)
    x = rng.standard_normal((1, 2, 8, 8)).astype(np.float32)
    result = cf.check_model(_small_fully_convolutional(rng), {"x": x}, per_node=True)
    assert result.ok  # declared outputs are not perturbed
    assert [n.name for n in result.nodes if not n.ok] == ["r"]
    assert result.first_divergence.node == "Relu_1"


def test_check_model_rejects_bad_input_before_compiling(tmp_path, rng):
    model = _small_fully_convolutional(rng)
    with pytest.raises(ValueError, match="missing input"):
        cf.check_model(model, {})
    with pytest.raises(ValueError, match=r"'x' must have shape \(\?, 2, \?, \?\)"):
        cf.check_model(model, {"x": np.zeros((1, 3, 8, 8), np.float32)})
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        cf.check_model(tmp_path / "broken.onnx")
    with pytest.raises(ValueError, match="no such file"):
        cf.check_model(tmp_path / "missing.onnx")


def test_top1_agreement_of_classifier_outputs():
    from convforge.export.check_model import top1_agreement

    expected = np.array([[0.1, 0.9], [0.8, 0.2]])
    assert top1_agreement(np.array([[0.2, 0.8], [0.4, 0.6]]), expected) == 0.5
    assert top1_agreement(np.ones((2, 3, 4)), np.ones((2, 3, 4))) is None


def test_example_networks_match_onnxruntime(tmp_path):
    small_wavenet = networks.WaveNetConfig(
        length=64, channels=8, skip_channels=8, classes=16, blocks=1, layers_per_block=4
    )
    small_bytenet = networks.ByteNetConfig(
        length=32, vocabulary=20, channels=8, dilations=(1, 2, 4)
    )
    models = {
        "wavenet": networks.wavenet(small_wavenet),
        "bytenet": networks.bytenet(small_bytenet),
        "classifier_conv": networks.classifier_conv(),
    }  # fmt: skip
    assert small_wavenet.receptive_field == 2 + 1 + 2 + 4 + 8
    for name, model in models.items():
        save_model(model, tmp_path / f"{name}.onnx")
        feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 32, 48)).astype(np.float32)}
        if name != "classifier_conv":
            feeds = None
        result = cf.check_model(tmp_path / f"{name}.onnx", feeds)
        assert result.ok, f"{name}:\n{result}"
    probabilities = run_onnxruntime(models["classifier_conv"], feeds)[0]
    assert probabilities.shape == (2, 1000)


def test_checkerboard_measure_separates_transposed_from_resize_convolution():
    spreads = {}
    for kind in ("transposed", "resize"):
        model = networks.decoder(kind)
        x = np.ones((1, 64, 8, 8), np.float32)
        image = run_onnxruntime(model, {"x": x})[0][0]
        assert image.shape == (3, 64, 64)
        spreads[kind] = networks.checkerboard_spread(image)
    assert spreads["transposed"] > 0.1 > 1e-5 > spreads["resize"]
    assert networks.checkerboard_spread(np.full((3, 20, 20), 2.0)) == 0.0


def test_constant_weights_are_packed_at_compile_time_and_match_onnxruntime(rng):
    """Dense 2-D/3-D convolutions with constant weights take them packed once (no pack
    block in the kernel), output channels not a multiple of the block included; a weight
    given as a graph input is packed by the kernel."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 0, 1, 2], strides=[2, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[1, 1], name="conv2"),
        helper.make_node("Conv", ["c2", "w_input"], ["y"], kernel_shape=[3, 3], name="conv3"),
        helper.make_node("Conv", ["v", "w3d"], ["y3d"], kernel_shape=[2, 3, 3], pads=[1] * 6, name="conv3d"),
    ]  # fmt: skip
    weights = {
        "w1": _he(rng, (5, 3, 3, 3)),
        "b1": rng.standard_normal(5).astype(np.float32),
        "w2": _he(rng, (13, 5, 1, 1)),
        "w3d": _he(rng, (11, 2, 2, 3, 3)),
    }
    inputs = {"x": (1, 3, 15, 14), "w_input": (6, 13, 3, 3), "v": (1, 2, 4, 6, 7)}
    model = _model(nodes, inputs, {"y": None, "y3d": None}, weights)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in inputs.items()}
    _assert_matches_onnxruntime(model, feeds)
    _, ctx, _ = import_model(model, host_target())
    packs = {r.node: '"nchwc_pack_w"' in ctx.functions[r.function].script() for r in ctx.records}
    assert packs == {"conv1": False, "conv2": False, "conv3": True, "conv3d": False}


def test_operators_left_to_tvm_are_scheduled_and_match_onnxruntime(rng):
    """Element-wise nodes on TVM's lowering run in parallel; results agree with
    onnxruntime for vector-sized, ragged and tiny tensors, with broadcasting, transposes,
    concatenation, and a reduction the rule leaves alone."""
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("Relu", ["s"], ["r"]),
        helper.make_node("Mul", ["r", "scale"], ["m"]),
        helper.make_node("Transpose", ["m"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Concat", ["t", "t"], ["cat"], axis=3),
        helper.make_node("Tanh", ["cat"], ["y"]),
        helper.make_node("Sigmoid", ["tiny"], ["y_tiny"]),
        helper.make_node("ReduceMean", ["a", "axes"], ["y_mean"], keepdims=1),
    ]
    weights = {"axes": np.array([2, 3], np.int64)}
    inputs = {"a": (1, 6, 37, 40), "b": (1, 6, 1, 40), "scale": (1, 6, 37, 1), "tiny": (3, 5)}
    model = _model(nodes, inputs, {"y": None, "y_tiny": None, "y_mean": None}, weights)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in inputs.items()}
    _assert_matches_onnxruntime(model, feeds)
    target = host_target()
    mod, _, _ = import_model(model, target)
    with target:
        passes = [*cpu_generic.legalize_passes(target), schedule_tvm_elementwise(target)]
        mod = tvm.transform.Sequential(passes)(mod)
    functions = {
        gvar.name_hint: func.script()
        for gvar, func in mod.functions.items()
        if isinstance(func, tvm.tirx.PrimFunc)
    }
    assert any("add" in name for name in functions)
    for name, text in functions.items():
        if "add" in name:  # the large element-wise chain (innermost 12: not whole vectors)
            assert "T.parallel" in text, name
        if "mean" in name:  # a reduction: left as TVM made it
            assert "T.parallel" not in text, name


def test_elementwise_rule_parallelizes_and_vectorizes_and_declines_reductions():
    from tvm import te

    x = te.placeholder((4, 64, 64), "float32", "x")
    y = te.compute(x.shape, lambda *i: x(*i) * 2.0, name="double")
    z = te.compute(x.shape, lambda *i: tvm.tirx.max(y(*i), 0.0), name="relu")
    scheduled = schedule_elementwise(te.create_prim_func([x, z]), host_target())
    text = scheduled.script()
    assert "T.parallel" in text and "T.vectorized" in text and "double" not in text
    k = te.reduce_axis((0, 64), "k")
    total = te.compute((4, 64), lambda i, j: te.sum(x[i, j, k], axis=k), name="total")
    assert schedule_elementwise(te.create_prim_func([x, total]), host_target()) is None


@pytest.mark.parametrize("width, vector", [(56, 14), (28, 14), (14, 14), (7, None), (64, 16)])
def test_elementwise_rule_vectorizes_rows_that_whole_vectors_do_not_divide(width, vector):
    """On AVX-512 (16 float lanes) a row of 14, 28 or 56 runs in vectors of 14 (its largest
    divisor up to 16: at least half a vector), 64 in whole vectors, 7 stays scalar
    (thresholds.md#elementwise-vectors); the kernel computes what numpy does."""
    from tvm import te

    zen4 = resolve_target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4"})
    x = te.placeholder((1, 116, 6, width), "float32", "x")
    z = te.compute(x.shape, lambda *i: tvm.tirx.max(x(*i), 0.0), name="relu")
    scheduled = schedule_elementwise(te.create_prim_func([x, z]), zen4)
    assert scheduled is not None
    text = scheduled.script()
    if vector is None:
        assert "T.vectorized" not in text
    else:
        assert f"T.vectorized({vector})" in text
    built = tvm.compile(tvm.IRModule({"main": scheduled}), target=host_target())
    shape = (1, 116, 6, width)
    xs = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = tvm.runtime.tensor(np.empty(shape, np.float32))
    built["main"](tvm.runtime.tensor(xs), out)
    np.testing.assert_array_equal(out.numpy(), np.maximum(xs, 0))


def test_strided_conv_transpose_nodes_take_the_sub_pixel_computation():
    """Like the numpy API: no multiplications by the zeros a stride inserts."""
    _, ctx, _ = import_model(networks.decoder("transposed"), host_target())
    kernels = [r for r in ctx.records if r.op_type == "ConvTranspose"]
    assert len(kernels) == 3
    for record in kernels:
        assert '"subpixel_interleave"' in ctx.functions[record.function].script(), record.node


def test_sum_of_two_inputs_is_an_add_and_other_sums_stay_tvms(rng):
    """A two-input Sum (broadcasting) lowers as an Add (TVM's converter stacks and reduces,
    which kept a quantized model's DequantizeLinear -> Sum -> Relu -> QuantizeLinear in two
    kernels with a stacked intermediate); one and three inputs keep TVM's converter. All
    against onnxruntime."""
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    b = rng.standard_normal((3, 1, 1)).astype(np.float32)
    c = rng.standard_normal((1, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Sum", ["x", "b"], ["two"]),
        helper.make_node("Relu", ["two"], ["y2"]),
        helper.make_node("Sum", ["x", "b", "c"], ["y3"]),
        helper.make_node("Sum", ["x"], ["y1"]),
    ]
    model = _model(nodes, {"x": x.shape}, ["y2", "y3", "y1"], {"b": b, "c": c}, opset=13)
    _assert_matches_onnxruntime(model, {"x": x})
    two = _model(nodes[:2], {"x": x.shape}, ["y2"], {"b": b}, opset=13)
    functions = [
        name for name, _ in _assert_matches_onnxruntime(two, {"x": x}).report(x).tvm_functions
    ]
    assert functions and not any("stack" in name for name in functions), functions


@pytest.mark.parametrize("beta, size, rooted", [(0.75, 5, True), (0.5, 3, True), (0.6, 5, False)])
def test_lrn_takes_its_power_by_square_roots_and_matches_onnxruntime(beta, size, rooted):
    """ONNX LRN (GoogLeNet's, AlexNet's): for beta 0.75 and 0.5 the power is taken by square
    roots (``lowering.lower_lrn``: vectorizable, unlike ``pow``), other betas keep TVM's
    ``power``; outputs within float32 tolerance of onnxruntime's."""
    shape = (2, 12, 9, 11)
    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=5e-3, beta=beta, bias=1.5)
    graph = helper.make_graph(
        [node], "lrn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    mod, _, _ = import_model(model, host_target())
    text = mod.script()
    assert ("R.power" not in text and "R.sqrt" in text) == rooted
    assert ("R.power" in text) != rooted
    x = (np.random.default_rng(5).standard_normal(shape) * 3).astype(np.float32)
    (expected,) = run_onnxruntime(model, {"x": x})
    (y,) = cf.compile_model(model)(x)
    assert compare(y, expected).ok, compare(y, expected)
