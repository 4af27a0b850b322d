"""A command in the guest (dev-only exec) over the guest agent protocol.

Stdin and stdout travel on one host stream and stderr on a second; with a
pty there is one stream, the terminal. Both are flow-controlled like tunnels
(TunnelStream), so a command that floods its output waits in the guest
until its reader here has handed the output on. The exit comes as an event
on the stream, after the output. Wire format: roost_guest.protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from roost.errors import RoostError
from roost.hostagent.guestagent import GuestAgentClient, GuestAgentError, TunnelStream
from roost_guest.protocol import is_int

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # spawning imports subprocess in the guest: slow under TCG


@dataclass(frozen=True)
class ExecSpec:
    argv: list[str]
    timeout: float = 0.0  # the guest kills the command's session then (0: never)
    tty: bool = False
    rows: int = 0  # the pty's size (0: the guest's default)
    cols: int = 0
    term: str = ""  # TERM for a pty
    env: tuple[tuple[str, str], ...] = ()  # over the guest agent's environment
    cwd: str = ""  # where it starts ("": /)


# The exit event's fields, as the client gets them, and the types they must have.
EXIT_FIELDS: dict[str, tuple[type, ...]] = {
    "exitCode": (int,), "signal": (int, type(None)), "timedOut": (bool,),
    "killed": (bool,), "seconds": (int, float), "error": (str,)}


def exit_problem(event: dict[str, Any]) -> str:
    """What is wrong with an exit event from the guest ("" when nothing is)."""
    if "exitCode" not in event:
        return "no exitCode"
    for name, types in EXIT_FIELDS.items():
        value = event.get(name)
        if name in event and (type(value) not in types
                              or (type(value) is int and not -2**31 <= value < 2**31)):
            return f"{name} of a wrong type or range: {value!r:.60}"
    return ""


class CannotRun(RoostError):
    """The guest could not start the command (not found, not executable)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # as a shell would exit: 127, 126


class GuestExec:
    """A running command: its streams, its controls and its exit."""

    def __init__(self, client: GuestAgentClient, spec: ExecSpec) -> None:
        self.client = client
        self.spec = spec
        self.stdio = client.new_stream()
        self.stderr: TunnelStream | None = None if spec.tty else client.new_stream()
        self.pid = 0
        self._exit: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        client.watch_stream(self.stdio.id, self._on_event)

    @classmethod
    async def start(cls, client: GuestAgentClient, spec: ExecSpec) -> GuestExec:
        """Spawn the command; CannotRun, or GuestAgentError when the guest refuses."""
        run = cls(client, spec)
        params: dict[str, Any] = {
            "stream": run.stdio.id, "argv": spec.argv, "seconds": spec.timeout,
            "tty": spec.tty, "rows": spec.rows, "cols": spec.cols, "term": spec.term}
        if spec.env:
            params["env"] = dict(spec.env)
        if spec.cwd:
            params["cwd"] = spec.cwd
        if run.stderr is not None:
            params["stderr"] = run.stderr.id
        try:
            result = await client.request("exec", timeout=START_TIMEOUT, **params)
            if "error" in result:
                code = result.get("exitCode")
                raise CannotRun(str(result["error"])[:2000],
                                code if is_int(code) and 1 <= code <= 255 else 127)
            pid = result.get("pid")
            if not is_int(pid) or pid <= 0:
                raise GuestAgentError(f"the guest agent's exec reply has no pid: {result!r:.100}")
        except BaseException:
            await run.close()
            raise
        run.pid = pid
        return run

    def _on_event(self, event: dict[str, Any]) -> str:
        """The guest's exit or refusal of a control; what is wrong with it ("" if nothing)."""
        if event["event"] == "exec-refused":
            log.warning("the guest refused a control of exec stream %d: %.200s",
                        self.stdio.id, event.get("error"))
            return ""
        if problem := exit_problem(event):
            return problem
        if not self._exit.done():
            self._exit.set_result({k: event[k] for k in EXIT_FIELDS if k in event})
        # The guest has dropped the command's streams: stdin still on its way
        # will never be credited, and a send waiting for credit would wait forever.
        self.stdio.stop_sending("the command has exited")
        return ""

    @property
    def exited(self) -> bool:
        return self._exit.done()

    async def wait(self) -> dict[str, Any]:
        """The exit: {"exitCode", "signal", "timedOut", "killed", "seconds"}."""
        closed: asyncio.Future[Any] = asyncio.ensure_future(self.client.closed.wait())
        try:
            await asyncio.wait([self._exit, closed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if not self._exit.done():
            raise GuestAgentError("the guest agent connection closed before the command exited")
        return self._exit.result()

    async def signal(self, name: str) -> None:
        """Send signal `name` ("INT") to every process of the command's session."""
        await self.client.notify("exec-signal", stream=self.stdio.id, signal=name)

    async def kill(self, name: str = "TERM") -> None:
        """Signal the command's session, then SIGKILL it after the guest's grace."""
        await self.client.notify("exec-kill", stream=self.stdio.id, signal=name)

    async def resize(self, rows: int, cols: int) -> None:
        await self.client.notify("exec-resize", stream=self.stdio.id, rows=rows, cols=cols)

    async def close(self) -> None:
        """The end of our interest: a command still running is killed (SIGHUP first)."""
        if not self._exit.done() and self.client.connected and self.pid:
            with contextlib.suppress(GuestAgentError, OSError):
                await self.kill("HUP")
        self.client.unwatch_stream(self.stdio.id)
        for stream in (self.stdio, self.stderr):
            if stream is not None:
                await stream.reset("exec ended")
