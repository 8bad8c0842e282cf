"""The integrity trailer of an exported model library, and the checks ``cf.load`` runs.

A library written by :meth:`convforge.CompiledModel.export_library` is TVM's shared
library followed by a trailer (ELF loaders ignore bytes past the image)::

    <library bytes> <JSON, UTF-8> <JSON length: 8 bytes, little-endian> <MAGIC: 16 bytes>

(the library bytes of a CPU model: the linked image, then its weights section,
:mod:`convforge.export.weights`).

The JSON holds ``format``, ``size`` and ``sha256`` (of the library bytes before the
trailer) and the target the code was built for: ``kind``, ``mtriple``, ``mcpu`` and
``features``, the instruction-set extensions its code may use (LLVM's features of
``mcpu`` with the target's ``mattr`` applied, restricted to :data:`CPUINFO_FLAGS`).

:func:`verified_library` refuses (ValueError naming the file and the reason), before
anything is loaded: a file without the trailer (truncated, not written by convforge, or
any other shared library: loading those crashed the process with SIGBUS or SIGABRT), a
size or SHA-256 that differs (a truncated or altered file), a target that is not a CPU
(``kind`` other than ``llvm``), another architecture (the ``mtriple``'s first component
differs from the host's), and a library whose ``features`` include one the host CPU lacks
(``/proc/cpuinfo`` flags; LLVM's features of the host CPU where that file is missing): its
first call died with SIGILL. A library built for another ``mcpu`` whose features the host
has loads (its code is tuned for another CPU, and correct here).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import platform
import struct
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # this module imports no TVM until a trailer is written
    import tvm

#: Last bytes of every library convforge writes.
MAGIC = b"CONVFORGE-LIB\x00v1"
#: Version of the trailer's JSON.
FORMAT = 1
_LENGTH = struct.Struct("<Q")

#: LLVM x86 feature -> the Linux /proc/cpuinfo flag of the same instruction-set extension.
CPUINFO_FLAGS = {
    "sse3": "pni", "ssse3": "ssse3", "sse4.1": "sse4_1", "sse4.2": "sse4_2", "popcnt": "popcnt",
    "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "bmi": "bmi1", "bmi2": "bmi2",
    "lzcnt": "abm", "movbe": "movbe", "adx": "adx", "aes": "aes", "pclmul": "pclmulqdq",
    "sha": "sha_ni", "gfni": "gfni", "vaes": "vaes", "vpclmulqdq": "vpclmulqdq",
    "avxvnni": "avx_vnni", "avx512f": "avx512f", "avx512cd": "avx512cd",
    "avx512bw": "avx512bw", "avx512dq": "avx512dq", "avx512vl": "avx512vl",
    "avx512ifma": "avx512ifma", "avx512vbmi": "avx512vbmi", "avx512vbmi2": "avx512_vbmi2",
    "avx512vnni": "avx512_vnni", "avx512bitalg": "avx512_bitalg",
    "avx512vpopcntdq": "avx512_vpopcntdq", "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16", "amx-tile": "amx_tile", "amx-int8": "amx_int8",
    "amx-bf16": "amx_bf16",
}  # fmt: skip


def target_record(target: tvm.target.Target) -> dict:
    """What the trailer records of ``target``: kind, mtriple, mcpu and ISA ``features``."""
    from tvm.target import codegen

    from convforge.targets import is_cpu

    record = {"kind": target.kind.name}
    if not is_cpu(target):
        return record
    attrs = target.attrs
    record["mtriple"] = str(attrs.get("mtriple", "") or codegen.llvm_get_system_triple())
    record["mcpu"] = str(attrs.get("mcpu", "") or "generic")
    record["features"] = sorted(_llvm_features(target) & set(CPUINFO_FLAGS))
    return record


def _llvm_features(target: tvm.target.Target) -> set[str]:
    from tvm.target import codegen

    features = {str(f) for f in codegen.llvm_get_cpu_features(target)}
    for attr in target.attrs.get("mattr", None) or ():
        attr = str(attr)
        if attr.startswith("+"):
            features.add(attr[1:])
        elif attr.startswith("-"):
            features.discard(attr[1:])
    return features


#: The trailer's fields that describe the target (what :func:`target_record` returns).
TARGET_FIELDS = ("kind", "mtriple", "mcpu", "features")


def target_fields(path: str) -> dict:
    """The target fields (:data:`TARGET_FIELDS`) of the trailer of ``path`` (ValueError if
    it has none): what :func:`append_trailer` takes to describe a copy of that library."""
    record, _ = read_trailer(trailer_bytes(path), path)
    return {k: record[k] for k in TARGET_FIELDS if k in record}


def append_trailer(path: str, target: tvm.target.Target | dict, extra: dict | None = None) -> None:
    """Append the trailer (checksum of the file as it is, and ``target``: a target, or the
    fields :func:`target_fields` read from another trailer) to ``path``; ``extra``
    (JSON-serializable) is recorded in the trailer's JSON too."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    record = {**(extra or {}), "format": FORMAT, "size": size, "sha256": digest.hexdigest(),
              **(target if isinstance(target, dict) else target_record(target))}  # fmt: skip
    payload = json.dumps(record, sort_keys=True).encode()
    with open(path, "ab") as f:
        f.write(payload + _LENGTH.pack(len(payload)) + MAGIC)


def read_trailer(data: bytes, path: str) -> tuple[dict, int]:
    """The trailer's record and the length of the library before it (ValueError if none)."""
    tail = _LENGTH.size + len(MAGIC)
    if len(data) < tail or data[-len(MAGIC) :] != MAGIC:
        raise ValueError(
            f"path: {path!r} is not a model library written by convforge's export_library "
            "(no convforge trailer: a truncated file, another shared library, or a library "
            "exported before convforge checked its libraries)"
        )
    (length,) = _LENGTH.unpack(data[-tail : -len(MAGIC)])
    start = len(data) - tail - length
    try:
        if start < 0:
            raise ValueError("trailer longer than the file")
        record = json.loads(data[start : len(data) - tail].decode())
        if not isinstance(record, dict):
            raise ValueError("trailer is not a JSON object")
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"path: {path!r} has a damaged convforge trailer ({err})") from err
    return record, start


def trailer_bytes(path: str) -> bytes:
    """The end of the file at ``path`` holding its whole trailer (for :func:`read_trailer`),
    without reading the library before it; a file too short for a trailer is read whole."""
    tail = _LENGTH.size + len(MAGIC)
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < tail:
            f.seek(0)
            return f.read()
        f.seek(size - tail)
        end = f.read()
        if not end.endswith(MAGIC):
            return end
        (length,) = _LENGTH.unpack(end[: _LENGTH.size])
        f.seek(max(0, size - tail - length))
        return f.read()


def host_features() -> set[str]:
    """The LLVM names (keys of :data:`CPUINFO_FLAGS`) of the extensions this CPU has: from
    ``/proc/cpuinfo``'s flags, else LLVM's features of the host CPU."""
    flags = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo", errors="replace") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if flags is None:
        from convforge.targets import host_target

        return _llvm_features(host_target()) & set(CPUINFO_FLAGS)
    return {feature for feature, flag in CPUINFO_FLAGS.items() if flag in flags}


#: ``platform.machine()`` -> the architecture as LLVM's target triples name it.
_LLVM_ARCH = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "i386": "i686"}


def host_arch() -> str:
    """This machine's architecture as the first component of LLVM's triple names it
    (``x86_64``, ``aarch64``, ...), without TVM."""
    machine = platform.machine().lower()
    return _LLVM_ARCH.get(machine, machine)


def check_target(record: dict, path: str) -> None:
    """Refuse a library whose recorded target this CPU cannot run (see the module doc)."""
    kind = record.get("kind")
    if kind != "llvm":
        raise ValueError(f"path: {path!r} was built for target kind {kind!r}, not this CPU")
    arch, host = str(record.get("mtriple", "")).split("-")[0], host_arch()
    if arch != host:
        raise ValueError(
            f"path: {path!r} was built for {record.get('mtriple')!r}, this machine is {host!r}"
        )
    needed = set(record.get("features", ()))
    missing = sorted(needed - host_features()) if host in ("x86_64", "i686") else []
    if missing:
        raise ValueError(
            f"path: {path!r} was built for CPU {record.get('mcpu')!r}, whose instructions "
            f"{', '.join(missing)} this CPU lacks (recompile it here)"
        )


def _private_file(path: str) -> tuple[int, str]:
    """A new file beside ``path`` (a folder libraries load from), else in the temporary
    folder (which may be mounted noexec) where that folder is not writable."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        return tempfile.mkstemp(prefix=".convforge-load-", suffix=".so", dir=folder)
    except OSError:
        return tempfile.mkstemp(prefix="convforge-load-", suffix=".so")


def _memory_copy(f) -> int | None:
    """A new file in memory (Linux's memfd) holding a copy of the open file ``f`` (copied
    by the kernel), as an open descriptor; None where the system has none."""
    create = getattr(os, "memfd_create", None)
    if create is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        fd = create("convforge-library", getattr(os, "MFD_CLOEXEC", 0))
    except OSError:
        return None
    try:
        size, done = os.fstat(f.fileno()).st_size, 0
        try:
            while done < size and (sent := os.sendfile(fd, f.fileno(), done, size - done)):
                done += sent
        except OSError:  # no sendfile between these files: copy through this process
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            f.seek(0)
            while chunk := f.read(16 << 20):
                os.write(fd, chunk)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _verify(data, path: str) -> tuple[dict, int]:
    """Check the library bytes ``data`` read from ``path`` (trailer, size, SHA-256, target;
    ValueError naming the file and the reason): the trailer's record and the length of the
    library before it."""
    record, start = read_trailer(data, path)
    if record.get("format") != FORMAT:
        raise ValueError(f"path: {path!r} has trailer format {record.get('format')!r}, "
                         f"this convforge reads {FORMAT}")  # fmt: skip
    if record.get("size") != start:
        raise ValueError(
            f"path: {path!r} is damaged: {start} library bytes, the trailer says "
            f"{record.get('size')}"
        )
    with memoryview(data) as whole, whole[:start] as library:
        digest = hashlib.sha256(library).hexdigest()
    if digest != record.get("sha256"):
        raise ValueError(f"path: {path!r} is damaged: its SHA-256 differs from the one recorded")
    check_target(record, path)
    return record, start


@contextlib.contextmanager
def verified_library(path: str) -> Iterator[str]:
    """Check ``path`` (trailer, size, SHA-256, target; ValueError naming the file and the
    reason) and yield a path to load the verified library from: a private copy, checked
    itself, so what is loaded is what was checked, and it stays intact while loaded even
    if ``path`` is replaced or rewritten in place meanwhile (a mapped file cut short under
    a process would kill it with SIGBUS).

    The copy is a file in memory where the system has one (Linux: a memfd filled by the
    kernel, named ``*.so`` as TVM's loader wants by a symbolic link to
    ``/proc/self/fd/N``; nothing written to disk), else a file beside ``path`` or in the
    temporary folder. Either is gone once the block ends; what was loaded from it stays
    mapped."""
    with verified_copy(path) as (copy, _):
        yield copy


@contextlib.contextmanager
def verified_copy(path: str) -> Iterator[tuple[str, dict]]:
    """:func:`verified_library`, yielding ``(the copy's path, the trailer's record)`` (the
    record as verified, read from the bytes that are loaded)."""
    with open(path, "rb") as f:
        fd = _memory_copy(f)
        data = f.read() if fd is None else None
    if fd is not None:
        folder = None
        try:
            size = os.fstat(fd).st_size
            mapped = mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else None
            with mapped or contextlib.nullcontext(b"") as view:
                record, start = _verify(view, path)
            os.ftruncate(fd, start)  # the library without its trailer, as exported
            folder = tempfile.mkdtemp(prefix="convforge-load-")
            link = os.path.join(folder, "library.so")
            os.symlink(f"/proc/self/fd/{fd}", link)
            yield link, record
        finally:
            os.close(fd)
            if folder is not None:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, "library.so"))
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
        return
    record, start = _verify(data, path)
    fd, private = _private_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(memoryview(data)[:start])
        del data
        yield private, record
    finally:
        os.unlink(private)
