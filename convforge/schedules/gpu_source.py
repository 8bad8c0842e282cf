"""Inspecting generated CUDA without a GPU: kernel resources from the source, nvcc builds.

TVM 0.27's wheel has no CUDA runtime: ``tvm.compile`` for a CUDA target yields a module that
holds the CUDA C source (``inspect_source("cuda")``) but cannot launch. This module reads
that source (kernels, launch bounds, static shared memory, per-thread local arrays) and,
where ``nvcc`` exists, compiles it to a fat binary for one architecture (SASS for the
architecture plus its PTX) and reports what ptxas says about registers and spills.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tvm

from convforge.targets import CUDA_LIMITS

#: Static shared memory a block may declare (48 KiB on every architecture), threads per
#: block and 32-bit registers per block (sm_50 .. sm_90 alike): the CUDA profile's limits.
STATIC_SHARED_BYTES = CUDA_LIMITS.static_shared_bytes
MAX_THREADS_PER_BLOCK = CUDA_LIMITS.max_threads_per_block
REGISTERS_PER_BLOCK = CUDA_LIMITS.registers_per_block

_C_BYTES = {"float": 4, "half": 2, "double": 8, "int": 4, "int8_t": 1, "uint8_t": 1, "bool": 1}
_KERNEL = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\((\d+)\) )?(\w+)\(')
_ARRAY = re.compile(r"^\s*(__shared__ )?(?:alignas\(\d+\) )?(\w+) (\w+)\[(\d+)\];", re.M)


@dataclass(frozen=True)
class CudaKernel:
    """One ``__global__`` function of a generated CUDA source."""

    name: str
    launch_bounds: int
    shared_bytes: int
    local_arrays: dict[str, int]  # per-thread array name -> elements
    body: str


def cuda_source(module: tvm.runtime.Module) -> str:
    """The CUDA C source of a module compiled for a CUDA target (its first CUDA import)."""
    for imported in module.imports:
        if imported.kind == "cuda":
            return imported.inspect_source("cuda")
    raise ValueError(f"module has no CUDA import (imports: {[m.kind for m in module.imports]})")


def kernels(source: str) -> list[CudaKernel]:
    """Every kernel defined (not just declared) in ``source``, with its static resources."""
    found = []
    for match in _KERNEL.finditer(source):
        end = source.index(")", match.end())
        if source[end + 1 : end + 3].strip() != "{":
            continue  # a declaration
        body_start = source.index("{", end)
        depth, i = 0, body_start
        while True:
            depth += {"{": 1, "}": -1}.get(source[i], 0)
            if depth == 0:
                break
            i += 1
        body = source[body_start : i + 1]
        shared, local = 0, {}
        for is_shared, ctype, name, count in _ARRAY.findall(body):
            if is_shared:
                shared += _C_BYTES.get(ctype, 4) * int(count)
            else:
                local[name] = int(count)
        # TVM leaves out the bounds of single-thread kernels
        threads = int(match.group(1) or 1)
        found.append(CudaKernel(match.group(2), threads, shared, local, body))
    return found


@dataclass(frozen=True)
class PtxasReport:
    """What ptxas printed for one kernel (``-Xptxas -v``)."""

    kernel: str
    registers: int
    shared_bytes: int
    spill_stores: int
    spill_loads: int


def nvcc_path() -> str | None:
    """``nvcc`` on PATH or under ``$CUDA_HOME/bin``, else None."""
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidate = Path(home) / "bin" / "nvcc"
    return str(candidate) if candidate.exists() else None


def compile_fatbin(source: str, arch: str) -> tuple[bytes, list[PtxasReport]]:
    """Compile ``source`` with nvcc into a fat binary holding ``arch`` SASS and its PTX.

    ``arch`` is ``sm_XX``. Raises RuntimeError with nvcc's output when compilation fails.
    """
    nvcc = nvcc_path()
    if nvcc is None:
        raise RuntimeError("nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
    if not re.fullmatch(r"sm_\d+a?", arch):
        raise ValueError(f"arch must look like 'sm_90', got {arch!r}")
    compute = arch.replace("sm_", "compute_")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.fatbin"
        src.write_text(source)
        result = subprocess.run(
            [
                nvcc, "--fatbin", "-O3", "-Xptxas", "-v",
                f"--generate-code=arch={compute},code=[{arch},{compute}]",
                str(src), "-o", str(out),
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"nvcc failed for {arch}:\n{result.stderr[-4000:]}")
        return out.read_bytes(), parse_ptxas(result.stderr + result.stdout, arch)


def launch_config(source: str, scheduled: tvm.IRModule) -> dict:
    """How to launch the single kernel of ``source`` by hand (CUDA driver API).

    Returns ``{"kernel", "params", "grid", "block"}``: ``params`` are the buffer names in
    the kernel's argument order (all pointers), ``grid``/``block`` the (x, y, z) extents of
    the thread bindings of ``scheduled`` (the module before lowering). ValueError when the
    source holds several kernels or non-pointer arguments.
    """
    found = kernels(source)
    if len(found) != 1:
        raise ValueError(f"expected one kernel, found {[k.name for k in found]}")
    signature = re.search(rf"void (?:__launch_bounds__\(\d+\) )?{found[0].name}\(([^)]*)\)", source)
    params = []
    for arg in signature.group(1).split(","):
        match = re.fullmatch(r"\s*[\w ]+\* __restrict__ (\w+)_ptr\s*", arg)
        if match is None:
            raise ValueError(f"kernel argument {arg.strip()!r} is not a buffer pointer")
        params.append(match.group(1))
    extents: dict[str, int] = {}
    for extent, tag in _THREAD_BINDING.findall(scheduled.script()):
        extents[tag] = max(extents.get(tag, 1), int(extent))
    dims = {
        kind: [extents.get(f"{kind}.{axis}", 1) for axis in "xyz"]
        for kind in ("blockIdx", "threadIdx")
    }
    if math.prod(dims["threadIdx"]) != found[0].launch_bounds:
        raise ValueError(f"thread extents {dims['threadIdx']} disagree with the launch bounds")
    return {
        "kernel": found[0].name,
        "params": params,
        "grid": dims["blockIdx"],
        "block": dims["threadIdx"],
    }


_THREAD_BINDING = re.compile(r'T\.thread_binding\((?:0, )?(\d+), thread="(\w+\.[xyz])"\)')
_PTXAS_FUNC = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas(text: str, arch: str) -> list[PtxasReport]:
    """Per-kernel registers, shared memory and spills for ``arch`` from ptxas ``-v`` output."""
    reports, current, spills = [], None, (0, 0)
    for line in text.splitlines():
        if m := _PTXAS_FUNC.search(line):
            current = m.group(1) if m.group(2) == arch else None
        elif current and (m := _PTXAS_SPILL.search(line)):
            spills = (int(m.group(1)), int(m.group(2)))
        elif current and (m := _PTXAS_USED.search(line)):
            smem = int(m.group(2) or 0)
            reports.append(PtxasReport(current, int(m.group(1)), smem, *spills))
            current, spills = None, (0, 0)
    return reports
