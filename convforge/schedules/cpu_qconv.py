"""Default CPU schedule of the integer convolutions (``ops/qconv.py``: ConvInteger,
QLinearConv).

The output ``(N, O, *spatial)`` of the ``qconv_requant`` block (the int32 dot product
``qconv`` fused into it) is tiled as the direct float convolution is
(:mod:`convforge.schedules.cpu_direct`)::

    parallel( N, O/channel_tile, rows/row_tile )
      width/width_tile
        reduction loops (C/groups, *kernel)
          channel_tile (unrolled) x row_tile (unrolled) x width_tile (vectorized, int32)

``channel_tile * row_tile * width_tile / lanes`` int32 vector accumulators stay in
registers (lanes: int32 lanes of the target's vectors, 8 on AVX2); every reduction step
widens ``row_tile * width_tile`` activations and broadcasts ``channel_tile`` weights, whose
products are formed in int16 where they fit (:func:`convforge.ops.qconv.product_dtype`).
The requantization (add the per-channel term, float32 multiply, round, clamp, narrow) runs
on the register block before it is stored. The padded input (padding value x_zp) is
written per parallel tile (as stride phases where rows are read with a stride and the
output row is narrow: ``qconv_phases_max_width``). Where a weight zero point is not 0, the padded input and the
per-position window sums of x (``qconv_x_sum``) are computed once, in parallel, before.

The blocked forms (``qconv_pack_x``: x packed by channel pairs or quads) tile channel
blocks in the lanes (:func:`schedule_qconv_packed`); the rows form of a 1x1 convolution
(``qconv_rows``) tiles 16 positions of a row in the lanes (:func:`schedule_qconv_rows`).
"""

from __future__ import annotations

import functools

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from convforge.ops import qconv as qconv_ops
from convforge.ops.blocks import (
    QCONV,
    QCONV_OUT,
    QCONV_PACK_INTERIOR_ATTR,
    QCONV_PACK_X,
    QCONV_PAD,
    QCONV_REQUANT,
    QCONV_ROWS,
    QCONV_X_SUM,
)
from convforge.schedules.cpu_direct import default_tiles, has_block, largest_divisor
from convforge.schedules.cpu_grouped import store_as_phases, strided_read
from convforge.targets import TargetProfile, profile


def is_qconv(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` is an integer convolution of :func:`convforge.ops.qconv.qconv`."""
    return has_block(func, QCONV) and has_block(func, QCONV_REQUANT)


def _named(sch: s_tir.Schedule, name: str) -> s_tir.SBlockRV | None:
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint == name:
            return block
    return None


def _partition_pack(sch: s_tir.Schedule, pack: s_tir.SBlockRV) -> None:
    """The packing of x (``qconv_pack_x``) as separate loops over the padding before, the
    positions that read x and the padding after, along its last spatial axis (the block's
    ``qconv_pack_interior``): inside, the padding test folds away and LLVM vectorizes the
    copy (a rows-form pack of 64 channels, 56 positions padded to 64: 9 instead of 63 us,
    thresholds.md#qconv-pack-interior)."""
    _partition_interior(sch, pack, sch.get_loops(pack)[-2])


def _partition_interior(
    sch: s_tir.Schedule, block: s_tir.SBlockRV, width: s_tir.LoopRV, stride: int = 1
) -> None:
    """``width``, the loop over the last spatial axis of ``block`` (a packing or padding of
    x annotated ``qconv_pack_interior``), as three loops: the padding before, the positions
    that read x, the padding after; where that axis is stored as ``stride`` phases
    (:func:`~convforge.schedules.cpu_grouped.store_as_phases`), the loop over one phase's
    positions, cut where every phase reads x."""
    start, stop = (int(v) for v in sch.get(block).annotations[QCONV_PACK_INTERIOR_ATTR])
    # phase p holds positions i * stride + p: all inside from ceil(start / stride) on, up
    # to the last phase's end
    start, stop = -(-start // stride), -(-(stop - stride + 1) // stride)
    extent = int(sch.get(width).extent)
    cuts = [c for c in (start, stop) if 0 < c < extent]
    if cuts:
        sizes = [cuts[0], *(cuts[1] - cuts[0] for _ in cuts[1:])]
        sch.loop_partition(width, [*sizes, None])


def _pack_x(sch: s_tir.Schedule, dot: str) -> tuple[s_tir.SBlockRV, s_tir.SBlockRV]:
    """The packing of x of a blocked or rows form scheduled (parallel over (N, channel
    blocks, the first spatial axis), partitioned along the last: :func:`_partition_pack`);
    the form's dot-product block ``dot`` and its requantization."""
    pack = _named(sch, QCONV_PACK_X)
    _parallel_root(sch, pack, 3)
    _partition_pack(sch, pack)
    return _named(sch, dot), _named(sch, QCONV_REQUANT)


def _parallel_root(sch: s_tir.Schedule, block: s_tir.SBlockRV, outer: int) -> None:
    """A root block's first ``outer`` loops (spatial ones) fused and run in parallel."""
    loops = sch.get_loops(block)[:outer]
    sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])


def schedule_qconv(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule:
    """The schedule of the module doc for ``func`` (:func:`is_qconv`) on a CPU ``target``."""
    sch = s_tir.Schedule(func)
    conv = _named(sch, QCONV)
    requant = _named(sch, QCONV_REQUANT)
    pad = _named(sch, QCONV_PAD)
    # a strided read of the padded x along its rows: x stored as stride phases where the
    # output row is narrow enough (thresholds.md#qconv-phases)
    strided = strided_read(sch, conv, QCONV_PAD) if pad is not None else None
    phased = strided is not None and strided[3] <= profile(target).qconv_phases_max_width
    if phased:
        store_as_phases(sch, pad, strided[1])
    x_sum = _named(sch, QCONV_X_SUM)
    n_spatial = sum(int(iv.iter_type) != tirx.IterVar.CommReduce for iv in sch.get(conv).iter_vars)
    out_shape = tuple(int(sch.get(loop).extent) for loop in sch.get_loops(requant))
    lanes = profile(target).vector_lanes("int32")
    budget = profile(target).direct_accumulators
    tiles = default_tiles(out_shape, lanes, budget, channel_limit=group_channels(func))

    loops = sch.get_loops(requant)
    n, channels, *spatial = loops
    width = out_shape[-1]
    c_outer, c_inner = sch.split(channels, [None, tiles.channel_tile])
    rows_outer, rows_inner = [], []
    if len(spatial) > 1:
        r_outer, r_inner = sch.split(spatial[-2], [None, tiles.row_tile])
        rows_outer, rows_inner = [*spatial[:-2], r_outer], [r_inner]
    w_outer, w_inner = sch.split(spatial[-1], [None, tiles.width_tile])
    sch.reorder(n, c_outer, *rows_outer, w_outer, c_inner, *rows_inner, w_inner)
    parallel = sch.fuse(n, c_outer, *rows_outer)
    if width % tiles.width_tile:
        for loop in (parallel, w_outer):
            sch.annotate(loop, "pragma_loop_partition_hint", 1)
    sch.parallel(parallel)
    sch.vectorize(w_inner)
    sch.unroll(c_inner)
    for loop in rows_inner:
        sch.unroll(loop)
    sch.compute_at(conv, w_outer, preserve_unit_loops=True)
    inner = sch.get_loops(conv)[-len(sch.get(conv).iter_vars) :]
    spatial_loops, reduce_loops = inner[:n_spatial], inner[n_spatial:]
    sch.reorder(*reduce_loops, *spatial_loops)
    for loop in spatial_loops[:-1]:
        sch.unroll(loop)
    sch.vectorize(spatial_loops[-1])
    sch.decompose_reduction(conv, reduce_loops[0])
    if x_sum is not None:
        # read by the window sums and the dot product: both computed whole, before
        if pad is not None:
            _parallel_root(sch, pad, len(sch.get_loops(pad)) - 1)
        _parallel_root(sch, x_sum, min(3, n_spatial - 1))
    elif pad is not None:
        sch.compute_at(pad, parallel, preserve_unit_loops=True)
        pad_loops = sch.get_loops(pad)[1:]
        if pad_loops:
            _partition_interior(sch, pad, pad_loops[-1], strided[1] if phased else 1)
    return sch


def group_channels(func: tirx.PrimFunc) -> int:
    """The output channels of one group of ``func`` (x, w its first two arguments:
    groups = x's channels / w's axis 1), which bound a register tile's channels."""
    x, w = func.params[:2]
    groups = int(x.shape[1]) // int(w.shape[1])
    return int(w.shape[0]) // groups


# --- the blocked vpmaddwd form (ops.qconv.qconv_packed) ----------------------------------


def _dot_desc(lanes: int, step: int, a_dtype: str, b_dtype: str) -> tirx.PrimFunc:
    """What a dot-product intrinsic computes: ``c[i] += sum_k a[k] * b[i, k]`` over
    ``lanes`` int32 lanes of ``step`` products each (a broadcast, b consecutive)."""

    @T.prim_func(s_tir=True)
    def desc(
        a: T.Buffer((step,), a_dtype, offset_factor=1),
        b: T.Buffer((lanes, step), b_dtype, offset_factor=1),
        c: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:step], b[0:lanes, 0:step])
            T.writes(c[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, step):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

    return desc


#: ``c[i] += sum_k a[k] * b[i, k]`` for 8 int32 lanes and 2 int16 products each: one
#: ``vpmaddwd`` of the broadcast pair a and 16 consecutive int16 of b, added to c
#: (registered on first use: parsing its TVMScript costs about 0.5 s).
DOT_8X2_AVX2 = "convforge_dot_8x2_i16i16i32_avx2"


@functools.cache
def dot_8x2_avx2() -> str:
    """Register :data:`DOT_8X2_AVX2` (once per process); its name."""

    desc = _dot_desc(8, 2, "int16", "int16")

    @T.prim_func(s_tir=True)
    def impl(
        a: T.Buffer((2,), "int16", offset_factor=1),
        b: T.Buffer((8, 2), "int16", offset_factor=1),
        c: T.Buffer((8,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:8], a[0:2], b[0:8, 0:2])
            T.writes(c[0:8])
            pair = T.reinterpret(a.vload([0], "int16x2"), dtype="int32")
            pairs = T.reinterpret(T.broadcast(pair, 8), dtype="int16x16")
            c[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                pairs,
                b.vload([0, 0], dtype="int16x16"),
                dtype="int32x8",
            )

    TensorIntrin.register(DOT_8X2_AVX2, desc, impl, override=True)
    return DOT_8X2_AVX2


#: ``c[i] += sum_k a[k] * b[i, k]`` for 8 int32 lanes of 4 uint8 x int8 products each:
#: ``vpmaddubsw`` of the broadcast quad a and 32 consecutive int8 of b (pairs summed in
#: int16, saturating: exact only for weights that ``ops.qconv.fits_pmaddubsw``), then
#: ``vpmaddwd`` by ones, added to c.
DOT_8X4_AVX2 = "convforge_dot_8x4_u8i8i32_avx2"


@functools.cache
def dot_8x4_avx2() -> str:
    """Register :data:`DOT_8X4_AVX2` (once per process); its name."""

    desc = _dot_desc(8, 4, "uint8", "int8")

    @T.prim_func(s_tir=True)
    def impl(
        a: T.Buffer((4,), "uint8", offset_factor=1),
        b: T.Buffer((8, 4), "int8", offset_factor=1),
        c: T.Buffer((8,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:8], a[0:4], b[0:8, 0:4])
            T.writes(c[0:8])
            quad = T.reinterpret(a.vload([0], "uint8x4"), dtype="int32")
            quads = T.reinterpret(T.broadcast(quad, 8), dtype="uint8x32")
            pairs = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                quads,
                b.vload([0, 0], dtype="int8x32"),
                dtype="int16x16",
            )
            c[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                pairs,
                T.int16x16(1),
                dtype="int32x8",
            )

    TensorIntrin.register(DOT_8X4_AVX2, desc, impl, override=True)
    return DOT_8X4_AVX2


def _broadcast_quad_dot(name: str, lanes: int, instruction: str) -> str:
    """Register ``name``: ``c[i] += sum_k a[k] * b[i, k]`` for ``lanes`` int32 lanes of 4
    uint8 x int8 products each, as one accumulating ``instruction`` (an LLVM intrinsic taking
    c, the unsigned bytes, the signed bytes) of the broadcast quad a and ``4 * lanes``
    consecutive int8 of b; its name."""
    desc = _dot_desc(lanes, 4, "uint8", "int8")
    acc_type, u8_type, s8_type = f"int32x{lanes}", f"uint8x{4 * lanes}", f"int8x{4 * lanes}"

    @T.prim_func(s_tir=True)
    def impl(
        a: T.Buffer((4,), "uint8", offset_factor=1),
        b: T.Buffer((lanes, 4), "int8", offset_factor=1),
        c: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:4], b[0:lanes, 0:4])
            T.writes(c[0:lanes])
            quad = T.reinterpret(a.vload([0], "uint8x4"), dtype="int32")
            c[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(instruction),
                c.vload([0], dtype=acc_type),
                T.reinterpret(T.broadcast(quad, lanes), dtype=u8_type),
                b.vload([0, 0], dtype=s8_type),
                dtype=acc_type,
            )

    TensorIntrin.register(name, desc, impl, override=True)
    return name


#: ``c[i] += sum_k a[k] * b[i, k]`` for 16 int32 lanes of 4 uint8 x int8 products each:
#: one ``vpdpbusd`` (AVX-512 VNNI) of the broadcast quad a and 64 consecutive int8 of b,
#: accumulated into c in place (exact: the four products are summed in int32).
DOT_16X4_VNNI = "convforge_dot_16x4_u8i8i32_vnni"


@functools.cache
def dot_16x4_vnni() -> str:
    """Register :data:`DOT_16X4_VNNI` (once per process); its name."""
    return _broadcast_quad_dot(DOT_16X4_VNNI, 16, "llvm.x86.avx512.vpdpbusd.512")


#: ``c[i] += sum_k a[k] * b[i, k]`` for 4 int32 lanes of 4 uint8 x int8 products each: one
#: AArch64 ``usdot`` (the i8mm extension) of the broadcast quad a and 16 consecutive int8 of
#: b, accumulated into c (exact, like ``vpdpbusd``).
DOT_4X4_USDOT = "convforge_dot_4x4_u8i8i32_usdot"


@functools.cache
def dot_4x4_usdot() -> str:
    """Register :data:`DOT_4X4_USDOT` (once per process); its name."""
    return _broadcast_quad_dot(DOT_4X4_USDOT, 4, "llvm.aarch64.neon.usdot.v4i32.v16i8")


def is_qconv_packed(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` is :func:`convforge.ops.qconv.qconv_packed`."""
    return has_block(func, QCONV_PACK_X) and has_block(func, QCONV)


def schedule_qconv_packed(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule:
    """The blocked form: x packed in parallel over (N, channel pairs); the dot product's
    output (N, O/8, *spatial, 8) tiled by channel blocks x positions of
    the last axis (:func:`~convforge.ops.qconv.packed_tile`: up to 12 int32 accumulators on
    AVX2, 24 on AVX-512), parallel over (N, channel-block tiles, the outer spatial axes), the
    reduction (channel steps, kernel) outside the register tile and each step tensorized
    to one instruction: 8 channels x 2 products ``vpmaddwd`` (:data:`DOT_8X2_AVX2`), 8 x 4
    ``vpmaddubsw`` + ``vpmaddwd`` (:data:`DOT_8X4_AVX2`), 16 x 4 ``vpdpbusd``
    (:data:`DOT_16X4_VNNI`); the requantization parallel and vectorized (``vpdpbusd``:
    per register tile, as the tile is finished; where the form requantizes in its blocked
    layout, ``qconv_out`` transposes each parallel tile to NCHW: :func:`_transpose_out`)."""
    sch = s_tir.Schedule(func)
    conv, requant = _pack_x(sch, QCONV)
    loops = sch.get_loops(conv)
    iters = sch.get(conv).iter_vars
    spatial = [lp for lp, iv in zip(loops, iters) if int(iv.iter_type) != tirx.IterVar.CommReduce]
    reduce_ = [lp for lp, iv in zip(loops, iters) if int(iv.iter_type) == tirx.IterVar.CommReduce]
    n, ob, *positions, oi = spatial
    *rc_rk, ri = reduce_
    lanes = int(sch.get(oi).extent)
    ob_tile, w_tile = qconv_ops.packed_tile(
        int(sch.get(ob).extent), int(sch.get(positions[-1]).extent), lanes, profile(target)
    )
    ob_o, ob_i = sch.split(ob, [None, ob_tile])
    w_o, w_i = sch.split(positions[-1], [None, w_tile])
    outer = positions[:-1]
    sch.reorder(n, ob_o, *outer, w_o, *rc_rk, ob_i, w_i, oi, ri)
    parallel = sch.fuse(n, ob_o, *outer[:1])
    sch.parallel(parallel)
    # vpdpbusd: each register tile requantized as it is finished, not the int32 output
    # written whole and read back (3x3 64->64 and 1x1 256->64 56x56 on a 2-core Zen 4:
    # 0.84-0.87x the time; the AVX2 forms, measured there too, gained 0.90-0.94x or lost
    # 1.08x: unchanged)
    fuse_requant = lanes == qconv_ops.VNNI_OUT_BLOCK
    if fuse_requant:
        sch.reverse_compute_at(requant, w_o, preserve_unit_loops=True)
    sch.decompose_reduction(conv, rc_rk[0])
    sch.unroll(ob_i)
    sch.unroll(w_i)
    quads = int(sch.get(ri).extent) == 4
    if lanes == qconv_ops.VNNI_OUT_BLOCK:
        sch.tensorize(oi, dot_16x4_vnni())
    elif lanes == qconv_ops.USDOT_OUT_BLOCK:
        sch.tensorize(oi, dot_4x4_usdot())
    else:
        sch.tensorize(oi, dot_8x4_avx2() if quads else dot_8x2_avx2())
    init = _named(sch, QCONV + "_init")
    if init is not None:
        sch.vectorize(sch.get_loops(init)[-1])
    if fuse_requant:
        sch.vectorize(sch.get_loops(requant)[-1])
        out = _named(sch, QCONV_OUT)
        if out is not None:
            _transpose_out(sch, out, parallel, lanes)
        return sch
    rloops = sch.get_loops(requant)
    r_outer = rloops[:-1]
    sch.parallel(sch.fuse(*r_outer[: min(3, len(r_outer))]))
    r_width = int(sch.get(rloops[-1]).extent)
    lanes = profile(target).vector_lanes("int32")
    if r_width >= lanes:
        _, inner = sch.split(rloops[-1], [None, lanes])
        sch.vectorize(inner)
    return sch


def _transpose_out(
    sch: s_tir.Schedule, out: s_tir.SBlockRV, parallel: s_tir.LoopRV, lanes: int
) -> None:
    """The blocked form's transposition to (N, O, *out) (block ``qconv_out``) computed
    per parallel tile, after its register tiles are requantized (computed per register
    tile instead, LLVM merged it into the requantization's stores: byte by byte, slower
    than the transposition it replaced), each step ``lanes`` channels x a chunk of
    positions (:func:`convforge.ops.qconv.transpose_chunk`) tensorized as
    :func:`transpose_block`."""
    sch.reverse_compute_at(out, parallel, preserve_unit_loops=True)
    _, channels, *middle, width = sch.get_loops(out)[1:]  # after the parallel loop: N
    chunk = qconv_ops.transpose_chunk(int(sch.get(width).extent), lanes)
    c_o, c_i = sch.split(channels, [None, lanes])
    w_o, w_i = sch.split(width, [None, chunk])
    sch.reorder(c_o, *middle, w_o, c_i, w_i)
    dtype = str(sch.get(out).writes[0].source.dtype)
    sch.tensorize(c_i, transpose_block(lanes, chunk, len(middle), dtype))


@functools.cache
def transpose_block(lanes: int, width: int, middle: int, dtype: str) -> str:
    """Register (once per process) ``c[i, 0.., j] = a[j, i]`` for ``lanes`` channels x
    ``width`` positions of 8-bit ``dtype``: a (width, lanes) consecutive (positions of the
    blocked layout), c (lanes, ``middle`` unit axes, width) with any strides (rows of the
    NCHW output); as one vector load of a, one shuffle per row of c and its store (LLVM's
    ``vpermt2b``/``vpermb`` on AVX-512 VBMI); its name."""
    name = f"convforge_transpose_{lanes}x{width}_{middle}_{dtype}"
    c_shape = (lanes, *([1] * middle), width)
    units = [0] * middle
    size = lanes * width

    @T.prim_func(s_tir=True)
    def desc(a_handle: T.handle, c_handle: T.handle) -> None:
        a = T.match_buffer(a_handle, (width, lanes), dtype, offset_factor=1)
        c = T.match_buffer(
            c_handle, c_shape, dtype, offset_factor=1,
            strides=[T.int32() for _ in c_shape[:-1]] + [1],
        )  # fmt: skip
        with T.sblock("root"):
            T.reads(a[0:width, 0:lanes])
            T.writes(c[(slice(0, lanes), *(slice(0, 1) for _ in units), slice(0, width))])
            for i, j in T.grid(lanes, width):
                with T.sblock("transpose"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    c[(vi, *units, vj)] = a[vj, vi]

    @T.prim_func(s_tir=True)
    def impl(a_handle: T.handle, c_handle: T.handle) -> None:
        a = T.match_buffer(a_handle, (width, lanes), dtype, offset_factor=1)
        c = T.match_buffer(
            c_handle, c_shape, dtype, offset_factor=1,
            strides=[T.int32() for _ in c_shape[:-1]] + [1],
        )  # fmt: skip
        with T.sblock("root"):
            T.reads(a[0:width, 0:lanes])
            T.writes(c[(slice(0, lanes), *(slice(0, 1) for _ in units), slice(0, width))])
            whole = a.vload([0, 0], f"{dtype}x{size}")
            for i in T.unroll(lanes):
                c[(i, *units, T.ramp(T.int32(0), 1, width))] = T.Shuffle(
                    [whole], [j * lanes + i for j in range(width)]
                )

    TensorIntrin.register(name, desc, impl, override=True)
    return name


# --- the rows form (ops.qconv.qconv_rows): output positions in the lanes ------------------

#: ``c[i] += sum_k a[i, k] * b[k]`` for 16 int32 lanes of 4 uint8 x int8 products each:
#: one ``vpdpbusd`` (AVX-512 VNNI) of 64 consecutive uint8 of a (16 positions' quads of
#: channels) and the broadcast quad b (one output channel's weights), accumulated into c.
DOT_16X4_VNNI_ROWS = "convforge_dot_16x4_u8i8i32_vnni_rows"


@functools.cache
def dot_16x4_vnni_rows() -> str:
    """Register :data:`DOT_16X4_VNNI_ROWS` (once per process); its name."""
    lanes, step = qconv_ops.ROWS_LANES, qconv_ops.QUAD

    @T.prim_func(s_tir=True)
    def desc(
        a: T.Buffer((lanes, step), "uint8", offset_factor=1),
        b: T.Buffer((step,), "int8", offset_factor=1),
        c: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:lanes, 0:step], b[0:step])
            T.writes(c[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, step):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + T.cast(a[vi, vk], "int32") * T.cast(b[vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(
        a: T.Buffer((16, 4), "uint8", offset_factor=1),
        b: T.Buffer((4,), "int8", offset_factor=1),
        c: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:16, 0:4], b[0:4])
            T.writes(c[0:16])
            quad = T.reinterpret(b.vload([0], "int8x4"), dtype="int32")
            c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                c.vload([0], dtype="int32x16"),
                a.vload([0, 0], dtype="uint8x64"),
                T.reinterpret(T.broadcast(quad, 16), dtype="int8x64"),
                dtype="int32x16",
            )

    TensorIntrin.register(DOT_16X4_VNNI_ROWS, desc, impl, override=True)
    return DOT_16X4_VNNI_ROWS


def is_qconv_rows(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` is :func:`convforge.ops.qconv.qconv_rows`."""
    return has_block(func, QCONV_ROWS)


def rows_tile(channels: int, vectors: int, thresholds: TargetProfile) -> int:
    """Output channels of the rows form's register tile over ``vectors`` int32 vectors of
    positions (a whole row): the largest divisor of ``channels`` whose accumulators fit
    the profile's ``direct_accumulators`` with the row's x vectors and one broadcast weight
    within its ``vector_registers``."""
    limit = min(
        thresholds.direct_accumulators // vectors,
        (thresholds.vector_registers - vectors - 1) // vectors,
    )
    return largest_divisor(channels, max(1, limit))


def schedule_qconv_rows(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule:
    """The rows form: x packed in parallel over (N, channel quads); the dot product's
    output (N, O, *rows, width) tiled by output channels (:func:`rows_tile`) x one whole
    row of 16-position vectors, parallel over (N, channel tiles, rows); the reduction over
    channel quads outside the register tile, each step one ``vpdpbusd`` of a broadcast
    weight quad (:data:`DOT_16X4_VNNI_ROWS`); each tile requantized as it is finished,
    vectorized along the row (the output's own layout)."""
    sch = s_tir.Schedule(func)
    acc, requant = _pack_x(sch, QCONV_ROWS)
    n, o, *rows, width, rc, ri = sch.get_loops(acc)
    lanes = qconv_ops.ROWS_LANES
    vectors = int(sch.get(width).extent) // lanes
    o_tile = rows_tile(int(sch.get(o).extent), vectors, profile(target))
    o_outer, o_inner = sch.split(o, [None, o_tile])
    w_outer, w_inner = sch.split(width, [None, lanes])
    sch.reorder(n, o_outer, *rows, rc, o_inner, w_outer, w_inner, ri)
    task = sch.fuse(n, o_outer, *rows)
    sch.parallel(task)
    sch.reverse_compute_at(requant, task, preserve_unit_loops=True)
    sch.decompose_reduction(acc, rc)
    sch.unroll(o_inner)
    sch.unroll(w_outer)
    sch.tensorize(w_inner, dot_16x4_vnni_rows())
    init = _named(sch, QCONV_ROWS + "_init")
    if init is not None:
        sch.vectorize(sch.get_loops(init)[-1])
    r_width = sch.get_loops(requant)[-1]
    extent = int(sch.get(r_width).extent)
    whole = extent // lanes * lanes
    parts = [r_width] if whole in (0, extent) else sch.loop_partition(r_width, [whole, None])
    for part in parts:
        if int(sch.get(part).extent) > lanes:
            part = sch.split(part, [None, lanes])[1]
        sch.vectorize(part)
    return sch
