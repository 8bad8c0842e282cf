"""Permissions of the files convforge writes: those of a normal file under the user's umask.

Atomic writes go through :func:`tempfile.mkstemp`, which creates its file with mode 0600;
after ``os.replace`` that private mode would be the final file's, so another user could not
read an output or load a library. :func:`publish` gives the temporary file, before it is
renamed into place, the mode ``open()`` would have given it: ``0o666 & ~umask`` for data,
``0o777 & ~umask`` for shared libraries (executable, as a linker writes them).

:func:`atomic_write` is the one temp-file-and-replace write every output of convforge goes
through (ONNX files, npz arrays, JSON results, tuning records, libraries, the kernel cache).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable

__all__ = ["atomic_write", "current_umask", "normal_mode", "publish"]


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc), else
    by setting and restoring it (not thread-safe for that instant)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def normal_mode(executable: bool = False) -> int:
    """``0o666 & ~umask`` (``0o777 & ~umask`` where ``executable``)."""
    return (0o777 if executable else 0o666) & ~current_umask()


def publish(path: str | os.PathLike, executable: bool = False) -> None:
    """Give ``path`` (a temporary file about to be renamed into place) :func:`normal_mode`."""
    os.chmod(path, normal_mode(executable))


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[str], object] | bytes | str,
    *,
    executable: bool = False,
    suffix: str = "",
) -> None:
    """Write ``path`` atomically: a reader (or a crash, even ``kill -9``) sees the old file
    whole or the new one whole, never a part.

    ``write`` is the content (``bytes``, or ``str`` written as UTF-8) or a callable given the
    path of a temporary file in ``path``'s folder, which it fills (it may reopen or overwrite
    the file, as ``export_library`` or ``np.savez`` do). The temporary file is then flushed to
    disk (``fsync``), given :func:`normal_mode` (``executable`` for shared libraries) and
    renamed over ``path`` with ``os.replace``. ``suffix`` ends the temporary file's name, for
    writers that choose a format by it (``.so``, ``.npz``). The folder must exist. On any
    failure, including KeyboardInterrupt, the temporary file is removed, ``path`` is left as it
    was and the exception propagates.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    try:
        if isinstance(write, (bytes, str)):
            with os.fdopen(fd, "wb") as f:
                f.write(write.encode() if isinstance(write, str) else write)
        else:
            os.close(fd)
            write(tmp)
        sync = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(sync)
        finally:
            os.close(sync)
        publish(tmp, executable)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
