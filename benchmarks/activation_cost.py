"""What a fused ReLU / ReLU6 costs a convolution kernel: the NaN-passing selects of
``ops.activation.activate`` against the max/min form with a NaN test and blend it replaced,
kernel only, interleaved in one process.

    python benchmarks/activation_cost.py [--rounds 7] [--json OUT]

MobileNetV2's layers (depthwise 3x3, expanding and projecting 1x1s) and a dense 3x3, each
with no activation, ``relu`` and ``relu6`` in both forms; bias in every form. Weights per
call, random inputs; each round times every form (TVM's time evaluator,
``tuning.EVALUATOR``); the table gives medians over rounds as a ratio to the kernel with no
activation. ``maxnum`` is ``Select(isnan(v), v, max(v, 0))`` (and ``min(.., 6)``), the
form before. Set ``TVM_NUM_THREADS`` for the threads. Evidence for
benchmarks/results/thresholds.md#relu-selects.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["CONVFORGE_CACHE"] = "0"

#: name -> (x shape, w shape, groups, padding)
KERNELS = {
    "mbv2 dw3x3 32ch 112": ((1, 32, 112, 112), (32, 1, 3, 3), 32, 1),
    "mbv2 dw3x3 144ch 56": ((1, 144, 56, 56), (144, 1, 3, 3), 144, 1),
    "mbv2 dw3x3 576ch 14": ((1, 576, 14, 14), (576, 1, 3, 3), 576, 1),
    "mbv2 1x1 24->144 56": ((1, 24, 56, 56), (144, 24, 1, 1), 1, 0),
    "mbv2 1x1 96->576 14": ((1, 96, 14, 14), (576, 96, 1, 1), 1, 0),
    "3x3 64->64 56": ((1, 64, 56, 56), (64, 64, 3, 3), 1, 1),
}


def _maxnum_form(value, activation, dtype):
    """The form before: LLVM's maxnum/minnum (0 for NaN), NaN restored by a bit test."""
    from tvm import tirx

    from convforge.ops import activation as act

    clipped = tirx.max(value, tirx.const(0, dtype))
    if activation == "relu6":
        clipped = tirx.min(clipped, tirx.const(6, dtype))
    return tirx.Select(act.is_nan(value, dtype), value, clipped)


def main() -> None:
    from benchmarks import kernel_ab as ab

    parser = ab.ab_parser(__doc__, rounds=7)
    args = parser.parse_args()

    from unittest import mock

    from convforge import shapes
    from convforge.knob_tuning import scheduled_module
    from convforge.ops import activation as act
    from convforge.plan import plan_conv

    target, runner = ab.host_runner()
    rows = []
    for name, (x_shape, w_shape, groups, padding) in KERNELS.items():
        geom = shapes.conv_geometry(x_shape, w_shape, padding=padding, groups=groups)
        mods = {}
        for activation in (None, "relu", "relu6"):
            plan = plan_conv(geom, "float32", tuned=False, activation=activation, bias=True)
            mods[f"{activation}"] = scheduled_module(plan)
            if activation is not None:
                with mock.patch.object(act, "activate", _maxnum_form):
                    mods[f"{activation} maxnum"] = scheduled_module(plan)
        times = ab.time_interleaved(runner, mods, args.rounds)
        ms, ranges = ab.summary(times)
        ratios = {form: t / ms["None"] for form, t in ms.items()}
        rows.append({"name": name, "x": x_shape, "w": w_shape, "ms": ms, "range_ms": ranges,
                     "over_none": ratios})  # fmt: skip
        print(
            f"{name:24s} none {ms['None']:7.3f} ms  "
            + "  ".join(f"{form} {r:.2f}x" for form, r in ratios.items() if form != "None"),
            flush=True,
        )
    if args.json:
        ab.write_results(args.json, target, args.rounds, rows)


if __name__ == "__main__":
    main()
