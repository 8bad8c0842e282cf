"""Arguments and helpers shared by the model commands (compile, run, check, report)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import numpy as np

from convforge.filemode import atomic_write


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The ONNX ``model`` file argument, then :func:`add_target_arguments` (compile, report
    and check take them alike)."""
    parser.add_argument("model", help="ONNX model file")
    add_target_arguments(parser)


def compile_from_args(args: argparse.Namespace, progress: Callable[[str], None] | None, **options):
    """``compile_model`` of ``args.model`` with the options :func:`add_model_arguments`
    added (target, tuning database, input shapes, algorithm) and ``options`` (the command's
    own, e.g. ``dynamic``); ``progress`` as there."""
    from convforge.export.model import compile_model

    with tuning_match(args):
        return compile_model(
            args.model, target=resolved_target(args), tuning_db=tuning_db(args),
            input_shapes=input_shapes(args), progress=progress, algorithm=args.algorithm,
            **options,
        )  # fmt: skip


def add_target_arguments(parser: argparse.ArgumentParser, tuning: bool = True) -> None:
    parser.add_argument(
        "--target", default=None,
        help="'cpu' (host CPU, default), 'cuda', or a TVM target as a JSON object",
    )  # fmt: skip
    if tuning:
        parser.add_argument(
            "--tuning-db", default=None, metavar="DIR",
            help="tuning database directory: tuned schedules where it has records",
        )  # fmt: skip
        parser.add_argument(
            "--tuning-match", choices=("exact", "cpu"), default=None,
            help="which records serve this target: exact (default; or "
            "$CONVFORGE_TUNING_MATCH) or cpu (also records tuned for another core count "
            "of the same CPU, with a warning)",
        )  # fmt: skip
    parser.add_argument(
        "--input-shape", action="append", default=[], metavar="NAME=D0,D1,...",
        help="compile shape of an input with dynamic dimensions (repeatable)",
    )  # fmt: skip
    add_algorithm_argument(parser)


def add_db_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--db DIR`` (``convforge tune``, ``convforge db``), by default ``$CONVFORGE_TUNING_DB``;
    :func:`checked_db` checks it."""
    from convforge.schedules.tuning import DB_ENV

    parser.add_argument("--db", default=os.environ.get(DB_ENV), help=f"{what} (default ${DB_ENV})")


def checked_db(args: argparse.Namespace) -> str:
    """``args.db``: ValueError when it is missing or not a usable database path."""
    from convforge.schedules import tuning

    if not args.db:
        raise ValueError(f"--db is required (or set ${tuning.DB_ENV})")
    tuning.check_database_path(args.db, "--db")
    return args.db


def add_algorithm_argument(parser: argparse.ArgumentParser) -> None:
    """``--algorithm auto|direct|winograd`` (``compile_model``'s ``algorithm``)."""
    parser.add_argument(
        "--algorithm", choices=("auto", "direct", "winograd"), default="auto",
        help="convolution algorithm: auto (Winograd where faster, default), direct (no "
        "Winograd: exact to float32 rounding next to outliers), winograd (wherever it applies)",
    )  # fmt: skip


def resolved_target(args: argparse.Namespace):
    """``--target`` as a TVM target, refused (ValueError) where this machine cannot run its
    kernels: a GPU target without the GPU runtime or device (build those with ``aot``)."""
    import tvm

    from convforge.targets import is_cpu, resolve_target

    target = resolve_target(args.target)
    kind = target.kind.name
    if not is_cpu(target) and not tvm.device(kind).exist:
        raise ValueError(
            f"--target {kind}: this machine has no {kind} runtime or device, so {kind} "
            f"kernels cannot run here (use the host CPU, or 'convforge aot' to build CUDA "
            f"libraries without a GPU)"
        )
    return target


def input_shapes(args: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for item in args.input_shape:
        name, sep, dims = item.rpartition("=")
        try:
            shapes[name] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            sep = ""
        if not sep or not name:
            raise ValueError(f"--input-shape must look like NAME=1,3,224,224, got {item!r}")
    return shapes


def tuning_db(args: argparse.Namespace):
    """The tuning database at ``--tuning-db`` (None without the option)."""
    if getattr(args, "tuning_db", None) is None:
        return None
    from convforge.export.model import open_tuning_db

    return open_tuning_db(args.tuning_db)


def tuning_match(args: argparse.Namespace):
    """A context in which tuning lookups use ``--tuning-match`` (the mode in effect without
    the option: ``$CONVFORGE_TUNING_MATCH``, else exact)."""
    from convforge.schedules.tuning import use_tuning_match

    return use_tuning_match(getattr(args, "tuning_match", None))


def progress() -> Callable[[str], None]:
    """Progress messages on stderr, with seconds since the command started."""
    start = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    return say


def read_npz(path: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise ValueError(f"--inputs: no such file {path!r}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"--inputs: {path!r} is not a readable .npz file ({err})") from err


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")
