"""Follows the guest's listening sockets and keeps a forwarder for each.

The set of guest listeners comes from the guest agent's `ports` events (or,
without the agent, from polling /proc/net over SSH); each listener is
mapped by the rules to a host address, and a forwarder is started there.
A host address serves the first listener that claims it. Every change is
reported as a Lima-style `portForward` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from roost.config.model import PortForward
from roost.hostagent.guestagent import GuestAgentClient, GuestAgentError, TunnelStream
from roost.hostagent.guestevents import listener_problem, listeners_problem
from roost.hostagent.portfwd.forward import Forward, Opener, TCPForward, UDPForward
from roost.hostagent.portfwd.rules import HostAddr, Listener, host_address

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]
# Builds a TCP forward that does not need the guest agent (SSH -L).
FallbackFactory = Callable[[HostAddr, str, int], Forward]


@dataclass
class Active:
    listener: Listener
    host: HostAddr
    forward: Forward
    via: str

    def to_json(self) -> dict[str, Any]:
        return {"protocol": self.listener.proto, "guestAddr": self.listener.addr(),
                "hostAddr": str(self.host), "via": self.via}


class PortForwarder:
    def __init__(self, rules: list[PortForward], opener: Opener, emit: Emit,
                 guest_ssh_port: int = 22) -> None:
        self.rules = rules
        self.opener = opener
        self.emit = emit
        self.guest_ssh_port = guest_ssh_port
        self.fallback: FallbackFactory | None = None  # set while the agent is unreachable
        self._active: dict[Listener, Active] = {}
        self._failed: dict[Listener, dict[str, Any]] = {}
        self._lock = asyncio.Lock()

    def active(self) -> list[dict[str, Any]]:
        return [a.to_json() for a in sorted(self._active.values(), key=lambda a: a.listener)]

    def failed(self) -> list[dict[str, Any]]:
        return list(self._failed.values())

    async def sync(self, listeners: Iterable[Listener]) -> None:
        """Make the forwards match exactly this set of guest listeners."""
        wanted = set(listeners)
        async with self._lock:
            for gone in [lst for lst in self._active if lst not in wanted]:
                await self._stop(gone)
            for lst in [lst for lst in self._failed if lst not in wanted]:
                del self._failed[lst]
            for new in sorted(wanted - set(self._active) - set(self._failed)):
                await self._start(new)

    async def change(self, added: Iterable[Listener], removed: Iterable[Listener]) -> None:
        async with self._lock:
            for lst in removed:
                self._failed.pop(lst, None)
                if lst in self._active:
                    await self._stop(lst)
            for lst in sorted(added):
                if lst not in self._active:
                    await self._start(lst)

    async def close(self) -> None:
        async with self._lock:
            for lst in list(self._active):
                await self._stop(lst)
            self._failed.clear()

    def _event(self, kind: str, lst: Listener, host: HostAddr, error: str = "") -> None:
        event: dict[str, Any] = {"type": kind, "protocol": lst.proto,
                                 "guestAddr": lst.addr(), "hostAddr": str(host)}
        if error:
            event["error"] = error
        self.emit(event)

    async def _start(self, lst: Listener) -> None:
        host = host_address(self.rules, lst, self.guest_ssh_port)
        if host is None:
            return
        if any(a.host == host and a.listener.proto == lst.proto for a in self._active.values()):
            return  # e.g. 0.0.0.0:80 and [::]:80: the first one serves the host port
        guest_host = lst.connect_host()
        if self.fallback is not None:
            if lst.proto != "tcp":
                return  # SSH forwards TCP only
            forward, via = self.fallback(host, guest_host, lst.port), "ssh"
        else:
            kind = TCPForward if lst.proto == "tcp" else UDPForward
            forward, via = kind(self.opener, host.ip, host.port, guest_host, lst.port), "agent"
        try:
            await forward.start()
        except OSError as e:
            error = f"cannot listen on {host} ({lst.proto}): {e.strerror or e}"
            if e.errno == 98:
                error += "; the port is taken on the host (add a portForwards rule with hostPort)"
            elif e.errno == 13:
                error += "; ports below 1024 need privileges (map it to a higher hostPort)"
            self._failed[lst] = {"protocol": lst.proto, "guestAddr": lst.addr(),
                                 "hostAddr": str(host), "error": error}
            self._event("failed", lst, host, error)
            return
        self._active[lst] = Active(lst, host, forward, via)
        self._event("forwarding", lst, host)

    async def _stop(self, lst: Listener) -> None:
        active = self._active.pop(lst)
        self._event("stopping", lst, active.host)
        try:
            await active.forward.stop()
        except Exception as e:  # stopping one forward must not break the others
            log.warning("stopping %s: %s", active.forward.description, e)


def listeners_from_event(items: object) -> list[Listener]:
    """The listeners the guest reported; any of a wrong shape is logged and skipped."""
    if problem := listeners_problem(items):
        log.warning("guest agent: %s; skipping the malformed ones", problem)
    if not isinstance(items, list):
        return []
    return [Listener(i["proto"], i["ip"], i["port"]) for i in items if not listener_problem(i)]


AcceptHandler = Callable[[dict[str, Any], TunnelStream], Awaitable[None]]


async def serve_reverse(client: GuestAgentClient, reverse: dict[str, str],
                        emit: Emit, other: AcceptHandler | None = None) -> None:
    """Reverse forwards: guest sockets whose connections reach host sockets.
    Other guest-initiated streams (e.g. reverse sshfs) go to `other`."""
    for guest_path, host_path in reverse.items():
        event = {"protocol": "unix", "guestAddr": guest_path, "hostAddr": host_path,
                 "reverse": True}
        try:
            await client.request("listen", path=guest_path)
        except GuestAgentError as e:
            emit({**event, "type": "failed", "error": str(e)})
            continue
        emit({**event, "type": "forwarding"})

    async def one(stream: TunnelStream, host_path: str) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(host_path)
        except OSError as e:
            await stream.reset(f"cannot connect to host socket {host_path}: {e.strerror or e}")
            return
        await stream.splice(reader, writer)

    tasks: set[asyncio.Task[None]] = set()
    try:
        while True:
            event, stream = await client.accepted()
            target = reverse.get(str(event.get("path")))
            if target is not None:
                task = asyncio.ensure_future(one(stream, target))
            elif other is not None:
                task = asyncio.ensure_future(other(event, stream))
            else:
                await stream.reset("no reverse rule for this socket")
                continue
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in tasks:
            task.cancel()


async def follow_guest_agent(forwarder: PortForwarder, opener: Opener,
                             reverse: dict[str, str] | None = None,
                             other: AcceptHandler | None = None,
                             on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Subscribe to the guest agent's events until the session ends (then
    return): ports drive the forwards, the rest goes to `on_event`."""
    client = await opener()
    result = await client.request("events")
    forwarder.fallback = None
    await forwarder.sync(listeners_from_event(result.get("ports", [])))
    if on_event is not None and "worker" in result:
        on_event({"event": "worker", **result["worker"]})
    reverse_task = asyncio.ensure_future(
        serve_reverse(client, reverse or {}, forwarder.emit, other))
    try:
        async for event in client.events():
            if event.get("event") == "ports":
                await forwarder.change(listeners_from_event(event.get("added", [])),
                                       listeners_from_event(event.get("removed", [])))
            elif on_event is not None:
                on_event(event)
    finally:
        reverse_task.cancel()
        with contextlib.suppress(BaseException):
            await reverse_task
