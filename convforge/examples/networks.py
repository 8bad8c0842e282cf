"""The lecture's networks as ONNX graphs with seeded random weights.

Every builder returns a checked ``onnx.ModelProto`` (opset 22) with a dynamic batch ``N``;
classifier (c) also has dynamic spatial sizes, (b) is built for a given input size.
Weights are He-normal (std ``sqrt(2 / fan_in)``) from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from convforge.export.onnx_graphs import make_model
from convforge.shapes import receptive_field


class _Graph:
    """Accumulates nodes and initializers; names are unique by construction."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: dict[str, np.ndarray] = {}
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        name = self.name(prefix)
        self.weights[name] = np.asarray(value)
        return name

    def node(self, op: str, inputs: Sequence[str], **attrs) -> str:
        out = self.name(op.lower() + "_")
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def he(self, shape: Sequence[int], fan_in: int) -> np.ndarray:
        return (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        kernel: Sequence[int],
        *,
        pads: Sequence[int] | None = None,
        dilation: int = 1,
        stride: int = 1,
        activation: str | None = None,
        positive: bool = False,
    ) -> str:
        fan_in = cin * int(np.prod(kernel))
        w = self.he((cout, cin, *kernel), fan_in)
        w = np.abs(w) if positive else w
        b = (self.rng.standard_normal(cout) * 0.01).astype(np.float32)
        attrs = {"kernel_shape": list(kernel), "dilations": [dilation] * len(kernel)}
        attrs["strides"] = [stride] * len(kernel)
        attrs["pads"] = list(pads) if pads is not None else [0] * (2 * len(kernel))
        y = self.node("Conv", [x, self.const("w", w), self.const("b", b)], **attrs)
        return self.node(activation, [y]) if activation else y

    def same_pads(self, kernel: Sequence[int], dilation: int = 1) -> list[int]:
        half = [dilation * (k - 1) // 2 for k in kernel]
        return half + half

    def model(self, name: str, inputs: dict, outputs: dict) -> onnx.ModelProto:
        return make_model(self.nodes, inputs, outputs, initializers=self.weights, name=name)


def _features(g: _Graph, x: str) -> str:
    """conv3x3+ReLU 64 -> max pool 4/4 -> conv3x3+ReLU 64 -> max pool 4/4 (256 -> 16)."""
    y = g.conv(x, 3, 64, (3, 3), pads=g.same_pads((3, 3)), activation="Relu")
    y = g.node("MaxPool", [y], kernel_shape=[4, 4], strides=[4, 4])
    y = g.conv(y, 64, 64, (3, 3), pads=g.same_pads((3, 3)), activation="Relu")
    return g.node("MaxPool", [y], kernel_shape=[4, 4], strides=[4, 4])


def _dense_softmax(g: _Graph, x: str, features: int, classes: int = 1000) -> str:
    w = g.he((classes, features), features)
    b = np.zeros(classes, np.float32)
    y = g.node("Gemm", [x, g.const("w", w), g.const("b", b)], transB=1)
    return g.node("Softmax", [y], axis=1)


def classifier_flatten(seed: int = 0) -> onnx.ModelProto:
    """(a) 256x256x3 -> features 64x16x16 -> flatten 16,384 -> dense 1,000 -> softmax."""
    g = _Graph(seed)
    y = g.node("Flatten", [_features(g, "x")], axis=1)
    probs = _dense_softmax(g, y, 64 * 16 * 16)
    return g.model(
        "classifier_flatten",
        {"x": (("N", 3, 256, 256), "float32")},
        {probs: (("N", 1000), "float32")},
    )


def _adaptive_avg_pool(g: _Graph, x: str, size: tuple[int, int], grid: int) -> str:
    """Average pool a (N, C, *size) tensor to ``grid x grid`` (PyTorch's adaptive bins).

    Bin i of an axis of length n spans ``[floor(i*n/grid), ceil((i+1)*n/grid))``.
    """
    axes = g.const("axes", np.array([2, 3], np.int64))
    rows = []
    for i in range(grid):
        cells = []
        for j in range(grid):
            lo = [i * size[0] // grid, j * size[1] // grid]
            hi = [-(-(i + 1) * size[0] // grid), -(-(j + 1) * size[1] // grid)]
            starts = g.const("start", np.array(lo, np.int64))
            ends = g.const("end", np.array(hi, np.int64))
            cell = g.node("Slice", [x, starts, ends, axes])
            cells.append(g.node("ReduceMean", [cell, axes], keepdims=1))
        rows.append(g.node("Concat", cells, axis=3))
    return g.node("Concat", rows, axis=2)


def classifier_grid(input_size: tuple[int, int] = (256, 256), seed: int = 0) -> onnx.ModelProto:
    """(b) features -> average pool to a 3x3 grid -> 576 -> dense 1,000 -> softmax.

    The grid's bins depend on the feature map size, so the graph is built for ``input_size``
    (H, W); the weights depend only on ``seed``, so every size runs the same network.
    """
    g = _Graph(seed)
    height, width = input_size
    features = ((height // 4) // 4, (width // 4) // 4)
    y = _adaptive_avg_pool(g, _features(g, "x"), features, 3)
    probs = _dense_softmax(g, g.node("Flatten", [y], axis=1), 64 * 9)
    return g.model(
        "classifier_grid",
        {"x": (("N", 3, height, width), "float32")},
        {probs: (("N", 1000), "float32")},
    )


def classifier_conv(seed: int = 0) -> onnx.ModelProto:
    """(c) features -> conv3x3 to 1,000 maps -> global average pool -> softmax (any size)."""
    g = _Graph(seed)
    y = g.conv(_features(g, "x"), 64, 1000, (3, 3), pads=g.same_pads((3, 3)))
    y = g.node("Flatten", [g.node("GlobalAveragePool", [y])], axis=1)
    probs = g.node("Softmax", [y], axis=1)
    return g.model(
        "classifier_conv", {"x": (("N", 3, "H", "W"), "float32")}, {probs: (("N", 1000), "float32")}
    )


@dataclass(frozen=True)
class WaveNetConfig:
    """Dilations 1, 2, ..., 512 (``blocks`` times), kernel 2, gated tanh*sigmoid units."""

    length: int = 1024
    channels: int = 32
    skip_channels: int = 32
    classes: int = 256
    blocks: int = 2
    layers_per_block: int = 10

    @property
    def dilations(self) -> list[int]:
        return [2**i for i in range(self.layers_per_block)] * self.blocks

    @property
    def receptive_field(self) -> int:
        """Input samples that one output sees: the causal input conv (k=2) and the stack."""
        return receptive_field([(2, 1, 1)] + [(2, 1, d) for d in self.dilations])


def wavenet(config: WaveNetConfig = WaveNetConfig(), seed: int = 0) -> onnx.ModelProto:
    """WaveNet-style stack: causal dilated conv1d, gated activation, residual and skip paths.

    x: (N, 1, T) -> softmax over ``classes`` per time step: (N, classes, T).
    """
    g = _Graph(seed)
    c, s = config.channels, config.skip_channels
    h = g.conv("x", 1, c, (2,), pads=[1, 0])
    skips = []
    for d in config.dilations:
        causal = [d, 0]
        f = g.conv(h, c, c, (2,), pads=causal, dilation=d, activation="Tanh")
        gate = g.conv(h, c, c, (2,), pads=causal, dilation=d, activation="Sigmoid")
        z = g.node("Mul", [f, gate])
        skips.append(g.conv(z, c, s, (1,)))
        h = g.node("Add", [h, g.conv(z, c, c, (1,))])
    total = skips[0]
    for skip in skips[1:]:
        total = g.node("Add", [total, skip])
    y = g.conv(g.node("Relu", [total]), s, s, (1,), activation="Relu")
    logits = g.conv(y, s, config.classes, (1,))
    probs = g.node("Softmax", [logits], axis=1)
    return g.model(
        "wavenet",
        {"x": (("N", 1, config.length), "float32")},
        {probs: (("N", config.classes, config.length), "float32")},
    )


@dataclass(frozen=True)
class ByteNetConfig:
    """Source: residual dilated 1x5 convs; target: residual masked (causal) 1x3 dilated convs."""

    length: int = 256
    vocabulary: int = 128
    channels: int = 64
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 1, 2, 4, 8, 16)


def bytenet(config: ByteNetConfig = ByteNetConfig(), seed: int = 0) -> onnx.ModelProto:
    """ByteNet-style character model: embeddings of source and target characters (N, T) int64
    -> source stack -> target stack over [source encoding, target embedding] -> (N, V, T) softmax.
    """
    g = _Graph(seed)
    c, v = config.channels, config.vocabulary

    def embed(tokens: str) -> str:
        table = g.const("embedding", (g.rng.standard_normal((v, c)) * 0.5).astype(np.float32))
        return g.node("Transpose", [g.node("Gather", [table, tokens], axis=0)], perm=[0, 2, 1])

    src = embed("source")
    for d in config.dilations:  # source: non-causal dilated 1x5, output length = input length
        y = g.conv(src, c, c, (5,), pads=[2 * d, 2 * d], dilation=d, activation="Relu")
        src = g.node("Add", [src, g.conv(y, c, c, (1,))])
    tgt = g.node("Concat", [src, embed("target")], axis=1)
    tgt = g.conv(tgt, 2 * c, c, (1,), activation="Relu")
    for d in config.dilations:  # target: masked (causal) dilated 1x3
        y = g.conv(tgt, c, c, (3,), pads=[2 * d, 0], dilation=d, activation="Relu")
        tgt = g.node("Add", [tgt, g.conv(y, c, c, (1,))])
    probs = g.node("Softmax", [g.conv(tgt, c, v, (1,))], axis=1)
    tokens = (("N", config.length), "int64")
    return g.model(
        "bytenet",
        {"source": tokens, "target": tokens},
        {probs: (("N", v, config.length), "float32")},
    )


def decoder(
    upsampling: str, channels: Sequence[int] = (64, 32, 16, 3), seed: int = 0
) -> onnx.ModelProto:
    """Image decoder 8x8 -> 64x64 in x2 steps (one per channel pair), positive weights, ReLU between.

    ``upsampling='transposed'``: ConvTranspose k=3, s=2, pads 1, output_padding 1;
    ``'resize'``: nearest Resize x2 followed by Conv k=3 (same padding).
    x: (N, channels[0], 8, 8) -> (N, channels[-1], 8 * 2**steps, 8 * 2**steps).
    """
    if upsampling not in ("transposed", "resize"):
        raise ValueError(f"upsampling must be 'transposed' or 'resize', got {upsampling!r}")
    g = _Graph(seed)
    y = "x"
    size = 8 * 2 ** (len(channels) - 1)
    for step, (cin, cout) in enumerate(itertools.pairwise(channels)):
        last = step == len(channels) - 2
        if upsampling == "transposed":
            w = np.abs(g.he((cin, cout, 3, 3), cin * 9))
            y = g.node(
                "ConvTranspose", [y, g.const("w", w)], kernel_shape=[3, 3], strides=[2, 2],
                pads=[1, 1, 1, 1], output_padding=[1, 1],
            )  # fmt: skip
        else:
            scales = g.const("scales", np.array([1, 1, 2, 2], np.float32))
            y = g.node("Resize", [y, "", scales], mode="nearest")
            y = g.conv(y, cin, cout, (3, 3), pads=[1, 1, 1, 1], positive=True)
        if not last:
            y = g.node("Relu", [y])
    return g.model(
        f"decoder_{upsampling}",
        {"x": (("N", channels[0], 8, 8), "float32")},
        {y: (("N", channels[-1], size, size), "float32")},
    )


def checkerboard_spread(image: np.ndarray, border: int = 8) -> float:
    """Relative spread ``(max - min) / mean`` of a (C, H, W) output away from the borders,
    averaged over channels: 0 for a flat image; the periodic pattern of uneven kernel
    overlap in transposed convolutions shows as a large value."""
    inner = image[:, border:-border, border:-border].astype(np.float64)
    spreads = [(c.max() - c.min()) / max(abs(c.mean()), 1e-12) for c in inner]
    return float(np.mean(spreads))


def _conv_bn(g: _Graph, x: str, cin: int, cout: int, k: int, stride: int, relu: bool) -> str:
    w = g.he((cout, cin, k, k), cin * k * k)
    y = g.node(
        "Conv", [x, g.const("w", w)], kernel_shape=[k, k], strides=[stride, stride],
        pads=[k // 2] * 4,
    )  # fmt: skip
    stats = [
        (g.rng.random(cout) * 0.5 + 0.75).astype(np.float32),  # gamma
        (g.rng.standard_normal(cout) * 0.1).astype(np.float32),  # beta
        (g.rng.standard_normal(cout) * 0.1).astype(np.float32),  # mean
        (g.rng.random(cout) * 0.5 + 0.75).astype(np.float32),  # var
    ]
    y = g.node("BatchNormalization", [y, *[g.const("bn", s) for s in stats]], epsilon=1e-5)
    return g.node("Relu", [y]) if relu else y


def resnet50(size: int = 224, classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """ResNet-50 (v1.5: stride in the 3x3 conv) with BatchNorm, random weights.

    x: (N, 3, size, size) -> softmax probabilities (N, classes).
    """
    g = _Graph(seed)
    y = _conv_bn(g, "x", 3, 64, 7, 2, relu=True)
    y = g.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for block in range(blocks):
            stride = 2 if block == 0 and stage > 0 else 1
            h = _conv_bn(g, y, cin, width, 1, 1, relu=True)
            h = _conv_bn(g, h, width, width, 3, stride, relu=True)
            h = _conv_bn(g, h, width, 4 * width, 1, 1, relu=False)
            shortcut = y if block else _conv_bn(g, y, cin, 4 * width, 1, stride, relu=False)
            y = g.node("Relu", [g.node("Add", [h, shortcut])])
            cin = 4 * width
    y = g.node("Flatten", [g.node("GlobalAveragePool", [y])], axis=1)
    probs = _dense_softmax(g, y, cin, classes)
    return g.model(
        "resnet50", {"x": (("N", 3, size, size), "float32")}, {probs: (("N", classes), "float32")}
    )


# --- MobileNetV2 and the ONNX package's light model zoo ----------------------------------


def _make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding: the nearest multiple of ``divisor``, never 10% lower."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn_relu6(
    g: _Graph, x: str, cin: int, cout: int, k: int, stride: int, groups: int, relu6: bool
) -> str:
    """Conv (no bias) + BatchNorm (+ ReLU6 as Clip(0, 6)), He-normal weights over the fan-in
    of one group, BN statistics near identity: activations stay O(1) through the network."""
    w = g.he((cout, cin // groups, k, k), cin // groups * k * k)
    y = g.node(
        "Conv", [x, g.const("w", w)], kernel_shape=[k, k], strides=[stride, stride],
        pads=[k // 2] * 4, group=groups,
    )  # fmt: skip
    stats = [
        (g.rng.random(cout) * 0.5 + 0.75).astype(np.float32),  # gamma
        (g.rng.standard_normal(cout) * 0.1).astype(np.float32),  # beta
        (g.rng.standard_normal(cout) * 0.1).astype(np.float32),  # mean
        (g.rng.random(cout) * 0.5 + 0.75).astype(np.float32),  # var
    ]
    y = g.node("BatchNormalization", [y, *[g.const("bn", s) for s in stats]], epsilon=1e-5)
    if not relu6:
        return y
    low, high = g.const("lo", np.float32(0.0)), g.const("hi", np.float32(6.0))
    return g.node("Clip", [y, low, high])


#: MobileNetV2's inverted residual stages: (expansion t, channels c, repeats n, stride s).
MOBILENET_V2_STAGES = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
    (6, 160, 3, 2), (6, 320, 1, 1),
)  # fmt: skip


def mobilenet_v2(
    size: int = 224, width: float = 1.0, classes: int = 1000, seed: int = 0
) -> onnx.ModelProto:
    """MobileNetV2 (Sandler et al. 2018) with BatchNorm and ReLU6, random He-normal weights.

    x: (N, 3, size, size) -> softmax probabilities (N, classes). A 3x3 s2 stem to 32
    channels, the inverted residual blocks of :data:`MOBILENET_V2_STAGES` (1x1 expansion +
    ReLU6, 3x3 depthwise + ReLU6, 1x1 linear projection, a residual Add where the shape is
    kept), a 1x1 to 1280, global average pool, dense, softmax; channels times ``width``
    rounded to multiples of 8.
    """
    g = _Graph(seed)
    cin = _make_divisible(32 * width)
    y = _conv_bn_relu6(g, "x", 3, cin, 3, 2, 1, relu6=True)
    for t, c, n, s in MOBILENET_V2_STAGES:
        cout = _make_divisible(c * width)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            h = y if t == 1 else _conv_bn_relu6(g, y, cin, hidden, 1, 1, 1, relu6=True)
            h = _conv_bn_relu6(g, h, hidden, hidden, 3, stride, hidden, relu6=True)
            h = _conv_bn_relu6(g, h, hidden, cout, 1, 1, 1, relu6=False)
            y = g.node("Add", [y, h]) if stride == 1 and cin == cout else h
            cin = cout
    last = _make_divisible(1280 * max(1.0, width))
    y = _conv_bn_relu6(g, y, cin, last, 1, 1, 1, relu6=True)
    y = g.node("Flatten", [g.node("GlobalAveragePool", [y])], axis=1)
    probs = _dense_softmax(g, y, last, classes)
    return g.model(
        "mobilenet_v2",
        {"x": (("N", 3, size, size), "float32")},
        {probs: (("N", classes), "float32")},
    )


#: The ONNX package's "light" zoo models (``onnx/backend/test/data/light``) that the model
#: benchmark runs (VGG-19 and ZFNet-512, also there, are left out: mostly their dense layers).
LIGHT_ZOO = (
    "bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
    "squeezenet",
)  # fmt: skip


def light_zoo_path(name: str) -> str:
    """The file of light zoo model ``name`` inside the installed onnx package."""
    import os

    folder = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    path = os.path.join(folder, f"light_{name}.onnx")
    if not os.path.exists(path):
        available = sorted(f[6:-5] for f in os.listdir(folder) if f.endswith(".onnx"))
        raise ValueError(f"light zoo model must be one of {available}, got {name!r}")
    return path


#: Producers whose outputs are rectified (non-negative): He's gain 2 for the next weight.
_RECTIFIED = ("Relu", "Clip", "MaxPool", "AveragePool", "Concat", "LRN", "Dropout")


def light_zoo(name: str, seed: int = 0) -> onnx.ModelProto:
    """Light zoo model ``name`` (:func:`light_zoo_path`) with random weights that keep its
    activations O(1), as a model with one input (the image, (1, 3, 224, 224)).

    The light files carry no weights: each is a ``ConstantOfShape`` of its shape (a
    constant 0.02), and some small tensors (biases, BN statistics) are stored. Every float
    weight is drawn here by its role, found from the node that consumes it (through
    ``Unsqueeze``/``Reshape``): a Conv or Gemm weight normal with variance gain / fan-in (gain
    2 after a rectifying producer, :data:`_RECTIFIED`, else 1), a bias
    ``N(0, 0.01)``, a BatchNormalization scale and variance uniform in [0.75, 1.25] (the scale
    in [0.2, 0.4] where the BN ends a residual branch, so sums do not grow per block), its
    mean and shift ``N(0, 0.1)``, a Mul's scale near 1, an Add's shift ``N(0, 0.1)``; integer
    tensors (shapes) are kept. Initializers leave the graph's inputs (IR version at least 4,
    where they may; the opset as in the file).
    """
    from onnx import numpy_helper

    model = onnx.load(light_zoo_path(name))
    graph = model.graph
    rng = np.random.default_rng(seed)
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    producers = {value: node.op_type for node in graph.node for value in node.output}
    for node in graph.node:
        for index, value in enumerate(node.input):
            consumers.setdefault(value, []).append((node, index))

    def role(value: str) -> tuple[str, int, onnx.NodeProto | None]:
        """(op, input index, node) of the first consumer that is not a pass-through."""
        for node, index in consumers.get(value, []):
            if node.op_type in ("Unsqueeze", "Reshape") and index == 0:
                return role(node.output[0])
            return node.op_type, index, node
        return "", -1, None

    def draw(value: str, shape: tuple[int, ...]) -> np.ndarray:
        op, index, node = role(value)
        if op in ("Conv", "Gemm") and index == 1:
            trans_b = node is not None and any(a.name == "transB" and a.i for a in node.attribute)
            fan_in = int(np.prod(shape[1:])) if op == "Conv" or trans_b else shape[0]
            # He's gain 2 after a ReLU (half the inputs zero), 1 otherwise (a linear input)
            gain = 2.0 if producers.get(node.input[0]) in _RECTIFIED else 1.0
            return rng.standard_normal(shape) * np.sqrt(gain / max(1, fan_in))
        if op == "BatchNormalization" and index == 1 and node is not None:
            # the last BN of a residual branch starts small (as zero-init / Fixup do): the
            # sum of branches must not double the variance per block
            residual = any(c.op_type in ("Add", "Sum") for c, _ in consumers[node.output[0]])
            return rng.uniform(0.2, 0.4, shape) if residual else rng.uniform(0.75, 1.25, shape)
        if op == "BatchNormalization" and index == 4:
            return rng.uniform(0.75, 1.25, shape)
        if op == "Mul":
            return rng.uniform(0.75, 1.25, shape)
        if op in ("BatchNormalization", "Add", "Sum"):
            return rng.standard_normal(shape) * 0.1
        return rng.standard_normal(shape) * 0.01  # Conv / Gemm bias and anything else

    stored = {t.name: t for t in graph.initializer}
    weights: dict[str, np.ndarray] = {}
    kept_nodes = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in stored:
            shape = tuple(int(d) for d in numpy_helper.to_array(stored[node.input[0]]))
            weights[node.output[0]] = draw(node.output[0], shape).astype(np.float32)
        else:
            kept_nodes.append(node)
    used = {value for node in kept_nodes for value in node.input}
    initializers = []
    for tensor in graph.initializer:
        if tensor.name not in used:
            continue  # a __SHAPE tensor of a weight drawn above
        array = numpy_helper.to_array(tensor)
        if array.dtype == np.float32:
            array = draw(tensor.name, array.shape).astype(np.float32)
        initializers.append(numpy_helper.from_array(array, tensor.name))
    initializers += [numpy_helper.from_array(a, n) for n, a in weights.items()]
    inputs = [i for i in graph.input if i.name not in stored and i.name not in weights]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    del graph.input[:]
    graph.input.extend(inputs)
    model.ir_version = max(model.ir_version, 4)  # IR 4: initializers need not be inputs
    onnx.checker.check_model(model)
    return model
