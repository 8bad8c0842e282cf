"""The benchmark peers beside onnxruntime: OpenVINO and PyTorch, when installed.

Both are optional (``pip install -e ".[peers]"``: GBs, so ``[all]`` leaves them out). The
operator suite (``benchmarks/run.py``) runs every installed peer; the whole-model benchmark
(``benchmarks/bench_models.py``) runs OpenVINO only: PyTorch has no ONNX importer here
(onnx2torch is not available), so it is a peer for the operator suite only.

:func:`available` says which peers import and names each missing one once (the note the
benchmarks print); :class:`OpenVINOModel` compiles an ONNX model the way the benchmarks time
it: f32 inference precision forced (no bf16/f16 down-conversion on CPUs that have it),
latency hint, one stream, the benchmark's thread count.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Peer name -> the module it needs.
PEER_MODULES: dict[str, str] = {"openvino": "openvino", "pytorch": "torch"}


def available(wanted: Sequence[str] = tuple(PEER_MODULES)) -> tuple[list[str], list[str]]:
    """(the peers of ``wanted`` that import, one note per peer that does not)."""
    present, notes = [], []
    for name in wanted:
        module = PEER_MODULES[name]
        if importlib.util.find_spec(module) is None:
            notes.append(f"{name}: skipped ({module} not installed; pip install -e '.[peers]')")
        else:
            present.append(name)
    return present, notes


def version(name: str) -> str | None:
    """The installed version of peer ``name``, or None."""
    if importlib.util.find_spec(PEER_MODULES[name]) is None:
        return None
    module = __import__(PEER_MODULES[name])
    return str(getattr(module, "__version__", None) or module.get_version())


def openvino_config(threads: int) -> dict[str, Any]:
    """OpenVINO's CPU configuration for a timed peer: float32, latency, one stream."""
    return {
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "INFERENCE_NUM_THREADS": int(threads),
    }


class OpenVINOModel:
    """An ONNX model compiled by OpenVINO for the CPU (:func:`openvino_config`).

    ``model(feeds)`` -> list of outputs (copies), in the ONNX graph's output order;
    ``run()`` runs once on the feeds given last (inputs shared, not copied: the timed call).
    The ONNX file OpenVINO reads is written to a temporary folder and removed after the
    compile.
    """

    def __init__(self, model: Any, threads: int):
        import openvino as ov

        core = ov.Core()
        with tempfile.TemporaryDirectory(prefix="convforge-ov-") as folder:
            path = os.path.join(folder, "model.onnx")
            with open(path, "wb") as f:
                f.write(model.SerializeToString())
            self.compiled = core.compile_model(path, "CPU", openvino_config(threads))
        self.request = self.compiled.create_infer_request()
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self._feeds: dict[str, np.ndarray] = {}

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self._feeds = {name: np.ascontiguousarray(feeds[name]) for name in self.input_names}
        self.run()
        return [
            np.array(self.request.get_output_tensor(i).data, copy=True)
            for i in range(len(self.compiled.outputs))
        ]

    def run(self) -> None:
        self.request.infer(self._feeds, share_inputs=True, share_outputs=True)
