"""What `roost start` hands the host agent it spawns: its deadline, and its
go-ahead. Light on purpose: `roost start` imports it before the spawn.

The deadline is a time.monotonic() value (CLOCK_MONOTONIC, one clock for
every process on the host), in START_DEADLINE_ENV.

The go-ahead. `roost start` spawns the host agent first and then validates
roost.yaml and prepares the disk, so that the host agent's imports
(pydantic, aiohttp, the config models: about half a second here) run on
the other core meanwhile instead of after. Imported, the host agent waits
for one byte on a pipe it inherited before it touches the instance: GO
means go on; end of file (the start failed, or `roost start` died) means
exit having changed nothing (no lock file, no logs: until GO its output
goes to a file of `roost start`'s that has no name). On GO, `roost start`
has cleared the last run's logs, and the host agent opens its own.
Without the variable (a resume, a takeover) it does what it always did.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import BinaryIO

START_DEADLINE_ENV = "ROOST_START_DEADLINE"
GO_AHEAD_ENV = "ROOST_GO_AHEAD_FD"
GO = b"1"


class GoAhead:
    """`roost start`'s end: a pipe whose read end the host agent inherits,
    and the unnamed file its output goes to until GO."""

    def __init__(self) -> None:
        self._read, self._write = (_above_stdio(fd) for fd in os.pipe())
        # No name, no directory needed: memory until the host agent takes its logs.
        self.early_output: BinaryIO = open(  # noqa: SIM115 - closed by close()
            os.memfd_create("roost-hostagent-early", os.MFD_CLOEXEC), "w+b")

    def child_env(self) -> dict[str, str]:
        return {GO_AHEAD_ENV: str(self._read)}

    @property
    def child_fds(self) -> tuple[int]:
        return (self._read,)

    def spawned(self) -> None:
        """The host agent has its copy of the read end."""
        with contextlib.suppress(OSError):
            os.close(self._read)

    def give(self) -> None:
        """Go on. A host agent that has exited already is not an error here:
        the start sees it exit."""
        try:
            os.write(self._write, GO)
        except BrokenPipeError:
            pass
        finally:
            self.withdraw()

    def withdraw(self) -> None:
        """Call the start off: the host agent reads end of file and exits."""
        with contextlib.suppress(OSError):
            os.close(self._write)

    def early_tail(self, limit: int = 4000) -> str:
        """What the host agent wrote before GO (an import that failed)."""
        f = self.early_output
        f.seek(0, os.SEEK_END)
        f.seek(max(f.tell() - limit, 0))
        return f.read().decode(errors="replace")

    def close(self) -> None:
        self.withdraw()
        self.early_output.close()


def _above_stdio(fd: int) -> int:
    """`fd` moved to 3 or above (non-inheritable): a `roost start` run with
    its standard streams closed gets pipe ends numbered 0-2, which the
    child's stdin, stdout and stderr would replace."""
    if fd > 2:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return moved


def awaits_go_ahead() -> bool:
    return bool(os.environ.get(GO_AHEAD_ENV))


def wait_for_go_ahead() -> bool:
    """Blocks until `roost start` says go (True) or calls the start off
    (False); True at once when the host agent was not spawned that way."""
    value = os.environ.pop(GO_AHEAD_ENV, "")
    if not value:
        return True
    try:
        fd = int(value)
    except ValueError:
        return True
    try:
        return os.read(fd, 1) == GO
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def take_logs(stdout: Path, stderr: Path) -> None:
    """The host agent's standard output and error from now on: its logs."""
    for fd, path in ((1, stdout), (2, stderr)):
        log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        os.dup2(log, fd)  # inheritable, as the files `roost start` opened were
        os.close(log)
