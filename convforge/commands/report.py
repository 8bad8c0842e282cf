"""``convforge report``: which kernel serves each ONNX node, its milliseconds and share."""

from __future__ import annotations

import argparse
import json

from convforge.commands._model_args import (
    add_target_arguments,
    input_shapes,
    progress,
    resolved_target,
    tuning_db,
)

HELP = "list each ONNX node, the kernel serving it (convforge or TVM default), its ms and share"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX model file")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_target_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from convforge.export.model import compile_model

    compiled = compile_model(
        args.model, target=resolved_target(args), tuning_db=tuning_db(args),
        input_shapes=input_shapes(args), progress=None if args.json else progress(),
        algorithm=args.algorithm,
    )  # fmt: skip
    report = compiled.report()
    print(json.dumps(report.to_dict()) if args.json else report)
    return 0
