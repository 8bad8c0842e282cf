"""Conv(+bias, activation, residual) -> MaxPool as one kernel, against onnxruntime.

A MaxPool whose windows tile the convolution's output is computed inside the
convolution's kernel (NCHW[x]c: per register tile; Winograd: per task); other pools, and
convolutions whose output is read elsewhere too, keep two kernels.
"""

import re

import numpy as np
import onnx
import pytest
import tvm
from onnx import helper
from tvm import s_tir, te

import convforge as cf
from convforge import ops, shapes
from convforge.build import compile_computation
from convforge.export.check import compare, run_onnxruntime
from convforge.plan import plan_conv
from convforge.schedules.cpu import schedule_cpu
from convforge.targets import host_target


def _model(nodes, x_shape, outputs, weights):
    """Model with input ``x``; output shapes from onnx's strict shape inference."""
    graph = helper.make_graph(
        nodes, "conv_pool",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in outputs],
        initializer=[onnx.numpy_helper.from_array(v, n) for n, v in weights.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    model.ir_version = 10
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model


def _conv(name, x, out, w, bias=None, **attrs):
    inputs = [x, w] if bias is None else [x, w, bias]
    return helper.make_node("Conv", inputs, [out], name=name, kernel_shape=[3, 3], **attrs)


def _pool(name, x, out, k, stride=None, **attrs):
    return helper.make_node(
        "MaxPool", [x], [out], name=name, kernel_shape=[k] * 2, strides=[stride or k] * 2, **attrs
    )


def _weights(rng, **shapes_):
    return {n: (rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32) for n, s in shapes_.items()}  # fmt: skip


def _pooled_convs(k3_activation, ceil_mode):
    """Three padded 3x3 convs on x pooled by 4, 2 and 3 (``pool_k4``, ``pool_k2``,
    ``pool_k3``): k4 with bias and ReLU, k2 plain (``ceil_mode`` on its pool), k3 with bias
    and ``k3_activation`` (node ``<activation>_k3``). Weights w1..w3, biases b1 and b3."""
    act = k3_activation.lower()
    return [
        _conv("conv_k4", "x", "c1", "w1", "b1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu_k4"),
        _pool("pool_k4", "r1", "pool_k4", 4),
        _conv("conv_k2", "x", "c2", "w2", pads=[1] * 4),
        _pool("pool_k2", "c2", "pool_k2", 2, ceil_mode=ceil_mode),
        _conv("conv_k3", "x", "c3", "w3", "b3", pads=[1] * 4),
        helper.make_node(k3_activation, ["c3"], ["r3"], name=f"{act}_k3"),
        _pool("pool_k3", "r3", "pool_k3", 3),
    ]


def _compile_and_compare(model, x, **options):
    compiled = cf.compile_model(model, **options)
    ours, theirs = compiled(x=x), run_onnxruntime(model, {"x": x})
    for out, actual, expected in zip(model.graph.output, ours, theirs):
        agreement = compare(actual, expected)
        assert agreement.ok, f"output {out.name}: {agreement}"
    return {r.node: r.kernel for r in compiled.report().rows}


def test_nchwc_conv_pools_fuse_and_match_onnxruntime(rng):
    """Pools of 2, 3 and 4 (remainders dropped), with and without bias and activation,
    ceil_mode without overhang, a residual; batch 2."""
    x_shape = (2, 3, 18, 22)
    nodes = [
        *_pooled_convs("Sigmoid", ceil_mode=1),
        _conv("conv_a", "x", "c4", "w4", "b4"),
        _conv("conv_b", "x", "c5", "w5", "b5"),
        helper.make_node("Add", ["c4", "c5"], ["a5"], name="add_residual"),
        helper.make_node("Relu", ["a5"], ["r5"], name="relu_residual"),
        _pool("pool_residual", "r5", "pool_residual", 2),
    ]
    weights = _weights(rng, **{f"w{i}": (16, 3, 3, 3) for i in range(1, 6)})
    weights.update({f"b{i}": rng.standard_normal(16).astype(np.float32) for i in (1, 3, 4, 5)})
    outputs = ["pool_k4", "pool_k2", "pool_k3", "pool_residual"]
    model = _model(nodes, x_shape, outputs, weights)
    kernels = _compile_and_compare(model, rng.standard_normal(x_shape).astype(np.float32))
    for pool, conv in [("pool_k4", "conv_k4"), ("pool_k2", "conv_k2"), ("pool_k3", "conv_k3")]:
        assert kernels[pool] == f"fused into {conv}"
        assert kernels[conv] == "conv2d + max_pool2d"
    # one Conv takes the other's output as its residual, then the ReLU and the pool
    assert kernels["pool_residual"] in ("fused into conv_a", "fused into conv_b")
    assert kernels["pool_residual"] == kernels["add_residual"] == kernels["relu_residual"]


def test_winograd_conv_pools_fuse_where_tiles_hold_whole_windows(rng):
    """F(4x4) tiles hold whole 2x2 and 4x4 windows (fused, stride-1 and stride-2 phase
    convolutions alike); 3x3 windows straddle tiles, so that pool keeps its own kernel."""
    x_shape = (2, 16, 18, 18)
    nodes = [
        *_pooled_convs("Relu", ceil_mode=0),
        _conv("conv_s2", "x", "c4", "w4", "b4", pads=[1] * 4, strides=[2, 2]),
        _pool("pool_s2", "c4", "pool_s2", 2),
    ]
    weights = _weights(rng, **{f"w{i}": (16, 16, 3, 3) for i in range(1, 5)})
    weights.update({f"b{i}": rng.standard_normal(16).astype(np.float32) for i in (1, 3, 4)})
    model = _model(nodes, x_shape, ["pool_k4", "pool_k2", "pool_k3", "pool_s2"], weights)
    # algorithm='winograd': 'auto' keeps the 3x3 at stride 2 direct on AVX2
    # (TargetProfile.stride_phase_min_kernel); the fusion is what this test is about
    x = rng.standard_normal(x_shape).astype(np.float32)
    kernels = _compile_and_compare(model, x, algorithm="winograd")
    for pool, conv in [("pool_k4", "conv_k4"), ("pool_k2", "conv_k2"), ("pool_s2", "conv_s2")]:
        assert kernels[pool] == f"fused into {conv}"
        assert re.fullmatch(r"conv2d \(winograd F4x4.*\) \+ max_pool2d", kernels[conv])
    assert kernels["conv_k3"] == "conv2d (winograd F4x4)"
    assert kernels["pool_k3"] == "max_pool2d"
    assert kernels["relu_k3"] == "fused into conv_k3"


def test_pools_that_cannot_fuse_keep_their_own_kernel(rng):
    """Overlapping padded windows, a conv output read twice or a graph output (not
    fused), a ceil_mode overhang, output channels not in whole blocks (declined by the
    lowering)."""
    x_shape = (1, 4, 12, 13)
    nodes = [
        _conv("conv_overlap", "x", "c1", "w1", "b1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu_overlap"),
        _pool("pool_overlap", "r1", "pool_overlap", 3, stride=2, pads=[1] * 4),
        _conv("conv_shared", "x", "c2", "w2", pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu_shared"),
        _pool("pool_shared", "r2", "pool_shared", 2),
        helper.make_node("Sigmoid", ["r2"], ["sigmoid_shared"], name="sigmoid_shared"),
        _conv("conv_output", "x", "c3", "w3", pads=[1] * 4),
        _pool("pool_output", "c3", "pool_output", 2),
        _conv("conv_overhang", "x", "c4", "w4", pads=[1] * 4),
        _pool("pool_overhang", "c4", "pool_overhang", 2, ceil_mode=1),
        _conv("conv_odd_channels", "x", "c5", "w5", pads=[1] * 4),
        _pool("pool_odd_channels", "c5", "pool_odd_channels", 2),
    ]
    weights = _weights(rng, w1=(16, 4, 3, 3), w2=(16, 4, 3, 3), w3=(16, 4, 3, 3))
    weights.update(_weights(rng, w4=(16, 4, 3, 3), w5=(5, 4, 3, 3)))
    weights["b1"] = rng.standard_normal(16).astype(np.float32)
    outputs = [
        "pool_overlap", "pool_shared", "sigmoid_shared", "c3", "pool_output", "pool_overhang",
        "pool_odd_channels",
    ]  # fmt: skip
    model = _model(nodes, x_shape, outputs, weights)
    kernels = _compile_and_compare(model, rng.standard_normal(x_shape).astype(np.float32))
    for name in ("overlap", "shared", "output", "overhang", "odd_channels"):
        assert kernels[f"pool_{name}"] == "max_pool2d", name
        assert "max_pool" not in kernels[f"conv_{name}"], name


def test_3d_conv_pool_fuses_and_matches_onnxruntime(rng):
    x_shape = (1, 4, 6, 8, 9)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3] * 3, pads=[1] * 6),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[2] * 3, strides=[2] * 3),
    ]  # fmt: skip
    weights = _weights(rng, w=(16, 4, 3, 3, 3))
    weights["b"] = rng.standard_normal(16).astype(np.float32)
    model = _model(nodes, x_shape, ["y"], weights)
    kernels = _compile_and_compare(model, rng.standard_normal(x_shape).astype(np.float32))
    assert kernels == {"conv": "conv3d + max_pool3d", "relu": "fused into conv", "pool": "fused into conv"}  # fmt: skip


def _allocations(mod: tvm.IRModule) -> dict[str, tuple[int, ...]]:
    """Buffer name -> shape of every intermediate once TVM has compacted each to the
    region its loops touch."""
    compact = tvm.transform.Sequential(
        [
            s_tir.transform.LowerInitBlock(),
            s_tir.transform.ConvertBlocksToOpaque(),
            s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
            s_tir.transform.CompactBufferAllocation(),
        ]
    )
    script = compact(mod).script()
    found = re.findall(r"(\w+) = T\.\w*alloc_buffer\(\(([\d, ]+)\)", script)
    return {name: tuple(int(v) for v in dims.split(",")) for name, dims in found}


@pytest.mark.parametrize("width_block", [2, 8], ids=["tiles_per_window", "windows_per_tile"])
def test_nchwc_pool_schedule_keeps_one_register_tile(width_block, rng):
    """Both ways a 4-wide window and the width block WB meet (4/WB tiles per window row,
    WB/4 windows per tile): the convolution's output exists one register tile at a time."""
    geom = shapes.conv_geometry((1, 3, 17, 18), (16, 3, 3, 3), padding=1, bias_shape=(16,))
    pool = shapes.pool_geometry(geom.out_shape, 4, kind="max", stride=4)
    blocks = ops.ChannelBlocks(16, width_block)

    def computation():
        x, w, b = (te.placeholder(s, "float32", n) for s, n in [(geom.x_shape, "x"), (geom.w_shape, "w"), ((16,), "b")])  # fmt: skip
        return [x, w, b], [ops.conv_nchwc(x, w, geom, blocks, ops.Epilogue(b, "relu"), pool=pool)]

    target = host_target()
    inputs, outputs = computation()
    buffers = _allocations(schedule_cpu(te.create_prim_func([*inputs, *outputs]), target))
    assert buffers["conv_nchwc_local"] == (1, 1, 1, 1, width_block, 16)
    assert np.prod(buffers["nchwc_max_pool_local"]) == 16 * max(1, width_block // 4)
    assert not any(name.startswith("nchwc_unpack") for name in buffers)

    kernel = compile_computation("conv_max_pool", computation, target)
    x = rng.standard_normal(geom.x_shape).astype(np.float32)
    weights = _weights(rng, w=geom.w_shape)
    weights["b"] = rng.standard_normal(16).astype(np.float32)
    nodes = [
        _conv("conv", "x", "c", "w", "b", pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        _pool("pool", "r", "y", 4),
    ]
    (expected,) = run_onnxruntime(_model(nodes, geom.x_shape, ["y"], weights), {"x": x})
    agreement = compare(kernel(x, weights["w"], weights["b"]), expected)
    assert agreement.ok, agreement


def test_winograd_pool_runs_in_the_tasks_that_write_its_tiles():
    geom = shapes.conv_geometry((1, 16, 18, 18), (16, 16, 3, 3), padding=1)
    pool = shapes.pool_geometry(geom.out_shape, 2, kind="max", stride=2)
    target = host_target()
    tiles = plan_conv(geom, "float32", target, constant_weight=True).algorithm.tiles
    x, w = te.placeholder(geom.x_shape, "float32", "x"), te.placeholder(geom.w_shape, "float32", "w")  # fmt: skip
    out = ops.window_max(ops.conv2d_winograd(x, w, geom, tiles), pool)
    buffers = _allocations(schedule_cpu(te.create_prim_func([x, w, out]), target))
    assert buffers["winograd_unpack"][:3] == (1, 16, tiles.m)  # one row of tiles per task


def test_windows_inside():
    def geometry(size, k, **kwargs):
        return shapes.pool_geometry((1, 1, size, size), k, kind="max", **kwargs)

    assert geometry(18, 4, stride=4).windows_inside  # the remainder 2 is dropped
    assert geometry(18, 3, stride=3, ceil_mode=True).windows_inside  # no overhang
    assert not geometry(18, 4, stride=4, ceil_mode=True).windows_inside
    assert not geometry(18, 2, stride=2, padding=1).windows_inside
    assert not geometry(18, 3, stride=2).windows_inside
    assert not geometry(18, 2, stride=2, dilation=2).windows_inside


def test_nchwc_pool_builds_for_aarch64_neon():
    """Cross-compiled for Neoverse N1 (not run): the pooled convolution's register tiles are
    NEON fused multiply-adds and its pool NEON maxima, on 4 x f32 lanes."""
    neon = tvm.target.Target(
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n1"}
    )
    geom = shapes.conv_geometry((1, 3, 16, 16), (16, 3, 3, 3), padding=1)
    pool = shapes.pool_geometry(geom.out_shape, 4, kind="max", stride=4)
    blocks = ops.ChannelBlocks(16, 4)

    def computation():
        x, w = te.placeholder(geom.x_shape, "float32", "x"), te.placeholder(geom.w_shape, "float32", "w")  # fmt: skip
        relu = ops.Epilogue(activation="relu")
        return [x, w], [ops.conv_nchwc(x, w, geom, blocks, relu, pool=pool)]

    asm = compile_computation("conv_max_pool", computation, neon).executable.mod.inspect_source(
        "asm"
    )
    assert re.search(r"\bfmla\s+v\d+\.4s", asm), "no NEON vector fmla"
    # maxima as fmax, or as a vector compare and select (relu keeps NaN, which fmaxnm drops)
    assert re.search(r"\b(fmax(nm)?|fcm(ge|gt|lt|le))\s+v\d+\.4s", asm), "no NEON vector max"
