"""``import convforge`` is lazy (issue #17): no TVM, no onnx until a name that needs them.

The package maps each public name to its module (PEP 562 ``__getattr__``); these tests check
that every name in ``__all__`` still resolves to the object its module defines, and, in a fresh
interpreter, that the bare import leaves ``tvm``, ``onnx`` and ``onnxruntime`` out of
``sys.modules``.
"""

from __future__ import annotations

import importlib
import json
import os

import pytest

import convforge as cf
from tests.isolated import run_isolated

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_public_name_resolves_to_its_modules_object():
    assert sorted(cf.__all__) == sorted(cf._LAZY), "__all__ and the lazy table disagree"
    listed = dir(cf)
    for name in cf.__all__:
        assert name in listed, name
        owner = importlib.import_module(cf._LAZY[name])
        assert getattr(cf, name) is getattr(owner, name), name
    ns: dict[str, object] = {}
    exec("from convforge import *", ns)
    assert {n for n in ns if not n.startswith("__")} == set(cf.__all__)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        cf.not_a_name  # noqa: B018
    with pytest.raises(ImportError):
        exec("from convforge import not_a_name", {})


def test_bare_import_loads_neither_tvm_nor_onnx():
    out = run_isolated(
        """
        import json, sys
        import convforge as cf
        heavy = ("tvm", "tvm_ffi", "onnx", "onnxruntime")
        after_import = [m for m in heavy if m in sys.modules]
        geometry = cf.conv_output_size(8, 3, 2, 1, 1)  # shapes: still no TVM
        after_shapes = [m for m in heavy if m in sys.modules]
        from convforge import clear_cache  # the numpy API's modules import no TVM either
        no_tvm_yet = "tvm" not in sys.modules
        from convforge import use_tuning_db  # a name that needs TVM imports it on first use
        print(json.dumps([after_import, after_shapes, geometry, no_tvm_yet and "tvm" in sys.modules,
                          callable(clear_cache) and callable(use_tuning_db), cf.__version__]))
        """
    )
    assert out.returncode == 0, out.describe()
    after_import, after_shapes, size, tvm_loaded, ok, version = json.loads(
        out.stdout.strip().splitlines()[-1]
    )
    assert after_import == [], f"import convforge loaded {after_import}"
    assert after_shapes == []
    assert size == (8 + 2 * 1 - 3) // 2 + 1
    assert tvm_loaded and ok
    assert version == cf.__version__


@pytest.mark.parametrize("opt_in", [False, True])
def test_tvm_is_imported_without_ml_dtypes_unless_asked(opt_in):
    """convforge.tvm_import: TVM comes in without ml_dtypes (a ~1 s import), which a later
    ``import ml_dtypes`` (onnx's, the user's) still gets; CONVFORGE_ML_DTYPES=1 keeps it. The
    kernel run after the hidden import must still agree with numpy."""
    out = run_isolated(
        f"""
        import json, os, sys
        import numpy as np
        if {opt_in}:
            os.environ["CONVFORGE_ML_DTYPES"] = "1"
        import convforge as cf
        x = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype("float32")
        w = np.random.default_rng(1).standard_normal((3, 2, 1, 1)).astype("float32")
        y = cf.conv(x, w)
        expected = np.einsum("nchw,oc->nohw", x, w[:, :, 0, 0])
        hidden = "ml_dtypes" not in sys.modules
        import ml_dtypes
        import onnx  # imports ml_dtypes itself
        print(json.dumps([hidden, float(np.abs(y - expected).max()),
                          str(np.dtype(ml_dtypes.bfloat16)), onnx.__name__]))
        """
    )
    assert out.returncode == 0, out.describe()
    hidden, error, bf16, onnx_name = json.loads(out.stdout.strip().splitlines()[-1])
    assert hidden is (not opt_in)
    assert error < 1e-5
    assert bf16 == "bfloat16" and onnx_name == "onnx"


def test_tvm_and_its_runtime_are_imported_without_torch(tmp_path, monkeypatch):
    """tvm_ffi imports torch where it is installed (4-5 s): convforge.tvm_import hides it, for
    TVM and for the runtime alone, and unhides it after (a later import reaches the package:
    here a stand-in that refuses to be imported, so any import of it would fail the run)."""
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('torch imported')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), ROOT]))
    monkeypatch.delenv("CONVFORGE_TORCH", raising=False)
    out = run_isolated(
        """
        import json, sys
        import numpy as np
        from convforge.tvm_import import import_runtime
        import_runtime()
        runtime_only = "tvm" not in sys.modules and "torch" not in sys.modules
        import convforge as cf
        x = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype("float32")
        w = np.random.default_rng(1).standard_normal((3, 2, 1, 1)).astype("float32")
        error = float(np.abs(cf.conv(x, w) - np.einsum("nchw,oc->nohw", x, w[:, :, 0, 0])).max())
        try:
            import torch  # the stand-in: reached, so no longer hidden
        except RuntimeError as err:
            reached = str(err)
        print(json.dumps([runtime_only, error, reached]))
        """
    )
    assert out.returncode == 0, out.describe()
    runtime_only, error, reached = json.loads(out.stdout.strip().splitlines()[-1])
    assert runtime_only and error < 1e-5 and reached == "torch imported"


@pytest.mark.parametrize("setting", [None, "300000"])
def test_idle_tvm_workers_block_after_a_short_spin_unless_the_user_sets_it(setting, monkeypatch):
    """convforge.tvm_import sets TVM_THREAD_POOL_SPIN_COUNT to 1000 before TVM's thread pool
    starts, unless the user set it (then kept). At 1000, after a parallel kernel the process
    burns under 10 ms of CPU time in the next 0.5 s (the operating system's count; TVM's
    default spin burnt a core for most of that on an idle machine, but how much a spinning
    thread gets beside other load varies, so that case is not timed here)."""
    monkeypatch.setenv("TVM_NUM_THREADS", "2")
    monkeypatch.delenv("TVM_THREAD_POOL_SPIN_COUNT", raising=False)
    if setting is not None:
        monkeypatch.setenv("TVM_THREAD_POOL_SPIN_COUNT", setting)
    out = run_isolated(
        """
        import json, os, time
        import numpy as np
        import convforge as cf
        x = np.random.default_rng(0).standard_normal((1, 64, 56, 56)).astype("float32")
        w = np.random.default_rng(1).standard_normal((64, 64, 3, 3)).astype("float32")
        cf.conv(x, w, padding=1)
        before = time.process_time()
        cf.conv(x, w, padding=1)
        ran = time.process_time()
        time.sleep(0.5)
        idle = time.process_time() - ran
        print(json.dumps([os.environ["TVM_THREAD_POOL_SPIN_COUNT"], idle, ran - before]))
        """
    )
    assert out.returncode == 0, out.describe()
    value, idle, busy = json.loads(out.stdout.strip().splitlines()[-1])
    assert value == (setting or "1000")
    if setting is None:
        assert idle < 0.01, (idle, busy)
