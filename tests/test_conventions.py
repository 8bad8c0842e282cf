"""Calling conventions users know (issue #17): ``CompiledModel.run`` / ``run_dict`` / feed
dicts as onnxruntime's ``InferenceSession.run``, ``convforge run --fill/--repeat/--json``,
``report()`` in milliseconds adding up to the whole, and written files' permissions under
the umask. Every number is checked against onnxruntime."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from onnx import helper

from convforge.cli import main
from convforge.export.check import compare, session
from convforge.export.model import compile_model
from convforge.export.onnx_graphs import make_model, save_model
from tests.isolated import run_cli, run_isolated


def _two_output_model():
    """input (N, 3, 8, 8) -> Conv -> (Relu -> 'relu', GlobalAveragePool -> 'pool')."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["c"], ["pool"]),
    ]
    weights = {
        "w": (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32),
        "b": rng.standard_normal(4).astype(np.float32),
    }
    return make_model(
        nodes, {"input": (("N", 3, 8, 8), "float32")},
        {"relu": (("N", 4, 8, 8), "float32"), "pool": (("N", 4, 1, 1), "float32")},
        initializers=weights,
    )  # fmt: skip


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    model = _two_output_model()
    folder = tmp_path_factory.mktemp("conventions")
    save_model(model, folder / "model.onnx")
    result = compile_model(model)
    result.export_library(folder / "model.so")
    return model, result, folder


def _x(batch: int = 2, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 8, 8)).astype(np.float32)


def _agree(actual, expected) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        assert compare(a, e).ok, compare(a, e)


@pytest.mark.parametrize("names", [None, ["pool"], ["pool", "relu"], ["relu", "relu"]])
def test_run_selects_and_orders_like_onnxruntime(compiled, names):
    model, cm, _ = compiled
    feeds = {"input": _x()}
    _agree(cm.run(names, feeds), session(model).run(names, feeds))


def test_feed_dict_positional_keyword_and_run_dict_agree_with_onnxruntime(compiled):
    model, cm, _ = compiled
    x = _x(3)
    expected = session(model).run(None, {"input": x})
    _agree(cm({"input": x}), expected)
    _agree(cm(x), expected)
    _agree(cm(input=x), expected)
    by_name = cm.run_dict({"input": x})
    assert list(by_name) == ["relu", "pool"]
    _agree(list(by_name.values()), expected)
    only = cm.run_dict({"input": x}, ["pool"])
    assert list(only) == ["pool"]
    _agree([only["pool"]], [expected[1]])


def test_names_and_declared_shapes_match_onnxruntime(compiled):
    model, cm, _ = compiled
    sess = session(model)
    assert cm.input_names == [i.name for i in sess.get_inputs()]
    assert cm.output_names == [o.name for o in sess.get_outputs()]
    # onnxruntime names a symbolic dim ('N'); convforge gives None there
    assert cm.input_shapes == {
        i.name: tuple(d if isinstance(d, int) else None for d in i.shape) for i in sess.get_inputs()
    }
    assert cm.input_shapes == {"input": (None, 3, 8, 8)}


def test_bad_names_and_feeds_are_refused_by_name(compiled):
    _, cm, _ = compiled
    feeds = {"input": _x()}
    with pytest.raises(ValueError, match=r"unknown output\(s\) \['nope', 'gone'\]"):
        cm.run(["relu", "nope", "gone"], feeds)
    with pytest.raises(ValueError, match="output_names must be a list"):
        cm.run("relu", feeds)
    with pytest.raises(ValueError, match="feeds must be a mapping"):
        cm.run(None, [_x()])
    with pytest.raises(ValueError, match=r"unknown input 'x'"):
        cm.run(None, {"x": _x()})
    with pytest.raises(ValueError, match=r"missing input"):
        cm({})
    with pytest.raises(ValueError, match="not both"):
        cm({"input": _x()}, input=_x())


def test_report_milliseconds_add_up_to_the_measured_whole(compiled):
    _, cm, _ = compiled
    x = _x(1)
    report = cm.report({"input": x}, runs=5)  # a feed dict, as everywhere
    rows_ms = sum(r.milliseconds for r in report.rows)
    total = rows_ms + report.tvm_default_ms + report.unattributed_ms
    assert total == pytest.approx(report.total_ms, rel=1e-9)
    conv = next(r for r in report.rows if r.op_type == "Conv")
    assert 0 < conv.milliseconds <= report.total_ms
    assert conv.share == pytest.approx(conv.milliseconds / report.total_ms)
    assert report.unattributed_ms >= 0  # the kernels were timed inside the whole
    data = json.loads(json.dumps(report.to_dict()))
    assert data["total_ms"] == pytest.approx(report.total_ms)
    parts = sum(n["milliseconds"] for n in data["nodes"])
    parts += sum(r["milliseconds"] for r in data["summary_rows"])
    assert parts == pytest.approx(data["total_ms"], rel=1e-9)
    assert "ms" in str(report) and "not attributed" in str(report)
    with pytest.raises(ValueError, match="runs must be an integer of at least 1"):
        cm.report(x, runs=0)
    assert cm.time({"input": x}, number=2, repeat=2) > 0


def test_report_leaves_no_instrument_on_the_model(compiled, monkeypatch):
    """report() times every VM call through an instrument callback; it removes it after, so
    later calls run without a Python callback around each kernel (it slowed them 2-5x)."""
    _, cm, _ = compiled
    vm = cm._vm
    installed = []
    original = vm.set_instrument
    monkeypatch.setattr(vm, "set_instrument", lambda f: (installed.append(f), original(f)))
    cm.report(_x(1), runs=1)
    assert len(installed) == 2 and callable(installed[0]) and installed[-1] is None


PERMISSIONS = """
import json, os, sys
import numpy as np
from pathlib import Path
from convforge.commands._model_args import write_npz
from convforge.commands.run import write_json
from convforge.export.model import compile_model
from convforge.export.onnx_graphs import save_model
from convforge.filemode import atomic_write
from convforge.schedules.tuning import _write_atomically
from convforge.streaming import _save_npz_atomic
from tests.test_conventions import _two_output_model

model = _two_output_model()
compiled = compile_model(model)
folder = Path(sys.argv[1])
modes = {}
for mask in (0o022, 0o077):
    os.umask(mask)
    d = folder / f"{mask:03o}"
    d.mkdir()
    compiled.export_library(d / "model.so")
    write_npz(str(d / "out.npz"), {"a": np.zeros(2)})
    write_json(str(d / "t.json"), {})
    atomic_write(d / "kernel.bin", b"x")
    _write_atomically(d / "record.json", "{}")
    _save_npz_atomic(d / "state.npz", {"a": np.zeros(2)})
    save_model(model, d / "model.onnx")
    modes[f"{mask:03o}"] = {p.name: p.stat().st_mode & 0o777 for p in d.iterdir()}
print(json.dumps(modes))
"""


def test_written_files_get_a_normal_files_mode_under_the_umask(tmp_path):
    outcome = run_isolated(PERMISSIONS, args=[str(tmp_path)])
    assert outcome.returncode == 0, outcome.describe()
    modes = json.loads(outcome.stdout.strip().splitlines()[-1])
    data = ["out.npz", "t.json", "kernel.bin", "record.json", "state.npz", "model.onnx"]
    assert modes["022"] == {"model.so": 0o755, **dict.fromkeys(data, 0o644)}
    assert modes["077"] == {"model.so": 0o700, **dict.fromkeys(data, 0o600)}


def test_cli_run_fill_times_and_writes_json(compiled, tmp_path):
    model, _, folder = compiled
    out, report = tmp_path / "out.npz", tmp_path / "timing.json"
    argv = ["run", str(folder / "model.so"), "--fill", "ones", "--repeat", "7", "--warmup", "2"]
    outcome = run_cli([*argv, "--json", str(report), "-o", str(out)])
    assert outcome.returncode == 0, outcome.describe()
    assert "p50" in outcome.stdout and "p99" in outcome.stdout
    data = json.loads(report.read_text())
    lat = data["latency_ms"]
    assert len(data["seconds"]) == 7 and data["repeat"] == 7 and data["warmup"] == 2
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]
    assert lat["p50"] == pytest.approx(1e3 * float(np.median(data["seconds"])))
    assert data["versions"]["tvm"] and data["machine"]["cpu_count"] == os.cpu_count()
    assert data["inputs"] == {"input": {"shape": [1, 3, 8, 8], "dtype": "float32"}}
    assert stat.S_IMODE(report.stat().st_mode) == 0o666 & ~_umask()
    expected = session(model).run(None, {"input": np.ones((1, 3, 8, 8), np.float32)})
    with np.load(out) as result:
        _agree([result["relu"], result["pool"]], expected)


def test_cli_run_random_fill_with_batch(compiled, tmp_path):
    model, _, folder = compiled
    out = tmp_path / "out.npz"
    outcome = run_cli(
        ["run", str(folder / "model.so"), "--batch", "3", "--repeat", "2", "-o", str(out)]
    )
    assert outcome.returncode == 0, outcome.describe()
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    with np.load(out) as result:
        _agree([result["relu"], result["pool"]], session(model).run(None, {"input": x}))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--inputs", "in.npz", "--fill", "zeros"], "not allowed with argument"),
        (["--repeat", "0"], "--repeat must be at least 1"),
        (["--warmup", "-1"], "--warmup must be 0 or more"),
        (["--inputs", "in.npz", "--batch", "2"], "--batch applies to --fill"),
        (["--batch", "0"], "--batch must be at least 1"),
    ],
)
def test_cli_run_refuses_bad_options(compiled, extra, message, capsys):
    _, _, folder = compiled
    try:
        code = main(["run", str(folder / "model.so"), *extra])
    except SystemExit as exit_:  # argparse's own refusal
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err


def _umask() -> int:
    from convforge.filemode import current_umask

    return current_umask()
