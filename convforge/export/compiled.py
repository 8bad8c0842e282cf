"""A compiled model: run it, time it, report it, export it; load one, all without TVM's compiler.

:class:`CompiledModel` is what :func:`convforge.compile_model` returns and :func:`load`
reads back from a library written by :meth:`CompiledModel.export_library`. This module
imports neither onnx nor TVM's compiler: a library is loaded and run through TVM's runtime
alone (:mod:`convforge.export.runtime`, about 0.1 s to import where ``import tvm`` takes
1-1.5 s), so a process that only loads and runs models (``cf.load``, a cache hit of
``cf.compile_model``) starts quickly. Timing (:meth:`CompiledModel.time`) and the model's
target import TVM.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from convforge.export import runtime
from convforge.export.library import append_trailer, target_fields, verified_library
from convforge.filemode import atomic_write

#: Name of the relax function that returns the model description as UTF-8 JSON bytes.
METADATA_FUNCTION = "convforge_metadata"


class InputDtypeError(TypeError, ValueError):
    """An input array of another dtype than the model declares: a ``TypeError`` as numpy
    users expect, and bad input (a ``ValueError``, exit code 2) to the CLI."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, shape (``None`` for a dynamic dimension), dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


class CompiledModel:
    """A compiled model: call with arrays (positionally, by input name, or as one feed dict
    ``{name: array}``), get a list of arrays; or ``run(output_names, feeds)`` as
    onnxruntime's ``InferenceSession.run``, and ``run_dict(feeds)`` for outputs by name.

    Outputs come in the ONNX model's output order.

    What is static and what is dynamic: every dimension but a symbolic batch is static
    (the shapes in :attr:`compiled_shapes`). A symbolic batch is dynamic in one library:
    the model holds batched kernels for each of ``metadata["batch_buckets"]`` (default
    1, 2, 4, 8) and a call of batch B runs the largest buckets that fit and concatenates
    (:mod:`convforge.export.buckets`: B=8 is one batch-8 call, B=3 is 2 + 1, B=20 is
    8 + 8 + 4), whether compiled or loaded. A batch given by ``input_shapes`` is static:
    another batch is refused, except that a batch-1 build runs a larger batch as batch-1
    calls (see :func:`compile_model`). Other dynamic dimensions (the spatial sizes of a fully
    convolutional model): a model from :func:`compile_model` compiles (once, then cached)
    a specialization for each new size it is called with; a loaded library runs the sizes
    it was compiled for only.

    Inputs must have the declared dtype (``TypeError`` otherwise: no implicit cast, as
    onnxruntime); scalar inputs (shape ``()``) are passed as 0-d arrays. An empty dynamic
    batch (size 0) returns every output with batch 0, as onnxruntime; any other empty
    dimension is refused with a ``ValueError`` naming the input and dimension.
    """

    def __init__(
        self,
        module: Any,
        metadata: dict,
        specialize: Callable[[dict[str, tuple[int, ...]]], CompiledModel] | None = None,
        *,
        lazy: bool = False,
        weights: Sequence[Any] = (),
    ):
        """``lazy``: create the VM on first use, not here (see :attr:`_vm`). ``weights``:
        the library's weights (:func:`convforge.export.runtime.load_model`), passed to every
        entry function after the inputs."""
        self._module = module
        self._weights = list(weights)
        self._specialize = specialize
        self._specializations: dict[tuple, CompiledModel] = {}
        self.metadata = metadata
        self.inputs = [
            TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in metadata["inputs"]
        ]
        self.outputs = [
            TensorSpec(o["name"], tuple(o["shape"]), o["dtype"]) for o in metadata["outputs"]
        ]
        self.compiled_shapes = {i["name"]: tuple(i["compiled_shape"]) for i in metadata["inputs"]}
        #: The persistent cache's entry holding this model's library (export copies it).
        self._cache_entry: str | os.PathLike | None = None
        #: The library compile_model linked for a CPU target (export copies it).
        self._library: _PrivateLibrary | None = None
        #: For a model loaded from the cache: compiles it again (when its entry is gone).
        self._rebuild: Callable[[], CompiledModel] | None = None
        self._vm_lock = threading.Lock()
        self._vm_main: tuple[Any, Any] | None = None
        self._functions: dict[str, Any] = {}
        if not lazy:
            self._vm_main = self._make_vm()
        #: Seconds per compile phase (:class:`convforge.export.compile_profile.CompileProfile`)
        #: when this model came from :func:`compile_model`; None for a loaded library.
        self.compile_profile = None

    def _make_vm(self) -> tuple[Any, Any]:
        vm = runtime.make_vm(self._module)
        return vm, vm["main"]

    def _vm_and_main(self) -> tuple[Any, Any]:
        """The VM and its ``main``, created once, on first use: a compile that is only
        exported (``convforge compile``) never needs it. (On a GPU target, creating it
        JIT-compiles the host code; a CPU model's library is already linked and loaded.)"""
        if self._vm_main is None:
            with self._vm_lock:
                if self._vm_main is None:
                    self._vm_main = self._make_vm()
        return self._vm_main

    def _function(self, name: str) -> Any:
        """The VM's function ``name`` (a batch bucket's entry), looked up once."""
        found = self._functions.get(name)
        if found is None:
            found = self._functions[name] = self._vm[name]
        return found

    @property
    def _vm(self) -> Any:
        return self._vm_and_main()[0]

    @property
    def _main(self) -> Any:
        return self._vm_and_main()[1]

    @property
    def input_names(self) -> list[str]:
        """The inputs' names in the model's order (what positional arrays bind to)."""
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """The outputs' names in the model's order (the order of every returned list)."""
        return [spec.name for spec in self.outputs]

    @property
    def input_shapes(self) -> dict[str, tuple[int | None, ...]]:
        """Each input's declared shape, ``None`` for a dynamic dimension (where onnxruntime's
        ``get_inputs()[i].shape`` gives the symbolic name, e.g. ``'N'``: convforge keeps no
        names). The shapes the library was compiled for are :attr:`compiled_shapes`."""
        return {spec.name: spec.shape for spec in self.inputs}

    def run(
        self,
        output_names: Sequence[str] | None,
        feeds: Mapping[str, np.ndarray],
    ) -> list[np.ndarray]:
        """onnxruntime's ``InferenceSession.run``: the outputs named in ``output_names``, in
        that order (``None``: every output, in the model's order), for the inputs in
        ``feeds`` (input name -> array, every input exactly once).

        ValueError naming them for unknown output names or a ``feeds`` that is not a
        mapping; inputs are checked as :meth:`__call__` checks them.
        """
        indices = self._output_indices(output_names)
        outputs = self(self._feeds(feeds))
        return [outputs[i] for i in indices]

    def run_dict(
        self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Outputs by name: ``{output name: array}`` for ``output_names`` (``None``: every
        output), in that order; arguments and refusals as :meth:`run`."""
        names = self.output_names if output_names is None else list(output_names)
        return dict(zip(names, self.run(output_names, feeds)))

    def _bind_any(self, arrays: Sequence[Any]) -> list[np.ndarray]:
        """:meth:`bind_inputs` of positional arrays or of one feed dict."""
        if len(arrays) == 1 and isinstance(arrays[0], Mapping):
            return self.bind_inputs(**self._feeds(arrays[0]))
        return self.bind_inputs(*arrays)

    def _output_indices(self, output_names: Sequence[str] | None) -> list[int]:
        if output_names is None:
            return list(range(len(self.outputs)))
        if isinstance(output_names, str):
            raise ValueError(
                f"output_names must be a list of names or None, got the string {output_names!r}"
            )
        names = list(output_names)
        unknown = [n for n in names if n not in self.output_names]
        if unknown:
            raise ValueError(
                f"output_names: unknown output(s) {unknown}; the model's outputs are "
                f"{self.output_names}"
            )
        return [self.output_names.index(n) for n in names]

    @staticmethod
    def _feeds(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not isinstance(feeds, Mapping):
            raise ValueError(
                f"feeds must be a mapping of input name to array, got {type(feeds).__name__}"
            )
        bad = [k for k in feeds if not isinstance(k, str)]
        if bad:
            raise ValueError(f"feeds: input names must be strings, got {bad}")
        return dict(feeds)

    def bind_inputs(self, /, *arrays: np.ndarray, **named: np.ndarray) -> list[np.ndarray]:
        """Inputs in model order from positional and named arrays; ValueError on any shape or
        name mismatch, TypeError on a dtype other than the declared one (no implicit cast,
        as onnxruntime: a float64 or complex array for a float32 input is refused)."""
        if len(arrays) > len(self.inputs):
            raise ValueError(f"model takes {len(self.inputs)} inputs, got {len(arrays)} arrays")
        given = dict(zip(self.input_names, arrays))
        for name, value in named.items():
            if name not in self.input_names:
                raise ValueError(
                    f"unknown input {name!r}; the model's inputs are {self.input_names}"
                )
            if name in given:
                raise ValueError(f"input {name!r} given twice")
            given[name] = value
        missing = [n for n in self.input_names if n not in given]
        if missing:
            raise ValueError(
                f"missing input(s) {missing}; the model's inputs are {self.input_names}"
            )
        bound = []
        for spec in self.inputs:
            array = np.asarray(given[spec.name])
            if array.dtype != np.dtype(spec.dtype):  # as onnxruntime: no implicit casts
                raise InputDtypeError(
                    f"input {spec.name!r} has dtype {array.dtype}, the model declares "
                    f"{spec.dtype}: cast it explicitly"
                )
            # np.ascontiguousarray would turn a scalar (shape ()) into shape (1,)
            array = np.require(array, requirements="C")
            compiled = self.compiled_shapes[spec.name]
            fits = len(array.shape) == len(compiled) and all(
                a == c or (declared is None and (k == 0 or self._specialize is not None))
                for k, (a, c, declared) in enumerate(zip(array.shape, compiled, spec.shape))
            )
            if not fits:
                raise ValueError(
                    f"input {spec.name!r} must have shape {compiled} "
                    f"(declared {_shape_text(spec.shape)}), got {array.shape}"
                )
            bound.append(array)
        batches = {a.shape[0] for a, s in zip(bound, self.inputs) if s.shape and s.shape[0] is None}
        if len(batches) > 1:
            raise ValueError(
                f"inputs with a dynamic batch must share it, got sizes {sorted(batches)}"
            )
        return bound

    def __call__(self, /, *arrays: np.ndarray, **named: np.ndarray) -> list[np.ndarray]:
        """Every output, in the model's order. Inputs: arrays in the model's input order,
        by name (``model(input=x)``), or one feed dict (``model({"input": x})``, for names
        that are not Python identifiers too); see :meth:`bind_inputs` for the checks."""
        if len(arrays) == 1 and isinstance(arrays[0], Mapping):
            if named:
                raise ValueError("give the inputs as one feed dict or as keywords, not both")
            return self(**self._feeds(arrays[0]))
        bound = self.bind_inputs(*arrays, **named)
        empty = self._empty_outputs(bound)
        if empty is not None:
            return empty
        shapes = {
            s.name: (self.compiled_shapes[s.name][0], *a.shape[1:]) if a.ndim else a.shape
            for s, a in zip(self.inputs, bound)
        }
        if shapes != self.compiled_shapes:  # another size along a dynamic non-batch axis
            key = tuple(sorted(shapes.items()))
            if key not in self._specializations:
                self._specializations[key] = self._specialize(shapes)
            return self._specializations[key](*bound)
        batched = [bool(s.shape) and s.shape[0] is None for s in self.inputs]
        sizes = {a.shape[0] for a, b in zip(bound, batched) if b}
        size = sizes.pop() if sizes else None
        compiled_batch = {
            self.compiled_shapes[s.name][0] for s, b in zip(self.inputs, batched) if b
        }
        if size is None or compiled_batch == {size}:
            return self._run(bound)
        buckets = self.metadata.get("batch_buckets")
        if buckets:  # one library with batched kernels per bucket: see export/buckets.py
            from convforge.export.buckets import function_name, split_batch

            parts, start = [], 0
            for bucket in split_batch(size, buckets):
                chunk = [a[start : start + bucket] if b else a for a, b in zip(bound, batched)]
                parts.append(self._run(chunk, function_name(bucket, min(buckets))))
                start += bucket
            return [np.concatenate(outs, axis=0) for outs in zip(*parts)]
        if compiled_batch != {1}:
            raise ValueError(f"compiled for batch {compiled_batch.pop()}, got batch {size}")
        samples = [
            self._run([a[i : i + 1] if b else a for a, b in zip(bound, batched)])
            for i in range(size)
        ]
        return [np.concatenate(parts, axis=0) for parts in zip(*samples)]

    def _empty_outputs(self, bound: Sequence[np.ndarray]) -> list[np.ndarray] | None:
        """For an empty dynamic batch, onnxruntime's answer: every output with batch 0.

        None when no input is empty. ValueError (naming the input and dimension) for any
        other empty input, or when an output has no dynamic batch to make empty.
        """
        found = None
        for spec, array in zip(self.inputs, bound):
            for axis, size in enumerate(array.shape):
                if size != 0:
                    continue
                if axis != 0 or spec.shape[0] is not None:
                    raise ValueError(
                        f"input {spec.name!r} is empty along dimension {axis} (shape "
                        f"{array.shape}): only an empty dynamic batch (dimension 0) is supported"
                    )
                found = spec.name
        if found is None:
            return None
        if any(not o.shape or o.shape[0] is not None for o in self.outputs):
            raise ValueError(
                f"input {found!r} has batch 0, but not every output has a dynamic batch: "
                "the empty outputs' shapes are unknown"
            )
        batched = [bool(s.shape) and s.shape[0] is None for s in self.inputs]
        sample = [np.zeros((1, *a.shape[1:]), a.dtype) if b else a for a, b in zip(bound, batched)]
        return [out[:0] for out in self(*sample)]

    def _run(self, arrays: Sequence[np.ndarray], function: str = "main") -> list[np.ndarray]:
        entry = self._main if function == "main" else self._function(function)
        return runtime.outputs(entry(*[runtime.tensor(a) for a in arrays], *self._weights))

    def time(self, *arrays: np.ndarray, number: int = 5, repeat: int = 5) -> float:
        """Median over ``repeat`` rounds of the mean seconds of ``number`` whole-model runs on
        the compiled shapes, after one warm-up run (the rule of TVM's ``time_evaluator``: the
        inputs set once, the VM's ``invoke_stateful``); inputs as arrays in model order or one
        feed dict."""
        bound = self._bind_any(arrays)
        vm = self._vm.module
        vm["set_input"]("main", *[runtime.tensor(a) for a in bound], *self._weights)
        invoke = vm["invoke_stateful"]
        invoke("main")  # warm-up
        results = []
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(number):
                invoke("main")
            results.append((time.perf_counter() - start) / number)
        return float(np.median(results))

    @property
    def target(self) -> Any:
        """The target the model was compiled for (from its metadata), a ``tvm.target.Target``
        (imports TVM)."""
        import ast

        from convforge.tvm_import import import_tvm

        tvm = import_tvm()
        try:
            return tvm.target.Target(ast.literal_eval(self.metadata["target"]))
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"cannot read the model's target {self.metadata['target']!r}") from err

    def export_library(self, path: str | os.PathLike) -> None:
        """Write one shared library (code, weights, description) atomically to ``path``,
        followed by a trailer holding its SHA-256 and target, which :func:`load` verifies
        (see :mod:`convforge.export.library`)."""
        if self._library is not None:
            self._export_copy(path, contextlib.nullcontext(self._library.path))
            return
        if self._cache_entry is not None:
            try:
                entry = os.fspath(self._cache_entry)
                self._export_copy(path, verified_library(entry), target_fields(entry))
                return
            except (FileNotFoundError, ValueError):  # evicted, or damaged since it was stored
                pass
        if not runtime.is_executable(self._module):
            if self._rebuild is not None:  # its cache entry is gone: compile it again
                self._rebuild().export_library(path)
                return
            raise ValueError("a loaded model is already a library; copy its file instead")

        def write(tmp: str) -> None:
            with without_scope_warnings():
                self._module.export_library(tmp)
            append_trailer(tmp, self.target)  # checksum and target, which load() verifies

        atomic_write(path, write, executable=True, suffix=".so")

    def _export_copy(self, path: str | os.PathLike, source: Any, target: Any = None) -> None:
        """Export by copying a library already linked (no second link): ``source`` is a
        context manager yielding its path (this model's own library, or its cache entry's
        verified copy), followed by the trailer of ``target`` (default :attr:`target`; a
        cache entry's copy takes its entry's target fields, with no TVM import)."""

        def write(tmp: str) -> None:
            with source as library:
                shutil.copyfile(library, tmp)
            append_trailer(tmp, self.target if target is None else target)

        atomic_write(path, write, executable=True, suffix=".so")

    def report(self, *arrays: np.ndarray, runs: int = 3) -> ModelReport:
        """Each ONNX node with the kernel serving it and that kernel's time, in milliseconds
        and as a share of the measured whole.

        Runs the model ``runs`` (>= 1) times (random inputs of the compiled shapes unless
        given, as arrays in model order or one feed dict)
        with the VM instrumented: every VM call of a compiled function is timed, and the
        whole is the wall time of each whole run (inputs in, outputs out) averaged over the
        runs. A convforge kernel's time goes to the node it serves (split evenly where one
        kernel serves several nodes); nodes left to TVM's default lowering are fused by TVM,
        so their time is one row, TVM's kernels; what no kernel accounts for (copies of
        the inputs and outputs, the VM's own work, the timing callbacks) is the
        unattributed row, the whole minus the other rows: the rows add up to the whole.
        """
        if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
            raise ValueError(f"runs must be an integer of at least 1, got {runs!r}")
        bound = self._bind_any(arrays) if arrays else random_inputs(self, seed=0)
        timings: dict[str, list[float]] = {}
        started: dict[str, float] = {}

        def instrument(func, symbol, before, ret, *args):
            if before:
                started[symbol] = time.perf_counter()
            else:
                timings.setdefault(symbol, []).append(time.perf_counter() - started.pop(symbol))
            return 0

        self._run(bound)
        self._vm.set_instrument(instrument)
        try:
            begin = time.perf_counter()
            for _ in range(runs):
                self._run(bound)
            total = (time.perf_counter() - begin) / runs
        finally:
            self._vm.set_instrument(None)  # none: a callback per call costs time
        per_function = {name: sum(v) / runs for name, v in timings.items()}
        return ModelReport.build(self.metadata, per_function, total)


#: Report rows that are not nodes: TVM's own kernels, and the whole minus every kernel.
TVM_ROW = "(TVM's kernels: nodes on TVM's default lowering)"
UNATTRIBUTED_ROW = "(not attributed to a node: copies, VM, timing)"

#: A Winograd kernel's input check (``lowering._finite_or_direct``), counted in its share.
NONFINITE_CHECK_SUFFIX = "_nonfinite"


@dataclass(frozen=True)
class NodeRow:
    """One ONNX node: the kernel serving it, its time (``milliseconds`` per run) and that
    time's ``share`` of the whole. Nodes fused into another node's kernel, and nodes on
    TVM's default lowering, have 0 (their time is in the kernel's node or TVM's row)."""

    node: str
    op_type: str
    kernel: str
    schedule: str
    function: str
    share: float
    milliseconds: float = 0.0


@dataclass(frozen=True)
class ModelReport:
    """Node -> kernel table with times. The rows add up to the measured whole:
    ``sum(r.milliseconds for r in rows) + tvm_default_ms + unattributed_ms == total_ms``
    (to float rounding), and the same for the shares (1.0).

    ``unattributed_ms`` is the whole minus every kernel's time (copies in and out, the VM,
    the timing callbacks); it is what is left, not separately measured.
    """

    rows: list[NodeRow]
    total_seconds: float
    tvm_default_share: float
    #: TVM's own kernels (nodes on its default lowering, fused by TVM) with their shares.
    tvm_functions: list[tuple[str, float]]
    #: Per run, seconds in TVM's own kernels (the sum over ``tvm_functions``).
    tvm_default_seconds: float = 0.0
    #: Per run, the whole minus the node rows and TVM's kernels.
    unattributed_seconds: float = 0.0

    @property
    def total_ms(self) -> float:
        return 1e3 * self.total_seconds

    @property
    def tvm_default_ms(self) -> float:
        return 1e3 * self.tvm_default_seconds

    @property
    def unattributed_ms(self) -> float:
        return 1e3 * self.unattributed_seconds

    @staticmethod
    def build(metadata: dict, per_function: Mapping[str, float], total: float) -> ModelReport:
        kernels = {k["node"]: k for k in metadata["kernels"]}
        for k in metadata["kernels"]:
            for fused in k["fused"]:
                kernels[fused] = {**k, "kernel": f"fused into {k['node']}"}
        ours = {k["function"] for k in metadata["kernels"]}
        users = {f: sum(k["function"] == f for k in metadata["kernels"]) for f in ours}
        tvm_functions = sorted(
            ((f, t / total if total else 0.0) for f, t in per_function.items()
             if f not in ours and not f.startswith(("vm.", "cf_"))),
            key=lambda item: -item[1],
        )  # fmt: skip
        tvm_seconds = sum(
            t for f, t in per_function.items() if f not in ours and not f.startswith(("vm.", "cf_"))
        )
        rows = []
        for node in metadata["nodes"]:
            k = kernels.get(node["name"])
            if k is None:
                rows.append(NodeRow(node["name"], node["op_type"], "TVM default", "-", "-", 0.0))
                continue
            own = per_function.get(k["function"], 0.0)
            own += per_function.get(k["function"] + NONFINITE_CHECK_SUFFIX, 0.0)
            seconds = own / users[k["function"]] if node["name"] == k["node"] else 0.0
            rows.append(
                NodeRow(
                    node["name"], node["op_type"], k["kernel"], k["schedule"], k["function"],
                    seconds / total if total else 0.0, 1e3 * seconds,
                )
            )  # fmt: skip
        tvm_share = tvm_seconds / total if total else 0.0
        attributed = sum(r.milliseconds for r in rows) / 1e3 + tvm_seconds
        return ModelReport(rows, total, tvm_share, tvm_functions, tvm_seconds, total - attributed)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data: ``nodes`` (each with ``milliseconds`` and
        ``share``), ``tvm_default_ms``/``unattributed_ms`` (the two rows that are not nodes,
        also as ``summary_rows``), ``total_ms``; the rows add up to ``total_ms``."""
        share = self.unattributed_seconds / self.total_seconds if self.total_seconds else 0.0
        return {
            "total_seconds": self.total_seconds,
            "total_ms": self.total_ms,
            "tvm_default_share": self.tvm_default_share,
            "tvm_default_ms": self.tvm_default_ms,
            "unattributed_ms": self.unattributed_ms,
            "unattributed_share": share,
            "nodes": [asdict(r) for r in self.rows],
            "summary_rows": [
                {"row": TVM_ROW, "milliseconds": self.tvm_default_ms,
                 "share": self.tvm_default_share},
                {"row": UNATTRIBUTED_ROW, "milliseconds": self.unattributed_ms, "share": share},
            ],
            "tvm_functions": [{"function": f, "share": share} for f, share in self.tvm_functions],
        }  # fmt: skip

    def __str__(self) -> str:
        width = max([28, *(len(r.kernel) for r in self.rows)])  # kernel names whole
        header = (
            f"{'node':<28} {'op':<20} {'kernel':<{width}} {'schedule':<8} {'ms':>9} {'share':>6}"
        )
        lines = [header, "-" * len(header)]
        for r in self.rows:
            timed = r.kernel not in ("TVM default",) and not r.kernel.startswith("fused")
            ms, share = (f"{r.milliseconds:9.3f}", f"{100 * r.share:5.1f}%") if timed else ("", "")
            lines.append(
                f"{r.node[:28]:<28} {r.op_type[:20]:<20} {r.kernel:<{width}} {r.schedule:<8} "
                f"{ms:>9} {share:>6}"
            )
        unattributed = self.unattributed_seconds / self.total_seconds if self.total_seconds else 0
        for label, ms, share in (
            (TVM_ROW, self.tvm_default_ms, self.tvm_default_share),
            (UNATTRIBUTED_ROW, self.unattributed_ms, unattributed),
        ):
            lines.append(f"{label:<{59 + width}} {ms:9.3f} {100 * share:5.1f}%")
        lines.append(
            f"whole model {self.total_ms:.3f} ms per run (the rows above add up to it); "
            f"nodes on TVM's default lowering together {100 * self.tvm_default_share:.1f}%"
        )
        if self.tvm_functions:
            top = ", ".join(f"{f} {100 * share:.1f}%" for f, share in self.tvm_functions[:5])
            lines.append(f"TVM's kernels, largest first: {top}")
        return "\n".join(lines)


def _shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def random_inputs(model: CompiledModel, seed: int = 0) -> list[np.ndarray]:
    """Seeded standard-normal (floats) or small non-negative (ints) inputs of the compiled shapes."""
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in model.inputs:
        shape = model.compiled_shapes[spec.name]
        if spec.dtype.startswith("float"):
            arrays.append(rng.standard_normal(shape).astype(spec.dtype))
        elif spec.dtype == "bool":
            arrays.append(rng.integers(0, 2, shape).astype(bool))
        else:
            arrays.append(rng.integers(0, 4, shape).astype(spec.dtype))
    return arrays


class _PrivateLibrary:
    """A compiled model's linked library in a private temporary folder (mode 0700), which
    is removed when this object is collected or the interpreter exits."""

    def __init__(self) -> None:
        import weakref

        self.folder = tempfile.mkdtemp(prefix="convforge-model-")
        self.path = os.path.join(self.folder, "model.so")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, True)


def load(path: str | os.PathLike) -> CompiledModel:
    """Load a library written by :meth:`CompiledModel.export_library` (no onnx needed).

    The file is verified before anything in it is loaded or run: its trailer, size and
    SHA-256, and its target against this CPU (the rule is in
    :mod:`convforge.export.library`); a ValueError names the file and the reason.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"path: no such file {path!r}")
    with verified_library(path) as verified, without_scope_warnings():
        module, weights = runtime.load_model(verified)
    vm = runtime.make_vm(module)
    try:
        raw = vm[METADATA_FUNCTION]()
    except (AttributeError, RuntimeError) as err:
        raise ValueError(f"path: {path!r} is not a model library written by convforge") from err
    metadata = json.loads(runtime.outputs(raw)[0].tobytes().decode())
    return CompiledModel(module, metadata, weights=weights)


def compile_model(
    model: Any,
    target: Any = None,
    tuning_db: str | os.PathLike | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    progress: Callable[[str], None] | None = None,
    algorithm: str = "auto",
    *,
    dynamic: Sequence[str] | None = None,
    batch_buckets: Sequence[int] | None = None,
) -> CompiledModel:
    """Compile an ONNX model (ModelProto or path) with convforge kernels for ``target``.

    Convolution-family nodes (:data:`convforge.export.lowering.LOWERINGS`) run convforge's
    TE operators with its schedules (tuned where the tuning database directory
    ``tuning_db`` has a record); every other node keeps TVM's
    default lowering.

    Dynamic dimensions: a symbolic batch (dimension 0 of an input declared with a name such
    as ``'N'`` or no size) that ``input_shapes`` does not give stays dynamic: the graph is
    lowered with batched kernels for each of ``batch_buckets`` (default
    ``$CONVFORGE_BATCH_BUCKETS``, else 1, 2, 4, 8; positive, holding 1) into one library,
    and a batch B runs as the largest buckets that fit (:mod:`convforge.export.buckets`).
    ``dynamic`` (names of symbolic dims, e.g. ``["N"]``) or ``batch_buckets`` asks for that
    explicitly, also where ``input_shapes`` gives the input (its batch must then be 1);
    naming a dim that is not a batch (a spatial one) in ``dynamic`` is refused, as are
    names no input declares. ``input_shapes`` (name -> full shape) fixes what it gives: the
    other dynamic dimensions (required for them), declared spatial sizes of fully
    convolutional models, and, without ``dynamic``/``batch_buckets``, the batch: a batch of
    B > 1 there is static (another batch is refused), a batch of 1 runs larger batches as
    batch-1 calls (as convforge 0.1.7 did; what ``convforge check`` compiles).

    The compiled library is kept in the persistent cache (:mod:`convforge.kernel_cache`,
    :mod:`convforge.export.model_cache`): a later compile of the same model bytes with the
    same options, target, code and tuning state loads it instead of compiling. In a process
    that has not imported TVM, such a hit is found through the cache's quick index and
    loaded and run by TVM's runtime alone, without importing TVM's compiler (the model
    cache's "quick lookup"; ``target`` None or a string, no ``use_tuning_db`` context).

    Before TVM's importer sees the model (:mod:`convforge.export.prepare`): a missing
    default opset, a dangling input, an op neither convforge nor TVM converts, integer
    convolutions, DeformConv, Col2Im and shape-defining inputs (Resize scales/sizes/roi,
    Upsample scales, MaxUnpool output_shape) that are not constants are refused with one
    ``ValueError`` naming the node and op; static shape arithmetic (Shape of statically
    shaped tensors and small integer ops on constants) is folded into initializers;
    BatchNormalization with ``training_mode=1`` and MaxUnpool with ``output_shape`` are
    written out in primitive ops with onnxruntime's semantics.

    ``algorithm`` (``convforge.plan.ALGORITHMS``): 'auto' (Winograd where
    :func:`convforge.plan.plan_conv` picks it), 'direct' (no Winograd anywhere: the
    precise choice for data with outliers, see ``convforge.api.WINOGRAD_ERROR_BOUND``) or
    'winograd' (for every convolution it applies to, 'auto' elsewhere). A Winograd kernel
    first checks its input: where it holds a NaN or an infinity the direct kernel runs, so
    non-finite outputs are exactly onnxruntime's (report() counts the check in its share).
    """
    from convforge.export import model_cache

    with model_cache.one_digest_per_file():  # the model file hashed once, not per key
        hit = _quick_hit(
            model, target, tuning_db, input_shapes, progress, algorithm, dynamic, batch_buckets
        )
        if hit is not None:
            return hit
        from convforge.tvm_import import import_tvm

        import_tvm()
        from convforge.export import model as full

        return full.compile_model(
            model, target, tuning_db, input_shapes, progress, algorithm,
            dynamic=dynamic, batch_buckets=batch_buckets,
        )  # fmt: skip


def _quick_hit(
    model: Any,
    target: Any,
    tuning_db: str | os.PathLike | None,
    input_shapes: Any,
    progress: Callable[[str], None] | None,
    algorithm: Any,
    dynamic: Any,
    batch_buckets: Any,
) -> CompiledModel | None:
    """The model from the cache's quick index (:mod:`convforge.export.model_cache`), or None
    (then :func:`convforge.export.model.compile_model` looks up and compiles as usual)."""
    from convforge import kernel_cache
    from convforge.export import model_cache
    from convforge.export.compile_profile import CompileProfile

    tuning = sys.modules.get("convforge.schedules.tuning")
    if not kernel_cache.enabled() or (tuning is not None and tuning.context_active()):
        return None
    profile = CompileProfile()
    began = time.perf_counter()
    try:
        with profile.phase("cache lookup"):
            options = model_cache.compile_options(input_shapes, algorithm, dynamic, batch_buckets)
            start = model_cache.start_key(model, target, options, tuning_db)
            with without_scope_warnings():
                hit = model_cache.quick_load(start)
    except ValueError:  # a bad option or environment variable: the compile says which
        return None
    if hit is None:
        return None
    (module, weights), metadata, entry = hit
    compiled = CompiledModel(module, metadata, lazy=True, weights=weights)
    compiled._cache_entry = entry

    def again(shapes: Any) -> CompiledModel:
        from convforge.tvm_import import import_tvm

        import_tvm()
        from convforge.export import model as full

        return full.compile_model(
            model, target, tuning_db, shapes, progress, algorithm,
            dynamic=dynamic, batch_buckets=batch_buckets,
        )  # fmt: skip

    compiled._specialize = again
    compiled._rebuild = lambda: again(input_shapes)
    profile.total = time.perf_counter() - began
    profile.print_if_enabled()
    compiled.compile_profile = profile
    if progress is not None:
        progress(f"loaded from the cache ({profile.total:.2f} s)")
    return compiled


#: TVM 0.27's VM executable logs an empty warning per constant when it saves or loads a
#: library (``executable.cc:...: Warning: Scope Saving:`` / ``Scope Loaded:``): hundreds of
#: lines per model, saying nothing.
_SCOPE_WARNING = re.compile(rb"executable\.cc:\d+: Warning: Scope (?:Saving|Loaded):\s*$")


@contextlib.contextmanager
def without_scope_warnings():
    """Run the body with the process's stderr (file descriptor 2) captured, then write back
    every line of it but TVM's per-constant scope warnings (:data:`_SCOPE_WARNING`)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().splitlines(keepends=True)
            kept = b"".join(line for line in lines if not _SCOPE_WARNING.search(line))
            if kept:
                os.write(2, kept)
