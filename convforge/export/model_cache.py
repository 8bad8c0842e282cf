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
  imports onnx), ``SerializeToString()`` for a ``ModelProto`` (the same model given both
  ways may be two entries);
- ``options``: every compile option (``input_shapes``, ``algorithm``, the batch buckets...,
  as :func:`convforge.export.model.compile_model` passes them);
- ``schedule``: SHA-256 of convforge's schedule code, SHA-256 of all of convforge's code
  (a changed lowering is another key even when the version string stays) and the active
  tuning databases' state (:func:`convforge.schedules.tuning.database_state`, with the
  ``tuning_db`` of the call made active: a database that gains a record is another key).

Only CPU (``llvm``) targets are cached, as for kernels.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import tvm

from convforge import kernel_cache
from convforge.targets import is_cpu


@functools.cache
def code_digest() -> str:
    """SHA-256 of every ``.py`` file of the convforge package (names and bytes)."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def model_digest(model: Any) -> str | None:
    """SHA-256 of the model's bytes (see the module doc); None when a path cannot be read
    (the compile then refuses it as before)."""
    if isinstance(model, str | os.PathLike):
        try:
            with open(model, "rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest()
        except OSError:
            return None
    serialize = getattr(model, "SerializeToString", None)
    if serialize is None:
        return None
    return hashlib.sha256(serialize(deterministic=True)).hexdigest()


def key_parts(
    model: Any,
    target: tvm.target.Target,
    options: dict,
    tuning_db: str | os.PathLike | None = None,
) -> dict | None:
    """The parts of ``model``'s entry (module doc), or None when nothing is to be cached:
    the cache disabled, a non-CPU target, or a model whose bytes cannot be read."""
    if not kernel_cache.enabled() or not is_cpu(target):
        return None
    digest = model_digest(model)
    if digest is None:
        return None
    from convforge.schedules import tuning

    with tuning.use_tuning_db(tuning_db) if tuning_db is not None else nullcontext():
        state = tuning.database_state(target)
    parts = kernel_cache.key_parts_of(
        "model", digest, target, [kernel_cache.schedule_code_digest(), code_digest(), state]
    )
    parts["options"] = json.loads(json.dumps(options, sort_keys=True, default=str))
    return parts


def load(parts: dict) -> tuple[tvm.runtime.Module, dict, Path] | None:
    """The cached library of ``parts``: (module, model description, entry path), or None
    (miss, or a corrupt entry, which :func:`convforge.kernel_cache.load` deletes with a
    warning)."""
    hit = kernel_cache.load(parts)
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
