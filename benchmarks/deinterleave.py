"""Strided depthwise and grouped convolutions: the grouped direct schedule with its padded
input stored as stride phases (``cpu_grouped.deinterleave_strided_input``) against the same
schedule without, kernel only, interleaved in one process.

    python benchmarks/deinterleave.py [--rounds 5] [--json OUT]

MobileNetV2/V3 and EfficientNet-B0's stride-2 depthwise layers; the 3x3 ones over wide
maps (which the profile leaves unchanged) and stride-1 ones are controls. Weights per
call (the depthwise plans do not pack), random inputs; each round times both forms (TVM's time evaluator,
``tuning.EVALUATOR``); the table gives medians over rounds and the ratio. ``before`` is the
schedule with ``deinterleave_strided_input`` replaced by a no-op for its build. Set
``TVM_NUM_THREADS`` for the threads. Evidence for
benchmarks/results/thresholds.md#deinterleaved-depthwise.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["CONVFORGE_CACHE"] = "0"

#: name -> (channels, input size, kernel, stride)
DEPTHWISE = {
    "mbv2 dw3x3 s2 96ch 112->56": (96, 112, 3, 2),
    "mbv2 dw3x3 s2 144ch 56->28": (144, 56, 3, 2),
    "mbv2 dw3x3 s2 192ch 28->14": (192, 28, 3, 2),
    "mbv2 dw3x3 s2 576ch 14->7": (576, 14, 3, 2),
    "mbv3 dw5x5 s2 72ch 56->28": (72, 56, 5, 2),
    "mbv3 dw5x5 s2 240ch 28->14": (240, 28, 5, 2),
    "effnet dw5x5 s2 144ch 56->28": (144, 56, 5, 2),
    "effnet dw3x3 s2 96ch 112->56": (96, 112, 3, 2),
    "control: dw3x3 s1 144ch 56": (144, 56, 3, 1),
    "control: dw5x5 s1 480ch 14": (480, 14, 5, 1),
}


def main() -> None:
    from benchmarks import kernel_ab as ab

    parser = ab.ab_parser(__doc__, rounds=5)
    args = parser.parse_args()

    from unittest import mock

    from convforge import shapes
    from convforge.knob_tuning import scheduled_module
    from convforge.plan import plan_conv
    from convforge.schedules import cpu_grouped

    target, runner = ab.host_runner()
    rows = []
    for name, (channels, size, k, stride) in DEPTHWISE.items():
        geom = shapes.conv_geometry(
            (1, channels, size, size), (channels, 1, k, k), stride=stride, padding=k // 2,
            groups=channels,
        )  # fmt: skip
        plan = plan_conv(geom, "float32", tuned=False)
        with mock.patch.object(cpu_grouped, "deinterleave_strided_input", lambda sch, b, t: 1):
            before = scheduled_module(plan)
        after = scheduled_module(plan)
        mods = {"before": before, "after": after}
        times = ab.time_interleaved(runner, mods, args.rounds)
        ms, ranges = ab.summary(times)
        row = {
            "name": name, "x": geom.x_shape, "w": geom.w_shape, "stride": stride, "ms": ms,
            "range_ms": ranges,
            "after_over_before": ms["after"] / ms["before"],
        }  # fmt: skip
        rows.append(row)
        print(
            f"{name:34s} before {ms['before']:7.3f} ms  after {ms['after']:7.3f} ms  "
            f"after/before {row['after_over_before']:.2f}x",
            flush=True,
        )
    if args.json:
        ab.write_results(args.json, target, args.rounds, rows)


if __name__ == "__main__":
    main()
