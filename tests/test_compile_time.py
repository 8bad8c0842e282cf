"""Compile-time work of issue #17: phase timers, shared kernels, the VM made on first use.

Numbers are checked against onnxruntime (the oracle); the profile's arithmetic against its
own definition (rows add up to the total).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import convforge as cf
from convforge.export.check import compare, run_onnxruntime
from convforge.export.compile_profile import CompileProfile


def _repeated_convs(rng, layers: int = 3, channels: int = 8, size: int = 10, batch=1):
    """``layers`` Conv+Relu of one geometry (3x3, same padding), each with its own weights
    (``batch``: the input's batch dimension, a number or a symbol)."""
    nodes, weights, x = [], {}, "x"
    for i in range(layers):
        weights[f"w{i}"] = (rng.standard_normal((channels, channels, 3, 3)) / 8).astype(np.float32)
        weights[f"b{i}"] = rng.standard_normal(channels).astype(np.float32)
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"y{i}"]))
        x = f"y{i}"
    graph = helper.make_graph(
        nodes, "repeated",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, channels, size, size])],
        [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [batch, channels, size, size])],
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
                  "relax pipeline", "codegen", "objects", "link", "load library"):  # fmt: skip
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


def _winograd_then_pool(rng):
    """Conv 3x3 16->16 (Winograd under 'winograd') -> MaxPool 3x3 stride 2 pads 1 (a
    separate pool kernel: overlapping windows are not fused)."""
    w = (rng.standard_normal((16, 16, 3, 3)) / 12).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Softmax", ["c"], ["s"], axis=1),
        helper.make_node("MaxPool", ["s"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "winograd_pool",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 16, 16, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 16, 8, 8])],
        initializer=[onnx.numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def _opt_levels(monkeypatch) -> dict[str, int]:
    """The LLVM opt level each PrimFunc of the next compile is built at (by name)."""
    from convforge.export import codegen

    seen: dict[str, int] = {}
    original = codegen._function_target

    def spy(target, func):
        chosen = original(target, func)
        name = str(func.attrs["global_symbol"]) if "global_symbol" in func.attrs else "?"
        seen[name] = int(chosen.attrs.get("opt-level", 3))
        return chosen

    monkeypatch.setattr(codegen, "_function_target", spy)
    return seen


def test_explicit_kernels_build_at_the_profiles_opt_level_others_at_llvms(rng, monkeypatch):
    """Winograd and blocked convolutions carry the profile's kernel_opt_level (and their
    library agrees with onnxruntime); the pool, the softmax and TVM's functions keep -O3;
    a target naming opt-level gets it everywhere. Sequential (CONVFORGE_COMPILE_JOBS=1)
    and parallel builds give the same numbers."""
    from convforge.targets import host_target, profile

    model = _winograd_then_pool(rng)
    x = rng.standard_normal((1, 16, 16, 16)).astype(np.float32)
    (expected,) = run_onnxruntime(model, {"x": x})
    level = profile(host_target()).kernel_opt_level
    for jobs in ("1", "2"):
        monkeypatch.setenv("CONVFORGE_COMPILE_JOBS", jobs)
        seen = _opt_levels(monkeypatch)
        compiled = cf.compile_model(model, algorithm="winograd")
        kernels = {k["function"]: k["kernel"] for k in compiled.metadata["kernels"]}
        assert any("winograd" in kernel for kernel in kernels.values()), kernels
        for function, kernel in kernels.items():
            wanted = level if kernel.startswith("conv2d") else 3
            assert seen[function] == wanted, (function, kernel, seen)
        assert all(v == 3 for name, v in seen.items() if not name.startswith("cf_")), seen
        agreement = compare(compiled(x=x)[0], expected)
        assert agreement.ok, agreement

    import tvm

    seen = _opt_levels(monkeypatch)
    o2 = tvm.target.Target({**dict(host_target().export()), "opt-level": 2})
    compiled = cf.compile_model(model, target=o2, algorithm="winograd")
    assert seen and set(seen.values()) == {2}, seen
    assert compare(compiled(x=x)[0], expected).ok


def test_only_the_functions_the_model_calls_are_built(rng, monkeypatch):
    """A reshape in a dataflow block becomes a view (``vm.builtin.reshape``) in the relax
    pipeline, which leaves its PrimFunc behind uncalled (here the model's Reshape and the
    one before the Winograd kernel's finite check): every function built is called by the
    model's relax functions, and the library agrees with onnxruntime."""
    import tvm
    from tvm import relax

    w = (rng.standard_normal((16, 16, 3, 3)) / 12).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "shape"], ["r"]),
        helper.make_node("Softmax", ["r"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "conv_reshape",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 16, 16, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4096])],
        initializer=[onnx.numpy_helper.from_array(w, "w"),
                     onnx.numpy_helper.from_array(np.array([1, -1], np.int64), "shape")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    built = _opt_levels(monkeypatch)
    modules = []
    codegen_vm = relax._ffi_api.VMCodeGen

    def spy(builder, mod):
        modules.append(mod)
        return codegen_vm(builder, mod)

    monkeypatch.setattr(relax._ffi_api, "VMCodeGen", spy)
    x = rng.standard_normal((1, 16, 16, 16)).astype(np.float32)
    compiled = cf.compile_model(model, algorithm="winograd")
    assert compare(compiled(x=x)[0], run_onnxruntime(model, {"x": x})[0]).ok
    (mod,) = modules
    callers = mod.script()  # a call reads "cls.NAME(", a definition "def NAME("
    called = {
        g.name_hint
        for g, f in mod.functions.items()
        if isinstance(f, tvm.tirx.PrimFunc) and f"cls.{g.name_hint}(" in callers
    }
    assert "vm.builtin.reshape" in callers  # the reshapes are views
    assert built and set(built) <= called, (set(built) - called, called)


def test_kernels_built_during_the_import_are_taken_only_while_unchanged(rng, monkeypatch):
    """codegen.EarlyBuilds: a compile takes the kernels built while the model was imported
    (at least the first, which starts at once) and its library agrees with onnxruntime; an
    early build of a function that differs from the model's final one is not taken."""
    import tvm
    import tvm_ffi
    from tvm import te

    from convforge.export import codegen
    from convforge.targets import host_target

    taken: list[int] = []
    submitted: set[str] = set()
    final: set[str] = set()
    real_take, real_submit = codegen.EarlyBuilds.take, codegen.EarlyBuilds.submit

    def take(self, functions, attrs=None):
        got = real_take(self, functions, attrs)
        taken.append(len(got))
        final.update(gvar.name_hint for gvar, _ in functions)
        return got

    def submit(self, name, func):
        submitted.add(name)
        real_submit(self, name, func)

    monkeypatch.setattr(codegen.EarlyBuilds, "take", take)
    monkeypatch.setattr(codegen.EarlyBuilds, "submit", submit)
    model = _winograd_then_pool(rng)
    x = rng.standard_normal((1, 16, 16, 16)).astype(np.float32)
    compiled = cf.compile_model(model, algorithm="winograd")
    assert len(taken) == 1 and taken[0] >= 1, taken
    assert submitted and submitted <= final, (submitted, final)
    agreement = compare(compiled(x=x)[0], run_onnxruntime(model, {"x": x})[0])
    assert agreement.ok, agreement

    # A dynamic batch: every bucket's kernels go early, under their merged names.
    taken.clear(), submitted.clear(), final.clear()
    dynamic = _repeated_convs(rng, batch="N")
    compiled = cf.compile_model(dynamic, algorithm="direct", batch_buckets=[1, 2])
    assert {n for n in submitted if n.endswith("_b2")} and submitted <= final, submitted
    assert len(taken) == 1 and taken[0] >= 1, taken
    x3 = rng.standard_normal((3, 8, 10, 10)).astype(np.float32)
    agreement = compare(compiled(x=x3)[0], run_onnxruntime(dynamic, {"x": x3})[0])
    assert agreement.ok, agreement

    def func(scale: float) -> tvm.tirx.PrimFunc:
        a = te.placeholder((64,), "float32", "a")
        b = te.compute((64,), lambda i: a[i] * scale, "b")
        return te.create_prim_func([a, b])

    monkeypatch.setattr(codegen.EarlyBuilds, "take", real_take)
    monkeypatch.setattr(codegen.EarlyBuilds, "submit", real_submit)
    early = codegen.EarlyBuilds(host_target())
    try:
        early.submit("cf_scale", func(2.0))
        early._builds["cf_scale"][1].result()  # built: only the comparison can refuse it
        changed = func(3.0).with_attr("global_symbol", "cf_scale")
        assert not tvm_ffi.structural_equal(early._builds["cf_scale"][0], changed)
        assert early.take([(tvm.ir.GlobalVar("cf_scale"), changed)]) == {}
        same = func(2.0).with_attr("global_symbol", "cf_scale")
        assert list(early.take([(tvm.ir.GlobalVar("cf_scale"), same)])) == [0]
    finally:
        early.close()


def test_compile_jobs_is_checked(monkeypatch):
    from convforge.export.codegen import compile_jobs
    from convforge.threads import physical_cores

    monkeypatch.delenv("CONVFORGE_COMPILE_JOBS", raising=False)
    assert compile_jobs() == physical_cores()
    monkeypatch.setenv("CONVFORGE_COMPILE_JOBS", "3")
    assert compile_jobs() == 3
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv("CONVFORGE_COMPILE_JOBS", bad)
        with pytest.raises(ValueError, match="CONVFORGE_COMPILE_JOBS must be a positive"):
            compile_jobs()


def test_light_shape_inference_infers_what_onnx_does_on_the_whole_model(rng):
    """prepare.infer_shapes leaves the weights out of ONNX's shape inference: the inferred
    shapes of every value are onnx's own on the whole model."""
    from convforge.examples import networks
    from convforge.export.prepare import infer_shapes

    model = networks.classifier_flatten()

    def shapes(m):
        graph = m.graph
        return {
            v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in (*graph.value_info, *graph.output)
        }

    expected = shapes(onnx.shape_inference.infer_shapes(model, data_prop=True))
    assert expected
    assert shapes(infer_shapes(model, data_prop=True)) == expected
