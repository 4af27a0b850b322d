"""An instance's port forwarding as a whole, once the guest answers SSH.

Static socket forwards (roost.yaml's guestSocket/hostSocket) start at once.
TCP and UDP forwards then follow the guest agent's port events; when the
guest agent stays unreachable, the guest's TCP listeners are polled from
/proc/net over SSH instead and forwarded through SSH, until it is back.
The same session also carries the guest's other events and the streams it
opens (reverse forwards, reverse sshfs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from roost.cidata.proxyenv import EGRESS_PROXY_PORT as EGRESS_PORT
from roost.config.model import PortForward
from roost.hostagent.cleanup import CleanupStack
from roost.hostagent.events import EventEmitter
from roost.hostagent.guestagent import GuestAgentError
from roost.hostagent.portfwd.forward import SSHForward, UnixForward
from roost.hostagent.portfwd.manager import (
    AcceptHandler,
    PortForwarder,
    StreamHandler,
    follow_guest_agent,
)
from roost.hostagent.portfwd.rules import HostAddr, HostSocket, Listener
from roost.hostagent.readiness import SSH_COMMAND_TIMEOUT
from roost.hostagent.session import GuestAgentSession
from roost.hostagent.sshmaster import run_ssh
from roost.sshutil.config import ssh_argv
from roost.store.instance import Instance
from roost_guest.ports import PROC_TABLES, parse_proc_table

log = logging.getLogger("roost.hostagent")

SSH_FALLBACK_AFTER = 10.0  # seconds without the guest agent before SSH forwarding
SSH_POLL_SECONDS = 1.0
RECONNECT_SECONDS = 0.2


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


class PortForwarding:
    def __init__(self, inst: Instance, rules: list[PortForward], session: GuestAgentSession,
                 events: EventEmitter, changed: Callable[[], None],
                 guest_streams: AcceptHandler | None = None,
                 host_ssh_port: int | None = None,
                 egress: StreamHandler | None = None) -> None:
        self.inst = inst
        self.host_ssh_port = host_ssh_port  # ssh.localPort: never forwarded from the guest
        # Streams the guest opens that are no reverse forward (reverse sshfs).
        self.guest_streams = guest_streams
        # The egress proxy's guest port: its streams come here, and the
        # guest agent's listener there is no service to forward to the host.
        self.tcp_services = {EGRESS_PORT: egress} if egress is not None else {}
        if egress is not None:
            rules = [PortForward(guest_ip="127.0.0.1", guest_port=EGRESS_PORT, proto="tcp",
                                 ignore=True), *rules]
        self.rules = rules
        self.session = session
        self.events = events
        self._changed = changed  # a forward started or stopped: runtime.json is written again
        self.socket_forwards: list[dict[str, Any]] = []
        self.forwarder: PortForwarder | None = None

    def active(self) -> list[dict[str, Any]]:
        dynamic = self.forwarder.active() if self.forwarder is not None else []
        return [*self.socket_forwards, *dynamic]

    def failed(self) -> list[dict[str, Any]]:
        return self.forwarder.failed() if self.forwarder is not None else []

    def _event(self, event: dict[str, Any]) -> None:
        self.events.emit_transient(portForward=event)
        self._changed()

    async def start(self, cleanups: CleanupStack) -> None:
        """Static socket forwards now; dynamic ones follow the guest agent."""
        opener = self.session.open
        for rule in self.rules:
            if rule.guest_socket is None or rule.host_socket is None or rule.reverse:
                continue
            fwd = UnixForward(opener, rule.host_socket, rule.guest_socket)
            entry = {"protocol": "unix", "guestAddr": rule.guest_socket,
                     "hostAddr": rule.host_socket, "via": "agent"}
            try:
                await fwd.start()
            except OSError as e:
                self._event({**entry, "type": "failed",
                             "error": f"cannot listen on {rule.host_socket}: {e}"})
                continue
            cleanups.push(f"stop {fwd.description}", fwd.stop)
            self.socket_forwards.append(entry)
            self._event({**entry, "type": "forwarding"})
        self.forwarder = PortForwarder(list(self.rules), opener, self._event,
                                       host_ssh_port=self.host_ssh_port)
        cleanups.push("stop port forwards", self.forwarder.close)
        task = asyncio.ensure_future(self._follow(self.forwarder))
        cleanups.push("stop following guest ports", lambda: _cancel(task))

    async def _follow(self, forwarder: PortForwarder) -> None:
        """Follow the guest agent's port events; without it, poll over SSH."""
        unreachable_since = time.monotonic()
        reverse = {r.guest_socket: r.host_socket for r in self.rules
                   if r.reverse and r.guest_socket and r.host_socket}
        while True:
            try:
                await follow_guest_agent(forwarder, self.session.open, reverse,
                                         self.guest_streams, self.session.on_event,
                                         self.tcp_services)
                unreachable_since = time.monotonic()
                log.info("guest agent session ended; reconnecting")
            except (GuestAgentError, OSError) as e:
                log.debug("guest agent unreachable: %s", e)
            except Exception:  # a bug must not end port forwarding for good
                log.exception("following the guest agent failed; reconnecting")
            await self.session.drop()
            if time.monotonic() - unreachable_since > SSH_FALLBACK_AFTER:
                await self._ssh_poll(forwarder)
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _ssh_poll(self, forwarder: PortForwarder) -> None:
        """One round of the fallback: guest listeners from /proc/net over SSH."""
        if forwarder.fallback is None:
            log.warning("guest agent unreachable; forwarding TCP ports over SSH")
            await forwarder.close()
            base = ssh_argv(self.inst, [])

            def ssh_forward(host: HostAddr | HostSocket, guest_host: str,
                            guest_port: int) -> SSHForward:
                if isinstance(host, HostSocket):
                    return SSHForward(base, "", 0, guest_host, guest_port, host.path)
                return SSHForward(base, host.ip, host.port, guest_host, guest_port)

            forwarder.fallback = ssh_forward
        tables = [t for t in PROC_TABLES if t[0] == "tcp"]
        script = "; ".join(f"cat {path}; echo @@" for _, path, _ in tables)
        status, out = await run_ssh(self.inst, ["sh", "-c", script], SSH_COMMAND_TIMEOUT)
        if status != 0:
            return
        listeners = []
        for (proto, _, state), text in zip(tables, out.split("@@"), strict=False):
            listeners += [Listener(*t) for t in parse_proc_table(proto, state, text.strip())]
        await forwarder.sync(listeners)
        await asyncio.sleep(SSH_POLL_SECONDS)
