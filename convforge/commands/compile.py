"""``convforge compile``: an ONNX model -> one shared library with convforge kernels."""

from __future__ import annotations

import argparse

from convforge.commands._model_args import (
    add_target_arguments,
    input_shapes,
    progress,
    resolved_target,
    tuning_db,
)

HELP = "compile an ONNX model with convforge kernels into one shared library"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX model file")
    parser.add_argument("-o", "--output", required=True, help="library to write (MODEL.so)")
    add_target_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from convforge.export.model import compile_model

    say = progress()
    compiled = compile_model(
        args.model, target=resolved_target(args), tuning_db=tuning_db(args),
        input_shapes=input_shapes(args), progress=say, algorithm=args.algorithm,
    )  # fmt: skip
    compiled.export_library(args.output)
    say(f"wrote {args.output}")
    return 0
