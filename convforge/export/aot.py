"""Ahead-of-time builds: compile operators here, run them where only TVM's runtime is.

TVM 0.27's wheel emits CUDA C but carries no CUDA runtime or compiler, so a CUDA build on
any machine goes: TE -> GPU schedule -> ``tvm.compile`` (host code by LLVM, kernels as CUDA
source) -> ``export_library`` (one shared library per operator) and, beside it, ``nvcc``
compiles the same CUDA source to a fat binary (``arch`` SASS + PTX). The exported library
stores the kernels as source; on the GPU machine TVM's CUDA runtime asks the global
function ``tvm_callback_cuda_compile`` to turn that source into a binary when it loads the
library, and the runner answers with the prebuilt fat binary whose source hash matches
(see ``benchmarks/gpu_bench.py``). No compiler is needed there.

:func:`export_suite` writes ``<name>.so`` and ``<name>.fatbin`` per workload and a
``manifest.json`` naming inputs, shapes, dtypes and the parameters of each operator.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tvm

from convforge.build import Kernel, compile_computation, schedule_for
from convforge.filemode import atomic_write
from convforge.schedules.gpu_source import compile_fatbin, cuda_source, launch_config, nvcc_path
from convforge.targets import TargetArg, is_gpu, resolve_target
from convforge.workloads import GPU, OPS, Workload, select

#: Operators an AOT workload may name (:data:`convforge.workloads.OPS`): convforge API
#: functions, and ``classifier_head`` (global average pool, dense, softmax:
#: ``grid_pool_head`` with a 1x1 grid).
AOT_OPS = tuple(OPS)

#: An ahead-of-time workload is a registry workload (:class:`convforge.workloads.Workload`).
AotWorkload = Workload

#: The GPU suite: the registry's ``gpu`` set (the benchmark suite's convolutions plus a 3-D
#: convolution, a grouped one and float16 variants).
GPU_SUITE: tuple[Workload, ...] = select(GPU)


def compile_workload(workload: AotWorkload, target: TargetArg = "cuda") -> Kernel:
    """Compile one workload for ``target`` with the default schedule of that target."""
    resolved = resolve_target(target)
    return compile_computation(workload.name, workload.computation(resolved), resolved)


def source_hash(source: str) -> str:
    """The key under which a kernel source's prebuilt binary is found (sha256 of the text)."""
    return hashlib.sha256(source.encode()).hexdigest()


def portable_target(target: TargetArg) -> tvm.target.Target:
    """``target`` with a generic x86-64 host: the GPU machine's CPU is not this one."""
    resolved = resolve_target(target)
    if not is_gpu(resolved):
        return resolved
    return tvm.target.Target(
        {"kind": "cuda", "arch": str(resolved.attrs["arch"])}, host={"kind": "llvm"}
    )


def _launch_or_none(source: str, scheduled: tvm.IRModule) -> dict | None:
    """The launch of a single-kernel source; None for several kernels (TVM's runtime runs
    those)."""
    try:
        return launch_config(source, scheduled)
    except ValueError:
        return None


def _geometry_record(workload: AotWorkload) -> dict | None:
    """The convolution's sizes as plain JSON (what a runner needs to call PyTorch)."""
    if workload.op == "classifier_head":
        return None
    geom = workload.geometry()
    return {
        "stride": list(geom.stride),
        "dilation": list(geom.dilation),
        "groups": geom.groups,
        "padding": [list(pair) for pair in geom.padding],
        "output_padding": list(getattr(geom, "output_padding", (0,) * geom.ndim)),
    }


def export_workload(workload: AotWorkload, out_dir: Path, target: TargetArg = "cuda") -> dict:
    """Compile and export one workload into ``out_dir``; returns its manifest entry.

    CUDA targets also get ``<name>.fatbin`` (nvcc must be installed; RuntimeError if not).
    """
    resolved = portable_target(target)
    scheduled: list[tvm.IRModule] = []

    def schedule(func, tgt):
        scheduled.append(schedule_for(func, tgt))
        return scheduled[-1]

    kernel = compile_computation(workload.name, workload.computation(resolved), resolved, schedule)
    library = out_dir / f"{workload.name}.so"
    atomic_write(library, kernel.executable.export_library, executable=True, suffix=".so")
    entry: dict[str, Any] = {
        "name": workload.name,
        "op": workload.op,
        "description": workload.description,
        "dtype": workload.dtype,
        "inputs": [{"name": k, "shape": list(v)} for k, v in workload.shapes.items()],
        "params": dict(workload.params),
        "output_shape": list(kernel.output_shapes[0]),
        "output_dtype": kernel.output_dtypes[0],
        "macs": workload.macs,
        "geometry": _geometry_record(workload),
        "device": resolved.kind.name,
        "library": library.name,
    }
    if is_gpu(resolved):
        if nvcc_path() is None:
            raise RuntimeError("nvcc is needed to prebuild the CUDA kernels; none found")
        source = cuda_source(kernel.executable.mod)
        arch = str(resolved.attrs["arch"])
        fatbin, reports = compile_fatbin(source, arch)
        binary = out_dir / f"{workload.name}.fatbin"
        atomic_write(binary, fatbin)
        entry.update(
            arch=arch,
            fatbin=binary.name,
            source_sha256=source_hash(source),
            launch=_launch_or_none(source, scheduled[0]),
            ptxas=[vars(r) for r in reports],
        )
    return entry


def export_suite(
    out_dir: str | os.PathLike,
    target: TargetArg = "cuda",
    workloads: Sequence[AotWorkload] = GPU_SUITE,
) -> dict:
    """Export every workload to ``out_dir`` and write ``manifest.json`` (atomically).

    Returns the manifest: ``{"target": ..., "workloads": [entry, ...]}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [w.name for w in workloads]
    if len(set(names)) != len(names):
        raise ValueError(f"workload names must be unique, got {names}")
    resolved = portable_target(target)
    manifest = {
        "target": str(resolved),
        "workloads": [export_workload(w, out, resolved) for w in workloads],
    }
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=1))
    return manifest
