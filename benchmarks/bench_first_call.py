"""The numpy API's first call of a cached shape in a new process (issue #17: <= 0.2 s).

    python benchmarks/bench_first_call.py [--runs 5] [--compare CHECKOUT] [--json FILE]

For each workload (the suite's 3x3 64->64 56x56, its 1x1 256->64 56x56, a 3x3 depthwise
144 channels 56x56 stride 2), one process fills a temporary kernel cache folder, then
``--runs`` new processes each ``import convforge`` and time ``cf.conv`` twice with one
weight (the first call, whose kernel is on disk; the second, which packs the weight and
runs its packed kernel, also on disk), and whether TVM was imported. ``--compare
CHECKOUT`` alternates those processes with another checkout's (its own cache folder):
a before/after measured interleaved on a shared machine. Prints medians and ranges.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: name -> (x shape, w shape, stride, padding, groups)
WORKLOADS = {
    "3x3 64->64 56x56": ((1, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1),
    "1x1 256->64 56x56": ((1, 256, 56, 56), (64, 256, 1, 1), 1, 0, 1),
    "dw 3x3 144 56x56 s2": ((1, 144, 56, 56), (144, 1, 3, 3), 2, 1, 144),
}

_CHILD = """
import time
began = time.perf_counter()
import json, sys
import numpy as np
import convforge as cf
imported = time.perf_counter()
xs, ws, stride, padding, groups = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
x = rng.standard_normal(xs, dtype=np.float32)
w = rng.standard_normal(ws, dtype=np.float32)
start = time.perf_counter()
cf.conv(x, w, stride=stride, padding=padding, groups=groups)
first = time.perf_counter()
cf.conv(x, w, stride=stride, padding=padding, groups=groups)
second = time.perf_counter()
print(json.dumps({"import convforge": imported - began, "first call": first - start,
                  "second call": second - first, "tvm imported": "tvm" in sys.modules}))
"""


def _child(checkout: str, workload: tuple, env: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(workload)], check=True, text=True,
        capture_output=True, env={**env, "PYTHONPATH": checkout}, cwd=checkout,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load"] = os.getloadavg()[0]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--compare", metavar="CHECKOUT",
        help="another checkout of convforge: its processes alternate with this one's",
    )  # fmt: skip
    parser.add_argument("--json", help="write every run here (JSON)")
    args = parser.parse_args(argv)
    checkouts = {"this": ROOT}
    if args.compare:
        checkouts["compare"] = os.path.abspath(args.compare)
    runs: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, workload in WORKLOADS.items():
            envs = {
                c: {**os.environ, "CONVFORGE_CACHE": "1",
                    "CONVFORGE_CACHE_DIR": os.path.join(tmp, c)}
                for c in checkouts
            }  # fmt: skip
            for c, checkout in checkouts.items():
                started = time.perf_counter()
                _child(checkout, workload, envs[c])  # compiles and stores its kernels
                print(f"{name} ({c}): filled the cache in {time.perf_counter() - started:.1f} s")
            for _ in range(args.runs):
                for c, checkout in checkouts.items():
                    runs.setdefault(name, {}).setdefault(c, []).append(
                        _child(checkout, workload, envs[c])
                    )
            for c, results in runs[name].items():
                first = [r["first call"] for r in results]
                second = [r["second call"] for r in results]
                imports = [r["import convforge"] for r in results]
                print(
                    f"  {name} ({c}): first call median {statistics.median(first):.3f} s "
                    f"({min(first):.3f}-{max(first):.3f}), second {statistics.median(second):.4f}"
                    f" s, import convforge {statistics.median(imports):.3f} s, TVM imported: "
                    f"{sorted({r['tvm imported'] for r in results})}, load "
                    f"{min(r['load'] for r in results):.2f}-{max(r['load'] for r in results):.2f}"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workloads": WORKLOADS, "checkouts": checkouts, "runs": runs,
                       "cpus": os.cpu_count(), "machine": os.uname().machine}, f, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
