"""The one workload registry: every named operator instance convforge benchmarks, tunes or
builds ahead of time, and the one map from an operator name to how it is computed.

A :class:`Workload` is data (operator, input shapes, keyword arguments, dtype) named once in
:data:`REGISTRY`, with the sets that include it: :data:`BENCH` (``benchmarks/run.py``,
``tune_suite.py``, ``nonfinite_cost.py``), :data:`GPU` (``convforge aot``,
``benchmarks/gpu_package.py`` and ``gpu_bench.py``), :data:`TUNE` (``convforge tune
--workload``; a workload may carry the older name that command knows it by,
``tune_name``), :data:`CPU_SPECIAL` (``benchmarks/cpu_special.py``) and :data:`NETS`
(``benchmarks/run.py --set nets``: the benchmark suite plus shapes from MobileNetV2/V3,
EfficientNet, ResNeXt, U-Net decoders, 3-D video and 1-D audio networks, timed against
every installed peer). :func:`select`
gives a set in registry order. Adding a workload is one line in :data:`REGISTRY`.

:data:`OPS` maps each operator name to an :class:`Op`: the convforge function that runs it,
its multiply-accumulates, its TE computation (what ``convforge aot`` compiles), its
equivalent ONNX graph, the weight-packed form (``cf.prepare_conv``) and PyTorch's version.

This module imports only numpy and :mod:`convforge.shapes` at load time; TVM, onnx and the
numpy API are imported by the functions that need them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convforge import shapes

Arrays = dict[str, np.ndarray]

#: The benchmark suite (CPU; ``benchmarks/run.py`` and the scripts beside it).
BENCH = "bench"
#: The GPU suite (``convforge aot``, ``benchmarks/gpu_package.py``).
GPU = "gpu"
#: The named workloads of ``convforge tune --workload`` (the shipped records are for them).
TUNE = "tune"
#: The special-convolution CPU paths timed by ``benchmarks/cpu_special.py`` (no bias).
CPU_SPECIAL = "cpu_special"
#: The extended CPU suite (``benchmarks/run.py --set nets``): :data:`BENCH`'s float32
#: workloads plus convolutions from more networks; :data:`BENCH` stays CI's short list.
NETS = "nets"
#: Shapes from real networks that are not in the benchmark suite, for measuring the knob
#: tuner (``benchmarks/tune_suite.py --set knobs_real``): MobileNetV2 / EfficientNet-B0
#: depthwise and pointwise, ResNeXt grouped, Inception asymmetric, U-Net, 3-D, 1-D audio.
KNOBS_REAL = "knobs_real"
SETS = (BENCH, GPU, TUNE, CPU_SPECIAL, NETS, KNOBS_REAL)


@dataclass(frozen=True)
class Workload:
    """One operator instance: ``op`` (a key of :data:`OPS`) on inputs of the given shapes.

    ``shapes`` maps argument names (``x``, ``w``, ``bias``) to shapes, in the order the
    convforge function takes them; ``params`` are that function's keyword arguments
    (stride, padding, dilation, groups, output_padding, activation; ``scale`` and
    ``nearest_mode`` for ``resize_conv``). ``dense`` marks the dense (groups=1, direct)
    convolutions reported as a fraction of the sgemm ceiling. ``sets`` names the lists
    that include it (:data:`SETS`); ``tune_name`` is the name ``convforge tune --workload``
    knows it by, when that differs from ``name``.
    """

    name: str
    op: str
    shapes: Mapping[str, tuple[int, ...]]
    params: Mapping[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    description: str = ""
    dense: bool = False
    sets: frozenset[str] = frozenset()
    tune_name: str | None = None

    @property
    def spec(self) -> Op:
        """This workload's operator (ValueError naming ``op`` when it is unknown)."""
        self._check_op()
        return OPS[self.op]

    def _check_op(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"op must be one of {tuple(OPS)}, got {self.op!r}")

    def arrays(self, seed: int = 0) -> Arrays:
        """Random inputs in ``dtype``, weights scaled by 1/sqrt(fan-in) so outputs stay O(1)."""
        rng = np.random.default_rng(seed)
        out = {}
        for name, shape in self.shapes.items():
            fan_in = math.prod(shape[1:]) if name == "w" else 1
            out[name] = (rng.standard_normal(shape) / math.sqrt(max(1, fan_in))).astype(self.dtype)
        return out

    def geometry(self) -> shapes.ConvGeometry | shapes.ConvTransposeGeometry:
        """The validated convolution geometry (for ``resize_conv``: of the convolution on the
        resized input; raises ValueError naming the bad parameter, also for the head)."""
        if self.op == "classifier_head":
            raise ValueError("classifier_head has no convolution geometry")
        self._check_op()
        p = {k: v for k, v in self.params.items() if k not in _NOT_GEOMETRY}
        bias = self.shapes.get("bias")
        if self.op == "conv_transpose":
            return shapes.conv_transpose_geometry(
                self.shapes["x"], self.shapes["w"], bias_shape=bias, **p
            )
        x_shape = self.shapes["x"]
        if self.op == "resize_conv":
            x_shape = self.resize_geometry().out_shape
        if self.op == "causal_conv1d":
            p["padding"] = "causal"
        return shapes.conv_geometry(x_shape, self.shapes["w"], bias_shape=bias, **p)

    def resize_geometry(self) -> shapes.ResizeGeometry:
        """``resize_conv``'s nearest-neighbour resize (asymmetric; ``nearest_mode`` floor
        unless the params say otherwise)."""
        return shapes.resize_geometry(
            self.shapes["x"],
            scale=self.params.get("scale", 2),
            nearest_mode=self.params.get("nearest_mode", "floor"),
        )

    def pool_geometry(self) -> shapes.AdaptivePoolGeometry:
        """``classifier_head``'s global average pool (the dense layer is checked too)."""
        geom = shapes.global_pool_geometry(self.shapes["x"], kind="avg")
        shapes.dense_geometry(
            (geom.batch, geom.channels), self.shapes["w"], self.shapes.get("bias")
        )
        return geom

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the direct algorithm (a pooling add counts as half)."""
        return self.spec.macs(self)

    @property
    def flops(self) -> int:
        """Floating-point operations (2 per multiply-accumulate) of the direct algorithm."""
        return 2 * self.macs

    def computation(self, target: Any) -> Callable[[], tuple[list, list]]:
        """The TE computation of this workload for ``target`` (``convforge aot``'s)."""
        return self.spec.computation(self, target)


#: Parameters of a workload that are not convolution-geometry arguments.
_NOT_GEOMETRY = ("activation", "scale", "nearest_mode")


@dataclass(frozen=True)
class Op:
    """How one operator is computed and run, per implementation.

    ``function``: the convforge function (``fn(*arrays, **params, **extra)``, arrays in
    the order of ``Workload.shapes``); ``extra``: fixed keyword arguments of that call.
    ``macs``: multiply-accumulates. ``computation(wl, target)``: the TE computation.
    ``onnx(wl, arrays)``: the equivalent ONNX model, weights as initializers (input ``x``).
    ``prepared(wl, arrays)``: the computation with its weight packed once
    (``cf.prepare_conv``, called with x only), or None. ``torch(torch, tensors, params)``:
    PyTorch's result, or None.
    """

    function: str
    macs: Callable[[Workload], int]
    computation: Callable[[Workload, Any], Callable[[], tuple[list, list]]]
    onnx: Callable[[Workload, Arrays], Any]
    torch: Callable[[Any, dict[str, Any], Mapping[str, Any]], Any] | None = None
    prepared: Callable[[Workload, Arrays], Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def convforge_function(self) -> Callable[..., np.ndarray] | None:
        """The convforge function, or None while it is not available in this checkout."""
        import convforge as cf

        fn = getattr(cf, self.function, None)
        if fn is None or not self.extra:
            return fn
        return lambda *arrays, **kwargs: fn(*arrays, **kwargs, **self.extra)


def convforge_function(wl: Workload) -> tuple[Callable[..., np.ndarray] | None, str]:
    """(function, "") or (None, why it is unavailable) for ``wl`` in this checkout."""
    fn = wl.spec.convforge_function()
    if fn is None:
        return None, f"cf.{wl.spec.function} not in this checkout yet"
    return fn, ""


def _weights(arrays: Arrays) -> Arrays:
    return {k: v for k, v in arrays.items() if k != "x"}


def _placeholders(wl: Workload) -> dict[str, Any]:
    from tvm import te

    return {name: te.placeholder(tuple(s), wl.dtype, name=name) for name, s in wl.shapes.items()}


def _te(wl: Workload, build: Callable[..., Any]) -> Callable[[], tuple[list, list]]:
    """A computation calling ``build(x, w, bias)`` on placeholders of ``wl``'s inputs."""

    def computation():
        named = _placeholders(wl)
        return list(named.values()), [build(named["x"], named["w"], named.get("bias"))]

    return computation


# --- convolution ---------------------------------------------------------------------


def _planned(wl: Workload, target: Any, resize: Any = None) -> Callable[[], tuple[list, list]]:
    """The plan of ``wl``'s convolution on the arrays as given, exact ('direct': no
    non-finite fallback to carry), as ``convforge aot`` exports it."""
    from convforge.plan import plan_conv

    plan = plan_conv(
        wl.geometry(), wl.dtype, target, algorithm="direct", reshape=False, resize=resize,
        activation=wl.params.get("activation"), bias="bias" in wl.shapes,
    )  # fmt: skip
    return _te(wl, plan.compute)


def _conv_computation(wl: Workload, target: Any) -> Callable[[], tuple[list, list]]:
    return _planned(wl, target)


def _conv_arguments(wl: Workload) -> dict[str, Any]:
    """``cf.conv``'s keyword arguments for a conv or causal_conv1d workload."""
    return {**wl.params, "padding": "causal"} if wl.op == "causal_conv1d" else dict(wl.params)


def _prepared_conv(wl: Workload, arrays: Arrays) -> Any:
    import convforge as cf

    return cf.prepare_conv(
        arrays["w"], arrays.get("bias"), x_shape=arrays["x"].shape, **_conv_arguments(wl)
    )


def _conv_onnx(wl: Workload, arrays: Arrays) -> Any:
    from convforge.export import conv_model

    return conv_model(
        wl.geometry(), bias="bias" in arrays, activation=wl.params.get("activation"),
        weights=_weights(arrays),
    )  # fmt: skip


def _conv_torch(torch, t, params):
    geom_pad = params.get("padding", 0)
    x = t["x"]
    if params.get("causal"):
        x = torch.nn.functional.pad(x, (params["dilation"] * (t["w"].shape[-1] - 1), 0))
        geom_pad = 0
    fn = {3: torch.nn.functional.conv1d, 4: torch.nn.functional.conv2d,
          5: torch.nn.functional.conv3d}[x.dim()]  # fmt: skip
    return fn(
        x, t["w"], t.get("bias"), stride=params.get("stride", 1), padding=geom_pad,
        dilation=params.get("dilation", 1), groups=params.get("groups", 1),
    )  # fmt: skip


# --- transposed convolution ------------------------------------------------------------


def _conv_transpose_computation(wl: Workload, target: Any) -> Callable[[], tuple[list, list]]:
    from convforge import ops
    from convforge.plan import conv_transpose_op

    geom, activation = wl.geometry(), wl.params.get("activation")
    op = conv_transpose_op(geom, target)  # the API's form: sub-pixel phases when strided
    return _te(wl, lambda x, w, bias: op(x, w, geom, ops.Epilogue(bias, activation)))


def _conv_transpose_onnx(wl: Workload, arrays: Arrays) -> Any:
    from convforge.export import conv_transpose_model

    return conv_transpose_model(wl.geometry(), bias="bias" in arrays, weights=_weights(arrays))


def _conv_transpose_torch(torch, t, params):
    fn = {3: torch.nn.functional.conv_transpose1d, 4: torch.nn.functional.conv_transpose2d,
          5: torch.nn.functional.conv_transpose3d}[t["x"].dim()]  # fmt: skip
    return fn(
        t["x"], t["w"], t.get("bias"), stride=params.get("stride", 1),
        padding=params.get("padding", 0), output_padding=params.get("output_padding", 0),
        groups=params.get("groups", 1), dilation=params.get("dilation", 1),
    )  # fmt: skip


# --- nearest resize + convolution --------------------------------------------------------


def _resize_conv_computation(wl: Workload, target: Any) -> Callable[[], tuple[list, list]]:
    return _planned(wl, target, wl.resize_geometry())


def _resize_conv_onnx(wl: Workload, arrays: Arrays) -> Any:
    from onnx import helper

    from convforge.export.onnx_graphs import make_model

    geom = wl.geometry()
    scale = float(wl.params["scale"])
    names = ["up", "w", "bias"] if "bias" in arrays else ["up", "w"]
    nodes = [
        helper.make_node(
            "Resize", ["x", "", "scales"], ["up"], mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode=wl.params.get("nearest_mode", "round_prefer_floor"),
        ),
        helper.make_node(
            "Conv", names, ["y"], kernel_shape=list(geom.kernel),
            pads=[lo for lo, _ in geom.padding] + [hi for _, hi in geom.padding],
        ),
    ]  # fmt: skip
    scales = np.array([1.0, 1.0] + [scale] * geom.ndim, np.float32)
    return make_model(
        nodes, {"x": (wl.shapes["x"], "float32"), **{k: (v.shape, "float32") for k, v in arrays.items() if k != "x"}},
        {"y": (geom.out_shape, "float32")}, initializers={**_weights(arrays), "scales": scales},
        name="resize_conv",
    )  # fmt: skip


def _resize_conv_torch(torch, t, params):
    up = torch.nn.functional.interpolate(t["x"], scale_factor=params["scale"], mode="nearest")
    return torch.nn.functional.conv2d(up, t["w"], t.get("bias"), padding=params["padding"])


# --- classifier head: global average pool + dense + softmax ------------------------------


def _head_macs(wl: Workload) -> int:
    n, c, *size = wl.shapes["x"]
    classes = wl.shapes["w"][0]
    return n * c * (math.prod(size) // 2 + classes)  # a pool add counts as half a MAC


def _head_computation(wl: Workload, target: Any) -> Callable[[], tuple[list, list]]:
    from convforge import ops

    pool_geom = wl.pool_geometry()
    return _te(wl, lambda x, w, bias: ops.grid_pool_head(x, w, bias, pool_geom))


def _head_onnx(wl: Workload, arrays: Arrays) -> Any:
    from onnx import helper

    from convforge.export.onnx_graphs import make_model

    n = wl.shapes["x"][0]
    classes = wl.shapes["w"][0]
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w", "bias"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    return make_model(
        nodes, {"x": (wl.shapes["x"], "float32"), "w": (wl.shapes["w"], "float32"),
                "bias": (wl.shapes["bias"], "float32")},
        {"y": ((n, classes), "float32")}, initializers=_weights(arrays), name="head",
    )  # fmt: skip


def _head_torch(torch, t, params):
    pooled = t["x"].mean(dim=(2, 3))
    return torch.softmax(torch.nn.functional.linear(pooled, t["w"], t["bias"]), dim=-1)


def _geometry_macs(wl: Workload) -> int:
    return wl.geometry().macs


#: The one map from an operator name to how it is computed and run.
OPS: dict[str, Op] = {
    "conv": Op("conv", _geometry_macs, _conv_computation, _conv_onnx, _conv_torch, _prepared_conv),
    "causal_conv1d": Op(
        "causal_conv1d",
        _geometry_macs,
        _conv_computation,
        _conv_onnx,
        lambda torch, t, p: _conv_torch(torch, t, {**p, "causal": True}),
        _prepared_conv,
    ),
    "conv_transpose": Op(
        "conv_transpose",
        _geometry_macs,
        _conv_transpose_computation,
        _conv_transpose_onnx,
        _conv_transpose_torch,
    ),
    "resize_conv": Op(
        "resize_conv",
        _geometry_macs,
        _resize_conv_computation,
        _resize_conv_onnx,
        _resize_conv_torch,
    ),
    # grid_pool_head with grid=1: global average pool + flatten + dense + softmax
    "classifier_head": Op(
        "grid_pool_head", _head_macs, _head_computation, _head_onnx, _head_torch, extra={"grid": 1}
    ),
}


def _conv(name, cin, cout, size, k, *, sets, batch=1, desc="", dtype="float32", bias=True, dense=True, tune_name=None, **params) -> Workload:  # fmt: skip
    size = (size,) * 2 if isinstance(size, int) else tuple(size)
    groups = params.get("groups", 1)
    kernel = (k,) * len(size) if isinstance(k, int) else tuple(k)
    shapes_ = {"x": (batch, cin, *size), "w": (cout, cin // groups, *kernel)}
    if bias:
        shapes_["bias"] = (cout,)
    return Workload(
        name,
        "conv",
        shapes_,
        params,
        dtype,
        desc,
        dense and groups == 1,
        frozenset(sets),
        tune_name,
    )


def _wl(name, op, shapes_, params=None, *, sets, desc="", tune_name=None) -> Workload:  # fmt: skip
    return Workload(name, op, shapes_, params or {}, description=desc, sets=frozenset(sets), tune_name=tune_name)  # fmt: skip


_BG = (BENCH, GPU, NETS)

#: Every named workload, once (float32, batch 1 unless named otherwise).
REGISTRY: tuple[Workload, ...] = (
    # the benchmark suite, which the GPU suite shares
    _conv("conv3x3_64_56", 64, 64, 56, 3, padding=1, desc="ResNet-50 3x3 64->64 56x56", sets=_BG),
    _conv("conv1x1_256_64_56", 256, 64, 56, 1, desc="ResNet-50 1x1 256->64 56x56", sets=_BG),
    _conv("conv3x3_s2_128_56", 128, 128, 56, 3, stride=2, padding=1, desc="3x3 s2 128->128 56->28", sets=_BG),
    _conv("conv7x7_s2_3_64_224", 3, 64, 224, 7, stride=2, padding=3, desc="stem 7x7 s2 3->64 224", sets=_BG),
    _conv("conv3x3_d2_64_64", 64, 64, 64, 3, dilation=2, padding=2, desc="dilated 3x3 d=2 64->64 64x64", sets=_BG),
    _conv("depthwise3x3_128_56", 128, 128, 56, 3, groups=128, padding=1, desc="depthwise 3x3 128ch 56x56", sets=_BG),
    _conv("grouped3x3_g32_256_28", 256, 256, 28, 3, groups=32, padding=1, desc="ResNeXt 3x3 g=32 256ch 28x28", sets=[GPU, NETS]),
    _conv("conv3d_3x3x3_32_64_16x28", 32, 64, (16, 28, 28), 3, padding=1, desc="3-D 3x3x3 32->64 16x28x28", sets=[GPU, NETS]),
    _wl("causal1d_k2_d8", "causal_conv1d", {"x": (1, 64, 16000), "w": (64, 64, 2), "bias": (64,)}, {"dilation": 8}, desc="causal 1-D 64->64 L=16000 k=2 d=8", sets=_BG),
    _wl("causal1d_k3_d512", "causal_conv1d", {"x": (1, 64, 16000), "w": (64, 64, 3), "bias": (64,)}, {"dilation": 512}, desc="causal 1-D 64->64 L=16000 k=3 d=512", sets=_BG),
    _wl("convT_256_128_16", "conv_transpose", {"x": (1, 256, 16, 16), "w": (256, 128, 4, 4), "bias": (128,)}, {"stride": 2, "padding": 1}, desc="transposed 256->128 k4 s2 16->32", sets=(*_BG, TUNE), tune_name="transpose_4x4_s2_256_16_bias"),
    _wl("convT_64_3_64", "conv_transpose", {"x": (1, 64, 64, 64), "w": (64, 3, 4, 4), "bias": (3,)}, {"stride": 2, "padding": 1}, desc="transposed 64->3 k4 s2 64->128", sets=_BG),
    _wl("resize2_conv3x3_256_128_16", "resize_conv", {"x": (1, 256, 16, 16), "w": (128, 256, 3, 3), "bias": (128,)}, {"scale": 2, "padding": 1, "nearest_mode": "floor"}, desc="nearest x2 + 3x3 256->128 16->32", sets=_BG),
    _wl("head_gap_dense_softmax_512_1000", "classifier_head", {"x": (1, 512, 7, 7), "w": (1000, 512), "bias": (1000,)}, desc="global avg pool + 512->1000 dense + softmax", sets=_BG),
    _conv("conv3x3_64_56_b8", 64, 64, 56, 3, batch=8, padding=1, desc="ResNet-50 3x3 64->64 56x56, batch 8", sets=_BG),
    _conv("conv3x3_64_56_fp16", 64, 64, 56, 3, padding=1, dtype="float16", desc="3x3 64->64 56x56 float16 (float32 accumulation)", sets=[GPU]),
    _conv("depthwise3x3_128_56_fp16", 128, 128, 56, 3, groups=128, padding=1, dtype="float16", desc="depthwise 3x3 128ch 56x56 float16", sets=[GPU]),
    # the extended suite (NETS): MobileNetV2/V3, EfficientNet-B0, ResNeXt-50, U-Net decoders,
    # 3-D video (C3D / R3D-style), 1-D audio (wav2vec 2.0 feature encoder, a 5-tap conv)
    _conv("mbv2_1x1_24_144_56", 24, 144, 56, 1, desc="MobileNetV2 expand 1x1 24->144 56x56", sets=[NETS]),
    _conv("mbv2_dw3x3_s2_144_56", 144, 144, 56, 3, stride=2, padding=1, groups=144, desc="MobileNetV2 depthwise 3x3 s2 144ch 56->28", sets=[NETS]),
    _conv("mbv2_1x1_144_32_28", 144, 32, 28, 1, desc="MobileNetV2 project 1x1 144->32 28x28", sets=[NETS]),
    _conv("mbv2_dw3x3_960_7", 960, 960, 7, 3, padding=1, groups=960, desc="MobileNetV2 depthwise 3x3 960ch 7x7", sets=[NETS]),
    _conv("mbv3_dw5x5_s2_72_56", 72, 72, 56, 5, stride=2, padding=2, groups=72, desc="MobileNetV3 depthwise 5x5 s2 72ch 56->28", sets=[NETS]),
    _conv("mbv3_dw5x5_480_14", 480, 480, 14, 5, padding=2, groups=480, desc="MobileNetV3 depthwise 5x5 480ch 14x14", sets=[NETS]),
    _conv("effnet_dw5x5_240_28", 240, 240, 28, 5, padding=2, groups=240, desc="EfficientNet-B0 depthwise 5x5 240ch 28x28", sets=[NETS]),
    _conv("effnet_dw3x3_s2_96_112", 96, 96, 112, 3, stride=2, padding=1, groups=96, desc="EfficientNet-B0 depthwise 3x3 s2 96ch 112->56", sets=[NETS]),
    _conv("effnet_1x1_1152_192_7", 1152, 192, 7, 1, desc="EfficientNet-B0 project 1x1 1152->192 7x7", sets=[NETS]),
    _conv("resnext_g32_s2_512_28", 512, 512, 28, 3, stride=2, padding=1, groups=32, desc="ResNeXt-50 3x3 g=32 s2 512ch 28->14", sets=[NETS]),
    _wl("unet_convT_k2s2_512_256_28", "conv_transpose", {"x": (1, 512, 28, 28), "w": (512, 256, 2, 2), "bias": (256,)}, {"stride": 2}, desc="U-Net up 2x2 s2 512->256 28->56", sets=[NETS]),
    _wl("unet_convT_k3s2op1_128_64_56", "conv_transpose", {"x": (1, 128, 56, 56), "w": (128, 64, 3, 3), "bias": (64,)}, {"stride": 2, "padding": 1, "output_padding": 1}, desc="transposed 3x3 s2 output_padding 1 128->64 56->112", sets=[NETS]),
    _conv("video_3x3x3_s2_64_128_16x56", 64, 128, (16, 56, 56), 3, stride=2, padding=1, desc="3-D 3x3x3 s2 64->128 16x56x56 -> 8x28x28", sets=[NETS]),
    _conv("audio_k5_256_4096", 256, 256, (4096,), 5, padding=2, desc="1-D 5-tap 256->256 L=4096", sets=[NETS]),
    _conv("wav2vec_k3_s2_512_1600", 512, 512, (1600,), 3, stride=2, desc="wav2vec 2.0 1-D k3 s2 512->512 L=1600", sets=[NETS]),
    # convforge tune --workload (ResNet / MobileNet / 1-D / decoder convolutions, no bias)
    _conv("resnet_3x3_64_56", 64, 64, 56, 3, padding=1, bias=False, sets=[TUNE]),
    _conv("resnet_3x3_128_28", 128, 128, 28, 3, padding=1, bias=False, sets=[TUNE]),
    _conv("resnet_3x3_s2_64_56", 64, 128, 56, 3, stride=2, padding=1, bias=False, sets=[TUNE]),
    _conv("resnet_1x1_256_14", 256, 256, 14, 1, bias=False, sets=[TUNE]),
    _conv("mobilenet_dw3x3_128_28", 128, 128, 28, 3, padding=1, groups=128, bias=False, sets=[TUNE]),
    _conv("conv1d_k3_64_4096", 64, 64, (4096,), 3, padding=1, bias=False, sets=[TUNE]),
    _wl("decoder_transpose_4x4_s2_64_28", "conv_transpose", {"x": (1, 64, 28, 28), "w": (64, 32, 4, 4)}, {"stride": 2, "padding": 1}, sets=[TUNE]),
    # shapes from real networks, not in the suite (benchmarks/tune_suite.py --set knobs_real)
    _conv("mbv2_dw3x3_144_56", 144, 144, 56, 3, padding=1, groups=144, desc="MobileNetV2 depthwise 3x3 144ch 56x56", sets=[KNOBS_REAL]),
    _conv("mbv2_dw3x3_s2_96_112", 96, 96, 112, 3, stride=2, padding=1, groups=96, desc="MobileNetV2 depthwise 3x3 s2 96ch 112->56", sets=[KNOBS_REAL]),
    _conv("mbv2_pw_144_24_56", 144, 24, 56, 1, desc="MobileNetV2 pointwise 144->24 56x56", sets=[KNOBS_REAL]),
    _conv("mbv2_pw_32_192_28", 32, 192, 28, 1, desc="MobileNetV2 pointwise 32->192 28x28", sets=[KNOBS_REAL]),
    _conv("effb0_dw5x5_240_28", 240, 240, 28, 5, padding=2, groups=240, desc="EfficientNet-B0 depthwise 5x5 240ch 28x28", sets=[KNOBS_REAL]),
    _conv("effb0_pw_480_80_14", 480, 80, 14, 1, desc="EfficientNet-B0 pointwise 480->80 14x14", sets=[KNOBS_REAL]),
    _conv("resnext_g32_3x3_128_56", 128, 128, 56, 3, padding=1, groups=32, desc="ResNeXt-50 32x4d grouped 3x3 128ch 56x56", sets=[KNOBS_REAL]),
    _conv("inception_1x7_128_17", 128, 128, (17, 17), (1, 7), padding=(0, 3), desc="Inception-v3 1x7 128->128 17x17", sets=[KNOBS_REAL]),
    _conv("inception_7x1_128_192_17", 128, 192, (17, 17), (7, 1), padding=(3, 0), desc="Inception-v3 7x1 128->192 17x17", sets=[KNOBS_REAL]),
    _conv("unet_3x3_128_64_128", 128, 64, 128, 3, padding=1, desc="U-Net decoder 3x3 128->64 128x128", sets=[KNOBS_REAL]),
    _wl("unet_convT_2x2_s2_128_64", "conv_transpose", {"x": (1, 128, 64, 64), "w": (128, 64, 2, 2), "bias": (64,)}, {"stride": 2}, desc="U-Net up-convolution 2x2 s2 128->64 64->128", sets=[KNOBS_REAL]),
    _conv("c3d_3x3x3_64_8x28", 64, 64, (8, 28, 28), 3, padding=1, desc="3-D (C3D/I3D) 3x3x3 64->64 8x28x28", sets=[KNOBS_REAL]),
    _conv("audio1d_k3_s2_256_4000", 256, 256, (4000,), 3, stride=2, padding=1, desc="1-D audio encoder k3 s2 256->256 L=4000", sets=[KNOBS_REAL]),
    _conv("audio1d_k5_80_256_3000", 80, 256, (3000,), 5, padding=2, desc="1-D audio (mel 80) k5 80->256 L=3000", sets=[KNOBS_REAL]),
    # benchmarks/cpu_special.py (no bias)
    _conv("depthwise3x3", 128, 128, 56, 3, padding=1, groups=128, bias=False, sets=[CPU_SPECIAL]),
    _conv("grouped8", 128, 128, 28, 3, padding=1, groups=8, bias=False, sets=[CPU_SPECIAL]),
    _wl("causal_k2_d8", "causal_conv1d", {"x": (1, 64, 16000), "w": (64, 64, 2)}, {"dilation": 8}, sets=[CPU_SPECIAL]),
    _wl("causal_k3_d512", "causal_conv1d", {"x": (1, 64, 16000), "w": (64, 64, 3)}, {"dilation": 512}, sets=[CPU_SPECIAL]),
    _wl("transposed_256_128", "conv_transpose", {"x": (1, 256, 16, 16), "w": (256, 128, 4, 4)}, {"stride": 2, "padding": 1}, sets=[CPU_SPECIAL]),
    _wl("transposed_64_3", "conv_transpose", {"x": (1, 64, 64, 64), "w": (64, 3, 4, 4)}, {"stride": 2, "padding": 1}, sets=[CPU_SPECIAL]),
)  # fmt: skip

BY_NAME: dict[str, Workload] = {wl.name: wl for wl in REGISTRY}


def select(name: str) -> tuple[Workload, ...]:
    """The workloads of set ``name`` (one of :data:`SETS`), in registry order."""
    if name not in SETS:
        raise ValueError(f"workload set must be one of {SETS}, got {name!r}")
    return tuple(wl for wl in REGISTRY if name in wl.sets)
