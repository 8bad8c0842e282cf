"""CLI exit codes, each hostile case in a fresh interpreter (tests/isolated.py): 0 ok/agree,
1 disagree, 2 bad input or unsupported model (one line on stderr, no traceback), 3 internal
error (traceback only with --debug), 130 Ctrl-C. A crash or a hang fails the test as such.
Exit 1 (disagree) is tested in test_cli.py (test_check_exits_1_when_outputs_differ)."""

from __future__ import annotations

import glob
import shutil
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, save

from convforge.cli import EPILOG, main
from convforge.export.onnx_graphs import make_model, save_model
from tests.isolated import Outcome, run_cli, run_isolated

X = {"x": ((1, 2, 8, 8), "float32")}


def _conv_nodes(out="y"):
    return [helper.make_node("Conv", ["x", "w"], [out], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]


def _weights(dtype="float32"):
    return {"w": np.full((2, 2, 3, 3), 0.1, dtype)}


def _raw_model(nodes, opsets=(("", 19),)):
    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, 8, 8]) for n in "xy"]
    graph = helper.make_graph(nodes, "g", [value[0]], [value[1]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    if not opsets:
        del model.opset_import[:]
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("exit_codes")
    save_model(
        make_model(_conv_nodes(), X, {"y": ((1, 2, 8, 8), "float32")}, initializers=_weights()),
        d / "good.onnx",
    )
    unsupported = [*_conv_nodes("c"), helper.make_node("Celu", ["c"], ["y"])]  # TVM: no Celu
    save_model(
        make_model(unsupported, X, {"y": ((1, 2, 8, 8), "float32")}, initializers=_weights()),
        d / "unsupported.onnx",
    )
    save(_raw_model([helper.make_node("Add", ["x", "ghost"], ["y"])]), d / "dangling.onnx")
    save(_raw_model([helper.make_node("Relu", ["x"], ["y"])], opsets=()), d / "no_opset.onnx")
    # onnxruntime has no float64 Conv on the CPU; convforge computes it
    x64 = {"x": ((1, 2, 8, 8), "float64")}
    save_model(
        make_model(
            _conv_nodes(), x64, {"y": ((1, 2, 8, 8), "float64")}, initializers=_weights("float64")
        ),
        d / "f64_conv.onnx",
    )
    np.savez(d / "inputs.npz", x=np.ones((1, 2, 8, 8), np.float32))
    (d / "garbage_lib.so").write_bytes(np.random.default_rng(0).bytes(4096))
    (d / "text.onnx").write_text("this is not an ONNX model\n" * 20)
    (d / "a_file").write_text("not a folder")
    return d


def assert_one_line(outcome: Outcome, code: int, *patterns: str) -> str:
    assert outcome.returncode == code, outcome.describe()
    lines = outcome.stderr.strip().splitlines()
    assert "Traceback" not in outcome.stderr, outcome.describe()
    assert len(lines) == 1 or all(line.startswith("[") for line in lines[:-1]), outcome.describe()
    for pattern in patterns:
        assert pattern in lines[-1], f"{pattern!r} not in {lines[-1]!r}"
    return lines[-1]


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "exit status" in text and "130" in text and "--debug" in text
    assert EPILOG.strip() in text
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for code in ("0", "1", "2", "3", "130"):
        assert f"| {code} " in readme  # the README's exit status table


CASES = [
    ("unsupported-op", ["check", "{d}/unsupported.onnx"], ["Celu"]),
    ("dangling-input", ["check", "{d}/dangling.onnx"], ["ghost", "dangling"]),
    ("missing-opset", ["check", "{d}/no_opset.onnx"], ["opset_import"]),
    ("reference-refuses", ["check", "{d}/f64_conv.onnx"], ["onnxruntime", "refuses"]),
    ("run-non-library", ["run", "{d}/garbage_lib.so", "--inputs", "{d}/inputs.npz"], ["library"]),
    ("missing-file", ["compile", "{d}/nowhere.onnx", "-o", "{d}/x.so"], ["no such file"]),
    ("non-onnx-file", ["check", "{d}/text.onnx"], ["not a readable ONNX model"]),
    (
        "db-is-a-file",
        ["tune", "--db", "{d}/a_file", "--workload", "resnet_1x1_256_14", "--trials", "1"],
        ["--db", "not a directory"],
    ),
    (
        "tuning-db-is-a-file",
        ["compile", "{d}/good.onnx", "-o", "{d}/x.so", "--tuning-db", "{d}/a_file"],
        ["tuning_db"],
    ),
]


@pytest.mark.parametrize("argv, patterns", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(files, argv, patterns):
    outcome = run_cli([a.format(d=files) for a in argv])
    assert_one_line(outcome, 2, *patterns)


def test_run_of_an_unrelated_shared_library_exits_2(files, tmp_path):
    candidates = sorted(glob.glob("/usr/lib/x86_64-linux-gnu/libz.so*")) or sorted(
        glob.glob("/usr/lib*/libz.so*")
    )
    if not candidates:
        pytest.skip("no libz.so to copy")
    shutil.copy(candidates[0], tmp_path / "unrelated.so")
    outcome = run_cli(["run", str(tmp_path / "unrelated.so"), "--inputs", f"{files}/inputs.npz"])
    assert_one_line(outcome, 2, "library")


def test_cuda_target_without_the_cuda_runtime_exits_2(files):
    import tvm

    if tvm.cuda().exist:
        pytest.skip("this machine can run CUDA kernels")
    outcome = run_cli(["check", f"{files}/good.onnx", "--target", "cuda"])
    assert_one_line(outcome, 2, "--target cuda", "no cuda runtime")


def test_unreachable_rpc_tracker_exits_2_without_hanging(files, tmp_path):
    argv = ["tune", "--db", str(tmp_path / "db"), "--workload", "resnet_1x1_256_14"]
    argv += [
        "--trials",
        "1",
        "--rpc-tracker",
        "127.0.0.1:9",
        "--rpc-key",
        "k",
        "--rpc-timeout",
        "2",
    ]
    outcome = run_cli(argv, timeout=90)  # TVM's own client retries for 60 s, then hangs
    assert_one_line(outcome, 2, "--rpc-tracker", "127.0.0.1:9")
    assert not (tmp_path / "db").exists()  # refused before tuning anything


RAISING = """
import sys
from convforge import cli
from convforge.commands import shape

def failing(args):
    raise {error}

shape.run = failing
sys.exit(cli.main(sys.argv[1:]))
"""
SHAPE = ["shape", "--input", "8,8", "--kernel", "3,3"]


def test_internal_error_exits_3_with_one_line_and_a_traceback_only_with_debug():
    code = RAISING.format(error="RuntimeError('kernel exploded\\nat line 2')")
    outcome = run_isolated(code, args=SHAPE)
    line = assert_one_line(outcome, 3, "internal error", "kernel exploded", "--debug")
    assert "at line 2" not in line
    outcome = run_isolated(code, args=["--debug", *SHAPE])
    assert outcome.returncode == 3, outcome.describe()
    assert "Traceback" in outcome.stderr and "kernel exploded" in outcome.stderr


def test_ctrl_c_exits_130():
    outcome = run_isolated(RAISING.format(error="KeyboardInterrupt()"), args=SHAPE)
    assert_one_line(outcome, 130, "interrupted")


def test_an_input_of_the_wrong_dtype_is_bad_input():
    """A compiled model refuses another dtype with a TypeError (numpy's convention) that the
    CLI counts as bad input (exit 2), not as an internal error."""
    from convforge.cli import exit_code
    from convforge.export.model import InputDtypeError

    err = InputDtypeError("input 'x' has dtype float64, the model declares float32")
    assert isinstance(err, TypeError) and exit_code(err) == 2
    assert exit_code(TypeError("a bug")) == 3
