"""Dynamic batch: one library, the graph lowered for several batch sizes ("buckets").

A model whose inputs have a symbolic batch dimension is lowered once per bucket size
(:data:`DEFAULT_BATCH_BUCKETS`, ``$CONVFORGE_BATCH_BUCKETS`` or ``batch_buckets=``), each
time with batched convforge kernels of that batch. The relax functions of every bucket go
into ONE module (:func:`merge_buckets`): the smallest bucket's entry function stays
``main`` (the compiled shape, what ``time`` and ``report`` run), bucket ``b``'s is
``main_b{b}`` and its kernels are suffixed ``_b{b}``.
So one shared library serves every batch size: a call of batch ``B`` runs the largest
buckets that fit, largest first (:func:`split_batch`: with 1, 2, 4, 8, B=8 is one ``b8``
call, B=3 is b2 + b1, B=20 is b8 + b8 + b4) and concatenates their outputs along axis 0.

Why buckets and not a symbolic batch in the kernels: convforge's TE kernels and their
schedules are built for static shapes (tile sizes, packing, Winograd tiles are picked from
the extents), so a ``tirx.Var`` batch would lose the schedule. The cost is compile time
(each bucket's kernels are compiled) and code size. Why 1, 2, 4, 8: powers of two split
any batch into few calls (B <= 15: at most four), the batch-8 bucket runs the kernels a
batch-8-only library runs, and each more bucket costs one more compile. The weights are
not repeated: TVM's VM executable stores structurally equal constants once, so every
bucket's copy of a weight (and of its packed form) is one constant in the library
(``tests/test_dynamic_batch.py`` checks it). Evidence (compile cost, library size, batch-8
latency against a batch-8-only library and eight batch-1 calls):
benchmarks/results/thresholds.md#batch-buckets

Samples are assumed independent along the batch, as the per-sample loop of convforge
0.1.7 assumed: ``BatchNormalization`` in training mode, which mixes samples, is refused
with a dynamic batch (:func:`convforge.export.prepare.expand_training_batch_norm`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported by merge_buckets: the batch rules need no TVM (a loaded model)
    import tvm

#: Buckets of a dynamic batch when ``compile_model`` is given none (and
#: ``$CONVFORGE_BATCH_BUCKETS`` is unset).
DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8)
#: Environment variable overriding :data:`DEFAULT_BATCH_BUCKETS`, e.g. ``1,2,4,8,16``.
BUCKETS_ENV = "CONVFORGE_BATCH_BUCKETS"


def default_buckets() -> tuple[int, ...]:
    """``$CONVFORGE_BATCH_BUCKETS`` (comma-separated, checked as :func:`check_buckets`
    checks; ValueError naming the variable), else :data:`DEFAULT_BATCH_BUCKETS`."""
    text = os.environ.get(BUCKETS_ENV, "").strip()
    if not text:
        return DEFAULT_BATCH_BUCKETS
    try:
        return check_buckets([int(b) for b in text.split(",")])
    except ValueError as err:
        raise ValueError(
            f"{BUCKETS_ENV} must be batch sizes like 1,2,4,8 (positive, holding 1), got {text!r}"
        ) from err


def check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """``buckets`` sorted and deduplicated; ValueError naming ``batch_buckets`` unless it is
    a non-empty sequence of positive integers holding 1 (so every batch size splits)."""
    if isinstance(buckets, str | bytes) or not isinstance(buckets, Sequence):
        raise ValueError(f"batch_buckets must be a sequence of integers, got {buckets!r}")
    if not buckets or any(isinstance(b, bool) or not isinstance(b, int) for b in buckets):
        raise ValueError(
            f"batch_buckets must be a non-empty sequence of integers, got {list(buckets)!r}"
        )
    if any(b < 1 for b in buckets) or 1 not in buckets:
        raise ValueError(
            f"batch_buckets must be positive and include 1 (so that every batch size is a sum "
            f"of buckets), got {list(buckets)!r}"
        )
    if max(buckets) > 4096:
        raise ValueError(f"batch_buckets: a bucket is at most 4096, got {max(buckets)}")
    return tuple(sorted(set(buckets)))


def split_batch(size: int, buckets: Sequence[int]) -> list[int]:
    """``size`` as a sum of ``buckets`` (which hold 1), largest first, greedily."""
    parts = []
    for bucket in sorted(buckets, reverse=True):
        while size >= bucket:
            parts.append(bucket)
            size -= bucket
    return parts


def function_name(bucket: int, smallest: int) -> str:
    """The entry function of ``bucket`` in the merged module."""
    return "main" if bucket == smallest else f"main_b{bucket}"


def name_suffix(bucket: int, smallest: int) -> str:
    """What the merged module appends to the names of ``bucket``'s functions (none for the
    smallest bucket's)."""
    return "" if bucket == smallest else f"_b{bucket}"


def merge_buckets(modules: Mapping[int, tvm.IRModule]) -> tvm.IRModule:
    """One module holding every bucket's functions (``modules``: bucket -> the module
    :func:`convforge.export.model.import_model` made for that batch); names as in the
    module doc."""
    from tvm import relax

    @relax.expr_functor.mutator
    class Substitute(relax.PyExprMutator):
        """Replaces global variables by the given ones."""

        def __init__(self, globals_: Mapping):
            super().__init__()
            self.globals_ = globals_

        def visit_global_var_(self, op: tvm.ir.GlobalVar) -> relax.Expr:
            return self.globals_.get(op, op)

    smallest = min(modules)
    if len(modules) == 1:
        return modules[smallest]
    bb = relax.BlockBuilder()
    for bucket in sorted(modules):
        mod = modules[bucket]
        suffix = name_suffix(bucket, smallest)
        mapping: dict = {}
        relax_funcs = []
        for gv, func in mod.functions.items():
            if isinstance(func, relax.Function):
                relax_funcs.append((gv, func))
                continue
            name = gv.name_hint + suffix
            if func.attrs is not None and "global_symbol" in func.attrs:
                func = func.with_attr("global_symbol", name)
            mapping[gv] = bb.add_func(func, name)
        # Helpers (called by main) first, main last: a call needs its callee's new var.
        relax_funcs.sort(key=lambda item: item[0].name_hint == "main")
        for gv, func in relax_funcs:
            main = gv.name_hint == "main"
            name = function_name(bucket, smallest) if main else gv.name_hint + suffix
            func = Substitute(mapping).visit_expr(func)
            if func.attrs is not None and "global_symbol" in func.attrs:
                func = func.with_attr("global_symbol", name)
            mapping[gv] = bb.add_func(func, name)
    merged = bb.get()
    for key, value in (modules[smallest].attrs or {}).items():
        merged = merged.with_attr(key, value)
    return merged
