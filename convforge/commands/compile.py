"""``convforge compile``: an ONNX model -> one shared library with convforge kernels."""

from __future__ import annotations

import argparse

from convforge.commands._model_args import add_model_arguments, compile_from_args, progress

HELP = "compile an ONNX model with convforge kernels into one shared library"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("-o", "--output", required=True, help="library to write (MODEL.so)")


def run(args: argparse.Namespace) -> int:
    say = progress()
    compiled = compile_from_args(args, say)
    compiled.export_library(args.output)
    say(f"wrote {args.output}")
    return 0
