"""Whole-model latency: convforge-compiled models against onnxruntime and OpenVINO, in one process.

    python benchmarks/bench_models.py [--models demo|zoo|resnet50,wavenet,...] [--rounds 7]
        [--threads 2] [--tuning-db DIR] [--out bench-results/models.json]

For each model (the demo networks and a ResNet-50 built with onnx.helper; MobileNetV2 and
the ONNX package's light zoo graphs, :func:`convforge.examples.networks.light_zoo`, all
with random weights that keep activations O(1)): compile with convforge (default
schedules, or tuned records with --tuning-db), check its outputs and OpenVINO's (when
installed: ``benchmarks/peers.py``, f32, latency hint, one stream) against onnxruntime,
then time every runtime interleaved (one run of each per round, in a rotating order,
after warm-up) on the same threads, so machine load hits all alike. Peers get the model
with its batch fixed at 1. convforge's time is TVM's time_evaluator of one run (as before),
the peers' the wall time of one call (onnxruntime's run, OpenVINO's infer with its inputs
shared). PyTorch is not a peer here: it has no ONNX importer
(onnx2torch is not available), so it is one for the operator suite only. Prints medians,
convforge / onnxruntime and convforge / the best peer, their geometric means, and writes
JSON atomically (with machine, versions and load).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tvm

from benchmarks.peers import OpenVINOModel, available, version
from convforge.demo import batch_one
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
    "mobilenet_v2": networks.mobilenet_v2,
    **{f"zoo_{name}": (lambda name=name: networks.light_zoo(name)) for name in networks.LIGHT_ZOO},
}

#: --models shortcuts.
GROUPS = {
    "demo": [n for n in MODELS if not n.startswith("zoo_") and n != "mobilenet_v2"],
    "zoo": ["mobilenet_v2", *(f"zoo_{name}" for name in networks.LIGHT_ZOO)],
}


def _batch_fixed(model, batch: int = 1):
    """A copy of ``model`` with a symbolic leading input dimension set to ``batch`` (and
    the intermediate shapes re-inferred): what the peers are given."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    initializers = {t.name for t in fixed.graph.initializer}
    for value in [*fixed.graph.input, *fixed.graph.output]:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].Clear()
            dims[0].dim_value = batch
    del fixed.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(fixed)


def _static(model, height: int, width: int):
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = height, width
    return model


def measure(name: str, rounds: int, tuning_db: str | None, threads: int, peers: list[str]) -> dict:
    model = MODELS[name]()
    feeds = make_inputs(model, seed=0)
    start = time.perf_counter()
    compiled = compile_model(model, tuning_db=tuning_db, **batch_one(model))
    compile_seconds = time.perf_counter() - start
    fixed = _batch_fixed(model)
    sess = session(fixed, threads, spinning=False)
    theirs = sess.run(None, feeds)
    args = list(feeds.values())
    runs = {  # a run returns its own time (TVM's time_evaluator: inputs bound) or None
        "convforge": lambda: compiled.time(*args, number=1, repeat=1),
        "onnxruntime": lambda: sess.run(None, feeds) and None,
    }
    outputs = {"convforge": compiled(**feeds)}
    notes = {}
    if "openvino" in peers:
        try:
            ov = OpenVINOModel(fixed, threads)
            outputs["openvino"] = ov(feeds)
            runs["openvino"] = ov.run
        except Exception as err:  # a model OpenVINO cannot read must not stop the benchmark
            notes["openvino"] = f"error: {type(err).__name__}: {err}"[:300]
    agreement = {}
    for runtime, ours in outputs.items():
        ours = ours if isinstance(ours, list | tuple) else [ours]
        checks = [compare(a, e) for a, e in zip(ours, theirs)]
        agreement[runtime] = {
            "agree": all(c.ok for c in checks) and len(ours) == len(theirs),
            "max_abs_error": max(c.max_abs for c in checks),
        }
        if not agreement[runtime]["agree"] and runtime != "convforge":
            notes[runtime] = f"mismatch against onnxruntime: {checks}"
            del runs[runtime]  # a wrong answer is not timed
    for run in runs.values():  # warm-up
        run()
        run()
    times: dict[str, list[float]] = {runtime: [] for runtime in runs}
    order = list(runs)
    for r in range(rounds):
        for runtime in order[r % len(order) :] + order[: r % len(order)]:
            begin = time.perf_counter()
            own = runs[runtime]()
            times[runtime].append(own if own is not None else time.perf_counter() - begin)
    medians = {runtime: statistics.median(t) for runtime, t in times.items()}
    best = min((t, runtime) for runtime, t in medians.items() if runtime != "convforge")
    kernels = compiled.metadata["kernels"]
    return {
        "model": name,
        "onnx_nodes": len(model.graph.node),
        "convforge_kernels": len(kernels),
        "tuned_kernels": sum(k["schedule"] == "tuned" for k in kernels),
        "compile_seconds": compile_seconds,
        **{f"{runtime}_median_ms": 1e3 * t for runtime, t in medians.items()},
        "ratio": medians["convforge"] / medians["onnxruntime"],
        "best_peer": best[1],
        "ratio_to_best": medians["convforge"] / best[0],
        **{f"{runtime}_ms": [1e3 * t for t in ts] for runtime, ts in times.items()},
        "max_abs_error": agreement["convforge"]["max_abs_error"],
        "agree": agreement["convforge"]["agree"],
        "peers_agree": {k: v["agree"] for k, v in agreement.items() if k != "convforge"},
        "notes": notes,
    }


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def write_json(path: str, data: dict) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=2), suffix=".json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default="demo,zoo",
        help=f"comma-separated models or groups ({', '.join(GROUPS)}); all by default",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=2, help="threads of every runtime")
    parser.add_argument("--tuning-db", default=None, help="tuning database directory")
    parser.add_argument("--out", default="bench-results/models.json", help="JSON results")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    # before TVM's thread pool starts (at the first parallel kernel): --threads workers,
    # unpinned (a pinned worker waits for its core on a shared machine; see benchmarks/run.py)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    quiet_thread_pools()  # idle workers must not take the cores of the runtime being timed
    names = [m for n in args.models.split(",") for m in GROUPS.get(n, [n])]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(MODELS)} or {list(GROUPS)}")
    peers, missing = available(["openvino"])
    for note in missing:
        print(f"note: {note}")
    print("note: pytorch: not a whole-model peer (no ONNX importer: onnx2torch not available)")
    load_before = os.getloadavg()
    results = []
    header = f"{'model':24s} {'compile s':>9s} {'convforge':>10s} {'onnxrt':>9s}"
    header += f" {'openvino':>9s}" if peers else ""
    print(header + f" {'cf/ort':>7s} {'cf/best':>8s}  agree")
    failed = {}
    for name in names:
        try:
            r = measure(name, args.rounds, args.tuning_db, args.threads, peers)
        except Exception as err:  # one model convforge cannot compile must not stop the rest
            failed[name] = f"{type(err).__name__}: {err}"[:500]
            print(f"{name:24s} failed: {failed[name]}", flush=True)
            continue
        results.append(r)
        line = f"{name:24s} {r['compile_seconds']:9.1f} {r['convforge_median_ms']:8.2f}ms"
        line += f" {r['onnxruntime_median_ms']:7.2f}ms"
        if peers:
            ov = r.get("openvino_median_ms")
            line += f" {ov:7.2f}ms" if ov else f" {'-':>9s}"
        line += f" {r['ratio']:7.2f} {r['ratio_to_best']:8.2f}  {r['agree']}"
        print(line + "".join(f"  ({k}: {v})" for k, v in r["notes"].items()), flush=True)
    load_after = os.getloadavg()
    schedules = "tuned records" if args.tuning_db else "default schedules"
    if not results:
        print("no model ran", file=sys.stderr)
        return 1
    summary = {
        "geomean_ratio_to_onnxruntime": geometric_mean([r["ratio"] for r in results]),
        "geomean_ratio_to_best": geometric_mean([r["ratio_to_best"] for r in results]),
        "worst_ratio_to_best": max(r["ratio_to_best"] for r in results),
    }
    print(
        f"\n{schedules}: convforge / onnxruntime geometric mean "
        f"{summary['geomean_ratio_to_onnxruntime']:.2f}, / best peer "
        f"{summary['geomean_ratio_to_best']:.2f} (worst {summary['worst_ratio_to_best']:.2f}); "
        f"load {load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} cores"
    )
    write_json(
        args.out,
        {
            "machine": platform.processor() or platform.machine(),
            "cpu": str(host_target().attrs["mcpu"]),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "tvm": tvm.__version__,
            "onnxruntime": onnxruntime.__version__,
            "openvino": version("openvino"),
            "schedules": schedules,
            "rounds": args.rounds,
            "summary": summary,
            "results": results,
            "failed": failed,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
