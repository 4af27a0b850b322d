"""Runtime mounts outlive their host agent (mounts.json), and a share whose
daemon dies is noticed at once: real files, real virtiofsd, real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from roost.driver.base import Share
from roost.driver.qemu.cmdline import HOTPLUG_SLOTS
from roost.hostagent.guestagent import GuestAgentClient, GuestAgentError
from roost.hostagent.mounts import state
from roost.hostagent.mounts.manager import MountManager, MountRecord
from roost.hostagent.mounts.state import MountStateError, SavedMount
from roost.hostagent.mounts.virtiofsd import find_virtiofsd
from roost.hostagent.procwatch import how_it_ended, open_pidfd, wait_pidfd
from roost.store.instance import pid_running


class DriverSlots:
    """The QEMU driver's hot-plug slots; plugging is the e2e suite's to test."""

    def hotplug_slots(self) -> tuple[str, ...]:
        return HOTPLUG_SLOTS

    async def hotplug_virtiofs(self, share: Share) -> None:
        raise AssertionError("not plugged in unit tests")

    async def unplug(self, device_id: str, timeout: float = 10.0) -> None:
        raise AssertionError("not unplugged in unit tests")


async def no_guest() -> GuestAgentClient:
    raise GuestAgentError("no guest in unit tests")


def manager(inst_dir: Path, static: list[MountRecord] | None = None) -> MountManager:
    return MountManager(inst_dir, DriverSlots(), no_guest, static or [])


def test_saved_mounts_round_trip_and_torn_files_are_refused(tmp_path: Path) -> None:
    assert state.load(tmp_path) == state.SavedMounts(0, ())
    mounts = [SavedMount(location="/srv/a", mount_point="/mnt/a", type="virtiofs",
                         writable=True, tag="roost-hot3", device_id="hot3", slot="hp1",
                         options={"queueSize": 1024}, virtiofsd_pid=4242,
                         virtiofsd_socket=str(tmp_path / "hot3.vfs.sock")),
              SavedMount(location="/srv/b", mount_point="/mnt/b", type="reverse-sshfs",
                         writable=False, tag="roost-hot5", device_id="hot5",
                         error="sftp-server died")]
    state.save(tmp_path, 5, mounts)
    assert state.load(tmp_path) == state.SavedMounts(5, tuple(mounts))
    for torn in ('{"version": 1, "counter": 5, "mounts": [{"type": "virtiofs"}]}',
                 '{"version": 1, "counter": -1, "mounts": []}',
                 '{"version": 1, "counter": 1, "mounts": [{"location": "/a", "mountPoint": '
                 '"/b", "type": "9p", "tag": "t", "deviceId": "d"}]}',
                 '{"version": 9, "counter": 1}', '{"vers', "[]"):
        (tmp_path / state.FILENAME).write_text(torn)
        with pytest.raises(MountStateError, match=r"mounts\.json is unreadable"):
            state.load(tmp_path)


async def test_a_successor_gets_the_mounts_and_reuses_no_tag_device_or_slot(
        tmp_path: Path) -> None:
    first = manager(tmp_path)
    # What add() records for two hot-mounts (the plugging is e2e's), then saves.
    for point, slot in (("/mnt/a", True), ("/mnt/b", False)):
        rec = first._new_record("/srv", point, "virtiofs" if slot else "reverse-sshfs", True)
        rec.slot = first._free_slot() if slot else None
        first.records[point] = rec
        first._save()
    first.records["/mnt/b"].error = "sftp-server was killed by signal 9"
    first._save()
    before = first.listing()

    heir = manager(tmp_path)
    heir.restore_runtime()
    assert heir.listing() == before
    assert heir.records["/mnt/a"].slot == "hp0"
    nxt = heir._new_record("/srv", "/mnt/c", "virtiofs", False)
    assert (nxt.tag, nxt.device_id) == ("roost-hot3", "hot3")
    assert heir._free_slot() == "hp1"  # hp0 stays with /mnt/a
    # The number handed out is on disk before the device is plugged.
    assert json.loads((tmp_path / state.FILENAME).read_text())["counter"] == 3


async def test_a_torn_state_file_still_reserves_every_device_number(tmp_path: Path) -> None:
    for name in ("hot7.vfs.log", "hot2.vfs.sock.pid", "mnt0.vfs.log"):
        (tmp_path / name).write_text("")
    (tmp_path / state.FILENAME).write_text('{"version": 1, "coun')
    heir = manager(tmp_path)
    with pytest.raises(MountStateError):
        heir.restore_runtime()
    assert heir._new_record("/srv", "/mnt/x", "virtiofs", False).device_id == "hot8"


async def test_pidfd_wait_sees_a_process_that_is_not_a_waited_child_end() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    pidfd = open_pidfd(proc.pid)
    assert pidfd is not None
    try:
        waiter = asyncio.ensure_future(wait_pidfd(pidfd))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(waiter, 5)
    finally:
        os.close(pidfd)
        proc.wait()
    assert how_it_ended(proc.returncode) == "was killed by signal 9"
    assert how_it_ended(3) == "exited with status 3" and how_it_ended(None) == "exited"


def _static_share(tmp_path: Path) -> MountRecord:
    share = tmp_path / "share"
    share.mkdir(exist_ok=True)
    return MountRecord(location=str(share), mount_point="/mnt/s", type="virtiofs",
                       writable=False, ephemeral=False, tag="roost0", device_id="mnt0",
                       slot="mnt0-port")


async def _failure(failed: asyncio.Queue[MountRecord], seconds: float = 5) -> MountRecord:
    return await asyncio.wait_for(failed.get(), seconds)


async def test_a_killed_virtiofsd_fails_its_share_at_once_whoever_started_it(
        tmp_path: Path) -> None:
    assert find_virtiofsd() is not None and os.geteuid() == 0, \
        "scripts/setup.sh installs virtiofsd"
    first = manager(tmp_path, [_static_share(tmp_path)])
    failed: asyncio.Queue[MountRecord] = asyncio.Queue()
    first.on_failure = failed.put_nowait
    await first.start_static_daemons()
    daemon = first.records["/mnt/s"].virtiofsd
    assert daemon is not None and daemon.pid is not None
    try:
        # A host agent that takes over (the first one "died": it stops watching).
        first._watching = False
        heir = manager(tmp_path, [_static_share(tmp_path)])
        heir.on_failure = failed.put_nowait
        heir.adopt_daemons()
        adopted = heir.records["/mnt/s"].virtiofsd
        assert adopted is not None and adopted.pid == daemon.pid and failed.empty()
        os.kill(daemon.pid, signal.SIGKILL)
        rec = await _failure(failed)
        assert rec is heir.records["/mnt/s"] and "virtiofsd (pid" in rec.error
        assert "/mnt/s exited; restart the instance" in rec.error
        assert heir.listing()[0]["state"] == "failed"
        assert failed.empty()  # the first host agent, no longer watching, said nothing
        await heir.stop_daemons()
    finally:
        await first.stop_daemons()
    assert not pid_running(daemon.pid)

    # Its own child: the exit status is known.
    third = manager(tmp_path, [_static_share(tmp_path)])
    third.on_failure = failed.put_nowait
    await third.start_static_daemons()
    own = third.records["/mnt/s"].virtiofsd
    assert own is not None and own.pid is not None
    os.kill(own.pid, signal.SIGKILL)
    assert "was killed by signal 9" in (await _failure(failed)).error
    await third.stop_daemons()


async def test_an_expected_end_is_no_failure(tmp_path: Path) -> None:
    vm = {"running": True}
    mounts = manager(tmp_path, [_static_share(tmp_path)])
    mounts.vm_running = lambda: vm["running"]
    failed: asyncio.Queue[MountRecord] = asyncio.Queue()
    mounts.on_failure = failed.put_nowait
    await mounts.start_static_daemons()
    daemon = mounts.records["/mnt/s"].virtiofsd
    assert daemon is not None and daemon.pid is not None
    vm["running"] = False  # QEMU went first: its daemons end with it
    os.kill(daemon.pid, signal.SIGKILL)
    with pytest.raises(TimeoutError):
        await _failure(failed, 1.5)
    await mounts.stop_daemons()
    await mounts.start_static_daemons()  # and stopping them on purpose says nothing
    await mounts.unwatch_all()
    await mounts.stop_daemons()
    assert failed.empty() and not mounts.records["/mnt/s"].error


def test_the_guest_finds_a_mounts_device_without_touching_it() -> None:
    from roost_guest import mounts as guest_mounts

    info = guest_mounts.mount_info("/proc")
    assert info is not None and info[1] == "proc"
    dev = os.stat("/proc").st_dev
    assert info[0] == f"{os.major(dev)}:{os.minor(dev)}"
    assert guest_mounts.mount_info("/no/such/mount") is None
    assert guest_mounts.abort_fuse("/proc") is False  # only FUSE shares are aborted


async def test_a_takeover_fails_what_it_cannot_adopt_and_says_why(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs
    state.save(tmp_path, 2, [
        SavedMount(location="/srv/a", mount_point="/mnt/a", type="virtiofs", writable=False,
                   tag="roost-hot1", device_id="hot1", slot="hp0", virtiofsd_pid=gone.pid),
        SavedMount(location="/srv/b", mount_point="/mnt/b", type="reverse-sshfs",
                   writable=True, tag="roost-hot2", device_id="hot2")])
    heir = manager(tmp_path)
    failed: list[MountRecord] = []
    heir.on_failure = failed.append
    heir.restore_runtime()
    heir.adopt_daemons()
    assert [r.mount_point for r in failed] == ["/mnt/a", "/mnt/b"]
    assert "did not outlive the host agent" in failed[0].error
    assert "lost its SFTP server with the host agent" in failed[1].error
    assert [m["state"] for m in heir.listing()] == ["failed", "failed"]
    # Failed is saved too: the next successor knows without trying again.
    again = manager(tmp_path)
    again.restore_runtime()
    assert again.listing() == heir.listing()
