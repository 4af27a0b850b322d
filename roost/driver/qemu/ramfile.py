"""The guest's RAM as a file (ram.bin), which suspend saves in place.

QEMU maps the file shared; a guest touching a page the file system cannot
hold gets QEMU killed by SIGBUS, the guest's work lost, nothing saying why.
So the file's blocks are allocated before boot (fallocate: unwritten
extents, no data written, milliseconds for gigabytes) and a file system
that fills up later cannot take them. On tmpfs the file stays sparse:
allocating there would take the guest's whole RAM of host memory up front;
roost then only checks that it fits.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from roost.driver.base import DriverError


def _is_tmpfs(path: Path) -> bool:
    try:
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split(" - ", 1) for line in f]
    except OSError:
        return False
    # The longest mount point that contains `path`.
    best, fstype = "", ""
    target = str(path.resolve())
    for head, tail in (m for m in mounts if len(m) == 2):
        point = head.split()[4].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) \
                and len(point) >= len(best):
            best, fstype = point, tail.split()[0]
    return fstype == "tmpfs"


def _no_room(ram_file: Path, memory: int, free: int) -> DriverError:
    from roost.config.sizes import human_size

    return DriverError(
        f"{ram_file.parent} has {human_size(free)} free and the guest's RAM file "
        f"({ram_file.name}) needs {human_size(memory)}: free space there (or put "
        "ROOST_HOME on a larger file system), or lower memory in roost.yaml")


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def reserve_ram_file(ram_file: Path, memory: int) -> None:
    """A fresh RAM file of `memory` bytes whose blocks are the guest's
    (checked for room only, on tmpfs); DriverError when they do not fit."""
    ram_file.unlink(missing_ok=True)
    free = _free(ram_file.parent)
    if free < memory:
        raise _no_room(ram_file, memory, free)
    if _is_tmpfs(ram_file.parent):
        return
    fd = os.open(ram_file, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.posix_fallocate(fd, 0, memory)
    except OSError as e:
        ram_file.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_room(ram_file, memory, _free(ram_file.parent)) from None
        raise
    finally:
        os.close(fd)
