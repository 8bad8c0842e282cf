"""Tune the benchmark suite's kernels with MetaSchedule into a tuning database.

    python benchmarks/tune_suite.py --db DIR [--trials 32] [--only NAME,...]

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="tuning database directory")
    parser.add_argument("--trials", type=int, default=32, help="measured candidates per workload")
    parser.add_argument("--only", help="comma-separated workload names (substrings match)")
    args = parser.parse_args()
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
