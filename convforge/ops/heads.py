"""Dense layer, softmax and classifier heads in TE.

Block names (the contract with ``convforge.schedules``): ``flatten``, ``dense`` (the
reduction), ``dense_epilogue`` (bias, cast), ``softmax_max``, ``softmax_exp``,
``softmax_sum``, ``softmax_norm``, plus the blocks of ``ops.conv`` and ``ops.pool``.
"""

from __future__ import annotations

import math

from convforge.ops import blocks
from convforge.ops.activation import Epilogue, exp
from convforge.ops.conv import accumulator_dtype, conv
from convforge.ops.pool import adaptive_pool
from convforge.shapes import AdaptivePoolGeometry, ConvGeometry, global_pool_geometry
from convforge.tvm_import import te


def flatten(x: te.Tensor) -> te.Tensor:
    """(N, C, *S) -> (N, C*prod(S)) in row-major order (ONNX Flatten axis=1)."""
    sizes = [int(v) for v in x.shape]
    if len(sizes) == 2:
        return x
    tail = sizes[1:]

    def body(n, f):
        idx, rest = [], f
        for size in reversed(tail):
            idx.append(rest % size)
            rest = rest // size
        return x[(n, *reversed(idx))]

    return te.compute((sizes[0], math.prod(tail)), body, name=blocks.FLATTEN)


def dense(x: te.Tensor, w: te.Tensor, bias: te.Tensor | None) -> te.Tensor:
    """``y[n, k] = sum_f x[n, f] * w[k, f] + bias[k]``: x (N, F), w (K, F) -> (N, K)."""
    dtype = x.dtype
    acc = accumulator_dtype(dtype)
    batch, features = (int(v) for v in x.shape)
    classes = int(w.shape[0])
    rf = te.reduce_axis((0, features), "rf")
    out = te.compute(
        (batch, classes),
        lambda n, k: te.sum(x[n, rf].astype(acc) * w[k, rf].astype(acc), axis=rf),
        name=blocks.DENSE,
    )
    if bias is None and acc == dtype:
        return out

    def epilogue(n, k):
        value = out[n, k]
        if bias is not None:
            value = value + bias[k].astype(acc)
        return value.astype(dtype)

    return te.compute((batch, classes), epilogue, name=blocks.DENSE_EPILOGUE)


def dense_unpack(blocked: te.Tensor, bias: te.Tensor | None, out_features: int) -> te.Tensor:
    """The (N, K) output of a dense layer computed over a packed weight
    (``plan.DensePlan``): ``y[n, k] = blocked[k // W, n, 0, k % W] + bias[k]`` from the
    kernel's ``blocked`` (K'/W, N, 1, W), K = ``out_features`` <= K'."""
    width, batch = int(blocked.shape[3]), int(blocked.shape[1])

    def body(n, k):
        value = blocked[k // width, n, 0, k % width]
        return value if bias is None else value + bias[k]

    return te.compute((batch, out_features), body, name=blocks.DENSE_UNPACK)


def softmax(x: te.Tensor) -> te.Tensor:
    """Numerically stable softmax along axis 1 of (N, K, ...): ``exp(x - max) / sum(exp(x - max))``.

    float16 inputs are computed in float32 and the result cast back.
    """
    dtype = x.dtype
    acc = accumulator_dtype(dtype)
    shape = [int(v) for v in x.shape]
    rest = shape[:1] + shape[2:]
    rk = te.reduce_axis((0, shape[1]), "rk")
    peak = te.compute(
        rest, lambda n, *tail: te.max(x[(n, rk, *tail)], axis=rk), name=blocks.SOFTMAX_MAX
    )
    exps = te.compute(
        shape,
        lambda n, k, *tail: exp((x[(n, k, *tail)] - peak[(n, *tail)]).astype(acc), acc),
        name=blocks.SOFTMAX_EXP,
    )
    rs = te.reduce_axis((0, shape[1]), "rs")
    total = te.compute(
        rest, lambda n, *tail: te.sum(exps[(n, rs, *tail)], axis=rs), name=blocks.SOFTMAX_SUM
    )
    return te.compute(
        shape,
        lambda n, k, *tail: (exps[(n, k, *tail)] / total[(n, *tail)]).astype(dtype),
        name=blocks.SOFTMAX_NORM,
    )


def flatten_dense_head(x: te.Tensor, w: te.Tensor, bias: te.Tensor | None) -> te.Tensor:
    """``softmax(dense(flatten(x)))``: x (N, C, *S), w (K, C*prod(S)) -> (N, K)."""
    return softmax(dense(flatten(x), w, bias))


def grid_pool_head(
    x: te.Tensor, w: te.Tensor, bias: te.Tensor | None, pool_geom: AdaptivePoolGeometry
) -> te.Tensor:
    """``softmax(dense(flatten(adaptive_pool(x))))``: x (N, C, *S) of any size pooled to the
    grid ``pool_geom.out_size`` G, w (K, C*prod(G)) -> (N, K)."""
    return softmax(dense(flatten(adaptive_pool(x, pool_geom)), w, bias))


def fully_conv_head(
    x: te.Tensor, w: te.Tensor, bias: te.Tensor | None, conv_geom: ConvGeometry
) -> te.Tensor:
    """``softmax(global_avg_pool(conv1x1(x)))``: x (N, C, *S) of any size, w (K, C, 1, ...)
    -> (N, K)."""
    scores = conv(x, w, conv_geom, Epilogue(bias))
    pooled = adaptive_pool(scores, global_pool_geometry(conv_geom.out_shape, kind="avg"))
    return softmax(flatten(pooled))
