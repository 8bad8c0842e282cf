"""The schedule rule lists (schedules/rules.py): no silent fallback, block names as constants.

A rule that raises is an error in strict mode (``CONVFORGE_STRICT_SCHEDULES=1``, which
tests/conftest.py sets for the whole run) and a logged warning otherwise, after which the
generic schedule computes the right numbers (numpy is the oracle)."""

from __future__ import annotations

import ast
import logging
import pathlib

import numpy as np
import pytest
from tvm import s_tir, te

from convforge import ops, shapes
from convforge.build import compile_computation
from convforge.ops import blocks
from convforge.schedules import cpu, gpu, rules
from convforge.targets import host_target, resolve_target

ROOT = pathlib.Path(__file__).resolve().parents[1] / "convforge"


class BrokenRule(rules.ScheduleRule):
    """Applies to everything, then fails as a buggy rule would."""

    def applies(self, func, target):
        return True

    def apply(self, func, target):
        raise RuntimeError("deliberately broken")


class BrokenBlockRule(rules.BlockRule):
    def applies(self, sch, block, target):
        return sch.get(block).name_hint == blocks.CONV

    def apply(self, sch, block, target):
        raise ValueError("deliberately broken block rule")


GEOM = shapes.conv_geometry((1, 3, 9, 9), (4, 3, 3, 3), padding=1)


def _computation():
    x = te.placeholder(GEOM.x_shape, "float32", name="x")
    w = te.placeholder(GEOM.w_shape, "float32", name="w")
    return [x, w], [ops.conv(x, w, GEOM)]


def _func():
    inputs, outputs = _computation()
    return te.create_prim_func([*inputs, *outputs])


def _numpy_conv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Zero-padded (1) stride-1 cross-correlation, straight from the definition."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, w.shape[2:], axis=(2, 3))
    return np.einsum("nchwij,ocij->nohw", windows, w)


def test_the_test_run_is_strict():
    assert rules.strict()


def test_a_broken_rule_raises_in_strict_mode_naming_rule_and_function(monkeypatch):
    monkeypatch.setattr(cpu, "CPU_RULES", (BrokenRule(), *cpu.CPU_RULES))
    with pytest.raises(rules.ScheduleRuleError, match=r"BrokenRule.*deliberately broken"):
        cpu.schedule_cpu(_func(), host_target())


def test_a_broken_block_rule_raises_in_strict_mode_naming_the_block(monkeypatch):
    monkeypatch.setattr(cpu, "CPU_BLOCK_RULES", (BrokenBlockRule(), *cpu.CPU_BLOCK_RULES))
    with pytest.raises(rules.ScheduleRuleError, match=r"BrokenBlockRule.*block 'conv'"):
        cpu.generic_cpu_schedule(_func(), host_target())


def test_a_broken_rule_warns_and_the_fallback_computes_correctly(monkeypatch, caplog):
    monkeypatch.setenv(rules.STRICT_ENV, "0")
    monkeypatch.setattr(cpu, "CPU_RULES", (BrokenRule(), *cpu.CPU_RULES))
    monkeypatch.setattr(cpu, "CPU_BLOCK_RULES", (BrokenBlockRule(), *cpu.CPU_BLOCK_RULES))
    target = host_target()
    with caplog.at_level(logging.WARNING, logger="convforge"):
        kernel = compile_computation("broken_rule", _computation, target, cpu.schedule_cpu)
    messages = [r.getMessage() for r in caplog.records if r.name == "convforge"]
    assert any("BrokenRule" in m and "falling back" in m for m in messages), messages
    assert any("BrokenBlockRule" in m and "'conv'" in m for m in messages), messages
    rng = np.random.default_rng(0)
    x = rng.standard_normal(GEOM.x_shape).astype(np.float32)
    w = rng.standard_normal(GEOM.w_shape).astype(np.float32)
    np.testing.assert_allclose(kernel(x, w), _numpy_conv(x, w), rtol=1e-4, atol=1e-4)


def test_a_broken_cuda_rule_raises_in_strict_mode_and_falls_back_to_dlight_otherwise(
    monkeypatch, caplog
):
    target = resolve_target("cuda")
    monkeypatch.setattr(gpu, "CUDA_RULES", (BrokenRule(), *gpu.CUDA_RULES))
    with pytest.raises(rules.ScheduleRuleError, match="BrokenRule"):
        gpu.schedule_gpu(_func(), target)
    monkeypatch.setenv(rules.STRICT_ENV, "0")
    with caplog.at_level(logging.WARNING, logger="convforge"):
        mod = gpu.schedule_gpu(_func(), target)
    assert any("BrokenRule" in r.getMessage() for r in caplog.records)
    assert mod.script() == gpu.dlight_schedule(_func(), target).script()


def _explode(*args):
    raise RuntimeError("deliberately broken adapter")


def test_adapter_rules_are_reported_by_their_names(monkeypatch):
    """A ``FunctionRule`` / ``NamedBlockRule`` that fails is named by its ``name`` (as the
    rule classes are by theirs); the adapters keep the order and the applies/apply contract."""
    names = [rules.rule_name(r) for r in (*cpu.CPU_RULES, *cpu.CPU_BLOCK_RULES)]
    assert names[:3] == ["WinogradPoolRule", "WinogradRule", "NonfiniteFlagRule"]
    assert names[-6:] == [
        "DenseRule", "PoolRule", "SoftmaxRule", "ConvNchwcRule", "ReductionRule", "InjectiveRule"
    ]  # fmt: skip
    broken = rules.FunctionRule("ExplodingRule", lambda func: True, _explode)
    monkeypatch.setattr(cpu, "CPU_RULES", (broken, *cpu.CPU_RULES))
    with pytest.raises(rules.ScheduleRuleError, match=r"ExplodingRule.*broken adapter"):
        cpu.schedule_cpu(_func(), host_target())
    broken_block = rules.NamedBlockRule("ExplodingBlockRule", blocks.CONV, _explode)
    monkeypatch.setattr(cpu, "CPU_BLOCK_RULES", (broken_block, *cpu.CPU_BLOCK_RULES))
    with pytest.raises(rules.ScheduleRuleError, match=r"ExplodingBlockRule.*block 'conv'"):
        cpu.generic_cpu_schedule(_func(), host_target())


@pytest.mark.parametrize("value", ["2", "maybe"])
def test_a_bad_strict_setting_is_refused(monkeypatch, value):
    monkeypatch.setenv(rules.STRICT_ENV, value)
    with pytest.raises(ValueError, match=f"{rules.STRICT_ENV} must be 0 or 1"):
        rules.strict()


def test_the_first_rule_that_applies_is_the_one_used():
    func = _func()
    target = host_target()
    assert rules.first_rule(cpu.CPU_RULES, func, target) is None  # a plain 3x3: block rules
    sch = s_tir.Schedule(func)
    conv = sch.get_sblock(blocks.CONV)
    rule = next(r for r in cpu.CPU_BLOCK_RULES if r.applies(sch, conv, target))
    assert isinstance(rule, cpu.ReductionRule)
    assert isinstance(rules.first_rule(gpu.CUDA_RULES, func, resolve_target("cuda")), gpu.ConvRule)


def _string_literals(path: pathlib.Path) -> list[tuple[int, str]]:
    """String constants of ``path`` other than docstrings and ``__all__`` entries."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            skip.add(id(body[0].value))
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            skip.update(id(n) for n in ast.walk(node.value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
    ]


def test_no_block_name_is_a_string_literal_in_ops_or_schedules():
    names = {v for k, v in vars(blocks).items() if k.isupper() and isinstance(v, str)}
    assert len(names) > 50
    files = [*(ROOT / "ops").glob("*.py"), *(ROOT / "schedules").glob("*.py")]
    found = [
        f"{path.name}:{line}: {value!r}"
        for path in files
        if path.name != "blocks.py"
        for line, value in _string_literals(path)
        if value in names
    ]
    assert not found, found


@pytest.mark.parametrize(
    ("name", "base", "expected"),
    [("conv", "conv", True), ("conv_12", "conv", True), ("conv_epilogue", "conv", False),
     ("conv_", "conv", False), ("pool", "conv", False)],
)  # fmt: skip
def test_numbered_block_names(name, base, expected):
    assert blocks.is_numbered(name, base) is expected


# --- rules that used to fail silently on degenerate shapes (found with strict mode) -------


def test_a_one_element_blocked_conv_is_scheduled_and_correct():
    """conv_nchwc over a single output value: the write-back has no loop of its own (the
    rule used to raise in ``vectorize`` and leave the kernel unscheduled)."""
    import convforge as cf

    x = np.array([[[[1.5]]]], np.float32)
    w = np.array([[[[-2.0]]]], np.float32)
    assert cf.conv(x, w).item() == -3.0


def test_a_degenerate_gather_is_scheduled_and_matches_the_sparse_transpose():
    """A gather-form transposed conv (18 phases) whose masked taps index past its products:
    TVM cannot move its blocks, so the rule runs them as parallel loops (it used to raise
    in ``compute_at`` and fall back to the generic schedule, which vectorizes the gather)."""
    import convforge as cf

    geom = shapes.conv_transpose_geometry(
        (1, 1, 2, 2, 2), (1, 1, 1, 1, 1), stride=(2, 3, 3), padding=1, bias_shape=(1,)
    )
    rng = np.random.default_rng(4)
    x = rng.standard_normal(geom.x_shape).astype(np.float32)
    w = rng.standard_normal(geom.w_shape).astype(np.float32)
    b = rng.standard_normal(1).astype(np.float32)
    y = cf.conv_transpose(x, w, b, stride=(2, 3, 3), padding=1)
    c = cf.conv_matrix(w.astype(np.float64), geom.adjoint())
    expected = (c.T @ x.astype(np.float64).ravel()).reshape(geom.out_shape) + b[0]
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
