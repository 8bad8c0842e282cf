"""Causal convolution with state and the streaming stack.

Oracles: onnxruntime (CausalConvWithState node, Concat+Conv+Slice graphs, full-sequence and
stateful stack graphs), the ONNX reference evaluator, and cf.causal_conv1d / cf.conv with
numpy for the full-sequence causal pass. Never our own streaming output.
"""

import itertools
import os

import numpy as np
import pytest
from onnx.reference import ReferenceEvaluator
from tvm import te

import convforge as cf
from convforge import ops, shapes
from convforge.build import compile_computation
from convforge.export import (
    causal_conv_state_model,
    causal_conv_with_state_model,
    compare,
    run_onnxruntime,
    stack_model,
)
from convforge.export.check import session
from convforge.targets import host_target

# --- ONNX CausalConvWithState: the TE op against onnxruntime and the reference evaluator ---

ONNX_CASES = [
    dict(batch=b, channels=c, length=length, k=k, bias=bias, state=state, activation=act)
    for (bias, state, act, _), (length, b, c, k) in zip(
        # every (bias, state, activation) twice: once with length 1, once with length 9
        itertools.product([False, True], [False, True], ["none", "silu"], [0, 1]),
        itertools.cycle([(1, 1, 3, 4), (9, 2, 5, 3), (9, 1, 7, 5), (1, 2, 4, 2)]),
    )
] + [
    dict(batch=1, channels=3, length=7, k=1, bias=True, state=True, activation="swish"),
    dict(batch=2, channels=4, length=2, k=6, bias=True, state=True, activation="silu"),
]


def _onnx_case_arrays(case, rng, dtype=np.float32):
    n, c, length, k = case["batch"], case["channels"], case["length"], case["k"]
    return {
        "x": rng.standard_normal((n, c, length)).astype(dtype),
        "w": rng.standard_normal((c, 1, k)).astype(dtype),
        "bias": rng.standard_normal(c).astype(dtype) if case["bias"] else None,
        "past_state": rng.standard_normal((n, c, k - 1)).astype(dtype) if case["state"] else None,
    }


@pytest.mark.parametrize("case", ONNX_CASES, ids=str)
def test_causal_conv_with_state_te_op_matches_onnxruntime_and_reference(case):
    rng = np.random.default_rng(len(str(case)))
    arrays = _onnx_case_arrays(case, rng)
    given = {name: a for name, a in arrays.items() if a is not None}

    def computation():
        tensors = {
            name: None if a is None else te.placeholder(a.shape, "float32", name=name)
            for name, a in arrays.items()
        }
        outs = ops.causal_conv_with_state(
            tensors["x"], tensors["w"], tensors["bias"], tensors["past_state"], case["activation"]
        )
        return [t for t in tensors.values() if t is not None], list(outs)

    kernel = compile_computation("causal_conv_with_state", computation, host_target())
    y, present = kernel(*given.values())
    geom = shapes.depthwise_causal_state_geometry(
        arrays["x"].shape, arrays["w"].shape, state_shape=None if not case["state"] else
        arrays["past_state"].shape,
    )  # fmt: skip
    model = causal_conv_with_state_model(
        geom, bias=case["bias"], state=case["state"],
        activation=None if case["activation"] == "none" else "silu",
    )  # fmt: skip
    feeds = {"x": arrays["x"], "w": arrays["w"]}
    if case["bias"]:
        feeds["bias"] = arrays["bias"]
    if case["state"]:
        feeds["past_state"] = arrays["past_state"]
    ort_y, ort_present = run_onnxruntime(model, feeds)
    ref_y, ref_present = ReferenceEvaluator(model).run(None, feeds)
    for expected in (ort_y, ref_y):
        assert compare(y, expected).ok, compare(y, expected)
    for expected in (ort_present, ref_present):
        assert compare(present, expected).ok
    # The numpy API gives the same, and the standard-op graph agrees with onnxruntime's node.
    api_y, api_present = cf.causal_conv_with_state(
        arrays["x"], arrays["w"], arrays["bias"], arrays["past_state"],
        activation=case["activation"],
    )  # fmt: skip
    assert compare(api_y, ort_y).ok and compare(api_present, ort_present).ok
    if case["k"] > 1:
        plain = causal_conv_state_model(
            geom, bias=case["bias"], activation=None if case["activation"] == "none" else "silu"
        )
        state = arrays["past_state"]
        feeds["past_state"] = np.zeros(geom.state_shape, np.float32) if state is None else state
        plain_y, plain_present = run_onnxruntime(plain, feeds)
        assert compare(plain_y, ort_y).ok and compare(plain_present, ort_present).ok


# --- General (dense, grouped, dilated) causal convolution with state, chunk by chunk ---

GENERAL_CASES = [
    # (N, C, O, k, dilation, groups, activation, T, chunks)
    (1, 3, 5, 2, 1, 1, None, 11, [1] * 11),
    (2, 4, 6, 3, 2, 2, "tanh", 13, [1, 4, 8]),
    (1, 6, 6, 4, 3, 6, "silu", 16, [5, 11]),
    (2, 2, 3, 3, 5, 1, "relu", 12, [2, 1, 9]),
    (1, 4, 8, 2, 7, 4, None, 9, [9]),
]


@pytest.mark.parametrize("case", GENERAL_CASES, ids=str)
def test_general_causal_conv_streamed_equals_full_causal_conv(case):
    n, c, o, k, d, groups, act, total, chunks = case
    rng = np.random.default_rng(total * k + d)
    x = rng.standard_normal((n, c, total)).astype(np.float32)
    w = rng.standard_normal((o, c // groups, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    full = cf.causal_conv1d(x, w, b, dilation=d, groups=groups, activation=act)
    state = np.zeros((n, c, d * (k - 1)), np.float32)
    start, ys = 0, []
    for size in chunks:
        chunk = x[:, :, start : start + size]
        geom = shapes.causal_state_geometry(
            chunk.shape, w.shape, dilation=d, groups=groups, bias_shape=b.shape,
            state_shape=state.shape,
        )  # fmt: skip
        model = causal_conv_state_model(geom, bias=True, activation=act)
        ort_y, ort_state = run_onnxruntime(
            model, {"x": chunk, "w": w, "bias": b, "past_state": state}
        )
        y, new_state = cf.causal_conv_with_state(
            chunk, w, b, state, dilation=d, groups=groups, activation=act
        )
        assert compare(y, ort_y).ok and compare(new_state, ort_state).ok
        ys.append(y)
        state, start = new_state, start + size
    streamed = np.concatenate(ys, axis=2)
    assert compare(streamed, full).ok, compare(streamed, full)
    # the final state is the last d*(k-1) inputs
    assert np.array_equal(state, x[:, :, total - d * (k - 1) :])


# --- The streaming stack ---

SPEC = cf.StackSpec(
    in_channels=2, channels=8, skip_channels=6, out_channels=3, dilations=(1, 2, 4, 1, 3),
    kernel_size=2,
)  # fmt: skip
SPEC_K3 = cf.StackSpec(
    in_channels=1, channels=4, skip_channels=5, out_channels=2, dilations=(1, 2, 5), kernel_size=3
)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def full_causal_pass(spec, weights, x):
    """The stack on a whole sequence from zero past, built from cf.causal_conv1d / cf.conv."""
    c = spec.channels
    h = cf.conv(x, weights["input.w"], weights["input.b"])
    skip = 0.0
    for i, d in enumerate(spec.dilations):
        a = cf.causal_conv1d(h, weights["dilated.w"][i], weights["dilated.b"][i], dilation=d)
        z = (np.tanh(a[:, :c]) * _sigmoid(a[:, c:])).astype(x.dtype)
        m = cf.conv(z, weights["mix.w"][i], weights["mix.b"][i])
        h, skip = h + m[:, :c], skip + m[:, c:]
    return cf.conv(np.maximum(skip, 0).astype(x.dtype), weights["head.w"], weights["head.b"])


@pytest.fixture(scope="module")
def stack_case():
    weights = SPEC.random_weights(seed=3)
    x = np.random.default_rng(4).standard_normal((2, SPEC.in_channels, 40)).astype(np.float32)
    expected = full_causal_pass(SPEC, weights, x)
    (ort_full,) = run_onnxruntime(stack_model(SPEC, weights, batch=2, stateful=False), {"x": x})
    assert compare(ort_full, expected).ok  # the two oracles agree
    return weights, x, expected, ort_full


@pytest.mark.parametrize(
    "chunks",
    # batch 2 x 40 or 32 samples: 64+ columns take the long-chunk (default CPU) schedule
    [[1] * 40, [40], [3, 5, 1, 5, 2, 8, 16], [8] * 5, [2, 1, 3, 5, 8, 5, 16]],
    ids=lambda c: "-".join(map(str, c)),
)
def test_stack_streamed_in_chunks_equals_full_causal_pass(stack_case, chunks):
    weights, x, expected, ort_full = stack_case
    stack = cf.StreamingCausalStack(SPEC, weights, batch=2)
    streamed = stack.run(x, chunks)
    assert compare(streamed, expected).ok, compare(streamed, expected)
    assert compare(streamed, ort_full).ok, compare(streamed, ort_full)
    # each layer's state is the last d*(k-1) inputs of that layer: check the first layer's
    first = cf.conv(x, weights["input.w"], weights["input.b"])
    assert compare(stack.state_dict()["past_state.0"], first[:, :, -1:]).ok


def test_stack_kernel3_streamed_equals_full_pass_and_onnxruntime():
    weights = SPEC_K3.random_weights(seed=5, dtype="float64")
    x = np.random.default_rng(6).standard_normal((1, 1, 17))
    stack = cf.StreamingCausalStack(SPEC_K3, weights, dtype="float64")
    streamed = stack.run(x, [5, 12])
    assert compare(streamed, full_causal_pass(SPEC_K3, weights, x)).ok
    # onnxruntime's CPU Conv has no float64 kernel: its oracle runs the float32 model
    model = stack_model(SPEC_K3, weights, stateful=False, dtype="float32")
    (ort_full,) = run_onnxruntime(model, {"x": x.astype(np.float32)})
    assert compare(streamed.astype(np.float32), ort_full).ok


def test_stateful_onnx_stack_matches_compiled_stack_chunk_by_chunk(stack_case):
    weights, x, expected, _ = stack_case
    model = stack_model(SPEC, weights, batch=2)
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    states = {name: np.zeros(shape, np.float32) for name, shape in SPEC.state_shapes(2).items()}
    stack = cf.StreamingCausalStack(SPEC, weights, batch=2)
    start, ort_ys = 0, []
    for size in [1, 5, 2, 16, 16]:
        chunk = x[:, :, start : start + size]
        y, *present = sess.run(None, {"x": chunk, **states})
        states = {n.replace("present_state", "past_state"): v for n, v in zip(names[1:], present)}
        ours = stack.step(chunk)
        assert compare(ours, y).ok, compare(ours, y)
        for name, value in stack.state_dict().items():
            assert compare(value, states[name]).ok, name
        ort_ys.append(y)
        start += size
    assert compare(np.concatenate(ort_ys, 2), expected).ok


def test_stack_state_save_and_restore(stack_case, tmp_path):
    weights, x, expected, _ = stack_case
    first = cf.StreamingCausalStack(SPEC, weights, batch=2)
    head = first.run(x[:, :, :10], [3, 5, 2])
    path = tmp_path / "state.npz"
    first.save_state(path)
    assert sorted(os.listdir(tmp_path)) == ["state.npz"]  # no temporary file left behind
    first.run(x[:, :, 10:13], [3])  # moves on; the file keeps the saved point
    second = cf.StreamingCausalStack(SPEC, weights, batch=2)
    second.restore_state(path)
    tail = second.run(x[:, :, 10:], [1] * 30)
    assert compare(np.concatenate([head, tail], 2), expected).ok
    # state_dict / load_state round trip, then reset() means a new sequence
    snapshot = second.state_dict()
    third = cf.StreamingCausalStack(SPEC, weights, batch=2)
    third.load_state(snapshot)
    for name, value in third.state_dict().items():
        assert np.array_equal(value, snapshot[name])
    third.reset()
    assert compare(third.run(x, [40]), expected).ok


def test_bad_arguments_raise_value_error_naming_the_rule():
    x = np.zeros((1, 3, 4), np.float32)
    with pytest.raises(ValueError, match="state must have shape"):
        cf.causal_conv_with_state(
            x, np.zeros((3, 1, 3), x.dtype), None, np.zeros((1, 3, 1), x.dtype)
        )
    with pytest.raises(ValueError, match=r"weight must have shape \(C, 1, k\)"):
        shapes.depthwise_causal_state_geometry(x.shape, (3, 2, 3))
    with pytest.raises(ValueError, match="activation"):
        ops.causal_conv_with_state(
            te.placeholder((1, 3, 4), name="x"), te.placeholder((3, 1, 2), name="w"),
            activation="gelu",
        )  # fmt: skip
    with pytest.raises(ValueError, match="dilation must be a positive int"):
        shapes.causal_state_geometry(x.shape, (3, 3, 2), dilation=0)
    with pytest.raises(ValueError, match="kernel_size must be an int >= 2"):
        cf.StackSpec(1, 4, 4, 1, (1, 2), kernel_size=1)
    with pytest.raises(ValueError, match="dilations must be positive"):
        cf.StackSpec(1, 4, 4, 1, (1, 0))
    weights = SPEC.random_weights()
    with pytest.raises(ValueError, match=r"weights\['mix.w'\] must have shape"):
        cf.StreamingCausalStack(SPEC, {**weights, "mix.w": weights["mix.w"][:1]})
    stack = cf.StreamingCausalStack(SPEC, weights)
    with pytest.raises(ValueError, match="x must be a float32 array"):
        stack.step(np.zeros((1, 3, 2), np.float32))
    with pytest.raises(ValueError, match="target must be a CPU"):
        cf.StreamingCausalStack(SPEC, weights, target="cuda")
    with pytest.raises(ValueError, match=r"states\['past_state.1'\] must have shape"):
        stack.load_state({**stack.state_dict(), "past_state.1": np.zeros((1, 8, 5))})
