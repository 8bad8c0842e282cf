"""The plan layer (convforge.plan): one decision per convolution, which the numpy API, the
ONNX lowering and the tuner all take. Structure checks (which plan, which shapes) and
oracle checks (onnxruntime, numpy) of the paths the plan opened to the API."""

import importlib

import numpy as np
import pytest
import tvm
import tvm_ffi

import convforge as cf
from convforge import plan as planning
from convforge import shapes
from convforge.build import recording_kernels
from convforge.commands.tune import ConvWorkload
from convforge.export import compare, conv_model, run_onnxruntime
from convforge.export.model import import_model
from convforge.plan import CONV_ALGORITHMS, Blocked, Generic, Winograd, plan_conv, plan_dense
from convforge.targets import host_target

AVX2 = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"})
AVX512 = tvm.target.Target(
    {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"}
)
CUDA = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host={"kind": "llvm"})


def _geom(x_shape, w_shape, **kwargs):
    return shapes.conv_geometry(x_shape, w_shape, **kwargs)


def test_registry_order_and_algorithm_filter():
    """'auto' walks Winograd, Blocked, Generic; 'direct' skips the inexact Winograd;
    'winograd' takes only it and refuses (naming ``algorithm``) where it does not apply,
    unless ``strict=False`` (a compiled model's choice), which plans as 'auto'."""
    assert (Winograd, Blocked, Generic) == CONV_ALGORITHMS
    geom = _geom((1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    auto = plan_conv(geom, "float32", AVX2)
    assert auto.label == "conv2d (winograd F4x4)" and auto.needs_finite_check
    assert auto.schedule == "cpu_winograd.schedule_winograd"
    direct = auto.direct()
    assert direct == plan_conv(geom, "float32", AVX2, algorithm="direct")
    assert direct.label == "conv2d" and not direct.needs_finite_check
    assert direct.algorithm.name == "blocked"
    depthwise = _geom((1, 32, 16, 16), (32, 1, 3, 3), padding=1, groups=32)
    with pytest.raises(ValueError, match="algorithm='winograd' does not apply"):
        plan_conv(depthwise, "float32", AVX2, algorithm="winograd")
    lenient = plan_conv(depthwise, "float32", AVX2, algorithm="winograd", strict=False)
    assert lenient.algorithm == Generic() and lenient.label == "conv2d"
    with pytest.raises(ValueError, match="algorithm must be one of"):
        plan_conv(geom, "float32", AVX2, algorithm="fast")
    # no CPU: no Winograd, no blocks, no reshape
    gpu = plan_conv(geom, "float32", CUDA)
    assert gpu.algorithm == Generic() and gpu.kernel_geometry == geom


def test_constant_weight_and_stride_phases():
    """A constant weight admits Winograd on few tiles and on large stride-2 convolutions
    (their stride phases: 'auto' on AVX-512, only algorithm='winograd' on AVX2); its
    packed shape is what ``pack`` returns."""
    small = _geom((1, 16, 9, 11), (24, 16, 3, 3), padding=1)
    assert plan_conv(small, "float32", AVX2).algorithm.name == "blocked"
    packed = plan_conv(small, "float32", AVX2, constant_weight=True)
    assert packed.label == "conv2d (winograd F4x4)" and packed.packs
    strided = _geom((1, 32, 28, 28), (40, 32, 3, 3), stride=2, padding=1)
    phases = plan_conv(strided, "float32", AVX512, constant_weight=True)
    assert phases.label == "conv2d (winograd F4x4, stride 2x2 phases)"
    on_avx2 = plan_conv(strided, "float32", AVX2, constant_weight=True)
    assert on_avx2.algorithm.name == "blocked" and not on_avx2.needs_finite_check
    asked = plan_conv(strided, "float32", AVX2, constant_weight=True, algorithm="winograd")
    assert asked.label == phases.label
    rng = np.random.default_rng(0)
    for plan in (packed, phases, plan_conv(small, "float32", AVX2, constant_weight=True,
                                           algorithm="direct")):  # fmt: skip
        w = rng.standard_normal(plan.geometry.w_shape).astype(np.float32)
        assert plan.pack(w).shape == plan.weight_shape


def test_blocked_pack_is_the_blocked_weight():
    """Blocked packing: packed[ob, c, kh, kw, oi] = w[ob*OB + oi, c, kh, kw], zeros past O
    (numpy indexing as the oracle); a plan that does not pack returns a copy of w."""
    geom = _geom((1, 5, 12, 12), (20, 5, 3, 3), padding=1)
    plan = plan_conv(geom, "float32", AVX2, constant_weight=True, algorithm="direct")
    ob = plan.algorithm.blocks.out_block
    w = np.random.default_rng(1).standard_normal(geom.w_shape).astype(np.float32)
    packed = plan.pack(w)
    for o in range(-(-20 // ob) * ob):
        expect = w[o] if o < 20 else np.zeros_like(w[0])
        np.testing.assert_array_equal(packed[o // ob, ..., o % ob], expect)
    depthwise = _geom((1, 4, 8, 8), (4, 1, 3, 3), groups=4)
    generic = plan_conv(depthwise, "float32", AVX2, constant_weight=True)
    w1 = np.ones((4, 1, 3, 3), np.float32)
    assert not generic.packs and not np.shares_memory(generic.pack(w1), w1)


def test_pointwise_plans_reshape_and_subsample():
    """A dense 1x1 runs over one row of positions; a strided unpadded 1x1 first subsamples
    x by the stride (the same outputs); ``reshape=False`` keeps the shapes as given."""
    row = plan_conv(_geom((2, 64, 14, 14), (32, 64, 1, 1)), "float32", AVX2)
    assert row.kernel_geometry.x_shape == (2, 64, 1, 196) and row.reshapes
    assert row.subsample is None and row.algorithm.name == "blocked"
    geom = _geom((1, 64, 15, 13), (32, 64, 1, 1), stride=2)
    sub = plan_conv(geom, "float32", AVX2)
    assert sub.subsample == (2, 2) and sub.x_shape == (1, 64, 8, 7)
    assert sub.kernel_geometry.x_shape == (1, 64, 1, 56) and sub.kernel_geometry.stride == (1, 1)
    x = np.arange(64 * 15 * 13, dtype=np.float32).reshape(1, 64, 15, 13)
    np.testing.assert_array_equal(sub.prepare_x(x), x[:, :, ::2, ::2].reshape(1, 64, 1, 56))
    kept = plan_conv(geom, "float32", AVX2, reshape=False)
    assert kept.kernel_geometry == geom and not kept.reshapes and kept.subsample is None
    assert plan_conv(geom, "float32", CUDA).subsample is None
    # a long row on AVX-512 is computed directly (positions vectorized)
    long_row = plan_conv(_geom((1, 64, 56, 56), (64, 64, 1, 1)), "float32", AVX512)
    assert long_row.algorithm == Generic() and long_row.kernel_geometry.x_shape[2] == 1


def test_fused_pool_inside_the_kernel_where_the_plan_allows():
    """A max pool tiling the output runs inside a blocked or Winograd kernel; not over a
    row of positions, nor with windows that leave the output."""
    geom = _geom((1, 16, 32, 32), (64, 16, 3, 3), padding=1)
    pool = shapes.pool_geometry(geom.out_shape, 2, kind="max", stride=2)
    pooled = plan_conv(geom, "float32", AVX2, constant_weight=True, algorithm="direct", pool=pool)
    assert pooled.label == "conv2d + max_pool2d" and pooled.pool == pool
    assert pooled.schedule == "cpu_conv.schedule_conv_max_pool"
    assert pooled.out_shape == pool.out_shape
    assert (
        pooled.algorithm.blocks.width_block % 2 == 0 or 2 % pooled.algorithm.blocks.width_block == 0
    )
    wino = plan_conv(geom, "float32", AVX2, constant_weight=True, pool=pool)
    assert wino.label == "conv2d (winograd F4x4) + max_pool2d"
    assert wino.direct().label == "conv2d + max_pool2d"  # the fallback pools too
    padded = shapes.pool_geometry(geom.out_shape, 2, kind="max", stride=2, padding=1)
    assert plan_conv(geom, "float32", AVX2, pool=padded).pool is None
    pw = _geom((1, 16, 8, 8), (16, 16, 1, 1))
    pw_pool = shapes.pool_geometry(pw.out_shape, 2, kind="max", stride=2)
    assert plan_conv(pw, "float32", AVX2, pool=pw_pool).pool is None


def test_schedule_names_resolve_and_plans_are_cached():
    """Every plan names a schedule function that exists; equal arguments give the same plan
    (computed once), and the cache key tells apart what the kernel computes."""
    geom = _geom((1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    plans = [
        plan_conv(geom, "float32", AVX2),
        plan_conv(geom, "float32", AVX2, algorithm="direct"),
        plan_conv(_geom((1, 8, 9), (8, 8, 3)), "float32", AVX2),
    ]
    for plan in plans:
        module, name = plan.schedule.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(f"convforge.schedules.{module}"), name))
    assert plan_conv(geom, "float32", AVX2) is plans[0]
    relu = plan_conv(geom, "float32", AVX2, activation="relu")
    assert len({plans[0].key, plans[1].key, relu.key}) == 3


def test_dense_plan_packs_the_weight_for_the_kernel():
    """The packed-Gemm plan: the kernel's sum ``out[r, n, 0, w] = sum_f P[r, f, 0, w] x[n, f]``
    (numpy) over ``pack(w)`` is x @ w.T once permuted and sliced."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 20)).astype(np.float32)
    w = rng.standard_normal((13, 20)).astype(np.float32)
    plan = plan_dense(x.shape, w.shape, "float32", AVX2)
    packed = plan.pack(w)
    assert packed.shape == plan.kernel_geometry.x_shape == (2, 20, 1, 8)
    out = np.einsum("rfw,nf->nrw", packed[:, :, 0, :], x).reshape(3, plan.padded)
    np.testing.assert_allclose(out[:, :13], x @ w.T, rtol=1e-5, atol=1e-5)


def _onnxruntime(x, w, geom):
    return run_onnxruntime(conv_model(geom, weights={"w": w}), {"x": x})[0]


def test_api_strided_pointwise_takes_the_subsampled_plan():
    """cf.conv and cf.prepare_conv on a strided unpadded 1x1 run the dense 1x1 kernel on x
    subsampled by the stride (the kernel's input is the subsampled row), as a compiled
    model does, and match onnxruntime."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 16, 15, 13)).astype(np.float32)
    w = rng.standard_normal((24, 16, 1, 1)).astype(np.float32)
    geom = _geom(x.shape, w.shape, stride=2)
    with recording_kernels() as kernels:
        y = cf.conv(x, w, stride=2)
    assert kernels[-1].input_shapes[0] == (1, 16, 1, 8 * 7)
    assert compare(y, _onnxruntime(x, w, geom)).ok
    op = cf.prepare_conv(w, x_shape=x.shape, stride=2)
    assert op.plan.subsample == (2, 2) and op.kernel.input_shapes[0] == (1, 16, 1, 56)
    assert compare(op(x), _onnxruntime(x, w, geom)).ok


@pytest.mark.parametrize(
    "x_shape, w_shape, kwargs",
    [
        ((1, 16, 15, 13), (24, 16, 1, 1), dict(stride=2)),
        ((1, 16, 20, 20), (16, 16, 3, 3), dict(padding=1)),
    ],
    ids=["subsampled_1x1", "winograd_3x3"],
)
def test_api_tuner_and_compiled_model_build_the_same_kernel(x_shape, w_shape, kwargs):
    """One plan, three callers: cf.prepare_conv compiles the PrimFunc the ONNX lowering
    builds for the same Conv with a constant weight, and ``convforge tune`` tunes the one
    cf.conv compiles (structural hashes of the unscheduled PrimFuncs)."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal(w_shape).astype(np.float32)
    geom = _geom(x_shape, w_shape, **kwargs)
    _, ctx, _ = import_model(conv_model(geom, weights={"w": w}), host_target())
    (lowered,) = ctx.functions.values()
    op = cf.prepare_conv(w, x_shape=x_shape, **kwargs)
    assert tvm_ffi.structural_hash(op.kernel.func) == tvm_ffi.structural_hash(lowered)
    assert ctx.records[0].kernel == op.plan.label
    x = rng.standard_normal(x_shape).astype(np.float32)
    with recording_kernels() as kernels:
        cf.conv(x, w, **kwargs)
    tuned = ConvWorkload("t", geom).prim_func(host_target())
    assert tvm_ffi.structural_hash(kernels[-1].func) == tvm_ffi.structural_hash(tuned)


def test_plan_module_holds_the_choice_functions():
    """The choices moved out of schedules/: none of them is defined there any more."""
    from convforge.schedules import cpu_conv, cpu_winograd

    for name in ("winograd_tiles", "MIN_CHANNELS", "MAX_PHASE_CHANNELS"):
        assert not hasattr(cpu_winograd, name)
    for name in ("channel_blocks", "nchwc_blocks", "register_tile"):
        assert not hasattr(cpu_conv, name)
    assert callable(planning.winograd_tiles) and callable(planning.nchwc_blocks)


def test_plan_takes_a_target_dict_and_refuses_bad_arguments():
    """Any target form resolves before the cache (a dict is not hashable); a bad
    ``algorithm`` is a ValueError naming it."""
    geom = _geom((1, 8, 10, 10), (8, 8, 3, 3), padding=1)
    as_dict = plan_conv(geom, "float32", {"kind": "llvm", "mcpu": "haswell"})
    assert as_dict == plan_conv(geom, "float32", AVX2)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        plan_conv(geom, "float32", AVX2, algorithm="Winograd")


@pytest.mark.parametrize("algorithm", ["fastest", ["winograd"]])
def test_a_bad_algorithm_is_a_value_error_before_the_cache(algorithm):
    """Checked before the plan cache: an unhashable value is a ValueError too."""
    geom = _geom((1, 3, 8, 8), (4, 3, 3, 3))
    with pytest.raises(ValueError, match="algorithm must be one of"):
        plan_conv(geom, "float32", algorithm=algorithm)


def test_plans_are_cached_with_the_target_resolved():
    """A dict target (unhashable) is resolved before the cache; the default target's plan
    is computed once."""
    geom = _geom((1, 3, 8, 8), (4, 3, 3, 3))
    target = host_target()
    plan = plan_conv(geom, "float32", dict(target.export()), bias=True)
    assert isinstance(plan.target, tvm.target.Target)
    assert plan_conv(geom, "float32", bias=True) is plan_conv(geom, "float32", None, bias=True)
