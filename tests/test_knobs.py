"""The knob space of convforge's plans (convforge.knobs): the default configuration is the
default plan exactly, bad configurations are refused by name, schedule knobs reach the
schedules, and sampled configurations compute what the scipy.sparse oracle
(``reference.conv_matrix``) does."""

import numpy as np
import pytest
import tvm
import tvm_ffi

from convforge import knobs, reference, shapes
from convforge.build import compile_computation, prim_func
from convforge.plan import plan_conv
from convforge.schedules.cpu import schedule_cpu
from convforge.targets import host_target

AVX2 = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"})
AVX512 = tvm.target.Target(
    {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"}
)

#: (x shape, w shape, geometry options, constant weight, fused max pool kernel or None)
GEOMETRIES = [
    ((1, 64, 56, 56), (64, 64, 3, 3), {"padding": 1}, False, None),  # Winograd F4
    ((1, 512, 14, 14), (512, 512, 3, 3), {"padding": 1}, True, None),  # Winograd F2
    ((1, 32, 28, 28), (32, 1, 3, 3), {"padding": 1, "groups": 32}, False, None),  # depthwise
    ((1, 64, 28, 28), (128, 64, 1, 1), {}, True, None),  # pointwise (row)
    ((1, 16, 30, 30), (24, 16, 3, 3), {"stride": 2}, True, None),  # stride-2 phases
    ((1, 8, 9, 40), (8, 8, 1, 7), {"padding": (0, 3)}, False, None),  # Inception 1x7
    ((1, 16, 12, 12), (24, 16, 3, 3), {"padding": 1}, True, 2),  # conv + fused max pool
    ((1, 4, 16), (8, 4, 5), {"padding": 2}, False, None),  # 1-D (blocked, as a row)
    ((1, 64, 14, 14), (64, 16, 3, 3), {"padding": 1, "groups": 4}, True, None),  # ResNeXt
]


def _plan(x_shape, w_shape, options, constant, pool, target, **kwargs):
    geom = shapes.conv_geometry(x_shape, w_shape, **options)
    pool_geom = None
    if pool is not None:
        pool_geom = shapes.pool_geometry(geom.out_shape, pool, kind="max", stride=pool)
    return plan_conv(
        geom, "float32", target, constant_weight=constant, pool=pool_geom, tuned=False, **kwargs
    )


@pytest.mark.parametrize("target", [AVX2, AVX512], ids=["avx2", "avx512"])
@pytest.mark.parametrize("case", GEOMETRIES, ids=lambda c: "x".join(map(str, c[0])))
def test_default_config_is_the_default_plan(case, target):
    """``with_knobs(plan, space.default) == plan`` (same algorithm, parameters, pool) and
    the default heads the space; every configuration's knobs are within its ranges."""
    plan = _plan(*case, target)
    space = knobs.knob_space(plan)
    assert knobs.with_knobs(plan, space.default) == plan
    assert space.configs[0] == space.default and space.default in space
    assert len(space) > 1  # there is something to tune everywhere
    for config in knobs.sample(space, 20):
        space.check(config)
        tuned = knobs.with_knobs(plan, config)
        assert (tuned.pool is None) == (plan.pool is None)
        assert tuned.out_shape == plan.out_shape and tuned.kernel_x_shape == plan.kernel_x_shape


def test_ranges_follow_the_profile():
    """Register tiles: 4 channel vectors only with 32 registers; Winograd F(4) only up to
    256 input channels (float32's tolerance); blocked width up to (registers - v - 1) / v."""
    dense = ((1, 64, 56, 56), (64, 64, 3, 3), {"padding": 1}, True, None)
    for target, lanes, widest in ((AVX2, 8, 2), (AVX512, 16, 4)):
        space = knobs.knob_space(_plan(*dense, target))
        blocked = dict((k.name, k.values) for k in space.knobs("blocked"))
        assert max(blocked["out_block"]) == widest * lanes
        assert {c["winograd_m"] for c in space.configs if c["algorithm"] == "winograd"} == {2, 4}
    avx2 = knobs.knob_space(_plan(*dense, AVX2))
    assert max(c["width_block"] for c in avx2.configs if c["algorithm"] == "blocked") == 14
    wide = knobs.knob_space(_plan(*GEOMETRIES[1], AVX2))
    assert {c["winograd_m"] for c in wide.configs if c["algorithm"] == "winograd"} == {2}


def test_bad_configs_are_refused_by_name():
    plan = _plan(*GEOMETRIES[0], AVX2)
    space = knobs.knob_space(plan)
    with pytest.raises(ValueError, match="'tile_block' must be one of"):
        space.check({**space.default, "tile_block": 99})
    with pytest.raises(ValueError, match="algorithm must be one of"):
        space.check({"algorithm": "fft"})
    with pytest.raises(ValueError, match=r"knobs \['width_block'\] do not apply"):
        space.check({**space.default, "width_block": 2})
    with pytest.raises(ValueError, match="algorithm must be winograd, blocked or direct"):
        knobs.with_knobs(plan, {"algorithm": "fft"})
    depthwise = _plan(*GEOMETRIES[2], AVX2)
    with pytest.raises(ValueError, match="'winograd' does not apply"):
        knobs.with_knobs(
            depthwise,
            {"algorithm": "winograd", "winograd_m": 4, "out_block": 8, "tile_block": 1},
        )
    with pytest.raises(ValueError, match="has no knob space"):
        knobs.knob_space(knobs.with_knobs(plan, {**space.default, "threads": 1}))
    grouped = _plan((1, 32, 8, 8), (32, 8, 3, 3), {"padding": 1, "groups": 4}, True, None, AVX2)
    grouped_space = knobs.knob_space(grouped)
    assert dict(grouped_space.algorithms)["blocked"][0].values == (8,)  # 8 per group
    with pytest.raises(ValueError, match="out_block 16 does not divide the 8 output channels"):
        knobs.with_knobs(grouped, {**grouped_space.default, "out_block": 16})


def _scheduled(plan):
    return schedule_cpu(prim_func(plan.computation()), plan.target)


def _has_parallel(mod) -> bool:
    return "T.parallel" in mod.script()


def test_schedule_knobs_reach_the_schedules():
    """``threads`` overrides the one-thread threshold both ways; the parallel grain, the
    Winograd pipeline and the direct accumulators change the scheduled code; a default
    configuration's TIR carries no knob annotation."""
    big = _plan(*GEOMETRIES[0], AVX2)
    space = knobs.knob_space(big)
    assert "schedule_knobs" not in str(prim_func(big.computation()))
    assert _has_parallel(_scheduled(big))
    one = knobs.with_knobs(big, {**space.default, "threads": 1})
    assert not _has_parallel(_scheduled(one))
    passes = knobs.with_knobs(big, {**space.default, "winograd_pipeline": 2})
    assert not tvm_ffi.structural_equal(_scheduled(passes), _scheduled(big))
    small = _plan((1, 4, 6, 6), (4, 4, 3, 3), {"padding": 1}, False, None, AVX2)
    small_space = knobs.knob_space(small)
    assert not _has_parallel(_scheduled(small))
    assert _has_parallel(_scheduled(knobs.with_knobs(small, {**small_space.default, "threads": 2})))
    row = _plan(*GEOMETRIES[3], AVX2)
    row_space = knobs.knob_space(row)
    grains = {
        tvm_ffi.structural_hash(
            _scheduled(knobs.with_knobs(row, {**row_space.default, "parallel_tasks": t}))
        )
        for t in (2, 16)
    }
    assert len(grains) == 2
    dw = _plan(*GEOMETRIES[2], AVX2)
    dw_default = knobs.knob_space(dw).default
    tiles = {
        tvm_ffi.structural_hash(_scheduled(knobs.with_knobs(dw, {**dw_default, "accumulators": a})))
        for a in (0, 4)
    }
    assert len(tiles) == 2


def _oracle(x, w, b, geom, pool):
    y = (reference.conv_matrix(w, geom) @ x.reshape(-1)).reshape(geom.out_shape)
    y = np.maximum(y + b.reshape(-1, *([1] * geom.ndim)), 0)
    if pool:
        n, c, h, wd = y.shape
        y = y.reshape(n, c, h // pool, pool, wd // pool, pool).max(axis=(3, 5))
    return y


#: Sampled configurations per geometry (the default included), compiled and run.
SAMPLED = [
    (((1, 16, 14, 14), (16, 16, 3, 3), {"padding": 1}, True, None), 3),
    (((1, 8, 10, 10), (8, 4, 3, 3), {"padding": 1, "groups": 2}, False, None), 2),
    (((1, 32, 8, 8), (64, 16, 3, 3), {"padding": 1, "groups": 2}, True, None), 2),
    (((1, 16, 6, 6), (24, 16, 1, 1), {}, True, None), 3),
    (((1, 8, 12, 12), (8, 8, 3, 3), {"stride": 2, "padding": 1}, True, None), 2),
    (((1, 16, 12, 12), (24, 16, 3, 3), {"padding": 1}, True, 2), 2),
]


@pytest.mark.parametrize(
    "case,count",
    SAMPLED,
    ids=lambda c: "x".join(map(str, c[0])) if isinstance(c, tuple) else str(c),
)
def test_sampled_configs_compute_the_convolution(case, count):
    """Each sampled configuration (random, seeded), compiled with its schedule knobs, gives
    the oracle's numbers (bias + relu fused; a fused max pool stays fused)."""
    target = host_target()
    x_shape, w_shape, _, _, pool = case
    plan = _plan(*case, target, bias=True, activation="relu")
    geom = plan.geometry
    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape).astype("float32")
    w = rng.standard_normal(w_shape).astype("float32")
    b = rng.standard_normal(w_shape[0]).astype("float32")
    expected = _oracle(x.astype("float64"), w.astype("float64"), b, geom, pool)
    space = knobs.knob_space(plan)
    for config in knobs.sample(space, count, seed=3):
        tuned = knobs.with_knobs(plan, config)
        kernel = compile_computation("knob_test", tuned.computation(), target)
        weight = tuned.pack(w) if tuned.packs else w.reshape(tuned.weight_shape)
        got = kernel(tuned.prepare_x(x), weight, b).reshape(expected.shape)
        tolerance = 1e-5 if tuned.algorithm.exact else 4e-5
        np.testing.assert_allclose(
            got, expected, rtol=0, atol=tolerance * np.abs(expected).max(), err_msg=str(config)
        )
