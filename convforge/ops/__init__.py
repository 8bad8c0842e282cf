"""Computations only: every operator as a TVM tensor expression (no schedules here)."""

from convforge.ops.activation import ACTIVATIONS, activate
from convforge.ops.conv import conv, conv_transpose, pad
from convforge.ops.conv_nchwc import ChannelBlocks, conv_nchwc

__all__ = [
    "ACTIVATIONS",
    "ChannelBlocks",
    "activate",
    "conv",
    "conv_nchwc",
    "conv_transpose",
    "pad",
]
