"""Helpers shared by the benchmarks: run roost against a ROOST_HOME, summarize."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def roost(home: Path, *args: str, input: str | None = None) -> str:
    """Run the CLI with ROOST_HOME=home; its stdout, or RuntimeError."""
    proc = subprocess.run([sys.executable, "-m", "roost", *args], text=True, input=input,
                          capture_output=True, env={**os.environ, "ROOST_HOME": str(home)})
    if proc.returncode != 0:
        raise RuntimeError(f"roost {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def summary(values: list[float], digits: int = 3) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits),
            "min": round(min(values), digits), "max": round(max(values), digits)}


@contextmanager
def scratch_home() -> Iterator[Path]:
    """A throwaway ROOST_HOME: on the way out every instance in it is deleted
    with --force (its VM stopped) and the directory removed."""
    home = Path(tempfile.mkdtemp(prefix="rbench-", dir="/tmp"))
    try:
        yield home
    finally:
        for config in home.glob("*/roost.yaml"):
            subprocess.run([sys.executable, "-m", "roost", "delete", "--force",
                            config.parent.name],
                           env={**os.environ, "ROOST_HOME": str(home)}, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
