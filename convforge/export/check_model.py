"""Check a compiled model against onnxruntime: per output max errors and top-1 agreement.

``check_model`` compiles the model with convforge, runs it and onnxruntime on the same
inputs (given, or seeded random of the declared shapes and dtypes) and compares every
output with :func:`convforge.export.check.compare`. With ``per_node=True`` every
intermediate tensor becomes a graph output in both runtimes (this also stops fusion
across them), which shows the first node where the two diverge.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from convforge.export.check import compare, run_onnxruntime, tolerances
from convforge.export.fusion import name_nodes
from convforge.export.model import (
    CompiledModel,
    compile_model,
    compiled_shapes,
    declared_inputs,
    load_onnx,
)
from convforge.extras import require
from convforge.targets import TargetArg


@dataclass(frozen=True)
class TensorCheck:
    """Agreement of one tensor; ``top1`` is the argmax agreement of a (N, classes) output."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ok: bool
    top1: float | None = None
    node: str | None = None


@dataclass(frozen=True)
class ModelCheck:
    """Result of :func:`check_model`: ``ok`` when every output agrees within tolerance."""

    outputs: list[TensorCheck]
    rtol: float
    atol: float
    nodes: list[TensorCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    @property
    def first_divergence(self) -> TensorCheck | None:
        """The first intermediate tensor (graph order) outside tolerance, with ``per_node``."""
        return next((n for n in self.nodes if not n.ok), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rtol": self.rtol,
            "atol": self.atol,
            "outputs": [asdict(o) for o in self.outputs],
            "nodes": [asdict(n) for n in self.nodes],
        }

    def __str__(self) -> str:
        lines = [
            f"{'output':<24} {'shape':<20} {'max abs':>10} {'max rel':>10} {'top-1':>7}  verdict"
        ]
        for o in [*self.outputs, *self.nodes]:
            top1 = "" if o.top1 is None else f"{100 * o.top1:.1f}%"
            label = o.name if o.node is None else f"{o.name} ({o.node})"
            lines.append(
                f"{label[:24]:<24} {o.shape!s:<20} {o.max_abs:>10.3g} {o.max_rel:>10.3g} "
                f"{top1:>7}  {'ok' if o.ok else 'MISMATCH'}"
            )
        first = self.first_divergence
        if first is not None:
            lines.append(f"first divergence: tensor {first.name!r} of node {first.node!r}")
        lines.append(
            f"{'AGREE' if self.ok else 'DISAGREE'} (|a-e| <= atol*max(1,max|e|) + rtol*|e|, "
            f"rtol={self.rtol:g}, atol={self.atol:g})"
        )
        return "\n".join(lines)


def top1_agreement(actual: np.ndarray, expected: np.ndarray) -> float | None:
    """Fraction of rows with the same argmax, for (N, classes) outputs (else ``None``)."""
    if expected.ndim < 2 or expected.shape[1] < 2 or math.prod(expected.shape[2:]) != 1:
        return None
    squeezed = expected.reshape(expected.shape[0], -1)
    return float(np.mean(actual.reshape(squeezed.shape).argmax(1) == squeezed.argmax(1)))


def make_inputs(
    model: onnx.ModelProto,
    inputs: Mapping[str, np.ndarray] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The given inputs, checked against the declared ones, or seeded random ones.

    Random inputs are standard normal (floats) of the declared shape, a dynamic batch as 1,
    or of ``input_shapes`` (:func:`~convforge.export.model.compiled_shapes`). Raises
    ValueError for a missing or unknown input, a wrong dtype kind or a wrong shape.
    """
    specs = declared_inputs(model)
    names = [s.name for s in specs]
    if inputs is not None:
        unknown = [n for n in inputs if n not in names]
        if unknown:
            raise ValueError(f"inputs: unknown input(s) {unknown}; the model's inputs are {names}")
        missing = [n for n in names if n not in inputs]
        if missing:
            raise ValueError(f"inputs: missing input(s) {missing}; the model's inputs are {names}")
    sizes = None if inputs is not None else compiled_shapes(specs, input_shapes)
    rng = np.random.default_rng(seed)
    result = {}
    for spec in specs:
        if inputs is not None:
            array = np.asarray(inputs[spec.name])
            if len(array.shape) != len(spec.shape) or any(
                d is not None and d != a for d, a in zip(spec.shape, array.shape)
            ):
                shape = "(" + ", ".join("?" if d is None else str(d) for d in spec.shape) + ")"
                raise ValueError(
                    f"inputs: {spec.name!r} must have shape {shape}, got {array.shape}"
                )
            if array.dtype.kind != np.dtype(spec.dtype).kind:  # e.g. complex for float
                raise ValueError(
                    f"inputs: {spec.name!r} has dtype {array.dtype}, the model declares "
                    f"{spec.dtype}"
                )
            result[spec.name] = array.astype(spec.dtype, copy=False)
            continue
        shape = sizes[spec.name]
        if spec.dtype.startswith("float"):
            result[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            result[spec.name] = rng.integers(0, 4, shape).astype(spec.dtype)
    return result


def expose_intermediates(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy whose float intermediate tensors are graph outputs; returns (model, tensor -> node)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in inferred.graph.value_info}
    present = {o.name for o in model.graph.output}
    exposed = onnx.ModelProto.FromString(model.SerializeToString())
    producers = {}
    for node in exposed.graph.node:
        for out in node.output:
            info = infos.get(out)
            if (
                info is not None
                and out not in present
                and info.type.tensor_type.elem_type in (1, 10, 11)
            ):
                exposed.graph.output.append(info)
                producers[out] = node.name
    return exposed, producers


def quantization_steps(model: onnx.ModelProto) -> dict[str, float]:
    """Graph outputs that are quantized values, with their quantization step (1 LSB): the
    constant per-tensor scale of the DequantizeLinear producing a float output, 1 for an
    integer output of a QuantizeLinear. Two runtimes may round a quantized value one step
    apart (onnxruntime computes a QDQ Add, Softmax or Gemm with its own integer kernels),
    so such an output agrees within one step; every other output keeps its dtype's
    tolerance."""
    constants = {t.name: t for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    steps = {}
    for output in model.graph.output:
        node = producers.get(output.name)
        if node is None or node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "QuantizeLinear":
            steps[output.name] = 1.0
        elif node.op_type == "DequantizeLinear" and len(node.input) > 1:
            scale = constants.get(node.input[1])
            if scale is not None:
                value = numpy_helper.to_array(scale)
                if value.size == 1 and np.isfinite(value).all():
                    steps[output.name] = float(value.reshape(()))
    return steps


def check_model(
    model: onnx.ModelProto | str | os.PathLike,
    inputs: Mapping[str, np.ndarray] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    *,
    target: TargetArg = None,
    tuning_db: Any = None,
    per_node: bool = False,
    compiled: CompiledModel | None = None,
    progress: Callable[[str], None] | None = None,
    algorithm: str = "auto",
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> ModelCheck:
    """Compile ``model`` with convforge (unless ``compiled`` is given), run it and onnxruntime.
    ``algorithm``: as :func:`convforge.compile_model`'s. Without ``inputs``, seeded random
    inputs of the declared shapes, or of ``input_shapes`` (name -> full shape) where given
    (needed for dynamic dimensions besides the batch).

    Tolerances default per dtype (:func:`convforge.export.check.tolerances`); an output that
    is a quantized value (a QDQ model's, :func:`quantization_steps`) agrees within one
    quantization step unless ``atol`` is given. Bad input
    (unreadable model, missing/unknown input, wrong shape) raises ValueError before compiling;
    so does a model onnxruntime (the reference) refuses. Needs onnxruntime: MissingExtraError
    (``pip install 'convforge[check]'``) first without it.
    """
    require("onnxruntime", "cf.check_model")
    original = name_nodes(load_onnx(model))
    feeds = make_inputs(original, inputs, input_shapes)
    producers: dict[str, str] = {}
    if per_node:
        original, producers = expose_intermediates(original)
        compiled = None
    try:  # the reference first: a model it refuses is refused before compiling
        theirs = run_onnxruntime(original, feeds)
    except Exception as err:  # onnxruntime's own exception types (Fail, NotImplemented, ...)
        message = " ".join(str(err).split())[:300]
        raise ValueError(
            f"model: the reference runtime (onnxruntime) refuses it, so there is nothing to "
            f"check against: {type(err).__name__}: {message}"
        ) from err
    if compiled is None:
        shapes = {name: array.shape for name, array in feeds.items()}
        compiled = compile_model(
            original, target=target, tuning_db=tuning_db, input_shapes=shapes, progress=progress,
            algorithm=algorithm,
        )  # fmt: skip
    ours = compiled(**feeds)
    steps = quantization_steps(original) if atol is None else {}
    results = []
    first_atol = atol
    for spec, actual, expected in zip(compiled.outputs, ours, theirs):
        output_atol = atol
        if spec.name in steps:  # one quantization step (1 LSB) of a quantized output
            scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
            output_atol = max(tolerances(str(expected.dtype))[1], 1.001 * steps[spec.name] / scale)
        agreement = compare(actual, expected, rtol=rtol, atol=output_atol)
        first_atol = output_atol if not results else first_atol
        results.append(
            TensorCheck(
                spec.name, tuple(expected.shape), agreement.max_abs, agreement.max_rel,
                agreement.ok, top1_agreement(actual, expected), producers.get(spec.name),
            )
        )  # fmt: skip
    used = compare(ours[0], theirs[0], rtol=rtol, atol=first_atol)
    declared = [r for r in results if r.node is None]
    nodes = [r for r in results if r.node is not None]
    return ModelCheck(declared, used.rtol, used.atol, nodes)
