"""Shared by the kernel A/B benchmarks (nchwc_forms.py, deinterleave.py,
activation_cost.py, pointwise_row.py): their command line and runner, time scheduled
PrimFuncs interleaved in one process, and write their results."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from typing import Any


def ab_parser(doc: str, rounds: int) -> argparse.ArgumentParser:
    """The A/B scripts' command line, ``--rounds`` (default ``rounds``) and ``--json``,
    described by the first line of ``doc``; a script may add its own options."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--json", help="write the results here")
    return parser


def host_runner() -> tuple[Any, Any]:
    """The host target and knob tuning's in-process runner for it."""
    from convforge.knob_tuning import _InProcess
    from convforge.targets import host_target

    target = host_target()
    return target, _InProcess(target, None)


def time_interleaved(runner: Any, mods: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    """Build ``mods`` (name -> scheduled IRModule) with ``runner`` (``knob_tuning``'s
    in-process runner) and time each once per round, in turn: name -> per-round medians of
    TVM's time evaluator (``tuning.EVALUATOR``), in seconds."""
    built = dict(zip(mods, (b for b, _ in runner.build(list(mods.values())))))
    times: dict[str, list[float]] = {name: [] for name in mods}
    for _ in range(rounds):
        for name, mod in mods.items():
            times[name].append(statistics.median(runner.time(built[name], mod)))
    return times


def summary(times: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Per name: the median over rounds and the [min, max] range, in milliseconds."""
    medians = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    ranges = {name: [1e3 * min(t), 1e3 * max(t)] for name, t in times.items()}
    return medians, ranges


def write_results(path: str, target: Any, rounds: int, rows: list[dict]) -> None:
    """``rows`` with the machine, target, threads and load average, as JSON at ``path``
    (written atomically)."""
    from convforge.filemode import atomic_write

    result = {
        "machine": platform.processor() or platform.machine(),
        "target": str(target),
        "threads": os.environ.get("TVM_NUM_THREADS", "one per physical core"),
        "load_average": os.getloadavg(),
        "rounds": rounds,
        "rows": rows,
    }
    atomic_write(path, json.dumps(result, indent=1, default=list))
    print(f"wrote {path}")
