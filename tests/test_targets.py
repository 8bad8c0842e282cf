"""Target families (convforge.targets.family / is_cpu / is_gpu): LLVM is the CPU, CUDA the
GPU, and any other kind is refused by name before anything is compiled, never taken for CUDA."""

from __future__ import annotations

import dataclasses
import os
import platform
import re
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import te

import convforge as cf
from convforge.build import prim_func, schedule_for
from convforge.targets import (
    family,
    host_target,
    is_cpu,
    is_gpu,
    profile,
    resolve_target,
    vector_bits,
    vector_lanes,
    vector_registers,
)

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


# --- target profiles ------------------------------------------------------------------

AVX512_TARGET = {"kind": "llvm", "mcpu": "skylake-avx512", "mtriple": "x86_64-linux-gnu"}
NEON_TARGET = {"kind": "llvm", "mcpu": "neoverse-n1", "mtriple": "aarch64-linux-gnu"}


def _host_flags() -> set[str]:
    """The host CPU's ISA flags as Linux reports them (an oracle independent of LLVM)."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    return set()


def test_the_host_gets_the_profile_of_its_family():
    """Checked against /proc/cpuinfo's flags, not against LLVM's feature query."""
    host = profile(host_target())
    machine = platform.machine()
    flags = _host_flags()
    if machine in ("aarch64", "arm64"):
        expected = "aarch64-neon"
    elif machine in ("x86_64", "AMD64"):
        expected = (
            "x86-avx512"
            if "avx512f" in flags
            else "x86-avx2"
            if flags & {"avx", "avx2"}
            else "x86-sse"
        )
    else:
        expected = "llvm-generic"
    assert host.name == expected
    assert host.kind == "llvm" and host.threads >= 1


def test_host_cache_sizes_come_from_sysfs_where_readable():
    host = profile(host_target())
    assert 0 < host.l1d_bytes < host.l2_bytes
    assert host.l3_bytes > 0
    index = "/sys/devices/system/cpu/cpu0/cache/index0"
    if os.path.exists(index):
        with open(f"{index}/level") as level, open(f"{index}/size") as size:
            if level.read().strip() == "1":
                assert host.l1d_bytes == int(size.read().strip().rstrip("K")) * 1024


@pytest.mark.parametrize(
    "target, name, bits, registers",
    [
        (AVX512_TARGET, "x86-avx512", 512, 32),
        ({"kind": "llvm", "mcpu": "haswell", "mtriple": "x86_64-linux-gnu"}, "x86-avx2", 256, 16),
        ({"kind": "llvm", "mcpu": "x86-64", "mtriple": "x86_64-linux-gnu"}, "x86-sse", 128, 16),
        (NEON_TARGET, "aarch64-neon", 128, 32),
        ({"kind": "llvm", "mcpu": "generic-rv64", "mtriple": "riscv64-linux-gnu"}, "llvm-generic", 128, 16),
    ],
)  # fmt: skip
def test_cpu_targets_get_their_family_profile(target, name, bits, registers):
    resolved = resolve_target(target)
    p = profile(resolved)
    assert (p.name, p.vector_bits, p.vector_registers) == (name, bits, registers)
    assert (vector_bits(resolved), vector_registers(resolved)) == (bits, registers)
    assert vector_lanes(resolved, "float32") == bits // 32
    assert vector_lanes(resolved, "float16") == bits // 16
    assert min(p.l1d_bytes, p.l2_bytes, p.l3_bytes) > 0 and p.cuda is None
    assert 0 < p.accumulator_budget <= p.direct_accumulators < p.vector_registers
    assert p.direct_accumulators == (24 if bits == 512 else 12)
    # stride-phase Winograd from 7x7 only on AVX2 (thresholds.md#stride-phase-winograd)
    assert p.stride_phase_min_kernel == (7 if name == "x86-avx2" else 0)


@pytest.mark.parametrize("arch, sms", [(None, 132), ("sm_80", 108), ("sm_61", 100)])
def test_cuda_targets_get_the_cuda_profile(arch, sms):
    target = resolve_target({"kind": "cuda", **({"arch": arch} if arch else {})})
    p = profile(target)
    assert (p.name, p.kind, p.cuda.multiprocessors) == ("cuda", "cuda", sms)
    limits = (p.cuda.max_threads_per_block, p.cuda.warp_size, p.cuda.static_shared_bytes)
    assert limits == (1024, 32, 48 * 1024)
    assert (p.vector_bits, vector_lanes(target, "float32")) == (0, 1)


def test_unsupported_kinds_have_no_profile():
    with pytest.raises(ValueError, match="kind 'c' is not supported"):
        profile(tvm.target.Target("c"))


def test_a_target_naming_its_cores_sets_the_profile_threads():
    target = resolve_target({**AVX512_TARGET, "num-cores": 6})
    assert profile(target).threads == 6


def test_profiles_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile(host_target()).vector_bits = 1  # type: ignore[misc]


PACKAGE = Path(__file__).resolve().parent.parent / "convforge"
EVIDENCE = PACKAGE.parent / "benchmarks" / "results" / "thresholds.md"


def test_evidence_links_name_sections_of_thresholds_md():
    """Every ``thresholds.md#anchor`` written in the package is a section of the file."""
    sections = set(re.findall(r"^## (\S+)$", EVIDENCE.read_text(), re.M))
    linked = {
        (path.name, anchor)
        for path in PACKAGE.rglob("*.py")
        for anchor in re.findall(r"thresholds\.md#([a-z0-9-]+)", path.read_text())
    }
    assert linked, "no evidence links found"
    assert {(name, a) for name, a in linked if a not in sections} == set()


def test_only_targets_py_queries_isa_features_or_compares_target_kinds():
    """ISA feature queries and target-kind compares live in targets.py (the profiles)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "targets.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            feature_query = "llvm_cpu_has_features" in line
            kind_compare = re.search(r"(?<!inst)\.kind\.name\s*(==|!=|\bin\b)", line)
            if feature_query or kind_compare:
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offenders == []
