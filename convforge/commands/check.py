"""``convforge check``: compile a model with convforge and compare it with onnxruntime.

Exit status: 0 when every output agrees within tolerance, 1 when not, 2 on bad input or a
model convforge or the reference runtime (onnxruntime) refuses, 3 on an internal error.
"""

from __future__ import annotations

import argparse
import json

from convforge.commands._model_args import (
    add_model_arguments,
    input_shapes,
    progress,
    read_npz,
    resolved_target,
    tuning_db,
    tuning_match,
)

HELP = "compile an ONNX model with convforge, run it and onnxruntime, compare the outputs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--inputs", default=None, help=".npz of inputs (default: seeded random)")
    parser.add_argument("--rtol", type=float, default=None, help="relative tolerance")
    parser.add_argument("--atol", type=float, default=None, help="absolute tolerance")
    parser.add_argument("--per-node", action="store_true", help="also compare every node's output")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from convforge.export.check_model import check_model

    inputs = read_npz(args.inputs) if args.inputs else None
    with tuning_match(args):
        result = check_model(
            args.model, inputs, rtol=args.rtol, atol=args.atol, target=resolved_target(args),
            tuning_db=tuning_db(args), per_node=args.per_node,
            progress=None if args.json else progress(), algorithm=args.algorithm,
            input_shapes=input_shapes(args),
        )  # fmt: skip
    print(json.dumps(result.to_dict()) if args.json else result)
    return 0 if result.ok else 1
