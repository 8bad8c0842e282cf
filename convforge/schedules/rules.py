"""Schedule rules and the one dispatcher that walks a target family's ordered rule list.

In the manner of TVM's dlight (``tvm.s_tir.dlight``'s ``ScheduleRule``): a rule is a small
class that says whether it fits (``applies``, cheap, no scheduling) and schedules what it
fits (``apply``). Each target family has one ordered list (``schedules/cpu.py``:
:data:`~convforge.schedules.cpu.CPU_RULES` and
:data:`~convforge.schedules.cpu.CPU_BLOCK_RULES`; ``schedules/gpu.py``:
:data:`~convforge.schedules.gpu.CUDA_RULES`); the first rule that applies is the one used.

A rule declines what it does not fit in ``applies``; an exception from ``apply`` means a
bug in the rule. Then, with ``CONVFORGE_STRICT_SCHEDULES=1`` (the test suite sets it), the
dispatcher raises :class:`ScheduleRuleError` naming the rule and the function or block;
otherwise it logs a warning on the ``convforge`` logger and falls back to the next
schedule (the family's generic one: correct, slower).
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import tvm
from tvm import s_tir, tirx

#: Environment variable: "1" makes a failing rule an error instead of a warning.
STRICT_ENV = "CONVFORGE_STRICT_SCHEDULES"

logger = logging.getLogger("convforge")

Result = TypeVar("Result")


class ScheduleRuleError(RuntimeError):
    """A schedule rule that said it applies failed (strict mode): a bug in the rule."""


def strict() -> bool:
    """Whether a failing rule raises (``CONVFORGE_STRICT_SCHEDULES`` is 1/true/yes/on).

    Raises ValueError for another non-empty value, so a typo does not turn strictness off.
    """
    value = os.environ.get(STRICT_ENV, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{STRICT_ENV} must be 0 or 1, got {value!r}")


def rule_failed(rule: object, where: str, error: Exception, fallback: str) -> None:
    """Report that ``rule`` raised ``error`` on ``where`` (a function or block name): raise
    :class:`ScheduleRuleError` in strict mode, else log a warning saying what the caller
    falls back to (``fallback``)."""
    message = f"schedule rule {rule_name(rule)} failed on {where}: {error}"
    if strict():
        raise ScheduleRuleError(message) from error
    logger.warning("%s; falling back to %s", message, fallback)


def rule_name(rule: object) -> str:
    """The name a rule is reported by: its ``name`` (:class:`FunctionRule`,
    :class:`NamedBlockRule`), else its class's name."""
    return getattr(rule, "name", None) or type(rule).__name__


def function_name(func: tirx.PrimFunc) -> str:
    """``func``'s global symbol, or the names of its root blocks when it has none."""
    symbol = func.attrs.get("global_symbol") if func.attrs is not None else None
    if symbol:
        return str(symbol)
    sch = s_tir.Schedule(func)
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    return "PrimFunc(" + ", ".join(names) + ")"


class ScheduleRule(ABC, Generic[Result]):
    """A whole-function rule: ``apply`` schedules every block of ``func`` it applies to.

    Contract: ``applies`` never raises and does not schedule; ``apply`` is called only where
    ``applies`` holds, and an exception from it is a bug (see :func:`rule_failed`).
    """

    @abstractmethod
    def applies(self, func: tirx.PrimFunc, target: tvm.target.Target) -> bool:
        """Whether this rule fits ``func`` on ``target``."""

    @abstractmethod
    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target) -> Result:
        """``func`` scheduled by this rule."""


@dataclass(frozen=True)
class FunctionRule(ScheduleRule[Result]):
    """A whole-function rule made of a predicate and a schedule function, for the many rules
    whose module already has ``is_x(func)`` and ``schedule_x(func, target)``.

    ``name`` is the rule's name in warnings and errors; ``predicate(func)`` is
    :meth:`applies` and keeps its contract (cheap, never raises); ``schedule(func, target)``
    is :meth:`apply`; ``doc`` says what the rule serves.
    """

    name: str
    predicate: Callable[[tirx.PrimFunc], bool]
    schedule: Callable[[tirx.PrimFunc, tvm.target.Target], Result]
    doc: str = ""

    def applies(self, func: tirx.PrimFunc, target: tvm.target.Target) -> bool:
        return self.predicate(func)

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target) -> Result:
        return self.schedule(func, target)


class BlockRule(ABC):
    """A rule for one block of a schedule (the generic CPU schedule walks the root blocks).

    ``apply`` schedules ``block`` in ``sch`` in place and returns the names of the other
    blocks it scheduled with it (fused into its loops), which the walk then skips.
    """

    @abstractmethod
    def applies(
        self, sch: s_tir.Schedule, block: s_tir.SBlockRV, target: tvm.target.Target
    ) -> bool:
        """Whether this rule fits ``block`` of ``sch`` on ``target``."""

    @abstractmethod
    def apply(
        self, sch: s_tir.Schedule, block: s_tir.SBlockRV, target: tvm.target.Target
    ) -> set[str]:
        """Schedule ``block``; the names of the blocks scheduled with it."""


@dataclass(frozen=True)
class NamedBlockRule(BlockRule):
    """A block rule for the block named ``block_name`` (an ``ops/blocks.py`` constant),
    scheduled by ``schedule(sch, block, target) -> names scheduled`` (:meth:`BlockRule.apply`'s
    contract). ``name`` is the rule's name in warnings and errors; ``doc`` says what it serves.
    """

    name: str
    block_name: str
    schedule: Callable[[s_tir.Schedule, s_tir.SBlockRV, tvm.target.Target], set[str]]
    doc: str = ""

    def applies(
        self, sch: s_tir.Schedule, block: s_tir.SBlockRV, target: tvm.target.Target
    ) -> bool:
        return sch.get(block).name_hint == self.block_name

    def apply(
        self, sch: s_tir.Schedule, block: s_tir.SBlockRV, target: tvm.target.Target
    ) -> set[str]:
        return self.schedule(sch, block, target)


def first_rule(
    rules: Sequence[ScheduleRule[Result]], func: tirx.PrimFunc, target: tvm.target.Target
) -> ScheduleRule[Result] | None:
    """The first of ``rules`` that applies to ``func`` on ``target``, else None."""
    return next((rule for rule in rules if rule.applies(func, target)), None)


def apply_rules(
    rules: Sequence[ScheduleRule[Result]],
    func: tirx.PrimFunc,
    target: tvm.target.Target,
    fallback: Callable[[tirx.PrimFunc, tvm.target.Target], Result],
) -> Result:
    """Schedule ``func`` by the first rule of ``rules`` that applies, else by ``fallback``;
    a rule that raises is reported by :func:`rule_failed`, then ``fallback`` schedules."""
    rule = first_rule(rules, func, target)
    if rule is not None:
        try:
            return rule.apply(func, target)
        except (ValueError, RuntimeError) as error:  # a ScheduleError is a RuntimeError
            fallback_name = getattr(fallback, "__name__", "the fallback schedule")
            rule_failed(rule, function_name(func), error, fallback_name)
    return fallback(func, target)


def apply_block_rules(
    rules: Sequence[BlockRule], func: tirx.PrimFunc, target: tvm.target.Target
) -> s_tir.Schedule:
    """Walk ``func``'s root blocks in order; schedule each (not already scheduled with an
    earlier one) by the first of ``rules`` that applies. A block no rule applies to stays as
    it is; a rule that raises is reported by :func:`rule_failed` and its block left as it is.
    The result's trace replays the rules (tuning seeds its search from it)."""
    sch = s_tir.Schedule(func)
    done: set[str] = set()
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        name = sch.get(block).name_hint
        if name in done:
            continue
        rule = next((r for r in rules if r.applies(sch, block, target)), None)
        if rule is None:
            continue
        trial = sch.copy()  # a failing rule leaves sch as it was
        try:
            done.update(rule.apply(trial, block, target))
        except (ValueError, RuntimeError) as error:
            rule_failed(rule, f"block {name!r} of {function_name(func)}", error, "its plain loops")
            continue
        sch = trial
    return sch
