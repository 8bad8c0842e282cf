"""Whole-model entries of the persistent kernel cache (:mod:`convforge.kernel_cache`).

:func:`convforge.compile_model` (and so ``convforge compile``) looks a model up here before
compiling it and stores what it compiled. There is one cache: a model entry is an entry of
:mod:`convforge.kernel_cache` (same folder, ``CONVFORGE_CACHE``/``CONVFORGE_CACHE_DIR``/
``CONVFORGE_CACHE_SIZE``, atomic writes, trailer verification before loading, corrupt
entries skipped with a warning and rebuilt, one least-recently-used bound over kernels and
models together, ``convforge cache info|clear``). An entry is the library
:meth:`~convforge.CompiledModel.export_library` would write (loadable by ``cf.load``), its
trailer also holding the key's parts and the model description.

Key parts (a different value of any of them is another entry):

- ``convforge``, ``tvm``: the versions; ``target``: :func:`convforge.targets.target_key`;
- ``model``: SHA-256 of the model's bytes: the file's bytes for a path (so a hit never
  imports onnx; remembered for the file's unchanged state, :func:`_memo`, so a settled
  file is hashed once), ``SerializeToString()`` for a ``ModelProto`` (the same model given
  both ways may be two entries);
- ``options``: every compile option (``input_shapes``, ``algorithm``, the batch buckets...,
  as :func:`convforge.export.model.compile_model` passes them);
- ``schedule``: SHA-256 of convforge's schedule code, SHA-256 of all of convforge's code
  (a changed lowering is another key even when the version string stays) and the active
  tuning databases' state (:func:`convforge.schedules.tuning.database_state`, with the
  ``tuning_db`` of the call made active: a database that gains a record is another key).

Only CPU (``llvm``) targets are cached, as for kernels.

**The quick lookup.** Computing those parts takes TVM (the host target's exact features, the
tuning databases of that target), and importing TVM takes 1-1.5 s on a 2-core machine, more
than loading and running a cached model. So each time a model entry is stored or hit, an
index file ``<dir>/index/<start key>.json`` records its parts, where the *start key*
(:func:`start_key`) is the SHA-256 of what those parts are computed from, all read without
TVM: convforge's version and code digest, TVM's installed build (its version file and
compiler library), the ``target`` argument as given (None or a string), this machine (its
CPU's model name and flags from ``/proc/cpuinfo``, CPU counts), every ``CONVFORGE_*`` and
``TVM_*`` environment variable (but TVM's thread pool spin, which the runtime alone reads
and convforge sets: :data:`convforge.tvm_import.SPIN_ENV`), the model's digest, the
options and the ``tuning_db`` path (:func:`convforge.kernel_cache.start_facts`).
The index file also holds the modification time of each tuning database folder the parts'
state consulted and of each database's root (a folder added there: another core count's
records under ``match="cpu"``). :func:`quick_load` trusts an index file only while every
one of those times is unchanged, and loads the entry through TVM's runtime alone
(:mod:`convforge.export.runtime`), verified as any entry and checked against the parts its
own trailer records. Anything else (no index file, a changed time, an entry evicted or
corrupt, a ``use_tuning_db`` context in effect) is the usual lookup.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convforge import kernel_cache

if TYPE_CHECKING:  # a quick lookup (start_key, quick_load) imports no TVM
    import tvm


#: A file whose modification or status-change time is this recent (nanoseconds) when it is
#: hashed gets no digest memo: a write later in the same timestamp tick would leave its
#: times unchanged ("racy git").
_MEMO_SETTLED_NS = 2_000_000_000


def model_digest(model: Any) -> str | None:
    """SHA-256 of the model's bytes (see the module doc); None when a path cannot be read
    (the compile then refuses it as before). A file's digest is remembered (:func:`_memo`)."""
    if isinstance(model, str | os.PathLike):
        try:
            with open(model, "rb") as f:
                return _file_digest(f)
        except OSError:
            return None
    serialize = getattr(model, "SerializeToString", None)
    if serialize is None:
        return None
    scope = getattr(_SCOPE, "digests", None)
    key = ("ModelProto", id(model))  # the caller's object, alive and unchanged in one compile
    if scope is not None and key in scope:
        return scope[key]
    digest = hashlib.sha256(serialize(deterministic=True)).hexdigest()
    if scope is not None:
        scope[key] = digest
    return digest


def _memo(stat: os.stat_result) -> Path:
    """The digest memo of a file in the state ``stat``: ``<dir>/index/digest-<key>.json``, the
    key made of the file's device, inode, size and modification and status-change times in
    nanoseconds, as git's index trusts a file whose status is unchanged. Rewriting a file,
    renaming another one over it or touching it changes one of them (the status-change
    time cannot be set back), so a memo never answers for other bytes; a file hashed within
    :data:`_MEMO_SETTLED_NS` of its last change gets none."""
    facts = [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
    key = hashlib.sha256(json.dumps(facts).encode()).hexdigest()
    return kernel_cache.index_dir() / f"digest-{key}.json"


_SCOPE = threading.local()


@contextlib.contextmanager
def one_digest_per_file() -> Iterator[None]:
    """Within this context (one compile, in this thread) a model is hashed once: a file once
    per state (device, inode, size and times, as :func:`_memo` keys it), a ``ModelProto``
    once (serialized: 0.7 s for 100 MB of weights). The start key, the entry's key and the
    quick index then name the bytes first hashed (a fresh file or a ModelProto was hashed
    three times per compile)."""
    outer = getattr(_SCOPE, "digests", None)
    _SCOPE.digests = {} if outer is None else outer
    try:
        yield
    finally:
        _SCOPE.digests = outer


def _file_digest(f: Any) -> str:
    """SHA-256 of the open file ``f``: the one computed for its current state in this
    :func:`one_digest_per_file` scope, or its memo's (:func:`_memo`) where the cache is on
    and one was written for that state, else hashed (and a memo written, best effort, when
    the file is settled and did not change while it was read)."""
    if not kernel_cache.enabled() or os.name != "posix":  # elsewhere st_ctime is the birth
        return hashlib.file_digest(f, "sha256").hexdigest()  # time, which a rewrite keeps
    before = os.fstat(f.fileno())
    scope = getattr(_SCOPE, "digests", None)
    memo = _memo(before)
    if scope is not None and memo in scope:
        return scope[memo]
    digest = _settled_digest(f, before, memo)
    if scope is not None:
        scope[memo] = digest
    return digest


def _settled_digest(f: Any, before: os.stat_result, memo: Path) -> str:
    """:func:`_file_digest` past its scope: the memo's digest, else the file hashed."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        digest = json.loads(memo.read_text())["sha256"]
        if isinstance(digest, str) and len(digest) == 64:
            return digest
    digest = hashlib.file_digest(f, "sha256").hexdigest()
    settled = time.time_ns() - max(before.st_mtime_ns, before.st_ctime_ns) > _MEMO_SETTLED_NS
    if settled and _memo(os.fstat(f.fileno())) == memo:
        from convforge.filemode import atomic_write

        with contextlib.suppress(OSError):
            memo.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(memo, json.dumps({"sha256": digest}))
    return digest


def key_parts(
    model: Any,
    target: tvm.target.Target,
    options: dict,
    tuning_db: str | os.PathLike | None = None,
) -> dict | None:
    """The parts of ``model``'s entry (module doc), or None when nothing is to be cached:
    the cache disabled, a non-CPU target, or a model whose bytes cannot be read."""
    from convforge.targets import is_cpu

    if not kernel_cache.enabled() or not is_cpu(target):
        return None
    digest = model_digest(model)
    if digest is None:
        return None
    from convforge.schedules import tuning

    with tuning.use_tuning_db(tuning_db) if tuning_db is not None else nullcontext():
        state = tuning.database_state(target)
    parts = kernel_cache.key_parts_of(
        "model",
        digest,
        target,
        [kernel_cache.schedule_code_digest(), kernel_cache.code_digest(), state],
    )
    parts["options"] = json.loads(json.dumps(options, sort_keys=True, default=str))
    return parts


def compile_options(input_shapes: Any, algorithm: Any, dynamic: Any, batch_buckets: Any) -> dict:
    """The ``options`` part of a model's key, as :func:`convforge.compile_model` was called
    (the batch buckets resolved: ``$CONVFORGE_BATCH_BUCKETS`` or the default)."""
    from convforge.export.buckets import default_buckets

    return {
        "input_shapes": input_shapes, "algorithm": algorithm, "dynamic": dynamic,
        "batch_buckets": batch_buckets if batch_buckets is not None else default_buckets(),
    }  # fmt: skip


def start_key(
    model: Any, target: Any, options: dict, tuning_db: str | os.PathLike | None
) -> str | None:
    """The start key of a compile (module doc), computed without TVM; None where a quick
    lookup does not apply: a ``target`` that is neither None nor a string, a model whose
    bytes cannot be read, options that are not JSON data."""
    if target is not None and not isinstance(target, str):
        return None
    digest = model_digest(model)
    if digest is None:
        return None
    facts = {
        **kernel_cache.start_facts(), "target": target, "model": digest, "options": options,
        "tuning_db": None if tuning_db is None else os.path.abspath(os.fspath(tuning_db)),
    }  # fmt: skip
    try:
        text = json.dumps(facts, sort_keys=True)
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def _index_file(start: str) -> Path:
    return kernel_cache.index_dir() / f"{start}.json"


def _mtime(path: str | os.PathLike) -> int | None:
    try:
        return os.stat(path).st_mtime_ns if os.path.isdir(path) else None
    except OSError:
        return None


def remember(start: str | None, parts: dict, tuning_db: str | os.PathLike | None) -> None:
    """Record ``start`` -> ``parts`` in the quick index (module doc), with the times to
    recheck: the tuning folders in the parts' state and the active databases' roots (with
    ``tuning_db`` active, as when the parts were made). Best effort: an OSError is ignored
    (the usual lookup still works)."""
    if start is None:
        return
    from convforge.filemode import atomic_write
    from convforge.schedules import tuning

    with tuning.use_tuning_db(tuning_db) if tuning_db is not None else nullcontext():
        roots = [str(db) for db in tuning.active_databases()]
    state = parts["schedule"][-1] if isinstance(parts.get("schedule"), list) else []
    folders = [item[0] for item in state if isinstance(item, list) and item[0] != "match"]
    recheck = [[path, _mtime(path)] for path in [*roots, *folders]]
    record = json.dumps({"parts": parts, "recheck": recheck}, sort_keys=True)
    with contextlib.suppress(OSError):
        kernel_cache.index_dir().mkdir(parents=True, exist_ok=True)
        atomic_write(_index_file(start), record)


def quick_load(start: str | None) -> tuple[Any, dict, Path] | None:
    """The cached model of the start key ``start`` through the quick index (module doc),
    loaded by TVM's runtime alone: (module, model description, entry path), or None."""
    if start is None or not kernel_cache.enabled():
        return None
    try:
        record = json.loads(_index_file(start).read_text())
        parts, recheck = record["parts"], record["recheck"]
        if any(_mtime(path) != mtime for path, mtime in recheck):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    from convforge.export import runtime

    # TVM's runtime is imported (mostly Python, ~0.2 s) while the entry is verified (hashing
    # and copying, which release the GIL); an import error is raised again by the load
    warm = threading.Thread(target=_import_runtime_quietly, daemon=True)
    warm.start()

    def load_model(path: str) -> Any:
        warm.join()
        return runtime.load_model(path)

    return load(parts, load_model)


def _import_runtime_quietly() -> None:
    from convforge.tvm_import import import_runtime

    with contextlib.suppress(Exception):
        import_runtime()


def load(parts: dict, load_module: Any = None) -> tuple[tvm.runtime.Module, dict, Path] | None:
    """The cached library of ``parts``: (module, model description, entry path), or None
    (miss, or a corrupt entry, which :func:`convforge.kernel_cache.load` deletes with a
    warning). ``load_module`` as :func:`convforge.kernel_cache.load` takes it."""
    hit = kernel_cache.load(parts, load_module)
    if hit is None:
        return None
    module, extra = hit
    metadata = extra.get("metadata")
    if not isinstance(metadata, dict):
        kernel_cache.discard(kernel_cache.entry_path(parts), "no model description")
        return None
    return module, metadata, kernel_cache.entry_path(parts)


def store(
    parts: dict, write_library: Any, target: tvm.target.Target, metadata: dict
) -> Path | None:
    """Store the library (``write_library(path)`` exports it) as the entry of ``parts``;
    the entry's path, or None when it could not be written (a warning said why)."""
    written = kernel_cache.store(parts, _Writer(write_library), target, {"metadata": metadata})
    return kernel_cache.entry_path(parts) if written else None


class _Writer:
    """What :func:`convforge.kernel_cache.store` exports: an object with ``export_library``."""

    def __init__(self, write_library: Any) -> None:
        self.export_library = write_library
