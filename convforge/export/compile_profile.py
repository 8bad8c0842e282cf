"""Where :func:`convforge.compile_model` spends its time (issue #17): phase timers.

Every compile collects wall-clock seconds per phase (``time.perf_counter``; a few
microseconds per phase) into a :class:`CompileProfile`, kept on the compiled model as
``CompiledModel.compile_profile``. With ``CONVFORGE_PROFILE_COMPILE=1`` in the environment the
table is also printed to stderr when the compile ends, and on GPU targets ``tvm.compile`` runs
under a pass instrument that splits it into passes and the rest (code generation and linking,
which are not passes); without it nothing is printed and no instrument runs.

Phases (each compile's phases add up to its ``total``, up to ``other``):

- ``load``: reading/checking the ONNX model;
- ``prepare``: :mod:`convforge.export.prepare` (shape folding, checks, expansions);
- ``fusion``: :func:`convforge.export.fusion.fuse_convolutions`;
- ``import``: TVM's ONNX importer with convforge's converters, *excluding* the two
  kernel phases below, which run inside it;
- ``kernel compute``: building convforge's TE computations and their PrimFuncs;
- ``kernel schedule``: scheduling them (once per distinct PrimFunc);
- ``relax pipeline``: the relax passes (convforge's CPU pipeline: legalization, fusion, ...).

On CPU targets (:mod:`convforge.export.codegen`):

- ``codegen``: every PrimFunc's TIR passes, LLVM IR, optimizer and object file, in
  parallel (what was not built during the import);
- ``objects``: the VM executable's object file (bytecode, constants);
- ``link``: the shared library linked; ``load library``: loaded.

On GPU targets, ``tvm.compile`` (TVM's default relax pipeline):

- ``relax + tir passes`` (profiling only): TVM's passes on the module and every PrimFunc;
- ``codegen``: the rest of ``tvm.compile`` (code generation and VM linking; without
  profiling the whole is one phase, ``relax + tir + codegen``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

#: Environment variable that turns on the detailed split and the printed table.
PROFILE_ENV = "CONVFORGE_PROFILE_COMPILE"


def profiling_enabled() -> bool:
    """True when ``CONVFORGE_PROFILE_COMPILE`` is set to something other than '', '0'."""
    return os.environ.get(PROFILE_ENV, "") not in ("", "0")


@dataclass
class CompileProfile:
    """Seconds per phase of one compile, in the order the phases first ran."""

    phases: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    kernels: int = 0  #: convforge kernels emitted (nodes)
    #: convforge PrimFuncs in the module, helpers included (identical kernels are one)
    distinct_kernels: int = 0

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def table(self) -> str:
        """A text table: phase, seconds, share of the total; the rows add up to the total."""
        rows = dict(self.phases)
        other = self.total - sum(rows.values())
        if abs(other) >= 0.0005:
            rows["other"] = other
        width = max(len(n) for n in [*rows, "total"])
        lines = [f"{'phase':<{width}}  {'s':>7}  {'share':>6}"]
        for name, seconds in rows.items():
            share = seconds / self.total if self.total > 0 else 0.0
            lines.append(f"{name:<{width}}  {seconds:7.3f}  {100 * share:5.1f}%")
        lines.append(f"{'total':<{width}}  {self.total:7.3f}  100.0%")
        lines.append(f"convforge kernels: {self.kernels} nodes, {self.distinct_kernels} functions")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "phases": dict(self.phases),
            "total": self.total,
            "kernels": self.kernels,
            "distinct_kernels": self.distinct_kernels,
        }

    def print_if_enabled(self) -> None:
        if profiling_enabled():
            print(f"convforge compile profile\n{self.table()}", file=sys.stderr, flush=True)


def tvm_compile(mod, target, relax_pipeline, profile: CompileProfile):
    """``tvm.compile(mod, target=target, relax_pipeline=relax_pipeline)`` for a GPU target
    (CPU targets: :mod:`convforge.export.codegen`), its time split into ``profile``'s
    phases (see the module docstring)."""
    import tvm

    start = time.perf_counter()
    if not profiling_enabled():
        executable = tvm.compile(mod, target=target, relax_pipeline=relax_pipeline)
        profile.add("relax + tir + codegen", time.perf_counter() - start)
        return executable

    @tvm.instrument.pass_instrument
    class _TopLevelTimer:
        """Seconds of each top-level pass (nested passes count in their parent)."""

        def __init__(self) -> None:
            self.depth = 0
            self.started = 0.0
            self.seconds = 0.0

        def run_before_pass(self, _mod, info) -> None:
            if self.depth == 0:
                self.started = time.perf_counter()
            self.depth += 1

        def run_after_pass(self, _mod, info) -> None:
            self.depth -= 1
            if self.depth == 0:
                self.seconds += time.perf_counter() - self.started

    timer = _TopLevelTimer()
    current = tvm.transform.PassContext.current()
    context = tvm.transform.PassContext(
        opt_level=current.opt_level,
        required_pass=list(current.required_pass),
        disabled_pass=list(current.disabled_pass),
        instruments=[*current.instruments, timer],
        config=dict(current.config),
    )
    with context:
        executable = tvm.compile(mod, target=target, relax_pipeline=relax_pipeline)
    profile.add("relax + tir passes", timer.seconds)
    profile.add("codegen", time.perf_counter() - start - timer.seconds)
    return executable
