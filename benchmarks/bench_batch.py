"""Batch scaling of a dynamic-batch library (issue #17): one library with batch buckets
against a library compiled for one batch only and against batch-1 calls.

    python benchmarks/bench_batch.py [--model resnet15|resnet50] [--batch 8] [--json OUT]

Compiles (persistent cache off) three libraries of the same model: the default batch
buckets (``compile_model``'s, 1, 2, 4, 8), ``--batch`` only (``input_shapes``), and one
bucket of 1 (a batch runs as batch-1 calls, what 0.1.7 did); then times a batch of
``--batch`` (and 3 and 1) through each, ``--rounds`` rounds of 3 calls, interleaved, and
prints the median and minimum of each. Set ``TVM_NUM_THREADS`` to choose the threads; the
load average is printed with the table (the numbers mean little on a loaded machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["CONVFORGE_CACHE"] = "0"


def main(argv: list[str] | None = None) -> int:
    from benchmarks.bench_compile import MODEL_NAMES, build_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODEL_NAMES, default="resnet15")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="write the table here (JSON)")
    args = parser.parse_args(argv)

    import numpy as np

    import convforge as cf

    os.environ.pop("CONVFORGE_PROFILE_COMPILE", None)  # set by importing bench_compile
    model = build_model(args.model)
    name = model.graph.input[0].name
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    builds = {
        "buckets 1,2,4,8": {"batch_buckets": (1, 2, 4, 8)},
        f"batch {args.batch} only": {"input_shapes": {name: (args.batch, *shape[1:])}},
        "bucket 1 (batch-1 calls)": {"batch_buckets": (1,)},
    }
    models, compile_seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, options in builds.items():
            started = time.perf_counter()
            compiled = cf.compile_model(model, **options)
            path = os.path.join(tmp, f"{len(models)}.so")
            compiled.export_library(path)
            compile_seconds[label] = time.perf_counter() - started
            models[label] = cf.load(path)
    x = np.random.default_rng(0).standard_normal((args.batch, *shape[1:])).astype(np.float32)
    cases = [(label, args.batch) for label in builds]
    cases += [(label, b) for b in (3, 1) for label in builds if "only" not in label]
    samples: dict[tuple, list[float]] = {case: [] for case in cases}
    for _ in range(args.rounds):
        for label, batch in cases:
            run = models[label]
            run(x[:batch])
            for _ in range(3):
                started = time.perf_counter()
                run(x[:batch])
                samples[(label, batch)].append(time.perf_counter() - started)
    load = os.getloadavg()[0]
    threads = os.environ.get("TVM_NUM_THREADS", "default")
    print(f"\n{args.model}, TVM_NUM_THREADS={threads}, load average {load:.2f}")
    print(
        f"  {'library':<26} {'batch':>5} {'median ms':>10} {'min ms':>8} {'compile+export s':>17}"
    )
    rows = []
    for (label, batch), seconds in samples.items():
        median, low = 1e3 * statistics.median(seconds), 1e3 * min(seconds)
        rows.append({"library": label, "batch": batch, "median_ms": median, "min_ms": low,
                     "compile_export_s": compile_seconds[label]})  # fmt: skip
        print(f"  {label:<26} {batch:>5} {median:10.1f} {low:8.1f} {compile_seconds[label]:17.1f}")
    if args.json:
        from convforge.filemode import atomic_write

        data = {"model": args.model, "threads": threads, "loadavg": load, "rows": rows}
        atomic_write(args.json, json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
