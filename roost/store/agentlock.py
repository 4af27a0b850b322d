"""The host agent's lock: held on ha.lock for the agent's whole life, and
tested by liveness probes without taking it.

An open-file-description lock (F_OFD_SETLK) rather than flock(2): OFD locks
can be queried (F_OFD_GETLK), so a probe never holds the lock, not even for
an instant, and can never make a starting agent think another one runs.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

# Not `typing`: `roost ls` imports this module, and typing costs it ~5 ms
# (mypy takes any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO

# struct flock on LP64 Linux: l_type, l_whence (short); l_start, l_len
# (off_t, after 4 bytes of padding); l_pid (pid_t); 4 bytes of tail padding.
_FLOCK = "hhqqi4x"


def _whole_file(kind: int) -> bytes:
    return struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 0, 0)


def take(path: Path) -> IO[str] | None:
    """The lock on `path` (kept while the returned file stays open), or None
    when another process holds it."""
    f = open(path, "w")  # noqa: SIM115 - the lock lives as long as this file
    try:
        fcntl.fcntl(f, fcntl.F_OFD_SETLK, _whole_file(fcntl.F_WRLCK))
    except OSError:  # EAGAIN or EACCES: held
        f.close()
        return None
    return f


def held(path: Path) -> bool:
    """True while some process holds the lock on `path`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _whole_file(fcntl.F_WRLCK))
    finally:
        os.close(fd)
    return bool(struct.unpack(_FLOCK, answer)[0] != fcntl.F_UNLCK)
