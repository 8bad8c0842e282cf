"""Quick timing of the special-convolution CPU paths against onnxruntime (one process).

``python -m benchmarks.cpu_special [--only NAME ...] [--threads N]`` prints, per workload,
the median seconds of the convforge default (untuned) kernel and of onnxruntime (both on
N threads, default 2; onnxruntime gets the weights as initializers, so it may prepack
them), and their ratio (below 1: convforge is faster).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tvm

from convforge.build import recording_kernels
from convforge.export.check import quiet_thread_pools, session
from convforge.workloads import CPU_SPECIAL, convforge_function, select

#: The registry's ``cpu_special`` set (:mod:`convforge.workloads`), by name.
WORKLOADS = {wl.name: wl for wl in select(CPU_SPECIAL)}


#: Clock of the measurements: wall time, or process CPU time (``--cpu-time``: with one
#: thread, the time the process actually ran, robust on a machine shared with others).
CLOCK = time.perf_counter


def seconds_per_call(fn, calls: int) -> float:
    start = CLOCK()
    for _ in range(calls):
        fn()
    return (CLOCK() - start) / calls


def measure(name: str, threads: int, rounds: int = 9, budget: float = 0.05) -> tuple[float, float]:
    """Median seconds of convforge and of onnxruntime, measured in alternating rounds
    (the machine is shared: alternating exposes both to the same load)."""
    wl = WORKLOADS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(wl.shapes["x"]).astype(np.float32)
    w = rng.standard_normal(wl.shapes["w"]).astype(np.float32)
    fn, why = convforge_function(wl)
    if fn is None:
        raise ValueError(f"{name}: {why}")
    model = wl.spec.onnx(wl, {"x": x, "w": w})
    with recording_kernels() as kernels:
        fn(x, w, **wl.params)
    (kernel,) = kernels
    device = kernel.device
    args = [tvm.runtime.tensor(a.reshape(s), device) for a, s in zip((x, w), kernel.input_shapes)]
    out = tvm.runtime.tensor(np.empty(kernel.output_shapes[0], np.float32), device)
    sess = session(model, threads, spinning=False)
    feeds = {"x": x}

    def ours():
        kernel.function(*args, out)

    def theirs():
        sess.run(None, feeds)

    ours(), theirs()
    calls = [max(1, int(budget / max(seconds_per_call(f, 3), 1e-6))) for f in (ours, theirs)]
    samples = [[], []]
    for _ in range(rounds):
        for i, f in enumerate((ours, theirs)):
            samples[i].append(seconds_per_call(f, calls[i]))
    return float(np.median(samples[0])), float(np.median(samples[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=list(WORKLOADS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-time", action="store_true", help="process CPU time clock")
    args = parser.parse_args()
    quiet_thread_pools()  # idle workers must not take the cores of the runtime being timed
    global CLOCK
    CLOCK = time.process_time if args.cpu_time else time.perf_counter
    tvm.get_global_func("runtime.config_threadpool")(0, args.threads)
    ratios = []
    for name in args.only:
        ours, theirs = measure(name, args.threads)
        ratios.append(ours / theirs)
        print(
            f"{name:22s} convforge {ours * 1e3:8.3f} ms  onnxruntime {theirs * 1e3:8.3f} ms  "
            f"ratio {ours / theirs:5.2f}",
            flush=True,
        )
    print(f"geometric mean ratio {float(np.exp(np.mean(np.log(ratios)))):.2f}")


if __name__ == "__main__":
    main()
