"""A guest kernel that hangs early in its boot, caught from its console.

Under TCG a guest kernel can, rarely, lose its timer on one CPU in its
first seconds (seen once in a few hundred boots: QEMU 7.2, `-cpu max`,
MTTCG, a loaded 2-core host). It never reaches its init, sshd never
answers, and its console shows nothing but RCU stall reports. Waiting out
the banner's 300 s helps nobody: a hard reset boots it again, and a second
hang ends the start with this diagnosis.

Only a boot with no sign of life yet is watched: the watch ends once the
guest agent answers or the banner arrives (a stall report after that is a
guest's own business, and a starved but living guest prints on or answers
within the grace).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger("roost.hostagent")

# What Linux prints when RCU's grace periods stop: a CPU that stopped
# taking interrupts (e.g. its timer) leaves them behind.
STALL_MARKERS = (b"detected stall", b"kthread timer wakeup didn't happen")
GRACE = 20.0  # after the first stall report, for a starved guest to recover
GRACE_ENV = "ROOST_BOOT_HANG_GRACE_SECS"  # tests shorten it
POLL = 1.0
RESETS = 1


def grace_from_env() -> float:
    try:
        return max(float(os.environ.get(GRACE_ENV, "")), 0.0)
    except ValueError:
        return GRACE


class BootHang(Exception):
    """The guest's kernel hung early in boot, as often as it may be reset."""


def stall_in(data: bytes) -> bool:
    return any(marker in data for marker in STALL_MARKERS)


class BootHangWatch:
    """Resets a guest whose kernel hangs before it shows any sign of life."""

    def __init__(self, console: Path, reset: Callable[[], Awaitable[None]],
                 end_resets: Callable[[], Awaitable[None]],
                 alive: Callable[[], bool], note: Callable[[str], None],
                 grace: float = GRACE, poll: float = POLL, resets: int = RESETS) -> None:
        self.console = console
        self.reset = reset
        self.end_resets = end_resets  # once the reset guest is up (or given up)
        self.alive = alive  # a sign of life seen elsewhere (the guest agent answered)
        self.note = note
        self.grace = grace
        self.poll = poll
        self.resets = resets
        self.resets_done = 0
        self._offset = 0  # QEMU writes the console log afresh at each start

    def _new_console_output(self) -> bytes:
        try:
            with self.console.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return b""
        # The tail of a marker may still be on its way: keep the last bytes.
        keep = max(len(m) for m in STALL_MARKERS)
        self._offset += max(len(data) - keep, 0)
        return data

    def _skip_to_end(self) -> None:
        try:
            self._offset = self.console.stat().st_size
        except OSError:
            self._offset = 0

    async def _stall_reported(self) -> bool:
        """True at a stall report; False once the guest shows a sign of life."""
        while not self.alive():
            if stall_in(self._new_console_output()):
                return True
            await asyncio.sleep(self.poll)
        return False

    async def run(self) -> None:
        """Returns once the guest shows a sign of life; raises BootHang when it
        hangs again after its resets. Cancelled once the banner arrives."""
        try:
            await self._watch()
        finally:
            if self.resets_done:
                try:
                    await self.end_resets()
                except Exception as e:  # the VM may be gone: nothing to reset then
                    log.warning("after the boot-hang reset: %s", e)

    async def _watch(self) -> None:
        resets_left = self.resets
        while await self._stall_reported():
            await asyncio.sleep(2 * self.poll)  # the rest of the report
            self._skip_to_end()
            await asyncio.sleep(self.grace)
            if self.alive():
                return
            later = self._new_console_output()
            if later and not stall_in(later):
                continue  # it printed more than stall reports: starved, not hung
            if resets_left == 0:
                raise BootHang(
                    f"the guest kernel hung early in boot (its console {self.console} "
                    f"shows RCU stall reports: a CPU stopped taking timer interrupts), "
                    f"also after {self.resets} reset(s); this is a fault of the "
                    "emulated machine (TCG), not of the guest: run `roost start` again")
            resets_left -= 1
            self.resets_done += 1
            self.note("the guest kernel hung early in boot (RCU stall reports on its "
                      "console); resetting the VM")
            self._skip_to_end()
            await self.reset()
