"""The benchmark suite's workloads, reusable by every benchmark (CPU, tuning, GPU).

A :class:`Workload` is data: an operator name, its input shapes and keyword arguments.
Each operator has one :class:`OpSpec` in :data:`OPS` saying how to run it in convforge
(the public numpy API), how to build the equivalent ONNX graph (weights as initializers)
and, optionally, in PyTorch. Adding a workload is one line in :data:`SUITE`; an operator
whose convforge function is not available yet is reported as skipped with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

import convforge as cf
from convforge import shapes
from convforge.export import conv_model, conv_transpose_model
from convforge.export.onnx_graphs import make_model

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Workload:
    """One benchmark case: ``op`` (a key of :data:`OPS`) on arrays of the given shapes.

    ``shapes`` maps argument names (``x``, ``w``, ``bias``) to shapes, ``params`` holds the
    keyword arguments of the convforge function. ``dense`` marks the dense (groups=1,
    direct) convolutions that are reported as a fraction of the sgemm ceiling.
    """

    name: str
    op: str
    shapes: Mapping[str, tuple[int, ...]]
    params: Mapping[str, Any] = field(default_factory=dict)
    dense: bool = False
    description: str = ""

    def arrays(self, seed: int = 0) -> Arrays:
        """Random float32 inputs (weights scaled so outputs stay O(1))."""
        rng = np.random.default_rng(seed)
        out = {}
        for name, shape in self.shapes.items():
            fan_in = math.prod(shape[1:]) if name == "w" else 1
            a = rng.standard_normal(shape) / math.sqrt(max(1, fan_in))
            out[name] = a.astype(np.float32)
        return out

    @property
    def spec(self) -> OpSpec:
        return OPS[self.op]

    @property
    def flops(self) -> int:
        """Floating-point operations (2 per multiply-accumulate) of the direct algorithm."""
        return 2 * self.spec.macs(self)


@dataclass(frozen=True)
class OpSpec:
    """How to run one operator in each implementation.

    ``convforge``: the name of the convforge function; called as
    ``fn(*arrays, **params, **extra)`` with arrays in the order of ``Workload.shapes``.
    ``onnx``: the equivalent ONNX model with the weights as initializers (input ``x``).
    ``torch``: ``fn(torch_module, tensors, params) -> tensor`` or None.
    ``prepared``: the same computation with its weight packed once (``cf.prepare_conv``,
    called with x only), or None.
    """

    convforge: str
    macs: Callable[[Workload], int]
    onnx: Callable[[Workload, Arrays], onnx.ModelProto]
    torch: Callable[[Any, dict[str, Any], Mapping[str, Any]], Any] | None = None
    prepared: Callable[[Workload, Arrays], cf.PreparedConv] | None = None

    def convforge_function(self) -> Callable[..., np.ndarray] | None:
        """The convforge function, or None while it is not available in this checkout."""
        return getattr(cf, self.convforge, None)


def _weights(arrays: Arrays) -> Arrays:
    return {k: v for k, v in arrays.items() if k != "x"}


# --- convolution -------------------------------------------------------------------


def _conv_arguments(wl: Workload) -> dict[str, Any]:
    """``cf.conv``'s keyword arguments for a conv or causal_conv1d workload."""
    return {**wl.params, "padding": "causal"} if wl.op == "causal_conv1d" else dict(wl.params)


def _conv_geometry(wl: Workload) -> shapes.ConvGeometry:
    p = _conv_arguments(wl)
    p.pop("activation", None)
    return shapes.conv_geometry(
        wl.shapes["x"], wl.shapes["w"], bias_shape=wl.shapes.get("bias"), **p
    )


def _prepared_conv(wl: Workload, arrays: Arrays) -> cf.PreparedConv:
    return cf.prepare_conv(
        arrays["w"], arrays.get("bias"), x_shape=arrays["x"].shape, **_conv_arguments(wl)
    )


def _conv_onnx(wl: Workload, arrays: Arrays) -> onnx.ModelProto:
    return conv_model(
        _conv_geometry(wl), bias="bias" in arrays, activation=wl.params.get("activation"),
        weights=_weights(arrays),
    )  # fmt: skip


def _conv_torch(torch, t, params):
    geom_pad = params.get("padding", 0)
    x = t["x"]
    if params.get("causal"):
        x = torch.nn.functional.pad(x, (params["dilation"] * (t["w"].shape[-1] - 1), 0))
        geom_pad = 0
    fn = {3: torch.nn.functional.conv1d, 4: torch.nn.functional.conv2d}[x.dim()]
    return fn(
        x, t["w"], t.get("bias"), stride=params.get("stride", 1), padding=geom_pad,
        dilation=params.get("dilation", 1), groups=params.get("groups", 1),
    )  # fmt: skip


# --- transposed convolution ----------------------------------------------------------


def _conv_transpose_geometry(wl: Workload) -> shapes.ConvTransposeGeometry:
    return shapes.conv_transpose_geometry(
        wl.shapes["x"], wl.shapes["w"], bias_shape=wl.shapes.get("bias"), **wl.params
    )


def _conv_transpose_onnx(wl: Workload, arrays: Arrays) -> onnx.ModelProto:
    return conv_transpose_model(
        _conv_transpose_geometry(wl), bias="bias" in arrays, weights=_weights(arrays)
    )


def _conv_transpose_torch(torch, t, params):
    return torch.nn.functional.conv_transpose2d(
        t["x"], t["w"], t.get("bias"), stride=params.get("stride", 1),
        padding=params.get("padding", 0), dilation=params.get("dilation", 1),
    )  # fmt: skip


# --- nearest resize + convolution ------------------------------------------------------


def _resized_conv_geometry(wl: Workload) -> shapes.ConvGeometry:
    n, c, *size = wl.shapes["x"]
    scale = wl.params["scale"]
    return shapes.conv_geometry(
        (n, c, *(s * scale for s in size)), wl.shapes["w"], padding=wl.params["padding"],
        bias_shape=wl.shapes.get("bias"),
    )  # fmt: skip


def _resize_conv_onnx(wl: Workload, arrays: Arrays) -> onnx.ModelProto:
    geom = _resized_conv_geometry(wl)
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


# --- classifier head: global average pool + dense + softmax --------------------------


def _head_macs(wl: Workload) -> int:
    n, c, *size = wl.shapes["x"]
    classes = wl.shapes["w"][0]
    return n * c * (math.prod(size) // 2 + classes)  # a pool add counts as half a MAC


def _head_onnx(wl: Workload, arrays: Arrays) -> onnx.ModelProto:
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


OPS: dict[str, OpSpec] = {
    "conv": OpSpec(
        "conv", lambda wl: _conv_geometry(wl).macs, _conv_onnx, _conv_torch, _prepared_conv
    ),
    "causal_conv1d": OpSpec(
        "causal_conv1d",
        lambda wl: _conv_geometry(wl).macs,
        _conv_onnx,
        lambda torch, t, p: _conv_torch(torch, t, {**p, "causal": True}),
        _prepared_conv,
    ),
    "conv_transpose": OpSpec(
        "conv_transpose",
        lambda wl: _conv_transpose_geometry(wl).macs,
        _conv_transpose_onnx,
        _conv_transpose_torch,
    ),
    "resize_conv": OpSpec(
        "resize_conv",
        lambda wl: _resized_conv_geometry(wl).macs,
        _resize_conv_onnx,
        _resize_conv_torch,
    ),
    # grid_pool_head with grid=1: global average pool + flatten + dense + softmax
    "classifier_head": OpSpec("grid_pool_head", _head_macs, _head_onnx, _head_torch),
}


def convforge_function(wl: Workload) -> tuple[Callable[..., np.ndarray] | None, str]:
    """(function, "") or (None, why it is unavailable) for ``wl`` in this checkout."""
    fn = wl.spec.convforge_function()
    if fn is None:
        return None, f"cf.{wl.spec.convforge} not in this checkout yet"
    return fn, ""


def _conv(name, cin, cout, size, k, *, batch=1, dense=True, desc="", **params) -> Workload:
    size = (size,) * 2 if isinstance(size, int) else size
    groups = params.get("groups", 1)
    shapes_ = {
        "x": (batch, cin, *size),
        "w": (cout, cin // groups, *(k,) * len(size)),
        "bias": (cout,),
    }
    return Workload(name, "conv", shapes_, params, dense=dense, description=desc)


#: The suite: float32, batch 1 unless named otherwise.
SUITE: tuple[Workload, ...] = (
    _conv("conv3x3_64_56", 64, 64, 56, 3, padding=1, desc="ResNet-50 3x3 64->64 56x56"),
    _conv("conv1x1_256_64_56", 256, 64, 56, 1, desc="ResNet-50 1x1 256->64 56x56"),
    _conv("conv3x3_s2_128_56", 128, 128, 56, 3, stride=2, padding=1, desc="3x3 s2 128->128 56->28"),
    _conv("conv7x7_s2_3_64_224", 3, 64, 224, 7, stride=2, padding=3, desc="stem 7x7 s2 3->64 224"),
    _conv("conv3x3_d2_64_64", 64, 64, 64, 3, dilation=2, padding=2, desc="dilated 3x3 d=2 64->64 64x64"),
    _conv("depthwise3x3_128_56", 128, 128, 56, 3, groups=128, padding=1, dense=False, desc="depthwise 3x3 128ch 56x56"),
    Workload("causal1d_k2_d8", "causal_conv1d", {"x": (1, 64, 16000), "w": (64, 64, 2), "bias": (64,)}, {"dilation": 8}, description="causal 1-D 64->64 L=16000 k=2 d=8"),
    Workload("causal1d_k3_d512", "causal_conv1d", {"x": (1, 64, 16000), "w": (64, 64, 3), "bias": (64,)}, {"dilation": 512}, description="causal 1-D 64->64 L=16000 k=3 d=512"),
    Workload("convT_256_128_16", "conv_transpose", {"x": (1, 256, 16, 16), "w": (256, 128, 4, 4), "bias": (128,)}, {"stride": 2, "padding": 1}, description="transposed 256->128 k4 s2 16->32"),
    Workload("convT_64_3_64", "conv_transpose", {"x": (1, 64, 64, 64), "w": (64, 3, 4, 4), "bias": (3,)}, {"stride": 2, "padding": 1}, description="transposed 64->3 k4 s2 64->128"),
    Workload("resize2_conv3x3_256_128_16", "resize_conv", {"x": (1, 256, 16, 16), "w": (128, 256, 3, 3), "bias": (128,)}, {"scale": 2, "padding": 1, "nearest_mode": "floor"}, description="nearest x2 + 3x3 256->128 16->32"),
    Workload("head_gap_dense_softmax_512_1000", "classifier_head", {"x": (1, 512, 7, 7), "w": (1000, 512), "bias": (1000,)}, {"grid": 1}, description="global avg pool + 512->1000 dense + softmax"),
    _conv("conv3x3_64_56_b8", 64, 64, 56, 3, batch=8, padding=1, desc="ResNet-50 3x3 64->64 56x56, batch 8"),
)  # fmt: skip

BY_NAME: dict[str, Workload] = {wl.name: wl for wl in SUITE}
