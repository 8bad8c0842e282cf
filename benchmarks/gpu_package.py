"""Prepare a self-contained folder that checks and times convforge's CUDA kernels on a GPU.

Run on a machine with TVM and nvcc (no GPU needed)::

    python benchmarks/gpu_package.py OUT_DIR [--arch sm_90] [--python-version 3.12]

OUT_DIR then holds (under 64 MiB):

* ``libs/``: one exported library per workload, its prebuilt fat binary, ``manifest.json``
  (convforge.export.aot);
* ``data/``: the inputs of every workload (``.npy``) and the expected outputs at up to
  16384 sampled positions, computed here by numpy in float64 (``<name>.expected.npz``:
  ``indices`` into the flattened output, ``values``);
* ``site/``: TVM's runtime alone (the ``tvm`` package without its compiler library and
  sources) and ``tvm_ffi`` for the GPU machine's Python (copied from this environment when
  the versions match, else unpacked from the ``apache-tvm-ffi`` wheel fetched with
  ``pip download``), plus the CUDA runtime library TVM's CUDA runtime links against;
* ``gpu_bench.py``: the script to run there: ``python gpu_bench.py RESULTS_DIR``.

The numpy oracle here is independent of TVM: the convolution as a sum over kernel taps of
channel matrix products, the transposed convolution as its scatter definition.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from convforge import shapes
from convforge.export.aot import export_suite
from convforge.filemode import atomic_write
from convforge.workloads import GPU, select
from convforge.workloads import Workload as AotWorkload

#: The registry's GPU set (convforge/workloads.py).
GPU_SUITE = select(GPU)

#: Version of apache-tvm-ffi that TVM 0.27 works with (0.1.15 segfaults).
TVM_FFI_VERSION = "0.1.14.post1"
#: What the folder may weigh at most.
SIZE_LIMIT = 64 * 1024 * 1024
#: Expected values kept per workload.
SAMPLES = 16384

_TVM_SKIP_TOP = {"3rdparty", "include", "src", "web", "licenses", "cmake"}
#: Build-time parts of tvm_ffi (headers, sources) a runner does not need.
_FFI_SKIP = ("3rdparty", "include", "src", "cython")


def _activate(y: np.ndarray, activation: str | None) -> np.ndarray:
    if activation is None:
        return y
    if activation == "relu":
        return np.maximum(y, 0)
    if activation == "sigmoid":
        return 1 / (1 + np.exp(-y))
    if activation == "silu":
        return y / (1 + np.exp(-y))
    if activation == "tanh":
        return np.tanh(y)
    raise ValueError(f"unknown activation {activation!r}")


def numpy_conv(
    x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, geom: shapes.ConvGeometry
) -> np.ndarray:
    """Convolution in float64: for every kernel tap, a (group-wise) channel matmul."""
    n, g = geom.batch, geom.groups
    cin, opg = geom.in_channels // g, geom.out_channels // g
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0), *geom.padding])
    w64 = w.astype(np.float64)
    pixels = int(np.prod(geom.out_size))
    out = np.zeros((n, g, opg, pixels))
    for tap in np.ndindex(*geom.kernel):
        window = tuple(
            slice(t * d, t * d + (o - 1) * s + 1, s)
            for t, d, o, s in zip(tap, geom.dilation, geom.out_size, geom.stride)
        )
        xs = xp[(slice(None), slice(None), *window)].reshape(n, g, cin, pixels)
        wt = w64[(slice(None), slice(None), *tap)].reshape(g, opg, cin)
        out += np.matmul(wt[None], xs)
    y = out.reshape(geom.out_shape)
    if bias is not None:
        y += bias.astype(np.float64).reshape((1, -1) + (1,) * geom.ndim)
    return y


def numpy_conv_transpose(
    x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, geom: shapes.ConvTransposeGeometry
) -> np.ndarray:
    """Transposed convolution in float64 by its definition: every input scatters w * x."""
    n, g = geom.batch, geom.groups
    cin, opg = geom.in_channels // g, geom.out_channels // g
    full = [
        s * (i - 1) + d * (k - 1) + 1 + op
        for i, k, s, d, op in zip(
            geom.in_size, geom.kernel, geom.stride, geom.dilation, geom.output_padding
        )
    ]
    y = np.zeros((n, g, opg, *full))
    xg = x.astype(np.float64).reshape(n, g, cin, -1)
    w64 = w.astype(np.float64)
    for tap in np.ndindex(*geom.kernel):
        wt = w64[(slice(None), slice(None), *tap)].reshape(g, cin, opg)
        contrib = np.matmul(wt.transpose(0, 2, 1)[None], xg).reshape(n, g, opg, *geom.in_size)
        window = tuple(
            slice(t * d, t * d + (i - 1) * s + 1, s)
            for t, d, i, s in zip(tap, geom.dilation, geom.in_size, geom.stride)
        )
        y[(slice(None), slice(None), slice(None), *window)] += contrib
    crop = tuple(slice(lo, lo + o) for (lo, _), o in zip(geom.padding, geom.out_size))
    y = y.reshape(n, geom.out_channels, *full)[(slice(None), slice(None), *crop)]
    if bias is not None:
        y = y + bias.astype(np.float64).reshape((1, -1) + (1,) * geom.ndim)
    return y


def numpy_nearest_upsample(x: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour resize by an integer factor (ONNX asymmetric coordinates)."""
    if int(scale) != scale or scale < 1:
        raise ValueError(f"the numpy oracle resizes by integer factors only, got {scale}")
    for axis in range(2, x.ndim):
        x = np.repeat(x, int(scale), axis=axis)
    return x


def numpy_classifier_head(x: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """softmax(mean over spatial axes of x @ w.T + bias), in float64."""
    pooled = x.astype(np.float64).mean(axis=tuple(range(2, x.ndim)))
    logits = pooled @ w.astype(np.float64).T + bias.astype(np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def numpy_reference(workload: AotWorkload, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The workload's output in float64, computed by numpy alone."""
    if workload.op == "classifier_head":
        return numpy_classifier_head(arrays["x"], arrays["w"], arrays["bias"])
    geom = workload.geometry()
    x = arrays["x"]
    if workload.op == "resize_conv":
        x = numpy_nearest_upsample(x, workload.params.get("scale", 2))
    reference = numpy_conv_transpose if workload.op == "conv_transpose" else numpy_conv
    y = reference(x, arrays["w"], arrays.get("bias"), geom)
    return _activate(y, workload.params.get("activation"))


def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda tmp: np.save(tmp, array), suffix=".npy")


def write_data(data_dir: Path, workloads: list[AotWorkload], seed: int = 0) -> None:
    """Inputs and sampled float64 expected outputs of every workload."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for workload in workloads:
        arrays = workload.arrays(seed)
        for name, array in arrays.items():
            _save_npy(data_dir / f"{workload.name}.{name}.npy", array)
        expected = numpy_reference(workload, arrays).ravel()
        rng = np.random.default_rng(seed + 1)
        count = min(SAMPLES, expected.size)
        indices = np.sort(rng.choice(expected.size, count, replace=False))
        path = data_dir / f"{workload.name}.expected.npz"
        sample = {"indices": indices.astype(np.int32), "values": expected[indices]}
        atomic_write(path, lambda tmp, sample=sample: np.savez(tmp, **sample), suffix=".npz")


def copy_tvm_runtime(site: Path) -> None:
    """The installed ``tvm`` package without its compiler library, headers and sources."""
    import tvm

    source = Path(tvm.__file__).parent

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n == "__pycache__"}
        if Path(directory) == source:
            skipped |= _TVM_SKIP_TOP & set(names)
        if Path(directory) == source / "lib":
            skipped |= {n for n in names if n.startswith("libtvm_compiler")}
        return skipped

    shutil.copytree(source, site / "tvm", ignore=ignore)
    cudart = _cuda_runtime_library(source / "lib" / "libtvm_runtime_cuda.so")
    if cudart is not None:
        (site / "cuda").mkdir(exist_ok=True)
        shutil.copy2(cudart, site / "cuda" / cudart.name)


def _cuda_runtime_library(runtime_cuda: Path) -> Path | None:
    """The libcudart that TVM's CUDA runtime library links against, as found here."""
    if not runtime_cuda.exists():
        return None
    listing = subprocess.run(["ldd", str(runtime_cuda)], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        parts = line.split()
        if parts and parts[0].startswith("libcudart.so") and len(parts) >= 3:
            found = Path(parts[2])
            return found.resolve() if found.exists() else None
    return None


def copy_tvm_ffi(site: Path, python_version: str) -> str:
    """``tvm_ffi`` for ``python_version`` (this environment's, or the wheel's contents),
    without its build-time parts."""
    how = _fetch_tvm_ffi(site, python_version)
    for part in _FFI_SKIP:
        path = site / "tvm_ffi" / part
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return how


def _fetch_tvm_ffi(site: Path, python_version: str) -> str:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if python_version == here:
        import tvm_ffi

        shutil.copytree(
            Path(tvm_ffi.__file__).parent,
            site / "tvm_ffi",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        return f"copied from this Python {here}"
    with tempfile.TemporaryDirectory() as tmp:
        abi = "cp" + python_version.replace(".", "")
        subprocess.run(
            [
                sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                "--python-version", python_version, "--implementation", "cp", "--abi", abi,
                "--platform", "manylinux_2_28_x86_64", "--dest", tmp,
                f"apache-tvm-ffi=={TVM_FFI_VERSION}",
            ],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
        for path in (site / "tvm_ffi").rglob("*.so"):
            path.chmod(0o755)
        return f"unpacked from {wheel.name}"


def copy_pure_python_dependencies(site: Path) -> None:
    """``typing_extensions`` (tvm_ffi imports it; one version-independent file)."""
    import typing_extensions

    shutil.copy2(typing_extensions.__file__, site / "typing_extensions.py")


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def package(
    out_dir: str | os.PathLike,
    *,
    target: str | dict = "cuda",
    python_version: str = "3.12",
    workloads: list[AotWorkload] | None = None,
) -> dict:
    """Build the whole folder (see the module docstring); returns a summary."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"out_dir must be empty or absent, got {out} with files in it")
    chosen = list(workloads or GPU_SUITE)
    manifest = export_suite(out / "libs", target, chosen)
    write_data(out / "data", chosen)
    site = out / "site"
    site.mkdir(parents=True)
    copy_tvm_runtime(site)
    ffi = copy_tvm_ffi(site, python_version)
    copy_pure_python_dependencies(site)
    shutil.copy2(Path(__file__).with_name("gpu_bench.py"), out / "gpu_bench.py")
    size = folder_size(out)
    summary = {
        "workloads": len(manifest["workloads"]),
        "target": manifest["target"],
        "tvm_ffi": ffi,
        "python": python_version,
        "bytes": size,
    }
    if size > SIZE_LIMIT:
        raise RuntimeError(f"package is {size / 2**20:.1f} MiB, over {SIZE_LIMIT / 2**20:.0f} MiB")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--arch", default="sm_90", help="CUDA architecture (sm_XX)")
    parser.add_argument("--python-version", default="3.12", help="Python of the GPU machine")
    parser.add_argument("--only", nargs="*", help="workload names (default: the whole suite)")
    args = parser.parse_args(argv)
    chosen = [w for w in GPU_SUITE if not args.only or w.name in args.only]
    if args.only and len(chosen) != len(args.only):
        known = sorted(w.name for w in GPU_SUITE)
        parser.error(f"--only names unknown workloads; known: {known}")
    summary = package(
        args.out_dir,
        target={"kind": "cuda", "arch": args.arch},
        python_version=args.python_version,
        workloads=chosen,
    )
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
