"""AsyncSandbox: one roost instance driven from asyncio.

Made of the operations layer (roost.ops, run in a worker thread: they
block on processes and locks) and of the host agent's API (commands,
files, ports: roost.sdk.transport). A sandbox is an ordinary instance:
`roost ls`, `roost shell` and the rest see it as any other.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from roost.errors import AlreadyExists, UsageError, WrongState
from roost.ops import instances, snapshots
from roost.ops import start as starting
from roost.sdk.commands import Commands
from roost.sdk.files import Files
from roost.sdk.transport import HostAgentTransport
from roost.store.instance import Instance, Status, validate_name

DEFAULT_TEMPLATE = "default"
START_TIMEOUT = 600.0


@dataclass(frozen=True)
class Port:
    """A guest port forwarded to the host: connect to host_addr."""

    protocol: Literal["tcp", "udp"]
    guest_addr: str  # "0.0.0.0:8080" as the guest listens
    host_addr: str  # "127.0.0.1:8080"
    via: str  # "agent" (the guest agent's tunnel) or "ssh"

    @property
    def host_port(self) -> int:
        return int(self.host_addr.rsplit(":", 1)[1])

    @property
    def guest_port(self) -> int:
        return int(self.guest_addr.rsplit(":", 1)[1])


@dataclass(frozen=True)
class Snapshot:
    """A snapshot of a sandbox's disk (and VM state when taken running)."""

    sandbox: str
    tag: str
    kind: Literal["vm", "disk", "disk-only"]


@dataclass(frozen=True)
class Paused:
    seconds: float
    save_seconds: float


def _creation_sets(env: Mapping[str, str] | None, timeout: float | None,
                   timeout_action: str, allow_exec: bool, allow_files: bool,
                   internet: bool | None, allow_out: Sequence[str] | None,
                   sets: Sequence[str]) -> list[str]:
    """roost.yaml keys the SDK's arguments set (--set syntax: YAML values)."""
    out = [f"guestAgent.allowExec={json.dumps(allow_exec)}",
           f"guestAgent.allowFiles={json.dumps(allow_files)}"]
    if env:
        out.append(f"env={json.dumps(dict(env))}")
    if timeout is not None:
        out.append(f"lifecycle.timeout={json.dumps({'after': timeout, 'action': timeout_action})}")
    if allow_out is not None:
        out.append(f"network.allowOut={json.dumps(list(allow_out))}")
        if internet is None:
            internet = False  # the list is the exception to being cut off
    if internet is not None:
        out.append(f"network.internet={json.dumps(internet)}")
    return [*out, *sets]


def _configured_env(inst: Instance) -> dict[str, str]:
    """roost.yaml's env: commands run through the guest agent get it too."""
    import yaml

    try:
        config = yaml.safe_load(inst.config.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(config, dict):
        return {}
    out: dict[str, str] = {}
    network = config.get("network")
    if isinstance(network, dict) and network.get("allowOut"):
        from roost.cidata.proxyenv import egress_proxy_env

        out.update(egress_proxy_env())  # as logins get it (HostAgent._guest_env)
    env = config.get("env")
    if isinstance(env, dict):
        out.update({str(k): str(v) for k, v in env.items()})
    return out


class AsyncSandbox:
    """A running instance: `await AsyncSandbox.create()` or `.connect(name)`.

    `async with await AsyncSandbox.create() as sb:` deletes it at the end.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.instance = Instance.at(name)
        self._transport = HostAgentTransport(self.instance.ha_sock)
        self.commands = Commands(self._transport, _configured_env(self.instance))
        self.files = Files(self._transport)

    def __repr__(self) -> str:
        return f"AsyncSandbox({self.name!r})"

    # -- making one --------------------------------------------------------------

    @classmethod
    async def create(cls, template: str | None = DEFAULT_TEMPLATE, *, name: str | None = None,
                     cpus: int | None = None, memory: str | int | None = None,
                     disk: str | int | None = None, env: Mapping[str, str] | None = None,
                     timeout: float | None = None,
                     timeout_action: Literal["delete", "suspend", "stop"] = "delete",
                     allow_exec: bool = True, allow_files: bool = True,
                     internet: bool | None = None, allow_out: Sequence[str] | None = None,
                     config_file: str | None = None,
                     sets: Sequence[str] = (), start_timeout: float = START_TIMEOUT,
                     ) -> AsyncSandbox:
        """A new instance from `template` (or `config_file`), started.

        `env`: environment of its processes; `timeout`: seconds from Running
        until the host agent deletes it (or `timeout_action`); `internet`:
        False cuts it off the network; `allow_out`: what it may still reach
        through the egress proxy (network.allowOut: names, *.wildcards,
        addresses, CIDRs; cuts it off unless `internet` says otherwise);
        `sets`: further roost.yaml keys
        ("mounts[0].writable=true"). Commands and files go through the
        guest agent, so exec and files are allowed unless said otherwise.
        """
        name = validate_name(name) if name else f"sb-{secrets.token_hex(4)}"
        if Instance.at(name).exists():
            raise AlreadyExists(f"an instance named {name!r} exists already; "
                                f"AsyncSandbox.connect({name!r}) attaches to it")
        all_sets = _creation_sets(env, timeout, timeout_action, allow_exec, allow_files,
                                  internet, allow_out, sets)
        source = None if config_file else template
        try:
            await asyncio.to_thread(
                starting.start, name, config_file, start_timeout, template=source,
                sets=all_sets, cpus=cpus, memory=memory, disk=disk)
        except Exception:
            # Nothing half-made is left for the caller: it never had the sandbox
            # (made by this call: the name was free).
            await asyncio.to_thread(_delete_quietly, name)
            raise
        return cls(name)

    @classmethod
    async def connect(cls, name: str, *, resume: bool = True, start: bool = False,
                      start_timeout: float = START_TIMEOUT) -> AsyncSandbox:
        """An existing sandbox, running: a suspended one is resumed (unless
        resume=False), a stopped one started only with start=True."""
        inst = Instance.at(validate_name(name)).require()
        status = inst.status()
        if status == Status.STARTING:
            await _wait_running(inst, start_timeout)
        elif (status == Status.SUSPENDED and resume) or status == Status.BROKEN \
                or (status == Status.STOPPED and start):
            await asyncio.to_thread(starting.start, name, None, start_timeout)
        elif status != Status.RUNNING:
            raise WrongState(f"sandbox {name!r} is {status.value.lower()}; connect with "
                             f"{'resume' if status == Status.SUSPENDED else 'start'}=True "
                             "to bring it back", status.value)
        return cls(name)

    @classmethod
    async def fork(cls, source: str | AsyncSandbox | Snapshot, *, name: str | None = None,
                   start_timeout: float = START_TIMEOUT) -> AsyncSandbox:
        """A new sandbox from a suspended or stopped one (`source`, or its
        name), or from a snapshot of one, started, with a machine identity of
        its own (instance-id, SSH host keys, MAC, host name) and its own
        copy-on-write disk. From a suspended source, or a snapshot taken
        while it ran, it runs on from the saved memory, without a boot; from
        a stopped one, or a snapshot of the disk alone, it boots. The source
        is left as it was (roost.ops.fork); a snapshot's source may be
        running (it is paused while its disk is copied)."""
        from roost.ops import fork as forking

        tag = source.tag if isinstance(source, Snapshot) else None
        old = source.name if isinstance(source, AsyncSandbox) else \
            source.sandbox if isinstance(source, Snapshot) else validate_name(source)
        new = validate_name(name) if name else f"sb-{secrets.token_hex(4)}"
        await asyncio.to_thread(forking.fork, old, new, tag)
        try:
            await asyncio.to_thread(starting.start, new, None, start_timeout)
        except Exception:
            await asyncio.to_thread(_delete_quietly, new)
            raise
        return cls(new)

    # -- its life ----------------------------------------------------------------

    def status(self) -> Status:
        return self.instance.status()

    async def pause(self) -> Paused:
        """Suspend it to disk: its memory saved, the VM gone; resume() or
        connect() brings it back where it was."""
        await self._transport.close()
        done = await asyncio.to_thread(instances.suspend, self.name)
        return Paused(done.seconds, done.save_seconds)

    async def resume(self, start_timeout: float = START_TIMEOUT) -> None:
        status = self.instance.status()
        if status != Status.SUSPENDED:
            raise WrongState(f"sandbox {self.name!r} is {status.value.lower()}, not paused",
                             status.value)
        await asyncio.to_thread(starting.start, self.name, None, start_timeout)

    async def snapshot(self, tag: str | None = None) -> Snapshot:
        """A snapshot: with the VM's memory while it runs (qcow2, in its disk)."""
        tag = tag or time.strftime("sdk-%Y%m%d-%H%M%S")
        kind = await asyncio.to_thread(snapshots.create, self.name, tag)
        return Snapshot(self.name, tag, kind)

    async def restore(self, snapshot: Snapshot | str) -> None:
        """Back to a snapshot of this sandbox (a running VM jumps back with its memory)."""
        tag = snapshot.tag if isinstance(snapshot, Snapshot) else snapshot
        if isinstance(snapshot, Snapshot) and snapshot.sandbox != self.name:
            raise UsageError(f"snapshot {tag!r} is of {snapshot.sandbox!r}, not {self.name!r}; "
                             "AsyncSandbox.fork makes a new sandbox from another")
        await asyncio.to_thread(snapshots.apply, self.name, tag)

    async def stop(self, force: bool = False) -> None:
        await self._transport.close()
        await asyncio.to_thread(instances.stop, self.name, force)

    async def kill(self) -> None:
        """Delete it: the VM stops at once and its disk is gone."""
        await self._transport.close()
        await asyncio.to_thread(_delete_quietly, self.name)

    async def ports(self) -> list[Port]:
        """The guest's listening ports forwarded to the host, with their addresses."""
        info = await self._transport.json("GET", "/v1/info")
        return [Port(p.get("protocol", "tcp"), str(p.get("guestAddr", "")),
                     str(p.get("hostAddr", "")), str(p.get("via", "")))
                for p in info.get("portForwards", []) if "hostAddr" in p]

    async def info(self) -> dict[str, Any]:
        """The host agent's /v1/info: driver, requirements, forwards, mounts, status."""
        info: dict[str, Any] = await self._transport.json("GET", "/v1/info")
        return info

    async def close(self) -> None:
        """Let go of its connections; the sandbox runs on."""
        await self._transport.close()

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.kill()


def _delete_quietly(name: str) -> None:
    """Delete `name` if it exists (a protected one is kept: roost refuses)."""
    if Instance.at(name).exists():
        instances.delete(name, force=True)


async def _wait_running(inst: Instance, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while inst.status() == Status.STARTING:
        if time.monotonic() > deadline:
            raise WrongState(f"sandbox {inst.name!r} is still starting after {timeout:g}s",
                             Status.STARTING.value)
        await asyncio.sleep(0.1)
    status = inst.status()
    if status != Status.RUNNING:
        raise WrongState(f"sandbox {inst.name!r} is {status.value.lower()}, not running",
                         status.value)
