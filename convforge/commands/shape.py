"""``convforge shape``: the convolution arithmetic for given sizes."""

from __future__ import annotations

import argparse
import json

from convforge import shapes

HELP = "print output sizes, padding and receptive field of a (transposed) convolution"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=_ints, required=True, help="spatial sizes, e.g. 56,56")
    parser.add_argument("--kernel", type=_ints, required=True, help="kernel sizes, e.g. 3,3")
    parser.add_argument("--stride", type=_ints, default=[1])
    parser.add_argument("--dilation", type=_ints, default=[1])
    parser.add_argument(
        "--padding", default="0",
        help="int, comma-separated per-axis ints, or a mode: " + ", ".join(shapes.PADDING_MODES),
    )  # fmt: skip
    parser.add_argument("--transposed", action="store_true", help="transposed convolution")
    parser.add_argument("--output-padding", type=_ints, default=[0])
    parser.add_argument("--json", action="store_true", help="print JSON")


def _broadcast(values: list[int], ndim: int) -> list[int]:
    return values * ndim if len(values) == 1 else values


def run(args: argparse.Namespace) -> int:
    nd = len(args.input)
    kernel = _broadcast(args.kernel, nd)
    stride, dilation = _broadcast(args.stride, nd), _broadcast(args.dilation, nd)
    padding = args.padding
    if padding.lstrip("-").replace(",", "").isdigit():
        padding = _broadcast(_ints(padding), nd)
    x, w = (1, 1, *args.input), (1, 1, *kernel)
    if args.transposed:
        geom = shapes.conv_transpose_geometry(
            x, w, stride=stride, padding=padding, dilation=dilation,
            output_padding=_broadcast(args.output_padding, nd),
        )  # fmt: skip
    else:
        geom = shapes.conv_geometry(x, w, stride=stride, padding=padding, dilation=dilation)
    field = shapes.receptive_field([(k, s, d) for k, s, d in zip(kernel, stride, dilation)])
    result = {
        "input": list(geom.in_size),
        "output": list(geom.out_size),
        "padding": [list(p) for p in geom.padding],
        "receptive_field_axis0": field,
        "modes": {
            m: list(
                shapes.conv_geometry(x, w, stride=stride, padding=m, dilation=dilation).out_size
            )
            for m in ("valid", "same", "full")
            if not args.transposed
        },
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")
    return 0
