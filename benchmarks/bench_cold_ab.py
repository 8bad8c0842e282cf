"""Cold compile to the first output, two checkouts alternated (issue #17 before/after).

    python benchmarks/bench_cold_ab.py BEFORE_DIR AFTER_DIR [--model resnet50|resnet15|zoo_NAME]
        [--buckets 1|B1,B2,...|none] [--runs 2] [--out FILE]

Each run is a new process for one checkout (alternating before, after, after, before, ...),
with a fresh empty cache folder and profiling off, as a user's first compile: it times the
imports (convforge, then TVM as ``cf.compile_model`` brings it), ``cf.compile_model`` (a
cache miss: compile and store) and the first call (the VM, then one run), and checks the
output against onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

_CHILD = """
import sys, time, json
sys.path.insert(0, sys.argv[1])
began = time.perf_counter()
import numpy as np
import convforge as cf
cf.compile_model
imported = time.perf_counter()
model = cf.compile_model(sys.argv[2], batch_buckets=json.loads(sys.argv[3]))
compiled = time.perf_counter()
from convforge.export.model import random_inputs
inputs = random_inputs(model)
out = model(*inputs)[0]
done = time.perf_counter()
import onnx, onnxruntime as ort
sess = ort.InferenceSession(sys.argv[2])
names = [i.name for i in sess.get_inputs()]
expected = sess.run(None, dict(zip(names, inputs)))[0]
print(json.dumps({"imports": imported - began, "compile_model": compiled - imported,
                  "first call": done - compiled, "to first output": done - began,
                  "max_abs_error": float(np.abs(out - expected).max()),
                  "convforge": cf.__file__}))
"""


def main(argv: list[str] | None = None) -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    from benchmarks.bench_compile import MODEL_NAMES, build_model, zoo_names

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--model", choices=[*MODEL_NAMES, *zoo_names()], default="resnet50")
    parser.add_argument(
        "--buckets", default="1",
        help="batch buckets, comma-separated, or 'none' (a model without a symbolic batch)",
    )  # fmt: skip
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    import onnx

    none = args.buckets.strip().lower() == "none"
    buckets = json.dumps(None if none else [int(b) for b in args.buckets.split(",")])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx.save(build_model(args.model), path)
        order = [("before", args.before), ("after", args.after)]
        for run in range(args.runs):
            for label, tree in order if run % 2 == 0 else order[::-1]:
                cache = tempfile.mkdtemp(dir=tmp)
                env = {**os.environ, "CONVFORGE_CACHE_DIR": cache, "CONVFORGE_CACHE": "1"}
                env.pop("CONVFORGE_PROFILE_COMPILE", None)
                out = subprocess.run(
                    [sys.executable, "-c", _CHILD, os.path.abspath(tree), path, buckets],
                    env=env, check=True, capture_output=True, text=True,
                )  # fmt: skip
                row = {"checkout": label, **json.loads(out.stdout.strip().splitlines()[-1])}
                row["loadavg"] = os.getloadavg()[0]
                rows.append(row)
                print(f"{label:6} imports {row['imports']:5.2f} s  compile_model "
                      f"{row['compile_model']:6.2f} s  first call {row['first call']:5.2f} s  "
                      f"to first output {row['to first output']:6.2f} s  max error "
                      f"{row['max_abs_error']:.1e}  load {row['loadavg']:.2f}", flush=True)  # fmt: skip
    if args.out:
        from convforge.filemode import atomic_write

        atomic_write(args.out, json.dumps({"model": args.model, "buckets": buckets,
                                           "rows": rows}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
