"""The driver interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

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


@dataclass(frozen=True)
class DriverInfo:
    name: str
    accel: str
    ssh: SSHAddress
    guest_agent: str  # how the agent is reached, e.g. "virtio-serial:/path/ga.sock"
    pid: int | None = None
    capabilities: list[str] = field(default_factory=list)


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
    security_model: str = "none"  # 9p


@dataclass(frozen=True)
class VMDescription:
    """What VM to run, as the host agent knows it: the driver builds its
    machine from this (QEMU: roost.driver.qemu.machine)."""

    inst: Instance  # its files: disk, cidata, sockets, logs, RAM file, saved state
    config: Config  # cpus, memory, CPU model, firmware, read-only root
    image: PinnedImage  # what boots
    ssh_port: int  # on the host's 127.0.0.1
    shares: tuple[Share, ...] = ()
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
class VMSnapshots(Protocol):
    """Optional capability: snapshots of a running VM."""

    async def snapshot_save(self, tag: str) -> str:
        """Save as `tag`; "vm" with VM state, "disk" when only the disk could be."""

    async def snapshot_load(self, tag: str) -> None:
        """Go back to `tag` (it must hold VM state)."""

    async def snapshot_delete(self, tag: str) -> None:
        """Delete `tag`."""
