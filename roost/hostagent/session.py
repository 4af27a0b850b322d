"""The host agent's one session with the guest agent, shared by all its users.

A virtio-serial port takes one host connection at a time, and a second dial
would wait unanswered behind the first: so readiness, mounts, port forwards,
checkpoints and the API all go through this session, opened on first use
and again after it dropped (the client ends a session whose guest agent
restarted, see roost.hostagent.guestagent, and whoever follows the guest's
events opens the next one and subscribes again). A restored guest may already have a session,
the one that woke it while the host agent was being imported
(roost.hostagent.main): the first use adopts it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from roost.driver.channel import Dialer
from roost.errors import UsageError
from roost.hostagent.errors import Forbidden, HostAgentError
from roost.hostagent.events import EventEmitter
from roost.hostagent.execstream import ExecSpec, GuestExec
from roost.hostagent.guestagent import GuestAgentClient, GuestAgentError

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 120.0


class GuestAgentSession:
    def __init__(self, dialer: Dialer, events: EventEmitter, *, instance: str,
                 allow_exec: bool, changed: Callable[[], None], allow_files: bool = False,
                 early: asyncio.Future[GuestAgentClient] | None = None) -> None:
        self._dialer = dialer
        self._events = events
        self._instance = instance
        self._allow_exec = allow_exec
        self._allow_files = allow_files
        self._changed = changed  # the guest's health changed: runtime.json is written again
        self._lock = asyncio.Lock()
        self._early = early
        self.woken_early = early is not None  # the guest had its `wake` from that session
        self.client: GuestAgentClient | None = None
        self.health: dict[str, Any] = {}  # the guest agent's last health event

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.connected

    async def open(self) -> GuestAgentClient:
        """The session, connected: the one open, the early one, or a new one."""
        async with self._lock:
            if self._early is not None:
                early, self._early = self._early, None
                try:
                    self.client = await early
                except GuestAgentError as e:
                    self._events.add_error(f"the guest agent did not wake: {e}")
            if self.client is None or not self.client.connected:
                client = GuestAgentClient(self._dialer)
                try:
                    await client.connect()
                except OSError as e:
                    raise GuestAgentError(f"cannot connect to the guest agent: {e}") from None
                self.client = client
                log.info("guest agent session opened (epoch %s)", client.epoch)
            return self.client

    async def drop(self) -> None:
        """Close the session; the next open() dials again (its hello resets the guest's side)."""
        client, self.client = self.client, None
        if client is not None:
            await client.close()

    async def request(self, kind: str) -> dict[str, Any]:
        """A request from the API: the guest's answer as it is."""
        try:
            client = await self.open()
        except GuestAgentError as e:
            raise HostAgentError(f"the guest agent does not answer: {e}") from None
        try:
            return await client.request(kind, timeout=REQUEST_TIMEOUT)
        except GuestAgentError as e:
            if not client.connected:
                raise HostAgentError(f"the guest agent does not answer: {e}") from None
            raise UsageError(str(e)) from None  # the guest refused this request

    async def files(self) -> GuestAgentClient:
        """The session, for a request on the guest's files (off unless roost.yaml
        enables it); Forbidden when it is off."""
        if not self._allow_files:
            raise Forbidden(
                f"file access is disabled for {self._instance}; set guestAgent.allowFiles: "
                "true in roost.yaml and restart to enable it")
        try:
            return await self.open()
        except GuestAgentError as e:
            raise HostAgentError(f"the guest agent does not answer: {e}") from None

    async def start_exec(self, spec: ExecSpec) -> GuestExec:
        """A command in the guest (dev-only, off unless roost.yaml enables it)."""
        if not self._allow_exec:
            raise UsageError(
                f"exec is disabled for {self._instance}: it is a dev-only door into the "
                "guest; set guestAgent.allowExec: true in roost.yaml and restart to enable it")
        try:
            client = await self.open()
        except GuestAgentError as e:
            raise HostAgentError(f"the guest agent does not answer: {e}") from None
        try:
            return await GuestExec.start(client, spec)
        except GuestAgentError as e:
            if not client.connected:
                raise HostAgentError(f"the guest agent does not answer: {e}") from None
            raise UsageError(str(e)) from None  # the guest refused the command

    def on_event(self, event: dict[str, Any]) -> None:
        """Health and worker changes, pushed by the guest agent, into our events."""
        kind = event.get("event")
        body = {k: v for k, v in event.items() if k != "event"}
        if kind == "health":
            self.health = body
            self._events.emit(guestHealth={"summary": body.get("summary", "-"),
                                           "checks": body.get("checks", [])})
        elif kind == "worker":
            self._events.emit(worker={"state": body.get("state"),
                                      "lastBusyAt": body.get("lastBusyAt")})
        elif kind == "probes":
            self._events.emit_transient(probes=body.get("probes", []))
        else:
            return
        self._changed()
