"""The root file system image: mkfs.ext4 -d, every file owned by root.

mkfs.ext4 copies each file's owner from the directory it is given. Built
by an ordinary user, the tree is that user's, and so would every file of
the guest be, sudo and /etc/sudoers included (sudo refuses to run then).
The owners are set to root in the image afterwards, with debugfs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from roost.errors import RoostError
from roost.image.tools import resolve, run


def write_root_fs(root: Path, raw: Path, size_bytes: int, label: str) -> None:
    """An ext4 image at `raw` holding `root`'s tree, owned by root:root."""
    run(["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(root),
         "-E", "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1",
         str(raw), f"{size_bytes // 1024**2}M"])
    chown_to_root(raw, not_root_owned(root))


def not_root_owned(root: Path) -> list[str]:
    """Paths under `root` (as the image will name them, "/etc/...") whose
    owner or group is not root."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if st.st_uid != 0 or st.st_gid != 0:
                found.append("/" + path.relative_to(root).as_posix())
    return sorted(found)


def chown_to_root(raw: Path, paths: list[str]) -> None:
    """Set uid and gid 0 on `paths` inside the ext4 image `raw`."""
    if not paths:
        return
    lines = []
    for path in paths:
        if any(c in path for c in '"\n\\'):
            raise RoostError(f"cannot name {path!r} to debugfs: rename it in the image recipe")
        lines += [f'set_inode_field "{path}" uid 0', f'set_inode_field "{path}" gid 0']
    proc = subprocess.run(resolve(["debugfs", "-w", "-f", "-", str(raw)]),
                          input="\n".join(lines) + "\n", capture_output=True, text=True)
    # debugfs reports a failed command on stderr and still exits 0; its
    # only other stderr line is its version banner.
    errors = [line for line in proc.stderr.splitlines()
              if line.strip() and not line.startswith("debugfs ")]
    if proc.returncode != 0 or errors:
        raise RoostError(f"debugfs could not set owners in {raw.name} (exit {proc.returncode}): "
                         + "\n".join(errors)[-800:])
