"""Machine code for a compiled model on CPU targets: the kernels built in parallel, linked once.

``tvm.compile(mod, target)`` builds every PrimFunc of the model into ONE LLVM module on one
thread, and the machine code is then emitted twice: by ``export_library`` (which a model
cache entry or an export needs) and by the VM's JIT when the model first runs. For the light
ResNet-50 on a 2-core Zen 3 that was 10.8 s of TIR passes and LLVM optimization, 7.7 s of
object emission and 6.7 s of JIT (``benchmarks/bench_compile.py``). Here, instead:

1. the relax pipeline and the VM's bytecode generation run as in ``relax.build``;
2. each PrimFunc becomes its own LLVM module, built (``tvm.tirx.build``: TIR passes, LLVM IR,
   LLVM's optimizer) and written as an object file by a pool of :func:`compile_jobs` threads
   (TVM releases the GIL while it compiles), the largest kernels first;
3. the VM executable (bytecode and constants) is packed into one more object, as
   ``export_library`` packs it (``ModulePackImportsToLLVM``), and everything is linked once
   into a shared library (TVM's ``cc.create_shared``), which the model then loads: no JIT.

convforge's kernels (``cf_*`` functions: explicitly vectorized and unrolled by their
schedules) are optimized at the target profile's ``kernel_opt_level`` (LLVM -O1 on x86:
half the compile time of -O3 for the same speed, ``benchmarks/results/thresholds.md
#kernel-opt-level``); TVM's own functions keep LLVM's default (-O3, whose loop vectorizer
they rely on). A target that names ``opt-level`` itself gets exactly that everywhere.
"""

from __future__ import annotations

import concurrent.futures
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.runtime import _ffi_api as runtime_api

from convforge.targets import profile as target_profile
from convforge.threads import physical_cores

#: Threads that compile a model's kernels (default: this machine's physical cores).
COMPILE_JOBS_ENV = "CONVFORGE_COMPILE_JOBS"

#: The name prefix of convforge's kernels in a model (``export.lowering``).
KERNEL_PREFIX = "cf_"


def compile_jobs() -> int:
    """Threads compiling kernels: ``$CONVFORGE_COMPILE_JOBS`` (a positive integer) or the
    physical cores of this machine."""
    text = os.environ.get(COMPILE_JOBS_ENV, "").strip()
    if not text:
        return physical_cores()
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise ValueError(f"{COMPILE_JOBS_ENV} must be a positive integer, got {text!r}")
    return jobs


@dataclass
class Built:
    """A model's machine code, not yet linked: the object files (one per PrimFunc, then
    the packed VM executable) in a private folder that :meth:`close` removes."""

    folder: tempfile.TemporaryDirectory
    objects: list[str]

    def link(self, path: str) -> None:
        """Link the objects into the shared library ``path`` (TVM's ``cc.create_shared``,
        what ``export_library`` runs)."""
        from tvm.support import cc

        cc.create_shared(path, self.objects)

    def close(self) -> None:
        self.folder.cleanup()


def _function_target(target: tvm.target.Target, name: str) -> tvm.target.Target:
    if not name.startswith(KERNEL_PREFIX) or "opt-level" in target.attrs:
        return target
    level = target_profile(target).kernel_opt_level
    return tvm.target.Target({**_target_config(target), "opt-level": level})


def _target_config(target: tvm.target.Target) -> dict:
    config = dict(target.export())
    config.pop("host", None)
    return config


def build(
    mod: tvm.IRModule,
    target: tvm.target.Target,
    relax_pipeline: tvm.transform.Pass,
    phase: Callable[[str], object],
    jobs: int | None = None,
) -> Built:
    """Run the relax pipeline on ``mod`` for the CPU ``target``, then write its machine code
    as object files (module doc). ``phase(name)`` is a context manager timing each step
    (``CompileProfile.phase``): "codegen" (the parallel build) and "pack"."""
    with target:
        mod = relax_pipeline(mod)
    attrs = dict(mod.attrs) if mod.attrs else {}
    if attrs.get("external_mods"):
        raise ValueError("external modules (BYOC) are not supported by convforge's codegen")
    params = dict(attrs.get("const_name_to_constant", {}))
    builder = relax.ExecBuilder()
    leftover = relax._ffi_api.VMCodeGen(builder, mod)
    functions = [
        (gvar, func)
        for gvar, func in leftover.functions.items()
        if isinstance(func, tvm.tirx.PrimFunc)
    ]
    folder = tempfile.TemporaryDirectory(prefix="convforge-codegen-")
    try:
        with phase("codegen"):
            libraries, objects = _build_functions(
                functions, leftover.attrs, target, folder.name, jobs or compile_jobs()
            )
        with phase("pack"):
            library = libraries[0] if libraries else None
            for other in libraries[1:]:
                library.import_module(other)
            executable = relax._ffi_api.VMLink(builder, target, library, [], params)
            packed = os.path.join(folder.name, "devc.o")
            # export_library's choice: the LLVM module's own target string
            llvm_target = (
                library.get_function("_get_target_string")()
                if library is not None
                else str(tvm.target.Target(_target_config(target)))
            )
            pack = runtime_api.ModulePackImportsToLLVM(executable, False, llvm_target, "")
            pack.write_to_file(packed)
    except BaseException:
        folder.cleanup()
        raise
    return Built(folder, [*objects, packed])


def _build_functions(
    functions: list, attrs, target: tvm.target.Target, folder: str, jobs: int
) -> tuple[list, list[str]]:
    """Build each PrimFunc as its own LLVM module and write its object file, ``jobs`` at a
    time, convforge's kernels (the large ones) first; (modules, object paths) in the
    functions' order. Each worker runs under a copy of the caller's PassContext (its
    options; no instruments, which are not thread-safe)."""
    current = tvm.transform.PassContext.current()
    order = sorted(
        range(len(functions)),
        key=lambda i: not functions[i][0].name_hint.startswith(KERNEL_PREFIX),
    )

    def one(index: int) -> tuple:
        gvar, func = functions[index]
        context = tvm.transform.PassContext(
            opt_level=current.opt_level,
            required_pass=list(current.required_pass),
            disabled_pass=list(current.disabled_pass),
            config=dict(current.config),
        )
        with context:
            module = tvm.IRModule({gvar: func}, attrs=attrs)
            library = tvm.tirx.build(module, target=_function_target(target, gvar.name_hint))
        path = os.path.join(folder, f"lib{index}.o")
        library.write_to_file(path)
        return library, path

    results: dict[int, tuple] = {}
    if jobs == 1 or len(functions) < 2:
        for index in order:
            results[index] = one(index)
    else:
        with concurrent.futures.ThreadPoolExecutor(min(jobs, len(functions))) as pool:
            futures = {pool.submit(one, index): index for index in order}
            for future in concurrent.futures.as_completed(futures):
                results[futures[future]] = future.result()
    built = [results[i] for i in range(len(functions))]
    return [b[0] for b in built], [b[1] for b in built]
