"""CUDA code generation checked without a GPU: every operator family, sm_80 and sm_90.

Oracles: the CUDA architecture limits (threads per block, static shared memory, registers
per block) and nvcc/ptxas, which must accept the generated source. The numeric check of
the kernels against numpy runs on a GPU machine (benchmarks/gpu_bench.py).
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tvm
from tvm import te

import convforge as cf
from benchmarks.gpu_package import numpy_reference, package
from convforge import ops, shapes
from convforge.build import compile_computation, recording_kernels
from convforge.export.aot import (
    AotWorkload,
    compile_workload,
    export_suite,
    portable_target,
    source_hash,
)
from convforge.schedules.gpu import SHARED_BUDGET
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


#: Families whose weight tiles are provably 16-byte aligned rows (see _weight_vector).
VECTOR_WEIGHT_LOADS = {"dense2d_3x3", "dense2d_1x1_no_epilogue", "dilated2d", "dense3d"}


def _compile(family: str, arch: str):
    op, geom, dtype, bias, activation = FAMILIES[family]

    def computation():
        x = te.placeholder(geom.x_shape, dtype, name="x")
        w = te.placeholder(geom.w_shape, dtype, name="w")
        b = te.placeholder((geom.out_channels,), dtype, name="bias") if bias else None
        out = getattr(ops, op)(x, w, geom, ops.Epilogue(b, activation))
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
    assert kernel.shared_bytes <= SHARED_BUDGET, "the tile policy's estimate undercounts"
    assert "__syncthreads()" in kernel.body
    accumulators = [n for n in kernel.local_arrays if n.startswith("conv_local")]
    assert accumulators, "no register tile: the one-thread-per-output fallback"
    assert kernel.local_arrays[accumulators[0]] > 1, "one output per thread"
    assert re.search(r"threadIdx\.x", kernel.body) and re.search(r"blockIdx\.x", kernel.body)
    if family in VECTOR_WEIGHT_LOADS:  # aligned float4 loads of the weight tile
        assert "*(float4*)(w_ptr + " in kernel.body
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


# --- ahead-of-time export and the GPU package, exercised on the CPU ---------------------

SMALL_WORKLOADS = [
    AotWorkload("grouped_asym_silu", "conv", {"x": (1, 8, 10, 10), "w": (6, 4, 3, 3), "bias": (6,)}, {"padding": ((1, 0), (2, 1)), "groups": 2, "stride": 2, "activation": "silu"}),
    AotWorkload("dilated3d", "conv", {"x": (2, 3, 5, 6, 7), "w": (4, 3, 2, 3, 2)}, {"dilation": (2, 1, 3), "padding": 1}),
    AotWorkload("transposed_outpad", "conv_transpose", {"x": (2, 4, 7), "w": (4, 3, 3)}, {"stride": 2, "padding": 1, "output_padding": 1}),
    AotWorkload("transposed_grouped_dilated", "conv_transpose", {"x": (1, 4, 5, 4), "w": (4, 2, 3, 2), "bias": (4,)}, {"stride": (2, 3), "dilation": 2, "groups": 2, "padding": ((2, 0), (1, 1))}),
    AotWorkload("resize2_conv", "resize_conv", {"x": (1, 4, 5, 6), "w": (3, 4, 3, 3), "bias": (3,)}, {"scale": 2, "padding": 1, "activation": "relu"}),
    AotWorkload("classifier_head", "classifier_head", {"x": (2, 8, 3, 4), "w": (5, 8), "bias": (5,)}),
    AotWorkload("causal_fp16", "causal_conv1d", {"x": (1, 4, 20), "w": (4, 4, 2), "bias": (4,)}, {"dilation": 4}, dtype="float16"),
]  # fmt: skip


@pytest.mark.parametrize("workload", SMALL_WORKLOADS, ids=lambda w: w.name)
def test_package_numpy_oracle_agrees_with_convforge_cpu(workload):
    """The expected values shipped to the GPU machine come from a numpy oracle that agrees
    with convforge's CPU kernels (themselves checked against onnxruntime elsewhere)."""
    arrays = workload.arrays(seed=3)
    kernel = compile_workload(workload, "llvm")
    got = kernel(*[arrays[name] for name in workload.shapes])
    expected = numpy_reference(workload, arrays)
    tolerance = 1e-2 if workload.dtype == "float16" else 1e-5
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=tolerance, atol=tolerance)


def test_runtime_only_package_checks_cpu_exports(tmp_path):
    """gpu_package + gpu_bench end to end, with a CPU target: runtime-only TVM in a clean
    subprocess loads every exported library and agrees with the numpy values."""
    folder = tmp_path / "package"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    summary = package(folder, target="llvm", python_version=version, workloads=SMALL_WORKLOADS)
    assert summary["workloads"] == len(SMALL_WORKLOADS)
    assert not list((folder / "site" / "tvm").rglob("libtvm_compiler*"))
    manifest = json.loads((folder / "libs" / "manifest.json").read_text())
    for entry in manifest["workloads"]:
        for spec in entry["inputs"]:
            stored = np.load(folder / "data" / f"{entry['name']}.{spec['name']}.npy")
            assert list(stored.shape) == spec["shape"] and str(stored.dtype) == entry["dtype"]
        samples = np.load(folder / "data" / f"{entry['name']}.expected.npz")
        assert samples["indices"].max() < np.prod(entry["output_shape"])
    results = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, str(folder / "gpu_bench.py"), str(results), "--device", "cpu"],
        cwd=tmp_path, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((results / "gpu_bench.json").read_text())
    assert report["tvm"]["package"] == str(folder / "site" / "tvm")
    assert report["tvm"]["libraries"] == ["tvm_runtime"]  # no compiler library loaded
    assert [r["name"] for r in report["results"]] == [w.name for w in SMALL_WORKLOADS]
    assert all(r["ok"] and r["convforge_ms"] > 0 for r in report["results"])


@pytest.mark.skipif(nvcc_path() is None, reason="nvcc is not installed on this machine")
def test_cuda_export_ships_kernel_source_and_matching_fatbin(tmp_path):
    """The exported CUDA library embeds the kernel source whose hash keys the fat binary
    that gpu_bench hands to TVM's CUDA runtime on the GPU machine."""
    manifest = export_suite(tmp_path, "cuda", SMALL_WORKLOADS[:2])
    assert '"arch":"sm_90"' in manifest["target"].replace(" ", "")
    for workload, entry in zip(SMALL_WORKLOADS, manifest["workloads"]):
        source = cuda_source(compile_workload(workload, portable_target("cuda")).executable.mod)
        assert entry["source_sha256"] == source_hash(source)
        assert source.encode() in (tmp_path / entry["library"]).read_bytes()
        assert (tmp_path / entry["fatbin"]).read_bytes()[:4] == bytes.fromhex("50ed55ba")
        assert entry["output_shape"] == list(workload.geometry().out_shape)


@pytest.mark.slow
def test_meta_schedule_cuda_candidates_build_for_sm90():
    """Two MetaSchedule candidates of the CUDA search space (no GPU: built, not run) compile
    to CUDA within the architecture's limits: tuning needs only a runner on a GPU machine."""
    from tvm.s_tir import meta_schedule as ms

    _, geom, dtype, *_ = FAMILIES["dense2d_3x3"]
    x = te.placeholder(geom.x_shape, dtype, name="x")
    w = te.placeholder(geom.w_shape, dtype, name="w")
    func = te.create_prim_func([x, w, ops.conv(x, w, geom, ops.Epilogue(activation="relu"))])
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    target = resolve_target({"kind": "cuda", "arch": "sm_90"})
    context = ms.TuneContext(
        mod=mod, target=target, space_generator="post-order-apply",
        search_strategy=ms.search_strategy.ReplayTrace(), task_name="conv", num_threads=1,
    )  # fmt: skip
    strategy = context.search_strategy
    strategy.pre_tuning(2, 2, context.space_generator.generate_design_space(mod))
    candidates = strategy.generate_measure_candidates()
    strategy.post_tuning()
    assert candidates and len(candidates) <= 2
    for candidate in candidates:
        executable = tvm.compile(candidate.sch.mod, target=target)
        for kernel in kernels(cuda_source(executable.mod)):
            assert kernel.launch_bounds <= MAX_THREADS_PER_BLOCK
            assert kernel.shared_bytes <= STATIC_SHARED_BYTES


class _HostDriver:
    """Stands in for CudaDriver: 'device memory' is host arrays; launching evaluates the
    numpy oracle on the arrays bound to the kernel's arguments, by name."""

    def __init__(self, workload):
        self.workload, self.memory, self.launches = workload, {}, []

    def function(self, fatbin, kernel):
        assert fatbin[:4] == bytes.fromhex("50ed55ba")
        return kernel

    def upload(self, array):
        self.memory[len(self.memory)] = array.copy()
        return len(self.memory) - 1

    def download(self, pointer, like):
        assert self.memory[pointer].shape == like.shape
        return self.memory[pointer]

    def launch(self, function, grid, block, pointers):
        self.launches.append((function, grid, block))
        params = self.manifest_entry["launch"]["params"]
        named = {name: self.memory[p] for name, p in zip(params, pointers)}
        (out_name,) = [n for n in params if n not in self.workload.shapes]
        inputs = {k: named[k] for k in self.workload.shapes}
        named[out_name][...] = numpy_reference(self.workload, inputs)

    def synchronize(self):
        pass

    def free(self, pointer):
        del self.memory[pointer]


@pytest.mark.skipif(nvcc_path() is None, reason="nvcc is not installed on this machine")
def test_driver_runner_binds_arguments_from_the_manifest(tmp_path):
    """gpu_bench's CUDA-driver runner passes each stored array to the kernel argument of
    the same name and reads the output back (a host stand-in replaces libcuda)."""
    from benchmarks.gpu_bench import check, run_with_driver

    workload = SMALL_WORKLOADS[0]
    (entry,) = export_suite(tmp_path, "cuda", [workload])["workloads"]
    assert sorted(entry["launch"]["params"]) == sorted([*workload.shapes, "conv_epilogue"])
    driver = _HostDriver(workload)
    driver.manifest_entry = entry
    arrays = workload.arrays(seed=5)
    y, seconds = run_with_driver(driver, entry, tmp_path, arrays, timed=False)
    assert seconds is None and driver.launches and not driver.memory
    expected = numpy_reference(workload, arrays).ravel()
    ok, _ = check(y, {"indices": np.arange(expected.size), "values": expected}, "float32")
    assert ok


# --- every public operator through the numpy API with target="cuda" ---------------------

_RNG = np.random.default_rng(0)


def _a(*shape):
    return _RNG.standard_normal(shape).astype(np.float32)


API_CALLS = {
    "resize_linear": lambda t: cf.resize(_a(1, 4, 6, 6), 2, mode="linear", target=t),
    "resize_cubic": lambda t: cf.resize(_a(1, 4, 6, 6), 1.5, mode="cubic", coordinate_mode="half_pixel", target=t),
    "resize_conv": lambda t: cf.resize_conv(_a(1, 16, 8, 8), _a(16, 16, 3, 3), _a(16), scale=2, padding=1, target=t),
    "resize_conv_linear": lambda t: cf.resize_conv(_a(1, 16, 8, 8), _a(16, 16, 3, 3), _a(16), scale=2, mode="linear", padding=1, target=t),
    "max_pool": lambda t: cf.max_pool(_a(1, 8, 12, 12), 3, stride=2, padding=1, target=t),
    "avg_pool_1d": lambda t: cf.avg_pool(_a(1, 8, 30), 3, stride=2, padding=1, target=t),
    "max_pool_3d": lambda t: cf.max_pool(_a(1, 4, 6, 6, 6), 2, stride=2, target=t),
    "adaptive_avg_pool": lambda t: cf.adaptive_avg_pool(_a(1, 8, 10, 10), 3, target=t),
    "adaptive_max_pool": lambda t: cf.adaptive_max_pool(_a(1, 8, 10, 10), (2, 3), target=t),
    "global_avg_pool": lambda t: cf.global_avg_pool(_a(2, 64, 7, 7), target=t),
    "global_max_pool": lambda t: cf.global_max_pool(_a(2, 64, 7, 7), target=t),
    "dense": lambda t: cf.dense(_a(2, 64), _a(10, 64), _a(10), target=t),
    "softmax": lambda t: cf.softmax(_a(2, 100), target=t),
    "flatten_dense_head": lambda t: cf.flatten_dense_head(_a(1, 8, 3, 3), _a(10, 72), _a(10), target=t),
    "grid_pool_head": lambda t: cf.grid_pool_head(_a(1, 8, 9, 9), _a(10, 72), _a(10), grid=3, target=t),
    "fully_conv_head": lambda t: cf.fully_conv_head(_a(1, 16, 7, 7), _a(10, 16, 1, 1), _a(10), target=t),
    "conv": lambda t: cf.conv(_a(1, 8, 9, 9), _a(8, 8, 3, 3), padding=1, target=t),
    "conv_transpose": lambda t: cf.conv_transpose(_a(1, 8, 5, 5), _a(8, 4, 3, 3), target=t),
    "conv_transpose_subpixel_2d": lambda t: cf.conv_transpose(_a(1, 16, 9, 9), _a(16, 8, 4, 4), _a(8), stride=2, padding=1, target=t),
    "conv_transpose_subpixel_1d_grouped": lambda t: cf.conv_transpose(_a(1, 8, 20), _a(8, 3, 3), stride=3, groups=2, target=t),
    "conv_transpose_subpixel_3d_relu": lambda t: cf.conv_transpose(_a(1, 4, 4, 5, 5), _a(4, 4, 2, 2, 2), stride=2, activation="relu", target=t),
    "conv_transpose_subpixel_empty_phases": lambda t: cf.conv_transpose(_a(1, 4, 5, 5), _a(4, 4, 2, 2), stride=3, target=t),
    "causal_conv1d": lambda t: cf.causal_conv1d(_a(1, 8, 40), _a(8, 8, 3), dilation=2, target=t),
    "causal_conv_with_state": lambda t: cf.causal_conv_with_state(_a(1, 8, 16), _a(8, 1, 3), _a(8), _a(1, 8, 4), dilation=2, target=t),
}  # fmt: skip

#: Operators whose convolutions must come from the implicit-GEMM rule: how many kernels
#: (sub-pixel transposed convolutions: one per phase that has kernel taps). Nearest
#: integer resize_conv takes the per-phase folded-kernel form (block ``phase_conv``),
#: which the rule does not cover yet: dlight schedules it.
CONV_RULE = {
    "resize_conv_linear": 1, "fully_conv_head": 1, "conv": 1, "conv_transpose": 1, "causal_conv1d": 1,
    "causal_conv_with_state": 1,
    "conv_transpose_subpixel_2d": 4, "conv_transpose_subpixel_1d_grouped": 3,
    "conv_transpose_subpixel_3d_relu": 8, "conv_transpose_subpixel_empty_phases": 4,
}  # fmt: skip
#: Checked with nvcc too (one per kind of rule; the conv families are compiled above).
NVCC_CALLS = (
    "resize_conv", "fully_conv_head", "global_avg_pool", "softmax", "max_pool",
    "conv_transpose_subpixel_2d",
)  # fmt: skip


def _cuda_kernel_of(call, arch: str = "sm_90"):
    with recording_kernels() as record, pytest.raises(RuntimeError, match="no such device"):
        call({"kind": "cuda", "arch": arch})
    assert len(record) == 1
    return record[0]


@pytest.mark.parametrize("name", sorted(API_CALLS))
def test_api_operator_compiles_for_cuda_within_limits(name):
    kernel = _cuda_kernel_of(API_CALLS[name])
    found = kernels(cuda_source(kernel.executable.mod))
    assert found
    for k in found:
        assert 1 <= k.launch_bounds <= MAX_THREADS_PER_BLOCK
        assert k.shared_bytes <= STATIC_SHARED_BYTES
        assert "threadIdx.x" in k.body or k.launch_bounds == 1  # a scalar result
    conv_kernels = [k for k in found if "conv_local_ptr" in k.local_arrays]
    assert len(conv_kernels) == CONV_RULE.get(name, 0)
    for k in conv_kernels:
        assert k.shared_bytes > 0 and k.local_arrays["conv_local_ptr"] > 1


@pytest.mark.skipif(nvcc_path() is None, reason="nvcc is not installed on this machine")
@pytest.mark.parametrize("name", NVCC_CALLS)
def test_api_operator_cuda_source_compiles_with_nvcc(name):
    source = cuda_source(_cuda_kernel_of(API_CALLS[name]).executable.mod)
    fatbin, reports = compile_fatbin(source, "sm_90")
    assert fatbin[:4] == bytes.fromhex("50ed55ba")
    assert {r.kernel for r in reports} == {k.name for k in kernels(source)}


@pytest.mark.skipif(nvcc_path() is None, reason="nvcc is not installed on this machine")
def test_cli_aot_builds_for_the_requested_architecture(tmp_path, capsys):
    from convforge.cli import main

    assert main(["aot", str(tmp_path), "--arch", "sm_80", "--only", "depthwise3x3_128_56"]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (entry,) = manifest["workloads"]
    assert entry["arch"] == "sm_80" and (tmp_path / entry["fatbin"]).exists()
    assert main(["aot", str(tmp_path), "--arch", "90"]) == 2
    assert "--arch must look like sm_90" in capsys.readouterr().err
    assert main(["aot", str(tmp_path), "--only", "nonexistent"]) == 2
