"""MetaSchedule tuning: records agree with onnxruntime, persist per target, survive kills, RPC.

Every tuned schedule is checked against onnxruntime running the equivalent ONNX graph.
Latencies compared here are MetaSchedule's own measurements stored in the database (no
wall-clock timing in tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tvm
import tvm_ffi
from onnx import helper
from tvm.s_tir.meta_schedule.database import TuningRecord, Workload
from tvm_ffi.structural import structural_equal

import convforge as cf
from convforge import shapes
from convforge.build import Kernel, recording_kernels
from convforge.commands.tune import ConvWorkload, onnx_workloads, parse_conv
from convforge.export import compare, conv_model, conv_transpose_model, run_onnxruntime
from convforge.export.onnx_graphs import flat_pads, make_model
from convforge.schedules import tuning
from convforge.targets import host_target, target_key

ROOT = Path(__file__).resolve().parents[1]
GEOM = shapes.conv_geometry((1, 16, 14, 14), (16, 16, 3, 3), padding=1)
WORKLOAD = ConvWorkload("small", GEOM, bias=True, activation="relu")
TRIALS = 8


def _inputs(geom, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal(geom.x_shape).astype(np.float32),
        rng.standard_normal(geom.w_shape).astype(np.float32),
        rng.standard_normal(geom.out_channels).astype(np.float32),
    )


def _onnxruntime(geom, x, w, b):
    (expected,) = run_onnxruntime(
        conv_model(geom, bias=True, activation="relu"), {"x": x, "w": w, "bias": b}
    )
    return expected


def _kernel(mod: tvm.IRModule, geom, bias: bool = True) -> Kernel:
    """``mod`` (a scheduled conv of ``geom``) compiled for the host, callable on numpy."""
    inputs = (geom.x_shape, geom.w_shape, *([(geom.out_channels,)] if bias else []))
    executable = tvm.compile(mod, target=host_target())
    return Kernel("conv", executable, host_target(), inputs, (geom.out_shape,), ("float32",))


def _env():
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop a process started with start_new_session=True and its children (same group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _database_files(db: Path) -> list[Path]:
    """Record files of a database (not the temp files of a write in progress)."""
    return [p for p in db.glob("*/*.json") if not p.name.startswith(".")]


def _records(path: Path) -> list:
    """Raw records of a database file (MetaSchedule's JSON: [trace, run_secs, target, args])."""
    return json.loads(path.read_text())["records"] if path.exists() else []


def _seconds(record: list) -> float | None:
    """Mean latency of a raw record, None for a failed build or run."""
    run_secs = [float(s) for s in record[1] or []]
    return sum(run_secs) / len(run_secs) if run_secs and max(run_secs) < 1e9 else None


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A small conv tuned with candidates measured by two RPC servers through a tracker."""
    db = tmp_path_factory.mktemp("tuning-db")
    PROGRESS.clear()
    with rpc_servers() as (tracker, _):
        result = tuning.tune(
            WORKLOAD.prim_func(host_target()), host_target(), db, TRIALS, rpc=tracker, jobs=2,
            seed=1, progress=lambda *call: PROGRESS.append(call),
        )  # fmt: skip
    return db, result


#: The ``progress`` calls of the ``tuned`` run: (done, total, best_seconds).
PROGRESS: list[tuple[int, int, float]] = []


def test_tuning_measures_candidates_and_never_loses_to_default(tuned):
    _, result = tuned
    payload = json.loads(result.database_file.read_text())
    records = payload["records"]
    assert result.trials == TRIALS and result.new_trials == TRIALS
    assert len(records) == TRIALS + payload["seeded"]  # the seed first, then the candidates
    measured = [_seconds(r) for r in records if _seconds(r) is not None]
    assert len(measured) > payload["seeded"], "no candidate was measured"
    assert payload["default_seconds"] == result.default_seconds
    assert result.best_seconds == min([result.default_seconds, *measured])
    # Progress per candidate (RPC futures report as each completes), never backwards, and
    # its last figures are the result's.
    done = [call[0] for call in PROGRESS]
    assert done[0] == 0 and done[-1] == TRIALS and done == sorted(done)
    assert len(set(done) & set(range(1, TRIALS))) >= TRIALS // 2, PROGRESS
    assert PROGRESS[-1][2] == result.best_seconds


def _replayed(record, func) -> tvm.IRModule | None:
    """``func`` scheduled by ``record``'s trace, or None if the trace does not replay."""
    sch = tvm.s_tir.Schedule(tuning.workload_module(func))
    try:
        record.trace.apply_to_schedule(sch, remove_postproc=False)
    except RuntimeError:
        return None
    return sch.mod


def _expected_record(db, func) -> str | None:
    """What a lookup must answer: the fastest replayable record beating the default."""
    for record in tuning.ranked_records(func, host_target(), db):
        if _replayed(record, func) is not None:
            return f"{db}@{sum(map(float, record.run_secs)) / len(record.run_secs):.6g}s"
    return None


def test_every_tuned_record_matches_onnxruntime(tuned):
    _, result = tuned
    x, w, b = _inputs(GEOM)
    expected = _onnxruntime(GEOM, x, w, b)
    payload = json.loads(result.database_file.read_text())
    workload = Workload.from_json(payload["workload"])
    records = [TuningRecord.from_json(r, workload) for r in payload["records"]]
    modules = [m for m in (_replayed(r, workload.mod["main"]) for r in records) if m is not None]
    assert modules, "no record replays"
    for mod in modules:
        assert compare(_kernel(mod, GEOM)(x, w, b), expected).ok


def test_numpy_api_uses_the_best_record_and_matches_onnxruntime(tuned):
    db, _ = tuned
    x, w, b = _inputs(GEOM, seed=1)
    with tuning.use_tuning_db(db, shipped=False), recording_kernels() as kernels:
        y = cf.conv(x, w, b, padding=1, activation="relu")
    (kernel,) = kernels
    assert kernel.tuning_record == _expected_record(db, WORKLOAD.prim_func(host_target()))
    assert compare(y, _onnxruntime(GEOM, x, w, b)).ok
    with tuning.use_tuning_db(None, shipped=False), recording_kernels() as kernels:
        cf.conv(x, w, b, padding=1, activation="relu")
    assert kernels[0].tuning_record is None


def test_record_reloads_and_applies_in_a_new_process(tuned, tmp_path):
    db, _ = tuned
    x, w, b = _inputs(GEOM, seed=2)
    np.savez(tmp_path / "in.npz", x=x, w=w, b=b)
    script = textwrap.dedent(
        f"""
        import numpy as np, convforge as cf
        from tvm.s_tir import meta_schedule as ms
        def no_tuning(*args, **kwargs):
            raise AssertionError("tuned in the new process")
        ms.tune_tir = ms.tune_tasks = no_tuning
        d = np.load({str(tmp_path / "in.npz")!r})
        y = cf.conv(d["x"], d["w"], d["b"], padding=1, activation="relu")
        (kernel,) = cf.build._cache.values()
        np.save({str(tmp_path / "y.npy")!r}, y)
        print(kernel.tuning_record)
        """
    )
    env = {**_env(), tuning.DB_ENV: str(db)}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    ranked = tuning.ranked_records(WORKLOAD.prim_func(host_target()), host_target(), db)
    names = {f"{db}@{sum(map(float, r.run_secs)) / len(r.run_secs):.6g}s" for r in ranked}
    assert out.stdout.strip() in (names or {"None"})
    assert compare(np.load(tmp_path / "y.npy"), _onnxruntime(GEOM, x, w, b)).ok


def _other_target() -> tvm.target.Target:
    """A CPU other than the host that the host can still run (to measure its baseline)."""
    host = host_target()
    mcpu = "znver3" if str(host.attrs["mcpu"]) == "znver4" else "x86-64"
    return tvm.target.Target(
        {
            **{k: v for k, v in host.export().items() if k in ("kind", "mtriple", "num-cores")},
            "mcpu": mcpu,
        }
    )


def test_records_of_another_cpu_are_never_applied(tmp_path):
    # Depthwise: the same PrimFunc on both CPUs (dense convs get target-specific NCHWc blocks).
    geom = shapes.conv_geometry((1, 8, 9, 9), (8, 1, 3, 3), padding=1, groups=8)
    work = ConvWorkload("other", geom, bias=True, activation="relu")
    other = _other_target()
    func = work.prim_func(other)
    assert structural_equal(func, work.prim_func(host_target()))
    result = tuning.tune(func, other, tmp_path, 0)
    # Make the seed record "faster than the default" so that it would apply on its target.
    payload = json.loads(result.database_file.read_text())
    payload["default_seconds"] = 1e9
    result.database_file.write_text(json.dumps(payload))
    assert tuning.best_record(func, other, tmp_path) is not None
    assert tuning.best_record(func, host_target(), tmp_path) is None
    # Even a file moved under the host's directory names its target and is refused.
    misplaced = tuning.workload_file(tmp_path, tuning.workload_module(func), host_target())
    misplaced.parent.mkdir(parents=True)
    shutil.copy(result.database_file, misplaced)
    x, w, b = _inputs(geom)
    with tuning.use_tuning_db(tmp_path, shipped=False), recording_kernels() as kernels:
        assert tuning.tuned_module(func, other) is not None
        assert tuning.tuned_module(func, host_target()) is None
        y = cf.conv(x, w, b, padding=1, groups=8, activation="relu")
    assert kernels[0].tuning_record is None
    assert compare(y, _onnxruntime(geom, x, w, b)).ok


# --------------------------------------------------------------------------- RPC


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args, "--host", "127.0.0.1", "--silent"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def rpc_servers():
    """A TVM RPC tracker and two RPC servers (key 'local') on 127.0.0.1, all stopped after."""
    port = _free_port()
    procs = [_start("tvm.exec.rpc_tracker", "--port", str(port), "--port-end", str(port + 1))]
    try:
        for _ in range(2):
            server = _free_port()
            ports = ["--port", str(server), "--port-end", str(server + 1)]
            tracker = ["--tracker", f"127.0.0.1:{port}", "--key", "local"]
            procs.append(_start("tvm.exec.rpc_server", *tracker, *ports))
        deadline = time.monotonic() + 120
        while True:
            try:
                summary = tvm.rpc.connect_tracker("127.0.0.1", port).summary()
                free = summary["queue_info"].get("local", {}).get("free", 0)
                if free >= 2:
                    break
            except (RuntimeError, ConnectionError, OSError):
                pass
            assert time.monotonic() < deadline, "RPC servers did not register"
            time.sleep(0.5)
        yield tuning.RPCTracker("127.0.0.1", port, "local"), procs[1:]
    finally:
        for proc in procs:
            _kill_group(proc)


@pytest.mark.slow
def test_rpc_server_killed_mid_run_neither_aborts_tuning_nor_loses_records(tmp_path):
    geom = shapes.conv_geometry((1, 16, 16, 16), (16, 16, 3, 3), padding=1)
    func = ConvWorkload("rpc-kill", geom).prim_func(host_target())
    seen_before_kill = []
    with rpc_servers() as (tracker, servers):

        def progress(done, total, best):
            if done >= 16 and not seen_before_kill:
                seen_before_kill.append(len(_records(_database_files(tmp_path)[0])))
                _kill_group(servers[0])

        result = tuning.tune(
            func, host_target(), tmp_path, 48, rpc=tracker, jobs=2, progress=progress
        )
    records = _records(result.database_file)
    assert seen_before_kill and len(records) == 49 >= seen_before_kill[0]
    assert sum(_seconds(r) is not None for r in records[seen_before_kill[0] :]) > 0


# --------------------------------------------------------------------------- CLI input


def test_onnx_workloads_are_the_kernels_compile_model_looks_up(tmp_path, monkeypatch):
    """``convforge tune --onnx`` tunes exactly the PrimFuncs compile_model asks the tuning
    database for: fused epilogues, constant weights packed, grouped and transposed forms."""
    conv = shapes.conv_geometry(
        (1, 4, 9, 9), (6, 2, 3, 3), stride=2, padding=((1, 0), (0, 1)), groups=2
    )
    dense = shapes.conv_geometry(conv.out_shape, (5, 6, 3, 3), padding=1)
    up = shapes.conv_transpose_geometry(
        dense.out_shape, (5, 3, 4, 4), stride=2, padding=1, output_padding=1
    )
    nodes = [
        helper.make_node(
            "Conv", ["x", "w", "bias"], ["c"], kernel_shape=list(conv.kernel),
            strides=list(conv.stride), pads=flat_pads(conv.padding), group=conv.groups,
        ),
        helper.make_node(
            "Conv", ["c", "w_dense"], ["d"], kernel_shape=list(dense.kernel),
            pads=flat_pads(dense.padding),
        ),
        helper.make_node("Relu", ["d"], ["r"]),
        helper.make_node(
            "ConvTranspose", ["r", "w2"], ["y"], kernel_shape=list(up.kernel),
            strides=list(up.stride), pads=flat_pads(up.padding),
            output_padding=list(up.output_padding),
        ),
    ]  # fmt: skip
    w_dense = np.random.default_rng(0).standard_normal(dense.w_shape).astype(np.float32)
    model = make_model(
        nodes,
        {"x": (conv.x_shape, "float32"), "w": (conv.w_shape, "float32"),
         "bias": ((conv.out_channels,), "float32"), "w2": (up.w_shape, "float32")},
        {"y": (up.out_shape, "float32")}, initializers={"w_dense": w_dense},
    )  # fmt: skip
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    found = onnx_workloads(str(path))
    assert [w.name.split(":")[0] for w in found] == ["Conv", "Conv", "ConvTranspose"]
    looked_up = []
    lookup = tuning.tuned_module

    def recording(func, target):
        looked_up.append(tvm_ffi.structural_hash(tuning.workload_module(func)))
        return lookup(func, target)

    monkeypatch.setattr(tuning, "tuned_module", recording)
    cf.compile_model(str(path))
    for workload in found:
        func = workload.prim_func(host_target())
        assert tvm_ffi.structural_hash(tuning.workload_module(func)) in looked_up, workload.name


def test_conv_spec_parsing_and_errors():
    work = parse_conv(["x=1,8,10,10", "w=4,8,3,3", "stride=2", "padding=same", "bias=1"], 0)
    assert work.geometry == shapes.conv_geometry(
        (1, 8, 10, 10), (4, 8, 3, 3), stride=2, padding="same"
    )
    assert work.bias
    with pytest.raises(ValueError, match=r"x=\.\.\. and w="):
        parse_conv(["w=4,8,3,3"], 0)
    with pytest.raises(ValueError, match="groups"):
        parse_conv(["x=1,8,10,10", "w=4,8,3,3", "groups=3"], 0)
    with pytest.raises(ValueError, match="trials"):
        tuning.tune(WORKLOAD.prim_func(host_target()), host_target(), "unused", -1)


# --------------------------------------------------------------------------- shipped records


def test_copy_best_records_keeps_the_default_and_the_fastest(tuned, tmp_path):
    db, result = tuned
    assert tuning.copy_best_records(db, tmp_path) == 1
    source = result.database_file
    copied = json.loads((tmp_path / source.parent.name / source.name).read_text())
    assert copied["default_seconds"] == result.default_seconds
    assert len(copied["records"]) <= 3 + copied["seeded"]
    best = min([result.default_seconds, *(_seconds(r) for r in copied["records"])])
    assert best == result.best_seconds


def _recorded_target(key: str) -> tvm.target.Target:
    """The LLVM target a shipped record was tuned for (its key holds TVM's print of it)."""
    printed = json.loads(key)

    def field(name: str) -> str:
        return re.search(rf'"{name}": "?([\w.-]+)', printed).group(1)

    target = tvm.target.Target(
        {
            "kind": "llvm",
            "mtriple": field("mtriple"),
            "mcpu": field("mcpu"),
            "num-cores": int(field("num-cores")),
        }
    )
    assert target_key(target) == key
    return target


SHIPPED = sorted(p for p in tuning.SHIPPED_DB.glob("*/*.json") if not p.name.startswith("."))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_record_computes_the_onnxruntime_result(path):
    """Every shipped schedule, replayed for this host (whatever CPU it was tuned for)."""
    from convforge.commands.tune import WORKLOADS

    recorded = _recorded_target(json.loads(path.read_text())["target"])
    workload = mod = None
    for candidate in WORKLOADS.values():
        candidate_mod = tuning.workload_module(candidate.prim_func(recorded))
        if path.name == tuning.workload_file("", candidate_mod, recorded).name:
            workload, mod = candidate, candidate_mod
    assert workload is not None, f"{path.name} matches no named workload"
    geom = workload.geometry
    rng = np.random.default_rng(0)
    x = rng.standard_normal(geom.x_shape).astype(np.float32)
    w = rng.standard_normal(geom.w_shape).astype(np.float32)
    feeds = {"x": x, "w": w}
    if workload.bias:
        feeds["bias"] = rng.standard_normal(geom.out_channels).astype(np.float32)
    to_onnx = conv_model if isinstance(geom, shapes.ConvGeometry) else conv_transpose_model
    (expected,) = run_onnxruntime(to_onnx(geom, bias=workload.bias), feeds)
    for raw in json.loads(path.read_text())["records"]:
        record = TuningRecord.from_json(raw, Workload(mod))

        def apply(func, target, record=record):
            sch = tvm.s_tir.Schedule(mod)
            record.trace.apply_to_schedule(sch, remove_postproc=False)
            return sch.mod

        kernel = _kernel(apply(mod, host_target()), geom, bias=workload.bias)
        assert compare(kernel(*feeds.values()), expected).ok, path
