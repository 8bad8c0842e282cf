"""Compile whole ONNX models with convforge kernels; run, time, report, export and load them.

``compile_model``: ONNX -> fusion on the graph (:mod:`convforge.export.fusion`) -> TVM's
relax ONNX importer with convforge's converters for convolution-family nodes
(:mod:`convforge.export.lowering`) -> ``tvm.compile`` (TVM's default lowering for every
other node) -> :class:`CompiledModel`.

A :class:`CompiledModel` exports as one shared library holding the code, the weights and a
JSON description (inputs, outputs, node -> kernel table), read back by :func:`load` in a
process that needs neither onnx nor the original model. This module imports onnx only
inside :func:`compile_model`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import tvm
from tvm import relax

from convforge.export import codegen, runtime
from convforge.export.compiled import (  # noqa: F401  (re-exported: this module's public API)
    METADATA_FUNCTION,
    NONFINITE_CHECK_SUFFIX,
    TVM_ROW,
    UNATTRIBUTED_ROW,
    CompiledModel,
    InputDtypeError,
    ModelReport,
    NodeRow,
    TensorSpec,
    _PrivateLibrary,
    _shape_text,
    load,
    random_inputs,
    without_scope_warnings,
)
from convforge.shapes import as_shape, check_index_range
from convforge.targets import TargetArg, is_cpu, resolve_target

if TYPE_CHECKING:
    from convforge.export.lowering import LoweringContext


_ONNX_DTYPES = {
    1: "float32", 10: "float16", 11: "float64", 2: "uint8", 3: "int8", 6: "int32", 7: "int64",
    9: "bool",
}  # fmt: skip


def load_onnx(model: Any) -> Any:
    """An ``onnx.ModelProto`` from a ModelProto or a path; ValueError when it can't be read or
    :func:`convforge.export.prepare.check_graph` refuses it."""
    import onnx

    from convforge.export.prepare import check_graph

    if isinstance(model, onnx.ModelProto):
        check_graph(model)
        return model
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise ValueError(f"model: no such file {path!r}")
    try:
        loaded = onnx.load(path)
    except Exception as err:
        raise ValueError(f"model: {path!r} is not a readable ONNX model ({err})") from err
    check_graph(loaded)
    return loaded


def declared_inputs(model: Any) -> list[TensorSpec]:
    """The graph inputs that are not initializers, with declared shapes and dtypes."""
    constants = {t.name for t in model.graph.initializer}
    return [_spec(v) for v in model.graph.input if v.name not in constants]


def _spec(value: Any) -> TensorSpec:
    tensor = value.type.tensor_type
    dtype = _ONNX_DTYPES.get(tensor.elem_type)
    if dtype is None:
        raise ValueError(f"input {value.name!r}: element type {tensor.elem_type} is not supported")
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return TensorSpec(value.name, shape, dtype)


def compiled_shapes(
    specs: Sequence[TensorSpec], input_shapes: Mapping[str, Sequence[int]] | None
) -> dict[str, tuple[int, ...]]:
    """Each input's shape: ``input_shapes``' where given (ValueError for an unknown name or a
    shape that does not fit the declaration), else the declared one with a dynamic batch as
    1 (ValueError for other dynamic dimensions, which need ``input_shapes``)."""
    input_shapes = dict(input_shapes or {})
    names = [s.name for s in specs]
    for name in input_shapes:
        if name not in names:
            raise ValueError(f"input_shapes names unknown input {name!r}; inputs are {names}")
    result = {}
    for spec in specs:
        given = input_shapes.get(spec.name)
        if given is not None:
            shape = as_shape(given, f"input_shapes[{spec.name!r}]")
            if len(shape) != len(spec.shape) or any(
                d is not None and d != s for d, s in zip(spec.shape, shape)
            ):
                raise ValueError(
                    f"input_shapes[{spec.name!r}] = {shape} does not fit the declared shape "
                    f"{_shape_text(spec.shape)}"
                )
            result[spec.name] = shape
            continue
        unknown = [k for k, d in enumerate(spec.shape) if d is None and k > 0]
        if unknown:
            raise ValueError(
                f"input {spec.name!r} has dynamic dimension(s) {unknown} besides the batch: "
                f"give input_shapes={{{spec.name!r}: (...)}}"
            )
        result[spec.name] = tuple(1 if d is None else d for d in spec.shape)
    return result


def compile_model(
    model: Any,
    target: TargetArg = None,
    tuning_db: str | os.PathLike | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    progress: Callable[[str], None] | None = None,
    algorithm: str = "auto",
    *,
    dynamic: Sequence[str] | None = None,
    batch_buckets: Sequence[int] | None = None,
) -> CompiledModel:
    """:func:`convforge.compile_model` (the contract is stated there) without its quick
    lookup: the usual cache lookup (with TVM), else the compile, then the cache store; either
    way the quick index learns the entry (:func:`convforge.export.model_cache.remember`)."""
    from convforge.plan import check_algorithm

    check_algorithm(algorithm)
    from convforge.export.compile_profile import CompileProfile, tvm_compile
    from convforge.export.pipeline import relax_pipeline

    say = progress or (lambda message: None)
    profile = CompileProfile()
    began = time.perf_counter()
    if tuning_db is not None:
        tuning_db = open_tuning_db(tuning_db)
    resolved = resolve_target(target)
    from convforge.export import model_cache

    options = model_cache.compile_options(input_shapes, algorithm, dynamic, batch_buckets)
    cached = _cached_model(model, resolved, options, tuning_db, profile, began)

    def remember(parts: dict) -> None:
        start = model_cache.start_key(model, target, options, tuning_db)
        model_cache.remember(start, parts, tuning_db)

    if cached is not None:
        cached_model = cached[0]
        if cached_model is not None:
            remember(cached[1])
            say(f"loaded from the cache ({profile.total:.2f} s)")
            cached_model._specialize = lambda shapes: compile_model(
                model, resolved, tuning_db, shapes, progress, algorithm,
                dynamic=dynamic, batch_buckets=batch_buckets,
            )  # fmt: skip
            cached_model._rebuild = lambda: compile_model(
                model, resolved, tuning_db, input_shapes, progress, algorithm,
                dynamic=dynamic, batch_buckets=batch_buckets,
            )  # fmt: skip
            return cached_model
    with profile.phase("load"):
        original = load_onnx(model)
    buckets = dynamic_batch_buckets(original, input_shapes, dynamic, batch_buckets)
    # CPU kernels built while the import goes on (export/codegen.py)
    early = codegen.EarlyBuilds(resolved) if is_cpu(resolved) else None
    try:
        if buckets is None:
            mod, ctx, metadata = import_model(
                original, resolved, tuning_db, input_shapes, progress, algorithm=algorithm,
                profile=profile, prebuild=None if early is None else early.submit,
            )  # fmt: skip
        else:
            mod, ctx, metadata = _import_buckets(
                original, resolved, tuning_db, input_shapes, progress, algorithm, profile,
                buckets, early,
            )  # fmt: skip
        mod = _with_metadata(mod, metadata)
        say(f"compiling ({len(ctx.records)} convforge kernels, the rest TVM's default lowering)")
        start = time.perf_counter()
        pipeline = relax_pipeline(resolved, profile)
        if is_cpu(resolved):  # kernels built in parallel and linked once (export/codegen.py)
            (module, weights), library = _build_and_load(mod, resolved, pipeline, profile, early)
        else:
            module, weights, library = tvm_compile(mod, resolved, pipeline, profile), [], None
    finally:
        if early is not None:
            early.close()
    say(f"compiled in {time.perf_counter() - start:.1f} s")

    def specialize(shapes: dict[str, tuple[int, ...]]) -> CompiledModel:
        say(f"compiling a specialization for input shapes {shapes}")
        return compile_model(
            original, resolved, tuning_db, shapes, progress, algorithm,
            dynamic=dynamic, batch_buckets=batch_buckets,
        )  # fmt: skip

    # The VM on first use (on a GPU target, with the JIT compile of the machine code).
    compiled = CompiledModel(
        module, json.loads(json.dumps(metadata)), specialize, lazy=True, weights=weights
    )
    compiled._library = library
    if cached is not None:
        with profile.phase("cache store"):
            compiled._cache_entry = _store_model(cached[1], library, resolved, metadata)
        if compiled._cache_entry is not None:
            remember(cached[1])
    profile.total = time.perf_counter() - began
    profile.kernels = len(ctx.records)
    profile.distinct_kernels = len(ctx.added_functions)
    profile.print_if_enabled()
    compiled.compile_profile = profile
    return compiled


def _cached_model(
    model: Any,
    target: tvm.target.Target,
    options: dict,
    tuning_db: str | None,
    profile: Any,
    began: float,
) -> tuple[CompiledModel | None, dict] | None:
    """The persistent cache's answer for this compile (:mod:`convforge.export.model_cache`):
    None when nothing is cached (disabled, GPU target, unreadable model), else (the loaded
    model or None on a miss, the entry's key parts)."""
    from convforge import kernel_cache
    from convforge.export import model_cache

    if not kernel_cache.enabled():
        return None
    with profile.phase("cache lookup"):
        try:
            parts = model_cache.key_parts(model, target, options, tuning_db)
        except (TypeError, ValueError):  # options that are not even serializable: compile
            parts = None  # refuses them with its own message
        if parts is None:
            return None
        with without_scope_warnings():
            hit = model_cache.load(parts, runtime.load_model)
    if hit is None:
        return None, parts
    (module, weights), metadata, entry = hit
    compiled = CompiledModel(module, metadata, lazy=True, weights=weights)
    compiled._cache_entry = entry
    profile.total = time.perf_counter() - began
    profile.print_if_enabled()
    compiled.compile_profile = profile
    return compiled, parts


def _build_and_load(
    mod: tvm.IRModule,
    target: tvm.target.Target,
    pipeline: Any,
    profile: Any,
    early: codegen.EarlyBuilds | None = None,
) -> tuple[tuple[tvm.runtime.Module, list], _PrivateLibrary]:
    """Compile ``mod`` for a CPU target with :mod:`convforge.export.codegen` (``early``: its
    kernels built during the import) and load the linked library: ((the loaded module, its
    weights), the library file, kept while the model lives)."""
    built = codegen.build(mod, target, pipeline, profile.phase, early=early)
    try:
        library = _PrivateLibrary()
        with profile.phase("link"):
            built.link(library.path)
    finally:
        built.close()
    with profile.phase("load library"), without_scope_warnings():
        module, weights = runtime.load_model(library.path)
    return (module, weights), library


def _store_model(
    parts: dict, library: _PrivateLibrary, target: tvm.target.Target, metadata: dict
) -> str | None:
    """Store a compiled model in the persistent cache (only CPU models are cached: a copy of
    the library :func:`_build_and_load` linked); the entry's path (or None)."""
    from convforge.export import model_cache

    def write(tmp: str) -> None:
        shutil.copyfile(library.path, tmp)

    entry = model_cache.store(parts, write, target, json.loads(json.dumps(metadata)))
    return None if entry is None else str(entry)


def _dim_names(model: Any) -> dict[str, list[str | None]]:
    """Each non-initializer input's dims: the symbolic name (``dim_param``) or None."""
    constants = {t.name for t in model.graph.initializer}
    return {
        v.name: [d.dim_param or None for d in v.type.tensor_type.shape.dim]
        for v in model.graph.input
        if v.name not in constants
    }


def dynamic_batch_buckets(
    model: Any,
    input_shapes: Mapping[str, Sequence[int]] | None,
    dynamic: Sequence[str] | None,
    batch_buckets: Sequence[int] | None,
) -> tuple[int, ...] | None:
    """The batch buckets to compile ``model`` for (see :func:`compile_model`), None for a
    static batch. ValueError naming ``dynamic``/``batch_buckets`` and the rule for names no
    input declares, a dynamic spatial dim, or a dynamic batch the model lacks or
    ``input_shapes`` fixes."""
    from convforge.export.buckets import check_buckets, default_buckets

    specs = declared_inputs(model)
    names = _dim_names(model)
    given = dict(input_shapes or {}) if isinstance(input_shapes, Mapping) else {}
    if dynamic is not None:
        if isinstance(dynamic, str) or not isinstance(dynamic, Sequence):
            raise ValueError(f"dynamic must be a list of dimension names, got {dynamic!r}")
        for name in dynamic:
            where = [(i, k) for i, dims in names.items() for k, d in enumerate(dims) if d == name]
            if not where:
                declared = sorted({d for dims in names.values() for d in dims if d})
                raise ValueError(
                    f"dynamic: no input declares a dimension named {name!r} (symbolic "
                    f"dimensions: {declared})"
                )
            spatial = [(i, k) for i, k in where if k > 0]
            if spatial:
                raise ValueError(
                    f"dynamic: {name!r} is dimension {spatial[0][1]} of input "
                    f"{spatial[0][0]!r}; only a batch (dimension 0) can stay dynamic, give "
                    f"spatial sizes with input_shapes"
                )
    asked = dynamic is not None or batch_buckets is not None
    batched = [s for s in specs if s.shape and s.shape[0] is None]
    if not batched:
        if asked:
            what = "dynamic" if dynamic is not None else "batch_buckets"
            raise ValueError(f"{what}: no input of this model has a symbolic batch dimension")
        return None
    if not asked and any(s.name in given for s in batched):
        return None  # input_shapes gives the batch: static (batch 1: larger ones per sample)
    fixed = {
        s.name: given[s.name][0]
        for s in batched
        if isinstance(given.get(s.name), Sequence) and len(given[s.name]) and given[s.name][0] != 1
    }
    if fixed:
        name, size = next(iter(fixed.items()))
        raise ValueError(
            f"input_shapes[{name!r}] fixes the batch to {size}, but dynamic/batch_buckets "
            "asks for a dynamic batch: give batch 1 there (or leave it out)"
        )
    return check_buckets(default_buckets() if batch_buckets is None else batch_buckets)


def _import_buckets(
    original: Any,
    target: tvm.target.Target,
    tuning_db: str | None,
    input_shapes: Mapping[str, Sequence[int]] | None,
    progress: Callable[[str], None] | None,
    algorithm: str,
    profile: Any,
    buckets: Sequence[int],
    early: codegen.EarlyBuilds | None = None,
) -> tuple[tvm.IRModule, LoweringContext, dict]:
    """:func:`import_model` once per batch bucket, merged into one module
    (:func:`convforge.export.buckets.merge_buckets`); the smallest bucket's context and
    metadata, with ``batch_buckets`` added. ``early`` gets each bucket's kernels under
    their names in the merged module."""
    from convforge.export.buckets import merge_buckets, name_suffix

    specs = declared_inputs(original)
    base = compiled_shapes(specs, input_shapes)
    modules, first = {}, None
    for bucket in buckets:
        shapes = {
            s.name: (bucket, *base[s.name][1:]) if s.shape and s.shape[0] is None else base[s.name]
            for s in specs
        }
        (progress or (lambda m: None))(f"lowering for batch {bucket} (buckets {list(buckets)})")
        suffix = name_suffix(bucket, min(buckets))
        prebuild = None if early is None else (lambda n, f, s=suffix: early.submit(n + s, f))
        modules[bucket], ctx, metadata = import_model(
            original, target, tuning_db, shapes, progress, algorithm=algorithm, profile=profile,
            prebuild=prebuild,
        )  # fmt: skip
        first = first or (ctx, metadata)
    with profile.phase("merge buckets"):
        mod = merge_buckets(modules)
    ctx, metadata = first
    metadata["batch_buckets"] = list(buckets)
    return mod, ctx, metadata


def import_model(
    model: Any,
    target: tvm.target.Target,
    tuning_db: str | os.PathLike | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    progress: Callable[[str], None] | None = None,
    *,
    algorithm: str = "auto",
    profile: Any = None,
    prebuild: Callable[[str, tvm.tirx.PrimFunc], None] | None = None,
) -> tuple[tvm.IRModule, LoweringContext, dict]:
    """The relax module of ``model`` with convforge's kernels (scheduled, not compiled),
    the lowering context (its ``records`` and unscheduled ``functions``) and the metadata;
    ``algorithm`` as :func:`compile_model`'s; ``profile`` (a
    :class:`convforge.export.compile_profile.CompileProfile`) gets the phases' seconds;
    ``prebuild(name, func)`` gets each new kernel function (the lowering context's)."""
    from convforge.export.compile_profile import CompileProfile

    profile = profile if profile is not None else CompileProfile()
    from tvm.relax.frontend.onnx import from_onnx

    from convforge.export.fusion import fuse_convolutions, name_nodes
    from convforge.export.lowering import LoweringContext, convforge_converters
    from convforge.export.prepare import (
        check_constant_indices,
        check_shape_inputs,
        expand_max_unpool,
        expand_training_batch_norm,
        fold_static_shapes,
    )

    say = progress or (lambda message: None)
    prepare_started = time.perf_counter()
    original = name_nodes(load_onnx(model))
    specs = declared_inputs(original)
    compiled = compiled_shapes(specs, input_shapes)
    for name, shape in compiled.items():  # TVM indexes with int32: refuse before importing
        check_index_range(**{f"input {name!r}": shape})
    original = fold_static_shapes(original, compiled)
    check_shape_inputs(original)
    check_constant_indices(original)
    dynamic_batch = any(s.shape and s.shape[0] is None and compiled[s.name][0] == 1 for s in specs)
    original = expand_training_batch_norm(original, compiled, dynamic_batch)
    original = expand_max_unpool(original)
    profile.add("prepare", time.perf_counter() - prepare_started)
    say("fusing bias, batch-norm and activations into convolutions")
    with profile.phase("fusion"):
        fused = fuse_convolutions(original)
    ctx = LoweringContext(
        target, tuning_db, progress=progress, algorithm=algorithm, profile=profile,
        prebuild=prebuild,
    )  # fmt: skip
    import_started = time.perf_counter()
    kernel_seconds = profile.phases.get("kernel compute", 0.0) + profile.phases.get(
        "kernel schedule", 0.0
    )
    say(
        f"importing {len(original.graph.node)} ONNX nodes (convforge kernels scheduled as they come)"
    )
    opset = next((o.version for o in original.opset_import if o.domain in ("", "ai.onnx")), None)
    with convforge_converters(ctx), naming_node_errors(), _checker_without_weights(), \
            warnings.catch_warnings():  # fmt: skip
        # TVM's importer runs onnx's checker, which flags the fusion attributes and a
        # fused residual (a Conv's 4th input).
        warnings.filterwarnings("ignore", message="Unrecognized attribute: convforge_")
        warnings.filterwarnings(
            "ignore", message=r"Node\(.*\) with schema\(::Conv:\d+\) has input size 4"
        )
        warnings.filterwarnings("ignore", message="Field 'shape' of 'type' is required")
        mod = from_onnx(
            fused, shape_dict=compiled, dtype_dict={s.name: s.dtype for s in specs}, opset=opset,
            keep_params_in_input=False, sanitize_input_names=False,
        )  # fmt: skip
    kernel_seconds = (
        profile.phases.get("kernel compute", 0.0)
        + profile.phases.get("kernel schedule", 0.0)
        - kernel_seconds
    )
    profile.add("import", time.perf_counter() - import_started - kernel_seconds)
    outputs = [_spec(o) for o in original.graph.output]
    metadata = {
        "producer": "convforge",
        "target": str(target.export()),
        "inputs": [{**asdict(s), "compiled_shape": list(compiled[s.name])} for s in specs],
        "outputs": [asdict(s) for s in outputs],
        "nodes": [{"name": n.name, "op_type": n.op_type} for n in original.graph.node],
        "kernels": [asdict(r) for r in ctx.records],
        "algorithm": algorithm,
    }
    return mod, ctx, metadata


@contextlib.contextmanager
def _checker_without_weights() -> Iterator[None]:
    """Within this context onnx's checker checks a model without its weights
    (:func:`convforge.export.prepare.without_weights`). TVM's importer runs the checker on
    the whole model only to warn; serializing the weights for it took 0.8 s of the light
    ResNet-50's 100 MB."""
    import onnx.checker

    from convforge.export.prepare import without_weights

    real = onnx.checker.check_model

    def check(model: Any, *args: Any, **kwargs: Any) -> None:
        light = without_weights(model) if isinstance(model, onnx.ModelProto) else model
        real(light, *args, **kwargs)

    onnx.checker.check_model = check
    try:
        yield
    finally:
        onnx.checker.check_model = real


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (a TVM traceback: its last line)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    text = lines[-1] if any(line.startswith("Traceback") for line in lines) else " ".join(lines)
    return (
        text
        if isinstance(err, ValueError | NotImplementedError)
        else (f"{type(err).__name__}: {text}")
    )


@contextlib.contextmanager
def naming_node_errors():
    """Within this context a node that fails to convert in TVM's ONNX importer (a
    convforge lowering's refusal or a TVM converter's failure) raises one ``ValueError``
    (``NotImplementedError`` where the converter raised one) ``node 'NAME' (OP): why`` on
    one line, and TVM's "Error converting operator" print is dropped. Any other failure
    of the importer becomes a one-line ``ValueError`` too."""
    from tvm.relax.frontend.onnx import onnx_frontend

    importer = onnx_frontend.ONNXGraphImporter
    original = importer._convert_operator

    def convert(self, op_name, inputs, attrs, opset):
        try:
            return original(self, op_name, inputs, attrs, opset)
        except Exception as err:
            name = (attrs.get("tvm_custom") or {}).get("name", "?")
            message = _one_line(err)
            if not message.startswith(f"node {name!r} ({op_name}): "):  # not named yet
                message = f"node {name!r} ({op_name}): {message}"
            if isinstance(err, NotImplementedError):
                raise NotImplementedError(message) from err
            raise ValueError(message) from err

    importer._convert_operator = convert
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            yield
    except (ValueError, NotImplementedError):
        raise
    except Exception as err:  # raised by the importer outside a converter
        raise ValueError(f"TVM's ONNX importer: {_one_line(err)}") from err
    finally:
        importer._convert_operator = original
        text = captured.getvalue()
        sys.stdout.write(text.split("Error converting operator", 1)[0])


def _with_metadata(mod: tvm.IRModule, metadata: dict) -> tvm.IRModule:
    data = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
    bb = relax.BlockBuilder(mod)
    with bb.function(METADATA_FUNCTION, []):
        bb.emit_func_output(relax.const(data))
    return bb.get()


def median_seconds(fn: Callable[[], object], repeat: int = 5) -> float:
    """Median wall time of ``fn()`` over ``repeat`` calls after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def open_tuning_db(path: str | os.PathLike) -> str:
    """Check that ``path`` is a tuning database directory this build can read; return it."""
    if not os.path.isdir(path):
        raise ValueError(f"tuning_db: no such directory {os.fspath(path)!r}")
    try:
        from convforge.schedules import tuning  # noqa: F401
    except ImportError as err:
        raise ValueError("tuning_db: this build has no convforge.schedules.tuning") from err
    return os.fspath(path)
