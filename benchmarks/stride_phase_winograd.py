"""Stride-phase Winograd against the direct (blocked) convolution on this machine.

    python -m benchmarks.stride_phase_winograd [--rounds 9] [--number 10] [--threads 2]
        [--json OUT]

The evidence for ``TargetProfile.stride_phase_winograd``
(benchmarks/results/thresholds.md#stride-phase-winograd). For each dense 2-D stride-2
convolution of the workload registry with square undilated kernels (where the stride-phase
plan applies) and more stride-2 shapes (ResNet-50's, stems, 4x4 / 5x5 / 7x7 kernels): ``cf.prepare_conv`` with
``algorithm='winograd'`` (F(4x4, r x r) over the four stride phases, weight transformed
once) and with ``algorithm='direct'`` (what 'auto' takes without it, weight packed once),
both checked against onnxruntime, then their kernels timed interleaved (one sample of each
per round, alternating which goes first), medians; ratio = Winograd / direct (above 1:
Winograd is slower).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


def _shapes():
    from convforge import workloads as registry

    seen, out = set(), []
    extra = [
        registry._conv("r50_3x3_s2_128_56", 128, 128, 56, 3, stride=2, padding=1, sets=()),
        registry._conv("stem_3x3_s2_3_32_224", 3, 32, 224, 3, stride=2, padding=1, sets=()),
        registry._conv("k4_s2_64_64_56", 64, 64, 56, 4, stride=2, padding=1, sets=()),
        registry._conv("k5_s2_16_32_112", 16, 32, 112, 5, stride=2, padding=2, sets=()),
        registry._conv("k5_s2_3_32_224", 3, 32, 224, 5, stride=2, padding=2, sets=()),
        registry._conv("k7_s2_16_64_112", 16, 64, 112, 7, stride=2, padding=3, sets=()),
    ]
    for wl in (*registry.REGISTRY, *extra):
        p = wl.params
        if wl.op != "conv" or len(wl.shapes["x"]) != 4 or p.get("groups", 1) != 1:
            continue
        if p.get("stride") != 2 or p.get("dilation", 1) != 1 or wl.dtype != "float32":
            continue
        key = (tuple(wl.shapes["x"]), tuple(wl.shapes["w"]), p.get("padding"))
        if key not in seen:
            seen.add(key)
            out.append(wl)
    return out


def _timer(op, x):
    import tvm

    kernel = op.kernel
    args = [op.plan.prepare_x(x), *op.constants]
    shaped = [a.reshape(s) for a, s in zip(args, kernel.input_shapes)]
    tensors = [tvm.runtime.tensor(np.ascontiguousarray(a), kernel.device) for a in shaped]
    tensors += [
        tvm.runtime.tensor(np.empty(s, d), kernel.device)
        for s, d in zip(kernel.output_shapes, kernel.output_dtypes)
    ]
    return lambda: kernel.function(*tensors)


def _sample(run, number: int) -> float:
    run()
    start = time.perf_counter()
    for _ in range(number):
        run()
    return (time.perf_counter() - start) / number


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--number", type=int, default=10, help="calls per sample")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    from convforge.export import compare, run_onnxruntime
    from convforge.export.check import quiet_thread_pools
    from convforge.targets import host_target

    quiet_thread_pools()
    load_before = os.getloadavg()
    rows = []
    for wl in _shapes():
        arrays = wl.arrays()
        x = arrays["x"]
        (expected,) = run_onnxruntime(wl.spec.onnx(wl, arrays), {"x": x}, args.threads)
        ops, timers = {}, {}
        for algorithm in ("winograd", "direct"):
            try:
                ops[algorithm] = _prepare(wl, arrays, algorithm)
            except ValueError as err:  # Winograd does not apply to this shape
                print(f"{wl.name}: {algorithm}: {err}")
                break
            agreement = compare(ops[algorithm](x), expected)
            if not agreement.ok:
                raise SystemExit(f"{wl.name} {algorithm} disagrees with onnxruntime: {agreement}")
            timers[algorithm] = _timer(ops[algorithm], x)
        if len(timers) < 2:
            continue
        samples = {name: [] for name in timers}
        order = list(timers)
        for r in range(args.rounds):
            for name in order[r % 2 :] + order[: r % 2]:
                samples[name].append(_sample(timers[name], args.number))
        medians = {name: statistics.median(s) for name, s in samples.items()}
        ratio = medians["winograd"] / medians["direct"]
        rows.append(
            {
                "workload": wl.name,
                "x": wl.shapes["x"],
                "w": wl.shapes["w"],
                "direct_plan": ops["direct"].plan.label,
                "winograd_plan": ops["winograd"].plan.label,
                **{f"{n}_ms": 1e3 * m for n, m in medians.items()},
                **{f"{n}_samples_ms": [1e3 * t for t in s] for n, s in samples.items()},
                "winograd_over_direct": ratio,
            }
        )
        print(
            f"{wl.name:28s} winograd {1e3 * medians['winograd']:8.3f} ms  direct "
            f"{1e3 * medians['direct']:8.3f} ms  ratio {ratio:5.2f}",
            flush=True,
        )
    load_after = os.getloadavg()
    print(f"load {load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} cores")
    if args.json:
        from convforge.filemode import atomic_write

        report = {
            "cpu": str(host_target().attrs["mcpu"]),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "rounds": args.rounds,
            "number": args.number,
            "rows": rows,
        }
        atomic_write(args.json, json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


def _prepare(wl, arrays, algorithm: str):
    import convforge as cf

    return cf.prepare_conv(
        arrays["w"], arrays.get("bias"), x_shape=arrays["x"].shape, algorithm=algorithm,
        **wl.params,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
