"""Compilation targets: the host CPU (with its real ``mcpu``), CUDA, and their cache keys."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Union

from convforge.threads import physical_cores  # (importing it sets TVM_NUM_THREADS)
from convforge.tvm_import import tvm

TargetArg = Union["tvm.target.Target", "HostTarget", dict[str, Any], str, None]

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
    target = tvm.target.Target(
        {
            "kind": "llvm",
            "mtriple": codegen.llvm_get_system_triple(),
            "mcpu": codegen.llvm_get_system_cpu(),
            "num-cores": os.cpu_count() or 1,
        }
    )
    _remember_host(target)
    return target


#: The ISA features a :class:`HostTarget` records (what the profiles and the int8 plan ask).
HOST_FEATURES = ("avx", "avx2", "fma", "avx512f", "avx512vnni", "avx512vbmi", "avxvnni")


class HostTarget:
    """This machine's LLVM target (:func:`host_target`) as TVM described it the last time it
    was computed here, read without importing TVM: the numpy API plans a call and finds its
    cached kernel on it (:mod:`convforge.build`) in a process that has not imported TVM's
    compiler (1-1.5 s).

    It answers what planning and the cache keys ask of a target, as the TVM target would:
    ``kind.name``, ``attrs`` (the triple, CPU, core count), :func:`target_key`, ``str()``,
    :func:`profile` and :func:`has_x86_feature` (:data:`HOST_FEATURES` recorded). Anything
    else (an attribute, or the target passed to a TVM function) is TVM's own target
    (:attr:`target`, imported then). Recorded by :func:`host_target` in the kernel cache
    folder (``index/host-<digest>.json``), keyed by what LLVM's detection reads
    (:func:`convforge.kernel_cache.start_facts`); :func:`resolve_target` gives one for the
    host while TVM is not imported and the record is there, else TVM's target.
    """

    def __init__(self, record: dict) -> None:
        self.key: str = record["key"]
        self.text: str = record["text"]
        self.attrs: dict[str, Any] = dict(record["attrs"])
        self.family: str = record["family"]
        self.features: dict[str, bool] = dict(record["features"])
        self.kind = _Kind(record["kind"])

    @property
    def target(self) -> tvm.target.Target:
        """TVM's own target of this machine (imports TVM)."""
        return host_target()

    def __tvm_ffi_object__(self) -> Any:  # passed to a TVM function: TVM's target
        return self.target

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.target, name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HostTarget) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"HostTarget({self.text})"


@dataclasses.dataclass(frozen=True)
class _Kind:
    name: str


def _host_record_path() -> Path:
    from convforge import kernel_cache

    facts = {**kernel_cache.start_facts(), "subject": "host target"}
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]
    return kernel_cache.index_dir() / f"host-{digest}.json"


def _remember_host(target: tvm.target.Target) -> None:
    """Record ``target`` (the host's, from LLVM) for :class:`HostTarget`; best effort."""
    from convforge import kernel_cache
    from convforge.filemode import atomic_write

    if not kernel_cache.enabled():
        return
    record = {
        "key": target_key(target),
        "text": str(target),
        "kind": target.kind.name,
        "attrs": {k: _plain(target.attrs[k]) for k in ("mtriple", "mcpu", "num-cores")},
        "family": _cpu_family(target),
        "features": {f: has_x86_feature(target, f) for f in HOST_FEATURES},
    }
    with contextlib.suppress(OSError, ValueError):
        path = _host_record_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or json.loads(path.read_text()) != record:
            atomic_write(path, json.dumps(record, sort_keys=True))


def _plain(value: Any) -> Any:
    """A target attribute as a JSON value (TVM gives IntImm and String objects)."""
    return int(value) if hasattr(value, "__int__") and not isinstance(value, str) else str(value)


@functools.cache
def recorded_host() -> HostTarget | None:
    """The :class:`HostTarget` recorded for this machine, TVM build and convforge code, or
    None (none recorded yet, the kernel cache disabled, or an unreadable record)."""
    from convforge import kernel_cache

    if not kernel_cache.enabled():
        return None
    try:
        return HostTarget(json.loads(_host_record_path().read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def host() -> tvm.target.Target | HostTarget:
    """The host target: its :class:`HostTarget` record while TVM is not imported (where one
    is recorded), else TVM's :func:`host_target`."""
    if "tvm" not in sys.modules:
        recorded = recorded_host()
        if recorded is not None:
            return recorded
    return host_target()


def tvm_target(target: tvm.target.Target | HostTarget) -> tvm.target.Target:
    """TVM's own target for ``target`` (what TVM's functions take): a :class:`HostTarget`'s
    :attr:`~HostTarget.target`, else ``target`` itself."""
    return target.target if isinstance(target, HostTarget) else target


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
    if target is None or (isinstance(target, str) and target in ("llvm", "cpu", "host")):
        return host()
    if isinstance(target, HostTarget):
        return target
    if isinstance(target, str):
        try:
            target = {"kind": "cuda"} if target == "cuda" else json.loads(target)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"target must be None, 'cpu', 'cuda', a dict or a JSON object, got {target!r}"
            ) from err
    if not isinstance(target, dict):  # TVM's Target
        family(target)
        return target
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
    if isinstance(target, HostTarget):
        return target.key
    return json.dumps(target.export(), sort_keys=True, default=str)


@dataclasses.dataclass(frozen=True)
class CudaLimits:
    """What a CUDA target allows one block (sm_70 .. sm_90 alike) and its SM count."""

    max_threads_per_block: int
    #: Static shared memory one block may declare, and its 32-bit registers.
    static_shared_bytes: int
    registers_per_block: int
    warp_size: int
    #: Streaming multiprocessors of the target's ``arch`` (100 when unknown).
    multiprocessors: int


@dataclasses.dataclass(frozen=True)
class TargetProfile:
    """What convforge's schedules know of one target family, and the thresholds they use.

    One profile per family (:data:`PROFILES`); :func:`profile` maps a target to its own,
    with the host's cache sizes and each target's thread count filled in. Every schedule
    decision that depends on the target reads it from here: no other module compares
    target kinds or queries ISA features.

    The thresholds were measured on x86 (2-core Zen 3 / Zen 4 and AVX-512 machines) and no
    family overrides one yet: AArch64 and the generic fallback inherit them unmeasured. The
    evidence for each is the section of ``benchmarks/results/thresholds.md`` named beside
    it (``#min-parallel-iterations``: benchmarks/results/thresholds.md#min-parallel-iterations).
    A predicate that is not given a target yet reads the class default
    (``TargetProfile.pointwise_row_positions``), which every profile carries.
    """

    name: str
    #: The TVM target kind of the family ("llvm" or "cuda").
    kind: str
    #: Vector register width in bits (0 on a GPU) and architectural vector registers.
    vector_bits: int
    vector_registers: int
    #: Per-core cache sizes in bytes (the L3 divided among the cores sharing it): from
    #: Linux's sysfs for the host target, else the family's typical part (:data:`PROFILES`).
    l1d_bytes: int
    l2_bytes: int
    l3_bytes: int
    #: The target's ``num-cores`` if it names one, else this machine's physical cores.
    threads: int = 1
    #: CUDA targets' limits (None on CPUs).
    cuda: CudaLimits | None = None
    #: Vector accumulators one direct-convolution register block may hold: 24 of AVX-512's
    #: 32 registers, else 12 (of 16; AArch64 keeps 12 of its 32, unmeasured).
    #: #accumulator-budget
    direct_accumulators: int = 12
    #: A kernel below both runs on one thread. #min-parallel-iterations, #min-parallel-bytes
    min_parallel_iterations: int = 3 << 20
    min_parallel_bytes: int = 1 << 20
    #: Accumulators of the generic register tile (schedules/cpu.py). #accumulator-budget
    accumulator_budget: int = 8
    #: Parallel tiles a blocked or sub-pixel schedule wants before it splits the width (or
    #: the rows) too. #parallel-tasks
    parallel_tasks: int = 8
    #: Independent accumulators that hide the FMA latency. #latency-accumulators
    latency_accumulators: int = 8
    #: Multiply-adds per output at most which a channel block stays at 2 vectors.
    #: #short-reduction
    short_reduction: int = 144
    #: A 1x1 over one row this long is computed as a row matrix where ``pointwise_row``
    #: (positions in vector lanes; else NCHW[x]c), and the fewest positions of its
    #: parallel time tiles. #pointwise-row-positions, #pointwise-time-tile
    pointwise_row: bool = False
    pointwise_row_positions: int = 512
    pointwise_time_tile: int = 64
    #: The long 1-D rule: the shortest output it takes, its time tile (upper bound).
    #: #long-1d-convolutions
    long_1d_min_length: int = 1024
    long_1d_time_tile: int = 1024
    #: A stride-1 1-D convolution (kernel wider than 1) with at least this many outputs
    #: stays 1-D for the long 1-D rule; a shorter or strided one runs as a 2-D row in
    #: NCHW[x]c (``plan._kernel_geometry``). #one-d-as-a-row
    row_1d_max_length: int = 2048
    #: A strided grouped/depthwise convolution stores its padded input as stride phases
    #: where its kernel is at least this wide or its output at most this wide.
    #: #deinterleaved-depthwise
    deinterleave_min_kernel: int = 5
    deinterleave_max_width: int = 14
    #: LLVM's optimization level for convforge's kernels in a compiled model (their
    #: schedules vectorize and unroll them; TVM's own functions keep -O3).
    #: #kernel-opt-level
    kernel_opt_level: int = 1
    #: Outputs from which an element-wise kernel runs in parallel.
    #: #elementwise-min-parallel
    elementwise_min_parallel: int = 4096
    #: Streaming chunks (batch x time columns) from which the throughput schedule is used.
    #: #long-chunk-columns
    long_chunk_columns: int = 64
    #: Winograd: the V and M floats one parallel task may hold (#winograd-task-floats), and
    #: the traffic of an intermediate written out and read back, in units of its size
    #: (write-allocate, write back, read; #winograd-pass-traffic).
    winograd_task_floats: int = 64 * 1024
    pass_traffic: int = 3
    #: A transformed Winograd weight up to this size (1 MB) is re-read from cache by every
    #: task, and the largest a per-call weight may have over stride phases.
    #: #winograd-cached-weight
    winograd_cached_weight_floats: int = 256 * 1024
    #: A 1x1 uint8 x int8 convolution on AVX-512 VNNI of at most this many input channels,
    #: at least as many output channels as input ones and an output width in
    #: ``qconv_rows_widths`` (inclusive) takes the rows form (``plan.QConvPlan``: 16
    #: positions of a row in the lanes, its requantization without a transposition) rather
    #: than 16 channels in the lanes. #qconv-rows
    qconv_rows_max_channels: int = 128
    qconv_rows_widths: tuple[int, int] = (12, 112)
    #: The ``vpdpbusd`` form requantizes its output in its blocked layout and transposes it
    #: to NCHW in registers (``QConvPlan.blocked_requant``; byte permutes: AVX-512 VBMI)
    #: where the output width has a divisor of at least this many positions up to 16
    #: (``ops.qconv.transpose_chunk``): a 16 x chunk byte transposition per step.
    #: #qconv-transpose
    qconv_transpose_min_chunk: int = 3
    #: Where that transposition applies, the rows form is kept only for 1x1 convolutions of
    #: at least this many input channels and this output width (a 64->256 56x56 and
    #: 32->192 28x28 ran 1.04-1.19x slower in the channel form; 14-wide ones and fewer
    #: input channels 0.39-0.99x). #qconv-transpose
    qconv_rows_over_transposed: tuple[int, int] = (32, 28)
    #: The direct integer form (depthwise, grouped) stores its padded x as stride phases
    #: where it reads x with a stride along rows and the output row is at most this wide
    #: (8-bit x read with a stride: byte by byte). #qconv-phases
    qconv_phases_max_width: int = 28
    #: Winograd's choice (``plan.winograd_tiles``): fewer channels in or out than this keep
    #: the direct convolution (the transforms dominate), and a convolution whose weight is
    #: transformed on every call needs this many tiles. #winograd-per-call-weight
    min_winograd_channels: int = 8
    min_tiles_per_call_weight: int = 32
    #: The smallest (square) kernel for which 'auto' takes stride-2 Winograd (F(4x4, r x r)
    #: over the stride phases stacked as channels) where it applies: every kernel by
    #: default (AVX-512); 7 on AVX2, where the 3x3, 4x4 and 5x5 ran 1.1-1.5x slower than the
    #: direct convolution and 7x7 0.4-0.9x (an explicit algorithm='winograd' takes any).
    #: #stride-phase-winograd
    stride_phase_min_kernel: int = 0
    #: ... and, for its 3x3 kernels, the fewest input channels: below, 'auto' keeps the
    #: direct convolution (a network's first layer, 3-8 channels, ran 0.54-0.8x the time
    #: direct on Zen 4; 16-32 channels about even). #stride-phase-winograd
    stride_phase_3x3_min_channels: int = 16

    def vector_lanes(self, dtype: str) -> int:
        """Lanes of ``dtype`` in one vector register (1 on a GPU or for wider types)."""
        if not self.vector_bits:
            return 1
        return max(1, self.vector_bits // _bits(dtype))


def _bits(dtype: str) -> int:
    """Bits of one ``dtype`` value: read from ``int8``, ``uint16``, ``float32``...; TVM's
    answer for other names."""
    found = re.fullmatch(r"u?int(\d+)|float(\d+)", str(dtype))
    if found:
        return int(found.group(1) or found.group(2))
    return tvm.DataType(dtype).bits


_KIB = 1024
_MIB = 1024 * _KIB

#: The CUDA limits of every architecture convforge targets (:data:`CUDA_DEFAULTS`), with
#: the SM count of an unknown ``arch``.
CUDA_LIMITS = CudaLimits(
    max_threads_per_block=CUDA_DEFAULTS["max_threads_per_block"],
    static_shared_bytes=CUDA_DEFAULTS["max_shared_memory_per_block"],
    registers_per_block=64 * _KIB,
    warp_size=CUDA_DEFAULTS["thread_warp_size"],
    multiprocessors=100,
)

#: The families. Cache sizes are per core and typical of each family when the target is
#: not the host: AVX2 a Zen 3 core (32 KiB L1d, 512 KiB L2, 4 MiB of L3), AVX-512 a Skylake-SP
#: core (32 KiB, 1 MiB, 1.375 MiB), NEON a Neoverse N1 core (64 KiB, 1 MiB, 1 MiB), SSE and
#: other LLVM CPUs the smallest of these. CUDA: limits shared by sm_70 .. sm_90.
PROFILES: dict[str, TargetProfile] = {
    p.name: p
    for p in (
        TargetProfile("x86-sse", "llvm", 128, 16, 32 * _KIB, 256 * _KIB, 1 * _MIB),
        TargetProfile(
            "x86-avx2",
            "llvm",
            256,
            16,
            32 * _KIB,
            512 * _KIB,
            4 * _MIB,
            stride_phase_min_kernel=7,
            pointwise_row=True,
        ),
        TargetProfile(
            "x86-avx512",
            "llvm",
            512,
            32,
            32 * _KIB,
            1 * _MIB,
            1408 * _KIB,
            direct_accumulators=24,
            pointwise_row=True,
        ),
        TargetProfile("aarch64-neon", "llvm", 128, 32, 64 * _KIB, 1 * _MIB, 1 * _MIB),
        TargetProfile("llvm-generic", "llvm", 128, 16, 32 * _KIB, 256 * _KIB, 1 * _MIB),
        TargetProfile("cuda", "cuda", 0, 0, 0, 0, 0, cuda=CUDA_LIMITS),
    )
}

#: Streaming multiprocessors per CUDA architecture (the most common part of each).
CUDA_MULTIPROCESSORS = {
    "sm_70": 80, "sm_75": 68, "sm_80": 108, "sm_86": 84, "sm_89": 128, "sm_90": 132,
}  # fmt: skip


def profile(target: tvm.target.Target) -> TargetProfile:
    """The :class:`TargetProfile` of ``target``'s family, for this target.

    LLVM targets: an ``aarch64``/``arm64`` triple is ``aarch64-neon``; an x86 triple (or
    none) is ``x86-avx512`` with AVX-512F, ``x86-avx2`` with AVX or AVX2 (256-bit), else
    ``x86-sse``; any other triple is ``llvm-generic`` (128-bit, 16 registers). CUDA
    targets are ``cuda`` with the SM count of their ``arch``. Any other kind is the
    ValueError of :func:`family`. Cached per target (the feature queries take ~1 ms).
    """
    return _profile(target)


@functools.lru_cache(maxsize=256)
def _profile(target: tvm.target.Target) -> TargetProfile:
    if family(target) == "gpu":
        arch = str(target.attrs.get("arch", ""))
        sms = CUDA_MULTIPROCESSORS.get(arch, CUDA_LIMITS.multiprocessors)
        cuda = dataclasses.replace(CUDA_LIMITS, multiprocessors=sms)
        return dataclasses.replace(PROFILES["cuda"], cuda=cuda)
    base = PROFILES[_cpu_family(target)]
    caches = _host_caches() if _is_host(target) else None
    cores = target.attrs.get("num-cores")
    threads = int(cores) if cores else physical_cores()
    if caches:
        l1d, l2, l3 = (caches.get(level) or getattr(base, f"{level}_bytes") for level in _LEVELS)
        return dataclasses.replace(base, threads=threads, l1d_bytes=l1d, l2_bytes=l2, l3_bytes=l3)
    return dataclasses.replace(base, threads=threads)


def _cpu_family(target: tvm.target.Target | HostTarget) -> str:
    if isinstance(target, HostTarget):
        return target.family
    triple = str(target.attrs.get("mtriple", "") or "x86_64")
    arch = triple.split("-")[0]
    if arch in ("aarch64", "arm64"):
        return "aarch64-neon"
    if "x86" not in arch and arch not in ("i386", "i686"):
        return "llvm-generic"
    has = tvm.target.codegen.llvm_cpu_has_features
    if has("avx512f", target):
        return "x86-avx512"
    return "x86-avx2" if has("avx2", target) or has("avx", target) else "x86-sse"


def has_x86_feature(target: tvm.target.Target, feature: str) -> bool:
    """Whether ``target`` is an x86 LLVM CPU target with ISA ``feature`` (LLVM's name,
    e.g. 'avx2'): what an instruction-specific kernel (the int8 ``vpmaddwd`` form) needs."""
    if isinstance(target, HostTarget):
        known = target.features.get(feature)
        return known if known is not None else has_x86_feature(target.target, feature)
    if target.kind.name != "llvm":
        return False
    arch = str(target.attrs.get("mtriple", "") or "x86_64").split("-")[0]
    if "x86" not in arch and arch not in ("i386", "i686"):
        return False
    return bool(tvm.target.codegen.llvm_cpu_has_features(feature, target))


def has_aarch64_feature(target: tvm.target.Target, feature: str) -> bool:
    """Whether ``target`` is an AArch64 LLVM CPU target with ISA ``feature`` (LLVM's name,
    e.g. 'i8mm'): what the int8 ``usdot`` form needs. A target without a triple is this
    machine's; another architecture's host target is answered without importing TVM."""
    if target.kind.name != "llvm":
        return False
    arch = str(target.attrs.get("mtriple", "") or os.uname().machine).split("-")[0]
    if arch not in ("aarch64", "arm64"):
        return False
    if isinstance(target, HostTarget):
        known = target.features.get(feature)
        if known is not None:
            return known
        target = target.target
    return bool(tvm.target.codegen.llvm_cpu_has_features(feature, target))


def _is_host(target: tvm.target.Target | HostTarget) -> bool:
    if isinstance(target, HostTarget):
        return True
    host = host_target()
    return all(
        str(target.attrs.get(key, "") or host.attrs[key]) == str(host.attrs[key])
        for key in ("mtriple", "mcpu")
    )


_LEVELS = ("l1d", "l2", "l3")


@functools.cache
def _host_caches() -> dict[str, int]:
    """Per-core data cache sizes of this machine from sysfs (cpu0), by level; {} where
    unreadable. A cache shared by several CPUs counts its share for one."""
    found: dict[str, int] = {}
    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index[0-9]*")):
        try:
            level, kind, size, shared = (
                Path(index, name).read_text().strip()
                for name in ("level", "type", "size", "shared_cpu_list")
            )
            name = {"1": "l1d", "2": "l2", "3": "l3"}.get(level)
            if name is None or kind == "Instruction":
                continue
            found[name] = _size_bytes(size) // max(1, _cpu_count(shared))
        except (OSError, ValueError):
            continue
    return {k: v for k, v in found.items() if v > 0}


def _size_bytes(text: str) -> int:
    """``"32K"`` -> 32768 (sysfs cache sizes: a number with an optional K, M or G)."""
    scale = {"K": _KIB, "M": _MIB, "G": 1024 * _MIB}.get(text[-1:].upper(), 1)
    return int(text.rstrip("KMGkmg")) * scale


def _cpu_count(cpu_list: str) -> int:
    """CPUs in a sysfs list such as ``"0-3,8"``."""
    count = 0
    for part in cpu_list.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def vector_lanes(target: tvm.target.Target, dtype: str) -> int:
    """Lanes of ``dtype`` in one vector register of ``target`` (1 for non-CPU targets)."""
    return profile(target).vector_lanes(dtype)


def vector_bits(target: tvm.target.Target) -> int:
    """Vector register width in bits of ``target``'s profile (LLVM's own query answers 512
    for every x86 CPU); 0 on a GPU."""
    return profile(target).vector_bits


def vector_registers(target: tvm.target.Target) -> int:
    """Architectural vector registers: 32 with AVX-512 (zmm) or on AArch64 (NEON q), 16 on
    other x86 and generic LLVM CPUs, 0 on a GPU."""
    return profile(target).vector_registers


def tensor_intrinsics_module(target: tvm.target.Target) -> str | None:
    """The submodule of ``tvm.s_tir.tensor_intrin`` holding ``target``'s CPU intrinsics
    (``"x86"``, ``"arm_cpu"`` or ``"riscv_cpu"``, by the LLVM triple; a target without one
    is taken for x86), or None for other architectures."""
    triple = str(target.attrs.get("mtriple", "x86_64"))
    arches = (("x86", "x86"), ("aarch64", "arm_cpu"), ("arm", "arm_cpu"), ("riscv", "riscv_cpu"))
    return next((module for arch, module in arches if arch in triple), None)
