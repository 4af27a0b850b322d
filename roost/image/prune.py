"""Pruning the image cache: built-in images that no instance pins.

Instances pin the image they were made from (their disk is a copy-on-write
overlay of its base), so every package update leaves an image of ~130 MiB
behind. The cache is per user while instances live in any ROOST_HOME, so
an image records who pins it: `pins/` holds one file per instance, naming
its directory. An image is in use while such an instance (or one in this
ROOST_HOME, for pins made before the records existed) still pins it. The
newest image is always kept: the next `roost start` would build it again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from roost.image.builtin import build_lock, find_cached, images_dir
from roost.store.instance import list_instances

PINS_DIR = "pins"
PIN_FILE = "image.json"  # in the instance directory (roost.image.disk)


def record_pin(image_dir: Path, inst_dir: Path) -> None:
    """Note in the image that the instance at `inst_dir` is made from it."""
    pins = image_dir / PINS_DIR
    pins.mkdir(exist_ok=True)
    key = hashlib.sha256(str(inst_dir).encode()).hexdigest()[:16]
    (pins / key).write_text(f"{inst_dir}\n")


def _pins_image(inst_dir: Path, image_dir: Path) -> bool:
    try:
        pinned = json.loads((inst_dir / PIN_FILE).read_text())
    except (OSError, ValueError):
        return False
    return Path(str(pinned.get("disk", ""))).parent == image_dir


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


def prune(dry_run: bool = False) -> list[Pruned]:
    """Remove the unused built-in images (all but in-use ones and the newest)."""
    if not images_dir().is_dir():
        return []
    with build_lock():  # never beside a build, which writes the newest image
        newest = find_cached()
        removed = []
        for image_dir in sorted(images_dir().glob("builtin-*")):
            if (newest is not None and image_dir == newest.directory) or users(image_dir):
                continue
            removed.append(Pruned(image_dir, _size(image_dir)))
            if not dry_run:
                shutil.rmtree(image_dir)
        return removed
