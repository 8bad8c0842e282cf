"""Compile-time work of issue #17: phase timers, shared kernels, the VM made on first use.

Numbers are checked against onnxruntime (the oracle); the profile's arithmetic against its
own definition (rows add up to the total).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

import convforge as cf
from convforge.export.check import compare, run_onnxruntime
from convforge.export.compile_profile import CompileProfile


def _repeated_convs(rng, layers: int = 3, channels: int = 8, size: int = 10):
    """``layers`` Conv+Relu of one geometry (3x3, same padding), each with its own weights."""
    nodes, weights, x = [], {}, "x"
    for i in range(layers):
        weights[f"w{i}"] = (rng.standard_normal((channels, channels, 3, 3)) / 8).astype(np.float32)
        weights[f"b{i}"] = rng.standard_normal(channels).astype(np.float32)
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"y{i}"]))
        x = f"y{i}"
    graph = helper.make_graph(
        nodes, "repeated",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [1, channels, size, size])],
        initializer=[onnx.numpy_helper.from_array(v, n) for n, v in weights.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def test_identical_convs_share_one_kernel_profile_and_lazy_vm(rng, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CONVFORGE_PROFILE_COMPILE", "1")
    model = _repeated_convs(rng)
    compiled = cf.compile_model(model, algorithm="direct")  # one function per kernel

    # The table went to stderr, its phases as documented, adding up to the total.
    err = capsys.readouterr().err
    assert "convforge compile profile" in err
    profile = compiled.compile_profile
    for phase in ("load", "prepare", "fusion", "import", "kernel compute", "kernel schedule",
                  "relax pipeline", "codegen", "pack", "link", "load library"):  # fmt: skip
        assert phase in profile.phases, phase
        assert profile.phases[phase] >= 0.0, phase
        assert phase in err, phase
    assert 0 < sum(profile.phases.values()) <= profile.total * 1.001
    assert profile.phases["codegen"] > 0

    # Three nodes, one function: the kernel is compiled once and called three times.
    kernels = compiled.metadata["kernels"]
    assert [k["op_type"] for k in kernels] == ["Conv"] * 3
    assert len({k["function"] for k in kernels}) == 1
    assert profile.kernels == 3 and profile.distinct_kernels == 1

    # The VM is made on first use: exporting does not need it.
    assert compiled._vm_main is None
    path = tmp_path / "model.so"
    compiled.export_library(path)
    assert compiled._vm_main is None

    x = rng.standard_normal((1, 8, 10, 10)).astype(np.float32)
    (expected,) = run_onnxruntime(model, {"x": x})
    for runner in (compiled, cf.load(path)):  # each layer's own weights, in order
        (actual,) = runner(x=x)
        agreement = compare(actual, expected)
        assert agreement.ok, agreement
    assert compiled._vm_main is not None
    assert cf.load(path).compile_profile is None

    # report() splits the shared kernel's time evenly among its three nodes.
    rows = {r.node: r for r in compiled.report(x, runs=2).rows}
    conv_ms = [r.milliseconds for r in rows.values() if r.op_type == "Conv"]
    assert len(conv_ms) == 3 and conv_ms[0] > 0
    assert np.allclose(conv_ms, conv_ms[0])


def test_profile_table_rows_add_up_to_the_total(monkeypatch, capsys):
    profile = CompileProfile(total=2.0, kernels=4, distinct_kernels=2)
    profile.add("import", 0.5)
    profile.add("codegen", 1.0)
    profile.add("import", 0.25)
    assert profile.phases == {"import": 0.75, "codegen": 1.0}
    lines = profile.table().splitlines()
    seconds = {line.split()[0]: float(line.split()[-2]) for line in lines[1:-2]}
    assert seconds == {"import": 0.75, "codegen": 1.0, "other": 0.25}
    assert lines[-2].split()[:2] == ["total", "2.000"]
    assert "4 nodes, 2 functions" in lines[-1]
    assert profile.to_dict()["phases"] == {"import": 0.75, "codegen": 1.0}

    monkeypatch.delenv("CONVFORGE_PROFILE_COMPILE", raising=False)
    profile.print_if_enabled()
    monkeypatch.setenv("CONVFORGE_PROFILE_COMPILE", "0")
    profile.print_if_enabled()
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("CONVFORGE_PROFILE_COMPILE", "1")
    profile.print_if_enabled()
    assert "codegen" in capsys.readouterr().err
