"""Transposed convolution by sub-pixel (phase) decomposition: no multiplications by zeros.

Along one spatial axis, output ``o`` of a stride-``s`` transposed convolution receives
``x[i] * w[k]`` exactly when ``o + lo = s*i + d*k``. Split the outputs by their phase
``phi = (o + lo) mod s``: a phase only ever meets the taps ``k`` with ``d*k = phi (mod s)``
(every ``s/gcd(s, d)``-th tap), and for those taps ``i = m - j_k`` with ``m = (o+lo-phi)/s``
and integer ``j_k``. Each phase is therefore a small dense stride-1 convolution of the
un-dilated input (dilation ``d/gcd(s, d)``, the phase's taps flipped), built by
``phase_conv`` (:func:`convforge.ops.conv.conv`, or a target's layout such as
:func:`convforge.ops.conv_nchwc`) on one zero-padded copy of the input that every phase
shares (each phase's own ``pad`` block is then a pure crop: a window, no zeros); an N-d transposed convolution
has ``s_1 * ... * s_d`` of them, and an interleave block writes each phase's outputs to
their places. A phase with no taps (kernel shorter than the stride) outputs ``act(bias)``.

Block names (contract with ``convforge.schedules``): the shared ``subpixel_pad``; per
phase the blocks ``phase_conv`` makes (``ops.conv``: ``pad``, a crop meant to be inlined,
``conv``, ``conv_epilogue``; ``ops.conv_nchwc``: its four blocks; TVM suffixes ``_1``,
``_2``, ...) and the weight gather ``subpixel_weight`` (meant to be inlined); the final
``subpixel_interleave``, annotated with the ``strides``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

from convforge.ops import blocks
from convforge.ops.activation import NO_EPILOGUE, Epilogue
from convforge.ops.conv import accumulator_dtype, conv, pad
from convforge.shapes import ConvGeometry, ConvTransposeGeometry
from convforge.tvm_import import te, tirx

#: A dense convolution builder with :func:`convforge.ops.conv.conv`'s signature
#: ``(x, w, geom, epilogue) -> y``.
PhaseConv = Callable[["te.Tensor", "te.Tensor", ConvGeometry, Epilogue], "te.Tensor"]


@dataclass(frozen=True)
class AxisPhase:
    """One phase of one spatial axis: its outputs ``o = s*(first + j) + phase - lo``."""

    phase: int
    first: int  # m of the phase's first output
    count: int  # outputs of this phase
    taps: tuple[int, ...]  # kernel taps of this phase, in the order the phase conv reads them
    pads: tuple[int, int]  # (lo, hi) of the phase conv, negative = crop
    dilation: int  # dilation of the phase conv


def axis_phases(
    in_size: int, kernel: int, stride: int, dilation: int, pad_lo: int, out_size: int
) -> list[AxisPhase]:
    """The ``stride`` phases of one axis of a transposed convolution (see the module doc)."""
    phase_dilation = dilation // math.gcd(stride, dilation)
    phases = []
    for phase in range(stride):
        first = -((phase - pad_lo) // stride)  # ceil((lo - phase) / s)
        last = (out_size - 1 + pad_lo - phase) // stride
        count = max(0, last - first + 1)
        ascending = [k for k in range(kernel) if (dilation * k) % stride == phase]
        taps = tuple(reversed(ascending))
        if taps:
            lo = (dilation * taps[0] - phase) // stride - first
            hi = count + phase_dilation * (len(taps) - 1) - in_size - lo
        else:
            lo = hi = 0
        phases.append(AxisPhase(phase, first, count, taps, (lo, hi), phase_dilation))
    return phases


def phase_weight(w: te.Tensor, taps: list[tuple[int, ...]], groups: int) -> te.Tensor:
    """Forward weight (O, C/groups, *len(taps)) of one phase from the (C, O/groups, *K) one."""
    cin, opg = (int(v) for v in w.shape[:2])
    cpg = cin // groups
    # the taps of one phase are evenly spaced and descending: k = taps[0] - t * step
    steps = [t[0] - t[1] if len(t) > 1 else 0 for t in taps]

    def gather(o, c, *t):
        src = [axis_taps[0] - ti * step for axis_taps, ti, step in zip(taps, t, steps)]
        if groups == 1:
            return w[(c, o, *src)]
        return w[((o // opg) * cpg + c, o % opg, *src)]

    return te.compute(
        (opg * groups, cpg, *(len(t) for t in taps)), gather, name=blocks.SUBPIXEL_WEIGHT
    )


def subpixel_phases(
    geom: ConvTransposeGeometry,
) -> tuple[
    list[list[AxisPhase]],
    list[tuple[int, int]],
    list[tuple[tuple[int, ...], list[tuple[int, ...]], ConvGeometry | None]],
]:
    """The phase decomposition of ``geom``: the phases of each axis, the zero padding every
    phase shares, and per phase combination ``(key, taps, phase geometry)``, the geometry
    None where the phase has no outputs or sees no input (its outputs are ``act(bias)``)."""
    per_axis = [
        axis_phases(i, k, s, d, lo, o)
        for i, k, s, d, (lo, _), o in zip(
            geom.in_size, geom.kernel, geom.stride, geom.dilation, geom.padding, geom.out_size
        )
    ]
    # one zero padding shared by every phase (each phase then reads a window: a crop)
    shared_pads = [
        (
            max([0, *(p.pads[0] for p in phases if p.taps and p.count)]),
            max([0, *(p.pads[1] for p in phases if p.taps and p.count)]),
        )
        for phases in per_axis
    ]
    padded_size = tuple(i + lo + hi for i, (lo, hi) in zip(geom.in_size, shared_pads))
    phases = []
    for combo in itertools.product(*per_axis):
        key = tuple(p.phase for p in combo)
        taps = [p.taps for p in combo]
        if any(p.count == 0 for p in combo) or any(not p.taps for p in combo):
            phases.append((key, taps, None))
            continue
        phase_geom = ConvGeometry(
            geom.batch, geom.in_channels, geom.out_channels, geom.groups, padded_size,
            tuple(len(t) for t in taps), (1,) * geom.ndim, tuple(p.dilation for p in combo),
            tuple((lo - s_lo, hi - s_hi) for p, (s_lo, s_hi) in zip(combo, shared_pads)
                  for lo, hi in [p.pads]),
            tuple(p.count for p in combo),
        )  # fmt: skip
        phases.append((key, taps, phase_geom))
    return per_axis, shared_pads, phases


def conv_transpose_subpixel(
    x: te.Tensor,
    w: te.Tensor,
    geom: ConvTransposeGeometry,
    epilogue: Epilogue = NO_EPILOGUE,
    *,
    phase_conv: PhaseConv = conv,
) -> te.Tensor:
    """Transposed convolution as ``prod(stride)`` dense phase convolutions, interleaved.

    x: (N, C, *I), w: (C, O/groups, *K), the epilogue's bias (O,) -> (N, O, *out_size); the
    same result as :func:`convforge.ops.conv.conv_transpose` (groups, dilation, padding,
    output_padding all supported) with no products of inserted zeros. ``phase_conv``
    builds each phase's convolution (x (N, C, *P), w (O, C/groups, *taps)), each ending
    in ``epilogue``: bias and activation (a residual is a ValueError).
    """
    epilogue.refuse_residual(conv_transpose_subpixel.__name__)
    dtype = x.dtype
    per_axis, shared_pads, phases = subpixel_phases(geom)
    padded = pad(x, shared_pads, name=blocks.SUBPIXEL_PAD)
    results: dict[tuple[int, ...], te.Tensor | None] = {}
    for key, taps, phase_geom in phases:
        if phase_geom is None:
            results[key] = None  # no outputs, or outputs that see no input (bias only)
            continue
        phase_w = phase_weight(w, taps, geom.groups)
        results[key] = phase_conv(padded, phase_w, phase_geom, epilogue)

    acc = accumulator_dtype(dtype)

    def bias_only(n, o):  # the epilogue of an empty sum
        return epilogue.apply(tirx.const(0, acc), (n, o), acc, dtype)

    def interleave(n, o, *pos):
        shifted = [p + lo for p, (lo, _) in zip(pos, geom.padding)]
        phase = [q % s for q, s in zip(shifted, geom.stride)]
        value = None
        for combo in reversed(list(itertools.product(*per_axis))):
            key = tuple(p.phase for p in combo)
            if any(p.count == 0 for p in combo):
                continue  # no output position has this phase
            tensor = results[key]
            if tensor is None:
                branch = bias_only(n, o)
            else:
                m = [q // s - p.first for q, s, p in zip(shifted, geom.stride, combo)]
                branch = tensor[(n, o, *m)]
            if value is None:
                value = branch
            else:
                selected = tirx.all(*[ph == p.phase for ph, p in zip(phase, combo)])
                value = tirx.if_then_else(selected, branch, value)
        return value

    return te.compute(
        geom.out_shape,
        interleave,
        name=blocks.SUBPIXEL_INTERLEAVE,
        attrs={blocks.SUBPIXEL_STRIDES_ATTR: geom.stride},
    )
