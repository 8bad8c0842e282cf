"""Autotuning with MetaSchedule, and a tuning database keyed by workload and target.

Layout on disk (one directory per database)::

    <db>/<target digest>/<workload digest>.json

The target digest names the exact target (kind, triple, ``mcpu``, cores: see
:func:`convforge.targets.target_key`), so a record tuned for one CPU is never looked up for
another; the opt-in ``match='cpu'`` (:func:`use_tuning_db`, :func:`use_tuning_match`,
``$CONVFORGE_TUNING_MATCH``) also lets records of a target differing only in its core count
serve, with a :class:`CoreCountMatchWarning` once. The workload digest is TVM's structural
hash of the PrimFunc; the file also holds the workload itself and lookups check structural
equality. Each file holds every measured record of one (workload, target), in TVM's
``TuningRecord`` JSON layout (:func:`record_json`; the layout of MetaSchedule's
``JSONDatabase``, :func:`export_metaschedule` / :func:`import_metaschedule`), and is
rewritten atomically (temp file + ``os.replace``) at each write: the default's timing with
the seed record (one write), then each candidate as soon as it is measured. A run killed at
any moment (SIGKILL included) leaves a valid database with every candidate measured before
the kill; re-running continues from the records already there (a file marked seeded without
records, left by convforge <= 0.1.8, is measured again).

Before searching, the default schedule (:func:`schedule_cpu`) is measured with the same
builder and runner as the candidates and stored as the file's ``default_seconds`` (timed
twice, then again after each batch of candidates, keeping the fastest: one slow timing on a
shared machine made a no-better candidate look faster); a lookup uses the fastest record
only if it beats that, so tuning never makes a kernel slower than its default schedule as
measured. Each workload's first record is the trace of the generic default rules (:func:`generic_cpu_schedule`, equal to the default unless a special rule
applies): it seeds the evolutionary search, which starts its population from the
database's best records.

Lookups (:func:`tuned_module`) consult the database set by :func:`use_tuning_db` (or the
``CONVFORGE_TUNING_DB`` environment variable), then the records shipped in
``convforge/tuned``; without a matching record the caller falls back to the default
schedule. The database set by :func:`use_tuning_db` belongs to the calling thread or
``contextvars`` context (a ``ContextVar``): another thread's calls keep their own (a new
thread starts from ``CONVFORGE_TUNING_DB``).

A database cannot hurt a compile: a record file that cannot be read or parsed (bad JSON,
binary garbage, a wrong structure, a record whose trace does not apply) is skipped with a
``warnings.warn`` naming the file, and the next record or the default schedule is used.

Concurrent writers (two ``convforge tune`` processes on one database) lose no record: each
write takes an exclusive ``fcntl.flock`` on ``<db>/<target>/.<workload>.json.lock``, re-reads
the file, merges in the records it lacks (a record already there is not added twice; the
faster ``default_seconds`` is kept) and replaces the file atomically, all under the lock.
On a platform without ``fcntl`` the merge still runs, without the lock.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.tune_context import _normalize_mod
from tvm_ffi.structural import structural_equal, structural_hash

from convforge.extras import require
from convforge.filemode import atomic_write
from convforge.schedules.cpu import generic_cpu_schedule, schedule_cpu
from convforge.schedules.tuning_dbs import (  # noqa: F401  (tuning's names too)
    DB_ENV,
    MATCH_ENV,
    MATCH_MODES,
    SHIPPED_DB,
    CoreCountMatchWarning,
    CorruptRecordWarning,
    _active,
    _check_match,
    _core_count,
    _cpu_key,
    _digest,
    _folder_target,
    _match,
    _matching_folders,
    _read_payload,
    _warn_corrupt,
    active_databases,
    active_match,
    check_database_path,
    context_active,
    database_state,
    target_dir,
    use_tuning_db,
    use_tuning_match,
)
from convforge.targets import is_cpu, target_key, tensor_intrinsics_module

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

#: IRModule attribute naming the record a tuned module was built from.
RECORD_ATTR = "convforge.tuning_record"
_FORMAT = 1
#: Candidates per search batch (built together; each committed as soon as it is measured).
BATCH = 16


def _tuning_record_as_json(record: ms.database.TuningRecord):
    return tvm.get_global_func("s_tir.meta_schedule.TuningRecordAsJSON")(record)


def _copy(mod: tvm.IRModule) -> tvm.IRModule:
    """A deep copy of ``mod``: replaying a trace on ``s_tir.Schedule(mod)`` can change the
    PrimFunc ``mod`` shares with the caller in place (TVM 0.27: the caller's function then
    hashes differently, and the next lookup of it finds nothing)."""
    return tvm.ir.load_json(tvm.ir.save_json(mod))


def workload_module(func: tirx.PrimFunc | tvm.IRModule) -> tvm.IRModule:
    """The IRModule MetaSchedule tunes for ``func`` (one function named ``main``)."""
    return _normalize_mod(func)


def workload_file(db: str | os.PathLike, mod: tvm.IRModule, target: tvm.target.Target) -> Path:
    """File of ``db`` holding the records of workload ``mod`` on ``target``."""
    return target_dir(db, target) / f"{structural_hash(mod) & (2**64 - 1):016x}.json"


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text, suffix=".json")


def _is_valid(run_secs) -> bool:
    try:
        return bool(run_secs) and all(0 < float(s) < 1e9 for s in run_secs)
    except (TypeError, ValueError):
        return False


def _record_key(record) -> str:
    return json.dumps(record, sort_keys=True)


def _to_json(obj):
    """A TVM JSON-style object (what ``TuningRecordAsJSON`` returns) as plain JSON values.

    As TVM's own ``JSONDatabase`` writes it: an ``IndexMap`` input of a trace instruction
    (``TransformLayout``, in the traces of fused conv + pool kernels) becomes its
    ``tvm.ir.save_json`` text, which ``TuningRecord.from_json`` parses back.
    (MetaSchedule's Python ``TuningRecord.as_json`` raises TypeError on one.)
    """
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, tirx.IndexMap):
        return tvm.ir.save_json(obj)
    if isinstance(obj, tvm.tirx.IntImm | tvm.tirx.FloatImm):
        return obj.value
    if isinstance(obj, tvm_ffi.Array | list | tuple):
        return [_to_json(item) for item in obj]
    if isinstance(obj, tvm_ffi.Map | dict):
        return {_to_json(k): _to_json(v) for k, v in obj.items()}
    raise TypeError(f"a tuning record holds a {type(obj).__name__}, which JSON cannot store")


def record_json(record: ms.database.TuningRecord) -> list:
    """``record`` as JSON values, ``[trace, run_secs, target, args_info]`` (TVM's
    ``TuningRecord.as_json`` layout, the layout of ``JSONDatabase``'s files), for every
    trace: one holding an ``IndexMap`` too."""
    return _to_json(_tuning_record_as_json(record))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``'s workload file across processes (``fcntl.flock`` on a
    hidden lock file beside it; no lock where ``fcntl`` is missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def merge_records(
    path: Path,
    target: tvm.target.Target,
    workload: ms.database.Workload,
    records: list,
    *,
    default_seconds: float | None = None,
    seeded: bool = False,
    seed: list | None = None,
) -> _WorkloadRecords:
    """Write ``records`` of ``workload`` on ``target`` to ``path`` without losing any record
    another writer put there: under an exclusive file lock, read the file, append the
    records it lacks (in order; equal records are stored once), keep the faster
    ``default_seconds``, and replace the file atomically. A file that is corrupt, of another
    format or target, or of another workload is replaced (with a warning if corrupt).

    ``seed``: the seed record (JSON), stored first and marked ``seeded`` in the same write
    (a file is marked seeded only when it holds its seed: a kill can never separate them);
    a record already there with the seed's trace becomes the seed instead.

    Returns what was written (the merged records).
    """
    path = Path(path)
    with _file_lock(path):
        current = _WorkloadRecords.load(path, target)
        workload_json = workload.as_json()
        if current is not None and json.dumps(current.workload.as_json()) != json.dumps(
            workload_json
        ):
            current = None  # a hash collision or another workload: ours replaces it
        merged = list(current.records) if current is not None else []
        was_seeded = current is not None and current.seeded
        if seed is not None and not was_seeded:
            # A record with the seed's trace (one imported, say) becomes the seed.
            same = [r for r in merged if _record_key(r[0]) == _record_key(seed[0])]
            seed = same[0] if same else seed
            merged = [seed, *(r for r in merged if r is not seed)]
            was_seeded = True
        seen = {_record_key(r) for r in merged}
        for record in records:
            key = _record_key(record)
            if key not in seen:
                seen.add(key)
                merged.append(record)
        timings = [t for t in (default_seconds, current and current.default_seconds) if t]
        result = _WorkloadRecords(
            path, workload, merged, min(timings) if timings else None,
            bool((seeded or was_seeded) and merged),
        )  # fmt: skip
        payload = {
            "format": _FORMAT,
            "target": target_key(target),
            "workload": workload_json,
            "default_seconds": result.default_seconds,
            "seeded": result.seeded,
            "records": merged,
        }
        _write_atomically(path, json.dumps(payload))
    return result


def check_tracker_reachable(tracker: RPCTracker, timeout_s: float = 10.0) -> None:
    """ValueError unless a TVM RPC tracker answers at ``tracker.host:port`` within
    ``timeout_s`` seconds (TVM's own client retries for a minute, then hangs in a runner)."""
    import socket
    import struct

    from tvm.rpc import base

    address = f"{tracker.host}:{tracker.port}"
    try:
        with socket.create_connection((tracker.host, tracker.port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            reply = b""
            while len(reply) < 4:
                chunk = sock.recv(4 - len(reply))
                if not chunk:
                    break
                reply += chunk
    except OSError as err:
        raise ValueError(
            f"--rpc-tracker: cannot reach an RPC tracker at {address} within {timeout_s:g} s "
            f"({err.strerror or err})"
        ) from err
    if len(reply) != 4 or struct.unpack("<i", reply)[0] != base.RPC_TRACKER_MAGIC:
        raise ValueError(f"--rpc-tracker: {address} answers, but is not a TVM RPC tracker")


def _mean(run_secs) -> float:
    return sum(float(s) for s in run_secs) / len(run_secs) if _is_valid(run_secs) else math.inf


@dataclass
class _WorkloadRecords:
    """All records of one workload on one target, as stored in one file."""

    path: Path
    workload: ms.database.Workload
    records: list  # TuningRecord JSON (MetaSchedule's own form)
    default_seconds: float | None = None  # the default schedule's latency
    seeded: bool = False  # records[0] is the seed (not a searched candidate)

    def save(self, target: tvm.target.Target) -> None:
        """Write the records, merged with what the file holds now (see :func:`merge_records`):
        afterwards ``self.records`` also holds the records other writers added."""
        merged = merge_records(
            self.path, target, self.workload, self.records,
            default_seconds=self.default_seconds, seeded=self.seeded,
        )  # fmt: skip
        self.records, self.default_seconds = merged.records, merged.default_seconds
        self.seeded = merged.seeded

    @classmethod
    def load(
        cls, path: Path, target: tvm.target.Target, *, key: str | None = None
    ) -> _WorkloadRecords | None:
        """Records in ``path``, or None if it is missing, names another target than ``key``
        (default: ``target``'s key) or cannot be read (then with a warning naming the file: a
        corrupt database never stops a compile)."""
        key = target_key(target) if key is None else key
        try:
            payload = _read_payload(path)
            if payload.get("format") != _FORMAT or payload.get("target") != key:
                return None
            workload = ms.database.Workload.from_json(payload["workload"])
        except FileNotFoundError:
            return None
        except Exception as err:  # unreadable, not JSON, wrong structure, TVM parse error
            _warn_corrupt(path, err)
            return None
        records = payload["records"]
        # ``seeded`` with no record: a file written by convforge <= 0.1.8 killed between its
        # two writes of the seed; its next run measures and seeds again.
        broken = bool(payload.get("seeded")) and not records
        default = None if broken else payload.get("default_seconds")
        return cls(path, workload, records, default, bool(payload.get("seeded")) and not broken)

    def tuning_records(self) -> list[ms.database.TuningRecord]:
        """The records MetaSchedule can parse (one that it cannot is skipped with a warning)."""
        parsed = []
        for record in self.records:
            try:
                parsed.append(ms.database.TuningRecord.from_json(record, self.workload))
            except Exception as err:
                _warn_corrupt(self.path, err, "a record")
        return parsed

    def faster_than_default(self) -> list[list]:
        """Measured records (JSON) that beat the default schedule, fastest first."""
        if self.default_seconds is None:
            return []
        valid = [r for r in self.records if isinstance(r, list) and len(r) > 1 and _is_valid(r[1])]
        return sorted(
            (r for r in valid if _mean(r[1]) < self.default_seconds), key=lambda r: _mean(r[1])
        )


@derived_object
class TuningDatabase(ms.database.PyDatabase):
    """MetaSchedule database persisting every record of ``target`` under directory ``path``.

    Queries are served by an in-memory database; every committed record is also written to
    its workload's file at once, atomically.
    """

    def __init__(self, path: str | os.PathLike, target: tvm.target.Target) -> None:
        super().__init__()
        self.path = Path(path)
        self.target = target
        self._memory = ms.database.MemoryDatabase()
        self._files: dict[int, _WorkloadRecords] = {}  # structural hash -> file
        self._lock = threading.Lock()

    def _entry(self, mod: tvm.IRModule) -> _WorkloadRecords:
        """The file of ``mod``, loading its records into memory on first use."""
        key = structural_hash(mod)
        entry = self._files.get(key)
        if entry is None:
            workload = self._memory.commit_workload(mod)
            entry = _WorkloadRecords.load(workload_file(self.path, mod, self.target), self.target)
            if entry is None or not structural_equal(entry.workload.mod, mod):
                entry = _WorkloadRecords(workload_file(self.path, mod, self.target), workload, [])
            entry.workload = workload
            for record in entry.tuning_records():
                self._memory.commit_tuning_record(record)
            self._files[key] = entry
        return entry

    def has_workload(self, mod: tvm.IRModule) -> bool:
        return self._memory.has_workload(mod)

    def commit_workload(self, mod: tvm.IRModule) -> ms.database.Workload:
        with self._lock:
            return self._entry(mod).workload

    def commit_tuning_record(self, record: ms.database.TuningRecord) -> None:
        """Store ``record`` (in memory, and in its file at once); one already stored (the
        same trace, timings, target and arguments) is not stored again."""
        with self._lock:
            entry = self._entry(record.workload.mod)
            raw = record_json(record)
            if any(_record_key(r) == _record_key(raw) for r in entry.records):
                return
            self._memory.commit_tuning_record(record)
            entry.records.append(raw)
            entry.save(self.target)

    def get_top_k(self, workload: ms.database.Workload, top_k: int) -> list:
        return self._memory.get_top_k(workload, top_k)

    def get_all_tuning_records(self) -> list:
        return self._memory.get_all_tuning_records()

    def query_tuning_record(self, mod, target, workload_name):
        return self._memory.query_tuning_record(mod, target, workload_name)

    def query_schedule(self, mod, target, workload_name):
        return self._memory.query_schedule(mod, target, workload_name)

    def query_ir_module(self, mod, target, workload_name):
        return self._memory.query_ir_module(mod, target, workload_name)

    def __len__(self) -> int:
        return len(self._memory)

    def records(self, mod: tvm.IRModule) -> list[ms.database.TuningRecord]:
        """Every record of workload ``mod`` in commit order (the first is the seed)."""
        with self._lock:
            entry = self._entry(mod)
        return entry.tuning_records()

    def default_seconds(self, mod: tvm.IRModule) -> float | None:
        """The default schedule's measured latency for workload ``mod``, if measured."""
        with self._lock:
            return self._entry(mod).default_seconds

    def candidates(self, mod: tvm.IRModule) -> int:
        """Searched candidates stored for workload ``mod`` (the seed not counted)."""
        with self._lock:
            entry = self._entry(mod)
            return max(0, len(entry.records) - entry.seeded)

    def set_default_seconds(
        self, mod: tvm.IRModule, seconds: float, seed: ms.database.TuningRecord | None = None
    ) -> None:
        """Store the default schedule's latency and its ``seed`` record (if any) in one
        atomic write."""
        with self._lock:
            entry = self._entry(mod)
            seed_json = None if seed is None else record_json(seed)
            merged = merge_records(
                entry.path, self.target, entry.workload, entry.records,
                default_seconds=seconds, seed=seed_json,
            )  # fmt: skip
            entry.records, entry.default_seconds = merged.records, merged.default_seconds
            entry.seeded = merged.seeded
            if seed is not None:
                self._memory.commit_tuning_record(seed)

    def lower_default_seconds(self, mod: tvm.IRModule, seconds: float) -> None:
        """Keep the faster of the stored default latency and ``seconds`` (a new timing)."""
        with self._lock:
            entry = self._entry(mod)
            if entry.default_seconds is None or seconds < entry.default_seconds:
                entry.default_seconds = seconds
                entry.save(self.target)


def _ranked(
    func: tirx.PrimFunc | tvm.IRModule, target: tvm.target.Target, db: str | os.PathLike,
    match: str,
) -> list[tuple[ms.database.TuningRecord, str]]:  # fmt: skip
    """``(record, its target key)`` of :func:`ranked_records`."""
    mod = workload_module(func)
    ranked = []
    for folder, key in _matching_folders(db, target, match):
        path = folder / workload_file(db, mod, target).name
        entry = _WorkloadRecords.load(path, target, key=key)
        if entry is None or not structural_equal(entry.workload.mod, mod):
            continue
        for record in entry.faster_than_default():
            try:
                ranked.append((ms.database.TuningRecord.from_json(record, entry.workload), key))
            except Exception as err:  # a record MetaSchedule cannot parse: skip it
                _warn_corrupt(entry.path, err, "a record")
    return ranked


def ranked_records(
    func: tirx.PrimFunc | tvm.IRModule,
    target: tvm.target.Target,
    db: str | os.PathLike,
    match: str | None = None,
) -> list[ms.database.TuningRecord]:
    """Records of ``func`` on ``target`` in ``db`` that beat the default schedule (as
    measured where they were tuned), fastest first; with ``match='cpu'`` (None: the mode in
    effect, :func:`active_match`) followed by those of targets differing only in core
    count."""
    match = active_match() if match is None else _check_match(match, "match")
    return [record for record, _ in _ranked(func, target, db, match)]


def best_record(
    func: tirx.PrimFunc | tvm.IRModule, target: tvm.target.Target, db: str | os.PathLike
) -> ms.database.TuningRecord | None:
    """The fastest record of ``func`` on ``target`` in ``db`` if it beats the default
    schedule, else None."""
    return next(iter(ranked_records(func, target, db)), None)


def copy_best_records(source: str | os.PathLike, destination: str | os.PathLike) -> int:
    """Copy each (workload, target) of database ``source`` into ``destination`` with only its
    seed record and its three fastest candidates (how ``convforge/tuned`` is made; more than
    one because some candidates' traces do not replay in a new process).

    Knob record files (``convforge.knobs``) are copied with the measurements of their
    winning configuration only, and only where one beats the default.

    Returns the number of files written.
    """
    from convforge.knobs import KNOB_SUFFIX, KnobRecords, config_key

    written = 0
    for path in sorted(Path(source).glob(f"*/*{KNOB_SUFFIX}")):
        payload = json.loads(path.read_text())
        records = KnobRecords(
            path, payload["target"], payload["plan"], payload.get("default_seconds"),
            payload["records"], payload.get("confirmations", []),
        )  # fmt: skip
        best = records.best()
        if best is None:
            continue
        key = config_key(best[0])
        payload["records"] = [r for r in records.records if config_key(r["config"]) == key]
        payload["confirmations"] = [
            c for c in payload.get("confirmations", []) if config_key(c["config"]) == key
        ]
        _write_atomically(Path(destination) / path.parent.name / path.name, json.dumps(payload))
        written += 1
    for path in sorted(Path(source).glob("*/*.json")):
        if path.name.startswith("."):
            continue  # a write in progress
        payload = json.loads(path.read_text())
        records = payload["records"]
        seed = records[:1] if payload.get("seeded") else []
        valid = [r for r in records[len(seed) :] if _is_valid(r[1])]
        payload["records"] = seed + sorted(valid, key=lambda r: _mean(r[1]))[:3]
        _write_atomically(Path(destination) / path.parent.name / path.name, json.dumps(payload))
        written += 1
    return written


def tuned_module(func: tirx.PrimFunc, target: tvm.target.Target) -> tvm.IRModule | None:
    """``func`` scheduled by its fastest replayable record for ``target`` in the active
    databases that beats the default schedule, or None.

    The module carries the attribute :data:`RECORD_ATTR` naming the database and latency.
    """
    if not is_cpu(target):
        return None
    match = active_match()
    for db in active_databases():
        for record, key in _ranked(func, target, db, match):
            sch = tvm.s_tir.Schedule(_copy(workload_module(func)))
            try:
                record.trace.apply_to_schedule(sch, remove_postproc=False)
            except Exception as err:  # some candidates' traces do not replay; a corrupt one
                if db != SHIPPED_DB:  # (IndexError, TypeError, ...) is skipped too
                    path = workload_file(db, workload_module(func), target)
                    _warn_corrupt(path, err, "a record whose trace does not apply")
                continue
            name = f"{db}@{_mean(record.run_secs):.6g}s"
            if key != target_key(target):
                name += f" (tuned for {_core_count(key)} cores)"
                _warn_core_count(db, key, target)
            return sch.mod.with_attr(RECORD_ATTR, name)
    return None


_core_count_warned: set[tuple[str, str, str]] = set()


def _warn_core_count(db: Path, key: str, target: tvm.target.Target) -> None:
    """Warn once per process and (database, record target, target) that a record tuned for
    another core count serves ``target``."""
    seen = (str(db), key, target_key(target))
    if seen in _core_count_warned:
        return
    _core_count_warned.add(seen)
    warnings.warn(
        f"tuning database {os.fspath(db)!r}: records tuned for {_core_count(key)} cores serve "
        f"this {_core_count(target_key(target))}-core target (match='cpu'; their timings, "
        f"and the default's they beat, were measured there)",
        CoreCountMatchWarning,
        stacklevel=3,
    )


# --------------------------------------------------------------------------- tuning


@dataclass(frozen=True)
class RPCTracker:
    """Measure on remote devices registered at a TVM RPC tracker under ``key``."""

    host: str
    port: int
    key: str
    session_timeout_s: float = 60.0


@dataclass(frozen=True)
class TuningResult:
    """Outcome of :func:`tune` for one workload (latencies in seconds, mean of the runs)."""

    database_file: Path
    default_seconds: float
    best_seconds: float
    trials: int  # measured candidates in the database (the seed not counted)
    new_trials: int  # of which measured by this call
    elapsed_seconds: float


def make_builder(jobs: int | None = None, timeout_s: float = 60.0) -> ms.builder.LocalBuilder:
    """Local builder with ``jobs`` processes that skips the tensor-intrinsics import."""

    def build_without_tensor_intrinsics(mod, target, _params):
        """MetaSchedule's default build minus ``import tvm.s_tir.tensor_intrin`` (~30 s on a
        loaded 2-core machine, longer than the builder's default timeout; a CPU search uses
        no tensor intrinsics). Nested so that it is pickled by value: the worker processes
        need not import convforge (whose import path may differ from ours)."""
        from tvm.driver import build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        return build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)

    return ms.builder.LocalBuilder(
        max_workers=jobs or os.cpu_count() or 1,
        timeout_sec=timeout_s,
        f_build=build_without_tensor_intrinsics,
    )


#: How every candidate and default is timed (MetaSchedule's ``EvaluatorConfig``; the knob
#: tuner's in-process timing uses the same numbers).
EVALUATOR = {"number": 3, "repeat": 3, "min_repeat_ms": 40}


def make_runner(rpc: RPCTracker | None = None, jobs: int | None = None) -> ms.runner.Runner:
    """Runner timing candidates here, or on the devices of an RPC tracker."""
    evaluator = ms.runner.EvaluatorConfig(**EVALUATOR)
    if rpc is None:
        return ms.runner.LocalRunner(evaluator_config=evaluator, timeout_sec=60)
    config = ms.runner.RPCConfig(
        tracker_host=rpc.host, tracker_port=rpc.port, tracker_key=rpc.key,
        session_timeout_sec=int(rpc.session_timeout_s),
    )  # fmt: skip
    return ms.runner.RPCRunner(config, evaluator, max_workers=jobs or 1)


@contextlib.contextmanager
def _cpu_tensor_intrinsics_only(target: tvm.target.Target) -> Iterator[None]:
    """Register only the CPU tensor intrinsics of ``target`` while tuning.

    MetaSchedule's TuneContext imports ``tvm.s_tir.tensor_intrin``, whose ``__init__`` spends
    ~16 s on 2 cores registering CUDA intrinsics a CPU search never uses. This imports the
    package's CPU submodule under a bare package entry instead (~0.3 s) and removes that
    entry afterwards, so a later ``import tvm.s_tir.tensor_intrin`` runs the real
    ``__init__`` (reusing the submodule already imported).
    """
    package = "tvm.s_tir.tensor_intrin"
    submodule = tensor_intrinsics_module(target)
    if package in sys.modules or submodule is None:
        yield
        return
    stub = types.ModuleType(package)
    stub.__path__ = [str(Path(tvm.s_tir.__file__).parent / "tensor_intrin")]
    sys.modules[package] = stub
    try:
        importlib.import_module(f"{package}.{submodule}")
        yield
    finally:
        if sys.modules.get(package) is stub:
            del sys.modules[package]


@contextlib.contextmanager
def _meta_schedule_console(verbose: bool) -> Iterator[None]:
    """Quiet MetaSchedule's console log (task tables) unless ``verbose``, for one run.

    Each run configures fresh handlers on MetaSchedule's logger (its setup chokes on
    unnamed handlers left by others); the previous handlers and level come back after.
    """
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    level, handlers = logger.level, list(logger.handlers)
    for handler in handlers:
        logger.removeHandler(handler)
    if not verbose:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(level)


def _time(
    mod: tvm.IRModule,
    target: tvm.target.Target,
    builder: ms.builder.Builder,
    runner: ms.runner.Runner,
) -> list[float]:
    """Seconds per run of the scheduled ``mod``, timed by ``builder`` and ``runner``."""
    (built,) = builder.build([ms.builder.BuilderInput(mod, target)])
    if built.error_msg:
        raise RuntimeError(f"building the default schedule failed: {built.error_msg}")
    args_info = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    try:
        (future,) = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu", args_info)])
        result = future.result()
    finally:
        ms.utils.remove_build_dir(built.artifact_path)
    if result.error_msg:
        raise RuntimeError(f"timing the default schedule failed: {result.error_msg}")
    return [float(s) for s in result.run_secs]


def _measure_default(
    database: TuningDatabase,
    mod: tvm.IRModule,
    target: tvm.target.Target,
    builder: ms.builder.Builder,
    runner: ms.runner.Runner,
) -> None:
    """Store the default schedule's latency (the faster of two timings: the first also warms
    the runner) and the generic rules' trace as the seed (if that trace replays: some hand
    rules do not record a replayable trace), both in one write."""
    seed = generic_cpu_schedule(mod["main"], target)
    replayed = tvm.s_tir.Schedule(_copy(mod))
    try:
        seed.trace.apply_to_schedule(replayed, remove_postproc=False)
        seeded = structural_equal(replayed.mod, seed.mod)
    except (RuntimeError, ValueError):
        seeded = False
    seed_secs = _time(seed.mod, target, builder, runner)
    default = schedule_cpu(mod["main"], target)
    same = structural_equal(default, seed.mod)
    timings = [seed_secs] if same else []
    while len(timings) < 2:
        timings.append(_time(default, target, builder, runner))
    record = None
    if seeded:
        args_info = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
        workload = database.commit_workload(mod)
        record = ms.database.TuningRecord(seed.trace, workload, seed_secs, target, args_info)
    database.set_default_seconds(mod, min(map(_mean, timings)), record)


#: Set by a SIGINT inside :func:`_interruptible`; the runner raises again while it is set.
_INTERRUPTED = threading.Event()


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Make a Ctrl-C (SIGINT) during tuning a KeyboardInterrupt, always.

    A SIGINT arriving while TVM's C++ code calls back into Python (the runner, a measure
    callback) raises KeyboardInterrupt there, which TVM's FFI hands back as a RuntimeError,
    or which TVM's C++ catches and logs (seen in a test run: the search went on to its
    end and returned normally, exit 0). Here any exception raised after a SIGINT, and a
    normal return after one, is raised as KeyboardInterrupt instead, and
    :class:`_ReportingRunner` raises again before measuring anything more. Only in the main
    thread with Python's default SIGINT handler (which this keeps in effect).
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    interrupted = _INTERRUPTED
    interrupted.clear()

    def handler(signum, frame):
        interrupted.set()
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    except Exception as err:
        if interrupted.is_set():
            raise KeyboardInterrupt(f"interrupted ({type(err).__name__} from TVM)") from None
        raise
    else:
        if interrupted.is_set():
            raise KeyboardInterrupt("interrupted (swallowed inside TVM)")
    finally:
        interrupted.clear()  # set only inside the run it interrupted
        signal.signal(signal.SIGINT, signal.default_int_handler)


class _Tracker:
    """Trials done and best latency of one tuning run, reported to ``progress`` after each
    measured candidate.

    The best is the minimum over the stored default latency and every measured candidate's
    mean (:func:`_best`): the rule of :attr:`TuningResult.best_seconds`, so the last report
    and the final figure agree.
    """

    def __init__(
        self, progress: Callable[[int, int, float], None] | None, done: int, total: int,
        best: float,
    ) -> None:  # fmt: skip
        self.progress, self.done, self.total, self.best = progress, done, total, best

    def report(self) -> None:
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total, self.best)

    def measured(self, result: ms.runner.RunnerResult) -> None:
        """One candidate measured (or failed: it counts as a trial, as in the database)."""
        self.done += 1
        self.best = min(self.best, _mean(result.run_secs))
        self.report()

    def sync(self, done: int, best: float) -> None:
        """A batch was committed: the database's count (build failures included) and best."""
        if (done, best) != (self.done, self.best):
            self.done, self.best = done, best
            self.report()


class _Batch:
    """The batch of candidates being measured: ``candidates`` in the search's order,
    ``built`` the indexes of those whose build succeeded (the runner's inputs, in order)."""

    def __init__(self) -> None:
        self.candidates: list = []
        self.built: list[int] = []


@derived_object
class _RememberingStrategy(ms.search_strategy.PySearchStrategy):
    """``inner`` (a search strategy), remembering each batch of candidates in ``batch``."""

    def __init__(self, inner: ms.search_strategy.SearchStrategy, batch: _Batch) -> None:
        super().__init__()
        self.inner, self.batch = inner, batch

    def _initialize_with_tune_context(self, context) -> None:
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database, cost_model):
        self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self):
        candidates = self.inner.generate_measure_candidates()
        self.batch.candidates, self.batch.built = list(candidates or []), []
        return candidates

    def notify_runner_results(self, measure_candidates, results) -> None:
        self.inner.notify_runner_results(measure_candidates, results)

    def clone(self):
        return _RememberingStrategy(self.inner.clone(), self.batch)


@derived_object
class _RememberingBuilder(ms.builder.PyBuilder):
    """``inner`` (a builder), remembering which candidates of the batch built."""

    def __init__(self, inner: ms.builder.Builder, batch: _Batch) -> None:
        super().__init__()
        self.inner, self.batch = inner, batch

    def build(self, build_inputs: list) -> list:
        results = self.inner.build(build_inputs)
        self.batch.built = [i for i, r in enumerate(results) if r.error_msg is None]
        return results


@derived_object
class _ReportingFuture(ms.runner.PyRunnerFuture):
    """A runner future that reports ``(index, result)`` to ``measured`` once, when done."""

    def __init__(self, inner: ms.runner.RunnerFuture, measured: Callable, index: int) -> None:
        super().__init__()
        self.inner, self.measured, self.index, self.value = inner, measured, index, None

    def _fetch(self) -> ms.runner.RunnerResult:
        if self.value is None:
            self.value = self.inner.result()
            self.measured(self.index, self.value)
        return self.value

    def done(self) -> bool:
        return self.value is not None or (bool(self.inner.done()) and self._fetch() is not None)

    def result(self) -> ms.runner.RunnerResult:
        return self._fetch()


@derived_object
class _ReportingRunner(ms.runner.PyRunner):
    """``inner``, calling ``measured(index, result)`` as each candidate is measured (not once
    per batch; ``index``: of the runner's inputs).

    A :class:`ms.runner.LocalRunner` measures a whole batch inside ``run``: it is given one
    candidate at a time (it measures them one after the other anyway). Other runners (RPC)
    run a batch in parallel; their futures report as each completes.
    """

    def __init__(self, inner: ms.runner.Runner, measured: Callable) -> None:
        super().__init__()
        self.inner, self.measured = inner, measured

    def run(self, runner_inputs: list) -> list:
        if _INTERRUPTED.is_set():  # a Ctrl-C that TVM swallowed: measure nothing more
            raise KeyboardInterrupt("interrupted")
        if isinstance(self.inner, ms.runner.LocalRunner):
            futures = []
            for index, runner_input in enumerate(runner_inputs):
                (future,) = self.inner.run([runner_input])
                self.measured(index, future.result())
                futures.append(future)
            return futures
        futures = self.inner.run(runner_inputs)
        return [_ReportingFuture(f, self.measured, i) for i, f in enumerate(futures)]


@derived_object
class _BatchDone(ms.measure_callback.PyMeasureCallback):
    """Calls ``sync`` after each batch is committed (it follows MetaSchedule's
    AddToDatabase): the tracker then counts build failures too, as the database does."""

    def __init__(self, sync: Callable[[], None]) -> None:
        super().__init__()
        self.sync = sync

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        self.sync()


def _best(database: TuningDatabase, mod: tvm.IRModule) -> float:
    """The best latency of workload ``mod``: its default schedule's or a faster record's."""
    records = database.records(mod)
    return min([database.default_seconds(mod), *(_mean(r.run_secs) for r in records)])


def require_tuning_extra() -> None:
    """Raise MissingExtraError unless MetaSchedule's search dependencies (``[tune]``) import."""
    for module in ("xgboost", "cloudpickle", "psutil", "tornado"):
        require(module, "tuning (MetaSchedule)")


def tune(
    func: tirx.PrimFunc,
    target: tvm.target.Target,
    db: str | os.PathLike,
    trials: int,
    *,
    rpc: RPCTracker | None = None,
    jobs: int | None = None,
    seed: int | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    verbose: bool = False,
) -> TuningResult:
    """Tune ``func`` for ``target`` until ``db`` holds ``trials`` measured candidates.

    Candidates already in ``db`` for this (workload, target) count: re-running continues
    where a previous (possibly killed or interrupted) run stopped. The default schedule is
    timed twice first, and again after each batch of the search, interleaved with the
    candidates (its fastest timing is kept); the generic default rules' trace seeds the
    search. ``progress(done, total, best_seconds)`` is called once before the search, after
    each measured candidate and after each committed batch; ``best_seconds`` follows the rule of
    ``TuningResult.best_seconds`` (the stored default latency or a faster candidate's mean),
    so the last call's figures are the result's. A KeyboardInterrupt (Ctrl-C) propagates;
    every record committed before it is in ``db``. ``rpc`` measures on the devices of a TVM
    RPC tracker; ``jobs`` is the number of parallel builds (and of RPC sessions). ``verbose`` shows MetaSchedule's log on stdout
    (it always goes to files in a temporary work directory).
    """
    if not is_cpu(target):
        raise ValueError(f"target must be an llvm (CPU) target to tune, got {target.kind.name}")
    require_tuning_extra()
    if trials < 0:
        raise ValueError(f"trials must be >= 0, got {trials}")
    check_database_path(db, "db")
    start = time.perf_counter()
    mod = workload_module(func)
    database = TuningDatabase(db, target)
    with _interruptible(), _cpu_tensor_intrinsics_only(target), _meta_schedule_console(verbose):
        builder, runner = make_builder(jobs), make_runner(rpc, jobs)
        if database.default_seconds(mod) is None:
            _measure_default(database, mod, target, builder, runner)
        done = database.candidates(mod)
        remaining = max(0, trials - done)
        tracker = _Tracker(progress, done, trials, _best(database, mod))
        tracker.report()
        if remaining:
            default_mod = schedule_cpu(mod["main"], target)

            def after_batch() -> None:
                # The default is timed again after each batch, interleaved with the
                # candidates (its stored figure is the fastest timing): one slow timing on
                # a shared machine must not make a no-better candidate "beat" it. The
                # report that follows uses the figure the result will.
                try:
                    again = _time(default_mod, target, builder, runner)
                    database.lower_default_seconds(mod, _mean(again))
                except RuntimeError as err:  # a lost RPC device, say: the search goes on
                    logging.getLogger("convforge").warning("re-timing the default: %s", err)
                tracker.sync(database.candidates(mod), _best(database, mod))

            callbacks = [
                *ms.measure_callback.MeasureCallback.create("default"), _BatchDone(after_batch)
            ]  # fmt: skip
            batch, workload = _Batch(), database.commit_workload(mod)

            def measured(index: int, result: ms.runner.RunnerResult) -> None:
                # Committed at once (MetaSchedule commits a batch at its end; the same
                # record again is not stored twice): a kill or Ctrl-C loses no measurement.
                if _is_valid(result.run_secs) and index < len(batch.built):
                    candidate = batch.candidates[batch.built[index]]
                    database.commit_tuning_record(
                        ms.database.TuningRecord(
                            candidate.sch.trace,
                            workload,
                            result.run_secs,
                            target,
                            candidate.args_info,
                        )
                    )
                tracker.measured(result)

            with tempfile.TemporaryDirectory(prefix="convforge-tune-") as work_dir:
                ms.tune_tir(
                    mod, target, work_dir, max_trials_global=remaining,
                    num_trials_per_iter=min(remaining, BATCH),
                    builder=_RememberingBuilder(builder, batch),
                    runner=_ReportingRunner(runner, measured), database=database,
                    measure_callbacks=callbacks,
                    strategy=_RememberingStrategy(_search_strategy(remaining), batch),
                    num_tuning_cores=jobs or "physical", seed=seed,
                )  # fmt: skip
    return TuningResult(
        database_file=workload_file(db, mod, target),
        default_seconds=database.default_seconds(mod),
        best_seconds=_best(database, mod),
        trials=database.candidates(mod),
        new_trials=database.candidates(mod) - done,
        elapsed_seconds=time.perf_counter() - start,
    )


def _search_strategy(trials: int) -> ms.search_strategy.EvolutionarySearch:
    """Evolutionary search with a population scaled to the (small) trial budget."""
    return ms.search_strategy.EvolutionarySearch(
        population_size=min(512, max(64, 8 * trials)), init_min_unmeasured=min(50, 4 * trials)
    )


# --------------------------------------------------------------------------- MetaSchedule

#: File names of a MetaSchedule ``JSONDatabase`` (``ms.database.JSONDatabase(work_dir=...)``).
MS_WORKLOAD_FILE = "database_workload.json"
MS_RECORD_FILE = "database_tuning_record.json"


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_metaschedule` wrote."""

    directory: Path
    workloads: int
    records: int
    skipped: int  # records not written: failed measurements, or unreadable files/records


def _database_files(db: Path) -> list[Path]:
    return sorted(p for p in db.glob("*/*.json") if not p.name.startswith("."))


def export_metaschedule(db: str | os.PathLike, directory: str | os.PathLike) -> ExportSummary:
    """Write every measured record of convforge database ``db`` (every target) into
    ``directory`` as a TVM MetaSchedule ``JSONDatabase``: ``database_workload.json`` (one
    line per workload, ``Workload.as_json()``) and ``database_tuning_record.json`` (one line
    per record, ``[workload index, [trace, run_secs, target, args_info]]``), which
    ``ms.database.JSONDatabase(work_dir=directory)`` reads and
    ``ms.tir_integration.compile_tir`` / ``MetaScheduleApplyDatabase`` apply (the fastest
    record of a workload and target).

    Records whose measurement failed are left out; so are files and records that cannot be
    read (a :class:`CorruptRecordWarning` names them). Each file is written atomically,
    the workloads first; files of an earlier export in ``directory`` are replaced.
    ValueError if ``db`` is not a database directory or ``directory`` is a file.
    """
    db, directory = Path(db), Path(directory)
    if not db.is_dir():
        raise ValueError(f"db: {os.fspath(db)!r} is not a tuning database directory")
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"directory: {os.fspath(directory)!r} is a file, not a directory")
    workloads: dict[str, int] = {}  # workload JSON -> line
    workload_lines: list[str] = []
    record_lines: list[str] = []
    skipped = 0
    for path in _database_files(db):
        try:
            payload = _read_payload(path)
            workload = ms.database.Workload.from_json(payload["workload"])
        except Exception as err:
            _warn_corrupt(path, err)
            continue
        line = json.dumps(workload.as_json())
        for raw in payload["records"]:
            if not (isinstance(raw, list) and len(raw) > 1 and _is_valid(raw[1])):
                skipped += 1
                continue
            try:  # parse it as TVM will: a record TVM cannot read is not written
                record_json(ms.database.TuningRecord.from_json(raw, workload))
            except Exception as err:
                _warn_corrupt(path, err, "a record")
                skipped += 1
                continue
            if line not in workloads:
                workloads[line] = len(workload_lines)
                workload_lines.append(line)
            record_lines.append(json.dumps([workloads[line], raw]))
    directory.mkdir(parents=True, exist_ok=True)
    for name, lines in ((MS_WORKLOAD_FILE, workload_lines), (MS_RECORD_FILE, record_lines)):
        atomic_write(directory / name, "".join(f"{line}\n" for line in lines), suffix=".json")
    return ExportSummary(directory, len(workload_lines), len(record_lines), skipped)


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_metaschedule` read into a convforge database."""

    records: int  # records in the MetaSchedule database
    added: int  # of which new to the convforge database
    #: target key -> number of workloads (files) of that target written to
    targets: dict[str, int]
    #: workloads whose default schedule was measured here (records then apply at once)
    measured: int
    #: workloads whose default is not measured (another target): their records apply once
    #: ``convforge tune`` (``--trials 0`` suffices) has run for them on their target
    unmeasured: int


def import_metaschedule(
    directory: str | os.PathLike,
    db: str | os.PathLike,
    *,
    measure_on: tvm.target.Target | None = None,
) -> ImportSummary:
    """Read the MetaSchedule ``JSONDatabase`` in ``directory`` (``database_workload.json``,
    ``database_tuning_record.json``, as :func:`export_metaschedule` or TVM's tuning writes
    them) into convforge database ``db``, each record under its own target (records with
    no target are refused). Records already there are not added twice; every write is the
    atomic merge of :func:`merge_records`.

    A record is applied only where it beats the default schedule as measured (see the
    module doc): ``measure_on`` (this machine's target) measures the default schedule of
    each imported workload whose records are for exactly that target and whose default is
    not measured yet (as ``tune(..., trials=0)``: the seed record too). Others keep
    ``default_seconds`` unset until tuned on their own target.
    ValueError if ``directory`` lacks either file or a line cannot be parsed.
    """
    directory = Path(directory)
    check_database_path(db, "db")
    for name in (MS_WORKLOAD_FILE, MS_RECORD_FILE):
        if not (directory / name).is_file():
            raise ValueError(f"directory: {os.fspath(directory)!r} has no {name}")
    try:
        source = ms.database.JSONDatabase(
            path_workload=os.fspath(directory / MS_WORKLOAD_FILE),
            path_tuning_record=os.fspath(directory / MS_RECORD_FILE),
            allow_missing=False,
        )
        records = list(source.get_all_tuning_records())
    except Exception as err:
        message = " ".join(str(err).split())[-300:]
        raise ValueError(
            f"directory: {os.fspath(directory)!r} is not a MetaSchedule JSON database "
            f"that TVM can read ({message})"
        ) from None
    grouped: dict[Path, tuple[tvm.target.Target, ms.database.Workload, list]] = {}
    for record in records:
        if record.target is None:
            raise ValueError(
                f"directory: a record of {os.fspath(directory / MS_RECORD_FILE)!r} names no "
                f"target (convforge keys records by target)"
            )
        target = record.target
        mod = record.workload.mod
        path = workload_file(db, mod, target)
        entry = grouped.setdefault(path, (target, ms.database.Workload(mod), []))
        entry[2].append(record_json(record))
    added, targets, measured, unmeasured = 0, {}, 0, 0
    for path, (target, workload, raws) in grouped.items():
        before = _WorkloadRecords.load(path, target)
        count = len(before.records) if before is not None else 0
        merged = merge_records(path, target, workload, raws)
        added += len(merged.records) - count
        key = target_key(target)
        targets[key] = targets.get(key, 0) + 1
        if merged.default_seconds is not None:
            continue
        if measure_on is not None and key == target_key(measure_on):
            try:
                tune(workload.mod["main"], target, db, 0)
                measured += 1
                continue
            except (RuntimeError, ValueError, TypeError, IndexError) as err:
                message = " ".join(str(err).split())[-200:]
                warnings.warn(
                    f"{os.fspath(path)}: the default schedule could not be measured "
                    f"({type(err).__name__}: {message}); its records apply once it is",
                    stacklevel=2,
                )
        unmeasured += 1
    return ImportSummary(len(records), added, targets, measured, unmeasured)
