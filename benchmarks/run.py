"""Run the benchmark suite: convforge (default and tuned schedules), onnxruntime, OpenVINO, PyTorch.

``python -m benchmarks.run [--quick] [--only NAME[,NAME]] [--set bench|peers] [--json out.json]
[--png out.png] [--repeat N] [--tuning-db DIR] [--threads 2]``

The peers (``benchmarks/peers.py``: OpenVINO with f32 precision, latency hint and one stream;
PyTorch's ``torch.nn.functional`` under ``inference_mode``) run when installed (``pip install
-e ".[peers]"``), on the same threads; a missing one is named once as skipped.

Every implementation of a workload is first checked against onnxruntime (``compare``),
then timed interleaved in one process: each repeat runs one timed sample of every
implementation in turn (in a rotating order), so all of them see the same machine noise.
A sample is the mean of enough back-to-back calls to last ``--sample-ms``; the table shows
the median over repeats, GFLOP/s, the time ratio to onnxruntime (lower is better) and
the share of the sgemm ceiling measured in the same run (the faster of onnxruntime's MLAS
and numpy's BLAS, before and after the suite). Every thread pool (TVM's,
onnxruntime's, PyTorch's OpenMP) blocks when idle instead of spin-waiting, so the
implementation being timed is not sharing the cores with another one's idle workers.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Prepared:
    """A ready-to-time implementation: ``run()`` computes the workload once."""

    run: Callable[[], Any]
    output: np.ndarray
    how: str = ""


class Unavailable(Exception):
    """An implementation cannot run this workload (the message says why)."""


@dataclass
class Measurement:
    status: str = "ok"  # ok | skipped | mismatch | error
    note: str = ""
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return float(np.median(self.samples)) if self.samples else None


# --- implementations -----------------------------------------------------------------


def onnxruntime_impl(threads: int):
    import onnxruntime as ort

    from convforge.export.check import session

    def prepare(wl, arrays) -> Prepared:
        sess = session(wl.spec.onnx(wl, arrays), threads, spinning=False)
        binding = sess.io_binding()
        x = ort.OrtValue.ortvalue_from_numpy(arrays["x"])
        binding.bind_ortvalue_input("x", x)
        out_meta = sess.get_outputs()[0]
        (output,) = sess.run(None, {"x": arrays["x"]})
        y = ort.OrtValue.ortvalue_from_numpy(np.empty_like(output))
        binding.bind_ortvalue_output(out_meta.name, y)
        return Prepared(lambda: sess.run_with_iobinding(binding), output, "io_binding")

    return prepare


@contextlib.contextmanager
def tuning_scope(tuning_db: str | None) -> Iterator[None]:
    """Compile with the records of exactly ``tuning_db`` (None: default schedules only).

    Uses ``convforge.use_tuning_db`` from ``convforge.schedules.tuning`` when that module is
    in the checkout; shipped records and ``$CONVFORGE_TUNING_DB`` are left out either way.
    """
    if importlib.util.find_spec("convforge.schedules.tuning") is None:
        if tuning_db is not None:
            raise Unavailable("convforge.schedules.tuning not in this checkout")
        yield
        return
    from convforge.schedules.tuning import DB_ENV, use_tuning_db

    saved = os.environ.pop(DB_ENV, None)
    try:
        with use_tuning_db(tuning_db, shipped=False):
            yield
    finally:
        if saved is not None:
            os.environ[DB_ENV] = saved


def convforge_impl(tuning_db: str | None, packed: bool = True):
    """Times the kernel the numpy API compiles for a workload. A convolution's weight is
    packed once with ``packed`` (``cf.prepare_conv``: as compiled models pack a constant
    weight and onnxruntime prepacks its initializers), on every call without (and then
    only convolutions are timed: other workloads are the same in both)."""
    import tvm

    from benchmarks.workloads import convforge_function
    from convforge.build import recording_kernels

    def prepare(wl, arrays) -> Prepared:
        if packed and wl.spec.prepared is not None:
            with tuning_scope(tuning_db):
                op = wl.spec.prepared(wl, arrays)
            kernel, args = op.kernel, [arrays["x"], *op.constants]
            output, how = op(arrays["x"]), "kernel, weights packed once"
        else:
            if not packed and wl.spec.prepared is None:
                raise Unavailable("no prepared form: the convforge column times the same kernel")
            fn, why = convforge_function(wl)
            if fn is None:
                raise Unavailable(why)
            args = list(arrays.values())
            with tuning_scope(tuning_db), recording_kernels() as kernels:
                output = fn(*args, **wl.params)
            sizes = [a.size for a in args]
            if len(kernels) != 1 or [math.prod(s) for s in kernels[0].input_shapes] != sizes:
                # several kernels (or inputs rearranged): time the numpy call as a whole
                def run_api():
                    with tuning_scope(tuning_db):
                        return fn(*args, **wl.params)

                return Prepared(run_api, output, f"numpy API, {len(kernels)} kernels")
            kernel, how = kernels[0], "kernel, weights per call" if wl.spec.prepared else "kernel"
        device = kernel.device
        # the kernel may take the arrays reshaped (e.g. 1x1 convolutions over H*W): free views
        shaped = [a.reshape(s) for a, s in zip(args, kernel.input_shapes)]
        tensors = [tvm.runtime.tensor(a, device) for a in shaped]
        tensors += [
            tvm.runtime.tensor(np.empty(s, d), device)
            for s, d in zip(kernel.output_shapes, kernel.output_dtypes)
        ]
        function = kernel.function
        if tuning_db is not None:
            record = getattr(kernel, "tuning_record", None)
            how += f", tuned record {record}" if record else ", no tuned record: default schedule"
        return Prepared(lambda: function(*tensors), output, how)

    return prepare


def openvino_impl(threads: int):
    """OpenVINO on the workload's ONNX graph (the one onnxruntime runs), weights as
    initializers: compiled once, inputs shared with the request (no copy per call)."""
    from benchmarks.peers import OpenVINOModel

    def prepare(wl, arrays) -> Prepared:
        model = OpenVINOModel(wl.spec.onnx(wl, arrays), threads)
        (output,) = model({"x": arrays["x"]})
        return Prepared(model.run, output, "ONNX graph, f32, latency, 1 stream")

    return prepare


def torch_impl(threads: int):
    import torch

    torch.set_num_threads(threads)

    def prepare(wl, arrays) -> Prepared:
        if wl.spec.torch is None:
            raise Unavailable("no PyTorch form")
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}

        def run():
            with torch.inference_mode():
                return wl.spec.torch(torch, tensors, wl.params)

        return Prepared(run, run().numpy(), "torch.nn.functional")

    return prepare


def implementations(args) -> tuple[dict[str, Callable], list[str]]:
    """name -> prepare(workload, arrays); plus notes on implementations left out."""
    impls: dict[str, Callable] = {"onnxruntime": onnxruntime_impl(args.threads)}
    notes = []
    impls["convforge"] = convforge_impl(None)
    impls["convforge-per-call"] = convforge_impl(None, packed=False)
    if args.tuning_db is None:
        notes.append("convforge-tuned: left out (no --tuning-db given)")
    elif importlib.util.find_spec("convforge.schedules.tuning") is None:
        notes.append("convforge-tuned: left out (convforge.schedules.tuning not in this checkout)")
    else:
        impls["convforge-tuned"] = convforge_impl(args.tuning_db)
    from benchmarks.peers import available

    present, missing = available()
    notes += missing
    peers = {"openvino": openvino_impl, "pytorch": torch_impl}
    for name in present:
        impls[name] = peers[name](args.threads)
    return impls, notes


# --- timing ----------------------------------------------------------------------------


def calls_per_sample(run: Callable[[], Any], sample_s: float) -> int:
    """Calls that fill one sample of ``sample_s`` seconds (after two warm-up calls)."""
    run()
    start = time.perf_counter()
    run()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, round(sample_s / once))


def timed_sample(run: Callable[[], Any], number: int) -> float:
    """Seconds per call over ``number`` calls, after a fifth as many untimed calls: the
    implementation timed before may leave worker threads spinning (onnxruntime's and TVM's
    pools both spin-wait after work), which would otherwise slow the first calls here."""
    for _ in range(max(1, number // 5)):
        run()
    start = time.perf_counter()
    for _ in range(number):
        run()
    return (time.perf_counter() - start) / number


def sgemm_operands(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two random size x size float32 matrices and their float64 product."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(np.float32)
    b = rng.standard_normal((size, size)).astype(np.float32)
    return a, b, a.astype(np.float64) @ b


def checked(c: np.ndarray, expected: np.ndarray, who: str) -> None:
    error = float(np.max(np.abs(c - expected)) / np.max(np.abs(expected)))
    if error > 1e-5:
        raise RuntimeError(f"{who} disagrees with the float64 product: relative error {error:.3g}")


def mlas_sgemm_timer(
    a: np.ndarray, b: np.ndarray, expected: np.ndarray, threads: int
) -> tuple[Callable[[], Any], str]:
    """A call of onnxruntime's MatMul (MLAS sgemm) on :func:`sgemm_operands`."""
    from onnx import helper

    from convforge.export.check import session
    from convforge.export.onnx_graphs import make_model

    size = len(a)
    model = make_model(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        {"a": ((size, size), "float32"), "b": ((size, size), "float32")},
        {"c": ((size, size), "float32")}, initializers={"b": b}, name="sgemm",
    )  # fmt: skip
    sess = session(model, threads, spinning=False)
    checked(sess.run(None, {"a": a})[0], expected, "onnxruntime MatMul")
    how = f"onnxruntime MatMul (MLAS sgemm) {size}x{size}x{size} float32, {threads} threads"
    return (lambda: sess.run(None, {"a": a})), how


def blas_sgemm_timer(
    a: np.ndarray, b: np.ndarray, expected: np.ndarray, threads: int
) -> tuple[Callable[[], Any], str]:
    """A call of numpy's BLAS sgemm (OpenBLAS in numpy's wheels) on :func:`sgemm_operands`
    (``main`` holds the BLAS pool to ``threads`` threads)."""
    from threadpoolctl import threadpool_info

    size = len(a)
    out = np.empty_like(a)
    checked(np.matmul(a, b, out=out), expected, "numpy matmul")
    blas = next((i for i in threadpool_info() if i["user_api"] == "blas"), {})
    name = f"{blas.get('internal_api', 'BLAS')} {blas.get('version', '')}".strip()
    how = f"numpy matmul ({name} sgemm) {size}x{size}x{size} float32, {threads} threads"
    return (lambda: np.matmul(a, b, out=out)), how


def sgemm_gflops(run: Callable[[], Any], size: int, repeat: int, sample_s: float) -> float:
    """Median GFLOP/s over ``repeat`` samples (at least 5)."""
    number = calls_per_sample(run, sample_s)
    samples = [timed_sample(run, number) for _ in range(max(5, repeat))]
    return 2 * size**3 / float(np.median(samples)) / 1e9


def sgemm_ceiling(
    timers: Sequence[tuple[Callable[[], Any], str]], before: Sequence[float], after: Sequence[float]
) -> dict[str, Any]:
    """The sgemm ceiling: the fastest library's faster measurement (noise only slows a run
    down, and a library tuned less well for this CPU must not lower the bar)."""
    measured = [{"how": how, "gflops_before": b, "gflops_after": a}
                for (_, how), b, a in zip(timers, before, after)]  # fmt: skip
    gflops, how = max((max(m["gflops_before"], m["gflops_after"]), m["how"]) for m in measured)
    return {"how": how, "gflops": gflops, "measured": measured}


def measure_workload(wl, impls, repeat: int, sample_s: float, seed: int = 0) -> dict[str, Any]:
    from convforge.export import compare

    arrays = wl.arrays(seed)
    prepared: dict[str, Prepared] = {}
    results: dict[str, Measurement] = {}
    for name, prepare in impls.items():
        try:
            prepared[name] = prepare(wl, arrays)
        except Unavailable as why:
            results[name] = Measurement("skipped", str(why))
        except Exception as err:  # one broken implementation must not stop the suite
            results[name] = Measurement("error", f"{type(err).__name__}: {err}"[:300])
    reference = prepared.get("onnxruntime")
    for name, p in list(prepared.items()):
        if name == "onnxruntime" or reference is None:
            continue
        try:
            agreement = compare(p.output, reference.output)
        except ValueError as err:
            agreement, message = None, str(err)
        if agreement is None or not agreement.ok:
            results[name] = Measurement("mismatch", str(agreement) if agreement else message)
            del prepared[name]
    for name in prepared:
        results[name] = Measurement("ok", prepared[name].how)
    numbers = {name: calls_per_sample(p.run, sample_s) for name, p in prepared.items()}
    order = list(prepared)
    for r in range(repeat):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            results[name].samples.append(timed_sample(prepared[name].run, numbers[name]))
    return {
        "name": wl.name,
        "description": wl.description,
        "op": wl.op,
        "dense": wl.dense,
        "flops": wl.flops,
        "impls": {
            name: {
                "status": m.status,
                "note": m.note,
                "median_s": m.median,
                "samples_s": m.samples,
                "gflops": wl.flops / m.median / 1e9 if m.median else None,
            }
            for name, m in results.items()
        },
    }


#: The runtimes convforge is compared with ("the best peer": the fastest of these measured).
PEERS = ("onnxruntime", "openvino", "pytorch")


def add_ratios(result: dict[str, Any], sgemm_gflops: float) -> None:
    """Each entry's time / onnxruntime's and share of the sgemm ceiling; the result's
    ``best_peer`` (the fastest of :data:`PEERS` that ran and agreed) and convforge's time
    over it, ``convforge_to_best`` (None without a peer)."""
    ort = result["impls"].get("onnxruntime", {}).get("median_s")
    for entry in result["impls"].values():
        t = entry["median_s"]
        entry["ratio_to_onnxruntime"] = t / ort if t and ort else None
        entry["percent_of_sgemm"] = 100 * entry["gflops"] / sgemm_gflops if t else None
    peers = [(e["median_s"], name) for name, e in result["impls"].items()
             if name in PEERS and e["median_s"]]  # fmt: skip
    best = min(peers, default=None)
    ours = result["impls"].get("convforge", {}).get("median_s")
    result["best_peer"] = best[1] if best else None
    result["convforge_to_best"] = ours / best[0] if best and ours else None


def geometric_mean(values: Sequence[float]) -> float | None:
    """The geometric mean of the positive ``values`` (None when there are none)."""
    values = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


# --- output ----------------------------------------------------------------------------


def print_table(report: dict[str, Any], impl_names: Sequence[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    sgemm = report["sgemm"]
    table = Table(
        title=f"median ms · GFLOP/s · time / onnxruntime  (sgemm ceiling {sgemm['gflops']:.0f} "
        f"GFLOP/s: {sgemm['how']})"
    )
    table.add_column("workload")
    table.add_column("GFLOP", justify="right")
    for name in impl_names:
        table.add_column(name, justify="right")
    table.add_column("convforge % sgemm (dense)", justify="right")
    table.add_column("convforge / best peer", justify="right")
    for result in report["workloads"]:
        row = [result["description"] or result["name"], f"{result['flops'] / 1e9:.3f}"]
        for name in impl_names:
            e = result["impls"].get(name)
            if e is None:
                row.append("")
            elif e["median_s"] is None:
                row.append(f"[yellow]{e['status']}[/]")
            else:
                ratio = e["ratio_to_onnxruntime"]
                colour = (
                    "green" if ratio and ratio <= 1.0 else "red" if ratio and ratio > 1.5 else ""
                )
                ratio_text = f"{ratio:.2f}x" if ratio else "-"
                cell = f"{e['median_s'] * 1e3:.3f} · {e['gflops']:.1f} · {ratio_text}"
                row.append(f"[{colour}]{cell}[/]" if colour else cell)
        cf = result["impls"].get("convforge", {})
        dense = result["dense"] and cf.get("percent_of_sgemm")
        row.append(f"{cf['percent_of_sgemm']:.0f}%" if dense else "")
        best = result.get("convforge_to_best")
        row.append(f"{best:.2f}x ({result['best_peer']})" if best else "")
        table.add_row(*row)
    console = Console(width=240)
    console.print(table)
    summary = report.get("convforge_to_best_geomean")
    if summary:
        console.print(f"  convforge / best peer: geometric mean {summary:.2f}x")
    for result in report["workloads"]:
        for name, e in result["impls"].items():
            if e["status"] != "ok":
                console.print(f"  {result['name']} / {name}: {e['status']}: {e['note']}")
    for note in report["notes"]:
        console.print(f"  note: {note}")


def draw_png(report: dict[str, Any], impl_names: Sequence[str], path: str) -> str | None:
    """Bar chart of time / onnxruntime per workload; returns why not drawn, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "matplotlib not importable: no PNG"
    names = [n for n in impl_names if n != "onnxruntime"]
    rows = report["workloads"]
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(rows)), 5))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        ratios = np.array(
            [r["impls"].get(name, {}).get("ratio_to_onnxruntime") or np.nan for r in rows]
        )
        # bars grow from 1 (parity): up when slower than onnxruntime, down when faster
        ax.bar(np.arange(len(rows)) + i * width, ratios - 1, width, bottom=1, label=name)
    ax.axhline(1.0, color="black", linewidth=1)
    ax.axhline(1.5, color="red", linewidth=1, linestyle="--", label="1.5x target")
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2)
    ax.set_xticklabels([r["name"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.2g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.2g"))
    ax.set_ylabel("time / onnxruntime (log, lower is better)")
    ax.set_title(report["machine"]["summary"])
    ax.legend()
    fig.tight_layout()
    from convforge.filemode import atomic_write

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120), suffix=".png")
    finally:
        plt.close(fig)
    return None


def machine_info(threads: int, load_before: tuple[float, ...]) -> dict[str, Any]:
    from convforge.targets import host_target

    target = host_target()
    load_after = os.getloadavg()
    busiest = max(load_before[0], load_after[0])
    return {
        "summary": f"{target.attrs['mcpu']}, {os.cpu_count()} cores, threads={threads}, "
        f"load {load_before[0]:.1f}-{load_after[0]:.1f}",
        "mcpu": str(target.attrs["mcpu"]),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "busy": busiest > BUSY_LOAD_PER_CORE * (os.cpu_count() or 1),
    }


def versions() -> dict[str, str | None]:
    """Versions of convforge, TVM and every runtime timed (None: not installed)."""
    import onnxruntime
    import tvm

    import convforge
    from benchmarks.peers import PEER_MODULES, version

    return {
        "convforge": getattr(convforge, "__version__", None),
        "tvm": tvm.__version__,
        "onnxruntime": onnxruntime.__version__,
        **{name: version(name) for name in PEER_MODULES},
    }


#: 1-minute load average per core above which timings are flagged as unreliable.
BUSY_LOAD_PER_CORE = 0.5


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer, shorter samples")
    parser.add_argument("--only", help="comma-separated workload names (substrings match)")
    parser.add_argument(
        "--set", default="bench",
        help="workload set of convforge.workloads (bench: the CI suite; models: the extended "
        "suite of shapes from MobileNet, EfficientNet, ResNeXt, U-Net, video and audio nets)",
    )  # fmt: skip
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--png", help="draw the ratio chart here (needs matplotlib)")
    parser.add_argument("--repeat", type=int, help="timed samples per implementation")
    parser.add_argument("--sample-ms", type=float, help="length of one timed sample")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tuning-db", help="tuning database for the convforge-tuned column")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 3 if args.quick else 9
    if args.sample_ms is None:
        args.sample_ms = 20.0 if args.quick else 100.0
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from convforge.extras import require

    for module in ("onnxruntime", "matplotlib", "threadpoolctl", "rich"):
        require(module, "the benchmarks", extra="check,bench")
    # Before TVM starts its thread pool. TVM pins its workers to cores by default; on a
    # shared machine a pinned worker waits for its busy core while the parallel loop's
    # static partition waits for it: 3x slower here at load 12 than unpinned (onnxruntime
    # does not pin either).
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    from threadpoolctl import threadpool_limits

    from convforge.export.check import quiet_thread_pools

    # Idle pools block (TVM's after a 0.2 ms spin; onnxruntime sessions: spinning=False),
    # so the implementation being timed has every core.
    quiet_thread_pools()
    threadpool_limits(args.threads, user_api="blas")  # numpy's sgemm, for the ceiling
    from benchmarks.workloads import SUITE
    from convforge.workloads import select

    if args.set != "bench":
        try:
            SUITE = select(args.set)
        except ValueError as err:
            print(f"--set: {err}", file=sys.stderr)
            return 2
    if args.list:
        for wl in SUITE:
            print(f"{wl.name:36s} {wl.description}")
        return 0
    workloads = list(SUITE)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        workloads = [wl for wl in SUITE if any(w in wl.name for w in wanted)]
        if not workloads:
            print(f"--only {args.only!r} matches no workload (see --list)", file=sys.stderr)
            return 2
    load_before = os.getloadavg()
    impls, notes = implementations(args)
    for note in notes:
        print(f"note: {note}")
    sample_s = args.sample_ms / 1e3
    size = 1024 if args.quick else 2048
    operands = sgemm_operands(size)
    timers = [mlas_sgemm_timer(*operands, args.threads), blas_sgemm_timer(*operands, args.threads)]
    sgemm_before = [sgemm_gflops(run, size, args.repeat, sample_s) for run, _ in timers]
    for (_, how), gflops in zip(timers, sgemm_before):
        print(f"sgemm: {gflops:.1f} GFLOP/s ({how})")
    results = []
    for wl in workloads:
        started = time.perf_counter()
        result = measure_workload(wl, impls, args.repeat, sample_s)
        results.append(result)
        print(f"  {wl.name}: done in {time.perf_counter() - started:.1f} s", flush=True)
    sgemm_after = [sgemm_gflops(run, size, args.repeat, sample_s) for run, _ in timers]
    sgemm = sgemm_ceiling(timers, sgemm_before, sgemm_after)
    for result in results:
        add_ratios(result, sgemm["gflops"])
    geomean = geometric_mean([r["convforge_to_best"] for r in results])
    machine = machine_info(args.threads, load_before)
    if machine["busy"]:
        notes.append(
            f"machine busy (load {machine['summary'].rsplit('load ', 1)[1]} on "
            f"{machine['cpu_count']} cores): timings are unreliable, ratios less so"
        )
    report = {
        "machine": machine,
        "settings": {"repeat": args.repeat, "sample_ms": args.sample_ms, "quick": args.quick,
                     "set": args.set, "tuning_db": args.tuning_db,
                     **{k: os.environ.get(k) for k in (
                         "TVM_NUM_THREADS", "TVM_BIND_THREADS", "TVM_THREAD_POOL_SPIN_COUNT",
                         "OMP_WAIT_POLICY")},
                     "onnxruntime_spinning": False},
        "versions": versions(),
        "sgemm": sgemm,
        "convforge_to_best_geomean": geomean,
        "notes": notes,
        "workloads": results,
    }  # fmt: skip
    print_table(report, list(impls))
    if args.json:
        from convforge.filemode import atomic_write

        atomic_write(args.json, json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if args.png:
        why = draw_png(report, list(impls), args.png)
        print(why or f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
