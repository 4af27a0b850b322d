"""Which instances use a cached image, and removing the images none uses.

Instances pin the image they were made from (their disk is a copy-on-write
overlay of its base), so every package update leaves a built-in image of
~130 MiB behind, and every cloud image once pulled stays. The cache is per
user while instances live in any ROOST_HOME, so an image records who pins
it: `pins/` holds one file per instance, naming its directory. An image is
in use while such an instance (or one in this ROOST_HOME, for pins made
before the records existed) still pins it. The newest built-in image is
always kept: the next `roost start` would build it again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from roost.errors import RoostError, UsageError
from roost.image.buildcache import build_lock, images_dir
from roost.image.builtin import find_cached
from roost.image.cloudcache import (
    ENTRY_PREFIX,
    CacheEntry,
    EntryBusy,
    entries,
    locked,
    remove,
)
from roost.store.durable import write_atomic
from roost.store.instance import list_instances

PINS_DIR = "pins"
PIN_FILE = "image.json"  # in the instance directory (roost.image.disk)
BUILTIN_PREFIX = "builtin-"
# Images roost builds itself (roost.image.builtin, roost.image.debian).
BUILT_PREFIXES = (BUILTIN_PREFIX, "debian-12-")


def image_dir_of(path: Path) -> Path | None:
    """The cache directory a pinned file is part of; None for a file used in place."""
    parent = path.parent
    if parent.parent == images_dir() and parent.name.startswith((*BUILT_PREFIXES,
                                                                  ENTRY_PREFIX)):
        return parent
    return None


def record_pin(image_dir: Path, inst_dir: Path) -> None:
    """Note in the image that the instance at `inst_dir` is made from it."""
    pins = image_dir / PINS_DIR
    pins.mkdir(exist_ok=True)
    key = hashlib.sha256(str(inst_dir).encode()).hexdigest()[:16]
    write_atomic(pins / key, f"{inst_dir}\n")


def record_pins(files: Iterable[Path], inst_dir: Path) -> None:
    """record_pin() in each cached image the files (disk, kernel, initrd) belong to."""
    for image_dir in sorted({d for f in files if (d := image_dir_of(f)) is not None}):
        record_pin(image_dir, inst_dir)


@contextmanager
def held_for_pinning(files: Iterable[Path]) -> Iterator[None]:
    """Keep the cloud cache entries of `files` from removal (`roost image rm`,
    `prune`: they need the exclusive lock) while an instance is made from
    them and its pin written."""
    with ExitStack() as stack:
        for path in files:
            image_dir = image_dir_of(path)
            if image_dir is None or not image_dir.name.startswith(ENTRY_PREFIX):
                continue
            stack.enter_context(locked(CacheEntry(image_dir), shared=True))
            if not path.exists():
                raise RoostError(f"{path} was removed from the image cache meanwhile "
                                 "(`roost image rm` or `prune`); start again to fetch it")
        yield


def _pins_image(inst_dir: Path, image_dir: Path) -> bool:
    try:
        pinned = json.loads((inst_dir / PIN_FILE).read_text())
    except (OSError, ValueError):
        return False
    return any(Path(str(pinned[key])).parent == image_dir
               for key in ("disk", "kernel", "initrd") if pinned.get(key))


def users(image_dir: Path) -> list[Path]:
    """Instance directories that still pin this image."""
    candidates = {Path(p.read_text().strip()) for p in (image_dir / PINS_DIR).glob("*")}
    candidates |= {inst.dir for inst in list_instances()}
    return sorted(d for d in candidates if _pins_image(d, image_dir))


@dataclass(frozen=True)
class Pruned:
    directory: Path
    size: int


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _prune_built(dry_run: bool) -> list[Pruned]:
    """Built images (the micro image, debian-12) no instance pins, each
    kind's newest kept: the next `roost start` would build it again."""
    from roost.image import debian

    with build_lock():  # never beside a build, which writes the newest image
        removed = []
        for prefix, newest in ((BUILTIN_PREFIX, find_cached()),
                               (f"{debian.NAME}-", debian.find_cached())):
            for image_dir in sorted(images_dir().glob(prefix + "*")):
                if (newest is not None and image_dir == newest.directory) or users(image_dir):
                    continue
                removed.append(Pruned(image_dir, _size(image_dir)))
                if not dry_run:
                    shutil.rmtree(image_dir)
        return removed


def _remove_entry(entry: CacheEntry, dry_run: bool, force: bool = False) -> Pruned | None:
    """Remove an entry no instance pins (any, with `force`); None if it is
    pinned. EntryBusy while a download or a start holds it."""
    with locked(entry, wait=False):  # pinned under a shared lock: checked after taking it
        if not force and users(entry.directory):
            return None
        size = entry.size_on_disk()
        if not dry_run:
            remove(entry)
        return Pruned(entry.directory, size)


def prune(dry_run: bool = False) -> list[Pruned]:
    """Remove the unused images: built-in ones but the newest, cloud images
    (and unfinished downloads) no instance pins."""
    if not images_dir().is_dir():
        return []
    removed = _prune_built(dry_run)
    for entry in entries():
        if users(entry.directory):
            continue
        try:
            pruned = _remove_entry(entry, dry_run)
        except EntryBusy:
            continue  # being downloaded or pinned right now
        if pruned is not None:
            removed.append(pruned)
    return removed


def matching_entries(target: str) -> list[CacheEntry]:
    """Cloud cache entries whose location or digest (with or without the
    `sha256:` prefix) is `target`."""
    found = []
    for entry in entries():
        meta = entry.meta()
        if meta is None:
            continue
        digest = meta.digest or ""
        if target in (meta.location, digest, digest.partition(":")[2]):
            found.append(entry)
    return found


def remove_images(target: str, force: bool = False) -> list[Pruned]:
    """`roost image rm`: the cloud images named by `target` (a location or a
    digest); refused while an instance pins one, unless `force`."""
    found = matching_entries(target)
    if not found:
        raise UsageError(f"no cached cloud image has the location or digest {target!r} "
                         "(see `roost image list`)")
    pinned = {e.directory: users(e.directory) for e in found}
    in_use = {d: u for d, u in pinned.items() if u}
    if in_use and not force:
        names = ", ".join(sorted({str(u) for us in in_use.values() for u in us}))
        raise UsageError(f"{target} is in use by {names}; delete those instances first, or "
                         "--force (their disks then lose their base image)")
    removed = []
    for entry in found:
        pruned = _remove_entry(entry, dry_run=False, force=force)
        if pruned is None:
            raise UsageError(f"{entry.directory} was pinned by an instance meanwhile; "
                             "not removed")
        removed.append(pruned)
    return removed
