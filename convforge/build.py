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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convforge import kernel_cache
from convforge.export import runtime
from convforge.schedules import tuning_dbs
from convforge.targets import (
    HostTarget,
    TargetArg,
    family,
    is_cpu,
    resolve_target,
    target_key,
    tvm_target,
)
from convforge.tvm_import import import_runtime, import_tvm, te, tvm

#: Builds the computation: returns (input placeholders, output tensors).
Computation = Callable[[], tuple[Sequence["te.Tensor"], Sequence["te.Tensor"]]]


def prim_func(computation: Computation) -> tvm.tirx.PrimFunc:
    """The schedulable PrimFunc ``main(*inputs, *outputs)`` of ``computation``."""
    inputs, outputs = computation()
    return te.create_prim_func([*inputs, *outputs]).with_attr("global_symbol", "main")


def schedule_for(func: tvm.tirx.PrimFunc, target: tvm.target.Target) -> tvm.IRModule:
    """``func`` scheduled by its best tuned record for ``target`` (see
    :func:`convforge.use_tuning_db`), else by the default schedule."""
    import_tvm()  # the schedules import TVM themselves: first the quick way (tvm_import)
    from convforge.schedules import tuning

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
    #: The compiled code: TVM's ``Executable``, or, found in the kernel cache by a process
    #: without TVM's compiler, the loaded library (:attr:`compiled` wraps it when asked).
    executable: Any
    #: TVM's target, or the host's :class:`~convforge.targets.HostTarget`.
    target: Any
    input_shapes: tuple[tuple[int, ...], ...]
    output_shapes: tuple[tuple[int, ...], ...]
    output_dtypes: tuple[str, ...]
    #: The tuning record the kernel was scheduled by (database and latency), else None.
    tuning_record: str | None = None
    #: The computation compiled (:attr:`func` is made from it when asked).
    computation: Computation | None = field(default=None, repr=False)

    @functools.cached_property
    def func(self) -> tvm.tirx.PrimFunc | None:
        """The unscheduled PrimFunc (what tuning tunes for this kernel)."""
        return None if self.computation is None else prim_func(self.computation)

    @functools.cached_property
    def compiled(self) -> tvm.runtime.Executable:
        """:attr:`executable` as TVM's ``Executable`` (imports TVM)."""
        if isinstance(self.executable, tvm.runtime.Executable):
            return self.executable
        return tvm.runtime.Executable(self.executable)

    @property
    def device(self) -> tvm.runtime.Device:
        return tvm.cpu() if is_cpu(self.target) else tvm.device(self.target.kind.name)

    @functools.cached_property
    def function(self) -> Any:
        module = getattr(self.executable, "mod", self.executable)
        return module["main"]  # a lookup costs ~0.15 ms: once per kernel

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
        if is_cpu(self.target):
            return True
        self._runnable_device()
        return False

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
        timer = self.compiled.mod.time_evaluator("main", self.device, number=number, repeat=repeat)
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
    writeable (no copy), else an aligned copy (:func:`aligned`). TVM's runtime only."""
    if array.size == 0:  # numpy places empty arrays anywhere: let TVM's runtime allocate
        return runtime.empty(array.shape, str(array.dtype))
    return import_runtime().from_dlpack(
        aligned(array), require_alignment=ALIGNMENT, require_contiguous=True
    )


def compile_computation(
    name: str,
    computation: Computation,
    target: tvm.target.Target | HostTarget,
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
    return _compile(name, computation, target, schedule, persistent)[0]


def _compile(
    name: str,
    computation: Computation,
    target: tvm.target.Target | HostTarget,
    schedule: Callable[[tvm.tirx.PrimFunc, tvm.target.Target], tvm.IRModule] | None,
    persistent: bool,
) -> tuple[Kernel, dict | None]:
    """:func:`compile_computation`, and the key parts of its on-disk entry (None where it
    has none: not persistent, or the entry could not be written)."""
    import_tvm()  # tuning imports TVM itself: first the quick way (tvm_import)
    from convforge.schedules import tuning

    target = tvm_target(target)
    inputs, outputs = computation()
    executable = parts = record = None
    if persistent and schedule is None and is_cpu(target) and kernel_cache.enabled():
        how = [kernel_cache.schedule_code_digest(), tuning.database_state(target)]
        parts = kernel_cache.key_parts(prim_func(lambda: (inputs, outputs)), target, how)
        hit = kernel_cache.load(parts)
        if hit is not None:
            executable = tvm.runtime.Executable(hit[0])
            record = hit[1].get("record")
    if executable is None:
        # scheduling may rewrite the PrimFunc it is given in place: a separate one
        mod = (schedule or schedule_for)(prim_func(lambda: (inputs, outputs)), target)
        record = mod.attrs.get(tuning.RECORD_ATTR) if mod.attrs else None
        record = None if record is None else str(record)
        executable = tvm.compile(mod, target=target)
        if parts is not None and not kernel_cache.store(
            parts, executable, target, {"record": record}
        ):
            parts = None
    kernel = Kernel(
        name,
        executable,
        target,
        tuple(tuple(int(v) for v in t.shape) for t in inputs),
        tuple(tuple(int(v) for v in t.shape) for t in outputs),
        tuple(str(t.dtype) for t in outputs),
        record,
        lambda: (inputs, outputs),
    )
    return kernel, parts


def persistent_kernel(
    name: str, key: Hashable, computation: Computation, target: tvm.target.Target | HostTarget
) -> Kernel:
    """``compile_computation(name, computation, target, persistent=True)``, found first by
    its start key (:func:`convforge.kernel_cache.kernel_start_key`: ``name``, ``key`` (what
    ``computation`` is made from: plain data, e.g. a plan's key), the target, the tuning
    databases' state, convforge's code and TVM's build) in the kernel cache's index, and
    then loaded by TVM's runtime alone: the numpy API runs a cached kernel in a new process
    without importing TVM's compiler (its import takes 1-1.5 s of a 2-core machine). A
    kernel compiled or loaded the usual way is indexed so for the next process."""
    start = None
    if is_cpu(target) and kernel_cache.enabled():
        start = kernel_cache.kernel_start_key(
            name, key, target_key(target), tuning_dbs.database_state(target)
        )
        hit = kernel_cache.quick_kernel(start)
        if hit is not None:
            module, meta = hit
            shapes_ = [tuple(tuple(s) for s in meta[k]) for k in ("inputs", "outputs")]
            return Kernel(
                name, module, target, *shapes_, tuple(meta["dtypes"]), meta.get("record"),
                computation,
            )  # fmt: skip
    kernel, parts = _compile(name, computation, target, None, True)
    if start is not None and parts is not None:
        meta = {
            "inputs": kernel.input_shapes, "outputs": kernel.output_shapes,
            "dtypes": kernel.output_dtypes, "record": kernel.tuning_record,
        }  # fmt: skip
        kernel_cache.remember_kernel(start, parts, meta)
    return kernel


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
    full_key = (name, key, target_key(resolved), tuning_dbs.database_state(resolved))
    with _lock:
        kernel = _cache.get(full_key)
        if kernel is not None:
            _cache.move_to_end(full_key)
    if kernel is None:
        limit = memory_cache_limit()
        kernel = persistent_kernel(name, key, computation, resolved)
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
