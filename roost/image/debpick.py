"""A few files out of a Debian package, for commands busybox lacks.

Unpacking coreutils or util-linux whole would replace busybox's applets
and cost megabytes; the image wants one or two of their programs. The
package is unpacked aside and only the paths asked for are moved in, with
their modes (a set-uid bit included) and symbolic links as Debian ships them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from roost.errors import RoostError
from roost.image.tools import run


def extract_picked(deb: Path, root: Path, patterns: list[str]) -> list[str]:
    """Move the files matching `patterns` (globs relative to the package's
    root) from `deb` into `root`; returns the paths moved, sorted.

    Every pattern must match, and every symbolic link moved must point at
    something that exists in `root` afterwards: a package whose layout
    changed fails the build here rather than leaving a broken command.
    """
    with tempfile.TemporaryDirectory(prefix=".pick-", dir=root.parent) as tmp:
        staging = Path(tmp)
        run(["dpkg-deb", "-x", str(deb), str(staging)])
        picked: list[str] = []
        for pattern in patterns:
            matches = sorted(staging.glob(pattern))
            if not matches:
                raise RoostError(f"{deb.name} has no file matching {pattern!r}; "
                                 "its layout changed: update the picked files in the recipe")
            picked += [m.relative_to(staging).as_posix() for m in matches]
        for rel in picked:
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_symlink() or dest.exists():
                dest.unlink()
            shutil.move(staging / rel, dest)
    for rel in picked:
        dest = root / rel
        if dest.is_symlink() and not _resolves_inside(dest, root):
            raise RoostError(f"{deb.name}: {rel} links to {os.readlink(dest)}, "
                             "which was not picked")
    return sorted(picked)


def _resolves_inside(link: Path, root: Path) -> bool:
    target = os.readlink(link)
    base = root if target.startswith("/") else link.parent
    return (base / target.lstrip("/")).exists()
