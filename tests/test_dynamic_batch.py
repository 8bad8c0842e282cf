"""Dynamic batch in one library (convforge.export.buckets), against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import convforge as cf
from convforge.cli import main
from convforge.commands.run import filled_inputs
from convforge.export.buckets import check_buckets, split_batch
from convforge.export.check import compare, run_onnxruntime


def _model(batch="N", spatial=(12, 12), channels: int = 4, seed: int = 0) -> onnx.ModelProto:
    """Conv+Relu, a strided Conv, a global pool and a Flatten+Gemm head."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((channels, 3, 3, 3)) / 5).astype(np.float32)
    w2 = (rng.standard_normal((6, channels, 3, 3)) / 6).astype(np.float32)
    dense = (rng.standard_normal((6, 5)) / 3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["y"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "dense"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes, "dynamic",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, 3, *spatial])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, 6, None, None]),
         helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [batch, 5])],
        initializer=[onnx.numpy_helper.from_array(v, n)
                     for n, v in {"w1": w1, "w2": w2, "dense": dense}.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def _assert_batches_match_onnxruntime(model, compiled, batches) -> None:
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, 3, 12, 12)).astype(np.float32)
        ours = compiled(x)
        theirs = run_onnxruntime(model, {"x": x})
        for name, actual, expected in zip(("y", "z"), ours, theirs):
            assert actual.shape == expected.shape, (batch, name)
            agreement = compare(actual, expected)
            assert agreement.ok, f"batch {batch}, output {name}: {agreement}"


def test_one_library_serves_every_batch_size(tmp_path, monkeypatch):
    monkeypatch.delenv("CONVFORGE_BATCH_BUCKETS")  # the default buckets (conftest sets 1)
    model = _model()
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    compiled = cf.compile_model(path, dynamic=["N"])
    assert compiled.metadata["batch_buckets"] == [1, 2, 4, 8]
    assert compiled.compiled_shapes == {"x": (1, 3, 12, 12)}
    _assert_batches_match_onnxruntime(model, compiled, (1, 3, 8, 11))
    empty = compiled(np.zeros((0, 3, 12, 12), np.float32))
    assert [e.shape for e in empty] == [(0, 6, 5, 5), (0, 5)]

    library = tmp_path / "model.so"
    compiled.export_library(library)
    loaded = cf.load(library)
    assert loaded.metadata["batch_buckets"] == [1, 2, 4, 8]
    _assert_batches_match_onnxruntime(model, loaded, (1, 3, 8))

    # convforge run --batch: inputs filled for batch 3, outputs against onnxruntime's
    out = tmp_path / "out.npz"
    assert main(["run", str(library), "--batch", "3", "--repeat", "1", "-o", str(out)]) == 0
    feeds = filled_inputs(loaded, "random", 3)
    theirs = run_onnxruntime(model, feeds)
    with np.load(out) as ours:
        assert ours["y"].shape == (3, 6, 5, 5)
        assert compare(ours["y"], theirs[0]).ok and compare(ours["z"], theirs[1]).ok

    # dynamic=["N"] keeps the batch dynamic where input_shapes gives batch 1; the CLI's
    # options reach compile_model.
    two = tmp_path / "two.so"
    assert main(["compile", str(path), "-o", str(two), "--dynamic", "N",
                 "--batch-buckets", "1,4", "--input-shape", "x=1,3,12,12"]) == 0  # fmt: skip
    loaded = cf.load(two)
    assert loaded.metadata["batch_buckets"] == [1, 4]
    _assert_batches_match_onnxruntime(model, loaded, (6,))


def test_weights_are_not_repeated_per_bucket(tmp_path):
    """Each bucket's function uses the same constants: 4 buckets add code, not weights."""
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((256, 256, 3, 3)) / 50).astype(np.float32)  # 2.4 MB
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "heavy",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 256, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 256, 4, 4])],
        initializer=[onnx.numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    sizes = {}
    for buckets in ((1,), (1, 2, 4, 8)):
        library = tmp_path / f"heavy{len(buckets)}.so"
        compiled = cf.compile_model(model, batch_buckets=buckets, algorithm="direct")
        compiled.export_library(library)
        sizes[buckets] = library.stat().st_size
        x = rng.standard_normal((5, 256, 4, 4)).astype(np.float32)
        assert compare(cf.load(library)(x)[0], run_onnxruntime(model, {"x": x})[0]).ok
    assert sizes[(1,)] > w.nbytes
    assert sizes[(1, 2, 4, 8)] - sizes[(1,)] < w.nbytes / 2, sizes


def test_static_batch_and_refusals(tmp_path, monkeypatch, capsys):
    model = _model()
    one = cf.compile_model(model, input_shapes={"x": (1, 3, 12, 12)})  # as 0.1.7: batch-1 calls
    assert "batch_buckets" not in one.metadata
    _assert_batches_match_onnxruntime(model, one, (3,))
    static = cf.compile_model(model, input_shapes={"x": (2, 3, 12, 12)})  # batch 2 only
    assert "batch_buckets" not in static.metadata
    _assert_batches_match_onnxruntime(model, static, (2,))
    with pytest.raises(ValueError, match="compiled for batch 2, got batch 3"):
        static(np.zeros((3, 3, 12, 12), np.float32))

    spatial = _model(spatial=("H", "W"))
    with pytest.raises(ValueError, match=r"dynamic: 'H' is dimension 2 of input 'x'.*batch"):
        cf.compile_model(spatial, dynamic=["N", "H"])
    with pytest.raises(ValueError, match=r"dynamic: no input declares a dimension named 'B'"):
        cf.compile_model(model, dynamic=["B"])
    with pytest.raises(ValueError, match=r"batch_buckets.*include 1"):
        cf.compile_model(model, batch_buckets=[2, 4])
    with pytest.raises(ValueError, match=r"batch_buckets.*positive"):
        cf.compile_model(model, batch_buckets=[1, 0])
    with pytest.raises(ValueError, match=r"batch_buckets.*integers"):
        cf.compile_model(model, batch_buckets=[1, 2.0])
    with pytest.raises(ValueError, match="batch_buckets: no input of this model has a symbolic"):
        cf.compile_model(_model(batch=1), batch_buckets=[1, 2])
    with pytest.raises(ValueError, match=r"input_shapes\['x'\] fixes the batch to 2"):
        cf.compile_model(model, input_shapes={"x": (2, 3, 12, 12)}, dynamic=["N"])
    monkeypatch.setenv("CONVFORGE_BATCH_BUCKETS", "1,x")
    with pytest.raises(ValueError, match="CONVFORGE_BATCH_BUCKETS must be batch sizes"):
        cf.compile_model(model)
    monkeypatch.setenv("CONVFORGE_BATCH_BUCKETS", "2,4")
    with pytest.raises(ValueError, match="CONVFORGE_BATCH_BUCKETS must be batch sizes"):
        cf.compile_model(model)
    argv = ["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.so")]
    assert main([*argv, "--batch-buckets", "1,two"]) == 2
    assert "--batch-buckets must look like 1,2,4,8, got '1,two'" in capsys.readouterr().err


def test_split_batch_uses_the_largest_buckets_first():
    assert split_batch(8, (1, 2, 4, 8)) == [8]
    assert split_batch(3, (1, 2, 4, 8)) == [2, 1]
    assert split_batch(20, (1, 2, 4, 8)) == [8, 8, 4]
    assert split_batch(7, (1, 4)) == [4, 1, 1, 1]
    assert split_batch(0, (1, 2)) == []
    for size in range(40):
        assert sum(split_batch(size, (1, 3, 8))) == size
    assert check_buckets([8, 1, 2, 2]) == (1, 2, 8)
