"""Writes that survive a power loss once they return.

A rename is atomic but not durable: until the file's data and the
directory entry that names it are on disk, a crash can leave the old file,
no file, or (on some file systems) a new name over empty data. So every
state file is written to a temporary file that is fsynced, renamed into
place, and then its directory is fsynced; only then does the write count.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """The data of an existing file (or the entries of a directory) on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """The names in directory `path` (a rename or a new file in it) on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, path: Path) -> None:
    """Rename the complete file `tmp` over `path`, both on disk before it returns."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data`: a reader sees the old or the new file, never
    part of one, and after a crash the new one is there once this returned."""
    import tempfile  # not for `roost ls`

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)  # a full disk says which file it refused
        raise
    fsync_dir(path.parent)
