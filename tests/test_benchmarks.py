"""The benchmark suite's definitions: ONNX graphs against numpy, FLOP counts, the runner."""

import json

import numpy as np
import pytest

from benchmarks import run
from benchmarks.workloads import BY_NAME, OPS, SUITE, Workload
from convforge import shapes
from convforge.export import compare, run_onnxruntime


def test_suite_names_are_unique_and_ops_known():
    assert len(BY_NAME) == len(SUITE)
    assert all(wl.op in OPS for wl in SUITE)


def test_dense_flops_follow_the_direct_algorithm():
    wl = BY_NAME["conv3x3_64_56"]
    assert wl.flops == 2 * 64 * 56 * 56 * 64 * 3 * 3
    causal = BY_NAME["causal1d_k3_d512"]
    assert causal.flops == 2 * 64 * 16000 * 64 * 3


def test_resize_conv_graph_matches_numpy():
    """Nearest x2 upsampling then a 3x3 conv, against numpy repeat + the sparse-matrix conv."""
    import convforge as cf

    wl = Workload(
        "small_resize_conv", "resize_conv",
        {"x": (1, 3, 4, 5), "w": (2, 3, 3, 3), "bias": (2,)}, {"scale": 2, "padding": 1},
    )  # fmt: skip
    arrays = wl.arrays()
    (y,) = run_onnxruntime(wl.spec.onnx(wl, arrays), {"x": arrays["x"]})
    up = arrays["x"].astype(np.float64).repeat(2, axis=2).repeat(2, axis=3)
    geom = shapes.conv_geometry(up.shape, arrays["w"].shape, padding=1)
    expected = (cf.conv_matrix(arrays["w"], geom) @ up.ravel()).reshape(geom.out_shape)
    expected += arrays["bias"].reshape(1, -1, 1, 1)
    assert compare(y, expected.astype(np.float32)).ok


def test_head_graph_matches_numpy():
    wl = Workload("small_head", "classifier_head", {"x": (2, 6, 3, 3), "w": (5, 6), "bias": (5,)})
    arrays = wl.arrays()
    (y,) = run_onnxruntime(wl.spec.onnx(wl, arrays), {"x": arrays["x"]})
    logits = arrays["x"].mean(axis=(2, 3)) @ arrays["w"].T + arrays["bias"]
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    assert compare(y, expected.astype(np.float32)).ok


def test_runner_checks_and_times_one_workload(tmp_path, capsys, monkeypatch):
    # the runner sets these for TVM's thread pool: keep them out of the test session's env
    monkeypatch.setenv("TVM_NUM_THREADS", "2")
    monkeypatch.setenv("TVM_BIND_THREADS", "0")
    out = tmp_path / "bench.json"
    code = run.main(
        ["--quick", "--only", "conv1x1", "--repeat", "1", "--sample-ms", "1", "--json", str(out)]
    )
    assert code == 0
    report = json.loads(out.read_text())
    (result,) = report["workloads"]
    assert result["name"] == "conv1x1_256_64_56"
    # convforge ran, agreed with onnxruntime (else its status would be "mismatch") and was
    # timed, with its weight packed once and given per call
    for name, how in [("convforge", "weights packed once"), ("convforge-per-call", "per call")]:
        assert result["impls"][name]["status"] == "ok", result["impls"][name]
        assert how in result["impls"][name]["note"]
        assert result["impls"][name]["median_s"] > 0
    assert result["impls"]["onnxruntime"]["ratio_to_onnxruntime"] == pytest.approx(1.0)
    measured = report["sgemm"]["measured"]
    assert [m["how"].split()[0] for m in measured] == ["onnxruntime", "numpy"]
    fastest = max(max(m["gflops_before"], m["gflops_after"]) for m in measured)
    assert report["sgemm"]["gflops"] == fastest > 0
    assert "convforge-tuned: left out" in capsys.readouterr().out


def test_runner_rejects_unknown_workload(capsys):
    assert run.main(["--only", "no_such_workload"]) == 2
    assert "matches no workload" in capsys.readouterr().err
