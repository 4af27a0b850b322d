"""Helpers for the exec tests: processes found by their argv, unique markers."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path


def marker() -> str:
    """A `sleep` argument no other process on this machine is likely to use."""
    return f"{1000 + random.random() * 1000:.6f}"


def pids_of(argv: list[str]) -> list[int]:
    """Live (not zombie) processes whose command line is exactly `argv`."""
    want = b"\0".join(a.encode() for a in argv) + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "cmdline").read_bytes() != want:
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


def wait_for(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.02)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
