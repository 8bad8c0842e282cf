"""What the non-finite input check costs the suite's Winograd convolutions.

    python -m benchmarks.nonfinite_cost [--rounds 7] [--json OUT]

A Winograd call first checks its input for a NaN or an infinity (one vectorized pass over
x's exponent bits, ``convforge.ops.winograd.nonfinite_flag``) and runs the direct kernel
where it finds one. Per Winograd workload of ``benchmarks/workloads.py``, interleaved in
one process, medians of ``--rounds`` rounds:

- numpy API (``cf.prepare_conv``): the call without its check (``check=None``, as
  before) and with it (``op(x)``, after);
- compiled model (``cf.compile_model`` of the ONNX Conv): the Winograd kernel alone, as
  compiled before (the lowering's ``_finite_or_direct`` replaced by a plain call), and the
  model with the check and the ``relax.If`` (after);
- the check kernel and the Winograd kernel alone (TVM's time_evaluator), whose ratio is
  the check's cost with the least noise on a shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from unittest import mock

import numpy as np

import convforge as cf
from benchmarks.workloads import SUITE
from convforge.export import lowering
from convforge.export.check import quiet_thread_pools


def _winograd_only(ctx, node, x, winograd, direct):
    """``lowering._finite_or_direct`` as it was before: the Winograd kernel, unchecked."""
    return ctx.emit_kernel(node, "Conv", winograd)


def _median_call(fn, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=20, help="calls per round")
    parser.add_argument("--json")
    args = parser.parse_args()
    quiet_thread_pools()
    rows = []
    for wl in SUITE:
        if wl.op != "conv":
            continue
        arrays = wl.arrays()
        op = wl.spec.prepared(wl, arrays)
        if op.algorithm != "winograd":
            continue
        x = arrays["x"]
        # PreparedConv as before: no check
        unchecked = dataclasses.replace(op, direct=None, check=None)
        model = wl.spec.onnx(wl, arrays)
        with mock.patch.object(lowering, "_finite_or_direct", _winograd_only):
            before_model = cf.compile_model(model)
        after_model = cf.compile_model(model)
        np.testing.assert_allclose(after_model(x)[0], before_model(x)[0], rtol=0, atol=0)
        names = ("api_before", "api_after", "model_before", "model_after", "check", "kernel")
        timings = {k: [] for k in names}
        xk = x.reshape(op.kernel.input_shapes[0])
        for _ in range(args.rounds):
            # the kernels alone (TVM's time_evaluator: no Python, a warm thread pool)
            timings["check"].append(float(np.median(op.check.time(x.reshape(-1), number=20))))
            timings["kernel"].append(float(np.median(op.kernel.time(xk, *op.constants))))
            timings["api_before"].append(_median_call(functools.partial(unchecked, x), args.number))
            timings["api_after"].append(_median_call(functools.partial(op, x), args.number))
            timings["model_before"].append(before_model.time(x, number=args.number, repeat=1))
            timings["model_after"].append(after_model.time(x, number=args.number, repeat=1))
        med = {k: float(np.median(v)) for k, v in timings.items()}
        row = {"workload": wl.name, **{k: v * 1e3 for k, v in med.items()}}
        row["api_ratio"] = med["api_after"] / med["api_before"]
        row["model_ratio"] = med["model_after"] / med["model_before"]
        row["check_share"] = med["check"] / med["kernel"]
        rows.append(row)
        print(
            f"{wl.name:<22} api {row['api_before']:.3f} -> {row['api_after']:.3f} ms "
            f"({row['api_ratio']:.3f}x)  model {row['model_before']:.3f} -> "
            f"{row['model_after']:.3f} ms ({row['model_ratio']:.3f}x)  check "
            f"{row['check']:.4f} ms = {100 * row['check_share']:.1f}% of the kernel's "
            f"{row['kernel']:.3f} ms",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
