"""Additional disks (Lima's `limactl disk`): disk images of their own under
ROOST_HOME/_disks/NAME, that outlive instances and are attached to one
running instance at a time (roost.yaml's `additionalDisks`).

A disk in use names its instance in `in_use_by`, written while `lock` is
held (two instances starting at once cannot both take it). A holder that
is no longer running leaves a stale mark, which the next start takes over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roost.errors import RoostError, UsageError
from roost.store.durable import write_atomic
from roost.store.paths import roost_home

# The guest finds a disk by its virtio-blk serial, which holds 20 bytes.
DISK_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,19}$")
FORMATS = ("qcow2", "raw")
DISK_FILE = "datadisk"
FORMAT_FILE = "format"


def disks_dir() -> Path:
    return roost_home() / "_disks"


def validate_disk_name(name: str) -> str:
    if not DISK_NAME.match(name):
        raise UsageError(f"invalid disk name {name!r}: use 1-20 of a-z, 0-9 and -, "
                         "starting with a letter or digit")
    return name


def _qemu_img(*args: str) -> str:
    try:
        proc = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise RoostError("qemu-img is missing (install qemu-utils)") from None
    if proc.returncode != 0:
        raise RoostError(f"qemu-img {args[0]}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass(frozen=True)
class Disk:
    name: str

    @property
    def dir(self) -> Path:
        return disks_dir() / self.name

    @property
    def file(self) -> Path:
        return self.dir / DISK_FILE

    @property
    def _in_use_file(self) -> Path:
        return self.dir / "in_use_by"

    def exists(self) -> bool:
        return self.file.is_file() and (self.dir / FORMAT_FILE).is_file()

    def require(self) -> Disk:
        if not self.exists():
            raise UsageError(f"no disk named {self.name!r}; `roost disk create {self.name} "
                             "--size 10GiB` makes one (`roost disk ls` lists them)")
        return self

    def info(self) -> dict[str, Any]:
        fmt = self.format()
        data = json.loads(_qemu_img("info", "--output=json", "-U", "-f", fmt, str(self.file)))
        return {"name": self.name, "size": int(data["virtual-size"]), "format": fmt,
                "dir": str(self.dir), "inUseBy": self.in_use_by()}

    def format(self) -> str:
        """As recorded when the disk was made, never probed: the guest writes
        what a raw disk holds, and a qcow2 header it wrote there would name a
        backing file on the host for QEMU to open."""
        fmt = (self.dir / FORMAT_FILE).read_text().strip()
        if fmt not in FORMATS:
            raise RoostError(f"disk {self.name!r}: {self.dir / FORMAT_FILE} says {fmt!r}, "
                             f"not one of {', '.join(FORMATS)}")
        return fmt

    def in_use_by(self) -> str | None:
        try:
            return self._in_use_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def acquire(self, instance: str) -> None:
        """Mark the disk as `instance`'s; refused while another running one has it."""
        from roost.store.instance import Instance, Status

        with self._locked():
            holder = self.in_use_by()
            if holder not in (None, instance):
                other = Instance.at(holder)
                if other.exists() and other.status() not in (Status.STOPPED,):
                    raise RoostError(
                        f"disk {self.name!r} is in use by instance {holder!r} "
                        f"({other.status().value}); stop it first, or take the disk "
                        "out of one of their additionalDisks")
            write_atomic(self._in_use_file, instance.encode())

    def release(self, instance: str) -> None:
        with self._locked():
            if self.in_use_by() == instance:
                self._in_use_file.unlink(missing_ok=True)

    def unlock(self) -> None:
        with self._locked():
            self._in_use_file.unlink(missing_ok=True)


def _new_disk(name: str, fmt: str, write: Callable[[Path], object]) -> Disk:
    """Disk `name`, its image written by `write(path)` in a staging directory
    renamed into place at the end: all there, or nothing."""
    disk = Disk(validate_disk_name(name))
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if disk.dir.exists():
        raise UsageError(f"a disk named {name!r} exists already ({disk.dir})")
    disks_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = disks_dir() / f".{name}.creating"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    try:
        write(tmp / DISK_FILE)
        (tmp / FORMAT_FILE).write_text(fmt + "\n")
        tmp.rename(disk.dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return disk


def create_disk(name: str, size: int, fmt: str = "qcow2") -> Disk:
    return _new_disk(name, fmt, lambda path: _qemu_img(
        "create", "-q", "-f", fmt, str(path), str(size)))


def import_disk(name: str, source: Path, fmt: str = "qcow2") -> Disk:
    """A new disk holding a copy of the disk image at `source` (any format
    qemu-img reads; a raw file of a file system too)."""
    def copy(path: Path) -> None:
        if not source.is_file():
            raise UsageError(f"{source} is not a file; give a disk image to import")
        _qemu_img("convert", "-q", "-O", fmt, str(source), str(path))

    return _new_disk(name, fmt, copy)


def list_disks() -> list[Disk]:
    if not disks_dir().is_dir():
        return []
    return [Disk(d.name) for d in sorted(disks_dir().iterdir())
            if DISK_NAME.match(d.name) and Disk(d.name).exists()]


def _refuse_in_use(disk: Disk, verb: str) -> None:
    from roost.store.instance import Instance, Status

    holder = disk.in_use_by()
    if holder is not None and Instance.at(holder).exists() \
            and Instance.at(holder).status() != Status.STOPPED:
        raise UsageError(f"disk {disk.name!r} is in use by instance {holder!r}; "
                         f"stop {holder} before you {verb} it")


def delete_disk(name: str) -> None:
    disk = Disk(validate_disk_name(name)).require()
    with disk._locked():
        _refuse_in_use(disk, "delete")
        trash = disks_dir() / f".{name}.deleting"
        disk.dir.rename(trash)
    shutil.rmtree(trash)


def resize_disk(name: str, size: int) -> None:
    disk = Disk(validate_disk_name(name)).require()
    with disk._locked():
        _refuse_in_use(disk, "resize")
        current = int(disk.info()["size"])
        if size < current:
            from roost.config.sizes import format_size

            raise UsageError(f"disk {name!r} is {format_size(current)}; it can only grow "
                             "(shrinking would cut its file system)")
        _qemu_img("resize", "-q", "-f", disk.format(), str(disk.file), str(size))
