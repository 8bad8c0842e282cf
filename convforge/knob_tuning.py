"""Tuning a plan's knobs (:mod:`convforge.knobs`) by measurement, into a tuning database.

:func:`tune_knobs` measures configurations of a default plan's
:class:`~convforge.knobs.KnobSpace` and commits each measured configuration to
``<db>/<target digest>/<plan digest>.knobs`` at once (atomically, under the database's file
lock): a run killed at any moment resumes from the file, measuring only what it lacks.

Measurement: locally, each candidate is compiled in this process (``tvm.compile`` on
``jobs`` threads; MetaSchedule's ``LocalBuilder`` starts a process pool per batch, seconds of
TVM imports each on a busy 2-core machine) and timed by TVM's ``time_evaluator`` with the
numbers of MetaSchedule's runner (``tuning.EVALUATOR``); with an RPC tracker, by
MetaSchedule's builder and ``RPCRunner`` (``tuning.make_builder`` / ``make_runner``). The
default plan and the candidates are measured the same way (each figure the fastest of its
measurements, each the mean of ``repeat`` runs) to rank them; the default is measured twice
at the start and once after every batch. A configuration applies only once *confirmed*: at
the end the leading configurations (figures within ``CONFIRM_SLACK`` of the default's) are
timed against the default interleaved, ``CONFIRM_ROUNDS`` rounds of default, leaders,
default, and a leader's ratio is the median over the rounds of its time / the mean of the
two default timings around it (load that drifts hits both alike); a lookup
(:func:`convforge.knobs.tuned_plan`) applies the lowest ratio below
``knobs.CONFIRM_MARGIN`` (0.98). Progress and the result report that confirmed figure
(``default_seconds x ratio``), so they never claim a gain that was not confirmed.

The search. The space is small and structured (an algorithm, then 2 to 7 knobs of a few
values each; 15 to about 3000 configurations), and a measurement costs about a second, so:

- a space no larger than the trials is measured exhaustively (depthwise and 1-D kernels);
- otherwise an evolutionary search: the default and each other algorithm's first
  configuration, then in each batch the nearest one-knob mutations (value steps of 1, 2,
  ... along each knob's range) of the fastest few configurations measured so far, a
  crossover of the two fastest and random configurations to fill it. Most knobs act
  nearly independently on a register-tiled kernel (tile sizes, grain, pipeline, threads),
  which coordinate steps from the best exploit; the random draws keep it from stalling.

MetaSchedule's XGBoost cost model was not used: it learns from features of the scheduled
TIR and needs a few hundred measurements before its ranking beats plain coordinate steps
(on this machine 64 trials of MetaSchedule's own search found nothing faster than the
default); 64 trials here visit every one-knob neighbour of the default and of the best
configurations. Configurations whose scheduled TIR equals one already measured (a knob with
no effect on this kernel, e.g. the grain of a kernel with many tasks) are skipped, not
counted.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm.s_tir import meta_schedule as ms
from tvm_ffi.structural import structural_hash

from convforge.build import prim_func
from convforge.knobs import (
    Config,
    KnobRecords,
    KnobSpace,
    config_key,
    knob_space,
    merge_knob_records,
    plan_text,
    records_file,
    with_knobs,
)
from convforge.plan import ConvPlan, plan_conv
from convforge.schedules import tuning
from convforge.schedules.cpu import schedule_cpu
from convforge.targets import target_key
from convforge.threads import physical_cores

#: Configurations built together (on ``jobs`` threads or processes), then timed one by one.
BATCH = 8
#: The leading configurations timed against the default at the end, interleaved, in
#: ``CONFIRM_ROUNDS`` rounds (``knobs.CONFIRM_MARGIN``: how much faster one must be).
CONFIRM = 2
CONFIRM_ROUNDS = 3
#: Leaders within this factor of the default's figure are confirmed (a candidate measured
#: once at a busy moment may be faster than the default's fastest timing says).
CONFIRM_SLACK = 1.1
#: The fastest configurations whose mutations fill a batch.
PARENTS = 3


@dataclass(frozen=True)
class KnobTuningResult:
    """Outcome of :func:`tune_knobs` (seconds: the figures of the module docstring)."""

    database_file: Path
    default_seconds: float
    best_seconds: float
    best_config: Config | None  # None: no configuration beats the default
    trials: int  # configurations measured in the file (the default not counted)
    new_trials: int
    elapsed_seconds: float
    space_size: int


def default_plan(plan: ConvPlan) -> ConvPlan:
    """The default plan of the convolution ``plan`` computes (``plan`` may be a tuned one):
    what :func:`tune_knobs` tunes."""
    return plan_conv(
        plan.geometry, plan.dtype, plan.target, constant_weight=plan.constant_weight,
        pool=plan.fused_pool, activation=plan.activation, bias=plan.bias,
        residual=plan.residual, tuned=False,
    )  # fmt: skip


def scheduled_module(plan: ConvPlan) -> tvm.IRModule:
    """The PrimFunc of ``plan`` under its default schedule (its knobs included): what is
    measured for it."""
    return schedule_cpu(prim_func(plan.computation()), plan.target)


class _InProcess:
    """Local measurement in this process (see the module docstring)."""

    def __init__(self, target: tvm.target.Target, jobs: int | None) -> None:
        self.target, self.jobs = target, jobs or physical_cores()
        self.rng = np.random.default_rng(0)

    def build(self, mods: list[tvm.IRModule]) -> list[tuple[Any, str | None]]:
        def compile_one(mod):
            try:
                return tvm.compile(mod, target=self.target), None
            except Exception as err:  # a candidate that does not build is a failed trial
                return None, f"{type(err).__name__}: {err}"[-500:]

        with concurrent.futures.ThreadPoolExecutor(self.jobs) as pool:
            return list(pool.map(compile_one, mods))

    def time(self, built: Any, mod: tvm.IRModule) -> list[float]:
        device = tvm.cpu()
        args = []
        for info in ms.arg_info.ArgInfo.from_prim_func(mod["main"]):
            data = self.rng.standard_normal([int(n) for n in info.shape])
            args.append(tvm.runtime.tensor(data.astype(str(info.dtype)), device))
        timer = built.mod.time_evaluator("main", device, **tuning.EVALUATOR)
        return [float(s) for s in timer(*args).results]

    def release(self, built: Any) -> None:
        pass


class _Runner:
    """Measurement by MetaSchedule's builder and runner (an RPC tracker's devices)."""

    def __init__(self, target: tvm.target.Target, rpc: tuning.RPCTracker, jobs: int | None):
        self.target, self.jobs = target, jobs or physical_cores()
        self.builder, self.runner = tuning.make_builder(jobs), tuning.make_runner(rpc, jobs)

    def build(self, mods: list[tvm.IRModule]) -> list[tuple[Any, str | None]]:
        inputs = [ms.builder.BuilderInput(mod, self.target) for mod in mods]
        return [
            (None, r.error_msg) if r.error_msg else (r.artifact_path, None)
            for r in self.builder.build(inputs)
        ]

    def time(self, built: Any, mod: tvm.IRModule) -> list[float]:
        args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
        (future,) = self.runner.run([ms.runner.RunnerInput(built, "cpu", args)])
        outcome = future.result()
        if outcome.error_msg:
            raise RuntimeError(outcome.error_msg[-500:])
        return [float(s) for s in outcome.run_secs]

    def release(self, built: Any) -> None:
        ms.utils.remove_build_dir(built)


class _Search:
    """The order of candidates (see the module docstring)."""

    def __init__(self, space: KnobSpace, rng: random.Random, exhaustive: bool) -> None:
        self.space, self.rng, self.exhaustive = space, rng, exhaustive

    def seeds(self) -> list[Config]:
        """The default, and each other algorithm's first configuration."""
        seeds = [self.space.default]
        for name, _ in self.space.algorithms:
            if name != self.space.default["algorithm"]:
                seeds.extend([c for c in self.space.configs if c["algorithm"] == name][:1])
        return seeds

    def neighbours(self, config: Config) -> list[Config]:
        """One-knob mutations of ``config``, nearest value steps first."""
        found = []
        for knob in self.space.knobs(config["algorithm"]):
            index = knob.values.index(config[knob.name])
            for other, value in enumerate(knob.values):
                if other != index:
                    found.append((abs(other - index), {**config, knob.name: value}))
        found.sort(key=lambda pair: pair[0])
        return [c for _, c in found if self.space.valid(c)]

    def crossover(self, a: Config, b: Config) -> Config | None:
        if a["algorithm"] != b["algorithm"]:
            return None
        child = {k: self.rng.choice((a[k], b[k])) for k in a}
        return child if self.space.valid(child) else None

    def batch(self, ranked: list[Config], tried: set[str], size: int) -> list[Config]:
        """Up to ``size`` configurations not in ``tried`` (``ranked``: the measured ones
        and the default, fastest first)."""
        chosen: list[Config] = []
        keys: set[str] = set()

        def take(config: Config | None) -> None:
            if config is not None and len(chosen) < size:
                key = config_key(config)
                if key not in tried and key not in keys:
                    chosen.append(config)
                    keys.add(key)

        if self.exhaustive:
            for config in self.space.configs:
                take(config)
            return chosen
        for config in self.seeds():
            take(config)
        parents = ranked[:PARENTS] or [self.space.default]
        if len(parents) > 1:
            take(self.crossover(parents[0], parents[1]))
        lists = [self.neighbours(p) for p in parents]
        while len(chosen) < size - 1 and any(lists):
            for options in lists:
                while options:
                    before = len(chosen)
                    take(options.pop(0))
                    if len(chosen) > before:
                        break
        for _ in range(50):
            if len(chosen) >= size:
                break
            take(self.rng.choice(self.space.configs))
        return chosen


def tune_knobs(
    plan: ConvPlan,
    db: str | Path,
    trials: int,
    *,
    rpc: tuning.RPCTracker | None = None,
    jobs: int | None = None,
    seed: int | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    time_limit_s: float | None = None,
) -> KnobTuningResult:
    """Tune the knobs of ``plan``'s default plan (:func:`default_plan`) until ``db`` holds
    ``trials`` measured configurations of it, the space is exhausted, or ``time_limit_s``
    seconds have passed (the batch under way is finished; confirmation rounds that do not
    fit are skipped). Resumes from the records already in ``db``. ``progress(done, total,
    best_seconds)`` after each measured configuration (``best_seconds``: the result's
    rule). A KeyboardInterrupt propagates, every measured configuration committed.
    ``rpc``: measure on the devices of a TVM RPC tracker; ``jobs``: parallel builds.
    """
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 0:
        raise ValueError(f"trials must be an integer >= 0, got {trials!r}")
    if time_limit_s is not None and not time_limit_s > 0:
        raise ValueError(f"time_limit_s must be positive, got {time_limit_s!r}")
    tuning.check_database_path(db, "db")
    start = time.perf_counter()
    deadline = None if time_limit_s is None else start + time_limit_s
    plan = default_plan(plan)
    space = knob_space(plan)  # ValueError for a plan without knobs
    if rpc is not None:
        tuning.require_tuning_extra()
    target = plan.target
    path, key, text = records_file(db, plan), target_key(target), plan_text(plan)
    records = KnobRecords.load(path, key, text) or KnobRecords(path, key, text)
    done_before = len(records.figures())
    search = _Search(space, random.Random(seed), exhaustive=len(space) - 1 <= trials)

    def in_time() -> bool:
        return deadline is None or time.perf_counter() < deadline

    with tuning._interruptible():
        measurer = _InProcess(target, jobs) if rpc is None else _Runner(target, rpc, jobs)
        default_mod = scheduled_module(plan)

        def time_default() -> None:
            nonlocal records
            ((built, error),) = measurer.build([default_mod])
            try:
                if error is not None:
                    raise RuntimeError(f"building the default failed: {error}")
                seconds = tuning._mean(measurer.time(built, default_mod))
            except RuntimeError as err:  # a lost RPC device, say: the search goes on
                logging.getLogger("convforge").warning("timing the default: %s", err)
                return
            finally:
                if built is not None:
                    measurer.release(built)
            records = merge_knob_records(path, key, text, [], seconds)

        def best() -> float:
            found = records.best()
            return records.default_seconds if found is None else found[1]

        def report() -> None:
            if progress is not None:
                progress(min(len(records.figures()), trials), trials, best())

        def measure(batch: list[tuple[Config, tvm.IRModule]]) -> None:
            """Build and time ``batch``, ``jobs`` candidates at a time while in time."""
            step = measurer.jobs
            for first in range(0, len(batch), step):
                if first and not in_time():
                    return
                measure_built(batch[first : first + step])

        def measure_built(batch: list[tuple[Config, tvm.IRModule]]) -> None:
            nonlocal records
            built = measurer.build([mod for _, mod in batch])
            for (config, mod), (handle, error) in zip(batch, built):
                entry: dict = {"config": config, "run_secs": []}
                if error is not None:
                    entry["error"] = error
                else:
                    try:
                        entry["run_secs"] = measurer.time(handle, mod)
                    except RuntimeError as err:
                        entry["error"] = str(err)[-500:]
                    finally:
                        measurer.release(handle)
                records = merge_knob_records(path, key, text, [entry])
                report()

        def confirm() -> None:
            """The leaders against the default, interleaved: ``CONFIRM_ROUNDS`` rounds of
            default, leaders, default; a leader's ratio is the median over the rounds of
            its time / the mean of the two default timings around it."""
            nonlocal records
            ranked_all = sorted(records.figures().values(), key=lambda fc: fc[0])
            leaders = [
                c for s, c in ranked_all
                if s < CONFIRM_SLACK * records.default_seconds and c in space
            ][:CONFIRM]  # fmt: skip
            if not leaders:
                return
            mods = [default_mod, *(scheduled_module(with_knobs(plan, c)) for c in leaders)]
            built = measurer.build(mods)
            try:
                if built[0][1] is not None:
                    return
                ok = [i for i in range(1, len(mods)) if built[i][1] is None]
                ratios: dict[int, list[float]] = {i: [] for i in ok}
                defaults = []
                for _ in range(CONFIRM_ROUNDS):
                    before = tuning._mean(measurer.time(built[0][0], mods[0]))
                    times = {i: tuning._mean(measurer.time(built[i][0], mods[i])) for i in ok}
                    after = tuning._mean(measurer.time(built[0][0], mods[0]))
                    defaults += [before, after]
                    for i, seconds in times.items():
                        ratios[i].append(seconds / ((before + after) / 2))
            except RuntimeError as err:  # a lost RPC device: no confirmation this time
                logging.getLogger("convforge").warning("confirming the leaders: %s", err)
                return
            finally:
                for handle, error in built:
                    if error is None:
                        measurer.release(handle)
            found = [
                {"config": leaders[i - 1], "ratio": float(np.median(r)), "rounds": len(r)}
                for i, r in ratios.items()
            ]
            records = merge_knob_records(path, key, text, [], min(defaults), found)

        if records.default_seconds is None:
            time_default()
            time_default()
        if records.default_seconds is None:
            raise RuntimeError(f"the default plan of {plan.label} could not be measured")
        seen = {structural_hash(default_mod)}
        for _, config in records.figures().values():
            if config in space:
                seen.add(structural_hash(scheduled_module(with_knobs(plan, config))))
        tried = set(records.figures()) | {config_key(space.default)}
        report()
        while len(records.figures()) < trials and in_time():
            figures = [*records.figures().values(), (records.default_seconds, space.default)]
            ranked = [c for _, c in sorted(figures, key=lambda fc: fc[0]) if c in space]
            size = min(BATCH, trials - len(records.figures()))
            batch: list[tuple[Config, tvm.IRModule]] = []
            for _ in range(8):  # skipped duplicates can leave a batch short: draw again
                for config in search.batch(ranked, tried, size - len(batch)):
                    tried.add(config_key(config))
                    mod = scheduled_module(with_knobs(plan, config))
                    digest = structural_hash(mod)
                    if digest not in seen:
                        seen.add(digest)
                        batch.append((config, mod))
                if len(batch) >= size or len(tried) >= len(space):
                    break
            if not batch:
                break  # every distinct configuration is measured
            measure(batch)
            time_default()
            report()
        if in_time():
            confirm()
        report()
    found = records.best()
    return KnobTuningResult(
        database_file=path,
        default_seconds=records.default_seconds,
        best_seconds=records.default_seconds if found is None else found[1],
        best_config=None if found is None else found[0],
        trials=len(records.figures()),
        new_trials=len(records.figures()) - done_before,
        elapsed_seconds=time.perf_counter() - start,
        space_size=len(space),
    )


def describe(config: Config | None) -> str:
    """A configuration as one short line (``default`` for None)."""
    if config is None:
        return "default"
    return json.dumps(config)[1:-1].replace('"', "")
