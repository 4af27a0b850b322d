"""Copies of an instance's large files (disks, saved RAM)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from roost.errors import RoostError


def copy_sparse(src: Path, dst: Path) -> None:
    """A copy that shares blocks where the file system can (reflink) and
    keeps holes."""
    proc = subprocess.run(["cp", "--reflink=auto", "--sparse=always", "--", str(src), str(dst)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RoostError(f"cannot copy {src}: {proc.stderr.strip()}")
