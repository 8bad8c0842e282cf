"""``convforge tune``: autotune convolutions with MetaSchedule into a tuning database.

What to tune: named workloads of the benchmark suite (``--workload``), explicit shapes
(``--conv x=1,64,56,56 w=64,64,3,3 stride=1 padding=1``) or every convolution kernel of an
ONNX model as ``convforge compile`` builds it (``--onnx model.onnx``). Records go to
``--db`` (default ``$CONVFORGE_TUNING_DB``), keyed by workload and target; compile with
them through ``convforge.use_tuning_db(path)``, ``CONVFORGE_TUNING_DB`` or
``convforge compile --tuning-db``.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass

import onnx
import tvm

from convforge import api, shapes
from convforge import workloads as registry
from convforge.build import prim_func
from convforge.commands._model_args import add_algorithm_argument
from convforge.extras import require
from convforge.plan import plan_conv
from convforge.schedules import tuning
from convforge.targets import resolve_target

HELP = "autotune convolutions (named, by shape, or from an ONNX model) into a tuning database"


@dataclass(frozen=True)
class ConvWorkload:
    """One convolution to tune, exactly as the numpy API computes it (same PrimFunc)."""

    name: str
    geometry: shapes.ConvGeometry | shapes.ConvTransposeGeometry
    dtype: str = "float32"
    bias: bool = False
    activation: str | None = None

    def prim_func(self, target: tvm.target.Target) -> tvm.tirx.PrimFunc:
        """The PrimFunc ``convforge.conv`` / ``conv_transpose`` compiles for these arguments
        on ``target`` (the API's own computation: direct, NCHWc, sub-pixel...)."""
        geom = self.geometry
        if isinstance(geom, shapes.ConvGeometry):
            plan = plan_conv(
                geom, self.dtype, target, activation=self.activation, bias=self.bias
            )  # the API's plan
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

    def prim_func(self, target: tvm.target.Target) -> tvm.tirx.PrimFunc:
        return self.func


#: ONNX op types whose kernels ``--onnx`` tunes.
TUNED_OP_TYPES = ("Conv", "ConvTranspose", "CausalConvWithState")


def onnx_workloads(
    model: onnx.ModelProto | str,
    target: tvm.target.Target | None = None,
    algorithm: str = "auto",
) -> list[ModelKernel]:
    """One workload per distinct convolution kernel of ``model`` (ModelProto or path) as
    :func:`convforge.compile_model` lowers it for ``target`` (the host by default) with
    ``algorithm``, so that compiling the model with the tuning database (and the same
    ``algorithm``) finds every record tuned here."""
    from convforge.export.model import import_model

    _, ctx, _ = import_model(model, resolve_target(target), algorithm=algorithm)
    found: dict[str, ModelKernel] = {}
    for record in ctx.records:
        if record.op_type in TUNED_OP_TYPES and record.function not in found:
            name = f"{record.op_type}:{record.node}"
            found[record.function] = ModelKernel(name, ctx.functions[record.function])
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
    what.add_argument("--onnx", help="tune every convolution kernel of this ONNX model")
    add_algorithm_argument(what)
    parser.add_argument("--trials", type=int, default=64, help="measured candidates per workload")
    parser.add_argument(
        "--db", default=os.environ.get(tuning.DB_ENV),
        help=f"tuning database directory (default ${tuning.DB_ENV})",
    )  # fmt: skip
    parser.add_argument("--target", help='JSON target, e.g. {"kind": "llvm", "mcpu": "znver3"}')
    parser.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure via a TVM RPC tracker")
    parser.add_argument("--rpc-key", help="device key registered at the RPC tracker")
    parser.add_argument(
        "--rpc-timeout", type=float, default=10.0, metavar="SECONDS",
        help="seconds to wait for the RPC tracker to answer before giving up (default 10)",
    )  # fmt: skip
    parser.add_argument("--jobs", type=int, help="parallel builds (and RPC sessions)")
    parser.add_argument("--seed", type=int, help="random seed of the search")
    parser.add_argument("--json", action="store_true", help="print results as JSON lines")
    parser.add_argument("--verbose", action="store_true", help="show MetaSchedule's log")


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


def run(args: argparse.Namespace) -> int:
    require("rich", "convforge tune", extra="tune")
    tuning.require_tuning_extra()
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )  # fmt: skip

    if not args.db:
        raise ValueError(f"--db is required (or set ${tuning.DB_ENV})")
    tuning.check_database_path(args.db, "--db")
    if args.trials < 0:
        raise ValueError(f"--trials must be >= 0, got {args.trials}")
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    workloads, rpc = _workloads(args), _rpc(args)
    target = resolve_target(args.target)
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("best {task.fields[best]}"), TimeElapsedColumn(), TextColumn("left"),
        TimeRemainingColumn(),
    )  # fmt: skip
    for workload in workloads:
        with Progress(*columns, console=console, transient=not console.is_terminal) as bar:
            task = bar.add_task(workload.name, total=args.trials, best="-")

            def report(done: int, total: int, best: float, task=task, bar=bar) -> None:
                bar.update(task, completed=min(done, total), best=f"{best * 1e3:.4f} ms")

            result = tuning.tune(
                workload.prim_func(target), target, args.db, args.trials, rpc=rpc,
                jobs=args.jobs, seed=args.seed, progress=report, verbose=args.verbose,
            )  # fmt: skip
        summary = {
            "workload": workload.name,
            "default_ms": result.default_seconds * 1e3,
            "best_ms": result.best_seconds * 1e3,
            "speedup": result.default_seconds / result.best_seconds,
            "trials": result.trials,
            "new_trials": result.new_trials,
            "seconds": round(result.elapsed_seconds, 1),
            "record_file": str(result.database_file),
        }
        if args.json:
            print(json.dumps(summary), flush=True)
        else:
            print(
                f"{workload.name}: default {summary['default_ms']:.4f} ms -> best "
                f"{summary['best_ms']:.4f} ms ({summary['speedup']:.2f}x), "
                f"{result.trials} trials ({result.new_trials} new) in {summary['seconds']} s",
                flush=True,
            )
    return 0
