"""Example networks (the lecture's classifiers, WaveNet, ByteNet, image decoders) as ONNX."""

from convforge.examples.networks import (
    ByteNetConfig,
    WaveNetConfig,
    bytenet,
    checkerboard_spread,
    classifier_conv,
    classifier_flatten,
    classifier_grid,
    decoder,
    resnet50,
    wavenet,
)

__all__ = [
    "ByteNetConfig",
    "WaveNetConfig",
    "bytenet",
    "checkerboard_spread",
    "classifier_conv",
    "classifier_flatten",
    "classifier_grid",
    "decoder",
    "resnet50",
    "wavenet",
]
