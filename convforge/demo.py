"""``python -m convforge.demo``: the lecture's networks, built, exported, compiled and checked.

For each network: build it as ONNX (seeded random weights), save the .onnx, compile it with
convforge, export the shared library, load it back, and compare its outputs with
onnxruntime on the same seeded inputs. Prints one table (network, ONNX nodes, compile
time, convforge and onnxruntime latency, max error), then the classifiers on a 320x240
input, WaveNet's receptive field and the decoders' checkerboard measure (PNG images of
both outputs are written). CPU only; a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from convforge.examples import networks
from convforge.export.check import compare, quiet_thread_pools, session
from convforge.export.check_model import make_inputs
from convforge.export.model import (
    CompiledModel,
    compile_model,
    declared_inputs,
    load,
    median_seconds,
)
from convforge.export.onnx_graphs import save_model
from convforge.filemode import atomic_write


@dataclass
class Row:
    network: str
    nodes: int
    compile_seconds: float
    convforge_seconds: float
    onnxruntime_seconds: float
    max_abs_error: float
    ok: bool


def onnxruntime_latency(model, feeds: dict, repeat: int = 5) -> float:
    sess = session(model, spinning=False)
    return median_seconds(lambda: sess.run(None, feeds), repeat)


def batch_one(model) -> dict:
    """``compile_model`` options for a model run at batch 1 only: one batch bucket where
    the batch is symbolic (the default buckets would compile it four times)."""
    symbolic = any(s.shape and s.shape[0] is None for s in declared_inputs(model))
    return {"batch_buckets": (1,)} if symbolic else {}


def run_network(name: str, model, folder: str, repeat: int) -> tuple[Row, CompiledModel, dict]:
    """Save, compile, export, reload, time and check one network."""
    save_model(model, os.path.join(folder, f"{name}.onnx"))
    feeds = make_inputs(model, seed=0)
    start = time.perf_counter()
    compiled = compile_model(model, **batch_one(model))
    compile_seconds = time.perf_counter() - start
    library = os.path.join(folder, f"{name}.so")
    compiled.export_library(library)
    loaded = load(library)
    ours = loaded(**feeds)
    theirs = session(model).run(None, feeds)
    checks = [compare(a, e) for a, e in zip(ours, theirs)]
    ours_seconds = loaded.time(*feeds.values(), number=3, repeat=repeat)
    row = Row(
        name, len(model.graph.node), compile_seconds, ours_seconds,
        onnxruntime_latency(model, feeds, repeat), max(c.max_abs for c in checks),
        all(c.ok for c in checks),
    )  # fmt: skip
    return row, loaded, feeds


def table_header() -> str:
    """The two header lines of the convforge-vs-onnxruntime table (:func:`table_line` rows);
    ``benchmarks/bench_models.py`` prints the same table."""
    header = (
        f"{'network':<22} {'ONNX nodes':>10} {'compile':>9} {'convforge':>10} "
        f"{'onnxruntime':>11} {'ratio':>6} {'max error':>10}  check"
    )
    return f"{header}\n{'-' * len(header)}"


def table_line(r: Row) -> str:
    """One network's row of the table: latencies in ms, their ratio, the max error."""
    return (
        f"{r.network:<22} {r.nodes:>10} {r.compile_seconds:>8.1f}s "
        f"{1e3 * r.convforge_seconds:>8.2f}ms {1e3 * r.onnxruntime_seconds:>9.2f}ms "
        f"{r.convforge_seconds / r.onnxruntime_seconds:>6.2f} {r.max_abs_error:>10.2e}  "
        f"{'ok' if r.ok else 'MISMATCH'}"
    )


def print_table(rows: list[Row]) -> None:
    print(table_header())
    for r in rows:
        print(table_line(r))


def save_png(image: np.ndarray, path: str) -> None:
    """Write a (3, H, W) array as an RGB PNG, scaled to its own min..max, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    low, high = float(image.min()), float(image.max())
    rgb = (image.transpose(1, 2, 0) - low) / max(high - low, 1e-12)
    atomic_write(path, lambda tmp: plt.imsave(tmp, rgb, format="png"), suffix=".png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m convforge.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--output-dir", default="convforge-demo", help="where .onnx, .so and PNGs go"
    )
    parser.add_argument("--repeat", type=int, default=5, help="timing repeats (medians)")
    args = parser.parse_args(argv)
    quiet_thread_pools()  # idle workers must not take the cores of the runtime being timed
    os.makedirs(args.output_dir, exist_ok=True)

    wavenet_config = networks.WaveNetConfig()
    builders: dict[str, Callable] = {
        "classifier_a_flatten": networks.classifier_flatten,
        "classifier_b_grid": networks.classifier_grid,
        "classifier_c_conv": networks.classifier_conv,
        "wavenet": lambda: networks.wavenet(wavenet_config),
        "bytenet": networks.bytenet,
        "decoder_transposed": lambda: networks.decoder("transposed"),
        "decoder_resize_conv": lambda: networks.decoder("resize"),
    }
    rows, compiled = [], {}
    for name, build in builders.items():
        print(f"{name}: build, export, compile, check ...", file=sys.stderr, flush=True)
        model = build()
        if name == "classifier_c_conv":  # dynamic spatial size: fix the demo's 256x256
            model = _with_input_shape(model, (1, 3, 256, 256))
        row, loaded, _ = run_network(name, model, args.output_dir, args.repeat)
        rows.append(row)
        compiled[name] = loaded
    print()
    print_table(rows)

    print("\nclassifiers (b) and (c) on a 320x240 input (same weights):")
    x = np.random.default_rng(1).standard_normal((1, 3, 240, 320)).astype(np.float32)
    for name, model in (
        ("classifier_b_grid", networks.classifier_grid((240, 320))),
        ("classifier_c_conv", networks.classifier_conv()),
    ):
        probs = compile_model(model, input_shapes={"x": x.shape})(x)[0]
        expected = session(model).run(None, {"x": x})[0]
        print(
            f"  {name}: output {probs.shape}, sum {probs.sum():.6f}, top-1 {int(probs.argmax())} "
            f"(onnxruntime {int(expected.argmax())}), {compare(probs, expected)}"
        )

    print(
        f"\nwavenet: dilations {wavenet_config.dilations[: wavenet_config.layers_per_block]} x "
        f"{wavenet_config.blocks}, receptive field {wavenet_config.receptive_field} samples"
    )

    print("\ncheckerboard measure: constant input, relative spread (max-min)/mean of the output")
    for name in ("decoder_transposed", "decoder_resize_conv"):
        model = compiled[name]
        constant = np.ones(model.compiled_shapes["x"], np.float32)
        image = model(constant)[0][0]
        path = os.path.join(args.output_dir, f"{name}.png")
        save_png(image, path)
        print(f"  {name:<22} spread {networks.checkerboard_spread(image):8.4f}   image {path}")
    ok = all(r.ok for r in rows)
    print(f"\nall outputs agree with onnxruntime: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


def _with_input_shape(model, shape: tuple[int, ...]):
    """A copy of ``model`` whose input ``x`` declares ``shape``."""
    import onnx

    copy = onnx.ModelProto.FromString(model.SerializeToString())
    dims = copy.graph.input[0].type.tensor_type.shape.dim
    for dim, size in zip(dims, shape):
        dim.Clear()
        dim.dim_value = size
    return copy


if __name__ == "__main__":
    sys.exit(main())
