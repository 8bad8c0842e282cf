"""``convforge run``: run a library written by ``convforge compile`` on inputs from an .npz."""

from __future__ import annotations

import argparse

from convforge.commands._model_args import read_npz, write_npz

HELP = "run a compiled model library on inputs from an .npz file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("library", help="library written by 'convforge compile'")
    parser.add_argument("--inputs", required=True, help=".npz file, one array per input name")
    parser.add_argument("-o", "--output", default=None, help=".npz file for the outputs")


def run(args: argparse.Namespace) -> int:
    from convforge.export.model import load

    try:
        model = load(args.library)
    except ValueError:
        raise
    except Exception as err:  # TVM's loader: not a library, or one it cannot load
        first = str(err).strip().splitlines()[-1:] or [type(err).__name__]
        raise ValueError(
            f"library: {args.library!r} is not a model library written by convforge "
            f"({first[0][:200]})"
        ) from err
    outputs = model(**read_npz(args.inputs))
    named = dict(zip(model.output_names, outputs))
    for name, array in named.items():
        print(f"{name}: shape {array.shape}, dtype {array.dtype}")
    if args.output:
        write_npz(args.output, named)
        print(f"wrote {args.output}")
    return 0
