"""ONNX graphs of every operator, and checks against onnxruntime."""

from convforge.export.check import Agreement, compare, run_onnxruntime, tolerances
from convforge.export.onnx_graphs import (
    adaptive_pool_model,
    causal_conv1d_model,
    conv_model,
    conv_transpose_model,
    dense_model,
    flatten_dense_head_model,
    fully_conv_head_model,
    grid_pool_head_model,
    pool_model,
    resize_conv_model,
    resize_model,
    save_model,
    softmax_model,
)
from convforge.export.streaming import (
    causal_conv_state_model,
    causal_conv_with_state_model,
    stack_model,
)

__all__ = [
    "Agreement",
    "adaptive_pool_model",
    "causal_conv1d_model",
    "causal_conv_state_model",
    "causal_conv_with_state_model",
    "compare",
    "conv_model",
    "conv_transpose_model",
    "dense_model",
    "flatten_dense_head_model",
    "fully_conv_head_model",
    "grid_pool_head_model",
    "pool_model",
    "resize_conv_model",
    "resize_model",
    "run_onnxruntime",
    "save_model",
    "softmax_model",
    "stack_model",
    "tolerances",
]
