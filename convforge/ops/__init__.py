"""Computations only: every operator as a TVM tensor expression (no schedules here)."""

from convforge.ops.activation import ACTIVATIONS, activate
from convforge.ops.conv import conv, conv_transpose, pad
from convforge.ops.interpolate import resize

__all__ = ["ACTIVATIONS", "activate", "conv", "conv_transpose", "pad", "resize"]
