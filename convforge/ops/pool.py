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

from tvm import te, tirx

from convforge.ops.conv import accumulator_dtype
from convforge.shapes import AdaptivePoolGeometry, PoolGeometry

#: Annotation of a ``pool`` block whose windows tile the input (kernel == stride, no dilation).
WINDOWS_TILE_ATTR = "pool_windows_tile"


def fill_pad(
    x: te.Tensor, pads: Sequence[tuple[int, int]], fill: tirx.PrimExpr, name: str = "pool_pad"
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
    divided by the window length clipped to ``[0, I)`` (``count_include_pad=False``) or to
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
        return te.max(value, axis=taps) if is_max else te.sum(value.astype(acc), axis=taps)

    attrs = {WINDOWS_TILE_ATTR: 1} if geom.windows_tile else None
    out = te.compute(geom.out_shape, reduce_body, name="pool", attrs=attrs)
    if is_max:
        return out

    def window_length(p, axis):
        i, k, s = geom.in_size[axis], geom.kernel[axis], geom.stride[axis]
        lo, hi = geom.padding[axis]
        start = p * s - lo
        if geom.count_include_pad:
            return tirx.min(start + k, i + hi) - start
        return tirx.min(start + k, i) - tirx.max(start, 0)

    def epilogue(n, c, *pos):
        count = math.prod(window_length(p, a) for a, p in enumerate(pos))
        return (out[(n, c, *pos)] / count.astype(acc)).astype(dtype)

    return te.compute(geom.out_shape, epilogue, name="pool_epilogue")


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

    return te.compute(geom.out_shape, body, name="window_max")


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
            return te.max(value, axis=taps)
        value = value.astype(acc)
        if inside:
            value = tirx.if_then_else(tirx.all(*inside), value, tirx.const(0, acc))
        return te.sum(value, axis=taps)

    out = te.compute(geom.out_shape, reduce_body, name="pool")
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

    return te.compute(geom.out_shape, epilogue, name="pool_epilogue")
