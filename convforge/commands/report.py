"""``convforge report``: which kernel serves each ONNX node, its milliseconds and share."""

from __future__ import annotations

import argparse
import json

from convforge.commands._model_args import add_model_arguments, compile_from_args, progress

HELP = "list each ONNX node, the kernel serving it (convforge or TVM default), its ms and share"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    compiled = compile_from_args(args, None if args.json else progress())
    report = compiled.report()
    print(json.dumps(report.to_dict()) if args.json else report)
    return 0
