"""Cloud images from Lima's `images:` list: the first entry for the host's
arch that can be had, fetched into the cache once (or a local file used in
place), verified against its digest, unpacked, its format read from its
bytes.

As in Lima, a candidate the network cannot deliver (refused, 404, cut off)
gives way to the next; a digest mismatch stops everything, since the
bytes are not the ones the configuration trusts.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from roost.errors import RoostError, UsageError
from roost.image.buildcache import images_dir
from roost.image.cloudcache import (
    CacheEntry,
    EntryMeta,
    FileKind,
    entry_for,
    locked,
    remove,
)
from roost.image.content import (
    Compression,
    DiskFormat,
    ImageFormatError,
    decompress,
    detect_compression,
    detect_disk_format,
)
from roost.image.download import (
    DigestMismatch,
    DownloadError,
    DownloadProgress,
    download,
    partial_files,
    same_file_digest,
)
from roost.store.durable import write_atomic

if TYPE_CHECKING:
    from roost.config.model import Image

Step = Callable[[str], None]
# platform.machine() spellings of Lima's arch names.
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8l": "armv7l",
                 "armv7": "armv7l", "ppc64el": "ppc64le"}


def host_arch() -> str:
    machine = platform.machine().lower()
    return _ARCH_ALIASES.get(machine, machine)


def candidates(images: Sequence[Image], arch: str) -> list[Image]:
    """The entries for `arch`, in the order given."""
    found = [image for image in images if image.arch == arch]
    if not found:
        listed = ", ".join(sorted({image.arch for image in images})) or "none"
        raise UsageError(f"images: no image for arch {arch} (the list has: {listed}); "
                         f"add an entry with `arch: {arch}`")
    return found


@dataclass(frozen=True)
class FetchedFile:
    path: Path
    format: str  # "qcow2", "raw", or "file" (kernel, initrd)
    location: str
    digest: str | None


@dataclass(frozen=True)
class FetchedImage:
    disk: Path
    format: Literal["qcow2", "raw"]
    kernel: Path | None
    initrd: Path | None
    kernel_cmdline: str | None
    location: str
    digest: str | None

    def files(self) -> list[Path]:
        return [p for p in (self.disk, self.kernel, self.initrd) if p is not None]


def _quiet(_: str) -> None:
    pass


def _cached(entry: CacheEntry) -> FetchedFile | None:
    meta = entry.meta()
    if meta is None:
        return None
    return FetchedFile(entry.data, meta.format, meta.location, meta.digest)


def _complete(entry: CacheEntry, location: str, digest: str | None, fmt: str,
              compression: Compression | None, kind: FileKind) -> FetchedFile:
    entry.write_meta(EntryMeta.now(location, digest, entry.data.stat().st_size, fmt,
                                   compression, kind))
    return FetchedFile(entry.data, fmt, location, digest)


def _unpack(entry: CacheEntry, src: Path, compression: Compression, location: str,
            digest: str | None, step: Step) -> FetchedFile:
    """Unpack a compressed disk image `src` into the entry's data."""
    step(f"unpacking {location} ({compression})")
    unpacked = entry.directory / "data.tmp"
    decompress(src, unpacked, compression, location)
    try:
        fmt = detect_disk_format(unpacked, location)
    except ImageFormatError:
        unpacked.unlink()
        raise
    unpacked.replace(entry.data)
    return _complete(entry, location, digest, fmt, compression, "disk")


def _adopt_download(entry: CacheEntry, location: str, digest: str | None, kind: FileKind,
                    step: Step) -> FetchedFile:
    """The verified download becomes the entry's data (unpacked if need be)."""
    compression = detect_compression(entry.partial) if kind == "disk" else None
    if compression is not None:
        fetched = _unpack(entry, entry.partial, compression, location, digest, step)
    else:
        fmt = detect_disk_format(entry.partial, location) if kind == "disk" else "file"
        entry.partial.replace(entry.data)
        fetched = _complete(entry, location, digest, fmt, None, kind)
    for p in partial_files(entry.partial):
        p.unlink(missing_ok=True)
    return fetched


def _fetch_url(location: str, digest: str | None, kind: FileKind,
               progress: DownloadProgress | None, step: Step) -> FetchedFile:
    entry = entry_for(location, digest)
    cached = _cached(entry)  # no lock, no request: meta.json is written last
    if cached is not None:
        return cached
    with locked(entry):
        cached = _cached(entry)  # another roost finished it while we waited
        if cached is not None:
            return cached
        step(f"downloading {location}")
        try:
            download(location, entry.partial, digest, progress)
        except DownloadError:
            if not entry.partial.exists() or entry.partial.stat().st_size == 0:
                remove(entry)  # nothing to resume
            raise
        except DigestMismatch:
            remove(entry)
            raise
        try:
            return _adopt_download(entry, location, digest, kind, step)
        except ImageFormatError:
            remove(entry)
            raise


def _verification_record(path: Path) -> Path:
    key = hashlib.sha256(str(path).encode()).hexdigest()[:32]
    return images_dir() / "verified" / f"{key}.json"


def _verify_local(path: Path, digest: str, step: Step) -> None:
    """Hash a local image once; later uses trust path, size and mtime."""
    st = path.stat()
    stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
             "digest": digest}
    record = _verification_record(path)
    with suppress(OSError, ValueError):
        if json.loads(record.read_text()) == stamp:
            return
    step(f"verifying {path}")
    actual = same_file_digest(path, digest)
    if actual != digest:
        raise DigestMismatch(f"{path}: digest mismatch: expected {digest}, got {actual}")
    record.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(record, json.dumps(stamp) + "\n")


def _use_local(location: str, digest: str | None, kind: FileKind, step: Step) -> FetchedFile:
    path = Path(location)
    if not path.is_file():
        raise DownloadError(f"{location}: no such file")
    if digest:
        _verify_local(path, digest, step)
    if kind != "disk":
        return FetchedFile(path, "file", location, digest)
    compression = detect_compression(path)
    if compression is None:  # used in place: the user's own file may have a backing file
        return FetchedFile(path, detect_disk_format(path, location, self_contained=False),
                           location, digest)
    st = path.stat()  # without a digest, a changed file is a new entry
    entry = entry_for(location if digest else f"{location}:{st.st_size}:{st.st_mtime_ns}",
                      digest)
    cached = _cached(entry)
    if cached is not None:
        return cached
    with locked(entry):
        cached = _cached(entry)
        if cached is not None:
            return cached
        try:
            return _unpack(entry, path, compression, location, digest, step)
        except ImageFormatError:
            remove(entry)
            raise


def fetch_file(location: str, digest: str | None = None, kind: FileKind = "disk",
               progress: DownloadProgress | None = None, step: Step = _quiet) -> FetchedFile:
    """One file of an image. DownloadError: unavailable (try another);
    DigestMismatch, ImageFormatError: refused."""
    if location.startswith(("http://", "https://")):
        return _fetch_url(location, digest, kind, progress, step)
    return _use_local(location, digest, kind, step)


def fetch_image(images: Sequence[Image], progress: DownloadProgress | None = None,
                arch: str | None = None, step: Step = _quiet) -> FetchedImage:
    """The first candidate for `arch` (default: the host's) whose disk, kernel
    and initrd can all be had."""
    arch = arch or host_arch()
    failures = []
    for image in candidates(images, arch):
        try:
            disk = fetch_file(image.location, image.digest, "disk", progress, step)
            kernel = initrd = None
            if image.kernel is not None:
                kernel = fetch_file(image.kernel.location, image.kernel.digest, "kernel",
                                    progress, step)
            if image.initrd is not None:
                initrd = fetch_file(image.initrd.location, image.initrd.digest, "initrd",
                                    progress, step)
        except DownloadError as e:
            failures.append(str(e))
            continue
        fmt: DiskFormat = "qcow2" if disk.format == "qcow2" else "raw"
        return FetchedImage(
            disk.path, fmt, kernel.path if kernel else None, initrd.path if initrd else None,
            image.kernel.cmdline if image.kernel else None, image.location, image.digest)
    raise RoostError(
        f"no image for {arch} could be fetched:\n"
        + "".join(f"  - {failure}\n" for failure in failures)
        + "hint: check the network (a proxy goes in https_proxy) and the locations in images:")

