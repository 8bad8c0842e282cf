"""Target families (convforge.targets.family / is_cpu / is_gpu): LLVM is the CPU, CUDA the
GPU, and any other kind is refused by name before anything is compiled, never taken for CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te

import convforge as cf
from convforge.build import prim_func, schedule_for
from convforge.targets import family, host_target, is_cpu, is_gpu, resolve_target

UNSUPPORTED = [
    {"kind": "rocm"},
    '{"kind": "opencl"}',
    {"kind": "vulkan"},
    tvm.target.Target("c"),
]


@pytest.mark.parametrize("target", [None, "cpu", "llvm", {"kind": "llvm"}])
def test_llvm_targets_are_the_cpu_family(target):
    resolved = resolve_target(target)
    assert resolved.kind.name == "llvm"
    assert (family(resolved), is_cpu(resolved), is_gpu(resolved)) == ("cpu", True, False)


@pytest.mark.parametrize("target", ["cuda", {"kind": "cuda", "arch": "sm_80"}])
def test_cuda_targets_are_the_gpu_family(target):
    resolved = resolve_target(target)
    assert resolved.kind.name == "cuda"
    assert (family(resolved), is_cpu(resolved), is_gpu(resolved)) == ("gpu", False, True)


@pytest.mark.parametrize("target", UNSUPPORTED, ids=str)
def test_other_kinds_are_refused_by_name(target):
    kind = target.kind.name if isinstance(target, tvm.target.Target) else str(target)
    with pytest.raises(ValueError, match=r"target: kind '(rocm|opencl|vulkan|c)' is not supp"):
        resolve_target(target)
    raw = target if isinstance(target, tvm.target.Target) else None
    if raw is not None:  # a Target object reaching the internals directly
        assert not is_cpu(raw) and not is_gpu(raw), kind
        with pytest.raises(ValueError, match="kind 'c' is not supported"):
            family(raw)


def test_schedule_for_refuses_an_unsupported_target_instead_of_assuming_cuda():
    x = te.placeholder((4,), name="x")
    func = prim_func(lambda: ([x], [te.compute((4,), lambda i: x[i] + 1, name="y")]))
    with pytest.raises(ValueError, match="kind 'c' is not supported"):
        schedule_for(func, tvm.target.Target("c"))
    assert is_cpu(host_target())  # the host is the CPU family


def test_the_numpy_api_refuses_an_unsupported_target_before_compiling():
    x, w = np.ones((1, 1, 4, 4), "float32"), np.ones((1, 1, 3, 3), "float32")
    with pytest.raises(ValueError, match="kind 'rocm' is not supported"):
        cf.conv(x, w, target={"kind": "rocm"})
