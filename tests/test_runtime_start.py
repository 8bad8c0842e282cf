"""The numpy API runs a cached kernel without TVM's compiler (issue #17).

A call plans on the host's :class:`~convforge.targets.HostTarget` (recorded by the first
process that imported TVM) and finds its kernel by a start key made without TVM
(:func:`convforge.kernel_cache.kernel_start_key`), loaded by TVM's runtime alone. These
tests check, in fresh interpreters sharing one cache folder, that a second process gets
the same numbers as numpy's direct convolution without importing ``tvm``; that a changed
tuning database state, or a corrupt entry, is never served from the index; and, in this
process, that a HostTarget answers every question planning asks as TVM's target does.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from convforge import build, kernel_cache, targets
from convforge.schedules import tuning_dbs
from tests.isolated import run_isolated

#: Two convolutions, each called twice (the second call of a weight runs its packed form):
#: a Winograd 3x3 (with its non-finite check) and a strided direct one, each checked in the
#: snippet against numpy's direct convolution in float64; prints whether TVM was imported.
_CALLS = """
import json, sys
import numpy as np
import convforge as cf
from numpy.lib.stride_tricks import sliding_window_view

def direct(x, w, stride, pad):
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = sliding_window_view(xp, w.shape[2:], axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", win, w.astype(np.float64))

rng = np.random.default_rng(3)
worst = 0.0
for shape, wshape, stride, pad in [((1, 16, 24, 24), (16, 16, 3, 3), 1, 1),
                                   ((2, 8, 13, 11), (12, 8, 3, 3), 2, 0)]:
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(wshape).astype(np.float32)
    expected = direct(x, w, stride, pad)
    for _ in range(2):
        y = cf.conv(x, w, stride=stride, padding=pad)
        scale = np.abs(x).max() * np.abs(w).reshape(len(w), -1).sum(1).max()
        worst = max(worst, float(np.abs(y - expected).max() / scale))
print(json.dumps({"tvm": "tvm" in sys.modules, "error": worst}))
"""


def _run(cache) -> dict:
    """The snippet's result, with the number of kernel cache entries it added (``new``);
    without TVM imported, nothing can have been compiled."""

    def entries() -> set:
        return {p.name for p in cache.glob("*.so")}

    before = entries()
    out = run_isolated(_CALLS)
    assert out.returncode == 0, out.describe()
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["error"] < 2e-6, result  # Winograd's bound (api.WINOGRAD_ERROR_BOUND)
    return {**result, "new": len(entries() - before), "stderr": out.stderr}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    for name in ("CONVFORGE_CACHE", "CONVFORGE_CACHE_SIZE", "CONVFORGE_TUNING_DB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONVFORGE_CACHE_DIR", str(folder))
    return folder


def test_a_cached_kernel_runs_in_a_new_process_without_tvms_compiler(cache):
    first = _run(cache)
    assert first["tvm"] and first["new"] >= 4  # per-call and packed kernels, Winograd's check
    again = _run(cache)
    assert not again["tvm"] and again["new"] == 0, again


def test_another_tuning_database_state_is_another_start_key(cache, tmp_path, monkeypatch):
    _run(cache)
    db = tmp_path / "db"
    (db / "unrelated").mkdir(parents=True)
    monkeypatch.setenv("CONVFORGE_TUNING_DB", str(db))
    # a database is part of every key: the index has no kernel under this state, and the
    # kernels come from the usual (TVM) lookup, which compiles them for it
    other = _run(cache)
    assert other["tvm"] and other["new"] > 0, other
    again = _run(cache)  # indexed under that state now
    assert not again["tvm"] and again["new"] == 0, again


def test_a_corrupt_entry_found_by_the_index_is_rebuilt(cache):
    _run(cache)
    for entry in cache.glob("*.so"):
        data = bytearray(entry.read_bytes())
        data[len(data) // 3] ^= 0x01
        entry.write_bytes(bytes(data))
    rebuilt = _run(cache)  # checked against numpy inside
    corrupt = len(list(cache.glob("*.so")))
    assert rebuilt["tvm"] and rebuilt["stderr"].count("skipping corrupt entry") == corrupt
    again = _run(cache)  # the rebuilt entries, indexed again
    assert not again["tvm"] and again["new"] == 0, again


def test_host_target_answers_as_tvms_target(cache):
    real = targets.host_target()
    targets._remember_host(real)
    targets.recorded_host.cache_clear()
    try:
        recorded = targets.recorded_host()
    finally:
        targets.recorded_host.cache_clear()
    assert isinstance(recorded, targets.HostTarget)
    assert targets.target_key(recorded) == targets.target_key(real)
    assert str(recorded) == str(real)
    assert targets.profile(recorded) == targets.profile(real)
    assert targets.is_cpu(recorded) and targets.family(recorded) == "cpu"
    for feature in (*targets.HOST_FEATURES, "sse4.2"):
        assert targets.has_x86_feature(recorded, feature) == targets.has_x86_feature(
            real, feature
        ), feature
    assert tuning_dbs.database_state(recorded) == tuning_dbs.database_state(real)
    assert targets.tvm_target(recorded).same_as(real)
    assert recorded.keys == real.keys  # anything else is TVM's target's
    assert targets.resolve_target(recorded) is recorded
    assert targets.resolve_target(None) is real  # TVM is imported in this process

    def computation():
        x = build.te.placeholder((5,), "float32", name="x")
        return [x], [build.te.compute((5,), lambda i: x[i] * 2.0, name="y")]

    kernel = build.compile_computation("double", computation, recorded)
    np.testing.assert_array_equal(kernel(np.arange(5, dtype=np.float32)), np.arange(5) * 2.0)


def test_plain_key_is_equal_only_for_equal_keys():
    from convforge.shapes import conv_geometry

    geom = conv_geometry((1, 3, 8, 8), (4, 3, 3, 3), padding=1)
    same = conv_geometry((1, 3, 8, 8), (4, 3, 3, 3), padding=1)
    other = conv_geometry((1, 3, 8, 8), (4, 3, 3, 3), padding=1, stride=2)
    plain = kernel_cache.plain_key
    assert plain((geom, "float32", None)) == plain((same, "float32", None))
    assert plain((geom, "float32")) != plain((other, "float32"))
    assert plain((1, 2)) != plain([1, 2]) and plain(1) != plain(True) and plain(1) != plain(1.0)
    assert plain(np.int64(3)) == plain(3)
    assert plain((geom, lambda: 0)) is None and plain(object()) is None
    assert kernel_cache.kernel_start_key("conv", (lambda: 0,), "t", ()) is None
