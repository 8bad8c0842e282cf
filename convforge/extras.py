"""Optional dependencies: which install extra provides which module, and a clear error if absent.

The base install (``pip install convforge``) compiles ONNX models and convolutions, exports
and loads libraries. Cross-checking needs ``[check]`` (onnxruntime, scipy), tuning ``[tune]``
(xgboost, cloudpickle, psutil, tornado), the benchmarks ``[bench]`` (matplotlib,
threadpoolctl, rich). Code that needs one of these imports it through :func:`require`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: Import name -> the extra that installs it.
EXTRA_OF = {
    "onnxruntime": "check",
    "scipy": "check",
    "xgboost": "tune",
    "cloudpickle": "tune",
    "psutil": "tune",
    "tornado": "tune",
    "matplotlib": "bench",
    "threadpoolctl": "bench",
    "rich": "bench",  # also in [tune] (its progress bar)
}


class MissingExtraError(ImportError):
    """A feature needs a module of an install extra that is not installed."""


def require(module: str, feature: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` (dotted names allowed) for ``feature``, or raise MissingExtraError.

    The error names the missing package and the command that installs its extra, e.g.
    ``pip install 'convforge[check]'``; ``extra`` overrides the extra named (rich serves
    both ``[tune]`` and ``[bench]``).
    """
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if err.name is not None and err.name.split(".")[0] != top:
            raise  # the module is there but one of its own imports failed
        extra = extra or EXTRA_OF.get(top, "all")
        raise MissingExtraError(
            f"{feature} needs {top!r}, which is not installed: pip install 'convforge[{extra}]'"
        ) from err
