"""Images roost builds itself, each once per cache key.

An image is built into a temporary directory beside its final one and
renamed into place when complete (its manifest.json written last), under
one lock for all builds, so two starts never build the same image twice
and a reader never sees half of one. What a builder killed mid-way left is
removed by the next build of that image.
"""

from __future__ import annotations

import fcntl
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from roost.store.paths import cache_dir

MANIFEST = "manifest.json"


def images_dir() -> Path:
    return cache_dir() / "images"


@contextmanager
def build_lock() -> Iterator[None]:
    images_dir().mkdir(parents=True, exist_ok=True)
    with open(images_dir() / ".build.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def build_once(directory: Path, build: Callable[[Path], None]) -> None:
    """Make `directory` with `build(tmp)` unless it is already complete."""
    if (directory / MANIFEST).exists():
        return
    with build_lock():
        if (directory / MANIFEST).exists():
            return
        # What a builder killed mid-way left (it held this lock, so it is dead).
        for stale in images_dir().glob(f".{directory.name}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=images_dir()))
        try:
            build(tmp)
            tmp.rename(directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def newest_built(prefix: str) -> Path | None:
    """The newest complete image named PREFIX-KEY, without asking apt."""
    built = sorted(images_dir().glob(f"{prefix}-*/{MANIFEST}"), key=lambda p: p.stat().st_mtime)
    return built[-1].parent if built else None
