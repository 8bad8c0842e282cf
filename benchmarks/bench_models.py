"""Whole-model latency: convforge-compiled models against onnxruntime, in one process.

    python benchmarks/bench_models.py [--models resnet50,wavenet,...] [--rounds 7]
        [--tuning-db DIR] [--out bench-results/models.json]

For each model (the demo networks and a ResNet-50 built with onnx.helper, random weights):
compile with convforge (default schedules, or tuned records with --tuning-db), check the
outputs against onnxruntime, then time both runtimes interleaved (one convforge run, one
onnxruntime run, per round, after warm-up) so machine load hits both alike. Prints
medians and ratios (convforge / onnxruntime; targets: <= 1.5 with default schedules,
<= 1.0 with tuned records) and writes JSON atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tvm

from convforge.demo import Row, batch_one, table_header, table_line
from convforge.examples import networks
from convforge.export.check import compare, quiet_thread_pools, session
from convforge.export.check_model import make_inputs
from convforge.export.model import compile_model
from convforge.extras import require
from convforge.filemode import atomic_write
from convforge.targets import host_target

onnxruntime = require("onnxruntime", "the model benchmark", extra="check,bench")

MODELS = {
    "resnet50": lambda: networks.resnet50(),
    "classifier_a_flatten": networks.classifier_flatten,
    "classifier_b_grid": networks.classifier_grid,
    "classifier_c_conv": lambda: _static(networks.classifier_conv(), 256, 256),
    "wavenet": lambda: networks.wavenet(),
    "bytenet": lambda: networks.bytenet(),
    "decoder_transposed": lambda: networks.decoder("transposed"),
    "decoder_resize_conv": lambda: networks.decoder("resize"),
}


def _static(model, height: int, width: int):
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = height, width
    return model


def measure(name: str, rounds: int, tuning_db: str | None) -> dict:
    model = MODELS[name]()
    feeds = make_inputs(model, seed=0)
    start = time.perf_counter()
    compiled = compile_model(model, tuning_db=tuning_db, **batch_one(model))
    compile_seconds = time.perf_counter() - start
    sess = session(model, spinning=False)
    ours, theirs = compiled(**feeds), sess.run(None, feeds)
    agreement = [compare(a, e) for a, e in zip(ours, theirs)]
    args = list(feeds.values())
    ours_times, theirs_times = [], []
    for _ in range(2):  # warm-up
        compiled(*args)
        sess.run(None, feeds)
    for _ in range(rounds):
        ours_times.append(compiled.time(*args, number=1, repeat=1))
        begin = time.perf_counter()
        sess.run(None, feeds)
        theirs_times.append(time.perf_counter() - begin)
    ours_median, theirs_median = statistics.median(ours_times), statistics.median(theirs_times)
    kernels = compiled.metadata["kernels"]
    return {
        "model": name,
        "onnx_nodes": len(model.graph.node),
        "convforge_kernels": len(kernels),
        "tuned_kernels": sum(k["schedule"] == "tuned" for k in kernels),
        "compile_seconds": compile_seconds,
        "convforge_median_ms": 1e3 * ours_median,
        "onnxruntime_median_ms": 1e3 * theirs_median,
        "ratio": ours_median / theirs_median,
        "convforge_ms": [1e3 * t for t in ours_times],
        "onnxruntime_ms": [1e3 * t for t in theirs_times],
        "max_abs_error": max(a.max_abs for a in agreement),
        "agree": all(a.ok for a in agreement),
    }


def write_json(path: str, data: dict) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=2), suffix=".json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--tuning-db", default=None, help="tuning database directory")
    parser.add_argument("--out", default="bench-results/models.json", help="JSON results")
    args = parser.parse_args(argv)
    quiet_thread_pools()  # idle workers must not take the cores of the runtime being timed
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(MODELS)}")
    results = []
    print(table_header())
    for name in names:
        r = measure(name, args.rounds, args.tuning_db)
        results.append(r)
        row = Row(
            name, r["onnx_nodes"], r["compile_seconds"], r["convforge_median_ms"] / 1e3,
            r["onnxruntime_median_ms"] / 1e3, r["max_abs_error"], r["agree"],
        )  # fmt: skip
        print(table_line(row), flush=True)
    schedules = "tuned records" if args.tuning_db else "default schedules"
    target = 1.0 if args.tuning_db else 1.5
    worst = max(r["ratio"] for r in results)
    print(f"\nworst ratio {worst:.2f} with {schedules} (target <= {target})")
    write_json(
        args.out,
        {
            "machine": platform.processor() or platform.machine(),
            "cpu": str(host_target().attrs["mcpu"]),
            "cores": os.cpu_count(),
            "tvm": tvm.__version__,
            "onnxruntime": onnxruntime.__version__,
            "schedules": schedules,
            "rounds": args.rounds,
            "results": results,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
