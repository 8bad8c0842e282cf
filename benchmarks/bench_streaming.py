"""Per-step latency of streaming generation vs recomputing the receptive field each step.

Stack: WaveNet-style, dilations 1, 2, ..., 512 repeated 3 times (30 layers), kernel 2,
64 residual and 64 skip channels, batch 1, float32; receptive field 3070 samples.

Rows (median seconds per generated sample):
- convforge stream step: ``StreamingCausalStack.step`` on one sample, end to end from
  Python (numpy in, numpy out), states double-buffered on the device;
- onnxruntime stream step: the exported stateful model (Concat + Conv + Slice per layer),
  states fed back each step, plain ``run`` and IO binding, 1 and 2 threads (best reported
  as the comparison point);
- convforge / onnxruntime recompute: the full-sequence causal stack run on the last
  receptive-field samples for each new sample (the output's last column is the new sample);
  convforge's window is the field rounded up to a multiple of 32 samples (3072: whole
  vector tiles for its default schedule; the extra oldest samples do not change the output).

Before timing, the streamed outputs are checked against the recomputed ones (and against
onnxruntime's stateful model). Prints a table; writes JSON (atomically) to ``--out``.

    python benchmarks/bench_streaming.py [--steps 200] [--repeats 7] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import convforge as cf
from convforge.export import stack_model
from convforge.export.check import quiet_thread_pools, session
from convforge.filemode import atomic_write

SPEC = cf.StackSpec(
    in_channels=1,
    channels=64,
    skip_channels=64,
    out_channels=1,
    dilations=tuple(2**i for i in range(10)) * 3,
    kernel_size=2,
)


def per_call(fn, calls: int, repeats: int) -> list[float]:
    """``repeats`` measurements of seconds per call, each over ``calls`` calls."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return times


def ort_step_runner(sess, x: np.ndarray, binding: bool):
    """One onnxruntime stream step per call, feeding each step's present states back."""
    import onnxruntime as ort

    outputs = [o.name for o in sess.get_outputs()]
    states = {n: np.zeros(shape, np.float32) for n, shape in SPEC.state_shapes(1).items()}
    if not binding:
        feeds = {"x": x, **states}

        def step():
            y, *present = sess.run(None, feeds)
            for i, value in enumerate(present):
                feeds[f"past_state.{i}"] = value
            return y

        return step
    # IO binding with two OrtValue sets: step reads one and writes the other, then swap.
    sets = [
        {n: ort.OrtValue.ortvalue_from_numpy(np.zeros_like(v)) for n, v in states.items()}
        for _ in range(2)
    ]
    x_value = ort.OrtValue.ortvalue_from_numpy(x)
    y_value = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, SPEC.out_channels, 1), np.float32))
    bindings = []
    for current in (0, 1):
        io = sess.io_binding()
        io.bind_ortvalue_input("x", x_value)
        for name, value in sets[current].items():
            io.bind_ortvalue_input(name, value)
        io.bind_ortvalue_output(outputs[0], y_value)
        for name in outputs[1:]:
            io.bind_ortvalue_output(name, sets[1 - current][name.replace("present", "past")])
        bindings.append(io)
    parity = [0]

    def step():
        sess.run_with_iobinding(bindings[parity[0]])
        parity[0] ^= 1
        return y_value.numpy()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per row")
    parser.add_argument("--recompute-repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/streaming.json")
    args = parser.parse_args()
    quiet_thread_pools()  # idle workers must not take the cores of the runtime being timed

    field = SPEC.receptive_field
    span = -(-field // 32) * 32  # convforge's recompute window
    weights = SPEC.random_weights(seed=0)
    rng = np.random.default_rng(1)
    sample = rng.standard_normal((1, 1, 1)).astype(np.float32)

    stack = cf.StreamingCausalStack(SPEC, weights)
    start = time.perf_counter()
    stack.kernel(1)
    compile_step_s = time.perf_counter() - start
    start = time.perf_counter()
    stack.kernel(span)
    compile_window_s = time.perf_counter() - start

    # Correctness first. Stream field + 40 samples; from t = field - 1 on, the output at t
    # depends only on the last `field` inputs, so recomputing a window of `span` must agree.
    total = span + 40
    signal = rng.standard_normal((1, 1, total)).astype(np.float32)
    streamed = stack.run(signal, [1] * total)
    window = cf.StreamingCausalStack(SPEC, weights)
    for t in (span - 1, span + 17, total - 1):
        window.reset()
        recomputed = window.step(np.ascontiguousarray(signal[:, :, t + 1 - span : t + 1]))
        agreement = cf.export.compare(streamed[:, :, t], recomputed[:, :, -1])
        assert agreement.ok, (t, agreement)
    # ... and onnxruntime's stateful model, step by step, over the first 40 samples.
    stateful = stack_model(SPEC, weights)
    sess_check = session(stateful, threads=1)
    names = [o.name for o in sess_check.get_outputs()]
    states = {n: np.zeros(s, np.float32) for n, s in SPEC.state_shapes(1).items()}
    ys = []
    for t in range(40):
        y, *present = sess_check.run(None, {"x": signal[:, :, t : t + 1], **states})
        states = {n.replace("present", "past"): v for n, v in zip(names[1:], present)}
        ys.append(y)
    agreement = cf.export.compare(streamed[:, :, :40], np.concatenate(ys, 2))
    assert agreement.ok, agreement

    rows: dict[str, list[float]] = {}
    stack.reset()
    rows["convforge stream step"] = per_call(lambda: stack.step(sample), args.steps, args.repeats)
    for threads in (1, 2):
        sess = session(stateful, threads=threads, spinning=False)
        for binding in (False, True):
            label = f"onnxruntime stream step ({threads}t{', IO binding' if binding else ''})"
            rows[label] = per_call(ort_step_runner(sess, sample, binding), args.steps, args.repeats)
    history = rng.standard_normal((1, 1, span)).astype(np.float32)

    def recompute_convforge():
        window.reset()
        return window.step(history)[:, :, -1]

    rows["convforge recompute window"] = per_call(recompute_convforge, 1, args.recompute_repeats)
    full = stack_model(SPEC, weights, stateful=False)
    for threads in (1, 2):
        sess = session(full, threads=threads, spinning=False)
        rows[f"onnxruntime recompute window ({threads}t)"] = per_call(
            lambda sess=sess: sess.run(None, {"x": history[:, :, -field:]}),
            1,
            args.recompute_repeats,
        )

    medians = {label: float(np.median(times)) for label, times in rows.items()}
    ours = medians["convforge stream step"]
    ort_best = min(v for k, v in medians.items() if k.startswith("onnxruntime stream"))
    recompute_best = min(v for k, v in medians.items() if "recompute" in k)
    summary = {
        "speedup_vs_recompute_convforge": medians["convforge recompute window"] / ours,
        "speedup_vs_recompute_best": recompute_best / ours,
        "speedup_vs_onnxruntime_stream_best": ort_best / ours,
        "target_50x_vs_recompute_met": medians["convforge recompute window"] / ours >= 50,
        "target_not_slower_than_onnxruntime_met": ours <= ort_best,
    }

    width = max(map(len, medians))
    print(f"stack: {SPEC.layers} layers, dilations 1..512 x3, k=2, 64 channels, RF {field}")
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")
    print(f"compile: step {compile_step_s:.1f} s, window {compile_window_s:.1f} s")
    print(f"{'row':<{width}}  {'median per step':>16}  {'vs convforge stream':>20}")
    for label, value in medians.items():
        print(f"{label:<{width}}  {value * 1e6:13.1f} us  {value / ours:19.1f}x")
    for key, value in summary.items():
        print(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")

    result = {
        "benchmark": "streaming causal stack, per-step latency",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "cpu": str(cf.host_target().attrs["mcpu"]),
            "load_average_1_5_15min": list(os.getloadavg()),
        },
        "stack": {
            "layers": SPEC.layers,
            "dilations": list(SPEC.dilations),
            "kernel": SPEC.kernel_size,
            "channels": SPEC.channels,
            "skip_channels": SPEC.skip_channels,
            "receptive_field": field,
        },
        "steps_per_block": args.steps,
        "compile_seconds": {"step": compile_step_s, "window": compile_window_s},
        "median_seconds": medians,
        "all_seconds": rows,
        "summary": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(result, indent=2), suffix=".json")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
