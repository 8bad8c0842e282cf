"""Run ONNX models in onnxruntime and compare results with dtype-aware tolerances."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx

from convforge import tvm_import
from convforge.extras import require

if TYPE_CHECKING:
    import onnxruntime as ort

#: (rtol, atol) per dtype; atol is scaled by max(1, max|expected|).
_TOLERANCES = {"float16": (5e-3, 5e-3), "float32": (1e-4, 1e-5), "float64": (1e-9, 1e-12)}


def tolerances(dtype: str) -> tuple[float, float]:
    """Default (rtol, atol) for results of ``dtype``."""
    return _TOLERANCES.get(str(dtype), (1e-4, 1e-5))


def session(
    model: onnx.ModelProto, threads: int = 2, spinning: bool = True
) -> ort.InferenceSession:
    """A CPU onnxruntime session with its default graph optimizations.

    ``spinning=False``: its idle workers block instead of spin-waiting (for timing it beside
    another runtime in one process; see :func:`quiet_thread_pools`). Needs onnxruntime
    (``pip install 'convforge[check]'``): MissingExtraError (an ImportError) without it.
    """
    ort = require("onnxruntime", "checking against onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def quiet_thread_pools() -> None:
    """Make idle TVM workers block after a short spin, and OpenMP (PyTorch) ones at once.

    For timing runtimes side by side in one process, together with onnxruntime sessions
    made with ``spinning=False``: one runtime's long-spinning idle workers would take a core
    from the one being timed. TVM's workers spin :data:`convforge.tvm_import.SPIN_COUNT`
    yields (about 0.2 ms; convforge's own imports of TVM set it too), which bridges the gaps
    between the parallel loops of one model run and leaves onnxruntime's timings unchanged
    (evidence: benchmarks/results/thresholds.md#quiet-thread-pools). onnxruntime's spin
    cannot be shortened, only turned off. Call it before the first TVM kernel runs (TVM
    reads the setting when its thread pool starts); settings the user made stay.
    """
    tvm_import.short_idle_spin()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_onnxruntime(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], threads: int = 2
) -> list[np.ndarray]:
    """Outputs of ``model`` on ``feeds`` (only the model's declared inputs are fed)."""
    sess = session(model, threads)
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: np.asarray(v) for k, v in feeds.items() if k in names})


@dataclass(frozen=True)
class Agreement:
    """How closely two arrays agree: ``|a - e| <= atol * max(1, max|e|) + rtol * |e|`` for
    finite values (max over the finite ones); a NaN or an infinity agrees only with the same
    non-finite value at the same position (max_abs is inf where one does not)."""

    max_abs: float
    max_rel: float
    rtol: float
    atol: float
    ok: bool

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "MISMATCH"
        return f"max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g} ({verdict})"


def compare(
    actual: np.ndarray,
    expected: np.ndarray,
    *,
    rtol: float | None = None,
    atol: float | None = None,
) -> Agreement:
    """Compare ``actual`` with ``expected`` (shapes must match) at ``expected``'s dtype tolerance."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: actual {actual.shape}, expected {expected.shape}")
    default_rtol, default_atol = tolerances(expected.dtype)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    if a.size == 0:
        return Agreement(0.0, 0.0, rtol, atol, True)
    # a NaN, +inf or -inf agrees with the same value only; the finite values set the scale
    same = (np.isnan(a) & np.isnan(e)) | (np.isinf(e) & (a == e))
    finite = np.isfinite(a) & np.isfinite(e)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(same, 0.0, np.where(finite, np.abs(a - e), np.inf))
    scale = max(1.0, float(np.max(np.abs(e[finite]), initial=0.0)))
    rel = diff / np.maximum(np.abs(np.where(finite, e, 1.0)), np.finfo(np.float64).tiny)
    ok = bool(np.all(same | (finite & (diff <= atol * scale + rtol * np.abs(e)))))
    return Agreement(float(diff.max()), float(rel.max()), rtol, atol, ok)
