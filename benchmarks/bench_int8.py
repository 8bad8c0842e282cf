"""int8 convolutions: convforge's integer kernel against convforge's float32 direct kernel
and onnxruntime's QLinearConv, on the suite's 3x3 64->64 56x56 and 1x1 256->64 56x56, and
ResNet-50's 1x1 64->256 56x56.

    python benchmarks/bench_int8.py [--rounds 5] [--json OUT] [--model NAME ...]

uint8 activations, int8 per-channel weights in [-64, 63] (onnxruntime's ``reduce_range``:
its AVX2 kernel saturates beyond, see tests/test_qconv.py), weight packed once for all
three (convforge's kernel called on the packed weight, ``cf.prepare_conv(algorithm=
'direct')`` for float32, an onnxruntime session with the weight an initializer). Each
round times the three interleaved (10 calls each, the median of 3); the table gives the
median and minimum over ``--rounds`` rounds, with the load average: on a loaded machine
compare the ratios. Set ``TVM_NUM_THREADS`` (and onnxruntime gets as many threads).

``--model NAME`` (repeatable: ``resnet15``, benchmarks/bench_compile.py's at 112x112;
``squeezenet`` and ``resnet50``, the light zoo graphs of ``networks.light_zoo``;
``mobilenet_v2``, ``networks.mobilenet_v2``; all batch 1, the zoo at 224x224) also
quantizes a whole model with onnxruntime (pre-processing, ``quantize_static``: QDQ, per-channel,
``reduce_range``, random calibration) and times convforge's int8 build, onnxruntime on the
QDQ model and convforge's float32 build the same way (top-1, the largest difference from
onnxruntime relative to the output range, and how many Convs run as integer kernels are
printed; where the model ends in a Softmax, also its logits against onnxruntime's: top-1,
top-5 overlap, the largest difference in quantization steps and relative to their range).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["CONVFORGE_CACHE"] = "0"

#: name -> (x shape, w shape, padding)
WORKLOADS = {
    "3x3 64->64 56x56": ((1, 64, 56, 56), (64, 64, 3, 3), 1),
    "1x1 256->64 56x56": ((1, 256, 56, 56), (64, 256, 1, 1), 0),
    # an expansion (few products per output): the rows form on AVX-512 VNNI
    "1x1 64->256 56x56": ((1, 64, 56, 56), (256, 64, 1, 1), 0),
}


def _seconds(call, number: int = 10) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(number):
            call()
        times.append((time.perf_counter() - start) / number)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="write the table here (JSON)")
    parser.add_argument(
        "--model", action="append", choices=sorted(MODELS), default=[],
        help="also time this quantized model (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    import numpy as np

    import convforge as cf
    from convforge import qparams, shapes
    from convforge.build import cached_kernel, cpu_argument
    from convforge.export.check import quiet_thread_pools, session
    from convforge.export.onnx_graphs import qlinear_conv_model
    from convforge.ops.qconv import fits_pmaddubsw
    from convforge.plan import plan_qconv

    quiet_thread_pools()
    threads = int(os.environ.get("TVM_NUM_THREADS", "2"))
    rng = np.random.default_rng(0)
    rows = []
    for name, (x_shape, w_shape, padding) in WORKLOADS.items():
        geom = shapes.conv_geometry(x_shape, w_shape, padding=padding)
        channels = geom.out_channels
        x = rng.integers(0, 256, x_shape).astype(np.uint8)
        w = rng.integers(-64, 64, w_shape).astype(np.int8)
        w_scale = rng.uniform(0.5, 1.5, channels).astype(np.float32) / 64
        quant = dict(
            x_scale=0.02, x_zero_point=np.uint8(3), w_scale=w_scale,
            w_zero_point=np.zeros(channels, np.int8), y_scale=4.0, y_zero_point=np.uint8(128),
        )  # fmt: skip
        quant_args = qparams.quant_args("uint8", "int8", channels, requantize=True, **quant)
        plan = plan_qconv(
            geom, "uint8", "int8", requantize=True, w_zero_point=False,
            narrow_weights=fits_pmaddubsw(w),
        )  # fmt: skip
        kernel = cached_kernel("qconv", plan.key, plan.computation(), plan.target)
        int8_args = [cpu_argument(a) for a in (x, plan.pack(w), *quant_args.kernel_constants(w))]
        int8_out = cpu_argument(np.empty(geom.out_shape, np.uint8))
        xf = rng.standard_normal(x_shape).astype(np.float32)
        wf = rng.standard_normal(w_shape).astype(np.float32)
        op = cf.prepare_conv(wf, x_shape=x_shape, padding=padding, algorithm="direct")
        float_args = [
            cpu_argument(a) for a in (op.plan.prepare_x(xf), *op.constants)
        ]  # fmt: skip
        float_out = cpu_argument(np.empty(op.plan.kernel_geometry.out_shape, np.float32))
        model = qlinear_conv_model(geom, w=w, x_dtype="uint8", **quant)
        sess = session(model, threads=threads, spinning=False)
        expected = sess.run(None, {"x": x})[0]
        got = cf.qconv(x, w=w, **quant, padding=padding)
        same = bool(np.array_equal(got, expected))
        calls = {
            "convforge int8": functools.partial(kernel.function, *int8_args, int8_out),
            "convforge float32 direct": functools.partial(
                op.kernel.function, *float_args, float_out
            ),
            "onnxruntime int8": functools.partial(sess.run, None, {"x": x}),
        }
        for call in calls.values():
            call()
        samples: dict[str, list[float]] = {label: [] for label in calls}
        for _ in range(args.rounds):
            for label, call in calls.items():
                samples[label].append(_seconds(call))
        row = {"workload": name, "label": plan.label, "equal_to_onnxruntime": same}
        for label, values in samples.items():
            row[label] = {"median_ms": statistics.median(values) * 1e3, "min_ms": min(values) * 1e3}
        rows.append(row)
    for name in args.model:
        rows.append(_model_row(name, threads, args.rounds))
    load = os.getloadavg()[0]
    print(f"TVM_NUM_THREADS={threads}, load average {load:.2f} (medians; min in brackets)")
    header = "workload                convforge int8     float32 direct     onnxruntime int8   int8/f32  int8/ort"
    print(header)
    for row in rows:
        cells = [row[k] for k in ("convforge int8", "convforge float32 direct", "onnxruntime int8")]
        text = "  ".join(f"{c['median_ms']:7.2f} ({c['min_ms']:6.2f})" for c in cells)
        ratio_f = cells[0]["median_ms"] / cells[1]["median_ms"]
        ratio_o = cells[0]["median_ms"] / cells[2]["median_ms"]
        print(f"{row['workload']:22s}  {text}  {ratio_f:6.2f}x  {ratio_o:6.2f}x")
        if "max_difference" in row:
            print(f"  top-1 as onnxruntime: {row['equal_to_onnxruntime']}, largest difference "
                  f"{row['max_difference']:.4g} ({row['relative_difference']:.2%} of the output "
                  f"range); integer Convs/Gemms {row['integer_convs']}; float32 column: the float32 "
                  "model")  # fmt: skip
        elif not row["equal_to_onnxruntime"]:
            print("  (outputs differ from onnxruntime's)")
        if "logits" in row:
            lg = row["logits"]
            steps = (
                ""
                if lg["max_difference_steps"] is None
                else f"{lg['max_difference_steps']:.1f} steps, "
            )
            print(f"  logits ({lg['tensor']}): top-1 as onnxruntime: {lg['top1_equal']}, top-5 "
                  f"overlap {lg['top5_overlap']}/5, largest difference {lg['max_difference']:.4g} "
                  f"({steps}{lg['relative_difference']:.2%} of their range {lg['range']:.4g})")  # fmt: skip
    if args.json:
        import platform

        from convforge.filemode import atomic_write

        data = {
            "threads": threads, "loadavg": load, "machine": platform.processor() or platform.machine(),
            "rows": rows,
        }  # fmt: skip
        atomic_write(args.json, json.dumps(data, indent=1))
    return 0


def _resnet15():
    from benchmarks.bench_compile import resnet15

    return resnet15(size=112)


def _zoo(name: str):
    def build():
        from onnx import version_converter

        from convforge.examples import networks

        # opset 9 -> 13: the quantizer writes per-channel DequantizeLinear (axis: opset 13)
        return version_converter.convert_version(networks.light_zoo(name), 13)

    return build


def _mobilenet_v2():
    from convforge.examples import networks

    return networks.mobilenet_v2()


#: --model: name -> the float32 ONNX model (its first input's batch is set to 1).
MODELS = {
    "resnet15": _resnet15, "squeezenet": _zoo("squeezenet"), "resnet50": _zoo("resnet50"),
    "mobilenet_v2": _mobilenet_v2,
}  # fmt: skip


def _model_row(name: str, threads: int, rounds: int) -> dict:
    """Quantize ``name`` with onnxruntime and time the three builds (module doc)."""
    import tempfile

    import numpy as np
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import convforge as cf
    from convforge.export.check import session

    rng = np.random.default_rng(0)
    model = MODELS[name]()
    graph_input = model.graph.input[0]
    graph_input.type.tensor_type.shape.dim[0].dim_value = 1
    feed = graph_input.name
    shape = tuple(d.dim_value for d in graph_input.type.tensor_type.shape.dim)
    samples = iter([{feed: rng.random(shape).astype(np.float32)} for _ in range(4)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(samples, None)

    with tempfile.TemporaryDirectory() as folder:
        onnx.save(model, f"{folder}/float.onnx")
        quant_pre_process(f"{folder}/float.onnx", f"{folder}/prepared.onnx")
        quantize_static(
            f"{folder}/prepared.onnx", f"{folder}/qdq.onnx", Reader(),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )  # fmt: skip
        qdq = onnx.load(f"{folder}/qdq.onnx")
    int8 = cf.compile_model(qdq)
    float32 = cf.compile_model(model)
    sess = session(qdq, threads=threads, spinning=False)
    x = rng.random(shape).astype(np.float32)
    (y,) = int8(x)
    expected = sess.run(None, {feed: x})[0]
    calls = {
        "convforge int8": functools.partial(int8, x),
        "convforge float32 direct": functools.partial(float32, x),
        "onnxruntime int8": functools.partial(sess.run, None, {feed: x}),
    }
    samples_: dict[str, list[float]] = {label: [] for label in calls}
    for _ in range(rounds):
        for label, call in calls.items():
            samples_[label].append(_seconds(call, number=5))
    # the model's Conv and Gemm nodes, and those served by an integer kernel
    layers = {n.name for n in qdq.graph.node if n.op_type in ("Conv", "Gemm")}
    convs = [k for k in int8.metadata["kernels"] if k["node"] in layers]
    integer = [k for k in convs if k["op_type"] == "QLinearConv"]
    difference = float(np.abs(y - expected).max())
    row = {
        "workload": f"{name} (model)", "label": ", ".join(sorted({k["kernel"] for k in integer})),
        "equal_to_onnxruntime": bool(y.argmax() == expected.argmax()),
        "max_difference": difference,
        "relative_difference": difference / max(float(np.ptp(expected)), 1e-30),
        "integer_convs": f"{len(integer)}/{len(convs)}",
    }  # fmt: skip
    logits = _logits_check(qdq, feed, x, threads)
    if logits is not None:
        row["logits"] = logits
    for label, values in samples_.items():
        row[label] = {"median_ms": statistics.median(values) * 1e3, "min_ms": min(values) * 1e3}
    return row


def _logits_check(qdq, feed: str, x, threads: int) -> dict | None:
    """convforge's int8 build against onnxruntime on the logits, the input of the model's
    final Softmax (under the quantizer's Q/DQ; a near-uniform softmax of random weights
    hides differences: its output spans one or two quantization steps), made a graph output
    of a copy of ``qdq``. None where the model does not end in a Softmax. Gives top-1 agreement, the top-5 overlap, and
    the largest difference in quantization steps of the logits' DequantizeLinear (where
    one produces them) and relative to the logits' range."""
    import numpy as np
    import onnx

    import convforge as cf
    from convforge.export.check import session

    producers = {out: node for node in qdq.graph.node for out in node.output}
    last = producers.get(qdq.graph.output[0].name)
    while last is not None and last.op_type in ("QuantizeLinear", "DequantizeLinear", "Reshape"):
        last = producers.get(last.input[0])  # Q/DQ around the Softmax, a final Reshape
    if last is None or last.op_type != "Softmax":
        return None
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    name = last.input[0]
    model.graph.output.insert(
        0, onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
    )
    ours = cf.compile_model(model)(x)[0].reshape(-1)
    theirs = session(model, threads=threads, spinning=False).run(None, {feed: x})[0].reshape(-1)
    step = None
    dq = producers.get(name)
    if dq is not None and dq.op_type == "DequantizeLinear":
        scales = {t.name: onnx.numpy_helper.to_array(t) for t in qdq.graph.initializer}
        if dq.input[1] in scales and scales[dq.input[1]].size == 1:
            step = float(scales[dq.input[1]])
    difference = float(np.abs(ours - theirs).max())
    top5 = set(np.argsort(ours)[-5:]) & set(np.argsort(theirs)[-5:])
    return {
        "tensor": name, "top1_equal": bool(ours.argmax() == theirs.argmax()),
        "top5_overlap": len(top5), "max_difference": difference,
        "max_difference_steps": None if step is None else difference / step,
        "relative_difference": difference / max(float(np.ptp(theirs)), 1e-30),
        "range": float(np.ptp(theirs)),
    }  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
