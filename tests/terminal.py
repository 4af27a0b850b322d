"""Reading a pseudo-terminal's output in tests, with a deadline."""

from __future__ import annotations

import os
import select
import time


def read_until(fd: int, text: bytes, timeout: float = 60) -> bytes:
    """What `fd` gives until `text` is in it; AssertionError at the deadline or
    when the other side closed (EIO)."""
    out = b""
    deadline = time.monotonic() + timeout
    while text not in out:
        left = deadline - time.monotonic()
        assert left > 0, f"no {text!r} in {out!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                out += os.read(fd, 4096)
            except OSError:  # EIO: the other side closed
                raise AssertionError(f"no {text!r} in {out!r}") from None
    return out


def read_size_until(fd: int, size: bytes, timeout: float = 60) -> bytes:
    """Ask the remote terminal its size until it is `size` (a resize travels on
    its own: SIGWINCH here, a message to the guest)."""
    deadline = time.monotonic() + timeout
    while True:
        os.write(fd, b"stty size\r")
        try:
            return read_until(fd, size, timeout=1)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
