"""Start-up of a model whose library is in the persistent cache (issue #17), end to end.

    python benchmarks/bench_cached_start.py [--model resnet15|resnet50|zoo_NAME] [--runs 3]

Writes the model as ONNX, compiles it once in a new process (filling a temporary cache
folder), then runs ``--runs`` new processes that each do ``import convforge``,
``cf.compile_model(path)`` (a cache hit) and one call, and prints each one's wall times
(process start to the first output, and to its exit) with its parts: imports (numpy,
convforge), the cache lookup (hashing the model, verifying and loading the library: the
quick index's, on TVM's runtime alone, or the usual one with TVM), the first call.
``--compare CHECKOUT`` alternates those processes with another checkout's (its own cache
entry), for a before/after measured interleaved.
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
imported = time.perf_counter()
model = cf.compile_model(sys.argv[1])
compiled = time.perf_counter()
rng = np.random.default_rng(0)  # inputs made here: no helper module that may import TVM
model(*[rng.standard_normal(model.compiled_shapes[i.name]).astype(i.dtype) for i in model.inputs])
done = time.perf_counter()
print(json.dumps({"imports": imported - began, "compile_model": compiled - imported,
                  "first call": done - compiled, "output at": time.time(),
                  "tvm imported": "tvm" in sys.modules,
                  "phases": model.compile_profile.phases}), flush=True)
"""


def _start(checkout: str, path: str, env: dict) -> dict:
    """One cached start of ``checkout``'s convforge: the child's parts, and the wall times
    from process start to its output and to its exit (measured here)."""
    started = time.time()
    done = subprocess.run([sys.executable, "-c", _CHILD, path], check=True, text=True,
                          capture_output=True, env={**env, "PYTHONPATH": checkout},
                          cwd=os.path.dirname(path))  # fmt: skip
    ended = time.time()
    parts = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(parts["phases"]) == {"cache lookup"}, parts["phases"]
    parts["to output"] = parts.pop("output at") - started
    parts["to exit"] = ended - started
    parts["load"] = os.getloadavg()[0]
    return parts


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, ROOT)
    from benchmarks.bench_compile import MODEL_NAMES, build_model, zoo_names

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*MODEL_NAMES, *zoo_names()], default="resnet15")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--compare", metavar="CHECKOUT",
        help="another checkout of convforge (e.g. a worktree of an older commit): its cached "
             "starts alternate with this one's, runs interleaved",
    )  # fmt: skip
    parser.add_argument("--json", help="write every run here (JSON)")
    args = parser.parse_args(argv)
    import onnx

    checkouts = {"this": ROOT}
    if args.compare:
        checkouts["compare"] = os.path.abspath(args.compare)
    runs: dict[str, list[dict]] = {name: [] for name in checkouts}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx.save(build_model(args.model), path)
        env = {**os.environ, "CONVFORGE_CACHE_DIR": os.path.join(tmp, "cache"),
               "CONVFORGE_CACHE": "1"}  # fmt: skip
        for name, checkout in checkouts.items():
            started = time.perf_counter()
            # run in the model's folder: the current folder comes first on sys.path
            subprocess.run([sys.executable, "-c", _CHILD, path], check=True, cwd=tmp,
                           capture_output=True, env={**env, "PYTHONPATH": checkout})  # fmt: skip
            print(f"{args.model} ({name}, {checkout}): cold (compile + store + first call) "
                  f"{time.perf_counter() - started:.2f} s")  # fmt: skip
        for _ in range(args.runs):
            for name, checkout in checkouts.items():
                parts = _start(checkout, path, env)
                runs[name].append(parts)
                print(
                    f"  {name}: cached start {parts['to output']:.2f} s to the first output, "
                    f"{parts['to exit']:.2f} s to exit: imports {parts['imports']:.2f} s, "
                    f"compile_model {parts['compile_model']:.2f} s, first call "
                    f"{parts['first call']:.2f} s, TVM imported: {parts['tvm imported']} "
                    f"(load {parts['load']:.2f})"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "checkouts": checkouts, "runs": runs,
                       "cpus": os.cpu_count()}, f, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
