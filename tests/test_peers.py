"""The benchmark peers (benchmarks/peers.py: OpenVINO, PyTorch), the extended suite (the
``nets`` set) and the model benchmark's networks (MobileNetV2, the light zoo graphs)."""

from __future__ import annotations

import json
import math
import os
import tomllib

import numpy as np
import pytest

from benchmarks import peers, run
from convforge import shapes
from convforge import workloads as registry
from convforge.export import compare, run_onnxruntime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_peers_are_an_extra_that_all_leaves_out():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert sorted(p.split(">")[0] for p in extras["peers"]) == ["openvino", "torch"]
    assert "peers" not in extras["all"][0]
    assert all(
        "openvino" not in p and "torch" not in p for e in ("all", "bench") for p in extras[e]
    )


def test_a_missing_peer_is_named_once_as_skipped_and_not_run(monkeypatch):
    real = peers.importlib.util.find_spec
    missing = ("openvino", "torch")
    monkeypatch.setattr(
        peers.importlib.util, "find_spec", lambda m: None if m in missing else real(m)
    )
    impls, notes = run.implementations(run.parse_args(["--quick"]))
    assert not {"openvino", "pytorch"} & set(impls)
    assert [n for n in notes if "skipped" in n] == [
        "openvino: skipped (openvino not installed; pip install -e '.[peers]')",
        "pytorch: skipped (torch not installed; pip install -e '.[peers]')",
    ]
    assert peers.version("openvino") is None


def test_openvino_model_matches_the_sparse_matrix_conv():
    pytest.importorskip("openvino")
    import convforge as cf
    from convforge.export import conv_model

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 9, 7)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    geom = shapes.conv_geometry(x.shape, w.shape, stride=2, padding=1)
    model = peers.OpenVINOModel(conv_model(geom, weights={"w": w}), threads=1)
    (y,) = model({"x": x})
    expected = (cf.conv_matrix(w, geom) @ x.astype(np.float64).ravel()).reshape(geom.out_shape)
    assert compare(y, expected.astype(np.float32)).ok
    model.run()  # the timed call: the same request on the same (shared) input
    assert compare(model.request.get_output_tensor(0).data, expected.astype(np.float32)).ok


#: Small instances of the extended suite's forms that PyTorch runs differently: 3-D,
#: 1-D strided, transposed with output_padding, grouped.
SMALL = (
    registry.Workload("t3d", "conv", {"x": (1, 2, 5, 6, 7), "w": (3, 2, 3, 3, 3), "bias": (3,)}, {"stride": 2, "padding": 1}),
    registry.Workload("t1d", "conv", {"x": (1, 4, 19), "w": (6, 4, 5), "bias": (6,)}, {"stride": 2, "padding": 2}),
    registry.Workload("tT", "conv_transpose", {"x": (1, 4, 5, 6), "w": (4, 3, 3, 3), "bias": (3,)}, {"stride": 2, "padding": 1, "output_padding": 1}),
    registry.Workload("tg", "conv", {"x": (1, 8, 9, 9), "w": (8, 2, 5, 5), "bias": (8,)}, {"stride": 2, "padding": 2, "groups": 4}),
)  # fmt: skip


@pytest.mark.parametrize("wl", SMALL, ids=lambda wl: wl.name)
def test_torch_forms_agree_with_onnxruntime(wl):
    torch = pytest.importorskip("torch")
    arrays = wl.arrays(seed=3)
    (expected,) = run_onnxruntime(wl.spec.onnx(wl, arrays), {"x": arrays["x"]})
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    with torch.inference_mode():
        y = wl.spec.torch(torch, tensors, wl.params).numpy()
    assert compare(y, expected).ok


def test_the_extended_suite_holds_the_bench_suite_and_every_network_family():
    nets = registry.select(registry.NETS)
    names = {wl.name for wl in nets}
    assert {wl.name for wl in registry.select(registry.BENCH) if wl.dtype == "float32"} <= names
    for prefix in ("mbv2_", "mbv3_", "effnet_", "resnext_", "unet_", "video_", "audio_"):
        assert any(n.startswith(prefix) for n in names), prefix
    assert any(len(wl.shapes["x"]) == 5 for wl in nets)  # 3-D video
    assert any(wl.params.get("output_padding") for wl in nets)
    assert all(wl.dtype == "float32" for wl in nets)


def test_runner_times_every_installed_peer_after_checking_it(tmp_path, monkeypatch):
    """One extended-suite workload: every installed peer agreed with onnxruntime (else its
    status would be "mismatch") and was timed; convforge / best peer is over the fastest."""
    monkeypatch.setenv("TVM_NUM_THREADS", "2")
    monkeypatch.setenv("TVM_BIND_THREADS", "0")
    out = tmp_path / "nets.json"
    argv = ["--set", "nets", "--only", "mbv2_1x1_24_144_56", "--quick", "--repeat", "1"]
    assert run.main([*argv, "--sample-ms", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    (result,) = report["workloads"]
    present, _ = peers.available()
    for name in ["onnxruntime", "convforge", *present]:
        assert result["impls"][name]["status"] == "ok", (name, result["impls"][name])
    timed = {n: result["impls"][n]["median_s"] for n in run.PEERS if n in result["impls"]}
    best = min(timed, key=timed.get)
    assert result["best_peer"] == best
    assert result["convforge_to_best"] == pytest.approx(
        result["impls"]["convforge"]["median_s"] / timed[best]
    )
    assert report["convforge_to_best_geomean"] == pytest.approx(result["convforge_to_best"])
    assert report["settings"]["set"] == "nets"
    assert set(report["versions"]) >= {"tvm", "onnxruntime", "openvino", "pytorch"}


def test_runner_refuses_an_unknown_set(capsys):
    assert run.main(["--set", "nightly"]) == 2
    assert "workload set must be one of" in capsys.readouterr().err


def test_mobilenet_v2_has_its_structure_and_o1_outputs():
    from convforge.examples import networks

    model = networks.mobilenet_v2(size=96, width=0.5)
    ops = [n.op_type for n in model.graph.node]
    depthwise = [
        n for n in model.graph.node
        if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
    ]  # fmt: skip
    assert len(depthwise) == sum(n for _, _, n, _ in networks.MOBILENET_V2_STAGES) == 17
    assert ops.count("Add") == 10  # the blocks that keep their shape
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype(np.float32)
    (probs,) = run_onnxruntime(model, {"x": x})
    assert probs.shape == (2, 1000)
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert probs.max() < 0.5  # logits O(1): the softmax is not saturated


@pytest.mark.parametrize("name", ["squeezenet", "resnet50", "shufflenet"])
def test_light_zoo_models_get_weights_that_keep_activations_o1(name):
    """The light graphs have no weights; the drawn ones give a finite, unsaturated output."""
    from convforge.examples import networks

    model = networks.light_zoo(name)
    assert not any(n.op_type == "ConstantOfShape" for n in model.graph.node)
    (inp,) = model.graph.input
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    (y,) = run_onnxruntime(model, {inp.name: x})
    assert y.shape[:2] == (1, 1000) and np.isfinite(y).all()
    assert math.isclose(float(y.sum()), 1, abs_tol=1e-3) and y.max() < 0.5


def test_light_zoo_refuses_an_unknown_name():
    from convforge.examples import networks

    with pytest.raises(ValueError, match=r"light zoo model must be one of .*'resnet51'"):
        networks.light_zoo("resnet51")


def test_model_benchmark_checks_and_times_every_runtime(tmp_path, monkeypatch, capsys):
    """bench_models on a one-conv model: convforge and OpenVINO (when installed) agree with
    onnxruntime and are timed; convforge / best peer is over the fastest peer."""
    import benchmarks.bench_models as bench
    from convforge.examples import networks

    def tiny():
        g = networks._Graph(0)
        y = g.conv("x", 3, 8, (3, 3), pads=[1] * 4, activation="Relu")
        return g.model(
            "tiny", {"x": (("N", 3, 16, 16), "float32")}, {y: (("N", 8, 16, 16), "float32")}
        )

    monkeypatch.setitem(bench.MODELS, "tiny", tiny)
    monkeypatch.setenv("TVM_NUM_THREADS", "2")
    monkeypatch.setenv("TVM_BIND_THREADS", "0")
    out = tmp_path / "models.json"
    assert bench.main(["--models", "tiny", "--rounds", "3", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (r,) = report["results"]
    assert r["agree"] and r["max_abs_error"] < 1e-4
    present, _ = peers.available(["openvino"])
    assert r["peers_agree"] == {name: True for name in present}
    timed = {n: r[f"{n}_median_ms"] for n in ("onnxruntime", *present)}
    assert r["best_peer"] == min(timed, key=timed.get)
    assert r["ratio_to_best"] == pytest.approx(r["convforge_median_ms"] / min(timed.values()))
    assert report["summary"]["geomean_ratio_to_best"] == pytest.approx(r["ratio_to_best"])
    assert "onnx2torch" in capsys.readouterr().out  # PyTorch is named as no model peer
