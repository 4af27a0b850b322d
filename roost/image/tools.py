"""Running the host tools the image builder uses (apt, dpkg-deb, mkfs...)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from roost.errors import RoostError

# mkfs.ext4, debugfs and sfdisk live in /sbin, which a normal user's PATH lacks.
SYSTEM_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def find_tool(name: str) -> str | None:
    """`name` on PATH, else in the system's own directories."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SYSTEM_DIRS))


def resolve(argv: list[str]) -> list[str]:
    """argv with its program found as find_tool() finds it (unchanged if not found:
    running it then says which one is missing)."""
    if not argv or "/" in argv[0]:
        return argv
    return [find_tool(argv[0]) or argv[0], *argv[1:]]


def run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """The tool's stdout; a RoostError with the end of its stderr if it fails."""
    try:
        proc = subprocess.run(resolve(argv), cwd=cwd, env=env, capture_output=True, text=True)
    except FileNotFoundError:
        raise RoostError(f"{argv[0]} was not found on PATH or in {', '.join(SYSTEM_DIRS)}; "
                         "run scripts/setup.sh to install roost's host tools") from None
    if proc.returncode != 0:
        raise RoostError(
            f"`{' '.join(argv[:3])} ...` failed (exit {proc.returncode}): "
            f"{proc.stderr.strip()[-800:]}"
        )
    return proc.stdout
