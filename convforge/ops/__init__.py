"""Computations only: every operator as a TVM tensor expression (no schedules here)."""

from convforge.ops.activation import ACTIVATIONS, NO_EPILOGUE, Epilogue, activate
from convforge.ops.causal import causal_conv_state, causal_conv_with_state
from convforge.ops.conv import conv, conv_transpose, pad
from convforge.ops.conv_nchwc import (
    ChannelBlocks,
    blocks_fit,
    conv_nchwc,
    pack_weight,
    pack_weight_array,
)
from convforge.ops.conv_transpose_gather import conv_transpose_gather
from convforge.ops.conv_transpose_subpixel import conv_transpose_subpixel, subpixel_phases
from convforge.ops.heads import (
    dense,
    dense_unpack,
    flatten,
    flatten_dense_head,
    fully_conv_head,
    grid_pool_head,
    softmax,
)
from convforge.ops.pool import (
    adaptive_pool,
    lp_pool,
    max_pool_with_indices,
    pool,
    window_max,
)
from convforge.ops.resize import nearest_upsample_conv, resize, resize_conv
from convforge.ops.winograd import WinogradTiles, conv2d_winograd, transform_weight_array

__all__ = [
    "ACTIVATIONS",
    "NO_EPILOGUE",
    "ChannelBlocks",
    "Epilogue",
    "WinogradTiles",
    "activate",
    "adaptive_pool",
    "blocks_fit",
    "causal_conv_state",
    "causal_conv_with_state",
    "conv",
    "conv2d_winograd",
    "conv_nchwc",
    "conv_transpose",
    "conv_transpose_gather",
    "conv_transpose_subpixel",
    "dense",
    "dense_unpack",
    "flatten",
    "flatten_dense_head",
    "fully_conv_head",
    "grid_pool_head",
    "lp_pool",
    "max_pool_with_indices",
    "nearest_upsample_conv",
    "pack_weight",
    "pack_weight_array",
    "pad",
    "pool",
    "resize",
    "resize_conv",
    "softmax",
    "subpixel_phases",
    "transform_weight_array",
    "window_max",
]
