"""Suspend and resume: the guest comes back as it was, fast."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    START_TIMEOUT,
    STATIC_RO_GUEST,
    STATIC_RW_GUEST,
    Roost,
    small_vm,
    static_share,
    virtiofsd_pids,
    wait_until,
)


@pytest.fixture(scope="module")
def sleeper(roost: Roost, vm: str) -> Iterator[str]:
    with small_vm(roost, "sleeper") as name:
        yield name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_suspend_resume_keeps_files_processes_mounts_and_ports(
        roost: Roost, sleeper: str, tmp_path: Path) -> None:
    share = tmp_path / "s"
    share.mkdir()
    (share / "f.txt").write_text("shared\n")
    roost.run("mount", "add", sleeper, str(share), "/mnt/s", "--type", "virtiofs")
    port = free_port()
    roost.run("shell", sleeper, "--", "sh", "-c",
              f"echo kept > kept; sync; "
              f"python3 -m http.server {port} --bind 127.0.0.1 </dev/null >/dev/null 2>&1 & "
              "echo $! > server.pid")

    def port_open() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(port_open, 10, "the forward before suspend")
    out = roost.run("suspend", sleeper, timeout=300).stdout
    assert "suspended" in out
    assert roost.ls()[sleeper]["status"] == "Suspended"
    # Device state in vmstate.bin; the RAM in use beside it, sparse (no ram.bin any more).
    inst = roost.home / sleeper
    assert (inst / "vmstate.bin").stat().st_size < 8 << 20
    image = (inst / "vmstate.ram").stat()
    assert image.st_size == 512 << 20
    assert 16 << 20 < image.st_blocks * 512 < 384 << 20
    assert not (inst / "ram.bin").exists()
    assert not port_open()
    stop = roost.run("stop", sleeper, check=False)
    assert stop.returncode != 0 and "roost resume" in stop.stderr
    started = time.monotonic()
    roost.run("resume", sleeper, timeout=300)
    assert time.monotonic() - started < 30
    assert roost.run("shell", sleeper, "--", "cat", "kept").stdout == "kept\n"
    assert roost.run("shell", sleeper, "--", "sh", "-c",
                     "kill -0 $(cat server.pid) && echo alive").stdout == "alive\n"
    assert roost.run("shell", sleeper, "--", "cat", "/mnt/s/f.txt").stdout == "shared\n"
    wait_until(port_open, 10, "the forward after resume")
    assert not (inst / "vmstate.bin").exists() and not (inst / "vmstate.ram").exists()
    # Only the pages saved were given back to the guest: QEMU holds about as
    # much guest RAM as before, not all 512 MiB of it.
    shmem = qemu_status_kib(inst, "RssShmem") << 10
    assert shmem < image.st_blocks * 512 + (64 << 20), shmem
    # A snapshot of the resumed VM holds its RAM (the save's x-ignore-shared is off).
    roost.run("mount", "remove", sleeper, "/mnt/s")  # virtiofs blocks saving VM state
    roost.run("snapshot", "create", sleeper, "--tag", "resumed", timeout=300)
    snaps = json.loads(roost.run("snapshot", "list", sleeper, "--json").stdout)
    assert next(s["vmStateSize"] for s in snaps if s["tag"] == "resumed") > 16 << 20
    roost.run("snapshot", "delete", sleeper, "--tag", "resumed", timeout=120)
    roost.run("stop", sleeper, timeout=120)
    assert not (roost.home / sleeper / "ram.bin").exists()  # a stopped VM keeps no RAM file
    roost.run("start", sleeper, "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 30)


def qemu_status_kib(inst: Path, field: str) -> int:
    pid = int((inst / "qemu.pid").read_text())
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in QEMU's /proc status")


def test_resume_with_a_broken_config_keeps_the_saved_state(roost: Roost, sleeper: str) -> None:
    roost.run("shell", sleeper, "--", "sh", "-c", "echo before > state; sync")
    roost.run("suspend", sleeper, timeout=300)
    config = roost.home / sleeper / "roost.yaml"
    good = config.read_text()
    config.write_text(good + "cpus: many\n")
    try:
        proc = roost.run("resume", sleeper, check=False, timeout=300)
        assert proc.returncode == 1 and "cpus" in proc.stderr
        # The loaded VM never ran: the saved state is kept for another try.
        assert roost.ls()[sleeper]["status"] == "Suspended"
        assert (roost.home / sleeper / "vmstate.bin").exists()
        assert (roost.home / sleeper / "vmstate.ram").exists()
        assert not (roost.home / sleeper / "qemu.pid").exists()
    finally:
        config.write_text(good)
    roost.run("resume", sleeper, timeout=300)
    assert roost.run("shell", sleeper, "--", "cat", "state").stdout == "before\n"


def test_stop_force_drops_the_saved_state(roost: Roost, sleeper: str) -> None:
    roost.run("shell", sleeper, "--", "sh", "-c", "echo on-disk > disk; sync")
    roost.run("suspend", sleeper, timeout=300)
    out = roost.run("stop", "--force", sleeper).stdout
    assert "saved state dropped" in out
    assert roost.ls()[sleeper]["status"] == "Stopped"
    assert not any((roost.home / sleeper / f).exists()
                   for f in ("ram.bin", "vmstate.bin", "vmstate.ram", "suspended.json"))
    roost.run("start", sleeper, "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 30)
    assert roost.run("shell", sleeper, "--", "cat", "disk").stdout == "on-disk\n"


def test_suspend_resume_with_static_virtiofs_shares(roost: Roost, vm: str) -> None:
    # roost.yaml's virtiofs devices block saving the VM state: they are
    # unplugged for the save and plugged and mounted again after the restore.
    (static_share(roost, "rw") / "before.txt").write_text("before\n")
    out = roost.run("suspend", vm, timeout=300).stdout
    assert STATIC_RW_GUEST in out and STATIC_RO_GUEST in out
    assert virtiofsd_pids(roost, vm) == []  # none left running while suspended
    roost.run("resume", vm, timeout=300)
    listed = {m["mountPoint"]: m for m in json.loads(
        roost.run("mount", "list", vm, "--json").stdout)}
    assert listed[STATIC_RW_GUEST]["state"] == "mounted"
    assert roost.run("shell", vm, "--", "cat", f"{STATIC_RW_GUEST}/before.txt").stdout \
        == "before\n"
    roost.run("shell", vm, "--", "sh", "-c", f"echo after > {STATIC_RW_GUEST}/after.txt")
    assert (static_share(roost, "rw") / "after.txt").read_text() == "after\n"
    assert roost.run("shell", vm, "--", "cat", f"{STATIC_RO_GUEST}/hello.txt").stdout \
        == "static hello\n"


def test_resume_needs_a_suspended_instance(roost: Roost, sleeper: str) -> None:
    proc = roost.run("resume", sleeper, check=False)
    assert proc.returncode != 0 and "not suspended" in proc.stderr
