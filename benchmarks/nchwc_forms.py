"""Grouped and 1-D convolutions: the NCHW[x]c kernel the plan now gives them against the
generic direct kernel they had before, kernel only, interleaved in one process.

    python benchmarks/nchwc_forms.py [--rounds 5] [--json OUT]

Grouped (ResNeXt-50 32x4d and ResNeXt-101 32x8d stages, ShuffleNet-style grouped 1x1s)
and 1-D (the wav2vec 2.0 feature encoder at 16000 samples, TCN and audio stacks); three
kernels each (:func:`_forms`): ``before``, the generic direct kernel on the convolution as
asked (what the plan gave them before); ``blocked``, NCHW[x]c on the geometry the kernel
runs (a 1-D convolution's 2-D row, also where the plan keeps it 1-D); ``direct``, the
generic direct kernel on that geometry. The ``plan`` column says what ``plan_conv``
takes now. Constant weights packed once, random inputs; each round times every form
(TVM's time evaluator, ``tuning.EVALUATOR``), the table gives medians over rounds, the
plan's kernel over ``before`` and blocked over ``before``. Set ``TVM_NUM_THREADS`` for the threads (default:
one per physical core). Evidence for benchmarks/results/thresholds.md#grouped-nchwc and
#one-d-as-a-row.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["CONVFORGE_CACHE"] = "0"

#: name -> (x shape, w shape, options)
GROUPED = {
    "resnext50 s1 conv2 128ch 56 g32 (4/group)": ((1, 128, 56, 56), (128, 4, 3, 3), dict(padding=1, groups=32)),
    "resnext50 s2 256ch 56->28 g32": ((1, 256, 56, 56), (256, 8, 3, 3), dict(stride=2, padding=1, groups=32)),
    "resnext50 conv3 256ch 28 g32": ((1, 256, 28, 28), (256, 8, 3, 3), dict(padding=1, groups=32)),
    "resnext50 s2 512ch 28->14 g32": ((1, 512, 28, 28), (512, 16, 3, 3), dict(stride=2, padding=1, groups=32)),
    "resnext50 conv4 512ch 14 g32": ((1, 512, 14, 14), (512, 16, 3, 3), dict(padding=1, groups=32)),
    "resnext50 s2 1024ch 14->7 g32": ((1, 1024, 14, 14), (1024, 32, 3, 3), dict(stride=2, padding=1, groups=32)),
    "resnext50 conv5 1024ch 7 g32": ((1, 1024, 7, 7), (1024, 32, 3, 3), dict(padding=1, groups=32)),
    "resnext101 conv2 256ch 56 g32": ((1, 256, 56, 56), (256, 8, 3, 3), dict(padding=1, groups=32)),
    "resnext101 conv3 512ch 28 g32": ((1, 512, 28, 28), (512, 16, 3, 3), dict(padding=1, groups=32)),
    "resnext101 conv4 1024ch 14 g32": ((1, 1024, 14, 14), (1024, 32, 3, 3), dict(padding=1, groups=32)),
    "shufflenet 1x1 240->240 28 g3": ((1, 240, 28, 28), (240, 80, 1, 1), dict(groups=3)),
    "shufflenet 1x1 480->480 14 g3": ((1, 480, 14, 14), (480, 160, 1, 1), dict(groups=3)),
    "shufflenet 1x1 960->960 7 g3": ((1, 960, 7, 7), (960, 320, 1, 1), dict(groups=3)),
    "shufflenet 1x1 384->384 28 g8": ((1, 384, 28, 28), (384, 48, 1, 1), dict(groups=8)),
    "grouped 1x1 256->512 28 g2": ((1, 256, 28, 28), (512, 128, 1, 1), dict(groups=2)),
    "grouped 3x3 128ch 28 g8": ((1, 128, 28, 28), (128, 16, 3, 3), dict(padding=1, groups=8)),
}  # fmt: skip

ONE_D = {
    "wav2vec k10 s5 1->512 L16000": ((1, 1, 16000), (512, 1, 10), dict(stride=5)),
    "wav2vec k3 s2 512 L3199": ((1, 512, 3199), (512, 512, 3), dict(stride=2)),
    "wav2vec k3 s2 512 L1599": ((1, 512, 1599), (512, 512, 3), dict(stride=2)),
    "wav2vec k3 s2 512 L799": ((1, 512, 799), (512, 512, 3), dict(stride=2)),
    "wav2vec k2 s2 512 L99": ((1, 512, 99), (512, 512, 2), dict(stride=2)),
    "audio k5 256 L4096": ((1, 256, 4096), (256, 256, 5), dict(padding=2)),
    "tcn k3 d4 256 L1024": ((1, 256, 1024), (256, 256, 3), dict(padding=4, dilation=4)),
    "k3 512 L800": ((1, 512, 800), (512, 512, 3), dict(padding=1)),
    "k5 256 L800": ((1, 256, 800), (256, 256, 5), dict(padding=2)),
    "k3 128 L500": ((1, 128, 500), (128, 128, 3), dict(padding=1)),
    "k3 64 L16000": ((1, 64, 16000), (64, 64, 3), dict(padding=1)),
    "causal k2 d8 64 L16000": ((1, 64, 16000), (64, 64, 2), dict(padding=((8, 0),), dilation=8)),
    "k3 128 L8000": ((1, 128, 8000), (128, 128, 3), dict(padding=1)),
    "k3 256 L4000": ((1, 256, 4000), (256, 256, 3), dict(padding=1)),
    "k5 96 L2048": ((1, 96, 2048), (96, 96, 5), dict(padding=2)),
    "k7 32->64 L1000": ((1, 32, 1000), (64, 32, 7), dict(padding=3)),
}  # fmt: skip


DIRECT = {"algorithm": "direct", "accumulators": 0, "threads": 0}
FORMS = ("before", "blocked", "direct")


def _forms(x_shape, w_shape, options):
    """The plan ``plan_conv`` gives the convolution now, and the kernels timed: ``before``
    (the generic direct kernel on the convolution as asked, what the plan gave grouped and
    1-D convolutions before NCHW[x]c served them), ``blocked`` (NCHW[x]c on the geometry
    the kernel runs, a 1-D one's row; None where no block fits) and ``direct`` (the
    generic direct kernel on that geometry)."""
    from convforge import knobs, shapes
    from convforge.plan import plan_conv, row_geometry

    geom = shapes.conv_geometry(x_shape, w_shape, **options)
    chosen = plan_conv(geom, "float32", constant_weight=True, tuned=False)
    asked = plan_conv(geom, "float32", constant_weight=True, tuned=False, reshape=False)
    kernel = chosen
    if geom.ndim == 1 and not chosen.reshapes:  # a long 1-D one: its row, for the record
        kernel = plan_conv(row_geometry(geom), "float32", constant_weight=True, tuned=False)
    forms = {
        "before": knobs.with_knobs(asked, DIRECT),
        "blocked": kernel if kernel.algorithm.name == "blocked" else None,
        "direct": knobs.with_knobs(kernel, DIRECT),
    }
    return chosen, {name: plan for name, plan in forms.items() if plan is not None}


def main() -> None:
    from benchmarks import kernel_ab as ab

    parser = ab.ab_parser(__doc__, rounds=5)
    parser.add_argument("--only", help="substring of the workload names")
    args = parser.parse_args()

    from convforge.knob_tuning import scheduled_module

    target, runner = ab.host_runner()
    rows = []
    for name, (x_shape, w_shape, options) in {**GROUPED, **ONE_D}.items():
        if args.only and args.only not in name:
            continue
        chosen, forms = _forms(x_shape, w_shape, options)
        mods = {form: scheduled_module(plan) for form, plan in forms.items()}
        times = ab.time_interleaved(runner, mods, args.rounds)
        ms, ranges = ab.summary(times)
        if chosen.algorithm.name == "blocked":
            now = "blocked"
        else:  # the direct kernel, over the kernel geometry or (not reshaped) as asked
            now = "direct" if chosen.reshapes else "before"
        row = {
            "name": name, "x": x_shape, "w": w_shape, "options": options,
            "plan": chosen.algorithm.name + (" (row)" if chosen.reshapes else ""),
            "ms": ms, "range_ms": ranges,
            "now_over_before": ms[now] / ms["before"],
        }  # fmt: skip
        if "blocked" in ms:
            row["blocked_over_before"] = ms["blocked"] / ms["before"]
        rows.append(row)
        cells = "  ".join(f"{f} {ms[f]:8.3f}" if f in ms else f"{f} {'-':>8s}" for f in FORMS)
        ratio = row.get("blocked_over_before")
        print(
            f"{name:40s} plan {row['plan']:14s} {cells} ms  now/before "
            f"{row['now_over_before']:.2f}x  blocked/before "
            f"{'-' if ratio is None else f'{ratio:.2f}x'}",
            flush=True,
        )
    if args.json:
        ab.write_results(args.json, target, args.rounds, rows)


if __name__ == "__main__":
    main()
