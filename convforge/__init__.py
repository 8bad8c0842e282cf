"""convforge: convolution operators as TVM tensor expressions, scheduled, exported, checked.

``import convforge as cf``; ``cf.conv(x, w, stride=2, padding="same")`` compiles (once) and
runs a TVM kernel for the host CPU on numpy arrays.
"""

from convforge.api import (
    PreparedConv,
    adaptive_avg_pool,
    adaptive_max_pool,
    avg_pool,
    causal_conv1d,
    causal_conv_with_state,
    conv,
    conv_transpose,
    dense,
    flatten_dense_head,
    fully_conv_head,
    global_avg_pool,
    global_max_pool,
    grid_pool_head,
    max_pool,
    prepare_conv,
    resize,
    resize_conv,
    softmax,
)
from convforge.build import clear_cache
from convforge.reference import conv_matrix
from convforge.schedules.tuning import use_tuning_db
from convforge.shapes import (
    conv_geometry,
    conv_output_size,
    conv_transpose_geometry,
    conv_transpose_output_size,
    receptive_field,
)
from convforge.streaming import StackSpec, StreamingCausalStack
from convforge.targets import host_target


def _version() -> str:
    """This package's version; pyproject.toml is its one source.

    In a source checkout (pyproject.toml of project convforge beside the package: a clone,
    an editable install) that file is read, as installed metadata may be stale or belong to
    another checkout; otherwise ``importlib.metadata.version("convforge")`` (a wheel).
    """
    import pathlib
    import tomllib
    from importlib import metadata

    pyproject = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text())["project"]
        if project.get("name") == "convforge":
            return str(project["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        pass
    try:
        return metadata.version("convforge")
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _version()

#: Whole-model names, imported on first use (``load`` needs neither onnx nor onnxruntime).
_LAZY = {
    "CompiledModel": "convforge.export.model",
    "compile_model": "convforge.export.model",
    "load": "convforge.export.model",
    "check_model": "convforge.export.check_model",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'convforge' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = [
    "CompiledModel",
    "PreparedConv",
    "StackSpec",
    "StreamingCausalStack",
    "adaptive_avg_pool",
    "adaptive_max_pool",
    "avg_pool",
    "causal_conv1d",
    "causal_conv_with_state",
    "check_model",
    "clear_cache",
    "compile_model",
    "conv",
    "conv_geometry",
    "conv_matrix",
    "conv_output_size",
    "conv_transpose",
    "conv_transpose_geometry",
    "conv_transpose_output_size",
    "dense",
    "flatten_dense_head",
    "fully_conv_head",
    "global_avg_pool",
    "global_max_pool",
    "grid_pool_head",
    "host_target",
    "load",
    "max_pool",
    "prepare_conv",
    "receptive_field",
    "resize",
    "resize_conv",
    "softmax",
    "use_tuning_db",
]
