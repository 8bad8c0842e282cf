"""The benchmark suite: the workloads of :mod:`convforge.workloads` in its ``bench`` set.

Workloads, operators (:data:`OPS`: how to run each in convforge, as ONNX and in PyTorch)
and the other sets (GPU, tune, cpu_special) live in that one registry; adding a benchmark
workload is one line there, tagged ``BENCH``. An operator whose convforge function is not
available yet is reported as skipped with the reason (:func:`convforge_function`).
"""

from __future__ import annotations

from convforge.workloads import BENCH, OPS, Op, Workload, convforge_function, select

#: Kept for older imports: an operator's implementations are a :class:`convforge.workloads.Op`.
OpSpec = Op

#: The suite: float32, batch 1 unless named otherwise.
SUITE: tuple[Workload, ...] = select(BENCH)

BY_NAME: dict[str, Workload] = {wl.name: wl for wl in SUITE}

__all__ = ["BY_NAME", "OPS", "SUITE", "OpSpec", "Workload", "convforge_function"]
