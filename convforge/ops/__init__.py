"""Computations only: every operator as a TVM tensor expression (no schedules here)."""

from convforge.ops.activation import ACTIVATIONS, activate
from convforge.ops.causal import causal_conv_state, causal_conv_with_state
from convforge.ops.conv import conv, conv_transpose, pad

__all__ = [
    "ACTIVATIONS",
    "activate",
    "causal_conv_state",
    "causal_conv_with_state",
    "conv",
    "conv_transpose",
    "pad",
]
