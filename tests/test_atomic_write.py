"""convforge.filemode.atomic_write, the one temp-file-and-replace write of every output:
the content is whole, a failing writer leaves nothing behind, the mode follows the umask,
and a writer killed with SIGKILL leaves the old file as it was."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from convforge.filemode import atomic_write


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it after."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("content", [b"\x00binary\xff", "text \u00e9\n"])
def test_bytes_and_text_are_written_whole(tmp_path, content):
    path = tmp_path / "out.bin"
    atomic_write(path, content)
    expected = content if isinstance(content, bytes) else content.encode()
    assert path.read_bytes() == expected
    assert os.listdir(tmp_path) == ["out.bin"]


def test_an_existing_file_is_replaced_whole(tmp_path):
    path = tmp_path / "out.json"
    path.write_bytes(b"x" * 100_000)
    atomic_write(str(path), "{}")
    assert path.read_bytes() == b"{}"  # no tail of the longer old file survives
    assert os.listdir(tmp_path) == ["out.json"]


def test_a_callable_fills_a_temporary_file_of_the_given_suffix(tmp_path):
    seen = []
    array = np.arange(12.0).reshape(3, 4)

    def write(tmp: str) -> None:
        seen.append(tmp)
        np.savez(tmp, a=array)  # numpy appends .npz unless the name ends with it

    atomic_write(tmp_path / "state.npz", write, suffix=".npz")
    assert os.path.dirname(seen[0]) == str(tmp_path) and seen[0].endswith(".npz")
    with np.load(tmp_path / "state.npz") as data:
        np.testing.assert_array_equal(data["a"], array)
    assert os.listdir(tmp_path) == ["state.npz"]


def test_a_writer_that_recreates_its_file_is_published(tmp_path):
    def write(tmp: str) -> None:  # as a linker does: remove, then create anew
        os.unlink(tmp)
        with open(tmp, "wb") as f:
            f.write(b"library")

    atomic_write(tmp_path / "lib.so", write, suffix=".so")
    assert (tmp_path / "lib.so").read_bytes() == b"library"


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
@pytest.mark.parametrize("existing", [False, True])
def test_a_failing_writer_leaves_no_file_and_no_temporary(tmp_path, error, existing):
    path = tmp_path / "out.npz"
    if existing:
        path.write_bytes(b"old")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise error

    with pytest.raises(type(error)):
        atomic_write(path, write, suffix=".npz")
    assert os.listdir(tmp_path) == (["out.npz"] if existing else [])
    if existing:
        assert path.read_bytes() == b"old"


def test_a_writer_that_removes_its_temporary_then_fails_raises_its_own_error(tmp_path):
    def write(tmp: str) -> None:
        os.unlink(tmp)
        raise ValueError("writer failed")

    with pytest.raises(ValueError, match="writer failed"):
        atomic_write(tmp_path / "out", write)
    assert os.listdir(tmp_path) == []


def test_a_missing_folder_is_an_error_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "missing" / "out", b"x")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_the_mode_follows_the_umask(tmp_path, umask, mask):
    umask(mask)
    atomic_write(tmp_path / "data", b"x")
    atomic_write(tmp_path / "lib.so", b"x", executable=True)
    assert _mode(tmp_path / "data") == 0o666 & ~mask  # as open() would create it
    assert _mode(tmp_path / "lib.so") == 0o777 & ~mask


def test_replacing_a_file_gives_the_umask_mode_not_the_old_one(tmp_path, umask):
    path = tmp_path / "data"
    path.write_bytes(b"old")
    os.chmod(path, 0o600)
    umask(0o022)
    atomic_write(path, b"new")
    assert _mode(path) == 0o644


KILLED_WRITER = """
import sys, time
from convforge.filemode import atomic_write

def write(tmp):
    with open(tmp, "wb") as f:
        f.write(b"partial")
        f.flush()
        print("writing", flush=True)
        time.sleep(60)

atomic_write(sys.argv[1], write)
"""


def test_a_writer_killed_with_sigkill_leaves_the_old_file(tmp_path):
    path = tmp_path / "out.json"
    path.write_bytes(b"old")
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(KILLED_WRITER), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "writing", proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert path.read_bytes() == b"old"
    leftovers = sorted(set(os.listdir(tmp_path)) - {"out.json"})
    assert all(name.startswith(".tmp-") for name in leftovers)  # hidden, never the output
