"""convforge: convolution operators as TVM tensor expressions, scheduled, exported, checked.

``import convforge as cf``; ``cf.conv(x, w, stride=2, padding="same")`` compiles (once) and
runs a TVM kernel for the host CPU on numpy arrays.
"""

from typing import TYPE_CHECKING, Any

from convforge import threads as _threads  # noqa: F401  one TVM thread per physical core

if TYPE_CHECKING:  # for type checkers and IDEs; at run time every name is lazy (_LAZY)
    from convforge.api import (
        PreparedConv,
        adaptive_avg_pool,
        adaptive_max_pool,
        avg_pool,
        causal_conv1d,
        causal_conv_with_state,
        conv,
        conv_integer,
        conv_transpose,
        dense,
        flatten_dense_head,
        fully_conv_head,
        global_avg_pool,
        global_max_pool,
        grid_pool_head,
        max_pool,
        prepare_conv,
        prepare_dense,
        qconv,
        resize,
        resize_conv,
        softmax,
    )
    from convforge.build import clear_cache
    from convforge.export.check_model import check_model
    from convforge.export.compiled import CompiledModel, compile_model, load
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

    pyproject = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text())["project"]
        if project.get("name") == "convforge":
            return str(project["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        pass
    from importlib import metadata  # only here: importing it costs ~40 ms

    try:
        return metadata.version("convforge")
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _version()

#: Every public name -> the module that defines it, imported on first use (PEP 562), so that
#: ``import convforge`` imports neither TVM nor onnx (about 3 s -> well under 1 s): TVM is
#: imported by the first name that needs it (``cf.conv``, ``cf.compile_model``, ...), while
#: ``cf.load`` needs neither onnx nor onnxruntime and ``cf.conv_geometry`` needs no TVM.
_LAZY: dict[str, str] = {
    "PreparedConv": "convforge.api",
    "adaptive_avg_pool": "convforge.api",
    "adaptive_max_pool": "convforge.api",
    "avg_pool": "convforge.api",
    "causal_conv1d": "convforge.api",
    "causal_conv_with_state": "convforge.api",
    "conv": "convforge.api",
    "conv_integer": "convforge.api",
    "conv_transpose": "convforge.api",
    "dense": "convforge.api",
    "flatten_dense_head": "convforge.api",
    "fully_conv_head": "convforge.api",
    "global_avg_pool": "convforge.api",
    "global_max_pool": "convforge.api",
    "grid_pool_head": "convforge.api",
    "max_pool": "convforge.api",
    "prepare_conv": "convforge.api",
    "prepare_dense": "convforge.api",
    "qconv": "convforge.api",
    "resize": "convforge.api",
    "resize_conv": "convforge.api",
    "softmax": "convforge.api",
    "clear_cache": "convforge.build",
    "conv_matrix": "convforge.reference",
    "use_tuning_db": "convforge.schedules.tuning",
    "conv_geometry": "convforge.shapes",
    "conv_output_size": "convforge.shapes",
    "conv_transpose_geometry": "convforge.shapes",
    "conv_transpose_output_size": "convforge.shapes",
    "receptive_field": "convforge.shapes",
    "StackSpec": "convforge.streaming",
    "StreamingCausalStack": "convforge.streaming",
    "host_target": "convforge.targets",
    "CompiledModel": "convforge.export.compiled",
    "compile_model": "convforge.export.compiled",
    "load": "convforge.export.compiled",
    "check_model": "convforge.export.check_model",
}

#: The modules of _LAZY that import no TVM (the numpy API's import TVM's compiler when a
#: call compiles: a cached kernel runs on TVM's runtime alone, convforge.build).
_WITHOUT_TVM = (
    "convforge.api", "convforge.build", "convforge.targets", "convforge.shapes",
    "convforge.reference", "convforge.export.compiled",
)  # fmt: skip


def __getattr__(name: str) -> Any:
    """Resolve a public name by importing its module once; later lookups find it in globals."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'convforge' has no attribute {name!r}")
    import importlib

    if module not in _WITHOUT_TVM:  # import TVM first, the quick way (convforge.tvm_import)
        from convforge.tvm_import import import_tvm

        import_tvm()
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
    "conv_integer",
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
    "prepare_dense",
    "qconv",
    "receptive_field",
    "resize",
    "resize_conv",
    "softmax",
    "use_tuning_db",
]
