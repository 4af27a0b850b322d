"""The driver interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from roost.driver.channel import Dialer
from roost.errors import RoostError


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
