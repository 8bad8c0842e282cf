"""Default CUDA schedules for convforge's TE operators (no tuning).

TVM 0.27's dlight has no convolution rule (its Fallback is one thread per output), so
convolutions get an implicit-GEMM schedule of our own (:func:`schedule_conv`):

* a thread block computes a tile of ``out-channels x output pixels`` (pixels tiled along
  the two innermost spatial axes, outer spatial axes and batch spread over blocks);
* each thread accumulates a register tile (``channels x rows x columns``) in ``local``
  memory;
* the reduction runs over chunks of input channels; for every chunk the block stages the
  input tile (padding, zero-insertion of transposed convolution inlined into the copy) and
  the weight tile (kernel flip of transposed convolution inlined) in ``shared`` memory,
  either for the whole kernel window at once or one kernel tap at a time when the window
  does not fit the shared-memory budget;
* weight tiles whose rows are provably 16-byte aligned load as ``float4``;
* the epilogue (bias, activation, cast) runs on the register tile before the store;
* small launches (batch 1) take smaller blocks and register tiles until there are two
  blocks per SM of the target's architecture.

Depthwise convolutions (one input channel per group) use the same rule with a tile shaped
for them: one block per tile of channels, the whole kernel window staged once, no
channel reduction. Causal and dilated 1-D convolutions tile the time axis. Functions
without a ``conv`` block (pools, heads, resize, element-wise) get dlight's reduction and
fallback rules.

float16 inputs keep float32 accumulators (the TE op casts); staging stays in float16.
Strided transposed convolutions arrive as sub-pixel phases (``ops.conv_transpose_subpixel``:
blocks ``conv``, ``conv_1``, ...): each phase gets the rule above as its own kernel, the
shared padded input and the weight gathers are inlined into every phase's tile copies,
and the interleave runs one thread per output. Not done yet: tensor cores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.sym.pattern import detect_linear_equation

from convforge.ops.blocks import CONV, CONV_EPILOGUE, CONV_TRANSPOSE_GATHER, is_numbered
from convforge.schedules.rules import ScheduleRule, apply_rules
from convforge.targets import profile

#: Threads per block the tile policy aims at.
_THREADS = 256
#: Bytes of shared memory one block may stage (the static limit is 48 KiB on sm_80/sm_90).
SHARED_BUDGET = 32 * 1024


@dataclass(frozen=True)
class AxisTile:
    """One output axis split into ``blocks x threads x registers``."""

    threads: int
    registers: int


@dataclass(frozen=True)
class ConvTiles:
    """Tile sizes of one convolution: channel and pixel tiles, channels staged per step."""

    channels: AxisTile
    rows: AxisTile | None  # second innermost spatial axis (None for 1-D)
    cols: AxisTile
    reduce_inner: int
    stage_window: bool  # stage the whole kernel window (else one kernel tap at a time)

    @property
    def threads(self) -> int:
        rows = self.rows.threads if self.rows else 1
        return self.channels.threads * rows * self.cols.threads


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def _axis_tile(extent: int, threads: int, registers: int) -> AxisTile:
    """Clamp a preferred tile to ``extent`` so that few threads idle."""
    registers = min(registers, extent)
    threads = min(threads, _pow2_floor(-(-extent // registers)))
    return AxisTile(max(1, threads), registers)


def _largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


@dataclass(frozen=True)
class ConvShape:
    """What the tile policy needs to know about a ``conv`` block."""

    batch: int
    in_channels: int
    out_channels: int
    out_size: tuple[int, ...]
    reduce_channels: int
    kernel: tuple[int, ...]
    input_span: tuple[int, ...]  # input elements one output step advances (stride)
    dilation: tuple[int, ...]
    bytes_per_element: int

    @property
    def depthwise(self) -> bool:
        return self.reduce_channels == 1


def _window(tile: int, stride: int, kernel: int, dilation: int) -> int:
    return (tile - 1) * stride + (kernel - 1) * dilation + 1


def _shared_bytes(shape: ConvShape, tiles: ConvTiles, stage_window: bool) -> int:
    """Bytes of the input and weight tiles one reduction step stages in shared memory."""
    tiled = [tiles.cols] if tiles.rows is None else [tiles.rows, tiles.cols]
    outer = [AxisTile(1, 1)] * (len(shape.out_size) - len(tiled))  # one output per block
    pixels = 1
    for tile, k, s, d in zip([*outer, *tiled], shape.kernel, shape.input_span, shape.dilation):
        extent = tile.threads * tile.registers
        pixels *= _window(extent, s, k, d) if stage_window else (extent - 1) * s + 1
    channels = tiles.channels.threads * tiles.channels.registers
    taps = math.prod(shape.kernel) if stage_window else 1
    # the input channels a tile of output channels reads span several groups when grouped
    groups = shape.in_channels // shape.reduce_channels
    per_group = shape.out_channels // groups
    if channels % per_group == 0 or per_group % channels == 0:
        spanned = max(1, channels // per_group)
    else:
        spanned = min(groups, -(-channels // per_group) + 1)
    data_channels = (spanned - 1) * shape.reduce_channels + tiles.reduce_inner
    weights = channels * tiles.reduce_inner * taps
    return (data_channels * pixels + weights) * shape.bytes_per_element


def _output_tiles(
    shape: ConvShape, thread_cap: int, scale: int
) -> tuple[AxisTile, AxisTile | None, AxisTile]:
    """Channel, row and column tiles: up to ``thread_cap`` threads per block, the preferred
    register counts divided by ``scale``."""

    def regs(n: int) -> int:
        return max(1, n // scale)

    if len(shape.out_size) == 1:
        rows = None
        cols = _axis_tile(shape.out_size[-1], 64 if shape.depthwise else 16, regs(4))
        spatial_threads = cols.threads
    else:
        rows = _axis_tile(shape.out_size[-2], 8 if shape.depthwise else 4, regs(2))
        cols = _axis_tile(
            shape.out_size[-1], 8 if shape.depthwise else 4, regs(4 if shape.depthwise else 2)
        )
        spatial_threads = rows.threads * cols.threads
    channels = _axis_tile(
        shape.out_channels,
        max(1, thread_cap // spatial_threads),
        1 if shape.depthwise else regs(4),
    )
    return channels, rows, cols


def _blocks(shape: ConvShape, channels: AxisTile, rows: AxisTile | None, cols: AxisTile) -> int:
    """Thread blocks of the launch: batch x outer spatial x channel, row, column tiles."""
    tiled = [(shape.out_channels, channels), (shape.out_size[-1], cols)]
    outer = shape.out_size[:-1]
    if rows is not None:
        tiled.append((shape.out_size[-2], rows))
        outer = shape.out_size[:-2]
    count = shape.batch * math.prod(outer)
    for extent, tile in tiled:
        count *= -(-extent // (tile.threads * tile.registers))
    return count


#: Block shapes tried in turn until the launch has enough blocks: (thread cap, scale).
_BLOCK_SHAPES = ((256, 1), (128, 1), (64, 1), (128, 2), (64, 2))


def conv_tiles(shape: ConvShape, min_blocks: int = 1) -> ConvTiles:
    """The tile policy: 256 threads, 4x2x2 (dense) or 1x2x4 (depthwise) outputs per thread.

    Launches with fewer than ``min_blocks`` blocks (small batch-1 layers) take smaller
    blocks, then fewer registers per thread, until they have enough; blocks keep at least
    64 threads where the output has that many elements. The reduction stage is the
    largest that fits the shared-memory budget.
    """
    for thread_cap, scale in _BLOCK_SHAPES:
        channels, rows, cols = _output_tiles(shape, thread_cap, scale)
        threads = ConvTiles(channels, rows, cols, 1, True).threads
        if threads >= 64 and _blocks(shape, channels, rows, cols) >= min_blocks:
            break
        if threads < 64 and scale == 1 and thread_cap == 256:
            channels, rows, cols = _output_tiles(shape, thread_cap, 2)
            break
    reduce_inner = 1 if shape.depthwise else _largest_divisor(shape.reduce_channels, 16)
    for stage_window in (True, False):  # prefer staging the whole window (more reuse)
        inner = reduce_inner
        while True:
            tiles = ConvTiles(channels, rows, cols, inner, stage_window)
            if _shared_bytes(shape, tiles, stage_window) <= SHARED_BUDGET:
                return tiles
            if inner == 1 or (stage_window and inner <= 4):
                break
            inner = _largest_divisor(shape.reduce_channels, inner // 2)
    return tiles  # one channel, one tap: the smallest stage there is


def _conv_shape(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> ConvShape:
    stmt = sch.get(block)
    spatial = [iv for iv in stmt.iter_vars if int(iv.iter_type) != tirx.IterVar.CommReduce]
    reduce_ = [iv for iv in stmt.iter_vars if int(iv.iter_type) == tirx.IterVar.CommReduce]
    data = stmt.reads[0]
    ndim = len(spatial) - 2
    # index of data along spatial axis i is p*s + r*d: read the stride/dilation back from
    # the TE op's geometry via the buffer region is brittle; take them from the index.
    strides, dilations = [], []
    for axis in range(ndim):
        index = data.region[2 + axis].min
        p_var, r_var = spatial[2 + axis].var, reduce_[1 + axis].var
        strides.append(_coefficient(index, p_var))
        dilations.append(_coefficient(index, r_var))
    return ConvShape(
        batch=int(spatial[0].dom.extent),
        in_channels=int(data.source.shape[1]),
        out_channels=int(spatial[1].dom.extent),
        out_size=tuple(int(iv.dom.extent) for iv in spatial[2:]),
        reduce_channels=int(reduce_[0].dom.extent),
        kernel=tuple(int(iv.dom.extent) for iv in reduce_[1:]),
        input_span=tuple(strides),
        dilation=tuple(dilations),
        bytes_per_element=tvm.DataType(str(data.source.dtype)).bits // 8,
    )


def _coefficient(expr: tirx.PrimExpr, var: tirx.Var) -> int:
    """Coefficient of ``var`` in the affine index ``expr`` (1 when not affine)."""
    coeffs = detect_linear_equation(expr, [var])
    return int(coeffs[0]) if len(coeffs) == 2 and isinstance(coeffs[0], tirx.IntImm) else 1


def _producers_by_distance(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> list[str]:
    """Names of every block ``block`` depends on, farthest first (the order to inline)."""
    order: list[str] = []
    frontier = [block]
    while frontier:
        nxt = []
        for b in frontier:
            for producer in sch.get_producers(b):
                name = sch.get(producer).name_hint
                if name in order:
                    order.remove(name)
                order.append(name)
                nxt.append(producer)
        frontier = nxt
    return order[::-1]


def _epilogue_of(sch: s_tir.Schedule, conv: s_tir.SBlockRV) -> s_tir.SBlockRV | None:
    """``conv``'s element-wise epilogue (the op's ``conv_epilogue`` block), if it has one."""
    consumers = sch.get_consumers(conv)
    if len(consumers) != 1:
        return None
    name = sch.get(consumers[0]).name_hint
    return consumers[0] if is_numbered(name, CONV_EPILOGUE) else None


def _bind_one_thread_per_output(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> None:
    """Blocks after a convolution's epilogue (pooling, softmax of a head): each thread
    computes whole outputs, reductions run serially inside the thread."""
    iter_vars = sch.get(block).iter_vars
    loops = sch.get_loops(block)
    spatial = [
        loop for loop, iv in zip(loops, iter_vars) if int(iv.iter_type) != tirx.IterVar.CommReduce
    ]
    if not spatial:
        spatial = [sch.add_unit_loop(block)]
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    extent = int(sch.get(fused).extent)
    bx, tx = sch.split(fused, [None, min(256, extent)])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


def _cooperative_fetch(
    sch: s_tir.Schedule,
    cache: s_tir.SBlockRV,
    at: s_tir.LoopRV,
    depth: int,
    threads: int,
    vector: int = 1,
) -> None:
    """Copy ``cache``'s region at loop ``at`` (the ``depth``-th loop) with all threads,
    ``vector`` consecutive elements per thread and load (the caller proves alignment)."""
    sch.compute_at(cache, at, preserve_unit_loops=True)
    copy = sch.fuse(*sch.get_loops(cache)[depth:])
    if vector > 1:
        _, tx, lanes = sch.split(copy, [None, threads, vector])
        sch.vectorize(lanes)
    else:
        _, tx = sch.split(copy, [None, threads])
    sch.bind(tx, "threadIdx.x")


def _weight_vector(shape: ConvShape, tiles: ConvTiles, weight_is_input: bool) -> int:
    """Lanes for loading the weight tile: 4 where every load is 16-byte aligned and the tile
    splits evenly among the threads, else 1.

    The staged window of output channel ``o`` is the contiguous run
    ``w[o, c0 : c0 + reduce_inner, *taps]`` starting at ``(o * C_in/g + c0) * taps``;
    with ``c0`` a multiple of ``reduce_inner``, the run's length and both strides being
    multiples of 4 elements makes every 4-element group aligned and contiguous.
    """
    lanes = 4
    if not (weight_is_input and tiles.stage_window) or shape.bytes_per_element != 4:
        return 1
    taps = math.prod(shape.kernel)
    run, row = tiles.reduce_inner * taps, shape.reduce_channels * taps
    channels = tiles.channels.threads * tiles.channels.registers
    whole = channels * run
    aligned = run % lanes == 0 and row % lanes == 0
    even = whole % lanes == 0 and shape.out_channels % channels == 0
    return lanes if aligned and even else 1


def multiprocessors(target: tvm.target.Target) -> int:
    """SM count assumed for ``target``'s architecture: its profile's ``multiprocessors``
    (the most common part of each architecture; 100 when unknown)."""
    return profile(target).cuda.multiprocessors


def schedule_conv(sch: s_tir.Schedule, conv: s_tir.SBlockRV, min_blocks: int = 1) -> ConvTiles:
    """Implicit-GEMM tiling of the ``conv`` block (and its epilogue) in place; returns tiles.

    ``min_blocks``: the launch should have at least this many thread blocks.
    """
    shape = _conv_shape(sch, conv)
    tiles = conv_tiles(shape, min_blocks)
    ndim = len(shape.out_size)
    producers = _producers_by_distance(sch, conv)
    epilogue = _epilogue_of(sch, conv)
    if epilogue is not None:
        sch.set_scope(conv, 0, "local")
    else:
        epilogue = sch.cache_write(conv, 0, "local")
    weight = sch.get(conv).reads[1].source
    weight_is_input = not any(  # read straight from the argument (no flip, no gather)
        sch.get(p).writes[0].source.same_as(weight) for p in sch.get_producers(conv)
    )
    # only this conv reads the copies (sub-pixel phases share their producers)
    data_shared = sch.cache_read(conv, 0, "shared", consumer_blocks=[conv])
    weight_shared = sch.cache_read(conv, 1, "shared", consumer_blocks=[conv])
    for name in producers:  # padding, zero insertion, resizing, weight flip: into the copies
        sch.compute_inline(sch.get_sblock(name))

    loops = sch.get_loops(conv)
    n, o, *pos = loops[: 2 + ndim]
    rc, *rk = loops[2 + ndim :]
    outer_spatial = pos[:-2] if ndim >= 2 else []
    o_b, o_t, o_r = sch.split(o, [None, tiles.channels.threads, tiles.channels.registers])
    c_b, c_t, c_r = sch.split(pos[-1], [None, tiles.cols.threads, tiles.cols.registers])
    if tiles.rows is not None:
        r_b, r_t, r_r = sch.split(pos[-2], [None, tiles.rows.threads, tiles.rows.registers])
        block_axes = [n, *outer_spatial, o_b, r_b, c_b]
        thread_axes, register_axes = [o_t, r_t, c_t], [o_r, r_r, c_r]
    else:
        block_axes = [n, o_b, c_b]
        thread_axes, register_axes = [o_t, c_t], [o_r, c_r]
    rc_o, rc_i = sch.split(rc, [None, tiles.reduce_inner])
    if tiles.stage_window:
        reduction = [rc_o, rc_i, *rk]
        stage_at = rc_o
    else:
        reduction = [rc_o, *rk, rc_i]
        stage_at = rk[-1] if rk else rc_o
    sch.reorder(*block_axes, *thread_axes, *reduction, *register_axes)
    bx = sch.fuse(*block_axes)
    tx = sch.fuse(*thread_axes)
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    depth = [sch.get(loop) for loop in sch.get_loops(conv)].index(sch.get(stage_at)) + 1
    _cooperative_fetch(sch, data_shared, stage_at, depth, tiles.threads)
    vector = _weight_vector(shape, tiles, weight_is_input)
    _cooperative_fetch(sch, weight_shared, stage_at, depth, tiles.threads, vector)
    for loop in register_axes:
        sch.unroll(loop)
    sch.reverse_compute_at(epilogue, tx, preserve_unit_loops=True)
    sch.decompose_reduction(conv, rc_o)
    return tiles


class GatherRule(ScheduleRule[tvm.IRModule]):
    """A large-stride transposed convolution (``ops.conv_transpose_gather``): dlight
    refuses its chained reductions; products, gather and epilogue, one thread per output."""

    def applies(self, func: tirx.PrimFunc, target: tvm.target.Target) -> bool:
        return bool(_root_blocks(func, CONV_TRANSPOSE_GATHER))

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target) -> tvm.IRModule:
        sch = s_tir.Schedule(func)
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            _bind_one_thread_per_output(sch, block)
        return sch.mod


class ConvRule(ScheduleRule[tvm.IRModule]):
    """One ``conv`` block, or one per phase of a sub-pixel transposed convolution: the
    implicit-GEMM rule (:func:`schedule_conv`) per block, then one thread per output for
    anything not yet inside a kernel (the blocks after the epilogue)."""

    def applies(self, func: tirx.PrimFunc, target: tvm.target.Target) -> bool:
        return bool(_root_blocks(func, CONV))

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target) -> tvm.IRModule:
        sch = s_tir.Schedule(func)
        for name in _root_blocks(func, CONV):
            schedule_conv(sch, sch.get_sblock(name), min_blocks=2 * multiprocessors(target))
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            if not any(  # anything not yet inside a kernel: blocks after the epilogue
                sch.get(loop).thread_binding is not None for loop in sch.get_loops(block)
            ):
                _bind_one_thread_per_output(sch, block)
        return sch.mod


def dlight_schedule(func: tirx.PrimFunc, target: tvm.target.Target) -> tvm.IRModule:
    """dlight's reduction and fallback rules: pools, heads, resize, element-wise (and the
    fallback of a CUDA rule that failed)."""
    mod = tvm.IRModule({"main": func})
    with target:
        return dlight.ApplyDefaultSchedule(
            dlight.gpu.Reduction(),
            dlight.gpu.GeneralReduction(),
            dlight.gpu.Fallback(),
        )(mod)


#: The CUDA rules, in order: the first that applies schedules the function
#: (:func:`schedule_gpu`); a function none applies to gets :func:`dlight_schedule`.
CUDA_RULES: tuple[ScheduleRule[tvm.IRModule], ...] = (GatherRule(), ConvRule())


def _root_blocks(func: tirx.PrimFunc, base: str) -> list[str]:
    """Names of ``func``'s root blocks that are ``base`` or ``base`` made unique."""
    sch = s_tir.Schedule(func)
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    return [name for name in names if is_numbered(name, base)]


def schedule_gpu(func: tirx.PrimFunc, target: tvm.target.Target) -> tvm.IRModule:
    """Schedule ``func`` by the first of :data:`CUDA_RULES` that applies, else by dlight
    (:func:`dlight_schedule`); a rule that raises is an error under
    ``CONVFORGE_STRICT_SCHEDULES=1``, else a logged warning and the dlight schedule."""
    return apply_rules(CUDA_RULES, func, target, dlight_schedule)
