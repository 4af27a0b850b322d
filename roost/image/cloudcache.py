"""The cache of downloaded images: one directory per file, keyed by digest.

`images/cloud-sha256-<hex>/` (or `cloud-url-<sha256 of the URL>` for a
location given without a digest) holds:

* ``data``: the image, unpacked if it was published compressed;
* ``meta.json``: location, digest, size, format, when it was fetched;
  written last, so an entry is complete exactly when it exists;
* ``lock``: flock'ed while the entry is written (exclusive) or an instance
  is being made from it (shared), so two `roost start`s share a download
  and `roost image rm`/`prune` never remove an image being pinned;
* ``download.partial``: the download so far, kept for a resume;
* ``pins/``: the instances made from it (roost.image.prune).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from roost.errors import RoostError
from roost.image.buildcache import images_dir
from roost.image.download import partial_files
from roost.store.durable import write_atomic

ENTRY_PREFIX = "cloud-"
FileKind = Literal["disk", "kernel", "initrd"]


class EntryBusy(RoostError):
    """Another roost process holds the entry's lock."""


@dataclass(frozen=True)
class EntryMeta:
    location: str
    digest: str | None
    size: int
    format: str  # "qcow2" or "raw" for a disk, "file" for a kernel or initrd
    compression: str | None
    kind: FileKind
    fetched: str  # UTC, ISO 8601

    @classmethod
    def now(cls, location: str, digest: str | None, size: int, format: str,
            compression: str | None, kind: FileKind) -> EntryMeta:
        return cls(location, digest, size, format, compression, kind,
                   time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


@dataclass(frozen=True)
class CacheEntry:
    directory: Path

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def meta_file(self) -> Path:
        return self.directory / "meta.json"

    @property
    def lock_file(self) -> Path:
        return self.directory / "lock"

    @property
    def partial(self) -> Path:
        return self.directory / "download.partial"

    def meta(self) -> EntryMeta | None:
        """The metadata of a complete entry; None while it is not."""
        try:
            data: dict[str, Any] = json.loads(self.meta_file.read_text())
            meta = EntryMeta(**data)
        except (OSError, ValueError, TypeError):
            return None
        return meta if self.data.exists() else None

    def partial_location(self) -> str | None:
        """The URL an unfinished download is of, if it got that far."""
        with suppress(OSError, ValueError, KeyError, TypeError):
            return str(json.loads(partial_files(self.partial)[1].read_text())["url"])
        return None

    def write_meta(self, meta: EntryMeta) -> None:
        write_atomic(self.meta_file, json.dumps(asdict(meta), indent=2) + "\n")

    def size_on_disk(self) -> int:
        return sum(f.lstat().st_blocks * 512 for f in self.directory.rglob("*") if f.is_file())


def entry_key(location: str, digest: str | None) -> str:
    if digest:
        algo, _, hexdigest = digest.partition(":")
        return f"{algo}-{hexdigest.lower()}"
    return "url-" + hashlib.sha256(location.encode()).hexdigest()


def entry_for(location: str, digest: str | None) -> CacheEntry:
    return CacheEntry(images_dir() / (ENTRY_PREFIX + entry_key(location, digest)))


def entries() -> list[CacheEntry]:
    """Every entry, complete or not."""
    root = images_dir()
    if not root.is_dir():
        return []
    return [CacheEntry(d) for d in sorted(root.glob(ENTRY_PREFIX + "*")) if d.is_dir()]


@contextmanager
def locked(entry: CacheEntry, shared: bool = False, wait: bool = True) -> Iterator[None]:
    """Hold the entry's lock (creating the entry's directory). Without
    `wait`, EntryBusy if another process holds it."""
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    while True:
        entry.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(entry.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, mode | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise EntryBusy(f"{entry.directory} is in use by another roost command "
                                "(a download or a start); try again when it is done") from None
            # The holder before us may have removed the entry: lock the new one.
            try:
                same = os.stat(entry.lock_file).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield
                return
        finally:
            os.close(fd)


def remove(entry: CacheEntry) -> None:
    """Delete the entry; the caller holds its lock (waiters then start anew)."""
    shutil.rmtree(entry.directory, ignore_errors=True)
