"""Whole compiled models in the persistent cache (convforge.export.model_cache).

Every result is checked against onnxruntime running the same ONNX graph (the oracle).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import helper

import convforge as cf
from convforge.cli import main
from convforge.export.check import compare, run_onnxruntime
from tests.isolated import run_isolated


def _model(seed: int = 0, channels: int = 4) -> onnx.ModelProto:
    """Conv+Relu, a strided Conv and a global pool over a dynamic batch ``N``."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((channels, 3, 3, 3)) / 5).astype(np.float32)
    w2 = (rng.standard_normal((6, channels, 3, 3)) / 6).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["y"], ["g"]),
    ]
    graph = helper.make_graph(
        nodes, "cached",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 12, 12])],
        [helper.make_tensor_value_info("g", onnx.TensorProto.FLOAT, ["N", 6, 1, 1])],
        initializer=[onnx.numpy_helper.from_array(w1, "w1"),
                     onnx.numpy_helper.from_array(w2, "w2")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def _entries(folder) -> list:
    return sorted(p for p in folder.glob("*.so") if not p.name.startswith("."))


def _assert_matches_onnxruntime(model, compiled, batch: int = 1) -> None:
    x = np.random.default_rng(batch).standard_normal((batch, 3, 12, 12)).astype(np.float32)
    (ours,) = compiled(x)
    (theirs,) = run_onnxruntime(model, {"x": x})
    agreement = compare(ours, theirs)
    assert agreement.ok, agreement


def _hit(compiled) -> bool:
    return set(compiled.compile_profile.phases) == {"cache lookup"}


_SECOND_PROCESS = """
import json, sys, time
began = time.perf_counter()
import numpy as np
import convforge as cf
from convforge.cli import main
model = cf.compile_model(sys.argv[1])
x = np.load(sys.argv[2])
y = model(x)[0]
seconds = time.perf_counter() - began
np.save(sys.argv[3], y)
model.export_library(sys.argv[4])
tvm_imported = "tvm" in sys.modules  # a quick hit runs (and exports) on TVM's runtime alone
print(json.dumps({"phases": sorted(model.compile_profile.phases), "seconds": seconds,
                  "tvm": tvm_imported}))
"""


def test_second_process_loads_the_model_from_the_cache(cache, tmp_path):
    model = _model()
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    first = cf.compile_model(path)
    assert not _hit(first) and len(_entries(cache)) == 1
    _assert_matches_onnxruntime(model, first)  # its VM loads the stored library

    x = np.random.default_rng(3).standard_normal((1, 3, 12, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out, library = tmp_path / "y.npy", tmp_path / "exported.so"
    done = run_isolated(_SECOND_PROCESS, args=[str(path), str(tmp_path / "x.npy"), str(out),
                                               str(library)])  # fmt: skip
    assert done.returncode == 0, done.describe()
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["phases"] == ["cache lookup"], report  # nothing compiled
    assert report["tvm"] is False, report  # found by the quick index, run without TVM
    assert compare(np.load(out), run_onnxruntime(model, {"x": x})[0]).ok
    # The export of a model loaded from the cache is a library cf.load verifies and runs.
    _assert_matches_onnxruntime(model, cf.load(library))
    assert len(_entries(cache)) == 1


def test_corrupt_entry_is_skipped_with_a_warning_and_rebuilt(cache):
    model = _model()
    cf.compile_model(model)
    (entry,) = _entries(cache)
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupt entry"):
        rebuilt = cf.compile_model(model)
    assert not _hit(rebuilt)
    _assert_matches_onnxruntime(model, rebuilt, batch=1)
    (entry,) = _entries(cache)  # written again, whole
    again = cf.compile_model(model)
    assert _hit(again)
    _assert_matches_onnxruntime(model, again)

    entry.write_bytes(b"garbage")  # not even a trailer
    with pytest.warns(UserWarning, match="corrupt entry"):
        rebuilt = cf.compile_model(model)
    _assert_matches_onnxruntime(model, rebuilt)


def test_disabled_cache_is_bypassed(cache, monkeypatch):
    monkeypatch.setenv("CONVFORGE_CACHE", "0")
    model = _model()
    compiled = cf.compile_model(model)
    assert "cache lookup" not in compiled.compile_profile.phases
    assert not cache.exists() or _entries(cache) == []
    monkeypatch.setenv("CONVFORGE_CACHE", "1")
    cf.compile_model(model)
    monkeypatch.setenv("CONVFORGE_CACHE", "0")
    compiled = cf.compile_model(model)  # an entry exists, but the cache is off
    assert not _hit(compiled) and "load" in compiled.compile_profile.phases


def test_changed_option_or_model_misses(cache, tmp_path):
    model = _model()
    assert not _hit(cf.compile_model(model))
    assert _hit(cf.compile_model(model))
    assert not _hit(cf.compile_model(model, algorithm="direct"))
    assert not _hit(cf.compile_model(model, input_shapes={"x": (2, 3, 12, 12)}))
    database = tmp_path / "tuning-db"
    database.mkdir()
    assert not _hit(cf.compile_model(model, tuning_db=database))  # tuning state is in the key
    changed = _model(seed=1)  # other weights
    compiled = cf.compile_model(changed)
    assert not _hit(compiled)
    _assert_matches_onnxruntime(changed, compiled)
    assert len(_entries(cache)) == 5
    records = [_trailer(entry)["cache"] for entry in _entries(cache)]
    assert sorted(r["options"]["algorithm"] for r in records) == ["auto"] * 4 + ["direct"]
    assert len({r["model"] for r in records}) == 2


def _trailer(path) -> dict:
    from convforge.export.library import read_trailer, trailer_bytes

    return read_trailer(trailer_bytes(str(path)), str(path))[0]


def test_convforge_compile_uses_the_cache(cache, tmp_path, capsys):
    model = _model()
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    for name in ("first.so", "second.so"):
        assert main(["compile", str(path), "-o", str(tmp_path / name)]) == 0
    err = capsys.readouterr().err
    assert err.count("loaded from the cache") == 1  # the second compile only
    assert len(_entries(cache)) == 1
    for name in ("first.so", "second.so"):
        _assert_matches_onnxruntime(model, cf.load(tmp_path / name), batch=2)


_WRITER = """
import sys, numpy as np, convforge as cf
model = cf.compile_model(sys.argv[1])
np.save(sys.argv[2], model(np.load(sys.argv[3]))[0])
"""


def test_two_processes_compiling_one_model_both_succeed(cache, tmp_path):
    model = _model(seed=2)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(4).standard_normal((3, 3, 12, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    argv = [sys.executable, "-c", textwrap.dedent(_WRITER), str(path)]
    writers = [
        subprocess.Popen(
            [*argv, str(tmp_path / f"y{i}.npy"), str(tmp_path / "x.npy")],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for writer in writers:
        _, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
    (theirs,) = run_onnxruntime(model, {"x": x})
    for i in range(2):
        assert compare(np.load(tmp_path / f"y{i}.npy"), theirs).ok
    assert len(_entries(cache)) == 1  # one entry (valid: hit below), no temporary file left
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]
    _assert_matches_onnxruntime(model, cf.compile_model(path), batch=2)
    assert _hit(cf.compile_model(path))


_QUICK = """
import json, sys
import numpy as np
import convforge as cf
model = cf.compile_model(sys.argv[1]) if sys.argv[1].endswith(".onnx") else cf.load(sys.argv[1])
y = model(np.load(sys.argv[2]))[0]
np.save(sys.argv[3], y)
print(json.dumps({"tvm": "tvm" in sys.modules,
                  "phases": sorted((model.compile_profile or None) and
                                   model.compile_profile.phases or [])}))
"""


def _quick_run(target: str, x, tmp_path) -> tuple[dict, np.ndarray]:
    np.save(tmp_path / "x.npy", x)
    done = run_isolated(_QUICK, args=[target, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")])
    assert done.returncode == 0, done.describe()
    return json.loads(done.stdout.strip().splitlines()[-1]), np.load(tmp_path / "y.npy")


def test_quick_index_is_rechecked_against_the_tuning_databases(cache, tmp_path, monkeypatch):
    """A cache hit in a new process runs without importing TVM, and the quick index is
    trusted only while the tuning databases it recorded are unchanged: a folder added to the
    database (records of another core count, which ``match="cpu"`` would read) sends the
    next process through the usual lookup (TVM imported; still a hit here), which renews
    the index."""
    database = tmp_path / "tuning-db"
    database.mkdir()
    monkeypatch.setenv("CONVFORGE_TUNING_DB", str(database))
    model = _model(seed=5)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    assert not _hit(cf.compile_model(path))
    x = np.random.default_rng(6).standard_normal((1, 3, 12, 12)).astype(np.float32)
    (theirs,) = run_onnxruntime(model, {"x": x})
    first, y = _quick_run(str(path), x, tmp_path)
    assert first == {"tvm": False, "phases": ["cache lookup"]}
    assert compare(y, theirs).ok
    (database / "another-target").mkdir()
    second, y = _quick_run(str(path), x, tmp_path)
    assert second == {"tvm": True, "phases": ["cache lookup"]}  # the usual lookup: a hit
    assert compare(y, theirs).ok
    third, y = _quick_run(str(path), x, tmp_path)
    assert third == {"tvm": False, "phases": ["cache lookup"]}
    assert compare(y, theirs).ok
    assert len(_entries(cache)) == 1


def test_load_runs_a_library_without_tvm(cache, tmp_path):
    """cf.load verifies and runs an exported library on TVM's runtime alone."""
    model = _model(seed=7)
    library = tmp_path / "model.so"
    cf.compile_model(model).export_library(library)
    x = np.random.default_rng(8).standard_normal((2, 3, 12, 12)).astype(np.float32)
    report, y = _quick_run(str(library), x, tmp_path)
    assert report["tvm"] is False
    assert compare(y, run_onnxruntime(model, {"x": x})[0]).ok


def test_verified_cache_entry_is_loaded_as_checked(tmp_path):
    """verified_library yields a private copy of the verified bytes: replacing the path
    afterwards (as a cache writer does) or rewriting it in place changes nothing."""
    import os

    from convforge.export.library import append_trailer, verified_library
    from convforge.targets import host_target

    path, other = tmp_path / "entry.so", tmp_path / "other.so"
    path.write_bytes(b"first library bytes")
    other.write_bytes(b"second library bytes")
    for f in (path, other):
        append_trailer(str(f), host_target())
    with verified_library(str(path)) as loadable:
        assert loadable.endswith(".so")
        os.replace(other, path)
        path.write_bytes(b"x")  # cut short in place
        with open(loadable, "rb") as f:
            assert f.read().startswith(b"first library bytes")
    assert not os.path.exists(loadable)


_CUT_SHORT = """
import sys
import numpy as np
import convforge as cf
model = cf.compile_model(sys.argv[1])
assert set(model.compile_profile.phases) == {"cache lookup"}, model.compile_profile.phases
with open(sys.argv[2], "r+b") as f:  # the entry it was loaded from, cut short in place
    f.truncate(16)
x = np.load(sys.argv[3])
np.save(sys.argv[4], model(x)[0])
del model
"""


def test_cache_entry_cut_short_under_a_running_model_harms_nothing(cache, tmp_path):
    """A model loaded from a cache entry keeps running, and its process exits normally,
    when the entry is truncated in place meanwhile (a library or weights mapped from the
    entry itself would die with SIGBUS)."""
    model = _model(seed=5)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    cf.compile_model(path)
    (entry,) = _entries(cache)
    x = np.random.default_rng(4).standard_normal((2, 3, 12, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    args = [str(path), str(entry), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]
    done = run_isolated(_CUT_SHORT, args=args)
    assert done.returncode == 0, done.describe()
    assert compare(np.load(tmp_path / "y.npy"), run_onnxruntime(model, {"x": x})[0]).ok


def _digest_memos(cache) -> list:
    return sorted((cache / "index").glob("digest-*.json"))


def test_a_model_files_digest_is_remembered_only_for_its_unchanged_settled_state(
    cache, tmp_path, monkeypatch
):
    """model_cache.model_digest remembers a settled file's SHA-256 (hashlib's own, the
    oracle) and answers from the memo while the file is unchanged; bytes rewritten in place
    at the same size with the old modification time put back are hashed again, and a file
    changed within the last two seconds gets no memo (a later write in the same timestamp
    tick could leave its times as they were)."""
    import hashlib
    import os
    import time

    from convforge.export import model_cache

    path = tmp_path / "model.onnx"
    path.write_bytes(b"a" * 4096)
    assert model_cache.model_digest(path) == hashlib.sha256(b"a" * 4096).hexdigest()
    assert _digest_memos(cache) == []  # just written: not settled, no memo

    later = time.time_ns() + 3_000_000_000
    monkeypatch.setattr(model_cache.time, "time_ns", lambda: later)
    assert model_cache.model_digest(path) == hashlib.sha256(b"a" * 4096).hexdigest()
    (memo,) = _digest_memos(cache)

    hashed = []
    real_file_digest = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda *a: hashed.append(1) or real_file_digest(*a))
    assert model_cache.model_digest(path) == hashlib.sha256(b"a" * 4096).hexdigest()
    assert hashed == []  # answered by the memo

    stat = path.stat()
    time.sleep(0.05)  # past the file system's timestamp tick
    with open(path, "r+b") as f:  # same size, other bytes, in place (same inode)
        f.write(b"b")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the old modification time
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_size == stat.st_size
    assert model_cache.model_digest(path) == hashlib.sha256(b"b" + b"a" * 4095).hexdigest()
    assert hashed == [1]
    assert memo.exists() and len(_digest_memos(cache)) == 2


def test_a_compile_hashes_its_model_once(cache, tmp_path, monkeypatch):
    """cf.compile_model of a freshly written file (no digest memo yet) reads it through
    SHA-256 once for its start key, entry key and quick index (it was three times), and the
    entry it stores is the one a second compile of the same bytes loads; a file rewritten
    with other bytes is another entry; a ModelProto is hashed once too (the digests
    counted: hashlib's own)."""
    import hashlib

    hashed = []
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda *a: hashed.append(1) or real(*a))
    model = _model(seed=7)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    first = cf.compile_model(path)
    assert not _hit(first) and len(hashed) == 1, hashed
    _assert_matches_onnxruntime(model, first)
    hashed.clear()
    assert _hit(cf.compile_model(path)) and len(hashed) == 1
    other = _model(seed=8)
    onnx.save(other, path)
    changed = cf.compile_model(path)
    assert not _hit(changed) and len(_entries(cache)) == 2
    _assert_matches_onnxruntime(other, changed)

    # A ModelProto is serialized for its digest once per compile too (it was three times).
    from convforge.export import model_cache

    proto = _model(seed=9)
    size = len(proto.SerializeToString(deterministic=True))
    lengths = []
    real_sha = hashlib.sha256
    monkeypatch.setattr(
        model_cache.hashlib,
        "sha256",
        lambda *a: lengths.append(len(a[0]) if a else 0) or real_sha(*a),
    )
    compiled = cf.compile_model(proto)
    assert not _hit(compiled)
    _assert_matches_onnxruntime(proto, compiled)
    assert lengths.count(size) == 1, (size, lengths)  # the model's bytes, hashed once
