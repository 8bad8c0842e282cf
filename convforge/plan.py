"""The plan layer: the one place that decides how a convolution is computed.

:func:`plan_conv` takes what was asked (a :class:`~convforge.shapes.ConvGeometry`, dtype,
target, whether the weight is a constant, ``algorithm=``, a fused max pool, a folded
resize, bias / residual / activation) and returns a frozen :class:`ConvPlan` that knows
everything downstream needs:

- ``kernel_geometry``: the shapes the kernel runs on (a dense 1x1 over one row of H*W
  positions; a strided unpadded 1x1 after x is subsampled by the stride);
- ``algorithm``: one instance of a class of :data:`CONV_ALGORITHMS` (its parameters:
  :class:`~convforge.ops.WinogradTiles`, :class:`~convforge.ops.ChannelBlocks`), which
  knows its computation, its weight packing, its label and its schedule rule;
- ``prepare_x`` / ``pack`` (numpy) and ``subsample`` / ``reshapes`` (for relax): the
  slice and reshapes of x, w and the residual around the kernel;
- ``compute`` (the TE computation, fused epilogue and pool included), ``computation``
  (placeholders + compute: what the API compiles and ``convforge tune`` tunes), ``label``
  (``report()``), ``key`` (kernel cache), ``needs_finite_check`` and ``direct()``.

Callers (``cf.conv``, ``cf.prepare_conv``, the ONNX lowering, ``convforge tune``,
``convforge aot``) call :func:`plan_conv` once and never branch on the algorithm's type.
Adding an algorithm: one class here (``choose``, ``compute``, ``pack``, ``label``,
``schedule``), its schedule rule in ``schedules/``, one line in :data:`CONV_ALGORITHMS`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from convforge import ops, shapes
from convforge.ops import qconv as qconv_ops
from convforge.ops.conv import accumulator_dtype
from convforge.targets import (
    TargetArg,
    TargetProfile,
    has_aarch64_feature,
    has_x86_feature,
    is_cpu,
    profile,
    resolve_target,
    vector_lanes,
)
from convforge.tvm_import import te, tvm

#: Builds the computation: returns (input placeholders, output tensors).
Computation = Callable[[], tuple[Sequence["te.Tensor"], Sequence["te.Tensor"]]]

#: Values of every ``algorithm=`` argument: ``auto`` (Winograd where :func:`plan_conv`
#: finds it faster), ``direct`` (never Winograd) or ``winograd`` (wherever it applies).
ALGORITHMS = ("auto", "direct", "winograd")


def check_algorithm(algorithm: str) -> None:
    """ValueError unless ``algorithm`` is one of :data:`ALGORITHMS`."""
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")


# --- thresholds of the choices (each measured: benchmarks/results/thresholds.md) -------
# The register-tile and pointwise thresholds are the target's (``targets.profile``).

#: Output-channel vectors per register tile: powers of two.
#: Evidence: benchmarks/results/thresholds.md#channel-vectors
CHANNEL_VECTORS = (1, 2, 4)
#: Stride-2 convolutions by F(4x4, r x r) over their stride phases: the most phase channels
#: (4 x input channels) per phase kernel size r, where the rounding stays below float32's
#: 1e-5 tolerance (a numerical bound, the same on every target; the speed thresholds of the
#: choice are the profile's ``min_winograd_channels`` and ``min_tiles_per_call_weight``).
#: Evidence: benchmarks/results/thresholds.md#winograd-accuracy
MAX_PHASE_CHANNELS = {2: 512, 3: 64, 4: 64}
#: Sub-pixel transposed convolutions have at most this many stride phases; above it each
#: output gathers its taps (``ops.conv_transpose_gather``, stride-independent size): the
#: phases' interleave crashed TVM at stride 40 in 2-D and compile time grows with them.
MAX_SUBPIXEL_PHASES = 16


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# --- the choice functions --------------------------------------------------------------


def register_tile(
    out_channels: int,
    width: int,
    lanes: int,
    target_profile: TargetProfile,
    reduction: int | None = None,
    aligned: int | None = None,
) -> tuple[int, int]:
    """``(out_block, width_block)`` of a register tile for a multiply of ``out_channels``
    (vectorized, in blocks of 1, 2 or 4 vectors of ``lanes``) by ``width`` columns
    (broadcast) over ``reduction`` multiply-adds (None: long) on a target of
    ``target_profile``; ``aligned``: only width blocks dividing it or multiples of it. At
    most half the vector registers hold accumulators; 4 channel vectors need 32 registers
    and a reduction longer than the profile's ``short_reduction``; minimizes (padding
    waste)^3 x (1 + loads per multiply-add) x (latency stall below the profile's
    ``latency_accumulators``). Evidence: benchmarks/results/thresholds.md#channel-blocks"""
    registers = target_profile.vector_registers
    short_reduction = target_profile.short_reduction
    best: tuple[float, int, int] | None = None
    for m in CHANNEL_VECTORS:
        if m > 2 and registers <= 16:
            break  # evidence: benchmarks/results/thresholds.md#channel-vectors
        if m > 2 and reduction is not None and reduction <= short_reduction:
            break  # evidence: benchmarks/results/thresholds.md#short-reduction
        if m > 1 and (m // 2) * lanes >= out_channels:
            break  # a smaller block already covers every output channel
        ob = m * lanes
        channel_waste = _ceil_div(out_channels, ob) * ob / out_channels
        for wb in range(1, min(registers // 2 // m, width) + 1):
            if aligned is not None and aligned % wb and wb % aligned:
                continue
            waste = channel_waste * _ceil_div(width, wb) * wb / width
            loads_per_fma = (m + wb) / (m * wb)
            latency_stall = max(1.0, target_profile.latency_accumulators / (m * wb))
            score = waste**3 * (1 + loads_per_fma) * latency_stall
            if best is None or score < best[0] - 1e-9:
                best = (score, m, wb)
    assert best is not None
    _, m, wb = best
    return m * lanes, wb


def channel_blocks(
    geom: shapes.ConvGeometry,
    dtype: str,
    target: tvm.target.Target,
    pool_width: int | None = None,
) -> ops.ChannelBlocks:
    """Block sizes of the NCHW[x]c layout for ``geom`` on ``target`` (:func:`register_tile`
    over the output channels, or a grouped convolution's channels per group, and the
    innermost output axis); with ``pool_width`` (a max pool computed in the kernel) the
    width block divides it or is a multiple of it. A grouped convolution's block divides
    its channels per group (``ops.blocks_fit``; one vector where the tile's would not). A
    1x1 over a row shorter than the profile's ``pointwise_row_positions`` packs its input
    into contiguous panels (``pack_input``; evidence:
    benchmarks/results/thresholds.md#pack-input)."""
    lanes = vector_lanes(target, accumulator_dtype(dtype))
    reduction = geom.in_channels // geom.groups * math.prod(geom.kernel)
    target_profile = profile(target)
    channels = geom.out_channels // geom.groups
    out_block, width_block = register_tile(
        channels, geom.out_size[-1], lanes, target_profile, reduction, pool_width
    )
    if not ops.blocks_fit(geom, out_block):
        out_block, width_block = register_tile(
            lanes, geom.out_size[-1], lanes, target_profile, reduction, pool_width
        )
    row = target_profile.pointwise_row_positions
    pack_input = geom.is_row_pointwise and geom.out_size[-1] < row
    return ops.ChannelBlocks(out_block, width_block, pack_input=pack_input)


def nchwc_blocks(
    geom: shapes.ConvGeometry, dtype: str, target: tvm.target.Target
) -> ops.ChannelBlocks | None:
    """NCHW[x]c blocks when ``geom`` is computed in that layout on ``target``, else None:
    2-D and 3-D convolutions on CPU targets, dense or grouped with a whole number of
    vectors of output channels per group (ResNeXt; not depthwise), except a grouped 1x1
    over at least the profile's ``pointwise_row_positions`` positions (evidence:
    benchmarks/results/thresholds.md#grouped-nchwc) and a dense 1x1 over one row that long
    where the profile's ``pointwise_row`` says so (AVX2, AVX-512: computed directly,
    positions vectorized: ``cpu_conv.schedule_pointwise_row``; #pointwise-row-positions)."""
    if not is_cpu(target) or geom.ndim not in (2, 3):
        return None
    if not ops.blocks_fit(geom, vector_lanes(target, accumulator_dtype(dtype))):
        return None  # a group narrower than a vector (depthwise)
    target_profile = profile(target)
    positions = target_profile.pointwise_row_positions
    if geom.groups != 1 and geom.is_pointwise and math.prod(geom.out_size) >= positions:
        return None  # the grouped direct schedule: 0.75-0.95x the time (#grouped-nchwc)
    long_row = geom.is_row_pointwise and geom.out_size[-1] >= positions
    if long_row and target_profile.pointwise_row:
        return None
    return channel_blocks(geom, dtype, target)


def winograd_tiles(
    geom: shapes.ConvGeometry,
    dtype: str,
    target: tvm.target.Target,
    constant_weight: bool = False,
) -> ops.WinogradTiles | None:
    """The Winograd tiles for ``geom`` on ``target``, or None where the direct convolution
    is used: dense float32 2-D convolutions on CPUs with at least
    :attr:`~convforge.targets.TargetProfile.min_winograd_channels` channels, 3x3 with
    stride 1 (F(4x4, 3x3) up to 256 input channels, F(2x2, 3x3) above, where F(4x4)'s
    rounding grows past float32's tolerance),
    or square undilated kernels with stride 2 as F(4x4, r x r) over the stride phases
    (within :data:`MAX_PHASE_CHANNELS`; a transformed weight over
    the profile's ``winograd_cached_weight_floats`` only when ``constant_weight``). A weight given on
    every call is transformed on every call: such convolutions need
    :attr:`~convforge.targets.TargetProfile.min_tiles_per_call_weight` tiles; a
    ``constant_weight`` needs none. algorithm='auto' passes over stride-phase tiles for
    kernels below the profile's ``stride_phase_min_kernel`` (AVX2: 7; :meth:`Winograd.auto`)."""
    if not is_cpu(target) or dtype != "float32" or geom.ndim != 2 or geom.groups != 1:
        return None
    thresholds = profile(target)
    channels_in = geom.in_channels * math.prod(geom.stride)
    if min(channels_in, geom.out_channels) < thresholds.min_winograd_channels:
        return None
    if geom.stride == (1, 1) and geom.kernel == (3, 3):
        m = 4 if geom.in_channels <= 256 else 2
    elif geom.stride == (2, 2) and geom.dilation == (1, 1) and len(set(geom.kernel)) == 1:
        m, taps, channels = 4, -(-geom.kernel[0] // 2), 4 * geom.in_channels
        if channels > MAX_PHASE_CHANNELS.get(taps, 0):
            return None
        if not constant_weight and (m + taps - 1) ** 2 * channels * geom.out_channels > (
            thresholds.winograd_cached_weight_floats
        ):
            return None
    else:
        return None
    (oh, ow), (dh, dw) = geom.out_size, geom.dilation
    if oh < m * dh or ow < m * dw:
        return None
    tiles_w = -(-ow // (m * dw))
    tiles = geom.batch * -(-oh // (m * dh)) * dh * tiles_w * dw
    if not constant_weight and tiles < thresholds.min_tiles_per_call_weight:
        return None
    lanes = vector_lanes(target, accumulator_dtype(dtype))
    out_block, tile_block = register_tile(geom.out_channels, tiles_w, lanes, thresholds)
    return ops.WinogradTiles(m, out_block, tile_block, geom.stride)


# --- the algorithms --------------------------------------------------------------------


class ConvAlgorithm:
    """One way of computing a convolution. Subclasses are frozen dataclasses carrying their
    parameters, and define:

    - ``choose(geom, dtype, target, *, constant_weight)`` (classmethod): the instance for
      ``geom`` (the kernel geometry) or None where the algorithm does not apply;
    - ``compute(tx, tw, geom, epilogue, *, packed)``: the TE computation ending in
      ``epilogue`` (an ``ops.Epilogue``: bias, residual, activation; w packed by
      :meth:`pack` when ``packed``);
    - ``pack(w)`` / ``packed_shape(geom)``: a constant weight in the layout ``compute``
      reads with ``packed`` (identity by default);
    - ``pooled(geom, pool, dtype, target)``: the algorithm that also computes the max
      ``pool`` of the output inside the kernel, or None;
    - ``auto(geom, target)``: whether 'auto' takes it where it applies (True by default);
    - ``x_shape(geom)``: the input the computation reads (``geom.x_shape`` but for a
      folded resize);
    - ``label`` (suffix of the kernel name in ``report()``), ``schedule`` (the schedule
      rule that serves it, ``module.function`` under ``convforge.schedules``), ``exact``
      (False: non-finite inputs must take the direct plan)."""

    name: ClassVar[str]
    #: The operator's name in a kernel label (``conv`` -> ``conv2d``).
    op: ClassVar[str] = "conv"
    schedule: str  # a class constant, or a property where a variant has its own rule
    exact: ClassVar[bool] = True
    #: Whether :meth:`pack` changes a constant weight's layout (the kernel then reads it so).
    packs: ClassVar[bool] = False
    #: Whether its schedule vectorizes and unrolls all the code itself, so that LLVM's
    #: optimizer has little left to do: a compiled model builds it at the target profile's
    #: ``kernel_opt_level`` (:attr:`ConvPlan.llvm_opt_level`).
    explicit_code: ClassVar[bool] = False

    @classmethod
    def choose(
        cls,
        geom: shapes.ConvGeometry,
        dtype: str,
        target: tvm.target.Target,
        *,
        constant_weight: bool,
    ) -> ConvAlgorithm | None:
        raise NotImplementedError(f"{cls.__name__} must define choose")

    def compute(
        self,
        tx: te.Tensor,
        tw: te.Tensor,
        geom: shapes.ConvGeometry,
        epilogue: ops.Epilogue,
        *,
        packed: bool,
    ) -> te.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define compute")

    @property
    def label(self) -> str:
        return ""

    def auto(self, geom: shapes.ConvGeometry, target: tvm.target.Target) -> bool:
        """Whether algorithm='auto' takes this choice for ``geom`` on ``target`` (else the
        next algorithm)."""
        return True

    def x_shape(self, geom: shapes.ConvGeometry) -> tuple[int, ...]:
        """The shape of the x the computation reads for the convolution ``geom``."""
        return geom.x_shape

    def pack(self, w: np.ndarray) -> np.ndarray:
        return w

    def packed_shape(self, geom: shapes.ConvGeometry) -> tuple[int, ...]:
        return geom.w_shape

    def pooled(
        self,
        geom: shapes.ConvGeometry,
        pool: shapes.PoolGeometry,
        dtype: str,
        target: tvm.target.Target,
    ) -> ConvAlgorithm | None:
        return None


@dataclass(frozen=True)
class Winograd(ConvAlgorithm):
    """Winograd F(m x m, r x s) (stride 1) or F(4x4, r x r) over the stride-2 phases
    (:func:`winograd_tiles`); a constant weight is transformed once
    (``ops.transform_weight_array``). A fused max pool whose windows lie in whole tiles
    runs in the tasks that write them (``window_max``)."""

    tiles: ops.WinogradTiles
    pool: shapes.PoolGeometry | None = None
    #: Schedule knobs of a tuned plan (``knobs.with_knobs``), sorted (name, value) pairs.
    knobs: tuple[tuple[str, int], ...] = ()

    name: ClassVar[str] = "winograd"
    exact: ClassVar[bool] = False
    packs: ClassVar[bool] = True
    explicit_code: ClassVar[bool] = True

    @property
    def schedule(self) -> str:
        pooled = "" if self.pool is None else "_pool"
        return f"cpu_winograd.schedule_winograd{pooled}"

    @classmethod
    def choose(cls, geom, dtype, target, *, constant_weight):
        tiles = winograd_tiles(geom, dtype, target, constant_weight)
        return None if tiles is None else cls(tiles)

    @property
    def label(self) -> str:
        t = self.tiles
        phases = "" if t.stride == (1, 1) else ", stride {}x{} phases".format(*t.stride)
        return f" (winograd F{t.m}x{t.m}{phases})"

    def compute(self, tx, tw, geom, epilogue, *, packed):
        out = ops.conv2d_winograd(
            tx, tw, geom, self.tiles, epilogue, weight_transformed=packed, knobs=dict(self.knobs)
        )
        return out if self.pool is None else ops.window_max(out, self.pool)

    def pack(self, w):
        return ops.transform_weight_array(w, self.tiles)

    def packed_shape(self, geom):
        t = self.tiles
        (sh, sw), (k, c, r, s) = t.stride, geom.w_shape
        rh, rw = _ceil_div(r, sh), _ceil_div(s, sw)
        chunks = _ceil_div(k, t.out_block)
        return (t.m + rh - 1, t.m + rw - 1, chunks, sh * sw * c, t.out_block)

    def auto(self, geom, target):
        """Stride-phase Winograd only from the profile's ``stride_phase_min_kernel`` (on
        AVX2 the smaller kernels ran slower than the direct convolution), and for 3x3
        kernels from its ``stride_phase_3x3_min_channels`` input channels."""
        if self.tiles.stride == (1, 1):
            return True
        thresholds = profile(target)
        if geom.kernel[0] == 3 and geom.in_channels < thresholds.stride_phase_3x3_min_channels:
            return False
        return geom.kernel[0] >= thresholds.stride_phase_min_kernel

    def pooled(self, geom, pool, dtype, target):
        whole = all(self.tiles.m % k == 0 for k in pool.kernel) and geom.dilation == (1, 1)
        return dataclasses.replace(self, pool=pool) if whole else None


@dataclass(frozen=True)
class Blocked(ConvAlgorithm):
    """NCHW[x]c: output channels in blocks (:func:`nchwc_blocks`; dense, or grouped with
    each block inside one group); a constant
    weight is packed once (``ops.pack_weight_array``). Its pooled variant re-chooses the
    width block to divide the pool's width and reads the pool from the accumulators
    (``ops.conv_nchwc`` with its ``pool``)."""

    blocks: ops.ChannelBlocks
    pool: shapes.PoolGeometry | None = None
    #: Schedule knobs of a tuned plan (``knobs.with_knobs``), sorted (name, value) pairs.
    knobs: tuple[tuple[str, int], ...] = ()

    name: ClassVar[str] = "blocked"
    packs: ClassVar[bool] = True
    explicit_code: ClassVar[bool] = True

    @property
    def schedule(self) -> str:
        return (
            "cpu_conv.schedule_conv_nchwc"
            if self.pool is None
            else "cpu_conv.schedule_conv_max_pool"
        )

    @classmethod
    def choose(cls, geom, dtype, target, *, constant_weight):
        blocks = nchwc_blocks(geom, dtype, target)
        return None if blocks is None else cls(blocks)

    def compute(self, tx, tw, geom, epilogue, *, packed):
        return ops.conv_nchwc(
            tx, tw, geom, self.blocks, epilogue, weight_packed=packed, pool=self.pool,
            knobs=dict(self.knobs),
        )  # fmt: skip

    def pack(self, w):
        return ops.pack_weight_array(w, self.blocks)

    def packed_shape(self, geom):
        ob = self.blocks.out_block
        group_in = geom.in_channels // geom.groups
        return (_ceil_div(geom.out_channels, ob), group_in, *geom.kernel, ob)

    def pooled(self, geom, pool, dtype, target):
        blocks = channel_blocks(geom, dtype, target, pool_width=pool.kernel[-1])
        if geom.out_channels % blocks.out_block:
            return None
        return Blocked(blocks, pool, self.knobs)


@dataclass(frozen=True)
class Generic(ConvAlgorithm):
    """The generic N-d convolution (``ops.conv``): any groups, dilation, dtype and target."""

    #: Schedule knobs of a tuned plan (``knobs.with_knobs``), sorted (name, value) pairs.
    knobs: tuple[tuple[str, int], ...] = ()

    name: ClassVar[str] = "generic"
    #: the CPU dispatch: grouped, 1x1 over a long row, long 1-D, else register tiles
    schedule: ClassVar[str] = "cpu.schedule_cpu"

    @classmethod
    def choose(cls, geom, dtype, target, *, constant_weight):
        return cls()

    def compute(self, tx, tw, geom, epilogue, *, packed):
        return ops.conv(tx, tw, geom, epilogue, knobs=dict(self.knobs))


@dataclass(frozen=True)
class ResizeConv(ConvAlgorithm):
    """A resize folded into the convolution (``ops.resize_conv``, an ONNX Resize + Conv):
    not in :data:`CONV_ALGORITHMS`, :func:`plan_conv` takes it when given ``resize``."""

    resize: shapes.ResizeGeometry

    name: ClassVar[str] = "resize_conv"
    op: ClassVar[str] = "resize_conv"
    schedule: ClassVar[str] = "cpu.schedule_cpu"

    def x_shape(self, geom):
        return self.resize.x_shape

    def compute(self, tx, tw, geom, epilogue, *, packed):
        return ops.resize_conv(tx, tw, self.resize, geom, epilogue)


#: The algorithms :func:`plan_conv` tries, in order; the first whose ``choose`` returns an
#: instance computes the convolution. ``algorithm='direct'`` skips the inexact ones
#: (Winograd), ``'winograd'`` takes only those. Adding an algorithm is one line here.
CONV_ALGORITHMS: tuple[type[ConvAlgorithm], ...] = (Winograd, Blocked, Generic)


# --- the plan --------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvPlan:
    """How one convolution is computed (:func:`plan_conv`): frozen, hashable by
    :attr:`key`. ``geometry`` is the convolution asked, ``kernel_geometry`` the one the
    kernel runs on: x is subsampled by :attr:`subsample` (a strided unpadded 1x1) and
    reshaped to ``kernel_geometry.x_shape``, w to its ``w_shape`` (then :meth:`pack`-ed
    where the weight is constant), a residual to its ``out_shape``; the kernel's output is
    reshaped back to :attr:`out_shape`."""

    geometry: shapes.ConvGeometry
    kernel_geometry: shapes.ConvGeometry
    dtype: str
    algorithm: ConvAlgorithm
    activation: str | None
    bias: bool
    residual: bool
    constant_weight: bool
    #: The max pool asked to be fused (the pool of the convolution's output), or None.
    fused_pool: shapes.PoolGeometry | None
    #: Strides by which x is sliced before the kernel (a strided unpadded 1x1), or None.
    subsample: tuple[int, ...] | None
    target: tvm.target.Target = field(compare=False, repr=False)

    @property
    def llvm_opt_level(self) -> int | None:
        """LLVM's optimization level for this kernel in a compiled model: the target
        profile's ``kernel_opt_level`` where the algorithm's code is explicit (Winograd,
        blocked), else None (LLVM's default, -O3). thresholds.md#kernel-opt-level"""
        if not self.algorithm.explicit_code:
            return None
        return profile(self.target).kernel_opt_level

    @property
    def pool(self) -> shapes.PoolGeometry | None:
        """The max pool computed inside the kernel, or None (a fused pool the kernel does
        not compute runs as its own kernel after it)."""
        return getattr(self.algorithm, "pool", None)

    @property
    def x_shape(self) -> tuple[int, ...]:
        """The shape x has before the kernel's reshape (after :attr:`subsample`)."""
        g = self.geometry
        if self.subsample is not None:
            return (g.batch, g.in_channels, *g.out_size)
        return self.algorithm.x_shape(g)

    @property
    def kernel_x_shape(self) -> tuple[int, ...]:
        """The shape of the x the kernel reads."""
        return self.algorithm.x_shape(self.kernel_geometry)

    @property
    def reshapes(self) -> bool:
        """Whether x, w, the residual and the output are reshaped around the kernel."""
        return self.kernel_x_shape != self.x_shape

    @property
    def packs(self) -> bool:
        """Whether the kernel reads a constant weight in :meth:`pack`'s layout."""
        return self.constant_weight and self.algorithm.packs

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The shape of the weight the kernel reads."""
        if self.packs:
            return self.algorithm.packed_shape(self.kernel_geometry)
        return self.kernel_geometry.w_shape

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The shape of the result (the pooled output where the kernel pools)."""
        return self.geometry.out_shape if self.pool is None else self.pool.out_shape

    @property
    def needs_finite_check(self) -> bool:
        """Whether x must be checked for NaN/inf first, running :meth:`direct` where it
        holds one (Winograd spreads a non-finite value over its whole tile)."""
        return not self.algorithm.exact

    @property
    def schedule(self) -> str:
        """The schedule rule that serves the kernel (``convforge.schedules.<module>.<fn>``)."""
        return self.algorithm.schedule

    @property
    def label(self) -> str:
        """The kernel's name in ``report()``: ``conv2d``, ``conv2d (winograd F4x4)``,
        ``... + max_pool2d``, ``resize_conv2d``."""
        nd = self.geometry.ndim
        pool = "" if self.pool is None else f" + max_pool{nd}d"
        return f"{self.algorithm.op}{nd}d{self.algorithm.label}{pool}"

    @property
    def key(self) -> tuple:
        """The kernel cache key (with the target, which the caches add)."""
        return (
            self.kernel_geometry, self.dtype, self.algorithm, self.activation, self.bias,
            self.residual, self.packs,
        )  # fmt: skip

    def with_constant_weight(self) -> ConvPlan:
        """This plan (the same algorithm and parameters) computing from a weight packed once
        by :meth:`pack` (the numpy API's cache of a weight passed again unchanged)."""
        return dataclasses.replace(self, constant_weight=True)

    def direct(self) -> ConvPlan:
        """The plan of the same convolution by the direct algorithm (``algorithm='direct'``),
        with the fused pool only where this plan computes it (then inside the direct kernel
        where that allows, else the caller runs it after: see :attr:`pool`)."""
        return plan_conv(
            self.geometry, self.dtype, self.target, constant_weight=self.constant_weight,
            algorithm="direct", pool=None if self.pool is None else self.fused_pool,
            activation=self.activation, bias=self.bias, residual=self.residual,
        )  # fmt: skip

    def prepare_x(self, x: np.ndarray) -> np.ndarray:
        """x (``geometry.x_shape``) as the kernel reads it: subsampled, reshaped."""
        if self.subsample is not None:
            x = x[(..., *(slice(None, None, s) for s in self.subsample))]
        return x.reshape(self.kernel_x_shape)

    def pack(self, w: np.ndarray) -> np.ndarray:
        """w (``geometry.w_shape``) as the kernel reads it: reshaped, and in the algorithm's
        layout where the weight is constant (a new array, never a view of w)."""
        w = np.asarray(w).reshape(self.kernel_geometry.w_shape)
        return self.algorithm.pack(w) if self.packs else w.copy()

    def compute(
        self,
        tx: te.Tensor,
        tw: te.Tensor,
        tb: te.Tensor | None = None,
        tr: te.Tensor | None = None,
    ) -> te.Tensor:
        """The TE computation on the kernel's shapes: x, w (:attr:`weight_shape`), bias
        (O,), residual (``kernel_geometry.out_shape``, added before the activation), ending
        in the ``ops.Epilogue`` of ``tb``, :attr:`activation` and ``tr``."""
        epilogue = ops.Epilogue(tb, self.activation, tr)
        return self.algorithm.compute(tx, tw, self.kernel_geometry, epilogue, packed=self.packs)

    def computation(self) -> Computation:
        """Placeholders and :meth:`compute`: what the API compiles and ``convforge tune``
        tunes (so a tuning record is found for exactly this PrimFunc)."""

        def build():
            g = self.kernel_geometry
            names = {"x": self.kernel_x_shape, "w": self.weight_shape}
            if self.bias:
                names["bias"] = (g.out_channels,)
            if self.residual:
                names["residual"] = g.out_shape
            tensors = {n: te.placeholder(s, self.dtype, name=n) for n, s in names.items()}
            out = self.compute(
                tensors["x"], tensors["w"], tensors.get("bias"), tensors.get("residual")
            )
            return list(tensors.values()), [out]

        return build


def row_geometry(geom: shapes.ConvGeometry) -> shapes.ConvGeometry:
    """The 1-D convolution ``geom`` as a 2-D one over one row: x (N, C, 1, L), w (O, C/g,
    1, K), stride, padding and dilation 1 / none along the new axis (the same outputs)."""
    (lo, hi), (out_channels, group_in, k) = geom.padding[0], geom.w_shape
    return shapes.conv_geometry(
        (geom.batch, geom.in_channels, 1, geom.in_size[0]), (out_channels, group_in, 1, k),
        stride=(1, geom.stride[0]), padding=((0, 0), (lo, hi)),
        dilation=(1, geom.dilation[0]), groups=geom.groups,
    )  # fmt: skip


def _kernel_geometry(
    geom: shapes.ConvGeometry, dtype: str, target: tvm.target.Target
) -> shapes.ConvGeometry:
    """The geometry the kernel computes ``geom`` as (else ``geom`` itself):

    - a 2-D/3-D 1x1 stride-1 convolution on a CPU runs over one row of prod(spatial)
      positions (14- and 7-wide maps no longer cap the register tile's width; a grouped
      1x1 left to the direct schedule takes 0.45x the time over the row as over the map,
      #grouped-nchwc);
    - a 1-D convolution runs as 2-D over one row, (N, C, L) as (N, C, 1, L): the blocked
      kernel broadcasts single inputs, so a stride costs it nothing, where the direct
      schedule vectorizes along a strided time axis (wav2vec's strided layers 0.09-0.6x
      the time). A stride-1 one with a kernel wider than 1 whose output is at least the
      profile's ``row_1d_max_length`` keeps the direct schedule that tiles time
      (``cpu_causal.schedule_long_1d``: from 2048 outputs the two are even, from 8000
      the direct one takes 0.4-0.6x the time). Evidence:
      benchmarks/results/thresholds.md#one-d-as-a-row."""
    if geom.ndim == 1:
        long_sequence = (
            geom.stride == (1,)
            and not geom.is_pointwise
            and geom.out_size[0] >= profile(target).row_1d_max_length
        )
        row = row_geometry(geom)
        if long_sequence or nchwc_blocks(row, dtype, target) is None:
            return geom
        return row
    pointwise = geom.ndim in (2, 3) and geom.is_pointwise and any(n > 1 for n in geom.in_size[:-1])
    if not pointwise or not is_cpu(target):
        return geom
    positions = math.prod(geom.in_size)
    return shapes.conv_geometry(
        (geom.batch, geom.in_channels, 1, positions),
        (*geom.w_shape[:2], 1, 1),
        groups=geom.groups,
    )


def _subsampled(geom: shapes.ConvGeometry, target: tvm.target.Target) -> shapes.ConvGeometry:
    """A strided unpadded 1x1 convolution on a CPU is the stride-1 convolution of x
    subsampled by the stride (the dense 1x1 kernels then read contiguous rows: ResNet-50's
    projection shortcuts 1.15-1.2x faster); any other ``geom`` as it is."""
    if not is_cpu(target) or not geom.is_unpadded_1x1 or geom.is_pointwise:
        return geom
    return shapes.conv_geometry(
        (geom.batch, geom.in_channels, *geom.out_size), geom.w_shape, groups=geom.groups
    )


def _winograd_refusal(geom: shapes.ConvGeometry, dtype: str, target) -> ValueError:
    return ValueError(
        f"algorithm='winograd' does not apply to this convolution ({dtype}, "
        f"{geom.ndim}-D, kernel {geom.kernel}, stride {geom.stride}, dilation "
        f"{geom.dilation}, groups {geom.groups}, {geom.in_channels}->"
        f"{geom.out_channels} channels, output {geom.out_size}) on target "
        f"{target.kind.name}: Winograd needs a CPU, float32, an ungrouped 2-D "
        f"convolution with at least {profile(target).min_winograd_channels} channels in and "
        "out, 3x3 "
        "with stride 1 or a square kernel with stride 2 (undilated, within the "
        "channel limits of plan.MAX_PHASE_CHANNELS), and an output of at "
        "least one tile per axis; use algorithm='auto' or 'direct'"
    )


def choose_algorithm(
    geom: shapes.ConvGeometry,
    dtype: str,
    target: tvm.target.Target,
    *,
    constant_weight: bool,
    algorithm: str = "auto",
) -> ConvAlgorithm:
    """The first algorithm of :data:`CONV_ALGORITHMS` (filtered by ``algorithm``) that
    applies to the kernel geometry ``geom``. 'winograd' takes the inexact algorithms
    wherever they apply, as for a constant weight (ValueError naming ``algorithm``
    where none does); 'direct' never does; 'auto' skips one whose ``auto(geom, target)``
    is False (stride-phase Winograd below the profile's ``stride_phase_min_kernel``)."""
    for cls in CONV_ALGORITHMS:
        if algorithm == "direct" and not cls.exact:
            continue
        if algorithm == "winograd" and cls.exact:
            continue
        constant = constant_weight or algorithm == "winograd"
        chosen = cls.choose(geom, dtype, target, constant_weight=constant)
        if chosen is not None and (algorithm != "auto" or chosen.auto(geom, target)):
            return chosen
    raise _winograd_refusal(geom, dtype, target)


def _cached_per_target(plan: Callable[..., ConvPlan]) -> Callable[..., ConvPlan]:
    """``plan(geom, dtype, target, *, algorithm, **options)`` cached by its arguments, with
    ``algorithm`` checked (:func:`check_algorithm`: ValueError, not the cache's TypeError
    for an unhashable value) and ``target`` resolved first
    (:func:`~convforge.targets.resolve_target`: a string or dict names a hashable
    ``Target``). With ``algorithm='auto'`` (and reshapes), the plan of a knob record in the
    active tuning databases that beats the default (:func:`convforge.knobs.tuned_plan`);
    ``tuned=False``: always the default plan (what the tuner tunes)."""
    cached = functools.lru_cache(maxsize=1024)(plan)

    @functools.wraps(plan)
    def planned(
        geom: shapes.ConvGeometry,
        dtype: str,
        target: TargetArg = None,
        *,
        algorithm: str = "auto",
        tuned: bool = True,
        **options: Any,
    ) -> ConvPlan:
        check_algorithm(algorithm)
        chosen = cached(geom, dtype, resolve_target(target), algorithm=algorithm, **options)
        if not tuned or algorithm != "auto" or not options.get("reshape", True):
            return chosen
        from convforge.knobs import tuned_plan

        return tuned_plan(chosen)

    return planned


@_cached_per_target
def plan_conv(
    geom: shapes.ConvGeometry,
    dtype: str,
    target: TargetArg = None,
    *,
    constant_weight: bool = False,
    algorithm: str = "auto",
    strict: bool = True,
    pool: shapes.PoolGeometry | None = None,
    resize: shapes.ResizeGeometry | None = None,
    activation: str | None = None,
    bias: bool = False,
    residual: bool = False,
    reshape: bool = True,
) -> ConvPlan:
    """THE decision of how to compute ``geom`` (validated by ``shapes.conv_geometry``):

    1. the kernel geometry: a strided unpadded 1x1 on a CPU subsamples x by the stride; a
       dense 1x1 computed in NCHW[x]c runs over one row of positions; a ``resize``
       (:class:`~convforge.shapes.ResizeGeometry` whose output ``geom`` convolves) is
       folded into the kernel (:class:`ResizeConv`, nothing else changes);
    2. the algorithm: the first of :data:`CONV_ALGORITHMS` that applies (``algorithm``:
       :data:`ALGORITHMS`; 'winograd' raises ValueError where Winograd does not apply,
       unless ``strict=False``, which then plans as 'auto': a compiled model's choice);
       ``constant_weight`` (packed once, by :meth:`ConvPlan.pack`) admits Winograd on more
       shapes;
    3. the fused max ``pool`` of the output (windows tiling it): inside the kernel where
       the kernel geometry is the convolution's and the algorithm has a pooled variant,
       else :attr:`ConvPlan.pool` is None and the caller runs it after the kernel;
    4. the epilogue: ``activation(acc + bias + residual)``.

    ``reshape=False`` keeps the kernel geometry the convolution's (no subsample, no row of
    positions): the kernel reads x and w as given (an exported library's caller).

    Cached by its arguments, the target resolved first (:func:`_cached_per_target`; the
    target queries cost about 1 ms, and ``cf.conv`` plans on every call): a plan is
    computed once per distinct call, never partly recomputed by callees.
    """
    if resize is not None:
        return ConvPlan(
            geom, geom, dtype, ResizeConv(resize), activation, bias, residual,
            constant_weight, pool, None, target,
        )  # fmt: skip
    sliced = _subsampled(geom, target) if reshape else geom
    subsample = None if sliced is geom else geom.stride
    kernel_geom = _kernel_geometry(sliced, dtype, target) if reshape else geom
    if algorithm == "winograd" and not strict:
        try:
            chosen = choose_algorithm(
                kernel_geom, dtype, target, constant_weight=constant_weight, algorithm=algorithm
            )
        except ValueError:
            chosen = choose_algorithm(kernel_geom, dtype, target, constant_weight=constant_weight)
    else:
        chosen = choose_algorithm(
            kernel_geom, dtype, target, constant_weight=constant_weight, algorithm=algorithm
        )
    if pool is not None and pool.windows_inside and kernel_geom == sliced:
        chosen = chosen.pooled(kernel_geom, pool, dtype, target) or chosen
    return ConvPlan(
        geom, kernel_geom, dtype, chosen, activation, bias, residual, constant_weight, pool,
        subsample, target,
    )  # fmt: skip


def conv_transpose_op(
    geom: shapes.ConvTransposeGeometry, target: TargetArg = None
) -> Callable[..., te.Tensor]:
    """The TE form of the transposed convolution ``geom`` on ``target``: sub-pixel phases
    for stride > 1 (no products of inserted zeros) up to :data:`MAX_SUBPIXEL_PHASES`
    phases, a gather per output above (bounded compile time for any stride), else the
    plain flipped-kernel convolution (the dilate form, which inserts no zeros at stride
    1). The phases are NCHW[x]c convolutions where :func:`nchwc_blocks` has blocks
    that the output channels fill, else direct ones (one ragged block runs slower
    blocked)."""
    if not any(s > 1 for s in geom.stride):
        return ops.conv_transpose
    if math.prod(geom.stride) > MAX_SUBPIXEL_PHASES:
        return ops.conv_transpose_gather
    target = resolve_target(target)
    phase_geoms = [g for _, _, g in ops.subpixel_phases(geom)[2] if g is not None]

    @functools.cache
    def shared_out_block(dtype: str) -> int | None:
        """The phases share one output-channel block (the interleave's schedule splits the
        channels by it): the smallest any phase's register tile takes, so every phase's
        tile stays within the registers its own choice fits; None: direct phases."""
        blocks = [nchwc_blocks(g, dtype, target) for g in phase_geoms]
        if not blocks or any(b is None or geom.out_channels % b.out_block for b in blocks):
            return None
        out_block = min(b.out_block for b in blocks)
        return out_block if all(ops.blocks_fit(g, out_block) for g in phase_geoms) else None

    def phase_conv(x, w, phase_geom, epilogue):
        out_block = shared_out_block(str(x.dtype))
        if out_block is None:
            return ops.conv(x, w, phase_geom, epilogue)
        blocks = nchwc_blocks(phase_geom, str(x.dtype), target)
        blocks = dataclasses.replace(blocks, out_block=out_block)
        return ops.conv_nchwc(x, w, phase_geom, blocks, epilogue)

    return functools.partial(ops.conv_transpose_subpixel, phase_conv=phase_conv)


@dataclass(frozen=True)
class DensePlan:
    """``x (N, F) @ w.T`` with a constant ``w (K, F)`` as a convolution over the packed
    weight (an ONNX Gemm): w^T (F, K) is padded to K' (a multiple of the vector width W,
    zero columns) and packed once into (K'/W, F, 1, W), block r holding the F x W slice of
    outputs r*W .. r*W+W-1, contiguous. The kernel ``out[r, n, 0, w] = sum_f P[r, f, 0, w]
    * x[n, f]`` (input P, kernel x seen as (N, F, 1, 1)) streams each block once,
    vectorized along W, blocks in parallel; the caller permutes (K'/W, N, W) to (N, K'),
    slices K and adds the bias."""

    batch: int
    features: int
    out_features: int
    width: int
    dtype: str

    label: ClassVar[str] = "dense"

    @property
    def padded(self) -> int:
        """K rounded up to whole vectors."""
        return _ceil_div(self.out_features, self.width) * self.width

    @property
    def kernel_geometry(self) -> shapes.ConvGeometry:
        blocks = self.padded // self.width
        return shapes.conv_geometry(
            (blocks, self.features, 1, self.width), (self.batch, self.features, 1, 1)
        )

    def pack(self, w: np.ndarray) -> np.ndarray:
        """w (K, F) packed as the kernel's first input (K'/W, F, 1, W)."""
        matrix = np.pad(np.asarray(w).T, ((0, 0), (0, self.padded - self.out_features)))
        blocks = self.padded // self.width
        packed = matrix.reshape(self.features, blocks, self.width).transpose(1, 0, 2)
        return np.ascontiguousarray(packed.reshape(self.kernel_geometry.x_shape))

    def compute(self, packed: te.Tensor, x: te.Tensor) -> te.Tensor:
        """The kernel: ``packed`` (K'/W, F, 1, W), x as (N, F, 1, 1) -> (K'/W, N, 1, W)."""
        return ops.conv(packed, x, self.kernel_geometry)


def plan_dense(
    x_shape: Sequence[int], w_shape: Sequence[int], dtype: str, target: TargetArg = None
) -> DensePlan:
    """The packed-weight plan of a dense layer x (N, F) @ w.T, w (K, F) a constant
    (shapes validated by ``shapes.dense_geometry``); the vector width is ``target``'s."""
    target = resolve_target(target)
    (n, f), (k, _) = x_shape, w_shape
    return DensePlan(int(n), int(f), int(k), vector_lanes(target, dtype), dtype)


# --- integer convolutions (ConvInteger, QLinearConv) -----------------------------------


@dataclass(frozen=True)
class QConvPlan:
    """How one integer convolution is computed (:func:`plan_qconv`): the TE of
    :func:`convforge.ops.qconv.qconv` (an int32 dot product with the zero points folded
    into a per-channel term, then the requantization) scheduled by
    ``cpu_qconv.schedule_qconv``. Its kernel reads x, w, the int32 parameters (x_zp, y_zp,
    lo, hi), the int32 per-channel term, then the float32 multipliers (QLinearConv) and
    the int32 weight zero points (where one is not 0): :meth:`computation`."""

    geometry: shapes.ConvGeometry
    x_dtype: str
    w_dtype: str
    #: 'int32' (ConvInteger) or the output's 8-bit dtype (QLinearConv: x's).
    out_dtype: str
    #: Whether a weight zero point is not 0 (the window sums of x are then computed).
    w_zero_point: bool
    #: 'direct' (:func:`convforge.ops.qconv.qconv`), or a blocked form
    #: (:func:`~convforge.ops.qconv.qconv_packed`, w packed by :meth:`pack`): 'vpmaddwd'
    #: (int16 channel pairs), 'vpmaddubsw' (uint8 x int8 channel quads, 8 channels a
    #: block) or 'vpdpbusd' (AVX-512 VNNI: uint8 x int8 quads, 16 channels a block); or
    #: 'vpdpbusd_rows' (:func:`~convforge.ops.qconv.qconv_rows`: a 1x1 convolution on
    #: AVX-512 VNNI with 16 output positions in the lanes, w packed by :meth:`pack`); or
    #: 'usdot' (AArch64 with i8mm: the blocked form, uint8 x int8 quads, 4 channels a block).
    form: str
    target: tvm.target.Target = field(compare=False, repr=False)

    @property
    def schedule(self) -> str:
        """The schedule rule that serves the kernel (``convforge.schedules.<module>.<fn>``)."""
        if self.rows:
            return "cpu_qconv.schedule_qconv_rows"
        return "cpu_qconv.schedule_qconv_packed" if self.packed else "cpu_qconv.schedule_qconv"

    @property
    def rows(self) -> bool:
        """Whether the kernel is the rows form (:func:`convforge.ops.qconv.qconv_rows`)."""
        return self.form == ROWS_FORM

    @property
    def packed(self) -> bool:
        """Whether the kernel is a blocked form reading w packed (:meth:`pack`)."""
        return self.form != "direct"

    @property
    def step(self) -> int:
        """Input channels per int32 lane of the blocked form's instruction."""
        return qconv_ops.PAIR if self.form == "vpmaddwd" else qconv_ops.QUAD

    @property
    def out_block(self) -> int:
        """Output channels per block of the blocked form (one int32 vector)."""
        if self.form == "usdot":
            return qconv_ops.USDOT_OUT_BLOCK
        return qconv_ops.VNNI_OUT_BLOCK if self.form == "vpdpbusd" else qconv_ops.OUT_BLOCK

    @property
    def acc_width(self) -> int:
        """The last axis of the blocked form's int32 output (:func:`convforge.ops.qconv.
        tiled_width`: the output's, or rounded up to fill register tiles)."""
        width = self.geometry.out_size[-1]
        if self.rows:
            return qconv_ops.rows_width(width)
        if not self.packed:
            return width
        blocks_ = -(-self.geometry.out_channels // self.out_block)
        return qconv_ops.tiled_width(blocks_, width, self.out_block, profile(self.target))

    @property
    def blocked_requant(self) -> bool:
        """Whether the ``vpdpbusd`` form requantizes in its blocked layout and transposes
        the 8-bit output to (N, O, *out) in registers (:func:`convforge.ops.qconv.
        qconv_packed`): QLinearConv, O a multiple of 16 and the output width a multiple of
        at least the profile's ``qconv_transpose_min_chunk`` positions up to 16, on a CPU
        with AVX-512 VBMI (its byte permutes; without them LLVM moves the bytes one by
        one)."""
        block = qconv_ops.VNNI_OUT_BLOCK
        chunk = qconv_ops.transpose_chunk(self.geometry.out_size[-1], block)
        return (
            self.form == "vpdpbusd"
            and self.requantizes
            and self.geometry.out_channels % block == 0
            and chunk >= profile(self.target).qconv_transpose_min_chunk
            and has_x86_feature(self.target, "avx512vbmi")
        )

    @property
    def requantizes(self) -> bool:
        """QLinearConv (requantized 8-bit output) rather than ConvInteger (int32)."""
        return self.out_dtype != "int32"

    @property
    def label(self) -> str:
        """The kernel's name in ``report()``: ``qlinear_conv2d (int8)``,
        ``conv_integer2d (int8)``."""
        op = "qlinear_conv" if self.requantizes else "conv_integer"
        form = f", {self.form}" if self.packed else ""
        return f"{op}{self.geometry.ndim}d (int8{form})"

    @property
    def key(self) -> tuple:
        """The kernel cache key (with the target, which the caches add)."""
        return ("qconv", self.geometry, self.x_dtype, self.w_dtype, self.out_dtype,
                self.w_zero_point, self.form)  # fmt: skip

    def pack(self, w: np.ndarray) -> np.ndarray:
        """w (``geometry.w_shape``) as the kernel reads it (a new array)."""
        w = np.asarray(w)
        if self.rows:
            return qconv_ops.pack_weight_rows(w)
        return qconv_ops.pack_weight(w, self.step, self.out_block) if self.packed else w.copy()

    def input_shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """The kernel's inputs in order: name -> (shape, dtype)."""
        g = self.geometry
        if self.rows:
            w_shape = (qconv_ops.rows_weight_shape(g), "int8")
        elif self.packed:
            w_shape = (qconv_ops.packed_weight_shape(g, self.step, self.out_block),
                       "int16" if self.step == qconv_ops.PAIR else "int8")  # fmt: skip
        else:
            w_shape = (g.w_shape, self.w_dtype)
        shapes_ = {
            "x": (g.x_shape, self.x_dtype),
            "w": w_shape,
            "params": ((4,), "int32"), "term": ((g.out_channels,), "int32"),
        }  # fmt: skip
        if self.requantizes:
            shapes_["multiplier"] = ((g.out_channels,), "float32")
        if self.w_zero_point:
            shapes_["w_zero_point"] = ((g.out_channels,), "int32")
        return shapes_

    def compute(self, *tensors: te.Tensor) -> te.Tensor:
        """The TE computation on placeholders of :meth:`input_shapes`, in order."""
        named = dict(zip(self.input_shapes(), tensors))
        if self.rows:
            return qconv_ops.qconv_rows(
                named["x"], named["w"], named["params"], named["term"], self.geometry,
                multiplier=named.get("multiplier"), out_dtype=self.out_dtype,
            )  # fmt: skip
        if self.packed:
            return qconv_ops.qconv_packed(
                named["x"], named["w"], named["params"], named["term"], self.geometry,
                multiplier=named.get("multiplier"), out_dtype=self.out_dtype,
                out_width=self.acc_width, blocked_requant=self.blocked_requant,
            )  # fmt: skip
        return qconv_ops.qconv(
            named["x"], named["w"], named["params"], named["term"], self.geometry,
            multiplier=named.get("multiplier"), w_zero_point=named.get("w_zero_point"),
            out_dtype=self.out_dtype,
        )  # fmt: skip

    def computation(self) -> Computation:
        """Placeholders and :meth:`compute`: what the API compiles."""

        def build():
            tensors = [
                te.placeholder(shape, dtype, name=name)
                for name, (shape, dtype) in self.input_shapes().items()
            ]
            return tensors, [self.compute(*tensors)]

        return build


#: The rows form of :class:`QConvPlan` (output positions in the lanes).
ROWS_FORM = "vpdpbusd_rows"


def _rows_form_fits(geom: shapes.ConvGeometry, target: tvm.target.Target) -> bool:
    """Whether a uint8 x int8 convolution on AVX-512 VNNI takes the rows form: a 1x1 one
    (:func:`convforge.ops.qconv.is_rows_geometry`) of few input channels (the profile's
    ``qconv_rows_max_channels``: few products per output, so that requantizing 16 channels
    of a position at a time dominates the other form), no fewer output channels than input
    ones, and rows that fill their 16-position vectors well enough (``qconv_rows_widths``)."""
    thresholds = profile(target)
    low, high = thresholds.qconv_rows_widths
    return (
        qconv_ops.is_rows_geometry(geom)
        and geom.in_channels <= thresholds.qconv_rows_max_channels
        and geom.out_channels >= geom.in_channels
        and low <= geom.out_size[-1] <= high
    )


@functools.lru_cache(maxsize=1024)
def _plan_qconv(geom, x_dtype, w_dtype, out_dtype, w_zero_point, narrow, target) -> QConvPlan:
    form, u8s8 = "direct", (x_dtype, w_dtype) == ("uint8", "int8")
    if geom.groups == 1 and not w_zero_point and has_x86_feature(target, "avx2"):
        form = "vpmaddubsw" if narrow and u8s8 else "vpmaddwd"
        if u8s8 and has_x86_feature(target, "avx512vnni"):
            form = "vpdpbusd"
            if _rows_form_fits(geom, target):
                channels = QConvPlan(geom, x_dtype, w_dtype, out_dtype, w_zero_point, form,
                                     target)  # fmt: skip
                min_channels, min_width = profile(target).qconv_rows_over_transposed
                wide = geom.in_channels >= min_channels and geom.out_size[-1] >= min_width
                if wide or not channels.blocked_requant:
                    form = ROWS_FORM
    elif geom.groups == 1 and not w_zero_point and u8s8 and has_aarch64_feature(target, "i8mm"):
        form = "usdot"
    return QConvPlan(geom, x_dtype, w_dtype, out_dtype, w_zero_point, form, target)


def plan_qconv(
    geom: shapes.ConvGeometry,
    x_dtype: str,
    w_dtype: str,
    target: TargetArg = None,
    *,
    requantize: bool,
    w_zero_point: bool,
    narrow_weights: bool = False,
) -> QConvPlan:
    """The plan of an integer convolution ``geom`` (validated by ``shapes.conv_geometry``)
    of ``x_dtype`` activations and ``w_dtype`` weights (uint8/int8, checked by the caller:
    :mod:`convforge.qparams`): QLinearConv where ``requantize`` (output of x's dtype), else
    ConvInteger (int32); ``w_zero_point``: whether some weight zero point is not 0. CPU
    targets only (ValueError naming ``target`` otherwise). On x86 with AVX2, a convolution
    of one group whose weight zero points are all 0 (onnxruntime's quantizer's int8
    weights) takes a blocked form: with uint8 x and int8 w, ``vpdpbusd`` on AVX-512 VNNI
    (exact; the rows form ``vpdpbusd_rows`` for a 1x1 of few input channels,
    :func:`_rows_form_fits`, unless the channel form transposes its output in registers,
    :attr:`QConvPlan.blocked_requant`, and the convolution is narrow: the profile's
    ``qconv_rows_over_transposed``), else ``vpmaddubsw`` where ``narrow_weights`` (int8 weights that
    :func:`convforge.ops.qconv.fits_pmaddubsw`: exact); else ``vpmaddwd``. On AArch64 with
    the i8mm extension, uint8 x int8 of one group takes ``usdot`` (exact, like
    ``vpdpbusd``; NEON's ``sdot`` multiplies signed by signed and would need x shifted by
    128, not built). Anything else the direct one."""
    target = resolve_target(target)
    if not is_cpu(target):
        raise ValueError(
            f"target must be a CPU target for integer convolutions, got {target.kind.name}"
        )
    out_dtype = x_dtype if requantize else "int32"
    return _plan_qconv(
        geom, x_dtype, w_dtype, out_dtype, bool(w_zero_point), bool(narrow_weights), target
    )
