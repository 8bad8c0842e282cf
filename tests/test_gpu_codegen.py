"""CUDA code generation checked without a GPU: every operator family, sm_80 and sm_90.

Oracles: the CUDA architecture limits (threads per block, static shared memory, registers
per block) and nvcc/ptxas, which must accept the generated source. The numeric check of
the kernels against numpy runs on a GPU machine (benchmarks/gpu_bench.py).
"""

import re

import numpy as np
import pytest
import tvm
from tvm import te

import convforge as cf
from convforge import ops, shapes
from convforge.build import compile_computation
from convforge.schedules.gpu_source import (
    MAX_THREADS_PER_BLOCK,
    REGISTERS_PER_BLOCK,
    STATIC_SHARED_BYTES,
    compile_fatbin,
    cuda_source,
    kernels,
    nvcc_path,
)
from convforge.targets import resolve_target, target_key

ARCHS = ("sm_90", "sm_80")

#: (family, op, geometry, dtype, bias, activation): small shapes, every schedule path.
FAMILIES = {
    "dense2d_3x3": ("conv", shapes.conv_geometry((1, 32, 20, 20), (48, 32, 3, 3), padding=1), "float32", True, "relu"),
    "dense2d_1x1_no_epilogue": ("conv", shapes.conv_geometry((2, 64, 7, 7), (128, 64, 1, 1)), "float32", False, None),
    "dense2d_stem_7x7_s2": ("conv", shapes.conv_geometry((1, 3, 40, 40), (16, 3, 7, 7), stride=2, padding=3), "float32", True, None),
    "dense2d_5x5_wide": ("conv", shapes.conv_geometry((1, 128, 12, 12), (128, 128, 5, 5), padding=2), "float32", True, "silu"),
    "dilated2d": ("conv", shapes.conv_geometry((1, 16, 18, 18), (16, 16, 3, 3), dilation=2, padding=2), "float32", True, None),
    "grouped2d": ("conv", shapes.conv_geometry((1, 32, 14, 14), (32, 4, 3, 3), groups=8, padding=1), "float32", True, "relu"),
    "depthwise2d": ("conv", shapes.conv_geometry((1, 24, 17, 17), (24, 1, 3, 3), groups=24, padding=1), "float32", True, "relu"),
    "depthwise2d_s2_fp16": ("conv", shapes.conv_geometry((1, 24, 17, 17), (24, 1, 5, 5), groups=24, stride=2, padding=2), "float16", True, None),
    "dense1d": ("conv", shapes.conv_geometry((2, 16, 50), (24, 16, 5), padding="same"), "float32", True, "tanh"),
    "causal1d_dilated": ("conv", shapes.conv_geometry((1, 32, 300), (32, 32, 2), padding="causal", dilation=16), "float32", True, None),
    "dense3d": ("conv", shapes.conv_geometry((1, 8, 6, 10, 10), (16, 8, 3, 3, 3), padding=1), "float32", True, "relu"),
    "dense2d_fp16": ("conv", shapes.conv_geometry((1, 32, 16, 16), (32, 32, 3, 3), padding=1), "float16", True, "relu"),
    "transposed2d_s2": ("conv_transpose", shapes.conv_transpose_geometry((1, 16, 9, 9), (16, 8, 4, 4), stride=2, padding=1), "float32", True, None),
    "transposed1d_grouped": ("conv_transpose", shapes.conv_transpose_geometry((1, 8, 20), (8, 3, 3), stride=3, groups=2), "float32", False, None),
    "transposed3d": ("conv_transpose", shapes.conv_transpose_geometry((1, 4, 4, 5, 5), (4, 4, 2, 2, 2), stride=2), "float32", True, "relu"),
}  # fmt: skip


def _compile(family: str, arch: str):
    op, geom, dtype, bias, activation = FAMILIES[family]

    def computation():
        x = te.placeholder(geom.x_shape, dtype, name="x")
        w = te.placeholder(geom.w_shape, dtype, name="w")
        b = te.placeholder((geom.out_channels,), dtype, name="bias") if bias else None
        out = getattr(ops, op)(x, w, b, geom, activation)
        return [t for t in (x, w, b) if t is not None], [out]

    target = resolve_target({"kind": "cuda", "arch": arch})
    kernel = compile_computation(family, computation, target)
    return kernel, cuda_source(kernel.executable.mod), dtype


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_conv_cuda_source_within_architecture_limits(family, arch):
    _, source, dtype = _compile(family, arch)
    (kernel,) = kernels(source)  # one fused kernel: padding/dilation/epilogue inlined
    assert 16 <= kernel.launch_bounds <= MAX_THREADS_PER_BLOCK
    assert 0 < kernel.shared_bytes <= STATIC_SHARED_BYTES, "input/weight tiles staged in shared"
    assert "__syncthreads()" in kernel.body
    accumulators = [n for n in kernel.local_arrays if n.startswith("conv_local")]
    assert accumulators, "no register tile: the one-thread-per-output fallback"
    assert kernel.local_arrays[accumulators[0]] > 1, "one output per thread"
    assert re.search(r"threadIdx\.x", kernel.body) and re.search(r"blockIdx\.x", kernel.body)
    if dtype == "float16":
        assert "half* __restrict__ x_ptr" in source
        assert re.search(r"float conv_local_ptr\[\d+\]", kernel.body), "float32 accumulators"


@pytest.mark.skipif(nvcc_path() is None, reason="nvcc is not installed on this machine")
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_conv_cuda_source_compiles_with_nvcc_sm90(family):
    _, source, _ = _compile(family, "sm_90")
    (kernel,) = kernels(source)
    fatbin, reports = compile_fatbin(source, "sm_90")
    assert fatbin[:4] == bytes.fromhex("50ed55ba"), "not a CUDA fat binary"
    (report,) = reports
    assert report.kernel == kernel.name
    assert report.registers * kernel.launch_bounds <= REGISTERS_PER_BLOCK
    # the register tile stays in registers (a demoted tile would spill hundreds of bytes)
    assert report.spill_stores <= 16 and report.spill_loads <= 16
    # ptxas counts the arrays' alignment padding on top of the declared sizes
    assert kernel.shared_bytes <= report.shared_bytes <= STATIC_SHARED_BYTES


def test_generic_reduction_and_injective_rules_bind_threads():
    """Functions without a conv block (pool/head-like) go through dlight's GPU rules."""
    x = te.placeholder((2, 64, 7, 7), "float32", name="x")
    h = te.reduce_axis((0, 7), "h")
    w = te.reduce_axis((0, 7), "w")
    pooled = te.compute(
        (2, 64), lambda n, c: te.sum(x[n, c, h, w] / 49.0, axis=[h, w]), name="pool"
    )
    relu = te.compute((2, 64), lambda n, c: te.max(pooled[n, c], 0.0), name="relu")
    kernel = compile_computation(
        "head", lambda: ([x], [relu]), resolve_target({"kind": "cuda", "arch": "sm_90"})
    )
    found = kernels(cuda_source(kernel.executable.mod))
    assert found and all(1 < k.launch_bounds <= MAX_THREADS_PER_BLOCK for k in found)


def test_target_key_names_the_architecture():
    keys = {target_key(resolve_target({"kind": "cuda", "arch": arch})) for arch in ARCHS}
    assert len(keys) == 2 and all(any(arch in k for arch in ARCHS) for k in keys)


def test_api_cuda_target_compiles_then_refuses_to_run_without_a_gpu():
    if tvm.cuda().exist:
        pytest.skip("this machine has a CUDA device: the API runs there (gpu_bench checks it)")
    x = np.ones((1, 4, 8, 8), np.float32)
    w = np.ones((4, 4, 3, 3), np.float32)
    with pytest.raises(RuntimeError, match="no such device"):
        cf.conv(x, w, padding=1, target="cuda")
