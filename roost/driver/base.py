"""The driver interface: `Driver`, which every driver is, and the optional
capabilities as protocols of their own, found with isinstance()."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from roost.driver.channel import Dialer
from roost.errors import RoostError

if TYPE_CHECKING:
    from roost.config.model import Config
    from roost.image.disk import PinnedImage
    from roost.store.instance import Instance


class DriverError(RoostError):
    """The VM could not be started or controlled."""


@dataclass(frozen=True)
class SSHAddress:
    host: str
    port: int


# Where sshd listens inside the guest (the host forwards a port of its own to it).
GUEST_SSH_PORT = 22


@dataclass(frozen=True)
class DriverInfo:
    name: str
    accel: str
    ssh: SSHAddress
    guest_agent: str  # how the agent is reached, e.g. "virtio-serial:/path/ga.sock"
    pid: int | None = None
    capabilities: list[str] = field(default_factory=list)


def free_port() -> int:
    """A TCP port free on the host's loopback now, for the guest's SSH forward."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mac_address(name: str) -> str:
    """The guest NIC's MAC, whatever the driver: the cidata network config
    names it. Stable per instance, in the locally administered range Lima uses."""
    digest = hashlib.sha256(name.encode()).digest()
    return "52:55:55:" + ":".join(f"{b:02x}" for b in digest[:3])


@dataclass(frozen=True)
class Share:
    """A host folder the VM has from launch (one of roost.yaml's mounts).

    Plain facts, in no driver's terms: the driver decides what device
    serves it.
    """

    id: str  # names the share's device
    type: str  # "virtiofs" (served by a virtiofsd on `socket`) or "9p"
    tag: str  # what the guest mounts it by
    host_path: str
    writable: bool
    socket: Path | None = None  # virtiofs
    # virtiofs: a hot-plug place of its own, so that a suspend can unplug it.
    slot: str | None = None
    queue_size: int = 1024  # virtiofs
    security_model: str = "mapped-xattr"  # 9p


@dataclass(frozen=True)
class DataDisk:
    """One of roost.yaml's additionalDisks: the guest finds it by `name`
    (the virtio-blk serial)."""

    name: str
    path: Path
    format: str  # "qcow2" or "raw"


@dataclass(frozen=True)
class VMDescription:
    """What VM to run, as the host agent knows it: the driver builds its
    machine from this (QEMU: roost.driver.qemu.machine)."""

    inst: Instance  # its files: disk, cidata, sockets, logs, RAM file, saved state
    config: Config  # cpus, memory, CPU model, firmware, read-only root
    image: PinnedImage  # what boots
    ssh_port: int  # on the host's 127.0.0.1
    shares: tuple[Share, ...] = ()
    disks: tuple[DataDisk, ...] = ()
    # The VM that suspend saved into inst.vmstate: loaded, not booted.
    restore: bool = False


@runtime_checkable
class Driver(Protocol):
    async def start(self) -> None:
        """Launch the VM; return once its process runs and is controllable."""

    async def attach(self, pid: int) -> None:
        """Take control of a VM process left running by a previous host agent."""

    async def wait(self) -> int | None:
        """Wait for the VM process to exit; its exit status if known."""

    async def stop(self, graceful: bool = True) -> None:
        """Stop the VM: an orderly guest shutdown first when graceful."""

    def info(self) -> DriverInfo:
        """Static facts and capabilities of this VM."""

    def guest_agent_dialer(self) -> Dialer:
        """How to open a byte stream to the guest agent."""


@runtime_checkable
class Resettable(Protocol):
    """Optional capability: a hard reset, as of a machine's reset button."""

    async def reset(self) -> None:
        """Reset the VM's CPUs and devices; it boots again from its firmware.
        Until end_resets(), a reset the guest asks for resets it too (rather
        than ending the VM, as a guest's reboot otherwise does)."""

    async def end_resets(self) -> None:
        """A reset the guest asks for ends the VM again."""


@runtime_checkable
class VMSnapshots(Protocol):
    """Optional capability: snapshots of a running VM."""

    async def snapshot_save(self, tag: str) -> str:
        """Save as `tag`; "vm" with VM state, "disk" when only the disk could be."""

    async def snapshot_load(self, tag: str) -> None:
        """Go back to `tag` (it must hold VM state)."""

    async def snapshot_delete(self, tag: str) -> None:
        """Delete `tag`."""

    def machine_at_snapshot(self, tag: str) -> dict[str, Any]:
        """What builds this machine again to load `tag` (a fork from it), as JSON."""

    async def copy_disk(self, dest: Path) -> None:
        """A consistent copy of the VM's disk at `dest` while it runs."""


@runtime_checkable
class FileSystemHotplug(Protocol):
    """Optional capability: file-system devices plugged into the running VM."""

    def hotplug_slots(self) -> tuple[str, ...]:
        """Where hot-plugged shares can go, in the order to use them."""

    async def hotplug_virtiofs(self, share: Share) -> None:
        """A virtiofs device for `share` at share.slot; its virtiofsd serves share.socket."""

    async def unplug(self, device_id: str, timeout: float = 10.0) -> None:
        """Take the device out; return once the guest has released it."""


@runtime_checkable
class Suspendable(Protocol):
    """Optional capability: the VM's state saved into a file, and a VM
    restored from it later (roost suspend, roost resume)."""

    async def save_state(self, path: Path, timeout: float = 120.0) -> float:
        """Save the VM's state into `path`; the VM ends paused. Seconds taken.
        Returns only once the state (and any guest RAM file it goes with) is
        on disk: fsynced, file and directory."""

    async def continue_running(self) -> None:
        """Let the VM run on after a save that failed (it may be left paused)."""

    async def resume_interrupted_save(self) -> bool:
        """A VM taken over paused, its save never finished (the host agent
        that saved it died): the save cancelled and the VM running on.
        False when it was running."""

    def machine_as_saved(self, state: Path) -> dict[str, Any]:
        """suspended.json's entries from which restore_driver() builds this
        machine again, to load `state` (what save_state() wrote)."""

    async def run_loaded(self, timeout: float = 120.0) -> None:
        """A restored VM: once its saved state is loaded, let it run."""

    def discard_ram_file(self) -> None:
        """Delete the guest RAM file, which only a saved state needs."""


@dataclass(frozen=True)
class DiskError:
    """The VM's disk failed a guest request on the host side."""

    device: str
    operation: str  # "read" or "write"
    nospace: bool  # the host file system is full (ENOSPC)
    paused: bool  # the VM was stopped for it, the request held to be retried
    reason: str


@runtime_checkable
class PausesOnFullDisk(Protocol):
    """Optional capability: a guest write that finds the host file system
    full pauses the VM (its request held, nothing lost) instead of failing
    inside the guest; the host agent continues it once there is room."""

    def disk_errors(self) -> AsyncIterator[DiskError]:
        """The disk errors as they happen, for as long as the VM runs."""

    async def paused_on_disk_error(self) -> bool:
        """Whether the VM is paused by a disk error now (one that happened
        before this host agent took the VM over, too)."""

    async def continue_running(self) -> None:
        """Let the VM run on: its held requests are tried again."""


@runtime_checkable
class SuspendableDriver(Driver, Suspendable, Protocol):
    """What restore_driver() gives: a driver loading a saved state."""
