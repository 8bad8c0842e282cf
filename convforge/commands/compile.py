"""``convforge compile``: an ONNX model -> one shared library with convforge kernels."""

from __future__ import annotations

import argparse

from convforge.commands._model_args import add_model_arguments, compile_from_args, progress

HELP = "compile an ONNX model with convforge kernels into one shared library"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("-o", "--output", required=True, help="library to write (MODEL.so)")
    parser.add_argument(
        "--dynamic", action="append", default=None, metavar="NAME",
        help="a symbolic dimension to keep dynamic (the batch, e.g. N; repeatable); a "
        "symbolic batch is dynamic without it",
    )  # fmt: skip
    parser.add_argument(
        "--batch-buckets", default=None, metavar="B1,B2,...",
        help="batch sizes a dynamic batch is compiled for, one library (default 1,2,4,8)",
    )  # fmt: skip


def batch_buckets(args: argparse.Namespace) -> list[int] | None:
    """``--batch-buckets`` as integers (ValueError naming the option when it is not)."""
    if args.batch_buckets is None:
        return None
    try:
        return [int(b) for b in args.batch_buckets.split(",")]
    except ValueError:
        raise ValueError(
            f"--batch-buckets must look like 1,2,4,8, got {args.batch_buckets!r}"
        ) from None


def run(args: argparse.Namespace) -> int:
    say = progress()
    compiled = compile_from_args(args, say, dynamic=args.dynamic, batch_buckets=batch_buckets(args))
    compiled.export_library(args.output)
    say(f"wrote {args.output}")
    return 0
