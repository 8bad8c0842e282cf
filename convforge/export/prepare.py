"""ONNX-level checks and rewrites that run before TVM's importer sees a model.

:func:`check_graph` refuses, with one ``ValueError`` naming the node, op and rule, what
TVM's importer would fail on with a traceback or compute wrongly: a missing default-domain
opset, a dangling input, an op neither convforge nor TVM converts, and the ops refused
whatever their attributes (:data:`UNSUPPORTED_OPS`).

:func:`fold_static_shapes` evaluates static shape arithmetic (``Shape`` of a tensor whose
shape is known once the inputs have their compiled shapes, and the small ops fed only by
constants: ``Gather``, ``Sub``, ``Concat``, ``Unsqueeze``, ``Slice``, ``Cast``, ...) with
ONNX's reference evaluator and replaces it by initializers, so that TVM's importer (which
fails with "cannot handle ShapeExpr inputs" on such graphs, common in PyTorch exports)
sees constants; statically empty tensors become empty initializers.
:func:`check_shape_inputs` then refuses shape-defining inputs that are still not constant.

:func:`expand_training_batch_norm` and :func:`expand_max_unpool` write out, in primitive
ops with onnxruntime's semantics, two node forms TVM's converters get wrong or cannot read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

#: Ops evaluated ahead of time when every input is a (small) constant.
FOLDABLE_OPS = frozenset(
    {
        "Shape", "Size", "Gather", "Sub", "Add", "Mul", "Div", "Mod", "Neg", "Abs",
        "Floor", "Ceil", "Sqrt", "Pow", "Min", "Max", "Concat", "Unsqueeze", "Squeeze",
        "Slice", "Cast", "Reshape", "Identity", "Range", "ConstantOfShape", "Equal", "Less",
        "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Where", "Expand",
        "Tile", "Transpose", "ReduceProd", "ReduceSum", "ReduceMin", "ReduceMax",
        "GatherElements", "Constant",
    }
)  # fmt: skip

#: Constants larger than this (elements) are not folded through: shape arithmetic is small.
MAX_FOLDED_ELEMENTS = 4096

#: Inputs (by position) that fix an op's output shape and so must be constants.
SHAPE_INPUTS = {
    "Resize": {1: "roi", 2: "scales", 3: "sizes"},
    "Upsample": {1: "scales"},
    "MaxUnpool": {2: "output_shape"},
    "Col2Im": {1: "image_shape", 2: "block_shape"},
}


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def check_shape_inputs(model: onnx.ModelProto) -> None:
    """Refuse (``ValueError`` naming node, op and input) a Resize, Upsample, MaxUnpool or
    Col2Im whose shape-defining input is not a constant after :func:`fold_static_shapes`:
    its output shape would be dynamic, which TVM's importer cannot convert."""
    constants = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            constants.update(node.output)
        for position, what in SHAPE_INPUTS.get(node.op_type, {}).items():
            name = node.input[position] if len(node.input) > position else ""
            if name and name not in constants:
                raise ValueError(
                    f"node {node.name!r} ({node.op_type}): input {what!r} ({name!r}) must be "
                    "a constant (an initializer, a Constant or static shape arithmetic): it "
                    "fixes the output shape"
                )


#: Op types refused whatever their attributes, with the reason (checked before TVM).
UNSUPPORTED_OPS = {
    "DeformConv": "deformable convolution is not supported (neither convforge nor TVM)",
    "Col2Im": "Col2Im is not supported (neither convforge nor TVM)",
}


def check_graph(model: onnx.ModelProto) -> None:
    """Refuse (``ValueError`` naming node and op) a model TVM's importer cannot import
    correctly: no default-domain opset, a dangling input, an unconvertible op, an op of
    :data:`UNSUPPORTED_OPS` (DeformConv, Col2Im). Shape-defining
    inputs are checked after folding by :func:`check_shape_inputs`."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    from convforge.export.fusion import default_node_name
    from convforge.export.lowering import LOWERINGS

    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        raise ValueError("model: no opset_import for the default ONNX domain ('' / 'ai.onnx')")
    graph = model.graph
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    # TVM's importer handles If and Constant itself, outside its converter map.
    convertible = set(_get_convert_map()) | set(LOWERINGS) | {"If", "Constant"}
    for index, node in enumerate(graph.node):
        where = f"node {default_node_name(node, index)!r} ({node.op_type})"
        if node.op_type in UNSUPPORTED_OPS:
            raise ValueError(f"{where}: {UNSUPPORTED_OPS[node.op_type]}")
        if node.op_type not in convertible or node.domain not in ("", "ai.onnx"):
            domain = f" of domain {node.domain!r}" if node.domain else ""
            raise ValueError(f"{where}: op {node.op_type!r}{domain} is not supported")
        for name in node.input:
            if name and name not in available:
                raise ValueError(
                    f"{where}: input {name!r} is dangling (no graph input, initializer or "
                    "earlier node produces it)"
                )
        available.update(o for o in node.output if o)
    for out in graph.output:
        if out.name not in available:
            raise ValueError(f"model: output {out.name!r} is produced by no node or input")


#: Initializers larger than this (bytes of data) are left out of the copy
#: :func:`infer_shapes` gives ONNX's shape inference (as typed graph inputs).
SHAPE_INFERENCE_MAX_CONSTANT_BYTES = 4096


def infer_shapes(model: onnx.ModelProto, data_prop: bool = False) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes(model, data_prop=data_prop)`` on a copy of
    ``model`` whose large initializers (weights: over ``SHAPE_INFERENCE_MAX_CONSTANT_BYTES``)
    are graph inputs of the same type and shape: the same shapes, without serializing the
    weights (0.55-0.77 s per call for the light ResNet-50's 100 MB, 0.01 s without them).
    The small ones stay, for data propagation (shape tensors). The inferred graph has no
    large initializers: read their shapes from ``model``."""
    return onnx.shape_inference.infer_shapes(without_weights(model), data_prop=data_prop)


def without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers over ``SHAPE_INFERENCE_MAX_CONSTANT_BYTES``
    are graph inputs of the same type and shape (the weights' bytes are never copied): for
    what needs the graph's structure and types only (shape inference, onnx's checker)."""
    light = onnx.ModelProto()
    _copy_fields(model, light, leave_out="graph")
    graph = light.graph
    _copy_fields(model.graph, graph, leave_out="initializer")
    declared = {v.name for v in graph.input}
    for tensor in model.graph.initializer:
        if _data_bytes(tensor) <= SHAPE_INFERENCE_MAX_CONSTANT_BYTES:
            graph.initializer.append(tensor)
        elif tensor.name not in declared:
            graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            )
    return light


def _data_bytes(tensor: onnx.TensorProto) -> int:
    """About the bytes of ``tensor``'s data: its element count times the element size
    (protobuf's ``ByteSize`` walks the message: 0.2 s for a ResNet-50's weights); the
    message's size for strings and external data."""
    external = tensor.data_location == onnx.TensorProto.EXTERNAL
    if external or tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return tensor.ByteSize()
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return math.prod(tensor.dims) * itemsize


def _copy_fields(source: Any, target: Any, leave_out: str) -> None:
    """Copy every set field of the protobuf message ``source`` into the empty ``target``
    (same type) but ``leave_out``."""
    for field, value in source.ListFields():
        if field.name == leave_out:
            continue
        if field.is_repeated:
            getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], int]]:
    """Fully static tensor shapes after ONNX shape inference (name -> (shape, elem_type))."""
    try:
        inferred = infer_shapes(model, data_prop=True)
    except Exception:  # inference is an aid only: fold nothing it cannot see
        return {}
    graph = inferred.graph
    result = {t.name: (tuple(t.dims), t.data_type) for t in model.graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        t = value.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = t.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            result[value.name] = (tuple(d.dim_value for d in dims), t.elem_type)
    return result


def _empty_outputs(node: onnx.NodeProto, shapes: dict) -> list[np.ndarray] | None:
    """The outputs of ``node`` when every one is statically empty (a 0 in its shape)."""
    outs = []
    for name in node.output:
        found = shapes.get(name)
        if not name or found is None or 0 not in found[0] or not found[1]:
            return None
        outs.append(np.zeros(found[0], onnx.helper.tensor_dtype_to_np_dtype(found[1])))
    return outs or None


def _output_too_large(node: onnx.NodeProto, values: Sequence[np.ndarray | None]) -> bool:
    """Whether ``node`` (inputs ``values``) would make a tensor past
    :data:`MAX_FOLDED_ELEMENTS`: checked before evaluating, so that a hostile
    ``ConstantOfShape``/``Range``/``Expand``/``Tile`` cannot exhaust memory here."""
    try:
        if node.op_type == "ConstantOfShape":
            count = np.prod(values[0].astype(np.float64))
        elif node.op_type == "Range":
            start, limit, delta = (float(np.asarray(v).reshape(-1)[0]) for v in values[:3])
            count = 0 if delta == 0 else max(np.ceil((limit - start) / delta), 0)
        elif node.op_type == "Expand":
            shape = np.broadcast_shapes(values[0].shape, tuple(int(d) for d in values[1]))
            count = np.prod(np.array(shape, np.float64))
        elif node.op_type == "Tile":
            count = values[0].size * np.prod(values[1].astype(np.float64))
        else:
            return False
    except (TypeError, ValueError, IndexError, OverflowError):
        return True  # malformed: leave it to the importer, which reports it
    return not np.isfinite(count) or count > MAX_FOLDED_ELEMENTS


def _evaluate(node: onnx.NodeProto, values: Sequence[np.ndarray | None], opsets) -> list:
    from onnx.reference import ReferenceEvaluator

    names = [f"in{k}" if name else "" for k, name in enumerate(node.input)]
    clone = onnx.NodeProto()
    clone.CopyFrom(node)
    del clone.input[:]
    clone.input.extend(names)
    del clone.output[:]
    clone.output.extend(f"out{k}" for k in range(len(node.output)))
    graph = onnx.helper.make_graph(
        [clone],
        "fold",
        [
            onnx.helper.make_tensor_value_info(
                n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape
            )
            for n, v in zip(names, values)
            if n
        ],
        [onnx.helper.make_empty_tensor_value_info(o) for o in clone.output],
    )
    model = onnx.helper.make_model(graph, opset_imports=list(opsets))
    feeds = {n: v for n, v in zip(names, values) if n}
    return list(ReferenceEvaluator(model).run(None, feeds))


def _with_input_shapes(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None
) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs have the given (compiled) static shapes."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    for value in work.graph.input:
        shape = (input_shapes or {}).get(value.name)
        if shape is None:
            continue
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, shape):
            dim.Clear()
            dim.dim_value = int(size)
    return work


def fold_static_shapes(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> onnx.ModelProto:
    """``model`` with static shape arithmetic replaced by initializers (a new model; the
    argument is not changed). ``input_shapes`` (name -> the compiled shape) fixes the
    graph inputs' dynamic dimensions first, as the compiled model will see them. Returns
    ``model`` itself when nothing folds."""
    work = _with_input_shapes(model, input_shapes)
    opsets = [o for o in work.opset_import if o.domain in ("", "ai.onnx")]
    known: dict[str, np.ndarray] = {
        t.name: numpy_helper.to_array(t)
        for t in work.graph.initializer
        if np.prod(t.dims, dtype=np.int64) <= MAX_FOLDED_ELEMENTS
    }
    folded: set[int] = set()
    changed = False
    for _ in range(8):  # each round may expose static shapes to the next one
        shapes = _static_shapes(work)
        progress = False
        for index, node in enumerate(work.graph.node):
            if (
                index in folded
                or node.domain not in ("", "ai.onnx")
                or any(
                    a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                    for a in node.attribute
                )
            ):
                continue
            if node.op_type == "Concat":  # empty operands add nothing (TVM fails on them)
                inputs = [n for n in node.input if 0 not in shapes.get(n, ((1,), 0))[0]]
                if inputs and len(inputs) < len(node.input):
                    del node.input[:]
                    node.input.extend(inputs)
                    progress = True
            empty = _empty_outputs(node, shapes)
            if empty is not None:  # statically empty: known without evaluating
                outs = empty
            elif node.op_type not in FOLDABLE_OPS:
                continue
            elif node.op_type in ("Shape", "Size"):
                shape = shapes.get(node.input[0], (None,))[0]
                if shape is None:
                    continue
                if node.op_type == "Size":
                    outs = [np.array(int(np.prod(shape, dtype=np.int64)), np.int64)]
                else:
                    start, end = _attr(node, "start", 0), _attr(node, "end", None)
                    outs = [np.array(shape[slice(start, end)], np.int64)]
            else:
                values = [known.get(name) if name else None for name in node.input]
                if any(name and v is None for name, v in zip(node.input, values)):
                    continue
                if _output_too_large(node, values):
                    continue
                try:
                    outs = _evaluate(node, values, opsets)
                except Exception:  # leave it to the importer, which reports it
                    continue
            if any(np.asarray(o).size > MAX_FOLDED_ELEMENTS for o in outs):
                continue
            for name, value in zip(node.output, outs):
                if name:
                    known[name] = np.asarray(value)
            folded.add(index)
            progress = True
        if not progress:
            break
        _replace_folded(work, folded, known)
        folded = set()
        changed = True
    return work if changed else model


def _replace_folded(work: onnx.ModelProto, folded: set[int], known: dict) -> None:
    """Drop the folded nodes; their outputs that are still read become initializers."""
    graph = work.graph
    removed = [graph.node[i] for i in sorted(folded)]
    kept = [n for i, n in enumerate(graph.node) if i not in folded]
    read = {name for n in kept for name in n.input} | {o.name for o in graph.output}
    existing = {t.name for t in graph.initializer}
    for node in removed:
        for name in node.output:
            if name and name in read and name not in existing:
                graph.initializer.append(numpy_helper.from_array(known[name], name))
                existing.add(name)
    del graph.node[:]
    graph.node.extend(kept)
    value_names = {t.name for t in graph.initializer}
    keep_info = [v for v in graph.value_info if v.name not in value_names]
    del graph.value_info[:]
    graph.value_info.extend(keep_info)


def expand_training_batch_norm(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    dynamic_batch: bool = False,
) -> onnx.ModelProto:
    """``model`` with every ``BatchNormalization`` of ``training_mode=1`` written out in
    primitive ops with ONNX's (and onnxruntime's) semantics: Y normalized by the batch's
    mean and population variance over every axis but 1; running_mean/var outputs
    ``input * momentum + batch statistic * (1 - momentum)`` (TVM's converter gets the
    running statistics wrong). Returns ``model`` itself when there is none.

    ``input_shapes``: the compiled input shapes (the statistics' axes need the rank).
    ``dynamic_batch``: the compiled model may run a larger batch sample by sample, which
    would compute the statistics per sample: refused (``ValueError``) then.
    """
    graph = model.graph
    if not any(
        n.op_type == "BatchNormalization" and _attr(n, "training_mode", 0) for n in graph.node
    ):
        return model
    work = _with_input_shapes(model, input_shapes)
    shapes = _static_shapes(work)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    nodes: list[onnx.NodeProto] = []
    for node in work.graph.node:
        if node.op_type != "BatchNormalization" or not _attr(node, "training_mode", 0):
            nodes.append(node)
            continue
        where = f"node {node.name!r} (BatchNormalization)"
        if dynamic_batch:
            raise ValueError(
                f"{where}: training_mode=1 with a dynamic batch would compute the batch "
                "statistics per sample: give input_shapes with the batch to compile for"
            )
        found = shapes.get(node.input[0])
        if found is None:
            raise ValueError(f"{where}: training_mode=1 needs a static input shape")
        nodes += _training_batch_norm_nodes(node, work, len(found[0]), found[1], opset)
    del work.graph.node[:]
    work.graph.node.extend(nodes)
    return work


def _training_batch_norm_nodes(
    node: onnx.NodeProto, work: onnx.ModelProto, rank: int, elem: int, opset: int
) -> list[onnx.NodeProto]:
    """The primitive ops of one training-mode BatchNormalization (constants added to
    ``work``'s initializers)."""
    x, scale, bias, mean, var = node.input[:5]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
    axes = [0, *range(2, rank)]
    p = f"{node.name}__bn_"
    made: set[str] = set()

    def const(name, value, dt=dtype):
        if p + name not in made:
            made.add(p + name)
            tensor = numpy_helper.from_array(np.array(value, dt), p + name)
            work.graph.initializer.append(tensor)
        return p + name

    def reduce_mean(src, out):
        if opset >= 18:
            return onnx.helper.make_node(
                "ReduceMean", [src, const("axes", axes, np.int64)], [out], keepdims=1
            )
        return onnx.helper.make_node("ReduceMean", [src], [out], axes=axes, keepdims=1)

    eps = float(_attr(node, "epsilon", 1e-5))
    momentum = float(_attr(node, "momentum", 0.9))
    channel = const("channel_shape", [1, -1] + [1] * (rank - 2), np.int64)
    flat = const("flat_shape", [-1], np.int64)
    mk = onnx.helper.make_node
    nodes = [
        reduce_mean(x, p + "mean"),
        mk("Sub", [x, p + "mean"], [p + "centered"]),
        mk("Mul", [p + "centered", p + "centered"], [p + "squared"]),
        reduce_mean(p + "squared", p + "var"),
        mk("Add", [p + "var", const("eps", eps)], [p + "var_eps"]),
        mk("Sqrt", [p + "var_eps"], [p + "std"]),
        mk("Div", [p + "centered", p + "std"], [p + "normalized"]),
        mk("Reshape", [scale, channel], [p + "scale"]),
        mk("Reshape", [bias, channel], [p + "bias"]),
        mk("Mul", [p + "normalized", p + "scale"], [p + "scaled"]),
        mk("Add", [p + "scaled", p + "bias"], [node.output[0]]),
    ]
    for k, (running, batch) in enumerate(((mean, "mean"), (var, "var")), start=1):
        if len(node.output) <= k or not node.output[k]:
            continue
        nodes += [
            mk("Reshape", [p + batch, flat], [p + batch + "_flat"]),
            mk("Mul", [running, const("momentum", momentum)], [p + batch + "_kept"]),
            mk(
                "Mul",
                [p + batch + "_flat", const("one_minus_momentum", 1.0 - momentum)],
                [p + batch + "_new"],
            ),
            mk("Add", [p + batch + "_kept", p + batch + "_new"], [node.output[k]]),
        ]
    return nodes


def expand_max_unpool(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every MaxUnpool that has a constant ``output_shape`` input computed
    as onnxruntime does: ``Y.flat[I.flat] = X.flat`` in a zero tensor of ``output_shape``
    (ConstantOfShape, ScatterElements, Reshape); TVM's converter cannot read that input.
    (ONNX's reference instead scatters into the unpooled shape and zero-pads that to
    ``output_shape``; convforge follows onnxruntime.) Call after :func:`check_shape_inputs`
    (a non-constant output_shape is refused there). Returns ``model`` itself when there
    is none."""
    graph = model.graph
    targets = [
        n for n in graph.node if n.op_type == "MaxUnpool" and len(n.input) > 2 and n.input[2]
    ]
    if not targets:
        return model
    work = onnx.ModelProto()
    work.CopyFrom(model)
    constants = {t.name: t for t in work.graph.initializer}
    for node in work.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    shapes = _static_shapes(work)
    nodes: list[onnx.NodeProto] = []
    mk = onnx.helper.make_node
    for node in work.graph.node:
        if node.op_type != "MaxUnpool" or len(node.input) < 3 or not node.input[2]:
            nodes.append(node)
            continue
        x, indices, output_shape = node.input[:3]
        elem = shapes.get(x, ((), onnx.TensorProto.FLOAT))[1] or onnx.TensorProto.FLOAT
        size = int(np.prod(numpy_helper.to_array(constants[output_shape]), dtype=np.int64))
        p = f"{node.name}__unpool_"
        for name, value in (("size", [size]), ("flat", [-1])):
            work.graph.initializer.append(
                numpy_helper.from_array(np.array(value, np.int64), p + name)
            )
        zero = onnx.helper.make_tensor("zero", elem, [1], [0])
        nodes += [
            mk("ConstantOfShape", [p + "size"], [p + "zeros"], value=zero),
            mk("Reshape", [x, p + "flat"], [p + "x"]),
            mk("Reshape", [indices, p + "flat"], [p + "indices"]),
            mk("ScatterElements", [p + "zeros", p + "indices", p + "x"], [p + "y"], axis=0),
            mk("Reshape", [p + "y", output_shape], [node.output[0]]),
        ]
    del work.graph.node[:]
    work.graph.node.extend(nodes)
    return work


def check_constant_indices(model: onnx.ModelProto) -> None:
    """Refuse (``ValueError`` naming node, index and range) a ``Gather`` whose constant
    indices fall outside ``[-s, s - 1]`` of its statically shaped data axis: onnxruntime
    refuses such a node, and TVM's Gather reads out of bounds (a wrong number or a crash).
    Indices computed at run time cannot be checked here."""
    constants = {t.name: t for t in model.graph.initializer}
    targets = [n for n in model.graph.node if n.op_type == "Gather" and n.input[1] in constants]
    if not targets:
        return
    shapes = _static_shapes(model)
    for node in targets:
        data = shapes.get(node.input[0])
        if data is None:
            continue
        axis = int(_attr(node, "axis", 0))
        size = data[0][axis]
        indices = numpy_helper.to_array(constants[node.input[1]])
        bad = indices[(indices < -size) | (indices >= size)]
        if bad.size:
            raise ValueError(
                f"node {node.name!r} (Gather): index {int(bad.reshape(-1)[0])} is outside "
                f"[{-size}, {size - 1}] (axis {axis} of size {size})"
            )
