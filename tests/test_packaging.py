"""Install extras: the base install compiles, exports, loads and runs a model, and a feature
that needs a missing extra names the extra to install (``pip install 'convforge[check]'``).

The default-run test blocks the extras' modules in a fresh interpreter (``sys.modules[name] =
None`` makes their import fail); the slow test installs the base into a new venv. Both check
the loaded library against a numpy convolution computed here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

from tests.isolated import run_isolated

ROOT = Path(__file__).resolve().parent.parent

#: Modules of the extras ([check], [tune], [bench]); none may be needed by the base path.
EXTRA_MODULES = [
    "onnxruntime",
    "scipy",
    "matplotlib",
    "rich",
    "xgboost",
    "tornado",
    "psutil",
    "cloudpickle",
    "threadpoolctl",
]

#: argv[1]: a work directory. Compiles a 1-layer Conv model, exports, loads (API and CLI) and
#: runs it, checks both against a numpy reference; cf.conv likewise. Prints BASE OK.
BASE_PATH = """
import os, sys
import numpy as np
from onnx import TensorProto, helper, numpy_helper, save
import convforge as cf
from convforge.cli import main

work = sys.argv[1]
rng = np.random.default_rng(0)
x = rng.standard_normal((1, 3, 9, 9)).astype("float32")
w = rng.standard_normal((4, 3, 3, 3)).astype("float32")
b = rng.standard_normal(4).astype("float32")
# Reference: stride 2, padding 1, written as sums over the padded input (no convforge code).
xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
ref = np.zeros((1, 4, 5, 5), "float64")
for i in range(5):
    for j in range(5):
        win = xp[0, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].astype("float64")
        ref[0, :, i, j] = np.einsum("chw,ochw->o", win, w.astype("float64")) + b
node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])
graph = helper.make_graph(
    [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 9])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])],
    [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
onnx_path = os.path.join(work, "conv.onnx")
save(model, onnx_path)

lib = os.path.join(work, "api.so")
cf.compile_model(model).export_library(lib)
(y,) = cf.load(lib)(x)
np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)

np.testing.assert_allclose(cf.conv(x, w, b, stride=2, padding=1), ref, rtol=1e-4, atol=1e-4)

cli_lib = os.path.join(work, "cli.so")
assert main(["compile", onnx_path, "-o", cli_lib]) == 0
np.savez(os.path.join(work, "in.npz"), x=x)
out = os.path.join(work, "out.npz")
assert main(["run", cli_lib, "--inputs", os.path.join(work, "in.npz"), "-o", out]) == 0
np.testing.assert_allclose(np.load(out)["y"], ref, rtol=1e-4, atol=1e-4)
print("BASE OK", cf.__version__)
"""

#: Each feature of an extra refuses with the extra's install command (after BASE_PATH).
MISSING_EXTRAS = """
from convforge.extras import MissingExtraError
from convforge.schedules import tuning

def refusal(call):
    try:
        call()
    except MissingExtraError as err:
        return str(err)
    raise AssertionError(f"{call} did not refuse")

print("CHECK:", refusal(lambda: cf.check_model(model)))
print("MATRIX:", refusal(lambda: cf.conv_matrix(w, cf.conv_geometry(x.shape, w.shape))))
print("TUNE:", refusal(tuning.require_tuning_extra))
print("CLI check exit:", main(["check", onnx_path]))
print("CLI tune exit:", main(["tune", "--onnx", onnx_path, "--db", os.path.join(work, "db"), "--trials", "1"]))
"""


def _blocked(code: str) -> str:
    return f"import sys\nfor _m in {EXTRA_MODULES!r}:\n    sys.modules[_m] = None\n" + code


def test_base_path_without_extras(tmp_path):
    """compile_model/export/load, cf.conv, `convforge compile/run` with every extra blocked;
    check_model, conv_matrix, tuning, `convforge check` and `tune` name their extra."""
    snippet = _blocked(textwrap.dedent(BASE_PATH) + textwrap.dedent(MISSING_EXTRAS))
    outcome = run_isolated(snippet, timeout=300, args=[str(tmp_path)])
    assert outcome.returncode == 0, outcome.describe()
    out, err = outcome.stdout, outcome.stderr
    assert "BASE OK" in out, outcome.describe()
    assert "CHECK: " in out and "pip install 'convforge[check]'" in out.split("CHECK:")[1]
    assert "'onnxruntime'" in out.split("CHECK:")[1].splitlines()[0]
    matrix = out.split("MATRIX:")[1].splitlines()[0]
    assert "'scipy'" in matrix and "pip install 'convforge[check]'" in matrix
    tune = out.split("TUNE:")[1].splitlines()[0]
    assert "pip install 'convforge[tune]'" in tune
    assert "CLI check exit: 2" in out, outcome.describe()
    assert "CLI tune exit: 2" in out, outcome.describe()
    # One line each on stderr, no traceback.
    assert "convforge check: error:" in err and "convforge[check]" in err, err
    assert "convforge tune: error:" in err and "convforge[tune]" in err, err
    assert "Traceback" not in err, err


@pytest.mark.slow
def test_base_install_in_fresh_venv(tmp_path):
    """`pip install <repo>` (base requirements only) into a new venv: the base path works and
    no extra's module is importable there."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    work = tmp_path / "work"
    work.mkdir()
    code = textwrap.dedent(BASE_PATH) + textwrap.dedent(f"""
        import importlib.util
        present = [m for m in {EXTRA_MODULES!r} if importlib.util.find_spec(m) is not None]
        print("EXTRAS PRESENT:", present)
    """)
    # Outside the repository, so that the installed package (not the checkout) is imported.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [python, "-c", code, str(work)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "BASE OK" in proc.stdout
    assert "EXTRAS PRESENT: []" in proc.stdout, proc.stdout
    version = proc.stdout.split("BASE OK")[1].split()[0]
    assert version == _pyproject_version(), version
    assert sys.executable != python


def _pyproject_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_version_comes_from_pyproject_only():
    """One version: convforge.__version__ is pyproject.toml's, and no module repeats it."""
    import convforge

    version = _pyproject_version()
    assert convforge.__version__ == version
    literal = f'"{version}"'
    holders = [p for p in (ROOT / "convforge").rglob("*.py") if literal in p.read_text()]
    assert holders == [], holders
