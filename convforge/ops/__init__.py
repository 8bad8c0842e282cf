"""Computations only: every operator as a TVM tensor expression (no schedules here)."""

from convforge.ops.activation import ACTIVATIONS, activate
from convforge.ops.conv import conv, conv_transpose, pad
from convforge.ops.conv_nchwc import ChannelBlocks, conv_nchwc
from convforge.ops.heads import (
    dense,
    flatten,
    flatten_dense_head,
    fully_conv_head,
    grid_pool_head,
    softmax,
)
from convforge.ops.pool import adaptive_pool, pool
from convforge.ops.resize import resize, resize_conv

__all__ = [
    "ACTIVATIONS",
    "ChannelBlocks",
    "activate",
    "adaptive_pool",
    "conv",
    "conv_nchwc",
    "conv_transpose",
    "dense",
    "flatten",
    "flatten_dense_head",
    "fully_conv_head",
    "grid_pool_head",
    "pad",
    "pool",
    "resize",
    "resize_conv",
    "softmax",
]
