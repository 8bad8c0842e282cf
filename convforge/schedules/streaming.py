"""CPU schedule for a streaming step: many tiny convolutions in one function, latency first.

A streaming step convolves one or a few samples per layer, so the default schedule's tiles
along time do not apply and thread launches would cost more than the work. Rule:
weight/bias layout views, state concatenation and bias epilogues are inlined; each
convolution runs with its reduction loops outside and the output-channel loop innermost
and vectorized (weights are packed ``(C, k, O)`` so that loop reads contiguous memory);
element-wise blocks are flattened and vectorized, the new states' copies split where
they switch from old state to input. Long chunks (batch x time of at least the target
profile's ``long_chunk_columns``) get the default CPU schedule (time tiles, threads) instead.
"""

from __future__ import annotations

import contextlib

import tvm
from tvm import s_tir, tirx

from convforge.ops.blocks import (
    BIAS_LAYOUT,
    CONCAT,
    CONV_EPILOGUE,
    PAD,
    SKIP_RELU,
    STATE_SPLIT_ATTR,
    WEIGHT_LAYOUT,
)
from convforge.schedules.cpu import schedule_cpu
from convforge.targets import profile, vector_lanes

#: Blocks computed where they are read (views, concatenation, bias epilogues).
INLINED = (WEIGHT_LAYOUT, BIAS_LAYOUT, CONCAT, PAD, CONV_EPILOGUE, SKIP_RELU)


def _is_reduction(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> bool:
    return any(int(iv.iter_type) == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def _vectorize_flat(sch: s_tir.Schedule, block: s_tir.SBlockRV, lanes: int) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    extent = int(sch.get(fused).extent)
    if extent >= lanes and extent % lanes == 0:
        outer, inner = sch.split(fused, [None, lanes])
        if extent >= 1 << 16:
            sch.parallel(outer)
        sch.vectorize(inner)


def _schedule_state_copy(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> None:
    """Split the time loop where the new state switches from old state to input, so each
    part is a plain contiguous copy (no per-element branch, no gather)."""
    split = int(sch.get(block).annotations[STATE_SPLIT_ATTR])
    *_, t = sch.get_loops(block)
    if 0 < split < int(sch.get(t).extent):
        sch.loop_partition(t, [split, None])


def _columns(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> int:
    """Output columns (batch x time) of a 1-D convolution block."""
    n, _, t, *_ = sch.get_loops(block)
    return int(sch.get(n).extent) * int(sch.get(t).extent)


def _schedule_conv(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> None:
    """Loops (n, o, t, rc, rk) -> (n*t, rc, rk, o) with o vectorized."""
    n, o, t, *reduce_ = sch.get_loops(block)
    sch.reorder(n, t, *reduce_, o)
    sch.fuse(n, t)
    sch.vectorize(o)
    sch.decompose_reduction(block, reduce_[0])


def schedule_streaming(func: tirx.PrimFunc, target: tvm.target.Target) -> tvm.IRModule:
    """Schedule every block of a streaming-step PrimFunc (1-D convolutions, (N, C, L))."""
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    long_chunk = profile(target).long_chunk_columns
    if any(_columns(sch, b) >= long_chunk for b in blocks if _is_reduction(sch, b)):
        return schedule_cpu(func, target)  # a long chunk: throughput first
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint.startswith(INLINED):
            with contextlib.suppress(RuntimeError):  # a function output stays a block
                sch.compute_inline(block)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        lanes = vector_lanes(target, str(sch.get(block).writes[0].source.dtype))
        if _is_reduction(sch, block):
            _schedule_conv(sch, block)
        elif STATE_SPLIT_ATTR in sch.get(block).annotations:
            _schedule_state_copy(sch, block)
        else:
            _vectorize_flat(sch, block, lanes)
    return sch.mod
