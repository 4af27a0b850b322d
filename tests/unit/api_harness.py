"""The host agent's API served for tests: a real aiohttp server on a Unix
socket, the real guest agent (started on the host) behind a driver with no
optional capability, real checkpoints; the caller picks the mounts (such as
RecordedMounts, which only records)."""

from __future__ import annotations

import io
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from roost.driver.base import DriverInfo, SSHAddress
from roost.driver.channel import Dialer, UnixDialer
from roost.errors import UsageError
from roost.hostagent.api import ApiServer, Mounts
from roost.hostagent.checkpoint import Checkpoints
from roost.hostagent.events import EventEmitter
from roost.hostagent.session import GuestAgentSession
from roost.store.instance import Instance


def _mount_record(location: str, mount_point: str, kind: str, writable: bool
                  ) -> dict[str, Any]:
    return {"location": location, "mountPoint": mount_point, "type": kind or "virtiofs",
            "writable": writable, "ephemeral": True, "state": "mounted"}


@dataclass
class RecordedMounts:
    """The Mounts protocol, keeping what it was asked: it touches no file."""

    added: list[tuple[str, str, str, bool]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    forced: list[bool] = field(default_factory=list)

    def listing(self) -> list[dict[str, Any]]:
        return [_mount_record(*added) for added in self.added]

    async def add(self, location: str, mount_point: str, kind: str,
                  writable: bool) -> dict[str, Any]:
        self.added.append((location, mount_point, kind, writable))
        return _mount_record(location, mount_point, kind, writable)

    async def remove(self, mount_point: str, force: bool = False) -> dict[str, Any]:
        if mount_point not in [m[1] for m in self.added]:
            raise UsageError(f"nothing is mounted at {mount_point}")
        self.removed.append(mount_point)
        self.forced.append(force)
        return {"mountPoint": mount_point}


class CapabilityLessDriver:
    """A driver with the Driver protocol only: no hot-plug, snapshots or suspend."""

    def __init__(self, agent_sock: str) -> None:
        self.agent_sock = agent_sock

    async def start(self) -> None: ...
    async def attach(self, pid: int) -> None: ...
    async def wait(self) -> int | None: ...
    async def stop(self, graceful: bool = True) -> None: ...

    def info(self) -> DriverInfo:
        return DriverInfo("plain", "tcg", SSHAddress("127.0.0.1", 22), self.agent_sock)

    def guest_agent_dialer(self) -> Dialer:
        return UnixDialer(self.agent_sock)


@dataclass
class Served:
    http: aiohttp.ClientSession
    server: ApiServer
    guest: GuestAgentSession
    inst: Instance


@asynccontextmanager
async def served_api(agent_sock: str,
                     make_mounts: Callable[[Instance, GuestAgentSession], Mounts],
                     allow_files: bool = True) -> AsyncIterator[Served]:
    """The API of instance "dev" (ROOST_HOME set by the caller) on its socket."""
    inst = Instance.at("dev")
    inst.dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(inst.disk), "16M"],
                   check=True)
    driver = CapabilityLessDriver(agent_sock)
    events = EventEmitter(io.StringIO())
    guest = GuestAgentSession(driver.guest_agent_dialer(), events, instance="dev",
                              allow_exec=True, changed=lambda: None, allow_files=allow_files)
    mounts = make_mounts(inst, guest)

    async def no_ssh() -> None:
        raise AssertionError("not reached without snapshots")

    checkpoints = Checkpoints(inst, driver, guest, mounts, events,  # type: ignore[arg-type]
                              identity={}, stop=lambda: None, wait_ssh=no_ssh)
    server = ApiServer(lambda: {"name": "dev"}, events.snapshot, mounts, guest, checkpoints)
    await server.start(inst.ha_sock)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(str(inst.ha_sock)),
                                         base_url="http://roost") as http:
            yield Served(http, server, guest, inst)
    finally:
        await server.close(inst.ha_sock)
        await guest.drop()
