"""The persistent kernel cache: compiled CPU kernels as exported libraries on disk.

An entry is ``<dir>/<key>.so``: TVM's exported shared library followed by convforge's
integrity trailer (:mod:`convforge.export.library`: size, SHA-256, target), whose JSON also
holds the key's parts under ``"cache"``. The key is the SHA-256 of those parts:

- ``convforge``: convforge's version; ``tvm``: TVM's version;
- ``target``: :func:`convforge.targets.target_key` of the exact target;
- ``tir``: SHA-256 of the computation's printed (unscheduled) TIR;
- ``schedule``: how it is scheduled: the SHA-256 of convforge's schedule code
  (:func:`schedule_code_digest`) and the state of the active tuning databases
  (:func:`convforge.schedules.tuning.database_state`: a database that gains a record is
  another key). The tuning record a kernel was scheduled by is stored with the entry.

A hit therefore skips scheduling as well as TVM's compile. Whole compiled models are
entries of this cache too (:mod:`convforge.export.model_cache`: a ``model`` part instead of
``tir``), under the same folder, bound and rules.

Contract:

- Folder: ``$CONVFORGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/convforge``, else
  ``~/.cache/convforge``. ``CONVFORGE_CACHE=0`` (or ``false``/``off``/``no``) disables it:
  nothing is read or written. Only ``llvm`` (CPU) targets are cached.
- Writes are atomic (export to a temporary file in the folder, trailer, ``os.replace``): a
  reader sees a whole entry or none; two processes writing one key both succeed and the
  entry left is valid (both wrote the same kernel).
- Reads verify the trailer (size, SHA-256, target) before anything is loaded; an entry that
  fails (truncated, garbage, altered byte, or TVM cannot load it) is skipped with a
  :class:`UserWarning` naming the file, deleted, and the caller rebuilds.
- Bounded: after each write, least-recently-used entries (by mtime, touched on every hit)
  are deleted until the total is at most ``$CONVFORGE_CACHE_SIZE`` bytes (default 1 GiB;
  a suffix K, M or G is accepted). Bad values of these variables raise ValueError.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where a key is made: a lookup by key needs no TVM
    import tvm

#: Default bound of the folder's entries, bytes.
DEFAULT_SIZE = 1 << 30
_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def enabled() -> bool:
    """False when ``CONVFORGE_CACHE`` is 0/false/off/no (ValueError for other values than
    those and 1/true/on/yes/empty)."""
    value = os.environ.get("CONVFORGE_CACHE", "1").strip().lower()
    if value in ("0", "false", "off", "no"):
        return False
    if value in ("", "1", "true", "on", "yes"):
        return True
    raise ValueError(f"CONVFORGE_CACHE must be 0 or 1, got {value!r}")


def cache_dir() -> Path:
    """The cache folder (not created here): see the module doc."""
    explicit = os.environ.get("CONVFORGE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "convforge"


def index_dir() -> Path:
    """The folder of the model entries' quick index (:mod:`convforge.export.model_cache`)."""
    return cache_dir() / "index"


def size_limit() -> int:
    """The bound in bytes: ``CONVFORGE_CACHE_SIZE`` (integer, optional K/M/G suffix)."""
    text = os.environ.get("CONVFORGE_CACHE_SIZE", "").strip().upper().removesuffix("B")
    if not text:
        return DEFAULT_SIZE
    suffix = text[-1] if text[-1] in "KMG" else ""
    number = text[: len(text) - len(suffix)]
    if not number.isdigit():
        raise ValueError(
            "CONVFORGE_CACHE_SIZE must be a non-negative integer of bytes with an optional "
            f"K, M or G suffix, got {os.environ['CONVFORGE_CACHE_SIZE']!r}"
        )
    return int(number) * _SUFFIXES[suffix]


def key_parts(
    func: tvm.tirx.PrimFunc | tvm.IRModule, target: tvm.target.Target, schedule: object
) -> dict:
    """The parts of a kernel's key (see the module doc): ``func`` is the unscheduled
    PrimFunc (or a module), ``schedule`` a JSON-serializable identity of how it is
    scheduled (:func:`convforge.build.compile_computation` passes the digest of the
    schedule code and the tuning databases' state)."""
    digest = hashlib.sha256(func.script(show_meta=True).encode()).hexdigest()
    return key_parts_of("tir", digest, target, schedule)


@functools.cache
def schedule_code_digest() -> str:
    """SHA-256 of the code that picks and applies default schedules (``convforge/build.py``,
    ``targets.py`` and ``schedules/*.py``): a changed schedule is another key even when
    convforge's version string stays."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in [
        root / "build.py",
        root / "targets.py",
        *sorted((root / "schedules").glob("*.py")),
    ]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@functools.cache
def code_digest() -> str:
    """SHA-256 of every ``.py`` file of the convforge package (names and bytes)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@functools.cache
def tvm_build() -> list:
    """TVM's installed build without importing it: its version file's digest and its
    libraries' sizes and modification times."""
    import importlib.util

    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        return []
    package = Path(next(iter(spec.submodule_search_locations)))
    facts: list = []
    for path in [package / "_version.py", *sorted((package / "lib").glob("*.so"))]:
        try:
            stat = path.stat()
        except OSError:
            facts.append([path.name, None])
            continue
        if path.suffix == ".py":
            facts.append([path.name, hashlib.sha256(path.read_bytes()).hexdigest()])
        else:
            facts.append([path.name, stat.st_size, stat.st_mtime_ns])
    return facts


@functools.cache
def host_facts() -> dict:
    """What the host target is derived from (LLVM's CPU detection), read without TVM: the
    architecture, CPU counts, and the CPU's vendor, model and flags from ``/proc/cpuinfo``."""
    import platform

    found: dict = {"machine": platform.machine(), "cpus": os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):
        found["affinity"] = len(os.sched_getaffinity(0))
    try:
        with open("/proc/cpuinfo", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                name = name.strip()
                if name in ("vendor_id", "model name", "flags", "cpu family", "model", "Features",
                            "CPU implementer", "CPU part") and name not in found:  # fmt: skip
                    found[name] = value.strip()
    except OSError:
        found["cpuinfo"] = None
    return found


def start_facts() -> dict:
    """What every start key (a key computed without TVM: :func:`quick_kernel`, the model
    cache's and the host target's) is made of besides its own subject: convforge's version
    and code digest, TVM's installed build, this machine, and every ``CONVFORGE_*`` and
    ``TVM_*`` environment variable but TVM's thread pool spin (read by the runtime alone, and
    set by convforge: :data:`convforge.tvm_import.SPIN_ENV`)."""
    import convforge
    from convforge.tvm_import import SPIN_ENV

    return {
        "convforge": convforge.__version__, "code": code_digest(), "tvm": tvm_build(),
        "host": host_facts(),
        "env": {k: v for k, v in os.environ.items()
                if k.startswith(("CONVFORGE_", "TVM_")) and k != SPIN_ENV},
    }  # fmt: skip


def kernel_start_key(name: str, key: Any, target_key: str, tuning_state: Any) -> str | None:
    """The start key of a numpy API kernel: SHA-256 of :func:`start_facts`, the kernel's
    ``name`` and ``key`` (the plain data its computation is made from, as
    :func:`convforge.build.cached_kernel` takes it), the target's key and the tuning
    databases' state; all read without TVM. None when ``key`` holds something other than
    plain data (:func:`plain_key`)."""
    plain = plain_key(key)
    if plain is None:
        return None
    facts = {
        **start_facts(), "kernel": name, "key": plain, "target": target_key,
        "tuning": plain_key(tuning_state),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


_SCALARS = (bool, int, float, str, type(None))


def plain_key(value: Any) -> Any:
    """``value`` (a cache key: tuples, dataclasses, enums, numbers, strings) as JSON data
    that two keys share only when they are equal: every container and object tagged with
    its type, a dataclass by the fields it compares; None for anything else (a function,
    an arbitrary object), which no start key is made for."""
    import dataclasses
    import enum
    import numbers

    if isinstance(value, _SCALARS):
        return [type(value).__name__, value]
    if isinstance(value, enum.Enum):
        return ["enum", f"{type(value).__module__}.{type(value).__qualname__}", value.name]
    if isinstance(value, numbers.Integral):
        return ["int", int(value)]
    if isinstance(value, tuple | list | frozenset):
        items = [plain_key(v) for v in value]
        if any(v is None for v in items):
            return None
        if isinstance(value, frozenset):
            items.sort(key=json.dumps)
        return [type(value).__name__, items]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {}
        for f in dataclasses.fields(value):
            if f.compare:
                fields[f.name] = plain_key(getattr(value, f.name))
                if fields[f.name] is None:
                    return None
        return ["dataclass", f"{type(value).__module__}.{type(value).__qualname__}", fields]
    return None


def _kernel_index(start: str) -> Path:
    return index_dir() / f"kernel-{start}.json"


def remember_kernel(start: str, parts: dict, meta: dict) -> None:
    """Record the start key ``start`` -> the entry of ``parts`` and the kernel's ``meta``
    (shapes, dtypes, tuning record) in the index; best effort (an OSError is ignored)."""
    from convforge.filemode import atomic_write

    with contextlib.suppress(OSError, TypeError, ValueError):
        index_dir().mkdir(parents=True, exist_ok=True)
        atomic_write(_kernel_index(start), json.dumps({"parts": parts, "kernel": meta}))


def quick_kernel(start: str | None) -> tuple[Any, dict] | None:
    """The kernel of the start key ``start`` (:func:`kernel_start_key`), loaded by TVM's
    runtime alone: (module, its ``meta`` as remembered), or None (no index record, or its
    entry missing or corrupt: :func:`load`)."""
    if start is None or not enabled():
        return None
    try:
        record = json.loads(_kernel_index(start).read_text())
        parts, meta = record["parts"], record["kernel"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    hit = load(parts)
    return None if hit is None else (hit[0], meta)


def key_parts_of(kind: str, digest: str, target: tvm.target.Target, schedule: object) -> dict:
    """Key parts of another kind of entry (``kind``: e.g. ``"model"``, whose ``digest``
    identifies it as ``tir`` does a kernel; see :mod:`convforge.export.model_cache`)."""
    import convforge
    from convforge.targets import target_key
    from convforge.tvm_import import import_tvm

    tvm = import_tvm()
    return {
        "convforge": convforge.__version__,
        "tvm": tvm.__version__,
        "target": target_key(target),
        kind: digest,
        "schedule": json.loads(json.dumps(schedule, default=str)),
    }


def entry_path(parts: dict) -> Path:
    """The file of the entry of ``parts`` (which may not exist)."""
    return cache_dir() / f"{entry_key(parts)}.so"


def entry_key(parts: dict) -> str:
    """The file stem of an entry: SHA-256 of its parts (first 32 hex digits)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _entries(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.suffix == ".so" and not p.name.startswith(".")]
    except FileNotFoundError:
        return []


def discard(path: Path, reason: str) -> None:
    """Warn that the entry ``path`` is corrupt (``reason``) and delete it."""
    warnings.warn(
        f"convforge kernel cache: skipping corrupt entry {str(path)!r} ({reason}); "
        "deleted, the kernel is rebuilt",
        UserWarning,
        stacklevel=3,
    )
    with contextlib.suppress(OSError):
        path.unlink()


def load(
    parts: dict, load_module: Callable[[str], Any] | None = None
) -> tuple[tvm.runtime.Module, dict] | None:
    """The cached module of ``parts`` and its entry's ``extra`` record (see :func:`store`),
    else None (missing, disabled, or corrupt: see the module doc). A hit marks the entry as
    used now. ``load_module(path)`` loads the verified library (default
    :func:`convforge.export.runtime.load_module`)."""
    if not enabled():
        return None
    from convforge.export.library import verified_copy

    path = entry_path(parts)
    if not path.is_file():
        return None
    try:
        with verified_copy(str(path)) as (copy, record):
            extra = _check_parts(record, parts)
            if load_module is None:
                from convforge.export.runtime import load_module
            module = load_module(copy)
    except FileNotFoundError:  # evicted or replaced meanwhile
        return None
    except (ValueError, OSError, RuntimeError) as err:  # RuntimeError: TVM could not load it
        discard(path, str(err).splitlines()[0] if str(err) else type(err).__name__)
        return None
    with contextlib.suppress(OSError):
        os.utime(path)
    return module, extra


def _check_parts(record: dict, parts: dict) -> dict:
    """The ``extra`` record of an entry whose verified trailer record is ``record``
    (ValueError unless it was stored under ``parts``)."""
    if record.get("cache") != parts:
        raise ValueError("its recorded key differs from its file name's")
    extra = record.get("extra", {})
    if not isinstance(extra, dict):
        raise ValueError("its extra record is not a JSON object")
    return extra


def store(
    parts: dict,
    executable: tvm.runtime.Executable,
    target: tvm.target.Target,
    extra: dict | None = None,
) -> bool:
    """Write ``executable`` as the entry of ``parts`` (atomically), with ``extra`` (a JSON
    object :func:`load` hands back, e.g. the tuning record used), then evict down to the
    bound. Does nothing when the cache is disabled; an OSError (read-only or full disk) is
    a warning, never a failure of the caller. True when the entry was written."""
    if not enabled():
        return False
    from convforge.export.library import append_trailer
    from convforge.filemode import atomic_write

    def write(tmp: str) -> None:
        executable.export_library(tmp)
        append_trailer(tmp, target, extra={"cache": parts, "extra": extra or {}})

    folder = cache_dir()
    limit = size_limit()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / f"{entry_key(parts)}.so", write, executable=True, suffix=".so")
        evict(limit)
    except OSError as err:
        warnings.warn(
            f"convforge kernel cache: cannot write to {str(folder)!r}: {err}",
            UserWarning,
            stacklevel=2,
        )
        return False
    return True


def evict(limit: int | None = None) -> int:
    """Delete least-recently-used entries until their total is at most ``limit`` bytes
    (default :func:`size_limit`), and temporary files of writers killed over an hour ago;
    returns how many entries were deleted."""
    limit = size_limit() if limit is None else limit
    _remove_stale_temporaries()
    stats = []
    for path in _entries(cache_dir()):
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            stats.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in stats)
    deleted = 0
    for _, size, path in sorted(stats, key=lambda s: s[0]):
        if total <= limit:
            break
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            deleted += 1
        total -= size
    return deleted


@dataclass
class Info:
    """What ``convforge cache info`` prints."""

    folder: Path
    enabled: bool
    entries: int
    total_bytes: int
    limit_bytes: int


def info() -> Info:
    """The folder, whether enabled, its entries and their total size, and the bound."""
    sizes = []
    for path in _entries(cache_dir()):
        with contextlib.suppress(FileNotFoundError):
            sizes.append(path.stat().st_size)
    return Info(cache_dir(), enabled(), len(sizes), sum(sizes), size_limit())


def clear() -> int:
    """Delete every entry (and temporary files over an hour old, left by killed writers);
    returns the entries deleted."""
    deleted = 0
    for path in _entries(cache_dir()):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            deleted += 1
    for path in index_dir().glob("*.json"):
        with contextlib.suppress(OSError):
            path.unlink()
    _remove_stale_temporaries()
    return deleted


def _remove_stale_temporaries(age: float = 3600) -> None:
    """Delete the temporary files of writers killed over ``age`` seconds ago."""
    with contextlib.suppress(OSError):
        for path in cache_dir().glob(".tmp-*.so"):
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > age:
                    path.unlink()
