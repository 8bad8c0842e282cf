"""The persistent kernel cache (convforge.kernel_cache) and the bounded in-process cache.

Every result is checked against numpy or ``convforge.reference.conv_matrix``, never only
against a cached kernel's own output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
from tvm import te

import convforge as cf
from convforge import build, kernel_cache
from convforge.cli import main
from convforge.export.library import verified_library
from convforge.schedules import tuning
from convforge.targets import host_target, resolve_target
from tests.isolated import run_isolated


@pytest.fixture
def compiles(monkeypatch):
    """Counts TVM compiles made by convforge.build."""
    count = [0]
    real = build.tvm.compile

    def counting(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(build.tvm, "compile", counting)
    return count


def _axpy(n: int, scale: float):
    """A small computation y = scale * x + 1 of n float32 values (distinct per n, scale)."""

    def computation():
        x = te.placeholder((n,), "float32", name="x")
        y = te.compute((n,), lambda i: x[i] * np.float32(scale) + np.float32(1), name="y")
        return [x], [y]

    return computation


def _run_axpy(n: int, scale: float, target=None) -> np.ndarray:
    kernel = build.compile_computation(
        "axpy", _axpy(n, scale), target or host_target(), persistent=True
    )
    x = np.arange(n, dtype=np.float32)
    y = kernel(x)
    np.testing.assert_allclose(y, x * np.float32(scale) + 1, rtol=1e-6)
    return y


def _entries(folder) -> list:
    return sorted(p for p in folder.glob("*.so") if not p.name.startswith("."))


_CONV_SNIPPET = """
import sys, json, numpy as np, convforge as cf
from convforge import build
compiles = [0]
real = build.tvm.compile
def counting(*a, **k):
    compiles[0] += 1
    return real(*a, **k)
build.tvm.compile = counting
rng = np.random.default_rng(7)
x = rng.standard_normal((1, 3, 9, 10)).astype(np.float32)
w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
y = cf.conv(x, w, padding=1, stride=(1, 2))
c = cf.conv_matrix(w.astype(np.float64), cf.conv_geometry(x.shape, w.shape, padding=1,
                                                          stride=(1, 2)))
expected = (c @ x.astype(np.float64).ravel()).reshape(y.shape)
np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
print(json.dumps({"compiles": compiles[0]}))
"""


def test_kernel_cached_in_one_process_is_loaded_in_another(cache):
    cf.clear_cache()  # this process compiles the kernel (not in memory) and stores it
    exec(compile(_CONV_SNIPPET, "<snippet>", "exec"), {"__name__": "snippet"})
    assert _entries(cache), "nothing was written"
    other = run_isolated(_CONV_SNIPPET)
    assert other.returncode == 0, other.describe()
    # The new process compiled nothing, and its (loaded) kernel agrees with conv_matrix.
    assert json.loads(other.stdout.splitlines()[-1])["compiles"] == 0


def _corrupt(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "flipped byte":
        flipped = bytearray(data)
        flipped[len(data) // 3] ^= 0x01
        path.write_bytes(bytes(flipped))
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncated", "garbage", "flipped byte", "empty"])
def test_corrupt_entry_is_skipped_with_a_warning_and_rebuilt(cache, compiles, how):
    _run_axpy(37, 2.5)
    (entry,) = _entries(cache)
    _corrupt(entry, how)
    with pytest.warns(UserWarning, match="corrupt entry.*" + entry.name):
        _run_axpy(37, 2.5)  # checked against numpy inside
    assert compiles[0] == 2, "the corrupt entry was not rebuilt"
    (again,) = _entries(cache)
    assert again == entry
    with verified_library(str(again)):  # a valid entry again
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run_axpy(37, 2.5)
    assert compiles[0] == 2, "the rebuilt entry was not used"


def test_eviction_keeps_the_bound_and_drops_the_least_recently_used(cache, compiles, monkeypatch):
    _run_axpy(16, 1.5)
    (a,) = _entries(cache)
    _run_axpy(16, 2.5)
    (b,) = set(_entries(cache)) - {a}
    size = max(a.stat().st_size, b.stat().st_size)
    now = time.time()
    os.utime(a, (now - 100, now - 100))
    os.utime(b, (now - 50, now - 50))
    _run_axpy(16, 1.5)  # a hit: a becomes the most recently used
    assert compiles[0] == 2
    assert a.stat().st_mtime > b.stat().st_mtime
    monkeypatch.setenv("CONVFORGE_CACHE_SIZE", str(int(2.5 * size)))  # room for two entries
    _run_axpy(16, 3.5)  # a third entry: b, the least recently used, goes
    left = _entries(cache)
    assert a in left and b not in left and len(left) == 2
    assert sum(p.stat().st_size for p in left) <= int(2.5 * size)
    stale, fresh = cache / ".tmp-killed.so", cache / ".tmp-writing.so"  # writers' temporaries
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    os.utime(stale, (now - 7200, now - 7200))
    monkeypatch.setenv("CONVFORGE_CACHE_SIZE", "0")
    assert kernel_cache.evict() == 2 and not _entries(cache)
    assert not stale.exists() and fresh.exists()  # a killed writer's, not a live one's


_WRITER = """
import sys, numpy as np
from tvm import te
from convforge import build
from convforge.targets import host_target, resolve_target
def computation():
    x = te.placeholder((4099,), "float32", name="x")
    return [x], [te.compute((4099,), lambda i: x[i] * np.float32(3) - np.float32(2), name="y")]
kernel = build.compile_computation("w", computation, host_target(), persistent=True)
x = np.linspace(-5, 5, 4099).astype(np.float32)
np.testing.assert_allclose(kernel(x), x * np.float32(3) - 2, rtol=1e-6, atol=1e-6)
print("ok")
"""


def test_two_processes_writing_one_key_both_succeed(cache):
    env = {**os.environ, "TVM_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_WRITER)],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == "ok", err[-2000:]
    (entry,) = _entries(cache)
    with verified_library(str(entry)):
        pass
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]


def test_disabled_cache_writes_nothing(cache, monkeypatch, compiles):
    monkeypatch.setenv("CONVFORGE_CACHE", "0")
    _run_axpy(23, 4.0)
    _run_axpy(23, 4.0)
    assert compiles[0] == 2
    assert not cache.exists() or not any(cache.iterdir())
    monkeypatch.setenv("CONVFORGE_CACHE", "maybe")
    with pytest.raises(ValueError, match="CONVFORGE_CACHE"):
        _run_axpy(23, 4.0)


def test_key_changes_with_target_tuning_state_schedule_and_computation(cache, compiles, tmp_path):
    target = host_target()
    other_cpu = resolve_target({"kind": "llvm", "mcpu": "x86-64"})
    how = [kernel_cache.schedule_code_digest(), tuning.database_state(target)]

    def key(n=64, scale=2.0, tgt=target, how=how):
        return kernel_cache.entry_key(
            kernel_cache.key_parts(build.prim_func(_axpy(n, scale)), tgt, how)
        )

    assert key() == key()  # stable for one computation
    keys = {
        key(),
        key(tgt=other_cpu),
        key(scale=3.0),
        key(n=65),
        key(how=["another schedule code", how[1]]),
        key(how=[how[0], [["/some/tuning/db", 12345]]]),
    }
    assert len(keys) == 6
    # End to end: another target, or a tuning database in use, is another entry (and each
    # computes the right values).
    _run_axpy(64, 2.0)
    _run_axpy(64, 2.0, other_cpu)
    db = tmp_path / "tuning-db"
    db.mkdir()
    with cf.use_tuning_db(db):
        _run_axpy(64, 2.0)
    assert len(_entries(cache)) == 3 and compiles[0] == 3
    _run_axpy(64, 2.0)
    with cf.use_tuning_db(db):
        _run_axpy(64, 2.0)
    assert compiles[0] == 3


def test_in_process_cache_is_lru_bounded_and_clearable(cache, monkeypatch, rng):
    monkeypatch.setenv("CONVFORGE_MEMORY_CACHE", "2")
    build.clear_cache()
    assert build.cache_size() == 0
    x = rng.standard_normal((1, 2, 6, 5)).astype(np.float32)
    for k in (1, 2, 3):
        w = rng.standard_normal((3, 2, k, k)).astype(np.float32)
        y = cf.conv(x, w)
        c = cf.conv_matrix(w.astype(np.float64), cf.conv_geometry(x.shape, w.shape))
        np.testing.assert_allclose(
            y, (c @ x.astype(np.float64).ravel()).reshape(y.shape), rtol=1e-4, atol=1e-4
        )
        assert build.cache_size() == min(k, 2)
    cf.clear_cache()
    assert build.cache_size() == 0
    monkeypatch.setenv("CONVFORGE_MEMORY_CACHE", "0")
    with pytest.raises(ValueError, match="CONVFORGE_MEMORY_CACHE"):
        cf.conv(x, rng.standard_normal((3, 2, 4, 4)).astype(np.float32))


def test_cli_cache_info_and_clear(cache, monkeypatch, capsys):
    _run_axpy(29, 1.25)
    _run_axpy(29, 2.25)
    assert main(["cache", "info", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["folder"] == str(cache) and result["entries"] == 2 and result["enabled"]
    assert result["total_bytes"] == sum(p.stat().st_size for p in _entries(cache))
    assert result["limit_bytes"] == kernel_cache.DEFAULT_SIZE
    assert main(["cache", "info"]) == 0
    assert "entries: 2" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert "deleted 2" in capsys.readouterr().out
    assert not _entries(cache)
    monkeypatch.setenv("CONVFORGE_CACHE_SIZE", "lots")
    assert main(["cache", "info"]) == 2
    assert "CONVFORGE_CACHE_SIZE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["cache", "nonsense"])
    assert exited.value.code == 2


def test_cache_folder_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("CONVFORGE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert kernel_cache.cache_dir() == tmp_path / "convforge"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert kernel_cache.cache_dir() == tmp_path / "home" / ".cache" / "convforge"
    for text, size in (("2048", 2048), ("3K", 3072), ("5M", 5 << 20), ("1G", 1 << 30)):
        monkeypatch.setenv("CONVFORGE_CACHE_SIZE", text)
        assert kernel_cache.size_limit() == size


def test_tuning_record_used_is_kept_with_the_entry(cache, compiles, monkeypatch):
    real = build.schedule_for

    def tuned(func, target):  # stands in for a tuned record's schedule
        return real(func, target).with_attr(tuning.RECORD_ATTR, "db-x 1.5 us")

    monkeypatch.setattr(build, "schedule_for", tuned)
    first = build.compile_computation("axpy", _axpy(48, 2.0), host_target(), persistent=True)
    again = build.compile_computation("axpy", _axpy(48, 2.0), host_target(), persistent=True)
    assert compiles[0] == 1  # the second came from the cache ...
    assert first.tuning_record == again.tuning_record == "db-x 1.5 us"  # ... with its record
    x = np.linspace(-1, 1, 48).astype(np.float32)
    np.testing.assert_allclose(again(x), x * np.float32(2) + 1, rtol=1e-6)
