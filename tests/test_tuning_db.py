"""A tuning database that cannot hurt: corrupt records are skipped with a warning naming the
file (the default schedule runs and matches onnxruntime), the active database is per
thread, and concurrent writers lose no record."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import convforge as cf
from convforge import api, shapes
from convforge.build import recording_kernels
from convforge.commands.tune import ConvWorkload
from convforge.export import compare, conv_model, run_onnxruntime
from convforge.schedules import tuning
from convforge.schedules.cpu import generic_cpu_schedule
from convforge.targets import host_target, target_key

GEOM = shapes.conv_geometry((1, 8, 10, 10), (8, 8, 3, 3), padding=1)
OTHER = shapes.conv_geometry((1, 4, 6, 6), (4, 4, 3, 3))


def _payload(mod, target, records, default_seconds=1.0):
    from tvm.s_tir.meta_schedule.database import Workload

    return {
        "format": 1,
        "target": target_key(target),
        "workload": Workload(mod).as_json(),
        "default_seconds": default_seconds,
        "seeded": False,
        "records": records,
    }


def _foreign_trace_record(mod, target):
    """A well-formed record whose trace was made for another workload (does not apply)."""
    from tvm.s_tir import meta_schedule as ms

    other = tuning.workload_module(ConvWorkload("other", OTHER).prim_func(target))
    sch = generic_cpu_schedule(other["main"], target)
    args = ms.arg_info.ArgInfo.from_prim_func(other["main"])
    record = ms.database.TuningRecord(sch.trace, ms.database.Workload(other), [1e-9], target, args)
    return record.as_json()


CORRUPT = {
    "bad-json": lambda mod, target: b'{"format": 1, "records": [',
    "binary-garbage": lambda mod, target: b"\xff\xfe\x00\x81" + bytes(range(256)) * 4,
    "json-list": lambda mod, target: b"[1, 2, 3]",
    "wrong-structure": lambda mod, target: json.dumps(
        {**_payload(mod, target, []), "records": "all of them"}
    ).encode(),
    "unparsable-record": lambda mod, target: json.dumps(
        _payload(mod, target, [[["no", "such", "trace"], [1e-9], None, None]])
    ).encode(),
    "trace-does-not-apply": lambda mod, target: json.dumps(
        _payload(mod, target, [_foreign_trace_record(mod, target)])
    ).encode(),
}


@pytest.mark.parametrize("variant", list(CORRUPT))
def test_corrupt_record_is_skipped_with_a_warning_and_the_default_matches_onnxruntime(
    variant, tmp_path
):
    target = host_target()
    mod = tuning.workload_module(ConvWorkload("w", GEOM).prim_func(target))
    db = tmp_path / "db"
    path = tuning.workload_file(db, mod, target)
    path.parent.mkdir(parents=True)
    path.write_bytes(CORRUPT[variant](mod, target))
    rng = np.random.default_rng(1)
    x = rng.standard_normal(GEOM.x_shape).astype(np.float32)
    w = rng.standard_normal(GEOM.w_shape).astype(np.float32)
    warns = pytest.warns(tuning.CorruptRecordWarning, match=re.escape(str(path)))
    with cf.use_tuning_db(db), recording_kernels() as kernels, warns:
        y = cf.conv(x, w, padding=1)
    assert kernels[-1].tuning_record is None  # the default schedule ran
    (expected,) = run_onnxruntime(conv_model(GEOM), {"x": x, "w": w})
    assert compare(y, expected).ok


def test_weight_cache_asks_the_databases_again_when_they_change(tmp_path):
    """A weight packed by the numpy API's weight cache (seen twice) is not reused once
    another database is active: the per-call kernel's records are looked up again (the
    corrupt file's warning shows it) and the result still matches onnxruntime."""
    target = host_target()
    mod = tuning.workload_module(ConvWorkload("w", GEOM).prim_func(target))
    path = tuning.workload_file(tmp_path / "db", mod, target)
    path.parent.mkdir(parents=True)
    path.write_bytes(CORRUPT["json-list"](mod, target))
    rng = np.random.default_rng(2)
    x = rng.standard_normal(GEOM.x_shape).astype(np.float32)
    w = rng.standard_normal(GEOM.w_shape).astype(np.float32)
    api.WEIGHT_CACHE.clear()
    for _ in range(2):
        cf.conv(x, w, padding=1)
    assert api.WEIGHT_CACHE.packs == 1
    warns = pytest.warns(tuning.CorruptRecordWarning, match=re.escape(str(path)))
    with cf.use_tuning_db(tmp_path / "db"), recording_kernels() as kernels, warns:
        y = cf.conv(x, w, padding=1)
    assert api.WEIGHT_CACHE.hits == 0 and kernels[-1].tuning_record is None
    (expected,) = run_onnxruntime(conv_model(GEOM), {"x": x, "w": w})
    assert compare(y, expected).ok


def test_active_database_is_per_thread(tmp_path, monkeypatch):
    monkeypatch.delenv(tuning.DB_ENV, raising=False)
    barrier, seen = threading.Barrier(2), {}

    def worker(name):
        with cf.use_tuning_db(tmp_path / name, shipped=False):
            barrier.wait()  # both threads have set their database
            seen[name] = tuning.active_databases()
            barrier.wait()  # neither has left its block yet
        seen[name + "-after"] = tuning.active_databases()

    threads = [threading.Thread(target=worker, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen["a"] == [tmp_path / "a"] and seen["b"] == [tmp_path / "b"]
    assert seen["a-after"] == seen["b-after"] == [tuning.SHIPPED_DB]
    assert tuning.active_databases() == [tuning.SHIPPED_DB]  # this thread: untouched
    with cf.use_tuning_db(tmp_path / "main"):  # a new thread starts from the environment
        other = []
        t = threading.Thread(target=lambda: other.append(tuning.active_databases()))
        t.start()
        t.join()
        assert other == [[tuning.SHIPPED_DB]]
        assert tuning.active_databases()[0] == tmp_path / "main"


def test_use_tuning_db_refuses_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        cf.use_tuning_db(tmp_path / "file")


WRITER = """
import os, sys, time
from pathlib import Path
from tvm import te
from tvm.s_tir import meta_schedule as ms
from convforge.schedules import tuning
from convforge.targets import host_target

a = te.placeholder((4,), name="a")
b = te.compute((4,), lambda i: a[i] + 1.0, name="b")
workload = ms.database.Workload(tuning.workload_module(te.create_prim_func([a, b])))
path, tag, n, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
target = host_target()
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
for i in range(n):
    tuning.merge_records(path, target, workload, [[["trace", tag, i], [1e-3 + i * 1e-7]]])
"""


def test_two_processes_writing_one_database_lose_no_record(tmp_path):
    path, go, n = tmp_path / "db" / "t" / "w.json", tmp_path / "go", 150
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(WRITER), str(path), tag, str(n), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for tag in ("p", "q")
    ]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        go.touch()  # both start writing at once
        deadline = time.monotonic() + 240
        for proc in procs:
            proc.wait(timeout=max(1, deadline - time.monotonic()))
            assert proc.returncode == 0, proc.stderr.read()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    records = json.loads(path.read_text())["records"]
    assert len(records) == 2 * n
    assert {(r[0][1], r[0][2]) for r in records} == {(t, i) for t in "pq" for i in range(n)}
    # each writer's records keep their order
    for tag in "pq":
        assert [r[0][2] for r in records if r[0][1] == tag] == list(range(n))
