"""The end of a process that is not our child, through a pidfd.

A host agent that takes over a running VM adopts daemons its dead
predecessor started; their parent is now init, so no wait() of ours sees
them end. A pidfd (Linux >= 5.3) turns readable when its process exits,
and it names that process, not whatever later gets its pid.
"""

from __future__ import annotations

import asyncio
import os


def open_pidfd(pid: int) -> int | None:
    """A pidfd of `pid`, or None when no such process runs."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


async def wait_pidfd(pidfd: int) -> None:
    """Return once the process of `pidfd` has exited (the caller closes the fd)."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await ended
    finally:
        loop.remove_reader(pidfd)


def how_it_ended(returncode: int | None) -> str:
    """`exited with status 1`, `was killed by signal 9`; `exited` when unknown."""
    if returncode is None:
        return "exited"
    if returncode < 0:
        return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"
