"""Integer convolutions (cf.qconv: QLinearConv, cf.conv_integer: ConvInteger) against
onnxruntime on the exported ONNX graph, and against an exact integer oracle in numpy.

onnxruntime 1.32 on AVX2 without VNNI (a Zen 3) computes QLinearConv of uint8
activations and int8 weights with ``vpmaddubsw``, which saturates a pair of products at
32767: with full-range weights (|w| > 64 next to a large x) its results are wrong by up to
tens of LSBs (measured: 170 of 512 outputs, up to 5 LSB on a 16-channel 3x3). Against
onnxruntime those cases use 7-bit weights (|w| <= 64, where a pair cannot saturate, as its
quantizer's ``reduce_range`` does); full-range weights are checked against numpy.
"""

from __future__ import annotations

import fractions
import itertools
import re
import zlib

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import convforge as cf
from convforge import shapes
from convforge.export import run_onnxruntime
from convforge.export.onnx_graphs import conv_integer_model, qdq_conv_model, qlinear_conv_model


def exact_acc(x, w, x_zp, w_zp, geom) -> np.ndarray:
    """ONNX's accumulator, in int64 by numpy: sum (x - x_zp) * (w - w_zp[o]) over each
    window of x padded with x_zp (pads contribute 0)."""
    xi = np.pad(x.astype(np.int64) - int(x_zp), [(0, 0), (0, 0), *geom.padding])
    wi = w.astype(np.int64) - np.broadcast_to(np.asarray(w_zp, np.int64), (len(w),)).reshape(
        -1, *[1] * (w.ndim - 1)
    )
    cin, opg = geom.in_channels // geom.groups, geom.out_channels // geom.groups
    out = np.zeros(geom.out_shape, np.int64)
    for o in range(geom.out_channels):
        g = o // opg
        for p in itertools.product(*[range(s) for s in geom.out_size]):
            window = tuple(
                slice(i * s, i * s + d * (k - 1) + 1, d)
                for i, s, d, k in zip(p, geom.stride, geom.dilation, geom.kernel)
            )
            patch = xi[(slice(None), slice(g * cin, (g + 1) * cin), *window)]
            out[(slice(None), o, *p)] = (patch * wi[o]).reshape(len(x), -1).sum(axis=1)
    return out


def requantized(acc, x_scale, w_scale, y_scale, y_zp, dtype, bounds=None) -> np.ndarray:
    """onnxruntime's requantization of an int64 accumulator (bias included), in numpy:
    the float32 multiplier, float32 product, round half to even, clamp."""
    channels = acc.shape[1]
    m = (np.float32(x_scale) * np.broadcast_to(np.float32(w_scale), (channels,))).astype(
        np.float32
    ) / np.float32(y_scale)
    m = m.astype(np.float32).reshape(-1, *[1] * (acc.ndim - 2))
    info = np.iinfo(dtype)
    lo, hi = bounds or (info.min, info.max)
    return np.clip(np.rint(acc.astype(np.float32) * m) + int(y_zp), lo, hi).astype(dtype)


def exact_requantized(acc, x_scale, w_scale, y_scale, y_zp, dtype) -> np.ndarray:
    """Round half to even of the exact rational ``acc * x_scale * w_scale / y_scale``."""
    channels = acc.shape[1]
    ws = np.broadcast_to(np.float32(w_scale), (channels,))
    info = np.iinfo(dtype)
    out = np.empty(acc.shape, np.int64)
    for index in np.ndindex(acc.shape):
        real = (
            fractions.Fraction(int(acc[index]))
            * fractions.Fraction(float(np.float32(x_scale)))
            * fractions.Fraction(float(ws[index[1]]))
            / fractions.Fraction(float(np.float32(y_scale)))
        )
        out[index] = min(max(round(real) + int(y_zp), info.min), info.max)
    return out


def integers(rng, dtype, shape, bits=8):
    """Random values of an 8-bit ``dtype``; ``bits=7`` keeps int8 within [-64, 63]."""
    info = np.iinfo(dtype)
    lo, hi = (info.min, info.max) if bits == 8 else (-64, 63)
    return rng.integers(lo, hi + 1, shape).astype(dtype)


def _geometry(case):
    return shapes.conv_geometry(
        case["x_shape"], case["w_shape"], stride=case.get("stride", 1),
        padding=case.get("padding", 0), dilation=case.get("dilation", 1),
        groups=case.get("groups", 1),
    )  # fmt: skip


def _kwargs(case):
    return {k: case[k] for k in ("stride", "padding", "dilation", "groups") if k in case}


# uint8 x int8 cases use 7-bit weights (module doc: onnxruntime saturates otherwise)
ORT_CASES = {
    "u8s8-2d-stride-per-channel-bias": dict(
        x_shape=(1, 8, 9, 9), w_shape=(6, 8, 3, 3), stride=2, padding=1, xd="uint8",
        wd="int8", per_channel=True, bias=True, bits=7,
    ),
    "s8s8-1d-strided-same": dict(
        x_shape=(2, 5, 13), w_shape=(4, 5, 3), stride=2, padding="same", xd="int8",
        wd="int8", per_channel=False, bias=False, bits=8, auto_pad="SAME_UPPER",
    ),
    "u8u8-3d-groups-w-zero-point": dict(
        x_shape=(1, 4, 4, 5, 6), w_shape=(6, 2, 2, 3, 3), padding=(0, 1, 1), groups=2,
        xd="uint8", wd="uint8", per_channel=True, bias=True, bits=8, w_zp=True,
    ),
    # on AVX-512 VNNI the rows form (positions in the lanes; a width of 16 + 11)
    "u8s8-1x1-rows-per-channel-bias": dict(
        x_shape=(2, 20, 3, 27), w_shape=(24, 20, 1, 1), xd="uint8", wd="int8",
        per_channel=True, bias=True, bits=7,
    ),
    # on AVX-512 VNNI + VBMI the vpdpbusd form's blocks transposed to NCHW in registers
    # (plan.QConvPlan.blocked_requant): 2 blocks, 12 positions a step; 1-D strided, 14
    # a step; 3-D, 9 a step; an int32 output tiled past the width (36 of 27), 9 a step;
    # 3 blocks, 15 a step
    "u8s8-vnni-transposed-2d": dict(
        x_shape=(1, 20, 7, 12), w_shape=(32, 20, 3, 3), padding=1, xd="uint8", wd="int8",
        per_channel=True, bias=True, bits=7,
    ),
    "u8s8-vnni-transposed-1d-strided": dict(
        x_shape=(2, 8, 30), w_shape=(16, 8, 3), stride=2, xd="uint8", wd="int8",
        per_channel=False, bias=True, bits=7,
    ),
    "u8s8-vnni-transposed-3d": dict(
        x_shape=(1, 8, 3, 4, 9), w_shape=(16, 8, 1, 3, 3), padding=(0, 1, 1), xd="uint8",
        wd="int8", per_channel=True, bias=False, bits=7,
    ),
    "u8s8-vnni-transposed-tiled-past-the-width": dict(
        x_shape=(1, 16, 3, 29), w_shape=(16, 16, 3, 3), xd="uint8", wd="int8",
        per_channel=True, bias=True, bits=7,
    ),
    "u8s8-vnni-transposed-three-blocks": dict(
        x_shape=(1, 4, 6, 47), w_shape=(48, 4, 3, 3), xd="uint8", wd="int8",
        per_channel=True, bias=True, bits=7,
    ),
    # the direct form reading x with a stride along rows: x stored as stride phases
    # (cpu_qconv, thresholds.md#qconv-phases); with a weight zero point the window sums
    # read the phases too
    "u8s8-depthwise-strided-phases": dict(
        x_shape=(1, 16, 11, 12), w_shape=(16, 1, 3, 3), stride=2, padding=1, groups=16,
        xd="uint8", wd="int8", per_channel=True, bias=True, bits=7,
    ),
    "u8u8-grouped-strided-phases-w-zero-point": dict(
        x_shape=(1, 8, 9, 16), w_shape=(8, 2, 3, 3), stride=2, padding=1, groups=4,
        xd="uint8", wd="uint8", per_channel=True, bias=True, bits=8,
    ),
    "s8s8-1d-depthwise-stride-3-phases": dict(
        x_shape=(2, 6, 25), w_shape=(6, 1, 5), stride=3, padding=1, groups=6, xd="int8",
        wd="int8", per_channel=False, bias=False, bits=8,
    ),
    "u8s8-depthwise": dict(
        x_shape=(1, 16, 10, 10), w_shape=(16, 1, 3, 3), padding=1, groups=16, xd="uint8",
        wd="int8", per_channel=True, bias=True, bits=7,
    ),
}  # fmt: skip


def _qlinear_case(case, rng):
    geom = _geometry(case)
    xd, wd, channels = case["xd"], case["wd"], geom.out_channels
    x = integers(rng, xd, geom.x_shape)
    w = integers(rng, wd, geom.w_shape, case["bits"])
    # scales that keep the outputs mostly inside the 8-bit range
    fan_in = np.prod(geom.w_shape[1:])
    shape = (channels,) if case["per_channel"] else ()
    w_scale = rng.uniform(0.5, 1.5, shape).astype(np.float32) / np.float32(64)
    x_scale, y_scale = np.float32(0.02), np.float32(0.02 * np.sqrt(fan_in) * 1.5)
    lo = np.iinfo(xd).min
    x_zp = np.asarray(rng.integers(lo, lo + 10) if xd == "uint8" else rng.integers(-5, 5), xd)
    y_zp = np.asarray(lo + 128 if xd == "uint8" else rng.integers(-10, 10), xd)
    if wd == "uint8":  # real weights around 0
        w_zp = rng.integers(124, 132, shape).astype(wd)
    elif case.get("w_zp"):
        w_zp = rng.integers(-3, 4, shape).astype(wd)
    else:
        w_zp = np.zeros(shape, wd)
    bias = rng.integers(-2000, 2000, channels).astype(np.int32) if case["bias"] else None
    return geom, dict(
        x=x, x_scale=x_scale, x_zero_point=x_zp, w=w, w_scale=w_scale, w_zero_point=w_zp,
        y_scale=y_scale, y_zero_point=y_zp, bias=bias,
    )  # fmt: skip


def _run_both(geom, args, case):
    y = cf.qconv(*args.values(), **_kwargs(case))
    model = qlinear_conv_model(
        geom, w=args["w"], x_dtype=str(args["x"].dtype),
        **{k: v for k, v in args.items() if k not in ("x", "w")},
        auto_pad=case.get("auto_pad", "NOTSET"),
    )  # fmt: skip
    (expected,) = run_onnxruntime(model, {"x": args["x"]})
    return y, expected


@pytest.mark.parametrize("name", sorted(ORT_CASES))
def test_qlinear_conv_equals_onnxruntime_and_the_integer_oracle(name):
    case = ORT_CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    geom, args = _qlinear_case(case, rng)
    y, expected = _run_both(geom, args, case)
    assert y.dtype == expected.dtype and y.shape == expected.shape == geom.out_shape
    np.testing.assert_array_equal(y, expected)
    acc = exact_acc(args["x"], args["w"], args["x_zero_point"], args["w_zero_point"], geom)
    if args["bias"] is not None:
        acc = acc + args["bias"].reshape(-1, *[1] * geom.ndim)
    oracle = requantized(
        acc, args["x_scale"], args["w_scale"], args["y_scale"], args["y_zero_point"],
        case["xd"],
    )  # fmt: skip
    np.testing.assert_array_equal(y, oracle)
    # not a saturated test: most outputs lie strictly inside the range
    info = np.iinfo(case["xd"])
    assert np.mean((y > info.min) & (y < info.max)) > 0.5


def test_conv_integer_equals_onnxruntime_full_range():
    rng = np.random.default_rng(7)
    geom = shapes.conv_geometry((2, 6, 7, 8), (4, 3, 3, 2), stride=(1, 2), padding=1, groups=2)
    x, w = integers(rng, "uint8", geom.x_shape), integers(rng, "int8", geom.w_shape)
    y = cf.conv_integer(x, w, np.uint8(131), np.int8(-3), stride=(1, 2), padding=1, groups=2)
    model = conv_integer_model(geom, w=w, x_dtype="uint8", x_zero_point=131, w_zero_point=-3)
    (expected,) = run_onnxruntime(model, {"x": x})
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(y, exact_acc(x, w, 131, -3, geom))


def test_full_range_weights_and_what_onnxruntime_lacks_equal_the_integer_oracle():
    """u8s8 with full-range weights (onnxruntime saturates on AVX2), int8 x with uint8 w
    (onnxruntime has no kernel), ConvInteger with per-channel weight zero points
    (onnxruntime refuses them): against numpy's exact integers."""
    rng = np.random.default_rng(11)
    geom = shapes.conv_geometry((1, 12, 6, 7), (8, 12, 3, 3), padding=1)
    x = integers(rng, "uint8", geom.x_shape)
    w = integers(rng, "int8", geom.w_shape)
    w_scale = rng.uniform(0.5, 1.5, 8).astype(np.float32) / 64
    y = cf.qconv(x, 0.02, np.uint8(3), w, w_scale, np.zeros(8, np.int8), 1.5, np.uint8(128),
                 padding=1)  # fmt: skip
    acc = exact_acc(x, w, 3, 0, geom)
    np.testing.assert_array_equal(y, requantized(acc, 0.02, w_scale, 1.5, 128, "uint8"))
    assert np.mean((y > 0) & (y < 255)) > 0.2

    xs = integers(rng, "int8", geom.x_shape)
    wu = integers(rng, "uint8", geom.w_shape)
    w_zp = rng.integers(100, 156, 8).astype(np.uint8)
    y = cf.qconv(xs, 0.02, np.int8(-2), wu, w_scale, w_zp, 1.5, np.int8(1), padding=1)
    acc = exact_acc(xs, wu, -2, w_zp, geom)
    np.testing.assert_array_equal(y, requantized(acc, 0.02, w_scale, 1.5, 1, "int8"))

    y = cf.conv_integer(x, wu, np.uint8(9), w_zp, padding=1)
    np.testing.assert_array_equal(y, exact_acc(x, wu, 9, w_zp, geom))


@pytest.mark.parametrize("edge", [128, 129])
def test_the_vpmaddubsw_form_is_taken_only_where_exact(edge):
    """x = 255 everywhere and neighbouring weight pairs summing |w| to 128 (the most
    ``vpmaddubsw``'s saturating int16 pair sum holds: 255 * 128 = 32640) or 129: the
    first takes that form, the second ``vpmaddwd``; both exact (ConvInteger: no
    saturation of the output hides an error)."""
    from convforge.ops.qconv import fits_pmaddubsw
    from convforge.plan import plan_qconv
    from convforge.targets import has_x86_feature, resolve_target

    geom = shapes.conv_geometry((1, 8, 3, 5), (16, 8, 1, 3), padding=(0, 1))
    x = np.full(geom.x_shape, 255, np.uint8)
    pairs = [(-128, 0), (64, 64), (-64, -64), (0, -128)]
    if edge == 129:
        pairs[1] = (65, 64)
    w = np.array(
        [pairs[(o + c // 2) % 4][c % 2] for o in range(16) for c in range(8) for _ in range(3)]
    )
    w = w.astype(np.int8).reshape(geom.w_shape)
    assert fits_pmaddubsw(w) == (edge == 128)
    form = plan_qconv(geom, "uint8", "int8", requantize=False, w_zero_point=False,
                      narrow_weights=fits_pmaddubsw(w)).form  # fmt: skip
    host = resolve_target(None)
    if has_x86_feature(host, "avx512vnni"):  # vpdpbusd sums in int32: exact for any weight
        assert form == "vpdpbusd"
    elif has_x86_feature(host, "avx2"):
        assert form == ("vpmaddubsw" if edge == 128 else "vpmaddwd")
    else:
        assert form == "direct"
    y = cf.conv_integer(x, w, np.uint8(0), padding=(0, 1))
    np.testing.assert_array_equal(y, exact_acc(x, w, 0, 0, geom))


def _host_forms() -> list[str]:
    from convforge.targets import has_x86_feature, resolve_target

    host = resolve_target(None)
    forms = ["direct"]
    if has_x86_feature(host, "avx2"):
        forms += ["vpmaddwd", "vpmaddubsw"]
    if has_x86_feature(host, "avx512vnni"):
        forms.append("vpdpbusd")
    return forms


@pytest.mark.parametrize("form", ["direct", "vpmaddwd", "vpmaddubsw", "vpdpbusd"])
def test_every_integer_form_equals_the_integer_oracle(form, monkeypatch):
    """Each form this CPU can run, forced, on channels that fill no block (20 out: 16 + 4
    of a VNNI block, 8 + 8 + 4 of AVX2's; 6 in: a quad and a half) with a stride and
    padding, a prime output width and a strided 1x1: ConvInteger of uint8 x and int8 w (7-bit for ``vpmaddubsw``, full range
    otherwise) equals the exact integer oracle. A form the CPU lacks is compiled only
    (``test_the_vnni_form_emits_vpdpbusd``)."""
    if form not in _host_forms():
        pytest.skip(f"this CPU cannot run the {form} form")
    from convforge import plan as plan_module

    def forced(geom, x_dtype, w_dtype, out_dtype, w_zero_point, narrow, target):
        return plan_module.QConvPlan(geom, x_dtype, w_dtype, out_dtype, w_zero_point, form, target)

    monkeypatch.setattr(plan_module, "_plan_qconv", forced)
    rng = np.random.default_rng(11)
    # the second: a prime output width (109, SqueezeNet's first layer), computed over
    # register tiles past the edge (ops.qconv.tiled_width)
    for x_shape, w_shape, stride, padding in [
        ((2, 6, 9, 11), (20, 6, 3, 3), (1, 2), 1),
        ((1, 3, 9, 223), (16, 3, 7, 7), 2, 0),
        # a strided 1x1: x packed at the positions it reads only
        ((2, 6, 9, 13), (20, 6, 1, 1), (2, 3), 0),
    ]:
        geom = shapes.conv_geometry(x_shape, w_shape, stride=stride, padding=padding)
        x = integers(rng, "uint8", geom.x_shape)
        w = integers(rng, "int8", geom.w_shape, 7 if form == "vpmaddubsw" else 8)
        y = cf.conv_integer(x, w, np.uint8(7), stride=stride, padding=padding)
        np.testing.assert_array_equal(y, exact_acc(x, w, 7, 0, geom))


@pytest.mark.parametrize(
    "x_shape, w_shape",
    [
        ((2, 6, 5, 13), (20, 6, 1, 1)),  # channels in no whole quad, a width of 13 of 16
        ((1, 16, 4, 55), (64, 16, 1, 1)),  # 48 + 7 positions
        ((1, 40, 3, 32), (36, 40, 1, 1)),  # whole vectors; 36 channels: tiles of 4
        ((1, 8, 2, 3, 20), (12, 8, 1, 1, 1)),  # 3-D
        ((1, 16, 2, 112), (96, 16, 1, 1)),  # seven vectors a row: tiles of 3 channels
    ],
)
def test_the_rows_form_equals_the_integer_oracle(x_shape, w_shape, monkeypatch):
    """The rows form (``vpdpbusd_rows``: 16 output positions in the lanes), forced on 1x1
    convolutions whose widths end in a partial vector: ConvInteger of uint8 x and full-range
    int8 w equals the exact integer oracle (run where the CPU has AVX-512 VNNI)."""
    if "vpdpbusd" not in _host_forms():
        pytest.skip("this CPU has no AVX-512 VNNI")
    from convforge import plan as plan_module

    def forced(geom, x_dtype, w_dtype, out_dtype, w_zero_point, narrow, target):
        return plan_module.QConvPlan(
            geom, x_dtype, w_dtype, out_dtype, w_zero_point, plan_module.ROWS_FORM, target
        )

    monkeypatch.setattr(plan_module, "_plan_qconv", forced)
    rng = np.random.default_rng(sum(x_shape))
    geom = shapes.conv_geometry(x_shape, w_shape)
    x = integers(rng, "uint8", geom.x_shape)
    w = integers(rng, "int8", geom.w_shape)
    y = cf.conv_integer(x, w, np.uint8(9))
    np.testing.assert_array_equal(y, exact_acc(x, w, 9, 0, geom))


def test_the_rows_form_is_planned_for_few_input_channels_and_emits_vpdpbusd():
    """On an AVX-512 VNNI CPU without VBMI (Cascade Lake) a 1x1 uint8 x int8 convolution
    of at most 128 input channels, no fewer output channels and a width of 12-112 takes the
    rows form (thresholds.md#qconv-rows); more input channels, fewer output ones, another
    kernel, a stride or a narrow width keep 16 channels in the lanes. Its inner loop is
    ``vpdpbusd`` on zmm registers and its requantization reads the int32 tile without
    gathers. With VBMI (Zen 4) the channel form where it transposes in registers (16 output
    channels a block) and the convolution has fewer than 32 input channels or an output
    narrower than 28 (thresholds.md#qconv-transpose), the rows form elsewhere."""
    from convforge.build import compile_computation
    from convforge.plan import ROWS_FORM, plan_qconv

    cpu = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "cascadelake"}

    def form(x_shape, w_shape, mcpu="cascadelake", requantize=True, **kwargs):
        geom = shapes.conv_geometry(x_shape, w_shape, **kwargs)
        target = {**cpu, "mcpu": mcpu}
        return plan_qconv(geom, "uint8", "int8", target, requantize=requantize,
                          w_zero_point=False)  # fmt: skip

    assert form((1, 64, 56, 56), (256, 64, 1, 1), "znver4").form == ROWS_FORM
    assert form((1, 64, 14, 14), (384, 64, 1, 1), "znver4").form == "vpdpbusd"
    assert form((1, 16, 112, 112), (96, 16, 1, 1), "znver4").form == "vpdpbusd"
    assert form((1, 16, 112, 112), (96, 16, 1, 1), "znver4", requantize=False).form == ROWS_FORM
    assert form((1, 16, 3, 20), (40, 16, 1, 1), "znver4").form == ROWS_FORM  # 40: 2.5 blocks

    assert form((1, 64, 56, 56), (256, 64, 1, 1)).form == ROWS_FORM
    assert form((1, 128, 28, 28), (512, 128, 1, 1)).form == ROWS_FORM
    assert form((1, 16, 112, 112), (96, 16, 1, 1)).form == ROWS_FORM
    assert form((1, 256, 56, 56), (64, 256, 1, 1)).form == "vpdpbusd"
    assert form((1, 96, 56, 56), (24, 96, 1, 1)).form == "vpdpbusd"
    assert form((1, 64, 56, 56), (64, 64, 3, 3), padding=1).form == "vpdpbusd"
    assert form((1, 64, 56, 56), (256, 64, 1, 1), stride=2).form == "vpdpbusd"
    assert form((1, 64, 7, 7), (256, 64, 1, 1)).form == "vpdpbusd"
    plan = form((1, 32, 6, 28), (48, 32, 1, 1))
    assert plan.form == ROWS_FORM and plan.label == "qlinear_conv2d (int8, vpdpbusd_rows)"
    kernel = compile_computation("qconv", plan.computation(), plan.target)
    asm = kernel.executable.mod.inspect_source("asm")
    assert len(re.findall(r"vpdpbusd\s+[^\n]*zmm", asm)) >= 8
    assert "vpgather" not in asm


def test_the_usdot_form_on_aarch64_with_i8mm_emits_usdot_and_computes_the_oracle():
    """Compiled for AArch64 (never run here): uint8 x int8 of one group takes the ``usdot``
    form on a CPU with the i8mm extension (Neoverse V1), 4 channels a block, whose inner loop
    is ``usdot`` (x's broadcast quads the unsigned operand: ACLE's ``vusdotq_s32(r, a, b)``
    order, checked by hand in the assembly, where they come from ``ld1r``); with dotprod only
    (Neoverse N1) the direct form. The form's computation (w packed 4 x 4 channels, on
    channels that fill no block), compiled unscheduled for this machine, equals the exact
    integer oracle: what the intrinsic replaces is checked by its assembly alone."""
    import tvm

    from convforge import qparams
    from convforge.build import compile_computation, prim_func
    from convforge.plan import plan_qconv
    from convforge.targets import host_target

    geom = shapes.conv_geometry((1, 6, 7, 9), (10, 6, 3, 3), padding=1)
    arm = {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}
    plan = plan_qconv(geom, "uint8", "int8", {**arm, "mcpu": "neoverse-v1"}, requantize=False,
                      w_zero_point=False)  # fmt: skip
    assert (plan.form, plan.out_block, plan.label) == ("usdot", 4, "conv_integer2d (int8, usdot)")
    kernel = compile_computation("qconv", plan.computation(), plan.target)
    asm = kernel.executable.mod.inspect_source("asm")
    assert len(re.findall(r"usdot\s+v\d+\.4s, v\d+\.16b, v\d+\.16b", asm)) >= 8
    dotprod_only = {**arm, "mcpu": "neoverse-n1"}
    assert plan_qconv(geom, "uint8", "int8", dotprod_only, requantize=False,
                      w_zero_point=False).form == "direct"  # fmt: skip

    rng = np.random.default_rng(5)
    x = integers(rng, "uint8", geom.x_shape)
    w = integers(rng, "int8", geom.w_shape)
    args = qparams.quant_args("uint8", "int8", geom.out_channels, requantize=False,
                              x_zero_point=np.uint8(4), w_zero_point=None)  # fmt: skip
    library = tvm.compile(tvm.IRModule({"main": prim_func(plan.computation())}), host_target())
    device = tvm.cpu()
    tensors = [tvm.runtime.tensor(a, device) for a in (x, plan.pack(w), *args.kernel_constants(w))]
    y = tvm.runtime.tensor(np.zeros(geom.out_shape, np.int32), device)
    library["main"](*tensors, y)
    np.testing.assert_array_equal(y.numpy(), exact_acc(x, w, 4, 0, geom))


@pytest.mark.parametrize("mcpu", ["znver4", "cascadelake"])
def test_the_vnni_form_emits_vpdpbusd(mcpu):
    """Compiled for an AVX-512 VNNI CPU (run where this CPU has VNNI, by the tests above):
    uint8 x int8 of one group takes the ``vpdpbusd`` form, 16 channels a block, whose
    inner loop is ``vpdpbusd`` on zmm registers; without VNNI (Zen 3) the AVX2 forms."""
    from convforge.build import compile_computation
    from convforge.plan import plan_qconv

    geom = shapes.conv_geometry((1, 32, 8, 8), (32, 32, 3, 3), padding=1)
    cpu = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu}
    plan = plan_qconv(geom, "uint8", "int8", cpu, requantize=True, w_zero_point=False)
    assert (plan.form, plan.out_block) == ("vpdpbusd", 16)
    kernel = compile_computation("qconv", plan.computation(), plan.target)
    asm = kernel.executable.mod.inspect_source("asm")
    assert len(re.findall(r"vpdpbusd\s+[^\n]*zmm", asm)) >= 8
    zen3 = {**cpu, "mcpu": "znver3"}
    narrow = plan_qconv(geom, "uint8", "int8", zen3, requantize=True, w_zero_point=False,
                        narrow_weights=True)  # fmt: skip
    assert narrow.form == "vpmaddubsw"


@pytest.mark.parametrize(
    "name", [n for n in sorted(ORT_CASES) if n.startswith("u8s8-vnni-transposed")]
)
def test_the_vnni_form_transposes_its_blocks_in_registers_where_vbmi_permutes_bytes(name):
    """Compiled for Zen 4 (AVX-512 VNNI and VBMI; the outputs are checked against
    onnxruntime and the oracle above where this CPU has them): the ``vpdpbusd`` form's
    QLinearConv requantizes in its blocked layout and transposes each 16 channels x chunk
    positions by byte permutes (``vpermb``/``vpermt2b``). Cascade Lake (VNNI without VBMI)
    and ConvInteger (an int32 output) keep the requantization in NCHW; so does a width
    whose divisors up to 16 are too small (23: prime)."""
    from convforge.build import compile_computation
    from convforge.plan import plan_qconv

    cpu = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4"}
    geom = _geometry(ORT_CASES[name])
    plan = plan_qconv(geom, "uint8", "int8", cpu, requantize=True, w_zero_point=False)
    assert plan.form == "vpdpbusd" and plan.blocked_requant
    kernel = compile_computation("qconv", plan.computation(), plan.target)
    asm = kernel.executable.mod.inspect_source("asm")
    assert re.search(r"vperm(t2|i2)?b\s", asm)
    cascadelake = {**cpu, "mcpu": "cascadelake"}
    assert not plan_qconv(geom, "uint8", "int8", cascadelake, requantize=True,
                          w_zero_point=False).blocked_requant  # fmt: skip
    assert not plan_qconv(geom, "uint8", "int8", cpu, requantize=False,
                          w_zero_point=False).blocked_requant  # fmt: skip
    prime = shapes.conv_geometry((1, 4, 5, 23), (16, 4, 3, 3), padding=1)
    assert not plan_qconv(prime, "uint8", "int8", cpu, requantize=True,
                          w_zero_point=False).blocked_requant  # fmt: skip


@pytest.mark.parametrize(
    "x_shape, w_shape, stride, phased",
    [
        ((1, 16, 11, 56), (16, 1, 3, 3), 2, True),  # a 28-wide output row: phases
        ((1, 16, 11, 112), (16, 1, 3, 3), 2, False),  # 56 wide: strided reads kept
        ((1, 16, 11, 13), (16, 1, 3, 3), 2, False),  # padded width 15: no whole phases
    ],
)
def test_the_direct_form_stores_strided_x_as_phases_for_narrow_rows(
    x_shape, w_shape, stride, phased
):
    """The direct integer form (depthwise here) stores its padded x as stride phases
    (``qconv_pad`` (..., s, W/s)) where it reads x with a stride along rows, the padded
    width is a multiple of the stride and the output row is at most the profile's
    ``qconv_phases_max_width`` (28) wide; the outputs of such shapes are checked against
    onnxruntime above (``*-phases`` cases)."""
    from tvm import te

    from convforge.plan import plan_qconv
    from convforge.schedules.cpu_qconv import schedule_qconv

    cpu = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4"}
    geom = shapes.conv_geometry(x_shape, w_shape, stride=stride, padding=1, groups=16)
    plan = plan_qconv(geom, "uint8", "int8", cpu, requantize=True, w_zero_point=False)
    assert plan.form == "direct"
    inputs, outputs = plan.computation()()
    sch = schedule_qconv(te.create_prim_func([*inputs, *outputs]), plan.target)
    padded = x_shape[-1] + 2
    phases = f"qconv_pad = T.sblock_alloc_buffer((1, 16, 13, {stride}, {padded // stride})"
    assert (phases in sch.mod.script()) == phased


def test_ties_round_half_to_even():
    """y_scale = 2 * x_scale * w_scale: every odd accumulator is an exact tie (float32
    exact), rounded to even as ONNX says, by both runtimes."""
    geom = shapes.conv_geometry((1, 1, 1, 8), (2, 1, 1, 1))
    x = np.arange(8, dtype=np.uint8).reshape(geom.x_shape)
    w = np.array([1, 3], np.int8).reshape(geom.w_shape)
    args = dict(
        x=x, x_scale=np.float32(0.5), x_zero_point=np.uint8(0), w=w,
        w_scale=np.float32(0.25), w_zero_point=np.int8(0), y_scale=np.float32(0.25),
        y_zero_point=np.uint8(10), bias=None,
    )  # fmt: skip
    y, expected = _run_both(geom, args, {})
    halves = np.array([0, 1, 2, 3, 4, 5, 6, 7]) / 2  # x * 1 * 0.5
    np.testing.assert_array_equal(y[0, 0, 0], np.round(halves) + 10)  # numpy: half to even
    np.testing.assert_array_equal(y[0, 0, 0], [10, 10, 11, 12, 12, 12, 13, 14])
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("activation", ["relu", (-0.5, 1.0)])
def test_fused_activation_equals_the_qdq_model_and_the_oracle(activation):
    rng = np.random.default_rng(5)
    case = dict(x_shape=(1, 6, 7, 7), w_shape=(5, 6, 3, 3), padding=1, xd="uint8", wd="int8",
                per_channel=True, bias=True, bits=7)  # fmt: skip
    geom, args = _qlinear_case(case, rng)
    args["y_zero_point"] = np.uint8(100)
    y = cf.qconv(*args.values(), padding=1, activation=activation)
    acc = exact_acc(args["x"], args["w"], args["x_zero_point"], 0, geom)
    acc = acc + args["bias"].reshape(-1, 1, 1)
    ys = float(args["y_scale"])
    clip = (100, 255) if activation == "relu" else (round(-0.5 / ys), round(1.0 / ys))
    bounds = clip if activation == "relu" else (clip[0] + 100, clip[1] + 100)
    oracle = requantized(acc, args["x_scale"], args["w_scale"], ys, 100, "uint8", bounds)
    np.testing.assert_array_equal(y, oracle)
    assert (y == bounds[0]).any() and (y > bounds[0]).any()
    model = qdq_conv_model(
        geom, w=args["w"], x_dtype="uint8",
        **{k: v for k, v in args.items() if k not in ("x", "w")}, activation=activation,
    )  # fmt: skip
    (expected,) = run_onnxruntime(model, {"x": args["x"]})
    assert np.abs(y.astype(int) - expected.astype(int)).max() <= 1


@st.composite
def qconv_cases(draw):
    nd = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 1, 2]))
    cin, cout = groups * draw(st.integers(1, 4)), groups * draw(st.integers(1, 3))
    if draw(st.booleans()) and nd < 3:
        groups, cin, cout = cin, cin, cin  # depthwise
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    size = tuple(
        (k - 1) * d + draw(st.integers(1, {1: 12, 2: 7, 3: 4}[nd]))
        for k, d in zip(kernel, dilation)
    )
    xd, wd = draw(st.sampled_from([("uint8", "int8"), ("uint8", "uint8"), ("int8", "int8")]))
    return dict(
        x_shape=(draw(st.integers(1, 2)), cin, *size), w_shape=(cout, cin // groups, *kernel),
        stride=stride, dilation=dilation, groups=groups,
        padding=tuple((draw(st.integers(0, 1)), draw(st.integers(0, 1))) for _ in range(nd)),
        xd=xd, wd=wd, per_channel=draw(st.booleans()), bias=draw(st.booleans()),
        bits=7 if (xd, wd) == ("uint8", "int8") else 8, w_zp=wd == "uint8",
    )  # fmt: skip


def _property(case):
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    geom, args = _qlinear_case(case, rng)
    y, expected = _run_both(geom, args, case)
    np.testing.assert_array_equal(y, expected)
    # against round half to even of the exact real value: within 1 (float32 multiplier)
    acc = exact_acc(args["x"], args["w"], args["x_zero_point"], args["w_zero_point"], geom)
    if args["bias"] is not None:
        acc = acc + args["bias"].reshape(-1, *[1] * geom.ndim)
    exact = exact_requantized(
        acc, args["x_scale"], args["w_scale"], args["y_scale"], args["y_zero_point"],
        case["xd"],
    )  # fmt: skip
    assert np.abs(y.astype(np.int64) - exact).max() <= 1


@settings(max_examples=4)
@given(qconv_cases())
def test_random_configurations_equal_onnxruntime(case):
    _property(case)


@pytest.mark.slow
@settings(max_examples=150)
@given(qconv_cases())
def test_random_configurations_equal_onnxruntime_many(case):
    _property(case)


def test_float32_requantization_against_exact_rounding():
    """How often onnxruntime's float32 requantization (which convforge matches bit for bit)
    differs from round half to even of the exact real value: never by more than 1, and
    rarely: measured 2 of 200,000 random accumulators (|acc| < 2**20, ten draws of random
    float32 scales), each one whose exact value lies within float32's rounding of a half
    (no exact tie: those both runtimes round to even, test_ties_round_half_to_even)."""
    rng = np.random.default_rng(3)
    count = 20000
    acc = rng.integers(-(2**20), 2**20, (1, count)).astype(np.int64)
    xs, ws, ys = (np.float32(v) for v in rng.uniform(0.001, 0.1, 3))
    ys = np.float32(ys * 64)
    fast = requantized(acc, xs, ws, ys, 0, "int32")
    exact = exact_requantized(acc, xs, ws, ys, 0, "int32")
    diff = np.abs(fast.astype(np.int64) - exact)
    assert diff.max() <= 1
    assert diff.mean() < 1e-2


# --- refusals: ValueError naming the parameter, before anything is compiled -----------

_X = np.zeros((1, 4, 5, 5), np.uint8)
_W = np.zeros((3, 4, 3, 3), np.int8)
_GOOD = dict(
    x=_X, x_scale=0.1, x_zero_point=np.uint8(0), w=_W, w_scale=np.full(3, 0.1, np.float32),
    w_zero_point=np.int8(0), y_scale=0.2, y_zero_point=np.uint8(0), bias=None,
)  # fmt: skip
REFUSALS = [
    (dict(x=_X.astype(np.float32)), "x must be a uint8 or int8"),
    (dict(w=_W.astype(np.int16)), "w must be a uint8 or int8"),
    (dict(x_zero_point=np.int8(0)), "x_zero_point must have dtype uint8"),
    (dict(x_zero_point=300), r"x_zero_point must lie in \[0, 255\]"),
    (dict(x_zero_point=np.zeros(2, np.uint8)), "x_zero_point must be a scalar"),
    (dict(w_zero_point=np.zeros(4, np.int8)), r"w_zero_point must be a scalar or of shape \(3,\)"),
    (dict(w_zero_point=np.uint8(0)), "w_zero_point must have dtype int8"),
    (dict(x_scale=0.0), "x_scale must be finite and > 0"),
    (dict(y_scale=-1.0), "y_scale must be finite and > 0"),
    (dict(x_scale=float("nan")), "x_scale must be finite and > 0"),
    (dict(w_scale=np.array([0.1, np.inf, 0.1])), "w_scale must be finite and > 0"),
    (dict(w_scale=1e39), "w_scale must be finite and > 0"),
    (dict(w_scale=np.ones(2)), r"w_scale must be a scalar or of shape \(3,\)"),
    (dict(y_scale="1"), "y_scale must be a float"),
    (dict(y_zero_point=np.int8(0)), "y_zero_point must have dtype uint8"),
    (dict(bias=np.zeros(3, np.float32)), "bias must be an int32 array"),
    (dict(bias=np.zeros(4, np.int32)), r"bias must have shape \(3,\)"),
    (dict(w=np.zeros((3, 2, 3, 3), np.int8)), "axis 1 must be in_channels/groups"),
]


@pytest.mark.parametrize("change, message", REFUSALS)
def test_bad_arguments_are_refused_naming_them(change, message):
    with pytest.raises(ValueError, match=message):
        cf.qconv(**{**_GOOD, **change})


@pytest.mark.parametrize(
    "activation", ["silu", (1.0, 0.0), (float("nan"), 1.0), ("a", 1.0), [0.0, 1.0]]
)
def test_a_bad_activation_is_refused(activation):
    with pytest.raises(ValueError, match="activation must be None, 'relu' or a clip"):
        cf.qconv(**_GOOD, activation=activation)


def test_conv_integer_refusals():
    with pytest.raises(ValueError, match="x_zero_point must have dtype uint8"):
        cf.conv_integer(_X, _W, np.int8(1))
    with pytest.raises(ValueError, match=r"w_zero_point must lie in \[-128, 127\]"):
        cf.conv_integer(_X, _W, 0, 200)
    with pytest.raises(ValueError, match="padding"):
        cf.conv_integer(_X, _W, padding="bogus")


# --- compiled models: QDQ from onnxruntime's quantizer --------------------------------


def _small_cnn(rng) -> onnx.ModelProto:
    """A float CNN: strided 3x3, 3x3, depthwise 3x3 + residual Add, 1x1, MaxPool, 3x3,
    GlobalAveragePool (every Conv but the depthwise followed by a Relu)."""
    inits, nodes = [], []

    def conv(name, x, cin, cout, k, stride=1, relu=True, groups=1):
        fan_in = cin // groups * k * k
        w = rng.standard_normal((cout, cin // groups, k, k)) * np.sqrt(2 / fan_in)
        b = rng.standard_normal(cout) * 0.1
        inits.extend(
            numpy_helper.from_array(a.astype(np.float32), f"{name}_{s}")
            for a, s in ((w, "w"), (b, "b"))
        )
        nodes.append(
            helper.make_node(
                "Conv", [x, f"{name}_w", f"{name}_b"], [name], name=name, pads=[k // 2] * 4,
                strides=[stride] * 2, group=groups,
            )
        )  # fmt: skip
        if not relu:
            return name
        nodes.append(helper.make_node("Relu", [name], [f"{name}_relu"], name=f"{name}_relu"))
        return f"{name}_relu"

    a = conv("c1", "x", 3, 16, 3, 2)
    c = conv("c3", conv("c2", a, 16, 16, 3), 16, 16, 3, relu=False, groups=16)
    nodes.append(helper.make_node("Add", [a, c], ["add"], name="add"))
    d = conv("c4", "add", 16, 32, 1)
    nodes.append(helper.make_node("MaxPool", [d], ["pool"], kernel_shape=[2, 2], strides=[2, 2]))
    e = conv("c5", "pool", 32, 32, 3)
    nodes.append(helper.make_node("GlobalAveragePool", [e], ["y"], name="gap"))
    graph = helper.make_graph(
        nodes, "small_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 24, 24])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 1, 1])], initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_a_quantize_static_qdq_model_runs_every_conv_on_the_integer_kernel(tmp_path):
    """onnxruntime's quantize_static (QDQ, per-channel int8 weights, uint8 activations;
    ``reduce_range`` keeps onnxruntime's own AVX2 kernels exact, module doc): every Conv
    becomes one integer kernel, the MaxPool runs on the integers, and the outputs agree with onnxruntime on the same model
    within 1 LSB of the output's scale."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    rng = np.random.default_rng(0)
    samples = [{"x": rng.random((1, 3, 24, 24)).astype(np.float32)} for _ in range(3)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter(samples)

        def get_next(self):
            return next(self.samples, None)

    onnx.save(_small_cnn(rng), tmp_path / "float.onnx")
    quantize_static(
        tmp_path / "float.onnx", tmp_path / "qdq.onnx", Reader(), quant_format=QuantFormat.QDQ,
        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )  # fmt: skip
    qdq = onnx.load(tmp_path / "qdq.onnx")
    model = cf.compile_model(qdq)
    kernels = {k["node"]: k for k in model.metadata["kernels"]}
    for name in ("c1", "c2", "c3", "c4", "c5"):
        assert kernels[name]["kernel"].startswith("qlinear_conv2d (int8"), kernels[name]
    # the MaxPool between two of them stays integer (its Q/DQ pair is dropped)
    (pool,) = [k for k in model.metadata["kernels"] if k["op_type"] == "MaxPool"]
    assert pool["kernel"] == "max_pool2d (int8)" and len(pool["fused"]) == 2
    x = rng.random((1, 3, 24, 24)).astype(np.float32)
    (y,) = model(x)
    (expected,) = run_onnxruntime(qdq, {"x": x})
    (last_quantize,) = [n for n in qdq.graph.node if n.op_type == "QuantizeLinear"][-1:]
    scale = numpy_helper.to_array(
        next(t for t in qdq.graph.initializer if t.name == last_quantize.input[1])
    )
    assert np.abs(y - expected).max() <= 1.001 * scale
    assert np.ptp(expected) > 10 * scale  # not a constant output
    # convforge check: the output is a quantized value, compared within one step
    check = cf.check_model(qdq, {"x": x}, compiled=model)
    assert check.ok and check.atol == pytest.approx(1.001 * scale / max(1, np.abs(expected).max()))


def _quantize_qdq(
    model: onnx.ModelProto, shape, tmp_path, rng, symbolic: bool = True
) -> onnx.ModelProto:
    """``model`` quantized by onnxruntime (pre-processing, then quantize_static: QDQ,
    per-channel int8 weights with reduce_range, uint8 activations; random calibration).
    ``symbolic=False`` skips the pre-processing's symbolic shape inference, which needs
    sympy (not in the test extra)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    samples = iter([{"x": rng.random(shape).astype(np.float32)} for _ in range(3)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(samples, None)

    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = shape[0]
    onnx.save(model, tmp_path / "float.onnx")
    quant_pre_process(
        tmp_path / "float.onnx", tmp_path / "prepared.onnx", skip_symbolic_shape=not symbolic
    )
    quantize_static(
        tmp_path / "prepared.onnx", tmp_path / "qdq.onnx", Reader(),
        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    return onnx.load(tmp_path / "qdq.onnx")


def test_a_qdq_gemm_classifier_runs_on_the_integer_kernel(tmp_path):
    """A classifier head quantized by onnxruntime (Conv -> Relu -> GlobalAveragePool ->
    Flatten -> Gemm(transB=1, bias) -> Relu -> Gemm(transB=0)): the first Gemm becomes the
    integer 1x1 convolution over (N, C, 1, 1) (fusion._fuse_qdq_gemm: its Q/DQ fused into
    it), the second (transB=0: W per channel along axis 1) stays float;
    outputs as onnxruntime's within one quantization step, at batch 1 and 3."""
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["g1"], transB=1, name="fc1"),
        helper.make_node("Relu", ["g1"], ["h"], name="relu1"),
        helper.make_node("Gemm", ["h", "w2"], ["y"], name="fc2"),
    ]
    weights = {
        "cw": rng.standard_normal((24, 3, 3, 3)) / 4, "cb": rng.standard_normal(24) / 4,
        "w1": rng.standard_normal((20, 24)) / 3, "b1": rng.standard_normal(20) / 3,
        "w2": rng.standard_normal((20, 10)) / 3,
    }  # fmt: skip
    graph = helper.make_graph(
        nodes, "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    qdq = _quantize_qdq(model, (3, 3, 12, 12), tmp_path, rng, symbolic=False)
    qdq.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    compiled = cf.compile_model(qdq)
    kernels = {k["node"]: k for k in compiled.metadata["kernels"]}
    assert kernels["fc1"]["kernel"].startswith("qlinear_conv2d (int8"), kernels["fc1"]
    quantizes = {n.name for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    assert set(kernels["fc1"]["fused"]) & quantizes, kernels["fc1"]  # its Q, fused
    assert kernels["fc2"]["op_type"] == "Gemm" and "int8" not in kernels["fc2"]["kernel"]
    (last_quantize,) = [n for n in qdq.graph.node if n.op_type == "QuantizeLinear"][-1:]
    scale = numpy_helper.to_array(
        next(t for t in qdq.graph.initializer if t.name == last_quantize.input[1])
    )
    for batch in (1, 3):
        x = rng.random((batch, 3, 12, 12)).astype(np.float32)
        (y,) = compiled(x)
        (expected,) = run_onnxruntime(qdq, {"x": x})
        assert y.shape == expected.shape == (batch, 10)
        assert np.abs(y - expected).max() <= 1.001 * scale
        assert np.ptp(expected) > 10 * scale  # not a constant output


@pytest.mark.slow
def test_the_quantized_demo_resnet_runs_on_integer_kernels(tmp_path):
    """The benchmarks' ResNet-15 (112x112) quantized by onnxruntime: every Conv and the
    classifier's Gemm on an integer kernel, the same top-1 as onnxruntime on the same QDQ
    model and every probability within 1 LSB of the output's scale (1/255 here)."""
    from benchmarks.bench_compile import resnet15

    rng = np.random.default_rng(1)
    qdq = _quantize_qdq(resnet15(size=112), (1, 3, 112, 112), tmp_path, rng)
    model = cf.compile_model(qdq)
    convs = [k for k in model.metadata["kernels"] if k["op_type"] == "QLinearConv"]
    layers = [n.name for n in qdq.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(layers) == 16 and sorted(k["node"] for k in convs) == sorted(layers)
    assert all(k["kernel"].startswith("qlinear_conv2d (int8") for k in convs)
    assert not [k for k in model.metadata["kernels"] if k["op_type"] == "Conv"]
    for _ in range(2):
        x = rng.random((1, 3, 112, 112)).astype(np.float32)
        (y,) = model(x)
        (expected,) = run_onnxruntime(qdq, {"x": x})
        assert y.argmax() == expected.argmax()
        assert np.abs(y - expected).max() <= 1.001 / 255


def _qdq_graph(bias: str, extra_reader: bool = False) -> onnx.ModelProto:
    """DQ(x), DQ(W) [, DQ(bias) | float bias] -> Conv -> Relu -> Q, and optionally a second
    reader (Identity) of DQ(x)'s output. ``bias``: 'int32' (scale x_scale * w_scale),
    'int32-other-scale', 'float' or 'none'."""
    rng = np.random.default_rng(0)
    geom = shapes.conv_geometry((1, 4, 6, 6), (8, 4, 3, 3), padding=1)
    w = integers(rng, "int8", geom.w_shape, 7)
    w_scale = np.full(8, 0.01, np.float32)
    model = qdq_conv_model(
        geom, w=w, x_dtype="uint8", x_scale=0.5, x_zero_point=3, w_scale=w_scale,
        w_zero_point=np.zeros(8, np.int8), y_scale=0.25, y_zero_point=128,
        bias=None if bias == "none" else np.arange(8, dtype=np.int32), activation="relu",
    )  # fmt: skip
    graph = model.graph
    if bias == "int32-other-scale":
        scale = next(t for t in graph.initializer if t.name == "bias_scale")
        scale.CopyFrom(numpy_helper.from_array(np.full(8, 0.006, np.float32), "bias_scale"))
    if bias == "float":
        conv = next(n for n in graph.node if n.op_type == "Conv")
        conv.input[2] = "bias_float"
        graph.initializer.append(numpy_helper.from_array(np.ones(8, np.float32), "bias_float"))
        dq_b = next(n for n in graph.node if "bias_q" in n.input)
        graph.node.remove(dq_b)
    if extra_reader:
        graph.node.append(helper.make_node("Identity", ["x_real"], ["x_copy"]))
        graph.output.append(helper.make_tensor_value_info("x_copy", TensorProto.FLOAT, None))
    return model


@pytest.mark.parametrize(
    "bias, fused", [("int32", True), ("none", True), ("int32-other-scale", False), ("float", False)]
)
def test_the_qdq_fusion_takes_exactly_what_it_can_compute(bias, fused):
    from convforge.export.fusion import fuse_convolutions

    result = fuse_convolutions(_qdq_graph(bias))
    ops = [n.op_type for n in result.graph.node]
    if fused:
        assert ops == ["QLinearConv"], ops
        (node,) = result.graph.node
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["convforge_activation"] == b"relu"
        assert node.output[0] == "y" and node.input[0] == "x"
    else:  # the Conv stays float (its weight dequantized once: a constant)
        assert "QLinearConv" not in ops and "Conv" in ops, ops


def test_the_qdq_fusion_keeps_a_dequantize_read_elsewhere():
    from convforge.export.fusion import fuse_convolutions

    result = fuse_convolutions(_qdq_graph("int32", extra_reader=True))
    ops = [n.op_type for n in result.graph.node]
    assert ops.count("QLinearConv") == 1 and ops.count("DequantizeLinear") == 1, ops
    dq = next(n for n in result.graph.node if n.op_type == "DequantizeLinear")
    assert dq.input[0] == "x" and dq.output[0] == "x_real"


def test_quantized_outputs_are_checked_within_one_step():
    from convforge.export.check_model import quantization_steps

    rng = np.random.default_rng(0)
    geom = shapes.conv_geometry((1, 2, 4, 4), (2, 2, 1, 1))
    qdq = qdq_conv_model(
        geom, w=integers(rng, "int8", geom.w_shape), x_dtype="uint8", x_scale=0.5,
        x_zero_point=3, w_scale=0.25, w_zero_point=0, y_scale=0.125, y_zero_point=7,
    )  # fmt: skip
    assert quantization_steps(qdq) == {"y": 1.0}  # an integer output of QuantizeLinear
    qdq.graph.node.append(helper.make_node("DequantizeLinear", ["y", "y_scale"], ["y_real"]))
    qdq.graph.output.append(helper.make_tensor_value_info("y_real", TensorProto.FLOAT, None))
    assert quantization_steps(qdq) == {"y": 1.0, "y_real": 0.125}
    float_model = conv_integer_model(geom, w=integers(rng, "int8", geom.w_shape), x_dtype="uint8")
    assert quantization_steps(float_model) == {}


def test_tune_leaves_integer_convolutions_out_with_a_warning():
    """`convforge tune --onnx` cannot tune int8 kernels yet (their tensor intrinsics exist in
    the lowering's process only): they are left out, and a warning names them."""
    from convforge.commands.tune import onnx_workloads

    geom = shapes.conv_geometry((1, 8, 6, 6), (8, 8, 3, 3), padding=1)
    w = np.random.default_rng(0).integers(-60, 60, (8, 8, 3, 3)).astype(np.int8)
    model = qlinear_conv_model(
        geom, w=w, x_dtype="uint8", x_scale=0.02, x_zero_point=128, w_scale=0.01,
        w_zero_point=0, y_scale=0.05, y_zero_point=100,
    )  # fmt: skip
    model.graph.node[0].name = "qconv_node"
    with pytest.warns(UserWarning, match=r"not tuned: 1 integer convolution\(s\) \(qconv_node\)"):
        kernels = onnx_workloads(model)
    assert kernels == []
