"""Dense-convolution CPU schedules: results against onnxruntime, tile choices, code generation.

Every case runs the NCHW[x]c computation under its schedule and compares it with
onnxruntime running the equivalent ONNX Conv (an independent implementation).
"""

import math
import os
import re
import subprocess
import sys

import numpy as np
import psutil
import pytest
import tvm
from tvm import te

import convforge as cf
from convforge import ops, shapes
from convforge.build import compile_computation, prim_func, recording_kernels
from convforge.export import compare, conv_model, run_onnxruntime
from convforge.plan import channel_blocks, nchwc_blocks, plan_conv
from convforge.schedules.cpu import (
    block_iterations,
    generic_cpu_schedule,
    is_small,
    schedule_cpu,
)
from convforge.targets import host_target, profile, vector_lanes, vector_registers

AVX2 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}
ZEN3 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3"}
AVX512 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"}
ZEN4 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4"}
NEON = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n1"}

# The suite's dense workloads at reduced sizes, plus sizes that do not divide the tiles.
# (x shape, w shape, conv keyword arguments)
DENSE_CASES = {
    "3x3_pad1": ((1, 16, 14, 14), (16, 16, 3, 3), dict(padding=1)),
    "1x1": ((1, 32, 14, 14), (16, 32, 1, 1), {}),
    "3x3_stride2": ((1, 16, 15, 15), (24, 16, 3, 3), dict(stride=2, padding=1)),
    "7x7_stride2_stem": ((1, 3, 30, 30), (16, 3, 7, 7), dict(stride=2, padding=3)),
    "3x3_dilated2": ((1, 16, 17, 17), (16, 16, 3, 3), dict(dilation=2, padding=2)),
    "3x3_batch2": ((2, 8, 9, 9), (16, 8, 3, 3), dict(padding=1)),
    "odd_channels_width": ((1, 5, 11, 13), (13, 5, 3, 3), dict(padding=1)),
    "odd_stride_dilation_asym_pad": (
        (1, 7, 19, 23),
        (9, 7, 3, 2),
        dict(stride=(2, 3), dilation=(2, 1), padding=((1, 0), (2, 1))),
    ),
    "3d": ((1, 8, 5, 6, 9), (12, 8, 3, 3, 3), dict(stride=(1, 2, 1), padding=1)),
    "3d_dilated_odd": ((1, 3, 6, 7, 7), (5, 3, 2, 3, 3), dict(dilation=(1, 2, 1))),
}


def _ort_reference(x, w, b, geom, activation=None):
    model = conv_model(geom, x.dtype.name, bias=b is not None, activation=activation)
    (expected,) = run_onnxruntime(model, {"x": x, "w": w, "bias": b})
    return expected


def _arrays(x_shape, w_shape, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    return x, w, b


def _nchwc_func(geom, blocks):
    x = te.placeholder(geom.x_shape, "float32", name="x")
    w = te.placeholder(geom.w_shape, "float32", name="w")
    func = te.create_prim_func([x, w, ops.conv_nchwc(x, w, geom, blocks)])
    return func.with_attr("global_symbol", "main")


def _nchwc_bias_kernel(geom, blocks, activation):
    """The NCHW[x]c conv with bias and ``activation``, compiled for the host."""

    def computation():
        tx = te.placeholder(geom.x_shape, "float32", name="x")
        tw = te.placeholder(geom.w_shape, "float32", name="w")
        tb = te.placeholder((geom.out_channels,), "float32", name="bias")
        return [tx, tw, tb], [ops.conv_nchwc(tx, tw, geom, blocks, ops.Epilogue(tb, activation))]

    return compile_computation("conv_nchwc", computation, host_target())


def _scheduled_source(geom, blocks, target):
    """TIR of the scheduled NCHW[x]c conv; the rule must have applied (no silent fallback)."""
    return str(schedule_cpu(_nchwc_func(geom, blocks), target))


@pytest.mark.parametrize("case", list(DENSE_CASES), ids=list(DENSE_CASES))
def test_dense_conv_matches_onnxruntime(case):
    x_shape, w_shape, kwargs = DENSE_CASES[case]
    x, w, b = _arrays(x_shape, w_shape)
    geom = shapes.conv_geometry(x.shape, w.shape, **kwargs)
    assert nchwc_blocks(geom, "float32", host_target()) is not None
    activation = "relu" if case.startswith("odd") else None
    y = cf.conv(x, w, b, activation=activation, **kwargs)
    agreement = compare(y, _ort_reference(x, w, b, geom, activation))
    assert agreement.ok, agreement


def _host_has(feature: str) -> bool:
    return bool(tvm.target.codegen.llvm_cpu_has_features(feature, host_target()))


@pytest.mark.skipif(not _host_has("avx2"), reason="host CPU cannot run AVX2 code")
@pytest.mark.parametrize("case", ["3x3_stride2", "odd_channels_width", "3d"])
def test_avx2_tiles_run_and_match_onnxruntime(case):
    """The AVX2 register tiles (16 ymm), built for Zen 3 and run on this x86 host."""
    x_shape, w_shape, kwargs = DENSE_CASES[case]
    x, w, b = _arrays(x_shape, w_shape)
    geom = shapes.conv_geometry(x.shape, w.shape, **kwargs)
    assert nchwc_blocks(geom, "float32", tvm.target.Target(ZEN3)).out_block % 8 == 0
    y = cf.conv(x, w, b, target=ZEN3, **kwargs)
    agreement = compare(y, _ort_reference(x, w, b, geom))
    assert agreement.ok, agreement


@pytest.mark.parametrize(
    "blocks", [(8, 1), (16, 3), (32, 7), (64, 4)], ids=lambda b: f"ob{b[0]}_wb{b[1]}"
)
def test_every_block_size_matches_onnxruntime(blocks):
    """Blocks that do and do not divide the channels / width, under the schedule."""
    x, w, b = _arrays((1, 6, 10, 11), (20, 6, 3, 3))
    geom = shapes.conv_geometry(x.shape, w.shape, padding=1, stride=(1, 2))
    chosen = ops.ChannelBlocks(*blocks)
    assert "conv_nchwc_update" in _scheduled_source(geom, chosen, host_target())

    kernel = _nchwc_bias_kernel(geom, chosen, "silu")
    agreement = compare(kernel(x, w, b), _ort_reference(x, w, b, geom, "silu"))
    assert agreement.ok, agreement


def test_float16_matches_onnxruntime():
    x, w, b = _arrays((1, 8, 9, 10), (12, 8, 3, 3), "float16")
    geom = shapes.conv_geometry(x.shape, w.shape, padding=1)
    agreement = compare(cf.conv(x, w, b, padding=1), _ort_reference(x, w, b, geom))
    assert agreement.ok, agreement


def test_float64_matches_sparse_matrix():
    """onnxruntime has no float64 Conv: the oracle is the sparse-matrix form."""
    x, w, b = _arrays((1, 8, 9, 10), (12, 8, 3, 3), "float64")
    geom = shapes.conv_geometry(x.shape, w.shape, padding=1)
    expected = (cf.conv_matrix(w, geom) @ x.ravel()).reshape(geom.out_shape)
    expected += b.reshape(1, -1, 1, 1)
    agreement = compare(cf.conv(x, w, b, padding=1), expected)
    assert agreement.ok, agreement


def test_schedule_rule_applies_to_every_dense_case():
    """The dedicated rule, not the fallback, scheduled each case: parallel tiles in registers."""
    target = host_target()
    for x_shape, w_shape, kwargs in DENSE_CASES.values():
        geom = shapes.conv_geometry(x_shape, w_shape, **kwargs)
        func = _nchwc_func(geom, channel_blocks(geom, "float32", target))
        source = str(schedule_cpu(func, target))
        assert "conv_nchwc_update" in source and "T.vectorized" in source
        assert 'scope="local"' in source
        # the rule runs the tiles in parallel; these small cases then run on one thread
        assert "T.parallel" in str(generic_cpu_schedule(func, target).mod)
        assert ("T.parallel" in source) == (not is_small(func, target))


@pytest.mark.parametrize(
    "target, registers, lanes",
    [(AVX2, 16, 8), (ZEN3, 16, 8), (AVX512, 32, 16), (ZEN4, 32, 16), (NEON, 32, 4)],
    ids=["haswell", "znver3", "skylake-avx512", "znver4", "neoverse-n1"],
)
def test_register_tile_fits_the_target(target, registers, lanes):
    target = tvm.target.Target(target)
    assert vector_registers(target) == registers
    assert vector_lanes(target, "float32") == lanes
    for x_shape, w_shape, kwargs in [
        ((1, 64, 56, 56), (64, 64, 3, 3), dict(padding=1)),
        ((1, 256, 56, 56), (64, 256, 1, 1), {}),
        ((1, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3)),
        *DENSE_CASES.values(),
    ]:
        geom = shapes.conv_geometry(x_shape, w_shape, **kwargs)
        blocks = channel_blocks(geom, "float32", target)
        vectors = blocks.out_block // lanes
        assert blocks.out_block % lanes == 0
        # accumulators in at most half the registers: the rest hold weights and broadcasts
        assert vectors in (1, 2, 4)
        assert vectors * blocks.width_block <= registers // 2
        # a register tile large enough to hide most of the multiply-add latency: 6 or 7
        # accumulators that fit a 7-, 9- or 14-wide map ran as fast as or faster than 8
        # that pad it (Zen 3)
        assert vectors * blocks.width_block >= min(6, geom.out_size[-1])


def test_avx512_tiles_differ_from_avx2():
    geom = shapes.conv_geometry((1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    avx2 = channel_blocks(geom, "float32", tvm.target.Target(ZEN3))
    avx512 = channel_blocks(geom, "float32", tvm.target.Target(ZEN4))
    accumulators = {
        name: b.out_block // lanes * b.width_block
        for name, b, lanes in [("avx2", avx2, 8), ("avx512", avx512, 16)]
    }
    assert accumulators["avx2"] <= 8 < accumulators["avx512"] <= 16


def _assembly(geom, target):
    target = tvm.target.Target(target)
    blocks = channel_blocks(geom, "float32", target)

    def computation():
        x = te.placeholder(geom.x_shape, "float32", name="x")
        w = te.placeholder(geom.w_shape, "float32", name="w")
        return [x, w], [ops.conv_nchwc(x, w, geom, blocks)]

    kernel = compile_computation("conv_nchwc", computation, target)
    return kernel.executable.mod.inspect_source("asm")


def test_aarch64_neon_code_generation():
    """Cross-compiled for Neoverse N1 (not run): NEON fused multiply-adds on 4 x f32 lanes."""
    geom = shapes.conv_geometry((1, 16, 10, 12), (16, 16, 3, 3), padding=1)
    asm = _assembly(geom, NEON)
    assert re.search(r"\bfmla\s+v\d+\.4s", asm), "no NEON vector fmla"
    assert "ymm" not in asm and "zmm" not in asm


@pytest.mark.parametrize(
    "target, register, absent",
    [(AVX2, "ymm", "zmm"), (AVX512, "zmm", None)],
    ids=["avx2", "avx512"],
)
def test_x86_vector_code_generation(target, register, absent):
    geom = shapes.conv_geometry((1, 16, 10, 12), (16, 16, 3, 3), padding=1)
    asm = _assembly(geom, target)
    assert re.search(rf"vfmadd\w+\s+.*%{register}\d+", asm), f"no {register} FMA"
    if absent:
        assert absent not in asm


def test_grouped_and_1d_convolutions_keep_the_generic_computation():
    target = host_target()
    depthwise = shapes.conv_geometry((1, 8, 9, 9), (8, 1, 3, 3), groups=8)
    causal = shapes.conv_geometry((1, 4, 20), (4, 4, 2), padding="causal", dilation=2)
    assert nchwc_blocks(depthwise, "float32", target) is None
    assert nchwc_blocks(causal, "float32", target) is None
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host=target)
    dense = shapes.conv_geometry((1, 8, 9, 9), (8, 8, 3, 3))
    assert nchwc_blocks(dense, "float32", cuda) is None


def test_channel_blocks_reject_bad_sizes():
    with pytest.raises(ValueError, match="out_block must be a positive int"):
        ops.ChannelBlocks(0, 4)
    with pytest.raises(ValueError, match="width_block must be a positive int"):
        ops.ChannelBlocks(16, -1)
    geom = shapes.conv_geometry((1, 4, 6, 6), (4, 2, 3, 3), groups=2)
    x, w = te.placeholder(geom.x_shape, name="x"), te.placeholder(geom.w_shape, name="w")
    with pytest.raises(ValueError, match="must divide the output channels per group"):
        ops.conv_nchwc(x, w, geom, ops.ChannelBlocks(8, 2))


@pytest.mark.parametrize("user_threads", [None, "1"])
def test_kernels_run_one_thread_per_physical_core_unless_the_user_chose(user_threads):
    """TVM alone starts half the hardware threads on x86 (one on a 2-core machine)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    if user_threads is not None:
        env["TVM_NUM_THREADS"] = user_threads
    # import convforge is lazy: it sets the default, tvm (imported after it) reads it
    script = (
        "import convforge, tvm, tvm_ffi; print(tvm_ffi.get_global_func('runtime.NumThreads')())"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    cores = min(len(os.sched_getaffinity(0)), psutil.cpu_count(logical=False))
    assert int(out.stdout) == (cores if user_threads is None else int(user_threads))


@pytest.mark.parametrize(
    "x_shape, w_shape",
    [((1, 24, 7, 7), (40, 24, 1, 1)), ((2, 8, 3, 5, 7), (13, 8, 1, 1, 1)), ((1, 16, 1, 30), (8, 16, 1, 1))],
)  # fmt: skip
def test_pointwise_convolutions_run_over_one_row_of_positions(x_shape, w_shape):
    """1x1 stride-1 convolutions (2-D, 3-D) are computed over (N, C, 1, H*W[*D]) and agree
    with onnxruntime on the original shapes."""
    geom = shapes.conv_geometry(x_shape, w_shape)
    x, w, b = _arrays(x_shape, w_shape)
    with recording_kernels() as kernels:
        y = cf.conv(x, w, b, activation="relu")
    assert kernels[0].input_shapes[0] == (x_shape[0], x_shape[1], 1, math.prod(x_shape[2:]))
    assert compare(y, _ort_reference(x, w, b, geom, "relu")).ok


def test_small_kernels_run_on_one_thread_and_large_ones_in_parallel():
    """Below the profile's min_parallel_iterations block iterations the default schedule has
    no parallel loop (waking idle workers would cost more); both agree with onnxruntime."""
    target = host_target()
    min_parallel_iterations = profile(target).min_parallel_iterations
    for x_shape, expect_parallel in [((1, 8, 10, 12), False), ((1, 64, 56, 56), True)]:
        geom = shapes.conv_geometry(x_shape, (x_shape[1], x_shape[1], 3, 3), padding=1)
        plan = plan_conv(geom, "float32", target, activation="relu", bias=True)
        func = prim_func(plan.computation())
        assert (block_iterations(func) >= min_parallel_iterations) == expect_parallel
        assert ("T.parallel" in schedule_cpu(func, target).script()) == expect_parallel
        x, w, b = _arrays(x_shape, geom.w_shape)
        y = cf.conv(x, w, b, padding=1, activation="relu")
        assert compare(y, _ort_reference(x, w, b, geom, "relu")).ok


def test_few_iterations_over_a_large_operand_run_in_parallel():
    """The classifier head's 512 -> 1000 dense (0.5M iterations, a 2 MB weight) streams its
    weight on every core; its result agrees with numpy."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 512, 7, 7)).astype(np.float32)
    w = (rng.standard_normal((1000, 512)) / 23).astype(np.float32)
    b = rng.standard_normal(1000).astype(np.float32)
    with recording_kernels() as kernels:
        y = cf.grid_pool_head(x, w, b, grid=1)
    func = kernels[0].func
    small = is_small(func, host_target())
    assert block_iterations(func) < profile(host_target()).min_parallel_iterations and not small
    assert "T.parallel" in schedule_cpu(func, host_target()).script()
    logits = x.astype(np.float64).mean(axis=(2, 3)) @ w.T + b
    expected = np.exp(logits - logits.max())
    assert compare(y, (expected / expected.sum()).astype(np.float32)).ok


def test_one_channel_block_over_one_row_splits_the_width_into_parallel_tasks():
    """A 1x1 conv in one output-channel block over one row of positions (ResNet-50's
    256->64 56x56 on AVX-512) has a single (batch x block x row) tile: its width tiles are
    split into the profile's parallel_tasks tasks, and the result agrees with onnxruntime."""
    geom = shapes.conv_geometry((1, 32, 1, 392), (16, 32, 1, 1))
    blocks = ops.ChannelBlocks(16, 7)  # 392 = 8 tasks x 7 tiles of 7 positions
    schedule = generic_cpu_schedule(_nchwc_func(geom, blocks), host_target())
    # parallel loops in block order: the weight packing (32 channels), then the conv
    parallel = re.findall(r"T\.parallel\((\d+)\)", schedule.mod.script())
    assert parallel == ["32", str(profile(host_target()).parallel_tasks)]

    def computation():
        tx = te.placeholder(geom.x_shape, "float32", name="x")
        tw = te.placeholder(geom.w_shape, "float32", name="w")
        return [tx, tw], [ops.conv_nchwc(tx, tw, geom, blocks)]

    kernel = compile_computation(
        "conv_nchwc", computation, host_target(), lambda f, t: generic_cpu_schedule(f, t).mod
    )
    x, w, _ = _arrays(geom.x_shape, geom.w_shape)
    agreement = compare(kernel(x, w), _ort_reference(x, w, None, geom))
    assert agreement.ok, agreement


def test_long_pointwise_rows_are_computed_directly_on_x86():
    """A 1x1 conv over one row of >= POINTWISE_ROW_POSITIONS positions keeps the generic
    computation on AVX-512 and AVX2 (positions vectorized, weights broadcast), NCHW[x]c
    elsewhere (unmeasured); a shorter row, or a 1x1 conv with a map, is unchanged."""
    from convforge.schedules.cpu_conv import POINTWISE_ROW_POSITIONS

    row = shapes.conv_geometry((1, 16, 1, POINTWISE_ROW_POSITIONS), (8, 16, 1, 1))
    short = shapes.conv_geometry((1, 16, 1, POINTWISE_ROW_POSITIONS - 1), (8, 16, 1, 1))
    for target, direct in [(AVX512, True), (ZEN4, True), (ZEN3, True), (NEON, False)]:
        target = tvm.target.Target(target)
        assert (nchwc_blocks(row, "float32", target) is None) == direct
        assert nchwc_blocks(short, "float32", target) is not None


@pytest.mark.parametrize("bias, activation", [(False, None), (True, "relu")])
def test_pointwise_row_rule_matches_onnxruntime(bias, activation):
    """The rule's direct time-tiled schedule (here on the host, whatever its vectors),
    with a ragged last time tile and bias + activation fused."""
    from convforge.schedules.cpu_conv import is_pointwise_row, schedule_pointwise_row

    geom = shapes.conv_geometry((2, 24, 1, 700), (40, 24, 1, 1))
    x, w, b = _arrays(geom.x_shape, geom.w_shape)
    b = b if bias else None

    def computation():
        tx = te.placeholder(x.shape, "float32", name="x")
        tw = te.placeholder(w.shape, "float32", name="w")
        tb = te.placeholder((geom.out_channels,), "float32", name="bias") if bias else None
        inputs = [t for t in (tx, tw, tb) if t is not None]
        return inputs, [ops.conv(tx, tw, geom, ops.Epilogue(tb, activation))]

    assert is_pointwise_row(prim_func(computation))
    kernel = compile_computation(
        "conv", computation, host_target(), lambda f, t: schedule_pointwise_row(f, t).mod
    )
    y = kernel(*[a for a in (x, w, b) if a is not None])
    agreement = compare(y, _ort_reference(x, w, b, geom, activation))
    assert agreement.ok, agreement


def test_short_reductions_take_at_most_two_channel_vectors():
    """With 32 registers, a conv of at most the profile's short_reduction multiply-adds per
    output takes 2 channel vectors (its write-back dominates), a long one 4."""
    target = tvm.target.Target(ZEN4)
    short_reduction = profile(target).short_reduction
    short = shapes.conv_geometry((1, 3, 256, 256), (64, 3, 3, 3), padding=1)
    long = shapes.conv_geometry((1, 128, 56, 56), (128, 128, 3, 3), stride=2, padding=1)
    assert short.in_channels * 9 <= short_reduction < long.in_channels * 9
    assert channel_blocks(short, "float32", target).out_block == 2 * 16
    assert channel_blocks(long, "float32", target).out_block == 4 * 16


@pytest.mark.parametrize("positions", [512, 700, 784, 3136, 12544])
def test_pointwise_time_tiles_leave_enough_tasks(positions):
    """Whole width tiles, at least the profile's pointwise_time_tile positions, and the
    longest that still gives its parallel_tasks tasks when the row is long enough."""
    from convforge.schedules.cpu_conv import pointwise_time_tile

    target = tvm.target.Target(AVX512)
    least, wanted = profile(target).pointwise_time_tile, profile(target).parallel_tasks
    for width in (16, 32):
        tile = pointwise_time_tile(positions, width, target)
        assert tile % width == 0 and tile >= least
        tasks = -(-positions // tile)
        assert tasks >= wanted or tile == -(-least // width) * width
        if positions >= 2048:  # long rows get longer tiles than the minimum
            assert tile > least


def test_short_pointwise_rows_pack_their_input_and_match_onnxruntime():
    """A 1x1 over a row shorter than POINTWISE_ROW_POSITIONS reads its input through
    nchwc_pack_x (contiguous panels); other convolutions do not, and refuse the flag."""
    from convforge.schedules.cpu_conv import POINTWISE_ROW_POSITIONS

    short = shapes.conv_geometry((2, 24, 1, 196), (40, 24, 1, 1))
    long = shapes.conv_geometry((1, 24, 1, POINTWISE_ROW_POSITIONS), (40, 24, 1, 1))
    grid = shapes.conv_geometry((1, 24, 14, 14), (40, 24, 3, 3), padding=1)
    target = tvm.target.Target(ZEN3)
    assert channel_blocks(short, "float32", target).pack_input
    assert not channel_blocks(long, "float32", target).pack_input
    assert not channel_blocks(grid, "float32", target).pack_input
    blocks = channel_blocks(short, "float32", host_target())
    assert blocks.pack_input and "nchwc_pack_x" in _scheduled_source(short, blocks, host_target())
    x, w, b = _arrays(short.x_shape, short.w_shape)

    kernel = _nchwc_bias_kernel(short, blocks, "relu")
    agreement = compare(kernel(x, w, b), _ort_reference(x, w, b, short, "relu"))
    assert agreement.ok, agreement
    tx = te.placeholder(grid.x_shape, "float32", name="x")
    tw = te.placeholder(grid.w_shape, "float32", name="w")
    with pytest.raises(ValueError, match="pack_input"):
        ops.conv_nchwc(tx, tw, grid, ops.ChannelBlocks(16, 4, pack_input=True))


@pytest.mark.parametrize(
    "x_shape, w_shape, stride, groups, phased",
    [
        ((1, 16, 14, 14), (16, 1, 5, 5), 2, 16, True),  # 5x5 depthwise: phases
        ((2, 8, 12, 12), (8, 1, 3, 3), 2, 8, True),  # a 6-wide output: phases
        ((1, 8, 13, 13), (8, 1, 3, 3), 2, 8, False),  # padded width 15: no phases
        ((1, 8, 6, 40), (8, 1, 3, 3), 2, 8, False),  # 3x3 over a 20-wide output: direct
        ((1, 12, 9, 16), (24, 2, 5, 5), (1, 2), 6, True),  # grouped, 4 per group
        ((1, 8, 32), (8, 1, 5), 3, 8, True),  # 1-D depthwise, stride 3
    ],
)
def test_strided_grouped_convolutions_read_stride_phases(
    x_shape, w_shape, stride, groups, phased, rng
):
    """The grouped direct schedule stores a strided convolution's padded input as stride
    phases where the profile says (cpu_grouped.deinterleave_strided_input: the padded
    buffer gains an axis); the results equal onnxruntime's either way."""
    k = w_shape[-1]
    geom = shapes.conv_geometry(x_shape, w_shape, stride=stride, padding=k // 2, groups=groups)
    plan = plan_conv(geom, "float32", host_target())
    assert plan.algorithm.name == "generic" and plan.kernel_geometry == geom
    mod = schedule_cpu(prim_func(plan.computation()), host_target())
    pad_dims = {len(b.shape) for b in mod["main"].body.block.alloc_buffers if b.name == "pad"}
    assert pad_dims == {geom.ndim + 2 + int(phased)}
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(geom.out_channels).astype(np.float32)
    y = cf.conv(x, w, b, stride=stride, padding=k // 2, groups=groups, activation="relu")
    (expected,) = run_onnxruntime(
        conv_model(geom, bias=True, activation="relu"), {"x": x, "w": w, "bias": b}
    )
    assert compare(y, expected).ok, compare(y, expected)
