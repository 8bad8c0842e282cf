"""Import TVM (or only its runtime) without the optional imports convforge does not use.

TVM and tvm_ffi import two packages optionally (``try: import X except ImportError``), only to
exchange arrays with them:

- ``ml_dtypes``, to map bfloat16 and float8 arrays to numpy. With numpy 2.4 and ml_dtypes 0.7
  that import costs 0.8-1.3 s of TVM's 2.1-2.7 s on a 2-core machine (``python -X
  importtime``: numpy's ``PyUFunc_AddLoop`` searches every ufunc's loop list for each of the
  many loops ml_dtypes registers);
- ``torch`` (tvm_ffi's ``__init__`` and ``_convert``), to take torch tensors: where PyTorch is
  installed, 4-5 s more on the same machine.

convforge computes in float32, float16, float64 and integers on numpy arrays, so
:func:`import_tvm` and :func:`import_runtime` import with both hidden (``sys.modules[name] =
None``, Python's documented way to make an import fail) and then unhide them: a later
``import ml_dtypes`` or ``import torch`` (by onnx, or by the user) works as usual.

What it changes: in a process where convforge imported TVM first, TVM cannot convert
bfloat16/float8 tensors to numpy, and tvm_ffi does not convert torch tensors by itself.
Nothing is hidden that is already imported, nor ``ml_dtypes`` with ``CONVFORGE_ML_DTYPES=1``
or ``torch`` with ``CONVFORGE_TORCH=1``.

Both also set ``TVM_THREAD_POOL_SPIN_COUNT`` to :data:`SPIN_COUNT` unless it is set: TVM's
idle workers then spin about 0.2 ms before they block, not TVM's default 300000 yields
(about half a second of a core after every call, and as long again at exit: a cached
model's start to its exit 1.4 -> 1.1 s). The short spin still bridges the gaps between a
model's parallel loops (benchmarks/results/thresholds.md#tvm-spin-count); the benchmarks
always ran with it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

#: Set to 1 to let TVM import ml_dtypes (bfloat16/float8 arrays through TVM in this process).
ML_DTYPES_ENV = "CONVFORGE_ML_DTYPES"
#: Set to 1 to let tvm_ffi import torch (torch tensors through tvm_ffi in this process).
TORCH_ENV = "CONVFORGE_TORCH"

_OPTIONAL = {"ml_dtypes": ML_DTYPES_ENV, "torch": TORCH_ENV}

#: TVM's setting of how many times an idle worker of its thread pool yields before it blocks,
#: read when the pool starts (runtime only: compiled code does not depend on it).
SPIN_ENV = "TVM_THREAD_POOL_SPIN_COUNT"
#: Its value unless the user set one (module doc; TVM's default is 300000).
SPIN_COUNT = 1000


def short_idle_spin() -> None:
    """Set ``TVM_THREAD_POOL_SPIN_COUNT`` to :data:`SPIN_COUNT` unless it is set (module doc);
    TVM reads it when its thread pool starts, so before the first parallel kernel."""
    os.environ.setdefault(SPIN_ENV, str(SPIN_COUNT))


@contextlib.contextmanager
def _without_optional_imports() -> Iterator[None]:
    hidden = [
        name
        for name, env in _OPTIONAL.items()
        if name not in sys.modules and os.environ.get(env) != "1"
    ]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def import_tvm() -> ModuleType:
    """``import tvm``, without ml_dtypes and torch unless they are already imported or asked
    for (module doc); returns the module."""
    if "tvm" in sys.modules:
        return sys.modules["tvm"]
    short_idle_spin()
    with _without_optional_imports():
        return importlib.import_module("tvm")


def runtime_library() -> str:
    """The path of TVM's runtime library (``libtvm_runtime.so``), found as ``tvm.base``
    finds it, without importing TVM."""
    from tvm_ffi import libinfo

    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("TVM is not installed (apache-tvm)")
    package = Path(next(iter(spec.submodule_search_locations))).resolve()
    paths = [Path(os.environ["TVM_LIBRARY_PATH"])] if os.environ.get("TVM_LIBRARY_PATH") else []
    paths.append(package / "lib")
    return str(libinfo._find_library_by_basename("tvm", "tvm_runtime", extra_lib_paths=paths))


def import_runtime() -> ModuleType:
    """TVM's runtime only: ``tvm_ffi`` (without the optional imports) and TVM's runtime library
    loaded as ``tvm.base`` loads it first (``RTLD_GLOBAL``), enough to load an exported
    library and run its VM; a later ``import tvm`` loads the same file again (the same
    handle) and the compiler beside it. About 0.1 s where ``import tvm`` takes 1-1.5 s.
    Returns ``tvm_ffi`` (at once where it is loaded: a kernel call asks for each argument)."""
    loaded = sys.modules.get("tvm_ffi")
    if loaded is not None and (_RUNTIME or "tvm" in sys.modules):
        return loaded
    short_idle_spin()
    with _without_optional_imports():
        tvm_ffi = importlib.import_module("tvm_ffi")
    if "tvm" not in sys.modules:
        _load_runtime_library()
    return tvm_ffi


_RUNTIME: list = []


def _load_runtime_library() -> None:
    if _RUNTIME:
        return
    import ctypes

    _RUNTIME.append(ctypes.CDLL(runtime_library(), ctypes.RTLD_GLOBAL))


class LazyModule(ModuleType):
    """A TVM module imported on its first attribute access (:func:`import_tvm`, then the
    submodule), so that a module which uses TVM only inside its functions imports without
    it: ``from convforge.tvm_import import te`` where a module would ``from tvm import te``.
    The numpy API plans a call and runs a cached kernel without TVM's compiler
    (:mod:`convforge.build`), and imports it only to compile one."""

    def __getattr__(self, attr: str) -> Any:
        module = sys.modules.get(self.__name__)
        if module is None:
            import_tvm()
            module = importlib.import_module(self.__name__)
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self.__name__!r}>"


#: ``tvm``, ``tvm.te`` and ``tvm.tirx``, imported when first used (:class:`LazyModule`).
tvm = LazyModule("tvm")
te = LazyModule("tvm.te")
tirx = LazyModule("tvm.tirx")
