"""The weights section of a model library (convforge.export.weights): the weights are kept
out of the VM executable and appended after the linked image.

Numbers are checked against numpy (the section round trip) and onnxruntime (the models).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import convforge as cf
from convforge.export.check import compare, run_onnxruntime
from convforge.export.weights import ALIGNMENT, append_weights, read_weights


def test_section_round_trip_keeps_every_weight_aligned(tmp_path):
    rng = np.random.default_rng(0)
    weights = [
        rng.standard_normal((3, 5, 7)).astype(np.float32),
        rng.integers(-100, 100, (33,)).astype(np.int8),
        rng.standard_normal((2, 2)).astype(np.float64),
        np.zeros((0, 4), np.float32),
    ]
    path = tmp_path / "lib.so"
    path.write_bytes(b"\x7fELF" + b"x" * 101)  # an image of odd length before the section
    append_weights(path, weights)
    read = read_weights(path)
    assert len(read) == len(weights)
    for ours, theirs in zip(read, weights):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs)
        assert ours.ctypes.data % ALIGNMENT == 0 or ours.size == 0
    assert read_weights(tmp_path / "lib.so", end=105) == []  # the image alone: no section


def test_damaged_section_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "lib.so"
    path.write_bytes(b"image")
    append_weights(path, [np.arange(2048, dtype=np.float32)])
    data = bytearray(path.read_bytes())
    index = data.rindex(b'{"format"')
    data[index : index + 9] = b"not json!"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged weights section"):
        read_weights(path)


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    w1 = (rng.standard_normal((16, 8, 3, 3)) / 8).astype(np.float32)
    w2 = (rng.standard_normal((16, 16, 3, 3)) / 12).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "weights",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8, 16, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 16, 16, 16])],
        initializer=[onnx.numpy_helper.from_array(w1, "w1"),
                     onnx.numpy_helper.from_array(w2, "w2")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_exported_model_carries_its_weights_in_the_section(tmp_path):
    """The export holds the weights once, in the section after the image (not in the VM
    executable, whose serialization was most of a large model's compile), and the loaded
    library runs them: outputs as onnxruntime's at batch 1 and 3."""
    model = _model()
    library = tmp_path / "model.so"
    cf.compile_model(model, batch_buckets=[1, 2]).export_library(library)
    weights = read_weights(library)
    initializers = sum(t.raw_data.__len__() for t in model.graph.initializer)
    # each Winograd convolution: its transformed weight and the direct kernel's, both buckets
    # sharing them
    assert initializers <= sum(w.nbytes for w in weights) <= 8 * initializers
    assert library.stat().st_size < sum(w.nbytes for w in weights) + 2 * 1024 * 1024
    loaded = cf.load(library)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 8, 16, 16)).astype(np.float32)
        (ours,) = loaded(x)
        (theirs,) = run_onnxruntime(model, {"x": x})
        assert compare(ours, theirs).ok
