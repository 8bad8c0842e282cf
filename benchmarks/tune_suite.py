"""Tune the benchmark suite's kernels with MetaSchedule into a tuning database.

    python benchmarks/tune_suite.py --db DIR [--trials 32] [--only NAME,...]
    python benchmarks/tune_suite.py --db DIR --knobs [--set knobs_real] [--trials 64]
        [--time-limit 150] [--out benchmarks/results/FILE.json]

``--knobs``: the knob tuner (:func:`convforge.knob_tuning.tune_knobs`) on each convolution
of the registry set ``--set`` (default ``knobs_real``: shapes from real networks that are
not in the suite) as ``cf.prepare_conv`` plans it (constant weight, bias), each within
``--time-limit`` seconds; then, in this one process, the default and tuned kernels
(``cf.prepare_conv`` without a database, and with ``--db``) timed interleaved (7 rounds,
medians: the machine's load hits both alike), one JSON line per workload, the geometric
mean of tuned/default, and everything written to ``--out``.

Each workload of :data:`benchmarks.workloads.SUITE` is run once through the numpy API (a
convolution through ``cf.prepare_conv``, as ``benchmarks.run`` times it); the PrimFunc of
the kernel it compiles is tuned (:func:`convforge.schedules.tuning.tune`,
resumable), and one JSON line per workload reports the default and best latencies as
MetaSchedule measured them and how long this run took to come within 10% of its best
(``seconds_to_within_10pct``, from the progress reports after each measured batch).
``python -m benchmarks.run --tuning-db DIR`` then times the records against the default
schedules and onnxruntime in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.workloads import SUITE, convforge_function
from convforge.build import recording_kernels
from convforge.schedules import tuning
from convforge.targets import host_target


def tune_timed(func, target, db: str, trials: int) -> tuple[tuning.TuningResult, float]:
    """Tune ``func``; also return the seconds until the best latency so far first came
    within 10% of the final best (the default schedule's first timing when no candidate
    beat its final one)."""
    start = time.perf_counter()
    curve: list[tuple[float, float]] = []  # (seconds since start, best latency so far)

    def progress(done: int, total: int, best: float) -> None:
        curve.append((time.perf_counter() - start, best))

    result = tuning.tune(func, target, db, trials, seed=0, progress=progress)
    if result.best_seconds == result.default_seconds:  # the default, known from the start
        return result, curve[0][0]  # tune reports once before searching
    within = (t for t, best in curve if best <= 1.1 * result.best_seconds)
    return result, next(within, result.elapsed_seconds)


def knob_suite(args: argparse.Namespace) -> int:
    """``--knobs``: tune each convolution's knobs, then time default vs tuned interleaved."""
    import math
    import platform
    import tempfile

    import numpy as np

    import convforge as cf
    from convforge import workloads as registry
    from convforge.knob_tuning import describe, tune_knobs
    from convforge.plan import plan_conv

    only = args.only.split(",") if args.only else None
    target = host_target()
    chosen = [w for w in registry.select(args.set) if not only or any(n in w.name for n in only)]
    rows = []
    for workload in chosen:
        row = {"workload": workload.name, "description": workload.description}
        rows.append(row)
        if workload.op != "conv":
            row["skipped"] = f"{workload.op}: no knob space (not a planned convolution)"
            print(json.dumps(row), flush=True)
            continue
        plan = plan_conv(
            workload.geometry(), workload.dtype, target, constant_weight=True,
            bias="bias" in workload.shapes, activation=workload.params.get("activation"),
            tuned=False,
        )  # fmt: skip
        start, curve = time.perf_counter(), []
        result = tune_knobs(
            plan, args.db, args.trials, seed=0, time_limit_s=args.time_limit,
            progress=lambda d, t, b, c=curve, s=start: c.append((time.perf_counter() - s, b)),
        )  # fmt: skip
        within = next((t for t, b in curve if b <= 1.1 * result.best_seconds), 0.0)
        row.update(
            plan=plan.label, space=result.space_size, trials=result.trials,
            tuning_seconds=round(result.elapsed_seconds, 1),
            seconds_to_within_10pct=round(within, 1),
            tuner_default_ms=result.default_seconds * 1e3,
            tuner_best_ms=result.best_seconds * 1e3, config=describe(result.best_config),
        )  # fmt: skip
        print(json.dumps(row), flush=True)
    # default vs tuned, interleaved, in this process
    ratios = []
    with tempfile.TemporaryDirectory(prefix="convforge-nodb-") as empty:
        for workload, row in zip(chosen, rows):
            if "skipped" in row:
                continue
            arrays = workload.arrays()
            x = arrays.pop("x")
            w = arrays.pop("w")
            ops = []
            for db in (empty, args.db):
                with tuning.use_tuning_db(db, shipped=False):
                    ops.append(
                        cf.prepare_conv(w, arrays.get("bias"), x_shape=x.shape, **workload.params)
                    )
            calls = [(op.kernel, (op.plan.prepare_x(x), *op.constants)) for op in ops]
            once = min(float(k.time(*a, number=1, repeat=3).min()) for k, a in calls)
            number = max(1, math.ceil(0.02 / max(once, 1e-7)))
            times: list[list[float]] = [[], []]
            for _ in range(7):
                for i, (kernel, a) in enumerate(calls):
                    times[i].append(float(np.median(kernel.time(*a, number=number, repeat=1))))
            default_ms, tuned_ms = (1e3 * float(np.median(t)) for t in times)
            row.update(
                default_ms=default_ms, tuned_ms=tuned_ms, ratio=tuned_ms / default_ms,
                tuned_plan=ops[1].plan.label, applied=ops[1].plan != ops[0].plan,
            )  # fmt: skip
            ratios.append(tuned_ms / default_ms)
            print(
                json.dumps({k: row[k] for k in ("workload", "default_ms", "tuned_ms", "ratio")}),
                flush=True,
            )
    geomean = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else None
    summary = {
        "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "load_before": os.getloadavg(), "trials": args.trials,
        "time_limit_s": args.time_limit, "geomean_tuned_over_default": geomean,
        "worst_ratio": max(ratios) if ratios else None, "workloads": rows,
    }  # fmt: skip
    print(
        json.dumps({"geomean_tuned_over_default": geomean, "worst_ratio": summary["worst_ratio"]}),
        flush=True,
    )
    if args.out:
        from convforge.filemode import atomic_write

        atomic_write(args.out, json.dumps(summary, indent=1))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="tuning database directory")
    parser.add_argument("--trials", type=int, default=32, help="measured candidates per workload")
    parser.add_argument("--only", help="comma-separated workload names (substrings match)")
    parser.add_argument("--knobs", action="store_true", help="the knob tuner (see above)")
    parser.add_argument("--set", default="knobs_real", help="--knobs: registry set")
    parser.add_argument("--time-limit", type=float, default=150, help="--knobs: s per workload")
    parser.add_argument("--out", help="--knobs: JSON file of the results")
    args = parser.parse_args()
    if args.knobs:
        return knob_suite(args)
    only = args.only.split(",") if args.only else None
    target = host_target()
    for workload in SUITE:
        if only and not any(name in workload.name for name in only):
            continue
        fn, why = convforge_function(workload)
        if fn is None:
            print(json.dumps({"workload": workload.name, "skipped": why}), flush=True)
            continue
        with tuning.use_tuning_db(None, shipped=False), recording_kernels() as kernels:
            if workload.spec.prepared is None:
                fn(*workload.arrays().values(), **workload.params)
            else:  # the kernel benchmarks.run times: weights packed once
                workload.spec.prepared(workload, workload.arrays())
        if len(kernels) != 1:
            why = f"{len(kernels)} kernels"
            print(json.dumps({"workload": workload.name, "skipped": why}), flush=True)
            continue
        result, within = tune_timed(kernels[0].func, target, args.db, args.trials)
        print(json.dumps({
            "workload": workload.name,
            "default_ms": result.default_seconds * 1e3,
            "best_ms": result.best_seconds * 1e3,
            "speedup": result.default_seconds / result.best_seconds,
            "trials": result.trials,
            "seconds": round(result.elapsed_seconds, 1),
            "seconds_to_within_10pct": round(within, 1),
        }), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
