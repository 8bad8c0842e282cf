"""The knob search space of convforge's own convolution plans, and tuned plans.

A :class:`~convforge.plan.ConvPlan` is a set of decisions (:func:`convforge.plan.plan_conv`
makes each from the target's :class:`~convforge.targets.TargetProfile`); here each decision
is a *knob* whose range is derived from the same profile, so that a tuner can search them
(:mod:`convforge.tune_knobs`):

======================== ==================================================================
knob                     values (where it applies)
======================== ==================================================================
``algorithm``            ``winograd`` (where :func:`~convforge.plan.winograd_tiles` applies:
                         then it is the default), ``blocked`` (NCHW[x]c, where
                         :func:`~convforge.plan.nchwc_blocks` applies), ``direct``
                         (the generic convolution, always)
``winograd_m``           F(2x2) / F(4x4) (3x3 stride 1: F(4) only up to 256 input channels,
                         the accuracy bound; stride 2: F(4))
``out_block``            output channels per register tile: 1, 2 (4 with 32 registers)
                         vectors of the profile's lanes, none wider than the channels need
``width_block``          blocked: positions per register tile, 1 .. (registers - v - 1) / v
                         for v channel vectors, at most the output width; with a fused
                         pool, dividing or a multiple of its width
``tile_block``           Winograd: tiles per register tile, 1 .. registers / 2 / v
``pack_input``           blocked 1x1 over one row: input packed in panels (0/1)
``parallel_tasks``       the parallel grain (blocked, Winograd): 2, 4, 8, 16 tasks wanted
                         before the width (or tiles) is split too
``winograd_pipeline``    0 auto (the profile's traffic rule), 1 the pipeline per task, 2
                         passes
``winograd_task_floats`` V and M floats per task: the profile's value / 2, x 1, x 2
``accumulators``         direct: vector accumulators per register block (0: the profile's)
``threads``              0 auto (the profile's one-thread threshold), 2 all threads (for a
                         kernel the threshold keeps on one; ``with_knobs`` also takes 1)
======================== ==================================================================

:func:`knob_space` gives a plan's :class:`KnobSpace`; :func:`with_knobs` gives the plan of
one configuration (a dict knob -> value); ``with_knobs(plan, knob_space(plan).default) ==
plan`` exactly, and every configuration computes the same convolution (same inputs and
output; only the weight's packed layout follows the knobs, and :meth:`ConvPlan.pack` packs
for the plan it is called on). A fused max pool stays fused: configurations whose
algorithm cannot compute it in the kernel are not in the space (their time would not be
comparable).

Knob records (:func:`tuned_plan`): ``<db>/<target digest>/<plan digest>.knobs``, JSON
``{"format", "kind": "knobs", "target", "plan", "default_seconds", "records": [{"config",
"run_secs"}, ...]}``, beside MetaSchedule's records of the same database (keyed by the same
target digest; the workload is the default plan, :func:`plan_digest`). :func:`plan_conv`
(with ``algorithm='auto'``) returns the plan of the fastest record that beats the default's
timing, so ``cf.conv``, ``prepare_conv`` and compiled models all use it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convforge import ops
from convforge.ops.blocks import PIPELINE_KNOB, THREADS_KNOB
from convforge.ops.conv import accumulator_dtype
from convforge.plan import (
    CHANNEL_VECTORS,
    Blocked,
    ConvPlan,
    Generic,
    Winograd,
    nchwc_blocks,
    winograd_tiles,
)
from convforge.schedules import tuning_dbs
from convforge.targets import is_cpu, profile, target_key, vector_lanes
from convforge.tvm_import import import_tvm

#: A configuration: knob name -> value (``algorithm`` a string, every other knob an int).
Config = dict[str, Any]

#: Suffix of a knob record file in a tuning database's target folder.
KNOB_SUFFIX = ".knobs"
_FORMAT = 1

#: Values of the parallel grain knob (tasks wanted before the width is split too).
PARALLEL_TASKS = (2, 4, 8, 16)
#: Values of the direct register block's accumulators (0: the profile's).
ACCUMULATORS = (0, 4, 6, 8, 12)


@dataclass(frozen=True)
class Knob:
    """One knob: its ``values`` (the first is not special) and what it sets."""

    name: str
    values: tuple
    doc: str


@dataclass(frozen=True)
class KnobSpace:
    """The configurations of one default plan: per algorithm its knobs (each configuration
    names an algorithm and gives a value to each of its knobs), minus those ``valid``
    refuses. ``default`` is the default plan's configuration."""

    plan: ConvPlan
    algorithms: tuple[tuple[str, tuple[Knob, ...]], ...]
    default: Config

    @functools.cached_property
    def configs(self) -> tuple[Config, ...]:
        """Every valid configuration, the default first."""
        found = [self.default]
        for name, knobs in self.algorithms:
            for values in itertools.product(*(k.values for k in knobs)):
                config = {"algorithm": name, **{k.name: v for k, v in zip(knobs, values)}}
                if config != self.default and self.valid(config):
                    found.append(config)
        return tuple(found)

    def __len__(self) -> int:
        return len(self.configs)

    def knobs(self, algorithm: str) -> tuple[Knob, ...]:
        """The knobs of ``algorithm`` (ValueError naming it if the space has none such)."""
        for name, knobs in self.algorithms:
            if name == algorithm:
                return knobs
        names = [name for name, _ in self.algorithms]
        raise ValueError(f"algorithm must be one of {names} for this plan, got {algorithm!r}")

    def check(self, config: Config) -> None:
        """ValueError naming the knob and its allowed values unless ``config`` is in the
        space."""
        if not isinstance(config, dict) or "algorithm" not in config:
            raise ValueError(f"config must be a dict with an 'algorithm', got {config!r}")
        knobs = self.knobs(config["algorithm"])
        names = {k.name for k in knobs}
        extra = set(config) - names - {"algorithm"}
        if extra:
            raise ValueError(
                f"config: knobs {sorted(extra)} do not apply to algorithm "
                f"{config['algorithm']!r} (its knobs: {sorted(names)})"
            )
        for knob in knobs:
            if config.get(knob.name) not in knob.values:
                raise ValueError(
                    f"config: knob {knob.name!r} must be one of {list(knob.values)} for this "
                    f"plan ({knob.doc}), got {config.get(knob.name)!r}"
                )
        if not self.valid(config):
            raise ValueError(
                f"config: {config} does not fit this convolution (a register tile wider "
                f"than its output, or a fused pool the tile does not divide)"
            )

    def __contains__(self, config: object) -> bool:
        try:
            self.check(config)  # type: ignore[arg-type]
        except ValueError:
            return False
        return True

    def valid(self, config: Config) -> bool:
        """The constraints between knobs: a tile no wider than needed, a fused pool kept."""
        plan, target = self.plan, self.plan.target
        geom = plan.kernel_geometry
        registers = profile(target).vector_registers
        lanes = _lanes(plan)
        algorithm = config["algorithm"]
        if algorithm == "winograd":
            m = config["winograd_m"]
            tiles_w = -(-geom.out_size[1] // (m * geom.dilation[1]))
            vectors = config["out_block"] // lanes
            if config["tile_block"] > min(tiles_w, registers // 2 // vectors):
                return False
        elif algorithm == "blocked":
            vectors = config["out_block"] // lanes
            wb = config["width_block"]
            if wb > min(geom.out_size[-1], (registers - vectors - 1) // vectors):
                return False
        try:
            tuned = with_knobs(plan, config)
        except ValueError:
            return False
        return (tuned.pool is None) == (plan.pool is None)


def _lanes(plan: ConvPlan) -> int:
    return vector_lanes(plan.target, accumulator_dtype(plan.dtype))


def tunable(plan: ConvPlan) -> bool:
    """Whether ``plan`` has a knob space: a convolution by one of :data:`CONV_ALGORITHMS`
    on a CPU target (not a folded resize, GPU kernels or an ``aot`` plan without reshapes
    keep their one schedule)."""
    return (
        is_cpu(plan.target)
        and isinstance(plan.algorithm, Winograd | Blocked | Generic)
        and not plan.algorithm.knobs
    )


def _schedule_defaults(plan: ConvPlan) -> dict[str, int]:
    thresholds = profile(plan.target)
    return {
        "parallel_tasks": thresholds.parallel_tasks,
        "winograd_task_floats": thresholds.winograd_task_floats,
        "accumulators": 0,
        "winograd_pipeline": 0,
        THREADS_KNOB: 0,
    }


def _thread_choices(plan: ConvPlan) -> tuple[int, ...]:
    """Values of the ``threads`` knob: the one-thread threshold (``cpu.is_small``) is tuned
    upwards only: a kernel it keeps on one thread may run on all (2). Running a larger
    kernel on one thread (1) is left out: on the shared 2-core machine it won only while
    the other core was busy and lost 1.1-1.7x once it was quiet
    (benchmarks/results/knobs_real_epyc_quiet.json), a choice a record must not freeze."""
    from convforge.build import prim_func
    from convforge.schedules.cpu import is_small

    return (0, 2) if is_small(prim_func(plan.computation()), plan.target) else (0,)


def knob_space(plan: ConvPlan) -> KnobSpace:
    """The :class:`KnobSpace` of the default plan ``plan`` (see the module docstring);
    ValueError if ``plan`` is not :func:`tunable`."""
    if not tunable(plan):
        raise ValueError(
            f"plan: {plan.label} on {plan.target.kind.name} has no knob space (a CPU "
            "convolution by Winograd, blocked or the direct algorithm has; a tuned plan's "
            "space is its default plan's)"
        )
    return _knob_space(plan, target_key(plan.target))


@functools.lru_cache(maxsize=256)
def _knob_space(plan: ConvPlan, _target: str) -> KnobSpace:
    target = plan.target
    thresholds = profile(target)
    registers = thresholds.vector_registers
    geom, dtype = plan.kernel_geometry, plan.dtype
    lanes = _lanes(plan)
    defaults = _schedule_defaults(plan)
    vector_counts = [
        v for v in CHANNEL_VECTORS
        if (v <= 2 or registers > 16) and not (v > 1 and (v // 2) * lanes >= geom.out_channels)
    ]  # fmt: skip
    out_blocks = tuple(v * lanes for v in vector_counts if ops.blocks_fit(geom, v * lanes))
    threads = Knob(THREADS_KNOB, _thread_choices(plan), "0 auto, 1 one thread, 2 all threads")
    grain = Knob(
        "parallel_tasks",
        tuple(sorted({*PARALLEL_TASKS, thresholds.parallel_tasks})),
        "parallel tasks wanted before the width is split too",
    )
    algorithms: list[tuple[str, tuple[Knob, ...]]] = []
    tiles = winograd_tiles(geom, dtype, target, plan.constant_weight)
    if tiles is not None and plan.algorithm.name == "winograd":
        # F(4x4, 3x3) only up to 256 input channels (float32's tolerance: winograd_tiles)
        ms = (2, 4) if geom.stride == (1, 1) and geom.in_channels <= 256 else (tiles.m,)
        floats = thresholds.winograd_task_floats
        algorithms.append(
            (
                "winograd",
                (
                    Knob("winograd_m", ms, "F(m x m) outputs per tile"),
                    Knob("out_block", out_blocks[:2], "output channels per register tile"),
                    Knob(
                        "tile_block",
                        tuple(range(1, registers // 2 + 1)),
                        "tiles per register tile",
                    ),
                    Knob(PIPELINE_KNOB, (0, 1, 2), "0 auto, 1 pipeline per task, 2 passes"),
                    Knob(
                        "winograd_task_floats",
                        (floats // 2, floats, floats * 2),
                        "V and M floats per task",
                    ),
                    grain,
                    threads,
                ),
            )
        )
    if nchwc_blocks(geom, dtype, target) is not None:
        knobs = [
            Knob("out_block", out_blocks, "output channels per register tile"),
            Knob("width_block", tuple(range(1, registers)), "positions per register tile"),
        ]
        if geom.is_row_pointwise:
            knobs.append(Knob("pack_input", (0, 1), "1x1 input packed in panels"))
        algorithms.append(("blocked", (*knobs, grain, threads)))
    algorithms.append(
        (
            "direct",
            (
                Knob("accumulators", ACCUMULATORS, "vector accumulators (0: the profile's)"),
                threads,
            ),
        )
    )
    default = _default_config(plan, defaults)
    return KnobSpace(plan, tuple(algorithms), default)


def _default_config(plan: ConvPlan, defaults: dict[str, int]) -> Config:
    algorithm = plan.algorithm
    if isinstance(algorithm, Winograd):
        t = algorithm.tiles
        names = ("winograd_task_floats", "parallel_tasks", PIPELINE_KNOB, THREADS_KNOB)
        return {
            "algorithm": "winograd", "winograd_m": t.m, "out_block": t.out_block,
            "tile_block": t.tile_block, **{n: defaults[n] for n in names},
        }  # fmt: skip
    if isinstance(algorithm, Blocked):
        b = algorithm.blocks
        config = {"algorithm": "blocked", "out_block": b.out_block, "width_block": b.width_block}
        if plan.kernel_geometry.is_row_pointwise:
            config["pack_input"] = int(b.pack_input)
        return {**config, **{n: defaults[n] for n in ("parallel_tasks", THREADS_KNOB)}}
    return {"algorithm": "direct", "accumulators": 0, THREADS_KNOB: 0}


def with_knobs(plan: ConvPlan, config: Config) -> ConvPlan:
    """The plan ``plan`` (a default plan) with the knobs of ``config``: the same
    convolution, fused epilogue and pool; ValueError where ``config`` cannot compute it
    (an algorithm that does not apply, a fused pool a register tile does not divide).
    Schedule knobs equal to the profile's value are left out, so the default
    configuration gives ``plan`` itself."""
    geom, target = plan.kernel_geometry, plan.target
    defaults = _schedule_defaults(plan)
    name = config.get("algorithm")
    schedule = {
        k: int(v) for k, v in config.items()
        if k in defaults and k != "accumulators" and int(v) != defaults[k]
    }  # fmt: skip
    pool = plan.pool
    if name == "winograd":
        if winograd_tiles(geom, plan.dtype, target, plan.constant_weight) is None:
            raise ValueError("config: algorithm 'winograd' does not apply to this convolution")
        tiles = ops.WinogradTiles(
            int(config["winograd_m"]), int(config["out_block"]), int(config["tile_block"]),
            geom.stride,
        )  # fmt: skip
        algorithm: Any = Winograd(tiles, None, tuple(sorted(schedule.items())))
        if pool is not None:
            algorithm = algorithm.pooled(geom, pool, plan.dtype, target)
    elif name == "blocked":
        if nchwc_blocks(geom, plan.dtype, target) is None:
            raise ValueError("config: algorithm 'blocked' does not apply to this convolution")
        blocks = ops.ChannelBlocks(
            int(config["out_block"]), int(config["width_block"]),
            bool(config.get("pack_input", 0)),
        )  # fmt: skip
        if not ops.blocks_fit(geom, blocks.out_block):
            raise ValueError(
                f"config: out_block {blocks.out_block} does not divide the "
                f"{geom.out_channels // geom.groups} output channels per group"
            )
        algorithm = Blocked(blocks, None, tuple(sorted(schedule.items())))
        if pool is not None:
            k, wb = pool.kernel[-1], blocks.width_block
            fits = (k % wb == 0 or wb % k == 0) and geom.out_channels % blocks.out_block == 0
            algorithm = dataclasses.replace(algorithm, pool=pool) if fits else None
    elif name == "direct":
        accumulators = int(config.get("accumulators", 0))
        if accumulators:
            schedule["direct_accumulators"] = schedule["accumulator_budget"] = accumulators
        algorithm = Generic(tuple(sorted(schedule.items())))
        if pool is not None:
            algorithm = None
    else:
        raise ValueError(f"config: algorithm must be winograd, blocked or direct, got {name!r}")
    if algorithm is None:
        raise ValueError("config: its algorithm cannot compute the fused pool in the kernel")
    return dataclasses.replace(plan, algorithm=algorithm)


def config_key(config: Config) -> str:
    """A configuration as canonical text (its identity in records)."""
    return json.dumps(config, sort_keys=True)


def plan_digest(plan: ConvPlan) -> str:
    """The workload key of a default plan: a digest of everything that makes its
    computation (kernel geometry, dtype, algorithm and its parameters, epilogue, fused
    pool, whether the weight is constant, the convolution asked)."""
    return hashlib.sha256(plan_text(plan).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- records


@dataclass
class KnobRecords:
    """The knob records of one default plan on one target (one ``.knobs`` file)."""

    path: Path
    target: str
    plan: str
    default_seconds: float | None = None
    #: ``{"config": Config, "run_secs": [seconds, ...]}`` in measuring order.
    records: list[dict] = dataclasses.field(default_factory=list)
    #: ``{"config": Config, "ratio": r, "rounds": n}``: a configuration timed against the
    #: default interleaved (``knob_tuning``), the median of its time / the default's.
    confirmations: list[dict] = dataclasses.field(default_factory=list)

    @classmethod
    def load(cls, path: Path, target: str, plan: str) -> KnobRecords | None:
        """The records in ``path`` (None if missing, of another target or plan, or corrupt:
        then with a ``CorruptRecordWarning`` naming the file)."""
        from convforge.schedules.tuning_dbs import _warn_corrupt

        try:
            payload = json.loads(Path(path).read_bytes().decode("utf-8"))
            if not isinstance(payload, dict) or payload.get("kind") != "knobs":
                raise ValueError("not a knob record file")
            records = payload["records"]
            if not isinstance(records, list) or not all(
                isinstance(r, dict) and isinstance(r.get("config"), dict) for r in records
            ):
                raise ValueError("'records' must be a list of {config, run_secs}")
            default = payload.get("default_seconds")
            if default is not None and not isinstance(default, int | float):
                raise ValueError(f"'default_seconds' must be a number, got {default!r}")
        except FileNotFoundError:
            return None
        except Exception as err:
            _warn_corrupt(Path(path), err)
            return None
        if payload.get("format") != _FORMAT or payload.get("target") != target:
            return None
        if payload.get("plan") != plan:
            return None
        confirmations = [
            c for c in payload.get("confirmations", [])
            if isinstance(c, dict) and isinstance(c.get("config"), dict)
            and isinstance(c.get("ratio"), int | float)
        ]  # fmt: skip
        return cls(Path(path), target, plan, default, records, confirmations)

    def figures(self) -> dict[str, tuple[float, Config]]:
        """Config key -> (its figure, config): the fastest of its measurements (each the
        mean of its runs; a failed one counts as infinitely slow), the rule of the
        default's ``default_seconds``."""
        from convforge.schedules.tuning import _mean

        figures: dict[str, tuple[float, Config]] = {}
        for record in self.records:
            key = config_key(record["config"])
            seconds = _mean(record.get("run_secs"))
            previous = figures.get(key, (float("inf"), record["config"]))[0]
            figures[key] = (min(previous, seconds), record["config"])
        return figures

    def best(self) -> tuple[Config, float] | None:
        """The confirmed configuration (its latest interleaved ratio to the default below
        :data:`CONFIRM_MARGIN`) with the lowest ratio, and its figure ``default_seconds x
        ratio``; else None: an unconfirmed record never applies."""
        if self.default_seconds is None:
            return None
        latest = {config_key(c["config"]): c for c in self.confirmations}
        winners = [c for c in latest.values() if c["ratio"] < CONFIRM_MARGIN]
        if not winners:
            return None
        best = min(winners, key=lambda c: c["ratio"])
        return best["config"], self.default_seconds * best["ratio"]


#: A configuration applies only where it ran at most this fraction of the default's time,
#: timed interleaved with it (2% for the noise of a shared machine).
CONFIRM_MARGIN = 0.98


def records_file(db: str | os.PathLike, plan: ConvPlan) -> Path:
    """The knob record file of default plan ``plan`` in database ``db``."""
    from convforge.schedules.tuning_dbs import target_dir

    return target_dir(db, plan.target) / f"{plan_digest(plan)}{KNOB_SUFFIX}"


def merge_knob_records(
    path: Path,
    target: str,
    plan: str,
    records: list[dict],
    default_seconds: float | None = None,
    confirmations: list[dict] | None = None,
) -> KnobRecords:
    """Add ``records`` (and the faster ``default_seconds``) to ``path`` without losing what
    another writer put there: under the database's file lock, re-read, append the records
    it lacks, replace the file atomically (temp file + ``os.replace``). Returns the
    merged records."""
    from convforge.schedules.tuning import _file_lock, _write_atomically

    with _file_lock(path):
        current = KnobRecords.load(path, target, plan) or KnobRecords(path, target, plan)
        seen = {json.dumps(r, sort_keys=True) for r in current.records}
        for record in records:
            text = json.dumps(record, sort_keys=True)
            if text not in seen:
                seen.add(text)
                current.records.append(record)
        timings = [t for t in (default_seconds, current.default_seconds) if t]
        current.default_seconds = min(timings) if timings else None
        current.confirmations.extend(confirmations or [])
        payload = {
            "format": _FORMAT, "kind": "knobs", "target": target, "plan": plan,
            "default_seconds": current.default_seconds, "records": current.records,
            "confirmations": current.confirmations,
        }  # fmt: skip
        _write_atomically(path, json.dumps(payload))
    return current


# --------------------------------------------------------------------------- lookups


def tuned_plan(plan: ConvPlan) -> ConvPlan:
    """``plan`` (a default plan) with the knobs of its fastest record in the active tuning
    databases (``tuning.active_databases``, the match mode in effect) that beats the
    default's timing, else ``plan`` itself. A record whose configuration is no longer in
    the space (another convforge) is skipped."""
    if not tunable(plan):
        return plan
    return _tuned(plan, target_key(plan.target), tuning_dbs.database_state(plan.target))


@functools.lru_cache(maxsize=1024)
def _tuned(plan: ConvPlan, key: str, _state: tuple) -> ConvPlan:
    match = tuning_dbs.active_match()
    digest, text = plan_digest(plan), plan_text(plan)
    for db in tuning_dbs.active_databases():
        for folder, folder_key in tuning_dbs._matching_folders(db, plan.target, match):
            records = KnobRecords.load(folder / f"{digest}{KNOB_SUFFIX}", folder_key, text)
            best = None if records is None else records.best()
            if best is None or best[0] not in knob_space(plan):
                continue
            if folder_key != key:
                import_tvm()  # tuning imports TVM itself: first the quick way (tvm_import)
                from convforge.schedules import tuning

                tuning._warn_core_count(db, folder_key, plan.target)
            return with_knobs(plan, best[0])
    return plan


def plan_text(plan: ConvPlan) -> str:
    """The default plan as text in its records (checked on lookup: a digest collision
    never applies another plan's knobs)."""
    return repr((plan.key, plan.constant_weight, plan.geometry, plan.subsample))


def knob_files(db: str | os.PathLike) -> Iterator[Path]:
    """Every knob record file of database ``db``."""
    yield from sorted(Path(db).glob(f"*/*{KNOB_SUFFIX}"))


def sample(space: KnobSpace, count: int, seed: int = 0) -> list[Config]:
    """The default and ``count - 1`` other configurations of ``space`` drawn at random (all
    of them when it has no more), for tests and spot checks."""
    rng = random.Random(seed)
    others = list(space.configs[1:])
    rng.shuffle(others)
    return [space.default, *others[: max(0, count - 1)]]
