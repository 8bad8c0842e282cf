"""``convforge run``: run a library written by ``convforge compile`` and time it.

Inputs come from an .npz (``--inputs``) or are made (``--fill random|zeros|ones``, the
default ``random``) in the library's compiled input shapes; ``--batch N`` sets a dynamic
batch dimension for ``--fill`` (default: the compiled batch, 1). The model runs
``--warmup`` times untimed, then ``--repeat`` times, each run timed as one wall-clock
interval around the whole call (inputs in, outputs out); latency percentiles (p50, p90,
p99: numpy's linear interpolation between the sorted samples) with min, mean and max are
printed, and with ``--json`` written atomically with the machine, threads and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from convforge.commands._model_args import read_npz, write_npz
from convforge.filemode import atomic_write

HELP = "run a compiled model library (inputs from an .npz or filled) and time it"

FILLS = ("random", "zeros", "ones")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("library", help="library written by 'convforge compile'")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--inputs", default=None, help=".npz file, one array per input name")
    source.add_argument(
        "--fill", choices=FILLS, default=None,
        help="make the inputs in the compiled shapes instead: seeded standard-normal "
        "(random, the default when --inputs is not given), zeros or ones",
    )  # fmt: skip
    parser.add_argument(
        "--batch", type=int, default=None, metavar="N",
        help="with --fill: size of a dynamic batch dimension (default: the compiled batch)",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=10, metavar="N", help="timed runs (10)")
    parser.add_argument(
        "--warmup", type=int, default=1, metavar="N", help="runs before the timed ones (1)"
    )
    parser.add_argument("--json", default=None, metavar="OUT", help="write the timings here")
    parser.add_argument("-o", "--output", default=None, help=".npz file for the outputs")


def _check(args: argparse.Namespace) -> None:
    """Refuse bad numbers before loading anything (ValueError: exit 2)."""
    if args.repeat < 1:
        raise ValueError(f"--repeat must be at least 1, got {args.repeat}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be 0 or more, got {args.warmup}")
    if args.batch is not None:
        if args.inputs is not None:
            raise ValueError("--batch applies to --fill; the --inputs arrays set the batch")
        if args.batch < 1:
            raise ValueError(f"--batch must be at least 1, got {args.batch}")
    for option, path in (("--json", args.json), ("--output", args.output)):
        if path is not None and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ValueError(f"{option}: no such folder for {path!r}")


def filled_inputs(model, fill: str, batch: int | None = None) -> dict[str, np.ndarray]:
    """Inputs of ``model``'s compiled shapes, the dynamic batch (dimension 0 declared
    None) set to ``batch`` where given; ``fill`` 'random' (seed 0, as ``random_inputs``),
    'zeros' or 'ones'. ValueError when ``batch`` is given and no input has a dynamic batch."""
    if batch is not None and not any(s.shape and s.shape[0] is None for s in model.inputs):
        raise ValueError(
            f"--batch: no input of this library has a dynamic batch (inputs "
            f"{ {s.name: s.shape for s in model.inputs} })"
        )
    rng = np.random.default_rng(0)
    result = {}
    for spec in model.inputs:
        shape = model.compiled_shapes[spec.name]
        if batch is not None and spec.shape and spec.shape[0] is None:
            shape = (batch, *shape[1:])
        if fill == "random":
            result[spec.name] = _random(shape, np.dtype(spec.dtype), rng)
        else:
            result[spec.name] = (np.zeros if fill == "zeros" else np.ones)(shape, spec.dtype)
    return result


def _random(shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """As :func:`convforge.export.model.random_inputs` (same values at the compiled shapes)."""
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 4, shape).astype(dtype)


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """Milliseconds: min, mean, p50, p90, p99 (numpy's linear interpolation), max."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "min": float(ms.min()), "mean": float(ms.mean()), "p50": float(p50),
        "p90": float(p90), "p99": float(p99), "max": float(ms.max()),
    }  # fmt: skip


def machine() -> dict[str, object]:
    """This machine and process: CPU (LLVM's name for it), cores, load, TVM's threads."""
    import tvm

    from convforge.targets import host_target

    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "mcpu": str(host_target().attrs["mcpu"]),
        "cpu_count": os.cpu_count(),
        "load_average": load,
        "threads": int(tvm.runtime.num_threads()),
        "TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS"),
    }


def versions() -> dict[str, str]:
    import tvm

    import convforge

    return {
        "convforge": convforge.__version__, "tvm": tvm.__version__,
        "numpy": np.__version__, "python": platform.python_version(),
    }  # fmt: skip


def write_json(path: str, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` atomically, with a normal file's mode."""
    atomic_write(path, json.dumps(data, indent=2) + "\n", suffix=".json")


def run(args: argparse.Namespace) -> int:
    from convforge.export.model import load

    _check(args)
    try:
        model = load(args.library)
    except ValueError:
        raise
    except Exception as err:  # TVM's loader: not a library, or one it cannot load
        first = str(err).strip().splitlines()[-1:] or [type(err).__name__]
        raise ValueError(
            f"library: {args.library!r} is not a model library written by convforge "
            f"({first[0][:200]})"
        ) from err
    fill = None if args.inputs is not None else (args.fill or "random")
    feeds = read_npz(args.inputs) if fill is None else filled_inputs(model, fill, args.batch)
    seconds, outputs = [], None
    for _ in range(args.warmup + args.repeat):  # warm-up runs are timed, then dropped
        start = time.perf_counter()
        result = model(feeds)
        seconds.append(time.perf_counter() - start)
        if outputs is None:
            outputs = dict(zip(model.output_names, result))
    seconds = seconds[args.warmup :]
    for name, array in outputs.items():
        print(f"{name}: shape {array.shape}, dtype {array.dtype}")
    summary = latency_summary(seconds)
    print(
        f"latency over {args.repeat} runs (after {args.warmup} warm-up): "
        + ", ".join(f"{k} {v:.3f} ms" for k, v in summary.items())
    )
    if args.output:
        write_npz(args.output, outputs)
        print(f"wrote {args.output}")
    if args.json:
        write_json(
            args.json,
            {
                "library": os.path.abspath(args.library),
                "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                           for k, v in feeds.items()},
                "fill": fill, "repeat": args.repeat, "warmup": args.warmup,
                "latency_ms": summary, "seconds": seconds,
                "machine": machine(), "versions": versions(),
            },
        )  # fmt: skip
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
