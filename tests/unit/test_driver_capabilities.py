"""Optional driver capabilities are found with isinstance(): QEMU has them
all; the host agent copes with a driver that has none."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from roost.driver.base import (
    Driver,
    FileSystemHotplug,
    Suspendable,
    SuspendableDriver,
    VMSnapshots,
)
from roost.driver.qemu.cmdline import BootSpec, QemuSpec
from roost.driver.qemu.driver import QemuDriver
from roost.errors import UsageError
from roost.hostagent.guestagent import GuestAgentClient
from roost.hostagent.mounts.manager import MountManager


def qemu(tmp: Path) -> QemuDriver:
    spec = QemuSpec(name="dev", qemu="qemu-system-x86_64", accel="tcg", cpus=1, memory=1024**3,
                    disk=tmp / "d", cidata=tmp / "c", ssh_port=1, qmp_sock=tmp / "q",
                    ga_sock=tmp / "g", serial_sock=tmp / "s", serial_log=tmp / "l",
                    pidfile=tmp / "p", boot=BootSpec())
    return QemuDriver(spec, tmp / "qemu.log")


def test_qemu_has_every_capability(tmp_path: Path) -> None:
    driver = qemu(tmp_path)
    for capability in (Driver, FileSystemHotplug, VMSnapshots, Suspendable, SuspendableDriver):
        assert isinstance(driver, capability), capability.__name__
    assert driver.hotplug_slots() == tuple(f"hp{i}" for i in range(8))


class _BareDriver:
    """Only what every driver has (the Driver protocol's methods)."""

    async def start(self) -> None: ...
    async def attach(self, pid: int) -> None: ...
    async def wait(self) -> int | None: ...
    async def stop(self, graceful: bool = True) -> None: ...
    def info(self) -> object: ...
    def guest_agent_dialer(self) -> object: ...


def test_a_driver_without_capabilities_is_told_apart() -> None:
    bare = _BareDriver()
    assert isinstance(bare, Driver)
    assert not any(isinstance(bare, c) for c in (FileSystemHotplug, VMSnapshots, Suspendable))


def test_virtiofs_hot_mount_without_hot_plug_is_refused(tmp_path: Path) -> None:
    async def no_agent() -> GuestAgentClient:
        raise AssertionError("the guest is not asked when the device cannot be plugged")

    mounts = MountManager(tmp_path, None, no_agent, [], default_type="virtiofs")
    with pytest.raises(UsageError, match=r"cannot plug file systems.*reverse-sshfs"):
        asyncio.run(mounts.add(str(tmp_path), "/mnt/x", "", True))
    assert mounts.listing() == []
    assert not list(tmp_path.glob("*.vfs.*"))  # no virtiofsd was started
