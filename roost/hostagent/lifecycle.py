"""roost.yaml's `lifecycle:`, enforced by the host agent: a sandbox that
outlives its `timeout`, or stays idle `idle.after` seconds (the guest
agent's worker status), is stopped, suspended or deleted.

Deleting is done by a `roost delete --force NAME` of its own (detached, so
it outlives this process, which it stops): the same path as a user's
delete, with its checks. A protected instance is stopped instead.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from roost.config.model import Lifecycle
from roost.errors import RoostError
from roost.hostagent.events import EventEmitter
from roost.store.instance import Instance

log = logging.getLogger(__name__)

TICK = 0.5  # s between looks at the clock and the worker status


class LifecyclePolicy:
    def __init__(self, policy: Lifecycle, inst: Instance, events: EventEmitter,
                 suspend: Callable[[], Awaitable[Any]], stop: Callable[[], None]) -> None:
        self.policy = policy
        self.inst = inst
        self.events = events
        self._suspend = suspend
        self._stop = stop
        self._task: asyncio.Task[None] | None = None

    @property
    def wanted(self) -> bool:
        return self.policy.timeout is not None or self.policy.idle is not None

    def start(self) -> None:
        """From Running on."""
        if self.wanted and self._task is None:
            self._task = asyncio.ensure_future(self._watch())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        started = time.monotonic()
        idle_since: float | None = None
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            timeout, idle = self.policy.timeout, self.policy.idle
            if timeout is not None and now - started >= timeout.after:
                await self._act(timeout.action, f"its lifecycle.timeout of {timeout.after:g}s "
                                "ran out")
                return
            state = (self.events.snapshot().get("worker") or {}).get("state")
            idle_since = (idle_since or now) if state == "idle" else None
            if idle is not None and idle_since is not None and now - idle_since >= idle.after:
                await self._act(idle.action, f"it was idle for {idle.after:g}s "
                                "(lifecycle.idle)")
                return

    async def _act(self, action: str, why: str) -> None:
        if action == "delete" and self.inst.protected.exists():
            why += "; it is protected, so stopped, not deleted"
            action = "stop"
        log.info("lifecycle: %s: %s", action, why)
        self.events.emit_transient(lifecycle={"action": action, "reason": why})
        if action == "suspend":
            try:
                await self._suspend()  # ends the host agent once saved
                return
            except RoostError as e:
                self.events.add_error(f"lifecycle: the suspend failed ({e}); stopping instead")
                action = "stop"
        if action == "delete":
            # Its own session: it stops this host agent, then removes the instance.
            with open(self.inst.dir / "lifecycle-delete.log", "ab") as err:
                subprocess.Popen(
                    [sys.executable, "-m", "roost", "delete", "--force", self.inst.name],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    start_new_session=True)
            return
        self._stop()
