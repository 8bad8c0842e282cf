"""Permissions of the files convforge writes: those of a normal file under the user's umask.

Atomic writes go through :func:`tempfile.mkstemp`, which creates its file with mode 0600;
after ``os.replace`` that private mode would be the final file's, so another user could not
read an output or load a library. :func:`publish` gives the temporary file, before it is
renamed into place, the mode ``open()`` would have given it: ``0o666 & ~umask`` for data,
``0o777 & ~umask`` for shared libraries (executable, as a linker writes them).
"""

from __future__ import annotations

import os

__all__ = ["current_umask", "normal_mode", "publish"]


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
