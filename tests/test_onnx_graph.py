"""Graph-level preparation before TVM's importer, and a compiled model's input contract.

Oracles: onnxruntime on the same ONNX model. Hostile inputs (an op nobody converts, a
dangling input, no default opset, a wrong dtype) run in a fresh interpreter each
(``tests/isolated.py``) so that a crash would be seen as one.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

import convforge as cf
from convforge.export.prepare import fold_static_shapes
from tests.isolated import assert_refused, refusal_snippet, run_isolated


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _const(name: str, values, dtype=np.int64) -> onnx.NodeProto:
    return h.make_node("Constant", [], [name], value=nh.from_array(np.array(values, dtype), name))


def pytorch_like_model() -> onnx.ModelProto:
    """Conv -> Shape -> Gather -> Unsqueeze -> Concat -> Reshape -> MatMul, a Slice whose end
    is Shape - 1, and an interpolate-style Resize whose sizes are Shape * 2 (Cast, Mul,
    Floor, Cast, Concat): static once the input shape is known, as torch.onnx exports them."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    fc = rng.standard_normal((4 * 8 * 7, 5)).astype(np.float32)
    nodes = [
        h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c"], ["r"]),
        # Slice the last column off: end = Shape(r)[3] - 1
        h.make_node("Shape", ["r"], ["shape"]),
        _const("i3", 3),
        h.make_node("Gather", ["shape", "i3"], ["w_len"], axis=0),
        _const("one", 1),
        h.make_node("Sub", ["w_len", "one"], ["w_end"]),
        _const("axis0", [0]),
        h.make_node("Unsqueeze", ["w_end", "axis0"], ["ends"]),
        _const("starts", [0]),
        _const("axes3", [3]),
        h.make_node("Slice", ["r", "starts", "ends", "axes3"], ["s"]),
        # Flatten as torch does: Reshape(s, Concat(Unsqueeze(Shape(s)[0]), [-1]))
        h.make_node("Shape", ["s"], ["s_shape"]),
        _const("i0", 0),
        h.make_node("Gather", ["s_shape", "i0"], ["n"], axis=0),
        h.make_node("Unsqueeze", ["n", "axis0"], ["n1"]),
        _const("minus1", [-1]),
        h.make_node("Concat", ["n1", "minus1"], ["flat_shape"], axis=0),
        h.make_node("Reshape", ["s", "flat_shape"], ["flat"]),
        h.make_node("MatMul", ["flat", "fc"], ["logits"]),
        # Upsample r by 2 with sizes computed from its shape (F.interpolate(scale_factor=2))
        h.make_node("Shape", ["r"], ["r_shape"]),
        _const("hw_start", [2]),
        _const("hw_end", [4]),
        h.make_node("Slice", ["r_shape", "hw_start", "hw_end"], ["hw"]),
        h.make_node("Cast", ["hw"], ["hw_f"], to=TensorProto.FLOAT),
        _const("two", [2.0, 2.0], np.float32),
        h.make_node("Mul", ["hw_f", "two"], ["hw2_f"]),
        h.make_node("Floor", ["hw2_f"], ["hw2_floor"]),
        h.make_node("Cast", ["hw2_floor"], ["hw2"], to=TensorProto.INT64),
        h.make_node("Slice", ["r_shape", "starts", "hw_start"], ["nc"]),
        h.make_node("Concat", ["nc", "hw2"], ["sizes"], axis=0),
        h.make_node("Resize", ["r", "", "", "sizes"], ["up"], mode="nearest"),
    ]
    graph = h.make_graph(
        nodes,
        "pytorch_like",
        [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [
            h.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5]),
            h.make_tensor_value_info("up", TensorProto.FLOAT, ["N", 4, 16, 16]),
        ],
        [nh.from_array(w, "w"), nh.from_array(fc, "fc")],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_fold_static_shapes_removes_shape_arithmetic():
    model = pytorch_like_model()
    folded = fold_static_shapes(model, {"x": (1, 3, 8, 8)})
    ops = [n.op_type for n in folded.graph.node]
    assert ops == ["Conv", "Relu", "Slice", "Reshape", "MatMul", "Resize"], ops
    sizes = {t.name: nh.to_array(t) for t in folded.graph.initializer}["sizes"]
    np.testing.assert_array_equal(sizes, [1, 4, 16, 16])
    # the argument is left as it was
    assert len(model.graph.node) == len(pytorch_like_model().graph.node)


@pytest.mark.parametrize("batch", [1, 3])
def test_pytorch_like_model_matches_onnxruntime(batch):
    """Static shape arithmetic folds (per compiled batch of 1) and the model runs as in ORT."""
    model = pytorch_like_model()
    x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
    want = _ort(model, {"x": x})
    got = cf.compile_model(model)(x)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def scalar_model() -> onnx.ModelProto:
    w = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = h.make_graph(
        [
            h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            h.make_node("Mul", ["c", "s"], ["y"]),
        ],
        "scalar",
        [
            h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
            h.make_tensor_value_info("s", TensorProto.FLOAT, []),
        ],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [nh.from_array(w, "w")],
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def scalar_compiled():
    model = scalar_model()
    return model, cf.compile_model(model)


def test_scalar_input(scalar_compiled):
    model, compiled = scalar_compiled
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    s = np.array(-2.5, np.float32)
    (want,) = _ort(model, {"x": x, "s": s})
    (got,) = compiled(x, s)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    (got,) = compiled(x=x, s=s)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_batch_zero_gives_empty_outputs_as_onnxruntime(scalar_compiled):
    model, compiled = scalar_compiled
    x = np.zeros((0, 3, 8, 8), np.float32)
    s = np.array(1.0, np.float32)
    want = _ort(model, {"x": x, "s": s})
    got = compiled(x, s)
    assert [(g.shape, g.dtype) for g in got] == [(w.shape, w.dtype) for w in want]


def test_empty_non_batch_dimension_refused(scalar_compiled):
    _, compiled = scalar_compiled
    with pytest.raises(ValueError, match=r"input 'x' must have shape \(1, 3, 8, 8\)"):
        compiled(np.zeros((1, 3, 0, 8), np.float32), np.array(1.0, np.float32))


def test_wrong_dtype_refused_like_onnxruntime(scalar_compiled, tmp_path):
    """onnxruntime refuses a float64 / int input for a float32 one: so do we (TypeError)."""
    model, compiled = scalar_compiled
    x = np.zeros((1, 3, 8, 8), np.float64)
    with pytest.raises(Exception, match=r"(?i)type"):
        _ort(model, {"x": x, "s": np.array(1.0, np.float32)})
    for bad in (x, x.astype(np.complex64), x.astype(np.int32)):
        with pytest.raises(TypeError, match=rf"input 'x' has dtype {bad.dtype}.*float32"):
            compiled(bad, np.array(1.0, np.float32))
    with pytest.raises(TypeError, match="input 's' has dtype float64"):
        compiled(x.astype(np.float32), np.array(1.0))


# --- hostile models: one fresh interpreter each -------------------------------------------


def _save(tmp_path, model: onnx.ModelProto) -> str:
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return str(path)


def _conv_graph(nodes_after: list, outputs: list, opsets=None, inputs=None) -> onnx.ModelProto:
    w = np.ones((2, 1, 3, 3), np.float32)
    graph = h.make_graph(
        [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), *nodes_after],
        "hostile",
        inputs or [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
        outputs,
        [nh.from_array(w, "w")],
    )
    model = h.make_model(graph, opset_imports=opsets or [h.make_opsetid("", 17)])
    return model


_OUT = [h.make_tensor_value_info("y", TensorProto.FLOAT, None)]


@pytest.mark.parametrize(
    "name, model, patterns",
    [
        (
            "unsupported op",
            _conv_graph([h.make_node("NoSuchOp", ["c"], ["y"])], _OUT),
            [r"node 'NoSuchOp_1' \(NoSuchOp\)", "not supported"],
        ),
        (
            "custom domain op",
            _conv_graph(
                [h.make_node("Relu", ["c"], ["y"], domain="com.example")],
                _OUT,
                opsets=[h.make_opsetid("", 17), h.make_opsetid("com.example", 1)],
            ),
            [r"\(Relu\)", "domain 'com.example'", "not supported"],
        ),
        (
            "dangling input",
            _conv_graph([h.make_node("Add", ["c", "ghost"], ["y"])], _OUT),
            [r"node 'Add_1' \(Add\)", "'ghost' is dangling"],
        ),
        (
            "missing default opset",
            _conv_graph(
                [h.make_node("Relu", ["c"], ["y"])],
                _OUT,
                opsets=[h.make_opsetid("com.example", 1)],
            ),
            ["no opset_import for the default ONNX domain"],
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_hostile_model_refused_cleanly(tmp_path, name, model, patterns):
    path = _save(tmp_path, model)
    outcome = run_isolated(
        refusal_snippet(
            f"import convforge as cf\npath = {path!r}",
            "cf.compile_model(path)",
        )
    )
    assert_refused(outcome, *patterns)


def test_complex_input_refused_in_fresh_interpreter(tmp_path):
    path = _save(tmp_path, _conv_graph([h.make_node("Relu", ["c"], ["y"])], _OUT))
    outcome = run_isolated(
        refusal_snippet(
            "import numpy as np, convforge as cf\n"
            f"m = cf.compile_model({path!r})\n"
            "x = np.ones((1, 1, 6, 6), np.complex128)",
            "m(x)",
            exceptions="TypeError",
        )
    )
    assert_refused(outcome, "InputDtypeError", "input 'x' has dtype complex128", "float32")


def training_bn_model(opset: int, batch) -> onnx.ModelProto:
    """Conv -> BatchNormalization(training_mode=1) with all three outputs."""
    rng = np.random.default_rng(opset)
    c = 4
    weights = {
        "w": rng.standard_normal((c, 3, 3, 3)).astype(np.float32),
        "scale": rng.random(c).astype(np.float32) + 0.5,
        "bias": rng.standard_normal(c).astype(np.float32),
        "mean": rng.standard_normal(c).astype(np.float32),
        "var": rng.random(c).astype(np.float32) + 0.5,
    }
    graph = h.make_graph(
        [
            h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            h.make_node(
                "BatchNormalization",
                ["c", "scale", "bias", "mean", "var"],
                ["y", "running_mean", "running_var"],
                training_mode=1,
                epsilon=1e-3,
                momentum=0.8,
            ),
        ],
        "bn_training",
        [h.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 6, 5])],
        [
            h.make_tensor_value_info("y", TensorProto.FLOAT, None),
            h.make_tensor_value_info("running_mean", TensorProto.FLOAT, None),
            h.make_tensor_value_info("running_var", TensorProto.FLOAT, None),
        ],
        [nh.from_array(v, k) for k, v in weights.items()],
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [15, 18])
def test_batch_norm_training_mode_matches_onnxruntime(opset):
    """Batch statistics for Y and momentum-updated running statistics, as onnxruntime."""
    model = training_bn_model(opset, 3)
    x = np.random.default_rng(4).standard_normal((3, 3, 6, 5)).astype(np.float32) * 2 + 1
    want = _ort(model, {"x": x})
    got = cf.compile_model(model)(x)
    assert len(got) == 3
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_batch_norm_training_mode_dynamic_batch_refused():
    """Run sample by sample, a dynamic batch would give per-sample statistics: refused,
    unless input_shapes fixes the batch to compile for."""
    model = training_bn_model(15, "N")
    with pytest.raises(ValueError, match=r"BatchNormalization.*training_mode=1.*dynamic batch"):
        cf.compile_model(model)
    x = np.random.default_rng(5).standard_normal((2, 3, 6, 5)).astype(np.float32)
    got = cf.compile_model(model, input_shapes={"x": x.shape})(x)
    for g, w in zip(got, _ort(model, {"x": x}), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_folding_never_builds_huge_constants():
    """ConstantOfShape / Range / Expand / Tile of constants with a huge result stay in the
    graph, checked before evaluating: folding them would exhaust memory. The results here
    (1.6 GB each) would fit, so the peak of traced allocations (numpy's included) shows
    whether any was built (not ru_maxrss: a child inherits pytest's high-water mark)."""
    outcome = run_isolated(
        """
        import tracemalloc
        import numpy as np
        from onnx import TensorProto, helper as h, numpy_helper as nh
        from convforge.export.prepare import fold_static_shapes

        def i64(name, v):
            return nh.from_array(np.array(v, np.int64), name)

        big = [20000, 20000]
        cases = [
            ("ConstantOfShape", ["s"], [i64("s", big)]),
            ("Range", ["a", "b", "c"], [i64("a", 0), i64("b", 4 * 10**8), i64("c", 1)]),
            ("Expand", ["v", "s"], [nh.from_array(np.ones(1, np.float32), "v"), i64("s", big)]),
            ("Tile", ["v", "s"],
             [nh.from_array(np.ones((2, 2), np.float32), "v"), i64("s", [10000, 10000])]),
        ]
        tracemalloc.start()
        for op, inputs, inits in cases:
            g = h.make_graph([h.make_node(op, inputs, ["y"])], "g", [],
                             [h.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
            m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
            assert [n.op_type for n in fold_static_shapes(m).graph.node] == [op], op
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
        print("KEPT", peak_mb)
        assert peak_mb < 200, peak_mb
        """,
        timeout=60,
    )
    assert outcome.returncode == 0 and "KEPT" in outcome.stdout, outcome.describe()


def test_check_model_refuses_another_dtype_kind():
    """``check_model`` casts within a kind (float64 -> float32, as its docstring says) but
    refuses a complex array for a float input rather than dropping the imaginary part."""
    x = np.ones((1, 3, 8, 8), np.complex64)
    with pytest.raises(ValueError, match=r"inputs: 'x' has dtype complex64.*float32"):
        cf.check_model(scalar_model(), {"x": x, "s": np.array(1.0, np.float32)})


@pytest.mark.parametrize(
    "error, expected",
    [
        (AttributeError("'GenericConst' object has no attribute 'tolist'"), ValueError),
        (ValueError("first line\nsecond line: the reason"), ValueError),
        (NotImplementedError("no such mode"), NotImplementedError),
    ],
)
def test_converter_failure_is_one_line_naming_the_node(monkeypatch, error, expected):
    """A converter that fails (TVM's or a convforge lowering) surfaces as one line
    ``node 'NAME' (OP): ...``, not a traceback through TVM's importer."""
    from convforge.export import lowering

    def broken(ctx, inputs, attrs):
        raise error

    monkeypatch.setitem(lowering.LOWERINGS, "Conv", broken)
    with pytest.raises(expected) as info:
        cf.compile_model(_conv_graph([h.make_node("Relu", ["c"], ["y"])], _OUT))
    message = str(info.value)
    assert message.startswith("node 'Conv_0' (Conv): "), message
    assert "\n" not in message
    last = str(error).splitlines()[-1]
    assert last in message


def _gather_model(indices) -> onnx.ModelProto:
    graph = h.make_graph(
        [h.make_node("Gather", ["x", "i"], ["y"], axis=1)],
        "gather",
        [h.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [nh.from_array(np.array(indices, np.int64), "i")],
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_gather_negative_constant_indices_match_onnxruntime():
    model = _gather_model([-4, 3, -1])
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    (want,) = _ort(model, {"x": x})
    (got,) = cf.compile_model(model)(x)
    np.testing.assert_array_equal(got, want)


def test_gather_out_of_range_constant_index_refused(tmp_path):
    """onnxruntime refuses it at run time; TVM's Gather would read out of bounds."""
    model = _gather_model([0, 7])
    with pytest.raises(Exception, match="out of data bounds"):
        _ort(model, {"x": np.zeros((2, 4), np.float32)})
    path = _save(tmp_path, model)
    outcome = run_isolated(
        refusal_snippet(
            "import numpy as np, convforge as cf",
            f"cf.compile_model({path!r})(np.zeros((2, 4), np.float32))",
        )
    )
    assert_refused(outcome, r"node 'Gather_0' \(Gather\)", r"index 7 is outside \[-4, 3\]")
