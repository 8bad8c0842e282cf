"""Records others can use: convforge's records exported as TVM MetaSchedule's JSONDatabase
apply in TVM; TVM's own tuning imported applies in convforge; ``match='cpu'`` lets a record
of another core count serve, never silently. Every number is checked against onnxruntime."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm.s_tir import meta_schedule as ms
from tvm_ffi.structural import structural_equal

import convforge as cf
from convforge import shapes
from convforge.build import recording_kernels
from convforge.commands.tune import ConvWorkload
from convforge.export import compare, conv_model, run_onnxruntime
from convforge.schedules import tuning
from convforge.schedules.cpu import generic_cpu_schedule
from convforge.targets import host_target, target_key

GEOM = shapes.conv_geometry((1, 8, 10, 10), (8, 8, 3, 3), padding=1)
# Depthwise: the same PrimFunc for every core count (dense convs may block by target).
DEPTHWISE = shapes.conv_geometry((1, 8, 9, 9), (8, 1, 3, 3), padding=1, groups=8)


def _inputs(geom, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal(geom.x_shape).astype(np.float32),
        rng.standard_normal(geom.w_shape).astype(np.float32),
    )


def _expected(geom, x, w):
    (y,) = run_onnxruntime(conv_model(geom), {"x": x, "w": w})
    return y


def _forced(db: Path, dest: Path) -> Path:
    """A copy of ``db`` whose defaults are made 'slow', so that its best record applies."""
    shutil.copytree(db, dest)
    for path in dest.glob("*/*.json"):
        path.write_text(json.dumps({**json.loads(path.read_text()), "default_seconds": 1e9}))
    return dest


@pytest.fixture(scope="module")
def tvm_tuned(tmp_path_factory):
    """A conv tuned by TVM itself (ms.tune_tir into a JSONDatabase, 2 trials)."""
    work = tmp_path_factory.mktemp("tvm-tuned")
    target = host_target()
    mod = tuning.workload_module(ConvWorkload("c", GEOM).prim_func(target))
    with tuning._cpu_tensor_intrinsics_only(target), tuning._meta_schedule_console(False):  # ~25 s
        database = ms.tune_tir(
            mod, target, str(work), max_trials_global=2, num_trials_per_iter=2,
            builder=tuning.make_builder(), runner=tuning.make_runner(),
            strategy=tuning._search_strategy(2), seed=1,
        )  # fmt: skip
    assert len(database.get_all_tuning_records()) >= 1
    return work, mod


@pytest.mark.slow
def test_a_record_tvm_tuned_imports_and_applies(tvm_tuned, tmp_path):
    work, mod = tvm_tuned
    target = host_target()
    db = tmp_path / "db"
    summary = tuning.import_metaschedule(work, db, measure_on=target)
    source = ms.database.JSONDatabase(work_dir=str(work))
    theirs = source.get_all_tuning_records()
    assert summary.records == len(theirs) and summary.measured == 1
    assert summary.targets == {target_key(target): 1}
    payload = json.loads(tuning.workload_file(db, mod, target).read_text())
    assert payload["seeded"] and payload["default_seconds"] > 0
    stored = {json.dumps(r[0]) for r in payload["records"]}
    assert {json.dumps(tuning.record_json(r)[0]) for r in theirs} <= stored
    # Importing again adds nothing.
    assert tuning.import_metaschedule(work, db).added == 0
    # TVM's record computes the onnxruntime result in convforge, forced to apply.
    x, w = _inputs(GEOM)
    forced = _forced(db, tmp_path / "forced")
    with cf.use_tuning_db(forced, shipped=False), recording_kernels() as kernels:
        y = cf.conv(x, w, padding=1)
    assert kernels[0].tuning_record is not None
    assert compare(y, _expected(GEOM, x, w)).ok


def test_export_applies_in_tvm_and_round_trips(tmp_path):
    target = host_target()
    func = ConvWorkload("c", GEOM).prim_func(target)
    mod = tuning.workload_module(func)
    db = tmp_path / "db"
    _seed_file(db, target, func)  # convforge's seed record (its trace: the default rules')
    _seed_file(db, _other_cores(target), func)  # and one for another target
    payload = json.loads(tuning.workload_file(db, mod, target).read_text())
    out = tmp_path / "exported"
    summary = tuning.export_metaschedule(db, out)
    assert (summary.workloads, summary.records, summary.skipped) == (1, 2, 0)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [tuning.MS_WORKLOAD_FILE, tuning.MS_RECORD_FILE]
    )
    # TVM reads it and applies the record of this target to the workload's PrimFunc.
    database = ms.database.JSONDatabase(work_dir=str(out))
    assert len(database.get_all_tuning_records()) == summary.records
    sch = ms.tir_integration.compile_tir(database, mod, target)
    assert sch is not None
    executable = tvm.compile(sch.mod, target=target)
    x, w = _inputs(GEOM, seed=1)
    args = [tvm.runtime.tensor(a) for a in (x, w, np.empty(GEOM.out_shape, np.float32))]
    executable["main"](*args)
    assert compare(args[2].numpy(), _expected(GEOM, x, w)).ok
    # Round trip: importing the export gives back the same records, each under its target.
    again = tmp_path / "again"
    imported = tuning.import_metaschedule(out, again)
    assert imported.added == 2 and len(imported.targets) == 2
    back = json.loads(tuning.workload_file(again, mod, target).read_text())
    assert back["records"] == payload["records"]
    assert back["default_seconds"] is None  # not measured without measure_on


def test_import_and_export_refuse_bad_directories(tmp_path):
    with pytest.raises(ValueError, match=r"has no database_workload\.json"):
        tuning.import_metaschedule(tmp_path, tmp_path / "db")
    (tmp_path / tuning.MS_WORKLOAD_FILE).write_text("not json\n")
    (tmp_path / tuning.MS_RECORD_FILE).write_text("")
    with pytest.raises(ValueError, match="not a MetaSchedule JSON database"):
        tuning.import_metaschedule(tmp_path, tmp_path / "db")
    with pytest.raises(ValueError, match="not a tuning database directory"):
        tuning.export_metaschedule(tmp_path / "missing", tmp_path / "out")


def _other_cores(target: tvm.target.Target) -> tvm.target.Target:
    return tvm.target.Target({**target.export(), "num-cores": int(target.attrs["num-cores"]) + 6})


def _seed_file(db: Path, target: tvm.target.Target, func) -> None:
    """A database file for ``target`` whose seed record beats its (made-up) default."""
    mod = tuning.workload_module(func)
    sch = generic_cpu_schedule(mod["main"], target)
    workload = ms.database.Workload(mod)
    args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    seed = ms.database.TuningRecord(sch.trace, workload, [1e-6], target, args)
    tuning.merge_records(
        tuning.workload_file(db, mod, target), target, workload, [], default_seconds=1.0,
        seed=tuning.record_json(seed),
    )  # fmt: skip


def test_match_cpu_uses_another_core_counts_record_and_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv(tuning.MATCH_ENV, raising=False)
    host = host_target()
    other = _other_cores(host)
    assert target_key(other) != target_key(host)
    func = ConvWorkload("dw", DEPTHWISE).prim_func(host)
    assert structural_equal(func, ConvWorkload("dw", DEPTHWISE).prim_func(other))
    _seed_file(tmp_path, other, func)
    with cf.use_tuning_db(tmp_path, shipped=False):
        assert tuning.tuned_module(func, host) is None  # exact: never another core count
        exact_state = tuning.database_state(host)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with cf.use_tuning_db(tmp_path, shipped=False, match="cpu"):
            assert tuning.database_state(host) != exact_state  # a cache-key part
            mod = tuning.tuned_module(func, host)
            assert mod is not None
            assert f"tuned for {int(other.attrs['num-cores'])} cores" in str(
                mod.attrs[tuning.RECORD_ATTR]
            )
            assert tuning.tuned_module(func, host) is not None
    said = [w for w in caught if issubclass(w.category, tuning.CoreCountMatchWarning)]
    assert len(said) == 1 and str(tmp_path) in str(said[0].message)  # once
    # The environment variable opts in as well; a bad value is refused.
    monkeypatch.setenv(tuning.MATCH_ENV, "cpu")
    with cf.use_tuning_db(tmp_path, shipped=False):
        assert tuning.active_match() == "cpu"
        assert tuning.tuned_module(func, host) is not None
    monkeypatch.setenv(tuning.MATCH_ENV, "cores")
    with pytest.raises(ValueError, match="CONVFORGE_TUNING_MATCH must be one of exact, cpu"):
        tuning.active_match()
    with pytest.raises(ValueError, match="match must be one of exact, cpu"):
        cf.use_tuning_db(tmp_path, match="any")


def test_match_cpu_kernel_matches_onnxruntime(tmp_path, monkeypatch):
    monkeypatch.delenv(tuning.MATCH_ENV, raising=False)
    host = host_target()
    func = ConvWorkload("dw", DEPTHWISE).prim_func(host)
    _seed_file(tmp_path, _other_cores(host), func)
    x, w = _inputs(DEPTHWISE)
    with (
        cf.use_tuning_db(tmp_path, shipped=False, match="cpu"),
        recording_kernels() as kernels,
        pytest.warns(tuning.CoreCountMatchWarning),
    ):
        y = cf.conv(x, w, padding=1, groups=8)
    assert "cores" in kernels[0].tuning_record
    assert compare(y, _expected(DEPTHWISE, x, w)).ok


def test_db_command_exports_and_imports(tmp_path, capsys, monkeypatch):
    from convforge.cli import main

    monkeypatch.delenv(tuning.DB_ENV, raising=False)
    host = host_target()
    func = ConvWorkload("dw", DEPTHWISE).prim_func(host)
    db, out, back = tmp_path / "db", tmp_path / "ms", tmp_path / "back"
    _seed_file(db, host, func)
    assert main(["db", "export", "--format", "metaschedule", str(out), "--db", str(db)]) == 0
    assert "wrote 1 records of 1 workloads" in capsys.readouterr().out
    assert len(ms.database.JSONDatabase(work_dir=str(out)).get_all_tuning_records()) == 1
    argv = ["db", "import", "--format", "metaschedule", str(out), "--db", str(back)]
    assert main([*argv, "--no-measure", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["added"] == 1 and summary["unmeasured"] == 1
    mod = tuning.workload_module(func)
    (original,) = json.loads(tuning.workload_file(db, mod, host).read_text())["records"]
    (imported,) = json.loads(tuning.workload_file(back, mod, host).read_text())["records"]
    assert imported == original
    # Bad input: one line, exit 2.
    assert main(["db", "import", "--format", "metaschedule", str(tmp_path / "no"), "--db",
                 str(back), "--no-measure"]) == 2  # fmt: skip
    assert "has no database_workload.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # --format is required (argparse: exit 2)
        main(["db", "export", str(out), "--db", str(db)])
    assert exited.value.code == 2


def test_the_match_mode_is_part_of_the_model_cache_key(tmp_path, monkeypatch):
    from convforge.export import model_cache

    monkeypatch.setenv("CONVFORGE_CACHE", "1")
    monkeypatch.setenv("CONVFORGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(tuning.MATCH_ENV, raising=False)
    model = conv_model(GEOM)
    db = tmp_path / "db"
    db.mkdir()
    exact = model_cache.key_parts(model, host_target(), {}, tuning_db=db)
    assert exact is not None
    with tuning.use_tuning_match("cpu"):
        cpu = model_cache.key_parts(model, host_target(), {}, tuning_db=db)
    monkeypatch.setenv(tuning.MATCH_ENV, "cpu")
    from_env = model_cache.key_parts(model, host_target(), {}, tuning_db=db)
    assert exact != cpu == from_env


@pytest.mark.parametrize("command", ["compile", "check", "report"])
def test_model_commands_take_tuning_match(command, monkeypatch):
    from convforge.cli import build_parser
    from convforge.commands._model_args import tuning_match

    monkeypatch.delenv(tuning.MATCH_ENV, raising=False)
    extra = ["-o", "m.so"] if command == "compile" else []
    args = build_parser().parse_args([command, "m.onnx", "--tuning-match", "cpu", *extra])
    with tuning_match(args):
        assert tuning.active_match() == "cpu"
    assert tuning.active_match() == "exact"
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "m.onnx", "--tuning-match", "cores", *extra])
