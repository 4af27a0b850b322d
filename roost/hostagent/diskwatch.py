"""The guest's disk on a full host file system.

A guest write that finds no room for disk.qcow2 to grow pauses the VM with
the request held (QEMU's werror=enospc): the guest sees no I/O error and
loses nothing, but it stands still. The watch says so at once (an event and
an error naming the file system), keeps the instance degraded while there
is no room, and continues the VM once there is: the held writes are tried
again. The host agent's own writes (status events, runtime.json) need a
little room while the VM is paused: a reserve file set aside at start is
given up for them the moment the VM pauses, and taken again after.

Other disk errors are reported to the guest as I/O errors by QEMU; the
watch names them in the status too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from roost.driver.base import DiskError, DriverError, PausesOnFullDisk
from roost.hostagent.events import EventEmitter, rfc3339_now

log = logging.getLogger(__name__)

# Free space there must be before the VM is continued: less, and the next
# few writes pause it again at once.
ROOM_TO_CONTINUE = 64 << 20
POLL_SECONDS = 1.0
RESERVE_BYTES = 1 << 20


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class DiskWatch:
    def __init__(self, driver: PausesOnFullDisk, disk: Path, reserve: Path,
                 events: EventEmitter, on_change: Callable[[], None],
                 room_to_continue: int = ROOM_TO_CONTINUE) -> None:
        self.driver = driver
        self.disk = disk
        self.reserve = reserve
        self.events = events
        self.on_change = on_change  # degraded or not: the host agent decides and writes
        self.room_to_continue = room_to_continue
        self.paused_since: float | None = None
        self._paused = asyncio.Event()
        self._task: asyncio.Future[Any] | None = None

    @property
    def paused(self) -> bool:
        return self.paused_since is not None

    def start(self) -> None:
        self._take_reserve()
        self._task = asyncio.ensure_future(asyncio.gather(self._errors(), self._continue()))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self.reserve.unlink(missing_ok=True)

    def _take_reserve(self) -> None:
        try:
            fd = os.open(self.reserve, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            log.warning("cannot set aside room for a full disk (%s): %s", self.reserve, e)
            return
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
        except OSError as e:  # no room even for that: the pause is said in memory only
            log.warning("cannot set aside room for a full disk (%s): %s", self.reserve, e)
            self.reserve.unlink(missing_ok=True)
        finally:
            os.close(fd)

    async def _errors(self) -> None:
        # Paused before this host agent took the VM over: only ENOSPC pauses.
        with contextlib.suppress(DriverError):
            if await self.driver.paused_on_disk_error():
                self._pause(DiskError(device="root", operation="write", nospace=True,
                                      paused=True, reason="found paused on a disk error"))
        async for error in self.driver.disk_errors():
            if error.paused:
                self._pause(error)
            else:
                self.events.add_error(
                    f"the guest's disk ({error.device}) failed a {error.operation} on the "
                    f"host: {error.reason or 'I/O error'}; the guest saw an I/O error")
                self.events.emit_transient(diskError={
                    "device": error.device, "operation": error.operation,
                    "reason": error.reason})

    def _pause(self, error: DiskError) -> None:
        if self.paused:  # the other requests in flight when it paused
            return
        self.paused_since = time.monotonic()
        free = free_bytes(self.disk.parent)
        self.reserve.unlink(missing_ok=True)  # room for what follows
        from roost.config.sizes import human_size

        self.events.add_error(
            f"the VM is paused: its disk ({self.disk}) found no room to grow on its file "
            f"system ({human_size(free)} free); free space there and roost continues it "
            f"once {human_size(self.room_to_continue)} are free")
        self.on_change()  # degraded, and so is the event that says why
        self.events.emit(diskFull={"path": str(self.disk), "device": error.device,
                                   "free": free, "since": rfc3339_now()})
        self._paused.set()

    async def _continue(self) -> None:
        while True:
            await self._paused.wait()
            while free_bytes(self.disk.parent) < self.room_to_continue:
                await asyncio.sleep(POLL_SECONDS)
            assert self.paused_since is not None
            paused_for = time.monotonic() - self.paused_since
            # Cleared before `cont`: an error the retried writes meet pauses again.
            self._paused.clear()
            self.paused_since = None
            self._take_reserve()
            await self.driver.continue_running()
            log.info("the disk has room again: the VM continues after %.1fs", paused_for)
            self.on_change()
            self.events.emit(diskFull=None)
            self.events.emit_transient(diskContinued={
                "path": str(self.disk), "pausedSeconds": round(paused_for, 1),
                "free": free_bytes(self.disk.parent)})
