"""Check and time convforge's prebuilt CUDA kernels on a GPU machine, against PyTorch.

Runs inside the folder made by ``benchmarks/gpu_package.py`` with Python 3.12, numpy and
(optionally) PyTorch, no network, no TVM install, no CUDA compiler::

    python gpu_bench.py RESULTS_DIR [--budget-s 420] [--device cuda]

For every workload of ``libs/manifest.json``: loads the exported library with TVM's
runtime alone (``site/``), answers TVM's request to compile each kernel's source with the
fat binary prebuilt for it (matched by the source's sha256), runs it on the stored inputs,
checks the sampled outputs against the numpy float64 values computed on the CPU machine,
and times it (TVM's time_evaluator) and the same operator in PyTorch (cuDNN, TF32 off, CUDA
events), both as medians. Prints a table and writes ``gpu_bench.json`` and ``gpu_bench.md``
to RESULTS_DIR. Exit status 1 when any output disagrees or any workload fails.
``--device cpu`` runs a package built for the CPU (the packaging test does).

Runners (``--runner``): ``tvm`` (TVM's runtime, as above), ``driver`` (the CUDA driver API
through ctypes: ``cuModuleLoadData`` on the fat binary, ``cuLaunchKernel`` with the grid,
block and argument order recorded in the manifest; needs only ``libcuda``), ``auto``
(default: TVM's runtime, then the driver for any workload TVM's runtime failed to run).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

#: Sampled outputs must satisfy |y - expected| <= atol + rtol * |expected|.
TOLERANCE = {"float32": (1e-3, 1e-3), "float16": (2e-2, 2e-2)}


def load_tvm_runtime(package: Path, device: str):
    """Import TVM's runtime from ``package/site`` (runtime library only) and its CUDA part."""
    site = package / "site"
    sys.path.insert(0, str(site))
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    if device == "cuda":
        for library in sorted((site / "cuda").glob("libcudart.so*")):
            try:  # loaded by soname when TVM's CUDA runtime is opened below
                ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
            except OSError as err:
                print(f"note: {library.name} not loaded ({err}); using the system's")
    import tvm
    import tvm_ffi

    if device == "cuda":
        # the runtime-only import skips backend autoloading: open the CUDA runtime here
        from tvm.base import _LOADED_LIBS
        from tvm_ffi.libinfo import load_lib_ctypes

        runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
            package="tvm",
            target_name="tvm_runtime_cuda",
            extra_lib_paths=[runtime_dir],
            mode="RTLD_LOCAL",
        )
    return tvm, tvm_ffi


def register_prebuilt_kernels(tvm_ffi, manifest: dict, libs: Path) -> None:
    """Serve TVM's ``tvm_callback_cuda_compile`` from the prebuilt fat binaries."""
    binaries = {
        entry["source_sha256"]: libs / entry["fatbin"]
        for entry in manifest["workloads"]
        if "fatbin" in entry
    }

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def prebuilt(code, *_):
        key = hashlib.sha256(str(code).encode()).hexdigest()
        if key not in binaries:
            raise RuntimeError(f"no prebuilt kernel binary for CUDA source sha256 {key}")
        return bytearray(binaries[key].read_bytes())


def tvm_info() -> dict:
    """Where the imported TVM came from and which of its libraries are loaded."""
    tvm = sys.modules.get("tvm")
    if tvm is None:
        return {}
    from tvm.base import _LOADED_LIBS

    return {"package": str(Path(tvm.__file__).parent), "libraries": sorted(_LOADED_LIBS)}


def device_name(runners, torch, device: str) -> str:
    if torch is not None:
        return torch.cuda.get_device_name(0)
    for _, runner in runners:
        driver = getattr(runner, "driver", None)
        if driver is not None:
            return driver.name()
    if device == "cpu":
        return f"{platform.machine()} CPU ({platform.processor() or 'unknown'})"
    return "CUDA device (name not reported)"


def make_runners(choice: str, package: Path, manifest: dict, device: str):
    """The runners to try in order, as (name, callable) pairs, and notes on any that failed."""
    runners, notes = [], []
    if choice in ("auto", "tvm"):
        try:
            tvm, tvm_ffi = load_tvm_runtime(package, device)
            if device == "cuda":
                register_prebuilt_kernels(tvm_ffi, manifest, package / "libs")
            dev = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
            if not dev.exist:
                raise RuntimeError(f"TVM's runtime sees no {device} device")
            runners.append(("tvm", functools.partial(run_with_tvm, tvm, dev)))
        except Exception as err:
            if choice == "tvm":
                raise
            notes.append(f"TVM runtime unavailable: {err!r}")
    if choice in ("auto", "driver") and device == "cuda":
        try:
            driver = CudaDriver()
            runner = functools.partial(run_with_driver, driver)
            runner.driver = driver
            runners.append(("driver", runner))
        except Exception as err:
            if choice == "driver":
                raise
            notes.append(f"CUDA driver API unavailable: {err!r}")
    if not runners:
        raise RuntimeError("no way to run the kernels here: " + "; ".join(notes))
    return runners, notes


def check(y: np.ndarray, expected: dict, dtype: str) -> tuple[bool, float]:
    """Sampled agreement with the numpy values; returns (ok, max abs error)."""
    atol, rtol = TOLERANCE[dtype]
    got = y.astype(np.float64).ravel()[expected["indices"]]
    want = expected["values"]
    err = np.abs(got - want)
    return bool(np.all(err <= atol + rtol * np.abs(want))), float(err.max(initial=0.0))


def time_tvm(module, dev, args) -> float:
    """Median seconds per call of the kernel."""
    timer = module.time_evaluator("main", dev, number=1, repeat=1, min_repeat_ms=0)
    once = max(timer(*args).mean, 1e-6)
    number = max(1, int(0.02 / once))
    timer = module.time_evaluator("main", dev, number=number, repeat=7)
    return float(statistics.median(timer(*args).results))


# --- fallback runner: the CUDA driver API through ctypes ---------------------------------


class CudaDriver:
    """Loads the prebuilt fat binaries and launches them with ``libcuda`` alone.

    Used when TVM's CUDA runtime cannot be loaded here (``--runner driver``, or ``auto``
    after a failure); the launch shape and argument order come from the manifest.
    """

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libcuda.so.1")
        self._modules: list[tuple[ctypes.c_void_p, bytes]] = []
        self.check(self.lib.cuInit(0), "cuInit")
        self.device = ctypes.c_int()
        self.check(self.lib.cuDeviceGet(ctypes.byref(self.device), 0), "cuDeviceGet")
        self.context = ctypes.c_void_p()
        self.check(
            self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(self.context), self.device),
            "cuDevicePrimaryCtxRetain",
        )
        self.check(self.lib.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")

    def check(self, code: int, what: str) -> None:
        if code != 0:
            message = ctypes.c_char_p()
            self.lib.cuGetErrorString(code, ctypes.byref(message))
            raise RuntimeError(f"{what} failed: CUDA error {code} ({message.value})")

    def name(self) -> str:
        buffer = ctypes.create_string_buffer(256)
        self.check(self.lib.cuDeviceGetName(buffer, 256, self.device), "cuDeviceGetName")
        return buffer.value.decode()

    def function(self, fatbin: bytes, kernel: str) -> ctypes.c_void_p:
        module = ctypes.c_void_p()
        self.check(self.lib.cuModuleLoadData(ctypes.byref(module), fatbin), "cuModuleLoadData")
        self._modules.append((module, fatbin))  # keep the image alive with its module
        function = ctypes.c_void_p()
        self.check(
            self.lib.cuModuleGetFunction(ctypes.byref(function), module, kernel.encode()),
            "cuModuleGetFunction",
        )
        return function

    def upload(self, array: np.ndarray) -> ctypes.c_uint64:
        pointer = ctypes.c_uint64()
        self.check(self.lib.cuMemAlloc_v2(ctypes.byref(pointer), max(1, array.nbytes)), "alloc")
        data = np.ascontiguousarray(array)
        self.check(
            self.lib.cuMemcpyHtoD_v2(pointer, data.ctypes.data_as(ctypes.c_void_p), data.nbytes),
            "cuMemcpyHtoD",
        )
        return pointer

    def download(self, pointer: ctypes.c_uint64, like: np.ndarray) -> np.ndarray:
        out = np.empty_like(like)
        self.check(
            self.lib.cuMemcpyDtoH_v2(out.ctypes.data_as(ctypes.c_void_p), pointer, out.nbytes),
            "cuMemcpyDtoH",
        )
        return out

    def free(self, pointer: ctypes.c_uint64) -> None:
        self.check(self.lib.cuMemFree_v2(pointer), "cuMemFree")

    def launch(self, function, grid, block, pointers) -> None:
        args = (ctypes.c_void_p * len(pointers))(
            *[ctypes.cast(ctypes.byref(p), ctypes.c_void_p) for p in pointers]
        )
        self.check(
            self.lib.cuLaunchKernel(
                function, *[ctypes.c_uint(v) for v in grid], *[ctypes.c_uint(v) for v in block],
                ctypes.c_uint(0), None, args, None,
            ),
            "cuLaunchKernel",
        )  # fmt: skip

    def synchronize(self) -> None:
        self.check(self.lib.cuCtxSynchronize(), "cuCtxSynchronize")

    def seconds(self, run, number: int) -> float:
        """Seconds per call of ``run`` over ``number`` calls, timed with CUDA events."""
        start, end = ctypes.c_void_p(), ctypes.c_void_p()
        self.check(self.lib.cuEventCreate(ctypes.byref(start), 0), "cuEventCreate")
        self.check(self.lib.cuEventCreate(ctypes.byref(end), 0), "cuEventCreate")
        self.check(self.lib.cuEventRecord(start, None), "cuEventRecord")
        for _ in range(number):
            run()
        self.check(self.lib.cuEventRecord(end, None), "cuEventRecord")
        self.check(self.lib.cuEventSynchronize(end), "cuEventSynchronize")
        ms = ctypes.c_float()
        self.check(self.lib.cuEventElapsedTime(ctypes.byref(ms), start, end), "elapsed")
        self.lib.cuEventDestroy_v2(start)
        self.lib.cuEventDestroy_v2(end)
        return ms.value / 1e3 / number


def run_with_driver(driver: CudaDriver, entry: dict, libs: Path, arrays: dict, timed: bool):
    """(output, seconds per call or None) of the workload's fat binary launched by hand."""
    launch = entry.get("launch")
    if launch is None:
        raise ValueError("several kernels in one library: only TVM's runtime runs them")
    function = driver.function((libs / entry["fatbin"]).read_bytes(), launch["kernel"])
    output = np.zeros(entry["output_shape"], entry["output_dtype"])
    buffers = {name: driver.upload(array) for name, array in arrays.items()}
    out_names = [p for p in launch["params"] if p not in arrays]
    if len(out_names) != 1:
        raise ValueError(f"kernel arguments {launch['params']} do not name one output")
    buffers[out_names[0]] = driver.upload(output)
    pointers = [buffers[p] for p in launch["params"]]

    def run():
        driver.launch(function, launch["grid"], launch["block"], pointers)

    run()
    driver.synchronize()
    result = driver.download(buffers[out_names[0]], output)
    seconds = None
    if timed:
        once = max(driver.seconds(run, 1), 1e-6)
        number = max(1, int(0.02 / once))
        seconds = statistics.median(driver.seconds(run, number) for _ in range(7))
    for pointer in buffers.values():
        driver.free(pointer)
    return result, seconds


# --- PyTorch -------------------------------------------------------------------------


def torch_call(torch, entry: dict, tensors: dict):
    """The workload in PyTorch: explicit pads, the functional conv, the activation."""
    functional = torch.nn.functional
    x, w, b = tensors["x"], tensors["w"], tensors.get("bias")
    if entry["op"] == "classifier_head":
        pooled = x.mean(dim=tuple(range(2, x.dim())))
        return torch.softmax(functional.linear(pooled, w, b), dim=-1)
    if entry["op"] == "resize_conv":
        x = functional.interpolate(x, scale_factor=entry["params"].get("scale", 2), mode="nearest")
    geom = entry["geometry"]
    ndim = len(entry["inputs"][0]["shape"]) - 2
    if entry["op"] == "conv_transpose":
        lows = [lo for lo, _ in geom["padding"]]
        highs = [hi for _, hi in geom["padding"]]
        extra = [lo - hi for lo, hi in zip(lows, highs)]  # torch pads both sides by `lo`
        if any(e < 0 for e in extra):
            raise ValueError("PyTorch has no transposed conv with a larger high pad")
        fn = getattr(functional, f"conv_transpose{ndim}d")
        y = fn(
            x, w, b, stride=geom["stride"], padding=lows, dilation=geom["dilation"],
            groups=geom["groups"],
            output_padding=[op + e for op, e in zip(geom["output_padding"], extra)],
        )  # fmt: skip
    else:
        pairs = geom["padding"]
        if all(lo == hi for lo, hi in pairs):
            padding = [lo for lo, _ in pairs]
        else:
            x = functional.pad(x, [p for lo, hi in reversed(pairs) for p in (lo, hi)])
            padding = 0
        fn = getattr(functional, f"conv{ndim}d")
        y = fn(
            x, w, b, stride=geom["stride"], padding=padding, dilation=geom["dilation"],
            groups=geom["groups"],
        )  # fmt: skip
    activation = entry["params"].get("activation")
    if activation == "silu":
        return functional.silu(y)
    return getattr(torch, activation)(y) if activation else y


def time_torch(torch, fn) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    once = max(start.elapsed_time(end) / 1e3, 1e-6)
    number = max(1, int(0.02 / once))
    samples = []
    for _ in range(7):
        start.record()
        for _ in range(number):
            fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / number)
    return float(statistics.median(samples))


def import_torch(device: str):
    if device != "cuda":
        return None, "not timed on the CPU"
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed here"
    if not torch.cuda.is_available():
        return None, "PyTorch sees no CUDA device"
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return torch, ""


# --- the run ---------------------------------------------------------------------------


def run_with_tvm(tvm, dev, entry: dict, libs: Path, arrays: dict, timed: bool):
    """(output, seconds per call or None) of the exported library run by TVM's runtime."""
    module = tvm.runtime.load_module(str(libs / entry["library"]))
    args = [tvm.runtime.tensor(arrays[i["name"]], dev) for i in entry["inputs"]]
    out = tvm.runtime.tensor(np.zeros(entry["output_shape"], entry["output_dtype"]), dev)
    module["main"](*args, out)
    result = out.numpy()
    return result, time_tvm(module, dev, [*args, out]) if timed else None


def run_workload(runner, torch, entry: dict, package: Path, timed: bool) -> dict:
    """Check (and time) one workload with ``runner`` (``run_with_*`` bound to its device)."""
    data = package / "data"
    arrays = {
        i["name"]: np.load(data / f"{entry['name']}.{i['name']}.npy") for i in entry["inputs"]
    }
    expected = dict(np.load(data / f"{entry['name']}.expected.npz"))
    y, seconds = runner(entry, package / "libs", arrays, timed)
    ok, err = check(y, expected, entry["dtype"])
    result = {"name": entry["name"], "dtype": entry["dtype"], "ok": ok, "max_abs_err": err}
    if seconds is None:
        return result
    result["convforge_ms"] = 1e3 * seconds
    result["convforge_gflops"] = 2 * entry["macs"] / (result["convforge_ms"] * 1e6)
    if torch is not None:
        tensors = {k: torch.from_numpy(v).cuda() for k, v in arrays.items()}
        with torch.no_grad():
            y = torch_call(torch, entry, tensors)
            torch_ok, torch_err = check(y.cpu().numpy(), expected, entry["dtype"])
            result.update(torch_ok=torch_ok, torch_max_abs_err=torch_err)
            result["torch_ms"] = 1e3 * time_torch(torch, lambda: torch_call(torch, entry, tensors))
        result["ratio"] = result["convforge_ms"] / result["torch_ms"]
    return result


def table(results: list[dict]) -> str:
    lines = [
        "| workload | dtype | check (max abs err) | convforge ms | GFLOP/s | PyTorch ms | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | {r.get('dtype', '')} | ERROR: {r['error']} | | | | |")
            continue
        check_text = f"{'ok' if r['ok'] else 'MISMATCH'} ({r['max_abs_err']:.1e})"
        ms = f"{r['convforge_ms']:.4f}" if "convforge_ms" in r else "-"
        gflops = f"{r['convforge_gflops']:.3g}" if "convforge_gflops" in r else "-"
        torch_ms = f"{r['torch_ms']:.4f}" if "torch_ms" in r else "-"
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        lines.append(
            f"| {r['name']} | {r['dtype']} | {check_text} | {ms} | {gflops} | {torch_ms} | {ratio} |"
        )
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", help="where gpu_bench.json and gpu_bench.md go")
    parser.add_argument("--package", default=str(HERE), help="the folder gpu_package.py made")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop timing after this")
    parser.add_argument("--no-timing", action="store_true", help="check results only")
    parser.add_argument(
        "--runner",
        choices=("auto", "tvm", "driver"),
        default="auto",
        help="TVM's runtime, the CUDA driver API via ctypes, or TVM then the driver",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    package = Path(args.package).resolve()
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((package / "libs" / "manifest.json").read_text())

    runners, notes = make_runners(args.runner, package, manifest, args.device)
    torch, torch_note = import_torch(args.device)

    results = []
    for entry in manifest["workloads"]:
        timed = not args.no_timing and time.monotonic() - started < args.budget_s
        result = None
        for runner_name, runner in runners:
            try:
                result = run_workload(runner, torch, entry, package, timed)
                result["runner"] = runner_name
                break
            except Exception as err:  # try the next runner; report if none works
                notes.append(f"{entry['name']}: {runner_name} failed: {err!r}")
                result = {"name": entry["name"], "dtype": entry["dtype"], "error": repr(err)}
        results.append(result)
        print(table(results[-1:]).splitlines()[-1], flush=True)

    report = {
        "device": device_name(runners, torch, args.device),
        "runners": [name for name, _ in runners],
        "notes": notes,
        "target": manifest["target"],
        "torch": torch.__version__ if torch is not None else torch_note,
        "python": platform.python_version(),
        "tvm": tvm_info(),
        "seconds": time.monotonic() - started,
        "results": results,
    }
    text = table(results)
    print(f"\n{report['device']} ({report['target']}); PyTorch: {report['torch']}\n\n{text}")
    write_atomic(results_dir / "gpu_bench.json", json.dumps(report, indent=1))
    write_atomic(
        results_dir / "gpu_bench.md",
        f"Device: {report['device']}\n\nTarget: {report['target']}\n\n"
        f"PyTorch: {report['torch']} (cuDNN, TF32 off)\n\n{text}\n",
    )
    failed = [r["name"] for r in results if "error" in r or not r["ok"]]
    if failed:
        print(f"FAILED: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
