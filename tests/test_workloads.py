"""The one workload registry (convforge/workloads.py) and the lists that read it."""

from __future__ import annotations

import json
import math

import pytest

from convforge import shapes
from convforge import workloads as registry
from tests.isolated import run_isolated


def test_every_workload_is_named_once_with_a_known_op_and_a_set():
    names = [wl.name for wl in registry.REGISTRY]
    assert len(names) == len(set(names))
    tune_names = [wl.tune_name for wl in registry.REGISTRY if wl.tune_name]
    assert not set(tune_names) & set(names), "a tune name must not shadow another workload"
    for wl in registry.REGISTRY:
        assert wl.op in registry.OPS, wl.name
        assert wl.sets and wl.sets <= set(registry.SETS), wl.name
        assert (wl.tune_name is None) or registry.TUNE in wl.sets, wl.name


def test_shapes_are_consistent_and_macs_follow_the_direct_algorithm():
    """Every geometry validates; the MAC count is the textbook one (independent formula)."""
    for wl in registry.REGISTRY:
        if wl.op == "classifier_head":
            n, c, h, w = wl.shapes["x"]
            assert wl.pool_geometry().out_shape == (n, c, 1, 1)
            assert wl.macs == n * c * (h * w // 2 + wl.shapes["w"][0])
            continue
        geom = wl.geometry()
        _, per_group, *kernel = wl.shapes["w"]  # (O, C/g, *K), transposed: (C, O/g, *K)
        if wl.op == "conv_transpose":  # every input meets O/g outputs through every tap
            expected = math.prod(wl.shapes["x"]) * per_group * math.prod(kernel)
        else:  # every output sums C/g channels over every tap
            expected = math.prod(geom.out_shape) * per_group * math.prod(kernel)
        assert wl.macs == expected, wl.name
        assert wl.flops == 2 * expected


def test_the_lists_are_the_registry_sets():
    from benchmarks import cpu_special
    from benchmarks.workloads import SUITE
    from convforge.commands.tune import WORKLOADS
    from convforge.export.aot import GPU_SUITE

    assert registry.select(registry.BENCH) == SUITE
    assert registry.select(registry.GPU) == GPU_SUITE
    tune = registry.select(registry.TUNE)
    assert set(WORKLOADS) == {wl.tune_name or wl.name for wl in tune}
    for wl in tune:
        named = WORKLOADS[wl.tune_name or wl.name]
        assert named.geometry.x_shape == wl.shapes["x"]
        assert named.geometry.w_shape == wl.shapes["w"]
        assert named.bias == ("bias" in wl.shapes)
    assert list(cpu_special.WORKLOADS.values()) == list(registry.select(registry.CPU_SPECIAL))


def test_the_benchmark_and_gpu_suites_share_their_common_workloads():
    bench = {wl.name for wl in registry.select(registry.BENCH)}
    gpu = {wl.name for wl in registry.select(registry.GPU)}
    assert bench <= gpu  # the GPU suite is the CPU suite plus 3-D, grouped and float16


def test_unknown_op_and_set_are_refused_naming_them():
    wl = registry.Workload("bad", "conv3", {"x": (1, 2, 3), "w": (1, 2, 1)})
    with pytest.raises(ValueError, match=r"op must be one of .*'conv3'"):
        wl.geometry()
    with pytest.raises(ValueError, match=r"workload set must be one of .*'nightly'"):
        registry.select("nightly")


def test_arrays_have_the_declared_shapes_and_dtype():
    wl = registry.BY_NAME["conv3x3_64_56_fp16"]
    arrays = wl.arrays(seed=1)
    assert {k: v.shape for k, v in arrays.items()} == dict(wl.shapes)
    assert all(str(v.dtype) == "float16" for v in arrays.values())
    geom = shapes.conv_geometry(wl.shapes["x"], wl.shapes["w"], padding=1)
    assert wl.geometry() == shapes.conv_geometry(
        wl.shapes["x"], wl.shapes["w"], padding=1, bias_shape=wl.shapes["bias"]
    )
    assert geom.out_shape == wl.geometry().out_shape


def test_importing_the_registry_loads_neither_tvm_nor_onnx():
    out = run_isolated(
        """
        import json, sys
        from convforge import workloads
        assert workloads.select(workloads.BENCH)
        print(json.dumps([m for m in ("tvm", "onnx", "onnxruntime") if m in sys.modules]))
        """
    )
    assert out.returncode == 0, out.describe()
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
