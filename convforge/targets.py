"""Compilation targets: the host CPU (with its real ``mcpu``), CUDA, and their cache keys."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import tvm

from convforge.threads import physical_cores  # noqa: F401  (sets TVM_NUM_THREADS)

TargetArg = tvm.target.Target | dict[str, Any] | str | None

#: Per-block limits shared by every CUDA architecture since sm_70 (MetaSchedule's GPU
#: rules need them in the target); a CUDA target without ``arch`` gets sm_90.
CUDA_DEFAULTS = {
    "arch": "sm_90",
    "max_threads_per_block": 1024,
    "max_shared_memory_per_block": 48 * 1024,
    "thread_warp_size": 32,
}


@functools.cache
def host_target() -> tvm.target.Target:
    """LLVM target for this machine: its CPU name (a bare ``llvm`` emits scalar SSE code)."""
    codegen = tvm.target.codegen
    return tvm.target.Target(
        {
            "kind": "llvm",
            "mtriple": codegen.llvm_get_system_triple(),
            "mcpu": codegen.llvm_get_system_cpu(),
            "num-cores": os.cpu_count() or 1,
        }
    )


#: The target kind of each family convforge schedules: CPUs through LLVM, GPUs through CUDA.
FAMILY_KINDS = {"cpu": "llvm", "gpu": "cuda"}


def family(target: tvm.target.Target) -> str:
    """``"cpu"`` for an LLVM target, ``"gpu"`` for a CUDA one; any other kind (ROCm, OpenCL,
    Vulkan, C, ...) is a ValueError naming the target: convforge has no schedules for it, and
    never takes it for one of these."""
    kind = target.kind.name
    for name, family_kind in FAMILY_KINDS.items():
        if kind == family_kind:
            return name
    raise ValueError(
        f"target: kind {kind!r} is not supported (convforge compiles for CPU 'llvm' and GPU "
        f"'cuda' targets only), got target {str(target)!r}"
    )


def is_cpu(target: tvm.target.Target) -> bool:
    """Whether ``target`` is a CPU (LLVM) target; False for every other kind, supported or not."""
    return target.kind.name == FAMILY_KINDS["cpu"]


def is_gpu(target: tvm.target.Target) -> bool:
    """Whether ``target`` is a GPU (CUDA) target; False for every other kind, supported or not."""
    return target.kind.name == FAMILY_KINDS["gpu"]


def resolve_target(target: TargetArg = None) -> tvm.target.Target:
    """``None`` -> host CPU; ``"cuda"`` -> CUDA sm_90 with an LLVM host; dicts as TVM takes them.

    CUDA dicts get :data:`CUDA_DEFAULTS` for what they leave out, and the host CPU as host.
    A target of any kind other than LLVM or CUDA is a ValueError naming it (:func:`family`).
    """
    if target is None or target in ("llvm", "cpu", "host"):
        return host_target()
    if isinstance(target, tvm.target.Target):
        family(target)
        return target
    if isinstance(target, str):
        try:
            target = {"kind": "cuda"} if target == "cuda" else json.loads(target)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"target must be None, 'cpu', 'cuda', a dict or a JSON object, got {target!r}"
            ) from err
    if target.get("kind") == "cuda":
        return tvm.target.Target({**CUDA_DEFAULTS, **target}, host=host_target())
    if target.get("kind") == "llvm" and "mcpu" not in target:
        target = {**target, "mcpu": host_target().attrs["mcpu"]}
    resolved = tvm.target.Target(target)
    family(resolved)
    return resolved


@functools.lru_cache(maxsize=256)
def target_key(target: tvm.target.Target) -> str:
    """A stable string naming the target exactly (kind, cpu/arch, features): cache/DB key."""
    return json.dumps(target.export(), sort_keys=True, default=str)


def vector_lanes(target: tvm.target.Target, dtype: str) -> int:
    """Lanes of ``dtype`` in one vector register of ``target`` (1 for non-CPU targets)."""
    if not is_cpu(target):
        return 1
    return max(1, vector_bits(target) // tvm.DataType(dtype).bits)


def vector_bits(target: tvm.target.Target) -> int:
    """Vector register width in bits (LLVM's own query answers 512 for every x86 CPU)."""
    has = tvm.target.codegen.llvm_cpu_has_features
    if "x86" not in str(target.attrs.get("mtriple", "x86_64")):
        return 128  # AArch64 NEON / others
    if has("avx512f", target):
        return 512
    return 256 if has("avx2", target) or has("avx", target) else 128


def vector_registers(target: tvm.target.Target) -> int:
    """Architectural vector registers: 32 with AVX-512 (zmm) or on AArch64 (NEON q), else 16."""
    if not is_cpu(target):
        return 0
    if "x86" not in str(target.attrs.get("mtriple", "x86_64")):
        return 32
    return 32 if tvm.target.codegen.llvm_cpu_has_features("avx512f", target) else 16
