"""ONNX's own backend node cases for the convolution family, through ``cf.compile_model``.

The onnx wheel ships no ``data/node`` directory: the cases are generated from
``onnx.backend.test.case.node`` (``collect_testcases``). The family (:data:`FAMILY`) is every
op the issue names; each case whose graph holds one of them, plus the ``_expanded``
function-body forms of CausalConvWithState (Shape/Sub/Concat arithmetic around a Conv),
runs in two forms:

- ``inputs``: the case as generated, every tensor a graph input;
- ``init``: every input after the first (weights, scales, sizes, roi, state, ...) an
  initializer (only for cases with more than one input).

Each run must match the case's expected outputs within the case's tolerance (rtol 1e-3,
atol 1e-7) and, where onnxruntime runs the model, onnxruntime's outputs; or be refused with
a one-line ``ValueError``/``NotImplementedError`` naming the op, listed in :data:`REFUSED`
(so a refusal that stops happening fails too: the list cannot go stale). Anything else
(mismatch, TVM error, unlisted refusal) fails. Runs in-process: ~260 runs of tiny models
compile in about 1.5-2 minutes on 2 cores (both forms by default).
"""

from __future__ import annotations

import functools
import re
import time
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import convforge as cf

#: Op types of the convolution family (issue #15). GlobalLpPool has no node case in onnx 1.23.
FAMILY = (
    "Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "AveragePool", "MaxPool", "LpPool",
    "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "Resize", "Upsample",
    "BatchNormalization", "InstanceNormalization", "DeformConv", "MaxUnpool", "Col2Im",
    "CausalConvWithState",
)  # fmt: skip

_DYNAMIC_SHAPE = "must be a constant"
_RESIZE_INPUT = (
    "Resize's roi/scales/sizes as a graph input: the output shape would depend on a runtime "
    "value (convforge compiles static shapes)"
)

#: Runs refused on purpose, with the reason. Key: case name (both forms) or
#: ``name[form]``; value: (a regular expression the refusal's message matches, why).
REFUSED: dict[str, tuple[str, str]] = {
    # Integer convolutions fold their weights, zero points and scales into the kernel.
    **{
        f"test_{name}[inputs]": (
            f"{op}.*must be a constant",
            "integer weights and quantization parameters as graph inputs",
        )
        for name, op in (
            ("convinteger_without_padding", "ConvInteger"),
            ("convinteger_with_padding", "ConvInteger"),
            ("qlinearconv", "QLinearConv"),
        )
    },
    # Neither convforge nor TVM's importer has these ops.
    **{
        f"test_{name}": ("DeformConv.*not supported", "no DeformConv kernel (convforge nor TVM)")
        for name in (
            "basic_deform_conv_with_padding",
            "basic_deform_conv_without_padding",
            "deform_conv_with_mask_bias",
            "deform_conv_with_multiple_offset_groups",
        )
    },
    **{
        f"test_col2im{suffix}": ("Col2Im.*not supported", "no Col2Im kernel (convforge nor TVM)")
        for suffix in ("", "_strides", "_pads", "_dilations", "_5d")
    },
    # MaxUnpool's output_shape as a graph input: dynamic output shape.
    "test_maxunpool_export_with_output_shape[inputs]": (
        f"MaxUnpool.*output_shape.*{_DYNAMIC_SHAPE}",
        "dynamic output shape",
    ),
    # Upsample's scales as a graph input: dynamic output shape.
    "test_upsample_nearest[inputs]": (f"Upsample.*{_DYNAMIC_SHAPE}", "dynamic output shape"),
}

#: Resize with roi/scales/sizes as graph inputs (every Resize case, ``inputs`` form).
RESIZE_CASES = (
    "upsample_scales_nearest", "downsample_scales_nearest", "upsample_sizes_nearest",
    "downsample_sizes_nearest", "upsample_scales_linear", "upsample_scales_linear_align_corners",
    "downsample_scales_linear", "downsample_scales_linear_align_corners",
    "upsample_scales_cubic", "upsample_scales_cubic_align_corners", "downsample_scales_cubic",
    "downsample_scales_cubic_align_corners", "upsample_sizes_cubic", "downsample_sizes_cubic",
    "upsample_scales_cubic_A_n0p5_exclude_outside",
    "downsample_scales_cubic_A_n0p5_exclude_outside", "upsample_scales_cubic_asymmetric",
    "tf_crop_and_resize", "tf_crop_and_resize_extrapolation_value",
    "downsample_sizes_linear_pytorch_half_pixel", "upsample_sizes_nearest_floor_align_corners",
    "upsample_sizes_nearest_round_prefer_ceil_asymmetric",
    "upsample_sizes_nearest_ceil_half_pixel", "downsample_scales_linear_antialias",
    "downsample_sizes_linear_antialias", "downsample_scales_cubic_antialias",
    "downsample_sizes_cubic_antialias", "upsample_scales_nearest_axes_2_3",
    "upsample_scales_nearest_axes_3_2", "upsample_sizes_nearest_axes_2_3",
    "upsample_sizes_nearest_axes_3_2", "tf_crop_and_resize_axes_2_3",
    "tf_crop_and_resize_axes_3_2", "upsample_sizes_nearest_not_larger",
    "upsample_sizes_nearest_not_smaller", "downsample_sizes_nearest_not_larger",
    "downsample_sizes_nearest_not_smaller", "downsample_scales_linear_half_pixel_symmetric",
    "upsample_scales_linear_half_pixel_symmetric",
)  # fmt: skip
REFUSED.update(
    {
        f"test_resize_{name}[inputs]": (f"Resize.*{_DYNAMIC_SHAPE}", _RESIZE_INPUT)
        for name in RESIZE_CASES
    }
)

#: Cases whose expected output (ONNX's reference) differs from onnxruntime, where convforge
#: follows onnxruntime (the project's oracle): checked against onnxruntime, and the
#: disagreement itself is asserted, so the entry cannot go stale. align_corners with a
#: scale whose output length is not integral: ONNX's reference divides by
#: (length_original * scale - 1), onnxruntime by (output length - 1).
ORT_SEMANTICS: dict[str, str] = {
    "test_resize_downsample_scales_linear_align_corners[init]": "align_corners, scale 0.6",
    "test_resize_downsample_scales_cubic_align_corners[init]": "align_corners, scale 0.8",
    # MaxUnpool with output_shape larger than the unpooled shape: onnxruntime reads the
    # indices as flat positions in output_shape; ONNX's reference scatters into the
    # unpooled shape and zero-pads it.
    "test_maxunpool_export_with_output_shape[init]": "indices relative to output_shape",
}

#: Runs that would kill the process (none today; a big-stride ConvTranspose would, fixed in
#: /work/wt-crash): skipped with the reason.
CRASHES: dict[str, str] = {}


@functools.lru_cache(maxsize=1)
def node_cases() -> dict[str, list]:
    """The conv-family node cases by op type (generated, ~12 s once per session)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    by_op: dict[str, list] = {op: [] for op in FAMILY}
    for case in cases:
        ops = [n.op_type for n in case.model.graph.node]
        if case.name.startswith("test_causal_conv_with_state"):
            by_op["CausalConvWithState"].append(case)
            continue
        family = [op for op in ops if op in FAMILY]
        if family:
            by_op[family[0]].append(case)
    return by_op


def forms(case) -> list[tuple[str, onnx.ModelProto, list[np.ndarray]]]:
    """The case as generated and, with more than one input, with the rest as initializers."""
    inputs = [np.asarray(a) for a in case.data_sets[0][0]]
    result = [("inputs", case.model, inputs)]
    if len(case.model.graph.input) > 1:
        model = onnx.ModelProto()
        model.CopyFrom(case.model)
        first, *rest = list(model.graph.input)
        for value, array in zip(rest, inputs[1:]):
            model.graph.initializer.append(numpy_helper.from_array(array, value.name))
        del model.graph.input[:]
        model.graph.input.append(first)
        result.append(("init", model, inputs[:1]))
    return result


def run_onnxruntime(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list | None:
    """onnxruntime's outputs, or None where onnxruntime cannot run the model."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        names = [i.name for i in session.get_inputs()]
        return session.run(None, dict(zip(names, inputs)))
    except Exception:
        return None


def _close(got, want, rtol, atol) -> str | None:
    try:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    except AssertionError as err:
        return " ".join(str(err).split())[:300]
    return None


def check_run(case, form: str, model, inputs) -> tuple[str, str]:
    """(outcome, detail): outcome 'pass', 'refused', or 'FAIL'."""
    key = f"{case.name}[{form}]"
    refused = REFUSED.get(key) or REFUSED.get(case.name)
    expected = case.data_sets[0][1]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = cf.compile_model(model)(*inputs)
    except (ValueError, NotImplementedError) as err:
        message = str(err).strip()
        if refused is None:
            return "FAIL", f"unlisted refusal: {type(err).__name__}: {message}"
        pattern, _ = refused
        if "\n" in message or not re.search(pattern, message):
            return "FAIL", f"refusal not one line matching {pattern!r}: {message}"
        return "refused", message
    except Exception as err:  # a TVM error, a converter's AttributeError, ...
        return "FAIL", f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
    if refused:
        return "FAIL", f"listed in REFUSED ({refused[1]}) but ran: remove it from REFUSED"
    problems = []
    if len(got) != len(expected):
        problems.append(f"{len(got)} outputs, expected {len(expected)}")
    reference = run_onnxruntime(model, inputs)
    for k, (g, e) in enumerate(zip(got, expected)):
        e = np.asarray(e)
        if g.dtype != e.dtype or g.shape != e.shape:
            problems.append(f"output {k}: {g.dtype}{g.shape}, expected {e.dtype}{e.shape}")
            continue
        if key in ORT_SEMANTICS:
            assert reference is not None, f"{key}: onnxruntime must run it"
            assert _close(reference[k], e, case.rtol, case.atol), f"{key}: ORT now agrees"
            e = reference[k]
        elif reference is not None and (bad := _close(g, reference[k], case.rtol, 1e-5)):
            problems.append(f"output {k} vs onnxruntime: {bad}")
        if bad := _close(g, e, case.rtol, case.atol):
            problems.append(f"output {k}: {bad}")
    if problems:
        return "FAIL", "; ".join(problems)
    return "pass", ""


COUNTS: dict[str, dict[str, int]] = {}


@pytest.mark.parametrize("op_type", FAMILY)
def test_node_cases(op_type):
    """Every node case of ``op_type`` in both forms passes or is a listed refusal."""
    results = []
    start = time.perf_counter()
    for case in node_cases()[op_type]:
        for form, model, inputs in forms(case):
            key = f"{case.name}[{form}]"
            if key in CRASHES or case.name in CRASHES:
                results.append((key, "skipped", CRASHES.get(key) or CRASHES[case.name]))
                continue
            results.append((key, *check_run(case, form, model, inputs)))
    counts: dict[str, int] = {}
    for _, outcome, _ in results:
        counts[outcome] = counts.get(outcome, 0) + 1
    COUNTS[op_type] = counts
    print(f"{op_type}: {len(results)} runs {counts} in {time.perf_counter() - start:.1f} s")
    failures = [f"{key}: {detail}" for key, outcome, detail in results if outcome == "FAIL"]
    assert not failures, "\n".join(failures)


def test_lists_name_real_cases():
    """Every key of REFUSED / ORT_SEMANTICS / CRASHES is a generated run."""
    keys = set()
    for cases in node_cases().values():
        for case in cases:
            keys.add(case.name)
            keys.update(f"{case.name}[{form}]" for form, _, _ in forms(case))
    for table in (REFUSED, ORT_SEMANTICS, CRASHES):
        unknown = sorted(set(table) - keys)
        assert not unknown, unknown


def test_summary():
    """The totals (printed with ``-s``); runs after the per-op tests in file order."""
    if len(COUNTS) < len(FAMILY):
        pytest.skip("the per-op tests did not all run")
    total: dict[str, int] = {}
    for counts in COUNTS.values():
        for outcome, n in counts.items():
            total[outcome] = total.get(outcome, 0) + n
    print(f"conv-family ONNX node cases: {sum(total.values())} runs: {total}")
    assert total.get("FAIL", 0) == 0
