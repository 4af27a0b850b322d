"""Running the host tools the image builder uses (apt, dpkg-deb, mkfs...)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from roost.errors import RoostError


def run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """The tool's stdout; a RoostError with the end of its stderr if it fails."""
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RoostError(
            f"`{' '.join(argv[:3])} ...` failed (exit {proc.returncode}): "
            f"{proc.stderr.strip()[-800:]}"
        )
    return proc.stdout
