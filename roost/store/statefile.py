"""State files a successor relies on: atomic and on disk before they count.

A rename alone is atomic but not durable: after a crash the old file, no
file, or a new name over empty data may be there. So the data goes to a
temporary file that is fsynced, is renamed over the old one, and the
directory holding the name is fsynced too.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_state(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data`: a reader sees the old file or the new one,
    and once this returns a power loss keeps the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):  # not yet renamed
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
