"""LLVM -O1 against -O3 for convforge's kernels in compiled models: compile time and speed.

    python benchmarks/bench_opt_level.py [--models resnet50,...] [--rounds 15] [--out FILE]

The evidence for ``TargetProfile.kernel_opt_level`` (``benchmarks/results/thresholds.md
#kernel-opt-level``). Each model of ``bench_models.MODELS`` is compiled twice in this process
with the persistent cache off: with the host target as is (convforge's kernels at the
profile's level, TVM's functions at LLVM's default -O3) and with ``opt-level=3`` named in the
target (every function at -O3, as before the level was chosen). Both builds are checked
against onnxruntime, then timed interleaved (one run of each per round, after warm-up).
Prints and writes (atomically, JSON) the compile seconds and the median run times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["CONVFORGE_CACHE"] = "0"

import tvm

from benchmarks.bench_models import MODELS, write_json
from convforge.demo import batch_one
from convforge.export.check import compare, session
from convforge.export.check_model import make_inputs
from convforge.export.model import compile_model
from convforge.targets import host_target, profile


def measure(name: str, rounds: int) -> dict:
    model = MODELS[name]()
    feeds = make_inputs(model, seed=0)
    expected = session(model, spinning=False).run(None, feeds)
    host = host_target()
    o3 = tvm.target.Target({**dict(host.export()), "opt-level": 3})
    builds, compile_seconds = {}, {}
    for label, target in (("profile", host), ("O3", o3)):
        start = time.perf_counter()
        builds[label] = compile_model(model, target=target, **batch_one(model))
        compile_seconds[label] = time.perf_counter() - start
        agreement = [compare(a, e) for a, e in zip(builds[label](**feeds), expected)]
        if not all(a.ok for a in agreement):
            raise SystemExit(f"{name} ({label}) disagrees with onnxruntime: {agreement}")
    args = list(feeds.values())
    times: dict[str, list[float]] = {label: [] for label in builds}
    for _ in range(2):
        for compiled in builds.values():
            compiled(*args)
    for _ in range(rounds):
        for label, compiled in builds.items():
            times[label].append(1e3 * compiled.time(*args, number=1, repeat=1))
    medians = {label: statistics.median(v) for label, v in times.items()}
    return {
        "model": name,
        "compile_seconds": compile_seconds,
        "median_ms": medians,
        "ratio_profile_over_O3": medians["profile"] / medians["O3"],
        "compile_ratio": compile_seconds["profile"] / compile_seconds["O3"],
        "ms": times,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default="bench-results/opt_level.json")
    args = parser.parse_args(argv)
    level = profile(host_target()).kernel_opt_level
    print(f"convforge kernels at -O{level} (profile) vs every function at -O3; "
          f"load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'model':<22} {'compile s':>15} {'run ms':>15} {'run ratio':>9}")
    rows = []
    for name in args.models.split(","):
        row = measure(name, args.rounds)
        rows.append(row)
        c, m = row["compile_seconds"], row["median_ms"]
        print(f"{name:<22} {c['profile']:6.2f} / {c['O3']:6.2f} {m['profile']:6.2f} / "
              f"{m['O3']:6.2f} {row['ratio_profile_over_O3']:9.3f}", flush=True)  # fmt: skip
    ratios = [r["ratio_profile_over_O3"] for r in rows]
    geomean = statistics.geometric_mean(ratios)
    print(f"geometric mean of run ratios {geomean:.3f}; load {os.getloadavg()[0]:.2f}")
    write_json(args.out, {"kernel_opt_level": level, "rows": rows, "geomean": geomean,
                          "target": str(host_target()), "loadavg": os.getloadavg()})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
