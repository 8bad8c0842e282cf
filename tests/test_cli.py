"""The model commands (compile, run, check, report) end to end; onnxruntime is the oracle."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

from convforge.cli import main
from convforge.export.check import compare, run_onnxruntime
from convforge.export.onnx_graphs import make_model, save_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Softmax", ["f"], ["y"], axis=1),
    ]
    weights = {
        "w": (rng.standard_normal((6, 2, 3, 3)) * 0.3).astype(np.float32),
        "b": rng.standard_normal(6).astype(np.float32),
    }
    model = make_model(
        nodes, {"x": (("N", 2, 10, 10), "float32")}, {"y": (("N", 6), "float32")},
        initializers=weights,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("cli")
    save_model(model, folder / "model.onnx")
    x = rng.standard_normal((2, 2, 10, 10)).astype(np.float32)
    np.savez(folder / "inputs.npz", x=x)
    return folder, model, x


@pytest.mark.parametrize("command", ["compile", "run", "check", "report"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert f"usage: convforge {command}" in capsys.readouterr().out


def test_compile_then_run_matches_onnxruntime(model_file, capsys):
    folder, model, x = model_file
    library, out = folder / "model.so", folder / "out.npz"
    assert main(["compile", str(folder / "model.onnx"), "-o", str(library)]) == 0
    assert "compiling" in capsys.readouterr().err  # progress
    assert main(["run", str(library), "--inputs", str(folder / "inputs.npz"), "-o", str(out)]) == 0
    assert "y: shape (2, 6)" in capsys.readouterr().out
    with np.load(out) as result:
        assert compare(result["y"], run_onnxruntime(model, {"x": x})[0]).ok


def test_check_agrees_and_prints_json(model_file, capsys):
    folder, _, _ = model_file
    inputs = str(folder / "inputs.npz")
    assert main(["check", str(folder / "model.onnx"), "--inputs", inputs, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is True
    assert result["outputs"][0]["name"] == "y" and result["outputs"][0]["top1"] == 1.0
    assert main(["check", str(folder / "model.onnx"), "--per-node"]) == 0
    text = capsys.readouterr().out
    assert "AGREE" in text and "(Relu_1)" in text


def test_check_exits_1_when_outputs_differ(model_file, monkeypatch, capsys):
    from convforge.export import check_model as module

    folder, _, _ = model_file
    monkeypatch.setattr(
        module, "run_onnxruntime", lambda m, f: [o * 1.01 for o in run_onnxruntime(m, f)]
    )
    assert main(["check", str(folder / "model.onnx")]) == 1
    assert "DISAGREE" in capsys.readouterr().out


def test_bad_input_exits_2_with_a_clear_message(model_file, tmp_path, capsys):
    folder, _, x = model_file
    model = str(folder / "model.onnx")
    np.savez(tmp_path / "wrong_shape.npz", x=x[:, :1])
    np.savez(tmp_path / "wrong_name.npz", image=x)
    (tmp_path / "broken.onnx").write_bytes(b"\x00garbage")
    cases = {
        ("check", str(tmp_path / "missing.onnx")): "no such file",
        ("check", str(tmp_path / "broken.onnx")): "not a readable ONNX model",
        ("check", model, "--inputs", str(tmp_path / "wrong_shape.npz")): "'x' must have shape",
        (
            "check",
            model,
            "--inputs",
            str(tmp_path / "wrong_name.npz"),
        ): "unknown input(s) ['image']",
        ("compile", model, "-o", str(tmp_path / "m.so"), "--input-shape", "x"): "--input-shape",
        (
            "run",
            str(tmp_path / "missing.so"),
            "--inputs",
            str(tmp_path / "wrong_name.npz"),
        ): "no such file",
    }
    for argv, message in cases.items():
        assert main(list(argv)) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_report_lists_every_node(model_file, capsys):
    folder, model, _ = model_file
    assert main(["report", str(folder / "model.onnx"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {row["node"]: row for row in report["nodes"]}
    assert list(rows) == [n.name or f"{n.op_type}_{i}" for i, n in enumerate(model.graph.node)]
    assert rows["Conv_0"]["kernel"] == "conv2d" and rows["Conv_0"]["schedule"] == "default"
    assert rows["Relu_1"]["kernel"] == "fused into Conv_0"
    assert rows["GlobalAveragePool_2"]["kernel"] == "global_avg_pool"
    assert rows["Softmax_4"]["kernel"] == "softmax"
    assert rows["Flatten_3"]["kernel"] == "TVM default"
    assert 0 < rows["Conv_0"]["share"] <= 1
    assert report["tvm_functions"] == []  # Flatten became a view (vm.builtin.reshape)


def test_check_takes_input_shapes_for_dynamic_spatial_dims(model_file, tmp_path, capsys):
    """`convforge check --input-shape` sizes the random inputs of a model with symbolic
    spatial dimensions (onnxruntime runs the same inputs); without it the check is refused
    naming what to give, and a shape that does not fit the declaration is refused too."""
    _, model, _ = model_file
    dynamic = model.__deepcopy__()
    dims = dynamic.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    path = tmp_path / "dynamic.onnx"
    save_model(dynamic, path)
    assert main(["check", str(path), "--input-shape", "x=1,2,9,7", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is True and result["outputs"][0]["shape"] == [1, 6]
    assert main(["check", str(path)]) == 2
    assert "input_shapes" in capsys.readouterr().err
    assert main(["check", str(path), "--input-shape", "x=1,3,9,7"]) == 2
    assert "does not fit the declared shape" in capsys.readouterr().err
