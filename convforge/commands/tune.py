"""``convforge tune``: autotune convolutions into a tuning database.

How: a planned convolution (``plan_conv``: Winograd, blocked or direct, CPU) by searching
the knobs of its plan (:mod:`convforge.knob_tuning`; ``--search knobs``, the default),
every other kernel (and all with ``--search metaschedule``) by MetaSchedule's search seeded
with the default schedule. ``--onnx MODEL --budget 20m`` spends about that long on the
model's planned convolutions, each a share proportional to its time in the default build's
``report()``, then prints each kernel's default -> tuned and the whole model's latency
before and after (the two builds timed interleaved).

What to tune: named workloads of the benchmark suite (``--workload``), explicit shapes
(``--conv x=1,64,56,56 w=64,64,3,3 stride=1 padding=1``) or every kernel of an ONNX model
as ``convforge compile`` builds it, fused epilogues and pools included (``--onnx
model.onnx``). Records go to ``--db`` (default ``$CONVFORGE_TUNING_DB``), keyed by workload
and target; compile with them through ``convforge.use_tuning_db(path)``,
``CONVFORGE_TUNING_DB`` or ``convforge compile --tuning-db``.

Progress: after each measured candidate, trials done/total, the best latency so far (by the
rule of the final "default -> best" line) and the time left; a rich bar on a terminal, plain
flushed lines when stdout is not one (on stderr with ``--json``), with a line every 10 s
while a batch is being built. Ctrl-C stops with one line and exit code 130; every candidate
measured before it is kept (each is committed as it is measured) and the same command
resumes. So does a killed run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import tvm

from convforge import api, shapes
from convforge import workloads as registry
from convforge.build import prim_func
from convforge.cli import EXIT_INTERRUPTED
from convforge.commands._model_args import add_algorithm_argument, add_db_argument, checked_db
from convforge.extras import require
from convforge.knob_tuning import KnobTuningResult, default_plan, describe, tune_knobs
from convforge.knobs import tunable
from convforge.plan import ConvPlan, plan_conv
from convforge.schedules import tuning
from convforge.targets import resolve_target

if TYPE_CHECKING:  # onnx only where a model is tuned: the CLI starts without it
    import onnx


HELP = (
    "autotune convolutions (named, by shape, or every kernel of an ONNX model) into a tuning "
    "database (resumable after a kill or Ctrl-C)"
)


@dataclass(frozen=True)
class ConvWorkload:
    """One convolution to tune, exactly as the numpy API computes it (same PrimFunc)."""

    name: str
    geometry: shapes.ConvGeometry | shapes.ConvTransposeGeometry
    dtype: str = "float32"
    bias: bool = False
    activation: str | None = None

    def plan(self, target: tvm.target.Target) -> ConvPlan | None:
        """The default plan ``convforge.conv`` takes for these arguments on ``target`` (None
        for a transposed convolution: it has no knob space)."""
        if not isinstance(self.geometry, shapes.ConvGeometry):
            return None
        return plan_conv(
            self.geometry, self.dtype, target, activation=self.activation, bias=self.bias,
            tuned=False,
        )  # fmt: skip

    def prim_func(self, target: tvm.target.Target) -> tvm.tirx.PrimFunc:
        """The PrimFunc ``convforge.conv`` / ``conv_transpose`` compiles for these arguments
        on ``target`` (the API's own computation: direct, NCHWc, sub-pixel...)."""
        geom = self.geometry
        if isinstance(geom, shapes.ConvGeometry):
            plan = self.plan(target)  # the API's default plan
            build = plan.computation()
        else:
            build = api.conv_transpose_computation(
                geom, self.dtype, self.bias, self.activation, target
            )
        return prim_func(build)


def _named(workload: registry.Workload) -> ConvWorkload:
    return ConvWorkload(
        workload.tune_name or workload.name,
        workload.geometry(),
        workload.dtype,
        "bias" in workload.shapes,
        workload.params.get("activation"),
    )


#: Named workloads: the registry's ``tune`` set (:mod:`convforge.workloads`; ResNet /
#: MobileNet / 1-D / decoder convolutions, batch 1, float32): the shipped records in
#: convforge/tuned are for these. Those shared with the benchmark suite (known here by their
#: ``tune_name``) are listed last, as ``--help`` always listed them.
WORKLOADS: dict[str, ConvWorkload] = {
    w.name: w
    for w in map(
        _named, sorted(registry.select(registry.TUNE), key=lambda w: w.tune_name is not None)
    )
}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _int_or_ints(text: str) -> int | tuple[int, ...]:
    values = _ints(text)
    return values[0] if len(values) == 1 else values


def parse_conv(tokens: list[str], index: int) -> ConvWorkload:
    """``x=1,64,56,56 w=64,64,3,3 [stride=..] [padding=int|ints|mode] [dilation=..]
    [groups=..] [bias=0|1] [activation=..] [dtype=..] [transposed=0|1] [output_padding=..]``."""
    fields = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep:
            raise ValueError(f"--conv entries must be key=value, got {token!r}")
        fields[key] = value
    unknown = set(fields) - {
        "x", "w", "stride", "padding", "dilation", "groups", "bias", "activation", "dtype",
        "transposed", "output_padding",
    }  # fmt: skip
    if unknown or "x" not in fields or "w" not in fields:
        raise ValueError(
            f"--conv needs x=... and w=... and knows stride, padding, dilation, groups, bias, "
            f"activation, dtype, transposed, output_padding; got {sorted(fields)}"
        )
    padding: shapes.PaddingArg = fields.get("padding", "0")
    if padding.replace(",", "").isdigit():
        padding = _int_or_ints(padding)
    common = dict(
        stride=_int_or_ints(fields.get("stride", "1")), padding=padding,
        dilation=_int_or_ints(fields.get("dilation", "1")), groups=int(fields.get("groups", "1")),
    )  # fmt: skip
    x, w = _ints(fields["x"]), _ints(fields["w"])
    if fields.get("transposed", "0") == "1":
        geom = shapes.conv_transpose_geometry(
            x, w, output_padding=_int_or_ints(fields.get("output_padding", "0")), **common
        )
    else:
        geom = shapes.conv_geometry(x, w, **common)
    dtype = fields.get("dtype", "float32")
    if dtype not in api.DTYPES:
        raise ValueError(f"dtype must be one of {api.DTYPES}, got {dtype}")
    return ConvWorkload(
        f"conv{index}", geom, dtype, fields.get("bias", "0") == "1", fields.get("activation")
    )


@dataclass(frozen=True)
class ModelKernel:
    """One convolution kernel of an ONNX model, exactly as :func:`convforge.compile_model`
    builds it for the target it was found for (fused epilogue, packed constant weights)."""

    name: str
    func: tvm.tirx.PrimFunc
    #: The function's name in the compiled model (its rows of ``report()``).
    function: str = ""
    #: The default plan of a Conv kernel (its knobs are tuned), else None.
    conv_plan: ConvPlan | None = None

    def plan(self, target: tvm.target.Target) -> ConvPlan | None:
        return self.conv_plan

    def prim_func(self, target: tvm.target.Target) -> tvm.tirx.PrimFunc:
        return self.func


def onnx_workloads(
    model: onnx.ModelProto | str,
    target: tvm.target.Target | None = None,
    algorithm: str = "auto",
) -> list[ModelKernel]:
    """One workload per distinct kernel of ``model`` (ModelProto or path) as
    :func:`convforge.compile_model` lowers it for ``target`` (the host by default) with
    ``algorithm``: every kernel it reports (convolutions with their fused epilogues and
    pools, pools, dense layers, resizes, ...), in the model's order, so that compiling the
    model with the tuning database (and the same ``algorithm``) finds every record tuned
    here. Integer convolutions (int8) are left out, with a warning: their schedules
    tensorize with intrinsics registered in this process only, which MetaSchedule's
    builder processes lack."""
    import warnings

    from convforge.export.model import import_model
    from convforge.ops.blocks import QCONV
    from convforge.schedules.cpu_direct import has_block

    _, ctx, _ = import_model(model, resolve_target(target), algorithm=algorithm)
    found: dict[str, ModelKernel] = {}
    integer = sorted(
        {r.node for r in ctx.records if has_block(ctx.functions[r.function], QCONV)}
    )  # fmt: skip
    if integer:
        warnings.warn(
            f"not tuned: {len(integer)} integer convolution(s) ({', '.join(integer[:5])}"
            f"{', ...' if len(integer) > 5 else ''}): int8 kernels are not tunable yet",
            UserWarning,
            stacklevel=2,
        )
    for record in ctx.records:
        if record.node in integer:
            continue
        if record.function not in found:
            name = f"{record.op_type}:{record.node}"
            plan = ctx.plans.get(record.function)
            if plan is not None:
                plan = default_plan(plan) if algorithm == "auto" and tunable(plan) else None
            found[record.function] = ModelKernel(
                name, ctx.functions[record.function], record.function, plan
            )
    return list(found.values())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to tune (any combination)")
    what.add_argument(
        "--workload", nargs="+", default=[], metavar="NAME",
        help="named workloads, or 'all': " + ", ".join(WORKLOADS),
    )  # fmt: skip
    what.add_argument(
        "--conv", nargs="+", action="append", default=[], metavar="KEY=VALUE",
        help="one convolution: x=1,64,56,56 w=64,64,3,3 stride=1 padding=1 (repeatable)",
    )  # fmt: skip
    what.add_argument("--onnx", help="tune every kernel this ONNX model compiles to")
    add_algorithm_argument(what)
    parser.add_argument(
        "--search", choices=SEARCHES, default="knobs",
        help="knobs (default): search the knob space of convforge's own plan where the kernel "
        "is a planned convolution, MetaSchedule elsewhere; metaschedule: MetaSchedule's "
        "search for every kernel",
    )  # fmt: skip
    parser.add_argument(
        "--budget", metavar="DURATION",
        help="with --onnx: spend about this long in all (e.g. 30s, 20m, 1h), split over "
        "the model's planned convolutions by their share of its time (report()); prints "
        "each kernel's default -> tuned and the whole model before/after",
    )  # fmt: skip
    parser.add_argument(
        "--trials", type=int, default=64,
        help="measured candidates per workload, those already in --db included (a rerun "
        "resumes)",
    )  # fmt: skip
    add_db_argument(parser, "tuning database directory")
    parser.add_argument("--target", help='JSON target, e.g. {"kind": "llvm", "mcpu": "znver3"}')
    parser.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure via a TVM RPC tracker")
    parser.add_argument("--rpc-key", help="device key registered at the RPC tracker")
    parser.add_argument(
        "--rpc-timeout", type=float, default=10.0, metavar="SECONDS",
        help="seconds to wait for the RPC tracker to answer before giving up (default 10)",
    )  # fmt: skip
    parser.add_argument("--jobs", type=int, help="parallel builds (and RPC sessions)")
    parser.add_argument("--seed", type=int, help="random seed of the search")
    parser.add_argument(
        "--json", action="store_true",
        help="print results as JSON lines (plain progress lines then go to stderr)",
    )  # fmt: skip
    parser.add_argument("--verbose", action="store_true", help="show MetaSchedule's log")


#: Values of ``--search``.
SEARCHES = ("knobs", "metaschedule")

_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str, name: str = "--budget") -> float:
    """Seconds of a duration such as ``90``, ``30s``, ``20m``, ``1h30m`` (ValueError naming
    ``name`` otherwise, or for zero)."""
    import re

    cleaned = str(text).strip().lower()
    parts = re.fullmatch(
        r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", cleaned
    )
    if not cleaned or parts is None or not any(parts.groups()):
        raise ValueError(f"{name} must be a duration such as 90, 30s, 20m or 1h30m, got {text!r}")
    h, m, sec = (float(v) if v else 0.0 for v in parts.groups())
    seconds = 3600 * h + 60 * m + sec
    if seconds <= 0:
        raise ValueError(f"{name} must be longer than 0 seconds, got {text!r}")
    return seconds


def _workloads(args: argparse.Namespace) -> list[ConvWorkload | ModelKernel]:
    chosen = []
    for name in args.workload:
        if name == "all":
            chosen.extend(WORKLOADS.values())
        elif name in WORKLOADS:
            chosen.append(WORKLOADS[name])
        else:
            raise ValueError(f"--workload {name!r} is unknown; known: all, {', '.join(WORKLOADS)}")
    chosen.extend(parse_conv(tokens, i) for i, tokens in enumerate(args.conv))
    if args.onnx:
        chosen.extend(onnx_workloads(args.onnx, resolve_target(args.target), args.algorithm))
    if not chosen:
        raise ValueError("nothing to tune: give --workload, --conv or --onnx")
    return chosen


def _rpc(args: argparse.Namespace) -> tuning.RPCTracker | None:
    if not args.rpc_tracker and not args.rpc_key:
        return None
    host, sep, port = (args.rpc_tracker or "").rpartition(":")
    if not sep or not host or not port.isdigit() or not args.rpc_key:
        raise ValueError("--rpc-tracker must be HOST:PORT and comes with --rpc-key")
    tracker = tuning.RPCTracker(host, int(port), args.rpc_key)
    tuning.check_tracker_reachable(tracker, timeout_s=args.rpc_timeout)
    return tracker


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class ProgressState:
    """Trials, best latency, elapsed and estimated time left of one workload's tuning.

    The estimate: seconds per candidate measured so far in this run times the candidates
    left (unknown until this run has measured one)."""

    def __init__(self, name: str, total: int, clock=time.monotonic) -> None:
        self.name, self.clock, self.start = name, clock, clock()
        self.done, self.total = 0, total
        self.best: float | None = None
        self.first: tuple[float, int] | None = None  # (time, done) of the first report

    def update(self, done: int, total: int, best: float) -> None:
        now = self.clock()
        if self.first is None:
            self.first = (now, done)
        self.done, self.total, self.best = done, total, best

    def left(self) -> float | None:
        """Seconds left, estimated; None before this run has measured a candidate."""
        if self.first is None or self.done <= self.first[1]:
            return None if self.done < self.total else 0.0
        since, base = self.first
        return (self.clock() - since) / (self.done - base) * max(0, self.total - self.done)

    def fields(self) -> dict[str, str]:
        left = self.left()
        return {
            "best": "-" if self.best is None else f"{self.best * 1e3:.4f} ms",
            "left": "unknown" if left is None else _duration(left),
        }

    def line(self) -> str:
        """One plain progress line."""
        fields = self.fields()
        return (
            f"{self.name}: {self.done}/{self.total} trials, best {fields['best']}, "
            f"{_duration(self.clock() - self.start)} elapsed, time left {fields['left']}"
        )


class PlainProgress:
    """Progress as plain lines on ``stream`` (each flushed), for output that is not a
    terminal: a line when the default schedule is measured, one per measured candidate (at
    most one per ``min_gap_s``, and always the last), and while nothing is measured (building
    a batch) one every ``heartbeat_s`` seconds, so a run is never silent."""

    def __init__(
        self, name: str, total: int, stream, heartbeat_s: float = 10.0, min_gap_s: float = 1.0
    ) -> None:
        self.state, self.stream = ProgressState(name, total), stream
        self.heartbeat_s, self.min_gap_s = heartbeat_s, min_gap_s
        self.last_line = 0.0
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._heartbeat, daemon=True)

    def __enter__(self) -> PlainProgress:
        self._print(f"{self.state.name}: measuring the default schedule")
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()

    def _print(self, text: str) -> None:
        with self.lock:
            print(text, file=self.stream, flush=True)
            self.last_line = time.monotonic()

    def _heartbeat(self) -> None:
        while not self.stopped.wait(1.0):
            if time.monotonic() - self.last_line >= self.heartbeat_s:
                self._print(self.state.line())

    def __call__(self, done: int, total: int, best: float) -> None:
        first, previous = self.state.first is None, (self.state.done, self.state.best)
        self.state.update(done, total, best)
        changed = (done, best) != previous
        quiet = time.monotonic() - self.last_line >= self.min_gap_s
        if first or (changed and (quiet or done >= total)):
            self._print(self.state.line())


@contextlib.contextmanager
def _progress(name: str, total: int, plain, json_lines: bool):
    """A progress callback for tuning workload ``name``: plain lines on stdout (stderr with
    ``--json``) when stdout is not a terminal, else a rich bar on stderr."""
    if plain:
        with PlainProgress(name, total, sys.stderr if json_lines else sys.stdout) as report:
            yield report
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )  # fmt: skip

    state = ProgressState(name, total)
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("best {task.fields[best]}"), TimeElapsedColumn(),
        TextColumn("left {task.fields[left]}"),
    )  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), refresh_per_second=4) as bar:
        task = bar.add_task(name, total=total, **state.fields())

        def report(done: int, total: int, best: float) -> None:
            state.update(done, total, best)
            bar.update(task, completed=min(done, total), **state.fields())

        yield report


def _quiet_pool_teardown() -> None:
    """After a Ctrl-C, silence one known message of TVM's process pools (a
    ``PopenPoolExecutor``, which MetaSchedule's builder makes per batch). The interrupt
    leaves a pool whose last reference a worker thread of its own drops; its destructor then
    kills its processes and fails to join that very thread, and Python prints the
    "Exception ignored ... cannot join current thread" traceback. Any other unraisable
    exception is reported as before (``sys.unraisablehook``)."""
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        where = getattr(unraisable.object, "__qualname__", "")
        if where == "PopenPoolExecutor.__del__" and isinstance(unraisable.exc_value, RuntimeError):
            return
        previous(unraisable)

    sys.unraisablehook = hook


def run(args: argparse.Namespace) -> int:
    """Tune each workload in turn; on Ctrl-C stop with one line and exit 130 (every candidate
    measured before it is kept: the same command again resumes)."""
    require("rich", "convforge tune", extra="tune")
    tuning.require_tuning_extra()
    checked_db(args)
    if args.trials < 0:
        raise ValueError(f"--trials must be >= 0, got {args.trials}")
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    budget = None if args.budget is None else parse_duration(args.budget)
    if budget is not None and not args.onnx:
        raise ValueError("--budget needs --onnx (the model's report() weighs its kernels)")
    if budget is not None and args.search != "knobs":
        raise ValueError("--budget tunes knobs only: leave out --search metaschedule")
    target = resolve_target(args.target)
    workloads, rpc = _workloads(args), _rpc(args)
    plain = not sys.stdout.isatty()
    interrupted = False
    try:
        if budget is not None:
            _run_budget(args, workloads, target, rpc, budget, plain)
        else:
            for workload in workloads:
                _tune_one(args, workload, target, rpc, plain)
    except KeyboardInterrupt:
        interrupted = True
    if interrupted:
        _quiet_pool_teardown()
        print(
            f"convforge tune: interrupted; every candidate measured so far is kept in "
            f"{args.db}; the same command again resumes",
            file=sys.stderr, flush=True,
        )  # fmt: skip
        return EXIT_INTERRUPTED
    return 0


def _tune_one(
    args: argparse.Namespace,
    workload: ConvWorkload | ModelKernel,
    target: tvm.target.Target,
    rpc: tuning.RPCTracker | None,
    plain: bool,
    time_limit_s: float | None = None,
) -> KnobTuningResult | tuning.TuningResult:
    """Tune one workload: its plan's knobs (``--search knobs`` and a planned convolution),
    else MetaSchedule's search; print its result line."""
    plan = workload.plan(target) if args.search == "knobs" else None
    with _progress(workload.name, args.trials, plain, args.json) as report:
        if plan is not None and tunable(plan):
            result = tune_knobs(
                plan, args.db, args.trials, rpc=rpc, jobs=args.jobs, seed=args.seed,
                progress=report, time_limit_s=time_limit_s,
            )  # fmt: skip
        else:
            result = tuning.tune(
                workload.prim_func(target), target, args.db, args.trials, rpc=rpc,
                jobs=args.jobs, seed=args.seed, progress=report, verbose=args.verbose,
            )  # fmt: skip
    _print_result(workload.name, result, args.json)
    return result


#: A planned convolution whose share of the budget is shorter than this is not tuned.
MIN_KERNEL_SECONDS = 5.0


def budget_shares(
    seconds: dict[str, float], budget_s: float, least_s: float = MIN_KERNEL_SECONDS
) -> dict[str, float]:
    """Seconds of ``budget_s`` for each kernel of ``seconds`` (kernel -> its time in the
    model), proportional to its time; kernels whose share would be under ``least_s`` get
    none and their time goes to the others (the largest first)."""
    kept = {k: s for k, s in seconds.items() if s > 0}
    while kept:
        total = sum(kept.values())
        shares = {k: budget_s * s / total for k, s in kept.items()}
        small = [k for k, v in shares.items() if v < least_s]
        if not small:
            return dict(sorted(shares.items(), key=lambda kv: -kv[1]))
        del kept[min(small, key=lambda k: kept[k])]
    return {}


def _run_budget(
    args: argparse.Namespace,
    workloads: list,
    target: tvm.target.Target,
    rpc: tuning.RPCTracker | None,
    budget_s: float,
    plain: bool,
) -> None:
    """``--onnx MODEL --budget``: the default build's ``report()`` weighs the planned
    convolutions; each gets its share of what is left of the budget after that build and a
    reserve for the tuned build and the comparison (as long as the default build took);
    then the default and tuned builds are timed interleaved (5 rounds, medians)."""
    import tempfile

    from convforge.export.model import compile_model, random_inputs

    start = time.monotonic()
    out = sys.stderr if args.json else sys.stdout
    with (
        tempfile.TemporaryDirectory(prefix="convforge-nodb-") as empty,
        tuning.use_tuning_db(empty, shipped=False),
    ):
        report = compile_model(args.onnx, target=target, algorithm=args.algorithm).report(runs=3)
        # a model that ran report() keeps a per-call instrument callback, which slows it:
        # the default build is timed on a fresh instance (the model cache's copy)
        before = compile_model(args.onnx, target=target, algorithm=args.algorithm)
    per_function: dict[str, float] = {}
    for row in report.rows:
        per_function[row.function] = per_function.get(row.function, 0.0) + row.milliseconds
    planned = {w.function: w for w in workloads if isinstance(w, ModelKernel) and w.conv_plan}
    setup = time.monotonic() - start
    left = budget_s - 2 * setup
    shares = budget_shares({f: per_function.get(f, 0.0) for f in planned}, left)
    whole = report.total_ms
    print(
        f"budget {_duration(budget_s)}: default build {whole:.3f} ms; {len(shares)} of "
        f"{len(planned)} planned convolutions get a share of {_duration(max(0, left))}",
        file=out, flush=True,
    )  # fmt: skip
    lines = []
    for function, share_s in shares.items():
        remaining = budget_s - setup - (time.monotonic() - start)
        limit = min(share_s, remaining)
        if limit < MIN_KERNEL_SECONDS / 2:
            break
        workload = planned[function]
        result = _tune_one(args, workload, target, rpc, plain, time_limit_s=limit)
        share = per_function.get(function, 0.0) / whole if whole else 0.0
        lines.append((workload.name, share, result))
    with tuning.use_tuning_db(args.db, shipped=False):
        after = compile_model(args.onnx, target=target, algorithm=args.algorithm)
    inputs = random_inputs(before, seed=0)
    before(*inputs), after(*inputs)  # warm: first-call allocations, the thread pool
    befores, afters = [], []
    for _ in range(5):  # interleaved: the machine's load hits both alike
        befores.append(before.time(*inputs, number=10, repeat=1))
        afters.append(after.time(*inputs, number=10, repeat=1))
    b_ms, a_ms = 1e3 * float(np.median(befores)), 1e3 * float(np.median(afters))
    summary = {
        "model": str(args.onnx), "default_ms": b_ms, "tuned_ms": a_ms, "ratio": a_ms / b_ms,
        "seconds": round(time.monotonic() - start, 1),
        "kernels": [
            {"kernel": name, "share": share, "default_ms": r.default_seconds * 1e3,
             "tuned_ms": r.best_seconds * 1e3}
            for name, share, r in lines
        ],
    }  # fmt: skip
    if args.json:
        print(json.dumps(summary), flush=True)
        return
    for name, share, r in lines:
        print(
            f"  {name} ({100 * share:.1f}% of the model): {r.default_seconds * 1e3:.4f} ms -> "
            f"{r.best_seconds * 1e3:.4f} ms", flush=True,
        )  # fmt: skip
    print(
        f"model {args.onnx}: default {b_ms:.3f} ms -> tuned {a_ms:.3f} ms "
        f"({a_ms / b_ms:.3f}x, medians of 5 interleaved runs) in {summary['seconds']} s",
        flush=True,
    )  # fmt: skip


def _print_result(
    name: str, result: tuning.TuningResult | KnobTuningResult, json_lines: bool
) -> None:
    summary = {
        "workload": name,
        "default_ms": result.default_seconds * 1e3,
        "best_ms": result.best_seconds * 1e3,
        "speedup": result.default_seconds / result.best_seconds,
        "trials": result.trials,
        "new_trials": result.new_trials,
        "seconds": round(result.elapsed_seconds, 1),
        "record_file": str(result.database_file),
    }
    knobs = isinstance(result, KnobTuningResult)
    summary["search"] = "knobs" if knobs else "metaschedule"
    if knobs:
        summary["config"] = result.best_config
    if json_lines:
        print(json.dumps(summary), flush=True)
    else:
        print(
            f"{name}: default {summary['default_ms']:.4f} ms -> best "
            f"{summary['best_ms']:.4f} ms ({summary['speedup']:.2f}x), "
            f"{result.trials} trials ({result.new_trials} new) in {summary['seconds']} s"
            + (f", knobs: {describe(result.best_config)}" if knobs else ""),
            flush=True,
        )
