"""Bad input: ValueError naming the parameter and the rule, raised before any compilation."""

import re

import numpy as np
import pytest

import convforge as cf
from convforge import build


def arr(*shape, dtype="float32"):
    return np.ones(shape, dtype=dtype)


X1, X2, X3 = arr(1, 4, 8), arr(1, 4, 6, 6), arr(1, 4, 4, 4, 4)
W1, W2 = arr(6, 4, 3), arr(6, 4, 3, 3)
WT2 = arr(4, 3, 3, 3)  # transposed-conv weight (C, O/groups, *K)

# (id, call, regexes the message must match: the parameter's name and the rule broken)
CASES = [
    # conv
    ("conv-stride-zero", lambda: cf.conv(X2, W2, stride=0), ["stride", "positive"]),
    ("conv-stride-negative", lambda: cf.conv(X2, W2, stride=(1, -1)), ["stride", "positive"]),
    ("conv-stride-fraction", lambda: cf.conv(X2, W2, stride=1.5), ["stride", "integers"]),
    ("conv-stride-length", lambda: cf.conv(X2, W2, stride=(1, 1, 1)), ["stride", "2 ints"]),
    ("conv-dilation-zero", lambda: cf.conv(X2, W2, dilation=0), ["dilation", "positive"]),
    ("conv-dilation-negative", lambda: cf.conv(X1, W1, dilation=-2), ["dilation", "positive"]),
    ("conv-padding-negative", lambda: cf.conv(X2, W2, padding=-1), ["padding", "non-negative"]),
    (
        "conv-padding-pair-negative",
        lambda: cf.conv(X2, W2, padding=((1, -2), (0, 0))),
        ["padding", "non-negative"],
    ),
    ("conv-padding-count", lambda: cf.conv(X2, W2, padding=(1, 1, 1)), ["padding", "2 ints"]),
    (
        "conv-padding-pair-size",
        lambda: cf.conv(X2, W2, padding=((1, 2, 3), 0)),
        ["padding", "lo, hi"],
    ),
    (
        "conv-padding-mode",
        lambda: cf.conv(X2, W2, padding="sam"),
        ["padding mode 'sam'", "unknown"],
    ),
    (
        "conv-kernel-larger",
        lambda: cf.conv(X2, arr(6, 4, 7, 3)),
        ["kernel", "larger than the padded input", "axis 0"],
    ),
    (
        "conv-dilated-kernel-larger",
        lambda: cf.conv(X1, W1, dilation=4, padding=0),
        ["kernel", "larger than the padded input", "dilation=4"],
    ),
    (
        "conv-groups-input-channels",
        lambda: cf.conv(arr(1, 3, 6, 6), arr(6, 1, 3, 3), groups=2),
        ["groups", "divide the input channels"],
    ),
    (
        "conv-groups-output-channels",
        lambda: cf.conv(X2, arr(3, 2, 3, 3), groups=2),
        ["groups", "divide the output channels"],
    ),
    ("conv-groups-zero", lambda: cf.conv(X2, W2, groups=0), ["groups", "positive"]),
    ("conv-groups-float", lambda: cf.conv(X2, W2, groups=1.0), ["groups", "positive int"]),
    ("conv-weight-channels", lambda: cf.conv(X2, arr(6, 3, 3, 3)), ["weight shape", "axis 1"]),
    (
        "conv-weight-depthwise",
        lambda: cf.conv(X2, arr(4, 4, 3, 3), groups=4),
        ["weight shape", "in_channels/groups"],
    ),
    ("conv-bias-shape", lambda: cf.conv(X2, W2, arr(5)), ["bias", r"shape \(6,\)"]),
    ("conv-bias-rank", lambda: cf.conv(X2, W2, arr(1, 6)), ["bias", r"shape \(6,\)"]),
    ("conv-x-rank-2", lambda: cf.conv(arr(4, 8), W1), ["x", "rank 3, 4 or 5"]),
    ("conv-x-rank-6", lambda: cf.conv(arr(1, 4, 2, 2, 2, 2), arr(6, 4, 1, 1, 1, 1)), ["x", "rank"]),
    ("conv-weight-rank", lambda: cf.conv(X2, W1), ["weight", "rank of x"]),
    (
        "conv-empty-axis",
        lambda: cf.conv(arr(1, 4, 0, 6), W2),
        ["every axis of x and weight", "positive"],
    ),
    (
        "conv-dtype-mismatch",
        lambda: cf.conv(X2, W2.astype(np.float64)),
        ["x, w", "one dtype", "float64"],
    ),
    (
        "conv-bias-dtype-mismatch",
        lambda: cf.conv(X2, W2, arr(6, dtype="float16")),
        ["bias", "one dtype", "float16"],
    ),
    (
        "conv-int-dtype",
        lambda: cf.conv(X2.astype(np.int32), W2.astype(np.int32)),
        ["dtype", "int32"],
    ),
    ("conv-bool-dtype", lambda: cf.conv(X2.astype(bool), W2.astype(bool)), ["dtype", "bool"]),
    ("conv-activation", lambda: cf.conv(X2, W2, activation="gelu"), ["activation", "'gelu'"]),
    (
        "conv-causal-2d",
        lambda: cf.conv(X2, W2, padding="causal"),
        ["padding='causal'", "1-D convolution only"],
    ),
    # conv_transpose
    ("ct-stride-zero", lambda: cf.conv_transpose(X2, WT2, stride=0), ["stride", "positive"]),
    (
        "ct-dilation-zero",
        lambda: cf.conv_transpose(X2, WT2, dilation=(1, 0)),
        ["dilation", "positive"],
    ),
    (
        "ct-padding-negative",
        lambda: cf.conv_transpose(X2, WT2, padding=-1),
        ["padding", "non-negative"],
    ),
    (
        "ct-padding-mode",
        lambda: cf.conv_transpose(X2, WT2, padding="samee"),
        ["padding mode", "unknown"],
    ),
    (
        "ct-padding-mode-with-output-shape",
        lambda: cf.conv_transpose(X2, WT2, padding="samee", output_shape=(8, 8)),
        ["padding mode", "unknown"],
    ),
    (
        "ct-padding-removes-output",
        lambda: cf.conv_transpose(arr(1, 4, 1, 1), WT2, padding=2),
        ["padding", "removes the whole output", "lo \\+ hi = 4 must be smaller"],
    ),
    (
        "ct-output-padding-stride",
        lambda: cf.conv_transpose(X2, WT2, stride=2, output_padding=2),
        ["output_padding", r"smaller than max\(stride, dilation\) = 2"],
    ),
    (
        "ct-output-padding-dilation",
        lambda: cf.conv_transpose(X2, WT2, dilation=(1, 3), output_padding=(0, 3)),
        ["output_padding", r"max\(stride, dilation\) = 3", "axis 1"],
    ),
    (
        "ct-output-padding-negative",
        lambda: cf.conv_transpose(X2, WT2, output_padding=-1),
        ["output_padding", ">= 0"],
    ),
    (
        "ct-output-shape-too-large",
        lambda: cf.conv_transpose(X2, WT2, stride=2, output_shape=(13, 15)),
        ["output_shape", "unreachable", "axis 1", r"\[1, 14\]"],
    ),
    (
        "ct-output-shape-zero",
        lambda: cf.conv_transpose(X2, WT2, output_shape=(0, 8)),
        ["output_shape", "unreachable", "axis 0"],
    ),
    (
        "ct-output-shape-length",
        lambda: cf.conv_transpose(X2, WT2, output_shape=(8,)),
        ["output_shape", "2 integer spatial sizes"],
    ),
    (
        "ct-output-shape-batch",
        lambda: cf.conv_transpose(X2, WT2, output_shape=(2, 3, 8, 8)),
        ["output_shape", r"\(N, C_out\) = \(1, 3\)"],
    ),
    (
        "ct-causal",
        lambda: cf.conv_transpose(X1, arr(4, 3, 3), padding="causal"),
        ["causal", "transposed"],
    ),
    (
        "ct-groups-channels",
        lambda: cf.conv_transpose(arr(1, 3, 6, 6), arr(3, 1, 3, 3), groups=2),
        ["groups", "divide the input channels"],
    ),
    (
        "ct-weight-channels",
        lambda: cf.conv_transpose(X2, arr(3, 3, 3, 3)),
        ["weight shape", "axis 0"],
    ),
    ("ct-weight-rank", lambda: cf.conv_transpose(X2, arr(4, 3, 3)), ["weight", "rank of x"]),
    (
        "ct-bias-shape",
        lambda: cf.conv_transpose(X2, arr(4, 3, 3, 3), arr(4), groups=2),
        ["bias", r"shape \(6,\)"],
    ),
    ("ct-x-rank-2", lambda: cf.conv_transpose(arr(4, 8), arr(4, 3)), ["x", "rank 3, 4 or 5"]),
    (
        "ct-x-rank-6",
        lambda: cf.conv_transpose(arr(1, 4, 2, 2, 2, 2), arr(4, 3, 1, 1, 1, 1)),
        ["x", "rank"],
    ),
    (
        "ct-dtype-mismatch",
        lambda: cf.conv_transpose(X2.astype(np.float16), WT2),
        ["x, w", "one dtype", "float16"],
    ),
    (
        "ct-int-dtype",
        lambda: cf.conv_transpose(X2.astype(np.int64), WT2.astype(np.int64)),
        ["dtype", "int64"],
    ),
    (
        "ct-activation",
        lambda: cf.conv_transpose(X2, WT2, activation="elu"),
        ["activation", "'elu'"],
    ),
    # causal_conv1d
    ("causal-2d", lambda: cf.causal_conv1d(X2, W2), ["x", r"\(N, C, L\)", "rank 3"]),
    ("causal-rank-2", lambda: cf.causal_conv1d(arr(4, 8), W1), ["x", r"\(N, C, L\)"]),
    (
        "causal-dilation-zero",
        lambda: cf.causal_conv1d(X1, W1, dilation=0),
        ["dilation", "positive"],
    ),
    (
        "causal-groups",
        lambda: cf.causal_conv1d(X1, arr(6, 1, 3), groups=3),
        ["groups", "divide the input channels"],
    ),
    ("causal-weight", lambda: cf.causal_conv1d(X1, W2), ["weight", "rank of x"]),
    ("causal-bias", lambda: cf.causal_conv1d(X1, W1, arr(4)), ["bias", r"shape \(6,\)"]),
    (
        "causal-int-dtype",
        lambda: cf.causal_conv1d(X1.astype(np.int32), W1.astype(np.int32)),
        ["dtype", "int32"],
    ),
    ("causal-activation", lambda: cf.causal_conv1d(X1, W1, activation="swish"), ["activation"]),
    # sizes: ints and numpy integers only; floats, strings, bools, None refused by name
    ("conv-padding-float", lambda: cf.conv(X2, W2, padding=1.0), ["padding", "int, a mode"]),
    ("conv-padding-none", lambda: cf.conv(X2, W2, padding=None), ["padding", "int, a mode"]),
    (
        "conv-padding-float-entry",
        lambda: cf.conv(X2, W2, padding=(1.0, 1)),
        ["padding", "non-negative integers"],
    ),
    (
        "conv-padding-bool-pair",
        lambda: cf.conv(X2, W2, padding=((True, 0), (0, 0))),
        ["padding", "non-negative integers"],
    ),
    ("conv-stride-string", lambda: cf.conv(X2, W2, stride="2"), ["stride", "int or a sequence"]),
    ("conv-stride-bool", lambda: cf.conv(X2, W2, stride=True), ["stride", "int or a sequence"]),
    ("conv-stride-none", lambda: cf.conv(X2, W2, stride=None), ["stride", "int or a sequence"]),
    (
        "conv-stride-numpy-float",
        lambda: cf.conv(X2, W2, stride=np.float64(2.0)),
        ["stride", "integers"],
    ),
    (
        "conv-stride-float-array",
        lambda: cf.conv(X2, W2, stride=np.array([2.0, 2.0])),
        ["stride", "integers"],
    ),
    (
        "conv-dilation-nested",
        lambda: cf.conv(X2, W2, dilation=((1,), (1,))),
        ["dilation", "integers"],
    ),
    ("conv-groups-bool", lambda: cf.conv(X2, W2, groups=True), ["groups", "positive int"]),
    (
        "conv-groups-numpy-float",
        lambda: cf.conv(X2, W2, groups=np.float32(1)),
        ["groups", "positive int"],
    ),
    (
        "ct-output-shape-string",
        lambda: cf.conv_transpose(X2, WT2, output_shape="16"),
        ["output_shape", "sequence of ints"],
    ),
    (
        "ct-output-shape-fraction",
        lambda: cf.conv_transpose(X2, WT2, output_shape=(8.5, 8)),
        ["output_shape", "integers"],
    ),
    (
        "ct-output-padding-float",
        lambda: cf.conv_transpose(X2, WT2, stride=2, output_padding=1.0),
        ["output_padding", "int or a sequence"],
    ),
    (
        "ct-padding-float",
        lambda: cf.conv_transpose(X2, WT2, padding=0.5),
        ["padding", "int, a mode"],
    ),
    (
        "prepare-x-shape-fraction",
        lambda: cf.prepare_conv(W2, x_shape=(1, 4, 8.5, 8)),
        ["x_shape", "integers"],
    ),
    (
        "prepare-x-shape-string",
        lambda: cf.prepare_conv(W2, x_shape="1,4,8,8"),
        ["x_shape", "sequence of ints"],
    ),
    (
        "prepare-x-shape-none",
        lambda: cf.prepare_conv(W2, x_shape=None),
        ["x_shape", "sequence of ints"],
    ),
    ("causal-dilation-float", lambda: cf.causal_conv1d(X1, W1, dilation=2.0), ["dilation"]),
    (
        "causal-state-dilation-float",
        lambda: cf.causal_conv_with_state(X1, arr(4, 1, 3), dilation=1.5),
        ["dilation", "positive int"],
    ),
    ("maxpool-kernel-string", lambda: cf.max_pool(X2, "3"), ["kernel", "int or a sequence"]),
    ("maxpool-kernel-float", lambda: cf.max_pool(X2, 3.0), ["kernel", "int or a sequence"]),
    (
        "maxpool-ceil-mode-int",
        lambda: cf.max_pool(X2, 3, ceil_mode=1),
        ["ceil_mode", "bool"],
    ),
    (
        "avgpool-stride-float",
        lambda: cf.avg_pool(X2, 2, stride=np.float64(2)),
        ["stride", "int or a sequence"],
    ),
    (
        "adaptive-output-size-float",
        lambda: cf.adaptive_avg_pool(X2, 2.5),
        ["output_size", "int or a sequence"],
    ),
    (
        "adaptive-output-size-none",
        lambda: cf.adaptive_max_pool(X2, None),
        ["output_size", "int or a sequence"],
    ),
    ("resize-size-string", lambda: cf.resize(X2, size="4"), ["size", "int or a sequence"]),
    ("resize-scale-string", lambda: cf.resize(X2, scale="2"), ["scale", "number"]),
    ("resize-scale-bool", lambda: cf.resize(X2, scale=True), ["scale", "number"]),
    (
        "head-grid-float",
        lambda: cf.grid_pool_head(X2, arr(5, 16), grid=2.0),
        ["grid", "int or a sequence"],
    ),
    (
        "conv3d-stride-zero",
        lambda: cf.conv(X3, arr(2, 4, 2, 2, 2), stride=(1, 0, 1)),
        ["stride", "positive"],
    ),
]


@pytest.mark.parametrize("call, rules", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_value_error_before_compiling(call, rules):
    before = build.cache_size()
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    for rule in rules:
        assert re.search(rule, message), f"{rule!r} not in {message!r}"
    assert build.cache_size() == before, "compiled a kernel before rejecting the input"
