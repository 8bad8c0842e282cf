"""Machine code for a compiled model on CPU targets: the kernels built in parallel, linked once.

``tvm.compile(mod, target)`` builds every PrimFunc of the model into ONE LLVM module on one
thread, and the machine code is then emitted twice: by ``export_library`` (which a model
cache entry or an export needs) and by the VM's JIT when the model first runs. For the light
ResNet-50 on a 2-core Zen 3 that was 10.8 s of TIR passes and LLVM optimization, 7.7 s of
object emission and 6.7 s of JIT (``benchmarks/bench_compile.py``). Here, instead:

0. while the model is still being imported (Python, one core), each of convforge's
   kernels is built, and its object file written, as soon as it is scheduled, on
   :func:`compile_jobs` - 1 threads (:class:`EarlyBuilds`);
1. the relax pipeline and the VM's bytecode generation run as in ``relax.build``;
2. each PrimFunc becomes its own LLVM module (``tvm.tirx.build``: TIR passes, LLVM IR, LLVM's
   optimizer) and writes its object file at once, on a pool of :func:`compile_jobs`
   threads (TVM releases the GIL while it compiles), convforge's kernels first; a kernel
   built early is taken where the pipeline left it structurally equal (every one, so
   far), and one whose early build has not started yet is built here instead;
3. the VM executable (bytecode and small constants: the weights are lifted out of it,
   :func:`convforge.export.weights.lift_weights`) is linked with them and packed into one
   more object, as ``export_library`` packs it (``ModulePackImportsToLLVM``);
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
from typing import Any

import tvm
import tvm_ffi
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


@dataclass(frozen=True)
class _Options:
    """What a build thread takes of the caller's ``PassContext`` (one per thread in TVM),
    without its instruments, which are not thread-safe."""

    opt_level: int
    required_pass: tuple
    disabled_pass: tuple
    config: dict

    @staticmethod
    def current() -> _Options:
        context = tvm.transform.PassContext.current()
        return _Options(
            context.opt_level,
            tuple(context.required_pass),
            tuple(context.disabled_pass),
            dict(context.config),
        )

    def context(self) -> tvm.transform.PassContext:
        return tvm.transform.PassContext(
            opt_level=self.opt_level,
            required_pass=list(self.required_pass),
            disabled_pass=list(self.disabled_pass),
            config=dict(self.config),
        )


def _build_function(
    gvar: tvm.ir.GlobalVar,
    func: tvm.tirx.PrimFunc,
    target: tvm.target.Target,
    options: _Options,
    attrs: Any = None,
) -> tvm.runtime.Module:
    """``func`` built alone as an LLVM module, at its :data:`OPT_LEVEL_ATTR` level."""
    with options.context():
        module = tvm.IRModule({gvar: func}, attrs=attrs)
        return tvm.tirx.build(module, target=_function_target(target, func))


class EarlyBuilds:
    """convforge's kernels built (and their object files written) while the model is still
    being imported (module doc, step 0): :meth:`submit` each new kernel function (the
    lowering's ``prebuild``), pass this to :func:`build`, then :meth:`close`. Only the
    thread that made it calls its methods."""

    def __init__(self, target: tvm.target.Target, jobs: int | None = None) -> None:
        self.target = target
        self._options = _Options.current()
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, (jobs or compile_jobs()) - 1))
        self._folder = tempfile.TemporaryDirectory(prefix="convforge-early-")
        self._builds: dict[str, tuple[tvm.tirx.PrimFunc, concurrent.futures.Future, str]] = {}

    def submit(self, name: str, func: tvm.tirx.PrimFunc) -> None:
        """Start building ``func`` as the model's function ``name`` (its global symbol, as
        the relax pipeline names it)."""
        if name in self._builds or not isinstance(func, tvm.tirx.PrimFunc):
            return
        func = func.with_attr("global_symbol", name)
        path = os.path.join(self._folder.name, f"early{len(self._builds)}.o")
        future = self._pool.submit(self._build, tvm.ir.GlobalVar(name), func, path)
        self._builds[name] = (func, future, path)

    def _build(self, gvar: tvm.ir.GlobalVar, func: tvm.tirx.PrimFunc, path: str):
        module = _build_function(gvar, func, self.target, self._options)
        module.write_to_file(path)
        return module

    def take(
        self, functions: list[tuple[tvm.ir.GlobalVar, tvm.tirx.PrimFunc]], attrs: Any = None
    ) -> dict[int, tuple[concurrent.futures.Future, str]]:
        """The early builds of the model's ``functions`` (after the pipeline), by index: each
        one's future (its module) and object file. Builds not started yet are cancelled
        first (the caller builds those, on all its threads); a function that changed since
        it was submitted (not structurally equal) is not taken, nor any where the functions
        are built in a module with attributes (``attrs``: early builds had none)."""
        for _, future, _ in self._builds.values():
            future.cancel()
        if attrs:
            return {}
        taken = {}
        for index, (gvar, func) in enumerate(functions):
            entry = self._builds.get(gvar.name_hint)
            if entry is None or entry[1].cancelled():
                continue
            early, future, path = entry
            if tvm_ffi.structural_equal(early, func):
                taken[index] = (future, path)
        return taken

    def close(self) -> None:
        """Stop: builds not started are dropped, a running one finished, files removed."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._folder.cleanup()


def build(
    mod: tvm.IRModule,
    target: tvm.target.Target,
    relax_pipeline: tvm.transform.Pass,
    phase: Callable[[str], object],
    jobs: int | None = None,
    early: EarlyBuilds | None = None,
) -> Built:
    """Run the relax pipeline on ``mod`` for the CPU ``target``, then write its machine code
    as object files (module doc). ``phase(name)`` is a context manager timing each step
    (``CompileProfile.phase``): "codegen" (every PrimFunc's TIR passes, LLVM IR, optimizer
    and object file) and "objects" (the packed VM executable's)."""
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
    options = _Options.current()
    # early builds (module doc): their modules (a running one waited for by a pool thread)
    # and object files, already written
    taken = early.take(functions, leftover.attrs) if early is not None else {}

    def build_one(index: int) -> tvm.runtime.Module:
        if index in taken:
            return taken[index][0].result()
        gvar, func = functions[index]
        module = _build_function(gvar, func, target, options, leftover.attrs)
        module.write_to_file(objects[index])  # at once: no thread waits for the slowest build
        return module

    folder = tempfile.TemporaryDirectory(prefix="convforge-codegen-")
    objects = [
        taken[i][1] if i in taken else os.path.join(folder.name, f"lib{i}.o")
        for i in range(len(functions))
    ]
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

                imports = runtime_api.ModulePackImportsToLLVM(executable, False, llvm_target, "")
                imports.write_to_file(packed)
    except BaseException:
        folder.cleanup()
        raise
    return Built(folder, [*objects, packed], weights)
