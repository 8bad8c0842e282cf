"""ONNX Resize, Upsample and the pools through ``cf.compile_model`` against onnxruntime and
ONNX's reference implementation.

ONNX's own backend node cases of these operators run in test_onnx_conformance.py; here
are targeted cases of what the node cases miss (antialias on larger inputs, axes,
keep_aspect_ratio_policy, Resize-10, Upsample-7/9, ranks other than NCHW, MaxPool Indices
ties and storage_order, LpPool), and the refusals, each in a fresh interpreter.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import convforge as cf
from convforge.export import run_onnxruntime
from tests.isolated import assert_refused, refusal_snippet, run_isolated


def assert_close(
    got: np.ndarray, expected: np.ndarray, what: str, rtol: float = 1e-4, atol: float = 1e-5
) -> None:
    expected = np.asarray(expected)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    if expected.dtype.kind in "iu":
        np.testing.assert_array_equal(got, expected, err_msg=what)
    else:
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=what)


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
         [r"node .* \(Resize\): .*antialias=1", "linear' and 'cubic' only"]),
        ("model('AveragePool', dict(kernel_shape=[3, 3], dilations=[2, 2], auto_pad='SAME_UPPER'))",
         [r"node .* \(AveragePool\): .*auto_pad=SAME_UPPER with dilations", "undilated"]),
        ("model('MaxPool', dict(kernel_shape=[2, 2], dilation=[2, 2]))",
         [r"node .* \(MaxPool\): .*attribute 'dilation'", "not an attribute"]),
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
         r"^node .* \(Resize\): .*resized to \(2, 2, 4, 5\): convforge resizes at most 3 axes"),
        (make_model("Upsample", (1, 2, 4, 5), {"mode": "nearest"}, opset=9,
                    constants={"scales": np.array([1, 1, 0.5, 2], np.float32)}),
         r"^node .* \(Upsample\): .*scales=\[1.0, 1.0, 0.5, 2.0\]: must be finite and >= 1"),
        (make_model("Resize", (1, 2, 4, 5), {"mode": "linear", "axes": [2, 2]},
                    constants={"roi": np.zeros(0, np.float32),
                               "scales": np.array([2, 2], np.float32)}),
         r"^node .* \(Resize\): .*axes=\[2, 2\]: must be distinct axes"),
        (make_model("MaxPool", (1, 2, 4, 5), {"kernel_shape": [2, 2], "storage_order": 2},
                    outputs=2, opset=12),
         r"^node .* \(MaxPool\): .*storage_order=2: must be 0 or 1"),
        (make_model("MaxPool", (1, 2, 4, 5), {"kernel_shape": [2, 2], "pads": [1, 1]}),
         r"^node .* \(MaxPool\): .*pads=\[1, 1\]: must have 4 entries"),
        (resize_model((1, 1, 4, 4), {"mode": "nearest"}, sizes=[1, 1, 100000, 100000]),
         r"^node .* \(Resize\): .*10000000000 elements need 64-bit indices"),
        (resize_model((1, 1, 4, 4), {}, scales=[1, 1, 2, 2], sizes=[1, 1, 8, 8]),
         r"^node .* \(Resize\): .*scales and sizes: give exactly one"),
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
