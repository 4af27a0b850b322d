"""The boot-hang watch: a console with only RCU stall reports gets one
reset, then the start fails; a guest that prints on or answers is left be."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from roost.driver.base import DriverInfo, SSHAddress
from roost.hostagent.boothang import BootHang, BootHangWatch
from roost.hostagent.readiness import _banner_unless_hung

STALL = (b"[   23.101] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n"
         b"[   23.102] rcu: rcu_preempt kthread timer wakeup didn't happen for 5255 jiffies!\n")
BOOT = b"[    0.000] Linux version 6.1.0\n[    2.400] Run /init as init process\n"


class Guest:
    """A console log and what the watch did to the machine."""

    def __init__(self, tmp: Path) -> None:
        self.console = tmp / "serial.log"
        self.console.write_bytes(BOOT)
        self.resets = 0
        self.ended = 0
        self.notes: list[str] = []
        self.is_alive = False
        self.on_reset: bytes = b""  # what the console shows after a reset

    async def reset(self) -> None:
        self.resets += 1
        with self.console.open("ab") as f:
            f.write(BOOT + self.on_reset)

    async def end_resets(self) -> None:
        self.ended += 1

    def print(self, data: bytes) -> None:
        with self.console.open("ab") as f:
            f.write(data)

    def watch(self) -> BootHangWatch:
        return BootHangWatch(self.console, self.reset, self.end_resets, alive=lambda: self.is_alive,
                             note=self.notes.append, grace=0.2, poll=0.02)


async def watched_until_reset(guest: Guest) -> asyncio.Future[None]:
    """The watch of a guest that hung, running, once it has reset the guest."""
    task = asyncio.ensure_future(guest.watch().run())
    while guest.resets == 0:
        await asyncio.sleep(0.02)
    return task


def test_a_hang_is_reset_once_then_the_start_fails(tmp_path: Path) -> None:
    guest = Guest(tmp_path)
    guest.print(STALL)
    guest.on_reset = STALL  # it hangs again
    with pytest.raises(BootHang, match=r"hung early in boot.*after 1 reset"):
        asyncio.run(asyncio.wait_for(guest.watch().run(), 5))
    assert guest.resets == 1 and guest.ended == 1
    assert "resetting the VM" in guest.notes[0]


def test_a_reset_guest_that_comes_up_is_left_be(tmp_path: Path) -> None:
    guest = Guest(tmp_path)
    guest.print(STALL)

    async def scenario() -> None:
        task = await watched_until_reset(guest)
        # The old stall report is still in the log: it must not count again.
        await asyncio.sleep(1.0)
        assert not task.done()
        guest.is_alive = True
        await asyncio.wait_for(task, 1)

    asyncio.run(scenario())
    assert guest.resets == 1
    assert guest.ended == 1, "up again: a guest's reboot ends the VM again"


def test_a_starved_guest_that_prints_on_is_not_reset(tmp_path: Path) -> None:
    guest = Guest(tmp_path)
    guest.print(STALL)

    async def scenario() -> None:
        task = asyncio.ensure_future(guest.watch().run())
        await asyncio.sleep(0.1)  # seen, the report's tail waited for
        guest.print(b"[   30.000] EXT4-fs (vda): mounted filesystem\n")
        await asyncio.sleep(0.6)
        guest.is_alive = True
        await asyncio.wait_for(task, 1)

    asyncio.run(scenario())
    assert guest.resets == 0


def test_a_guest_alive_is_not_watched(tmp_path: Path) -> None:
    guest = Guest(tmp_path)
    guest.print(STALL)
    guest.is_alive = True
    asyncio.run(asyncio.wait_for(guest.watch().run(), 1))
    assert guest.resets == 0


def test_a_report_written_in_two_pieces_is_seen(tmp_path: Path) -> None:
    guest = Guest(tmp_path)
    guest.on_reset = STALL

    async def scenario() -> None:
        task = asyncio.ensure_future(guest.watch().run())
        line = STALL.splitlines(keepends=True)[0]
        cut = line.index(b"detected stall") + 5
        guest.print(line[:cut])
        await asyncio.sleep(0.1)
        guest.print(line[cut:])
        with pytest.raises(BootHang):
            await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert guest.resets == 1


def test_a_missing_console_is_no_hang(tmp_path: Path) -> None:
    guest = Guest(tmp_path)
    guest.console.unlink()

    async def scenario() -> None:
        task = asyncio.ensure_future(guest.watch().run())
        await asyncio.sleep(0.3)
        assert not task.done()
        guest.is_alive = True
        await asyncio.wait_for(task, 1)

    asyncio.run(scenario())
    assert guest.resets == 0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_banner_wait_ends_with_the_hang(tmp_path: Path) -> None:
    """No sshd ever answers (nothing listens): the hang's error ends the wait,
    not the banner's 300 s."""
    guest = Guest(tmp_path)
    guest.print(STALL)
    guest.on_reset = STALL
    info = DriverInfo(name="qemu", accel="tcg", guest_agent="",
                      ssh=SSHAddress("127.0.0.1", _closed_port()))

    async def scenario() -> None:
        hang = asyncio.ensure_future(guest.watch().run())
        with pytest.raises(BootHang):
            await asyncio.wait_for(_banner_unless_hung(info, asyncio.Event(), hang), 10)

    asyncio.run(scenario())


def test_a_banner_after_the_reset_ends_the_resets(tmp_path: Path) -> None:
    """Cancelled (the banner came) after its reset: guest reboots end the VM again."""
    guest = Guest(tmp_path)
    guest.print(STALL)

    async def scenario() -> None:
        task = await watched_until_reset(guest)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert (guest.resets, guest.ended) == (1, 1)
