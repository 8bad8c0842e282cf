"""N-d max, average, adaptive and global pooling in TE (ONNX / PyTorch semantics).

Layout ``(N, C, *spatial)``. Block names (the contract with ``convforge.schedules``):
``pool_pad`` (fills the padding and any ``ceil_mode`` overhang: 0 for average, the
lowest value for max), ``pool`` (the reduction; annotated :data:`WINDOWS_TILE_ATTR` when
the windows tile the input), ``pool_epilogue`` (the division of
average pooling, the cast of float16 sums); ``window_max`` (:func:`window_max`).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

from convforge.ops import blocks
from convforge.ops.conv import accumulator_dtype
from convforge.shapes import AdaptivePoolGeometry, PoolGeometry
from convforge.tvm_import import te, tirx

#: Annotation of a ``pool`` block whose windows tile the input (kernel == stride, no dilation).
WINDOWS_TILE_ATTR = blocks.POOL_WINDOWS_TILE_ATTR


def lowest_value(dtype) -> tirx.PrimExpr:
    """-inf for floating-point ``dtype`` (the identity of max), else its smallest value."""
    dtype = str(dtype)
    if dtype.startswith("float") or dtype.startswith("bfloat"):
        return tirx.const(float("-inf"), dtype)
    return tirx.min_value(dtype)


def max_reduce(value, axis):
    """Max reduction whose identity is -inf: a window of -inf samples is -inf (TVM's own
    ``te.max`` starts at the lowest finite value, and gives that)."""
    return _max_reducer()(value, axis=axis)


@functools.cache
def _max_reducer():
    return te.comm_reducer(lambda a, b: tirx.max(a, b), lowest_value, name="max_reduce")


def fill_pad(
    x: te.Tensor, pads: Sequence[tuple[int, int]], fill: tirx.PrimExpr, name: str = blocks.POOL_PAD
) -> te.Tensor:
    """Pad the spatial axes of ``x`` by ``(lo, hi)`` pairs with the value ``fill``."""
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        return x
    sizes = [int(v) for v in x.shape]
    lead = len(sizes) - len(pads)
    shape = sizes[:lead] + [n + lo + hi for n, (lo, hi) in zip(sizes[lead:], pads)]

    def body(*idx):
        src, inside = list(idx[:lead]), []
        for i, n, (lo, hi) in zip(idx[lead:], sizes[lead:], pads):
            src.append(i - lo)
            if lo:
                inside.append(i >= lo)
            if hi:
                inside.append(i < n + lo)
        return tirx.if_then_else(tirx.all(*inside), x[tuple(src)], fill)

    return te.compute(shape, body, name=name)


def pool(x: te.Tensor, geom: PoolGeometry) -> te.Tensor:
    """Max or average pooling: (N, C, *I) -> (N, C, *geom.out_size).

    Max: the largest tap ``x[p*s - lo + r*d]`` inside the input. Average: the window sum
    divided by the number of taps inside ``[0, I)`` (``count_include_pad=False``) or inside
    ``[-lo, I + hi)`` (``True``; PyTorch / ONNX), per axis, multiplied over axes.
    """
    dtype = x.dtype
    is_max = geom.kind == "max"
    acc = dtype if is_max else accumulator_dtype(dtype)
    fill = tirx.min_value(dtype) if is_max else tirx.const(0, dtype)
    pads = [
        (lo, reach - i - lo) for i, (lo, _), reach in zip(geom.in_size, geom.padding, geom.reach)
    ]
    xp = fill_pad(x, pads, fill)
    taps = [te.reduce_axis((0, k), f"rk{a}") for a, k in enumerate(geom.kernel)]

    def reduce_body(n, c, *pos):
        src = [p * s + r * d for p, r, s, d in zip(pos, taps, geom.stride, geom.dilation)]
        value = xp[(n, c, *src)]
        if is_max:
            return max_reduce(value, axis=taps)
        return te.sum(value.astype(acc), axis=taps)

    attrs = {WINDOWS_TILE_ATTR: 1} if geom.windows_tile else None
    out = te.compute(geom.out_shape, reduce_body, name=blocks.POOL, attrs=attrs)
    if is_max:
        return out

    def window_length(p, axis):
        """Taps ``start + r*d`` (r < k) inside ``[0, I)``, or ``[-lo, I + hi)`` with
        ``count_include_pad`` (a ``ceil_mode`` overhang past the padding never counts)."""
        i, k, s, d = geom.in_size[axis], geom.kernel[axis], geom.stride[axis], geom.dilation[axis]
        lo, hi = geom.padding[axis]
        start = p * s - lo
        low, high = (-lo, i + hi) if geom.count_include_pad else (0, i)
        if d == 1:
            return tirx.min(start + k, high) - tirx.max(start, low)
        first = tirx.max(tirx.floordiv(low - start + d - 1, d), 0)
        last = tirx.min(tirx.floordiv(high - 1 - start, d), k - 1)
        return tirx.max(last - first + 1, 0)

    def epilogue(n, c, *pos):
        count = math.prod(window_length(p, a) for a, p in enumerate(pos))
        return (out[(n, c, *pos)] / count.astype(acc)).astype(dtype)

    return te.compute(geom.out_shape, epilogue, name=blocks.POOL_EPILOGUE)


def window_max(x: te.Tensor, geom: PoolGeometry) -> te.Tensor:
    """Max pooling of windows inside the input (``geom.windows_inside``): (N, C, *I) ->
    (N, C, *geom.out_size), each output the max of its taps written out, with no reduction
    axis: a schedule may compute the block at whichever loop writes its windows (TVM
    derives a reduction's extents wrongly there where that loop's last region is clipped).
    """
    if geom.kind != "max" or not geom.windows_inside:
        raise ValueError(f"window_max needs max pooling with windows inside the input, got {geom}")
    taps = list(itertools.product(*(range(k) for k in geom.kernel)))

    def body(n, c, *pos):
        starts = [p * k for p, k in zip(pos, geom.kernel)]
        values = (x[(n, c, *(s + r for s, r in zip(starts, tap)))] for tap in taps)
        return functools.reduce(tirx.max, values)

    return te.compute(geom.out_shape, body, name=blocks.WINDOW_MAX)


def adaptive_pool(x: te.Tensor, geom: AdaptivePoolGeometry) -> te.Tensor:
    """Adaptive (and global) pooling to the grid ``geom.out_size``: cell ``j`` of an axis
    of input length ``I`` and output length ``O`` spans ``[floor(j*I/O), ceil((j+1)*I/O))``.

    (N, C, *I) -> (N, C, *O): the max or the mean of each cell.
    """
    dtype = x.dtype
    is_max = geom.kind == "max"
    acc = dtype if is_max else accumulator_dtype(dtype)
    # the window and the exactness once per axis, O(out_size) each: asked per cell, they
    # cost O(out_size^2) in Python (a 20000x20000 grid took minutes before compiling)
    window = geom.window
    exact = [  # every cell has the longest length: no mask needed
        all(e - s == window[axis] for s, e in geom.cells(axis)) for axis in range(geom.ndim)
    ]
    taps = [te.reduce_axis((0, w), f"rk{a}") for a, w in enumerate(window)]

    def bounds(p, axis):
        i, o = geom.in_size[axis], geom.out_size[axis]
        return (p * i) // o, ((p + 1) * i + o - 1) // o

    def cell_is_exact(axis):
        return exact[axis]

    def reduce_body(n, c, *pos):
        src, inside = [], []
        for axis, (p, r) in enumerate(zip(pos, taps)):
            start, end = bounds(p, axis)
            src.append(tirx.min(start + r, geom.in_size[axis] - 1))
            if not cell_is_exact(axis):
                inside.append(start + r < end)
        value = x[(n, c, *src)]
        if is_max:
            if inside:
                value = tirx.if_then_else(tirx.all(*inside), value, tirx.min_value(dtype))
            return max_reduce(value, axis=taps)
        value = value.astype(acc)
        if inside:
            value = tirx.if_then_else(tirx.all(*inside), value, tirx.const(0, acc))
        return te.sum(value, axis=taps)

    out = te.compute(geom.out_shape, reduce_body, name=blocks.POOL)
    if is_max:
        return out

    def epilogue(n, c, *pos):
        count = 1
        for axis, p in enumerate(pos):
            start, end = bounds(p, axis)
            count = count * (end - start)
        if isinstance(count, int):
            return (out[(n, c, *pos)] * tirx.const(1.0 / count, acc)).astype(dtype)
        return (out[(n, c, *pos)] / count.astype(acc)).astype(dtype)

    return te.compute(geom.out_shape, epilogue, name=blocks.POOL_EPILOGUE)


def max_pool_with_indices(
    x: te.Tensor, geom: PoolGeometry, storage_order: int = 0
) -> tuple[te.Tensor, te.Tensor]:
    """Max pooling and ONNX MaxPool's ``Indices`` output: (N, C, *I) -> two (N, C, *out),
    as onnxruntime computes them: each window scans its taps inside the input in row-major
    order from the first one, keeping a tap only where it is strictly greater. So NaN
    taps are skipped, except a NaN first tap, which is the result; among equal maxima the
    first wins. Equivalently (and independent of the order the reductions run in): the
    first tap ``f``'s value and index if ``f`` is NaN, else the maximum of the non-NaN
    taps and the smallest row-major index holding it.

    The index is the flat position in ``x`` (batch and channel included): row-major
    (``storage_order=0``), or with the spatial axes in reverse order, the first fastest
    (``storage_order=1``). Plain reductions only (GPU rules refuse a tuple reduction):
    blocks ``max_pool_value``, ``max_pool_argmax``, ``max_pool_indices`` and
    ``max_pool_output``.
    """
    if geom.kind != "max":
        raise ValueError(f"max_pool_with_indices needs max pooling, got kind {geom.kind!r}")
    if storage_order not in (0, 1):
        raise ValueError(f"storage_order must be 0 or 1, got {storage_order!r}")
    dtype = x.dtype
    sizes = geom.in_size
    none = tirx.const(2**62, "int64")

    def tap_source(pos, taps):
        return [
            p * s - lo + r * d
            for p, r, s, d, (lo, _) in zip(pos, taps, geom.stride, geom.dilation, geom.padding)
        ]

    def first_source(pos):
        """The first tap inside the input (in row-major order): per axis the first inside."""
        src = []
        for p, s, d, (lo, _) in zip(pos, geom.stride, geom.dilation, geom.padding):
            start = p * s - lo
            src.append(start + tirx.max(tirx.floordiv(-start + d - 1, d), 0) * d)
        return src

    def flat_index(n, c, src):
        flat = (n * geom.channels + c).astype("int64")
        for i, size in zip(src, sizes):
            flat = flat * size + i.astype("int64")
        return flat

    def is_nan(value):
        return tirx.isnan(value)

    value_taps = [te.reduce_axis((0, k), f"rk{a}") for a, k in enumerate(geom.kernel)]

    def value_body(n, c, *pos):
        src = tap_source(pos, value_taps)
        inside = tirx.all(*(tirx.all(i >= 0, i < size) for i, size in zip(src, sizes)))
        clamped = [tirx.max(tirx.min(i, size - 1), 0) for i, size in zip(src, sizes)]
        value = x[(n, c, *clamped)]
        keep = tirx.all(inside, tirx.Not(is_nan(value)))
        return max_reduce(tirx.if_then_else(keep, value, lowest_value(dtype)), axis=value_taps)

    best = te.compute(geom.out_shape, value_body, name=blocks.MAX_POOL_VALUE)

    def output_body(n, c, *pos):
        first = x[(n, c, *first_source(pos))]
        return tirx.if_then_else(is_nan(first), first, best[(n, c, *pos)])

    output = te.compute(geom.out_shape, output_body, name=blocks.MAX_POOL_OUTPUT)
    index_taps = [te.reduce_axis((0, k), f"ri{a}") for a, k in enumerate(geom.kernel)]

    def index_body(n, c, *pos):
        src = tap_source(pos, index_taps)
        inside = tirx.all(*(tirx.all(i >= 0, i < size) for i, size in zip(src, sizes)))
        clamped = [tirx.max(tirx.min(i, size - 1), 0) for i, size in zip(src, sizes)]
        hit = tirx.all(inside, x[(n, c, *clamped)] == best[(n, c, *pos)])
        return te.min(tirx.if_then_else(hit, flat_index(n, c, src), none), axis=index_taps)

    index = te.compute(geom.out_shape, index_body, name=blocks.MAX_POOL_ARGMAX)
    plane = math.prod(sizes)

    def indices_body(n, c, *pos):
        source = first_source(pos)
        first_nan = is_nan(x[(n, c, *source)])
        row = tirx.if_then_else(first_nan, flat_index(n, c, source), index[(n, c, *pos)])
        if storage_order == 0:
            return row
        column, stride = row // plane * plane, 1
        coords, rem = [], row % plane
        for size in reversed(sizes):  # row-major: the last axis is fastest
            coords.append(rem % size)
            rem = rem // size
        coords.reverse()
        for coord, size in zip(coords, sizes):  # column-major: the first axis is fastest
            column = column + coord * stride
            stride *= size
        return column

    indices = te.compute(geom.out_shape, indices_body, name=blocks.MAX_POOL_INDICES)
    return output, indices


def lp_pool(x: te.Tensor, geom: PoolGeometry, p: float) -> te.Tensor:
    """ONNX LpPool: ``(sum of |x|^p over the window's taps inside the input)^(1/p)``
    (padding adds nothing), as onnxruntime computes it. ``geom`` is an average pooling's
    geometry (its padding, strides, dilations, ceil_mode); (N, C, *I) -> (N, C, *out).
    Blocks ``pool_pad``, ``pool`` and ``pool_epilogue``."""
    if geom.kind != "avg":
        raise ValueError(f"lp_pool takes an average pooling's geometry, got kind {geom.kind!r}")
    dtype = x.dtype
    acc = accumulator_dtype(dtype)
    pads = [
        (lo, reach - i - lo) for i, (lo, _), reach in zip(geom.in_size, geom.padding, geom.reach)
    ]
    xp = fill_pad(x, pads, tirx.const(0, dtype))
    taps = [te.reduce_axis((0, k), f"rk{a}") for a, k in enumerate(geom.kernel)]
    power = tirx.const(float(p), acc)

    def reduce_body(n, c, *pos):
        src = [q * s + r * d for q, r, s, d in zip(pos, taps, geom.stride, geom.dilation)]
        return te.sum(tirx.power(tirx.abs(xp[(n, c, *src)].astype(acc)), power), axis=taps)

    out = te.compute(geom.out_shape, reduce_body, name=blocks.POOL)
    inverse = tirx.const(1.0 / float(p), acc)
    return te.compute(
        geom.out_shape,
        lambda *idx: tirx.power(out[idx], inverse).astype(dtype),
        name=blocks.POOL_EPILOGUE,
    )
