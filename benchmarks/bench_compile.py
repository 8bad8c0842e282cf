"""Where a cold ``cf.compile_model`` spends its time (issue #17), one model per process.

    python benchmarks/bench_compile.py [--model resnet15|resnet50] [--json OUT]

Run it in a fresh interpreter per measurement (it is one: "cold" means TVM imported and every
kernel built and scheduled in this process; the persistent kernel cache is off). Prints the
phases of :class:`convforge.export.compile_profile.CompileProfile` (with the detailed split:
``CONVFORGE_PROFILE_COMPILE=1`` is set here) plus the import of convforge and TVM before the
compile, then ``export_library`` and the first call (which creates the VM: LLVM's JIT of
every kernel) after it, and writes them as JSON with ``--json``.

``resnet15``: a ResNet-style model of 15 convolutions (a 7x7 stem, three stages of two basic
blocks of 3x3 convolutions, 64/128/256 channels, two 1x1 projection shortcuts; BatchNorm and
Relu after each conv; 3x112x112 input), built here. ``resnet50``:
:func:`convforge.examples.networks.resnet50` (224x224).
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["CONVFORGE_PROFILE_COMPILE"] = "1"
os.environ["CONVFORGE_CACHE"] = "0"


def resnet15(size: int = 112, classes: int = 1000, seed: int = 0):
    """A ResNet-style model with 15 Conv nodes (see the module docstring)."""
    from convforge.examples.networks import _conv_bn, _dense_softmax, _Graph

    g = _Graph(seed)
    y = _conv_bn(g, "x", 3, 64, 7, 2, relu=True)
    y = g.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for stage, width in enumerate((64, 128, 256)):
        for block in range(2):
            stride = 2 if block == 0 and stage > 0 else 1
            h = _conv_bn(g, y, cin, width, 3, stride, relu=True)
            h = _conv_bn(g, h, width, width, 3, 1, relu=False)
            shortcut = y if cin == width else _conv_bn(g, y, cin, width, 1, stride, relu=False)
            y = g.node("Relu", [g.node("Add", [h, shortcut])])
            cin = width
    y = g.node("Flatten", [g.node("GlobalAveragePool", [y])], axis=1)
    probs = _dense_softmax(g, y, cin, classes)
    return g.model(
        "resnet15", {"x": (("N", 3, size, size), "float32")}, {probs: (("N", classes), "float32")}
    )


#: The models of the compile benchmarks (this one, bench_batch, bench_cached_start,
#: bench_cold_ab), by --model name.
MODEL_NAMES = ("resnet15", "resnet50")


def build_model(name: str):
    """The model ``name`` of :data:`MODEL_NAMES` (see the module docstring), or of
    :func:`zoo_names`."""
    from convforge.examples import networks

    if name.startswith("zoo_"):
        return networks.light_zoo(name.removeprefix("zoo_"))
    return resnet15() if name == "resnet15" else networks.resnet50()


def zoo_names() -> list[str]:
    """``zoo_NAME`` for each of the ONNX package's light zoo graphs (their own weights: the
    issue's "light ResNet-50" is ``zoo_resnet50``). Imports convforge's examples: for the
    scripts that time other processes, not this one's imports."""
    from convforge.examples import networks

    return [f"zoo_{name}" for name in networks.LIGHT_ZOO]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*MODEL_NAMES, *zoo_names()], default="resnet15")
    parser.add_argument("--json", help="write the phases here (JSON)")
    parser.add_argument(
        "--batch-buckets", default=None, metavar="B1,B2,...",
        help="batch buckets of the model's dynamic batch (default compile_model's: 1,2,4,8)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    buckets = (
        None if args.batch_buckets is None else [int(b) for b in args.batch_buckets.split(",")]
    )

    import_started = time.perf_counter()
    import convforge as cf
    from convforge.tvm_import import import_tvm

    compile_model = cf.compile_model
    import_tvm()  # convforge imports TVM lazily: here, so that the row below counts it
    imported = time.perf_counter() - import_started

    model = build_model(args.model)
    convs = sum(n.op_type == "Conv" for n in model.graph.node)
    compiled = compile_model(model, batch_buckets=buckets)
    profile = compiled.compile_profile
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        compiled.export_library(os.path.join(tmp, "model.so"))
        exported = time.perf_counter() - started
    from convforge.export.model import random_inputs

    inputs = random_inputs(compiled)
    started = time.perf_counter()
    compiled(*inputs)  # creates the VM: LLVM's JIT of every kernel, then one run
    first_call = time.perf_counter() - started
    phases = {"import convforge + tvm": imported, **profile.phases}
    phases["other (compile_model)"] = profile.total - sum(profile.phases.values())
    phases["export_library"] = exported
    phases["first call (VM, JIT)"] = first_call
    whole = imported + profile.total + exported + first_call
    print(f"\n{args.model}: {convs} Conv nodes, batch buckets "
          f"{compiled.metadata.get('batch_buckets')}, {profile.kernels} convforge kernels "
          f"({profile.distinct_kernels} functions), load {os.getloadavg()[0]:.2f}")  # fmt: skip
    for name, seconds in phases.items():
        print(f"  {name:<24} {seconds:7.2f} s  {100 * seconds / whole:5.1f}%")
    print(f"  {'total':<24} {whole:7.2f} s")
    if args.json:
        data = {"model": args.model, "convs": convs, **profile.to_dict(), "phases": phases}
        data["batch_buckets"] = compiled.metadata.get("batch_buckets")
        data["whole"] = whole
        data["loadavg"] = os.getloadavg()[0]
        from convforge.filemode import atomic_write

        atomic_write(args.json, json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
