"""Streaming WaveNet-style stacks: generate one step (or one chunk) at a time with conv states.

A dilated causal stack recomputing its whole receptive field for each new sample costs
O(receptive field) per step. Keeping each layer's last ``d*(k-1)`` inputs as a state
(:func:`convforge.ops.causal_conv_state`) makes a step O(layers). The whole stack's step
is ONE compiled TVM function per chunk length (states in, new states out, weights resident
on the device), so a step costs one call.

Stack (WaveNet, van den Oord et al. 2016), x: (N, in_channels, L) -> y: (N, out_channels, L)::

    h = input.w * x + input.b                              (1x1, in -> C)
    for layer i with dilation d_i:
        a = dilated.w[i] *causal(d_i) h + dilated.b[i]      (k taps, C -> 2C, state)
        z = tanh(a[:C]) * sigmoid(a[C:])                    (gated activation)
        m = mix.w[i] * z + mix.b[i]                         (1x1, C -> C + S)
        h = h + m[:C];  skip = skip + m[C:]                 (residual, skip)
    y = head.w * relu(skip) + head.b                        (1x1, S -> out)

Weights use the ONNX Conv layout ``(O, C, k)``, stacked over layers for ``dilated`` and
``mix`` (see :meth:`StackSpec.weight_shapes`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te, tirx

from convforge import shapes
from convforge.build import Kernel, compile_computation
from convforge.filemode import atomic_write
from convforge.ops import Epilogue, blocks, causal_conv_state, conv
from convforge.schedules.streaming import schedule_streaming
from convforge.targets import TargetArg, is_cpu, resolve_target, target_key


@dataclass(frozen=True)
class StackSpec:
    """Sizes of a WaveNet-style stack; ``dilations`` gives one residual layer each."""

    in_channels: int
    channels: int
    skip_channels: int
    out_channels: int
    dilations: tuple[int, ...]
    kernel_size: int = 2

    def __post_init__(self) -> None:
        for name in ("in_channels", "channels", "skip_channels", "out_channels"):
            object.__setattr__(self, name, shapes.check_positive_int(getattr(self, name), name))
        if not shapes.is_int(self.kernel_size) or self.kernel_size < 2:
            raise ValueError(
                f"kernel_size must be an int >= 2 (a 1-tap layer has no state), "
                f"got {self.kernel_size!r}"
            )
        object.__setattr__(self, "kernel_size", int(self.kernel_size))
        dilations = shapes.as_ints(self.dilations, "dilations", minimum=1, broadcast=False)
        if not dilations:
            raise ValueError("dilations must name at least one layer")
        object.__setattr__(self, "dilations", dilations)

    @property
    def layers(self) -> int:
        return len(self.dilations)

    @property
    def state_lengths(self) -> tuple[int, ...]:
        """Samples of state per layer: ``d*(k-1)``."""
        return tuple(shapes.causal_state_length(self.kernel_size, d) for d in self.dilations)

    @property
    def receptive_field(self) -> int:
        """Input samples one output depends on."""
        return shapes.receptive_field([(self.kernel_size, 1, d) for d in self.dilations])

    def state_shapes(self, batch: int) -> dict[str, tuple[int, int, int]]:
        """``past_state.{i}`` -> (N, C, d_i*(k-1)), in layer order."""
        return {
            f"past_state.{i}": (batch, self.channels, s) for i, s in enumerate(self.state_lengths)
        }

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every parameter (ONNX Conv layout, stacked over layers)."""
        c, s, k, n = self.channels, self.skip_channels, self.kernel_size, self.layers
        return {
            "input.w": (c, self.in_channels, 1),
            "input.b": (c,),
            "dilated.w": (n, 2 * c, c, k),
            "dilated.b": (n, 2 * c),
            "mix.w": (n, c + s, c, 1),
            "mix.b": (n, c + s),
            "head.w": (self.out_channels, s, 1),
            "head.b": (self.out_channels,),
        }

    def random_weights(self, seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
        """Random weights: conv weights ``N(0, 1/fan_in)``, biases ``N(0, 1/16)`` (keeps
        activations O(1) through the stack)."""
        rng = np.random.default_rng(seed)
        weights = {}
        for name, shape in self.weight_shapes().items():
            fan_in = int(np.prod(shape[-2:])) if name.endswith(".w") else 16
            weights[name] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(dtype)
        return weights

    def check_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Raise ValueError unless ``weights`` has exactly the parameters of this spec."""
        expected = self.weight_shapes()
        if set(weights) != set(expected):
            raise ValueError(f"weights must have keys {sorted(expected)}, got {sorted(weights)}")
        for name, shape in expected.items():
            if tuple(np.shape(weights[name])) != shape:
                raise ValueError(
                    f"weights[{name!r}] must have shape {shape}, got {np.shape(weights[name])}"
                )


def pack_weights(spec: StackSpec, weights: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Weights in the step function's layout: every conv weight ``(..., C, k, O)``."""
    w = {name: np.asarray(a) for name, a in weights.items()}
    return [
        np.ascontiguousarray(a)
        for a in (
            w["input.w"].transpose(1, 2, 0), w["input.b"],
            w["dilated.w"].transpose(0, 2, 3, 1), w["dilated.b"],
            w["mix.w"].transpose(0, 2, 3, 1), w["mix.b"],
            w["head.w"].transpose(1, 2, 0), w["head.b"],
        )
    ]  # fmt: skip


def _weight_view(packed: te.Tensor, layer: int | None, name: str) -> te.Tensor:
    """The (O, C, k) weight of one layer, read from its packed ``([layers,] C, k, O)`` form."""
    *_, c, k, o = (int(v) for v in packed.shape)
    if layer is None:
        return te.compute(
            (o, c, k), lambda oo, cc, kk: packed[cc, kk, oo], name=f"{blocks.WEIGHT_LAYOUT}_{name}"
        )
    return te.compute(
        (o, c, k),
        lambda oo, cc, kk: packed[layer, cc, kk, oo],
        name=f"{blocks.WEIGHT_LAYOUT}_{name}",
    )


def _bias_view(packed: te.Tensor, layer: int) -> te.Tensor:
    size = int(packed.shape[1])
    return te.compute((size,), lambda o: packed[layer, o], name=blocks.BIAS_LAYOUT)


def _gate(pre: te.Tensor, channels: int) -> te.Tensor:
    """WaveNet's gated activation: ``tanh(pre[:C]) * sigmoid(pre[C:])``."""
    batch, _, length = (int(v) for v in pre.shape)
    return te.compute(
        (batch, channels, length),
        lambda n, o, t: te.tanh(pre[n, o, t]) * te.sigmoid(pre[n, o + channels, t]),
        name="gate",
    )


def _skip(skip: te.Tensor | None, mix: te.Tensor, channels: int, skips: int) -> te.Tensor:
    """Running sum of the skip outputs ``mix[C:]``."""
    batch, _, length = (int(v) for v in mix.shape)
    if skip is None:
        return te.compute(
            (batch, skips, length), lambda n, o, t: mix[n, o + channels, t], name="skip"
        )
    return te.compute(
        (batch, skips, length), lambda n, o, t: skip[n, o, t] + mix[n, o + channels, t], name="skip"
    )


def _residual(h: te.Tensor, mix: te.Tensor) -> te.Tensor:
    """``h + mix[:C]``."""
    return te.compute(h.shape, lambda n, o, t: h[n, o, t] + mix[n, o, t], name="residual")


def stack_step(
    spec: StackSpec, batch: int, length: int, dtype: str = "float32"
) -> tuple[list[te.Tensor], list[te.Tensor]]:
    """The whole stack on one chunk as TE: inputs (x, 8 packed weights, states), outputs
    (y, present states), in that order."""
    c, s = spec.channels, spec.skip_channels
    x = te.placeholder((batch, spec.in_channels, length), dtype, name="x")
    packed_shapes = {
        "input_w": (spec.in_channels, 1, c), "input_b": (c,),
        "dilated_w": (spec.layers, c, spec.kernel_size, 2 * c), "dilated_b": (spec.layers, 2 * c),
        "mix_w": (spec.layers, c, 1, c + s), "mix_b": (spec.layers, c + s),
        "head_w": (s, 1, spec.out_channels), "head_b": (spec.out_channels,),
    }  # fmt: skip
    params = {n: te.placeholder(shape, dtype, name=n) for n, shape in packed_shapes.items()}
    states = [
        te.placeholder(shape, dtype, name=name.replace(".", "_"))
        for name, shape in spec.state_shapes(batch).items()
    ]

    def pointwise(inp: te.Tensor, w: te.Tensor, b: te.Tensor) -> te.Tensor:
        geom = shapes.conv_geometry(
            [int(v) for v in inp.shape], [int(v) for v in w.shape],
            bias_shape=[int(v) for v in b.shape],
        )  # fmt: skip
        return conv(inp, w, geom, Epilogue(b))

    h = pointwise(x, _weight_view(params["input_w"], None, "input"), params["input_b"])
    skip = None
    new_states = []
    for i, (d, state) in enumerate(zip(spec.dilations, states)):
        geom = shapes.causal_state_geometry(
            (batch, c, length), (2 * c, c, spec.kernel_size), dilation=d,
            bias_shape=(2 * c,), state_shape=[int(v) for v in state.shape],
        )  # fmt: skip
        w = _weight_view(params["dilated_w"], i, "dilated")
        epilogue = Epilogue(_bias_view(params["dilated_b"], i))
        pre, new_state = causal_conv_state(h, w, state, geom, epilogue)
        new_states.append(new_state)
        gated = _gate(pre, c)
        mix = pointwise(
            gated, _weight_view(params["mix_w"], i, "mix"), _bias_view(params["mix_b"], i)
        )
        skip = _skip(skip, mix, c, s)
        if i + 1 < spec.layers:
            h = _residual(h, mix)
    rectified = te.compute(
        skip.shape,
        lambda n, o, t: tirx.max(skip[n, o, t], tirx.const(0, dtype)),
        name=blocks.SKIP_RELU,
    )
    y = pointwise(rectified, _weight_view(params["head_w"], None, "head"), params["head_b"])
    return [x, *params.values(), *states], [y, *new_states]


_compiled: dict[tuple, Kernel] = {}


def compiled_step(
    spec: StackSpec, batch: int, length: int, dtype: str = "float32", target: TargetArg = None
) -> Kernel:
    """:func:`stack_step` scheduled by :func:`schedule_streaming` and compiled (cached)."""
    resolved = resolve_target(target)
    if not is_cpu(resolved):
        raise ValueError(
            f"target must be a CPU (llvm) target for streaming, got {resolved.kind.name}"
        )
    key = (spec, batch, length, dtype, target_key(resolved))
    if key not in _compiled:
        _compiled[key] = compile_computation(
            "streaming_stack", lambda: stack_step(spec, batch, length, dtype), resolved,
            schedule=schedule_streaming,
        )  # fmt: skip
    return _compiled[key]


def _save_npz_atomic(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")


@dataclass(frozen=True)
class _ChunkRunner:
    """The compiled step for one chunk length with its bound device arguments."""

    kernel: Kernel
    function: tvm.runtime.Function
    x: tvm.runtime.Tensor
    y: tvm.runtime.Tensor
    args: tuple[tuple[tvm.runtime.Tensor, ...], tuple[tvm.runtime.Tensor, ...]]


class StreamingCausalStack:
    """A WaveNet-style stack run one step or one chunk at a time, carrying conv states.

    ``step(x)`` with x (N, in_channels, L), any L >= 1, returns y (N, out_channels, L) and
    advances the states; streaming a sequence chunk by chunk (any chunk sizes) equals the
    full-sequence causal pass from zero states. Each chunk length compiles once (cached).
    ``weights`` (see :meth:`StackSpec.weight_shapes`) are cast to ``dtype``; states live on
    the device and are read with :meth:`state_dict`, written with :meth:`load_state`, and
    saved/restored with :meth:`save_state` / :meth:`restore_state` (.npz, atomic write).
    """

    def __init__(
        self,
        spec: StackSpec,
        weights: Mapping[str, np.ndarray],
        *,
        batch: int = 1,
        dtype: str = "float32",
        target: TargetArg = None,
    ) -> None:
        batch = shapes.check_positive_int(batch, "batch")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        spec.check_weights(weights)
        if not is_cpu(resolve_target(target)):
            raise ValueError(f"target must be a CPU (llvm) target for streaming, got {target!r}")
        self.spec, self.batch, self.dtype, self.target = spec, batch, dtype, target
        self.weights = {n: np.asarray(a, dtype=dtype) for n, a in weights.items()}
        device = tvm.cpu()
        self._device = device
        self._params = [tvm.runtime.tensor(a, device) for a in pack_weights(spec, self.weights)]
        # Double-buffered states: a step reads one set and writes the other, then they swap.
        self._buffers = (self._zero_states(), self._zero_states())
        self._current = 0
        self._chunks: dict[int, _ChunkRunner] = {}

    def _zero_states(self) -> list[tvm.runtime.Tensor]:
        return [
            tvm.runtime.tensor(np.zeros(shape, self.dtype), self._device)
            for shape in self.spec.state_shapes(self.batch).values()
        ]

    @property
    def _states(self) -> list[tvm.runtime.Tensor]:
        return self._buffers[self._current]

    def kernel(self, length: int) -> Kernel:
        """The compiled step for chunks of ``length`` samples (compiled once per length)."""
        return self._runner(length).kernel

    def _runner(self, length: int) -> _ChunkRunner:
        length = shapes.check_positive_int(length, "length")
        runner = self._chunks.get(length)
        if runner is None:
            kernel = compiled_step(self.spec, self.batch, length, self.dtype, self.target)
            x = tvm.runtime.tensor(
                np.zeros((self.batch, self.spec.in_channels, length), self.dtype), self._device
            )
            y = tvm.runtime.tensor(
                np.zeros((self.batch, self.spec.out_channels, length), self.dtype), self._device
            )
            first, second = self._buffers
            args = (
                (x, *self._params, *first, y, *second),
                (x, *self._params, *second, y, *first),
            )
            runner = _ChunkRunner(kernel, kernel.function, x, y, args)
            self._chunks[length] = runner
        return runner

    def step(self, x: np.ndarray) -> np.ndarray:
        """Run one chunk x: (N, in_channels, L) -> y: (N, out_channels, L); advance states."""
        if (
            not isinstance(x, np.ndarray)
            or x.ndim != 3
            or x.shape[0] != self.batch
            or x.shape[1] != self.spec.in_channels
            or x.dtype != self.dtype
        ):
            raise ValueError(
                f"x must be a {self.dtype} array of shape (N, C, L) = ({self.batch}, "
                f"{self.spec.in_channels}, L), got {np.shape(x)} {getattr(x, 'dtype', '')}"
            )
        runner = self._chunks.get(x.shape[2]) or self._runner(x.shape[2])
        runner.x.copyfrom(x if x.flags.c_contiguous else np.ascontiguousarray(x))
        runner.function(*runner.args[self._current])
        self._current ^= 1
        return runner.y.numpy()

    def run(self, x: np.ndarray, chunks: Sequence[int] | None = None) -> np.ndarray:
        """Stream ``x`` (N, in_channels, T) in chunks of the given sizes (default: one chunk)
        from the current state; returns the concatenated outputs (N, out_channels, T)."""
        total = np.shape(x)[-1]
        chunks = (
            [total]
            if chunks is None
            else list(shapes.as_ints(chunks, "chunks", minimum=1, broadcast=False))
        )
        if sum(chunks) != total:
            raise ValueError(f"chunks must be positive and sum to the length {total}, got {chunks}")
        bounds = np.cumsum([0, *chunks])
        return np.concatenate([self.step(x[:, :, a:b]) for a, b in itertools.pairwise(bounds)], 2)

    def reset(self) -> None:
        """Zero every state (start of a new sequence)."""
        for state in self._states:
            state.copyfrom(np.zeros(state.shape, self.dtype))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the states: ``past_state.{i}`` -> (N, C, d_i*(k-1)) (the ONNX input names)."""
        return {
            name: s.numpy() for name, s in zip(self.spec.state_shapes(self.batch), self._states)
        }

    def load_state(self, states: Mapping[str, np.ndarray]) -> None:
        """Restore states from :meth:`state_dict`'s form (exact names and shapes).

        All or nothing: every key, shape and value is checked first (the exact key set, the
        shape ``(N, C, d_i*(k-1))``, a real numeric dtype that casts to the stack's dtype
        without overflow, finite values), and a refused ``states`` raises ValueError before
        any state changes.
        """
        expected = self.spec.state_shapes(self.batch)
        if not isinstance(states, Mapping):
            raise ValueError(f"states must be a mapping name -> array, got {type(states).__name__}")
        if set(states) != set(expected):
            raise ValueError(f"states must have keys {sorted(expected)}, got {sorted(states)}")
        converted = []
        for name, shape in expected.items():
            value = np.asarray(states[name])
            if value.shape != shape:
                raise ValueError(f"states[{name!r}] must have shape {shape}, got {value.shape}")
            if value.dtype.kind not in "iuf":
                raise ValueError(
                    f"states[{name!r}] must hold real numbers (float or int), got dtype "
                    f"{value.dtype}"
                )
            with np.errstate(over="ignore", invalid="ignore"):
                cast = np.ascontiguousarray(value, dtype=self.dtype)
            if not np.isfinite(cast).all():
                raise ValueError(
                    f"states[{name!r}] must be finite in {self.dtype} (a state carries a "
                    f"sequence's past samples), got NaN/inf or values out of range"
                )
            converted.append(cast)
        for state, value in zip(self._states, converted):
            state.copyfrom(value)

    def save_state(self, path: str | os.PathLike) -> None:
        """Write the states to an .npz file atomically (temp file + os.replace)."""
        _save_npz_atomic(path, self.state_dict())

    def restore_state(self, path: str | os.PathLike) -> None:
        """Load states written by :meth:`save_state`."""
        with np.load(os.fspath(path)) as data:
            self.load_state({name: data[name] for name in data.files})
