"""Dense 1x1 convolutions over one long row of positions: NCHW[x]c (output channels in
vector lanes) against the direct row kernel (positions in vector lanes, weights
broadcast: ``cpu_conv.schedule_pointwise_row``), kernel only, interleaved in one process.

    python benchmarks/pointwise_row.py [--rounds 7] [--json OUT]

The 1x1 layers of MobileNetV2, ResNet-50, SqueezeNet and Inception v1 (constant weight
packed once, bias and the network's activation fused, random inputs), each as the plan's
NCHW[x]c kernel (``plan.channel_blocks``) and as the direct kernel (``knobs.with_knobs``,
algorithm 'direct'); each round times both (TVM's time evaluator, ``tuning.EVALUATOR``);
the table gives medians over rounds, direct over blocked, and what ``plan_conv`` takes
now. Set ``TVM_NUM_THREADS`` for the threads. Evidence for
benchmarks/results/thresholds.md#pointwise-row-positions.
"""

from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["CONVFORGE_CACHE"] = "0"

#: name -> (in channels, out channels, map size, activation)
POINTWISE = {
    "mbv2 16->96 112": (16, 96, 112, "relu6"),
    "mbv2 32->16 112": (32, 16, 112, None),
    "mbv2 24->144 56": (24, 144, 56, "relu6"),
    "mbv2 144->24 56": (144, 24, 56, None),
    "mbv2 32->192 28": (32, 192, 28, "relu6"),
    "mbv2 192->32 28": (192, 32, 28, None),
    "mbv2 64->384 14": (64, 384, 14, "relu6"),
    "mbv2 384->64 14": (384, 64, 14, None),
    "mbv2 960->320 7": (960, 320, 7, None),
    "resnet50 64->64 56": (64, 64, 56, "relu"),
    "resnet50 64->256 56": (64, 256, 56, None),
    "resnet50 256->64 56": (256, 64, 56, "relu"),
    "resnet50 128->512 28": (128, 512, 28, None),
    "resnet50 512->128 28": (512, 128, 28, "relu"),
    "resnet50 1024->256 14": (1024, 256, 14, "relu"),
    "squeezenet 96->16 55": (96, 16, 55, "relu"),
    "squeezenet 16->64 55": (16, 64, 55, "relu"),
    "squeezenet 256->32 27": (256, 32, 27, "relu"),
    "inception 192->64 28": (192, 64, 28, "relu"),
    "inception 480->192 14": (480, 192, 14, "relu"),
}


def main() -> None:
    from benchmarks import kernel_ab as ab

    parser = ab.ab_parser(__doc__, rounds=7)
    args = parser.parse_args()

    from convforge import shapes
    from convforge.knob_tuning import scheduled_module
    from convforge.knobs import with_knobs
    from convforge.plan import Blocked, channel_blocks, plan_conv

    target, runner = ab.host_runner()
    rows = []
    for name, (cin, cout, size, activation) in POINTWISE.items():
        geom = shapes.conv_geometry((1, cin, size, size), (cout, cin, 1, 1))
        plan = plan_conv(
            geom, "float32", tuned=False, activation=activation, bias=True, constant_weight=True
        )
        # the NCHW[x]c plan, also where plan_conv no longer takes it (knobs would refuse)
        blocks = channel_blocks(plan.kernel_geometry, "float32", target)
        blocked = dataclasses.replace(plan, algorithm=Blocked(blocks))
        mods = {
            "blocked": scheduled_module(blocked),
            "direct": scheduled_module(with_knobs(plan, {"algorithm": "direct"})),
        }
        times = ab.time_interleaved(runner, mods, args.rounds)
        ms, ranges = ab.summary(times)
        row = {
            "name": name, "x": geom.x_shape, "w": geom.w_shape, "activation": activation,
            "ms": ms, "range_ms": ranges, "direct_over_blocked": ms["direct"] / ms["blocked"],
            "plan": plan.algorithm.name,
        }  # fmt: skip
        rows.append(row)
        print(
            f"{name:24s} blocked {ms['blocked']:7.3f} ms  direct {ms['direct']:7.3f} ms  "
            f"direct/blocked {row['direct_over_blocked']:.2f}x  plan: {row['plan']}",
            flush=True,
        )
    if args.json:
        ab.write_results(args.json, target, args.rounds, rows)


if __name__ == "__main__":
    main()
