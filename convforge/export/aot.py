"""Ahead-of-time builds: compile operators here, run them where only TVM's runtime is.

TVM 0.27's wheel emits CUDA C but carries no CUDA runtime or compiler, so a CUDA build on
any machine goes: TE -> GPU schedule -> ``tvm.compile`` (host code by LLVM, kernels as CUDA
source) -> ``export_library`` (one shared library per operator) and, beside it, ``nvcc``
compiles the same CUDA source to a fat binary (``arch`` SASS + PTX). The exported library
stores the kernels as source; on the GPU machine TVM's CUDA runtime asks the global
function ``tvm_callback_cuda_compile`` to turn that source into a binary when it loads the
library, and the runner answers with the prebuilt fat binary whose source hash matches
(see ``benchmarks/gpu_bench.py``). No compiler is needed there.

:func:`export_suite` writes ``<name>.so`` and ``<name>.fatbin`` per workload and a
``manifest.json`` naming inputs, shapes, dtypes and the parameters of each operator.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import te

from convforge import ops, shapes
from convforge.build import Kernel, compile_computation, schedule_for
from convforge.filemode import atomic_write
from convforge.plan import conv_transpose_op, plan_conv
from convforge.schedules.gpu_source import compile_fatbin, cuda_source, launch_config, nvcc_path
from convforge.targets import TargetArg, is_gpu, resolve_target

#: Operators an AOT workload may name: convforge API functions, and ``classifier_head``
#: (global average pool, dense, softmax: ``grid_pool_head`` with a 1x1 grid).
AOT_OPS = ("conv", "conv_transpose", "causal_conv1d", "resize_conv", "classifier_head")


@dataclass(frozen=True)
class AotWorkload:
    """One operator instance: ``op`` on inputs ``x``, ``w`` (and ``bias``) of given shapes.

    ``params`` are the keyword arguments of the convforge function of the same name
    (stride, padding, dilation, groups, output_padding, activation).
    """

    name: str
    op: str
    shapes: Mapping[str, tuple[int, ...]]
    params: Mapping[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    description: str = ""

    def geometry(self) -> shapes.ConvGeometry | shapes.ConvTransposeGeometry:
        """The validated convolution geometry (for ``resize_conv``: of the convolution on the
        resized input; raises ValueError naming the bad parameter, also for the head)."""
        if self.op not in AOT_OPS:
            raise ValueError(f"op must be one of {AOT_OPS}, got {self.op!r}")
        if self.op == "classifier_head":
            raise ValueError("classifier_head has no convolution geometry")
        p = {k: v for k, v in self.params.items() if k not in ("activation", "scale")}
        bias = self.shapes.get("bias")
        if self.op == "conv_transpose":
            return shapes.conv_transpose_geometry(
                self.shapes["x"], self.shapes["w"], bias_shape=bias, **p
            )
        x_shape = self.shapes["x"]
        if self.op == "resize_conv":
            x_shape = self.resize_geometry().out_shape
        if self.op == "causal_conv1d":
            p["padding"] = "causal"
        return shapes.conv_geometry(x_shape, self.shapes["w"], bias_shape=bias, **p)

    def resize_geometry(self) -> shapes.ResizeGeometry:
        """``resize_conv``'s nearest-neighbour resize (asymmetric, round_prefer_floor)."""
        return shapes.resize_geometry(self.shapes["x"], scale=self.params.get("scale", 2))

    def pool_geometry(self) -> shapes.AdaptivePoolGeometry:
        """``classifier_head``'s global average pool (the dense layer is checked too)."""
        geom = shapes.global_pool_geometry(self.shapes["x"], kind="avg")
        shapes.dense_geometry(
            (geom.batch, geom.channels), self.shapes["w"], self.shapes.get("bias")
        )
        return geom

    @property
    def macs(self) -> int:
        """Multiply-accumulates (a pooling add counts as one)."""
        if self.op == "classifier_head":
            n, c, *size = self.shapes["x"]
            return n * c * (math.prod(size) + self.shapes["w"][0])
        return self.geometry().macs

    def arrays(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs in ``dtype``, weights scaled by 1/sqrt(fan-in) so outputs stay O(1)."""
        rng = np.random.default_rng(seed)
        out = {}
        for name, shape in self.shapes.items():
            fan_in = math.prod(shape[1:]) if name == "w" else 1
            out[name] = (rng.standard_normal(shape) / math.sqrt(fan_in)).astype(self.dtype)
        return out


def _conv(name, cin, cout, size, k, *, batch=1, desc="", dtype="float32", **params):
    size = (size,) * 2 if isinstance(size, int) else tuple(size)
    groups = params.get("groups", 1)
    shapes_ = {
        "x": (batch, cin, *size),
        "w": (cout, cin // groups, *(k,) * len(size)),
        "bias": (cout,),
    }
    return AotWorkload(name, "conv", shapes_, params, dtype, desc)


#: The convolution workloads of the benchmark suite (benchmarks/workloads.py on the CPU
#: side), plus a 3-D convolution, a grouped one and float16 variants.
GPU_SUITE: tuple[AotWorkload, ...] = (
    _conv("conv3x3_64_56", 64, 64, 56, 3, padding=1, desc="ResNet-50 3x3 64->64 56x56"),
    _conv("conv1x1_256_64_56", 256, 64, 56, 1, desc="ResNet-50 1x1 256->64 56x56"),
    _conv("conv3x3_s2_128_56", 128, 128, 56, 3, stride=2, padding=1, desc="3x3 s2 128->128 56->28"),
    _conv("conv7x7_s2_3_64_224", 3, 64, 224, 7, stride=2, padding=3, desc="stem 7x7 s2 3->64 224"),
    _conv("conv3x3_d2_64_64", 64, 64, 64, 3, dilation=2, padding=2, desc="dilated 3x3 d=2 64->64 64x64"),
    _conv("depthwise3x3_128_56", 128, 128, 56, 3, groups=128, padding=1, desc="depthwise 3x3 128ch 56x56"),
    _conv("grouped3x3_g32_256_28", 256, 256, 28, 3, groups=32, padding=1, desc="ResNeXt 3x3 g=32 256ch 28x28"),
    _conv("conv3d_3x3x3_32_64_16x28", 32, 64, (16, 28, 28), 3, padding=1, desc="3-D 3x3x3 32->64 16x28x28"),
    AotWorkload("causal1d_k2_d8", "causal_conv1d", {"x": (1, 64, 16000), "w": (64, 64, 2), "bias": (64,)}, {"dilation": 8}, description="causal 1-D 64->64 L=16000 k=2 d=8"),
    AotWorkload("causal1d_k3_d512", "causal_conv1d", {"x": (1, 64, 16000), "w": (64, 64, 3), "bias": (64,)}, {"dilation": 512}, description="causal 1-D 64->64 L=16000 k=3 d=512"),
    AotWorkload("convT_256_128_16", "conv_transpose", {"x": (1, 256, 16, 16), "w": (256, 128, 4, 4), "bias": (128,)}, {"stride": 2, "padding": 1}, description="transposed 256->128 k4 s2 16->32"),
    AotWorkload("convT_64_3_64", "conv_transpose", {"x": (1, 64, 64, 64), "w": (64, 3, 4, 4), "bias": (3,)}, {"stride": 2, "padding": 1}, description="transposed 64->3 k4 s2 64->128"),
    AotWorkload("resize2_conv3x3_256_128_16", "resize_conv", {"x": (1, 256, 16, 16), "w": (128, 256, 3, 3), "bias": (128,)}, {"scale": 2, "padding": 1}, description="nearest x2 + 3x3 256->128 16->32"),
    AotWorkload("head_gap_dense_softmax_512_1000", "classifier_head", {"x": (1, 512, 7, 7), "w": (1000, 512), "bias": (1000,)}, description="global avg pool + 512->1000 dense + softmax"),
    _conv("conv3x3_64_56_b8", 64, 64, 56, 3, batch=8, padding=1, desc="ResNet-50 3x3 64->64 56x56, batch 8"),
    _conv("conv3x3_64_56_fp16", 64, 64, 56, 3, padding=1, dtype="float16", desc="3x3 64->64 56x56 float16 (float32 accumulation)"),
    _conv("depthwise3x3_128_56_fp16", 128, 128, 56, 3, groups=128, padding=1, dtype="float16", desc="depthwise 3x3 128ch 56x56 float16"),
)  # fmt: skip


def _computation(workload: AotWorkload, target: tvm.target.Target):
    activation = workload.params.get("activation")
    if workload.op == "classifier_head":
        pool_geom = workload.pool_geometry()

        def build(x, w, bias):
            return ops.grid_pool_head(x, w, bias, pool_geom)
    elif workload.op == "conv_transpose":
        geom = workload.geometry()
        # the API's form: sub-pixel phases for strided transposed convolutions
        op = conv_transpose_op(geom, target)

        def build(x, w, bias):
            return op(x, w, bias, geom, activation)
    else:  # the plan, on the arrays as given and exact ('direct': no non-finite fallback)
        resize = workload.resize_geometry() if workload.op == "resize_conv" else None
        plan = plan_conv(
            workload.geometry(), workload.dtype, target, algorithm="direct", reshape=False,
            resize=resize, activation=activation, bias="bias" in workload.shapes,
        )  # fmt: skip

        def build(x, w, bias):
            return plan.compute(x, w, bias)

    def computation():
        inputs = [
            te.placeholder(tuple(shape), workload.dtype, name=name)
            for name, shape in workload.shapes.items()
        ]
        named = {t.name: t for t in inputs}
        return inputs, [build(named["x"], named["w"], named.get("bias"))]

    return computation


def compile_workload(workload: AotWorkload, target: TargetArg = "cuda") -> Kernel:
    """Compile one workload for ``target`` with the default schedule of that target."""
    resolved = resolve_target(target)
    return compile_computation(workload.name, _computation(workload, resolved), resolved)


def source_hash(source: str) -> str:
    """The key under which a kernel source's prebuilt binary is found (sha256 of the text)."""
    return hashlib.sha256(source.encode()).hexdigest()


def portable_target(target: TargetArg) -> tvm.target.Target:
    """``target`` with a generic x86-64 host: the GPU machine's CPU is not this one."""
    resolved = resolve_target(target)
    if not is_gpu(resolved):
        return resolved
    return tvm.target.Target(
        {"kind": "cuda", "arch": str(resolved.attrs["arch"])}, host={"kind": "llvm"}
    )


def _launch_or_none(source: str, scheduled: tvm.IRModule) -> dict | None:
    """The launch of a single-kernel source; None for several kernels (TVM's runtime runs
    those)."""
    try:
        return launch_config(source, scheduled)
    except ValueError:
        return None


def _geometry_record(workload: AotWorkload) -> dict | None:
    """The convolution's sizes as plain JSON (what a runner needs to call PyTorch)."""
    if workload.op == "classifier_head":
        return None
    geom = workload.geometry()
    return {
        "stride": list(geom.stride),
        "dilation": list(geom.dilation),
        "groups": geom.groups,
        "padding": [list(pair) for pair in geom.padding],
        "output_padding": list(getattr(geom, "output_padding", (0,) * geom.ndim)),
    }


def export_workload(workload: AotWorkload, out_dir: Path, target: TargetArg = "cuda") -> dict:
    """Compile and export one workload into ``out_dir``; returns its manifest entry.

    CUDA targets also get ``<name>.fatbin`` (nvcc must be installed; RuntimeError if not).
    """
    resolved = portable_target(target)
    scheduled: list[tvm.IRModule] = []

    def schedule(func, tgt):
        scheduled.append(schedule_for(func, tgt))
        return scheduled[-1]

    kernel = compile_computation(
        workload.name, _computation(workload, resolved), resolved, schedule
    )
    library = out_dir / f"{workload.name}.so"
    atomic_write(library, kernel.executable.export_library, executable=True, suffix=".so")
    entry: dict[str, Any] = {
        "name": workload.name,
        "op": workload.op,
        "description": workload.description,
        "dtype": workload.dtype,
        "inputs": [{"name": k, "shape": list(v)} for k, v in workload.shapes.items()],
        "params": dict(workload.params),
        "output_shape": list(kernel.output_shapes[0]),
        "output_dtype": kernel.output_dtypes[0],
        "macs": workload.macs,
        "geometry": _geometry_record(workload),
        "device": resolved.kind.name,
        "library": library.name,
    }
    if is_gpu(resolved):
        if nvcc_path() is None:
            raise RuntimeError("nvcc is needed to prebuild the CUDA kernels; none found")
        source = cuda_source(kernel.executable.mod)
        arch = str(resolved.attrs["arch"])
        fatbin, reports = compile_fatbin(source, arch)
        binary = out_dir / f"{workload.name}.fatbin"
        atomic_write(binary, fatbin)
        entry.update(
            arch=arch,
            fatbin=binary.name,
            source_sha256=source_hash(source),
            launch=_launch_or_none(source, scheduled[0]),
            ptxas=[vars(r) for r in reports],
        )
    return entry


def export_suite(
    out_dir: str | os.PathLike,
    target: TargetArg = "cuda",
    workloads: Sequence[AotWorkload] = GPU_SUITE,
) -> dict:
    """Export every workload to ``out_dir`` and write ``manifest.json`` (atomically).

    Returns the manifest: ``{"target": ..., "workloads": [entry, ...]}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [w.name for w in workloads]
    if len(set(names)) != len(names):
        raise ValueError(f"workload names must be unique, got {names}")
    resolved = portable_target(target)
    manifest = {
        "target": str(resolved),
        "workloads": [export_workload(w, out, resolved) for w in workloads],
    }
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=1))
    return manifest
