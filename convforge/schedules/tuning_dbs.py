"""Which tuning databases a lookup consults, and their state: without TVM.

:mod:`convforge.schedules.tuning` holds the databases' records, the lookups and the tuner;
this module holds what a compiled kernel's cache key needs of them (:func:`database_state`)
and what selects them (:func:`use_tuning_db`, ``$CONVFORGE_TUNING_DB``, the match mode),
so that the numpy API finds a cached kernel without importing TVM's compiler. Every name
here is also ``convforge.schedules.tuning``'s (see that module's doc for the layout).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from convforge.targets import target_key

if TYPE_CHECKING:
    import tvm


#: Environment variable naming a tuning database directory (used when none is set in code).
DB_ENV = "CONVFORGE_TUNING_DB"


#: Records shipped with the package (read-only).
SHIPPED_DB = Path(__file__).resolve().parent.parent / "tuned"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def target_dir(db: str | os.PathLike, target: tvm.target.Target) -> Path:
    """Directory of ``db`` holding the records of ``target``."""
    return Path(db) / _digest(target_key(target))


class CorruptRecordWarning(UserWarning):
    """A tuning database file (or one record in it) could not be used and was skipped."""


def _warn_corrupt(path: Path, err: BaseException, what: str = "the file") -> None:
    message = " ".join(str(err).split())[:200] or type(err).__name__
    warnings.warn(
        f"tuning database {os.fspath(path)!r}: {what} could not be used (unreadable or "
        f"corrupt) and was skipped ({type(err).__name__}: {message}); the default schedule "
        f"is used where no other record applies",
        CorruptRecordWarning,
        stacklevel=3,
    )


def _read_payload(path: Path) -> dict:
    """The JSON object in ``path``, its structure checked (ValueError when it is wrong)."""
    payload = json.loads(path.read_bytes().decode("utf-8"))
    if not isinstance(payload, dict):
        raise ValueError(f"expected a JSON object, got {type(payload).__name__}")
    records = payload.get("records")
    if not isinstance(records, list) or not all(
        isinstance(r, list) and len(r) >= 2 for r in records
    ):
        raise ValueError("'records' must be a list of [trace, run_secs, ...] lists")
    default = payload.get("default_seconds")
    if default is not None and not isinstance(default, int | float):
        raise ValueError(f"'default_seconds' must be a number, got {default!r}")
    if "workload" not in payload:
        raise ValueError("no 'workload'")
    return payload


def check_database_path(path: str | os.PathLike, name: str = "db") -> Path:
    """``path`` as a tuning database directory (it may not exist yet); ValueError if it is a
    file or another non-directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"{name}: {os.fspath(path)!r} is not a directory (a tuning database is a folder)"
        )
    return path


#: (database set by use_tuning_db or None, whether to use the shipped records): one value
#: per thread / contextvars context, so that one thread's database never reaches another's.
_active: contextvars.ContextVar[tuple[Path | None, bool]] = contextvars.ContextVar(
    "convforge_tuning_db", default=(None, True)
)


#: The match mode set by use_tuning_db / use_tuning_match (None: ``$CONVFORGE_TUNING_MATCH``).
_match: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "convforge_tuning_match", default=None
)


#: Environment variable choosing the match mode where none is set in code.
MATCH_ENV = "CONVFORGE_TUNING_MATCH"


#: How a lookup matches a record's target to the target compiled for: ``exact`` (the
#: default: kind, triple, CPU, features and core count) or ``cpu`` (the same, except that a
#: record tuned for another core count, ``num-cores``, may serve when the database has none
#: for this one; said once per process by a :class:`CoreCountMatchWarning`).
MATCH_MODES = ("exact", "cpu")


class CoreCountMatchWarning(UserWarning):
    """A record tuned for another core count serves this target (``match='cpu'``)."""


def _check_match(match: str, name: str) -> str:
    if match not in MATCH_MODES:
        raise ValueError(f"{name} must be one of {', '.join(MATCH_MODES)}, got {match!r}")
    return match


@contextlib.contextmanager
def _restoring(previous: tuple[Path | None, bool], match: str | None) -> Iterator[None]:
    try:
        yield
    finally:
        _active.set(previous)
        _match.set(match)


def use_tuning_db(
    path: str | os.PathLike | None, *, shipped: bool = True, match: str | None = None
) -> contextlib.AbstractContextManager[None]:
    """Compile with the tuned records of database directory ``path`` from now on, in the
    calling thread (or ``contextvars`` context) only: other threads keep their own setting,
    and a new thread starts from ``$CONVFORGE_TUNING_DB``.

    ``shipped``: also use the records shipped in ``convforge/tuned`` (after ``path``).
    ``path=None`` goes back to ``$CONVFORGE_TUNING_DB`` (if set). ``match`` (see
    :data:`MATCH_MODES`): ``'cpu'`` lets a record tuned on a target that differs only in its
    core count serve (opt-in; a :class:`CoreCountMatchWarning` says so once); None keeps the
    mode in effect (:func:`use_tuning_match`, else ``$CONVFORGE_TUNING_MATCH``, else
    ``'exact'``). Used as ``with use_tuning_db(p): ...`` the previous setting comes back at
    the end of the block. ``path`` naming a file (not a directory) or an unknown ``match``
    raises ValueError.
    """
    if path is not None:
        check_database_path(path, "path")
    if match is not None:
        _check_match(match, "match")
    previous, previous_match = _active.get(), _match.get()
    _active.set((None if path is None else Path(path), shipped))
    if match is not None:
        _match.set(match)
    return _restoring(previous, previous_match)


def use_tuning_match(match: str | None) -> contextlib.AbstractContextManager[None]:
    """Set only the match mode of lookups (as ``use_tuning_db(..., match=)``), in the calling
    thread or context; None goes back to ``$CONVFORGE_TUNING_MATCH``."""
    if match is not None:
        _check_match(match, "match")
    previous, previous_match = _active.get(), _match.get()
    _match.set(match)
    return _restoring(previous, previous_match)


def context_active() -> bool:
    """Whether a :func:`use_tuning_db` or :func:`use_tuning_match` context is in effect (the
    model cache's quick lookup, which reads only the environment, then stands aside)."""
    return _active.get() != (None, True) or _match.get() is not None


def active_match() -> str:
    """The match mode lookups use now (ValueError for a bad ``$CONVFORGE_TUNING_MATCH``)."""
    match = _match.get()
    if match is None:
        match = _check_match(os.environ.get(MATCH_ENV) or "exact", f"${MATCH_ENV}")
    return match


def active_databases() -> list[Path]:
    """Databases lookups consult, first match wins: the one set or in the env, then shipped."""
    active, shipped = _active.get()
    chosen = active or (Path(os.environ[DB_ENV]) if os.environ.get(DB_ENV) else None)
    return [p for p in (chosen, SHIPPED_DB if shipped else None) if p is not None]


_CORES = re.compile(r'"num-cores": (\d+)')


def _split_cores(key: str) -> tuple[str, int] | None:
    """Target key ``key`` (:func:`convforge.targets.target_key`: the JSON text of the
    target's export as printed) without its core count, and that count; None if it names
    no core count."""
    try:
        text = json.loads(key)
    except (TypeError, ValueError):
        return None
    if not isinstance(text, str):
        return None
    found = _CORES.findall(text)
    if len(found) != 1:
        return None
    return _CORES.sub('"num-cores": *', text), int(found[0])


def _cpu_key(key: str) -> str | None:
    """Target key ``key`` without its core count (None if it names none)."""
    split = _split_cores(key)
    return None if split is None else split[0]


def _core_count(key: str) -> int | None:
    split = _split_cores(key)
    return None if split is None else split[1]


_folder_targets: dict[tuple[Path, int], str | None] = {}


def _folder_target(folder: Path) -> str | None:
    """The target key of the records in ``folder`` (read from one of its files; cached by
    the folder's mtime), None if no file there can be read."""
    try:
        stamp = (folder, folder.stat().st_mtime_ns)
    except OSError:
        return None
    if stamp not in _folder_targets:
        key = None
        for path in sorted(folder.glob("*.json")):
            if path.name.startswith("."):
                continue
            with contextlib.suppress(Exception):
                key = _read_payload(path).get("target")
                if isinstance(key, str):
                    break
        if not isinstance(key, str):  # a folder of knob records only (convforge.knobs)
            for path in sorted(folder.glob("*.knobs")):
                with contextlib.suppress(Exception):
                    key = json.loads(path.read_text()).get("target")
                    if isinstance(key, str):
                        break
            key = key if isinstance(key, str) else None
        _folder_targets[stamp] = key
    return _folder_targets[stamp]


def _matching_folders(
    db: str | os.PathLike, target: tvm.target.Target, match: str
) -> list[tuple[Path, str]]:
    """``(folder, target key)`` of ``db`` whose records may serve ``target``: its own; with
    ``match='cpu'`` also (after it, in name order) those of targets that differ only in
    ``num-cores``."""
    key = target_key(target)
    own = target_dir(db, target)
    found = [(own, key)]
    if match == "cpu" and Path(db).is_dir():
        cpu = _cpu_key(key)
        for folder in sorted(p for p in Path(db).iterdir() if p.is_dir()):
            other = _folder_target(folder) if folder != own and cpu is not None else None
            if other is not None and other != key and _cpu_key(other) == cpu:
                found.append((folder, other))
    return found


def database_state(target: tvm.target.Target) -> tuple:
    """Changes whenever lookups for ``target`` could answer differently (a cache-key part):
    the match mode, and each consulted folder's modification time."""
    match = active_match()
    state: list[tuple] = [("match", match)]
    for db in active_databases():
        for folder, _ in _matching_folders(db, target, match):
            state.append((str(folder), folder.stat().st_mtime_ns if folder.is_dir() else None))
    return tuple(state)
