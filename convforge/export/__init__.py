"""ONNX export, whole-model compilation and checks against onnxruntime.

Names load lazily, so ``convforge.export.model.load`` (running an exported library) works
in a process without onnx or onnxruntime installed.
"""

import importlib

_EXPORTS = {
    "Agreement": "convforge.export.check",
    "compare": "convforge.export.check",
    "run_onnxruntime": "convforge.export.check",
    "tolerances": "convforge.export.check",
    "adaptive_pool_model": "convforge.export.onnx_graphs",
    "causal_conv1d_model": "convforge.export.onnx_graphs",
    "conv_model": "convforge.export.onnx_graphs",
    "conv_transpose_model": "convforge.export.onnx_graphs",
    "dense_model": "convforge.export.onnx_graphs",
    "flatten_dense_head_model": "convforge.export.onnx_graphs",
    "fully_conv_head_model": "convforge.export.onnx_graphs",
    "grid_pool_head_model": "convforge.export.onnx_graphs",
    "pool_model": "convforge.export.onnx_graphs",
    "resize_conv_model": "convforge.export.onnx_graphs",
    "resize_model": "convforge.export.onnx_graphs",
    "save_model": "convforge.export.onnx_graphs",
    "softmax_model": "convforge.export.onnx_graphs",
    "causal_conv_state_model": "convforge.export.streaming",
    "causal_conv_with_state_model": "convforge.export.streaming",
    "stack_model": "convforge.export.streaming",
    "CompiledModel": "convforge.export.model",
    "compile_model": "convforge.export.model",
    "load": "convforge.export.model",
    "check_model": "convforge.export.check_model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'convforge.export' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
