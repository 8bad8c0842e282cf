"""Generic N-d convolution in TE, and transposed convolution built from it.

Layout ``(N, C, *spatial)``; weight ``(O, C/groups, *kernel)``. Block names are part of
the contract with ``convforge.schedules``: ``pad`` (zero padding, may also crop),
``conv`` (the reduction), ``conv_epilogue`` (its :class:`~convforge.ops.activation.Epilogue`:
bias, residual, activation, cast).
"""

from __future__ import annotations

from collections.abc import Sequence

from convforge.ops import blocks
from convforge.ops.activation import NO_EPILOGUE, Epilogue
from convforge.shapes import ConvGeometry, ConvTransposeGeometry
from convforge.tvm_import import te, tirx


def accumulator_dtype(dtype: str) -> str:
    """Products of float16 are summed in float32."""
    return "float32" if dtype == "float16" else dtype


def pad(x: te.Tensor, pads: Sequence[tuple[int, int]], name: str = blocks.PAD) -> te.Tensor:
    """Zero-pad the spatial axes of ``x`` by ``(lo, hi)`` pairs; negative pads crop."""
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        return x
    lead = len(x.shape) - len(pads)
    sizes = [int(v) for v in x.shape]
    shape = sizes[:lead] + [n + lo + hi for n, (lo, hi) in zip(sizes[lead:], pads)]

    def body(*idx):
        src = list(idx[:lead])
        inside = []
        for i, n, (lo, _) in zip(idx[lead:], sizes[lead:], pads):
            src.append(i - lo)
            if lo > 0:
                inside.append(i >= lo)
            if n + lo < shape[len(src) - 1]:
                inside.append(i < n + lo)
        value = x[tuple(src)]
        if not inside:
            return value
        return tirx.if_then_else(tirx.all(*inside), value, tirx.const(0, x.dtype))

    return te.compute(shape, body, name=name)


def conv(
    x: te.Tensor,
    w: te.Tensor,
    geom: ConvGeometry,
    epilogue: Epilogue = NO_EPILOGUE,
    *,
    knobs: dict[str, int] | None = None,
) -> te.Tensor:
    """``out[n, o, *p] = epilogue(sum_{c,r} xpad[n, g*C/g + c, *(p*s + r*d)] * w[o, c, *r])``
    (:class:`~convforge.ops.activation.Epilogue`: bias, residual, activation, cast).

    x: (N, C, *I), w: (O, C/groups, *K), the epilogue's bias (O,), its residual
    (N, O, *out_size) -> (N, O, *out_size). ``knobs``: schedule knobs annotated on the
    ``conv`` block (``blocks.SCHEDULE_KNOBS_ATTR``).
    """
    dtype = x.dtype
    acc = accumulator_dtype(dtype)
    xp = pad(x, geom.padding)
    cin = geom.in_channels // geom.groups
    opg = geom.out_channels // geom.groups
    rc = te.reduce_axis((0, cin), "rc")
    rk = [te.reduce_axis((0, k), f"rk{i}") for i, k in enumerate(geom.kernel)]

    def body(n, o, *pos):
        base = 0 if geom.groups == 1 else (o // opg) * cin
        src = [p * s + r * d for p, r, s, d in zip(pos, rk, geom.stride, geom.dilation)]
        prod = xp[(n, base + rc, *src)].astype(acc) * w[(o, rc, *rk)].astype(acc)
        return te.sum(prod, axis=[rc, *rk])

    out = te.compute(geom.out_shape, body, name=blocks.CONV, attrs=blocks.knob_attrs(knobs))
    return with_epilogue(out, epilogue, dtype)


def with_epilogue(out: te.Tensor, epilogue: Epilogue, dtype: str) -> te.Tensor:
    """``out`` (a convolution's accumulated output, (N, O, *P)) followed by its element-wise
    ``conv_epilogue`` block (:meth:`Epilogue.apply <convforge.ops.activation.Epilogue.apply>`:
    bias, residual, activation, cast to ``dtype``); ``out`` itself when there is nothing to
    add, activate or cast."""
    acc = str(out.dtype)
    if epilogue.is_identity and acc == dtype:
        return out

    def body(*index):
        return epilogue.apply(out[index], index, acc, dtype)

    return te.compute(out.shape, body, name=blocks.CONV_EPILOGUE)


def transpose_weight(w: te.Tensor, groups: int) -> te.Tensor:
    """(C, O/g, *K) transposed-conv weight -> (O, C/g, *K) forward weight, kernel flipped."""
    cin, opg, *kernel = (int(v) for v in w.shape)
    cpg = cin // groups

    def body(o, c, *k):
        flipped = [kk - 1 - i for kk, i in zip(kernel, k)]
        return w[
            ((o // opg) * cpg + c if groups > 1 else c, o % opg if groups > 1 else o, *flipped)
        ]

    return te.compute((opg * groups, cpg, *kernel), body, name=blocks.WEIGHT_TRANSPOSE)


def dilate(x: te.Tensor, strides: Sequence[int], name: str = blocks.DILATE) -> te.Tensor:
    """Insert ``s - 1`` zeros between neighbouring samples of every spatial axis."""
    if all(s == 1 for s in strides):
        return x
    lead = len(x.shape) - len(strides)
    sizes = [int(v) for v in x.shape]
    shape = sizes[:lead] + [(n - 1) * s + 1 for n, s in zip(sizes[lead:], strides)]

    def body(*idx):
        src = list(idx[:lead]) + [i // s for i, s in zip(idx[lead:], strides)]
        on_grid = [i % s == 0 for i, s in zip(idx[lead:], strides) if s > 1]
        return tirx.if_then_else(tirx.all(*on_grid), x[tuple(src)], tirx.const(0, x.dtype))

    return te.compute(shape, body, name=name)


def conv_transpose(
    x: te.Tensor, w: te.Tensor, geom: ConvTransposeGeometry, epilogue: Epilogue = NO_EPILOGUE
) -> te.Tensor:
    """Transposed convolution as the forward conv of the zero-dilated input (tinygrad's way).

    x: (N, C, *I), w: (C, O/groups, *K) -> (N, O, *out_size). Equivalent to
    ``conv(dilate(x, s), flip(w)^T, padding = d*(k-1) - pad (+ output_padding at hi))``.
    ``epilogue``: bias and activation (a residual is a ValueError).
    """
    epilogue.refuse_residual(conv_transpose.__name__)
    pads = tuple(
        (d * (k - 1) - lo, d * (k - 1) - hi + op)
        for k, d, (lo, hi), op in zip(geom.kernel, geom.dilation, geom.padding, geom.output_padding)
    )
    xd = dilate(x, geom.stride)
    forward = ConvGeometry(
        geom.batch, geom.in_channels, geom.out_channels, geom.groups,
        tuple(int(v) for v in xd.shape[2:]), geom.kernel, (1,) * geom.ndim, geom.dilation,
        pads, geom.out_size,
    )  # fmt: skip
    return conv(xd, transpose_weight(w, geom.groups), forward, epilogue)
