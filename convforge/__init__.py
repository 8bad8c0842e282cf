"""convforge: convolution operators as TVM tensor expressions, scheduled, exported, checked.

``import convforge as cf``; ``cf.conv(x, w, stride=2, padding="same")`` compiles (once) and
runs a TVM kernel for the host CPU on numpy arrays.
"""

from convforge.api import causal_conv1d, conv, conv_transpose
from convforge.reference import conv_matrix
from convforge.schedules.tuning import use_tuning_db
from convforge.shapes import (
    conv_geometry,
    conv_output_size,
    conv_transpose_geometry,
    conv_transpose_output_size,
    receptive_field,
)
from convforge.targets import host_target

__version__ = "0.1.0"

__all__ = [
    "causal_conv1d",
    "conv",
    "conv_geometry",
    "conv_matrix",
    "conv_output_size",
    "conv_transpose",
    "conv_transpose_geometry",
    "conv_transpose_output_size",
    "host_target",
    "receptive_field",
    "use_tuning_db",
]
