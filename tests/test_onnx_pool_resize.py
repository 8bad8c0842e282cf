"""ONNX Resize, Upsample and the pools through ``cf.compile_model`` against onnxruntime and
ONNX's reference implementation.

First ONNX's own backend node cases of these operators (generated from
``onnx.backend.test.case.node``: the wheel ships no data/node), each in both forms: inputs
after X (roi, scales, sizes) as initializers, and as graph inputs (convforge needs them
constant: a clear refusal). Then targeted cases of what the node cases miss (antialias on
larger inputs, axes, keep_aspect_ratio_policy, Resize-10, Upsample-7/9, ranks other than
NCHW, MaxPool Indices ties and storage_order, LpPool), and the refusals, each in a fresh
interpreter.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import convforge as cf
from convforge.export import run_onnxruntime
from tests.isolated import assert_refused, refusal_snippet, run_isolated

#: ONNX backend node modules of the operators convforge lowers here.
NODE_MODULES = (
    "resize", "upsample", "averagepool", "maxpool", "lppool", "globalaveragepool",
    "globalmaxpool",
)  # fmt: skip
#: Inputs above this many elements (the 1x3x32x32x32 pools) get no ONNX reference output
#: (its Python loops take seconds): those cases are checked against onnxruntime only.
REFERENCE_LIMIT = 10_000

#: Node cases convforge refuses with a one-line error, and why.
REFUSED_CASES = {
    # Compiled models take float tensors; a uint8 MaxPool is refused at the graph input.
    "test_maxpool_2d_uint8": r"input 'x': element type 2 is not supported",
}
#: Node cases where onnxruntime and ONNX's reference disagree: convforge follows
#: onnxruntime (checked on every case) and these skip the comparison with the reference.
ORT_NOT_REFERENCE = {
    # align_corners when downscaling by a scale: onnxruntime maps x -> x * (in-1)/(out-1)
    # with the integer output length, the reference with in*scale - 1 (0.8*4-1 = 2.2).
    "test_resize_downsample_scales_cubic_align_corners",
    "test_resize_downsample_scales_linear_align_corners",
}


@functools.cache
def node_cases(reference_limit: int | None = REFERENCE_LIMIT) -> dict[str, list[tuple]]:
    """module -> the (name, model, inputs, outputs) of each ``expect`` call of its exports.

    ONNX's node case classes run every export when their module is imported; ``expect``
    (and the pooling reference past ``reference_limit`` input elements, see
    :data:`REFERENCE_LIMIT`; None: never) are patched while that
    happens, so each export runs once (a module imported earlier has its exports called
    again under the same patches). The model is built as ``expect`` builds it.
    """
    import sys

    import onnx.backend.test.case.node as node_pkg
    import onnx.reference.ops.op_pool_common as pool_common

    found: dict[str, list[tuple]] = {}
    current: list[tuple] = []

    def capture(node, inputs, outputs, name, **kwargs):
        kwargs.pop("input_type_protos", None)
        kwargs.pop("output_type_protos", None)
        present_in = [n for n in node.input if n]
        present_out = [n for n in node.output if n]
        graph = helper.make_graph(
            [node], name,
            [node_pkg._extract_value_info(a, n) for a, n in zip(inputs, present_in)],
            [node_pkg._extract_value_info(a, n) for a, n in zip(outputs, present_out)],
        )  # fmt: skip
        if "opset_imports" not in kwargs:
            version = onnx.defs.get_schema(node.op_type, domain=node.domain).since_version
            kwargs["opset_imports"] = [helper.make_operatorsetid(node.domain, version)]
        kwargs["producer_name"] = "backend-test"
        model = node_pkg._make_test_model_gen_version(graph, **kwargs)
        current.append((name, model, list(inputs), list(outputs)))

    real_pool = pool_common.pool

    def pool(padded, x_shape, kernel, strides, out_shape, *args, **kwargs):
        if reference_limit is not None and math.prod(x_shape) > reference_limit:  # NaN: none
            return np.full((*x_shape[:2], *out_shape), np.nan, np.float32)
        return real_pool(padded, x_shape, kernel, strides, out_shape, *args, **kwargs)

    saved = node_pkg.expect
    node_pkg.expect, pool_common.pool = capture, pool
    try:
        for name in NODE_MODULES:
            current = found[name] = []
            full = f"onnx.backend.test.case.node.{name}"
            if full not in sys.modules:
                module = importlib.import_module(full)  # runs the exports
                module.expect = saved  # what the module bound: the real ones again
                if hasattr(module, "pool"):
                    module.pool = real_pool
                continue
            module = sys.modules[full]
            patched = {"expect": capture, "pool": pool}
            originals = {k: getattr(module, k) for k in patched if hasattr(module, k)}
            for key in originals:
                setattr(module, key, patched[key])
            try:
                for _, cls in inspect.getmembers(module, inspect.isclass):
                    if cls.__module__ == full:
                        for method in sorted(m for m in vars(cls) if m.startswith("export")):
                            np.random.seed(0)
                            getattr(cls, method)()
            finally:
                for key, value in originals.items():
                    setattr(module, key, value)
    finally:
        node_pkg.expect, pool_common.pool = saved, real_pool
    return found


def with_initializers(model: onnx.ModelProto, inputs: list) -> onnx.ModelProto:
    """``model`` with every graph input after the first turned into an initializer."""
    model = copy.deepcopy(model)
    for value_info, array in list(zip(model.graph.input, inputs))[1:]:
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(array), value_info.name))
        model.graph.input.remove(value_info)
    return model


def assert_close(
    got: np.ndarray, expected: np.ndarray, what: str, rtol: float = 1e-4, atol: float = 1e-5
) -> None:
    expected = np.asarray(expected)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    if expected.dtype.kind in "iu":
        np.testing.assert_array_equal(got, expected, err_msg=what)
    else:
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=what)


def run_node_case(name, model, inputs, outputs, form):
    """One node case in one form, against onnxruntime and the case's reference outputs."""
    compiled_model = with_initializers(model, inputs) if form == "initializers" else model
    feeds = inputs[:1] if form == "initializers" else inputs
    if name in REFUSED_CASES:
        with pytest.raises(ValueError, match=REFUSED_CASES[name]):
            cf.compile_model(compiled_model)(*feeds)
        return
    if form == "graph inputs" and len(inputs) > 1:  # roi/scales/sizes computed at run time
        op = model.graph.node[0].op_type
        with pytest.raises(ValueError, match=rf"^{op} node .*: input '\w+': must be a constant"):
            cf.compile_model(compiled_model)
        return
    got = cf.compile_model(compiled_model)(*feeds)
    names = [i.name for i in model.graph.input]
    oracle = run_onnxruntime(model, dict(zip(names, inputs)), threads=1)
    assert len(got) == len(oracle) == len(outputs)
    for g, o, e in zip(got, oracle, outputs):
        assert_close(g, o, f"{name} [{form}] vs onnxruntime")
        reference = not np.isnan(np.asarray(e, np.float64)).all()  # see REFERENCE_LIMIT
        if reference and name not in ORT_NOT_REFERENCE:  # the cases' tolerance (some rounded)
            assert_close(g, e, f"{name} [{form}] vs ONNX reference", rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("module", NODE_MODULES)
def test_onnx_node_cases(module):
    """Every Resize/Upsample/pool node case of ``module`` in both forms: 0 mismatches; the
    only failures are clear refusals (:data:`REFUSED_CASES`, and computed roi/scales/sizes
    in the graph-input form). Failures of all cases are reported together."""
    cases = node_cases()[module]
    assert cases
    failures = []
    for name, model, inputs, outputs in cases:
        for form in ("initializers", "graph inputs"):
            if form == "initializers" and len(inputs) == 1:
                continue
            try:
                run_node_case(name, model, inputs, outputs, form)
            except (AssertionError, ValueError, pytest.fail.Exception) as error:
                failures.append(f"{name} [{form}]: {str(error).strip()[:600]}")
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.parametrize("module", ["averagepool", "maxpool", "lppool"])
def test_large_pool_node_cases_match_the_reference(module):
    """The node cases past :data:`REFERENCE_LIMIT` against the ONNX reference too (its
    Python loops take seconds each)."""
    large = [c for c in node_cases(None)[module] if np.asarray(c[2][0]).size > REFERENCE_LIMIT]
    assert large
    for name, model, inputs, outputs in large:
        run_node_case(name, model, inputs, outputs, "graph inputs")


# --- targeted cases ----------------------------------------------------------------------


def make_model(
    op: str,
    x_shape: tuple[int, ...],
    attrs: dict,
    *,
    opset: int = 19,
    constants: dict[str, np.ndarray] | None = None,
    operands: list[str] | None = None,
    outputs: int = 1,
) -> onnx.ModelProto:
    """One node ``op`` on float input X; ``constants`` become initializers and ``operands``
    (default X then the constants) its inputs."""
    constants = constants or {}
    operands = operands if operands is not None else ["X", *constants]
    out_names = ["Y", "Indices"][:outputs]
    node = helper.make_node(op, operands, out_names, **attrs)
    outs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)]
    if outputs == 2:
        outs.append(helper.make_tensor_value_info("Indices", TensorProto.INT64, None))
    graph = helper.make_graph(
        [node], op, [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)], outs,
        [numpy_helper.from_array(v, k) for k, v in constants.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def check_model(model: onnx.ModelProto, x: np.ndarray, *, reference: bool = True) -> None:
    """convforge's outputs equal onnxruntime's and (``reference``) the ONNX reference's."""
    got = cf.compile_model(model)(x)
    for g, o in zip(got, run_onnxruntime(model, {"X": x}, threads=1), strict=True):
        assert_close(g, o, "vs onnxruntime")
    if reference:
        for g, e in zip(got, ReferenceEvaluator(model).run(None, {"X": x}), strict=True):
            assert_close(g, e, "vs ONNX reference")


def resize_model(x_shape, attrs, *, scales=None, sizes=None, roi=None, opset=19):
    constants, operands = {}, ["X", "", "", ""]
    if roi is not None:
        constants["roi"], operands[1] = np.array(roi, np.float32), "roi"
    if scales is not None:
        constants["scales"], operands[2] = np.array(scales, np.float32), "scales"
    if sizes is not None:
        constants["sizes"], operands[3] = np.array(sizes, np.int64), "sizes"
    while operands[-1] == "":
        operands.pop()
    return make_model("Resize", x_shape, attrs, opset=opset, constants=constants, operands=operands)


@pytest.mark.parametrize(
    ("x_shape", "attrs", "resize"),
    [
        ((2, 3, 17, 13), {"mode": "linear"}, {"scales": [1, 1, 0.3, 0.45]}),
        ((1, 2, 12, 15), {"mode": "cubic"}, {"sizes": [1, 2, 5, 4]}),
        ((1, 2, 12, 15), {"mode": "cubic", "exclude_outside": 1, "cubic_coeff_a": -0.5},
         {"scales": [1, 1, 0.25, 1.5]}),  # one axis down, one up
        ((1, 2, 9, 10, 11), {"mode": "linear"}, {"scales": [1, 1, 0.5, 1, 0.4]}),
        ((1, 1, 14, 12), {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"},
         {"scales": [1, 1, 0.2, 0.75]}),
    ],
)  # fmt: skip
def test_antialias_matches_onnxruntime_and_reference(x_shape, attrs, resize, rng):
    """Resize-18 ``antialias=1``: the filter's support stretched by 1/scale when downscaling
    (TVM's converter ignored it: errors 0.14-2.6)."""
    x = rng.standard_normal(x_shape).astype(np.float32)
    check_model(resize_model(x_shape, {**attrs, "antialias": 1}, **resize), x)


def test_antialias_crop_and_resize_matches_onnxruntime(rng):
    """tf_crop_and_resize with antialias: the roi reaches outside the input, where the
    output is the extrapolation value (the reference skips antialias there)."""
    x = rng.standard_normal((1, 1, 12, 12)).astype(np.float32)
    attrs = dict(
        mode="linear", antialias=1, coordinate_transformation_mode="tf_crop_and_resize",
        extrapolation_value=-3.0,
    )  # fmt: skip
    roi = [0, 0, -0.1, 0.2, 1, 1, 0.9, 1.3]
    check_model(resize_model(x.shape, attrs, sizes=[1, 1, 5, 4], roi=roi), x)


@pytest.mark.parametrize(
    ("policy", "sizes", "axes", "mode"),
    [
        ("not_larger", [20, 13], [3, 2], "linear"),
        ("not_smaller", [3, 16], [2, 3], "cubic"),
        ("not_larger", [4], [3], "nearest"),
        ("stretch", [4, 11], [-1, -2], "linear"),
    ],
)
def test_axes_and_keep_aspect_ratio_policy(policy, sizes, axes, mode, rng):
    """One scale for all of ``axes`` (min or max of sizes/in), output round(in * scale)."""
    x = rng.standard_normal((2, 3, 7, 9)).astype(np.float32)
    attrs = dict(mode=mode, keep_aspect_ratio_policy=policy, axes=axes)
    # the reference fails on negative axes (it transposes by them): onnxruntime only there
    check_model(resize_model(x.shape, attrs, sizes=sizes), x, reference=min(axes) >= 0)


@pytest.mark.parametrize(
    ("x_shape", "scales", "axes"),
    [
        ((7, 9), [1.3, 0.5], None),  # rank 2
        ((2, 7, 9, 3), [1, 1.3, 0.5, 1], None),  # channels last
        ((2, 3, 7, 9), [2.0], [1]),  # the channel axis
    ],
)
def test_resize_of_other_axes_than_nchw_spatial(x_shape, scales, axes, rng):
    """Leading unchanged axes fold into (N, C): rank 2, NHWC and a channel resize run in
    convforge's kernel."""
    x = rng.standard_normal(x_shape).astype(np.float32)
    attrs = {"mode": "linear" if axes is None else "nearest"}
    if axes is not None:
        attrs["axes"] = axes
    check_model(resize_model(x_shape, attrs, scales=scales), x)


def test_tricubic_resize_matches_the_reference(rng):
    """Cubic on 3 axes (onnxruntime runs cubic on 2 axes only): the ONNX reference."""
    x = rng.standard_normal((1, 2, 4, 5, 3)).astype(np.float32)
    model = resize_model(x.shape, {"mode": "cubic"}, scales=[1, 1, 2, 1.5, 0.7])
    for got, expected in zip(
        cf.compile_model(model)(x), ReferenceEvaluator(model).run(None, {"X": x})
    ):
        assert_close(got, expected, "vs ONNX reference")


@pytest.mark.parametrize(
    ("op", "opset", "mode", "scales"),
    [
        ("Resize", 10, "nearest", [1, 1, 0.5, 0.6]),  # Resize-10 rounds up when downscaling
        ("Resize", 10, "nearest", [1, 1, 0.5, 1.6]),  # ... and down when upscaling
        ("Resize", 10, "linear", [1, 1, 2, 1.5]),
        ("Upsample", 7, "nearest", [1, 1, 2, 1.5]),  # scales attribute
        ("Upsample", 9, "linear", [1, 1, 2, 3.5]),  # scales input
        ("Upsample", 9, "nearest", [1, 2, 2, 2]),  # the channel axis too
    ],
)
def test_resize_10_and_upsample_match_onnxruntime(op, opset, mode, scales, rng):
    """Upsample as Resize with asymmetric coordinates (nearest rounds down), as onnxruntime."""
    x = rng.standard_normal((1, 2, 4, 5)).astype(np.float32)
    if opset == 7:
        model = make_model(op, x.shape, {"mode": mode, "scales": scales}, opset=7)
    else:
        model = make_model(
            op, x.shape, {"mode": mode}, opset=opset,
            constants={"scales": np.array(scales, np.float32)},
        )  # fmt: skip
    check_model(model, x, reference=False)  # the reference has no Resize-10 / Upsample-7


@pytest.mark.parametrize(
    ("kernel", "stride", "dilation", "pads", "ceil_mode", "storage_order"),
    [
        ((3,), (2,), (2,), (1, 1), 1, 1),
        ((3, 3), (2, 2), (2, 2), (1, 1, 1, 1), 1, 1),
        ((2, 2), (2, 2), (1, 1), (0, 0, 0, 0), 0, 0),
        ((2, 2, 2), (1, 1, 1), (2, 2, 2), (1, 1, 1, 1, 1, 1), 1, 1),
    ],
)
def test_max_pool_indices_with_ties_and_storage_order(
    kernel, stride, dilation, pads, ceil_mode, storage_order, rng
):
    """Indices: flat positions in X (batch and channel included), row-major or with the
    spatial axes reversed (storage_order=1); equal maxima (small integers) pick the first
    in row-major order, as onnxruntime."""
    x_shape = (2, 3, *(9, 11, 8)[: len(kernel)]) if len(kernel) < 3 else (1, 2, 6, 7, 5)
    x = rng.integers(-3, 3, x_shape).astype(np.float32)
    attrs = dict(
        kernel_shape=kernel, strides=stride, dilations=dilation, pads=pads,
        ceil_mode=ceil_mode, storage_order=storage_order,
    )  # fmt: skip
    check_model(make_model("MaxPool", x_shape, attrs, opset=12, outputs=2), x, reference=False)


@pytest.mark.parametrize(
    ("kernel", "stride", "dilation", "pads", "ceil_mode", "p"),
    [((3, 3), (2, 2), (2, 2), (1, 1, 1, 1), 1, 3), ((3,), (2,), (1,), (1, 1), 1, 1)],
)
def test_lp_pool_matches_onnxruntime(kernel, stride, dilation, pads, ceil_mode, p, rng):
    """LpPool in convforge's kernel: (sum |x|^p over the taps inside the input)^(1/p)."""
    x = rng.standard_normal((1, 2, *(9, 11)[: len(kernel)])).astype(np.float32)
    attrs = dict(
        kernel_shape=kernel, strides=stride, dilations=dilation, pads=pads, ceil_mode=ceil_mode,
        p=p,
    )  # fmt: skip
    check_model(make_model("LpPool", x.shape, attrs, opset=18), x)


# --- refusals, each in a fresh interpreter ------------------------------------------------

_SETUP = """
import numpy as np
from onnx import TensorProto, helper, numpy_helper
import convforge as cf

def model(op, attrs, consts=(), opset=19, shape=(1, 2, 9, 10), operands=None):
    inits = [numpy_helper.from_array(np.array(v, dtype=d), k) for k, v, d in consts]
    names = operands or ["X", *[k for k, _, _ in consts]]
    node = helper.make_node(op, names, ["Y"], **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
"""

_SCALES = "[('roi', [], np.float32), ('scales', [1, 1, 0.5, 0.5], np.float32)]"


@pytest.mark.parametrize(
    ("call", "patterns"),
    [
        (f"model('Resize', dict(mode='nearest', antialias=1), {_SCALES})",
         [r"Resize node .*antialias=1", "linear' and 'cubic' only"]),
        ("model('AveragePool', dict(kernel_shape=[3, 3], dilations=[2, 2], auto_pad='SAME_UPPER'))",
         [r"AveragePool node .*auto_pad=SAME_UPPER with dilations", "undilated"]),
        ("model('MaxPool', dict(kernel_shape=[2, 2], dilation=[2, 2]))",
         [r"MaxPool node .*attribute 'dilation'", "not an attribute"]),
    ],
)  # fmt: skip
def test_unsupported_attributes_are_refused_in_one_line(call, patterns):
    """What convforge cannot run as onnxruntime does is refused with one line naming the
    op, the attribute and why, before any compilation, never handed to TVM's converter."""
    outcome = run_isolated(refusal_snippet(_SETUP, f"cf.compile_model({call})"), timeout=120)
    assert_refused(outcome, r"REFUSED: ValueError", *patterns)


@pytest.mark.parametrize(
    ("model", "pattern"),
    [
        (make_model("Resize", (1, 2, 4, 5), {"mode": "nearest"}, operands=["X", "", "scales"],
                    constants={"scales": np.array([2, 1, 1, 1], np.float32)}),
         r"^Resize node .*resized to \(2, 2, 4, 5\): convforge resizes at most 3 axes"),
        (make_model("Upsample", (1, 2, 4, 5), {"mode": "nearest"}, opset=9,
                    constants={"scales": np.array([1, 1, 0.5, 2], np.float32)}),
         r"^Upsample node .*scales=\[1.0, 1.0, 0.5, 2.0\]: must be finite and >= 1"),
        (make_model("Resize", (1, 2, 4, 5), {"mode": "linear", "axes": [2, 2]},
                    constants={"roi": np.zeros(0, np.float32),
                               "scales": np.array([2, 2], np.float32)}),
         r"^Resize node .*axes=\[2, 2\]: must be distinct axes"),
        (make_model("MaxPool", (1, 2, 4, 5), {"kernel_shape": [2, 2], "storage_order": 2},
                    outputs=2, opset=12),
         r"^MaxPool node .*storage_order=2: must be 0 or 1"),
        (make_model("MaxPool", (1, 2, 4, 5), {"kernel_shape": [2, 2], "pads": [1, 1]}),
         r"^MaxPool node .*pads=\[1, 1\]: must have 4 entries"),
        (resize_model((1, 1, 4, 4), {"mode": "nearest"}, sizes=[1, 1, 100000, 100000]),
         r"^Resize node .*10000000000 elements need 64-bit indices"),
        (resize_model((1, 1, 4, 4), {}, scales=[1, 1, 2, 2], sizes=[1, 1, 8, 8]),
         r"^Resize node .*scales and sizes: give exactly one"),
    ],
)  # fmt: skip
def test_refusals_name_the_op_and_the_attribute(model, pattern):
    """More refusals (in-process: they raise while the graph is imported, before TVM)."""
    with pytest.raises(ValueError, match=pattern):
        cf.compile_model(model)


@pytest.mark.parametrize("kernel", ["indices", "antialias", "lp", "avg_dilated"])
def test_new_kernels_generate_cuda_with_bound_threads(kernel):
    """The new kernels build for CUDA (sm_90) through the GPU rules, every kernel with a
    thread bound (no GPU here: the source is generated and inspected)."""
    from tvm import te

    from convforge import ops, shapes
    from convforge.build import compile_computation
    from convforge.schedules.gpu_source import MAX_THREADS_PER_BLOCK, cuda_source, kernels
    from convforge.targets import resolve_target

    pool = dict(stride=2, padding=1, dilation=2)
    x_shape = (1, 4, 19, 10)
    build = {
        "indices": lambda x: list(
            ops.max_pool_with_indices(
                x, shapes.pool_geometry(x_shape, 3, kind="max", **pool), storage_order=1
            )
        ),
        "antialias": lambda x: [
            ops.resize(
                x,
                shapes.resize_geometry(
                    x_shape, scale=[0.4, 0.7], mode="cubic", coordinate_mode="half_pixel",
                    antialias=True,
                ),
            )
        ],
        "lp": lambda x: [ops.lp_pool(x, shapes.pool_geometry(x_shape, 3, kind="avg", **pool), 3)],
        "avg_dilated": lambda x: [ops.pool(x, shapes.pool_geometry(x_shape, 3, kind="avg", **pool))],
    }[kernel]  # fmt: skip

    def computation():
        x = te.placeholder(x_shape, "float32", name="x")
        return [x], build(x)

    target = resolve_target({"kind": "cuda", "arch": "sm_90"})
    compiled = compile_computation(kernel, computation, target)
    found = kernels(cuda_source(compiled.executable.mod))
    assert found and all(1 < k.launch_bounds <= MAX_THREADS_PER_BLOCK for k in found)


@pytest.mark.parametrize(
    ("x_shape", "resize"),
    [
        ((2, 3, 15, 11), dict(scale=(0.4, 0.7), mode="linear", coordinate_mode="half_pixel")),
        ((1, 2, 13, 9), dict(size=(4, 3), mode="cubic", coordinate_mode="asymmetric")),
        ((1, 2, 20), dict(scale=0.3, mode="linear", coordinate_mode="align_corners")),
    ],
)
def test_cf_resize_antialias_and_its_onnx_export_match_onnxruntime(x_shape, resize, rng):
    """``cf.resize(..., antialias=True)`` equals onnxruntime running the exported Resize
    (which carries ``antialias=1``)."""
    from convforge import shapes
    from convforge.export import resize_model as export_resize_model

    x = rng.standard_normal(x_shape).astype(np.float32)
    geom = shapes.resize_geometry(x_shape, antialias=True, **resize)
    model = export_resize_model(geom)
    assert any(a.name == "antialias" and a.i == 1 for a in model.graph.node[-1].attribute)
    (expected,) = run_onnxruntime(model, {"x": x}, threads=1)
    assert_close(cf.resize(x, antialias=True, **resize), expected, "vs onnxruntime")


@pytest.mark.parametrize(
    "attrs",
    [
        dict(kernel_shape=[2, 2], strides=[2, 2]),
        dict(kernel_shape=[2, 2], pads=[1, 1, 1, 1], storage_order=1),
        dict(kernel_shape=[2, 2], dilations=[2, 1], pads=[1, 0, 1, 0]),
    ],
)
def test_max_pool_indices_with_nan_and_inf_follow_onnxruntime(attrs):
    """onnxruntime's MaxPool with Indices scans a window from its first tap inside the
    input, keeping strictly greater ones: a NaN first tap wins, later NaNs are skipped,
    windows of -inf give -inf and the first -inf's index."""
    n, i = np.nan, np.inf
    x = np.array([[[[n, 2, n, n], [1, 3, n, n], [-i, n, 5, -i], [-i, -i, 7, 5]]]], np.float32)
    model = make_model("MaxPool", x.shape, attrs, opset=12, outputs=2)
    got = cf.compile_model(model)(x)
    for g, o in zip(got, run_onnxruntime(model, {"X": x}, threads=1), strict=True):
        np.testing.assert_array_equal(g, o)  # NaN == NaN here, -inf exactly
