"""ONNX graphs of every operator, and checks against onnxruntime."""

from convforge.export.check import Agreement, compare, run_onnxruntime, tolerances
from convforge.export.onnx_graphs import (
    causal_conv1d_model,
    conv_model,
    conv_transpose_model,
    save_model,
)
from convforge.export.streaming import (
    causal_conv_state_model,
    causal_conv_with_state_model,
    stack_model,
)

__all__ = [
    "Agreement",
    "causal_conv1d_model",
    "causal_conv_state_model",
    "causal_conv_with_state_model",
    "compare",
    "conv_model",
    "conv_transpose_model",
    "run_onnxruntime",
    "save_model",
    "stack_model",
    "tolerances",
]
