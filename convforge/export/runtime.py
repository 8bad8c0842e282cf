"""A model library run through TVM's runtime alone: no ``import tvm`` (its compiler).

A CPU model's library (what :func:`convforge.compile_model` links, a cache entry,
``export_library``'s file) holds its machine code, its weights and the relax VM's bytecode:
running it needs only ``tvm_ffi`` and TVM's runtime library
(:func:`convforge.tvm_import.import_runtime`). This module is the little of
``tvm.runtime.load_module`` and ``relax.VirtualMachine`` that :class:`CompiledModel
<convforge.export.compiled.CompiledModel>` uses, written against ``tvm_ffi``; where TVM is
imported already, its own loader is used, and the objects are the same either way.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from convforge.tvm_import import import_runtime

#: DLPack's device type of the CPU and ``relax.VirtualMachine.POOLED_ALLOCATOR``: the
#: arguments of ``vm_initialization`` for one CPU device, as ``relax.VirtualMachine(module,
#: tvm.cpu())`` passes them.
_CPU_DEVICE = (1, 0)
_POOLED_ALLOCATOR = 2

#: The alignment TVM's kernels assume of a tensor's data (``tvm.runtime.tensor`` allocates so).
ALIGNMENT = 64


def load_module(path: str) -> Any:
    """The shared library ``path`` as a runtime module: TVM-FFI's loader, which TVM's
    ``tvm.runtime.load_module`` also calls for a ``.so`` (a TVM module where TVM is
    imported), though without resolving ``path``'s symbolic links first (a verified copy in
    memory is a link ``*.so`` to ``/proc/self/fd/N``: :func:`~convforge.export.library.
    verified_library`)."""
    return import_runtime().load_module(path)


def load_model(path: str) -> tuple[Any, list[Any]]:
    """A model library: (its runtime module, its weights as tensors, in the order its entry
    functions take them after their inputs; :mod:`convforge.export.weights`)."""
    from convforge.export.weights import read_weights

    module = load_module(path)
    tvm_ffi = import_runtime()
    weights = [tvm_ffi.from_dlpack(w, require_alignment=ALIGNMENT) for w in read_weights(path)]
    return module, weights


def is_executable(module: Any) -> bool:
    """Whether ``module`` is a relax ``Executable`` not yet compiled to machine code (what a
    GPU build returns); it needs TVM's ``relax.VirtualMachine`` (its JIT)."""
    tvm = sys.modules.get("tvm")
    return tvm is not None and isinstance(module, tvm.runtime.Executable)


class VirtualMachine:
    """A relax VM of a loaded library on the CPU, with the pooled allocator (as
    ``relax.VirtualMachine(module, tvm.cpu())``): ``vm[name]`` is the VM function ``name``,
    :meth:`set_instrument` as relax's."""

    def __init__(self, module: Any) -> None:
        self.module = module["vm_load_executable"]()
        self.module["vm_initialization"](*_CPU_DEVICE, _POOLED_ALLOCATOR)

    def __getitem__(self, name: str) -> Any:
        return self.module[name]

    def set_instrument(self, instrument: Callable[..., int] | None) -> None:
        """Call ``instrument(func, symbol, before, ret, *args)`` around every VM call (None:
        no instrument)."""
        convert = import_runtime().convert
        self.module["set_instrument"](None if instrument is None else convert(instrument))


def make_vm(module: Any) -> Any:
    """A VM of ``module`` on the CPU: relax's for an ``Executable``, else :class:`VirtualMachine`."""
    if is_executable(module):
        tvm = sys.modules["tvm"]
        return tvm.relax.VirtualMachine(module, tvm.cpu())
    return VirtualMachine(module)


def tensor(array: np.ndarray) -> Any:
    """A runtime tensor holding a copy of ``array`` (C-contiguous, :data:`ALIGNMENT`-aligned
    data, as ``tvm.runtime.tensor`` makes one): the VM never sees the caller's memory."""
    tvm_ffi = import_runtime()
    array = np.asarray(array)
    if array.size == 0:  # numpy places an empty slice at its base, unaligned
        return empty(array.shape, str(array.dtype))
    raw = np.empty(array.nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    copy = raw[start : start + array.nbytes].view(array.dtype).reshape(array.shape)
    copy[...] = array
    return tvm_ffi.from_dlpack(copy, require_alignment=ALIGNMENT, require_contiguous=True)


def empty(shape: Sequence[int], dtype: str) -> Any:
    """An uninitialized CPU tensor allocated by TVM's runtime (``tvm.runtime.empty``)."""
    tvm_ffi = import_runtime()
    alloc = tvm_ffi.get_global_func("runtime.TVMTensorAllocWithScope")
    return alloc(
        tvm_ffi.Shape([int(d) for d in shape]), tvm_ffi.dtype(dtype), tvm_ffi.device("cpu", 0), None
    )


def outputs(result: Any) -> list[np.ndarray]:
    """A VM function's result (one tensor or a tuple of them) as numpy arrays (copies)."""
    tvm_ffi = import_runtime()
    items: Sequence[Any] = (
        list(result) if isinstance(result, tvm_ffi.Array | list | tuple) else [result]
    )
    return [np.array(np.from_dlpack(item), copy=True) for item in items]
