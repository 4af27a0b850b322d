"""A line the guest prints on its console, watched for in serial.log.

The built-in image's sshd launcher prints SSHD_STARTING just before it
starts sshd. The banner probe takes that as its kick (see banner.py): its
attempts made before the guest's NIC was up are parked by slirp until a
SYN re-send seconds later, and the guest agent, its other kick, may still
be starting. A guest can print the line whenever it likes; all it gets is
one fresh probe attempt.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

SSHD_STARTING = b"roost: sshd starting"
POLL = 0.02
MAX_SCAN = 1 << 20  # a console that says more before sshd starts is not waited on


async def wait_for_line(path: Path, marker: bytes, poll: float = POLL,
                        max_scan: int = MAX_SCAN) -> None:
    """Returns once `marker` starts a line of the file (QEMU's console log,
    truncated at each boot); never, if it does not within `max_scan` bytes."""
    seen = b""
    offset = 0
    while offset < max_scan:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(max_scan - offset)
        except FileNotFoundError:
            data = b""
        if data:
            offset += len(data)
            # Whole lines only, and the partial one kept for the next read.
            lines = (seen + data).split(b"\n")
            seen = lines.pop()
            if any(line.strip(b"\r").startswith(marker) for line in lines):
                return
        await asyncio.sleep(poll)
    await asyncio.Event().wait()  # never: the other kicks and the probe go on
