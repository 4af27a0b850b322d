"""Guest RAM in a memfd the host agent holds and hands to QEMU.

With QEMU's own memfd (memory-backend-memfd) the host agent cannot reach
the guest's RAM, so a suspend migrated the RAM in use into the state file.
Loading that stream costs more than it carries: for every zero page QEMU
reads the page to see whether it must clear it, and a read of shmem
allocates the page. A resumed 1 GiB guest took 1.0-3.0 s to load 110 MB of
state and then held all 1 GiB of host memory.

Holding the memfd, the host agent saves the guest's pages itself: the
pages in use that are not all zeros, into a sparse image beside the device
state. On resume it fills a fresh memfd with them (only those pages are
allocated) and QEMU moves device state alone (x-ignore-shared): no other
page of guest RAM is touched. QEMU opens the memfd as a file
(memory-backend-file on /proc/self/fd/N), so it stays shareable for
virtiofsd as before.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from roost.store.durable import fsync_dir

MEMFD_NAME = "roost-guest-ram"
PAGE = 4096
CHUNK = 1024 * 1024  # read at a time; a multiple of PAGE
_ZERO_PAGE = bytes(PAGE)
_ZERO_CHUNK = bytes(CHUNK)


def create(size: int) -> int:
    """A new memfd of `size` bytes, all holes (not inheritable: passed explicitly)."""
    fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def image_for(state: Path) -> Path:
    """Where the RAM goes that belongs with device state `state`
    (Instance.memory_image beside Instance.vmstate)."""
    return state.with_suffix(".ram")


def backend_path(fd: int) -> str:
    """The mem-path by which the QEMU given `fd` opens the memfd."""
    return f"/proc/self/fd/{fd}"


def find_in(pid: int) -> int | None:
    """Our memfd as QEMU process `pid` holds it (a host agent that took the
    VM over has none of its own), opened here; None when it has none or it
    cannot be opened."""
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for entry in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(entry) == f"/memfd:{MEMFD_NAME} (deleted)":
                    return os.open(entry, os.O_RDWR | os.O_CLOEXEC)
    return None


def extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The allocated (start, end) ranges of file `fd`, in order."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole is left
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        offset = end


def _nonzero_runs(data: memoryview) -> Iterator[tuple[int, int]]:
    """(start, end) of the runs of pages in `data` that are not all zeros."""
    n = len(data)
    i = 0
    while i < n:
        if data[i:i + PAGE] == _ZERO_PAGE:
            i += PAGE
            continue
        j = i + PAGE
        while j < n and data[j:j + PAGE] != _ZERO_PAGE:
            j += PAGE
        yield i, min(j, n)
        i = j


def save(fd: int, size: int, image: Path) -> int:
    """Write the guest RAM in memfd `fd` to `image`: a sparse file of `size`
    bytes with the pages that are in use and not all zeros. Written to a
    new file renamed into place, fsynced with its directory (a fork may
    hold a hard link to the old one). Returns the bytes written."""
    tmp = image.with_name(f".{image.name}.tmp")
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    written = 0
    try:
        os.ftruncate(out, size)
        for start, end in extents(fd, size):
            for offset in range(start, end, CHUNK):
                want = min(CHUNK, end - offset)
                data = os.pread(fd, want, offset)
                if len(data) != want:  # shmem reads whole; a shrunk file is not RAM
                    raise OSError(errno.EIO, "the guest RAM ended early")
                if data == _ZERO_CHUNK[:len(data)]:
                    continue
                view = memoryview(data)
                for i, j in _nonzero_runs(view):
                    _write_all(out, view[i:j], offset + i)
                    written += j - i
        os.fsync(out)
    except BaseException:
        os.close(out)
        tmp.unlink(missing_ok=True)
        raise
    os.close(out)
    os.replace(tmp, image)
    fsync_dir(image.parent)
    return written


def load(image: Path, fd: int, size: int) -> int:
    """Fill memfd `fd` (all holes) with the pages saved in `image`; the
    bytes copied. Only those pages are allocated."""
    src = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    copied = 0
    try:
        if os.fstat(src).st_size != size:
            raise ValueError(f"{image} holds {os.fstat(src).st_size} bytes of guest RAM, "
                             f"the machine has {size}")
        for start, end in extents(src, size):
            copied += _copy_range(src, fd, start, end)
    finally:
        os.close(src)
    return copied


def _copy_range(src: int, dst: int, start: int, end: int) -> int:
    """src[start:end] to the same offsets of dst, in the kernel where it can."""
    os.lseek(dst, start, os.SEEK_SET)
    offset = start
    try:
        while offset < end:
            sent = os.sendfile(dst, src, offset, end - offset)
            if sent == 0:
                raise OSError(errno.EIO, "the RAM image ended early")
            offset += sent
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS) or offset != start:
            raise
        while offset < end:  # no sendfile between these two: through user space
            data = os.pread(src, min(CHUNK, end - offset), offset)
            if not data:
                raise OSError(errno.EIO, "the RAM image ended early") from None
            _write_all(dst, memoryview(data), offset)
            offset += len(data)
    return end - start


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n
