"""Helpers shared by the benchmarks: run roost against a ROOST_HOME, summarize."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
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


def force_delete(home: Path, name: str) -> None:
    subprocess.run([sys.executable, "-m", "roost", "delete", "--force", name],
                   env={**os.environ, "ROOST_HOME": str(home)}, capture_output=True)
