"""The console line that tells the banner probe sshd is starting."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from roost.hostagent.consolemark import SSHD_STARTING, wait_for_line


async def _appended_later(path: Path, parts: list[bytes]) -> None:
    for part in parts:
        await asyncio.sleep(0.05)
        with open(path, "ab") as f:
            f.write(part)


def test_a_line_written_in_pieces_is_seen(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"  # not there yet: QEMU has not started

    async def run() -> None:
        writer = asyncio.ensure_future(_appended_later(log, [
            b"early noise\r\nroost: ss", b"hd star", b"ting\r\n"]))
        await asyncio.wait_for(wait_for_line(log, SSHD_STARTING, poll=0.01), 5)
        await writer

    asyncio.run(run())


@pytest.mark.parametrize("text", [
    b"roost: sshd start",  # not the whole marker yet
    b"says roost: sshd starting\n",  # not at the start of a line
    b"roost: sshd starting",  # no end of line yet
])
def test_anything_else_is_not_the_line(tmp_path: Path, text: bytes) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(text)

    async def run() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(wait_for_line(log, SSHD_STARTING, poll=0.01), 0.3)

    asyncio.run(run())


def test_a_console_that_floods_is_read_only_so_far(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(b"x" * 4096 + b"\n" + SSHD_STARTING + b"\n")

    async def run() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(wait_for_line(log, SSHD_STARTING, poll=0.01,
                                                 max_scan=1024), 0.3)
        await asyncio.wait_for(wait_for_line(log, SSHD_STARTING, poll=0.01), 2)

    asyncio.run(run())
