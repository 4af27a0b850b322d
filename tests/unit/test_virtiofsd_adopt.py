"""A host agent that takes over a VM adopts the virtiofsd its dead
predecessor started (by pid file and command line) and can stop it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from roost.hostagent.mounts.virtiofsd import Virtiofsd, find_virtiofsd
from roost.store.instance import pid_running


def daemons(tmp_path: Path) -> tuple[str, Path, Callable[[], Virtiofsd]]:
    """virtiofsd, a share, and a maker of daemons serving it on one socket."""
    binary = find_virtiofsd()
    assert binary is not None and os.geteuid() == 0, "scripts/setup.sh installs virtiofsd"
    share = tmp_path / "share"
    share.mkdir()

    def daemon() -> Virtiofsd:
        return Virtiofsd(binary, tmp_path / "mnt0.vfs.sock", str(share), tmp_path / "log")

    return binary, share, daemon


def test_adopt_and_stop_an_orphaned_virtiofsd(tmp_path: Path) -> None:
    binary, share, daemon = daemons(tmp_path)

    async def scenario() -> None:
        first = daemon()
        await first.start()
        pid = first.pid
        assert pid is not None and pid_running(pid)
        stranger = Virtiofsd(binary, tmp_path / "other.sock", str(share), tmp_path / "log")
        assert not stranger.adopt()  # no pid file for that socket
        heir = daemon()
        assert heir.adopt() and heir.pid == pid
        await heir.stop()
        assert first._proc is not None
        await first._proc.wait()  # reaped here because this test is its parent
        assert not heir.socket_path.exists() and not heir.pidfile.exists()

    asyncio.run(scenario())


def test_starting_over_a_left_daemon_stops_it_first(tmp_path: Path) -> None:
    """A cold boot after a host agent died mid-start: the virtiofsd it left
    for the same socket is stopped, not orphaned beside the new one."""
    _, _, daemon = daemons(tmp_path)

    async def scenario() -> None:
        left = daemon()
        await left.start()
        assert left._proc is not None
        old = left.pid
        fresh = daemon()
        await fresh.start()
        await asyncio.wait_for(left._proc.wait(), 10)  # stopped (reaped here: our child)
        assert fresh.pid not in (None, old) and fresh.pid is not None
        assert pid_running(fresh.pid)
        assert fresh.pidfile.read_text().split()[0] == str(fresh.pid)
        await fresh.stop()

    asyncio.run(scenario())
