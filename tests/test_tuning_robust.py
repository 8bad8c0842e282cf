"""Robust tuning runs: a Conv -> Relu -> MaxPool model (its pool fused into the conv kernel,
whose trace holds an IndexMap) tunes end to end; a run killed with SIGKILL or stopped with
SIGINT resumes from its database; progress comes per candidate, as plain lines when stdout is
not a terminal. Oracles: onnxruntime for every number, the database files for counts."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import convforge as cf
from convforge.commands.tune import PlainProgress, ProgressState, onnx_workloads
from convforge.export import compare, run_onnxruntime
from convforge.schedules import tuning
from convforge.targets import host_target

ROOT = Path(__file__).resolve().parents[1]


def _conv_relu_maxpool(path: Path) -> Path:
    """Conv(4 -> 16, 3x3, pad 1, bias) -> Relu -> MaxPool(2x2, stride 2) on 1x4x12x12 (16
    output channels: a whole channel block of AVX-512 too, where the pool fuses)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    nodes = [
        helper.make_node(
            "Conv", ["x", "w", "b"], ["c"], "Conv_0", kernel_shape=[3, 3], pads=[1] * 4
        ),
        helper.make_node("Relu", ["c"], ["r"], "Relu_1"),
        helper.make_node("MaxPool", ["r"], ["y"], "MaxPool_2", kernel_shape=[2, 2], strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes, "crp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 6])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "PYTHONFAULTHANDLER": "1",
    }


def _sigint_default() -> None:
    """In a child before it runs: SIGINT handled as usual, as under a terminal (a test run
    launched as a background job ignores SIGINT, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def python_sigint():
    """Python's default SIGINT handler in this process for the test (restored after): the
    premise of ``tuning._interruptible``, which a background job's ignored SIGINT lacks."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


class _Tuner:
    """``convforge tune`` in a subprocess (its own process group, SIGINT as under a
    terminal), stdout read line by line (a pipe: not a terminal)."""

    def __init__(self, argv: list[str], stderr: Path) -> None:
        self.lines: list[str] = []
        self.stderr_path = stderr
        with stderr.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "convforge", "tune", *argv], env=_env(),
                stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True,
                preexec_fn=_sigint_default,
            )  # fmt: skip
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc.poll() is None, f"ended early: {self.describe()}"
            assert time.monotonic() < deadline, f"timed out: {self.describe()}"
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signum)  # the whole group, as a terminal's Ctrl-C

    def finish(self, timeout: float = 300) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self.signal(signal.SIGKILL)  # any worker left behind
            self.proc.wait(timeout=30)
        self.reader.join(timeout=30)
        return code

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def describe(self) -> str:
        return "stdout:\n" + "\n".join(self.lines[-20:]) + "\nstderr:\n" + self.stderr()[-3000:]


def _files(db: Path) -> list[Path]:
    return [p for p in db.glob("*/*.json") if not p.name.startswith(".")]


def _payload(db: Path) -> dict:
    (path,) = _files(db)
    return json.loads(path.read_text())


def _trials_line(lines: list[str], total: int) -> list[int]:
    """The trial counts of the plain progress lines ``NAME: k/total trials, ...``."""
    found = (re.search(rf": (\d+)/{total} trials, best ", line) for line in lines)
    return [int(m.group(1)) for m in found if m]


def test_conv_relu_maxpool_tunes_survives_kill_and_ctrl_c_and_builds_correctly(tmp_path):
    model = _conv_relu_maxpool(tmp_path / "crp.onnx")
    (kernel,) = onnx_workloads(str(model))  # one kernel: Relu and the pool fused in
    assert kernel.name.startswith("Conv:")
    db, trials = tmp_path / "db", 3
    argv = [
        "--onnx",
        str(model),
        "--trials",
        str(trials),
        "--db",
        str(db),
        "--search",
        "metaschedule",
    ]

    # 1. kill -9 at some moment after the first record (the seed, with the default's
    # timing) is written: measuring the default again, building or measuring candidates.
    run = _Tuner(argv, tmp_path / "1.err")
    run.wait_for(lambda: bool(_files(db)))
    time.sleep(float(np.random.default_rng().uniform(0, 3)))
    run.signal(signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL
    first = _payload(db)  # whole (written atomically), and seeded with its seed record
    assert first["seeded"] and first["default_seconds"] > 0 and first["records"]
    assert "TransformLayout" in json.dumps(first["records"][0])  # the IndexMap trace

    # 2. Ctrl-C (SIGINT to the group) after a candidate was measured: exit 130, one line,
    # no traceback, every candidate measured before it kept (each is committed at once).
    run = _Tuner(argv, tmp_path / "2.err")
    run.wait_for(lambda: any(n >= 1 for n in _trials_line(run.lines, trials)))
    reported = max(_trials_line(run.lines, trials))
    run.signal(signal.SIGINT)
    assert run.finish(timeout=60) == 130, run.describe()
    err = run.stderr().strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0] and str(db) in err[0], run.describe()
    assert "Traceback" not in run.stderr()
    assert len(_payload(db)["records"]) - 1 >= reported  # the seed, then the candidates

    # 3. the same command again finishes the run: progress per candidate, as plain lines.
    run = _Tuner(argv, tmp_path / "3.err")
    assert run.finish() == 0, run.describe()
    payload = _payload(db)
    assert len(payload["records"]) == 1 + trials  # the seed, then the candidates
    counts = _trials_line(run.lines, trials)
    assert counts[-1] == trials and len(set(counts)) >= 2, run.describe()
    summary = [line for line in run.lines if " -> best " in line]
    assert len(summary) == 1, run.describe()
    # The last progress line's best is the final line's best (one measurement rule).
    last_best = re.findall(r"best ([\d.]+) ms", [ln for ln in run.lines if "trials," in ln][-1])
    assert last_best == re.findall(r"-> best ([\d.]+) ms", summary[0])

    # The tuned build agrees with onnxruntime: with the database as tuned, and with its
    # fastest record forced (the default made "slower" in a copy) so that a trace applies.
    forced = tmp_path / "forced"
    shutil.copytree(db, forced)
    (path,) = _files(forced)
    path.write_text(json.dumps({**json.loads(path.read_text()), "default_seconds": 1e9}))
    x = np.random.default_rng(1).standard_normal((1, 4, 12, 12)).astype(np.float32)
    (expected,) = run_onnxruntime(onnx.load(str(model)), {"x": x})
    for tuning_db, schedule in ((db, None), (forced, "tuned")):
        compiled = cf.compile_model(str(model), tuning_db=tuning_db)
        (record,) = compiled.metadata["kernels"]
        assert record["kernel"] == "conv2d + max_pool2d"
        assert record["fused"] == ["Relu_1", "MaxPool_2"]
        assert schedule is None or record["schedule"] == schedule
        (y,) = compiled(x)
        assert compare(y, expected).ok


def test_a_file_left_seeded_without_records_resumes(tmp_path):
    """A database file from convforge <= 0.1.8 killed between its two seed writes:
    ``seeded`` with no record. Loading it asks for the default again (no min() crash)."""
    from tvm.s_tir import meta_schedule as ms

    target = host_target()
    model = _conv_relu_maxpool(tmp_path / "crp.onnx")
    (kernel,) = onnx_workloads(str(model))
    mod = tuning.workload_module(kernel.func)
    path = tuning.workload_file(tmp_path / "db", mod, target)
    path.parent.mkdir(parents=True)
    payload = {
        "format": 1, "target": tuning.target_key(target),
        "workload": ms.database.Workload(mod).as_json(), "default_seconds": 1e-3,
        "seeded": True, "records": [],
    }  # fmt: skip
    path.write_text(json.dumps(payload))
    entry = tuning._WorkloadRecords.load(path, target)
    assert entry.default_seconds is None and not entry.seeded
    database = tuning.TuningDatabase(tmp_path / "db", target)
    assert database.default_seconds(mod) is None and database.candidates(mod) == 0


def test_a_record_whose_trace_holds_an_index_map_round_trips(tmp_path):
    """``record_json`` stores the trace as TVM's JSONDatabase does; it parses and replays to
    the same schedule (MetaSchedule's own ``TuningRecord.as_json`` raises TypeError)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm_ffi.structural import structural_equal

    from convforge.schedules.cpu import generic_cpu_schedule

    target = host_target()
    model = _conv_relu_maxpool(tmp_path / "crp.onnx")
    (kernel,) = onnx_workloads(str(model))
    mod = tuning.workload_module(kernel.func)
    sch = generic_cpu_schedule(mod["main"], target)
    workload = ms.database.Workload(mod)
    args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    record = ms.database.TuningRecord(sch.trace, workload, [1e-3], target, args)
    with pytest.raises(TypeError, match="IndexMap"):
        record.as_json()
    stored = json.loads(json.dumps(tuning.record_json(record)))
    parsed = ms.database.TuningRecord.from_json(stored, workload)
    replayed = tvm.s_tir.Schedule(mod)
    parsed.trace.apply_to_schedule(replayed, remove_postproc=False)
    assert structural_equal(replayed.mod, sch.mod)
    assert [float(s) for s in parsed.run_secs] == [1e-3]


def test_progress_state_estimates_time_left_from_this_runs_candidates():
    now = [100.0]
    state = ProgressState("k", 10, clock=lambda: now[0])
    assert state.fields() == {"best": "-", "left": "unknown"}
    state.update(4, 10, 2e-3)  # resumed at 4: nothing measured by this run yet
    now[0] += 30
    assert state.left() is None and state.fields()["left"] == "unknown"
    state.update(6, 10, 1.5e-3)  # 2 candidates in 30 s: 4 left, 60 s
    assert state.left() == pytest.approx(60)
    assert state.fields() == {"best": "1.5000 ms", "left": "1m00s"}
    assert state.line() == "k: 6/10 trials, best 1.5000 ms, 30s elapsed, time left 1m00s"
    state.update(10, 10, 1e-3)
    assert state.left() == 0


def test_plain_progress_prints_flushed_lines_and_a_heartbeat():
    class Stream:
        def __init__(self):
            self.lines, self.flushes = [], 0

        def write(self, text):
            self.lines.extend(t for t in text.splitlines() if t)

        def flush(self):
            self.flushes += 1

    stream = Stream()
    with PlainProgress("k", 3, stream, heartbeat_s=0.2, min_gap_s=0.0) as report:
        report(0, 3, 2e-3)
        time.sleep(1.5)  # nothing measured: heartbeat lines
        report(1, 3, 2e-3)
        report(2, 3, 1e-3)
        report(3, 3, 1e-3)
    assert stream.lines[0] == "k: measuring the default schedule"
    counts = [int(m.group(1)) for m in map(re.compile(r"k: (\d)/3 trials").match, stream.lines)
              if m]  # fmt: skip
    assert counts[0] == 0 and counts.count(0) >= 2 and counts[-3:] == [1, 2, 3]
    assert stream.flushes >= len(stream.lines)


def _swallowed_ctrl_c() -> None:
    """A SIGINT whose KeyboardInterrupt is caught (as TVM's C++ may catch a callback's error
    and go on)."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # the handler runs in this (main) thread, here
    except KeyboardInterrupt:
        pass


def test_a_ctrl_c_that_tvm_swallows_still_interrupts_the_run(python_sigint):
    """After a swallowed Ctrl-C the tuning call raises KeyboardInterrupt when it returns
    normally, and the runner refuses to measure more (its error comes back through TVM's
    FFI, as in a search); the default handler is back after each."""
    with pytest.raises(KeyboardInterrupt, match="swallowed"), tuning._interruptible():
        _swallowed_ctrl_c()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt, match="from TVM"), tuning._interruptible():
        _swallowed_ctrl_c()
        tuning._ReportingRunner(None, lambda *_: None).run([])  # before it uses its inner
        pytest.fail("the runner measured after a Ctrl-C")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
