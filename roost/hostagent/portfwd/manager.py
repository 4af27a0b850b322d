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
from roost.hostagent.portfwd.forward import (
    Forward,
    Opener,
    SSHForward,
    TCPForward,
    UDPForward,
    UnixForward,
    start_ssh_forwards,
    stop_ssh_forwards,
)
from roost.hostagent.portfwd.rules import HostAddr, HostSocket, Listener, decide

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]
# Builds a TCP forward that does not need the guest agent (SSH -L).
FallbackFactory = Callable[[HostAddr | HostSocket, str, int], Forward]


@dataclass
class Active:
    listener: Listener
    host: HostAddr | HostSocket
    forward: Forward
    via: str

    def to_json(self) -> dict[str, Any]:
        return {"protocol": self.listener.proto, "guestAddr": self.listener.addr(),
                "hostAddr": str(self.host), "via": self.via}


class PortForwarder:
    def __init__(self, rules: list[PortForward], opener: Opener, emit: Emit,
                 guest_ssh_port: int = 22, host_ssh_port: int | None = None) -> None:
        self.rules = rules
        self.opener = opener
        self.emit = emit
        self.guest_ssh_port = guest_ssh_port
        self.host_ssh_port = host_ssh_port
        self.fallback: FallbackFactory | None = None  # set while the agent is unreachable
        self._active: dict[Listener, Active] = {}
        self._failed: dict[Listener, dict[str, Any]] = {}
        self._lock = asyncio.Lock()

    def active(self) -> list[dict[str, Any]]:
        return [a.to_json() for a in sorted(self._active.values(), key=lambda a: a.listener)]

    def failed(self) -> list[dict[str, Any]]:
        return list(self._failed.values())

    async def sync(self, listeners: Iterable[Listener]) -> None:
        """Make the forwards match exactly this set of guest listeners. With
        the guest agent back, forwards made over SSH meanwhile move back to it."""
        wanted = set(listeners)
        async with self._lock:
            gone = [lst for lst in self._active if lst not in wanted]
            if self.fallback is None:
                gone += [lst for lst in wanted
                         if lst in self._active and self._active[lst].via == "ssh"]
            await self._stop_many(gone)
            for lst in [lst for lst in self._failed if lst not in wanted
                        or (self.fallback is None and self._failed[lst]["via"] == "ssh")]:
                del self._failed[lst]  # gone, or failed over SSH: the agent tries again
            await self._start_many(wanted - set(self._active) - set(self._failed))

    async def change(self, added: Iterable[Listener], removed: Iterable[Listener]) -> None:
        async with self._lock:
            removed = list(removed)
            for lst in removed:
                self._failed.pop(lst, None)
            await self._stop_many(removed)
            await self._start_many([lst for lst in added if lst not in self._active])

    async def close(self) -> None:
        async with self._lock:
            await self._stop_many(list(self._active))
            self._failed.clear()

    def _event(self, kind: str, lst: Listener, host: HostAddr | HostSocket,
               error: str = "") -> None:
        event: dict[str, Any] = {"type": kind, "protocol": lst.proto,
                                 "guestAddr": lst.addr(), "hostAddr": str(host)}
        if error:
            event["error"] = error
        self.emit(event)

    def _plan(self, lst: Listener, claimed: set[tuple[HostAddr | HostSocket, str]]
              ) -> Active | None:
        """The forward a new listener gets (not started yet), or None."""
        host = decide(self.rules, lst, self.guest_ssh_port, self.host_ssh_port)
        if isinstance(host, str):
            # As Lima: the listener was seen, and why it has no forward.
            self.emit({"type": "not-forwarding", "protocol": lst.proto,
                       "guestAddr": lst.addr(), "reason": host})
            return None
        if (host, lst.proto) in claimed:
            return None  # e.g. 0.0.0.0:80 and [::]:80: the first one serves the host port
        guest_host = lst.connect_host()
        if self.fallback is not None:
            if lst.proto != "tcp":
                return None  # SSH forwards TCP only
            forward, via = self.fallback(host, guest_host, lst.port), "ssh"
        elif isinstance(host, HostSocket):
            forward = UnixForward(self.opener, host.path, guest_tcp=(guest_host, lst.port))
            via = "agent"
        else:
            kind = TCPForward if lst.proto == "tcp" else UDPForward
            forward, via = kind(self.opener, host.ip, host.port, guest_host, lst.port), "agent"
        claimed.add((host, lst.proto))
        return Active(lst, host, forward, via)

    async def _start_many(self, listeners: Iterable[Listener]) -> None:
        claimed = {(a.host, a.listener.proto) for a in self._active.values()}
        planned = [plan for lst in sorted(listeners) if (plan := self._plan(lst, claimed))]
        over_ssh = [p.forward for p in planned if isinstance(p.forward, SSHForward)]
        ssh_failed = await start_ssh_forwards(over_ssh) if over_ssh else {}
        for plan in planned:
            error: OSError | None = None
            if isinstance(plan.forward, SSHForward):
                error = ssh_failed.get(plan.forward)
            else:
                try:
                    await plan.forward.start()
                except OSError as e:
                    error = e
            if error is not None:
                self._record_failure(plan, error)
                continue
            self._failed.pop(plan.listener, None)
            self._active[plan.listener] = plan
            self._event("forwarding", plan.listener, plan.host)

    def _record_failure(self, plan: Active, e: OSError) -> None:
        lst, host = plan.listener, plan.host
        error = f"cannot listen on {host} ({lst.proto}): {e.strerror or e}"
        if isinstance(host, HostSocket):
            pass  # no port to pick another of
        elif e.errno == 98:
            error += "; the port is taken on the host (add a portForwards rule with hostPort)"
        elif e.errno == 13:
            error += "; ports below 1024 need privileges (map it to a higher hostPort)"
        self._failed[lst] = {"protocol": lst.proto, "guestAddr": lst.addr(),
                             "hostAddr": str(host), "error": error, "via": plan.via}
        self._event("failed", lst, host, error)

    async def _stop_many(self, listeners: Iterable[Listener]) -> None:
        stopping = [self._active.pop(lst) for lst in dict.fromkeys(listeners)
                    if lst in self._active]
        for active in stopping:
            self._event("stopping", active.listener, active.host)
        over_ssh = [a.forward for a in stopping if isinstance(a.forward, SSHForward)]
        if over_ssh:
            await stop_ssh_forwards(over_ssh)
        for active in stopping:
            if isinstance(active.forward, SSHForward):
                continue
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
StreamHandler = Callable[[TunnelStream], Awaitable[None]]


async def serve_reverse(client: GuestAgentClient, reverse: dict[str, str],
                        emit: Emit, other: AcceptHandler | None = None,
                        tcp: dict[int, StreamHandler] | None = None) -> None:
    """Reverse forwards: guest sockets whose connections reach host sockets.
    `tcp`: guest loopback ports whose connections go to a handler here (the
    egress proxy). Other guest-initiated streams (e.g. reverse sshfs) go to
    `other`."""
    tcp = tcp or {}
    for port in list(tcp):
        service = {"protocol": "tcp", "guestAddr": f"127.0.0.1:{port}", "hostAgent": True}
        try:
            await client.request("listen", tcp=port)
            log.info("guest 127.0.0.1:%d: connections come to the host agent", port)
        except GuestAgentError as e:
            log.warning("guest 127.0.0.1:%d: %s", port, e)
            emit({**service, "type": "failed", "error": str(e)})
            tcp.pop(port)
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
            guest_port = event.get("tcp")
            handler = tcp.get(guest_port) if isinstance(guest_port, int) else None
            if target is not None:
                task = asyncio.ensure_future(one(stream, target))
            elif handler is not None:
                task = asyncio.ensure_future(handler(stream))
            elif "tcp" in event:
                await stream.reset("nothing on the host serves this port")
                continue
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
                             on_event: Callable[[dict[str, Any]], None] | None = None,
                             tcp: dict[int, StreamHandler] | None = None) -> None:
    """Subscribe to the guest agent's events until the session ends (then
    return): ports drive the forwards, the rest goes to `on_event`."""
    client = await opener()
    result = await client.request("events")
    forwarder.fallback = None
    await forwarder.sync(listeners_from_event(result.get("ports", [])))
    if on_event is not None and "worker" in result:
        on_event({"event": "worker", **result["worker"]})
    reverse_task = asyncio.ensure_future(
        serve_reverse(client, reverse or {}, forwarder.emit, other, dict(tcp or {})))
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
