"""The real guest agent, run on a Unix socket, for tests of the host side."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


def _accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


@contextmanager
def guest_agent_on(path: str, *flags: str) -> Iterator[str]:
    """Run `python -m roost_guest --unix PATH FLAGS` until the block ends."""
    proc = subprocess.Popen([sys.executable, "-m", "roost_guest", "--unix", path, *flags],
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not _accepts(path):  # the file exists from bind(), before listen()
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield path
    finally:
        proc.terminate()
        proc.wait(5)
