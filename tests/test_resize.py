"""Resize and resize+conv against onnxruntime (ONNX Resize, opset 22) and numpy."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx.reference import ReferenceEvaluator

import convforge as cf
from convforge import ops, shapes
from convforge.api import placeholders
from convforge.build import compile_computation
from convforge.export import compare, resize_conv_model, resize_model, run_onnxruntime
from convforge.targets import host_target

SCALES = [0.5, 0.75, 1.5, 2, 2.5, 3, 1.25, 0.6, 1.0]
#: Coordinate/nearest modes under which nearest integer upsampling repeats every sample.
REPEAT_MODES = [
    dict(coordinate_mode="asymmetric", nearest_mode="floor"),
    dict(coordinate_mode="asymmetric", nearest_mode="round_prefer_floor"),  # a repeat if f <= 2
    dict(coordinate_mode="half_pixel", nearest_mode="round_prefer_floor"),
    dict(coordinate_mode="pytorch_half_pixel", nearest_mode="round_prefer_ceil"),
    dict(coordinate_mode="half_pixel_symmetric", nearest_mode="round_prefer_floor"),
]


@st.composite
def resize_cases(draw, max_sizes=(9, 6, 4)):
    mode = draw(st.sampled_from(shapes.RESIZE_MODES))
    nd = 2 if mode == "cubic" else draw(st.integers(1, 3))  # onnxruntime: 2-D cubic only
    in_size = tuple(draw(st.integers(1, max_sizes[nd - 1])) for _ in range(nd))
    if draw(st.integers(0, 3)) == 0:
        resize = dict(size=tuple(draw(st.integers(1, 2 * max_sizes[nd - 1])) for _ in range(nd)))
    elif draw(st.booleans()):
        resize = dict(scale=draw(st.sampled_from(SCALES)))
    else:
        resize = dict(scale=tuple(draw(st.sampled_from(SCALES)) for _ in range(nd)))
    resize.update(
        mode=mode,
        coordinate_mode=draw(st.sampled_from(shapes.COORDINATE_MODES)),
        nearest_mode=draw(st.sampled_from(shapes.NEAREST_MODES)),
    )
    x_shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), *in_size)
    return x_shape, resize


def _geometry_or_none(x_shape, resize):
    try:
        return shapes.resize_geometry(x_shape, **resize)
    except ValueError as err:  # a downscale of a short axis leaves nothing
        assert "leaves no output" in str(err)
        return None


def expected_output(model, geom, feeds):
    """onnxruntime's result, or the ONNX reference evaluator's where onnxruntime departs from
    the spec: when every output size equals the input size it returns the input unchanged
    (whatever the scale: e.g. linear half_pixel x1.25 of length 3). The reference evaluator
    in turn measures align_corners with the fractional length ``scale * I`` (the spec and
    onnxruntime use the output size), but there equal sizes make it the identity anyway.
    """
    if geom.out_size == geom.in_size and geom.coordinate_mode != "align_corners":
        return ReferenceEvaluator(model).run(None, feeds)[0]
    return run_onnxruntime(model, feeds)[0]


@st.composite
def resize_conv_cases(draw):
    x_shape, resize = draw(resize_cases(max_sizes=(8, 5, 4)))
    nd = len(x_shape) - 2
    groups = draw(st.sampled_from([1, 1, 2]))
    x_shape = (x_shape[0], groups * draw(st.integers(1, 2)), *x_shape[2:])
    cout = groups * draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    conv = dict(
        stride=draw(st.integers(1, 2)),
        padding=draw(st.sampled_from([0, 1, "same", "valid"])),
        dilation=draw(st.integers(1, 2)),
        groups=groups,
        activation=draw(st.sampled_from([None, "relu"])),
    )
    w_shape = (cout, x_shape[1] // groups, *kernel)
    if draw(st.integers(0, 2)) == 0:  # a repeat + stride 1: the per-phase fast path
        resize = dict(
            scale=tuple(draw(st.integers(1, 3)) for _ in range(nd)), mode="nearest",
            **draw(st.sampled_from(REPEAT_MODES)),
        )  # fmt: skip
        conv["stride"] = 1
        return x_shape, w_shape, draw(st.booleans()), resize, conv
    if draw(st.booleans()):  # resize alone
        return x_shape, None, False, resize, None
    return x_shape, w_shape, draw(st.booleans()), resize, conv


@given(resize_conv_cases())
def test_resize_and_resize_conv_match_onnxruntime(case):
    """One family: resize alone, resize then convolve, and (a third of the examples) nearest
    integer upsampling + stride-1 conv, which takes the per-phase fast path."""
    x_shape, w_shape, has_bias, resize, conv = case
    rgeom = _geometry_or_none(x_shape, resize)
    if rgeom is None:
        return
    rng = np.random.default_rng(len(str(case)))
    x = rng.standard_normal(x_shape).astype(np.float32)
    if conv is None:
        y = cf.resize(x, **resize)
        expected = expected_output(resize_model(rgeom), rgeom, {"x": x})
        assert compare(y, expected).ok, compare(y, expected)
        return
    try:
        cgeom = shapes.conv_geometry(
            rgeom.out_shape, w_shape, stride=conv["stride"], padding=conv["padding"],
            dilation=conv["dilation"], groups=conv["groups"],
        )  # fmt: skip
    except ValueError as err:
        assert "larger than the padded input" in str(err)
        return
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32) if has_bias else None
    y = cf.resize_conv(x, w, b, **resize, **conv)
    model = resize_conv_model(rgeom, cgeom, bias=has_bias, activation=conv["activation"])
    feeds = {"x": x, "w": w} if b is None else {"x": x, "w": w, "bias": b}
    expected = expected_output(model, rgeom, feeds)
    assert compare(y, expected).ok, compare(y, expected)


@pytest.mark.parametrize(
    ("x_shape", "resize"),
    [
        ((2, 3, 9), dict(scale=2.5, coordinate_mode="half_pixel")),
        ((1, 2, 9), dict(scale=0.6, coordinate_mode="asymmetric")),
        ((1, 2, 4, 3, 4), dict(scale=(1.25, 2.5, 0.75), coordinate_mode="pytorch_half_pixel")),
        ((1, 2, 3, 4, 2), dict(size=(5, 7, 3), coordinate_mode="align_corners")),
    ],
)
def test_cubic_on_one_and_three_axes_matches_reference_evaluator(x_shape, resize, rng):
    """onnxruntime runs cubic on two spatial axes only; the ONNX reference evaluator on any
    (where its coordinate transform follows the spec: it measures align_corners and
    half_pixel_symmetric with the fractional length ``scale * I``, hence sizes here)."""
    geom = shapes.resize_geometry(x_shape, mode="cubic", **resize)
    x = rng.standard_normal(x_shape).astype(np.float32)
    expected = ReferenceEvaluator(resize_model(geom)).run(None, {"x": x})[0]
    y = cf.resize(x, mode="cubic", **resize)
    assert compare(y, expected).ok, compare(y, expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(cubic_coeff_a=float("nan")), "cubic_coeff_a must be a finite number"),
        (dict(extrapolation_value="0"), "extrapolation_value must be a finite number"),
        (dict(exclude_outside=1), "exclude_outside must be a bool"),
        (dict(roi=[(0, 1), (0, 1)]), "roi is used only by coordinate_mode"),
        (dict(coordinate_mode="tf_crop_and_resize", roi=[(0, 1)]), "roi must hold 2"),
        (dict(coordinate_mode="tf_crop_and_resize", roi=[(0, 1), (0, "a")]), "roi must hold"),
        (dict(coordinate_mode="tf_crop_and_resize", roi=[(0, 1), 3]), "roi must hold"),
    ],
)
def test_resize_geometry_rejects_bad_onnx_attributes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        shapes.resize_geometry((1, 1, 4, 4), scale=2, **kwargs)


def test_fast_path_is_selected_only_for_repeats():
    x_shape, w_shape = (1, 4, 6, 5), (8, 4, 3, 3)
    repeat = shapes.resize_geometry(x_shape, scale=2, nearest_mode="floor")
    conv = shapes.conv_geometry(repeat.out_shape, w_shape, padding=1)
    layout = shapes.phase_conv_layout(repeat, conv)
    assert layout is not None and layout.factors == (2, 2) and layout.taps == (2, 2)  # 4 < 9
    rounded = shapes.resize_geometry(x_shape, scale=3, nearest_mode="round_prefer_floor")
    assert shapes.nearest_repeat_factors(rounded) is None  # asymmetric + round: o=2 -> 1
    halves = shapes.resize_geometry(x_shape, scale=2, nearest_mode="round_prefer_floor")
    assert shapes.nearest_repeat_factors(halves) == (2, 2)  # o/2 ties round down
    linear = shapes.resize_geometry(x_shape, scale=2, mode="linear")
    assert shapes.nearest_repeat_factors(linear) is None
    strided = shapes.conv_geometry(repeat.out_shape, w_shape, padding=1, stride=2)
    assert shapes.phase_conv_layout(repeat, strided) is None


def test_nearest_integer_upsampling_is_repeat(rng):
    # the defaults, asymmetric + floor, are PyTorch's 'nearest': integer upsampling repeats
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    expected = np.repeat(np.repeat(x, 2, axis=2), 3, axis=3)
    np.testing.assert_array_equal(cf.resize(x, (2, 3)), expected)


def test_align_corners_linear_keeps_corners_and_interpolates_linearly():
    x = np.arange(4, dtype=np.float64).reshape(1, 1, 4)  # a linear ramp stays a ramp
    y = cf.resize(x, size=7, mode="linear", coordinate_mode="align_corners")
    np.testing.assert_allclose(y.ravel(), np.linspace(0, 3, 7), rtol=1e-6)


def test_output_size_is_floor_of_float32_scale():
    # float32(0.7) = 0.69999998..., so floor(10 * 0.7) is 6, as onnxruntime computes it.
    assert shapes.resize_output_size(10, 0.7) == 6 == math.floor(10 * float(np.float32(0.7)))
    assert shapes.resize_geometry((1, 1, 5, 3), scale=1.5).out_size == (7, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(scale=float("nan")), "scale"),
        (dict(scale=float("inf")), "scale"),
        (dict(scale=0), "scale must be positive"),
        (dict(scale=-2.0), "scale must be positive"),
        (dict(scale=(2, 2, 2)), "scale must be a number or a sequence of 2"),
        (dict(scale=0.1), "leaves no output"),
        (dict(scale=2, size=(4, 4)), "exactly one of scale and size"),
        (dict(scale=2, mode="area"), "mode must be one of"),
        (dict(scale=2, coordinate_mode="tf_crop_and_resize"), "coordinate_mode must be one of"),
        (dict(scale=2, nearest_mode="round"), "nearest_mode must be one of"),
    ],
)
def test_resize_rejects_bad_arguments(kwargs, message):
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match=message):
        cf.resize(x, **kwargs)


def test_resize_conv_rejects_bad_scale_before_compiling():
    x = np.zeros((1, 2, 4, 4), np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="scale must hold finite numbers"):
        cf.resize_conv(x, w, scale=(2, float("nan")))
    with pytest.raises(ValueError, match="axis 1 must be"):
        cf.resize_conv(x, np.zeros((3, 1, 3, 3), np.float32), scale=2)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_nearest_repeat_in_other_dtypes(dtype, rng):
    x = rng.standard_normal((1, 2, 3, 4)).astype(dtype)
    y = cf.resize(x, 2, coordinate_mode="half_pixel", nearest_mode="round_prefer_ceil")
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(y, np.repeat(np.repeat(x, 2, axis=2), 2, axis=3))


@pytest.mark.parametrize("mode", ["nearest", "linear"])  # folded phases / resize block
def test_both_resize_conv_forms_end_in_the_epilogue_residual_included(mode, rng):
    """Either form (:func:`ops.nearest_upsample_conv` where the resize repeats samples,
    :func:`ops.resize_conv` elsewhere) ends in the whole :class:`ops.Epilogue`: relu(conv +
    bias + residual) against onnxruntime's Resize + Conv + bias, numpy adding the rest."""
    rgeom = shapes.resize_geometry((1, 3, 5, 4), scale=2, mode=mode)
    cgeom = shapes.conv_geometry(rgeom.out_shape, (4, 3, 3, 3), padding=1, bias_shape=(4,))
    folded = shapes.phase_conv_layout(rgeom, cgeom)
    assert (folded is not None) == (mode == "nearest")
    x = rng.standard_normal(rgeom.x_shape).astype(np.float32)
    w = rng.standard_normal(cgeom.w_shape).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    r = rng.standard_normal(cgeom.out_shape).astype(np.float32)

    def build():
        tx, tw, tb, tr = placeholders("float32", x=x.shape, w=w.shape, b=b.shape, r=r.shape)
        epilogue = ops.Epilogue(tb, "relu", tr)
        if folded is not None:
            out = ops.nearest_upsample_conv(tx, tw, folded, cgeom, epilogue)
        else:
            out = ops.resize_conv(tx, tw, rgeom, cgeom, epilogue)
        return [tx, tw, tb, tr], [out]

    y = compile_computation("resize_conv", build, host_target())(x, w, b, r)
    (conv,) = run_onnxruntime(
        resize_conv_model(rgeom, cgeom, bias=True), {"x": x, "w": w, "bias": b}
    )
    agreement = compare(y, np.maximum(conv + r, 0))
    assert agreement.ok, agreement
