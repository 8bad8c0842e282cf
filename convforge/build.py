"""From TE computation to a compiled, cached, numpy-callable kernel.

``numpy -> TE op -> schedule -> tvm.compile -> Kernel(numpy) -> numpy``. Kernels are cached
per (op, shapes, dtypes, attributes, target) so a second call with the same arguments
does not recompile: in this process (an LRU of ``$CONVFORGE_MEMORY_CACHE`` kernels, default
256; :func:`clear_cache`), and for CPU targets on disk across processes
(:mod:`convforge.kernel_cache`).
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te

from convforge import kernel_cache
from convforge.schedules import tuning
from convforge.targets import TargetArg, family, is_cpu, resolve_target, target_key

#: Builds the computation: returns (input placeholders, output tensors).
Computation = Callable[[], tuple[Sequence[te.Tensor], Sequence[te.Tensor]]]


def prim_func(computation: Computation) -> tvm.tirx.PrimFunc:
    """The schedulable PrimFunc ``main(*inputs, *outputs)`` of ``computation``."""
    inputs, outputs = computation()
    return te.create_prim_func([*inputs, *outputs]).with_attr("global_symbol", "main")


def schedule_for(func: tvm.tirx.PrimFunc, target: tvm.target.Target) -> tvm.IRModule:
    """``func`` scheduled by its best tuned record for ``target`` (see
    :func:`convforge.use_tuning_db`), else by the default schedule."""
    tuned = tuning.tuned_module(func, target)
    if tuned is not None:
        return tuned
    if family(target) == "cpu":  # a ValueError naming an unsupported target
        from convforge.schedules.cpu import schedule_cpu

        return schedule_cpu(func, target)
    from convforge.schedules.gpu import schedule_gpu

    return schedule_gpu(func, target)


@dataclass
class Kernel:
    """A compiled operator: call with numpy arrays (inputs in order), get numpy outputs."""

    name: str
    executable: tvm.runtime.Executable
    target: tvm.target.Target
    input_shapes: tuple[tuple[int, ...], ...]
    output_shapes: tuple[tuple[int, ...], ...]
    output_dtypes: tuple[str, ...]
    #: The tuning record the kernel was scheduled by (database and latency), else None.
    tuning_record: str | None = None
    #: The unscheduled PrimFunc (what tuning tunes for this kernel).
    func: tvm.tirx.PrimFunc | None = None

    @property
    def device(self) -> tvm.runtime.Device:
        return tvm.cpu() if is_cpu(self.target) else tvm.device(self.target.kind.name)

    @functools.cached_property
    def function(self) -> tvm.runtime.Function:
        return self.executable.mod["main"]  # a lookup costs ~0.15 ms: once per kernel

    def _runnable_device(self) -> tvm.runtime.Device:
        device = self.device
        if not device.exist:
            raise RuntimeError(
                f"kernel {self.name!r} was compiled for {self.target.kind.name} but this machine "
                f"has no such device; export it (convforge.export.aot) and run it on one"
            )
        return device

    @functools.cached_property
    def _on_cpu(self) -> bool:
        """Whether the kernel runs on the host CPU (its device checked once, not per call)."""
        device = self._runnable_device()
        return device.dlpack_device_type() == tvm.cpu().dlpack_device_type()

    def _bind(self, arrays: Sequence[np.ndarray]) -> tuple[list, list[np.ndarray] | list]:
        """TVM arguments for ``arrays`` and the outputs; on the CPU both share numpy memory."""
        if not self._on_cpu:
            device = self._runnable_device()
            args = [tvm.runtime.tensor(np.ascontiguousarray(a), device) for a in arrays]
            outs = [
                tvm.runtime.tensor(np.empty(shape, dtype), device)
                for shape, dtype in zip(self.output_shapes, self.output_dtypes)
            ]
            return args + outs, outs
        results = [aligned_empty(s, d) for s, d in zip(self.output_shapes, self.output_dtypes)]
        return [cpu_argument(a) for a in (*arrays, *results)], results

    def __call__(self, *arrays: np.ndarray) -> np.ndarray | list[np.ndarray]:
        args, results = self._bind(arrays)
        self.function(*args)
        results = [r if isinstance(r, np.ndarray) else r.numpy() for r in results]
        return results[0] if len(results) == 1 else results

    def time(self, *arrays: np.ndarray, number: int = 10, repeat: int = 5) -> np.ndarray:
        """Seconds per call, ``repeat`` medians of ``number`` runs (TVM's time_evaluator)."""
        args, _ = self._bind(arrays)
        timer = self.executable.mod.time_evaluator(
            "main", self.device, number=number, repeat=repeat
        )
        return np.array(timer(*args).results)


#: Byte alignment TVM's generated code assumes for buffer data (aligned vector loads).
ALIGNMENT = 64


def aligned_empty(shape: Sequence[int], dtype: str) -> np.ndarray:
    """An uninitialized C-contiguous array whose data starts on an ALIGNMENT boundary."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def aligned(x: np.ndarray) -> np.ndarray:
    """x, or a copy of it, C-contiguous, writeable and on an ALIGNMENT boundary (what kernels
    read in place): aligned once, x is not copied again by each kernel it is passed to."""
    if x.flags.c_contiguous and x.flags.writeable and x.ctypes.data % ALIGNMENT == 0:
        return x
    copy = aligned_empty(x.shape, x.dtype)
    copy[...] = x
    return copy


def cpu_argument(array: np.ndarray) -> tvm.runtime.Tensor:
    """``array`` as a TVM CPU tensor: shared memory when it is contiguous, aligned and
    writeable (no copy), else an aligned copy (:func:`aligned`)."""
    if array.size == 0:  # numpy places empty arrays anywhere: let TVM allocate
        return tvm.runtime.empty(array.shape, str(array.dtype), tvm.cpu())
    return tvm.runtime.from_dlpack(aligned(array))


def compile_computation(
    name: str,
    computation: Computation,
    target: tvm.target.Target,
    schedule: Callable[[tvm.tirx.PrimFunc, tvm.target.Target], tvm.IRModule] | None = None,
    persistent: bool = False,
) -> Kernel:
    """Create the PrimFunc, schedule it (default schedule unless given) and compile it.

    ``persistent``: for a CPU target scheduled by :func:`schedule_for` (``schedule`` None),
    load the compiled code from the on-disk kernel cache when it holds this computation
    (same TIR, schedule code, tuning databases, target, versions: scheduling and TVM's
    compile are both skipped), else compile and store it there (:mod:`convforge.kernel_cache`).
    The kernel's executable is then a loaded library, which cannot be exported again:
    callers that export (AOT) leave ``persistent`` False.
    """
    inputs, outputs = computation()
    # Scheduling may rewrite the PrimFunc it is given in place: keep a separate one.
    func = prim_func(lambda: (inputs, outputs))
    executable = parts = record = None
    if persistent and schedule is None and is_cpu(target) and kernel_cache.enabled():
        how = [kernel_cache.schedule_code_digest(), tuning.database_state(target)]
        parts = kernel_cache.key_parts(func, target, how)
        hit = kernel_cache.load(parts)
        if hit is not None:
            executable = tvm.runtime.Executable(hit[0])
            record = hit[1].get("record")
    if executable is None:
        mod = (schedule or schedule_for)(prim_func(lambda: (inputs, outputs)), target)
        record = mod.attrs.get(tuning.RECORD_ATTR) if mod.attrs else None
        record = None if record is None else str(record)
        executable = tvm.compile(mod, target=target)
        if parts is not None:
            kernel_cache.store(parts, executable, target, {"record": record})
    return Kernel(
        name,
        executable,
        target,
        tuple(tuple(int(v) for v in t.shape) for t in inputs),
        tuple(tuple(int(v) for v in t.shape) for t in outputs),
        tuple(str(t.dtype) for t in outputs),
        record,
        func,
    )


#: Default bound of the in-process kernel cache (entries).
DEFAULT_MEMORY_CACHE = 256
_cache: OrderedDict[Hashable, Kernel] = OrderedDict()
_lock = threading.Lock()


def memory_cache_limit() -> int:
    """Kernels the in-process cache holds at most: ``$CONVFORGE_MEMORY_CACHE`` (a positive
    integer; default :data:`DEFAULT_MEMORY_CACHE`). ValueError for another value."""
    text = os.environ.get("CONVFORGE_MEMORY_CACHE", "").strip()
    if not text:
        return DEFAULT_MEMORY_CACHE
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"CONVFORGE_MEMORY_CACHE must be a positive integer, got {text!r}")
    return int(text)


def clear_cache() -> None:
    """Drop every kernel the in-process cache holds (the on-disk cache stays: ``convforge
    cache clear`` or :func:`convforge.kernel_cache.clear` empties it). Kernels already
    handed out stay usable."""
    with _lock:
        _cache.clear()


def cached_kernel(
    name: str, key: Hashable, computation: Computation, target: TargetArg = None
) -> Kernel:
    """Compile ``computation`` once per (name, key, target, tuning database state); later
    calls reuse the kernel (least recently used dropped beyond :func:`memory_cache_limit`).
    A kernel not held in memory comes from the on-disk cache when it is there."""
    resolved = resolve_target(target)
    full_key = (name, key, target_key(resolved), tuning.database_state(resolved))
    with _lock:
        kernel = _cache.get(full_key)
        if kernel is not None:
            _cache.move_to_end(full_key)
    if kernel is None:
        limit = memory_cache_limit()
        kernel = compile_computation(name, computation, resolved, persistent=True)
        with _lock:
            _cache[full_key] = kernel
            while len(_cache) > limit:
                _cache.popitem(last=False)
    for record in getattr(_recording, "stack", ()):
        record.append(kernel)
    return kernel


_recording = threading.local()


@contextmanager
def recording_kernels() -> Iterator[list[Kernel]]:
    """Collect, in call order, the kernels ``cached_kernel`` hands out in this thread.

    Benchmarks use it to time the compiled kernel of a numpy API call without the call's
    argument conversion.
    """
    record: list[Kernel] = []
    stack = _recording.__dict__.setdefault("stack", [])
    stack.append(record)
    try:
        yield record
    finally:
        stack.remove(record)


def cache_size() -> int:
    """Number of compiled kernels held (for tests of the cache)."""
    return len(_cache)
