"""Transposed convolution as one gather per output: bounded size for any stride.

Along one spatial axis, output ``o`` of a stride-``s`` transposed convolution receives
``x[i] * w[k]`` exactly when ``q = o + lo = s*i + d*k``. With ``g = gcd(s, d)``, such taps
exist only when ``q % g == 0``, and they are ``k = k0 + t*step`` (``step = s/g``,
``t = 0, 1, ...``) where ``k0 = ((q/g) * inv) % step`` and ``inv`` is the inverse of
``d/g`` modulo ``step``: the phase is selected by index arithmetic, not by one branch per
phase. Every product ``x[n, c, i] * w[c, o, k]`` is computed once, summed over the channels of
its group into ``taps[n, o, *k, *i]`` (a matrix multiply, no products of inserted zeros);
each output then sums ``ceil(K/step)`` candidate taps per axis of that tensor, each masked
by its validity (``k < K`` and ``0 <= i < I``). When the stride exceeds the dilated kernel
there is at most one tap per axis and most outputs are ``act(bias)``.

The expression's size and the compile time do not depend on the stride, unlike the
sub-pixel form (:mod:`convforge.ops.conv_transpose_subpixel`), which builds one
convolution per phase and an interleave with one branch per phase: its if-then-else
chain over ``prod(stride)`` phases overflowed TVM's recursive expression visitors
(SIGSEGV from stride 40 in 2-D, 12 in 3-D). The sub-pixel form stays the fast path for
ordinary strides (:data:`convforge.plan.MAX_SUBPIXEL_PHASES`).

Block names (contract with ``convforge.schedules``): ``conv_transpose_taps`` (the
products), ``conv_transpose_gather`` (the masked sum of taps per output) and
``conv_epilogue``; the generic CPU rules schedule them.
"""

from __future__ import annotations

import math

from convforge.ops import blocks
from convforge.ops.activation import NO_EPILOGUE, Epilogue
from convforge.ops.conv import accumulator_dtype, with_epilogue
from convforge.shapes import ConvTransposeGeometry, check_index_range
from convforge.tvm_import import te, tirx


def _axis_taps(stride: int, dilation: int, kernel: int) -> tuple[int, int, int, int]:
    """(g, step, inverse of d/g mod step, candidate taps per output) of one axis."""
    g = math.gcd(stride, dilation)
    step = stride // g
    inverse = pow(dilation // g, -1, step) if step > 1 else 0
    return g, step, inverse, -(-kernel // step)


def conv_transpose_gather(
    x: te.Tensor, w: te.Tensor, geom: ConvTransposeGeometry, epilogue: Epilogue = NO_EPILOGUE
) -> te.Tensor:
    """Transposed convolution, each output gathering its taps (see the module doc).

    x: (N, C, *I), w: (C, O/groups, *K), the epilogue's bias (O,) -> (N, O, *out_size); the
    same result as :func:`convforge.ops.conv.conv_transpose` for any stride, dilation,
    padding, output padding and groups, from an expression whose size does not grow with
    the stride. ``epilogue``: bias and activation (a residual is a ValueError).
    """
    epilogue.refuse_residual(conv_transpose_gather.__name__)
    dtype = x.dtype
    acc = accumulator_dtype(dtype)
    cpg = geom.in_channels // geom.groups
    opg = geom.out_channels // geom.groups
    axes = [_axis_taps(s, d, k) for s, d, k in zip(geom.stride, geom.dilation, geom.kernel)]
    # every product once: taps[n, o, *k, *i] = sum_c x[n, c, *i] * w[c, o, *k] (a matrix
    # multiply of (O*K) x C/groups by C/groups x I per group, no inserted zeros)
    rc = te.reduce_axis((0, cpg), "rc")
    nd = geom.ndim

    def products(n, o, *ki):
        c = rc if geom.groups == 1 else (o // opg) * cpg + rc
        o_w = o if geom.groups == 1 else o % opg
        return te.sum(x[(n, c, *ki[nd:])].astype(acc) * w[(c, o_w, *ki[:nd])].astype(acc), axis=rc)

    stacked_shape = (geom.batch, geom.out_channels, *geom.kernel, *geom.in_size)
    check_index_range(taps=stacked_shape)
    stacked = te.compute(
        stacked_shape,
        products,
        name=blocks.CONV_TRANSPOSE_TAPS,
    )
    rt = [te.reduce_axis((0, taps), f"rt{i}") for i, (*_, taps) in enumerate(axes)]
    zero = tirx.const(0, acc)

    def body(n, o, *pos):
        valid, src, taps = [], [], []
        for p, t, (lo, _), s, d, k, size, (g, step, inverse, _) in zip(
            pos, rt, geom.padding, geom.stride, geom.dilation, geom.kernel, geom.in_size, axes
        ):
            q = p + lo
            if g > 1:
                valid.append(q % g == 0)
            k0 = ((q // g) * inverse) % step if step > 1 else 0
            tap = k0 + t * step
            i = (q - d * tap) // s
            valid += [tap < k, i >= 0, i < size]
            # indices clamped into range, so a masked-off term never reads outside
            taps.append(tirx.min(tap, k - 1))
            src.append(tirx.max(tirx.min(i, size - 1), 0))
        value = stacked[(n, o, *taps, *src)]
        return te.sum(tirx.Select(tirx.all(*valid), value, zero), axis=rt)

    out = te.compute(geom.out_shape, body, name=blocks.CONV_TRANSPOSE_GATHER)
    return with_epilogue(out, epilogue, dtype)
