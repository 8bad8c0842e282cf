"""Start-up of a model whose library is in the persistent cache (issue #17), end to end.

    python benchmarks/bench_cached_start.py [--model resnet15|resnet50] [--runs 3]

Writes the model as ONNX, compiles it once in a new process (filling a temporary cache
folder), then runs ``--runs`` new processes that each do ``import convforge``,
``cf.compile_model(path)`` (a cache hit) and one call, and prints each one's wall time
(process start to output) with its parts: interpreter + imports, the cache lookup
(hashing the model, verifying and loading the library), the first call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = """
import time
began = time.perf_counter()
import json, sys
import numpy as np
import convforge as cf
cf.compile_model  # imports TVM as convforge does (convforge.tvm_import), not onnx
imported = time.perf_counter()
model = cf.compile_model(sys.argv[1])
compiled = time.perf_counter()
from convforge.export.model import random_inputs
model(*random_inputs(model))
done = time.perf_counter()
print(json.dumps({"imports": imported - began, "compile_model": compiled - imported,
                  "first call": done - compiled,
                  "phases": model.compile_profile.phases}))
"""


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, ROOT)
    from benchmarks.bench_compile import MODEL_NAMES, build_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODEL_NAMES, default="resnet15")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx.save(build_model(args.model), path)
        env = {**os.environ, "CONVFORGE_CACHE_DIR": os.path.join(tmp, "cache"),
               "CONVFORGE_CACHE": "1", "PYTHONPATH": ROOT}  # fmt: skip
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", _CHILD, path], env=env, check=True,
                       capture_output=True)  # fmt: skip
        print(f"{args.model}: cold (compile + store + first call) "
              f"{time.perf_counter() - started:.2f} s")  # fmt: skip
        for _ in range(args.runs):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", _CHILD, path], env=env, check=True,
                                  capture_output=True, text=True)  # fmt: skip
            wall = time.perf_counter() - started
            parts = json.loads(done.stdout.strip().splitlines()[-1])
            assert set(parts["phases"]) == {"cache lookup"}, parts["phases"]
            print(
                f"  cached start {wall:.2f} s end to end: imports {parts['imports']:.2f} s, "
                f"compile_model {parts['compile_model']:.2f} s, first call "
                f"{parts['first call']:.2f} s (load {os.getloadavg()[0]:.2f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
