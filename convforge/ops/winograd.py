"""Winograd minimal-filtering convolution F(m x m, r x s) for 2-D convolutions.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016). Along one axis,
``m`` outputs of an ``r``-tap correlation come from ``a = m + r - 1`` inputs with ``a``
multiplications instead of ``m * r``: ``y = A^T [(G g) * (B^T d)]``, and in 2-D
``Y = A^T [(G g G^T) * (B^T d B)] A``. Summed over the input channels, the products are one
matrix multiply per transform point, so a 3x3 convolution with ``m = 4`` does 36 instead of
144 multiply-adds per 4x4 output tile and channel pair. The matrices are those of the
Cook-Toom construction on the points 0, 1, -1, 2, -2, 1/2, -1/2 (and infinity), built
exactly in rationals (:func:`winograd_matrices`).

Dilation ``d`` is a tiling choice: a tile holds the ``m`` outputs ``t*m*d + p + j*d``
(``j < m``) of one phase ``p < d``, which read the inputs ``t*m*d + p + i*d`` (``i < a``): an
undilated convolution on every ``d``-th input. Tiles are indexed ``(n, qh, tb, pw, ti)``:
``qh = th * dh + ph`` the tile row with its phase, ``tw = tb * TB + ti`` the tile column in
blocks of ``TB`` (the register tile of the matrix multiply) and ``pw`` its phase.

Stride ``(sh, sw)`` is a change of input channels (space to depth): output ``o`` reads the
padded input at ``s*o + i``, ``i = s*u + p``, so the convolution is the stride-1
convolution of the ``sh*sw`` input phases ``xp[s*h + p]``, stacked as channels, with the
``ceil(r/s)``-tap kernels ``w[s*u + p]`` (zeros past the kernel: :func:`phase_weight_array`).
A 3x3 stride-2 convolution becomes a 2x2 convolution over 4x the channels: F(4x4, 2x2)
does 4 * 25/16 = 6.25 instead of 9 multiply-adds per output and input channel.

Blocks (the contract with ``convforge.schedules.cpu_winograd``):

- ``winograd_pad``: the zero-padded input, channels last, its stride phases as channel
  groups: ``xp[n, h, w, (ph*sw + pw)*C + c] = x_padded[n, c, sh*h + ph, sw*w + pw]``;
- ``winograd_weight_rows``, ``winograd_weight``: ``U[a, b, kb, c, ki] = (G w[kb*OB + ki, c]
  G^T)[a, b]`` in two separable passes (zeros past the last output channel); compiled
  models transform constant weights once instead (:func:`transform_weight_array`,
  ``weight_transformed=True``);
- ``winograd_input_rows``, ``winograd_input``: ``V[n, qh, tb, pw, a, b, ti, c] = (B^T d B)[a, b]``
  in two separable passes;
- ``winograd_gemm``: ``M[n, qh, tb, pw, a, b, kb, ti, ki] = sum_c V[..., a, b, ti, c] *
  U[a, b, kb, c, ki]`` (output channels in blocks of OB, the vectorized axis);
- ``winograd_output_rows``, ``winograd_output``: ``Y[n, qh, tb, pw, kb, jh, jw, ti, ki] =
  (A^T M A)[jh, jw]`` (annotated with the dilation, :data:`DILATION_ATTR`);
- ``winograd_unpack``: ``out[n, k, oh, ow] = epilogue(Y[...])`` in NCHW (bias, residual,
  activation, cast).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from convforge.ops import blocks
from convforge.ops.activation import NO_EPILOGUE, Epilogue
from convforge.ops.conv import accumulator_dtype
from convforge.shapes import ConvGeometry, check_positive_int
from convforge.tvm_import import te, tirx

#: Interpolation points, in the order used (infinity is always the last one).
POINTS = (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2))
#: Annotation of ``winograd_output``: the (dh, dw) dilation its tiles are spaced by.
DILATION_ATTR = blocks.WINOGRAD_DILATION_ATTR


@dataclass(frozen=True)
class WinogradTiles:
    """``m x m`` outputs per transform tile; the matrix multiply's register tile is
    ``out_block`` output channels (vectorized) x ``tile_block`` tiles. ``stride``: the
    convolution's, whose phases are channel groups of the transformed input and weight."""

    m: int
    out_block: int
    tile_block: int
    stride: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        for name in ("m", "out_block", "tile_block"):
            check_positive_int(getattr(self, name), name)
        for s in self.stride:
            check_positive_int(s, "stride")


def _inverse(rows: list[list[Fraction]]) -> list[list[Fraction]]:
    """Exact inverse by Gauss-Jordan elimination."""
    n = len(rows)
    a = [[*row, *(Fraction(int(i == j)) for j in range(n))] for i, row in enumerate(rows)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if a[r][col] != 0)
        a[col], a[pivot] = a[pivot], a[col]
        a[col] = [v / a[col][col] for v in a[col]]
        for r in range(n):
            if r != col and a[r][col] != 0:
                factor = a[r][col]
                a[r] = [v - factor * u for v, u in zip(a[r], a[col])]
    return [row[n:] for row in a]


@functools.cache
def winograd_matrices(m: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A^T (m, a), G (a, r), B^T (a, a))`` of F(m, r), a = m + r - 1, such that
    ``A^T @ ((G @ g) * (B^T @ d))[i] = sum_k g[k] d[i + k]`` for ``i < m``.

    Linear convolution by evaluation at the points and interpolation (Toom-Cook); the
    correlation is its transpose. The rows of B^T are scaled to coprime integers, their
    scale moved into G (applied to the weights, once).
    """
    alpha = m + r - 1
    if not 1 <= alpha - 1 <= len(POINTS):
        raise ValueError(f"F({m}, {r}) needs {alpha - 1} points; up to {len(POINTS)} are known")
    points = POINTS[: alpha - 1]

    def evaluation(k: int) -> list[list[Fraction]]:  # a polynomial of k coefficients at the points
        rows = [[Fraction(p) ** j for j in range(k)] for p in points]
        return [*rows, [Fraction(int(j == k - 1)) for j in range(k)]]  # infinity: top coefficient

    vm, g, vinv = evaluation(m), evaluation(r), _inverse(evaluation(alpha))
    at = [[vm[j][i] for j in range(alpha)] for i in range(m)]
    bt = [[vinv[j][i] for j in range(alpha)] for i in range(alpha)]
    for i, row in enumerate(bt):
        scale = Fraction(
            math.lcm(*(v.denominator for v in row)), math.gcd(*(v.numerator for v in row))
        )
        bt[i] = [v * scale for v in row]
        g[i] = [v / scale for v in g[i]]
    return tuple(np.array([[float(v) for v in row] for row in rows]) for rows in (at, g, bt))


def _combine(matrix: np.ndarray, row: tirx.PrimExpr, term, dtype: str) -> tirx.PrimExpr:
    """``sum_j matrix[row, j] * term(j)`` with zero terms left out and +-1 as add/subtract:
    one expression per row, selected by ``row`` (the schedule unrolls it, so the selection
    folds away)."""
    exprs = []
    for coefficients in matrix:
        total = None
        for j, c in enumerate(coefficients):
            if c == 0:
                continue
            t = term(j)
            if c == -1:
                total = -t if total is None else total - t
                continue
            if c != 1:
                t = t * tirx.const(float(c), dtype)
            total = t if total is None else total + t
        exprs.append(tirx.const(0, dtype) if total is None else total)
    out = exprs[-1]
    for i in range(len(exprs) - 2, -1, -1):
        out = tirx.Select(row == i, exprs[i], out)
    return out


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def phase_weight_array(w: np.ndarray, stride: tuple[int, int]) -> np.ndarray:
    """w (K, C, r, s) as the stride-1 weight over the input's stride phases:
    (K, sh*sw*C, ceil(r/sh), ceil(s/sw)), channel ``(ph*sw + pw)*C + c`` holding the taps
    ``w[:, c, sh*u + ph, sw*v + pw]`` (zero past the kernel)."""
    (sh, sw), (k, c, r, s) = stride, w.shape
    rh, rw = _ceil_div(r, sh), _ceil_div(s, sw)
    padded = np.zeros((k, c, rh * sh, rw * sw), w.dtype)
    padded[:, :, :r, :s] = w
    phases = padded.reshape(k, c, rh, sh, rw, sw).transpose(0, 3, 5, 1, 2, 4)
    return phases.reshape(k, sh * sw * c, rh, rw)


def transform_weight_array(w: np.ndarray, tiles: WinogradTiles) -> np.ndarray:
    """``winograd_weight`` of a constant w (K, C, r, s), in float64 then w's dtype:
    (a, b, ceil(K/OB), C', OB), C' = sh*sw*C input channels of the stride phases."""
    m, out_block = tiles.m, tiles.out_block
    w = phase_weight_array(w, tiles.stride)
    _, gh, _ = winograd_matrices(m, w.shape[2])
    _, gw, _ = winograd_matrices(m, w.shape[3])
    k, c, r, s = w.shape
    chunks = _ceil_div(k, out_block)
    # x[i*s + j, chunk, c, o] = w[chunk*OB + o, c, i, j] (zero past K), so that one matrix
    # product, kron(gh, gw) x, is u[a*b', chunk, c, o] = sum_ij gh[a, i] w[.., i, j] gw[b, j]
    # already in the packed order (2-4x faster than the einsum over w and a transposing
    # copy). einsum, not matmul: BLAS's threads spin after the call, taking the core on which
    # the model's kernels are built meanwhile (codegen.EarlyBuilds): a compile ran 10% slower
    x = np.zeros((r * s, chunks * out_block, c))
    x[:, :k] = w.reshape(k, c, r * s).transpose(2, 0, 1)
    x = np.ascontiguousarray(x.reshape(r * s, chunks, out_block, c).transpose(0, 1, 3, 2))
    u = np.einsum("pq,qn->pn", np.kron(gh, gw), x.reshape(r * s, -1))
    return u.astype(w.dtype).reshape(gh.shape[0], gw.shape[0], chunks, c, out_block)


def conv2d_winograd(
    x: te.Tensor,
    w: te.Tensor,
    geom: ConvGeometry,
    tiles: WinogradTiles,
    epilogue: Epilogue = NO_EPILOGUE,
    *,
    weight_transformed: bool = False,
    knobs: dict[str, int] | None = None,
) -> te.Tensor:
    """2-D convolution by F(m x m, r x s): x (N, C, H, W), w (K, C, r, s) -> (N, K, *out);
    a strided one over its stride phases (``tiles.stride``, which must be ``geom``'s;
    undilated).

    Equal to ``conv(x, w, geom, epilogue)`` up to float rounding, which the
    transforms raise (float32, random data: F(4x4, 3x3) about 4e-6 of the output's range
    at 64 channels, 1.4e-5 at 512; F(4x4, 2x2) of a 3x3 stride-2 convolution 8e-6 at 128).
    ``weight_transformed``: w is already :func:`transform_weight_array`'s
    (a, b, ceil(K/OB), C', OB). ``knobs``: schedule knobs annotated on the
    ``winograd_gemm`` block (``blocks.SCHEDULE_KNOBS_ATTR``).
    """
    strided = geom.stride != (1, 1)
    if geom.ndim != 2 or geom.groups != 1 or tiles.stride != geom.stride:
        raise ValueError(
            f"conv2d_winograd needs a 2-D convolution with groups=1 and tiles of its stride, "
            f"got ndim={geom.ndim}, groups={geom.groups}, stride={geom.stride}, "
            f"tiles.stride={tiles.stride}"
        )
    if strided and geom.dilation != (1, 1):
        raise ValueError(f"conv2d_winograd: a strided convolution must be undilated, got {geom}")
    dtype, acc = x.dtype, accumulator_dtype(x.dtype)
    ob, tb_size = tiles.out_block, tiles.tile_block
    (sh, sw), (dh, dw) = geom.stride, geom.dilation
    # the stride-1 convolution over the input's stride phases: C' channels, (r, s) taps
    r, s = (_ceil_div(k, st) for k, st in zip(geom.kernel, geom.stride))
    m = tiles.m
    at_h, g_h, bt_h = winograd_matrices(m, r)
    at_w, g_w, bt_w = winograd_matrices(m, s)
    ah, aw = m + r - 1, m + s - 1
    (out_h, out_w), (in_h, in_w) = geom.out_size, geom.in_size
    (lo_h, _), (lo_w, _) = geom.padding
    th_n = _ceil_div(out_h, m * dh)
    tb_n = _ceil_div(_ceil_div(out_w, m * dw), tb_size)
    k_out, batch = geom.out_channels, geom.batch
    c_x = geom.in_channels
    c_in = sh * sw * c_x
    kb_n = _ceil_div(k_out, ob)
    # Padded input extent read by the rounded-up tile grid (in phase rows and columns).
    ext_h, ext_w = th_n * m * dh + (r - 1) * dh, tb_n * tb_size * m * dw + (s - 1) * dw

    def phase(c):  # channel c of the phases -> (row phase, column phase, channel of x)
        if not strided:
            return 0, 0, c
        return c // (sw * c_x), c // c_x % sw, c % c_x

    def pad_nhwc(n, h, w_, c):
        ph, pw, cx = phase(c)
        h, w_ = h * sh + ph, w_ * sw + pw
        inside = tirx.all(h >= lo_h, h < in_h + lo_h, w_ >= lo_w, w_ < in_w + lo_w)
        hs = tirx.min(tirx.max(h - lo_h, 0), in_h - 1)
        ws = tirx.min(tirx.max(w_ - lo_w, 0), in_w - 1)
        return tirx.if_then_else(inside, x[n, cx, hs, ws], tirx.const(0, dtype))

    xp = te.compute((batch, ext_h, ext_w, c_in), pad_nhwc, name=blocks.WINOGRAD_PAD)
    tile_shape = (batch, th_n * dh, tb_n, dw)

    def input_rows(n, qh, tb, pw, a, j, ti, c):
        h0 = qh // dh * m * dh + qh % dh
        w0 = (tb * tb_size + ti) * m * dw + pw
        return _combine(bt_h, a, lambda i: xp[n, h0 + i * dh, w0 + j * dw, c].astype(acc), acc)

    rows = te.compute(
        (*tile_shape, ah, aw, tb_size, c_in), input_rows, name=blocks.WINOGRAD_INPUT_ROWS
    )
    v = te.compute(
        (*tile_shape, ah, aw, tb_size, c_in),
        lambda n, qh, tb, pw, a, b, ti, c: _combine(
            bt_w, b, lambda j: rows[n, qh, tb, pw, a, j, ti, c], acc
        ),
        name=blocks.WINOGRAD_INPUT,
    )

    def weight_tap(k, c, i, j):  # phase_weight_array(w)[k, c, i, j]
        if not strided:
            return w[k, c, i, j].astype(acc)
        ph, pw, cx = phase(c)
        (kh, kw), i, j = geom.kernel, i * sh + ph, j * sw + pw
        tap = w[k, cx, tirx.min(i, kh - 1), tirx.min(j, kw - 1)].astype(acc)
        return tirx.if_then_else(tirx.all(i < kh, j < kw), tap, tirx.const(0, acc))

    def weight_rows(a, j, kb, c, ki):
        k = kb * ob + ki
        value = _combine(g_h, a, lambda i: weight_tap(tirx.min(k, k_out - 1), c, i, j), acc)
        if k_out % ob:
            value = tirx.if_then_else(k < k_out, value, tirx.const(0, acc))
        return value

    if weight_transformed:
        u = w
    else:
        rows_w = te.compute((ah, s, kb_n, c_in, ob), weight_rows, name=blocks.WINOGRAD_WEIGHT_ROWS)
        u = te.compute(
            (ah, aw, kb_n, c_in, ob),
            lambda a, b, kb, c, ki: _combine(g_w, b, lambda j: rows_w[a, j, kb, c, ki], acc),
            name=blocks.WINOGRAD_WEIGHT,
        )
    rc = te.reduce_axis((0, c_in), "rc")
    product = te.compute(
        (*tile_shape, ah, aw, kb_n, tb_size, ob),
        lambda n, qh, tb, pw, a, b, kb, ti, ki: te.sum(
            v[n, qh, tb, pw, a, b, ti, rc] * u[a, b, kb, rc, ki].astype(acc), axis=rc
        ),
        name=blocks.WINOGRAD_GEMM,
        attrs=blocks.knob_attrs(knobs),
    )
    out_rows = te.compute(
        (*tile_shape, kb_n, m, aw, tb_size, ob),
        lambda n, qh, tb, pw, kb, jh, b, ti, ki: _combine(
            at_h, jh, lambda a: product[n, qh, tb, pw, a, b, kb, ti, ki], acc
        ),
        name=blocks.WINOGRAD_OUTPUT_ROWS,
    )
    y = te.compute(
        (*tile_shape, kb_n, m, m, tb_size, ob),
        lambda n, qh, tb, pw, kb, jh, jw, ti, ki: _combine(
            at_w, jw, lambda b: out_rows[n, qh, tb, pw, kb, jh, b, ti, ki], acc
        ),
        name=blocks.WINOGRAD_OUTPUT,
        attrs={DILATION_ATTR: [dh, dw]},
    )

    def unpack(n, k, oh, ow):
        qh, jh = oh // (m * dh) * dh + oh % dh, oh // dh % m
        tw, pw, jw = ow // (m * dw), ow % dw, ow // dw % m
        value = y[n, qh, tw // tb_size, pw, k // ob, jh, jw, tw % tb_size, k % ob]
        return epilogue.apply(value, (n, k, oh, ow), acc, dtype)

    return te.compute(geom.out_shape, unpack, name=blocks.WINOGRAD_UNPACK)


def nonfinite_flag(x: te.Tensor, lanes: int = 16, chunks: int = 64) -> te.Tensor:
    """A bool scalar (shape ()): whether the flat float32 x (T,) holds a NaN or an infinity
    (whose exponent bits, alone among float32 values, are all ones: a max of the exponent
    bits, integer operations only).

    Compiled models run it on a Winograd convolution's input (reshaped to one axis) and take
    the direct convolution where it is true: a Winograd tile mixes all its inputs, so one
    NaN or infinity would make every output of the tile non-finite. x is split as
    (P, I, L): L = ``lanes`` or the largest power of two below it dividing T, P <= ``chunks``
    parallel chunks. Blocks: ``nonfinite_rows`` ((P, L): the max exponent bits over I),
    ``nonfinite_any`` (their max), ``nonfinite_flag``.
    """
    (total,) = (int(v) for v in x.shape)
    while total % lanes:
        lanes //= 2
    parts = max(d for d in range(1, min(chunks, total // lanes) + 1) if total // lanes % d == 0)
    inner = total // lanes // parts
    ri = te.reduce_axis((0, inner), "ri")
    # float32's exponent bits, all ones only for an infinity or a NaN
    exponent = tirx.const(0x7F800000, "int32")
    rows = te.compute(
        (parts, lanes),
        lambda p, j: te.max(
            tirx.reinterpret("int32", x[(p * inner + ri) * lanes + j]) & exponent, axis=ri
        ),
        name=blocks.NONFINITE_ROWS,
    )
    rp, rj = te.reduce_axis((0, parts), "rp"), te.reduce_axis((0, lanes), "rj")
    flag = te.compute((), lambda: te.max(rows[rp, rj], axis=[rp, rj]), name=blocks.NONFINITE_ANY)
    return te.compute((), lambda: flag[()] == exponent, name=blocks.NONFINITE_FLAG)
