"""Machine code for a compiled model on CPU targets: the kernels built in parallel, linked once.

``tvm.compile(mod, target)`` builds every PrimFunc of the model into ONE LLVM module on one
thread, and the machine code is then emitted twice: by ``export_library`` (which a model
cache entry or an export needs) and by the VM's JIT when the model first runs. For the light
ResNet-50 on a 2-core Zen 3 that was 10.8 s of TIR passes and LLVM optimization, 7.7 s of
object emission and 6.7 s of JIT (``benchmarks/bench_compile.py``). Here, instead:

1. the relax pipeline and the VM's bytecode generation run as in ``relax.build``;
2. each PrimFunc becomes its own LLVM module (``tvm.tirx.build``: TIR passes, LLVM IR, LLVM's
   optimizer), on a pool of :func:`compile_jobs` threads (TVM releases the GIL while it
   compiles), convforge's kernels first;
3. the VM executable (bytecode and small constants: the weights are lifted out of it,
   :func:`convforge.export.weights.lift_weights`) is linked with them and packed into one
   more object, as ``export_library`` packs it (``ModulePackImportsToLLVM``), while the same
   threads write each kernel's object file;
4. everything is linked once into a shared library (TVM's ``cc.create_shared``), the
   weights appended as a section after it, which the model then loads: no JIT, and a cache
   entry or an export is a copy of that file.

A PrimFunc that carries :data:`OPT_LEVEL_ATTR` is optimized at that LLVM level: the
lowering stamps convforge's Winograd and blocked convolutions, whose schedules vectorize and
unroll all their code, with the target profile's ``kernel_opt_level`` (-O1: a quarter less
compile time than -O3 at the same speed, ``benchmarks/results/thresholds.md#kernel-opt-level``);
every other function keeps LLVM's default, -O3 (pools and softmax rely on its vectorizer:
up to 5x slower at -O1). A target that names ``opt-level`` itself gets exactly that
everywhere.
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

from convforge.threads import physical_cores

#: Threads that compile a model's kernels (default: this machine's physical cores).
COMPILE_JOBS_ENV = "CONVFORGE_COMPILE_JOBS"

#: PrimFunc attribute: the LLVM optimization level to build the function at.
OPT_LEVEL_ATTR = "convforge.llvm_opt_level"

#: The name prefix of convforge's kernels in a model (``export.lowering``): built first.
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
    #: The model's weights, in the order its entry functions take them after their inputs.
    weights: list

    def link(self, path: str) -> None:
        """Link the objects into the shared library ``path`` (TVM's ``cc.create_shared``,
        what ``export_library`` runs), followed by the weights section
        (:mod:`convforge.export.weights`)."""
        from tvm.support import cc

        from convforge.export.weights import append_weights

        cc.create_shared(path, self.objects)
        append_weights(path, self.weights)

    def close(self) -> None:
        self.folder.cleanup()


def _function_target(target: tvm.target.Target, func: tvm.tirx.PrimFunc) -> tvm.target.Target:
    """``target``, at the function's :data:`OPT_LEVEL_ATTR` level where it has one and the
    target names none."""
    level = func.attrs.get(OPT_LEVEL_ATTR) if func.attrs is not None else None
    if level is None or "opt-level" in target.attrs:
        return target
    return tvm.target.Target({**_target_config(target), "opt-level": int(level)})


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
    (``CompileProfile.phase``): "codegen" (every PrimFunc's TIR passes, LLVM IR and
    optimizer) and "objects" (their object files and the packed VM executable's)."""
    from convforge.export.weights import lift_weights

    with target:
        mod = relax_pipeline(mod)
    mod, weights = lift_weights(mod)  # stored beside the code, not in the executable
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
    # convforge's kernels (the large ones) first, so that no long one starts last
    order = sorted(
        range(len(functions)),
        key=lambda i: not functions[i][0].name_hint.startswith(KERNEL_PREFIX),
    )
    current = tvm.transform.PassContext.current()

    def build_one(index: int) -> tvm.runtime.Module:
        gvar, func = functions[index]
        # the caller's options (PassContext is per thread), without its instruments, which
        # are not thread-safe
        context = tvm.transform.PassContext(
            opt_level=current.opt_level,
            required_pass=list(current.required_pass),
            disabled_pass=list(current.disabled_pass),
            config=dict(current.config),
        )
        with context:
            module = tvm.IRModule({gvar: func}, attrs=leftover.attrs)
            return tvm.tirx.build(module, target=_function_target(target, func))

    folder = tempfile.TemporaryDirectory(prefix="convforge-codegen-")
    objects = [os.path.join(folder.name, f"lib{i}.o") for i in range(len(functions))]
    packed = os.path.join(folder.name, "devc.o")
    threads = max(1, min(jobs or compile_jobs(), len(functions) + 1))
    try:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            with phase("codegen"):
                built = dict(zip(order, pool.map(build_one, order)))
                libraries = [built[i] for i in range(len(functions))]
            with phase("objects"):
                library = libraries[0] if libraries else None
                for other in libraries[1:]:
                    library.import_module(other)
                executable = relax._ffi_api.VMLink(builder, target, library, [], params)
                # export_library's choice: the LLVM module's own target string
                llvm_target = (
                    library.get_function("_get_target_string")()
                    if library is not None
                    else str(tvm.target.Target(_target_config(target)))
                )

                def pack() -> None:
                    imports = runtime_api.ModulePackImportsToLLVM(
                        executable, False, llvm_target, ""
                    )
                    imports.write_to_file(packed)

                # the constants' object (the longest task) first, the kernels' beside it
                tasks = [pool.submit(pack)]
                tasks += [pool.submit(m.write_to_file, o) for m, o in zip(libraries, objects)]
                for task in tasks:
                    task.result()
    except BaseException:
        folder.cleanup()
        raise
    return Built(folder, [*objects, packed], weights)
