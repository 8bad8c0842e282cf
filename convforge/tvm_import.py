"""Import TVM without ml_dtypes: about half of TVM's import time on our stack.

TVM and tvm_ffi import ``ml_dtypes`` optionally (``try: import ml_dtypes except ImportError``),
only to map bfloat16 and float8 arrays to numpy. With numpy 2.4 and ml_dtypes 0.7 that import
costs 0.8-1.3 s of TVM's 2.1-2.7 s on a 2-core machine (``python -X importtime``: numpy's
``PyUFunc_AddLoop`` searches every ufunc's loop list for each of the many loops ml_dtypes
registers). convforge computes in float32, float16, float64 and integers, none of which needs
it, so :func:`import_tvm` imports TVM with ml_dtypes hidden (``sys.modules["ml_dtypes"] =
None``, Python's documented way to make an import fail) and then unhides it: a later ``import
ml_dtypes`` (by onnx, or by the user) works as usual.

What it changes: in a process where convforge imported TVM first, TVM cannot convert
bfloat16/float8 tensors to numpy. It does nothing (TVM imports ml_dtypes as usual) when TVM or
ml_dtypes is already imported, or when ``CONVFORGE_ML_DTYPES=1``.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

#: Set to 1 to let TVM import ml_dtypes (bfloat16/float8 arrays through TVM in this process).
ML_DTYPES_ENV = "CONVFORGE_ML_DTYPES"


def import_tvm() -> ModuleType:
    """``import tvm``, without ml_dtypes unless it is already imported or asked for (module
    doc); returns the module."""
    if "tvm" in sys.modules:
        return sys.modules["tvm"]
    hide = "ml_dtypes" not in sys.modules and os.environ.get(ML_DTYPES_ENV) != "1"
    if hide:
        sys.modules["ml_dtypes"] = None  # type: ignore[assignment]
    try:
        return importlib.import_module("tvm")
    finally:
        if hide and "ml_dtypes" in sys.modules and sys.modules["ml_dtypes"] is None:
            del sys.modules["ml_dtypes"]
