"""Tuning the knobs of convforge's plans (convforge.knob_tuning, `convforge tune`): records
in the tuning database, resumed runs, lookups that apply a record only when it beats the
default, `--budget` over a model. Oracles: numpy / onnxruntime for every number, the
database files for counts."""

from __future__ import annotations

import json
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import convforge as cf
from convforge import knobs, reference, shapes
from convforge.build import recording_kernels
from convforge.commands.tune import budget_shares, onnx_workloads, parse_duration
from convforge.export import compare, run_onnxruntime
from convforge.export.model import import_model
from convforge.knob_tuning import default_plan, tune_knobs
from convforge.plan import plan_conv
from convforge.schedules import tuning
from convforge.targets import host_target
from tests.isolated import run_cli

#: A small grouped convolution: 15 configurations, each compiles in well under a second.
X, W = (1, 8, 10, 10), (8, 2, 3, 3)


def _geom():
    return shapes.conv_geometry(X, W, padding=1, groups=4)


def _payload(db: Path) -> dict:
    (path,) = db.glob(f"*/*{knobs.KNOB_SUFFIX}")
    return json.loads(path.read_text())


def _forced(db: Path, to: Path) -> Path:
    """A copy of ``db`` whose fastest-measured configuration is confirmed twice as fast as
    the default (so that it applies)."""
    shutil.copytree(db, to)
    (path,) = to.glob(f"*/*{knobs.KNOB_SUFFIX}")
    payload = json.loads(path.read_text())
    timed = [r for r in payload["records"] if r["run_secs"]]
    fastest = min(timed, key=lambda r: sum(r["run_secs"]))["config"]
    payload["confirmations"] = [{"config": fastest, "ratio": 0.5, "rounds": 3}]
    path.write_text(json.dumps(payload))
    return to


def test_tune_knobs_resumes_and_a_winning_record_changes_the_plan(tmp_path):
    plan = plan_conv(_geom(), "float32", host_target(), tuned=False)
    db = tmp_path / "db"
    seen = []
    first = tune_knobs(plan, db, 2, seed=0, progress=lambda *a: seen.append(a))
    confirmations = [(first, _payload(db)["confirmations"])]
    assert first.trials == first.new_trials == 2 and first.space_size == len(knobs.knob_space(plan))
    assert seen[-1] == (2, 2, first.best_seconds)  # the last report is the result's figure
    payload = _payload(db)
    assert payload["kind"] == "knobs" and payload["default_seconds"] > 0
    measured = {knobs.config_key(r["config"]) for r in payload["records"]}
    assert len(measured) == 2 and knobs.config_key(knobs.knob_space(plan).default) not in measured
    again = tune_knobs(plan, db, 3, seed=0)  # resumes: measures only what it lacks
    confirmations.append((again, _payload(db)["confirmations"]))
    assert again.trials == 3 and again.new_trials == 1
    assert again.best_seconds <= again.default_seconds
    # A gain is reported only where the run's own confirmation shows one (a later run may
    # confirm the same configuration again, with the machine's noise).
    for run, made in confirmations:
        confirmed = {knobs.config_key(c["config"]): c["ratio"] for c in made}
        if run.best_config is not None:
            assert confirmed[knobs.config_key(run.best_config)] < knobs.CONFIRM_MARGIN

    # Lookups: the default plan unless a record beats the default's figure.
    with tuning.use_tuning_db(db, shipped=False):
        best = knobs.KnobRecords.load(
            knobs.records_file(db, plan), tuning.target_key(plan.target), knobs.plan_text(plan)
        ).best()
        expected = plan if best is None else knobs.with_knobs(plan, best[0])
        assert plan_conv(_geom(), "float32", host_target()) == expected
    forced = _forced(db, tmp_path / "forced")
    x = np.random.default_rng(0).standard_normal(X).astype(np.float32)
    w = np.random.default_rng(1).standard_normal(W).astype(np.float32)
    oracle = (reference.conv_matrix(w.astype(np.float64), _geom()) @ x.reshape(-1)).reshape(
        _geom().out_shape
    )
    with tuning.use_tuning_db(forced, shipped=False):
        tuned = plan_conv(_geom(), "float32", host_target())
        assert tuned != plan and tuned.algorithm.knobs  # a record's knobs
        assert plan_conv(_geom(), "float32", host_target(), algorithm="direct") == plan
        with recording_kernels() as kernels:
            y = cf.conv(x, w, padding=1, groups=4)
        assert "schedule_knobs" in str(kernels[0].func)
    np.testing.assert_allclose(y, oracle, rtol=0, atol=1e-5 * np.abs(oracle).max())


def test_a_corrupt_or_foreign_knob_file_is_skipped(tmp_path):
    plan = plan_conv(_geom(), "float32", host_target(), tuned=False)
    path = knobs.records_file(tmp_path, plan)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00garbage")
    with (
        tuning.use_tuning_db(tmp_path, shipped=False),
        pytest.warns(tuning.CorruptRecordWarning, match="could not be used"),
    ):
        assert plan_conv(_geom(), "float32", host_target()) == plan
    record = {"config": {"algorithm": "direct", "accumulators": 99, "threads": 0}}
    path.write_text(
        json.dumps({
            "format": 1, "kind": "knobs", "target": tuning.target_key(plan.target),
            "plan": knobs.plan_text(plan), "default_seconds": 1.0,
            "records": [{**record, "run_secs": [1e-6]}],
            "confirmations": [{**record, "ratio": 0.5, "rounds": 3}],
        })
    )  # fmt: skip
    with tuning.use_tuning_db(tmp_path, shipped=False):  # a config outside the space
        assert plan_conv(_geom(), "float32", host_target()) == plan


def test_bad_arguments_are_refused_before_tuning(tmp_path):
    plan = plan_conv(_geom(), "float32", host_target(), tuned=False)
    with pytest.raises(ValueError, match="trials must be an integer >= 0"):
        tune_knobs(plan, tmp_path, -1)
    with pytest.raises(ValueError, match="time_limit_s must be positive"):
        tune_knobs(plan, tmp_path, 1, time_limit_s=0)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is not a directory"):
        tune_knobs(plan, tmp_path / "file", 1)
    for text, seconds in (("90", 90), ("30s", 30), ("20m", 1200), ("1h30m", 5400)):
        assert parse_duration(text) == seconds
    for text in ("", "abc", "0", "20 minutes", "-5s"):
        with pytest.raises(ValueError, match="--budget must be"):
            parse_duration(text)


def test_budget_shares_follow_the_kernels_time():
    shares = budget_shares({"a": 6.0, "b": 3.0, "c": 1.0, "d": 0.0}, 100.0, least_s=5.0)
    assert shares == pytest.approx({"a": 60.0, "b": 30.0, "c": 10.0})
    # c's share (10% of 40 s) is under 5 s: its time goes to the others
    assert budget_shares({"a": 6.0, "b": 3.0, "c": 1.0}, 40.0, least_s=5.0) == pytest.approx(
        {"a": 40 * 6 / 9, "b": 40 * 3 / 9}
    )
    assert budget_shares({"a": 1.0}, 1.0, least_s=5.0) == {}


def _conv_relu_maxpool(path: Path) -> Path:
    """Conv(4 -> 16, 3x3, pad 1, bias) -> Relu -> MaxPool(2x2) on 1x4x16x16 (one kernel)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], "Conv_0", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["r"], "Relu_1"),
        helper.make_node("MaxPool", ["r"], ["y"], "MaxPool_2", kernel_shape=[2, 2], strides=[2, 2]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "crp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


def _check_budget_run(lines: list[str], budget: str, db: Path, model: Path, tmp: Path) -> None:
    assert any(line.startswith(f"budget {budget}: default build") for line in lines), lines
    (model_line,) = [line for line in lines if line.startswith("model ")]
    assert re.search(r"default [\d.]+ ms -> tuned [\d.]+ ms \([\d.]+x", model_line)
    assert any(re.match(r"  Conv:Conv_0 \([\d.]+% of the model\): ", line) for line in lines)
    payload = _payload(db)
    assert payload["records"] and payload["default_seconds"] > 0
    x = np.random.default_rng(1).standard_normal((1, 4, 16, 16)).astype(np.float32)
    (expected,) = run_onnxruntime(onnx.load(str(model)), {"x": x})
    forced = _forced(db, tmp / "forced")
    _, ctx, _ = import_model(str(model), host_target(), tuning_db=forced)
    (plan,) = ctx.plans.values()  # the lowering planned the conv with the forced record
    assert plan.algorithm.knobs or plan != default_plan(plan), plan
    for tuning_db in (db, forced):
        compiled = cf.compile_model(str(model), tuning_db=tuning_db)
        (record,) = compiled.metadata["kernels"]
        assert record["fused"] == ["Relu_1", "MaxPool_2"]
        (y,) = compiled(x)
        assert compare(y, expected).ok


def test_tune_onnx_budget_tunes_knobs_and_compares_the_model(tmp_path, capsys):
    """`convforge tune --onnx MODEL --budget 12s` (in this process): the planned conv (its
    pool and Relu fused) is tuned by knobs within the budget; per kernel and whole-model
    lines; the build with the database (and with its fastest record forced) agrees with
    onnxruntime."""
    from convforge.cli import main

    model = _conv_relu_maxpool(tmp_path / "crp.onnx")
    (kernel,) = onnx_workloads(str(model))
    assert kernel.conv_plan is not None and kernel.conv_plan.pool is not None
    db = tmp_path / "db"
    began = time.monotonic()
    assert main(["tune", "--onnx", str(model), "--budget", "12s", "--db", str(db)]) == 0
    assert time.monotonic() - began < 12 + 20  # the budget, give or take a batch
    _check_budget_run(capsys.readouterr().out.splitlines(), "12s", db, model, tmp_path)


@pytest.mark.slow
def test_tune_onnx_budget_30s_cli(tmp_path):
    """The same through the CLI in a new interpreter, with the issue's 30 s budget."""
    model = _conv_relu_maxpool(tmp_path / "crp.onnx")
    db = tmp_path / "db"
    began = time.monotonic()
    argv = ["tune", "--onnx", str(model), "--budget", "30s", "--db", str(db)]
    outcome = run_cli(argv, timeout=240)
    assert outcome.returncode == 0, outcome.describe()
    assert time.monotonic() - began < 30 + 60  # the budget, the interpreter's start, imports
    _check_budget_run(outcome.stdout.splitlines(), "30s", db, model, tmp_path)


@pytest.mark.slow
def test_a_killed_knob_run_resumes(tmp_path):
    """kill -9 at a random moment after the first record: the file is whole and the same
    command finishes the run with exactly the trials asked."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    db = tmp_path / "db"
    argv = [
        sys.executable, "-m", "convforge", "tune", "--conv", "x=1,8,10,10", "w=8,2,3,3",
        "padding=1", "groups=4", "--trials", "8", "--db", str(db),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not list(db.glob(f"*/*{knobs.KNOB_SUFFIX}")) or not _payload(db)["records"]:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(float(np.random.default_rng().uniform(0, 2)))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    kept = len(_payload(db)["records"])
    assert kept >= 1
    subprocess.run(argv, env=env, check=True, timeout=300, capture_output=True)
    configs = {knobs.config_key(r["config"]) for r in _payload(db)["records"]}
    assert len(configs) == 8


def test_copy_best_records_ships_only_winning_knob_configs(tmp_path):
    """``copy_best_records`` (how convforge/tuned is made) keeps a knob file's winning
    configuration only, drops a file with no winner, and the copy serves lookups."""
    plan = plan_conv(_geom(), "float32", host_target(), tuned=False)
    key, text = tuning.target_key(plan.target), knobs.plan_text(plan)
    fast = {"algorithm": "direct", "accumulators": 4, "threads": 2}
    slow = {"algorithm": "direct", "accumulators": 8, "threads": 0}
    path = knobs.records_file(tmp_path / "src", plan)
    records = [{"config": fast, "run_secs": [1e-5]}, {"config": slow, "run_secs": [5e-5]}]
    confirmed = [{"config": fast, "ratio": 0.6, "rounds": 3}]
    knobs.merge_knob_records(path, key, text, records, 2e-5, confirmed)
    assert tuning.copy_best_records(tmp_path / "src", tmp_path / "dst") == 1
    (copied,) = (tmp_path / "dst").glob(f"*/*{knobs.KNOB_SUFFIX}")
    assert [r["config"] for r in json.loads(copied.read_text())["records"]] == [fast]
    with tuning.use_tuning_db(tmp_path / "dst", shipped=False):
        assert plan_conv(_geom(), "float32", host_target()) == knobs.with_knobs(plan, fast)
    # a later confirmation above the margin: nothing beats the default
    knobs.merge_knob_records(path, key, text, [], None, [{**confirmed[0], "ratio": 0.99}])
    assert tuning.copy_best_records(tmp_path / "src", tmp_path / "dst2") == 0


@pytest.mark.slow
def test_knobs_tune_over_an_rpc_tracker_with_two_servers(tmp_path):
    """A tracker and two servers on this machine (tests/test_tuning.py's fixture): the knob
    tuner measures through MetaSchedule's RPCRunner; every configuration is recorded with
    its timings and the result's figures are the file's."""
    from tests.test_tuning import rpc_servers

    plan = plan_conv(shapes.conv_geometry((1, 16, 16, 16), (16, 16, 3, 3), padding=1),
                     "float32", host_target(), tuned=False)  # fmt: skip
    with rpc_servers() as (tracker, _):
        result = tune_knobs(plan, tmp_path, 6, rpc=tracker, jobs=2, seed=0)
    assert result.trials == 6 and result.new_trials == 6
    payload = _payload(tmp_path)
    assert all(r["run_secs"] or "error" in r for r in payload["records"])
    assert sum(bool(r["run_secs"]) for r in payload["records"]) >= 5
    assert result.default_seconds == payload["default_seconds"] > 0


def test_shipped_knob_records_are_confirmed_winners():
    """Every knob record shipped in convforge/tuned reads back whole and holds a
    configuration confirmed faster than the default that does not force one thread."""
    shipped = sorted(tuning.SHIPPED_DB.glob(f"*/*{knobs.KNOB_SUFFIX}"))
    for path in shipped:
        payload = json.loads(path.read_text())
        records = knobs.KnobRecords.load(path, payload["target"], payload["plan"])
        assert records is not None and path.parent.name == tuning._digest(payload["target"])
        config, seconds = records.best()
        assert seconds < records.default_seconds and config.get("threads") != 1
