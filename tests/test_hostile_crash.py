"""Hostile inputs that used to kill the process or hang it (issue 15, "never a crash").

One fresh interpreter per case (``tests/isolated.py``), so a signal or a hang is seen as
one: transposed convolutions of large strides (SIGSEGV in TVM's expression visitor, now a
gather per output), the same through an ONNX model and the CLI, a large adaptive-pool grid
(minutes of compilation), sizes past int32 (TVM's "exceeds range of int32"), and ``cf.load``
of damaged, foreign and other-CPU libraries (SIGBUS, SIGABRT, SIGILL). Every number is
checked against an independent oracle (``conv_matrix``, onnxruntime), inside the case.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from isolated import assert_refused, refusal_snippet, run_cli, run_isolated
from onnx import TensorProto, helper, numpy_helper

import convforge as cf
from convforge import ops
from convforge.api import conv_transpose_computation, conv_transpose_op, placeholders
from convforge.build import compile_computation
from convforge.export.check import run_onnxruntime
from convforge.export.library import host_features, target_record
from convforge.targets import resolve_target

#: Runs a transposed convolution and checks it against the sparse form C^T y (+ bias).
_CONV_TRANSPOSE = """
import time, numpy as np, convforge as cf
from convforge import shapes
rng = np.random.default_rng(0)
x_shape, w_shape, kw = {x_shape!r}, {w_shape!r}, {kwargs!r}
x = rng.standard_normal(x_shape).astype(np.float32)
w = rng.standard_normal(w_shape).astype(np.float32)
b = rng.standard_normal(w_shape[1] * kw.get("groups", 1)).astype(np.float32)
geom = shapes.conv_transpose_geometry(x_shape, w_shape, **kw)
start = time.perf_counter()
y = cf.conv_transpose(x, w, b, **kw)
seconds = time.perf_counter() - start
c = cf.conv_matrix(w.astype(np.float64), geom.adjoint())
expected = (c.T @ x.ravel().astype(np.float64)).reshape(geom.out_shape)
expected += b.reshape(1, -1, *[1] * geom.ndim)
assert y.shape == geom.out_shape, (y.shape, geom.out_shape)
err = float(np.abs(y - expected).max())
assert err <= 1e-4 * max(1.0, float(np.abs(expected).max())), err
print("OK", y.shape, f"{{seconds:.2f}} s", err)
"""

CONV_TRANSPOSE_CASES = {
    # stride 40 in 2-D: 1600 phases, SIGSEGV before; groups, bias, output padding, padding
    "2d_stride40_groups": ((1, 4, 3, 3), (4, 3, 3, 3), dict(stride=40, padding=1, groups=2,
                                                             output_padding=(3, 7))),
    "3d_stride12": ((1, 2, 2, 3, 2), (2, 3, 3, 2, 3), dict(stride=12, output_padding=(1, 0, 5))),
    "1d_stride2000_groups": ((1, 4, 5), (4, 1, 4), dict(stride=2000, padding=3, groups=2,
                                                        output_padding=7)),
}  # fmt: skip


@pytest.mark.parametrize("case", CONV_TRANSPOSE_CASES)
def test_conv_transpose_large_stride_builds_and_matches_sparse_form(case):
    x_shape, w_shape, kwargs = CONV_TRANSPOSE_CASES[case]
    code = _CONV_TRANSPOSE.format(x_shape=x_shape, w_shape=w_shape, kwargs=kwargs)
    outcome = run_isolated(code, timeout=90)
    assert outcome.returncode == 0 and "OK" in outcome.stdout, outcome.describe()


#: The gather form on its own, in process (no crash to catch): strides below and above the
#: kernel (several taps per output, one, none), dilations sharing a factor with the stride
#: (taps found by a modular inverse), groups, padding, output padding; float32 and float64.
GATHER_CASES = [
    ((2, 3, 5, 4), (3, 2, 5, 3), dict(stride=(5, 6), dilation=(2, 3), padding=(2, 1))),
    ((1, 4, 6, 5), (4, 3, 5, 4), dict(stride=(2, 3), dilation=(2, 1), padding=(3, 0),
                                      output_padding=(1, 2), groups=2)),
    ((1, 2, 4, 3, 3), (2, 2, 3, 4, 2), dict(stride=(2, 4, 3), dilation=(1, 2, 2), padding=1)),
    ((2, 6, 9), (6, 1, 7), dict(stride=4, dilation=6, padding=[(5, 2)], groups=6)),
]  # fmt: skip


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("case", range(len(GATHER_CASES)))
def test_conv_transpose_gather_matches_sparse_form(case, dtype, rng):
    x_shape, w_shape, kwargs = GATHER_CASES[case]
    geom = cf.shapes.conv_transpose_geometry(x_shape, w_shape, **kwargs)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(geom.out_channels).astype(dtype)

    def build():
        tx, tw, tb = placeholders(dtype, x=x_shape, w=w_shape, bias=b.shape)
        return [tx, tw, tb], [ops.conv_transpose_gather(tx, tw, geom, ops.Epilogue(tb, "relu"))]

    y = compile_computation("gather", build, resolve_target(None))(x, w, b)
    c = cf.conv_matrix(w.astype(np.float64), geom.adjoint())
    expected = (c.T @ x.ravel().astype(np.float64)).reshape(geom.out_shape)
    expected = np.maximum(expected + b.reshape(1, -1, *[1] * geom.ndim), 0)
    # float16: summed in float32, rounded once to float16 (half an ulp: 4.9e-4)
    tol = {"float16": 2e-3, "float32": 1e-5, "float64": 1e-12}[dtype]
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol * np.abs(expected).max())


def test_conv_transpose_above_the_phase_limit_gathers():
    # the forms conv_transpose picks: sub-pixel phases up to the limit, a gather above it
    small = cf.shapes.conv_transpose_geometry((1, 2, 4, 4), (2, 2, 3, 3), stride=4)
    large = cf.shapes.conv_transpose_geometry((1, 2, 4, 4), (2, 2, 3, 3), stride=(4, 5))
    assert conv_transpose_op(large) is ops.conv_transpose_gather
    assert conv_transpose_op(small) is not ops.conv_transpose_gather


def test_conv_transpose_large_stride_generates_cuda():
    # CUDA source only (no GPU needed; running it on a GPU is not checked here)
    geom = cf.shapes.conv_transpose_geometry((1, 4, 3, 3), (4, 3, 3, 3), stride=40, padding=1)
    computation = conv_transpose_computation(geom, "float32", True, "relu", "cuda")
    kernel = compile_computation("convT_s40", computation, resolve_target("cuda"))
    assert "threadIdx.x" in kernel.executable.mod.imports[0].inspect_source("cuda")


def _conv_transpose_model(path) -> str:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[40, 40],
                            pads=[1, 1, 1, 1])  # fmt: skip
    graph = helper.make_graph(
        [node], "convT_s40", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return str(path)


@pytest.fixture(scope="module")
def stride40_model(tmp_path_factory):
    return _conv_transpose_model(tmp_path_factory.mktemp("onnx") / "convT_s40.onnx")


def test_onnx_conv_transpose_stride40_through_compile_model(stride40_model, tmp_path):
    x = np.random.default_rng(2).standard_normal((1, 4, 3, 3)).astype(np.float32)
    (expected,) = run_onnxruntime(onnx.load(stride40_model), {"x": x})
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", expected)
    code = f"""
        import numpy as np, convforge as cf
        model = cf.compile_model({stride40_model!r})
        y = model(x=np.load({str(tmp_path / "x.npy")!r}))[0]
        expected = np.load({str(tmp_path / "expected.npy")!r})
        assert y.shape == expected.shape == (1, 3, 81, 81), (y.shape, expected.shape)
        err = float(np.abs(y - expected).max())
        assert err <= 1e-5 * max(1.0, float(np.abs(expected).max())), err
        print("OK", err)
    """
    outcome = run_isolated(code, timeout=90)
    assert outcome.returncode == 0 and "OK" in outcome.stdout, outcome.describe()


@pytest.mark.parametrize("command", ["compile", "check"])
def test_cli_on_conv_transpose_stride40_model(command, stride40_model, tmp_path):
    argv = [command, stride40_model]
    if command == "compile":
        argv += ["-o", str(tmp_path / "convT_s40.so")]
    outcome = run_cli(argv, timeout=90)
    assert outcome.returncode == 0, outcome.describe()
    if command == "check":
        assert "AGREE" in outcome.stdout, outcome.describe()
    else:
        assert (tmp_path / "convT_s40.so").stat().st_size > 0


def test_large_adaptive_pool_grid_compiles_quickly():
    # 100x100 -> 20000x20000 (400M outputs, not allocated: compiled only). Before, the cell
    # exactness was recomputed per cell in Python, O(grid^2): minutes.
    code = """
        import time
        from tvm import te
        from convforge import ops, shapes
        from convforge.build import compile_computation
        from convforge.targets import host_target
        geom = shapes.adaptive_pool_geometry((1, 1, 100, 100), (20000, 20000), kind="avg")
        def build():
            x = te.placeholder(geom.x_shape, name="x")
            return [x], [ops.adaptive_pool(x, geom)]
        start = time.perf_counter()
        kernel = compile_computation("pool", build, host_target())
        assert kernel.output_shapes == ((1, 1, 20000, 20000),)
        print("OK", f"{time.perf_counter() - start:.2f} s")
    """
    outcome = run_isolated(code, timeout=30)
    assert outcome.returncode == 0 and "OK" in outcome.stdout, outcome.describe()


@pytest.mark.parametrize("kind", ["avg", "max"])
def test_adaptive_pool_grid_larger_than_input_matches_numpy(kind, rng):
    # the path the large grid takes (cells of one or two inputs, exact along one axis)
    x = rng.standard_normal((1, 2, 7, 50)).astype(np.float32)
    grid = (300, 200)
    y = (cf.adaptive_avg_pool if kind == "avg" else cf.adaptive_max_pool)(x, grid)
    reduce_ = np.mean if kind == "avg" else np.max
    expected = np.empty((1, 2, *grid), np.float32)
    for i in range(grid[0]):
        r0, r1 = (i * 7) // grid[0], -(-((i + 1) * 7) // grid[0])
        for j in range(grid[1]):
            c0, c1 = (j * 50) // grid[1], -(-((j + 1) * 50) // grid[1])
            expected[..., i, j] = reduce_(x[..., r0:r1, c0:c1], axis=(-2, -1))
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


# --- sizes past int32 ----------------------------------------------------------------------

INT32_LIMIT = r"2147483647"


@pytest.mark.parametrize(
    "make, tensor",
    [
        (lambda: cf.shapes.conv_geometry((1, 1, 65536, 65536), (1, 1, 3, 3)), "x"),
        (lambda: cf.shapes.conv_geometry((1, 1, 46341, 46340), (1, 1, 3, 3), padding=(1, 0)),
         "padded_x"),
        (lambda: cf.shapes.conv_geometry((1, 70000, 1, 1), (70000, 70000, 1, 1)), "weight"),
        (lambda: cf.shapes.conv_transpose_geometry((1, 1, 30000, 30000), (1, 1, 3, 3), stride=2),
         "output"),
        (lambda: cf.shapes.adaptive_pool_geometry((1, 6, 4, 4), (20000, 20000), kind="avg"),
         "output"),
        (lambda: cf.shapes.pool_geometry((2**16, 2**15, 1), 1, kind="max"), "x"),
        (lambda: cf.shapes.dense_geometry((2**16, 2**16), (10, 2**16)), "x"),
    ],
)  # fmt: skip
def test_geometries_refuse_tensors_past_int32(make, tensor):
    with pytest.raises(
        ValueError, match=rf"^{tensor} of shape .* elements, more than {INT32_LIMIT}"
    ):
        make()


def test_int32_limit_is_inclusive():
    geom = cf.shapes.conv_geometry((1, 1, 2**16, 2**15 - 1), (1, 1, 1, 1))  # 2**31 - 2**16
    assert geom.out_shape == (1, 1, 2**16, 2**15 - 1)


def test_prepare_conv_past_int32_is_refused_before_compiling():
    code = refusal_snippet(
        "import numpy as np, convforge as cf\nw = np.ones((1, 1, 3, 3), np.float32)",
        "cf.prepare_conv(w, x_shape=(1, 1, 65536, 65536), padding=1)",
    )
    assert_refused(
        run_isolated(code, timeout=60), "ValueError", r"\bx\b", "4294967296", INT32_LIMIT
    )


def test_onnx_model_past_int32_is_refused(tmp_path):
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 65536, 65536])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "huge.onnx")
    code = refusal_snippet(
        "import convforge as cf", f"cf.compile_model({str(tmp_path / 'huge.onnx')!r})"
    )
    assert_refused(
        run_isolated(code, timeout=60), "ValueError", "input 'x'", "4294967296", INT32_LIMIT
    )


def test_cli_shape_past_int32_exits_2():
    outcome = run_cli(["shape", "--input", "65536,65536", "--kernel", "3,3"], timeout=60)
    assert outcome.returncode == 2, outcome.describe()
    assert "4294967296" in outcome.stderr and INT32_LIMIT in outcome.stderr, outcome.describe()
    assert "Traceback" not in outcome.stderr


# --- cf.load of hostile libraries ------------------------------------------------------------


@pytest.fixture(scope="module")
def library(stride40_model, tmp_path_factory):
    """A good library of the stride-40 model, an input and onnxruntime's output for it."""
    folder = tmp_path_factory.mktemp("library")
    compiled = cf.compile_model(stride40_model)
    path = folder / "good.so"
    compiled.export_library(path)
    x = np.random.default_rng(3).standard_normal((1, 4, 3, 3)).astype(np.float32)
    np.save(folder / "x.npy", x)
    np.save(folder / "expected.npy", run_onnxruntime(onnx.load(stride40_model), {"x": x})[0])
    return path


def _load_and_run(path, folder) -> str:
    return refusal_snippet(
        "import numpy as np, convforge as cf",
        f"""y = cf.load({str(path)!r})(x=np.load({str(folder / "x.npy")!r}))[0]
            expected = np.load({str(folder / "expected.npy")!r})
            print("RAN", float(np.abs(y - expected).max()))""",
    )


def test_load_good_library_runs_and_matches_onnxruntime(library):
    outcome = run_isolated(_load_and_run(library, library.parent), timeout=60)
    assert outcome.returncode == 0, outcome.describe()
    ran = [line for line in outcome.stdout.splitlines() if line.startswith("RAN")]
    assert ran and float(ran[0].split()[1]) <= 1e-5, outcome.describe()
    # the verified copy that was loaded is gone
    assert [f.name for f in library.parent.iterdir() if "convforge-load" in f.name] == []


def _truncated(good, bad):
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])


def _flipped(good, bad):
    data = bytearray(good.read_bytes())
    data[len(data) // 3] ^= 0x40
    bad.write_bytes(bytes(data))


def _unrelated(good, bad):
    import ctypes.util

    name = ctypes.util.find_library("z") or ctypes.util.find_library("c")
    candidates = [f"/lib/x86_64-linux-gnu/{name}", f"/usr/lib/x86_64-linux-gnu/{name}",
                  f"/lib64/{name}", f"/usr/lib64/{name}"]  # fmt: skip
    source = next((p for p in candidates if name and __import__("os").path.exists(p)), None)
    if source is None:
        pytest.skip("no system libz/libc found to copy")
    shutil.copyfile(source, bad)


LOAD_CASES = {
    "truncated": (_truncated, "no convforge trailer"),
    "flipped_byte": (_flipped, "SHA-256 differs"),
    "unrelated_so": (_unrelated, "no convforge trailer"),
}


@pytest.mark.parametrize("case", LOAD_CASES)
def test_load_refuses_damaged_or_foreign_library(case, library, tmp_path):
    damage, reason = LOAD_CASES[case]
    bad = tmp_path / f"{case}.so"
    damage(library, bad)
    outcome = run_isolated(_load_and_run(bad, library.parent), timeout=60)
    assert_refused(outcome, "ValueError", str(bad), reason)


def _foreign_cpu() -> str | None:
    """An x86 CPU name whose instruction set this host lacks part of, if any."""
    have = host_features()
    for mcpu in ("skylake-avx512", "sapphirerapids", "graniterapids", "diamondrapids"):
        target = resolve_target({"kind": "llvm", "mcpu": mcpu})
        if set(target_record(target)["features"]) - have:
            return mcpu
    return None


def test_load_refuses_library_built_for_another_cpu(stride40_model, library, tmp_path):
    mcpu = _foreign_cpu()
    if mcpu is None:
        pytest.skip("this CPU has every extension of the CPUs tried")
    other = tmp_path / f"{mcpu}.so"
    cf.compile_model(stride40_model, target={"kind": "llvm", "mcpu": mcpu}).export_library(other)
    outcome = run_isolated(_load_and_run(other, library.parent), timeout=60)
    assert_refused(outcome, "ValueError", str(other), mcpu, "this CPU lacks")
